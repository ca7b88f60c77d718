"""The attack runs' part of the stale-job watchdog: runs whose worker died, and runs whose message never left.

Attack tasks are acknowledged late and rejected when their worker is lost, so a broker that keeps
unacknowledged messages delivers them again; this sweep is for the cases it cannot see. A run still
``running`` after the longest an attack job may take (the scorer process is killed at
``ARENA_EVAL_WALL_SECONDS``) plus the heartbeat staleness has lost its worker and its message: it is
queued again, or failed with ``worker_lost`` once it has had ``ARENA_MAX_ATTEMPTS``. A ``queued`` run
with no task id whose message never reached the broker is sent. It runs inside every sweep of
:func:`submissions.recovery.requeue_stale` (connected to its ``swept`` signal), under row locks, so
several watchdogs at once do nothing twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.dispatch import receiver

from adversaries import dispatch
from adversaries.models import AttackRun
from adversaries.signals import attack_scores_changed
from submissions.failures import WORKER_LOST, failure_message
from submissions.fault_settings import max_attempts
from submissions.recovery import Recovery, swept

logger = logging.getLogger(__name__)


def sweep_attack_runs(now: datetime, stale: timedelta) -> list[Recovery]:
    """Requeue or fail the attack runs whose worker was lost; send the queued runs whose message never left."""
    longest = timedelta(seconds=float(settings.ARENA_EVAL_WALL_SECONDS)) + stale
    done: list[Recovery] = []
    lost = AttackRun.objects.filter(state=AttackRun.State.RUNNING, started_at__lt=now - longest)
    for pk in list(lost.values_list("pk", flat=True)):
        with transaction.atomic():
            run = AttackRun.objects.select_for_update().get(pk=pk)
            if run.state != AttackRun.State.RUNNING or run.started_at is None or run.started_at >= now - longest:
                continue  # finished, or taken again, since the query
            if run.attempts < max_attempts():
                AttackRun.objects.filter(pk=pk).update(state=AttackRun.State.QUEUED, task_id="")
                transaction.on_commit(lambda run=run: dispatch.enqueue(run), robust=True)
                action = "requeued"
            else:
                AttackRun.objects.filter(pk=pk).update(
                    state=AttackRun.State.FAILED, failure_code=WORKER_LOST, finished_at=now,
                    failure_reason=failure_message(WORKER_LOST, f"It stopped responding {run.attempts} times."))
                transaction.on_commit(lambda run=run: attack_scores_changed.send(
                    sender=AttackRun, track_id=run.submission.track_id))
                action = "failed"
        reason = f"attack run still running {(now - run.started_at).total_seconds():.0f} s after it started"
        logger.warning("watchdog: attack run %s %s (%s)", pk, action, reason)
        done.append(Recovery(f"attack-run-{pk}", action, run.attempts, reason))
    unsent = AttackRun.objects.filter(state=AttackRun.State.QUEUED, task_id="", created_at__lt=now - stale)
    for run in unsent:
        try:
            dispatch.enqueue(run)
        except Exception as exc:  # the broker is still away: the next sweep tries again
            logger.warning("watchdog: could not send attack run %s yet: %s", run.pk, exc)
            continue
        logger.warning("watchdog: queued attack run %s had no message on the broker; sent it", run.pk)
        done.append(Recovery(f"attack-run-{run.pk}", "sent", run.attempts,
                             "queued while its message never reached the broker"))
    return done


@receiver(swept, dispatch_uid="adversaries.sweep_attack_runs")
def _on_sweep(sender, now: datetime, stale: timedelta, **kwargs) -> list[Recovery]:  # noqa: ANN001, ARG001
    return sweep_attack_runs(now, stale)


__all__ = ["sweep_attack_runs"]
