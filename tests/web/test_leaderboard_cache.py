"""The leaderboard cache (leaderboards/cache.py): anonymous pages are shared, never stale, never leak.

Each test reads a page twice to prove the second read is a cache hit, changes the data the way the
platform does (the state machine, the owner's visibility and withdrawal views, a result rewritten),
and checks that the very next anonymous read shows the change.
"""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse

from benchmarks.models import Benchmark, EvaluationSet, Track
from evaluator.spec import JobResult, MetricValue
from leaderboards import cache as lb_cache
from submissions.arrival import record_result
from submissions.models import Result, Submission

pytestmark = pytest.mark.django_db
URL = "/tracks/board/"


@pytest.fixture
def track(db) -> Track:
    """A classifier track with one clean set; the leaderboard never opens the set's file."""
    track = Track.objects.create(benchmark=Benchmark.objects.create(slug="b", name="B"), slug="board", name="Board",
                                 task_kind="classifier", input_channels=1, input_height=28, input_width=28)
    EvaluationSet.objects.create(track=track, name="hidden", role="clean", relative_path="x", sha256="0" * 64,
                                 num_examples=1000)
    return track


def _submission(track: Track, owner, name: str, **kw) -> Submission:
    s = Submission(track=track, owner=owner, name=name, artifact_format="pt2", artifact_sha256=name.ljust(64, "0"),
                   **kw)
    s.artifact.save("x", ContentFile(b"PK"), save=False)
    s.save()
    return s


def _finish(submission: Submission, accuracy: float, **kw) -> Submission:
    """Through the worker's own path: running, results written, the Ladder, then finished."""
    submission.transition("running")
    record_result(submission, JobResult(
        job_id=str(submission.public_id), ok=True, suite_version=submission.track.suite_version, seed=0,
        metrics=[MetricValue("hidden", "accuracy", accuracy, 1000, accuracy - 0.01, accuracy + 0.01,
                             "clopper-pearson-95")], **kw))
    submission.refresh_from_db()
    return submission


def _get(client: Client, url: str = URL, **params: str) -> tuple[str, str]:
    response = client.get(url, params)
    assert response.status_code == 200
    return response.content.decode(), response[lb_cache.CACHE_HEADER]


def test_a_finished_submission_appears_on_the_next_anonymous_read(track, researcher):
    _finish(_submission(track, researcher, "Old model"), 0.90)
    client = Client()
    assert _get(client)[1] == "miss"
    html, how = _get(client)
    assert how == "hit" and "Old model" in html

    new = _submission(track, researcher, "New model")
    assert _get(client) == (html, "hit")  # a queued model changes nothing
    _finish(new, 0.95)
    html, how = _get(client)
    assert how == "miss" and "New model" in html
    assert html.index("New model") < html.index("Old model")
    for url in (f"{URL}leaderboard.json", f"{URL}leaderboard.csv", "/api/v1/tracks/board/leaderboard/"):
        _get(client, url)
        body, how = _get(client, url)
        assert how == "hit" and "New model" in body, url


def test_a_re_evaluation_replaces_the_cached_numbers(track, researcher):
    model = _finish(_submission(track, researcher, "Model"), 0.90)
    client = Client()
    _get(client, f"{URL}leaderboard.json")
    assert _get(client, f"{URL}leaderboard.json")[1] == "hit"
    model.transition("queued")
    assert "Model" not in _get(client, f"{URL}leaderboard.json")[0]  # re-queued: off the board at once
    _finish(model, 0.97)
    rows = Client().get(f"{URL}leaderboard.json").json()["rows"]
    assert rows[0]["scores"]["hidden:accuracy"]["value"] == pytest.approx(0.97, abs=1e-3)


def test_a_private_model_never_reaches_the_anonymous_page(track, researcher, other_user):
    _finish(_submission(track, other_user, "Public model"), 0.90)
    _finish(_submission(track, researcher, "Secret model", is_public=False), 0.99)
    owner = Client()
    owner.force_login(researcher)
    # The owner reads first: their page (with the private model) must not be what the cache keeps.
    for url in (URL, f"{URL}leaderboard.json", f"{URL}leaderboard.csv", "/api/v1/tracks/board/leaderboard/"):
        body, how = _get(owner, url)
        # The page's body is cached for the owner alone (cache.page_for_reader); exports are built for them.
        assert how == ("body-miss" if url == URL else "bypass") and "Secret model" in body, url
        anonymous = Client()
        for expected in ("miss", "hit"):
            body, how = _get(anonymous, url)
            assert how == expected and "Secret model" not in body and "Public model" in body, url


