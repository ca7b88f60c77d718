"""The effective-robustness line is a versioned artifact per (track, shift, transform), refitted
when the baseline testbed changes, and every model page shows its distance to the line."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.test import Client
from scipy.special import expit, logit

from benchmarks.models import BaselineFit, EvaluationSet
from evaluator.spec import JobResult, MetricValue
from leaderboards.fits import refit_track, robustness_of
from submissions.arrival import record_result
from submissions.models import Submission

pytestmark = pytest.mark.django_db

# Baselines exactly on the line logit(shifted) = 0.9 * logit(clean) - 0.6, except for noise below.
SLOPE, INTERCEPT = 0.9, -0.6


@pytest.fixture
def shifted_track(digits_track):
    EvaluationSet.objects.create(track=digits_track, name="usps", role="shift", shift_kind="natural",
                                 relative_path="x", sha256="0" * 64, num_examples=2000)
    return digits_track


def _model(track, owner, name, clean, shifted, baseline=True, **kw) -> Submission:
    s = Submission(track=track, owner=owner, name=name, artifact_format="pt2", artifact_sha256=name.ljust(64, "0"),
                   is_baseline=baseline, model_type="standard" if baseline else "submission", **kw)
    s.artifact.save("x", ContentFile(b"PK"), save=False)
    s.save()
    s.transition("running")
    record_result(s, JobResult(
        job_id=str(s.public_id), ok=True, suite_version=track.suite_version, seed=track.seed,
        metrics=[MetricValue("mnist-hidden", "accuracy", clean, 2000, None, None),
                 MetricValue("usps", "accuracy", shifted, 2000, None, None)],
    ))
    return s


def test_line_is_fitted_versioned_and_refitted(shifted_track, researcher):
    rng = np.random.default_rng(1)
    clean = np.linspace(0.86, 0.99, 8)
    shifted = expit(SLOPE * logit(clean) + INTERCEPT + rng.normal(0, 0.05, clean.size))
    for i, (c, s) in enumerate(zip(clean, shifted, strict=True)):
        _model(shifted_track, researcher, f"b{i}", float(c), float(s))
    fits = refit_track(shifted_track)
    logit_fit = next(f for f in fits if f.transform == "logit")
    # Independent reference: closed-form least squares on the logit-transformed points.
    x, y = logit(clean), logit(shifted)
    slope = np.cov(x, y, bias=True)[0, 1] / np.var(x)
    assert logit_fit.slope == pytest.approx(slope, rel=1e-9)
    assert logit_fit.intercept == pytest.approx(y.mean() - slope * x.mean(), rel=1e-9)
    assert logit_fit.n_models == 8 and logit_fit.is_current
    assert {f.transform for f in fits} == {"logit", "probit"}

    assert refit_track(shifted_track)[0].fit_version == fits[0].fit_version  # unchanged testbed, same version
    assert BaselineFit.objects.filter(transform="logit").count() == 1

    _model(shifted_track, researcher, "b-new", 0.93, 0.80)  # the testbed changes: a new version
    refit_track(shifted_track)
    assert BaselineFit.objects.filter(transform="logit").count() == 2
    current = BaselineFit.objects.get(transform="logit", is_current=True)
    assert current.n_models == 9 and current.fit_version != logit_fit.fit_version


def test_effective_and_relative_robustness_on_the_model_page(shifted_track, researcher):
    clean = np.linspace(0.86, 0.99, 6)
    for i, c in enumerate(clean):
        _model(shifted_track, researcher, f"b{i}", float(c), float(expit(SLOPE * logit(c) + INTERCEPT)))
    refit_track(shifted_track)
    reference = Submission.objects.get(name="b3")
    on_line = float(expit(SLOPE * logit(0.95) + INTERCEPT))
    model = _model(shifted_track, researcher, "robust", 0.95, on_line + 0.02, baseline=False, relative_to=reference)

    (row,) = robustness_of(model)
    assert row.effective_robustness == pytest.approx(0.02, abs=1e-9)  # exactly 2 points above the line
    assert row.ci_low <= row.effective_robustness <= row.ci_high
    reference_shifted = float(expit(SLOPE * logit(clean[3]) + INTERCEPT))
    assert row.relative_robustness == pytest.approx(on_line + 0.02 - reference_shifted, abs=1e-12)

    page = Client().get(model.get_absolute_url()).content.decode()
    assert "Effective robustness" in page and "+2.00 pt" in page
    probit_page = Client().get(model.get_absolute_url() + "?transform=probit").content.decode()
    assert "probit axes" in probit_page


def _testbed(track, owner, n: int = 6) -> np.ndarray:
    clean = np.linspace(0.86, 0.99, n)
    for i, c in enumerate(clean):
        _model(track, owner, f"b{i}", float(c), float(expit(SLOPE * logit(c) + INTERCEPT)))
    return clean


def test_saturated_and_below_floor_baselines_are_left_out_of_the_line(shifted_track, researcher):
    """A baseline at 100% (or at 0%) has an infinite logit: clipped, one such point would tilt the line
    (issue 14: 0.923 -> 0.286 on the published testbed); it is left out and the fit says so."""
    _testbed(shifted_track, researcher)
    _model(shifted_track, researcher, "perfect", 1.0, 0.97)
    _model(shifted_track, researcher, "weak", 0.30, 0.20)
    line = next(f for f in refit_track(shifted_track) if f.transform == "logit")
    assert line.n_models == 7  # six on the line, the weak one kept (no floor), the perfect one left out
    assert [(p["model_id"], p["reason"]) for p in line.fit["excluded"]] == [
        (str(Submission.objects.get(name="perfect").public_id), "saturated")]

    shifted_track.baseline_min_accuracy = 0.5  # the track's floor, as the ImageNet testbed fits only strong models
    shifted_track.save()
    line = next(f for f in refit_track(shifted_track) if f.transform == "logit")
    assert line.n_models == 6 and line.slope == pytest.approx(SLOPE, rel=1e-9)
    assert line.intercept == pytest.approx(INTERCEPT, rel=1e-9)
    assert {p["reason"] for p in line.fit["excluded"]} == {"saturated", "below_min_accuracy"}


def test_too_few_usable_baselines_give_no_line(shifted_track, researcher):
    _model(shifted_track, researcher, "a", 0.90, 0.85)
    _model(shifted_track, researcher, "b", 0.95, 0.90)
    _model(shifted_track, researcher, "c", 1.0, 0.99)  # three baselines, one saturated: two usable
    assert refit_track(shifted_track) == []
    assert not BaselineFit.objects.filter(is_current=True).exists()


def test_a_tampered_stored_line_is_not_shown(shifted_track, researcher, caplog):
    """A stored fit whose contents no longer match their hash (an edited slope) is refused where it is
    read: the page shows no effective robustness instead of a number from a line nobody fitted."""
    _testbed(shifted_track, researcher)
    refit_track(shifted_track)
    model = _model(shifted_track, researcher, "m", 0.95, 0.90, baseline=False, is_public=True)
    assert robustness_of(model)[0].effective_robustness is not None
    row = BaselineFit.objects.get(transform="logit", is_current=True)
    row.fit = {**row.fit, "slope": row.fit["slope"] + 0.5}
    row.save()
    assert robustness_of(model)[0].effective_robustness is None
    assert "refused" in caplog.text and "refit_baselines" in caplog.text
    page = Client().get(model.get_absolute_url())
    board = Client().get(f"/tracks/{shifted_track.slug}/")
    assert page.status_code == 200 and board.status_code == 200
