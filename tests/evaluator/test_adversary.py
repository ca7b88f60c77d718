"""Attack submissions (issue 20): the interface loses nothing, and hostile attacks are contained with a reason.

Every attack here runs as a submitted one would: its source in a bubblewrap sandbox of its own
(a plain process where bubblewrap is missing, as the model process does), its model calls answered
by the scorer, its images checked by the scorer.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evaluator.adversary.runner import run_attack
from evaluator.attacks.cascade import attack_threat_model, get_suite
from evaluator.attacks.common import predict_logits
from evaluator.attacks.counting import as_counting
from evaluator.attacks.suites import SuiteConfig
from evaluator.models.zoo import build_model
from evaluator.spec import ThreatModel
from tests.conftest import SHARED_DATA

EXAMPLES = Path(__file__).resolve().parents[2] / "evaluator" / "adversary" / "examples"
LINF = ThreatModel("Linf", 0.1)


@pytest.fixture(scope="module")
def points(mnist_test):
    """The first ``n`` MNIST test images in [0, 1] and their labels, as an attack receives them."""
    images, labels = mnist_test

    def first(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(images[:n].copy()).float() / 255, torch.from_numpy(labels[:n].copy())

    return first


@pytest.fixture(scope="module")
def lenet(lenet5_safetensors) -> tuple[torch.nn.Module, Path]:
    model = build_model("mnist_lenet5")
    model.load_state_dict(load_file(lenet5_safetensors))
    return model.eval(), lenet5_safetensors


def _source(tmp_path: Path, body: str) -> str:
    path = tmp_path / "attack.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.mark.slow
def test_the_suites_apgd_ce_as_a_submission_matches_the_built_in_stage(lenet, points):
    """Same points, same seed: the same points broken, and the same passes as the built-in counter counts."""
    model, _ = lenet
    x, y = points(40)
    seed = 7
    run = run_attack(str(EXAMPLES / "apgd_ce.py"), model, x, y, LINF, passes_per_point=200, seed=seed)
    assert run.ok, (run.error, run.details)

    only_apgd = SuiteConfig("attacks-2", stages=("apgd-ce",), escalation=())
    reference = get_suite("attacks-2")
    assert (only_apgd.apgd_iterations, only_apgd.chunk_size) == (reference.apgd_iterations, reference.chunk_size)
    counter = as_counting(model)
    clean = predict_logits(counter, x, 256).argmax(1) == y
    outcome = attack_threat_model(counter, x, y, clean, LINF, suite=only_apgd, seed=seed, batch_size=256)
    stage = outcome.report.stages[0]
    assert 0.0 < stage.robust_accuracy < float(clean.float().mean())  # a real fight: some points fall, some hold
    assert run.robust_accuracy == pytest.approx(stage.robust_accuracy, abs=1e-12)
    assert torch.equal(run.robust, outcome.robust)
    # The built-in stage also confirms each point it claims with one forward pass; the submission's clean pass
    # is its own (the built-in cascade's is outside the stage). Gradient passes agree exactly.
    assert run.backward_passes == stage.backward_passes
    assert run.forward_passes - len(y) == stage.forward_passes - stage.broken


HONEST_RETURN = "return x"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("label", "body", "code"),
    [
        ("reads the model's file", """
            def attack(model, x, y, threat, budget, generator):
                try:
                    open({model_path!r}, "rb").read(16)
                except OSError:
                    return x
                return x * float("nan")  # reaching here would fail the run: the test wants it to succeed
            """, ""),
        ("reads the hidden labels' file", """
            def attack(model, x, y, threat, budget, generator):
                try:
                    open({labels_path!r}, "rb").read(16)
                except OSError:
                    return x
                return x * float("nan")
            """, ""),
        ("opens a socket to the database", """
            import socket
            def attack(model, x, y, threat, budget, generator):
                try:
                    socket.create_connection(("127.0.0.1", 5432), timeout=2)
                except OSError:
                    return x
                return x * float("nan")
            """, ""),
        ("exceeds the pass budget", """
            def attack(model, x, y, threat, budget, generator):
                for _ in range(budget + 1):
                    model(x)
                return x
            """, "over_budget"),
        ("returns out-of-ball images", """
            def attack(model, x, y, threat, budget, generator):
                return (x + 2 * threat.eps).clamp(0, 1)
            """, "out_of_ball"),
        ("returns NaN", """
            def attack(model, x, y, threat, budget, generator):
                return x * float("nan")
            """, "non_finite"),
        ("returns images outside [0, 1]", """
            def attack(model, x, y, threat, budget, generator):
                return x - 0.05
            """, "out_of_box"),
        ("returns the wrong shape", """
            def attack(model, x, y, threat, budget, generator):
                return x[:1]
            """, "wrong_shape"),
        ("forks without end", """
            import os, time
            def attack(model, x, y, threat, budget, generator):
                while True:  # until the sandbox's process limit refuses a fork; the children wait, hold nothing
                    if os.fork() == 0:
                        time.sleep(600)
            """, "attack_error|attack_crashed|attack_timeout"),
        ("sleeps", """
            import time
            def attack(model, x, y, threat, budget, generator):
                time.sleep(600)
                return x
            """, "attack_timeout"),
        ("raises", """
            def attack(model, x, y, threat, budget, generator):
                raise RuntimeError("the labels are 7 2 1 0")
            """, "attack_error"),
        ("queries images outside [0, 1]", """
            def attack(model, x, y, threat, budget, generator):
                model(x + 5)
                return x
            """, "bad_query"),
    ],
)
def test_hostile_attacks_are_contained_with_a_reason(lenet, points, tmp_path, label, body, code):
    model, model_path = lenet
    x, y = points(8)
    labels_path = SHARED_DATA / "mnist" / "t10k-labels-idx1-ubyte.gz"
    source = _source(tmp_path, body.format(model_path=str(model_path), labels_path=str(labels_path)))
    run = run_attack(source, model, x, y, LINF, passes_per_point=3, seed=0, seconds=20)
    if not code:
        assert run.ok, (label, run.error, run.details)
        assert run.robust_accuracy == int((model(x).argmax(1) == y).sum()) / len(y)  # nothing broken: x itself
    else:
        assert run.error_code in code.split("|"), (label, run.error_code, run.error)
        assert run.robust is None and run.error
        assert "7 2 1 0" not in run.error  # the attack's own words never reach the result
    assert run.forward_passes <= 3 * len(y)


@pytest.mark.slow
def test_an_attack_job_runs_through_the_scorer_process_against_the_hosted_model(lenet, points, tmp_path):
    """The worker's path: the scorer process hosts the model in one sandbox and the attack in another."""
    from evaluator.adversary.spec import AttackJob, AttackSource
    from evaluator.data.evalsets import write_evaluation_set
    from evaluator.sandbox.launch import run_attack_sandboxed
    from evaluator.spec import ArtifactSpec, EvaluationSetSpec, InputSpec, JobSpec

    _, model_path = lenet
    x, y = points(60)
    digest = write_evaluation_set(tmp_path / "clean.safetensors", (x * 255).round().to(torch.uint8).numpy(),
                                  y.numpy())
    target = JobSpec("model-job", "classifier", InputSpec(1, 28, 28),
                     ArtifactSpec(str(model_path), "safetensors", architecture="mnist_lenet5"),
                     (EvaluationSetSpec("mnist", str(tmp_path / "clean.safetensors"), digest, "clean"),),
                     threat_models=(ThreatModel("Linf", 0.3, "Linf-0.3"), ThreatModel("Linf", 0.01, "Linf-0.01")),
                     attack_points=20, seed=4)
    fgsm = _source(tmp_path, """
        import torch.nn.functional as F
        def attack(model, x, y, threat, budget, generator):
            x_adv = x.clone().requires_grad_(True)
            F.cross_entropy(model(x_adv), y).backward()
            return (x + threat.eps * x_adv.grad.sign()).clamp(0, 1)
        """)
    job = AttackJob("attack-job", AttackSource(fgsm, "0" * 64, "FGSM"), target, passes_per_point=2)
    result = run_attack_sandboxed(job)
    assert result.ok and result.job_id == "attack-job", result.error
    robust = {m.metric: m for m in result.metrics}
    assert robust["robust_accuracy@Linf-0.3"].num_examples == 20
    assert robust["robust_accuracy@Linf-0.3"].value < 0.2 < robust["robust_accuracy@Linf-0.01"].value
    assert result.provenance["attack"]["name"] == "FGSM" and result.provenance["sandbox"] == "bubblewrap"
    assert result.provenance["threat_models"]["Linf-0.3"]["forward_passes"] == 20

    cheat = _source(tmp_path, """
        def attack(model, x, y, threat, budget, generator):
            return (x + 0.5).clamp(0, 1)
        """)
    failed = run_attack_sandboxed(AttackJob("attack-job-2", AttackSource(cheat, "1" * 64), target))
    assert not failed.ok and failed.error_code == "out_of_ball" and failed.job_id == "attack-job-2"
    assert failed.metrics == []


