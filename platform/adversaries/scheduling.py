"""Who faces whom: an arriving attack faces every public finished model of its track, and a model that
finishes public, or is made public once finished, faces every active attack of its track. Private models
are never attacked.
"""

from __future__ import annotations

from django.db import transaction
from django.dispatch import receiver

from adversaries import dispatch
from adversaries.models import Attack, AttackRun
from submissions.arrival import made_public, result_recorded
from submissions.models import Submission


def attackable(track_id: int):
    """The models of a track an attack may face: public, finished, released by the Ladder, not withdrawn.

    A model whose scores the Ladder withholds is not attacked: an attack's number on it would be its
    robust accuracy, shown to everyone.
    """
    return Submission.objects.filter(track_id=track_id, is_public=True, state=Submission.State.FINISHED,
                                     released=True, withdrawal__isnull=True)


def _queue(attack: Attack, submission: Submission) -> AttackRun | None:
    run, created = AttackRun.objects.get_or_create(attack=attack, submission=submission,
                                                   suite_version=submission.track.suite_version)
    if created:
        transaction.on_commit(lambda: dispatch.enqueue(run))
        return run
    return None


def schedule_attack(attack: Attack) -> list[AttackRun]:
    """Queue ``attack`` against every attackable model of its track (once per model and suite version)."""
    if attack.state != Attack.State.ACTIVE:
        return []
    runs = [_queue(attack, s) for s in attackable(attack.track_id).select_related("track")]
    return [r for r in runs if r is not None]


def schedule_model(submission: Submission) -> list[AttackRun]:
    """Queue every active attack of the model's track against it, when it is attackable."""
    if not attackable(submission.track_id).filter(pk=submission.pk).exists():
        return []
    runs = [_queue(a, submission) for a in Attack.objects.filter(track_id=submission.track_id,
                                                                   state=Attack.State.ACTIVE)]
    return [r for r in runs if r is not None]


@receiver(result_recorded, dispatch_uid="adversaries.face_new_model")
def _on_result(sender, submission: Submission, result, **kwargs) -> None:  # noqa: ANN001, ARG001
    schedule_model(submission)  # reads the row's state again: a failed or incomplete model is not attackable


@receiver(made_public, dispatch_uid="adversaries.face_newly_public_model")
def _on_made_public(sender, submission: Submission, **kwargs) -> None:  # noqa: ANN001, ARG001
    schedule_model(submission)
