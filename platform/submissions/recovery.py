"""Keeping evaluations alive through faults: worker heartbeats, claiming a job, and the stale-job watchdog.

Three faults are covered, and the same row lock on the submission arbitrates all of them:

* **A worker killed mid-evaluation.** Celery delivers the job again (late acknowledgement, and
  ``reject_on_worker_lost`` when only the pool process died; with Redis after the broker's visibility
  timeout). The new delivery finds the submission ``running`` and cannot tell a dead owner from a live
  one by the state alone, so :func:`claim` watches ``heartbeat_at``: if the heartbeat moves, the owner
  is alive and the duplicate is dropped; once it is older than the stale threshold, the new delivery
  takes the job over as a new attempt.
* **A job whose message is gone with its worker** (kombu's filesystem transport keeps unacknowledged
  messages only in the dead worker's memory; a Redis broker without persistence forgets them on a
  restart). Nothing will ever deliver it again, so :func:`requeue_stale` — the watchdog, run on a timer
  inside every worker (:mod:`submissions.sweeper`) or by ``manage.py requeue_stale`` from cron — finds ``running``
  submissions whose heartbeat is stale and requeues them, or fails them with ``worker_lost`` (a
  platform fault: the quota is refunded) once ``ARENA_MAX_ATTEMPTS`` evaluations have been started.
* **The database dropping connections** (a PostgreSQL restart, a failover): :func:`with_db_retry`
  reconnects and repeats a whole unit of work, which is safe because every write here is idempotent.

Every evaluation attempt owns the submission through its number (``Submission.attempts``): the
heartbeat, progress and final result of attempt *n* are written only while the row is still
``running`` with ``attempts == n``. A worker that was presumed dead but was only slow therefore stops
its sandbox and discards its result instead of racing the attempt that replaced it.

The thresholds are in :mod:`submissions.fault_settings`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Q
from django.dispatch import Signal
from django.utils import timezone

from submissions import dispatch
from submissions.failures import WORKER_LOST, failure_message
from submissions.fault_settings import heartbeat_seconds, max_attempts, stale_after
from submissions.models import Submission
from submissions.quota import refund_platform_failure

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Waits between polls and retries (a module attribute so that tests can run the loops without waiting).
_sleep = time.sleep

#: Start of ``progress_stage`` while a job waits after the watchdog requeued it (the next attempt reads it).
REQUEUE_PREFIX = "Requeued:"


# --- Surviving dropped database connections. -------------------------------------------------------

def _drop_connection() -> None:
    """Close this thread's database connection so that the next query opens a fresh one."""
    try:
        connection.close()
    except DatabaseError:  # closing a connection the server already dropped may itself fail
        connection.connection = None


def with_db_retry(work: Callable[[], T], *, what: str, timeout: float = 120.0) -> T:
    """Run ``work`` (a whole transaction, never part of one), reconnecting and repeating it on connection loss.

    Only connection-level errors are retried (``OperationalError``, ``InterfaceError``: a terminated
    backend, a restarting server, SQLite's "database is locked"); ``work`` must be idempotent, because
    a commit whose acknowledgement was lost is repeated too. Gives up after ``timeout`` seconds and
    re-raises: the job then stays ``running`` without heartbeats and the watchdog requeues it.
    """
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        try:
            return work()
        except (OperationalError, InterfaceError) as exc:
            if connection.in_atomic_block or time.monotonic() + delay > deadline:
                raise
            logger.warning("database error while %s (%s: %s); reconnecting in %.1f s",
                           what, type(exc).__name__, str(exc).strip()[:200], delay)
            _drop_connection()
            _sleep(delay)
            delay = min(delay * 2, 5.0)


# --- Claiming a delivered job. ---------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """The right to evaluate a submission as attempt ``attempt``; ``note`` says why it is not the first."""

    attempt: int
    note: str = ""
    submission_id: int | None = None


def _last_sign_of_life(submission: Submission) -> datetime | None:
    return submission.heartbeat_at or submission.started_at


