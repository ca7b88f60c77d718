"""A job's time budget, its finished stages, and resuming after them (issue 19).

A job that runs out of time keeps its finished stages; a run given those stages does only the rest
and ends with exactly the numbers of an uninterrupted run. The budget's work bound really bounds
what the suite spends on a point that is never broken.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from evaluator.attacks.cascade import attack_threat_model
from evaluator.attacks.suites import SuiteConfig
from evaluator.checkpoints import SETS, Checkpoint, attack_stage, spec_fingerprint
from evaluator.data.evalsets import write_evaluation_set
from evaluator.deadline import JobDeadline, OutOfTime
from evaluator.scoring import job as job_module
from evaluator.scoring import run_job
from evaluator.scoring.budget import (
    BACKWARD_COST,
    PLATFORM_SECONDS_PER_CALL,
    SAFETY_FACTOR,
    STARTUP_SECONDS,
    Work,
    derive_budget,
    passes_per_point,
    work_for,
)
from evaluator.spec import ArtifactSpec, EvaluationSetSpec, InputSpec, JobSpec, ThreatModel

LINF, L2 = ThreatModel("Linf", 0.3, "Linf-0.3"), ThreatModel("L2", 2.0, "L2-2.0")


@pytest.fixture(scope="module")
def job(tmp_path_factory, mnist_test, lenet5_safetensors) -> JobSpec:
    folder = tmp_path_factory.mktemp("resume-job")
    images, labels = mnist_test[0][:400], mnist_test[1][:400]
    clean = write_evaluation_set(folder / "clean.safetensors", images[:300], labels[:300])
    shift = write_evaluation_set(folder / "shift.safetensors", 255 - images[300:], labels[300:])
    return JobSpec(
        "resume-job", "classifier", InputSpec(1, 28, 28),
        ArtifactSpec(str(lenet5_safetensors), "safetensors", architecture="mnist_lenet5"),
        (EvaluationSetSpec("mnist", str(folder / "clean.safetensors"), clean, "clean"),
         EvaluationSetSpec("inverted", str(folder / "shift.safetensors"), shift, "shift")),
        threat_models=(LINF, L2), attack_points=12, reliability_points=6, seed=5, batch_size=64,
    )


def _numbers(result) -> dict[tuple[str, str], tuple[float, int, float | None, float | None]]:
    return {(m.evaluation_set, m.metric): (m.value, m.num_examples, m.ci_low, m.ci_high) for m in result.metrics}


def _timeless(value):
    """A provenance record without its timings (the only thing two runs of the same stages differ in)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


@pytest.fixture(scope="module")
def uninterrupted(job):
    kept: list[Checkpoint] = []
    result = run_job(job, secret_seed=11, on_checkpoint=kept.append)
    assert result.ok, result.error
    return result, kept


@pytest.mark.slow
def test_stages_are_handed_out_in_order_and_add_up_to_the_result(job, uninterrupted):
    result, kept = uninterrupted
    assert [c.stage for c in kept] == [SETS, attack_stage(LINF), attack_stage(L2)]
    from_stages = {(m.evaluation_set, m.metric) for c in kept for m in c.metrics}
    # Every metric of the result comes from a stage; attacked_clean_accuracy is kept with the attack stages.
    assert set(_numbers(result)) - from_stages == set()
    budget = result.provenance["time_budget"]
    assert budget["seconds"] > result.provenance["seconds"]  # an uninterrupted job finished inside its budget
    assert budget["work"]["attacked"] == 2 * job.attack_points and budget["work"]["set_images"] == 400


@pytest.mark.slow
def test_a_job_out_of_time_keeps_its_finished_stages_and_a_resumed_run_ends_where_the_full_one_does(
        job, uninterrupted, monkeypatch):
    full, _ = uninterrupted
    kept: list[Checkpoint] = []

    class RunsOutAfterTheSets(JobDeadline):
        """The job's deadline, passed the moment the sets' stage is handed out: a cut at a known point, whatever
        the machine's speed (a cut by the clock would land elsewhere on a loaded machine)."""

        def check(self) -> None:
            if kept:
                raise OutOfTime("the job's time budget ran out")

    monkeypatch.setattr(job_module, "JobDeadline", RunsOutAfterTheSets)
    cut = run_job(job, secret_seed=11, on_checkpoint=kept.append)
    assert not cut.ok and cut.error_code == "out_of_time"
    assert cut.provenance["incomplete"]["finished"] == [SETS] and [c.stage for c in kept] == [SETS]
    assert cut.provenance["incomplete"]["stage"].startswith(("attacks", "reliability"))
    assert "finished stage is kept" in cut.error
    # The finished stage's numbers are the full run's; nothing of the unfinished attacks is reported.
    assert _numbers(cut) == {k: v for k, v in _numbers(full).items() if not k[1].startswith(("robust", "attacked"))}
    assert cut.per_class == full.per_class

    monkeypatch.undo()
    resume = {"fingerprint": spec_fingerprint(job), "stages": [c.to_dict() for c in kept]}
    again: list[Checkpoint] = []
    # Another batch size and secret: neither changes a number, so the stages may be reused.
    resumed = run_job(dataclasses.replace(job, job_id="second", batch_size=32), secret_seed=99, resume=resume,
                      on_checkpoint=again.append)
    assert resumed.ok, resumed.error
    assert [c.stage for c in again] == [attack_stage(LINF), attack_stage(L2)]  # the sets were not run again
    assert resumed.provenance["resumed_stages"] == [SETS]
    assert resumed.provenance["time_budget"]["work"]["set_images"] == 0
    assert _numbers(resumed) == _numbers(full)
    assert resumed.per_class == full.per_class
    assert _timeless(resumed.provenance["attacks"]) == _timeless(full.provenance["attacks"])


