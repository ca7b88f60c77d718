"""Signed-in pages and the API list from the cache (issue 19): shared only where identical, never stale.

``leaderboards.cache.page_for_reader`` shares the body of a leaderboard or a model page between
readers (the header filled in for each), and ``submissions.list_cache`` keeps API list pages under a
digest of their rows. These tests read as one user, then as others, and check that nobody ever
gets what belongs to someone else (a private model, a username, an owner's forms), that what is
shared is what the view would build for the reader, and that a change (progress, state, visibility
through ``QuerySet.update()``) shows on the very next read.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.test import Client, override_settings
from django.urls import reverse
from rest_framework.authtoken.models import Token

from benchmarks.models import Benchmark, EvaluationSet, Track
from evaluator.spec import JobResult, MetricValue
from leaderboards import cache as lb_cache
from submissions import list_cache
from submissions.arrival import record_result
from submissions.models import Submission

pytestmark = pytest.mark.django_db
BOARD = "/tracks/board/"
LIST = "/api/v1/submissions/?track=board"
_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="[^"]*"')


@pytest.fixture
def track(db) -> Track:
    track = Track.objects.create(benchmark=Benchmark.objects.create(slug="b", name="B"), slug="board", name="Board",
                                 task_kind="classifier", input_channels=1, input_height=28, input_width=28)
    EvaluationSet.objects.create(track=track, name="hidden", role="clean", relative_path="x", sha256="0" * 64,
                                 num_examples=1000)
    return track


@pytest.fixture
def people(db) -> dict[str, Client]:
    """Three signed-in readers (by session) and an anonymous one."""
    clients = {"anonymous": Client()}
    for name in ("alice", "bob", "carol"):
        user = get_user_model().objects.create_user(name, password=f"{name}-long-password-1")
        clients[name] = Client()
        clients[name].force_login(user)
    return clients


def _user(name: str):
    return get_user_model().objects.get(username=name)


def _submission(track: Track, owner, name: str, **kw) -> Submission:
    s = Submission(track=track, owner=owner, name=name, artifact_format="pt2", artifact_sha256=name.ljust(64, "0"),
                   **kw)
    s.artifact.save("x", ContentFile(b"PK"), save=False)
    s.save()
    return s


def _finish(submission: Submission, accuracy: float) -> Submission:
    submission.transition("running")
    record_result(submission, JobResult(
        job_id=str(submission.public_id), ok=True, suite_version=submission.track.suite_version, seed=0,
        metrics=[MetricValue("hidden", "accuracy", accuracy, 1000, accuracy - 0.01, accuracy + 0.01,
                             "clopper-pearson-95")]))
    submission.refresh_from_db()
    return submission


def _get(client: Client, url: str) -> tuple[int, str, str | None]:
    response = client.get(url)
    return response.status_code, response.content.decode(), response.get(lb_cache.CACHE_HEADER)


def _uncached(client: Client, url: str) -> str:
    with override_settings(ARENA_LEADERBOARD_CACHE_SECONDS=0):
        status, body, _ = _get(client, url)
    assert status == 200
    return body


def _same_page(a: str, b: str) -> bool:
    """Equal but for the CSRF token of the header's log-out form (masked anew on every render)."""
    return _CSRF.sub("", a) == _CSRF.sub("", b)


def test_a_signed_in_leaderboard_never_shows_anyone_else_s_private_model_or_name(track, people):
    _finish(_submission(track, _user("bob"), "Public model"), 0.90)
    _finish(_submission(track, _user("alice"), "Alice secret", is_public=False), 0.99)

    status, body, how = _get(people["alice"], BOARD)  # the owner reads first: her body is hers alone
    assert (status, how) == (200, "body-miss") and "Alice secret" in body and "Log out alice" in body
    assert _get(people["alice"], BOARD)[2] == "body-hit"
    for name in ("bob", "carol", "anonymous"):
        for _ in range(2):
            status, body, how = _get(people[name], BOARD)
            assert status == 200 and "Alice secret" not in body and "Public model" in body, name
            assert "Log out alice" not in body, name
            assert name == "anonymous" or f"Log out {name}" in body
    # Bob (a model on the board: ringed) and Carol (none) each get exactly the page built for them now.
    for name in ("bob", "carol", "alice"):
        status, body, how = _get(people[name], BOARD)
        assert how == "body-hit" and _same_page(body, _uncached(people[name], BOARD)), name
    # Carol's body is the one any signed-in reader without a model there shares: a new reader hits it.
    dave = Client()
    dave.force_login(get_user_model().objects.create_user("dave", password="dave-long-password-1"))
    status, body, how = _get(dave, BOARD)
    assert how == "body-hit" and "Log out dave" in body and "Log out carol" not in body


