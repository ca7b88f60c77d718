"""The Square attack: breaks a linear model from scores alone, never leaves the threat model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evaluator.attacks.common import make_generator
from evaluator.attacks.counting import CountingModel
from evaluator.attacks.square import _l2_update_pattern, _ring_pattern, p_schedule, square_attack
from evaluator.attacks.threat import ThreatModel, contains, dual_norm
from tests.evaluator.attack_models import LinearModel, one_thread  # noqa: F401 (autouse fixture)


class NoGradientLinear(LinearModel):
    """A linear classifier whose outputs carry no gradient: only scores are observable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return super().forward(x)


def problem(norm: str, seed: int = 0, n: int = 60) -> tuple[NoGradientLinear, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Weights constant on 2 x 2 blocks, like the spatially smooth gradients of image models.
    coarse = torch.randn(2, 3, 4, 4, generator=g)
    weight = coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).flatten(1)
    model = NoGradientLinear(weight, torch.zeros(2))
    x = 0.3 + 0.4 * torch.rand(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    w = model.weight
    gap = (logits[:, 0] - logits[:, 1]).abs()
    distance = gap / dual_norm((w[0] - w[1])[None], norm).item()  # type: ignore[arg-type]
    return model, x, y, distance


@pytest.mark.parametrize(("norm", "queries"), [("Linf", 300), ("L2", 1000)])
def test_square_breaks_a_linear_model_without_gradients(norm: str, queries: int) -> None:
    model, x, y, distance = problem(norm, n=160)
    # Points well inside the breakable region (a score-based search is not exact at the boundary)
    # must be broken, and points beyond eps (which no valid attack can break) must not be.
    eps = float(distance.quantile(0.7))
    threat = ThreatModel(norm, eps)  # type: ignore[arg-type]
    counted = CountingModel(model)
    result = square_attack(counted, x, y, threat, make_generator(0), n_queries=queries)
    easy, far = distance < 0.5 * eps, distance > eps * 1.001
    assert easy.sum() >= 10 and far.sum() >= 10
    assert result.fooled[easy].all()
    assert not result.fooled[far].any()
    assert counted.count.backward == 0
    assert counted.count.forward <= x.shape[0] * queries
    assert contains(threat, result.x_adv, x).all()
    with torch.no_grad():
        assert (model(result.x_adv).argmax(1)[result.fooled] != y[result.fooled]).all()


@pytest.mark.parametrize(("norm", "eps"), [("Linf", 0.4), ("L2", 3.0)])
def test_square_stays_in_ball_and_box(norm: str, eps: float) -> None:
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 10 * 10, 5))
    x = (torch.rand(20, 3, 10, 10, generator=g) > 0.5).float()  # pixels on the box's faces
    with torch.no_grad():
        y = model(x).argmax(1)
    threat = ThreatModel(norm, eps)  # type: ignore[arg-type]
    result = square_attack(model, x, y, threat, make_generator(0), n_queries=50)
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert contains(threat, result.x_adv, x, atol=1e-6).all()


def test_square_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    model, x, y, distance = problem("L2", seed=2, n=20)
    threat = ThreatModel("L2", float(distance.median()))
    state = torch.get_rng_state()
    a = square_attack(model, x, y, threat, make_generator(4), n_queries=100)
    b = square_attack(model, x, y, threat, make_generator(4), n_queries=100)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.fooled, b.fooled)
    assert torch.equal(torch.get_rng_state(), state)


def test_query_budget_is_per_image_and_counts_the_first_query() -> None:
    model, x, y, distance = problem("Linf", seed=3, n=10)
    tiny = ThreatModel("Linf", float(distance.min()) / 100)  # nothing can be broken
    counted = CountingModel(model)
    result = square_attack(counted, x, y, tiny, make_generator(0), n_queries=25)
    assert not result.fooled.any()
    assert counted.count.forward == 10 * 25


def test_schedule_and_l2_patterns() -> None:
    assert p_schedule(0, 0.8, 5000, rescale=False) == 0.8
    assert p_schedule(11, 0.8, 5000, rescale=False) == 0.4
    assert p_schedule(4500, 0.8, 5000, rescale=False) == pytest.approx(0.8 / 128)
    assert p_schedule(2500, 0.8, 5000, rescale=True) == pytest.approx(0.8 / 128)  # as 5,000 of 10,000
    ring = _ring_pattern(5, 5, torch.device("cpu"))
    assert ring[2, 2] == ring.max() and ring[0, 0] == ring.min() and torch.equal(ring, ring.t())
    pattern = _l2_update_pattern(7, torch.device("cpu"))
    assert pattern.norm().item() == pytest.approx(1.0)
    assert pattern[:3].min() > 0 and pattern[3:].max() < 0


def test_stall_checks_stop_hopeless_points_and_keep_easy_ones() -> None:
    """attacks-3's early stop: survivors whose margin cannot reach zero stop costing queries; easy points still
    break; without checks (attacks-1, attacks-2) the attack is exactly as before."""
    model, x, y, distance = problem("Linf", seed=5, n=40)
    threat = ThreatModel("Linf", float(distance.quantile(0.5)))
    plain = square_attack(model, x, y, threat, make_generator(3), n_queries=400)
    unchecked = square_attack(model, x, y, threat, make_generator(3), n_queries=400, stall_checks=())
    assert torch.equal(plain.x_adv, unchecked.x_adv) and torch.equal(plain.fooled, unchecked.fooled)

    counted = CountingModel(model)
    checked = square_attack(counted, x, y, threat, make_generator(3), n_queries=400, stall_checks=(50, 100, 200))
    far = distance > threat.eps * 1.001  # no valid attack breaks these
    assert far.sum() >= 10 and not checked.fooled[far].any()
    assert checked.fooled[distance < 0.5 * threat.eps].all()
    # Fewer queries than the plain run's, which spends all 400 on every unbroken point.
    plain_counted = CountingModel(model)
    square_attack(plain_counted, x, y, threat, make_generator(3), n_queries=400)
    assert counted.count.forward < plain_counted.count.forward


def test_attacks_3_is_registered_beside_attacks_2() -> None:
    from evaluator.attacks.suites import get_suite

    second, third = get_suite("attacks-2"), get_suite("attacks-3")
    assert second.square_stall_checks == () and second.target_classes == 9 and second.min_norm_targets == 9
    assert third.square_stall_checks == (500, 1000, 2000, 3000, 4000) and third.square_stall_slack == 2.0
    assert third.target_classes == 3 and third.min_norm_targets == 3 and third.square_queries == 5000
