"""The reliability checks fire on models that hide their gradients and stay quiet on honest ones."""

from __future__ import annotations

import pytest
import torch

from evaluator.attacks.cascade import run_cascade
from evaluator.attacks.reliability import (
    check_black_box,
    check_eps_growth,
    check_gradients,
    check_random_noise,
    run_reliability_checks,
)
from evaluator.attacks.threat import ThreatModel
from tests.evaluator.attack_models import LinearModel, Quantised, one_thread  # noqa: F401 (autouse fixture)

CHECKS = {"gradients", "eps_monotonic", "eps_large", "black_box", "random_noise"}


class Detached(LinearModel):
    """Returns logits that carry no gradient at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).detach()


class NaNGradient(LinearModel):
    """Honest outputs, but a square root at zero makes every input gradient NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 0.0 * torch.sqrt(x - x.detach()).flatten(1).sum(1, keepdim=True)


def setup(cls: type[LinearModel], seed: int = 0) -> tuple[LinearModel, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weight, bias = torch.randn(10, 64, generator=g), torch.zeros(10)
    x = torch.rand(150, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = LinearModel(weight, bias)(x).argmax(1)  # labels from the honest model: clean accuracy ~100%
    return cls(weight, bias), x, y


@pytest.mark.parametrize(("norm", "eps"), [("Linf", 0.03), ("L2", 0.3)])
def test_an_honest_model_raises_no_flag(norm: str, eps: float) -> None:
    model, x, y = setup(LinearModel)
    report = run_reliability_checks(model, x, y, ThreatModel(norm, eps), subset=150, seed=0)  # type: ignore[arg-type]
    assert {f.check for f in report.flags} == CHECKS
    assert not report.unreliable, [f.explanation for f in report.flags if f.flagged]
    assert report.flag("eps_large").value <= 0.1
    assert report.to_dict()["unreliable"] is False


@pytest.mark.parametrize(("norm", "eps"), [("Linf", 0.03), ("L2", 0.3)])
def test_a_quantised_model_is_flagged_by_every_masking_check(norm: str, eps: float) -> None:
    model, x, y = setup(Quantised)
    report = run_reliability_checks(model, x, y, ThreatModel(norm, eps), subset=150, seed=0)  # type: ignore[arg-type]
    assert report.unreliable
    for check in ("gradients", "eps_large", "black_box", "random_noise"):
        assert report.flag(check).flagged, report.flag(check).explanation
    assert "zero input gradient" in report.flag("gradients").explanation


def test_a_detached_model_is_flagged() -> None:
    model, x, y = setup(Detached)
    report = run_reliability_checks(model, x, y, ThreatModel("Linf", 0.03), subset=100, seed=0)
    assert report.flag("gradients").flagged and report.flag("eps_large").flagged
    assert report.flag("black_box").flagged


def test_nan_gradients_are_flagged() -> None:
    model, x, y = setup(NaNGradient)
    flag = check_gradients(model, x[:20], y[:20])
    assert flag.flagged and "20 a NaN" in flag.explanation
    honest, _, _ = setup(LinearModel)
    assert not check_gradients(honest, x[:20], y[:20]).flagged


def test_black_box_check_reads_the_cascade_square_stage() -> None:
    from evaluator.attacks.cascade import SuiteConfig

    model, x, y = setup(Quantised, seed=1)
    threat = ThreatModel("Linf", 0.03)
    small = SuiteConfig("test-small", apgd_iterations=20, target_classes=3, square_queries=300)
    cascade = run_cascade(model, x, y, [threat], suite=small).threat_models[0]
    report = run_reliability_checks(model, x, y, threat, subset=60, cascade_report=cascade)
    square = next(s for s in cascade.stages if s.attack == "square")
    assert report.flag("black_box").flagged
    assert f"broke {square.broken} of the {square.attacked}" in report.flag("black_box").explanation


def test_check_rules() -> None:
    monotonic, large = check_eps_growth({1.0: 0.5, 2.0: 0.6, 4.0: 0.05})
    assert monotonic.flagged and not large.flagged
    monotonic, large = check_eps_growth({1.0: 0.5, 2.0: 0.49, 4.0: 0.3})
    assert not monotonic.flagged and large.flagged
    assert not check_black_box(500, 1).flagged  # a single point is noise
    assert not check_black_box(500, 20).flagged  # 4% of the survivors
    assert check_black_box(500, 40).flagged
    assert not check_black_box(0, 0).flagged
    robust = torch.ones(100, dtype=torch.bool)
    noise = robust.clone()
    noise[:2] = False
    assert not check_random_noise(robust, noise).flagged
    noise[:10] = False
    assert check_random_noise(robust, noise).flagged