def test_a_signed_in_reader_sees_their_own_change_at_once(track, people):
    mine = _finish(_submission(track, _user("alice"), "Alice model"), 0.90)
    _get(people["alice"], BOARD)
    assert _get(people["alice"], BOARD)[2] == "body-hit"
    # Made private with QuerySet.update() (no signal): still hers, gone for everyone else at once.
    people["alice"].post(reverse("submission-visibility", args=[mine.public_id]), {"public": "0"})
    status, body, how = _get(people["alice"], BOARD)  # with her message, filled in like her header
    assert how == "body-miss" and "Alice model" in body and "The model is now private." in body
    status, body, how = _get(people["alice"], BOARD)
    assert how == "body-hit" and _same_page(body, _uncached(people["alice"], BOARD))
    assert "The model is now private." not in body
    for name in ("bob", "anonymous"):
        assert "Alice model" not in _get(people[name], BOARD)[1], name
    # A private model of hers finishing shows on her next read.
    _finish(_submission(track, _user("alice"), "Alice second", is_public=False), 0.95)
    status, body, how = _get(people["alice"], BOARD)
    assert how == "body-miss" and "Alice second" in body
    assert "Alice second" not in _get(people["bob"], BOARD)[1]


def test_model_page_body_is_shared_with_readers_but_never_the_owner_s_forms(track, people):
    model = _finish(_submission(track, _user("alice"), "Alice model"), 0.90)
    url = model.get_absolute_url()
    status, body, how = _get(people["alice"], url)  # the owner: built for her, with her forms, never stored
    assert status == 200 and how == "bypass" and "Withdraw from leaderboards" in body
    for name in ("bob", "carol", "anonymous"):
        status, body, how = _get(people[name], url)
        assert status == 200 and "Withdraw from leaderboards" not in body and "Log out alice" not in body, name
    status, body, how = _get(people["carol"], url)
    assert how == "body-hit" and "Log out carol" in body and _same_page(body, _uncached(people["carol"], url))
    # Made private with QuerySet.update(): others get a 404 on their next read, the owner still her page.
    people["alice"].post(reverse("submission-visibility", args=[model.public_id]), {"public": "0"})
    for name in ("bob", "carol", "anonymous"):
        assert _get(people[name], url)[0] == 404, name
    assert _get(people["alice"], url)[0] == 200


def test_the_kept_header_carries_a_working_token_of_the_reader_s_own_and_a_rename_at_once(track, people):
    """The header is rendered once per reader and process; the CSRF token in it is this request's, and it works."""
    _finish(_submission(track, _user("bob"), "Public model"), 0.90)
    reader = Client(enforce_csrf_checks=True)
    reader.force_login(get_user_model().objects.create_user("erin", password="erin-long-password-1"))
    tokens = []
    for _ in range(3):
        status, body, how = _get(reader, BOARD)
        assert status == 200 and "Log out erin" in body
        tokens.append(_CSRF.search(body).group(0))
    assert how == "body-hit" and len(set(tokens)) == 3  # masked anew on every request, as Django renders it
    get_user_model().objects.filter(username="erin").update(username="erin2")  # no signal: the key is the name
    status, body, how = _get(reader, BOARD)
    assert how == "body-hit" and "Log out erin2" in body and "Log out erin<" not in body
    token = _CSRF.search(body).group(0).split('value="')[1].rstrip('"')
    assert reader.post(reverse("logout"), {"csrfmiddlewaretoken": "x" * 64}).status_code == 403
    assert reader.post(reverse("logout"), {"csrfmiddlewaretoken": token}).status_code in (200, 302)
    status, body, _ = _get(reader, BOARD)
    assert status == 200 and "Log out" not in body and "Log in" in body  # the token logged them out


def test_a_body_with_a_csrf_token_is_never_stored(track, people, monkeypatch):
    """A page whose body (not the header) holds a form is one session's: built every time."""
    model = _finish(_submission(track, _user("alice"), "Alice model"), 0.90)
    url = model.get_absolute_url()
    monkeypatch.setattr(lb_cache, "reader_scope", lambda kind, request, found: "signed-in")  # as if shareable
    for _ in range(2):
        status, body, how = _get(people["alice"], url)  # her page has her forms in its body
        assert status == 200 and how == "bypass" and "Withdraw from leaderboards" in body
    assert "Withdraw from leaderboards" not in _get(people["bob"], url)[1]


