"""Device selection, batch size fitted to GPU memory, and mixed precision (evaluator/devices.py).

This machine has no GPU: ``auto`` must resolve to the CPU here, and the CUDA paths are exercised
with torch.cuda's memory functions replaced by fakes that follow a known memory model.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from evaluator import devices
from evaluator.errors import EvaluationError
from evaluator.scoring import run_job
from evaluator.spec import ArtifactSpec, InputSpec, JobSpec
from tests.evaluator.test_scoring_classifier import lenet_job  # noqa: F401 - a fixture

MB = 1024**2
SPEC = InputSpec(1, 28, 28)


def test_auto_resolves_to_the_cpu_here_and_to_cuda_when_a_gpu_is_visible(monkeypatch):
    assert not torch.cuda.is_available()  # the premise of the test suite on this machine
    assert devices.resolve_device("auto") == "cpu"
    assert devices.resolve_device("AUTO ") == "cpu" and devices.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert devices.resolve_device("auto") == "cuda"
    assert devices.resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(EvaluationError) as missing:
        devices.resolve_device("cuda:1")
    assert missing.value.code == "internal"


def test_an_unusable_device_is_the_platforms_fault():
    for name in ("cuda", "cuda:0", "no-such-device"):
        with pytest.raises(EvaluationError) as error:
            devices.resolve_device(name)
        assert error.value.code == "internal" and error.value.platform_fault


def test_the_cpu_keeps_the_tracks_batch_size():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    for requested in (1, 100, 256, 4096):
        choice = devices.choose_batch_size(model, SPEC, "cpu", requested)
        assert (choice.batch_size, choice.reason) == (requested, "cpu")


def _fake_gpu(monkeypatch, free: int, fixed: int, per_image: int) -> list[int]:
    """A GPU with ``free`` bytes on which a pass of n images peaks at ``fixed + per_image * n``."""
    trials: list[int] = []

    def trial(model, input_spec, device, count, backward=True):
        assert torch.device(device).type == "cuda" and backward
        trials.append(count)
        return fixed + per_image * count

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * 1024 * MB))
    monkeypatch.setattr(devices, "trial_memory", trial)
    return trials


@pytest.mark.parametrize(("free_mb", "requested", "expected", "reason"), [
    (100_000, 256, 256, "fits"),      # plenty of memory: the track's own size
    (1000, 256, 32, "memory"),        # 0.7 * 1000 = 700 MB: (700 - 100) / 10 = 60 images -> 32
    (1000, 100, 32, "memory"),        # the requested size is an upper bound, not a power of two
    (1000, 40, 40, "fits"),           # 40 fit: kept as it is
    (5000, 256, 256, "fits"),         # (3500 - 100) / 10 = 340 >= 256
    (3000, 256, 128, "memory"),       # (2100 - 100) / 10 = 200 -> 128
    (150, 256, 1, "memory"),          # not even one image by the estimate: one at a time
])
def test_a_gpu_gets_the_largest_power_of_two_that_fits(monkeypatch, free_mb, requested, expected, reason):
    trials = _fake_gpu(monkeypatch, free_mb * MB, fixed=100 * MB, per_image=10 * MB)
    choice = devices.choose_batch_size(nn.Linear(1, 1), SPEC, "cuda", requested)
    assert (choice.batch_size, choice.reason) == (expected, reason)
    assert trials == list(devices.TRIAL_SIZES)
    assert choice.bytes_per_image == pytest.approx(10 * MB) and choice.fixed_bytes == pytest.approx(100 * MB)
    assert choice.free_bytes == free_mb * MB and choice.requested == requested


def test_a_flat_memory_curve_is_counted_per_image(monkeypatch):
    """The allocator's rounding can hide the per-image growth: the estimate must then err on the safe side."""
    _fake_gpu(monkeypatch, 1000 * MB, fixed=80 * MB, per_image=0)
    choice = devices.choose_batch_size(nn.Linear(1, 1), SPEC, "cuda", 256)
    assert choice.bytes_per_image == pytest.approx(80 * MB / devices.TRIAL_SIZES[1])
    assert choice.batch_size == 64  # 700 MB / 10 MB = 70 -> 64


