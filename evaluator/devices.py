"""Where an evaluation runs and how: the device, the batch size that fits it, and the precision.

The platform names a device per job (``JobSpec.device``, from ``ARENA_EVAL_DEVICE``): ``cpu``,
``cuda``/``cuda:N``, or ``auto``, which takes the GPU when the evaluating process can see one.
``auto`` is resolved here, inside the (sandboxed) evaluator, because only the process that runs
the model knows whether a GPU reached it; the result is written to the provenance.

A track's batch size is chosen for scores, not for a particular card: on a GPU with less free
memory than it needs, :func:`choose_batch_size` measures the model's memory per image with a trial
forward and backward pass (the attacks need input gradients) and takes the largest batch that fits
with headroom. Scores do not depend on the batch size (the model is in eval mode and the contract
check refuses models whose outputs change between identical calls), so this changes speed only.

Mixed precision changes the numbers a model computes, so it is off unless the track allows it
(``JobSpec.allow_mixed_precision``), and then only on CUDA: attacks in reduced precision can
understate robustness (gradients underflow), which is a track's decision to accept, not ours.
TF32, which cuDNN uses for float32 convolutions by default on recent cards, is reduced precision too
and follows the same rule (:func:`set_float32_precision`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from evaluator.errors import EvaluationError
from evaluator.spec import InputSpec

AUTO = "auto"
#: Share of the free GPU memory a batch may plan to use: the rest covers what a trial pass does
#: not show (the attacks' own buffers, allocator fragmentation, other kernels' workspaces).
HEADROOM = 0.7
#: Images in the two trial batches; two sizes separate the fixed cost from the per-image one.
TRIAL_SIZES = (2, 8)


def resolve_device(requested: str) -> str:
    """The device to run on: ``auto`` becomes ``cuda`` when this process sees a GPU, else ``cpu``.

    An explicit CUDA device without a GPU is the platform's misconfiguration (a worker without a
    card, or a sandbox without its device files), not the submission's fault: it fails with the
    ``internal`` code, which refunds the researcher's quota.
    """
    name = (requested or "cpu").strip().lower()
    if name == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise EvaluationError("internal", f"The platform asked for an unknown device {requested!r}.") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EvaluationError("internal", f"The platform asked for {requested!r}, but no GPU is visible to the "
                                              "evaluation.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EvaluationError("internal", f"The platform asked for {requested!r}, but only "
                                              f"{torch.cuda.device_count()} GPU(s) are visible.")
    return name


@dataclass(frozen=True)
class BatchChoice:
    """The batch size used and why, for the provenance."""

    batch_size: int
    requested: int
    reason: str  # "cpu", "fits", "memory" or "trial_failed"
    free_bytes: int | None = None
    bytes_per_image: float | None = None
    fixed_bytes: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trial_memory(model: nn.Module, input_spec: InputSpec, device: torch.device, count: int,
                 backward: bool = True) -> int:
    """Peak bytes the CUDA allocator gave out beyond what was held before, for one pass of ``count`` images.

    The pass is what an attack step does: a forward pass with gradients on the input and a
    backward pass from the summed outputs (only the forward pass when ``backward`` is False).
    """
    generator = torch.Generator().manual_seed(0)
    low, high = input_spec.value_range
    images = low + (high - low) * torch.rand((count, *input_spec.shape), generator=generator)
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    x = images.to(device).requires_grad_(backward)
    with torch.enable_grad() if backward else torch.inference_mode():
        out = model(x)
        if backward:
            out.float().sum().backward()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - baseline
    del x, out
    model.zero_grad(set_to_none=True)
    return int(peak)


def _power_of_two_at_most(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


def choose_batch_size(model: nn.Module, input_spec: InputSpec, device: str | torch.device, requested: int,
                      *, backward: bool = True, headroom: float = HEADROOM) -> BatchChoice:
    """The track's batch size where it fits; on a GPU where it does not, the largest power of two that does.

    On CPU the requested size is returned unchanged (host memory is the sandbox's limit, which the
    track's batch size was chosen for). On CUDA: free memory from ``torch.cuda.mem_get_info``, the
    model's memory as ``fixed + per_image * n`` from two trial passes, and the batch such that
    ``fixed + per_image * n <= headroom * free``. A trial that fails (the model's own error, which
    the evaluation will then report properly) leaves the requested size; one that runs out of
    memory even at a couple of images gives 1.
    """
    requested = max(int(requested), 1)
    device = torch.device(device)
    if device.type != "cuda":
        return BatchChoice(requested, requested, "cpu")
    free, _total = torch.cuda.mem_get_info(device)
    small, large = TRIAL_SIZES
    try:
        peak_small = trial_memory(model, input_spec, device, small, backward)
        peak_large = trial_memory(model, input_spec, device, large, backward)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return BatchChoice(1, requested, "memory", free_bytes=int(free))
    except Exception:  # the model's own error: the evaluation will report it properly
        return BatchChoice(requested, requested, "trial_failed", free_bytes=int(free))
    # Linear in the batch: weights' gradients and workspaces are fixed, activations grow per image.
    # The allocator rounds blocks up, so for a tiny model the slope can come out 0 or negative:
    # then the large trial's whole peak is counted per image (an overestimate, so a safe one).
    slope = (peak_large - peak_small) / (large - small)
    per_image = slope if slope > 0 else max(peak_large / large, 1.0)
    fixed = max(peak_large - per_image * large, 0.0)
    budget = headroom * free
    fitting = int((budget - fixed) // per_image)
    if fitting >= requested:
        return BatchChoice(requested, requested, "fits", int(free), per_image, fixed)
    chosen = _power_of_two_at_most(min(fitting, requested)) if fitting >= 1 else 1
    return BatchChoice(chosen, requested, "memory", int(free), per_image, fixed)


def use_mixed_precision(allowed: bool, device: str | torch.device) -> bool:
    """Autocast only where the track allows it and on CUDA (CPU autocast is slower and changes numbers)."""
    return bool(allowed) and torch.device(device).type == "cuda"


def set_float32_precision(mixed: bool) -> None:
    """Float32 convolutions and matrix products in full precision unless the track allows reduced precision.

    On Ampere and later cards cuDNN computes float32 convolutions in TF32 (10 mantissa bits) by
    default: about 1e-3 relative error, which moves a model's logits away from the CPU's, flips
    borderline predictions and changes attacks' trajectories, as autocast would, but silently. A
    track that allows mixed precision accepts that; every other one gets IEEE float32, as on the
    CPU. Called in the model process before the model is loaded; harmless on a CPU-only build.
    """
    choice = "tf32" if mixed else "ieee"
    torch.backends.cuda.matmul.fp32_precision = choice
    torch.backends.cudnn.conv.fp32_precision = choice
    torch.backends.cudnn.rnn.fp32_precision = choice


def autocast_dtype() -> torch.dtype:
    """bfloat16 where the card has it (float32's range: no overflow to inf in logits), else float16."""
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def precision(enabled: bool, device: str | torch.device) -> Iterator[None]:
    """Autocast when ``enabled`` (see :func:`use_mixed_precision`); otherwise explicitly full precision."""
    device_type = torch.device(device).type
    if enabled:
        with torch.autocast(device_type=device_type, dtype=autocast_dtype()):
            yield
    else:
        with torch.autocast(device_type=device_type, enabled=False):
            yield
