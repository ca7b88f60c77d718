"""The evaluation queue of record: which queued job starts next, its position, and its estimated start.

The database decides who runs next, not the broker. A broker message only wakes a worker; the
worker then claims the next job of its Celery queue by the policy below, under the job's row lock
(``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL), so message order, lost or duplicated
messages cannot change the order (kombu's filesystem transport, for one, reads its messages in an
order that jumps whenever its millisecond counter gains a digit).

The policy, for the jobs waiting on one Celery queue (a track's own queue, or the default one):

1. **Priority first.** Researchers' uploads have priority 0; baselines and jobs of the ``robots``
   group (``ARENA_QUOTA_EXEMPT_GROUP``: CI, baseline loaders) have -1, so they wait behind every
   upload. An admin can add to it per track (``Track.queue_priority``) and per user
   (``accounts.QueuePriority``).
2. **Fair share between owners.** When a job is queued it gets a round (``Submission.fair_round``):
   the current round of the queue if its owner has nothing else waiting or running there, else one
   more than the owner's latest. A user's second job therefore waits behind every other user's first,
   however many jobs they queued at once.
3. **First come, first served** within a round, by the time the job was queued.

The round is fixed when the job is queued, so a job's position only grows when a job with a better
claim arrives (a higher priority, or another user's earlier round), never as other jobs start or end.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Exists, Max, Min, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import QueuePriority
from submissions.dispatch import queue_of
from submissions.models import Submission
from submissions.recovery import REQUEUE_PREFIX, Claim

logger = logging.getLogger(__name__)

#: Priority of a researcher's upload; baselines and the robots group's jobs get one less.
UPLOAD_PRIORITY = 0
ROBOT_PRIORITY = -1
#: Finished jobs of a track whose durations estimate a start time.
DURATION_SAMPLE = 20
#: A scan that passed over a locked job and claimed nothing looks again this many times, this long apart
#: (:func:`claim_next`): a write that locks a queued job lasts milliseconds.
LOCKED_RETRIES = 5
LOCKED_RETRY_SECONDS = 0.05


def _on_queue(queue: str) -> Q:
    """Jobs of the tracks whose evaluations go to ``queue``."""
    mine = Q(track__queue=queue)
    return mine | Q(track__queue="") if queue == settings.CELERY_TASK_DEFAULT_QUEUE else mine


@dataclass(frozen=True)
class Waiting:
    """A queued job as the policy sees it; ``key`` sorts the queue (smallest starts first)."""

    pk: int
    owner_id: int
    priority: int
    fair_round: int
    queued_at: datetime

    @property
    def key(self) -> tuple[int, int, datetime, int]:
        return (-self.priority, self.fair_round, self.queued_at, self.pk)


def _active(queue: str) -> tuple[list[Waiting], list[datetime | None]]:
    """The queued jobs of ``queue`` in start order, and the start times of its running jobs: one query."""
    robot = Exists(Group.objects.filter(name=settings.ARENA_QUOTA_EXEMPT_GROUP, user=OuterRef("owner_id")))
    boost = Subquery(QueuePriority.objects.filter(user=OuterRef("owner_id")).values("priority")[:1])
    rows = (Submission.objects.filter(_on_queue(queue), state__in=[Submission.State.QUEUED, Submission.State.RUNNING])
            .annotate(robot=robot, boost=Coalesce(boost, 0))
            .values_list("pk", "state", "owner_id", "is_baseline", "robot", "boost", "track__queue_priority",
                         "fair_round", "queued_at", "started_at"))
    jobs, running = [], []
    for pk, state, owner, baseline, is_robot, boost_value, track_boost, fair_round, queued_at, started_at in rows:
        if state == Submission.State.RUNNING:
            running.append(started_at)
            continue
        priority = (ROBOT_PRIORITY if baseline or is_robot else UPLOAD_PRIORITY) + track_boost + boost_value
        jobs.append(Waiting(pk, owner, priority, fair_round, queued_at))
    return sorted(jobs, key=lambda job: job.key), running


def waiting(queue: str) -> list[Waiting]:
    """The jobs queued on ``queue``, in the order they will start."""
    return _active(queue)[0]


def assign_round(submission: Submission) -> int:
    """Fix the fair-share round of ``submission``, which is being queued now; returns it.

    The queue's current round is the lowest round still waiting (or, with nothing waiting, the
    highest running); an owner with jobs waiting or running on the queue gets one round past their
    latest. Two jobs queued at the same instant may share a round: then the earlier one goes first.
    """
    queue = queue_of(submission.track)
    active = Submission.objects.filter(_on_queue(queue)).exclude(pk=submission.pk)
    queued = active.filter(state=Submission.State.QUEUED)
    current = queued.aggregate(r=Min("fair_round"))["r"]
    if current is None:
        current = active.filter(state=Submission.State.RUNNING).aggregate(r=Max("fair_round"))["r"] or 0
    latest = active.filter(owner_id=submission.owner_id, state__in=[Submission.State.QUEUED, Submission.State.RUNNING]
                           ).aggregate(r=Max("fair_round"))["r"]
    fair_round = current if latest is None else max(current, latest + 1)
    submission.fair_round = fair_round
    if submission.pk:
        Submission.objects.filter(pk=submission.pk).update(fair_round=fair_round)
    return fair_round


@dataclass(frozen=True)
class Place:
    """Where a queued job stands: ``ahead`` jobs start before it; ``estimated_start`` may be None (no history)."""

    ahead: int
    estimated_start: datetime | None


def _typical_duration(track_id: int) -> timedelta | None:
    """The median wall time of the track's recent finished evaluations."""
    recent = Submission.objects.filter(track_id=track_id, state=Submission.State.FINISHED, started_at__isnull=False,
                                       finished_at__isnull=False).order_by("-finished_at")[:DURATION_SAMPLE]
    seconds = [(s.finished_at - s.started_at).total_seconds() for s in recent.only("started_at", "finished_at")]
    return timedelta(seconds=statistics.median(seconds)) if seconds else None


