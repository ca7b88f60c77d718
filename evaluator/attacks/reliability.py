"""Checks that mark a robustness evaluation unreliable, in the spirit of RobustBench's and
Carlini et al.'s "On Evaluating Adversarial Robustness" sanity checks.

A high robust accuracy is only believable if the attacks could have found adversarial images.
Each check returns a :class:`ReliabilityFlag` with a sentence that says what was measured:

* ``gradients``: the input gradient of the margin must be finite and non-zero on most points
  (zero or NaN gradients blind every gradient attack; the margin is used rather than the
  cross-entropy because a very confident correct point has an exactly zero CE gradient in
  float32 without anything being wrong);
* ``eps_monotonic`` and ``eps_large``: robust accuracy under APGD-CE must not rise with eps
  and must be near zero at a large multiple of eps (a larger ball contains the smaller one);
* ``black_box``: the gradient-free Square attack must not break a non-trivial share of the
  points on which the gradient attacks failed (the classic signature of gradient masking);
* ``random_noise``: random perturbations of the same norm must not break points that the
  attack could not.

They run on a small subset (their cost is a few APGD runs on it), and only aggregates leave. Given
the cascade's per-point outcome on the same points (suites with ``reliability_reuses_white_box``),
the white-box verdict at eps is the cascade's own APGD-CE and APGD-T instead of a second run of the
same two attacks, and the checks cost about a tenth as much.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from evaluator.attacks.apgd import apgd_ce, apgd_targeted
from evaluator.attacks.cascade import ThreatModelOutcome, ThreatModelReport, to_float_images
from evaluator.attacks.common import derive_seed, make_generator, margin, predict_logits, random_signs
from evaluator.attacks.flags import ReliabilityFlag, check_black_box
from evaluator.attacks.square import square_attack
from evaluator.attacks.suites import WHITE_BOX_STAGES
from evaluator.attacks.threat import ThreatModel, lp_norm

#: A point's gradient counts as zero below this L1 norm (float32 gradients of a working model
#: are many orders of magnitude larger).
ZERO_GRADIENT = 1e-20

__all__ = [
    "ReliabilityFlag", "ReliabilityReport", "check_black_box", "check_eps_growth", "check_gradients",
    "check_random_noise", "random_noise_robust", "run_reliability_checks",
]


@dataclass
class ReliabilityReport:
    """All checks for one threat model."""

    norm: str
    eps: float
    num_examples: int
    flags: list[ReliabilityFlag] = field(default_factory=list)

    @property
    def unreliable(self) -> bool:
        return any(f.flagged for f in self.flags)

    def flag(self, check: str) -> ReliabilityFlag:
        for f in self.flags:
            if f.check == check:
                return f
        raise KeyError(check)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unreliable": self.unreliable}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def check_gradients(
    model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 256, max_bad_fraction: float = 0.5
) -> ReliabilityFlag:
    """Flags when more than ``max_bad_fraction`` of the points have a zero or non-finite gradient."""
    zero = nonfinite = 0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].detach().clone().requires_grad_(True)
        yb = y[start : start + batch_size]
        with torch.enable_grad():
            logits = model(xb).float()
            objective = margin(logits, yb)
            grad = None
            if objective.requires_grad:
                (grad,) = torch.autograd.grad(objective.sum(), [xb], allow_unused=True)
        if grad is None:
            zero += xb.shape[0]
            continue
        flat = grad.detach().flatten(1)
        finite = torch.isfinite(flat).all(dim=1)
        nonfinite += int((~finite).sum())
        zero += int((finite & (flat.abs().sum(dim=1) <= ZERO_GRADIENT)).sum())
    n = max(int(x.shape[0]), 1)
    bad = (zero + nonfinite) / n
    flagged = bad > max_bad_fraction
    explanation = (
        f"{zero} of {n} points have a zero input gradient and {nonfinite} a NaN or infinite one "
        f"({bad:.0%}; the limit is {max_bad_fraction:.0%})."
    )
    if flagged:
        explanation += " Gradient attacks cannot work here: the model masks or breaks its gradients."
    return ReliabilityFlag("gradients", flagged, explanation, bad, max_bad_fraction)


def _apgd_robust(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, seed: int, n_iter: int, batch_size: int
) -> Tensor:
    generator = make_generator(derive_seed(seed, "reliability", threat.key, "apgd-ce"), x.device)
    return ~apgd_ce(model, x, y, threat, generator, n_iter=n_iter, batch_size=batch_size).fooled


def check_eps_growth(
    accuracies: dict[float, float], *, tolerance: float = 0.02, near_zero: float = 0.1
) -> tuple[ReliabilityFlag, ReliabilityFlag]:
    """From robust accuracies at several multiples of eps: must not rise, and must be near zero
    at the largest multiple. ``tolerance`` absorbs the attack's own randomness."""
    factors = sorted(accuracies)
    rises = [
        (a, b, accuracies[b] - accuracies[a]) for a, b in zip(factors, factors[1:], strict=False)
        if accuracies[b] - accuracies[a] > tolerance
    ]
    listing = ", ".join(f"{accuracies[f]:.1%} at {f:g}x eps" for f in factors)
    monotonic = ReliabilityFlag(
        "eps_monotonic",
        bool(rises),
        f"Robust accuracy under APGD-CE: {listing}."
        + (f" It rises from {rises[0][0]:g}x to {rises[0][1]:g}x eps, which no model can do: the attack is failing."
           if rises else " It does not rise with eps."),
        max((r[2] for r in rises), default=0.0),
        tolerance,
    )
    largest = factors[-1]
    at_largest = accuracies[largest]
    large = ReliabilityFlag(
        "eps_large",
        at_largest > near_zero,
        f"At {largest:g}x eps APGD-CE leaves {at_largest:.1%} robust accuracy (the limit is {near_zero:.0%})."
        + (" An attack that cannot break a model with a much larger budget is probably being fooled."
           if at_largest > near_zero else ""),
        at_largest,
        near_zero,
    )
    return monotonic, large


