"""The lowest robust accuracy (on a detector track: AUC under attack) any accepted attack found, per model and
threat model.

A model's robust accuracy on the leaderboard is the minimum over the built-in suite and every
finished run of an active attack at the track's current suite version, with the attack named:
the number can only go down as attacks arrive, and it says who brought it down. A detector's AUC
under each Linf budget works the same way (:mod:`adversaries.targets`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from adversaries.models import Attack, AttackRun
from submissions.rounding import round_released


@dataclass(frozen=True)
class Found:
    """One attack's robust accuracy (or AUC under attack) on one model under one threat model."""

    value: float
    num_examples: int
    ci_low: float | None
    ci_high: float | None
    attack_name: str
    attack_id: str
    #: So that the pages' ``score`` filter rounds it as it rounds every robust accuracy (or AUC).
    metric: str = "robust_accuracy"

    @property
    def attack_url(self) -> str:
        return f"/attacks/{self.attack_id}/"


def released(number: dict, metric: str = "robust_accuracy") -> dict:
    """An attack's number as the site shows it: rounded to the digits its interval justifies.

    An attack chooses which points it breaks, so the exact count it reaches on each model is a channel
    it controls; shown to the digit the interval justifies (whole percents on 500 points), each number
    carries a few bits instead of the count's nine. An AUC under attack is rounded as every AUC is.
    """
    value, low, high = round_released(metric, number.get("value"), number.get("ci_low"), number.get("ci_high"))
    return {"value": value, "ci_low": low, "ci_high": high, "num_examples": number.get("num_examples")}


def lowest_found(submission_ids: Iterable[int], suite_version: str,
                 metric: str = "robust_accuracy") -> dict[int, dict[str, Found]]:
    """Per submission and threat-model label, the lowest number a submitted attack found (one query).

    ``metric`` is what the runs of this track store (:func:`adversaries.targets.lowered_metric`).
    """
    ids = list(submission_ids)
    if not ids:
        return {}
    rows = (AttackRun.objects.filter(submission_id__in=ids, suite_version=suite_version,
                                     state=AttackRun.State.FINISHED, attack__state=Attack.State.ACTIVE)
            .values_list("submission_id", "robust", "attack__name", "attack__public_id", "attack__created_at")
            .order_by("attack__created_at", "attack_id"))
    lowest: dict[int, dict[str, Found]] = {}
    for submission_id, robust, name, public_id, _created in rows:
        for label, number in (robust or {}).items():
            try:
                found = Found(float(number["value"]), int(number["num_examples"]), number.get("ci_low"),
                              number.get("ci_high"), name, str(public_id), metric)
            except (KeyError, TypeError, ValueError):
                continue
            current = lowest.setdefault(submission_id, {}).get(label)
            # Ties go to the earlier attack: it found the number first.
            if current is None or found.value < current.value:
                lowest[submission_id][label] = found
    return lowest


def runs_of(submission_id: int, suite_version: str) -> list[AttackRun]:
    """Every attack run against a model at a suite version, for its page (finished and failed alike)."""
    return list(AttackRun.objects.filter(submission_id=submission_id, suite_version=suite_version,
                                         attack__state=Attack.State.ACTIVE).select_related("attack")
                .order_by("attack__created_at"))