def test_a_failing_trial_falls_back(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000 * MB, 80 * 1024 * MB))

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(devices, "trial_memory", out_of_memory)
    assert devices.choose_batch_size(nn.Linear(1, 1), SPEC, "cuda", 256).batch_size == 1

    def broken(*args, **kwargs):
        raise RuntimeError("the model's own bug")

    monkeypatch.setattr(devices, "trial_memory", broken)
    choice = devices.choose_batch_size(nn.Linear(1, 1), SPEC, "cuda", 256)
    assert (choice.batch_size, choice.reason) == (256, "trial_failed")


class _Recorder(nn.Module):
    """Records what the trial pass did: batch size, whether gradients flowed back to the input."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)
        self.linear.requires_grad_(False)  # as submitted models are loaded
        self.seen: list[tuple[int, bool]] = []
        self.backward_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.shape[0], x.requires_grad))
        out = self.linear(x.flatten(1))
        if out.requires_grad:
            out.register_hook(lambda grad: setattr(self, "backward_calls", self.backward_calls + 1))
        return out


def test_the_trial_pass_measures_a_forward_and_backward_pass(monkeypatch):
    model = _Recorder()
    allocated = {"now": 5 * MB, "peak": 5 * MB}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated["now"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated",
                        lambda device=None: allocated["peak"] + 3 * MB * model.seen[-1][0])
    # The model lives on the CPU here; the trial runs where it is told (the CPU, with CUDA's counters faked).
    assert devices.trial_memory(model, SPEC, torch.device("cpu"), 8) == 24 * MB
    assert model.seen[-1] == (8, True) and model.backward_calls == 1
    assert devices.trial_memory(model, SPEC, torch.device("cpu"), 2, backward=False) == 6 * MB
    assert model.seen[-1] == (2, False) and model.backward_calls == 1
    assert all(p.grad is None for p in model.parameters())


def test_mixed_precision_only_where_allowed_and_on_cuda():
    assert not devices.use_mixed_precision(False, "cuda")
    assert not devices.use_mixed_precision(True, "cpu")
    assert devices.use_mixed_precision(True, "cuda:0")
    with torch.autocast("cpu", dtype=torch.bfloat16), devices.precision(False, "cpu"):
        assert not torch.is_autocast_enabled("cpu")  # explicitly off, even inside someone else's autocast
    with devices.precision(True, "cpu"):
        assert torch.is_autocast_enabled("cpu")
    spec = JobSpec("j", "classifier", SPEC, ArtifactSpec("m.pt2", "pt2"), ())
    assert '"allow_mixed_precision": false' in spec.to_json()
    older = spec.to_json().replace('"allow_mixed_precision": false, ', "")  # a spec written before the field
    assert "allow_mixed_precision" not in older and JobSpec.from_json(older) == spec
    assert JobSpec.from_json(replace(spec, allow_mixed_precision=True).to_json()).allow_mixed_precision


def test_scores_do_not_depend_on_the_batch_size(lenet_job):  # noqa: F811 - the fixture
    """Clean accuracy, per-class accuracy and the attack cascade are the same at any batch size."""
    # One threat model on a dozen points and no reliability checks: the cascade's batching is what matters.
    job = replace(lenet_job, device="auto", threat_models=lenet_job.threat_models[:1], attack_points=12,
                  reliability_points=0)
    results = [run_job(replace(job, batch_size=size)) for size in (256, 7)]
    for result in results:
        assert result.ok, result.error
        assert result.provenance["device_requested"] == "auto" and result.provenance["device"] == "cpu"
        assert result.provenance["mixed_precision"] == {"allowed": False, "clean": False, "attacks": False,
                                                        "dtype": "float32"}
    assert [r.provenance["batch_size"]["batch_size"] for r in results] == [256, 7]
    big, small = ({m.metric: (m.value, m.ci_low, m.ci_high, m.num_examples) for m in r.metrics} for r in results)
    assert big == small and any(k.startswith("robust_accuracy@") for k in big)
    assert results[0].per_class == results[1].per_class
