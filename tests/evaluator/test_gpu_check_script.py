"""measurements/gpu_check.py works end to end before a GPU ever runs it: its quick mode on the CPU.

The script exists to be run on a CUDA machine (issue 19); none has been available, so this test
keeps it working in the meantime: the quick sizes through the real sandboxed runner, with the
device run on the CPU too, and the JSON fields that docs/evaluation.md describes. Asking for CUDA
on a machine without it must stop at once with exit status 2 and say how to run it instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluator.sandbox import bubblewrap_path
from tests.conftest import SHARED_DATA, SHARED_MODELS

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "measurements" / "gpu_check.py"
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "cifar10_jpeg").is_dir()
                                  or not (SHARED_MODELS / "cifar10").is_dir(),
                                  reason="the shared CIFAR-10 data and weights are not available")


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_exits_2_with_the_reason():
    run = _run("--device", "cuda", "--quick", timeout=120)
    assert run.returncode == 2, run.stderr
    assert "CUDA is not available" in run.stderr and "--device cpu" in run.stderr
    assert "sets:" not in run.stdout  # it stopped before preparing any data


@pytest.mark.slow
@needs_shared
@pytest.mark.skipif(bubblewrap_path() is None, reason="bubblewrap is not installed")
def test_the_quick_run_on_the_cpu_passes_end_to_end(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = _run("--device", "cpu", "--quick", "--threads", "2", "--data-mirror", str(SHARED_DATA),
               "--model-mirror", str(SHARED_MODELS), "--json", str(out))
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "PASS: every metric within tolerance" in run.stdout
    assert "images/s" in run.stdout and "passes/s" in run.stdout and "peak GPU memory" in run.stdout
    record = json.loads(out.read_text())
    assert record["pass"] is True and record["exit_status"] == 0 and record["failed"] == {}
    assert record["sizes"] == {**record["sizes"], "clean_images": 200, "corruption_images": 300, "per_cell": 4,
                               "attack_points": 20, "compare_images": 100, "compare_points": 10}
    assert record["track"]["attack_suite"] == "attacks-2"
    assert [t["label"] for t in record["track"]["threat_models"]] == ["Linf-8/255", "L2-0.5"]
    full = record["full"]
    # Through the sandboxed runner, as a worker runs a job: the model alone in bubblewrap.
    assert full["sandbox"] == "bubblewrap" and full["model_process"] == "bubblewrap" and full["device"] == "cpu"
    assert full["images"] == 500 and full["images_per_second"] > 0 and full["sets_seconds"] > 0
    assert full["attack_forward_passes"] > 0 and full["attack_passes_per_second"] > 0
    assert full["peak_gpu_allocated_bytes"] is None and full["peak_host_memory_bytes"] > 0
    rows = record["comparison"]
    metrics = {(r["set"], r["metric"]) for r in rows}
    assert ("cifar10-jpeg-test", "accuracy") in metrics and ("cifar10-c", "accuracy@fog:5") in metrics
    assert {("cifar10-jpeg-test", "robust_accuracy@Linf-8/255"), ("cifar10-jpeg-test", "robust_accuracy@L2-0.5")} \
        <= metrics
    assert sum(1 for m in metrics if m[1].startswith("accuracy@")) == 75  # every corruption x severity cell
    # Two CPU runs of the same subset: the same numbers whatever the job's secret batch order.
    assert record["max_abs_diff"] == 0.0 and all(r["ok"] for r in rows)
    assert set(record["largest_differences"]) == {"clean set", "corruption set", "robust accuracy"}
