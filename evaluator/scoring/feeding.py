"""How the scorer feeds a model: stored pixels to the model's input range, in a secret order.

Stored sets are sorted (a detector set holds its reals, then its fakes); fed in that order,
every batch would be one class and a model could read the class off its batch. Every set is
therefore fed in an order drawn from the job's secret generator, with a sample of its images
sent a second time in other batches for the batch checks (:mod:`evaluator.scoring.consistency`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from evaluator.deadline import OutOfTime
from evaluator.errors import EvaluationError
from evaluator.models.contract import pixels_to_unit
from evaluator.remote.client import ModelRaised
from evaluator.spec import InputSpec

__all__ = ["evaluation_order", "feed_with_repeats", "in_pixel_space", "predict", "to_model_input"]


def to_model_input(images_uint8: torch.Tensor, input_spec: InputSpec, device: torch.device) -> torch.Tensor:
    """The one place where stored 8-bit pixels become the float images a model sees."""
    low, high = input_spec.value_range
    x = pixels_to_unit(images_uint8, device)
    if (low, high) != (0.0, 1.0):
        x = x.mul_(high - low).add_(low)
    return x


class _FromPixels(torch.nn.Module):
    """A model that takes [low, high], fed from pixels in [0, 1] by the same map as ``to_model_input``."""

    def __init__(self, model: torch.nn.Module, low: float, high: float) -> None:
        super().__init__()
        self.model, self.low, self.scale = model, low, high - low

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.low)


def in_pixel_space(model: torch.nn.Module, input_spec: InputSpec) -> torch.nn.Module:
    """The model as the attacks must see it: taking pixels in [0, 1].

    Threat models are stated on pixels (Linf 8/255 is 8 grey levels; a valid image has pixels in
    [0, 1]) and the attacks clip to that box. Attacking a model that takes [-1, 1] directly would
    clip to the wrong box and halve every budget, so its input map moves inside the attacked function.
    """
    low, high = input_spec.value_range
    if (low, high) == (0.0, 1.0):
        return model
    return _FromPixels(model, low, high).eval()


def evaluation_order(count: int, rng: torch.Generator | None = None) -> torch.Tensor:
    """The order a set's images are fed in: a permutation from the job's secret generator.

    A random order mixes classes, and a secret seed means the model cannot know which image is where.
    """
    return torch.randperm(count, generator=rng)


def predict(
    model: torch.nn.Module,
    images_uint8: torch.Tensor,
    input_spec: InputSpec,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
    order: torch.Tensor | None = None,
    fed_order: bool = False,
) -> torch.Tensor:
    """Model outputs for every image, in batches, without autograd; outputs stay on the CPU.

    With ``order``, batch k holds the images ``order[k*batch_size:(k+1)*batch_size]``; the
    outputs come back in the stored order all the same, or in the order fed with ``fed_order``
    (needed when ``order`` repeats images).
    """
    outputs: list[torch.Tensor] = []
    total = images_uint8.shape[0] if order is None else int(order.shape[0])
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            rows = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            batch = to_model_input(images_uint8[rows], input_spec, device)
            try:
                out = model(batch)
            except (EvaluationError, OutOfTime):
                raise
            except ModelRaised as exc:
                raise EvaluationError("model_error", str(exc)) from None
            except Exception as exc:  # the submission's code failed on real data
                raise EvaluationError(
                    "model_error", f"The model raised {type(exc).__name__} on evaluation images."
                ) from exc
            if not isinstance(out, torch.Tensor):
                raise EvaluationError("wrong_dtype", f"The model returned {type(out).__name__}, not a tensor.")
            outputs.append(out.detach().float().cpu())
            if on_batch is not None:
                on_batch(min(start + batch_size, total))
    stacked = torch.cat(outputs)
    if order is None or fed_order:
        return stacked
    restored = torch.empty_like(stacked)
    restored[order] = stacked
    return restored


def feed_with_repeats(count: int, batch_size: int, sample: int,
                      rng: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The job's feed for one set: a secret permutation, then ``sample`` of its images a second time.

    Returns ``(feed, chosen)``: the stored indices in the order they are sent (``count`` + k long,
    the repeats last, in the order of ``chosen``) and the repeated indices. Each repeated image is
    drawn from the batches before the one the repeats start in, so its second pass is always in
    another batch of the job's size, beside other companions. Without state a model cannot tell a
    repeat from any other image, so "the same image in another batch" costs k images instead of a
    batch of its own. When the whole set fits in one batch, nothing is repeated (k = 0).
    """
    order = evaluation_order(count, rng)
    before = (count // batch_size) * batch_size  # positions whose batch ends before the repeats start
    k = min(sample, before)
    if k <= 0:
        return order, order[:0]
    chosen = order[torch.randperm(before, generator=rng)[:k]]
    return torch.cat([order, chosen]), chosen
