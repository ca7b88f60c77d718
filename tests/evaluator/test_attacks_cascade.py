"""The versioned cascade: who gets attacked, what it costs, determinism, reporting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from evaluator.attacks.cascade import (
    SUITE_VERSION,
    CascadeReport,
    SuiteConfig,
    attack_threat_model,
    get_suite,
    run_cascade,
)
from evaluator.attacks.counting import CountingModel, PassCount
from evaluator.attacks.threat import ThreatModel, default_threat_models, dual_norm
from tests.evaluator.attack_models import LinearModel, Quantised, one_thread  # noqa: F401 (autouse fixture)

SHARED = Path(__file__).resolve().parents[3] / "shared"

#: A small suite with the standard stages, so the cascade's logic is tested in seconds.
SMALL = SuiteConfig("test-small", apgd_iterations=20, target_classes=3, fmn_steps=20, min_norm_iterations=20,
                    min_norm_targets=3, square_queries=200, chunk_size=64)


def problem(seed: int = 0, n: int = 120, classes: int = 5) -> tuple[LinearModel, torch.Tensor, torch.Tensor,
                                                                     torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = LinearModel(torch.randn(classes, 3 * 6 * 6, generator=g), 0.3 * torch.randn(classes, generator=g))
    x = 0.3 + 0.4 * torch.rand(n, 3, 6, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, g


def boundary_distance(model: LinearModel, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """Closed-form distance of each point to the nearest decision boundary of a linear model."""
    with torch.no_grad():
        z = model(x)
        w = model.weight
        distance = torch.full((len(y),), torch.inf)
        for j in range(w.shape[0]):
            d_j = (z.gather(1, y[:, None]).squeeze(1) - z[:, j]) / dual_norm(w[y] - w[j], norm)  # type: ignore[arg-type]
            distance = torch.minimum(distance, torch.where(y == j, torch.inf, d_j))
    return distance


def without_seconds(report: CascadeReport) -> dict:
    data = report.to_dict()
    data.pop("seconds")
    for tm in data["threat_models"]:
        tm.pop("seconds")
        for stage in tm["stages"]:
            stage.pop("seconds")
    return data


def test_the_cascade_only_attacks_points_still_robust() -> None:
    model, x, y, g = problem()
    y = y.clone()
    threat = ThreatModel("Linf", float(boundary_distance(model, x, y, "Linf").median()))
    y[:10] = (y[:10] + 1) % 5  # ten misclassified points: never attacked
    counted = CountingModel(model)
    report = run_cascade(counted, x, y, [threat], suite=SMALL, seed=1)
    tm = report.threat_models[0]
    clean_correct = round(report.clean_accuracy * len(y))
    assert clean_correct == len(y) - 10
    assert [s.attack for s in tm.stages] == ["apgd-ce", "apgd-t", "fmn", "fab-t", "square"] == list(SMALL.stages)
    assert tm.escalated_for == []  # a linear model: no check fires
    assert tm.stages[0].attacked == clean_correct
    for before, after in zip(tm.stages, tm.stages[1:], strict=False):
        assert after.attacked == before.attacked - before.broken
    assert tm.stages[0].broken > 0 and tm.stages[-1].attacked > 0  # every stage had work
    robust = tm.stages[-1].attacked - tm.stages[-1].broken
    assert tm.robust_accuracy == pytest.approx(robust / len(y))
    assert tm.ci_low <= tm.robust_accuracy <= tm.ci_high
    assert report.forward_passes == counted.forward_passes
    assert report.backward_passes == counted.backward_passes
    assert report.clean_forward_passes == len(y)
    assert tm.stages[-1].backward_passes == 0  # Square is black-box


class Spy(nn.Module):
    """Records, per stage (told by the progress callback), which original points the model saw: each
    image is put down to its nearest original (the originals lie far apart; the minimum-norm stage's
    iterates may leave the eps-ball, but not by half that distance)."""

    def __init__(self, model: nn.Module, originals: torch.Tensor) -> None:
        super().__init__()
        self.model, self.originals = model, originals.flatten(1)
        apart = (self.originals[:, None, :] - self.originals[None]).abs().amax(dim=2)
        self.half_gap = float((apart + torch.eye(len(apart)) * 10).min()) / 2
        self.stage = "none"
        self.seen: dict[str, set[int]] = {}

    def on_progress(self, fraction: float, stage: str) -> None:
        self.stage = stage.split()[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance = (x.flatten(1)[:, None, :] - self.originals[None]).abs().amax(dim=2)
        nearest = distance.min(dim=1)
        assert (nearest.values < self.half_gap).all(), "an image is not near one original: the spy cannot tell"
        self.seen.setdefault(self.stage, set()).update(nearest.indices.tolist())
        return self.model(x)


def test_each_stage_only_sees_the_survivors_of_the_previous_one() -> None:
    model, x, y, _ = problem(seed=3, n=80)
    threat = ThreatModel("Linf", float(boundary_distance(model, x, y, "Linf").median()))
    spy = Spy(model, x)
    clean_correct = torch.ones(len(y), dtype=torch.bool)
    clean_correct[:5] = False  # pretend five points were misclassified: no stage may touch them
    outcome = attack_threat_model(spy, x, y, clean_correct, threat, suite=SMALL, seed=0, on_progress=spy.on_progress)
    as_set = lambda mask: set(mask.nonzero().squeeze(1).tolist())  # noqa: E731
    left = clean_correct.clone()
    for name in SMALL.stages:
        assert spy.seen[name] == as_set(left), name
        left &= ~outcome.broken_by[name]
    assert outcome.broken_by["apgd-ce"].any() and spy.seen["square"]
    assert torch.equal(outcome.robust, left)
    stages = outcome.report.stages
    assert [s.attacked for s in stages] == [len(spy.seen[name]) for name in SMALL.stages]


def test_pass_count_matches_a_hand_count() -> None:
    """Nothing is breakable (eps far below every boundary distance), so every stage spends its
    full budget on every point: APGD-CE (k)(iters + 1) forward and (k)(iters) backward; APGD-T
    one clean forward plus that per target; Square its query budget; no confirmation passes."""
    model, x, y, _ = problem(seed=4, n=30, classes=3)
    distance = boundary_distance(model, x, y, "Linf").min()
    tiny = ThreatModel("Linf", float(distance) / 100)
    suite = SuiteConfig("hand-count", stages=("apgd-ce", "apgd-t", "square"), apgd_iterations=5, target_classes=9,
                        square_queries=7, chunk_size=500, escalation=())
    counted = CountingModel(model)
    report = run_cascade(counted, x, y, [tiny], suite=suite, seed=0)
    k, iters, targets, queries = 30, 5, 2, 7  # three classes: two possible targets
    tm = report.threat_models[0]
    assert tm.robust_accuracy == 1.0
    assert PassCount(tm.stages[0].forward_passes, tm.stages[0].backward_passes) == PassCount(k * (iters + 1), k * iters)
    assert PassCount(tm.stages[1].forward_passes, tm.stages[1].backward_passes) == PassCount(
        k + targets * k * (iters + 1), targets * k * iters
    )
    assert PassCount(tm.stages[2].forward_passes, tm.stages[2].backward_passes) == PassCount(k * queries, 0)
    assert counted.count == PassCount(
        k + k * (iters + 1) + k + targets * k * (iters + 1) + k * queries, k * iters + targets * k * iters
    )


def test_same_seed_same_report_and_the_global_rng_untouched() -> None:
    model, x, y, _ = problem(seed=5, n=60)
    threats = [ThreatModel(norm, float(boundary_distance(model, x, y, norm).median())) for norm in ("Linf", "L2")]
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = run_cascade(model, x, y, threats, suite=SMALL, seed=9)
    b = run_cascade(model, x, y, threats, suite=SMALL, seed=9, batch_size=7)  # batch size is not part of the result
    assert without_seconds(a) == without_seconds(b)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_report_is_json_and_round_trips() -> None:
    model, x, y, _ = problem(seed=6, n=20)
    report = run_cascade(model, (x * 255).round().to(torch.uint8), y, [ThreatModel("Linf", 0.02)], suite=SMALL)
    data = json.loads(report.to_json())
    assert data["suite_version"] == "test-small" and data["num_examples"] == 20
    assert CascadeReport.from_dict(data) == report
    assert data["threat_models"][0]["ci_method"] == "clopper-pearson-95"


def test_progress_moves_forward_to_one() -> None:
    model, x, y, _ = problem(seed=7, n=150)
    events: list[tuple[float, str]] = []
    threats = [ThreatModel(norm, float(boundary_distance(model, x, y, norm).median())) for norm in ("Linf", "L2")]
    run_cascade(model, x, y, threats, suite=SMALL,
                progress=lambda f, s: events.append((f, s)))
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert len({round(f, 3) for f in fractions}) > 8  # chunks report inside stages
    assert any("apgd-t" in s for _, s in events)


def test_square_catches_what_masked_gradients_hide() -> None:
    g = torch.Generator().manual_seed(8)
    masked = Quantised(torch.randn(5, 3 * 6 * 6, generator=g), torch.zeros(5))
    x = torch.rand(60, 3, 6, 6, generator=g)
    with torch.no_grad():
        y = masked(x).argmax(1)
    report = run_cascade(masked, x, y, [ThreatModel("Linf", 0.15)], suite=SMALL)
    stages = {s.attack: s for s in report.threat_models[0].stages}
    assert stages["apgd-ce"].broken + stages["apgd-t"].broken < stages["square"].broken


def test_suites_are_registered_and_validated() -> None:
    assert get_suite(SUITE_VERSION).square_queries == 5000
    assert get_suite(SUITE_VERSION).apgd_iterations == 100
    assert get_suite(SUITE_VERSION).target_classes == 9
    with pytest.raises(ValueError, match="unknown attack suite"):
        get_suite("attacks-0")
    # attacks-1 stays registered as published (its numbers stay reproducible); attacks-2 adds FAB-T and escalation.
    first, second = get_suite("attacks-1"), get_suite("attacks-2")
    assert first.stages == ("apgd-ce", "apgd-t", "square") and first.escalation == ()
    assert not first.apgd_reference_schedule and second.apgd_reference_schedule
    assert second.stages == ("apgd-ce", "apgd-t", "fmn", "fab-t", "square") and second.escalation
    with pytest.raises(ValueError, match="unknown attack stages"):
        SuiteConfig("bad", stages=("fgsm",))
    with pytest.raises(ValueError, match="at least one threat model"):
        run_cascade(nn.Identity(), torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), [])


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "models").is_dir(), reason="shared pretrained weights not available")
def test_shared_lenet5_falls_to_near_zero_at_linf_03(mnist_test, lenet5_safetensors) -> None:
    """The clean-trained LeNet-5 on 200 real MNIST test digits (FGSM alone leaves 0.9% on 1,000)."""
    from safetensors.torch import load_file

    from evaluator.models.zoo import build_model

    model = build_model("mnist_lenet5")
    model.load_state_dict(load_file(lenet5_safetensors))
    images, labels = mnist_test
    threat = default_threat_models("digits")[0]
    report = run_cascade(model, images[:200], labels[:200], [threat], seed=0)
    tm = report.threat_models[0]
    assert report.clean_accuracy > 0.97
    assert tm.robust_accuracy <= 0.01
    assert tm.ci_high < 0.05
