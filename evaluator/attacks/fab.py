"""FAB-T (Croce & Hein, ICML 2020): a targeted minimum-norm attack, the Fast Adaptive Boundary attack.

Why a minimum-norm stage: the gradient-ascent stages (APGD-CE, APGD-T) and Square maximise a
loss inside the eps-ball, and on adversarially trained models a loss that is flat or
misleading inside the ball hides points that a boundary-seeking attack finds. FAB walks to the
decision boundary instead: at the iterate x_i it linearises g(x) = z_t(x) - z_y(x) (target t,
label y), projects both x_i and the original x_0 onto the hyperplane g = 0 inside the box
[0, 1]^d in the attack's norm, and moves to a convex combination of the two projections that
leans towards x_0 (so the perturbation stays small), with a slight overshoot. When the new
iterate is adversarial it is kept if its norm is the best so far, and the search steps back
towards x_0; the result is the smallest adversarial perturbation found, which the cascade then
compares with eps.

Differences from the reference implementation, each to save model passes:

* The forward pass that checks whether the new iterate is adversarial is the same pass that
  gives the gradient for the next step, so an iteration costs one forward and one backward
  (the reference spends a second forward). When the iterate is adversarial and the search
  steps back towards x_0, the stepped-back point is projected onto the hyperplane linearised
  at the iterate it came from, rather than paying another gradient there. For a linear model
  both are the same hyperplane.
* A point leaves the batch as soon as it has an adversarial image within ``stop_at`` (the
  cascade only needs one inside the ball), and a target class only runs on points that no
  earlier target finished.
* Target classes are ranked once on the clean logits (the top ``n_target_classes`` classes
  other than the label), as in APGD-T.

All randomness (the random starts of restarts after the first) comes from the caller's
generator, so a result is reproducible and the global RNG is untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from evaluator.attacks.common import AttackResult, MinNormResult, logits_loss_grad, predict_logits, targets_by_rank
from evaluator.attacks.threat import NORMS, ThreatModel, contains, lp_norm, project

#: AutoAttack's FAB-T settings: the largest weight on the projection of the original point,
#: the overshoot past the linearised boundary, and the step back towards the original point
#: after an adversarial iterate.
ALPHA_MAX = 0.1
ETA = 1.05
BETA = 0.9
#: AutoAttack's standard budget: 100 iterations, one restart, nine target classes.
DEFAULT_ITERATIONS = 100
#: Iterations between two progress reports.
_REPORT_EVERY = 10
#: Guards divisions by norms that may be zero (a zero gradient, a point already on the plane).
_TINY = 1e-12


def _ignore(fraction: float) -> None:
    """No progress reporting."""


# --------------------------------------------------------------------------- the projection


def project_onto_hyperplane_in_box(points: Tensor, w: Tensor, r: Tensor, norm: str) -> Tensor:
    """The smallest step ``delta`` (in ``norm``) with ``w . delta = r`` that keeps ``points + delta`` in [0, 1].

    ``points`` and ``w`` are (n, d), ``r`` is (n,); the points must lie in the box. The
    minimiser has the form delta_k = clip(s * v_k, lower_k, upper_k) with lower = -points,
    upper = 1 - points, v = w for L2 (the KKT conditions of a Euclidean projection) and
    v = sign(w) for Linf (spend the budget t on every coordinate that helps, up to its room),
    and the scalar s >= 0 at which the achieved w . delta reaches |r|. That achieved value is
    piecewise linear and nondecreasing in s with a kink where each coordinate hits the box,
    so sorting the kinks finds s exactly, without iterating. Where the box makes the plane
    unreachable, the box corner that gets closest is returned; a zero ``w`` (a zero
    gradient) gives a zero step.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    r = torch.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
    # Work with r >= 0: flipping the sign of both sides of w . delta = r changes nothing else.
    flip = torch.where(r < 0, -1.0, 1.0).to(w)
    w = torch.nan_to_num(w, nan=0.0, posinf=0.0, neginf=0.0) * flip[:, None]
    need = r * flip
    # Room each coordinate has in the direction that raises w . delta.
    room = torch.where(w > 0, 1.0 - points, torch.where(w < 0, points, torch.zeros_like(points))).clamp_min(0.0)
    magnitude = w.abs()
    if norm == "L2":
        # delta_k = s * w_k until it hits the box; contribution w_k delta_k = min(s w_k^2, |w_k| room_k).
        slope, cap = magnitude * magnitude, magnitude * room
        kink = torch.where(slope > 0, cap / slope.clamp_min(_TINY), torch.inf)
    else:
        # delta_k = sign(w_k) min(t, room_k); contribution |w_k| min(t, room_k).
        slope, cap = magnitude, magnitude * room
        kink = torch.where(slope > 0, room, torch.inf)
    kink_sorted, order = kink.sort(dim=1)
    slope_sorted, cap_sorted = slope.gather(1, order), cap.gather(1, order)
    capped_sum = cap_sorted.cumsum(dim=1)  # from the coordinates at or below each kink
    free_slope = slope.sum(dim=1, keepdim=True) - slope_sorted.cumsum(dim=1)  # from the ones above it
    reached = capped_sum + torch.where(
        torch.isfinite(kink_sorted), kink_sorted * free_slope, torch.full_like(free_slope, torch.inf)
    )
    below = (reached < need[:, None]).sum(dim=1)  # how many coordinates end up clipped to the box
    zero = torch.zeros_like(need[:, None])
    capped_before = torch.cat([zero, capped_sum], dim=1).gather(1, below[:, None]).squeeze(1)
    slope_after = torch.cat([slope.sum(dim=1, keepdim=True), free_slope], dim=1).gather(1, below[:, None]).squeeze(1)
    reachable = need < cap.sum(dim=1)
    scale = ((need - capped_before) / slope_after.clamp_min(_TINY)).clamp_min(0.0)
    scale = torch.where(reachable, scale, torch.full_like(scale, torch.inf))
    if norm == "L2":
        step = torch.minimum(scale[:, None] * magnitude, room)
    else:
        step = torch.minimum(scale[:, None].expand_as(room), room)
    step = torch.where(magnitude > 0, step, torch.zeros_like(step))
    return step * w.sign()


