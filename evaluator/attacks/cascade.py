"""The hidden attack suite: a versioned cascade of attacks, AutoAttack's standard order.

Clean accuracy first; then each attack only sees the points that are still correctly
classified and that every earlier attack failed on (APGD-CE, APGD-T, the minimum-norm FAB-T,
then Square: the registry :mod:`evaluator.attacks.stages`), so the expensive later stages only
pay for the hard points. A point counts as broken only after a separate forward pass confirms
that its adversarial image, checked to lie inside the threat model, is misclassified.

Escalation: a flag is not enough when the flag says the number is too high. When Square breaks
points that every white-box stage failed on, or when a caller's reliability checks fire (see
``checks`` of :func:`run_cascade`), the suite's escalation stages (more restarts, more steps)
run on the surviving points before the number is published; the report names the checks that
caused it (``escalated_for``) and lists the escalation stages with their costs.

Reproducibility: every random draw comes from a generator seeded from (job seed, suite
version, threat model, stage, chunk), where a chunk is a fixed number of points set by the
suite, not by the job's batch size. The same model, suite version and seed therefore give the
same robust accuracy, and the global RNG is never touched. A suite version is frozen once
published: a change of any attack parameter is a new version string, so leaderboard numbers
computed under one version stay comparable.

Only aggregates leave :func:`run_cascade` (it is what a submission page shows); per-point
outcomes stay inside the evaluator (:func:`attack_threat_model` returns them for the
reliability checks).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from evaluator.attacks.common import derive_seed, make_generator, predict_logits
from evaluator.attacks.counting import CountingModel, PassCount, as_counting
from evaluator.attacks.flags import check_black_box
from evaluator.attacks.stage_attacks import ATTACKS
from evaluator.attacks.suites import SUITE_VERSION, SUITES, SuiteConfig, get_suite
from evaluator.attacks.threat import ThreatModel, contains
from evaluator.metrics.classification import accuracy_with_interval
from evaluator.models.contract import pixels_to_unit
from evaluator.progress import ProgressCallback, StagedProgress, ignore_progress

__all__ = [
    "SUITES", "SUITE_VERSION", "CascadeReport", "EscalationChecks", "StageReport", "SuiteConfig", "ThreatModelOutcome",
    "ThreatModelReport", "attack_threat_model", "cascade_checks", "get_suite", "run_cascade", "to_float_images",
]

@dataclass
class StageReport:
    """One attack of the cascade under one threat model."""

    attack: str
    #: Points this attack was run on (still robust after every earlier stage).
    attacked: int
    #: Points it broke (confirmed misclassified, inside the threat model).
    broken: int
    #: Robust accuracy over all points after this stage.
    robust_accuracy: float
    forward_passes: int
    backward_passes: int
    seconds: float


@dataclass
class ThreatModelReport:
    """The cascade's result under one threat model."""

    norm: str
    eps: float
    num_examples: int
    clean_accuracy: float
    robust_accuracy: float
    ci_low: float
    ci_high: float
    ci_method: str
    stages: list[StageReport] = field(default_factory=list)
    #: Passes of the attack stages (and their confirmation passes), not the clean pass.
    forward_passes: int = 0
    backward_passes: int = 0
    seconds: float = 0.0
    #: The reliability checks that fired and made the suite run its escalation stages (empty: none ran).
    escalated_for: list[str] = field(default_factory=list)


@dataclass
class CascadeReport:
    """What the suite reports for one model: JSON-able, aggregates only."""

    suite_version: str
    seed: int
    num_examples: int
    clean_accuracy: float
    clean_ci_low: float
    clean_ci_high: float
    clean_forward_passes: int
    threat_models: list[ThreatModelReport] = field(default_factory=list)
    forward_passes: int = 0
    backward_passes: int = 0
    seconds: float = 0.0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CascadeReport:
        data = dict(data)
        data["threat_models"] = [
            ThreatModelReport(**{**tm, "stages": [StageReport(**s) for s in tm["stages"]]})
            for tm in data.get("threat_models", [])
        ]
        return cls(**data)


