"""Attack budgets are in pixel units whatever input range a track's models take.

A threat model such as Linf 0.1 means a tenth of the pixel range, and valid images are those
whose pixels lie in [0, 1]. A track may feed its models another range (say [-1, 1]); then the
same model, rewritten to take that range, must meet exactly the same attacks. The reference is
the job run on the original model in [0, 1]: both jobs must agree on every metric.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from evaluator.data.evalsets import write_evaluation_set
from evaluator.models.convert import convert_checkpoint
from evaluator.models.zoo import build_model
from evaluator.scoring import run_job
from evaluator.spec import (
    ArtifactSpec,
    DetectorAttackSpec,
    EvaluationSetSpec,
    InputSpec,
    JobSpec,
    ThreatModel,
)
from tests.evaluator.test_scoring_classifier import _mnist
from tests.evaluator.test_scoring_detector import _fakes

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
LOW, HIGH = -1.0, 1.0


class TakesMinusOneToOne(nn.Module):
    """``model`` rewritten for inputs in [-1, 1]: maps them back to [0, 1] first."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - LOW) / (HIGH - LOW))


def _export(model: nn.Module, shape: tuple[int, ...], path: Path) -> str:
    model.eval()
    program = torch.export.export(model, (torch.rand(2, *shape) * 2 - 1,),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(path))
    return str(path)


def _zoo_model(architecture: str, weights: Path) -> nn.Module:
    model = build_model(architecture)
    model.load_state_dict(load_file(weights))
    return model.eval()


def _by_name(result) -> dict[tuple[str, str], float]:
    assert result.ok, result.error
    return {(m.evaluation_set, m.metric): m.value for m in result.metrics}


def _assert_same_metrics(reference: dict, other: dict, points: int) -> None:
    assert reference.keys() == other.keys()
    for key, value in reference.items():
        # The two models differ by float rounding of the range map only: one attacked point at most.
        assert other[key] == pytest.approx(value, abs=1.0 / points + 1e-6), key


@pytest.mark.slow
def test_classifier_attacks_mean_the_same_in_another_input_range(tmp_path):
    weights = convert_checkpoint("mnist_lenet5", SHARED / "models/mnist/mnist_lenet5_clntrained.pt",
                                 tmp_path / "lenet.safetensors")
    images, labels = _mnist(120)
    digest = write_evaluation_set(tmp_path / "clean.safetensors", images, labels)
    points = 30
    in_unit = JobSpec(
        "range-unit", "classifier", InputSpec(1, 28, 28),
        ArtifactSpec(str(weights), "safetensors", architecture="mnist_lenet5"),
        (EvaluationSetSpec("mnist", str(tmp_path / "clean.safetensors"), digest, "clean"),),
        threat_models=(ThreatModel("Linf", 0.1, "Linf-0.1"),),
        # attacks-4: every kind of stage attacks-2 has, at a fifth of its cost (this test took 179 s of CI).
        attack_points=points, reliability_points=0, seed=4, attack_suite="attacks-4",
    )
    shifted_model = _export(TakesMinusOneToOne(_zoo_model("mnist_lenet5", weights)), (1, 28, 28),
                            tmp_path / "lenet-pm1.pt2")
    in_pm1 = dataclasses.replace(in_unit, job_id="range-pm1", input=InputSpec(1, 28, 28, value_range=(LOW, HIGH)),
                                 artifact=ArtifactSpec(shifted_model, "pt2"))
    # One job secret for both runs, so that the universal attacks learn with the same randomness.
    reference, other = _by_name(run_job(in_unit, secret_seed=7)), _by_name(run_job(in_pm1, secret_seed=7))
    # The attacks bite (so that agreement means something) ...
    assert reference[("mnist", "robust_accuracy@Linf-0.1")] < reference[("mnist", "attacked_clean_accuracy")] - 0.1
    # ... and the [-1, 1] model meets the same ones.
    _assert_same_metrics(reference, other, points)


@pytest.mark.slow
def test_detector_attacks_mean_the_same_in_another_input_range(tmp_path, mnist_test):
    from evaluator.data.integrity import sha256_file
    from evaluator.spec import GeneratorSpec

    shared_gan = SHARED / "models/mnist_gan"
    detector = convert_checkpoint("mnist_gan_discriminator", shared_gan / "D--300.ckpt", tmp_path / "d.safetensors")
    generator_path = convert_checkpoint("mnist_gan_generator", shared_gan / "G--300.ckpt", tmp_path / "g.safetensors")
    generator = _zoo_model("mnist_gan_generator", generator_path)
    n = 100
    clean = np.concatenate([mnist_test[0][:n], _fakes(generator, n, 3)])
    labels = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
    write_evaluation_set(tmp_path / "clean.safetensors", clean, labels)
    points = 24
    in_unit = JobSpec(
        "detector-unit", "detector", InputSpec(1, 28, 28),
        ArtifactSpec(str(detector), "safetensors", architecture="mnist_gan_discriminator"),
        (EvaluationSetSpec("gan", str(tmp_path / "clean.safetensors"), role="clean"),),
        num_classes=2, seed=2,
        generator=GeneratorSpec("mnist_gan_generator", str(generator_path), sha256_file(generator_path), 64),
        detector_attacks=DetectorAttackSpec(points=points, pgd_budgets=(4 / 255,), pgd_steps=8, min_norms=("L2",),
                                            universal_train_images=64, universal_steps=10),
    )
    shifted_model = _export(TakesMinusOneToOne(_zoo_model("mnist_gan_discriminator", detector)), (1, 28, 28),
                            tmp_path / "d-pm1.pt2")
    in_pm1 = dataclasses.replace(in_unit, job_id="detector-pm1",
                                 input=InputSpec(1, 28, 28, value_range=(LOW, HIGH)),
                                 artifact=ArtifactSpec(shifted_model, "pt2"))
    # One job secret for both runs, so that the universal attacks learn with the same randomness.
    reference, other = _by_name(run_job(in_unit, secret_seed=7)), _by_name(run_job(in_pm1, secret_seed=7))
    assert reference[("gan", "auc@Linf-4/255")] < reference[("gan", "auc@clean-subset")] - 0.05
    # AUCs move by at most one attacked fake's rank among the reals; distortions agree to rounding.
    for key, value in reference.items():
        tolerance = 0.02 if key[1].startswith("median_distortion") else 1.0 / points + 1e-6
        assert other[key] == pytest.approx(value, abs=tolerance), key