def random_noise_robust(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator, *,
    samples: int = 20, batch_size: int = 256,
) -> Tensor:
    """Per point: correctly classified under all ``samples`` random perturbations of norm eps
    (Linf: random corners of the ball; L2: uniform directions on the sphere)."""
    robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(samples):
        if threat.norm == "Linf":
            delta = threat.eps * random_signs(tuple(x.shape), generator, x.device)
        else:
            noise = torch.randn(x.shape, generator=generator, device=x.device)
            delta = threat.eps * noise / lp_norm(noise, "L2").clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        predicted = predict_logits(model, (x + delta).clamp(0.0, 1.0), batch_size).argmax(dim=1)
        robust &= predicted == y
    return robust


def check_random_noise(
    attack_robust: Tensor, noise_robust: Tensor, *, max_fraction: float = 0.02, min_points: int = 2
) -> ReliabilityFlag:
    """Flags when random noise broke points that the attack could not (more than ``max_fraction``
    of the attacked points, and at least ``min_points``)."""
    n = int(attack_robust.numel())
    noise_only = int((attack_robust & ~noise_robust).sum())
    fraction = noise_only / n if n else 0.0
    flagged = noise_only >= min_points and fraction > max_fraction
    explanation = (
        f"Random perturbations of norm eps broke {noise_only} points on which APGD had failed, of {n} attacked "
        f"({fraction:.1%}; the limit is {max_fraction:.0%})."
    )
    if flagged:
        explanation += " Random noise should never beat an optimised attack: the attack is being misled."
    return ReliabilityFlag("random_noise", flagged, explanation, fraction, max_fraction)


