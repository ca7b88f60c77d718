"""The Ladder: on a track that turns it on, only significant improvements are released."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tests.web.test_leaderboards_helpers import finish, new_submission

pytestmark = pytest.mark.django_db


def test_only_significant_improvements_are_released(digits_track, researcher, other_user, token):
    digits_track.ladder = True
    digits_track.ladder_margin = 0.01  # one point of accuracy
    digits_track.save()
    first = finish(new_submission(digits_track, researcher, "first"), 0.900)
    noise = finish(new_submission(digits_track, researcher, "lucky seed"), 0.905)  # +0.5 pt: within the margin
    better = finish(new_submission(digits_track, researcher, "real gain"), 0.925)  # +2.5 pt over the best
    again = finish(new_submission(digits_track, researcher, "same again"), 0.930)  # +0.5 pt over 0.925
    theirs = finish(new_submission(digits_track, other_user, "another lab"), 0.850)  # someone else's ladder
    for s in (first, noise, better, again, theirs):
        s.refresh_from_db()
    assert [s.released for s in (first, noise, better, again, theirs)] == [True, False, True, False, True]
    assert "Withheld" in noise.ladder_note and "0.01" in noise.ladder_note

    board = Client().get(f"/tracks/{digits_track.slug}/").content.decode()
    assert "real gain" in board and "lucky seed" not in board and "same again" not in board

    # The owner learns only that it was not an improvement: no score on the page or in the API.
    client = Client()
    client.force_login(researcher)
    page = client.get(noise.get_absolute_url()).content.decode()
    assert "Scores withheld" in page and "90.5" not in page and "Scores per evaluation set" not in page
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    body = api.get(f"/api/v1/submissions/{noise.public_id}/").json()
    assert body["released"] is False and body["results"] == [] and "Withheld" in body["ladder_note"]
    assert api.get(f"/api/v1/submissions/{better.public_id}/").json()["results"]


def test_margin_defaults_to_the_interval_half_width(digits_track, researcher):
    digits_track.ladder = True
    digits_track.save()
    finish(new_submission(digits_track, researcher, "a"), 0.900)
    # With 2,000 test images the 95 % interval's half-width near 90 % is about 1.3 points.
    small = finish(new_submission(digits_track, researcher, "b"), 0.910)
    large = finish(new_submission(digits_track, researcher, "c"), 0.930)
    small.refresh_from_db()
    large.refresh_from_db()
    assert not small.released and large.released


def test_ladder_off_releases_everything(digits_track, researcher):
    finish(new_submission(digits_track, researcher, "a"), 0.90)
    worse = finish(new_submission(digits_track, researcher, "b"), 0.80)
    worse.refresh_from_db()
    assert worse.released and worse.ladder_note == ""


def test_a_rerun_replaces_metrics_it_no_longer_produces(digits_track, researcher):
    """Re-recording an evaluation keeps one row per produced metric and drops the ones it dropped."""
    from evaluator.spec import MetricValue
    from evaluator.spec import Result as EvaluatorResult
    from submissions.jobs import record_result
    from submissions.models import Result, Submission

    submission = new_submission(digits_track, researcher, "rerun")

    def record(metrics: list[str]) -> None:
        submission.transition(Submission.State.RUNNING)
        record_result(submission, EvaluatorResult(
            job_id="x", ok=True, suite_version="clean-1", seed=0,
            metrics=[MetricValue("mnist-hidden", m, 0.5, 10) for m in metrics]))
        submission.refresh_from_db()

    record(["accuracy", "robust_accuracy@Linf-2/255"])
    submission.transition(Submission.State.QUEUED)
    record(["accuracy", "robust_accuracy@Linf-16/255"])
    assert sorted(Result.objects.filter(submission=submission).values_list("metric", flat=True)) == [
        "accuracy", "robust_accuracy@Linf-16/255"]