# --------------------------------------------------------------------------- one run


def _target_gap(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """z_t - z_y: negative while the label beats the target, zero on the targeted boundary."""
    assert target is not None
    return logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)


def _random_start(x: Tensor, norm: str, radius: Tensor, generator: torch.Generator) -> Tensor:
    """A point on the sphere of the given per-point radius around each image, clipped to [0, 1]."""
    if norm == "Linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    else:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = noise / lp_norm(noise, norm).clamp_min(_TINY).view(-1, *[1] * (x.dim() - 1))  # type: ignore[arg-type]
    return (x + direction * radius.view(-1, *[1] * (x.dim() - 1))).clamp(0.0, 1.0)


def _fab_single_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    target: Tensor,
    norm: str,
    start: Tensor,
    best_x: Tensor,
    best_norm: Tensor,
    stop_at: float,
    n_iter: int,
    batch_size: int,
    progress: Callable[[float], None],
) -> None:
    """FAB towards ``target`` from ``start``; improves ``best_x`` and ``best_norm`` in place.

    Every iteration checks the current iterate (recording it when adversarial and better) and,
    on the points still running, computes the next one; the last iterate is checked with a
    forward pass only. A point stops once its best norm is at most ``stop_at``.
    """
    flat_x = x.flatten(1)
    current = start.flatten(1).clone()
    done = best_norm <= stop_at
    for i in range(n_iter + 1):
        active = (~done).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        if i % _REPORT_EVERY == 0:
            progress(i / n_iter if n_iter else 1.0)
        need_grad = i < n_iter
        point = current[active]
        logits, gap, grad = logits_loss_grad(
            model, point.view(-1, *x.shape[1:]), y[active], _target_gap, batch_size, need_grad, target[active]
        )
        adversarial = logits.argmax(dim=1) != y[active]
        size = lp_norm(point - flat_x[active], norm)  # type: ignore[arg-type]
        better = adversarial & (size < best_norm[active])
        if bool(better.any()):
            won = active[better]
            best_norm[won] = size[better]
            best_x[won] = point[better].view(-1, *x.shape[1:])
            done[won] = size[better] <= stop_at
        if grad is None:
            break
        keep = ~done[active]
        if not bool(keep.any()):
            continue
        active, point, gap, adversarial = active[keep], point[keep], gap[keep], adversarial[keep]
        w = grad[keep].flatten(1)
        origin = flat_x[active]
        # From an adversarial iterate, search again from a point a little closer to the original.
        base = torch.where(adversarial[:, None], origin + BETA * (point - origin), point)
        # The hyperplane g(point) + w . (z - point) = 0, reached from base and from the original.
        both = torch.cat([base, origin])
        need = -(gap.repeat(2) + ((both - point.repeat(2, 1)) * w.repeat(2, 1)).sum(dim=1))
        steps = project_onto_hyperplane_in_box(both, w.repeat(2, 1), need, norm)
        step_base, step_origin = steps[: active.numel()], steps[active.numel() :]
        size_base, size_origin = lp_norm(step_base, norm), lp_norm(step_origin, norm)  # type: ignore[arg-type]
        alpha = (size_base / (size_base + size_origin).clamp_min(_TINY)).clamp(0.0, ALPHA_MAX)[:, None]
        moved = (1 - alpha) * (base + ETA * step_base) + alpha * (origin + ETA * step_origin)
        current[active] = torch.nan_to_num(moved, nan=0.0).clamp(0.0, 1.0)


