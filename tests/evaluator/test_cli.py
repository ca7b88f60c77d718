"""The evaluator's command line: what operators and researchers run by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env_path = f"{ROOT}"
    return subprocess.run([sys.executable, "-m", "evaluator", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})


def test_architectures_lists_the_zoo():
    out = _run("architectures")
    assert out.returncode == 0
    for name in ("cifar_resnet20", "cifar_resnet56", "mnist_lenet5", "lenet5_classic", "resnet18"):
        assert name in out.stdout


def test_fetch_from_a_mirror_with_hash_checks(tmp_path):
    out = _run("fetch", "mnist-test", "usps", "--dest", str(tmp_path), "--mirror", str(SHARED / "data"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").exists() and (tmp_path / "usps" / "usps.h5").exists()


def test_convert_then_check_a_shared_checkpoint(tmp_path):
    dest = tmp_path / "lenet.safetensors"
    out = _run("convert", "mnist_lenet5", str(SHARED / "models/mnist/mnist_lenet5_clntrained.pt"), str(dest))
    assert out.returncode == 0, out.stderr
    ok = _run("check", str(dest), "--architecture", "mnist_lenet5")
    assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stderr
    wrong = _run("check", str(dest), "--architecture", "mnist_lenet5", "--channels", "3", "--height", "32",
                 "--width", "32")
    assert wrong.returncode == 2 and "FAILED" in wrong.stderr


def test_export_a_module_from_the_users_own_code(tmp_path):
    (tmp_path / "mymodel.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))\n"
        "def broken():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3))\n"
    )
    out = _run("export", "mymodel:build", str(tmp_path / "m.pt2"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert _run("check", str(tmp_path / "m.pt2")).returncode == 0
    bad = _run("export", "mymodel:broken", str(tmp_path / "b.pt2"), cwd=tmp_path)
    assert bad.returncode == 2 and "wrong_output_shape" in bad.stderr


def test_run_prints_progress_and_one_result_line(tmp_path):
    import numpy as np

    from evaluator.data.evalsets import write_evaluation_set
    from evaluator.spec import ArtifactSpec, EvaluationSetSpec, InputSpec, JobSpec

    weights = tmp_path / "lenet.safetensors"
    _run("convert", "mnist_lenet5", str(SHARED / "models/mnist/mnist_lenet5_clntrained.pt"), str(weights))
    rng = np.random.default_rng(0)
    digest = write_evaluation_set(tmp_path / "set.safetensors", rng.integers(0, 255, (64, 1, 28, 28), dtype=np.uint8),
                                  rng.integers(0, 10, 64))
    spec = JobSpec("job-1", "classifier", InputSpec(1, 28, 28),
                   ArtifactSpec(str(weights), "safetensors", architecture="mnist_lenet5"),
                   (EvaluationSetSpec("noise", str(tmp_path / "set.safetensors"), digest),), batch_size=16)
    (tmp_path / "spec.json").write_text(spec.to_json())
    out = _run("run", str(tmp_path / "spec.json"))
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["event"] for e in events].count("result") == 1 and events[-1]["event"] == "result"
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 4
    result = events[-1]["result"]
    assert result["ok"] and result["metrics"][0]["num_examples"] == 64
    assert "noise" in result["per_class"] and "predictions" not in json.dumps(result)


def test_check_refuses_a_forged_archive_before_torch_reads_it(tmp_path):
    """The legacy-layout attack: `check` screens first, so the sympify payload never runs here either."""
    from evaluator.models.zoo import build_model
    from tests.evaluator.pt2_archives import export_to, forge_legacy_archive

    marker = tmp_path / "pwned"
    benign = export_to(tmp_path / "lenet.pt2", build_model("mnist_lenet5").eval())
    forged = forge_legacy_archive(benign, tmp_path / "forged.pt2", marker)
    assert _run("check", str(benign)).returncode == 0
    out = _run("check", str(forged))
    assert out.returncode == 2 and "FAILED (unsafe_format)" in out.stderr and "legacy" in out.stderr
    assert not marker.exists()
