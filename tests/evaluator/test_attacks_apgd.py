"""APGD against closed-form answers on linear models, plus its invariants and its cost.

For a linear classifier z = W x + b, the smallest perturbation in norm p that makes class j
overtake the label y has size (z_y - z_j) / ||w_y - w_j||_q with q the dual norm (L1 for Linf,
L2 for L2), as long as the box [0, 1] does not bind. The points are drawn in [0.4, 0.6] and
eps is small enough that it never does, so a point is breakable exactly when its distance
min_j d_j is below eps. Points farther than eps must stay robust (whatever the attack does, if
its projection is right); points nearer must be broken.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from evaluator.attacks.apgd import apgd, apgd_ce, apgd_targeted, checkpoints, halve_step
from evaluator.attacks.common import make_generator
from evaluator.attacks.counting import CountingModel, PassCount
from evaluator.attacks.threat import ThreatModel, contains, dual_norm
from tests.evaluator.attack_models import LinearModel, one_thread  # noqa: F401 (autouse fixture)

TOLERANCE = 0.01  # points within 1% of the boundary distance are not judged


def boundary_distance(model: LinearModel, x: torch.Tensor, y: torch.Tensor, norm: str) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """Closed-form distance of each point to the nearest decision boundary (ignoring the box),
    and the optimal perturbation that reaches it."""
    with torch.no_grad():
        z = model(x)
        w = model.weight
        distance = torch.full((x.shape[0],), float("inf"))
        nearest = torch.zeros_like(y)
        for j in range(w.shape[0]):
            gap = z.gather(1, y[:, None]).squeeze(1) - z[:, j]
            d_j = gap / dual_norm(w[y] - w[j], norm).clamp_min(1e-12)  # type: ignore[arg-type]
            d_j = torch.where(y == j, torch.inf, d_j)
            nearest = torch.where(d_j < distance, j, nearest)
            distance = torch.minimum(distance, d_j)
        u = w[y] - w[nearest]
        if norm == "Linf":
            optimal = -distance[:, None] * u.sign()
        else:
            optimal = -distance[:, None] * u / u.norm(dim=1, keepdim=True)
    return distance, optimal.view_as(x)


def linear_problem(classes: int, norm: str, seed: int, n: int = 600) -> tuple[LinearModel, torch.Tensor, torch.Tensor,
                                                                              ThreatModel, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = LinearModel(torch.randn(classes, 20, generator=g), 0.5 * torch.randn(classes, generator=g))
    x = 0.4 + 0.2 * torch.rand(n, 1, 4, 5, generator=g)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    distance, optimal = boundary_distance(model, x, y, norm)
    eps = float(distance.median())  # half the points breakable, half not
    threat = ThreatModel(norm, eps)  # type: ignore[arg-type]
    # The box never binds: every breakable point's optimal adversarial image lies inside [0, 1],
    # so the closed form is the true minimal distance of the box-constrained problem.
    reach = x + optimal
    breakable = distance <= eps * 1.1
    assert ((reach >= 0) & (reach <= 1)).flatten(1).all(dim=1)[breakable].all()
    return model, x, y, threat, distance


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_apgd_ce_matches_the_closed_form_on_a_binary_linear_model(norm: str) -> None:
    model, x, y, threat, distance = linear_problem(2, norm, seed=1)
    result = apgd_ce(model, x, y, threat, make_generator(0), n_iter=100)
    near, far = distance < threat.eps * (1 - TOLERANCE), distance > threat.eps * (1 + TOLERANCE)
    assert near.sum() > 200 and far.sum() > 200
    assert result.fooled[near].all(), f"{int((~result.fooled[near]).sum())} breakable points survived"
    assert not result.fooled[far].any()
    assert contains(threat, result.x_adv, x).all()
    with torch.no_grad():
        assert (model(result.x_adv).argmax(1)[result.fooled] != y[result.fooled]).all()


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_apgd_ce_then_targeted_match_the_closed_form_on_ten_classes(norm: str) -> None:
    """Cross-entropy alone can peak without a misclassification on multi-class models (the
    reason AutoAttack adds APGD-T); the two together must break every breakable point."""
    model, x, y, threat, distance = linear_problem(10, norm, seed=2)
    ce = apgd_ce(model, x, y, threat, make_generator(0))
    rest = (~ce.fooled).nonzero().squeeze(1)
    targeted = apgd_targeted(model, x[rest], y[rest], threat, make_generator(1))
    fooled = ce.fooled.clone()
    fooled[rest[targeted.fooled]] = True
    near, far = distance < threat.eps * (1 - TOLERANCE), distance > threat.eps * (1 + TOLERANCE)
    assert fooled[near].all(), f"{int((~fooled[near]).sum())} breakable points survived"
    assert not fooled[far].any()
    assert contains(threat, targeted.x_adv, x[rest]).all()


@pytest.mark.parametrize(("norm", "eps"), [("Linf", 0.3), ("L2", 1.5)])
def test_adversarial_images_stay_in_ball_and_box(norm: str, eps: float) -> None:
    """Images on the box's faces (black and white pixels) and a large eps make clipping bind."""
    g = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, 4))
    x = (torch.rand(40, 1, 6, 6, generator=g) > 0.5).float()
    with torch.no_grad():
        y = model(x).argmax(1)
    threat = ThreatModel(norm, eps)  # type: ignore[arg-type]
    for result in (
        apgd_ce(model, x, y, threat, make_generator(0), n_iter=20),
        apgd(model, x, y, threat, make_generator(0), loss="dlr", n_iter=20),
        apgd_targeted(model, x, y, threat, make_generator(0), n_iter=20, n_target_classes=3),
    ):
        assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
        assert contains(threat, result.x_adv, x, atol=1e-6).all()


