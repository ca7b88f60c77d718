"""APGD (Croce & Hein, ICML 2020): PGD without a step-size to tune.

The step size starts at 2 eps and is halved at checkpoints (22%, 41%, 57%, ... of the budget)
wherever the loss stopped rising; a halved point restarts from the best point found so far.
A momentum term (0.75) smooths the steps.

Two details follow the reference implementation (suite ``attacks-2`` on; ``attacks-1`` kept its
own, so its published numbers stay reproducible): the step is halved when at most
``rho * window`` steps raised the loss (``<=``; the paper's text writes ``<``, which differs only
when ``rho * window`` is a whole number, as for the 16-step window of 100 iterations), and a
point sent back to its best iterate keeps its momentum (the displacement from the iterate before
the last step), rather than restarting without it. Two losses: cross-entropy (untargeted APGD-CE) and
the targeted DLR loss, run once per target class among the top-9 (APGD-T).

Unlike the reference implementation, a point leaves the batch as soon as it is misclassified:
the attack only has to find one adversarial image, so iterations on an already-fooled point
are wasted model passes. Every other point follows exactly the trajectory it would have had,
because all of APGD's state (step size, best point, checkpoint statistics) is per point. The
gradient of the final iterate is never used, so the last iteration is forward only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from evaluator.attacks.common import (
    AttackResult,
    LossFn,
    ce_loss,
    dlr_loss,
    dlr_targeted_loss,
    logits_loss_grad,
    predict_logits,
    targets_by_rank,
    with_restarts,
)
from evaluator.attacks.threat import ThreatModel, project, random_in_ball, steepest_direction

#: AutoAttack's standard budget: 100 iterations, one restart.
DEFAULT_ITERATIONS = 100
#: Momentum weight of the new step (1 - this on the previous displacement).
MOMENTUM_ALPHA = 0.75
#: Fraction of steps since the last checkpoint that must have raised the loss to keep the step size.
DEFAULT_RHO = 0.75
#: Iterations between two progress reports.
_REPORT_EVERY = 10

#: Called with the fraction of an attack's work done (0 to 1) so long runs can show progress.
InnerProgress = Callable[[float], None]


def _ignore(fraction: float) -> None:
    """No progress reporting."""


def checkpoints(n_iter: int) -> list[int]:
    """Iterations after which the step size may be halved: w_j = ceil(p_j * n_iter) with
    p_0 = 0, p_1 = 0.22 and p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    points: list[int] = []
    previous, current = 0.0, 0.22
    while current <= 1.0:
        w = math.ceil(current * n_iter - 1e-9)
        if 0 < w <= n_iter and (not points or w > points[-1]):
            points.append(w)
        previous, current = current, current + max(current - previous - 0.03, 0.06)
    return points


def halve_step(increases: Tensor, window: int, rho: float, reduced_before: Tensor, loss_best_at_check: Tensor,
               loss_best: Tensor, reference_schedule: bool = True) -> Tensor:
    """Per point at a checkpoint: halve the step? Either too few of the window's steps raised the loss
    (at most ``rho * window``; ``attacks-1``: fewer than), or the step was kept at the last checkpoint
    and the best loss has not improved since."""
    if reference_schedule:
        too_few_increases = increases <= rho * window
    else:
        too_few_increases = increases < rho * window
    stalled = (~reduced_before) & (loss_best_at_check >= loss_best)
    return too_few_increases | stalled


def _apgd_single_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    loss_fn: LossFn,
    target: Tensor | None,
    n_iter: int,
    rho: float,
    generator: torch.Generator,
    batch_size: int,
    progress: InnerProgress = _ignore,
    reference_schedule: bool = True,
) -> AttackResult:
    """One APGD run from a random start on every point of ``x``.

    ``reference_schedule`` False is ``attacks-1``'s variant (strict halving test, momentum dropped
    after a halving).
    """
    n = x.shape[0]
    device = x.device

    x_cur = random_in_ball(x, threat.norm, threat.eps, generator)
    logits, loss, grad = logits_loss_grad(model, x_cur, y, loss_fn, batch_size, target=target)
    assert grad is not None

    fooled = logits.argmax(dim=1) != y
    x_found = torch.where(fooled.view(-1, *[1] * (x.dim() - 1)), x_cur, x)

    x_prev = x_cur.clone()
    x_best, loss_best, grad_best = x_cur.clone(), loss.clone(), grad.clone()
    loss_last = loss.clone()
    step = torch.full((n,), 2.0 * threat.eps, device=device)
    increases = torch.zeros(n, device=device)
    reduced_before = torch.ones(n, dtype=torch.bool, device=device)
    loss_best_at_check = loss_best.clone()
    check_points = checkpoints(n_iter)
    last_check = 0
    check_index = 0

    for i in range(n_iter):
        active = (~fooled).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        if i % _REPORT_EVERY == 0:
            progress(i / n_iter)
        xa, xa_prev, xs = x_cur[active], x_prev[active], x[active]
        step_a = step[active].view(-1, *[1] * (x.dim() - 1))
        z = project(xa + step_a * steepest_direction(grad[active], threat.norm), xs, threat.norm, threat.eps)
        a = 1.0 if i == 0 else MOMENTUM_ALPHA
        x_new = project(xa + a * (z - xa) + (1 - a) * (xa - xa_prev), xs, threat.norm, threat.eps)
        x_prev[active] = xa
        x_cur[active] = x_new

        need_grad = i < n_iter - 1
        logits, loss_a, grad_a = logits_loss_grad(
            model, x_new, y[active], loss_fn, batch_size, need_grad, None if target is None else target[active]
        )
        if grad_a is not None:
            grad[active] = grad_a
        now_fooled = logits.argmax(dim=1) != y[active]
        if bool(now_fooled.any()):
            hit = active[now_fooled]
            fooled[hit] = True
            x_found[hit] = x_new[now_fooled]

        increases[active] += (loss_a > loss_last[active]).float()
        loss_last[active] = loss_a
        better = loss_a > loss_best[active]
        if bool(better.any()):
            up = active[better]
            loss_best[up] = loss_a[better]
            x_best[up] = x_new[better]
            if grad_a is not None:
                grad_best[up] = grad_a[better]

        if check_index < len(check_points) and i + 1 == check_points[check_index]:
            window = check_points[check_index] - last_check
            reduce = halve_step(increases, window, rho, reduced_before, loss_best_at_check, loss_best,
                                reference_schedule)
            step[reduce] /= 2.0
            # The halved points go back to their best point; attacks-1 also dropped their momentum.
            x_cur[reduce] = x_best[reduce]
            if not reference_schedule:
                x_prev[reduce] = x_best[reduce]
            grad[reduce] = grad_best[reduce]
            reduced_before = reduce
            loss_best_at_check = loss_best.clone()
            increases.zero_()
            last_check = check_points[check_index]
            check_index += 1

    x_out = torch.where(fooled.view(-1, *[1] * (x.dim() - 1)), x_found, x_best)
    return AttackResult(x_out, fooled)


