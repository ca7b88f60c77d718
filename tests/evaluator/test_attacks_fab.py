"""FAB-T against answers known independently: closed-form boundary distances of linear models,
and a linear-programming / generic-solver reference for its box-constrained projection.

For a linear classifier FAB's linearisation is exact, so its minimum-norm search must land
on the distance to the nearest decision boundary (the points lie in [0.4, 0.6], where the box
does not bind; see test_attacks_apgd.linear_problem). The projection is where the box does
bind, so it is checked on its own against scipy on small random problems.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

from evaluator.attacks.common import make_generator
from evaluator.attacks.counting import CountingModel, PassCount
from evaluator.attacks.fab import _random_start, fab_targeted, fab_targeted_min_norm, project_onto_hyperplane_in_box
from evaluator.attacks.threat import ThreatModel, contains, lp_norm
from tests.evaluator.attack_models import LinearModel, Quantised, one_thread  # noqa: F401 (autouse fixture)
from tests.evaluator.test_attacks_apgd import boundary_distance, linear_problem

TOLERANCE = 0.01  # points within 1% of eps are not judged


# --------------------------------------------------------------------------- the projection


def _reference_linf(point: np.ndarray, w: np.ndarray, r: float) -> float | None:
    """min t s.t. |delta_k| <= t, w . delta = r, 0 <= point + delta <= 1, as a linear program
    over (delta, t); None where the plane is out of the box's reach."""
    d = point.size
    cost = np.zeros(d + 1)
    cost[-1] = 1.0
    # delta_k - t <= 0 and -delta_k - t <= 0
    upper = np.zeros((2 * d, d + 1))
    upper[:d, :d], upper[d:, :d] = np.eye(d), -np.eye(d)
    upper[:, -1] = -1.0
    equal = np.concatenate([w, [0.0]])[None, :]
    bounds = [(-p, 1 - p) for p in point] + [(0, None)]
    result = linprog(cost, A_ub=upper, b_ub=np.zeros(2 * d), A_eq=equal, b_eq=[r], bounds=bounds, method="highs")
    return float(result.x[-1]) if result.status == 0 else None


