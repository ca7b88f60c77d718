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

from evaluator.attacks.apgd import apgd, apgd_ce, apgd_targeted
from evaluator.attacks.common import AttackResult, with_restarts
from evaluator.attacks.fab import fab_targeted
from evaluator.attacks.fmn import fmn
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
                   batch_size=batch_size, progress=progress, reference_schedule=suite.apgd_reference_schedule)


def _apgd_t(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
            suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult:
    return apgd_targeted(model, x, y, threat, generator, n_target_classes=suite.target_classes,
                         n_iter=suite.apgd_iterations, n_restarts=suite.apgd_restarts, batch_size=batch_size,
                         progress=progress, reference_schedule=suite.apgd_reference_schedule)


def _fab_t(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
           suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult:
    return fab_targeted(model, x, y, threat, generator, n_target_classes=suite.min_norm_targets,
                        n_iter=suite.min_norm_iterations, n_restarts=suite.min_norm_restarts, batch_size=batch_size,
                        progress=progress)


def _fmn(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
         suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult:
    return fmn(model, x, y, threat, generator, steps=suite.fmn_steps, restarts=1, batch_size=batch_size,
               progress=progress)


def _square(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
            suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult:
    return square_attack(model, x, y, threat, generator, n_queries=suite.square_queries, p_init=suite.square_p_init,
                         batch_size=batch_size, progress=progress, stall_checks=suite.square_stall_checks,
                         stall_slack=suite.square_stall_slack)


# The escalation stages: the same attacks with more of the budget that decides them.


def _esc_apgd_ce(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
                 suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult:
    return apgd_ce(model, x, y, threat, generator, n_iter=suite.apgd_iterations,
                   n_restarts=suite.escalation_restarts, batch_size=batch_size, progress=progress,
                   reference_schedule=suite.apgd_reference_schedule)


def _esc_apgd_dlr(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
                  suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult:
    # Untargeted DLR: scale-invariant, so large logits that flatten the cross-entropy do not hide the margin.
    return apgd(model, x, y, threat, generator, loss="dlr", n_iter=suite.apgd_iterations,
                n_restarts=suite.escalation_restarts, batch_size=batch_size, progress=progress,
                reference_schedule=suite.apgd_reference_schedule)


def _esc_fab_t(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
               suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult:
    return fab_targeted(model, x, y, threat, generator, n_target_classes=suite.min_norm_targets,
                        n_iter=suite.min_norm_iterations * suite.escalation_iteration_factor,
                        n_restarts=suite.escalation_min_norm_restarts, batch_size=batch_size, progress=progress)


def _esc_fmn(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
             suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult:
    # Restarts from random points of the eps-sphere: measured stronger than the same passes as more steps.
    return fmn(model, x, y, threat, generator, steps=suite.fmn_steps, restarts=suite.escalation_min_norm_restarts,
               batch_size=batch_size, progress=progress)


def _esc_square(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator,
                suite: SuiteConfig, batch_size: int, progress: Callable[[float], None]) -> AttackResult:
    # Fresh random streams (the generator moves on) on the points each earlier restart left.
    def run(todo: Tensor, inner: Callable[[float], None]) -> AttackResult:
        return square_attack(model, x[todo], y[todo], threat, generator, n_queries=suite.square_queries,
                             p_init=suite.square_p_init, batch_size=batch_size, progress=inner,
                             stall_checks=suite.square_stall_checks, stall_slack=suite.square_stall_slack)

    return with_restarts(x, suite.escalation_square_restarts, progress, run)


#: Stage name -> its attack, for every stage of :data:`evaluator.attacks.stages.STAGES`.
ATTACKS: Mapping[str, StageAttack] = MappingProxyType({
    "apgd-ce": _apgd_ce,
    "apgd-t": _apgd_t,
    "fmn": _fmn,
    "fab-t": _fab_t,
    "square": _square,
    "esc-apgd-ce": _esc_apgd_ce,
    "esc-apgd-dlr": _esc_apgd_dlr,
    "esc-fmn": _esc_fmn,
    "esc-fab-t": _esc_fab_t,
    "esc-square": _esc_square,
})
if tuple(ATTACKS) != STAGE_NAMES:
    raise ImportError(f"the stage registry {STAGE_NAMES} and the attacks {tuple(ATTACKS)} disagree")
