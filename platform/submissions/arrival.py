"""What happens when an evaluation's result arrives, in one place.

:func:`receive_result` is the only way a result enters the database. In order, it

1. checks that the attempt delivering it still owns the job (under the submission's row lock, in
   the same transaction as the writes, so a presumed-dead worker that finishes late cannot write
   over the attempt that replaced it);
2. writes the run, its metrics and the new state idempotently (:func:`record_result`); an
   ``out_of_time`` result keeps the metrics of its finished stages and leaves the submission
   ``incomplete``;
3. applies the Ladder (:func:`submissions.ladder.apply_ladder`), which decides whether the scores are
   released;
4. refunds the quota charge when the failure was the platform's fault (:mod:`submissions.failures`), and
   queues an evaluation cut by the per-attempt limit for its next slice (:func:`continues`);
5. announces the result (:data:`result_recorded`), on which the leaderboards refit their baseline
   lines when a baseline finished (:mod:`leaderboards.fits`): a signal, because the leaderboards sit
   above submissions and are not imported from here.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.dispatch import Signal

from evaluator.spec import JobResult
from submissions.failures import OUT_OF_TIME, failure_message
from submissions.ladder import apply_ladder
from submissions.models import EvaluationRun, Result, StageCheckpoint, Submission
from submissions.quota import refund_platform_failure
from submissions.recovery import with_db_retry

logger = logging.getLogger(__name__)

#: Sent after a result is recorded (and committed), with ``submission`` and ``result`` (the evaluator's).
result_recorded = Signal()
#: Sent after a submission was made public (``submission``): the layers above may act on a newly listed model.
made_public = Signal()


def receive_result(submission_id: int, attempt: int, result: JobResult) -> Submission | None:
    """Record the result of ``attempt``; None when the job was cancelled or replaced meanwhile (nothing written).

    Safe to call again with the same result (a worker repeating its last step after a dropped database
    connection): the writes are keyed by submission and suite version, the refund happens at most
    once, and a refit of an unchanged testbed reuses the stored line.
    """
    recorded = with_db_retry(lambda: _record_if_owner(submission_id, attempt, result),
                             what=f"recording the result of submission {submission_id}", timeout=300.0)
    if recorded is None:
        return None
    if not result.ok:
        refund_platform_failure(recorded)  # the platform's own faults do not cost the researcher quota
        logger.info("submission %s failed: %s", recorded.public_id, failure_message(result.error_code, result.error))
    result_recorded.send(sender=Submission, submission=recorded, result=result)
    if continues(recorded, result):
        # Imported here: services sits above arrival (it creates and queues submissions).
        from submissions import services

        services.resume(recorded)
        logger.info("submission %s continues in a new attempt after its finished stages", recorded.public_id)
    return recorded


def continues(submission: Submission, result: JobResult) -> bool:
    """Whether an incomplete evaluation goes straight back to the queue for its next slice.

    When the job's budget was cut by the operator's per-attempt limit (``ARENA_EVAL_WALL_SECONDS``)
    rather than spent, the job was not out of time, only out of its slice: it continues in a new
    attempt, as long as each slice finishes at least one more stage (there are finitely many, so
    this ends). A job whose own budget ran out, or whose slice finished nothing, stays ``incomplete``
    for its owner to resume.
    """
    if submission.state != Submission.State.INCOMPLETE:
        return False
    provenance = result.provenance
    capped = (provenance.get("time_budget") or {}).get("capped_at") is not None
    finished = set((provenance.get("incomplete") or {}).get("finished") or [])
    before = set(provenance.get("resumed_stages") or [])
    return capped and bool(finished - before) and bool(submission.artifact)


def _record_if_owner(submission_id: int, attempt: int, result: JobResult) -> Submission | None:
    """Write the result if ``attempt`` still owns the job; None when it was cancelled or replaced meanwhile.

    The ownership check and the writes share one transaction under the row lock.
    """
    with transaction.atomic():
        current = Submission.objects.select_for_update().select_related("track").get(pk=submission_id)
        if current.state != Submission.State.RUNNING or current.attempts != attempt:
            # Repeated after a dropped connection whose commit had in fact gone through: it is this attempt's.
            mine = current.attempts == attempt and current.state in (
                Submission.State.FINISHED, Submission.State.FAILED, Submission.State.INCOMPLETE)
            if mine and EvaluationRun.objects.filter(submission=current, suite_version=result.suite_version,
                                                     provenance__attempt=attempt).exists():
                return current
            return None
        record_result(current, result)
    return current


def record_result(submission: Submission, result: JobResult) -> None:
    """Write a result's rows idempotently, in one transaction, keyed by submission and suite version, and
    settle the submission (failed, or finished with the Ladder applied).

    Delivering the same job twice (a worker killed after writing) overwrites the same rows instead of
    adding duplicates. Called by :func:`receive_result` under the row lock; tests call it directly to
    lay out finished submissions.
    """
    sets = {s.name: s for s in submission.track.evaluation_sets.all()}
    with transaction.atomic():
        EvaluationRun.objects.update_or_create(
            submission=submission,
            suite_version=result.suite_version,
            defaults={
                "seed": result.seed,
                "ok": result.ok,
                "error_code": result.error_code,
                "per_class": result.per_class,
                "provenance": result.provenance,
            },
        )
        incomplete = not result.ok and result.error_code == OUT_OF_TIME
        if not result.ok and not incomplete:
            submission.transition(
                Submission.State.FAILED,
                failure_code=result.error_code,
                failure_reason=failure_message(result.error_code, result.error),
            )
            return
        # A re-run replaces the evaluation: rows of metrics it no longer produces (a changed
        # attack configuration, say) must not linger beside the new ones.
        produced = {(sets[m.evaluation_set].pk, m.metric) for m in result.metrics}
        stale = [pk for pk, set_id, name in Result.objects.filter(
            submission=submission, suite_version=result.suite_version).values_list("pk", "evaluation_set_id", "metric")
            if (set_id, name) not in produced]
        Result.objects.filter(pk__in=stale).delete()
        for metric in result.metrics:
            Result.objects.update_or_create(
                submission=submission,
                evaluation_set=sets[metric.evaluation_set],
                metric=metric.metric,
                suite_version=result.suite_version,
                defaults={
                    "value": metric.value,
                    "ci_low": metric.ci_low,
                    "ci_high": metric.ci_high,
                    "ci_method": metric.ci_method,
                    "num_examples": metric.num_examples,
                    "seed": result.seed,
                },
            )
        if incomplete:
            # The finished stages' numbers are kept and shown; the Ladder decides once the evaluation is complete.
            reached = str((result.provenance.get("incomplete") or {}).get("stage", ""))[:200]
            submission.transition(Submission.State.INCOMPLETE, failure_code=result.error_code,
                                  failure_reason=failure_message(result.error_code, result.error),
                                  progress_stage=reached)
            return
        apply_ladder(submission)
        submission.transition(Submission.State.FINISHED, progress=1.0, progress_stage="finished")
        StageCheckpoint.objects.filter(submission=submission).delete()