def places(submissions: list[Submission], now: datetime | None = None) -> dict[int, Place]:
    """pk -> Place for each queued submission of ``submissions`` (one pass over each queue involved).

    The estimate assumes the queue keeps its current number of busy workers (at least one) and the
    track's median duration per job: the jobs ahead plus those running, shared among the workers,
    less the time the running ones have already had.
    """
    now = now or timezone.now()
    out: dict[int, Place] = {}
    durations: dict[int, timedelta | None] = {}
    by_queue: dict[str, list[Submission]] = {}
    for s in submissions:
        if s.state == Submission.State.QUEUED:
            by_queue.setdefault(queue_of(s.track), []).append(s)
    for queue, mine in by_queue.items():
        jobs, running = _active(queue)
        order = {job.pk: i for i, job in enumerate(jobs)}
        workers = max(1, len(running))
        elapsed = sum(((now - t).total_seconds() for t in running if t is not None), 0.0)
        for s in mine:
            if s.pk not in order:
                continue  # started or cancelled since it was read
            ahead = order[s.pk]
            if s.track_id not in durations:
                durations[s.track_id] = _typical_duration(s.track_id)
            typical = durations[s.track_id]
            start = None
            if typical is not None:
                seconds = typical.total_seconds()
                wait = max(0.0, (seconds * (ahead + len(running)) - elapsed) / workers)
                start = now + timedelta(seconds=math.ceil(wait))
            out[s.pk] = Place(ahead, start)
    return out


def place(submission: Submission) -> Place | None:
    """Where ``submission`` stands in its queue, or None when it is not queued."""
    return places([submission]).get(submission.pk)


def claim_next(queue: str, message_id: str) -> Claim | None:
    """Start the next job of ``queue`` by the policy, as the job of ``message_id``; None when none is waiting.

    Each candidate is locked with SKIP LOCKED (PostgreSQL): two workers claiming at once take
    different jobs instead of queueing on the same row. The state is checked again under the lock,
    so a job cancelled or claimed meanwhile is passed over.

    A row is not only locked by another worker's claim: the sender writes the message's id on the job
    right after sending it (:func:`submissions.dispatch.enqueue`), and the watchdog its wake-up time, so
    a worker fast enough to take the message within that write's millisecond found its one job locked,
    passed it over and went idle, leaving it queued with no message (seen in CI). So a scan that passed
    over a locked job and claimed nothing looks again, a few times, a moment later: a claim by another
    worker has then committed (the job is running and is passed over for good), a short write is over.
    """
    for attempt in range(LOCKED_RETRIES + 1):
        if attempt:
            time.sleep(LOCKED_RETRY_SECONDS)
        passed_over_locked = False
        for job in waiting(queue):
            claim = _claim_job(job.pk, message_id)
            if isinstance(claim, Claim):
                return claim
            passed_over_locked = passed_over_locked or claim
        if not passed_over_locked:
            return None
    return None


def _claim_job(pk: int, message_id: str) -> Claim | bool:
    """Start job ``pk`` as the job of ``message_id`` if it is still queued and nobody holds its row; else
    whether it was passed over only for the lock (True) or is no longer queued (False)."""
    with transaction.atomic():
        row = (Submission.objects.select_for_update(skip_locked=True)
               .filter(pk=pk, state=Submission.State.QUEUED).first())
        if row is None:  # claimed, cancelled or locked since the query
            return Submission.objects.filter(pk=pk, state=Submission.State.QUEUED).exists()
        note = row.progress_stage if row.progress_stage.startswith(REQUEUE_PREFIX) else ""
        row.transition(Submission.State.RUNNING, progress=0.0, progress_stage="starting", task_id=message_id)
        if note:
            logger.warning("submission %s: attempt %d starts (%s)", row.public_id, row.attempts, note)
        return Claim(row.attempts, note, row.pk)
