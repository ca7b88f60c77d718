"""The reliability checks fire on models that hide their gradients and stay quiet on honest ones."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from evaluator.attacks import reliability
from evaluator.attacks.apgd import apgd_ce
from evaluator.attacks.cascade import SUITES, SuiteConfig, ThreatModelOutcome, attack_threat_model, run_cascade
from evaluator.attacks.common import make_generator, predict_logits
from evaluator.attacks.counting import CountingModel
from evaluator.attacks.reliability import (
    check_black_box,
    check_eps_growth,
    check_gradients,
    check_random_noise,
    run_reliability_checks,
)
from evaluator.attacks.threat import ThreatModel
from evaluator.scoring.budget import passes_per_point
from tests.evaluator.attack_models import LinearModel, Quantised, one_thread  # noqa: F401 (autouse fixture)
from tests.evaluator.test_attacks_cascade import boundary_distance

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


REUSE = SuiteConfig("test-reuse", apgd_iterations=20, target_classes=3, fmn_steps=10, min_norm_iterations=10,
                    min_norm_targets=3, square_queries=300, escalation=(), reliability_reuses_white_box=True)


def _cascade_and_checks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                        monkeypatch: pytest.MonkeyPatch, reuse: bool) -> tuple[ThreatModelOutcome, object, list, int]:
    """The cascade's outcome, then the checks on its first 100 points (reading its verdict or not): the checks'
    report, the eps multiples and APGD-T runs they attacked themselves, and the passes they spent."""
    outcome = attack_threat_model(model, x, y, predict_logits(model, x, 256).argmax(1) == y, threat, suite=REUSE)
    runs: list[str] = []
    own_apgd, own_targeted = reliability._apgd_robust, reliability.apgd_targeted

    def apgd_at(model: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor, scaled: ThreatModel, *args: object):
        runs.append(f"apgd-ce {scaled.eps / threat.eps:g}x")
        return own_apgd(model, xs, ys, scaled, *args)

    def targeted(*args: object, **kwargs: object):
        runs.append("apgd-t")
        return own_targeted(*args, **kwargs)

    monkeypatch.setattr(reliability, "_apgd_robust", apgd_at)
    monkeypatch.setattr(reliability, "apgd_targeted", targeted)
    counted = CountingModel(model)
    report = run_reliability_checks(counted, x, y, threat, subset=100, seed=0, apgd_iterations=20,
                                    cascade_report=outcome.report, cascade_points=outcome if reuse else None)
    monkeypatch.undo()
    return outcome, report, runs, counted.forward_passes + counted.backward_passes


@pytest.mark.parametrize(("norm", "eps"), [("Linf", 0.03), ("L2", 0.3)])
def test_the_checks_read_the_cascades_white_box_verdict_instead_of_attacking_again(
    norm: str, eps: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x, y = setup(LinearModel)
    threat = ThreatModel(norm, eps)  # type: ignore[arg-type]
    outcome, reused, runs, passes = _cascade_and_checks(model, x, y, threat, monkeypatch, reuse=True)
    _, own, own_runs, own_passes = _cascade_and_checks(model, x, y, threat, monkeypatch, reuse=False)
    # Only the other multiples of eps are attacked again; at eps the cascade's APGD-CE and APGD-T are the verdict.
    assert runs == ["apgd-ce 2x", "apgd-ce 4x"]
    assert own_runs == ["apgd-ce 1x", "apgd-ce 2x", "apgd-ce 4x", "apgd-t"]
    after_ce = int(outcome.robust_after(("apgd-ce",))[:100].sum())
    assert f"{after_ce / 100:.1%} at 1x eps" in reused.flag("eps_monotonic").explanation
    # The verdict read is right in closed form: every point of the linear model beyond eps survives, and every
    # point within 0.95 eps falls (nearer eps, 20 iterations can stop just short, and the [0, 1] box, which the
    # closed form ignores, can put a point's real distance past eps).
    distance = boundary_distance(model, x[:100], y[:100], norm)
    white_box = outcome.robust_after(("apgd-ce", "apgd-t"))[:100]
    beyond, within = distance > eps * 1.01, distance < eps * 0.95
    assert int(beyond.sum()) >= 20 and int(within.sum()) >= 20
    assert bool(white_box[beyond].all()) and not bool(white_box[within].any())
    # The random-noise check weighs noise against the verdict it read: a cascade whose APGD-T had broken every
    # point leaves noise nothing to beat; one whose stages broke nothing counts every point noise breaks.
    all_broken = replace(outcome, broken_by={**outcome.broken_by, "apgd-t": outcome.clean_correct.clone()})
    nothing_broken = replace(outcome, broken_by={s: torch.zeros_like(b) for s, b in outcome.broken_by.items()})
    read = {name: run_reliability_checks(model, x, y, threat, subset=100, apgd_iterations=20, cascade_points=points)
            for name, points in (("all", all_broken), ("nothing", nothing_broken))}
    assert read["all"].flag("random_noise").value == 0.0
    assert read["nothing"].flag("random_noise").value > 0.0
    assert read["nothing"].flag("random_noise").flagged, read["nothing"].flag("random_noise").explanation
    assert "100.0% at 1x eps" in read["nothing"].flag("eps_monotonic").explanation
    # The same verdicts as the checks' own runs of the same attacks on this model ...
    assert {f.check: f.flagged for f in reused.flags} == {f.check: f.flagged for f in own.flags}
    assert not reused.unreliable
    assert reused.flag("eps_monotonic").explanation == own.flag("eps_monotonic").explanation
    # ... for a fraction of the passes.
    assert passes < own_passes / 3, (passes, own_passes)


@pytest.mark.parametrize(("norm", "eps"), [("Linf", 0.03), ("L2", 0.3)])
def test_reading_the_cascades_verdict_still_flags_a_masked_model(
    norm: str, eps: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x, y = setup(Quantised)
    threat = ThreatModel(norm, eps)  # type: ignore[arg-type]
    _, reused, runs, _ = _cascade_and_checks(model, x, y, threat, monkeypatch, reuse=True)
    _, own, _, _ = _cascade_and_checks(model, x, y, threat, monkeypatch, reuse=False)
    assert runs == ["apgd-ce 2x", "apgd-ce 4x"]
    # Every check that flags masking on this model fires either way (eps_monotonic, a rise of a point or two
    # between the draws at 1x and 2x eps, fires or not by chance on it, whichever draw the 1x verdict is).
    masking = {"gradients", "eps_large", "black_box", "random_noise"}
    for report in (reused, own):
        assert masking <= {f.check for f in report.flags if f.flagged}, [f.explanation for f in report.flags]


def test_a_cascade_with_fewer_points_than_the_checks_is_refused() -> None:
    model, x, y = setup(LinearModel)
    threat = ThreatModel("Linf", 0.03)
    outcome = attack_threat_model(model, x[:40], y[:40], torch.ones(40, dtype=torch.bool), threat, suite=REUSE)
    with pytest.raises(ValueError, match="attacked 40 points, fewer than the 100"):
        run_reliability_checks(model, x, y, threat, subset=100, cascade_points=outcome)


def test_only_a_cascade_that_starts_with_the_white_box_stages_can_lend_its_verdict() -> None:
    with pytest.raises(ValueError, match="starts with"):
        SuiteConfig("test-bad", stages=("apgd-t", "apgd-ce", "square"), reliability_reuses_white_box=True)
    with pytest.raises(ValueError, match="starts with"):
        SuiteConfig("test-bad", stages=("apgd-ce", "square"), reliability_reuses_white_box=True)
    assert SUITES["attacks-5"].reliability_reuses_white_box
    assert not any(SUITES[v].reliability_reuses_white_box for v in ("attacks-1", "attacks-2", "attacks-3", "attacks-4"))
    # attacks-5 is attacks-4 in every attack parameter: only where the checks' verdict comes from differs.
    assert replace(SUITES["attacks-5"], version="attacks-4", reliability_reuses_white_box=False) == SUITES["attacks-4"]


def test_the_job_bound_counts_only_the_checks_that_still_run() -> None:
    """A suite that lends its verdict: the checks' share of the pass bound drops to the other multiples of eps,
    and the checks' measured passes on a point no attack breaks stay within it."""
    own, reused = passes_per_point(SUITES["attacks-4"], 1.0), passes_per_point(SUITES["attacks-5"], 1.0)
    without = passes_per_point(SUITES["attacks-5"], 0.0)
    apgd = SUITES["attacks-5"].apgd_iterations + 1
    assert own.gradient - reused.gradient == (1 + SUITES["attacks-4"].target_classes) * apgd
    assert 2 * apgd <= reused.gradient - without.gradient <= 3 * apgd


