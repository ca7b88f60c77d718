"""The submissions API list: bounded pages, a stable order, and a fixed number of SQL queries.

A list page used to build one ``ResultSerializer`` (all its fields) per row; an unbounded
``limit`` let one request serialize every visible submission. These tests pin the bound and its
documentation, the order pages are cut in, and the query count of a page, which must not grow
with the number of rows on it (a per-row query would make a 50-row page cost 45 queries more than
a 5-row one).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework import serializers
from rest_framework.authtoken.models import Token

from benchmarks.models import Benchmark, EvaluationSet, Track
from submissions.api import MAX_PAGE_SIZE
from submissions.models import Result, Submission
from submissions.rounding import round_released
from submissions.serializers import ResultSerializer

pytestmark = pytest.mark.django_db
LIST = "/api/v1/submissions/"


@pytest.fixture
def track(db) -> Track:
    """A classifier track with a clean and a shift set; nothing here opens their files."""
    track = Track.objects.create(benchmark=Benchmark.objects.create(slug="b", name="B"), slug="pages", name="Pages",
                                 task_kind="classifier", input_channels=1, input_height=28, input_width=28)
    for name, role in (("hidden", "clean"), ("usps", "shift")):
        EvaluationSet.objects.create(track=track, name=name, role=role, relative_path="x", sha256="0" * 64,
                                     num_examples=1000)
    return track


def _finished(track: Track, owner, count: int, start: int = 0, **kw) -> list[Submission]:
    """``count`` finished submissions, each with two current-suite results and one from an older suite."""
    submissions = Submission.objects.bulk_create([
        Submission(track=track, owner=owner, name=f"model {start + i:04d}", artifact="artifacts/x.pt2",
                   artifact_format="pt2", artifact_sha256=f"{start + i:064d}", state="finished",
                   public_id=uuid.uuid4(), **kw)
        for i in range(count)
    ])
    sets = list(track.evaluation_sets.all())
    Result.objects.bulk_create([
        Result(submission=s, evaluation_set=evaluation_set, metric="accuracy", value=value, ci_low=value - 0.01,
               ci_high=value + 0.01, num_examples=1000, suite_version=suite, seed=0)
        for s in submissions
        for evaluation_set in sets
        for suite, value in ((track.suite_version, 0.9), ("older-suite", 0.5))
    ])
    return submissions


def _queries(client: Client, url: str) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return len(captured), response.json()


def _clients(track: Track) -> dict[str, Client]:
    """An anonymous reader, a researcher and a staff member (both by API token)."""
    users = get_user_model().objects
    researcher = users.create_user("reader", password="a-long-password-1")
    staff = users.create_user("admin", password="a-long-password-2", is_staff=True)
    return {"anonymous": Client(),
            **{name: Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
               for name, user in (("researcher", researcher), ("staff", staff))}}


def test_a_page_costs_the_same_queries_at_5_and_at_50_rows(track, other_user, settings):
    _finished(track, other_user, 50)
    for who, client in _clients(track).items():
        small, five = _queries(client, f"{LIST}?track=pages&limit=5")
        large, fifty = _queries(client, f"{LIST}?track=pages&limit=50")
        assert (len(five["results"]), len(fifty["results"])) == (5, 50), who
        assert all(len(row["results"]) == 2 for row in fifty["results"]), who  # the rows really carry results
        assert small == large, (who, small, large)
    # Anonymous, cache off: the count, the page, its tracks, its owners, the results of all its rows and their sets.
    settings.ARENA_LEADERBOARD_CACHE_SECONDS = 0
    assert _queries(Client(), f"{LIST}?track=pages&limit=50")[0] == 6
    # With the cache (submissions/list_cache.py): one query, the count and the page's digest together; on a miss,
    # the page's ids and its rows' digests, then the rows not yet cached with the five queries of their build
    # (none when all are).
    settings.ARENA_LEADERBOARD_CACHE_SECONDS = 600
    cache.clear()
    assert [_queries(Client(), f"{LIST}?track=pages&limit=40")[0] for _ in range(2)] == [8, 1]
    assert _queries(Client(), f"{LIST}?track=pages&limit=30")[0] == 3


def test_listed_results_are_the_current_suite_and_match_the_status_url(track, other_user):
    """The list's one prefetch query and the status URL's own query give each submission the same rows."""
    _finished(track, other_user, 3)
    client = Client()
    for row in client.get(f"{LIST}?track=pages").json()["results"]:
        assert {(r["evaluation_set"], r["value"], r["suite_version"]) for r in row["results"]} == \
               {("hidden", 0.9, track.suite_version), ("usps", 0.9, track.suite_version)}
        assert client.get(row["status_url"]).json()["results"] == row["results"]


def test_results_are_written_as_drf_fields_would_write_them(track, other_user):
    """``ResultSerializer`` builds its rows directly; DRF's declared fields (the schema) must give the same."""
    (submission,) = _finished(track, other_user, 1)
    hidden = track.evaluation_sets.get(name="hidden")
    Result.objects.create(submission=submission, evaluation_set=hidden, metric="auc", value=0.777123,
                          ci_low=None, ci_high=None, ci_method="", num_examples=7, suite_version="s", seed=3)
    Result.objects.create(submission=submission, evaluation_set=hidden, metric="accuracy@fog:3", value=0.5123456,
                          ci_low=0.41, ci_high=0.6, ci_method="clopper-pearson-95", num_examples=100,
                          suite_version="s", seed=0)
    rows = list(Result.objects.filter(submission=submission).select_related("evaluation_set"))
    assert len(rows) == 6
    for row in rows:
        generic = serializers.ModelSerializer.to_representation(ResultSerializer(), row)
        generic["value"], generic["ci_low"], generic["ci_high"] = round_released(
            row.metric, row.value, row.ci_low, row.ci_high)
        assert list(ResultSerializer().to_representation(row).items()) == list(generic.items())