def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    generator: torch.Generator,
    *,
    loss: str = "ce",
    target: Tensor | None = None,
    n_iter: int = DEFAULT_ITERATIONS,
    n_restarts: int = 1,
    rho: float = DEFAULT_RHO,
    batch_size: int = 256,
    progress: InnerProgress = _ignore,
    reference_schedule: bool = True,
) -> AttackResult:
    """APGD on ``loss`` ("ce", "dlr", or "dlr-targeted" with ``target``), ``n_restarts`` random starts.

    Each restart only runs on the points that no earlier restart fooled.
    """
    if loss not in ("ce", "dlr", "dlr-targeted"):
        raise ValueError(f"unknown APGD loss {loss!r}")
    if (loss == "dlr-targeted") != (target is not None):
        raise ValueError("the dlr-targeted loss needs a target, and only it takes one")
    loss_fn = {"ce": ce_loss, "dlr": dlr_loss, "dlr-targeted": dlr_targeted_loss}[loss]
    x = x.detach()

    def run(todo: Tensor, inner: InnerProgress) -> AttackResult:
        return _apgd_single_run(
            model, x[todo], y[todo], threat, loss_fn, None if target is None else target[todo],
            n_iter, rho, generator, batch_size, inner, reference_schedule,
        )

    return with_restarts(x, n_restarts, progress, run)


def apgd_ce(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    generator: torch.Generator,
    *,
    n_iter: int = DEFAULT_ITERATIONS,
    n_restarts: int = 1,
    batch_size: int = 256,
    progress: InnerProgress = _ignore,
    reference_schedule: bool = True,
) -> AttackResult:
    """Untargeted APGD on the cross-entropy loss (AutoAttack's first stage)."""
    return apgd(
        model, x, y, threat, generator, loss="ce", n_iter=n_iter, n_restarts=n_restarts, batch_size=batch_size,
        progress=progress, reference_schedule=reference_schedule,
    )


def apgd_targeted(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    generator: torch.Generator,
    *,
    n_target_classes: int = 9,
    n_iter: int = DEFAULT_ITERATIONS,
    n_restarts: int = 1,
    batch_size: int = 256,
    clean_logits: Tensor | None = None,
    progress: InnerProgress = _ignore,
    reference_schedule: bool = True,
) -> AttackResult:
    """APGD-T: targeted DLR towards each of the ``n_target_classes`` most likely wrong classes.

    Targets are ranked once on the clean images (the reference re-ranks them before every
    target, which costs a forward pass per target and gives the same order); each target's run
    only sees the points that no earlier target broke.
    """
    x = x.detach()
    if clean_logits is None:
        clean_logits = predict_logits(model, x, batch_size)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    x_adv = x.clone()
    targets = targets_by_rank(clean_logits, y, n_target_classes)
    n_targets = len(targets)
    for rank, (target, exists) in enumerate(targets, start=1):
        todo = (exists & ~fooled).nonzero().squeeze(1)
        if todo.numel() == 0:
            continue

        def inner(fraction: float, rank: int = rank) -> None:
            progress((rank - 1 + fraction) / n_targets)

        result = apgd(
            model, x[todo], y[todo], threat, generator, loss="dlr-targeted", target=target[todo],
            n_iter=n_iter, n_restarts=n_restarts, batch_size=batch_size, progress=inner,
            reference_schedule=reference_schedule,
        )
        hit = todo[result.fooled]
        fooled[hit] = True
        x_adv[hit] = result.x_adv[result.fooled]
    return AttackResult(x_adv, fooled)