def run_reliability_checks(
    model: nn.Module,
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    threat: ThreatModel,
    *,
    subset: int = 200,
    seed: int = 0,
    factors: tuple[float, ...] = (1.0, 2.0, 4.0),
    apgd_iterations: int = 100,
    target_classes: int = 3,
    square_queries: int = 1000,
    noise_samples: int = 20,
    cascade_report: ThreatModelReport | None = None,
    cascade_points: ThreatModelOutcome | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> ReliabilityReport:
    """Runs every check on the first ``subset`` points under ``threat``.

    With a ``cascade_report`` for the same threat model, the black-box check reads the
    cascade's own Square stage (which ran after APGD-CE and APGD-T on all points); without one
    it runs APGD-T (``target_classes`` targets) and then Square (``square_queries``) on the subset
    points that APGD-CE failed on.

    ``cascade_points`` is the cascade's per-point outcome under ``threat`` on the same
    ``images`` (before any escalation; it stands for ``cascade_report`` too): clean correctness,
    robustness at 1x eps under APGD-CE and the white-box verdict then come from its stages
    (:data:`WHITE_BOX_STAGES`) instead of being computed again, and ``apgd_iterations`` and
    ``target_classes`` only set the runs at the other multiples of eps. Only pass it when the
    cascade's APGD stages are the attacks these checks would run.
    """
    device = torch.device(device)
    x = to_float_images(images, device)[:subset]
    y = torch.as_tensor(labels).to(device=device, dtype=torch.long)[:subset]
    report = ReliabilityReport(threat.norm, threat.eps, int(y.shape[0]))
    if cascade_points is not None:
        cascade_report = cascade_points.report
        if cascade_points.clean_correct.shape[0] < y.shape[0]:
            raise ValueError(f"the cascade attacked {cascade_points.clean_correct.shape[0]} points, fewer than "
                             f"the {y.shape[0]} the checks run on")
        correct = cascade_points.clean_correct[: y.shape[0]].to(device)

        def lent(stages: tuple[str, ...]) -> Tensor:
            """The cascade's per-point verdict after ``stages`` on the checks' correctly classified points."""
            return cascade_points.robust_after(stages)[: y.shape[0]].to(device)[correct]
    else:
        with torch.no_grad():
            correct = predict_logits(model, x, batch_size).argmax(dim=1) == y
    xc, yc = x[correct], y[correct]
    report.flags.append(check_gradients(model, xc, yc, batch_size=batch_size))
    if xc.shape[0] == 0:
        report.flags.append(ReliabilityFlag("eps_monotonic", False, "No correctly classified point to attack."))
        return report

    robust_at: dict[float, Tensor] = {}
    if cascade_points is not None:
        robust_at[1.0] = lent(WHITE_BOX_STAGES[:1])
    for factor in sorted(set(factors) | {1.0}):
        if factor not in robust_at:
            robust_at[factor] = _apgd_robust(model, xc, yc, threat.scaled(factor), seed, apgd_iterations, batch_size)
    n = int(y.shape[0])
    accuracies = {f: int(r.sum()) / n for f, r in robust_at.items()}
    report.flags.extend(check_eps_growth(accuracies))

    # The white-box verdict at eps: APGD-CE, then APGD-T on what CE left (CE alone misses points
    # whose cross-entropy peaks without a misclassification, which is no sign of masking).
    if cascade_points is not None:
        white_box_robust = lent(WHITE_BOX_STAGES)
    else:
        white_box_robust = robust_at[1.0].clone()
        survivors = white_box_robust.nonzero().squeeze(1)
        if survivors.numel() and target_classes > 0:
            generator = make_generator(derive_seed(seed, "reliability", threat.key, "apgd-t"), device)
            targeted = apgd_targeted(model, xc[survivors], yc[survivors], threat, generator,
                                     n_target_classes=target_classes, n_iter=apgd_iterations, batch_size=batch_size)
            white_box_robust[survivors[targeted.fooled]] = False

    if cascade_report is not None:
        square = next((s for s in cascade_report.stages if s.attack == "square"), None)
        attacked, broken = (square.attacked, square.broken) if square is not None else (0, 0)
    else:
        survivors = white_box_robust.nonzero().squeeze(1)
        attacked, broken = int(survivors.numel()), 0
        if attacked:
            generator = make_generator(derive_seed(seed, "reliability", threat.key, "square"), device)
            result = square_attack(model, xc[survivors], yc[survivors], threat, generator,
                                   n_queries=square_queries, batch_size=batch_size)
            broken = int(result.fooled.sum())
    report.flags.append(check_black_box(attacked, broken))

    generator = make_generator(derive_seed(seed, "reliability", threat.key, "noise"), device)
    noise_robust = random_noise_robust(model, xc, yc, threat, generator, samples=noise_samples, batch_size=batch_size)
    report.flags.append(check_random_noise(white_box_robust, noise_robust))
    return report
