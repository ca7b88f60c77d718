"""The Ladder: on a track that turns it on, only significant improvements are released."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils.html import escape
from rest_framework.test import APIClient

from submissions.ladder import RELEASED_NOTE, WITHHELD_NOTE, shown_note
from tests.web.test_leaderboards_helpers import N, cp, finish, new_submission

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
    assert noise.ladder_note == WITHHELD_NOTE and "0.01" not in noise.ladder_note

    board = Client().get(f"/tracks/{digits_track.slug}/").content.decode()
    assert "real gain" in board and "lucky seed" not in board and "same again" not in board
    # The rule the withheld note points to is on the track page, with the track's own (public) margin.
    assert 'id="ladder-rule"' in board and "by more than 0.01 in accuracy" in board

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
    from evaluator.spec import JobResult, MetricValue
    from submissions.arrival import record_result
    from submissions.models import Result, Submission

    submission = new_submission(digits_track, researcher, "rerun")

    def record(metrics: list[str]) -> None:
        submission.transition(Submission.State.RUNNING)
        record_result(submission, JobResult(
            job_id="x", ok=True, suite_version="clean-1", seed=0,
            metrics=[MetricValue("mnist-hidden", m, 0.5, 10) for m in metrics]))
        submission.refresh_from_db()

    record(["accuracy", "robust_accuracy@Linf-2/255"])
    submission.transition(Submission.State.QUEUED)
    record(["accuracy", "robust_accuracy@Linf-16/255"])
    assert sorted(Result.objects.filter(submission=submission).values_list("metric", flat=True)) == [
        "accuracy", "robust_accuracy@Linf-16/255"]


def _number_tokens(text: str) -> set[str]:
    """Every number written in ``text`` (``0.01279``, ``91.0``, ``1,820``, ``1.2e-02``), as written."""
    return set(re.findall(r"\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?", text))


def _formats(x: float) -> set[str]:
    """The ways the platform's notes, templates and exports write a number (fractions and percents)."""
    out = {f"{x:.{d}g}" for d in range(2, 7)} | {f"{x:.{d}f}" for d in range(2, 6)}
    out |= {f"{100 * x:.{d}f}" for d in range(1, 4)} | {f"{100 * x:+.2f}".lstrip("+")}
    return {t for t in out if len(t.strip("0.")) >= 2}  # "0.0" or "1" would match any page


def _accuracies_pinned_by(text: str, n: int) -> set[int]:
    """The counts of correct answers (of n) whose Clopper-Pearson half-width some number in ``text`` is.

    This is the inversion the old note allowed: the half-width of a 95 % Clopper-Pearson interval
    is a function of (k, n), one-to-one on each side of n/2, and n is public (the set's size).
    """
    tokens = _number_tokens(text)
    pinned = set()
    for k in range(n + 1):
        low, high = cp(k / n, n)
        if _formats((high - low) / 2) & tokens:
            pinned.add(k)
    return pinned