def _fail_worker_lost(submission: Submission, detail: str) -> None:
    """Give the job up (under the caller's row lock): a platform fault, shown in plain words."""
    submission.transition(
        Submission.State.FAILED, failure_code=WORKER_LOST,
        failure_reason=failure_message(
            WORKER_LOST, f"It stopped responding {detail}. This is a fault of the platform: it does not count "
                         "against your quota, and you may submit the model again."),
    )


def claim(submission_id: int, *, message_id: str | None = None, redelivered: bool = False,
          poll: float | None = None) -> Claim | str:
    """Take ``submission_id`` for evaluation, or say (a string) why this delivery has nothing to do.

    ``queued``: the next attempt starts. ``running`` with a stale heartbeat: its worker is gone; take
    over as a new attempt (or fail the job once ``ARENA_MAX_ATTEMPTS`` were started). ``running``
    with a fresh heartbeat: another message is a duplicate, dropped at once; but the very message
    that started the running attempt (``message_id`` equal to the submission's ``task_id``), or one
    the broker flags as ``redelivered``, is coming back because the worker that held it died (or,
    with Redis, outlived the visibility timeout): then wait until the heartbeat either moves (the
    owner is alive: drop it) or grows stale (take over). The wait holds no lock, costs a short query
    per ``poll`` seconds and lasts at most the stale threshold. Any other state (finished, failed,
    cancelled) means a message that outlived its job.
    """
    stale = stale_after()
    poll = poll if poll is not None else min(1.0, heartbeat_seconds() / 2)
    seen: datetime | None = None
    deadline = time.monotonic() + stale.total_seconds() + 10 * poll
    while True:
        failed: Submission | None = None
        with transaction.atomic():
            current = Submission.objects.select_for_update().filter(pk=submission_id).first()
            if current is None:
                logger.warning("submission %s vanished before evaluation", submission_id)
                return "missing"
            if current.state == Submission.State.QUEUED:
                note = current.progress_stage if current.progress_stage.startswith(REQUEUE_PREFIX) else ""
                current.transition(Submission.State.RUNNING, progress=0.0, progress_stage="starting")
                if note:
                    logger.warning("submission %s: attempt %d starts (%s)", current.public_id, current.attempts, note)
                return Claim(current.attempts, note, current.pk)
            if current.state != Submission.State.RUNNING:
                return current.state  # a message that outlived its job: nothing to do
            beat = _last_sign_of_life(current)
            age = (timezone.now() - beat).total_seconds() if beat else float("inf")
            if age >= stale.total_seconds():
                silent = f"no heartbeat for {age:.0f} s" if beat else "no heartbeat at all"
                detail = f"during attempt {current.attempts} ({silent})"
                if current.attempts >= max_attempts():
                    logger.error("submission %s: worker lost %s; %d attempts started, giving up",
                                 current.public_id, detail, current.attempts)
                    _fail_worker_lost(current, f"{current.attempts} times, the last time {detail}")
                    failed = current
                else:
                    note = (f"Redelivered: the worker of attempt {current.attempts} was lost ({silent}); "
                            f"attempt {current.attempts + 1} takes over.")
                    Submission.objects.filter(pk=current.pk).update(
                        attempts=current.attempts + 1, started_at=timezone.now(), heartbeat_at=timezone.now(),
                        progress=0.0, progress_stage="restarting after a lost worker",
                    )
                    logger.warning("submission %s: %s", current.public_id, note)
                    return Claim(current.attempts + 1, note, current.pk)
            elif not (redelivered or (message_id and message_id == current.task_id)) or (
                seen is not None and beat != seen
            ):
                logger.info("submission %s is running elsewhere (attempt %d, heartbeat %.0f s old): duplicate "
                            "delivery dropped", current.public_id, current.attempts, age)
                return "running"
            seen = beat
        if failed is not None:
            refund_platform_failure(failed)
            return failed.state
        if time.monotonic() > deadline:
            return "running"
        _sleep(poll)


# --- The heartbeat a running evaluation writes. ----------------------------------------------------

