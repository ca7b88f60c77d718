"""The Celery task that evaluates one submission through the sandboxed evaluator.

The task is safe to deliver more than once (late acknowledgement means a job whose worker died
comes back): a submission that already reached a final state is left alone, and results are
written idempotently.
"""

from __future__ import annotations

import logging
import time

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from evaluator.sandbox import SandboxLimits, SandboxUnavailable, run_sandboxed
from evaluator.spec import Result as EvaluatorResult
from submissions.jobs import build_job_spec, failure_message, record_result
from submissions.models import IllegalTransition, Submission

logger = logging.getLogger(__name__)

#: Seconds between progress writes to the database (the page polls; no need to write faster).
PROGRESS_INTERVAL = 0.5


class _ProgressWriter:
    """Writes progress and a heartbeat to the submission row, at most every PROGRESS_INTERVAL s."""

    def __init__(self, submission_id: int) -> None:
        self.submission_id = submission_id
        self.last = 0.0

    def __call__(self, fraction: float, stage: str) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL and fraction < 1.0:
            return
        self.last = now
        Submission.objects.filter(pk=self.submission_id, state=Submission.State.RUNNING).update(
            progress=min(max(fraction, 0.0), 1.0), progress_stage=stage[:200], heartbeat_at=timezone.now()
        )

    def cancelled(self) -> bool:
        return Submission.objects.filter(pk=self.submission_id, state=Submission.State.CANCELLED).exists()


@shared_task(name="submissions.evaluate", acks_late=True, reject_on_worker_lost=True)
def evaluate_submission(submission_id: int) -> str:
    try:
        submission = Submission.objects.select_related("track").get(pk=submission_id)
    except Submission.DoesNotExist:
        logger.warning("submission %s vanished before evaluation", submission_id)
        return "missing"
    if submission.state != Submission.State.QUEUED:
        # Already finished, failed or cancelled: a redelivered or stale message.
        if submission.state != Submission.State.RUNNING:
            return submission.state
    else:
        try:
            submission.transition(Submission.State.RUNNING, progress=0.0, progress_stage="starting")
        except IllegalTransition:
            return submission.state

    spec = build_job_spec(submission)
    writer = _ProgressWriter(submission.pk)
    limits = SandboxLimits(wall_seconds=settings.ARENA_EVAL_WALL_SECONDS, memory_bytes=settings.ARENA_EVAL_MEMORY_BYTES)
    try:
        result = run_sandboxed(
            spec, progress=writer, limits=limits, allow_unsandboxed=settings.ARENA_ALLOW_UNSANDBOXED,
            should_cancel=writer.cancelled,
        )
    except SandboxUnavailable as exc:
        logger.error("refusing to evaluate %s: %s", submission.public_id, exc)
        result = EvaluatorResult.failure(spec, "sandbox_unavailable", str(exc))
    except Exception as exc:  # the platform's own fault: record it, never leave the job stuck
        logger.exception("evaluation of %s failed inside the platform", submission.public_id)
        result = EvaluatorResult.failure(spec, "internal", f"{type(exc).__name__}: {exc}")

    submission.refresh_from_db()
    if submission.state == Submission.State.CANCELLED:
        return "cancelled"
    if result.provenance.get("sandbox") == "unsandboxed":
        logger.warning("submission %s was evaluated WITHOUT a sandbox (operator allowed it)", submission.public_id)
    record_result(submission, result)
    if submission.is_baseline and result.ok:
        # The testbed changed: refit the effective-robustness lines of this track.
        from benchmarks.fits import refit_track

        refit_track(submission.track)
    if not result.ok:
        from accounts.quota import refund_platform_failure

        refund_platform_failure(submission)  # the platform's own faults do not cost the researcher quota
        logger.info("submission %s failed: %s", submission.public_id, failure_message(result.error_code, result.error))
    return submission.state


def enqueue(submission: Submission) -> None:
    """Send the submission to the evaluation queue and remember the task id."""
    async_result = evaluate_submission.apply_async(args=[submission.pk], queue=settings.CELERY_TASK_DEFAULT_QUEUE)
    Submission.objects.filter(pk=submission.pk).update(task_id=async_result.id or "")
