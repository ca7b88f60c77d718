"""Distortion-minimising attack: the smallest change that makes each fake score as real.

A loss-maximising attack answers "how low can the score go within a fixed budget"; this one
answers "how much must an image change before the detector, at its operating threshold, calls
it real", which is the number Carlini & Farid report (and the one a reader can picture: "the
lowest bit of every pixel", "a handful of pixels"). A fake counts as real when its score falls
strictly below ``threshold`` (the detector flags a score >= threshold as fake).

Linf and L2 search, per image, over the radius of the score-lowering PGD
(:func:`evaluator.detector_attacks.pgd.lower_score`): all images are attacked at once, each at
its own radius, first growing the radius geometrically until the attack succeeds and then
bisecting between the largest radius that failed and the smallest that succeeded. L0 runs a
greedy saliency attack that moves one pixel at a time to the end of its range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from evaluator.attacks.common import derive_seed
from evaluator.attacks.threat import dual_norm, lp_norm
from evaluator.detector_attacks.common import fake_scores, quantize, score_and_grad
from evaluator.detector_attacks.pgd import lower_score
from evaluator.models.contract import pixels_to_unit

MinNorm = Literal["Linf", "L2", "L0"]
MIN_NORMS: tuple[str, ...] = ("Linf", "L2", "L0")

#: Radii grow by this factor until the attack succeeds: a failed radius and a successful one
#: then differ by at most this factor, which bisection narrows to 2**-search_steps of it.
GROWTH = 2.0

#: Share of an image's pixels the L0 attack may change by default before it gives up.
L0_DEFAULT_SHARE = 0.10

#: One grey level: the smallest radius that survives 8-bit quantisation in Linf.
_LEVEL = 1.0 / 255.0


@dataclass
class MinimalDistortion:
    """Per image: how far the attack had to go, whether it got below the threshold, the image.

    ``distance`` is the real distance between the returned image and the clean one (in [0, 1]
    pixel units for Linf and L2, a number of pixels for L0), ``inf`` where the attack failed.
    ``x_adv`` is uint8 when the attack ran quantised, otherwise float in [0, 1]; where the attack
    failed it holds the attack's best effort at the largest radius it was allowed. ``scores`` are
    the detector's scores of ``x_adv`` as returned (after quantisation when quantised).
    """

    distance: Tensor
    success: Tensor
    x_adv: Tensor
    scores: Tensor
    #: Image-gradient evaluations spent (one per image per PGD iteration or greedy step).
    gradient_passes: int = 0


def _check_norm(norm: str) -> None:
    if norm not in MIN_NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {MIN_NORMS}")


def _round_into_ball(x_adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
    """8-bit rounding of L2 attacks with one radius per image, never leaving each image's ball.

    :func:`~evaluator.detector_attacks.common.quantize` does the same for one shared radius;
    here every image is searched at its own radius. Where rounding to the nearest grey level
    would leave the ball the perturbation is truncated towards ``x`` instead, which shrinks
    every coordinate of it.
    """
    scaled = x_adv.clamp(0.0, 1.0) * 255.0
    rounded = scaled.round()
    clean = (x * 255.0).round()
    outside = lp_norm((rounded - clean) / 255.0, "L2") > eps + 1e-6
    if bool(outside.any()):
        truncated = clean + torch.trunc(scaled - clean)
        rounded[outside] = truncated[outside]
    return rounded.clamp(0, 255).to(torch.uint8)


class _Search:
    """State of the per-image radius search (Linf or L2): what failed, what worked, the images."""

    def __init__(
        self,
        model: nn.Module,
        x: Tensor,
        threshold: float,
        norm: str,
        steps: int,
        seed: int,
        batch_size: int,
        quantized: bool,
    ) -> None:
        self.model, self.x, self.threshold, self.norm = model, x, threshold, norm
        self.steps, self.seed, self.batch_size, self.quantized = steps, seed, batch_size, quantized
        n = x.shape[0]
        self.lo = torch.zeros(n, dtype=torch.float64)
        self.hi = torch.full((n,), math.inf, dtype=torch.float64)
        self.success = torch.zeros(n, dtype=torch.bool)
        self.distance = torch.full((n,), math.inf)
        self.scores = torch.full((n,), math.inf)
        self.x_adv = quantize(x) if quantized else x.detach().clone()
        self.gradient_passes = 0
        self.rounds = 0

    def attempt(self, index: Tensor, radius: Tensor) -> Tensor:
        """Attacks images ``index`` at their ``radius``; keeps the results; returns who succeeded.

        A success replaces the stored image when it is closer to the clean one than the stored
        success (almost always: the search only tries smaller radii after a success), a failure
        only where the image has no success yet, so that a failed image returns the best effort
        at the largest radius tried.
        """
        xs = self.x[index]
        eps = radius.to(device=xs.device, dtype=xs.dtype)
        seed = derive_seed(self.seed, "detector-minimal", self.norm, self.rounds)
        self.rounds += 1
        adv, scores = lower_score(self.model, xs, self.norm, eps, self.steps, False, seed, self.batch_size)  # type: ignore[arg-type]
        rules = 2 if self.norm == "Linf" else 1  # lower_score runs two step rules for Linf
        self.gradient_passes += rules * (self.steps + 1) * int(index.numel())
        if self.quantized:
            if self.norm == "L2":
                out = _round_into_ball(adv, xs, eps)
            else:  # Linf radii are whole grey levels, which rounding cannot leave
                out = quantize(adv)
            unit = pixels_to_unit(out).to(xs.device)
            scores = fake_scores(self.model, unit, self.batch_size)
        else:
            out, unit = adv.detach(), adv.detach()
        scores = scores.detach().float().cpu()
        ok = scores < self.threshold
        distance = lp_norm(unit - xs, self.norm).float().cpu()  # type: ignore[arg-type]
        closer = ok & (distance < self.distance[index])
        keep = closer | (~ok & ~self.success[index])
        rows = index[keep]
        self.x_adv[rows.to(self.x_adv.device)] = out[keep.to(out.device)].to(self.x_adv.dtype)
        self.scores[rows] = scores[keep]
        self.distance[index[closer]] = distance[closer]
        self.success[index[ok]] = True
        self.hi[index[ok]] = radius[ok].double()
        self.lo[index[~ok]] = torch.maximum(self.lo[index[~ok]], radius[~ok].double())
        return ok


def _first_order_radius(model: nn.Module, x: Tensor, threshold: float, norm: str) -> tuple[Tensor, Tensor]:
    """Scores, and the radius at which the linearised score would reach the threshold.

    (score - threshold) / ||gradient||_dual is exact for a linear detector and a good first guess
    for a smooth one, so the geometric growth usually succeeds within a step or two.
    """
    scores, grad = score_and_grad(model, x)
    estimate = (scores - threshold) / dual_norm(grad, norm)  # type: ignore[arg-type]
    return scores.float().cpu(), torch.nan_to_num(estimate.float().cpu(), nan=0.0, posinf=0.0, neginf=0.0)


def _minimal_lp(
    model: nn.Module,
    x: Tensor,
    threshold: float,
    norm: str,
    steps: int,
    search_steps: int,
    max_eps: float | None,
    seed: int,
    batch_size: int,
    quantized: bool,
) -> MinimalDistortion:
    """Grow-then-bisect search over the PGD radius, per image, all images at once."""
    n, dims = x.shape[0], x[0].numel()
    top = float(max_eps) if max_eps is not None else (1.0 if norm == "Linf" else math.sqrt(dims))
    # In quantised Linf the only distances an 8-bit image can have are whole grey levels, so the
    # search runs on levels: no wasted rounds between two levels, and rounding cannot leave the ball.
    levels = quantized and norm == "Linf"
    if levels:
        top = math.floor(top * 255.0 + 1e-6) * _LEVEL
    if top <= 0:
        raise ValueError(f"max_eps must allow a positive radius, got {max_eps}")
    search = _Search(model, x, threshold, norm, steps, seed, batch_size, quantized)

    clean = pixels_to_unit(search.x_adv).to(x.device) if quantized else x
    parts = [_first_order_radius(model, clean[s : s + batch_size], threshold, norm) for s in range(0, n, batch_size)]
    clean_scores = torch.cat([p[0] for p in parts]) if parts else torch.empty(0)
    estimates = torch.cat([p[1] for p in parts]) if parts else torch.empty(0)
    search.gradient_passes += n
    already = clean_scores < threshold
    search.success[already] = True
    search.distance[already] = lp_norm(clean - x, norm).float().cpu()[already]  # type: ignore[arg-type]
    search.scores = torch.where(already, clean_scores, search.scores)
    search.hi[already] = 0.0

    floor = _LEVEL  # a smaller radius than one grey level rounds back to the clean image
    radius = estimates.double().clamp(min=floor, max=top)
    if levels:
        radius = (radius * 255.0).round().clamp(min=1.0) * _LEVEL
    # Growth: every image still searching is attacked at its radius; failures grow it.
    growing = ~already
    while bool(growing.any()):
        index = growing.nonzero().flatten()
        ok = search.attempt(index, radius[index])
        tried = radius[index]
        growing[index[ok]] = False
        failed = index[~ok]
        at_top = tried[~ok] >= top * (1 - 1e-12)
        growing[failed[at_top]] = False
        grown = (tried[~ok] * GROWTH).clamp(max=top)
        if levels:
            grown = (grown * 255.0).round() * _LEVEL
        radius[failed] = grown
    # Bisection between the largest radius that failed and the smallest that succeeded.
    for _ in range(search_steps):
        if levels:
            gap_levels = ((search.hi - search.lo) * 255.0).round()
            active = search.success & ~already & (gap_levels > 1)
            middle = torch.floor((search.lo + search.hi) * 255.0 / 2 + 1e-9) * _LEVEL
        else:
            active = search.success & ~already
            middle = (search.lo + search.hi) / 2
        if not bool(active.any()):
            break
        index = active.nonzero().flatten()
        search.attempt(index, middle[index])
    return MinimalDistortion(
        distance=search.distance,
        success=search.success,
        x_adv=search.x_adv,
        scores=search.scores,
        gradient_passes=search.gradient_passes,
    )


def _minimal_l0(
    model: nn.Module, x: Tensor, threshold: float, cap: int, batch_size: int, quantized: bool
) -> MinimalDistortion:
    """Greedy saliency: per image, move the pixel that promises the largest drop, until below.

    Moving pixel i to the end of its range that lowers the score (0 where the gradient is
    positive, 1 where it is negative) lowers a linear detector's score by exactly
    |w_i| * room_i, independently of every other pixel. The fewest pixels that take the score
    below the threshold are then the ones with the largest such drops, which is what the greedy
    picks, one at a time: for a linear detector it is exact. For a non-linear one the gradient is
    recomputed after every move, so each choice uses the current local picture. A pixel is moved
    at most once, so the count is the number of changed pixels.
    """
    n = x.shape[0]
    # Quantised: work on the 8-bit clean image, so that every image met (its pixels unchanged or
    # at 0 or 1) is exactly representable and its score is the score of the saved image.
    base = pixels_to_unit(quantize(x)).to(x.device) if quantized else x.detach()
    distance = torch.full((n,), math.inf)
    success = torch.zeros(n, dtype=torch.bool)
    final_scores = torch.full((n,), math.inf)
    outputs: list[Tensor] = []
    passes = 0
    for start in range(0, n, batch_size):
        current = base[start : start + batch_size].clone()
        b = current.shape[0]
        flat = current.view(b, -1)
        moved = torch.zeros_like(flat, dtype=torch.bool)
        count = torch.zeros(b, dtype=torch.long)
        active = torch.ones(b, dtype=torch.bool)
        for step in range(cap + 1):
            index = active.nonzero().flatten()
            if index.numel() == 0:
                break
            rows = index.to(x.device)
            scores, grad = score_and_grad(model, current[rows])
            passes += int(index.numel())
            scores = scores.float().cpu()
            final_scores[start + index] = scores
            below = scores < threshold
            success[start + index[below]] = True
            distance[start + index[below]] = count[index[below]].float()
            active[index[below]] = False
            if step == cap:
                break
            go = ~below
            index, rows, g = index[go], rows[go.to(x.device)], grad[go.to(grad.device)].flatten(1)
            values = flat[rows]
            target = (g < 0).to(values.dtype)  # 1 where raising the pixel lowers the score
            room = torch.where(g > 0, values, 1.0 - values)
            gain = g.abs() * room
            gain[moved[rows]] = -1.0
            best_gain, best = gain.max(dim=1)
            stuck = (best_gain <= 0).cpu()  # no pixel left that can lower the score
            active[index[stuck]] = False
            keep = ~stuck
            index, rows, best = index[keep], rows[keep.to(x.device)], best[keep.to(best.device)]
            flat[rows, best] = target[keep.to(target.device)].gather(1, best[:, None]).squeeze(1)
            moved[rows, best] = True
            count[index] += 1
        outputs.append(quantize(current) if quantized else current)
    x_adv = torch.cat(outputs) if outputs else (quantize(x) if quantized else x.clone())
    return MinimalDistortion(distance, success, x_adv, final_scores, passes)


def minimal_distortion(
    model: nn.Module,
    x: Tensor,
    threshold: float,
    norm: str,
    *,
    steps: int = 20,
    search_steps: int = 10,
    max_eps: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    quantized: bool = True,
) -> MinimalDistortion:
    """The smallest ``norm`` distortion found that takes each image's score below ``threshold``.

    ``x`` are float images in [0, 1] (8-bit values when ``quantized``). For Linf and L2,
    ``steps`` are the PGD iterations per try and ``search_steps`` the bisection rounds after the
    first success; ``max_eps`` caps the radius (default: the whole pixel box, 1 for Linf and
    sqrt(C*H*W) for L2). For L0, ``max_eps`` is the most pixels that may change (default 10 % of
    them; a pixel is one value of one channel). With ``quantized`` every candidate is rounded to
    8 bits before it is judged and the distance is that of the rounded image, which is what a
    saved image achieves; without, the attack is continuous (for closed-form checks).

    A fake that already scores below the threshold has distance 0.
    """
    _check_norm(norm)
    if x.dim() < 2:
        raise ValueError(f"x must be a batch of images, got shape {tuple(x.shape)}")
    if norm == "L0":
        dims = x[0].numel()
        cap = int(max_eps) if max_eps is not None else max(1, math.floor(L0_DEFAULT_SHARE * dims))
        return _minimal_l0(model, x, float(threshold), max(cap, 0), batch_size, quantized)
    return _minimal_lp(model, x, float(threshold), norm, steps, search_steps, max_eps, seed, batch_size, quantized)
