"""Attack submissions on detector tracks (issue 20): the attack lowers fake scores, the platform judges.

The interface is the classifier one (``attack(model, x, y, threat, budget, generator)``) with ``model``
answering one fake score per image. References: a closed form on a linear detector (its optimal Linf
attack moves every pixel one budget against the sign of its weight, inside the box), and the detector
suite's own loss-maximising attack written as a submission, which must give the built-in
``auc@Linf-k/255`` exactly, as an attack that changes nothing must give ``auc@clean-subset``.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score
from torch import nn

from evaluator.adversary.runner import run_attack
from evaluator.adversary.spec import AttackJob, AttackSource
from evaluator.data.evalsets import write_evaluation_set
from evaluator.models.convert import convert_checkpoint
from evaluator.models.zoo import build_model
from evaluator.sandbox.launch import run_attack_sandboxed
from evaluator.scoring import run_job
from evaluator.spec import ArtifactSpec, DetectorAttackSpec, EvaluationSetSpec, InputSpec, JobSpec, ThreatModel
from tests.conftest import SHARED_MODELS

EXAMPLES = Path(__file__).resolve().parents[2] / "evaluator" / "adversary" / "examples"
N = 120  # reals and fakes in the clean set

ONE_SIGN_STEP = """
    def attack(model, x, y, threat, budget, generator):
        assert threat.task == "detector" and (y == 1).all()
        x_adv = x.clone().requires_grad_(True)
        scores = model(x_adv)
        assert scores.shape == (x.shape[0],)
        scores.sum().backward()
        return (x - threat.eps * x_adv.grad.sign()).clamp(0, 1)
    """


def _source(tmp_path: Path, body: str, name: str = "attack.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


class Linear(nn.Module):
    """A linear detector: score = w . x + b (one column, higher means fake)."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 1)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(1, 784, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.mark.slow
