"""Anonymous model pages from the cache (leaderboards/cache.py): shared, never stale, never leaked.

Each test reads a page twice to prove the second read is a hit, changes the data the way the
platform does (``QuerySet.update()`` from the owner's views and the Ladder, a re-evaluation, a
refit, a withdrawal), and checks that the very next anonymous read is byte for byte what the view
renders without any cache.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from leaderboards import cache as lb_cache
from leaderboards.fits import refit_track
from submissions import services
from submissions.models import Submission
from tests.web.test_leaderboards_helpers import finish, new_submission, populate

pytestmark = pytest.mark.django_db


@pytest.fixture
def models(digits_track, researcher, other_user):
    return populate(digits_track, researcher, other_user)


def _read(submission: Submission, client: Client | None = None, **params: str) -> tuple[int, str, str | None]:
    response = (client or Client()).get(submission.get_absolute_url(), params)
    return response.status_code, response.content.decode(), response.get(lb_cache.CACHE_HEADER)


def _uncached(submission: Submission, **params: str) -> tuple[int, str]:
    with override_settings(ARENA_LEADERBOARD_CACHE_SECONDS=0):
        status, body, _ = _read(submission, **params)
    return status, body


def _assert_fresh(submission: Submission, **params: str) -> str:
    """The next anonymous read is what the view renders now, and the one after it is a hit.

    The first read may itself be a hit, when the data went back to a state cached before (a release
    undone): what matters is that its body is the view's current one.
    """
    status, body, _ = _read(submission, **params)
    assert (status, body) == _uncached(submission, **params)
    if status == 200:
        assert _read(submission, **params) == (status, body, "hit")
    return body


def test_a_finished_model_page_is_a_hit_on_the_second_read_and_costs_one_query(models):
    model = models["Ada's model"]
    status, built, how = _read(model)
    assert (status, how) == (200, "miss") and "Corruptions: mnist-imagenet-c-padded" in built
    with CaptureQueriesContext(connection) as captured:
        again = _read(model)
    assert again == (200, built, "hit") and len(captured) == 1  # the stamp; no session, no view
    assert built == _uncached(model)[1]
    packed = Client().get(model.get_absolute_url(), headers={"Accept-Encoding": "gzip"})
    assert packed["Content-Encoding"] == "gzip" and packed[lb_cache.CACHE_HEADER] == "hit"


def test_signed_in_readers_bypass_the_cache_and_anonymous_pages_carry_no_controls(models, researcher):
    model = models["Ada's model"]
    anonymous = _read(model)[1]
    owner = Client()
    owner.force_login(researcher)
    status, html, how = _read(model, owner)
    assert (status, how) == (200, "bypass") and "Withdraw from leaderboards" in html and "Log out" in html
    assert "Withdraw from leaderboards" not in _read(model)[1] and _read(model)[1] == anonymous


def test_changes_made_without_signals_show_on_the_next_read(models, researcher):
    """Visibility, the Ladder, names: all changed with ``update()``, which no signal reports."""
    model = models["Ada's model"]
    reference = models["Baseline 2"]
    Submission.objects.filter(pk=model.pk).update(relative_to=reference)
    _assert_fresh(model)

    Submission.objects.filter(pk=reference.pk).update(name="Renamed baseline")
    assert "Renamed baseline" in _assert_fresh(model)
    get_user_model().objects.filter(pk=researcher.pk).update(username="ada-renamed")
    assert "by ada-renamed" in _assert_fresh(model)
    Submission.objects.filter(pk=model.pk).update(released=False, ladder_note="Not better than your best.")
    assert "Scores withheld" in _assert_fresh(model)
    Submission.objects.filter(pk=model.pk).update(released=True, ladder_note="")
    assert "Scores per evaluation set" in _assert_fresh(model)
    Submission.objects.filter(pk=model.pk).update(is_public=False)
    assert _read(model)[0] == 404 and _read(model)[0] == 404
    Submission.objects.filter(pk=model.pk).update(is_public=True)
    assert "Ada&#x27;s model" in _assert_fresh(model)


def test_a_withdrawal_through_the_owners_page_takes_the_page_down(models, researcher):
    model = models["Ada's model"]
    _assert_fresh(model)
    owner = Client()
    owner.force_login(researcher)
    owner.post(f"/submissions/{model.public_id}/withdraw/", {"action": "withdraw"})
    assert _read(model)[0] == 404


def test_a_reevaluation_and_a_refit_show_on_the_next_read(models, digits_track, other_user):
    model = models["Robust net"]
    before = _assert_fresh(model)
    services.rerun(model)
    status, queued, how = _read(model)
    assert status == 200 and how is None and "Queued" in queued  # a page that moves: never cached
    finish(model, 0.96, 0.9, 0.8)
    after = _assert_fresh(model)
    assert after != before and "96.0" in after

    # A new baseline and a refit move the line: the effective robustness changes.
    finish(new_submission(digits_track, other_user, "Baseline 9", model_type="standard", is_baseline=True),
           0.999, 0.3, 0.7)
    refit_track(digits_track)
    refitted = _assert_fresh(model)
    assert refitted != after


def test_queued_and_private_pages_are_never_stored(digits_track, researcher):
    queued = new_submission(digits_track, researcher, "Waiting")
    assert _read(queued)[2] is None and "Next to start." in _read(queued)[1]
    queued.transition("running")
    Submission.objects.filter(pk=queued.pk).update(progress_stage="Attacking: APGD-CE")
    assert "Attacking: APGD-CE" in _read(queued)[1]
    private = finish(new_submission(digits_track, researcher, "Hidden", is_public=False), 0.9)
    assert [_read(private)[0] for _ in range(2)] == [404, 404]
    owner = Client()
    owner.force_login(researcher)
    assert _read(private, owner)[0] == 200
    assert lb_cache.lookup_submission(private.public_id) is None
    assert lb_cache.lookup_submission(queued.public_id) is None


def test_the_transform_is_part_of_the_key_and_other_parameters_are_not(models):
    model = models["Robust net"]
    logit = _read(model)[1]
    status, probit, how = _read(model, transform="probit")
    assert (status, how) == (200, "miss") and probit != logit and "probit axes" in probit
    assert _read(model, transform="probit") == (200, probit, "hit")
    assert _read(model, transform="bogus", utm_source="x") == (200, logit, "hit")
