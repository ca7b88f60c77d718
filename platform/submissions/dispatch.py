"""Waking a worker for a queued job: the one place that names the evaluation task.

A message says only "a job waits on this queue": the worker that takes it claims the next job by the
queue's own policy (:mod:`submissions.scheduling`), so the broker's order never decides who runs next.
One message is sent per queued job (and its id kept in ``task_id``, so that a job whose message never
reached the broker can be found and sent again); a message that finds nothing waiting does nothing.

The task is addressed by name through a Celery signature, so this module imports nothing of the
worker side (:mod:`submissions.tasks` imports the sandbox and the recovery code); the task is
registered in every process by :class:`submissions.apps.SubmissionsConfig`, which is what lets a
signature run it in place under ``CELERY_TASK_ALWAYS_EAGER``.
"""

from __future__ import annotations

from celery import signature
from celery.result import AsyncResult
from django.conf import settings
from django.utils import timezone

from benchmarks.models import Track
from submissions.models import Submission

#: The Celery name of the evaluation task (:func:`submissions.tasks.evaluate_submission`).
EVALUATE_TASK = "submissions.evaluate"


def queue_of(track: Track) -> str:
    """The Celery queue a track's jobs wait on: its own when it has one (heavy tracks apart from light
    ones), else the default."""
    return track.queue or settings.CELERY_TASK_DEFAULT_QUEUE


def queue_for(submission: Submission) -> str:
    return queue_of(submission.track)


def enqueue(submission: Submission) -> None:
    """Wake a worker of the submission's queue (the job itself is already queued in the database)."""
    async_result = wake(queue_for(submission))
    Submission.objects.filter(pk=submission.pk).update(task_id=async_result.id or "", woken_at=timezone.now())


def wake(queue: str, expires: float | None = None) -> AsyncResult:
    """Send one wake-up message to ``queue``; ``expires`` (seconds) lets a spare one lapse unread."""
    options = {"queue": queue, **({"expires": expires} if expires else {})}
    return signature(EVALUATE_TASK, kwargs={"queue": queue}, **options).apply_async()