def test_a_sign_step_on_a_linear_detector_reaches_the_closed_form_optimum(mnist_test, tmp_path):
    """The platform's score of each returned image is the linear detector's minimum over the ball and the box."""
    images, _ = mnist_test
    x = torch.from_numpy(images[:32].copy()).float() / 255
    model = Linear(torch.Generator().manual_seed(3)).eval()
    threat = ThreatModel("Linf", 4 / 255, "Linf-4/255")
    run = run_attack(_source(tmp_path, ONE_SIGN_STEP), model, x, torch.ones(32, dtype=torch.long), threat,
                     passes_per_point=1, seed=0, task="detector")
    assert run.ok, (run.error, run.details)
    assert run.robust is None and run.scores is not None and run.forward_passes == 32 == run.backward_passes
    # Closed form: each pixel moves one budget against its weight's sign, clipped to [0, 1], in whole grey levels.
    w = model.fc.weight.detach().view(1, 1, 28, 28)
    levels = (x * 255).round() - 4 * torch.sign(w)
    optimum = levels.clamp(0, 255) / 255
    with torch.no_grad():
        expected = model(optimum).squeeze(1)
        clean = model(x).squeeze(1)
    torch.testing.assert_close(run.scores, expected, rtol=0, atol=1e-4)
    assert bool((run.scores < clean).all())
    # And no image in the ball scores lower: the optimum is a corner, a random corner does no better.
    corners = (x * 255).round() + 4 * torch.randint(-1, 2, x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert bool((model(corners.clamp(0, 255) / 255).squeeze(1) >= expected - 1e-4).all())


@pytest.fixture(scope="module")
def discriminator_job(tmp_path_factory, mnist_test) -> JobSpec:
    """The GAN discriminator as a hosted detector on a clean set of MNIST reals and GAN fakes."""
    folder = tmp_path_factory.mktemp("detector-attack-job")
    detector = convert_checkpoint("mnist_gan_discriminator", SHARED_MODELS / "mnist_gan/D--300.ckpt",
                                  folder / "d.safetensors")
    generator = build_model("mnist_gan_generator")
    weights = convert_checkpoint("mnist_gan_generator", SHARED_MODELS / "mnist_gan/G--300.ckpt",
                                 folder / "g.safetensors")
    generator.load_state_dict(load_file(weights))
    with torch.no_grad():
        z = torch.randn(N, 64, generator=torch.Generator().manual_seed(11))
        fakes = (generator.eval()(z).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = np.concatenate([np.zeros(N, np.int64), np.ones(N, np.int64)])
    digest = write_evaluation_set(folder / "clean.safetensors", np.concatenate([mnist_test[0][:N], fakes]), labels)
    return JobSpec(
        "detector-model-job", "detector", InputSpec(1, 28, 28),
        ArtifactSpec(str(detector), "safetensors", architecture="mnist_gan_discriminator"),
        (EvaluationSetSpec("gan", str(folder / "clean.safetensors"), digest, "clean"),),
        num_classes=2, seed=5,
        detector_attacks=DetectorAttackSpec(points=24, pgd_budgets=(2 / 255, 8 / 255), pgd_steps=50, min_norms=(),
                                            universal_train_images=0),
    )


@pytest.mark.slow
def test_the_suites_pgd_as_a_submission_matches_the_built_in_attack(discriminator_job, tmp_path):
    """Same points, same seed, the same rounding: the same AUC (interval too) as the built-in suite's PGD; an attack
    that changes nothing gives the suite's un-attacked subset; the points are the fakes, all of them checked."""
    built_in = run_job(discriminator_job)
    assert built_in.ok, built_in.error
    suite = {m.metric: m for m in built_in.metrics if m.evaluation_set == "gan"}

    job = AttackJob("detector-attack", AttackSource(str(EXAMPLES / "detector_pgd.py"), "0" * 64, "suite PGD"),
                    discriminator_job, passes_per_point=102)
    result = run_attack_sandboxed(job)
    assert result.ok, result.error
    found = {m.metric: m for m in result.metrics}
    assert set(found) == {f"{m}@{b}" for m in ("auc", "average_precision", "tpr@1%fpr", "tpr@5%fpr")
                          for b in ("Linf-2/255", "Linf-8/255")}
    for label in ("Linf-2/255", "Linf-8/255"):
        for metric in ("auc", "average_precision", "tpr@5%fpr"):
            ours, theirs = found[f"{metric}@{label}"], suite[f"{metric}@{label}"]
            assert (ours.value, ours.ci_low, ours.ci_high, ours.num_examples) == pytest.approx(
                (theirs.value, theirs.ci_low, theirs.ci_high, theirs.num_examples), abs=1e-12), (metric, label)
        # Two step rules of 50 steps, one pass per step and one at the start: 102 per point, no more.
        assert result.provenance["threat_models"][label]["forward_passes"] == 24 * 102
    assert found["auc@Linf-8/255"].value < suite["auc@clean-subset"].value - 0.1  # a real fight
    assert found["auc@Linf-8/255"].num_examples == N + 24

    idle = AttackJob("idle", AttackSource(_source(tmp_path, "def attack(model, x, y, threat, budget, generator):\n"
                                                            "    return x\n", "idle.py"), "1" * 64),
                     dataclasses.replace(discriminator_job, detector_attacks=dataclasses.replace(
                         discriminator_job.detector_attacks, pgd_budgets=(2 / 255,))))
    unchanged = run_attack_sandboxed(idle)
    assert unchanged.ok, unchanged.error
    got = {m.metric: m for m in unchanged.metrics}
    assert got["auc@Linf-2/255"].value == suite["auc@clean-subset"].value
    assert (got["auc@Linf-2/255"].ci_low, got["auc@Linf-2/255"].ci_high) == (suite["auc@clean-subset"].ci_low,
                                                                            suite["auc@clean-subset"].ci_high)
    # Independent check of the scoring: sklearn's AUC of the discriminator's own scores, reals against the subset.
    from evaluator.detector_attacks.suite import attacked_subset

    data = load_file(discriminator_job.evaluation_sets[0].path)
    model = build_model("mnist_gan_discriminator")
    model.load_state_dict(load_file(discriminator_job.artifact.path))
    with torch.no_grad():
        scores = model.eval()(data["images"].float() / 255).reshape(-1).double().numpy()
    labels = data["labels"].numpy()
    fake_scores = scores[labels == 1][attacked_subset(N, 24, discriminator_job.seed).numpy()]
    reference = roc_auc_score(np.r_[np.zeros(N), np.ones(24)], np.r_[scores[labels == 0], fake_scores])
    assert got["auc@Linf-2/255"].value == pytest.approx(reference, abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize(("body", "code"), [
    ("return (x - 3 * threat.eps).clamp(0, 1)", "out_of_ball"),
    ("return x[:-1]", "wrong_shape"),
    ("model(torch.zeros(x.shape[0], 3, 28, 28))\n    return x", "bad_query"),
    ("model(x); model(x)\n    return x", "over_budget"),
])
def test_a_detector_attack_that_breaks_a_promise_fails_with_its_code(mnist_test, tmp_path, body, code):
    images, _ = mnist_test
    x = torch.from_numpy(images[:8].copy()).float() / 255
    source = _source(tmp_path, f"import torch\ndef attack(model, x, y, threat, budget, generator):\n    {body}\n")
    run = run_attack(source, Linear(torch.Generator().manual_seed(0)).eval(), x, torch.ones(8, dtype=torch.long),
                     ThreatModel("Linf", 2 / 255, "Linf-2/255"), passes_per_point=1, seed=0, task="detector")
    assert run.error_code == code and run.scores is None, (run.error_code, run.error)