def test_a_model_made_private_or_withdrawn_leaves_the_cached_page_at_once(track, researcher):
    public = _finish(_submission(track, researcher, "Going private"), 0.90)
    withdrawn = _finish(_submission(track, researcher, "Going away"), 0.91)
    anonymous, owner = Client(), Client()
    owner.force_login(researcher)
    _get(anonymous)
    html, how = _get(anonymous)
    assert how == "hit" and "Going private" in html and "Going away" in html

    # The owner's own views change visibility with QuerySet.update(), which sends no signal.
    owner.post(reverse("submission-visibility", args=[public.public_id]), {"public": "0"})
    html, how = _get(anonymous)
    assert how == "miss" and "Going private" not in html and "Going away" in html
    owner.post(reverse("submission-withdraw", args=[withdrawn.public_id]), {"action": "withdraw"})
    html, _ = _get(anonymous)
    assert "Going away" not in html
    assert "Going private" in _get(owner)[0]  # still listed for its owner (marked private)


def test_filters_and_sorting_have_their_own_entries(track, researcher, other_user):
    _finish(_submission(track, researcher, "Robust one", model_type="robust"), 0.80)
    _finish(_submission(track, other_user, "Standard one", model_type="standard"), 0.95)
    client = Client()
    everything, _ = _get(client)
    robust, how = _get(client, model_type="robust")
    assert how == "miss" and "Robust one" in robust and "Standard one" not in robust
    best_first, _ = _get(client, sort="hidden:accuracy", order="desc")
    worst_first, how = _get(client, sort="hidden:accuracy", order="asc")
    assert how == "miss"
    assert best_first.index("Standard one") < best_first.index("Robust one")
    assert worst_first.index("Robust one") < worst_first.index("Standard one")
    # Each entry comes back as itself; an unknown parameter shares the plain page's entry.
    assert _get(client, model_type="robust") == (robust, "hit")
    assert _get(client, sort="hidden:accuracy", order="asc") == (worst_first, "hit")
    assert _get(client, utm_source="newsletter") == (everything, "hit")
    csv_all, _ = _get(client, f"{URL}leaderboard.csv")
    csv_robust, how = _get(client, f"{URL}leaderboard.csv", model_type="robust")
    assert how == "miss" and "Standard one" in csv_all and "Standard one" not in csv_robust


def test_edits_that_keep_the_listed_models_bump_the_track_version(track, researcher,
                                                                  django_capture_on_commit_callbacks):
    model = _finish(_submission(track, researcher, "Before"), 0.90)
    client = Client()
    _get(client)
    assert _get(client)[1] == "hit"
    with django_capture_on_commit_callbacks(execute=True):
        model.name = "After"
        model.save()  # an admin edit: same models listed, so only the signal's version bump can tell
    html, how = _get(client)
    assert how == "miss" and "After" in html and "Before" not in html

    _get(client, f"{URL}leaderboard.json")
    with django_capture_on_commit_callbacks(execute=True):
        result = Result.objects.get(submission=model)
        result.value, result.ci_low, result.ci_high = 0.5, 0.49, 0.51
        result.save()
    data = client.get(f"{URL}leaderboard.json").json()
    assert data["rows"][0]["scores"]["hidden:accuracy"]["value"] == pytest.approx(0.5)


def test_an_evicted_version_never_revives_old_entries(track, researcher):
    version = lb_cache.track_version(track.pk)
    assert lb_cache.track_version(track.pk) == version
    lb_cache.bump_tracks([track.pk])
    assert lb_cache.track_version(track.pk) == version + 1
    cache.delete(f"arena:leaderboard:version:{track.pk}")
    assert lb_cache.track_version(track.pk) not in {0, version, version + 1}


def test_signed_in_readers_sessions_and_a_disabled_cache_bypass_it(track, researcher, settings):
    _finish(_submission(track, researcher, "Model"), 0.90)
    client = Client()
    client.cookies[settings.SESSION_COOKIE_NAME] = "someone's session"
    assert _get(client)[1] == "body-miss"  # not the whole response: the body, the reader's header rendered for them
    settings.ARENA_LEADERBOARD_CACHE_SECONDS = 0
    anonymous = Client()
    assert [_get(anonymous)[1] for _ in range(2)] == ["bypass", "bypass"]