def _list(client: Client, **headers: str) -> tuple[dict, str]:
    response = client.get(LIST, **headers)
    assert response.status_code == 200
    return response.json(), response.get(lb_cache.CACHE_HEADER, "bypass")


def test_api_list_pages_are_shared_only_between_readers_who_see_the_same_rows(track, people):
    _finish(_submission(track, _user("bob"), "Public model"), 0.90)
    _finish(_submission(track, _user("alice"), "Alice secret", is_public=False), 0.99)
    token = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=_user('alice')).key}"}

    for client, headers in ((people["alice"], {}), (Client(), token)):  # by session, then by token
        data, how = _list(client, **headers)
        assert {r["name"] for r in data["results"]} == {"Public model", "Alice secret"} and data["count"] == 2
    assert _list(people["alice"])[1] == "hit"
    for name in ("bob", "carol", "anonymous"):
        data, how = _list(people[name])
        assert {r["name"] for r in data["results"]} == {"Public model"} and data["count"] == 1, name
    # Bob, Carol and the anonymous reader see the same rows: one entry, and each gets what the view builds.
    assert _list(people["carol"])[1] == "hit"
    with override_settings(ARENA_LEADERBOARD_CACHE_SECONDS=0):
        assert _list(people["carol"]) == (_list(people["carol"])[0], "bypass")
        built = _list(people["carol"])[0]
    assert _list(people["carol"])[0] == built


def test_api_list_shows_progress_state_and_visibility_changes_at_once(track, people):
    running = _submission(track, _user("bob"), "Running model")
    running.transition("running")
    _list(people["anonymous"])
    data, how = _list(people["anonymous"])
    assert how == "hit" and data["results"][0]["state"] == "running"
    # A progress report, as the worker writes it (QuerySet.update(), another process: no signal).
    Submission.objects.filter(pk=running.pk).update(progress=0.42, progress_stage="attacks")
    for name in ("anonymous", "carol"):
        data, _ = _list(people[name])
        assert (data["results"][0]["progress"], data["results"][0]["progress_stage"]) == (0.42, "attacks"), name
    running.refresh_from_db()
    running.transition("failed", failure_code="crashed")
    data, how = _list(people["anonymous"])
    assert how == "miss" and data["results"][0]["state"] == "failed"
    Submission.objects.filter(pk=running.pk).update(is_public=False)
    data, how = _list(people["anonymous"])
    assert data["count"] == 0 and data["results"] == []
    data, _ = _list(people["bob"])  # still listed for its owner
    assert [r["name"] for r in data["results"]] == ["Running model"]


@pytest.mark.django_db(transaction=True)
def test_api_list_between_transactions_reads_its_stamp_once_per_change_and_never_a_stale_one(track, people):
    """Outside a transaction the page's stamp query runs again only when the database changed (list_cache._stamp):
    a commit by another connection, a write by this one, and a write rolled back all show on the next read."""
    import threading

    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from tests.web.quiet_database import when_quiet

    running = _submission(track, _user("bob"), "Running model")
    running.transition("running")
    reader = people["anonymous"]

    def progress() -> float:
        data, _ = _list(reader)
        return data["results"][0]["progress"]

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            _list(reader)
        return len(captured)

    def again() -> int:  # a read, then the queries of the next one (judged only when nothing committed between)
        _list(reader)
        return queries()

    assert progress() == 0.0
    assert when_quiet(again) == 1  # unchanged since: the database's version alone, not the stamp
    Submission.objects.filter(pk=running.pk).update(progress_stage="clean")
    assert queries() > 2  # changed: the version, the stamp, then the page's rows built again
    assert when_quiet(again) == 1

    def elsewhere() -> None:  # a worker's progress report: another connection, committed
        Submission.objects.filter(pk=running.pk).update(progress=0.42)
        connection.close()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert progress() == 0.42
    Submission.objects.filter(pk=running.pk).update(progress=0.5)  # this connection, committed
    assert progress() == 0.5
    with pytest.raises(RuntimeError), transaction.atomic():
        Submission.objects.filter(pk=running.pk).update(progress=0.9)
        assert progress() == 0.9  # inside the transaction: its own write, the stamp asked every time
        raise RuntimeError("roll back")
    assert progress() == 0.5
    Submission.objects.filter(pk=running.pk).update(is_public=False)
    data, _ = _list(reader)
    assert data["count"] == 0


