"""Sending a submission to its evaluation queue: the one place that names the evaluation task.

The task is addressed by name through a Celery signature, so this module imports nothing of the
worker side (:mod:`submissions.tasks` imports the sandbox and the recovery code); the task is
registered in every process by :class:`submissions.apps.SubmissionsConfig`, which is what lets a
signature run it in place under ``CELERY_TASK_ALWAYS_EAGER``.
"""

from __future__ import annotations

from celery import signature
from django.conf import settings

from submissions.models import Submission

#: The Celery name of the evaluation task (:func:`submissions.tasks.evaluate_submission`).
EVALUATE_TASK = "submissions.evaluate"


def queue_for(submission: Submission) -> str:
    """The track's own queue when it has one (heavy tracks apart from light ones), else the default."""
    return submission.track.queue or settings.CELERY_TASK_DEFAULT_QUEUE


def enqueue(submission: Submission) -> None:
    """Send the submission to its track's evaluation queue and remember the task id."""
    async_result = signature(EVALUATE_TASK, args=[submission.pk], queue=queue_for(submission)).apply_async()
    Submission.objects.filter(pk=submission.pk).update(task_id=async_result.id or "")
