"""Universal adversarial patch: one small square that, pasted anywhere on any fake, makes it look real.

This is the strongest practical form of the attack in Carlini & Farid (2020): the attacker
learns the patch once, on fakes of their own (here: public fakes drawn from the generator), and
then pastes it on new fakes without any access to the detector. The patch is learned at random
positions, so it has to work wherever it lands; it is evaluated on other (hidden) fakes at
other random positions, so the number measures transfer to unseen images, not memorisation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from evaluator.attacks.common import make_generator
from evaluator.models.contract import detector_scores, pixels_to_unit

#: Adam's step on the unconstrained patch parameter (before the sigmoid).
DEFAULT_LR = 0.1


def patch_side(area: float, height: int, width: int) -> int:
    """The side of the square patch covering ``area`` of an image: max(1, round(sqrt(area * H * W))).

    The side must be a whole number of pixels, so the covered share is only approximately
    ``area``: 1 % of a 28 x 28 image gives a 3 x 3 patch, 9 / 784 = 1.15 % of it. The side is
    capped at the image's shorter side.
    """
    if not 0.0 < area <= 1.0:
        raise ValueError(f"patch area must lie in (0, 1], got {area}")
    return max(1, min(round(math.sqrt(area * height * width)), height, width))


def patch_label(area: float) -> str:
    """The metric suffix of a patch attack, e.g. ``patch-1%`` for an area of 0.01."""
    return f"patch-{area * 100:g}%"


def _draw_positions(n: int, height: int, width: int, side: int, generator: torch.Generator) -> Tensor:
    rows = torch.randint(0, height - side + 1, (n,), generator=generator, device=generator.device)
    cols = torch.randint(0, width - side + 1, (n,), generator=generator, device=generator.device)
    return torch.stack([rows, cols], dim=1)


def random_positions(n: int, height: int, width: int, side: int, seed: int) -> Tensor:
    """(n, 2) top-left corners (row, column), uniform over every placement that fits inside the image."""
    if not 1 <= side <= min(height, width):
        raise ValueError(f"a patch of side {side} does not fit a {height} x {width} image")
    return _draw_positions(n, height, width, side, make_generator(seed))


def apply_patch(x: Tensor, patch: Tensor, positions: Tensor) -> Tensor:
    """A copy of images ``x`` (N, C, H, W) with ``patch`` (C, s, s) pasted at ``positions`` (N, 2).

    Works for float and uint8 images alike (the patch is cast to the images' dtype), and is
    differentiable with respect to a float patch, which is how the patch is learned.
    """
    n, channels = x.shape[0], x.shape[1]
    side = patch.shape[-1]
    if patch.shape != (channels, side, side):
        raise ValueError(f"patch must be ({channels}, s, s) for these images, got {tuple(patch.shape)}")
    positions = positions.to(x.device)
    offsets = torch.arange(side, device=x.device)
    rows = (positions[:, 0:1] + offsets)[:, :, None]  # (N, s, 1)
    cols = (positions[:, 1:2] + offsets)[:, None, :]  # (N, 1, s)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = x.clone()
    # Advanced indices around a slice put the indexed dimensions first: (N, s, s, C).
    values = patch.to(device=x.device, dtype=x.dtype).permute(1, 2, 0).expand(n, side, side, channels)
    out[batch, :, rows, cols] = values
    return out


def learn_patch(
    model: nn.Module,
    fakes_train: Tensor,
    area: float = 0.01,
    steps: int = 300,
    seed: int = 0,
    batch_size: int = 256,
    lr: float = DEFAULT_LR,
) -> Tensor:
    """A (C, s, s) patch in [0, 1] that lowers the mean score of fakes it is pasted on.

    ``fakes_train`` are (N, C, H, W) uint8 or float images. Each step takes the next
    ``batch_size`` fakes of a seeded shuffle, pastes the patch at fresh uniformly random
    positions and takes one Adam step on the mean detector score. The patch is the sigmoid of an
    unconstrained parameter: that keeps it inside [0, 1] without clipping, which would stop the
    gradient of every pixel that reaches a bound, where a linear detector's optimum lies.

    The returned patch is continuous; quantise it to 8 bits before it is pasted on images that
    are to be saved (the suite does).
    """
    images = pixels_to_unit(fakes_train) if fakes_train.dtype == torch.uint8 else fakes_train.float()
    n, channels, height, width = images.shape
    if n == 0:
        raise ValueError("learn_patch needs at least one training fake")
    side = patch_side(area, height, width)
    generator = make_generator(seed)
    param = torch.zeros((channels, side, side), device=images.device, requires_grad=True)
    optimiser = torch.optim.Adam([param], lr=lr)
    take = min(batch_size, n)
    order = torch.randperm(n, generator=generator)
    cursor = 0
    for _ in range(steps):
        if cursor + take > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        index = order[cursor : cursor + take].to(images.device)
        cursor += take
        positions = _draw_positions(take, height, width, side, generator)
        with torch.enable_grad():
            patched = apply_patch(images[index], torch.sigmoid(param), positions)
            loss = detector_scores(model(patched)).mean()
            # Only the patch's gradient: the detector's own parameters are left untouched.
            (grad,) = torch.autograd.grad(loss, [param])
        optimiser.zero_grad(set_to_none=True)
        param.grad = grad
        optimiser.step()
    return torch.sigmoid(param).detach()
