"""Attack submissions and their runs against models.

An :class:`Attack` is one researcher's attack on one track (a classifier's, or a detector's, where it
lowers fake scores): a Python source file with the
entry point of docs/attacks.md, or a zip package with that file (``attack.py``) and the modules it
imports. Each public finished model of the track faces it in an
:class:`AttackRun`, queued when the attack arrives or when the model finishes, evaluated by the
sandboxed evaluator (:mod:`evaluator.adversary`), and recorded per threat model. A model's robust
accuracy (a detector's AUC under each Linf budget) on the leaderboard is then the lowest of the built-in
suite's and every finished run's (:mod:`adversaries.scores`).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from benchmarks.models import Track
from submissions.models import Submission


def source_upload_path(instance: Attack, filename: str) -> str:
    """Stored names never derive from the uploaded name (only the kind: one source file, or a zip package)."""
    suffix = ".zip" if filename.endswith(".zip") else ".py"
    return f"attacks/{instance.track.slug}/{instance.public_id}{suffix}"


class Attack(models.Model):
    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        WITHDRAWN = "withdrawn", "Withdrawn"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="attacks")
    track = models.ForeignKey(Track, on_delete=models.PROTECT, related_name="attacks")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    paper_url = models.URLField(blank=True)
    code_url = models.URLField(blank=True)
    source = models.FileField(upload_to=source_upload_path, max_length=300)
    source_sha256 = models.CharField(max_length=64, db_index=True)
    source_size = models.PositiveIntegerField(default=0)
    #: Model passes per attacked point, fixed when the attack arrives (ARENA_ATTACK_PASSES_PER_POINT).
    passes_per_point = models.PositiveIntegerField()
    state = models.CharField(max_length=12, choices=State.choices, default=State.ACTIVE, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["track", "source_sha256"], name="one_attack_per_source")]

    def __str__(self) -> str:
        return f"{self.name} ({self.track.slug})"

    def get_absolute_url(self) -> str:
        return reverse("attack-detail", args=[self.public_id])


class AttackRun(models.Model):
    """One attack against one model, at the track's suite version of the time."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        FINISHED = "finished", "Finished"
        FAILED = "failed", "Failed"

    attack = models.ForeignKey(Attack, on_delete=models.CASCADE, related_name="runs")
    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="attack_runs")
    suite_version = models.CharField(max_length=40)
    state = models.CharField(max_length=12, choices=State.choices, default=State.QUEUED, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    task_id = models.CharField(max_length=64, blank=True)
    #: Per threat-model label: {"value", "num_examples", "ci_low", "ci_high"}: robust accuracy on the attacked points
    #: (classifier tracks) or the AUC of the hidden reals against the attacked fakes (detector tracks).
    robust = models.JSONField(default=dict, blank=True)
    failure_code = models.CharField(max_length=40, blank=True)
    failure_reason = models.TextField(blank=True)
    provenance = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["attack", "submission", "suite_version"],
                                               name="one_run_per_attack_model_suite")]

    def __str__(self) -> str:
        return f"{self.attack_id} vs {self.submission_id} ({self.state})"

    def claim(self) -> int | None:
        """Move a queued run (or one whose worker died while running it) to running; its attempt, or None."""
        with transaction.atomic():
            current = AttackRun.objects.select_for_update().get(pk=self.pk)
            if current.state not in (self.State.QUEUED, self.State.RUNNING):
                return None
            attempt = current.attempts + 1
            AttackRun.objects.filter(pk=self.pk).update(state=self.State.RUNNING, attempts=attempt,
                                                        started_at=timezone.now())
        return attempt
