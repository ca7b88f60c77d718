"""FMN against closed-form answers on linear models, plus its invariants and its cost.

On a linear classifier the smallest perturbation that changes the label has a closed form (see
``test_attacks_apgd.boundary_distance``); the points lie in [0.4, 0.6] so the box does not
bind, and a minimum-norm attack must come within a fraction of a percent of that distance, and
never below it (no image nearer than the boundary can be adversarial).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from evaluator.attacks.common import make_generator
from evaluator.attacks.counting import CountingModel, PassCount
from evaluator.attacks.fmn import cosine_schedule, fmn, fmn_min_norm, fmn_targeted_min_norm
from evaluator.attacks.threat import ThreatModel, contains, lp_norm
from tests.evaluator.attack_models import LinearModel, Quantised, one_thread  # noqa: F401 (autouse fixture)
from tests.evaluator.test_attacks_apgd import linear_problem

TOLERANCE = 0.01  # points within 1% of eps are not judged by the fixed-eps tests


def assert_near_optimal(norms: torch.Tensor, distance: torch.Tensor, within: float) -> None:
    ratio = norms / distance
    assert torch.isfinite(norms).all(), f"{int((~torch.isfinite(norms)).sum())} points without an adversarial"
    assert ratio.min() >= 1 - 1e-4, f"an adversarial image nearer than the boundary: ratio {float(ratio.min())}"
    assert ratio.max() <= 1 + within, f"worst ratio to the closed form {float(ratio.max()):.4f}"


def assert_adversarial(model: nn.Module, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                       norms: torch.Tensor, norm: str) -> None:
    """Every finite norm belongs to a misclassified image in the box at exactly that distance."""
    found = torch.isfinite(norms)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (model(x_adv[found]).argmax(1) != y[found]).all()
    assert torch.allclose(lp_norm(x_adv - x, norm)[found], norms[found])  # type: ignore[arg-type]
    assert torch.equal(x_adv[~found], x[~found])


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_min_norm_matches_the_closed_form_on_a_binary_linear_model(norm: str) -> None:
    model, x, y, _, distance = linear_problem(2, norm, seed=1, n=300)
    result = fmn_min_norm(model, x, y, norm, make_generator(0), steps=100)
    assert_near_optimal(result.norms, distance, within=0.01)
    assert_adversarial(model, result.x_adv, x, y, result.norms, norm)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_targeted_min_norm_matches_the_closed_form_on_ten_classes(norm: str) -> None:
    model, x, y, _, distance = linear_problem(10, norm, seed=2, n=300)
    result = fmn_targeted_min_norm(model, x, y, norm, make_generator(0), n_target_classes=9, steps=50)
    assert_near_optimal(result.norms, distance, within=0.01)
    assert_adversarial(model, result.x_adv, x, y, result.norms, norm)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_untargeted_min_norm_on_ten_classes_is_mostly_optimal(norm: str) -> None:
    """Untargeted FMN follows the runner-up class; where another class's boundary is nearer it
    can settle on the farther one (FMN's blind spot, which the targeted variant closes), but it
    finds an adversarial image for every point, never one nearer than the boundary, and the
    optimum for most points."""
    model, x, y, _, distance = linear_problem(10, norm, seed=2, n=300)
    result = fmn_min_norm(model, x, y, norm, make_generator(0), steps=100)
    assert_near_optimal(result.norms, distance, within=0.5)
    assert (result.norms / distance <= 1.01).float().mean() >= 0.75
    assert_adversarial(model, result.x_adv, x, y, result.norms, norm)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_fmn_at_fixed_eps_breaks_exactly_the_breakable_points(norm: str) -> None:
    model, x, y, threat, distance = linear_problem(10, norm, seed=3, n=300)
    near, far = distance < threat.eps * (1 - TOLERANCE), distance > threat.eps * (1 + TOLERANCE)
    assert near.sum() > 100 and far.sum() > 100
    for options in ({}, {"capped": True}, {"n_target_classes": 9}):
        result = fmn(model, x, y, threat, make_generator(0), steps=100, **options)  # type: ignore[arg-type]
        assert result.fooled[near].all(), f"{options}: {int((~result.fooled[near]).sum())} breakable points survived"
        assert not result.fooled[far].any()
        assert contains(threat, result.x_adv, x).all()
        with torch.no_grad():
            assert (model(result.x_adv).argmax(1)[result.fooled] != y[result.fooled]).all()
        assert torch.equal(result.x_adv[~result.fooled], x[~result.fooled])


@pytest.mark.parametrize(("norm", "eps"), [("Linf", 0.3), ("L2", 1.5)])
def test_images_stay_in_the_box_where_it_binds(norm: str, eps: float) -> None:
    """Black and white pixels make clipping bind; the reported norms are the images' own."""
    g = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, 4))
    x = (torch.rand(40, 1, 6, 6, generator=g) > 0.5).float()
    with torch.no_grad():
        y = model(x).argmax(1)
    result = fmn_min_norm(model, x, y, norm, make_generator(0), steps=30)
    assert torch.isfinite(result.norms).any()
    assert_adversarial(model, result.x_adv, x, y, result.norms, norm)
    threat = ThreatModel(norm, eps)  # type: ignore[arg-type]
    for fixed in (fmn(model, x, y, threat, make_generator(0), steps=30, restarts=2),
                  fmn(model, x, y, threat, make_generator(0), steps=30, capped=True)):
        assert fixed.x_adv.min() >= 0 and fixed.x_adv.max() <= 1
        assert contains(threat, fixed.x_adv, x, atol=1e-6).all()