@pytest.mark.slow
def test_stages_of_another_job_are_not_reused(job, uninterrupted):
    _, kept = uninterrupted
    other = dataclasses.replace(job, seed=6)  # another seed: other attacked points, other numbers
    resume = {"fingerprint": spec_fingerprint(job), "stages": [c.to_dict() for c in kept]}
    assert spec_fingerprint(other) != spec_fingerprint(job)
    assert job_module.resumed_stages(other, resume) == {}
    assert set(job_module.resumed_stages(job, resume)) == {SETS, attack_stage(LINF), attack_stage(L2)}


@pytest.mark.slow
def test_a_model_slower_on_hidden_batches_than_on_its_probe_is_too_slow(job, monkeypatch):
    real_budget = job_module._budget

    def tight(*args):
        # As if the probe had promised a thousandth of the model time the job then took.
        return dataclasses.replace(real_budget(*args), model_seconds=1e-3)

    class AlreadyPassed(JobDeadline):
        def check(self) -> None:
            raise OutOfTime("the job's time budget ran out")

    monkeypatch.setattr(job_module, "_budget", tight)
    monkeypatch.setattr(job_module, "JobDeadline", AlreadyPassed)
    result = run_job(job, secret_seed=11)
    assert not result.ok and result.error_code == "too_slow"
    assert result.provenance["model_seconds"] > 1.5e-3


def test_the_budget_prices_work_at_the_probes_two_points():
    """Per image from the full batch, per call from what the small probe costs beyond its images."""
    work = Work(set_images=1000, attacked=10, gradient_passes=2000, forward_passes=5000, calls=300,
                values_per_image=784)
    budget = derive_budget(work, probe_seconds=0.010, probe_images=8, seconds_per_batch=0.256, batch_size=256)
    per_image, per_call = 0.001, 0.010 - 8 * 0.001
    model = (1000 * 1.1 + 5000 + BACKWARD_COST * 2000) * per_image + 300 * per_call
    assert budget.model_seconds == pytest.approx(model, abs=1e-3)
    platform = 300 * PLATFORM_SECONDS_PER_CALL + 7000 * 784 * 2e-8
    assert budget.platform_seconds == pytest.approx(platform, abs=1e-3)
    assert budget.seconds == pytest.approx(STARTUP_SECONDS + SAFETY_FACTOR * (model + platform), abs=1e-3)
    capped = derive_budget(work, 0.010, 8, 0.256, 256, cap_seconds=60.0)
    assert capped.seconds == 60.0 and capped.capped_at == 60.0


def test_the_work_of_a_resumed_job_is_what_is_left(job):
    full = work_for(job, 400)
    one_left = work_for(job, 0, threat_models_left=1)
    assert one_left.set_images == 0 and one_left.attacked == job.attack_points == full.attacked / 2
    assert one_left.gradient_passes * 2 == full.gradient_passes


class _FarFromTheBoundary(torch.nn.Module):
    """A linear model whose label logit leads by far more than any eps-ball can change: never broken."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(10, 784, generator=torch.Generator().manual_seed(0)) * 1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = x.flatten(1) @ self.weight.T
        return logits + 50.0 * torch.nn.functional.one_hot(torch.zeros(x.shape[0], dtype=torch.long), 10)


def test_the_pass_bound_holds_for_points_no_stage_breaks():
    """Every stage and the escalation spend their whole budget on a point never broken: at most the bound."""
    config = SuiteConfig("bound-test", apgd_iterations=6, target_classes=3, fmn_steps=5, min_norm_iterations=4,
                         min_norm_targets=3, square_queries=40, escalation_restarts=2,
                         escalation_min_norm_restarts=2, escalation_iteration_factor=2, escalation_square_restarts=1)
    points = 5
    x = torch.rand(points, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(points, dtype=torch.long)
    for threat in (ThreatModel("Linf", 0.1), ThreatModel("L2", 1.0)):
        outcome = attack_threat_model(_FarFromTheBoundary().eval(), x, y, torch.ones(points, dtype=torch.bool),
                                      threat, suite=config, seed=0, batch_size=64,
                                      checks=lambda threat, report: ["gradients"])
        report = outcome.report
        assert report.escalated_for == ["gradients"] and report.robust_accuracy == 1.0
        bound = passes_per_point(config, reliability_share=0.0)
        gradient, forward = report.backward_passes / points, report.forward_passes / points
        assert gradient <= bound.gradient, (threat, gradient, bound)
        assert forward <= bound.forward + bound.gradient, (threat, forward, bound)
        # A bound, but not a loose one: the suite spends most of it on such a point.
        assert gradient >= 0.5 * bound.gradient, (threat, gradient, bound)
