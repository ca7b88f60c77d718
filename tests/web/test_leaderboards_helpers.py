"""Builders for leaderboard tests: a digits track with a natural and a synthetic shift and a threat
model, and finished models written through the same ``record_result`` path a worker uses.

(No tests here; the other test_leaderboards_* / test_browser_* modules import these.)
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from django.core.files.base import ContentFile
from scipy.special import expit, logit
from scipy.stats import beta

from benchmarks.models import EvaluationSet
from evaluator.spec import JobResult, MetricValue
from leaderboards.fits import refit_track
from submissions.arrival import record_result
from submissions.models import Submission

N = 2000
THREAT = "Linf-0.3"
CORRUPTIONS = ("gaussian_noise", "motion_blur", "fog", "contrast")
# Baselines lie on logit(usps) = 0.9 * logit(clean) - 0.6 (plus a little noise).
SLOPE, INTERCEPT = 0.9, -0.6


def cp(acc: float, n: int = N) -> tuple[float, float]:
    """Clopper-Pearson 95% interval, as the evaluator reports accuracies."""
    k = round(acc * n)
    low = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return low, high


def add_shifts(track) -> Any:
    EvaluationSet.objects.create(track=track, name="usps", role="shift", shift_kind="natural", relative_path="x",
                                 sha256="0" * 64, num_examples=N)
    EvaluationSet.objects.create(track=track, name="mnist-imagenet-c-padded", role="shift", shift_kind="synthetic",
                                 relative_path="y", sha256="1" * 64, num_examples=N)
    track.threat_models = [{"norm": "Linf", "eps": 0.3, "label": THREAT}]
    track.class_names = [str(i) for i in range(10)]
    track.save()
    return track


def new_submission(track, owner, name: str, **kw: Any) -> Submission:
    s = Submission(track=track, owner=owner, name=name, artifact_format="pt2",
                   artifact_sha256=hashlib.sha256(name.encode()).hexdigest(), **kw)
    s.artifact.save("x", ContentFile(b"PK"), save=False)
    s.save()
    return s


def finish(submission: Submission, clean: float, usps: float | None = None, corrupted: float | None = None,
           robust: dict[str, float] | None = None, flagged: bool = False) -> Submission:
    """Record a finished evaluation with every kind of result the platform stores."""
    metrics = [MetricValue("mnist-hidden", "accuracy", clean, N, *cp(clean), "clopper-pearson-95")]
    if usps is not None:
        metrics.append(MetricValue("usps", "accuracy", usps, N, *cp(usps), "clopper-pearson-95"))
    if corrupted is not None:
        metrics.append(MetricValue("mnist-imagenet-c-padded", "accuracy", corrupted, N, *cp(corrupted),
                                   "clopper-pearson-95"))
        for i, c in enumerate(CORRUPTIONS):
            for sev in range(1, 6):
                acc = float(np.clip(corrupted + 0.04 * (3 - sev) - 0.03 * i, 0, 1))
                metrics.append(MetricValue("mnist-imagenet-c-padded", f"accuracy@{c}:{sev}", acc, 100, *cp(acc, 100),
                                           "clopper-pearson-95"))
    attacks = {}
    if robust:
        for stage, acc in robust.items():
            metric = f"robust_accuracy@{THREAT}" + ("" if stage == "final" else f">{stage}")
            metrics.append(MetricValue("mnist-hidden", metric, acc, 500, *cp(acc, 500), "clopper-pearson-95"))
        attacks[THREAT] = {"forward_passes": 123456, "backward_passes": 98765, "seconds": 42.5, "flags": [
            {"check": "black_box", "flagged": flagged, "value": 0.25 if flagged else 0.0, "threshold": 0.1,
             "explanation": "Square found adversarial points APGD missed." if flagged else "APGD found them all."}]}
        if flagged:  # the suite escalated; an unknown name (the sandbox wrote it) must not reach the page
            attacks[THREAT]["escalated_for"] = ["black_box", "<b>hidden label 7</b>"]
    submission.transition("running")
    record_result(submission, JobResult(
        job_id=str(submission.public_id), ok=True, suite_version=submission.track.suite_version,
        seed=submission.track.seed, metrics=metrics,
        per_class={"mnist-hidden": {str(k): min(1.0, clean + 0.002 * (k - 5)) for k in range(10)}},
        provenance={"device": "cpu", "processor": "x86_64", "torch": "2.13.0", "evaluator": "test",
                    "sandbox": "bubblewrap", "seconds": 63.2, "attacks": attacks},
    ))
    submission.refresh_from_db()
    return submission


def populate(track, researcher, other_user) -> dict[str, Submission]:
    """Six standard baselines on the line, a robust model above it, one with extra data, two submissions."""
    add_shifts(track)
    made: dict[str, Submission] = {}
    rng = np.random.default_rng(3)
    for i, clean in enumerate(np.linspace(0.90, 0.99, 6)):
        usps = float(expit(SLOPE * logit(clean) + INTERCEPT + rng.normal(0, 0.03)))
        s = new_submission(track, other_user, f"Baseline {i}", model_type="standard", is_baseline=True,
                           paper_url="https://example.org/paper", code_url="https://example.org/code")
        made[s.name] = finish(s, float(clean), usps, float(clean) - 0.2,
                              robust={"apgd-ce": 0.2, "apgd-t": 0.15, "square": 0.14, "final": 0.14})
    refit_track(track)
    on_line = float(expit(SLOPE * logit(0.95) + INTERCEPT))
    made["Robust net"] = finish(new_submission(track, other_user, "Robust net", model_type="robust"), 0.95,
                                on_line + 0.03, 0.85, robust={"apgd-ce": 0.8, "apgd-t": 0.78, "square": 0.77,
                                                              "final": 0.77})
    made["Big data net"] = finish(new_submission(track, other_user, "Big data net", model_type="extra_data",
                                                 extra_data=True), 0.985, 0.95, 0.9)
    made["Ada's model"] = finish(new_submission(track, researcher, "Ada's model"), 0.93, on_line - 0.02, 0.8,
                                 robust={"apgd-ce": 0.5, "apgd-t": 0.45, "square": 0.3, "final": 0.3}, flagged=True)
    made["Ada's private"] = finish(new_submission(track, researcher, "Ada's private", is_public=False), 0.91,
                                   0.8, 0.75)
    return made