class Heartbeat:
    """While the job runs, stamp ``heartbeat_at`` every ``ARENA_HEARTBEAT_SECONDS`` from a thread of its own.

    The thread does not depend on the evaluator reporting progress (loading a model or a long attack
    can be silent for minutes), so a missing heartbeat means the worker process is gone, not busy.
    Between beats it checks about once a second that this attempt still owns the job; when it does
    not (cancelled by the user, replaced after being presumed dead) :meth:`should_stop` turns True,
    which the sandbox polls to kill the evaluation. Database errors are logged and survived: a beat
    is skipped and the next one reconnects.
    """

    def __init__(self, submission_id: int, attempt: int, interval: float | None = None, enabled: bool = True) -> None:
        self.submission_id = submission_id
        self.attempt = attempt
        self.enabled = enabled
        self.interval = interval if interval is not None else heartbeat_seconds()
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{submission_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join(timeout=10)

    def should_stop(self) -> bool:
        return self._lost.is_set()

    def _still_mine(self) -> bool:
        """False only when the row is seen owned by someone else (or in another state); a row not seen at all
        (deleted, or not yet committed) is left to the final write to sort out."""
        row = Submission.objects.filter(pk=self.submission_id).values_list("state", "attempts").first()
        return row is None or row == (Submission.State.RUNNING, self.attempt)

    def _run(self) -> None:
        tick = min(1.0, self.interval)
        next_beat = time.monotonic() + self.interval
        try:
            while not self._stop.wait(tick):
                try:
                    if time.monotonic() >= next_beat:
                        Submission.objects.filter(
                            pk=self.submission_id, state=Submission.State.RUNNING, attempts=self.attempt
                        ).update(heartbeat_at=timezone.now())
                        next_beat = time.monotonic() + self.interval
                    still_mine = self._still_mine()
                except DatabaseError as exc:
                    logger.warning("heartbeat of submission %s skipped: %s", self.submission_id, exc)
                    _drop_connection()
                    continue
                if not still_mine:
                    logger.info("submission %s attempt %d no longer owns the job (cancelled or replaced): stopping",
                                self.submission_id, self.attempt)
                    self._lost.set()
                    return
        finally:
            _drop_connection()  # this thread's own connection


# --- The watchdog. ---------------------------------------------------------------------------------

#: Sent at the end of every sweep (``now``, ``stale``) so that apps above this one, which this one cannot
#: import, sweep their own jobs in the same tick; a receiver returns the list of what it did.
swept = Signal()


@dataclass(frozen=True)
class Recovery:
    """What the watchdog did to one submission: ``requeued``, ``failed``, ``sent`` (its lost message) or
    ``woke`` (a worker of its queue, which had waiting jobs and none running)."""

    public_id: str
    action: str
    attempts: int
    reason: str


def requeue_stale(*, now: datetime | None = None, stale: timedelta | None = None,
                  limit: int | None = None) -> list[Recovery]:
    """Requeue (or fail, after ``ARENA_MAX_ATTEMPTS``) every ``running`` submission with a stale heartbeat.

    Idempotent: each candidate is re-checked under its row lock, and a requeued submission is
    ``queued``, so a second run (or two watchdogs at once) finds nothing more to do. A requeue keeps
    the attempt count and leaves its reason in ``progress_stage``; the next attempt copies it into the
    run's provenance. A failure refunds the quota (``worker_lost`` is a platform fault).
    """
    now = now or timezone.now()
    stale = stale if stale is not None else stale_after()
    limit = limit if limit is not None else max_attempts()
    cutoff = now - stale
    candidates = Submission.objects.filter(state=Submission.State.RUNNING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
        | Q(heartbeat_at__isnull=True, started_at__isnull=True)
    )
    done: list[Recovery] = []
    for pk in list(candidates.values_list("pk", flat=True)):
        with transaction.atomic():
            current = Submission.objects.select_for_update().get(pk=pk)
            beat = _last_sign_of_life(current)
            if current.state != Submission.State.RUNNING or (beat is not None and beat >= cutoff):
                continue  # finished, or its worker beat, since the query
            age = (now - beat).total_seconds() if beat else None
            silent = f"no heartbeat for {age:.0f} s" if age is not None else "no heartbeat at all"
            if current.attempts < limit:
                reason = (f"{REQUEUE_PREFIX} the worker of attempt {current.attempts} stopped responding "
                          f"({silent}); attempt {current.attempts + 1} of {limit} will follow.")
                current.transition(Submission.State.QUEUED, attempts=current.attempts, progress_stage=reason[:200])
                # robust: a broker that is down must not stop the sweep; the job stays queued without a
                # task id, and the next sweep sends it (see below).
                transaction.on_commit(lambda s=current: dispatch.enqueue(s), robust=True)
                action = "requeued"
            else:
                reason = f"{current.attempts} times, the last time during attempt {current.attempts} ({silent})"
                _fail_worker_lost(current, reason)
                action = "failed"
        if action == "failed":
            refund_platform_failure(current)
        logger.warning("watchdog: submission %s %s (%s)", current.public_id, action, reason)
        done.append(Recovery(str(current.public_id), action, current.attempts, current.failure_reason or reason))
    done.extend(_send_unsent(cutoff))
    done.extend(_wake_stalled_queues(now - 2 * stale, stale))
    # Apps above this one (attack runs) sweep their own jobs in the same tick; one that fails is logged, and
    # the evaluations' sweep above stands.
    for listener, response in swept.send_robust(sender=Submission, now=now, stale=stale):
        if isinstance(response, Exception):
            logger.error("watchdog: %r failed: %r", listener, response)
        elif isinstance(response, list):
            done.extend(response)
    return done


def _wake_stalled_queues(cutoff: datetime, stale: timedelta) -> list[Recovery]:
    """Wake a worker of each queue where a job woke no worker since ``cutoff`` while none of the queue's jobs runs.

    Every queued job had a wake-up message sent, but one can be lost without a trace (a worker killed
    between taking a message and claiming a job, on a broker that keeps unacknowledged messages only in
    the worker's memory). A wake-up too many is harmless (it finds nothing and does nothing) and expires
    after the stale threshold, so idle sweeps with every worker down do not pile messages up.
    """
    waiting = (Submission.objects.filter(state=Submission.State.QUEUED, woken_at__lt=cutoff)
               .exclude(task_id="").select_related("track"))
    queues = {dispatch.queue_for(s): s for s in waiting.order_by("queued_at", "id")}
    busy = {dispatch.queue_for(s) for s in Submission.objects.filter(state=Submission.State.RUNNING)
            .select_related("track").only("track__queue")}
    woken: list[Recovery] = []
    for queue, oldest in queues.items():
        if queue in busy:
            continue
        try:
            dispatch.wake(queue, expires=stale.total_seconds())
            Submission.objects.filter(pk=oldest.pk).update(woken_at=timezone.now())
        except Exception as exc:  # the broker is away: the next sweep tries again
            logger.warning("watchdog: could not wake a worker of queue %s: %s", queue, exc)
            continue
        logger.warning("watchdog: jobs wait on queue %s with none running; woke a worker", queue)
        woken.append(Recovery(str(oldest.public_id), "woke", oldest.attempts,
                              f"queue {queue} had waiting jobs and none running"))
    return woken


def _send_unsent(cutoff: datetime) -> list[Recovery]:
    """Send the queued jobs whose message never reached the broker (it was down when they were queued).

    ``task_id`` is set only once the broker accepted the message, and the job must have waited past
    the stale threshold (an upload's message is sent just after its transaction commits). A message
    sent twice is harmless: the second delivery finds the job running or done and drops itself.
    """
    unsent = Submission.objects.filter(state=Submission.State.QUEUED, task_id="", queued_at__lt=cutoff)
    sent: list[Recovery] = []
    for submission in unsent:
        try:
            dispatch.enqueue(submission)
        except Exception as exc:  # the broker is still away: try again at the next sweep
            logger.warning("watchdog: could not send queued submission %s yet: %s", submission.public_id, exc)
            continue
        logger.warning("watchdog: queued submission %s had no message on the broker; sent it", submission.public_id)
        sent.append(Recovery(str(submission.public_id), "sent", submission.attempts,
                             "queued while its message never reached the broker"))
    return sent
