"""The input/output contract a submitted model must meet before any metric is computed.

Two facts of the contract are used wherever models are fed or read, so they are defined here
once: stored images are 8-bit pixels that become float images in [0, 1]
(:func:`pixels_to_unit`), and a detector's score for an image is its first output column
(:func:`detector_scores`).

A short probe on a few seeded random images catches the usual mistakes (wrong input size,
wrong output shape, integer outputs, NaNs, dropout left on, a model far too slow for the
budget) and turns each into a named error, instead of a crash or a silently wrong score
hours into an evaluation.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from evaluator.errors import EvaluationError
from evaluator.spec import InputSpec

#: Outputs of the same input twice must agree to this fraction of the output's scale.
DETERMINISM_RTOL = 1e-5
#: When the extrapolated time is over budget by at most this factor, time a real full batch
#: before failing: small probes overstate the per-image cost of fixed overheads.
REMEASURE_FACTOR = 4.0
#: Timed repeats of the probe; the fastest counts, as scheduler noise only ever adds time.
TIMED_PROBES = 3


@dataclass(frozen=True)
class ContractReport:
    """What the probe saw; stored with the result as provenance."""

    probe_batch_size: int
    output_shape: tuple[int, ...]
    output_dtype: str
    #: Seconds for one probe batch (fastest of a few, after a warm-up call).
    probe_seconds: float
    #: Estimated seconds for one batch of ``batch_size`` (measured when close to the budget).
    seconds_per_batch: float
    batch_size: int
    time_budget_s: float
    device: str
    measured_full_batch: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pixels_to_unit(images_uint8: Tensor, device: torch.device | str | None = None) -> Tensor:
    """Stored 8-bit pixels as float32 images in [0, 1]: the space every attack budget is stated in.

    Every evaluation set, generator sample and attacked image is stored as uint8, so this is the
    one map from what is stored to what is computed on (a Linf budget of 8/255 is then exactly 8
    grey levels). ``device`` moves the images first, so the division runs where they end up; the
    division is in place on that fresh float copy, which is why anything but uint8 is refused.
    """
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {images_uint8.dtype}")
    return images_uint8.to(device=device, dtype=torch.float32).div_(255.0)


def detector_scores(outputs: Tensor) -> Tensor:
    """A detector's score per image, shape (N,): its first output column (higher means fake).

    A detector may return (N,) or (N, 1) (:func:`check_contract` accepts both); both read as
    one score per image. Keeps autograd, so the attacks differentiate through it.
    """
    return outputs.reshape(outputs.shape[0], -1)[:, 0]


def set_eval_mode(model: nn.Module) -> None:
    """``model.eval()``, tolerating modules from ``ExportedProgram.module()`` that refuse it.

    Their train/eval behaviour was frozen into the graph at export time, so there is nothing to do.
    """
    try:
        model.eval()
    except NotImplementedError:
        pass


def probe_images(input_spec: InputSpec, count: int, seed: int = 0) -> Tensor:
    """Seeded uniform images in ``input_spec.value_range`` (same on every machine: CPU generator)."""
    generator = torch.Generator().manual_seed(seed)
    low, high = (float(v) for v in input_spec.value_range)
    images = torch.rand((count, *input_spec.shape), generator=generator)
    return low + (high - low) * images


def check_contract(
    model: nn.Module,
    input_spec: InputSpec,
    task: str,
    num_classes: int,
    batch_size: int,
    time_budget_s: float,
    device: str = "cpu",
    *,
    probe_size: int = 8,
    seed: int = 0,
) -> ContractReport:
    """Runs the probe and raises :class:`EvaluationError` on the first broken promise.

    Moves ``model`` to ``device`` and sets eval mode (both in place).
    """
    if task not in ("classifier", "detector"):
        raise ValueError(f"unknown task {task!r}")
    set_eval_mode(model)
    model.to(device)
    probe = probe_images(input_spec, probe_size, seed).to(device)

    with torch.inference_mode():
        first = _run(model, probe, input_spec)
        _check_output(first, task, num_classes, probe_size)
        timings = []
        for _ in range(TIMED_PROBES):
            started = time.perf_counter()
            second = _run(model, probe.clone(), input_spec)
            _synchronize(device)
            timings.append(time.perf_counter() - started)
            _check_output(second, task, num_classes, probe_size)
            _check_deterministic(first, second)
        probe_seconds = min(timings)
        # The runner's last batch can hold a single image; catch .squeeze() bugs and fixed batch sizes.
        _check_output(_run(model, probe[:1], input_spec), task, num_classes, 1)

        seconds_per_batch = probe_seconds * batch_size / probe_size
        measured = False
        if seconds_per_batch > time_budget_s and batch_size > probe_size:
            if seconds_per_batch <= REMEASURE_FACTOR * time_budget_s:
                full = probe_images(input_spec, batch_size, seed + 1).to(device)
                started = time.perf_counter()
                _run(model, full, input_spec)
                _synchronize(device)
                seconds_per_batch = time.perf_counter() - started
                measured = True
    if seconds_per_batch > time_budget_s:
        raise EvaluationError(
            "too_slow",
            f"The model needs about {seconds_per_batch:.2f} s for a batch of {batch_size} images on {device}, "
            f"above the track's budget of {time_budget_s:.2f} s per batch.",
        )
    return ContractReport(
        probe_batch_size=probe_size,
        output_shape=tuple(first.shape),
        output_dtype=str(first.dtype).removeprefix("torch."),
        probe_seconds=probe_seconds,
        seconds_per_batch=seconds_per_batch,
        batch_size=batch_size,
        time_budget_s=time_budget_s,
        device=device,
        measured_full_batch=measured,
    )


def _run(model: nn.Module, images: Tensor, input_spec: InputSpec) -> Any:
    try:
        return model(images)
    except EvaluationError:  # already named (a model process that timed out, crashed or sent a non-tensor)
        raise
    except Exception as exc:  # any exception here is the submission failing on a valid input
        kind = getattr(exc, "type_name", type(exc).__name__)
        text = " ".join(str(exc).split()) or kind
        if len(text) > 300:
            text = text[:297] + "..."
        low, high = input_spec.value_range
        raise EvaluationError(
            "wrong_input_shape",
            f"The model raised {kind} on a float32 batch of shape {tuple(images.shape)} with values in "
            f"[{low:g}, {high:g}]: {text}",
        ) from None


def _check_output(output: Any, task: str, num_classes: int, count: int) -> None:
    if not isinstance(output, Tensor):
        raise EvaluationError(
            "wrong_dtype", f"The model returned a {type(output).__name__}; it must return one floating-point tensor."
        )
    if not output.is_floating_point():
        raise EvaluationError(
            "wrong_dtype", f"The model returned a {output.dtype} tensor; scores must be floating point (logits)."
        )
    shape = tuple(output.shape)
    if task == "classifier":
        ok = shape == (count, num_classes)
        expected = f"({count}, {num_classes}): one logit per class"
    else:
        ok = shape in ((count,), (count, 1))
        expected = f"({count},) or ({count}, 1): one logit per image that it is fake"
    if not ok:
        raise EvaluationError(
            "wrong_output_shape",
            f"For a batch of {count} images the model returned shape {shape}; expected {expected}.",
        )
    finite = torch.isfinite(output)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise EvaluationError(
            "non_finite_output", f"The model returned {bad} NaN or infinite values out of {output.numel()}."
        )


def _check_deterministic(first: Tensor, second: Tensor) -> None:
    a, b = first.double().cpu(), second.double().cpu()
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-12)
    difference = float((a - b).abs().max())
    if difference > DETERMINISM_RTOL * scale:
        raise EvaluationError(
            "nondeterministic",
            f"The same input gave outputs that differ by up to {difference:.3g} (relative {difference / scale:.3g}). "
            "Put the model in eval mode and remove randomness (dropout, sampling) from its forward pass.",
        )


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