def test_same_seed_same_result_and_the_global_rng_untouched() -> None:
    model, x, y, threat, _ = linear_problem(10, "L2", seed=4, n=100)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    runs = [fmn(model, x, y, threat, make_generator(7), steps=20, restarts=3) for _ in range(2)]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv) and torch.equal(runs[0].fooled, runs[1].fooled)
    starts = [fmn_min_norm(model, x, y, "Linf", make_generator(7), steps=20, random_start=0.05) for _ in range(2)]
    assert torch.equal(starts[0].x_adv, starts[1].x_adv) and torch.equal(starts[0].norms, starts[1].norms)
    other = fmn_min_norm(model, x, y, "Linf", make_generator(8), steps=20, random_start=0.05)
    assert not torch.equal(other.x_adv, starts[0].x_adv)  # the random start does come from the generator
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()


def test_pass_count_on_unbreakable_points() -> None:
    """Nothing is within eps, so every point runs the whole budget: a forward and a backward per
    step, and one forward for the last iterate."""
    model, x, y, _, distance = linear_problem(3, "L2", seed=4, n=50)
    tiny = ThreatModel("L2", float(distance.min()) / 10)
    counted = CountingModel(model)
    steps = 10
    result = fmn(counted, x, y, tiny, make_generator(0), steps=steps)
    assert not result.fooled.any()
    assert counted.count == PassCount(50 * (steps + 1), 50 * steps)


def test_fooled_points_stop_costing() -> None:
    model, x, y, _, distance = linear_problem(10, "Linf", seed=6, n=200)
    huge = ThreatModel("Linf", float(distance.max()) * 1.5)
    counted = CountingModel(model)
    result = fmn(counted, x, y, huge, make_generator(0), steps=100)
    assert result.fooled.all()
    assert counted.count.forward < 200 * 101 / 10
    # Without stop_at the min-norm attack spends the whole budget on every point.
    counted.reset()
    fmn_min_norm(counted, x, y, "Linf", make_generator(0), steps=100)
    assert counted.count == PassCount(200 * 101, 200 * 100)


def test_model_calls_are_batched() -> None:
    model, x, y, _, _ = linear_problem(2, "L2", seed=7, n=50)
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(int(args[0].shape[0])))
    fmn_min_norm(model, x, y, "L2", make_generator(0), steps=5, batch_size=16)
    assert max(sizes) <= 16