def test_withheld_scores_stay_withheld_in_the_list(track, other_user):
    (withheld,) = _finished(track, other_user, 1, released=False, ladder_note="Not better than your best.")
    clients = _clients(track)
    Submission.objects.filter(pk=withheld.pk).update(owner=get_user_model().objects.get(username="reader"))
    for who, expected in (("anonymous", 0), ("researcher", 0), ("staff", 2)):
        (row,) = clients[who].get(f"{LIST}?track=pages").json()["results"]
        assert len(row["results"]) == expected, who


def test_limit_is_clamped_to_the_maximum_and_next_says_so(track, other_user):
    _finished(track, other_user, MAX_PAGE_SIZE + 5)
    for query in ("", "?limit=100000", f"?limit={MAX_PAGE_SIZE + 1}", "?limit=116811296942864578696848605184",
                  "?limit=0", "?limit=-3", "?limit=abc"):
        body = Client().get(f"{LIST}{query}").json()
        assert body["count"] == MAX_PAGE_SIZE + 5 and len(body["results"]) == MAX_PAGE_SIZE, query
        assert f"limit={MAX_PAGE_SIZE}" in body["next"] and f"offset={MAX_PAGE_SIZE}" in body["next"], query
    rest = Client().get(Client().get(f"{LIST}?limit=100000").json()["next"]).json()
    assert len(rest["results"]) == 5 and rest["next"] is None
    assert len(Client().get(f"{LIST}?limit=7").json()["results"]) == 7  # below the maximum: as asked


def test_a_huge_offset_is_an_empty_page_not_a_server_error(track, other_user):
    """The tracks list answered a 500 to such numbers (SQLite: "datatype mismatch"); this list must not either."""
    _finished(track, other_user, 2)
    huge = "116811296942864578696848605184"
    for query in (f"offset={huge}", f"limit={huge}&offset={huge}", "limit=1&offset=-5"):
        response = Client(raise_request_exception=False).get(f"{LIST}?{query}")
        assert response.status_code == 200, query
    assert Client().get(f"{LIST}?offset={huge}").json()["results"] == []


def test_pages_neither_overlap_nor_skip_when_creation_times_tie(track, other_user):
    """Ordered on creation time alone, rows with the same timestamp could change places between pages."""
    made = _finished(track, other_user, 9)
    Submission.objects.update(created_at=timezone.now() - timedelta(days=1))  # one instant for all (bulk import)
    seen: list[str] = []
    url: str | None = f"{LIST}?limit=2"
    while url:
        body = Client().get(url).json()
        seen += [row["id"] for row in body["results"]]
        url = body["next"]
    assert sorted(seen) == sorted(str(s.public_id) for s in made) and len(seen) == len(set(seen))


def test_the_schema_documents_the_bound(track):
    schema = Client().get("/api/schema/?format=json").json()
    parameters = {p["name"]: p for p in schema["paths"]["/api/v1/submissions/"]["get"]["parameters"]}
    limit = parameters["limit"]
    assert f"at most {MAX_PAGE_SIZE}" in limit["description"] and "larger value is served as" in limit["description"]
    assert limit["schema"]["default"] == MAX_PAGE_SIZE and limit["schema"]["minimum"] == 1
    assert parameters["offset"]["schema"]["minimum"] == 0
    # The rows' results are typed in the schema now (they were an untyped method field).
    submission = schema["components"]["schemas"]["Submission"]["properties"]["results"]
    assert submission["type"] == "array" and submission["items"]["$ref"].endswith("/Result")