def fab_targeted_min_norm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    generator: torch.Generator,
    *,
    n_target_classes: int = 9,
    n_iter: int = DEFAULT_ITERATIONS,
    n_restarts: int = 1,
    eps: float | None = None,
    stop_at: float | None = None,
    batch_size: int = 256,
    progress: Callable[[float], None] = _ignore,
) -> MinNormResult:
    """FAB-T: the smallest adversarial perturbation in ``norm`` found towards each of the
    ``n_target_classes`` most likely wrong classes (ranked on the clean logits).

    The first run per target starts at the original image; each further restart starts at a
    random point on the sphere of radius min(eps, best norm so far) / 2 (or the best norm / 2
    without ``eps``; from the original while nothing has been found and ``eps`` is None). With
    ``stop_at``, a point leaves as soon as it has an adversarial image with norm <= stop_at.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    x = x.detach().float()
    # Without stop_at no point is ever done early (a norm is never below -inf).
    limit = float("-inf") if stop_at is None else float(stop_at)
    clean_logits = predict_logits(model, x, batch_size)
    best_x = x.clone()
    best_norm = torch.full((x.shape[0],), float("inf"), device=x.device)
    best_norm[clean_logits.argmax(dim=1) != y] = 0.0  # already misclassified: nothing to do
    targets = targets_by_rank(clean_logits, y, n_target_classes)
    restarts = max(n_restarts, 1)
    runs = max(len(targets) * restarts, 1)
    for rank, (target, exists) in enumerate(targets):
        for restart in range(restarts):
            todo = (exists & (best_norm > limit) & (best_norm > 0)).nonzero().squeeze(1)
            if todo.numel() == 0:
                continue
            xs = x[todo]
            if restart == 0:
                start = xs
            else:
                radius = best_norm[todo].clamp_max(float("inf") if eps is None else float(eps))
                radius = torch.where(torch.isfinite(radius), radius / 2, torch.zeros_like(radius))
                start = _random_start(xs, norm, radius, generator)

            def inner(fraction: float, run: int = rank * restarts + restart) -> None:
                progress((run + fraction) / runs)

            sub_x, sub_norm = best_x[todo], best_norm[todo]
            _fab_single_run(model, xs, y[todo], target[todo], norm, start, sub_x, sub_norm, limit, n_iter,
                            batch_size, inner)
            best_x[todo], best_norm[todo] = sub_x, sub_norm
    progress(1.0)
    return MinNormResult(best_x, best_norm)


def fab_targeted(
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
    progress: Callable[[float], None] = _ignore,
) -> AttackResult:
    """FAB-T as a cascade stage: fooled where it found an image within ``threat.eps`` that the
    model misclassifies (confirmed with a fresh forward pass, as batches can round differently).

    Elsewhere ``x_adv`` is the smallest adversarial image found pulled back into the ball, a
    best effort that is inside the threat model but not adversarial.
    """
    x = x.detach().float()
    found = fab_targeted_min_norm(
        model, x, y, threat.norm, generator, n_target_classes=n_target_classes, n_iter=n_iter,
        n_restarts=n_restarts, eps=threat.eps, stop_at=threat.eps, batch_size=batch_size, progress=progress,
    )
    x_adv = project(found.x_adv, x, threat.norm, threat.eps)
    fooled = torch.isfinite(found.norms) & contains(threat, found.x_adv, x)
    claimed = fooled.nonzero().squeeze(1)
    if claimed.numel() > 0:
        x_adv[claimed] = found.x_adv[claimed]
        confirmed = predict_logits(model, found.x_adv[claimed], batch_size).argmax(dim=1) != y[claimed]
        fooled[claimed[~confirmed]] = False
    return AttackResult(x_adv, fooled)
