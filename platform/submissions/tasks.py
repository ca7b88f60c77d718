"""The Celery tasks: evaluating one submission through the sandboxed evaluator, and the stale-job watchdog.

The evaluation task is safe to deliver more than once (late acknowledgement means a job whose worker
died comes back): :func:`submissions.recovery.claim` decides whether a delivery starts the job, takes
over from a dead worker, or is a duplicate to drop; a heartbeat thread proves the worker alive; and
:func:`submissions.arrival.receive_result` writes the result idempotently, only for the attempt that
still owns the job. Database writes survive dropped connections (see
:func:`submissions.recovery.with_db_retry`). Jobs are sent by :mod:`submissions.dispatch`.
"""

from __future__ import annotations

import logging
import time

from celery import Task, shared_task
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from evaluator.checkpoints import Checkpoint, spec_fingerprint
from evaluator.sandbox import SandboxLimits, SandboxUnavailable, run_sandboxed
from evaluator.spec import JobResult
from submissions import recovery, scheduling, sweeper  # noqa: F401  (sweeper: the watchdog's timer)
from submissions.arrival import receive_result
from submissions.artifacts import ArtifactUnavailable, local_artifact
from submissions.job_spec import build_job_spec
from submissions.models import StageCheckpoint, Submission

logger = logging.getLogger(__name__)

#: Seconds between progress writes to the database (the page polls; no need to write faster).
PROGRESS_INTERVAL = 0.5


class _ProgressWriter:
    """Writes progress and a heartbeat to the submission row, at most every PROGRESS_INTERVAL s.

    Only while ``attempt`` owns the job, and never raising: a progress write lost to a dropped database
    connection is skipped (the next one reconnects) instead of failing an evaluation that is fine.
    """

    def __init__(self, submission_id: int, attempt: int) -> None:
        self.submission_id = submission_id
        self.attempt = attempt
        self.last = 0.0

    def __call__(self, fraction: float, stage: str) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL and fraction < 1.0:
            return
        self.last = now
        try:
            Submission.objects.filter(
                pk=self.submission_id, state=Submission.State.RUNNING, attempts=self.attempt
            ).update(progress=min(max(fraction, 0.0), 1.0), progress_stage=stage[:200], heartbeat_at=timezone.now())
        except DatabaseError as exc:
            logger.warning("progress of submission %s not written: %s", self.submission_id, exc)
            recovery._drop_connection()


class _StageWriter:
    """Keeps each stage the scorer finishes (a :class:`StageCheckpoint` row), while ``attempt`` owns the job.

    A later run of the same job (same fingerprint) resumes after the stored stages: after running out of
    time, after its worker was killed, after a resume by its owner. A write lost to the database is
    retried briefly and then skipped: the stage is run again next time, nothing is wrong.
    """

    def __init__(self, submission_id: int, attempt: int, fingerprint: str) -> None:
        self.submission_id, self.attempt, self.fingerprint = submission_id, attempt, fingerprint

    def resume(self) -> dict | None:
        rows = recovery.with_db_retry(lambda: list(StageCheckpoint.objects.filter(
            submission_id=self.submission_id, fingerprint=self.fingerprint).values_list("data", flat=True)),
            what="reading the finished stages")
        return {"fingerprint": self.fingerprint, "stages": rows} if rows else None

    def __call__(self, checkpoint: Checkpoint) -> None:
        def write() -> None:
            with transaction.atomic():
                owns = Submission.objects.select_for_update().filter(
                    pk=self.submission_id, state=Submission.State.RUNNING, attempts=self.attempt).exists()
                if owns:
                    StageCheckpoint.objects.update_or_create(
                        submission_id=self.submission_id, fingerprint=self.fingerprint, stage=checkpoint.stage,
                        defaults={"data": checkpoint.to_dict()})
        try:
            recovery.with_db_retry(write, what=f"keeping stage {checkpoint.stage}", timeout=30.0)
        except DatabaseError as exc:
            logger.warning("stage %s of submission %s not kept: %s", checkpoint.stage, self.submission_id, exc)