def test_zero_and_missing_gradients_do_not_crash() -> None:
    """A quantised model has zero gradient almost everywhere; a detached one has none at all."""
    model, x, y, threat, _ = linear_problem(3, "Linf", seed=8, n=30)
    quantised = Quantised(model.weight.detach().clone(), model.bias.detach().clone())
    with torch.no_grad():
        yq = quantised(x).argmax(1)

    class Detached(nn.Module):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return model(inputs).detach()

    for net, labels in ((quantised, yq), (Detached(), y)):
        for norm in ("Linf", "L2"):
            result = fmn_min_norm(net, x, labels, norm, make_generator(0), steps=10)
            assert not torch.isnan(result.norms).any() and not torch.isnan(result.x_adv).any()
            fixed = fmn(net, x, labels, ThreatModel(norm, threat.eps), make_generator(0), steps=10)  # type: ignore[arg-type]
            assert contains(ThreatModel(norm, threat.eps), fixed.x_adv, x).all()  # type: ignore[arg-type]


def test_stop_at_and_misclassified_points() -> None:
    model, x, y, threat, distance = linear_problem(2, "L2", seed=9, n=100)
    wrong = 1 - y  # every point already misclassified under these labels: norm 0, at once
    counted = CountingModel(model)
    result = fmn_min_norm(counted, x, wrong, "L2", make_generator(0), steps=50, stop_at=0.0)
    assert torch.equal(result.norms, torch.zeros(100)) and torch.equal(result.x_adv, x)
    assert counted.count == PassCount(100, 100)
    stopped = fmn_min_norm(model, x, y, "L2", make_generator(0), steps=100, stop_at=threat.eps)
    near = distance < threat.eps * (1 - TOLERANCE)
    assert (stopped.norms[near] <= threat.eps).all()


def test_schedule_and_arguments() -> None:
    assert cosine_schedule(1.0, 0.01, 0, 100) == 1.0
    assert math.isclose(cosine_schedule(1.0, 0.01, 100, 100), 0.01)
    assert math.isclose(cosine_schedule(1.0, 0.0, 50, 100), 0.5)
    model, x, y, _, _ = linear_problem(2, "L2", seed=10, n=4)
    with pytest.raises(ValueError, match="L1"):
        fmn_min_norm(model, x, y, "L1", make_generator(0))


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pixels_on_the_box_faces_do_not_stall_the_attack(norm: str) -> None:
    """Half the pixels sit on the face of the box towards which the margin falls (like MNIST's
    black background), so the minimal perturbation only uses the other half: margin over the
    dual norm of the free half of the gradient. Steps that spend their length pushing the
    blocked pixels out of the box are clipped away and can leave points short of the boundary."""
    g = torch.Generator().manual_seed(11)
    u = torch.randn(20, generator=g)
    model = LinearModel(torch.stack([u, torch.zeros(20)]), torch.zeros(2))
    free = 0.4 + 0.2 * torch.rand(200, 10, generator=g)
    # Class 0 wins where u.x > 0; the margin then falls along -u, so a pixel with u_i > 0 is blocked at 0.
    blocked = (u[:10] < 0).float().expand(200, 10)
    x = torch.cat([blocked, free], dim=1)
    with torch.no_grad():
        x[:, 10:] += (0.05 - x @ u).clamp_min(0)[:, None] * u[10:] / u[10:].square().sum()  # margin >= 0.05
        y = model(x).argmax(1)
    assert (y == 0).all()
    gap = x @ u
    tail = u[10:]
    distance = gap / (tail.abs().sum() if norm == "Linf" else tail.norm())
    reach = x[:, 10:] - distance[:, None] * (tail.sign() if norm == "Linf" else tail / tail.norm())
    inside = ((reach >= 0) & (reach <= 1)).all(dim=1)
    assert inside.sum() > 100
    result = fmn_min_norm(model, x, y, norm, make_generator(0), steps=100)
    assert_near_optimal(result.norms[inside], distance[inside], within=0.01)
    assert_adversarial(model, result.x_adv, x, y, result.norms, norm)
