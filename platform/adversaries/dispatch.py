"""Sending an attack run to the attack queue: the one place that names the attack task.

Attack runs have a queue of their own (``ARENA_ATTACK_QUEUE``), apart from model evaluations, and a
run that starts while model evaluations wait steps aside (:mod:`adversaries.tasks`): a researcher
waiting for a model's score never waits behind an attack sweep.
"""

from __future__ import annotations

from celery import signature
from django.conf import settings

from adversaries.models import AttackRun

#: The Celery name of the attack task (:func:`adversaries.tasks.run_attack`).
RUN_TASK = "adversaries.run"


def enqueue(run: AttackRun, countdown: float | None = None) -> None:
    """Send the run's message; its id is kept so a message that never left can be told apart."""
    options = {"queue": settings.ARENA_ATTACK_QUEUE, **({"countdown": countdown} if countdown else {})}
    result = signature(RUN_TASK, kwargs={"run_id": run.pk}, **options).apply_async()
    AttackRun.objects.filter(pk=run.pk).update(task_id=result.id or "")