def test_a_withheld_note_gives_no_number_of_the_withheld_score(digits_track, researcher, token):
    """With ``ladder_margin`` 0 the margin is the withheld score's own interval half-width, and the
    old note printed it: "Withheld: not better than your best released score on this track by more
    than the noise margin (0.01279 in accuracy); see the track's Ladder rule." From 0.01279 and the
    set's 2,000 images the accuracy follows: only k = 1,820 (and its mirror 180) of 2,001 counts
    gives that Clopper-Pearson half-width, so the withheld score was 91.0 %. The check below runs
    that inversion on the old note (it finds the score) and then on everything the owner, another
    user and the public can read about the withheld submission (it must find nothing), and looks
    there for the score, its bounds and its half-width in every format the platform writes."""
    digits_track.ladder, digits_track.ladder_margin = True, 0.0
    digits_track.save()
    finish(new_submission(digits_track, researcher, "first", is_public=True), 0.900)
    withheld = finish(new_submission(digits_track, researcher, "Lucky draw", is_public=True), 0.910)
    assert not withheld.released
    k = round(0.910 * N)
    low, high = cp(0.910)
    half_width = (high - low) / 2
    old_note = ("Withheld: not better than your best released score on this track by more than the noise "
                f"margin ({half_width:.4g} in accuracy); see the track's Ladder rule.")
    assert k in _accuracies_pinned_by(old_note, N)  # the leak this test closes

    owner = Client()
    owner.force_login(researcher)
    stranger = Client()
    stranger.force_login(get_user_model().objects.create_user("eve", password="a-long-password-9"))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    page = owner.get(withheld.get_absolute_url()).content.decode()
    section = page.split('id="ladder-withheld"', 1)[1].split("</section>", 1)[0]
    readable = {
        "stored note": withheld.ladder_note,
        "shown note": shown_note(withheld),
        "withheld section": section,
        "owner's page": page,
        "another user's page": stranger.get(withheld.get_absolute_url()).content.decode(),
        "anonymous page": Client().get(withheld.get_absolute_url()).content.decode(),
        "API detail": api.get(f"/api/v1/submissions/{withheld.public_id}/").content.decode(),
        "API list entry": json.dumps(next(item for item in api.get("/api/v1/submissions/").json()["results"]
                                          if item["id"] == str(withheld.public_id))),
        "status": owner.get(f"/submissions/{withheld.public_id}/status.json").content.decode(),
    }
    derived = _formats(0.910) | _formats(low) | _formats(high) | _formats(half_width) | {str(k), f"{k:,}"}
    for where, text in readable.items():
        assert k not in _accuracies_pinned_by(text, N), where
        assert not derived & _number_tokens(text), (where, derived & _number_tokens(text))
    assert "Scores withheld" in section and escape(WITHHELD_NOTE) in section
    # The track's tables, plot and exports hold other models' scores: the withheld one is not among them.
    for url in (f"/tracks/{digits_track.slug}/", f"/tracks/{digits_track.slug}/leaderboard.json",
                f"/tracks/{digits_track.slug}/leaderboard.csv", f"/api/v1/tracks/{digits_track.slug}/leaderboard/"):
        response = owner.get(url)
        assert response.status_code == 200, url
        assert "Lucky draw" not in response.content.decode() and "first" in response.content.decode(), url


def test_an_old_note_with_a_margin_is_not_shown_again(digits_track, researcher):
    """A note stored before the change (with the margin in it) is replaced on the page by the note
    the release state implies; a submission staff released by hand does not say "withheld"."""
    digits_track.ladder = True
    digits_track.save()
    finish(new_submission(digits_track, researcher, "first"), 0.900)
    withheld = finish(new_submission(digits_track, researcher, "withheld"), 0.910)
    old = ("Withheld: not better than your best released score on this track by more than the noise margin "
           "(0.01279 in accuracy); see the track's Ladder rule.")
    type(withheld).objects.filter(pk=withheld.pk).update(ladder_note=old)
    withheld.refresh_from_db()
    assert shown_note(withheld) == WITHHELD_NOTE
    client = Client()
    client.force_login(researcher)
    page = client.get(withheld.get_absolute_url()).content.decode()
    assert escape(WITHHELD_NOTE) in page and "0.01279" not in page
    withheld.released = True
    assert shown_note(withheld) == ""
    withheld.ladder_note = RELEASED_NOTE
    assert shown_note(withheld) == RELEASED_NOTE


def test_the_migration_rewrites_stored_withheld_notes(digits_track, researcher):
    """The API returns the stored note as it is: old rows are rewritten by benchmarks migration 0009."""
    from importlib import import_module

    from django.apps import apps

    migration = import_module("benchmarks.migrations.0009_ladder_notes_without_numbers")
    assert migration.WITHHELD_NOTE == WITHHELD_NOTE  # the frozen copy says what the code says
    released = finish(new_submission(digits_track, researcher, "released"), 0.900)
    withheld = new_submission(digits_track, researcher, "withheld")
    type(withheld).objects.filter(pk=withheld.pk).update(
        released=False, ladder_note="Withheld: ... noise margin (0.01279 in accuracy); see the track's Ladder rule.")
    migration.rewrite_withheld_notes(apps, None)
    withheld.refresh_from_db()
    released.refresh_from_db()
    assert withheld.ladder_note == WITHHELD_NOTE and released.ladder_note == ""