def test_a_job_hands_the_checks_its_cascade_only_under_a_suite_that_lends_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scorer's side: the checks get the cascade's per-point outcome exactly when the suite says so."""
    from evaluator.scoring import classifier
    from evaluator.spec import ArtifactSpec, InputSpec, JobSpec
    from evaluator.spec import ThreatModel as SpecThreat

    handed: list[tuple[str, bool]] = []
    real = classifier.run_reliability_checks

    def spy(*args: object, **kwargs: object) -> reliability.ReliabilityReport:
        handed.append((str(args[3].key), kwargs.get("cascade_points") is not None))  # type: ignore[attr-defined]
        assert kwargs.get("cascade_report") is not None
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(classifier, "run_reliability_checks", spy)
    monkeypatch.setitem(SUITES, REUSE.version, REUSE)
    own = replace(REUSE, version="test-own", reliability_reuses_white_box=False)
    monkeypatch.setitem(SUITES, own.version, own)
    model, x, y = setup(LinearModel)
    pixels = (x * 255).round().to(torch.uint8)
    for suite in (REUSE.version, own.version):
        handed.clear()
        spec = JobSpec("j", "classifier", InputSpec(1, 8, 8), ArtifactSpec("unused", "pt2"), (),
                       threat_models=(SpecThreat("Linf", 0.03, "Linf-0.03"), SpecThreat("L2", 0.3, "L2-0.3")),
                       attack_points=80, reliability_points=40, seed=0, batch_size=64, attack_suite=suite)
        _, details = classifier.run_attacks(model, spec, "clean", pixels, y, torch.device("cpu"), lambda f, s: None)
        assert [lent for _, lent in handed] == [suite == REUSE.version] * 2
        for label in ("Linf-0.03", "L2-0.3"):
            assert {flag["check"] for flag in details[label]["flags"]} == CHECKS
            assert not any(flag["flagged"] for flag in details[label]["flags"]), details[label]["flags"]


class TwoFaced(LinearModel):
    """Hides its gradient while ``masked`` and is honest after: a model that recognises the cascade (or the checks
    that follow it, by their timing or by meeting the same points again) and behaves well only when checked."""

    masked = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out.detach() if self.masked else out


def test_a_model_honest_only_in_the_checks_is_judged_on_the_verdict_it_published() -> None:
    """Hostile: the model masks its gradient during the cascade, so the published robust accuracy is inflated, and
    turns honest for the checks. Checks that attack again at eps see only the honest model and pass it; checks that
    read the cascade's verdict compare random noise with the published number and flag it. A white-box-only suite
    isolates this (with Square in the cascade, the black-box check would also catch a gradient this plainly hidden)."""
    model, x, y = setup(TwoFaced)
    threat = ThreatModel("L2", 0.3)
    white_box_only = SuiteConfig("test-two-faced", stages=("apgd-ce", "apgd-t"), apgd_iterations=20,
                                 target_classes=3, escalation=(), reliability_reuses_white_box=True)
    outcome = attack_threat_model(model, x, y, predict_logits(model, x, 256).argmax(1) == y, threat,
                                  suite=white_box_only)
    model.masked = False
    honest = ~apgd_ce(model, x, y, threat, make_generator(0), n_iter=20).fooled
    assert outcome.report.robust_accuracy > float(honest.float().mean()) + 0.2  # the published number is inflated
    own = run_reliability_checks(model, x, y, threat, subset=100, apgd_iterations=20, cascade_report=outcome.report)
    lent = run_reliability_checks(model, x, y, threat, subset=100, apgd_iterations=20, cascade_points=outcome)
    assert not own.unreliable, [f.explanation for f in own.flags if f.flagged]  # the loophole a second run leaves
    assert lent.unreliable and lent.flag("random_noise").flagged, lent.flag("random_noise").explanation
