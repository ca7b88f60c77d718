"""Submissions, their life cycle, and the results an evaluation writes.

A submission moves through explicit states (queued -> running -> finished | incomplete | failed |
cancelled; incomplete: the evaluation ran out of its time budget, its finished stages are kept and a
re-run resumes after them); every transition goes through :meth:`Submission.transition` so that an illegal
move (finishing a cancelled job, say) is refused rather than silently applied.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from benchmarks.models import EvaluationSet, Track


def artifact_upload_path(instance: Submission, filename: str) -> str:
    """Stored names never derive from the uploaded name (no path traversal, no collisions)."""
    suffix = ".pt2" if instance.artifact_format == Submission.Format.PT2 else ".safetensors"
    return f"artifacts/{instance.track.slug}/{instance.public_id}{suffix}"


class IllegalTransition(Exception):
    pass


class Submission(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        FINISHED = "finished", "Finished"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        #: Out of its time budget: the finished stages' results are kept, a re-run resumes after them.
        INCOMPLETE = "incomplete", "Incomplete"

    class Format(models.TextChoices):
        PT2 = "pt2", "torch.export archive (.pt2)"
        SAFETENSORS = "safetensors", "safetensors weights for a zoo architecture"

    class ModelType(models.TextChoices):
        STANDARD = "standard", "Standard training"
        ROBUST = "robust", "Robust training"
        EXTRA_DATA = "extra_data", "Extra training data"
        SUBMISSION = "submission", "Submission"

    TRANSITIONS: dict[str, set[str]] = {
        State.QUEUED: {State.RUNNING, State.CANCELLED, State.FAILED},
        State.RUNNING: {State.FINISHED, State.FAILED, State.CANCELLED, State.QUEUED, State.INCOMPLETE},
        State.FINISHED: {State.QUEUED},  # re-run
        State.FAILED: {State.QUEUED},
        State.CANCELLED: {State.QUEUED},
        State.INCOMPLETE: {State.QUEUED},  # resumed after its finished stages
    }
    TERMINAL = {State.FINISHED, State.FAILED, State.CANCELLED, State.INCOMPLETE}

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="submissions")
    track = models.ForeignKey(Track, on_delete=models.PROTECT, related_name="submissions")

    # What the researcher tells us about the model.
    name = models.CharField(max_length=200)
    paper_url = models.URLField(blank=True)
    code_url = models.URLField(blank=True)
    architecture = models.CharField(max_length=200, blank=True, help_text="Free text, e.g. 'ResNet-20'.")
    zoo_architecture = models.CharField(
        max_length=100, blank=True, help_text="Zoo architecture the safetensors weights are for."
    )
    training_data = models.CharField(max_length=300, blank=True)
    extra_data = models.BooleanField(default=False, help_text="Trained with data beyond the track's training set.")
    license = models.CharField(max_length=100, blank=True)
    model_type = models.CharField(max_length=20, choices=ModelType.choices, default=ModelType.SUBMISSION)
    is_baseline = models.BooleanField(default=False)
    relative_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The baseline this model is an intervention on (for relative robustness).",
    )
    is_public = models.BooleanField(default=True)

    # The artifact.
    #: Empty once a cancelled upload's file was deleted (the sha256 and size stay on the row).
    artifact = models.FileField(upload_to=artifact_upload_path, max_length=300, blank=True)
    artifact_format = models.CharField(max_length=20, choices=Format.choices)
    artifact_sha256 = models.CharField(max_length=64, db_index=True)
    artifact_size = models.BigIntegerField(default=0)
    original_filename = models.CharField(max_length=255, blank=True)

    # Life cycle.
    state = models.CharField(max_length=12, choices=State.choices, default=State.QUEUED, db_index=True)
    failure_code = models.CharField(max_length=40, blank=True)
    failure_reason = models.TextField(blank=True)
    progress = models.FloatField(default=0.0)
    progress_stage = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    task_id = models.CharField(max_length=64, blank=True)
    #: The job's fair-share round, fixed when it is queued (submissions.queue): an owner's n-th waiting job
    #: waits for round n, so a user's second job waits behind every other user's first.
    fair_round = models.PositiveIntegerField(default=0)
    #: When a wake-up message was last sent for this job (submissions.dispatch): the watchdog sends another
    #: only when a queue has stalled well past that.
    woken_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    #: False when the track's Ladder withheld this evaluation's scores (see submissions.ladder).
    released = models.BooleanField(default=True)
    ladder_note = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["track", "state", "is_public"]),
            # The API list's order (newest first) within a track and over all tracks: its page of 100 is read
            # from the index instead of sorting every visible submission on each request.
            models.Index(fields=["track", "created_at", "id"], name="submission_track_newest"),
            models.Index(fields=["created_at", "id"], name="submission_newest"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.track.slug}, {self.state})"

    def get_absolute_url(self) -> str:
        return reverse("submission-detail", args=[self.public_id])

    @property
    def is_terminal(self) -> bool:
        return self.state in self.TERMINAL

    def visible_to(self, user) -> bool:
        return self.is_public or (user.is_authenticated and (user.is_staff or user.pk == self.owner_id))

    def scores_withheld_from(self, user) -> bool:
        """Whether the track's Ladder keeps this submission's scores from ``user`` (staff always see them)."""
        return not self.released and not (user is not None and getattr(user, "is_staff", False))

    def transition(self, new_state: str, **fields) -> None:
        """Move to ``new_state`` under a row lock, refusing moves the state machine forbids."""
        with transaction.atomic():
            current = Submission.objects.select_for_update().get(pk=self.pk)
            if new_state not in self.TRANSITIONS[current.state]:
                raise IllegalTransition(f"{current.state} -> {new_state}")
            now = timezone.now()
            if new_state == self.State.QUEUED:
                # A new evaluation request starts its attempt count at zero; the heartbeat watchdog,
                # which requeues a job whose worker vanished, passes ``attempts`` (and its reason as
                # ``progress_stage``) to keep them. ``task_id`` stays empty until the message is sent,
                # so a job whose message never reached the broker can be found and sent again.
                defaults = {"queued_at": now, "started_at": None, "finished_at": None, "heartbeat_at": None,
                            "progress": 0.0, "progress_stage": "", "failure_code": "", "failure_reason": "",
                            "attempts": 0, "task_id": ""}
                updates = {**defaults, **fields, "state": new_state}
            elif new_state == self.State.RUNNING:
                updates = {**fields, "state": new_state, "started_at": now, "heartbeat_at": now,
                           "attempts": current.attempts + 1}
            else:
                updates = {"finished_at": now, **fields, "state": new_state}
            Submission.objects.filter(pk=self.pk).update(**updates)
        self.refresh_from_db()

    def headline_result(self) -> Result | None:
        clean = self.track.clean_set()
        if clean is None:
            return None
        return self.results.filter(
            evaluation_set=clean, metric=self.track.headline_metric, suite_version=self.track.suite_version
        ).first()


class Result(models.Model):
    """One number: per (submission, evaluation set, metric, suite version), with its interval."""

    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="results")
    evaluation_set = models.ForeignKey(EvaluationSet, on_delete=models.CASCADE, related_name="results")
    metric = models.CharField(max_length=60)
    value = models.FloatField()
    ci_low = models.FloatField(null=True, blank=True)
    ci_high = models.FloatField(null=True, blank=True)
    ci_method = models.CharField(max_length=40, blank=True)
    num_examples = models.PositiveIntegerField()
    suite_version = models.CharField(max_length=40)
    seed = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["evaluation_set", "metric"]
        constraints = [
            models.UniqueConstraint(
                fields=["submission", "evaluation_set", "metric", "suite_version"], name="one_result_per_metric"
            )
        ]

    def __str__(self) -> str:
        return f"{self.submission_id} {self.evaluation_set.name} {self.metric}={self.value:.4f}"


class EvaluationRun(models.Model):
    """Provenance of one evaluation: where and how the results were computed, plus aggregates."""

    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="runs")
    suite_version = models.CharField(max_length=40)
    seed = models.PositiveIntegerField()
    ok = models.BooleanField()
    error_code = models.CharField(max_length=40, blank=True)
    per_class = models.JSONField(default=dict, blank=True)
    provenance = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["submission", "suite_version"], name="one_run_per_suite_version")
        ]


class StageCheckpoint(models.Model):
    """One finished stage of an evaluation (:mod:`evaluator.checkpoints`), kept until the evaluation finishes.

    Written by the worker as the scorer reports each stage, so a job that runs out of time or loses its
    worker keeps them; the next run of the same job (same ``fingerprint``: model file, sets, suite, seed)
    receives them and runs only the rest. Deleted once a complete result is recorded.
    """

    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="checkpoints")
    fingerprint = models.CharField(max_length=64)
    stage = models.CharField(max_length=100)
    data = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["submission", "fingerprint", "stage"], name="one_checkpoint_per_stage")
        ]

    def __str__(self) -> str:
        return f"{self.submission_id} {self.stage}"
