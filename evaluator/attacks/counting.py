"""Counting what an attack spends: images through the model's forward and through its backward.

An attack's cost is reported in passes per image, not in calls, because a call on 256 images
and 256 calls on one image cost the same model work. Forward passes are counted when the
wrapped model is called; backward passes are counted by a hook on the output that fires only
when a gradient actually flows back through it, so a forward under autograd that is never
differentiated costs nothing extra. The same wrapper measures the official AutoAttack in the
side-by-side benchmark, so both suites are counted the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class PassCount:
    """Images that went through the model's forward and backward."""

    forward: int = 0
    backward: int = 0

    def __add__(self, other: PassCount) -> PassCount:
        return PassCount(self.forward + other.forward, self.backward + other.backward)

    def __sub__(self, other: PassCount) -> PassCount:
        return PassCount(self.forward - other.forward, self.backward - other.backward)

    @property
    def total(self) -> int:
        return self.forward + self.backward


class CountingModel(nn.Module):
    """Wraps a model and counts per-image forward and backward passes; otherwise transparent."""

    def __init__(self, model: nn.Module | torch.fx.GraphModule) -> None:
        super().__init__()
        self.model = model
        self.forward_passes = 0
        self.backward_passes = 0

    def forward(self, x: Tensor) -> Tensor:
        batch = int(x.shape[0])
        self.forward_passes += batch
        out = self.model(x)
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(self._backward_hook(batch))
        return out

    def _backward_hook(self, batch: int):  # noqa: ANN202 - a closure for Tensor.register_hook
        def hook(grad: Tensor) -> None:
            self.backward_passes += batch

        return hook

    @property
    def count(self) -> PassCount:
        return PassCount(self.forward_passes, self.backward_passes)

    def reset(self) -> None:
        self.forward_passes = 0
        self.backward_passes = 0


def as_counting(model: nn.Module) -> CountingModel:
    """``model`` itself if it is already counted, else a new counting wrapper around it."""
    return model if isinstance(model, CountingModel) else CountingModel(model)
