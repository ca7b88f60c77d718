"""The model page costs a fixed number of SQL queries, however much a model has to show.

A page reads the submission (with owner, track, benchmark, withdrawal and reference joined), the
track's evaluation sets, the run, the results and the current lines: adding shift sets, corruption
cells or attack stages must not add queries (a query per result, per shift set or per fit would).
The page's effective robustness is computed from the results it already loaded; it must agree with
``leaderboards.fits.robustness_of``, which reads the accuracies itself.
"""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from benchmarks.models import EvaluationSet
from leaderboards.fits import robustness_of
from leaderboards.templatetags.arena_tags import points
from submissions.models import Result, Submission
from tests.web.test_leaderboards_helpers import THREAT, finish, new_submission, populate

pytestmark = pytest.mark.django_db
#: Submission (joined with what it shows), evaluation sets, run, results, current fits, and (a model with attack
#: results) the submitted attacks' runs against it.
ANONYMOUS_QUERIES = 6


@pytest.fixture
def models(digits_track, researcher, other_user, settings):
    settings.ARENA_LEADERBOARD_CACHE_SECONDS = 0  # measure the view itself, not a cache hit
    return populate(digits_track, researcher, other_user)


def _page(client: Client, submission: Submission, **params: str) -> tuple[str, int]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(submission.get_absolute_url(), params)
    assert response.status_code == 200
    return response.content.decode(), len(captured)


def _grow(submission: Submission, extra_shift_sets: int = 4) -> None:
    """More of everything a page shows per row: shift sets with accuracies, corruption cells, attack stages."""
    track = submission.track
    rows = []
    for i in range(extra_shift_sets):
        shift = EvaluationSet.objects.create(track=track, name=f"extra-{i}", role="shift", shift_kind="natural",
                                             relative_path=f"e{i}", sha256="2" * 64, num_examples=100)
        rows.append(Result(submission=submission, evaluation_set=shift, metric="accuracy", value=0.7))
    mnist_c = EvaluationSet.objects.get(track=track, name="mnist-imagenet-c-padded")
    hidden = EvaluationSet.objects.get(track=track, name="mnist-hidden")
    rows += [Result(submission=submission, evaluation_set=mnist_c, metric=f"accuracy@extra_{c}:{sev}", value=0.6)
             for c in range(6) for sev in range(1, 6)]
    rows += [Result(submission=submission, evaluation_set=hidden, metric=f"robust_accuracy@{THREAT}>stage{k}",
                    value=0.4) for k in range(5)]
    for r in rows:
        r.num_examples, r.ci_low, r.ci_high = 100, r.value - 0.05, r.value + 0.05
        r.suite_version, r.seed = track.suite_version, 0
    Result.objects.bulk_create(rows)


def test_the_page_costs_the_same_queries_whatever_the_model_has(models):
    model = models["Ada's model"]
    html, before = _page(Client(), model)
    assert "Corruptions: mnist-imagenet-c-padded" in html and f"Adversarial robustness: {THREAT}" in html
    assert "Robustness to distribution shift" in html
    _grow(model)
    html, after = _page(Client(), model)
    assert html.count("extra-") >= 4 and "extra 5" in html and "stage4" in html  # the new rows are on the page
    assert before == after == ANONYMOUS_QUERIES, (before, after)


def test_a_reference_model_costs_one_query_and_its_rows_none(models):
    model = models["Ada's model"]
    Submission.objects.filter(pk=model.pk).update(relative_to=models["Baseline 2"])
    html, small = _page(Client(), model)
    assert "vs <a href" in html and "Baseline 2" in html
    _grow(model)
    _grow(models["Baseline 2"], extra_shift_sets=0)
    html, large = _page(Client(), model)
    assert small == large == ANONYMOUS_QUERIES + 1, (small, large)


@pytest.mark.parametrize("engine", ["db", "cached_db"])
def test_a_signed_in_reader_adds_only_the_session_and_user(models, researcher, settings, engine):
    """Two queries more than anonymous: the session and the user. With a shared cache (``cached_db``, chosen when
    ``CACHE_URL`` is set) the session comes from the cache: one more, the user."""
    settings.SESSION_ENGINE = f"django.contrib.sessions.backends.{engine}"
    client = Client()
    client.force_login(researcher)
    model = models["Ada's model"]
    html, small = _page(client, model)
    assert "Withdraw from leaderboards" in html  # the owner's controls
    _grow(model)
    _, large = _page(client, model)
    extra = 1 if engine == "cached_db" else 2
    assert small == large == ANONYMOUS_QUERIES + extra, (small, large)
    # With the cache emptied, the session is read from its database row and the reader stays signed in.
    from django.core.cache import cache

    cache.clear()
    html, cold = _page(client, model)
    assert "Withdraw from leaderboards" in html and cold == ANONYMOUS_QUERIES + 2, cold


def test_pages_of_plain_queued_and_failed_models_cost_no_more(digits_track, researcher, models):
    plain = finish(new_submission(digits_track, researcher, "Plain"), 0.97)
    assert _page(Client(), plain)[1] <= ANONYMOUS_QUERIES
    queued = new_submission(digits_track, researcher, "Waiting")
    html, count = _page(Client(), queued)
    assert "Next to start." in html and count <= ANONYMOUS_QUERIES  # the queue place replaces the fits


def _effective_robustness(html: str) -> dict[str, str]:
    """Shift set name -> the effective robustness cell of the page's table."""
    table = html.split("Robustness to distribution shift", 1)[1].split("</table>", 1)[0]
    return {name: re.sub(r"\s+", " ", cell) for name, cell in
            re.findall(r"<td>([^<]+)</td><td class=\"num\">[^<]*</td><td class=\"num\">[^<]*</td>\s*"
                       r"<td class=\"num\">(.*?)</td>", table, re.S)}


@pytest.mark.parametrize("transform", ["logit", "probit"])
def test_the_page_agrees_with_robustness_of(models, transform):
    """The page's rows come from loaded results; ``robustness_of`` reads the accuracies itself."""
    for name in ("Ada's model", "Robust net", "Big data net"):
        model = models[name]
        cells = _effective_robustness(_page(Client(), model, transform=transform)[0])
        expected = robustness_of(model, transform)
        assert set(cells) == {row.shift_set.name for row in expected}, name
        for row in expected:
            shown = f'{points(row.effective_robustness)}<span class="ci"> [{points(row.ci_low)}, ' \
                    f'{points(row.ci_high)}]</span>'
            assert cells[row.shift_set.name] == shown, (name, row.shift_set.name, cells)


def test_withheld_scores_are_not_shown_in_the_robustness_table(models, researcher, other_user):
    """The table shows clean and shifted accuracy: for a score the Ladder withheld, that was a leak."""
    model = models["Ada's model"]
    Submission.objects.filter(pk=model.pk).update(released=False, ladder_note="Not better than your best.")
    for client in (Client(), _signed_in(researcher)):
        html, _ = _page(client, model)
        assert "Scores withheld" in html and "Robustness to distribution shift" not in html
    other_user.is_staff = True
    other_user.save()
    assert "Robustness to distribution shift" in _page(_signed_in(other_user), model)[0]  # staff see everything


def _signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client