def test_the_data_stamp_changes_with_every_change_of_the_listing(track, researcher):
    """Each way a model joins or leaves the anonymous listing, signal or not, gives a new stamp."""
    from accounts.models import Withdrawal
    from leaderboards.queries import Filters, _visible_submissions

    def stamp() -> str:
        found = lb_cache.lookup(track.slug)
        assert found is not None and found.track_id == track.pk and found.suite_version == track.suite_version
        return found.stamp

    def listed() -> set[str]:
        return {s.name for s in _visible_submissions(track, None, Filters())}

    a = _finish(_submission(track, researcher, "A"), 0.9)
    b = _finish(_submission(track, researcher, "B"), 0.9)
    queued = _submission(track, researcher, "Queued")
    failed = _submission(track, researcher, "Failed")
    failed.transition("running")
    failed.transition("failed")
    changes = [
        lambda: Withdrawal.objects.create(submission=a),  # withdrawn (even while still marked public)
        lambda: Withdrawal.objects.filter(submission=a).delete(),
        lambda: Submission.objects.filter(pk=b.pk).update(is_public=False),
        lambda: Submission.objects.filter(pk=b.pk).update(is_public=True),
        lambda: Submission.objects.filter(pk=b.pk).update(released=False),  # the Ladder withholds it
        lambda: Submission.objects.filter(pk=b.pk).update(released=True),
        lambda: _finish(queued, 0.8),
        lambda: b.transition("queued"),  # a re-run takes it off the board until it finishes again
        lambda: _finish(b, 0.95),
    ]
    states = [(listed(), stamp())]
    for change in changes:
        change()
        states.append((listed(), stamp()))
    for i, (listing, stamp_i) in enumerate(states):
        assert i == 0 or listing != states[i - 1][0], f"change {i} left the listing as it was"
        for other, stamp_j in states[:i]:
            assert other == listing or stamp_i != stamp_j, f"change {i}: a different listing, the same stamp"
    assert listed() == {"A", "B", "Queued"} and "Failed" not in listed()
    Track.objects.filter(pk=track.pk).update(is_public=False)
    assert lb_cache.lookup(track.slug) is None and lb_cache.lookup("no-such-track") is None


def test_cached_bodies_are_served_gzipped_to_clients_that_accept_it(track, researcher):
    import gzip

    _finish(_submission(track, researcher, "Model"), 0.9)
    client = Client()
    for url in (URL, f"{URL}leaderboard.csv", f"{URL}leaderboard.json"):
        plain = client.get(url)
        assert plain[lb_cache.CACHE_HEADER] == "miss" and "Content-Encoding" not in plain
        for expected in ("hit", "hit"):
            packed = client.get(url, headers={"Accept-Encoding": "gzip, deflate, br"})
            assert packed[lb_cache.CACHE_HEADER] == expected and packed["Content-Encoding"] == "gzip"
            assert gzip.decompress(packed.content) == plain.content
            assert "Accept-Encoding" in packed["Vary"] and packed["Content-Type"] == plain["Content-Type"]
        again = client.get(url)
        assert again.content == plain.content and again.get("Content-Disposition") == plain.get("Content-Disposition")
    assert Client().get("/tracks/no-such-track/").status_code == 404


def test_a_hit_carries_the_headers_the_full_stack_sends(track, researcher):
    _finish(_submission(track, researcher, "Model"), 0.9)
    client = Client()
    built, hit = client.get(URL), client.get(URL)
    assert (built[lb_cache.CACHE_HEADER], hit[lb_cache.CACHE_HEADER]) == ("miss", "hit")
    ignored = {lb_cache.CACHE_HEADER.lower(), "content-length"}
    assert {k.lower(): v for k, v in built.items() if k.lower() not in ignored} == \
           {k.lower(): v for k, v in hit.items() if k.lower() not in ignored}
    assert "Content-Security-Policy" in hit and hit["X-Frame-Options"] == "DENY"
    assert int(hit["Content-Length"]) == len(hit.content) and not hit.cookies


def test_the_track_list_bounds_limit_and_offset(track):
    """Found by schemathesis: a limit past 2**63 reached SQLite ("datatype mismatch") as a server error."""
    huge = "116811296942864578696848605184"
    for query in (f"limit={huge}", f"offset={huge}", f"limit={huge}&offset={huge}", "limit=1&offset=-5"):
        response = Client().get(f"/api/v1/tracks/?{query}")
        assert response.status_code == 200, query
    assert [t["slug"] for t in Client().get(f"/api/v1/tracks/?limit={huge}").json()["results"]] == ["board"]


def test_a_cache_server_that_is_down_does_not_take_the_page_down(track, researcher, monkeypatch):
    class Down:
        def __getattr__(self, name: str):
            def fail(*args, **kwargs):
                raise ConnectionError("redis is down")
            return fail

    _finish(_submission(track, researcher, "Model"), 0.9)
    monkeypatch.setattr(lb_cache, "cache", Down())
    html, how = _get(Client())
    assert how == "bypass" and "Model" in html