def test_an_api_page_assembled_from_cached_rows_is_byte_for_byte_the_built_one(track, people, monkeypatch):
    """A progress report rebuilds one row of the page; the page equals what DRF renders whole, cache off."""
    from django.core.cache import cache

    from submissions.serializers import SubmissionSerializer

    for i in range(3):
        _finish(_submission(track, _user("bob"), f"Model {i}"), 0.8 + i / 100)
    running = _submission(track, _user("carol"), "Running model")
    running.transition("running")
    reader = people["alice"]
    token = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=_user('alice')).key}"}
    serialized: list[str] = []
    original = SubmissionSerializer.to_representation

    def counting(self, instance):
        serialized.append(instance.name)
        return original(self, instance)

    monkeypatch.setattr(SubmissionSerializer, "to_representation", counting)

    def body(**headers: str) -> bytes:
        return reader.get(LIST, **headers).content

    def built(**headers: str) -> bytes:
        with override_settings(ARENA_LEADERBOARD_CACHE_SECONDS=0):
            return body(**headers)

    cache.clear()
    indented = {"HTTP_ACCEPT": "application/json; indent=2"}
    assert body() == built() and body(**indented) == built(**indented)
    from django.utils import timezone

    # A progress report (with its heartbeat) changes no kept row: the live values are filled in, nothing serialized.
    Submission.objects.filter(pk=running.pk).update(progress=0.5, progress_stage='attacks "Linf" é',
                                                    heartbeat_at=timezone.now())
    serialized.clear()
    fresh = body()
    assert serialized == []
    assert fresh == built() and b'"progress":0.5,"progress_stage":"attacks \\"Linf\\" \xc3\xa9"' in fresh
    assert body(**token) == built(**token)
    Submission.objects.filter(pk=running.pk).update(progress=1 / 3)  # a float as DRF writes it
    assert body() == built() and f'"progress":{1 / 3!r}'.encode() in body()
    # Any other change to a row serializes that row, and only it, again; a name cannot imitate the cuts.
    imitation = 'Renamed "progress":-7e+307,"progress_stage":"\\u0000arena-live-progress-stage\\u0000" -7e+307'
    Submission.objects.filter(pk=running.pk).update(name=imitation)
    serialized.clear()
    renamed = body()
    assert serialized == [imitation] and renamed == built()
    Submission.objects.filter(pk=running.pk).update(progress=0.25)
    serialized.clear()
    fresh = body()
    assert serialized == [] and fresh == built()  # the imitating row was kept and cut where it should be
    # What the kept rows leave out must be what the list does not show, and the live fields what it does.
    shown = set(SubmissionSerializer.Meta.fields)
    assert not shown & set(list_cache.UNSHOWN_FIELDS) and set(list_cache.LIVE_FIELDS) <= shown


def test_a_shared_body_goes_out_as_one_valid_gzip_stream_with_the_reader_s_header(track, people):
    """Browsers get the stored compressed segments joined around their header: gzip checks its CRC and size."""
    import gzip

    _finish(_submission(track, _user("bob"), "Model é ✓"), 0.9)  # non-ASCII: lengths are bytes, not characters
    plain = _get(people["carol"], BOARD)[1]
    for _ in range(2):
        response = people["carol"].get(BOARD, HTTP_ACCEPT_ENCODING="gzip, deflate, br")
        assert response["Content-Encoding"] == "gzip" and "Accept-Encoding" in response["Vary"]
        assert response[lb_cache.CACHE_HEADER] == "body-hit"
        body = gzip.decompress(response.content).decode()  # raises on a wrong CRC or length
        assert _same_page(body, plain) and "Log out carol" in body and "Model é ✓" in body
    model_page = Submission.objects.get(name="Model é ✓").get_absolute_url()
    _get(people["carol"], model_page)
    response = people["carol"].get(model_page, HTTP_ACCEPT_ENCODING="gzip")
    assert _same_page(gzip.decompress(response.content).decode(), _uncached(people["carol"], model_page))


def test_anonymous_readers_without_a_session_still_get_the_whole_cached_response(track, people):
    """The shared-body path is for readers the middleware cannot serve whole; it must not take those it can."""
    _finish(_submission(track, _user("bob"), "Model"), 0.9)
    reader = Client(HTTP_ACCEPT_ENCODING="gzip")
    assert [reader.get(BOARD)[lb_cache.CACHE_HEADER] for _ in range(2)] == ["miss", "hit"]
