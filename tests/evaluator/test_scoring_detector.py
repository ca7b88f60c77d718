"""A detector job end to end in the evaluator: clean thresholds on shifted sets, grouped sets,
the attack suite with the track's generator, and the generator's integrity check."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from evaluator.data.evalsets import write_evaluation_set
from evaluator.data.integrity import sha256_file
from evaluator.models.convert import convert_checkpoint
from evaluator.models.zoo import build_model
from evaluator.scoring import run_job
from evaluator.spec import (
    ArtifactSpec,
    DetectorAttackSpec,
    EvaluationSetSpec,
    GeneratorSpec,
    InputSpec,
    JobSpec,
)
from tests.conftest import SHARED_MODELS

N = 120  # reals and fakes per set: small, the suite runs on one thread


def _fakes(generator: torch.nn.Module, n: int, seed: int) -> np.ndarray:
    z = torch.randn(n, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return (generator(z).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def detector_job(tmp_path_factory, mnist_test) -> tuple[JobSpec, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("detector-job")
    detector = convert_checkpoint("mnist_gan_discriminator", SHARED_MODELS / "mnist_gan/D--300.ckpt",
                                  folder / "d.safetensors")
    gen_path = convert_checkpoint("mnist_gan_generator", SHARED_MODELS / "mnist_gan/G--300.ckpt",
                                  folder / "g.safetensors")
    generator = build_model("mnist_gan_generator")
    generator.load_state_dict(load_file(gen_path))
    generator.eval()
    reals = mnist_test[0][:N]
    labels = np.concatenate([np.zeros(N, np.int64), np.ones(N, np.int64)])
    clean = np.concatenate([reals, _fakes(generator, N, 11)])
    write_evaluation_set(folder / "clean.safetensors", clean, labels)
    # A grouped shift: the same images, darkened by two amounts (both reals and fakes).
    darker = [(clean.astype(np.int64) * factor // 4).astype(np.uint8) for factor in (3, 2)]
    groups = np.repeat([0, 1], 2 * N)
    write_evaluation_set(folder / "dark.safetensors", np.concatenate(darker), np.concatenate([labels, labels]),
                         groups=groups, group_names=["dark-3/4", "dark-1/2"])
    spec = JobSpec(
        "detector-job", "detector", InputSpec(1, 28, 28),
        ArtifactSpec(str(detector), "safetensors", architecture="mnist_gan_discriminator"),
        (EvaluationSetSpec("gan", str(folder / "clean.safetensors"), role="clean"),
         EvaluationSetSpec("dark", str(folder / "dark.safetensors"), role="shift")),
        num_classes=2, seed=5,
        generator=GeneratorSpec("mnist_gan_generator", str(gen_path), sha256_file(gen_path), 64),
        detector_attacks=DetectorAttackSpec(points=24, pgd_budgets=(1 / 255, 8 / 255), pgd_steps=8,
                                            universal_train_images=96, universal_steps=20),
    )
    return spec, build_model("mnist_gan_discriminator")


def _scores(model_path: str, images: np.ndarray) -> np.ndarray:
    model = build_model("mnist_gan_discriminator")
    model.load_state_dict(load_file(model_path))
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(images).float() / 255).numpy()


def test_detector_job_metrics(detector_job, mnist_test):
    spec, _ = detector_job
    result = run_job(dataclasses.replace(spec, detector_attacks=None))
    assert result.ok, result.error
    got = {(m.evaluation_set, m.metric): m for m in result.metrics}
    # Independent reference: scores computed here, AUC by sklearn, threshold by counting reals.
    data = {name: load_file(path) for name, path in (("gan", spec.evaluation_sets[0].path),
                                                     ("dark", spec.evaluation_sets[1].path))}
    clean_scores = _scores(spec.artifact.path, data["gan"]["images"].numpy())
    labels = data["gan"]["labels"].numpy()
    assert got[("gan", "auc")].value == pytest.approx(roc_auc_score(labels, clean_scores))
    reals = np.sort(clean_scores[labels == 0])[::-1]
    threshold = np.nextafter(reals[int(0.05 * reals.size)], np.inf)  # at most 5 % of reals at or above it
    dark_scores = _scores(spec.artifact.path, data["dark"]["images"].numpy())
    dark_labels, groups = data["dark"]["labels"].numpy(), data["dark"]["groups"].numpy()
    assert got[("dark", "tpr@5%fpr")].value == pytest.approx(np.mean(dark_scores[dark_labels == 1] >= threshold))
    assert got[("dark", "fpr@5%fpr")].value == pytest.approx(np.mean(dark_scores[dark_labels == 0] >= threshold))
    assert got[("dark", "tpr@5%fpr")].ci_method == "clopper-pearson-95"
    for index, name in enumerate(["dark-3/4", "dark-1/2"]):
        mask = groups == index
        assert got[("dark", f"auc@{name}")].value == pytest.approx(roc_auc_score(dark_labels[mask], dark_scores[mask]))
        assert got[("dark", f"auc@{name}")].num_examples == 2 * N
    assert ("gan", "fpr@5%fpr") not in got  # the clean set sets the thresholds: no fixed-threshold FPR there


def _gradient_passes(record) -> int:
    """Every ``gradient_passes`` count in a provenance record, summed."""
    if isinstance(record, dict):
        return sum(v if k == "gradient_passes" and isinstance(v, int) else _gradient_passes(v)
                   for k, v in record.items())
    if isinstance(record, list):
        return sum(_gradient_passes(v) for v in record)
    return 0


@pytest.mark.slow
def test_detector_job_runs_the_attack_suite(detector_job):
    spec, _ = detector_job
    events: list[tuple[float, str]] = []
    result = run_job(spec, lambda f, s: events.append((f, s)))
    assert result.ok, result.error
    got = {m.metric: m.value for m in result.metrics if m.evaluation_set == "gan"}
    for name in ("auc@clean-subset", "auc@Linf-1/255", "auc@Linf-8/255", "auc@patch-1%", "auc@latent",
                 "auc@latent-reference", "median_distortion@min-L2"):
        assert name in got, name
    # The discriminator (AUC about 0.75 here) loses a large part of its AUC at 8/255.
    assert got["auc@Linf-8/255"] < got["auc@clean-subset"] - 0.2
    assert got["auc@Linf-1/255"] <= got["auc@clean-subset"]
    assert "detector_attacks" in result.provenance
    # The work bound of the detector suite (evaluator.scoring.budget) covers what the suite really spent.
    budget = result.provenance["time_budget"]
    assert budget["seconds"] > result.provenance["seconds"]
    assert 0 < _gradient_passes(result.provenance["detector_attacks"]) <= budget["work"]["gradient_passes"]
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions)


def test_generator_integrity_is_a_platform_fault(detector_job, tmp_path):
    spec, _ = detector_job
    bad = dataclasses.replace(spec, generator=dataclasses.replace(spec.generator, sha256="0" * 64))
    result = run_job(bad)
    assert not result.ok and result.error_code == "data_integrity"
    missing = dataclasses.replace(spec, generator=dataclasses.replace(spec.generator, path=str(tmp_path / "nope")))
    assert run_job(missing).error_code == "data_unavailable"


def test_job_spec_round_trip(detector_job):
    """The spec crosses to the scorer as JSON; the generator stays with the scorer (the model process
    never gets it: see tests/evaluator/test_trust_boundary.py for what that process can see)."""
    spec, _ = detector_job
    again = JobSpec.from_json(spec.to_json())
    assert again == spec and isinstance(again.detector_attacks.pgd_budgets, tuple)