@pytest.mark.slow
def test_the_documented_example_attack_runs_as_a_submission(lenet, points, tmp_path):
    """docs/attacks.md's complete example, taken from the page as it is, breaks a clean model within its budget."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "attacks.md").read_text()
    example = page.split("## A complete example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    source = tmp_path / "example.py"
    source.write_text(example)
    model, _ = lenet
    x, y = points(16)
    for threat in (ThreatModel("Linf", 0.3), ThreatModel("L2", 3.0)):
        run = run_attack(str(source), model, x, y, threat, passes_per_point=20, seed=1)
        assert run.ok, (threat, run.error, run.details)
        assert run.robust_accuracy < 0.2 and run.forward_passes <= 20 * len(y)


@pytest.mark.slow
def test_an_attack_package_imports_its_own_modules_and_nothing_else_of_the_job(lenet, points, tmp_path):
    """A package (a folder: attack.py and the modules it imports) is bound into the sandbox whole."""
    model, model_path = lenet
    package = tmp_path / "package"
    package.mkdir()
    (package / "steps.py").write_text("def signed(grad, eps):\n    return eps * grad.sign()\n")
    (package / "attack.py").write_text(textwrap.dedent(f"""
        import torch.nn.functional as F
        from steps import signed

        def attack(model, x, y, threat, budget, generator):
            try:
                open({str(model_path)!r}, "rb")
            except OSError:
                pass
            else:
                return x * float("nan")
            x_adv = x.clone().requires_grad_(True)
            F.cross_entropy(model(x_adv), y).backward()
            return (x + signed(x_adv.grad, threat.eps)).clamp(0, 1)
        """))
    x, y = points(16)
    run = run_attack(str(package), model, x, y, ThreatModel("Linf", 0.3), passes_per_point=2, seed=0)
    assert run.ok, (run.error, run.details)
    assert run.robust_accuracy < 0.2 and run.forward_passes == 16
