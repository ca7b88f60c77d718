"""The attack suite inside a job: robust accuracy per threat model, stages, passes and flags."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from evaluator.data.evalsets import write_evaluation_set
from evaluator.models.convert import convert_checkpoint
from evaluator.scoring import run_job
from evaluator.scoring.classifier import attack_subset
from evaluator.spec import ArtifactSpec, EvaluationSetSpec, InputSpec, JobSpec, ThreatModel

SHARED = Path(__file__).resolve().parents[2].parent / "shared"


def _mnist(n: int) -> tuple[np.ndarray, np.ndarray]:
    raw = gzip.decompress((SHARED / "data/mnist/t10k-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    labels = np.frombuffer(gzip.decompress((SHARED / "data/mnist/t10k-labels-idx1-ubyte.gz").read_bytes()),
                           np.uint8, offset=8)[:n].astype(np.int64)
    return images, labels


@pytest.fixture(scope="module")
def lenet_job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attack-job")
    weights = convert_checkpoint("mnist_lenet5", SHARED / "models/mnist/mnist_lenet5_clntrained.pt",
                                 folder / "lenet.safetensors")
    images, labels = _mnist(300)
    digest = write_evaluation_set(folder / "clean.safetensors", images, labels)
    return JobSpec(
        "attack-job", "classifier", InputSpec(1, 28, 28),
        ArtifactSpec(str(weights), "safetensors", architecture="mnist_lenet5"),
        (EvaluationSetSpec("mnist", str(folder / "clean.safetensors"), digest, "clean"),),
        threat_models=(ThreatModel("Linf", 0.3, "Linf-0.3"), ThreatModel("Linf", 0.02, "Linf-0.02")),
        attack_points=16, reliability_points=8, seed=3,
    )


@pytest.mark.slow
def test_attacks_in_a_job(lenet_job):
    events: list[tuple[float, str]] = []
    result = run_job(lenet_job, lambda f, s: events.append((f, s)))
    assert result.ok, result.error
    metrics = {m.metric: m for m in result.metrics}
    strong, weak = metrics["robust_accuracy@Linf-0.3"], metrics["robust_accuracy@Linf-0.02"]
    assert strong.num_examples == 16 and strong.ci_low <= strong.value <= strong.ci_high
    assert strong.value <= 0.1  # a clean-trained LeNet-5 falls to near zero at eps 0.3
    assert weak.value > strong.value  # a tiny ball leaves most points robust
    stages = [m for m in metrics if m.startswith("robust_accuracy@Linf-0.3>")]
    assert stages and metrics[stages[0]].value >= strong.value
    attacks = result.provenance["attacks"]["Linf-0.3"]
    assert attacks["forward_passes"] > 0 and attacks["backward_passes"] > 0
    assert {f["check"] for f in attacks["flags"]} >= {"gradients", "random_noise"}
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and any("attacks" in s for _, s in events)


def test_attack_subset_is_seeded_and_sorted():
    a, b = attack_subset(1000, 50, seed=1), attack_subset(1000, 50, seed=1)
    assert a.tolist() == b.tolist() == sorted(a.tolist()) and len(set(a.tolist())) == 50
    assert attack_subset(1000, 50, seed=2).tolist() != a.tolist()
    assert attack_subset(30, 50, seed=1).tolist() == list(range(30))
