"""The attack cascade's stages, in cascade order: one registry the cascade runs and the pages read.

Two roles: the cascade's stages run on every job; the escalation stages run only on the points a
threat model left robust when a reliability check fired (black-box beating white-box, robust
accuracy not falling with eps, gradients missing), spending more before a number is published.

Each stage is a name (in metric names, ``robust_accuracy@<threat>><name>``, in the seeds of its
random draws and in a suite's ``stages``) and a label (how a page names it); its attack, one function
with one signature, is in :data:`evaluator.attacks.stage_attacks.ATTACKS` under the same name. This
module imports no torch, so the web server reads the order and the labels (:func:`stage_labels`)
without loading the attacks; a stage added here and there reaches both the cascade and the pages.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CASCADE_STAGE_NAMES", "ESCALATION_STAGE_NAMES", "STAGES", "STAGE_NAMES", "Stage", "get_stage", "stage_labels",
]


@dataclass(frozen=True)
class Stage:
    """One stage of the cascade: its name in metrics and seeds, and its label on pages."""

    name: str
    label: str
    #: "cascade" (every job) or "escalation" (only when a reliability check fired).
    role: str = "cascade"


#: Every stage, in cascade order (AutoAttack's standard order: the gradient attacks, then the
#: minimum-norm attacks, the cheaper FMN before FAB-T, then the black-box Square), then the
#: escalation stages in their order.
STAGES: tuple[Stage, ...] = (
    Stage("apgd-ce", "APGD-CE"),
    Stage("apgd-t", "APGD-T"),
    Stage("fmn", "FMN"),
    Stage("fab-t", "FAB-T"),
    Stage("square", "Square"),
    Stage("esc-apgd-ce", "APGD-CE, restarts (escalation)", "escalation"),
    Stage("esc-apgd-dlr", "APGD-DLR, restarts (escalation)", "escalation"),
    Stage("esc-fmn", "FMN, restarts (escalation)", "escalation"),
    Stage("esc-fab-t", "FAB-T, restarts (escalation)", "escalation"),
    Stage("esc-square", "Square, restarts (escalation)", "escalation"),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
CASCADE_STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES if stage.role == "cascade")
ESCALATION_STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES if stage.role == "escalation")
_BY_NAME = {stage.name: stage for stage in STAGES}


def get_stage(name: str) -> Stage:
    """A stage by name; an unknown name lists the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown attack stage {name!r}; known: {STAGE_NAMES}") from None


def stage_labels() -> tuple[tuple[str, str], ...]:
    """``(name, label)`` of every stage, in cascade order: what the leaderboard orders and labels by."""
    return tuple((stage.name, stage.label) for stage in STAGES)
