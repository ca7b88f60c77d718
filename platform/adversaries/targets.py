"""What an attack faces on a track: the threat models it is run under and the number it can lower.

A classifier track's attacks run under the track's threat models and lower its robust accuracy; a
detector track's run under the detector suite's Linf budgets (on its hidden fakes) and lower the AUC
of the hidden reals against the attacked fakes, the suite's ``auc@Linf-k/255``. Free of torch, like
the job specs, since the web processes ask it.
"""

from __future__ import annotations

from benchmarks.models import Track
from evaluator.spec import budget_label
from submissions.job_spec import detector_attack_spec

#: The metric an attack lowers, per task kind (stored per threat label in ``AttackRun.robust``).
LOWERED = {Track.TaskKind.CLASSIFIER: "robust_accuracy", Track.TaskKind.DETECTOR: "auc"}
#: How the pages name it.
LOWERED_LABEL = {"robust_accuracy": "robust accuracy", "auc": "AUC under attack"}


def threat_labels(track: Track) -> list[str]:
    """The labels of the threat models an attack on ``track`` runs under; empty when the track takes none."""
    if track.task_kind == Track.TaskKind.CLASSIFIER:
        return [str(t.get("label") or "") for t in track.threat_models or [] if isinstance(t, dict)]
    if track.task_kind == Track.TaskKind.DETECTOR:
        config = detector_attack_spec(track)
        return [budget_label(float(eps)) for eps in config.pgd_budgets] if config is not None else []
    return []


def takes_attacks(track: Track) -> bool:
    """A public track with at least one threat model to attack under."""
    return bool(track.is_public and threat_labels(track))


def lowered_metric(track: Track) -> str:
    """``robust_accuracy`` on a classifier track, ``auc`` on a detector track."""
    return LOWERED.get(track.task_kind, "robust_accuracy")