def test_same_seed_same_result_and_the_global_rng_untouched() -> None:
    model, x, y, threat, _ = linear_problem(10, "Linf", seed=3, n=200)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    a = apgd_ce(model, x, y, threat, make_generator(7), n_iter=30)
    b = apgd_ce(model, x, y, threat, make_generator(7), n_iter=30)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.fooled, b.fooled)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()


def test_checkpoints_follow_the_paper() -> None:
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10)[0] == 3


def test_pass_count_on_unbreakable_points() -> None:
    """Nothing can be broken (eps far below every distance), so the cost is the full budget:
    a forward and backward at the start, then per iteration a forward, and a backward except
    after the last iteration, whose gradient would never be used."""
    model, x, y, threat, distance = linear_problem(3, "L2", seed=4, n=50)
    tiny = ThreatModel("L2", float(distance.min()) / 10)
    counted = CountingModel(model)
    k, iterations = 50, 10
    result = apgd_ce(counted, x, y, tiny, make_generator(0), n_iter=iterations)
    assert not result.fooled.any()
    assert counted.count == PassCount(k * (iterations + 1), k * iterations)

    counted.reset()
    apgd_targeted(counted, x, y, tiny, make_generator(0), n_iter=iterations)
    targets = 2  # three classes: two wrong ones
    assert counted.count == PassCount(k + targets * k * (iterations + 1), targets * k * iterations)


def test_fooled_points_stop_costing() -> None:
    model, x, y, threat, distance = linear_problem(2, "Linf", seed=6, n=200)
    huge = ThreatModel("Linf", 0.35)  # breaks almost everything within a few steps
    counted = CountingModel(model)
    result = apgd_ce(counted, x, y, huge, make_generator(0))
    assert result.fooled.float().mean() > 0.95
    assert counted.count.forward < 200 * 101 / 10


def test_step_halving_follows_the_reference_and_attacks_1_keeps_its_variant() -> None:
    """At 100 iterations the third window has 16 steps: 0.75 * 16 = 12 increases sit exactly on the line.
    The reference halves there (<=); attacks-1 did not (<). Fewer always halve, more never do; a point
    whose step was kept last time and whose best loss did not improve halves whatever its count."""
    increases = torch.tensor([11.0, 12.0, 13.0, 13.0])
    kept_before = torch.tensor([False, False, False, False])
    best_then, best_now = torch.tensor([1.0, 1.0, 1.0, 2.0]), torch.tensor([2.0, 2.0, 2.0, 2.0])
    assert checkpoints(100)[2] - checkpoints(100)[1] == 16
    reference = halve_step(increases, 16, 0.75, kept_before, best_then, best_now, reference_schedule=True)
    variant = halve_step(increases, 16, 0.75, kept_before, best_then, best_now, reference_schedule=False)
    assert reference.tolist() == [True, True, False, True]
    assert variant.tolist() == [True, False, False, True]
    # A point halved at the last checkpoint is not halved again for a flat best loss alone.
    halved_before = torch.tensor([True, True, True, True])
    assert halve_step(increases, 16, 0.75, halved_before, best_then, best_now).tolist() == [True, True, False, False]

