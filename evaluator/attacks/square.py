"""The Square attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based black box.

It never looks at a gradient, only at the model's logits, so it is blind to gradient masking:
in the cascade it is the check that a model's robustness is not an artefact of obfuscated
gradients. Random search on the margin loss z_y - max_{j!=y} z_j: each query changes one
square window of the current perturbation (window side shrinking on a fixed schedule) and is
kept if the margin fell. Windows are drawn per image.

Query budget: ``n_queries`` model evaluations per image, counting the initial one; 5,000 in
AutoAttack's standard version (:data:`DEFAULT_QUERIES`). An image stops costing queries as
soon as it is misclassified, so the budget only binds on robust points, where the attack's
cost is ``n_queries`` forward passes per point.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from evaluator.attacks.common import AttackResult, margin, predict_logits, random_signs
from evaluator.attacks.threat import ThreatModel, lp_norm

#: AutoAttack's standard query budget per image.
DEFAULT_QUERIES = 5000
#: Initial fraction of the image's pixels a square covers (AutoAttack's standard value).
DEFAULT_P_INIT = 0.8
#: Query counts at which p is halved, on a 10,000-query schedule (the paper's).
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_TINY = 1e-12
#: Queries between two progress reports.
_REPORT_EVERY = 100


def _ignore(fraction: float) -> None:
    """No progress reporting."""


def p_schedule(iteration: int, p_init: float, n_queries: int, rescale: bool) -> float:
    """The fraction of pixels the next square covers; halved at fixed query counts.

    With ``rescale`` the 10,000-query schedule is squeezed into ``n_queries`` (useful for small
    budgets); AutoAttack's standard version uses it unscaled.
    """
    it = int(iteration / n_queries * 10000) if rescale else iteration
    halvings = sum(1 for h in _P_HALVINGS if it > h)
    return p_init / (2**halvings)


def _window_index(n: int, channels: int, size: int, top: Tensor, left: Tensor) -> tuple[Tensor, ...]:
    """Advanced-indexing tuple that addresses an (n, C, size, size) window at per-image offsets."""
    device = top.device
    offsets = torch.arange(size, device=device)
    batch = torch.arange(n, device=device).view(n, 1, 1, 1)
    channel = torch.arange(channels, device=device).view(1, channels, 1, 1)
    rows = (top.view(n, 1, 1, 1) + offsets.view(1, 1, size, 1)).expand(n, channels, size, size)
    cols = (left.view(n, 1, 1, 1) + offsets.view(1, 1, 1, size)).expand(n, channels, size, size)
    return batch.expand_as(rows), channel.expand_as(rows), rows, cols


def _random_offsets(n: int, limit: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randint(0, limit + 1, (n,), generator=generator, device=device)


def _ring_pattern(rows: int, cols: int, device: torch.device) -> Tensor:
    """The paper's L2 building block M^(rows, cols): concentric square rings around the centre,
    the ring at Chebyshev distance k from it weighted by sum_{j >= k} 1/(j+1)^2."""
    centre_r, centre_c = rows // 2, cols // 2
    rings = max(centre_r, centre_c) + 1
    r = torch.arange(rows, device=device).view(-1, 1)
    c = torch.arange(cols, device=device).view(1, -1)
    distance = torch.maximum((r - centre_r).abs(), (c - centre_c).abs())
    weights = 1.0 / (torch.arange(rings, device=device, dtype=torch.float32) + 1) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = sum_{j >= k} w_j
    return tail[distance]


#: The L2 update patterns already built, by (side, device): the same few sides recur on every query, and
#: building one took about a sixth of a query's time on a small model (measurements/square_overhead.py).
_PATTERNS: dict[tuple[int, str], Tensor] = {}
#: Off only to measure what the cache saves (measurements/square_overhead.py); the outputs are identical.
CACHE_PATTERNS = True


def _l2_update_pattern(size: int, device: torch.device) -> Tensor:
    """Unit-L2 s x s pattern: the ring pattern on the top half, its negative on the bottom half.

    The returned tensor is shared between calls (cached): callers must not modify it in place.
    """
    key = (size, str(device))
    cached = _PATTERNS.get(key) if CACHE_PATTERNS else None
    if cached is None:
        cached = _build_l2_update_pattern(size, device)
        if CACHE_PATTERNS:
            _PATTERNS[key] = cached
    return cached


def _build_l2_update_pattern(size: int, device: torch.device) -> Tensor:
    top = size // 2
    pattern = torch.zeros(size, size, device=device)
    if top > 0:
        upper = _ring_pattern(top, size, device)
        pattern[:top] = upper / upper.norm()
    lower = _ring_pattern(size - top, size, device)
    pattern[top:] = -lower / lower.norm()
    return pattern / pattern.norm()


def _l2_init(x: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    """Tiles a 5 x 5 grid of update patterns with random signs per image, channel and tile."""
    n, c, h, w = x.shape
    tile = max(min(h, w) // 5, 1)
    delta = torch.zeros_like(x)
    pattern = _l2_update_pattern(tile, x.device)
    start_r, start_c = (h - 5 * tile) // 2, (w - 5 * tile) // 2
    for i in range(5):
        for j in range(5):
            r0, c0 = start_r + i * tile, start_c + j * tile
            if r0 < 0 or c0 < 0 or r0 + tile > h or c0 + tile > w:
                continue
            signs = random_signs((n, c, 1, 1), generator, x.device)
            delta[:, :, r0 : r0 + tile, c0 : c0 + tile] += pattern * signs
    norm = lp_norm(delta, "L2").view(-1, 1, 1, 1)
    return (x + eps * delta / (norm + _TINY)).clamp(0.0, 1.0)


def square_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    generator: torch.Generator,
    *,
    n_queries: int = DEFAULT_QUERIES,
    p_init: float = DEFAULT_P_INIT,
    rescale_schedule: bool = False,
    batch_size: int = 256,
    progress: Callable[[float], None] = _ignore,
    stall_checks: tuple[int, ...] = (),
    stall_slack: float = 2.0,
) -> AttackResult:
    """Untargeted Square attack on images (N, C, H, W) in [0, 1]; see the module docstring.

    ``progress`` is called with the fraction of the query budget spent, every 100 queries.

    ``stall_checks`` (``attacks-3``; empty in ``attacks-1`` and ``attacks-2``, which then run exactly as
    before): at each of these query counts, a surviving point stops costing queries when its margin,
    falling for the rest of the budget ``stall_slack`` times as fast as it fell since the previous check,
    would still not reach zero. Square's windows shrink on a fixed schedule, so its progress per query
    tends to slow down; the rule is a heuristic, and the suite using it is measured against AutoAttack.
    """
    if x.dim() != 4:
        raise ValueError(f"the Square attack needs (N, C, H, W) images, got shape {tuple(x.shape)}")
    x = x.detach()
    n, c, h, w = x.shape
    if n == 0:
        return AttackResult(x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device))
    device = x.device
    side = min(h, w)
    if threat.norm == "Linf":
        stripes = random_signs((n, c, 1, w), generator, device)
        x_best = (x + threat.eps * stripes).clamp(0.0, 1.0)
    else:
        x_best = _l2_init(x, threat.eps, generator)
    logits = predict_logits(model, x_best, batch_size)
    margin_best = margin(logits, y)
    fooled = logits.argmax(dim=1) != y
    checks = sorted({int(q) for q in stall_checks if 0 < int(q) < n_queries})
    stalled = torch.zeros_like(fooled)
    margin_at_check, last_check, any_stalled = margin_best.clone(), 1, False

    for iteration in range(1, n_queries):
        if checks and iteration == checks[0]:
            # Queries spent so far: ``iteration`` (the first one counted); left: n_queries - iteration.
            rate = (margin_at_check - margin_best).clamp_min(0.0) / (iteration - last_check)
            stalled |= ~fooled & (margin_best - stall_slack * rate * (n_queries - iteration) > 0)
            margin_at_check, last_check, any_stalled = margin_best.clone(), iteration, bool(stalled.any())
            checks.pop(0)
        active = ((~fooled & ~stalled) if any_stalled else ~fooled).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        if iteration % _REPORT_EVERY == 0:
            progress(iteration / n_queries)
        k = active.numel()
        xs, best = x[active], x_best[active]
        p = p_schedule(iteration, p_init, n_queries, rescale_schedule)
        if threat.norm == "Linf":
            size = min(max(int(round(math.sqrt(p * h * w))), 1), side)
            top = _random_offsets(k, h - size, generator, device)
            left = _random_offsets(k, w - size, generator, device)
            index = _window_index(k, c, size, top, left)
            signs = random_signs((k, c, 1, 1), generator, device).expand(k, c, size, size)
            candidate = best.clone()
            candidate[index] = (xs[index] + threat.eps * signs).clamp(0.0, 1.0)
        else:
            size = max(int(round(math.sqrt(p * h * w))), 3)
            size = min(size + 1 if size % 2 == 0 else size, side)
            candidate = _l2_candidate(xs, best, threat.eps, size, generator)
        logits = predict_logits(model, candidate, batch_size)
        new_margin = margin(logits, y[active])
        now_fooled = logits.argmax(dim=1) != y[active]
        accept = (new_margin < margin_best[active]) | now_fooled
        if bool(accept.any()):
            taken = active[accept]
            x_best[taken] = candidate[accept]
            margin_best[taken] = new_margin[accept]
        fooled[active[now_fooled]] = True
    return AttackResult(x_best, fooled)


def _l2_candidate(x: Tensor, best: Tensor, eps: float, size: int, generator: torch.Generator) -> Tensor:
    """One L2 proposal (the paper's Algorithm 3): move the perturbation's mass from a second
    window into a new pattern in the first, keeping the total norm at eps."""
    k, c, h, w = x.shape
    device = x.device
    delta = best - x
    top = _random_offsets(k, h - size, generator, device)
    left = _random_offsets(k, w - size, generator, device)
    top2 = _random_offsets(k, h - size, generator, device)
    left2 = _random_offsets(k, w - size, generator, device)
    first = _window_index(k, c, size, top, left)
    second = _window_index(k, c, size, top2, left2)

    in_either = torch.zeros_like(delta)
    in_either[first] = 1.0
    in_either[second] = 1.0
    window_mass = ((delta * in_either) ** 2).sum(dim=(2, 3), keepdim=True)  # (k, C, 1, 1)
    total = lp_norm(delta, "L2").view(k, 1, 1, 1)
    old = delta[first]  # (k, C, s, s)
    old_norm = old.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()

    pattern = _l2_update_pattern(size, device)
    transpose = torch.randint(0, 2, (k, 1, 1, 1), generator=generator, device=device).bool()
    pattern = torch.where(transpose, pattern.t().expand(k, 1, size, size), pattern.expand(k, 1, size, size))
    signs = random_signs((k, c, 1, 1), generator, device)
    new = pattern * signs + old / (old_norm + _TINY)
    budget = (torch.clamp(eps**2 - total**2, min=0.0) / c + window_mass).sqrt()
    new = new / (new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt() + _TINY) * budget

    delta = delta.clone()
    delta[second] = 0.0
    delta[first] = new
    norm = lp_norm(delta, "L2").view(k, 1, 1, 1)
    return (x + eps * delta / (norm + _TINY)).clamp(0.0, 1.0)
