"""What a background build is doing, for the track pages: one row per slow step of a track.

``scripts/demo`` builds only what the first page needs before the server starts; the slow rest
(the detector track's transfer-attack set, the baseline testbeds) is prepared afterwards by
``manage.py prepare_demo`` (:mod:`builders.preparation`), which writes one :class:`Preparation`
row per step and keeps the rows of its run alive with a heartbeat. A row whose heartbeat stopped
(the process died or was killed) reads as stalled, never as preparing forever.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import models
from django.utils import timezone

#: How often a running preparation touches its rows, and how old a touch may be before the row
#: reads as stalled (a few missed beats: a busy SQLite database may refuse one now and then).
HEARTBEAT_SECONDS = 20
STALE_AFTER = timedelta(seconds=6 * HEARTBEAT_SECONDS)


class Preparation(models.Model):
    """One slow step of a track's build, run in the background: waiting, running, done or failed."""

    class State(models.TextChoices):
        WAITING = "waiting", "Waiting"
        RUNNING = "running", "Preparing"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    track = models.ForeignKey("benchmarks.Track", on_delete=models.CASCADE, related_name="preparations")
    key = models.SlugField(max_length=60, help_text="The step, e.g. transfer-set or digit-baselines.")
    label = models.CharField(max_length=200, help_text="What is prepared, as the track page names it.")
    order = models.PositiveSmallIntegerField(default=0)
    state = models.CharField(max_length=10, choices=State.choices, default=State.WAITING)
    step = models.CharField(max_length=200, blank=True, help_text="The current part of a running step.")
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0, help_text="Items to prepare (0: not counted).")
    unit = models.CharField(max_length=40, blank=True, help_text='What "done" counts, e.g. "baselines trained".')
    message = models.TextField(blank=True, help_text="Why a failed step failed (its last line).")
    run = models.CharField(max_length=40, blank=True, help_text="The background run that owns the row.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now, help_text="The run's last sign of life.")

    class Meta:
        ordering = ["order", "id"]
        constraints = [models.UniqueConstraint(fields=["track", "key"], name="one_preparation_per_track_step")]

    def __str__(self) -> str:
        return f"{self.track_id}:{self.key} {self.state}"

    @property
    def is_active(self) -> bool:
        return self.state in (self.State.WAITING, self.State.RUNNING)

    def is_stalled(self, now=None) -> bool:
        """Waiting or running, but the run that owns it has not been heard from for STALE_AFTER."""
        return self.is_active and (now or timezone.now()) - self.updated_at > STALE_AFTER

    @property
    def progress(self) -> str:
        """"2 of 19 baselines trained", or "" when the step is not counted."""
        if not self.total:
            return ""
        return f"{self.done} of {self.total} {self.unit}".rstrip()
