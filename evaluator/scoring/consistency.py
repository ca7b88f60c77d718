"""The batch checks: a model's output for an image must depend on that image alone, every time.

A model that reads its batch (batch statistics, a batch mean added to every score) could tell
hidden images from probes, or classes from their mix; one whose outputs vary between calls
makes every number luck. A sample of each set's hidden images is therefore evaluated again
alone, in another batch, at another batch size and twice; a difference beyond rounding fails
the job as ``batch_dependent`` or ``nondeterministic``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from evaluator.errors import EvaluationError
from evaluator.scoring.feeding import predict
from evaluator.spec import InputSpec

__all__ = [
    "ALONE_SAMPLE", "CONSISTENCY_RTOL", "CONSISTENCY_RTOL_MIXED", "CONSISTENCY_SAMPLE", "ConsistencyReport",
    "check_batch_consistency", "check_finite",
]

#: Hidden images per evaluation set that the batch checks look at again.
CONSISTENCY_SAMPLE = 16
#: Of those, how many are also evaluated alone (one call each).
ALONE_SAMPLE = 8
#: Outputs of the same image may differ by this share of their scale between batchings (float32
#: kernels sum in another order at another batch size); far below any change that moves a score.
CONSISTENCY_RTOL = 1e-4
#: The same, under autocast on a GPU (bfloat16 or float16 rounding).
CONSISTENCY_RTOL_MIXED = 5e-2


@dataclass(frozen=True)
class ConsistencyReport:
    """What the batch checks compared, for the provenance."""

    images: int
    comparisons: int
    max_batch_difference: float
    max_repeat_difference: float

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "comparisons": self.comparisons,
                "max_batch_difference": float(f"{self.max_batch_difference:.3g}"),
                "max_repeat_difference": float(f"{self.max_repeat_difference:.3g}")}


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().reshape(a.shape[0], -1), b.double().reshape(b.shape[0], -1)
    scale = torch.maximum(a.abs().amax(dim=1), b.abs().amax(dim=1)).clamp_min(1.0)
    return float(((a - b).abs().amax(dim=1) / scale).max()) if a.shape[0] else 0.0


def check_batch_consistency(
    model: torch.nn.Module,
    images_uint8: torch.Tensor,
    outputs: torch.Tensor,
    input_spec: InputSpec,
    batch_size: int,
    device: torch.device,
    rng: torch.Generator | None = None,
    *,
    sample: int = CONSISTENCY_SAMPLE,
    rtol: float = CONSISTENCY_RTOL,
    set_name: str = "",
    repeated: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ConsistencyReport:
    """Re-evaluate a random sample of hidden images alone, in another batch, at another size, and twice.

    ``outputs`` are the job's outputs for every image (stored order). A model whose output for an
    image depends on the other images of its batch (batch statistics, a batch mean added to every
    score) differs between these batchings and fails ``batch_dependent``; one whose outputs differ
    between two identical calls fails ``nondeterministic``. The sample and its companions come
    from the job's secret generator, so the checked images cannot be told from the others.

    ``repeated`` is ``(chosen, outputs)`` when the job's own pass already fed the sample a second
    time, in other batches of the job's size (:func:`evaluator.scoring.feeding.feed_with_repeats`);
    otherwise the sample is sent again here beside other companions.
    """
    total = int(images_uint8.shape[0])
    if total == 0:
        return ConsistencyReport(0, 0, 0.0, 0.0)
    if repeated is not None:
        chosen, in_batch = repeated
    else:
        chosen = torch.randperm(total, generator=rng)[: min(sample, total)]
    picked = images_uint8[chosen]
    expected = outputs[chosen]
    size = max(1, min(batch_size, total))
    # Another batch size: neither the job's nor 1, and smaller than the sample so it splits it.
    other_size = max(2, min(len(chosen) // 2 + 1, size - 1)) if size > 2 else size + 1
    if repeated is None:
        # Another batch of the usual size: the sample beside other companions, at other positions.
        companions = torch.randperm(total, generator=rng)
        companions = companions[~torch.isin(companions, chosen)][: max(size - len(chosen), 0)]
        mixed_rows = torch.cat([chosen, companions])
        mixed_rows = mixed_rows[torch.randperm(len(mixed_rows), generator=rng)]
        position = {int(row): index for index, row in enumerate(mixed_rows.tolist())}
        where = torch.tensor([position[int(row)] for row in chosen.tolist()])
        in_batch = predict(model, images_uint8[mixed_rows], input_spec, len(mixed_rows), device)[where]
    # Alone: one call per image, the dearest check, so on part of the sample (the first ones: random).
    lone = min(len(chosen), ALONE_SAMPLE)
    alone = torch.cat([predict(model, picked[i : i + 1], input_spec, 1, device) for i in range(lone)])
    resized = predict(model, picked, input_spec, other_size, device)
    # Twice: the small batches again, exactly as before (cheaper than a second full batch, and as telling).
    resized_again = predict(model, picked, input_spec, other_size, device)
    repeat = _relative_difference(resized, resized_again)
    batch = max(_relative_difference(expected, in_batch), _relative_difference(expected[:lone], alone),
                _relative_difference(expected, resized))
    where_text = f" of {set_name}" if set_name else ""
    if repeat > rtol:
        raise EvaluationError(
            "nondeterministic",
            f"The same batch of evaluation images{where_text}, sent twice, gave outputs that differ by up to "
            f"{repeat:.3g} of their scale. Put the model in eval mode and remove randomness from its forward pass.",
        )
    if batch > rtol:
        raise EvaluationError(
            "batch_dependent",
            f"An evaluation image{where_text} got outputs that differ by up to {batch:.3g} of their scale depending "
            "on the other images in its batch or the batch size. Each image's output must depend on that image "
            "alone (no batch statistics: eval mode, no cross-batch operations).",
        )
    return ConsistencyReport(len(chosen), 3 * len(chosen) + lone, batch, repeat)


def check_finite(outputs: torch.Tensor, set_name: str) -> None:
    """Fails ``non_finite_output`` when any image of the set got a NaN or infinite output."""
    finite_rows = torch.isfinite(outputs.reshape(outputs.shape[0], -1)).all(dim=1)
    bad = int((~finite_rows).sum())
    if bad:
        raise EvaluationError(
            "non_finite_output",
            f"The model returned NaN or infinite outputs for {bad} of {outputs.shape[0]} images of {set_name}.",
        )