@shared_task(name="submissions.evaluate", bind=True, acks_late=True, reject_on_worker_lost=True)
def evaluate_submission(self: Task, submission_id: int | None = None, queue: str | None = None) -> str:
    """Evaluate the next job of ``queue`` by the queue's policy (a wake-up message from
    :mod:`submissions.dispatch`), or exactly ``submission_id`` (a direct call: tests, operators).

    Returns what became of the job (its state), or why this delivery had nothing to do.
    """
    # A message that comes back after its worker died (reject on worker loss, Redis's visibility timeout)
    # has the same id as before, and Redis also flags it as redelivered (kombu's filesystem transport
    # does not): only for such a message is it worth waiting to see whether the job's owner is gone.
    # Called directly (tests, eager mode) there is no message.
    message_id = self.request.id or ""
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    claim = recovery.with_db_retry(lambda: _claim(submission_id, queue, message_id, redelivered),
                                   what=f"claiming a job of {queue or submission_id}")
    if not isinstance(claim, recovery.Claim):
        return claim  # nothing waiting, or a duplicate or stale delivery: the job is done, owned elsewhere, or gone
    submission_id = claim.submission_id
    submission = recovery.with_db_retry(
        lambda: Submission.objects.select_related("track").get(pk=submission_id), what="loading the submission"
    )
    writer = _ProgressWriter(submission.pk, claim.attempt)
    limits = evaluation_limits()
    # Evaluated inside the caller's transaction (eager mode in a test or a request), the job is invisible
    # to other connections and no worker can be lost: no heartbeat thread then.
    with recovery.Heartbeat(submission.pk, claim.attempt, enabled=not connection.in_atomic_block) as heartbeat:
        try:
            with local_artifact(submission) as artifact_path:
                spec = build_job_spec(submission, artifact_path)
                stages = _StageWriter(submission.pk, claim.attempt, spec_fingerprint(spec))
                result = run_sandboxed(
                    spec, progress=writer, limits=limits, allow_unsandboxed=settings.ARENA_ALLOW_UNSANDBOXED,
                    should_cancel=heartbeat.should_stop, resume=stages.resume(), on_checkpoint=stages,
                )
        except ArtifactUnavailable as exc:
            logger.error("cannot evaluate %s: %s", submission.public_id, exc)
            result = platform_failure(submission, "internal", f"The uploaded file could not be fetched: {exc}.")
        except SandboxUnavailable as exc:
            logger.error("refusing to evaluate %s: %s", submission.public_id, exc)
            result = platform_failure(submission, "sandbox_unavailable", str(exc))
        except Exception as exc:  # the platform's own fault: record it, never leave the job stuck
            logger.exception("evaluation of %s failed inside the platform", submission.public_id)
            result = platform_failure(submission, "internal", f"{type(exc).__name__}: {exc}")

    result.provenance["attempt"] = claim.attempt
    if claim.note:
        result.provenance["recovery"] = claim.note
    recorded = receive_result(submission.pk, claim.attempt, result)
    if recorded is None:
        state = Submission.objects.filter(pk=submission.pk).values_list("state", flat=True).first() or "missing"
        logger.info("submission %s attempt %d ended without writing: the job is %s now", submission.public_id,
                    claim.attempt, state)
        return "cancelled" if state == Submission.State.CANCELLED else "superseded"
    if result.provenance.get("sandbox") == "unsandboxed":
        logger.warning("submission %s was evaluated WITHOUT a sandbox (operator allowed it)", recorded.public_id)
    return recorded.state


def _claim(submission_id: int | None, queue: str | None, message_id: str, redelivered: bool) -> recovery.Claim | str:
    """The job this delivery evaluates: the one it already held (it comes back after its worker died), the
    one it names, or the next one of its queue; a string says why there is none."""
    held = (Submission.objects.filter(task_id=message_id, state=Submission.State.RUNNING)
            .values_list("pk", flat=True).first() if message_id and queue else None)
    if held is not None:
        return recovery.claim(held, message_id=message_id, redelivered=redelivered)
    if submission_id is not None:
        return recovery.claim(submission_id, message_id=message_id, redelivered=redelivered)
    return scheduling.claim_next(queue or settings.CELERY_TASK_DEFAULT_QUEUE, message_id) or "idle"


def evaluation_limits() -> SandboxLimits:
    """The limits of one evaluation from the operator's settings (``ARENA_EVAL_THREADS`` 0: every core)."""
    threads = {"threads": settings.ARENA_EVAL_THREADS} if settings.ARENA_EVAL_THREADS > 0 else {}
    return SandboxLimits(wall_seconds=settings.ARENA_EVAL_WALL_SECONDS, memory_bytes=settings.ARENA_EVAL_MEMORY_BYTES,
                         nice=max(0, min(19, settings.ARENA_EVAL_NICE)), **threads)


def platform_failure(submission: Submission, code: str, message: str) -> JobResult:
    """A failed result for a job about ``submission`` that never reached the evaluator (a file or the sandbox
    was missing): its evaluation's, or an attack run's against it (adversaries.tasks)."""
    track = submission.track
    return JobResult(job_id=str(submission.public_id), ok=False, suite_version=track.suite_version,
                           seed=track.seed, error_code=code, error=message)
