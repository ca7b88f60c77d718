"""What a GPU job records about itself, and the float32 precision its model process computes in.

This machine has no GPU, so the CUDA side is exercised with torch.cuda's counters faked: the
model process's ``memory`` request, the scorer's filtering of its answer, and ``run_job`` writing
it to the provenance of a job whose model runs on ``cuda``. ``measurements/gpu_check.py`` reads
``gpu_memory`` and ``sets_seconds`` from there; the scorer cannot read the model process's CUDA
allocator itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from evaluator import devices
from evaluator.errors import EvaluationError
from evaluator.remote import client
from evaluator.remote.server import ModelServer
from evaluator.scoring import job as job_module
from evaluator.scoring import run_job
from evaluator.spec import ArtifactSpec, EvaluationSetSpec, InputSpec, JobSpec

MB = 1024**2


def test_the_model_process_reports_its_peak_gpu_memory_on_cuda_only(monkeypatch):
    server = ModelServer()
    server.device = torch.device("cpu")
    assert server.handle({"op": "memory"}, bytearray()) == ({"ok": True}, b"")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 300 * MB)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 512 * MB)
    server.device = torch.device("cuda:0")
    answer, payload = server.handle({"op": "memory"}, bytearray())
    assert answer == {"ok": True, "peak_allocated_bytes": 300 * MB, "peak_reserved_bytes": 512 * MB}
    assert payload == b""


@pytest.mark.parametrize(("answer", "expected"), [
    ({"ok": True, "peak_allocated_bytes": 7, "peak_reserved_bytes": 9},
     {"peak_allocated_bytes": 7, "peak_reserved_bytes": 9}),
    ({"ok": True}, {}),  # a CPU model process
    ({"ok": False, "code": "model_error"}, {}),
    # Whatever is not a non-negative integer is dropped: the model process runs the submission.
    ({"ok": True, "peak_allocated_bytes": -1, "peak_reserved_bytes": "9", "other": 3}, {}),
    ({"ok": True, "peak_allocated_bytes": True, "peak_reserved_bytes": 1.5}, {}),
])
def test_the_scorer_keeps_only_non_negative_integers(answer, expected):
    remote = client.RemoteModel.__new__(client.RemoteModel)
    nn.Module.__init__(remote)
    sent: list[dict[str, Any]] = []

    def round_trip(header: dict[str, Any], payload: bytes, images: int, backward: bool,
                   max_payload: int) -> tuple[dict[str, Any], bytearray]:
        sent.append(header)
        assert max_payload == 0
        return answer, bytearray()

    remote._round_trip = round_trip  # type: ignore[method-assign]
    assert remote.gpu_memory() == expected
    assert sent == [{"op": "memory"}]


def test_a_model_process_gone_after_scoring_leaves_the_field_empty():
    remote = client.RemoteModel.__new__(client.RemoteModel)
    nn.Module.__init__(remote)

    def lost(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], bytearray]:
        raise EvaluationError("model_error", "The model process ended.")

    remote._round_trip = lost  # type: ignore[method-assign]
    assert remote.gpu_memory() == {}


class _InProcessModel(nn.Module):
    """Stands in for the RemoteModel of a model process on a GPU: the model in this process, fixed answers."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.strict = self.hidden = False
        self.tolerance, self.batch_size, self.calls, self.spot_checks = 1e-4, 256, 0, 0
        self.memory_asked = 0
        # The RemoteModel's time accounting: no job deadline, no time spent waiting on another process.
        self.deadline, self.model_seconds = None, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x.flatten(1))

    def plan(self, requested: int, backward: bool, value_range: tuple[float, float]) -> dict[str, Any]:
        return {"batch_size": requested, "requested": requested, "reason": "fits"}

    def gpu_memory(self) -> dict[str, int]:
        self.memory_asked += 1
        return {"peak_allocated_bytes": 41 * MB, "peak_reserved_bytes": 64 * MB}


def _small_job(tmp_path, device: str) -> JobSpec:
    from evaluator.data.evalsets import write_evaluation_set

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=generator).numpy()
    labels = torch.randint(0, 3, (40,), generator=generator).numpy()
    digest = write_evaluation_set(tmp_path / "set.safetensors", images, labels)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    return JobSpec("gpu-provenance", "classifier", InputSpec(1, 8, 8),
                   ArtifactSpec(str(weights), "safetensors", architecture="none"),
                   (EvaluationSetSpec("noise", str(tmp_path / "set.safetensors"), digest),), num_classes=3,
                   device=device)


def test_a_cuda_job_records_the_model_process_peak_gpu_memory(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = _InProcessModel(nn.Linear(64, 3))

    @contextmanager
    def hosted(*args: Any, **kwargs: Any) -> Iterator[client.HostedModel]:
        assert kwargs["device"] == "cuda"
        yield client.HostedModel(model, "cuda", {"gpu": "a fake card"}, "process")  # type: ignore[arg-type]

    monkeypatch.setattr(job_module, "host_model", hosted)
    result = run_job(_small_job(tmp_path, "cuda"))
    assert result.ok, result.error
    prov = result.provenance
    assert prov["device"] == "cuda" and prov["gpu"] == "a fake card"
    assert prov["gpu_memory"] == {"peak_allocated_bytes": 41 * MB, "peak_reserved_bytes": 64 * MB}
    assert model.memory_asked == 1  # once, after everything ran
    assert 0 <= prov["sets_seconds"] <= prov["seconds"]


def test_a_cpu_job_records_the_sets_time_and_no_gpu_memory(tmp_path, mnist_test, lenet5_safetensors):
    from evaluator.data.evalsets import write_evaluation_set

    images, labels = mnist_test
    digest = write_evaluation_set(tmp_path / "mnist.safetensors", images[:200], labels[:200])
    spec = JobSpec("cpu-provenance", "classifier", InputSpec(1, 28, 28),
                   ArtifactSpec(str(lenet5_safetensors), "safetensors", architecture="mnist_lenet5"),
                   (EvaluationSetSpec("mnist", str(tmp_path / "mnist.safetensors"), digest),))
    result = run_job(spec, host=client.HostOptions("process"))
    assert result.ok, result.error
    assert "gpu_memory" not in result.provenance
    assert 0 < result.provenance["sets_seconds"] < result.provenance["seconds"]


@pytest.fixture
def restored_precision() -> Iterator[None]:
    """The float32 precision flags are process-wide: put them back as they were."""
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)
    saved = [flag.fp32_precision for flag in flags]
    yield
    for flag, value in zip(flags, saved, strict=True):
        flag.fp32_precision = value


def test_tf32_is_off_unless_the_track_allows_reduced_precision(restored_precision):
    # cuDNN's own default is TF32 for float32 convolutions (about 1e-3 relative error on Ampere and later).
    devices.set_float32_precision(False)
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cudnn.rnn.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    devices.set_float32_precision(True)
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"


def test_the_model_process_sets_the_precision_when_it_resolves_its_device(restored_precision, monkeypatch):
    seen: list[bool] = []
    monkeypatch.setattr("evaluator.remote.server.set_float32_precision", seen.append)
    server = ModelServer()
    hello = {"op": "hello", "device": "cpu", "mixed_precision": True, "threads": torch.get_num_threads()}
    answer, _ = server.handle(hello, bytearray())
    assert answer["ok"] and answer["device"] == "cpu"
    assert seen == [False]  # mixed precision is CUDA-only, so the CPU never gets TF32
