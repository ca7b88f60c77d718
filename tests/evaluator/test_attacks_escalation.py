"""Escalation: when a reliability check fires, the suite spends more on the survivors before publishing.

A flag alone leaves an overstated number on the leaderboard; the cascade escalates (more restarts,
more iterations, Square with restarts) on the points still robust, names the checks that caused it,
and escalates on nothing else.
"""

from __future__ import annotations

import pytest
import torch

from evaluator.attacks.cascade import (
    SuiteConfig,
    ThreatModelOutcome,
    ThreatModelReport,
    attack_threat_model,
    run_cascade,
)
from evaluator.attacks.counting import CountingModel
from evaluator.attacks.stages import ESCALATION_STAGE_NAMES
from evaluator.attacks.threat import ThreatModel
from tests.evaluator.attack_models import LinearModel, Quantised, one_thread  # noqa: F401 (autouse fixture)
from tests.evaluator.test_attacks_cascade import boundary_distance, problem

#: The standard stages and escalation with small budgets, so a test takes seconds.
SMALL = SuiteConfig("test-escalation", apgd_iterations=20, target_classes=3, fmn_steps=20, min_norm_iterations=20,
                    min_norm_targets=3, square_queries=200, chunk_size=64, escalation_restarts=2,
                    escalation_min_norm_restarts=2, escalation_iteration_factor=2, escalation_square_restarts=2)


