"""The attack cascade's stages, in cascade order: one registry the cascade runs and the pages read.

Each stage is a name (in metric names, ``robust_accuracy@<threat>><name>``, in the seeds of its
random draws and in a suite's ``stages``), a label (how a page names it) and one function with
one signature. The cascade runs the stages a suite lists, in this order; the leaderboard orders
and labels per-stage results by :func:`stage_labels`, so a stage added here reaches both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from evaluator.attacks.apgd import apgd_ce, apgd_targeted
from evaluator.attacks.common import AttackResult
from evaluator.attacks.square import square_attack
from evaluator.attacks.threat import ThreatModel

if TYPE_CHECKING:
    from evaluator.attacks.cascade import SuiteConfig

__all__ = ["STAGES", "STAGE_NAMES", "Stage", "StageAttack", "get_stage", "stage_labels"]


class StageAttack(Protocol):
    """One stage's attack on the points still robust: the suite carries its parameters.

    ``generator`` is seeded per (job seed, suite, threat model, stage, chunk) by the cascade;
    ``progress`` gets the fraction of this call's work done.
    """

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
                 suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult: ...


@dataclass(frozen=True)
class Stage:
    """One stage of the cascade: its name in metrics and seeds, its label on pages, its attack."""

    name: str
    label: str
    attack: StageAttack


def _apgd_ce(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
             suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult:
    return apgd_ce(model, x, y, threat, generator, n_iter=suite.apgd_iterations, n_restarts=suite.apgd_restarts,
                   batch_size=batch_size, progress=progress)


def _apgd_t(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
            suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult:
    return apgd_targeted(model, x, y, threat, generator, n_target_classes=suite.target_classes,
                         n_iter=suite.apgd_iterations, n_restarts=suite.apgd_restarts, batch_size=batch_size,
                         progress=progress)


def _square(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
            suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult:
    return square_attack(model, x, y, threat, generator, n_queries=suite.square_queries, p_init=suite.square_p_init,
                         batch_size=batch_size, progress=progress)


#: Every stage, in cascade order (AutoAttack's standard order, without FAB-T).
STAGES: tuple[Stage, ...] = (
    Stage("apgd-ce", "APGD-CE", _apgd_ce),
    Stage("apgd-t", "APGD-T", _apgd_t),
    Stage("square", "Square", _square),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
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