def _reference_l2(point: np.ndarray, w: np.ndarray, r: float) -> float:
    """min ||delta||_2 s.t. w . delta = r, 0 <= point + delta <= 1, by a generic constrained solver."""
    result = minimize(
        lambda v: float(v @ v), np.zeros_like(point), jac=lambda v: 2 * v, method="SLSQP",
        bounds=list(zip(-point, 1 - point, strict=True)),
        constraints=[{"type": "eq", "fun": lambda v: float(w @ v - r), "jac": lambda v: w}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert result.success, result.message
    return float(np.sqrt(result.fun))


def _projection_problems(seed: int, n: int = 60, d: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random points (some on the box's faces), weights (some zero) and targets, many of them
    far enough that the box binds on several coordinates, a few beyond its reach."""
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(n, d, generator=g, dtype=torch.float64)
    points[torch.rand(n, d, generator=g) < 0.15] = 0.0
    points[torch.rand(n, d, generator=g) < 0.15] = 1.0
    w = torch.randn(n, d, generator=g, dtype=torch.float64)
    w[torch.rand(n, d, generator=g) < 0.15] = 0.0
    reach_up = (w.clamp_min(0) * (1 - points) - w.clamp_max(0) * points).sum(dim=1)
    reach_down = (w.clamp_min(0) * points - w.clamp_max(0) * (1 - points)).sum(dim=1)
    fraction = torch.rand(n, generator=g, dtype=torch.float64) * 1.2  # above 1: out of reach
    up = torch.rand(n, generator=g) < 0.5
    r = torch.where(up, fraction * reach_up, -fraction * reach_down)
    return points, w, r


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_projection_matches_an_independent_solver_where_the_box_binds(norm: str) -> None:
    points, w, r = _projection_problems(seed=3 if norm == "Linf" else 4)
    delta = project_onto_hyperplane_in_box(points, w, r, norm)
    assert ((points + delta >= -1e-12) & (points + delta <= 1 + 1e-12)).all()
    ours = lp_norm(delta, norm)  # type: ignore[arg-type]
    binding, unreachable = 0, 0
    for i in range(points.shape[0]):
        p, wi, ri = points[i].numpy(), w[i].numpy(), float(r[i])
        reachable = _reference_linf(p, wi, ri) is not None
        if not reachable:
            # Out of reach: the box corner that moves furthest towards the plane.
            unreachable += 1
            toward = w[i].sign() * np.sign(ri)  # which way each coordinate helps
            corner = torch.where(toward > 0, 1 - points[i], torch.where(toward < 0, -points[i], 0.0))
            torch.testing.assert_close(delta[i], corner, atol=1e-9, rtol=0)
            continue
        assert abs(float(w[i] @ delta[i]) - ri) <= 1e-9 * max(1.0, abs(ri)), i
        expected = _reference_linf(p, wi, ri) if norm == "Linf" else _reference_l2(p, wi, ri)
        assert expected is not None
        assert float(ours[i]) == pytest.approx(expected, rel=1e-5, abs=1e-8), i
        touches = ((points[i] + delta[i] <= 1e-12) | (points[i] + delta[i] >= 1 - 1e-12)) & (delta[i] != 0)
        binding += int(bool(touches.any()))
    assert binding >= 10 and unreachable >= 3  # the box really bound, and some planes were out of reach


def test_projection_of_a_zero_gradient_is_no_step() -> None:
    points = torch.full((3, 5), 0.5)
    delta = project_onto_hyperplane_in_box(points, torch.zeros(3, 5), torch.tensor([1.0, -2.0, 0.0]), "L2")
    assert (delta == 0).all()
    delta = project_onto_hyperplane_in_box(points, torch.zeros(3, 5), torch.tensor([1.0, float("nan"), 0.0]), "Linf")
    assert (delta == 0).all()


def test_projection_without_the_box_is_the_closed_form() -> None:
    """Far from the box's faces: r w / ||w||^2 for L2, r sign(w) / ||w||_1 for Linf."""
    g = torch.Generator().manual_seed(0)
    points = 0.5 + 0.01 * torch.rand(20, 30, generator=g, dtype=torch.float64)
    w = torch.randn(20, 30, generator=g, dtype=torch.float64)
    r = 0.01 * torch.randn(20, generator=g, dtype=torch.float64)
    l2 = project_onto_hyperplane_in_box(points, w, r, "L2")
    torch.testing.assert_close(l2, r[:, None] * w / (w * w).sum(dim=1, keepdim=True))
    linf = project_onto_hyperplane_in_box(points, w, r, "Linf")
    torch.testing.assert_close(linf, r[:, None] * w.sign() / w.abs().sum(dim=1, keepdim=True))


# --------------------------------------------------------------------------- linear models


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_min_norm_matches_the_nearest_boundary_on_ten_classes(norm: str) -> None:
    model, x, y, _threat, distance = linear_problem(10, norm, seed=7, n=150)
    result = fab_targeted_min_norm(model, x, y, norm, make_generator(0), n_iter=30)
    assert torch.isfinite(result.norms).all()
    # Nothing adversarial is nearer than the nearest boundary, and FAB gets within 1% of it.
    assert (result.norms >= distance * (1 - 1e-4)).all()
    assert (result.norms <= distance * (1 + TOLERANCE)).all(), float((result.norms / distance).max())
    with torch.no_grad():
        assert (model(result.x_adv).argmax(dim=1) != y).all()
    torch.testing.assert_close(lp_norm(result.x_adv - x, norm), result.norms)  # type: ignore[arg-type]


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_one_target_finds_that_targets_boundary(norm: str) -> None:
    """Towards the most likely wrong class only: no farther than that class's boundary (another
    class may take over on the way, which can only be nearer), never nearer than the nearest.
    Class weights of very different sizes make the most likely class often not the nearest."""
    g = torch.Generator().manual_seed(8)
    scales = torch.tensor([0.2, 0.5, 1.0, 2.0, 4.0, 8.0])[:, None]
    model = LinearModel(torch.randn(6, 20, generator=g) * scales, 0.3 * torch.randn(6, generator=g))
    x = 0.4 + 0.2 * torch.rand(300, 1, 4, 5, generator=g)
    with torch.no_grad():
        z = model(x)
        y = z.argmax(dim=1)
        target = z.scatter(1, y[:, None], -torch.inf).argmax(dim=1)
        gap = z.gather(1, y[:, None]).squeeze(1) - z.gather(1, target[:, None]).squeeze(1)
        u = model.weight[y] - model.weight[target]
        to_target = gap / (u.abs().sum(dim=1) if norm == "Linf" else u.norm(dim=1))
    nearest, _ = boundary_distance(model, x, y, norm)
    judged = to_target < 0.4  # no coordinate moves more than 0.4 from [0.4, 0.6]: the box cannot bind
    assert judged.sum() > 100 and (to_target[judged] > nearest[judged] * 1.05).sum() > 10  # the two differ
    result = fab_targeted_min_norm(model, x, y, norm, make_generator(0), n_target_classes=1, n_iter=30)
    assert (result.norms[judged] <= to_target[judged] * (1 + TOLERANCE)).all()
    assert (result.norms >= nearest * (1 - 1e-4)).all()


@pytest.mark.parametrize("norm,seed", [("Linf", 1), ("L2", 2)])
def test_fab_targeted_breaks_exactly_the_points_within_eps(norm: str, seed: int) -> None:
    model, x, y, threat, distance = linear_problem(10, norm, seed=seed, n=200)
    result = fab_targeted(model, x, y, threat, make_generator(0), n_iter=30)
    near, far = distance < threat.eps * (1 - TOLERANCE), distance > threat.eps * (1 + TOLERANCE)
    assert near.sum() > 60 and far.sum() > 60
    assert result.fooled[near].all(), f"{int((~result.fooled[near]).sum())} breakable points survived"
    assert not result.fooled[far].any()
    assert contains(threat, result.x_adv, x).all()  # every image, fooled or not, is in the threat model
    with torch.no_grad():
        assert (model(result.x_adv).argmax(dim=1)[result.fooled] != y[result.fooled]).all()


def test_the_box_is_respected_where_it_binds() -> None:
    """Points near the box's corner, a large radius: images stay in [0, 1] and in the ball."""
    model, x, y, _threat, _distance = linear_problem(4, "L2", seed=5, n=100)
    x = (x - 0.4) * 0.2  # in [0, 0.04]: one side of the box is right there
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    threat = ThreatModel("L2", 3.0)
    result = fab_targeted(model, x, y, threat, make_generator(0), n_iter=30)
    assert result.fooled.float().mean() > 0.5
    assert contains(threat, result.x_adv, x, atol=0).all()


def test_already_misclassified_points_cost_nothing_and_have_norm_zero() -> None:
    model, x, y, _threat, _distance = linear_problem(3, "Linf", seed=9, n=20)
    wrong = (y + 1) % 3
    counted = CountingModel(model)
    result = fab_targeted_min_norm(counted, x, wrong, "Linf", make_generator(0), n_iter=5)
    assert (result.norms == 0).all() and torch.equal(result.x_adv, x)
    assert counted.count == PassCount(20, 0)


# --------------------------------------------------------------------------- invariants and cost


def test_same_seed_same_result_and_the_global_rng_untouched() -> None:
    model, x, y, _threat, _distance = linear_problem(5, "L2", seed=10, n=60)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = fab_targeted_min_norm(model, x, y, "L2", make_generator(4), n_iter=10, n_restarts=3, eps=0.5)
    second = fab_targeted_min_norm(model, x, y, "L2", make_generator(4), n_iter=10, n_restarts=3, eps=0.5)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first.x_adv, second.x_adv) and torch.equal(first.norms, second.norms)


def test_random_restarts_start_on_the_half_radius_sphere() -> None:
    x = torch.full((4, 1, 3, 3), 0.5)
    radius = torch.tensor([0.1, 0.2, 0.0, 0.05])
    for norm in ("Linf", "L2"):
        start = _random_start(x, norm, radius, make_generator(1))
        torch.testing.assert_close(lp_norm(start - x, norm), radius)  # type: ignore[arg-type]


@pytest.mark.parametrize("entry", ["min_norm", "threat"])
def test_pass_count_on_unbreakable_points(entry: str) -> None:
    """Nothing within reach (a tiny stop_at / eps and few iterations): one clean forward, then
    per target and restart a forward and backward per iteration, and a forward for the last
    iterate. No confirmation pass, since nothing was claimed."""
    model, x, y, _threat, distance = linear_problem(3, "Linf", seed=11, n=40)
    counted = CountingModel(model)
    k, iterations, restarts, targets = 40, 3, 2, 2
    tiny = float(distance.min()) / 100
    if entry == "min_norm":
        result = fab_targeted_min_norm(counted, x, y, "Linf", make_generator(0), n_iter=iterations,
                                       n_restarts=restarts, eps=tiny, stop_at=tiny)
        assert (result.norms > tiny).all()
    else:
        fooled = fab_targeted(counted, x, y, ThreatModel("Linf", tiny), make_generator(0), n_iter=iterations,
                              n_restarts=restarts).fooled
        assert not fooled.any()
    runs = targets * restarts
    assert counted.count == PassCount(k + runs * k * (iterations + 1), runs * k * iterations)


def test_fooled_points_stop_costing() -> None:
    model, x, y, _threat, _distance = linear_problem(10, "L2", seed=6, n=100)
    counted = CountingModel(model)
    result = fab_targeted(counted, x, y, ThreatModel("L2", 5.0), make_generator(0))
    assert result.fooled.all()
    # A linear model is crossed at the first step (overshoot 1.05): the clean forward, the
    # gradient at the start, the check of the first iterate (whose gradient is spent before its
    # logits say it is done), and the confirming forward; not 9 targets x 100 iterations.
    assert counted.count == PassCount(100 * 4, 100 * 2)


def test_a_zero_gradient_makes_no_progress_and_no_error() -> None:
    model, x, y, _threat, _distance = linear_problem(3, "L2", seed=12, n=30)
    quantised = Quantised(model.weight.detach().clone(), model.bias.detach().clone())
    with torch.no_grad():
        y = quantised(x).argmax(dim=1)
    result = fab_targeted_min_norm(quantised, x, y, "L2", make_generator(0), n_iter=5, n_restarts=2, eps=0.3)
    assert not torch.isnan(result.x_adv).any()
    assert torch.equal(result.x_adv[torch.isinf(result.norms)], x[torch.isinf(result.norms)])


def test_unknown_norm_is_refused() -> None:
    model, x, y, _threat, _distance = linear_problem(3, "L2", seed=13, n=4)
    with pytest.raises(ValueError, match="unknown norm"):
        fab_targeted_min_norm(model, x, y, "L1", make_generator(0))
