"""The attack of each stage of the cascade (:mod:`evaluator.attacks.stages` names and orders them).

Every stage's attack has the one signature of :class:`StageAttack`, so the cascade runs any of them
the same way; :data:`ATTACKS` maps each registered stage name to its attack, and importing this module
fails if a stage has no attack or an attack no stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from evaluator.attacks.apgd import apgd_ce, apgd_targeted
from evaluator.attacks.common import AttackResult
from evaluator.attacks.square import square_attack
from evaluator.attacks.stages import STAGE_NAMES
from evaluator.attacks.threat import ThreatModel

if TYPE_CHECKING:
    from evaluator.attacks.cascade import SuiteConfig


class StageAttack(Protocol):
    """One stage's attack on the points still robust: the suite carries its parameters.

    ``generator`` is seeded per (job seed, suite, threat model, stage, chunk) by the cascade;
    ``progress`` gets the fraction of this call's work done.
    """

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
                 suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult: ...


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


#: Stage name -> its attack, for every stage of :data:`evaluator.attacks.stages.STAGES`.
ATTACKS: Mapping[str, StageAttack] = MappingProxyType({
    "apgd-ce": _apgd_ce,
    "apgd-t": _apgd_t,
    "square": _square,
})
if tuple(ATTACKS) != STAGE_NAMES:
    raise ImportError(f"the stage registry {STAGE_NAMES} and the attacks {tuple(ATTACKS)} disagree")
