"""Threat models, projection and the pass counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evaluator.attacks.counting import CountingModel, PassCount, as_counting
from evaluator.attacks.threat import (
    ThreatModel,
    contains,
    default_threat_models,
    dual_norm,
    lp_norm,
    project,
    random_in_ball,
    steepest_direction,
)


def test_track_defaults() -> None:
    assert default_threat_models("digits") == (ThreatModel("Linf", 0.3), ThreatModel("L2", 2.0))
    assert default_threat_models("cifar10") == (ThreatModel("Linf", 8 / 255), ThreatModel("L2", 0.5))
    with pytest.raises(ValueError, match="known"):
        default_threat_models("imagenet-x")


@pytest.mark.parametrize(("norm", "eps"), [("L1", 1.0), ("Linf", 0.0), ("L2", -1.0)])
def test_invalid_threat_models_are_refused(norm: str, eps: float) -> None:
    with pytest.raises(ValueError):
        ThreatModel(norm, eps)  # type: ignore[arg-type]


@pytest.mark.parametrize(("norm", "eps"), [("Linf", 0.1), ("L2", 0.7)])
def test_projection_lands_in_ball_and_box(norm: str, eps: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 5, 5, generator=g)
    x[:8] = 0.0  # images on the box's faces, where clipping binds
    x[8:16] = 1.0
    wild = x + 3.0 * torch.randn(x.shape, generator=g)
    projected = project(wild, x, norm, eps)  # type: ignore[arg-type]
    assert projected.min() >= 0.0 and projected.max() <= 1.0
    assert (lp_norm(projected - x, norm) <= eps * (1 + 1e-5)).all()  # type: ignore[arg-type]
    # Projection is idempotent and leaves points inside the set alone.
    assert torch.allclose(project(projected, x, norm, eps), projected, atol=1e-6)  # type: ignore[arg-type]
    inside = x + 0.01 * eps * torch.sign(torch.randn(x.shape, generator=g)) / (x[0].numel() ** 0.5)
    inside = inside.clamp(0, 1)
    assert torch.allclose(project(inside, x, norm, eps), inside)  # type: ignore[arg-type]


def test_linf_projection_is_the_nearest_point() -> None:
    x = torch.tensor([[0.5, 0.95, 0.02]])
    assert torch.allclose(project(torch.tensor([[0.9, 1.4, -0.5]]), x, "Linf", 0.1), torch.tensor([[0.6, 1.0, 0.0]]))


def test_norm_helpers() -> None:
    v = torch.tensor([[3.0, -4.0]])
    assert lp_norm(v, "L2").item() == pytest.approx(5.0)
    assert lp_norm(v, "Linf").item() == pytest.approx(4.0)
    assert dual_norm(v, "Linf").item() == pytest.approx(7.0)  # L1 is the dual of Linf
    assert torch.allclose(steepest_direction(v, "Linf"), torch.tensor([[1.0, -1.0]]))
    assert lp_norm(steepest_direction(v, "L2"), "L2").item() == pytest.approx(1.0)


@pytest.mark.parametrize(("norm", "eps"), [("Linf", 0.2), ("L2", 1.0)])
def test_random_start_is_seeded_and_feasible(norm: str, eps: float) -> None:
    x = torch.rand(10, 1, 6, 6)
    state = torch.get_rng_state()
    a = random_in_ball(x, norm, eps, torch.Generator().manual_seed(3))  # type: ignore[arg-type]
    b = random_in_ball(x, norm, eps, torch.Generator().manual_seed(3))  # type: ignore[arg-type]
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)
    assert contains(ThreatModel(norm, eps), a, x).all()  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pass counting


def test_counter_matches_a_hand_count() -> None:
    model = CountingModel(nn.Linear(4, 3))
    x = torch.rand(5, 4)
    with torch.no_grad():
        model(x)
    assert model.count == PassCount(5, 0)

    model(x[:2])  # under autograd but never differentiated: a forward only
    assert model.count == PassCount(7, 0)

    xg = x[:3].clone().requires_grad_(True)
    out = model(xg)
    torch.autograd.grad(out.sum(), [xg], retain_graph=True)
    assert model.count == PassCount(10, 3)
    out.sum().backward()  # a second backward through the same outputs costs again
    assert model.count == PassCount(10, 6)

    model.reset()
    assert model.count == PassCount(0, 0)
    assert as_counting(model) is model
    assert PassCount(3, 2) + PassCount(1, 1) - PassCount(2, 0) == PassCount(2, 3)
    assert PassCount(3, 2).total == 5


def test_counter_sees_no_backward_through_a_detached_model() -> None:
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).detach()

    model = CountingModel(Detached())
    out = model(torch.rand(4, 4, requires_grad=True))
    assert not out.requires_grad
    assert model.count == PassCount(4, 0)
