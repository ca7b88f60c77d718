"""The state machine, and the leaderboard built from stored results."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse

from evaluator.spec import JobResult, MetricValue
from submissions.arrival import record_result
from submissions.models import IllegalTransition, Submission

pytestmark = pytest.mark.django_db


def _submission(track, owner, name, **kw) -> Submission:
    s = Submission(track=track, owner=owner, name=name, artifact_format="pt2", artifact_sha256="0" * 64, **kw)
    s.artifact.save("x", ContentFile(b"PK"), save=False)
    s.save()
    return s


def _finish(submission, accuracy: float, low: float, high: float) -> None:
    submission.transition("running")
    record_result(submission, JobResult(
        job_id=str(submission.public_id), ok=True, suite_version=submission.track.suite_version,
        seed=submission.track.seed,
        metrics=[MetricValue("mnist-hidden", "accuracy", accuracy, 2000, low, high, "clopper-pearson-95")],
    ))


def test_state_machine_refuses_illegal_moves(digits_track, researcher):
    s = _submission(digits_track, researcher, "m")
    with pytest.raises(IllegalTransition):
        s.transition("finished")  # queued -> finished skips running
    s.transition("running")
    assert s.started_at is not None and s.attempts == 1
    s.transition("failed", failure_reason="boom")
    assert s.finished_at is not None
    with pytest.raises(IllegalTransition):
        s.transition("running")
    s.transition("queued")  # re-run clears the previous outcome
    assert s.failure_reason == "" and s.finished_at is None and s.progress == 0


def test_failed_result_is_recorded_with_a_plain_reason(digits_track, researcher):
    s = _submission(digits_track, researcher, "m")
    s.transition("running")
    record_result(s, JobResult(job_id=str(s.public_id), ok=False, suite_version="clean-1", seed=0,
                                     error_code="non_finite_output", error="NaN for 3 of 2000 images."))
    s.refresh_from_db()
    assert s.state == "failed" and s.failure_code == "non_finite_output"
    assert s.failure_reason.startswith("The model returned NaN or infinite values.")


def test_leaderboard_lists_public_finished_models_sorted_with_interval_ranks(digits_track, researcher, other_user):
    a = _submission(digits_track, researcher, "Model A")
    b = _submission(digits_track, other_user, "Model B")
    c = _submission(digits_track, other_user, "Model C")
    hidden = _submission(digits_track, other_user, "Private D", is_public=False)
    queued = _submission(digits_track, other_user, "Queued E")
    _finish(a, 0.990, 0.985, 0.994)
    _finish(b, 0.988, 0.983, 0.992)   # overlaps A: shares rank 1
    _finish(c, 0.900, 0.886, 0.913)   # clearly below both: rank 3
    _finish(hidden, 0.999, 0.997, 1.0)

    client = Client()
    html = client.get(reverse("leaderboard", args=["digits"])).content.decode()
    assert html.index("Model A") < html.index("Model B") < html.index("Model C")
    assert "Private D" not in html and queued.name not in html
    assert "99.0%" in html and "[98.5%, 99.4%]" in html

    ascending = client.get(reverse("leaderboard", args=["digits"]), {"sort": "mnist-hidden:accuracy",
                                                                      "order": "asc"}).content.decode()
    assert ascending.index("Model C") < ascending.index("Model B") < ascending.index("Model A")

    data = client.get("/api/v1/tracks/digits/leaderboard/").json()
    ranks = {row["name"]: row["rank"] for row in data["rows"]}
    assert ranks == {"Model A": 1, "Model B": 1, "Model C": 3}
    assert data["columns"][0]["higher_is_better"] is True

    client.force_login(other_user)  # the owner sees their private model, highlighted
    html = client.get(reverse("leaderboard", args=["digits"])).content.decode()
    assert "Private D" in html and 'class="mine"' in html


def test_a_fired_reliability_check_marks_the_evaluation_unreliable(digits_track, researcher, other_user):
    from submissions.models import EvaluationRun

    honest = _submission(digits_track, researcher, "Honest")
    masked = _submission(digits_track, other_user, "Masked")
    _finish(honest, 0.95, 0.94, 0.96)
    _finish(masked, 0.96, 0.95, 0.97)
    flags = {"Linf-0.3": {"flags": [{"check": "black_box", "flagged": True, "explanation": "Square beat APGD"}]}}
    EvaluationRun.objects.filter(submission=masked).update(provenance={"attacks": flags})
    clean = {"Linf-0.3": {"flags": [{"check": "black_box", "flagged": False, "explanation": "fine"}]}}
    EvaluationRun.objects.filter(submission=honest).update(provenance={"attacks": clean})

    html = Client().get(reverse("leaderboard", args=["digits"])).content.decode()
    masked_row = html[html.index("Masked"):].split("</tr>", 1)[0]
    honest_row = html[html.index("Honest"):].split("</tr>", 1)[0]
    assert "unreliable evaluation" in masked_row and "verified" not in masked_row
    assert "unreliable evaluation" not in honest_row and "verified" in honest_row
    rows = {r["name"]: r for r in Client().get("/tracks/digits/leaderboard.json").json()["rows"]}
    assert rows["Masked"]["unreliable"] is True and rows["Honest"]["unreliable"] is False