def masked_problem(seed: int = 8) -> tuple[Quantised, torch.Tensor, torch.Tensor]:
    """A quantised linear model: zero gradient almost everywhere, so only Square can break it."""
    g = torch.Generator().manual_seed(seed)
    model = Quantised(torch.randn(5, 3 * 6 * 6, generator=g), torch.zeros(5))
    x = torch.rand(60, 3, 6, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_square_beating_the_white_box_stages_escalates_on_the_survivors() -> None:
    model, x, y = masked_problem()
    counted = CountingModel(model)
    threat = ThreatModel("Linf", 0.15)
    outcome = attack_threat_model(counted, x, y, torch.ones(len(y), dtype=torch.bool), threat, suite=SMALL)
    report = outcome.report
    names = [s.attack for s in report.stages]
    assert report.escalated_for == ["black_box"]
    assert names == list(SMALL.stages) + list(SMALL.escalation)
    cascade, escalation = report.stages[: len(SMALL.stages)], report.stages[len(SMALL.stages):]
    # The escalation attacks exactly the cascade's survivors, stage after stage.
    survivors = cascade[-1].attacked - cascade[-1].broken
    assert escalation[0].attacked == survivors > 0
    for before, after in zip(escalation, escalation[1:], strict=False):
        assert after.attacked == before.attacked - before.broken
    assert report.robust_accuracy == pytest.approx((escalation[-1].attacked - escalation[-1].broken) / len(y))
    assert report.robust_accuracy <= cascade[-1].robust_accuracy
    assert report.forward_passes == sum(s.forward_passes for s in report.stages) == counted.forward_passes
    assert escalation[-1].forward_passes > 0  # Square's restarts really queried the model
    assert torch.equal(outcome.robust.sum(), torch.tensor(round(report.robust_accuracy * len(y))))


def test_no_check_fired_no_escalation() -> None:
    model, x, y, _ = problem(seed=2, n=80)
    threat = ThreatModel("L2", float(boundary_distance(model, x, y, "L2").median()))
    calls: list[ThreatModelReport] = []

    def checks(t: ThreatModel, outcome: ThreatModelOutcome) -> list[str]:
        calls.append(outcome.report)
        return []

    report = run_cascade(model, x, y, [threat], suite=SMALL, checks=checks).threat_models[0]
    assert report.escalated_for == []
    assert [s.attack for s in report.stages] == list(SMALL.stages)
    assert not {s.attack for s in report.stages} & set(ESCALATION_STAGE_NAMES)
    assert len(calls) == 1 and [s.attack for s in calls[0].stages] == list(SMALL.stages)
    # A healthy linear model: the cascade leaves exactly the points beyond eps.
    beyond = int((boundary_distance(model, x, y, "L2") > threat.eps * 1.01).sum())
    within = int((boundary_distance(model, x, y, "L2") < threat.eps * 0.99).sum())
    robust = round(report.robust_accuracy * len(y))
    assert beyond <= robust <= len(y) - within


def test_a_callers_check_makes_it_escalate_and_is_named() -> None:
    model, x, y, _ = problem(seed=3, n=80)
    threats = [ThreatModel("Linf", float(boundary_distance(model, x, y, "Linf").median())),
               ThreatModel("L2", float(boundary_distance(model, x, y, "L2").median()))]
    fired = {"Linf": ["eps_monotonic", "gradients"], "L2": []}
    seen: list[str] = []

    def checks(threat: ThreatModel, outcome: ThreatModelOutcome) -> list[str]:
        seen.append(threat.norm)
        report = outcome.report
        assert report.robust_accuracy == pytest.approx(report.stages[-1].robust_accuracy)  # before escalation
        assert int(outcome.robust.sum()) == round(report.robust_accuracy * len(y))
        return fired[threat.norm]

    report = run_cascade(model, x, y, threats, suite=SMALL, checks=checks)
    linf, l2 = report.threat_models
    assert seen == ["Linf", "L2"]
    assert linf.escalated_for == ["eps_monotonic", "gradients"]
    assert [s.attack for s in linf.stages][len(SMALL.stages):] == list(SMALL.escalation)
    assert l2.escalated_for == [] and len(l2.stages) == len(SMALL.stages)
    assert report.forward_passes == linf.forward_passes + l2.forward_passes + report.clean_forward_passes


def test_escalation_is_deterministic_and_a_suite_without_it_only_flags() -> None:
    model, x, y = masked_problem(seed=9)
    threat = ThreatModel("Linf", 0.15)
    a = run_cascade(model, x, y, [threat], suite=SMALL, seed=4).threat_models[0]
    b = run_cascade(model, x, y, [threat], suite=SMALL, seed=4, batch_size=9).threat_models[0]
    assert a.escalated_for == ["black_box"]
    assert [(s.attack, s.attacked, s.broken, s.forward_passes) for s in a.stages] == [
        (s.attack, s.attacked, s.broken, s.forward_passes) for s in b.stages]
    flag_only = SuiteConfig("test-flag-only", apgd_iterations=20, target_classes=3, fmn_steps=20,
                            min_norm_iterations=20, min_norm_targets=3, square_queries=200, chunk_size=64,
                            escalation=())
    c = run_cascade(model, x, y, [threat], suite=flag_only, seed=4).threat_models[0]
    assert c.escalated_for == [] and [s.attack for s in c.stages] == list(flag_only.stages)


def test_nothing_left_to_attack_nothing_escalates() -> None:
    """A fired check with no survivor (every point already broken) runs no escalation stage."""
    model, x, y, _ = problem(seed=5, n=40)
    big = ThreatModel("Linf", 10 * float(boundary_distance(model, x, y, "Linf").max()))
    report = run_cascade(model, x, y, [big], suite=SMALL, checks=lambda t, r: ["gradients"]).threat_models[0]
    assert report.robust_accuracy == 0.0
    assert report.escalated_for == [] and len(report.stages) == len(SMALL.stages)


def test_a_check_outside_the_triggers_only_flags() -> None:
    """eps_large fires on a model that really is robust at 4x eps as well as on a failing attack: it flags, and
    the suite does not spend its escalation budget on it."""
    model, x, y, _ = problem(seed=6, n=60)
    threat = ThreatModel("Linf", float(boundary_distance(model, x, y, "Linf").median()))
    assert "eps_large" not in SMALL.escalation_triggers
    report = run_cascade(model, x, y, [threat], suite=SMALL, checks=lambda t, r: ["eps_large"]).threat_models[0]
    assert report.escalated_for == [] and len(report.stages) == len(SMALL.stages)
    both = run_cascade(model, x, y, [threat], suite=SMALL, checks=lambda t, r: ["eps_large", "random_noise"])
    assert both.threat_models[0].escalated_for == ["random_noise"]


def test_unknown_escalation_stages_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown attack stages"):
        SuiteConfig("bad", escalation=("square",))  # a cascade stage is not an escalation stage
    with pytest.raises(ValueError, match="unknown attack stages"):
        SuiteConfig("bad", stages=("apgd-ce", "esc-square"))
    with pytest.raises(ValueError, match="unknown reliability checks"):
        SuiteConfig("bad", escalation_triggers=("black_box", "vibes"))
