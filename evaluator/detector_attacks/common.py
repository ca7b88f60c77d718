"""What every detector attack shares: batched scores, score gradients and 8-bit quantisation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from evaluator.attacks.threat import Norm, lp_norm
from evaluator.models.contract import detector_scores


def fake_scores(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Scores of float images in [0, 1], without autograd, as a float32 CPU tensor of shape (N,)."""
    parts: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            parts.append(detector_scores(model(x[start : start + batch_size])).detach().float().cpu())
    return torch.cat(parts) if parts else torch.empty(0)


def score_and_grad(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image scores and the gradient of each image's own score (images are independent)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        scores = detector_scores(model(x))
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return scores.detach(), grad.detach()


def quantize(x_adv: Tensor, x: Tensor | None = None, norm: Norm | None = None, eps: float | None = None) -> Tensor:
    """Rounds float images in [0, 1] to 8 bits (uint8), as saving them to a PNG would.

    When the clean images ``x`` (themselves 8-bit values) and an L2 budget ``eps`` are given,
    images whose rounded perturbation would leave the ball are truncated towards ``x`` instead,
    which can only shrink every coordinate of the perturbation. Rounding can never leave an Linf
    ball of a whole number of grey levels around an 8-bit image, so Linf needs no such care.
    """
    rounded = (x_adv.clamp(0.0, 1.0) * 255.0).round()
    if x is None or norm != "L2" or eps is None:
        return rounded.to(torch.uint8)
    clean = (x * 255.0).round()
    outside = lp_norm((rounded - clean) / 255.0, "L2") > eps + 1e-6
    if bool(outside.any()):
        truncated = clean + torch.trunc((x_adv.clamp(0.0, 1.0) * 255.0) - clean)
        rounded[outside] = truncated[outside]
    return rounded.clamp(0, 255).to(torch.uint8)