def to_float_images(images: Tensor | np.ndarray, device: torch.device) -> Tensor:
    """uint8 pixels become floats in [0, 1]; float images are taken as already in [0, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.array(images, copy=True))  # read-only arrays (np.frombuffer) too
    tensor = torch.as_tensor(images)
    if tensor.dtype == torch.uint8:
        return pixels_to_unit(tensor, device)
    return tensor.to(device=device, dtype=torch.float32)


@dataclass
class ThreatModelOutcome:
    """In-process result of one threat model: the report plus per-point outcomes (never exported)."""

    report: ThreatModelReport
    #: Per point: still correctly classified after every stage.
    robust: Tensor
    #: Per stage name: the points that stage broke.
    broken_by: dict[str, Tensor]
    #: Per point: correctly classified before any attack (the points the cascade attacked).
    clean_correct: Tensor

    def robust_after(self, stages: tuple[str, ...]) -> Tensor:
        """Per point: correctly classified and unbroken by every one of ``stages`` (each must have run)."""
        missing = [stage for stage in stages if stage not in self.broken_by]
        if missing:
            raise KeyError(f"the cascade ran no stage {missing}; it ran {list(self.broken_by)}")
        robust = self.clean_correct.clone()
        for stage in stages:
            robust &= ~self.broken_by[stage]
        return robust


#: A caller's reliability checks, run after the cascade's stages (on their outcome, before any escalation):
#: the names of the checks that fired.
EscalationChecks = Callable[[ThreatModel, ThreatModelOutcome], list[str]]


def _run_stage(
    stage: str, counter: CountingModel, x: Tensor, y: Tensor, robust: Tensor, threat: ThreatModel,
    config: SuiteConfig, seed: int, batch_size: int, report: Callable[[float, str], None],
) -> tuple[Tensor, StageReport]:
    """One stage on the points in ``robust``; returns the points it broke (confirmed) and its report."""
    attack = ATTACKS[stage]
    started = time.perf_counter()
    before = counter.count
    todo = robust.nonzero().squeeze(1)
    broken = torch.zeros_like(robust)
    total = int(todo.numel())
    label = f"{stage} ({threat.norm}, eps={threat.eps:.4g})"
    for chunk_index, start in enumerate(range(0, total, config.chunk_size)):
        index = todo[start : start + config.chunk_size]

        def inner(fraction: float, start: int = start, size: int = int(index.numel())) -> None:
            # Points of this stage done so far, counting this chunk's share of its work.
            report((start + fraction * size) / total, label)

        inner(0.0)
        generator = make_generator(derive_seed(seed, config.version, threat.key, stage, chunk_index), x.device)
        result = attack(counter, x[index], y[index], threat, generator, config, batch_size, inner)
        claimed = result.fooled.nonzero().squeeze(1)
        if claimed.numel():
            # Confirm each claimed adversarial image: inside the threat model and misclassified.
            x_adv = result.x_adv[claimed]
            inside = contains(threat, x_adv, x[index[claimed]])
            predicted = predict_logits(counter, x_adv, batch_size).argmax(dim=1)
            confirmed = inside & (predicted != y[index[claimed]])
            broken[index[claimed[confirmed]]] = True
    spent = counter.count - before
    n = int(y.shape[0])
    stage_report = StageReport(
        attack=stage,
        attacked=total,
        broken=int(broken.sum()),
        robust_accuracy=int((robust & ~broken).sum()) / n if n else 0.0,
        forward_passes=spent.forward,
        backward_passes=spent.backward,
        seconds=round(time.perf_counter() - started, 3),
    )
    report(1.0, f"{label} done")
    return broken, stage_report


def cascade_checks(stages: list[StageReport]) -> list[str]:
    """The checks the cascade makes from its own stages: Square beating every white-box stage."""
    square = next((s for s in stages if s.attack == "square"), None)
    if square is not None and check_black_box(square.attacked, square.broken).flagged:
        return ["black_box"]
    return []


def attack_threat_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    clean_correct: Tensor,
    threat: ThreatModel,
    *,
    suite: str | SuiteConfig = SUITE_VERSION,
    seed: int = 0,
    batch_size: int = 256,
    on_progress: ProgressCallback | None = None,
    checks: EscalationChecks | None = None,
) -> ThreatModelOutcome:
    """Runs the suite's stages under one threat model on the points in ``clean_correct``.

    Then, if the cascade's own black-box check or one of ``checks`` fires (among the suite's
    ``escalation_triggers``) and the suite has escalation stages, those run on the points still
    robust. ``on_progress(fraction, stage)`` gets this threat model's own fraction of points done.
    """
    config = get_suite(suite)
    counter = as_counting(model)
    n = int(y.shape[0])
    clean_correct = clean_correct.to(x.device)
    robust = clean_correct.clone()
    broken_by: dict[str, Tensor] = {}
    stages: list[StageReport] = []
    started = time.perf_counter()
    # The escalation gets one share of the bar; when it does not run, the bar jumps over it.
    weights = [1.0] * len(config.stages) + ([1.0] if config.escalation else [])
    staged = StagedProgress(on_progress or ignore_progress, weights)

    def run(stage: str, part: int, fraction_of_part: tuple[float, float]) -> None:
        nonlocal robust
        low, width = fraction_of_part

        def report(fraction: float, label: str) -> None:
            staged.report(part, low + width * fraction, label)

        broken, stage_report = _run_stage(stage, counter, x, y, robust, threat, config, seed, batch_size, report)
        robust = robust & ~broken
        broken_by[stage] = broken
        stages.append(stage_report)

    for stage_index, stage in enumerate(config.stages):
        run(stage, stage_index, (0.0, 1.0))
    report = ThreatModelReport(
        norm=threat.norm, eps=threat.eps, num_examples=n, clean_accuracy=int(clean_correct.sum()) / n,
        robust_accuracy=0.0, ci_low=0.0, ci_high=0.0, ci_method="clopper-pearson-95", stages=stages,
    )
    reasons = cascade_checks(stages)
    if checks is not None:
        before_escalation = ThreatModelOutcome(_finished(report, robust, started), robust.clone(), dict(broken_by),
                                               clean_correct)
        reasons += [name for name in checks(threat, before_escalation) if name not in reasons]
    reasons = [name for name in reasons if name in config.escalation_triggers]
    if reasons and config.escalation and bool(robust.any()):
        report.escalated_for = reasons
        share = 1.0 / len(config.escalation)
        for index, stage in enumerate(config.escalation):
            run(stage, len(config.stages), (index * share, share))
    return ThreatModelOutcome(_finished(report, robust, started), robust, broken_by, clean_correct)


def _finished(report: ThreatModelReport, robust: Tensor, started: float) -> ThreatModelReport:
    """``report`` with its totals, robust accuracy and interval computed from the stages so far."""
    robust_count = int(robust.sum())
    accuracy, low, high = accuracy_with_interval(robust_count, report.num_examples)
    report.robust_accuracy, report.ci_low, report.ci_high = accuracy, low, high
    report.forward_passes = sum(s.forward_passes for s in report.stages)
    report.backward_passes = sum(s.backward_passes for s in report.stages)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def run_cascade(
    model: nn.Module,
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    threat_models: tuple[ThreatModel, ...] | list[ThreatModel],
    *,
    suite: str | SuiteConfig = SUITE_VERSION,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: ProgressCallback = ignore_progress,
    checks: EscalationChecks | None = None,
) -> CascadeReport:
    """Robust accuracy of ``model`` (in eval mode) under each threat model, with costs.

    ``images`` are (N, C, H, W), uint8 pixels or floats in [0, 1]; ``labels`` are class indices.
    Progress goes to ``progress(fraction, stage)`` with the fraction of the work's points done.
    ``checks(threat, outcome)``, run after each threat model's cascade, names the reliability checks
    that fired; any name makes the suite escalate on that threat model's survivors.
    """
    if not threat_models:
        raise ValueError("run_cascade needs at least one threat model")
    config = get_suite(suite)
    started = time.perf_counter()
    device = torch.device(device)
    counter: CountingModel = as_counting(model).to(device)
    at_start = counter.count
    x = to_float_images(images, device)
    y = torch.as_tensor(labels).to(device=device, dtype=torch.long)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need as many labels as images (and at least one): {x.shape[0]} vs {y.shape[0]}")
    n = int(y.shape[0])
    weights = [0.02 * len(threat_models)] + [1.0] * len(threat_models)
    overall = StagedProgress(progress, weights)

    overall.report(0, 0.0, "clean accuracy")
    before = counter.count
    clean_correct = predict_logits(counter, x, batch_size).argmax(dim=1) == y
    clean_passes = (counter.count - before).forward
    clean_count = int(clean_correct.sum())
    clean_acc, clean_low, clean_high = accuracy_with_interval(clean_count, n)
    overall.report(0, 1.0, "clean accuracy done")

    report = CascadeReport(
        suite_version=config.version,
        seed=seed,
        num_examples=n,
        clean_accuracy=clean_acc,
        clean_ci_low=clean_low,
        clean_ci_high=clean_high,
        clean_forward_passes=clean_passes,
        device=str(device),
    )
    for index, threat in enumerate(threat_models, start=1):

        def on_progress(fraction: float, stage: str, index: int = index) -> None:
            overall.report(index, fraction, stage)

        outcome = attack_threat_model(
            counter, x, y, clean_correct, threat, suite=config, seed=seed, batch_size=batch_size,
            on_progress=on_progress, checks=checks,
        )
        report.threat_models.append(outcome.report)
    total: PassCount = counter.count - at_start
    report.forward_passes = total.forward
    report.backward_passes = total.backward
    report.seconds = round(time.perf_counter() - started, 3)
    progress(1.0, "attacks done")
    return report
