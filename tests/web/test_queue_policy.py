"""The evaluation queue's policy, in the database: fair share between users, uploads before baselines and
robots, admins' priorities, and a reported position that is the order in which jobs then start.

No broker here: ``submissions.dispatch.enqueue`` is replaced by a recorder, and jobs are started by
``scheduling.claim_next``, which is what a worker calls when a wake-up message reaches it. The real
worker, on every broker, is in test_queue_worker.py.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import QueuePriority
from benchmarks.models import Track
from submissions import scheduling
from submissions.dispatch import queue_of
from submissions.models import Submission
from submissions.services import create_submission

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def roomy_quota(settings):
    settings.ARENA_DEFAULT_DAILY_LIMIT = settings.ARENA_DEFAULT_TOTAL_LIMIT = 100


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    sent: list[int] = []
    monkeypatch.setattr("submissions.dispatch.enqueue", lambda submission: sent.append(submission.pk))
    return sent


def _user(name: str, *groups: str):
    user = get_user_model().objects.create_user(name, password=f"{name}-long-password")
    for group in groups:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


def _queue(owner, track: Track, count: int = 1, **metadata) -> list[Submission]:
    return [create_submission(owner, track, ContentFile(f"{owner}-{track.slug}-{i}-{metadata}".encode(), name="m.pt2"),
                              name=f"{owner.username}-{i}", **metadata) for i in range(count)]


def _start_all(track: Track) -> list[int]:
    """Start every queued job of the track's queue in turn, as workers would: the order they started in."""
    started = []
    while (claim := scheduling.claim_next(queue_of(track), f"message-{len(started)}")) is not None:
        started.append(claim.submission_id)
    return started


def _ahead(jobs: list[Submission]) -> dict[int, int]:
    return {pk: where.ahead for pk, where in scheduling.places(jobs).items()}


def test_a_users_second_job_waits_behind_every_other_users_first(digits_track):
    ada, bob = _user("ada"), _user("bob")
    adas = _queue(ada, digits_track, 20)
    [bobs] = _queue(bob, digits_track)
    ahead = _ahead([*adas, bobs])
    assert ahead[bobs.pk] == 1  # only Ada's first job starts before Bob's
    assert sorted(ahead.values()) == list(range(21))  # every job has its own place

    started = _start_all(digits_track)
    assert started.index(bobs.pk) == 1
    assert started == sorted(ahead, key=ahead.get)  # the reported positions are the order of starting


def test_positions_do_not_move_as_jobs_start_and_finish(digits_track):
    ada, bob, cy = _user("ada"), _user("bob"), _user("cy")
    jobs = [*_queue(ada, digits_track, 3), *_queue(bob, digits_track, 2), *_queue(cy, digits_track)]
    before = _ahead(jobs)
    first = scheduling.claim_next(queue_of(digits_track), "m-1")
    Submission.objects.get(pk=first.submission_id).transition("failed", failure_code="model_error")
    after = _ahead(jobs)
    assert first.submission_id == min(before, key=before.get)
    assert all(after[pk] == before[pk] - 1 for pk in after)  # everyone moved up by exactly one


def test_a_newcomer_joins_the_current_round_not_the_end(digits_track):
    """Ada's first job is running; Bob arrives while her 19 others wait: he waits for one of hers at most."""
    ada, bob = _user("ada"), _user("bob")
    adas = _queue(ada, digits_track, 20)
    running = scheduling.claim_next(queue_of(digits_track), "m-1")
    assert running.submission_id == adas[0].pk
    [bobs] = _queue(bob, digits_track)
    assert scheduling.place(bobs).ahead == 1
    assert _start_all(digits_track)[:2] == [adas[1].pk, bobs.pk]


def test_baselines_and_robots_wait_behind_uploads_unless_an_admin_raises_them(digits_track):
    robot, ada = _user("ci", "robots"), _user("ada")
    [by_robot] = _queue(robot, digits_track)
    [baseline] = _queue(_user("staff"), digits_track, is_baseline=True, model_type="standard")
    [upload] = _queue(ada, digits_track)
    assert _ahead([by_robot, baseline, upload]) == {upload.pk: 0, by_robot.pk: 1, baseline.pk: 2}

    QueuePriority.objects.create(user=robot, priority=1)  # an admin raises the robot above researchers
    assert _ahead([by_robot, baseline, upload]) == {by_robot.pk: 0, upload.pk: 1, baseline.pk: 2}
    assert _start_all(digits_track) == [by_robot.pk, upload.pk, baseline.pk]


def test_a_tracks_priority_moves_its_jobs_within_a_shared_queue(digits_track):
    other = Track.objects.create(benchmark=digits_track.benchmark, slug="other", name="Other", task_kind="classifier",
                                 input_channels=1, input_height=28, input_width=28, num_classes=10)
    ada = _user("ada")
    [first] = _queue(ada, digits_track)
    [urgent] = _queue(_user("bob"), other)
    assert _ahead([first, urgent]) == {first.pk: 0, urgent.pk: 1}
    Track.objects.filter(pk=other.pk).update(queue_priority=5)
    assert _ahead([first, urgent]) == {urgent.pk: 0, first.pk: 1}


def test_a_track_with_its_own_queue_is_counted_apart(digits_track):
    heavy = Track.objects.create(benchmark=digits_track.benchmark, slug="heavy", name="Heavy", task_kind="classifier",
                                 input_channels=1, input_height=28, input_width=28, num_classes=10, queue="heavy")
    ada = _user("ada")
    light = _queue(ada, digits_track, 3)
    [big] = _queue(_user("bob"), heavy)
    assert scheduling.place(big).ahead == 0
    assert _ahead(light) == {light[0].pk: 0, light[1].pk: 1, light[2].pk: 2}
    assert scheduling.claim_next("heavy", "m-h").submission_id == big.pk


def test_a_cancelled_job_is_passed_over(digits_track):
    ada, bob = _user("ada"), _user("bob")
    [gone] = _queue(ada, digits_track)
    [kept] = _queue(bob, digits_track)
    gone.transition("cancelled", failure_reason="Cancelled.")
    assert scheduling.place(kept).ahead == 0
    assert _start_all(digits_track) == [kept.pk]


def test_the_estimated_start_follows_recent_durations_and_running_jobs(digits_track):
    ada = _user("ada")
    now = timezone.now()
    for i in range(3):  # three finished evaluations of 60 s each
        [done] = _queue(_user(f"old{i}"), digits_track)
        Submission.objects.filter(pk=done.pk).update(state="finished", started_at=now - dt.timedelta(seconds=600),
                                                     finished_at=now - dt.timedelta(seconds=540))
    [running] = _queue(_user("bob"), digits_track)
    Submission.objects.filter(pk=running.pk).update(state="running", started_at=now - dt.timedelta(seconds=20))
    jobs = _queue(ada, digits_track, 3)
    places = scheduling.places(jobs, now=now)
    # One busy worker: the running job has 40 s left, then 60 s for each job ahead.
    assert [places[j.pk].ahead for j in jobs] == [0, 1, 2]
    assert [(places[j.pk].estimated_start - now).total_seconds() for j in jobs] == [40, 100, 160]


def test_the_api_and_the_page_show_the_jobs_ahead(digits_track):
    ada, bob = _user("ada"), _user("bob")
    _queue(ada, digits_track, 2)
    [mine] = _queue(bob, digits_track)
    client = APIClient()
    client.force_authenticate(bob)
    status = client.get(f"/api/v1/submissions/{mine.public_id}/").json()
    assert status["jobs_ahead"] == 1 and status["queue_position"] == 2 and status["estimated_start"] is None
    Submission.objects.filter(pk=mine.pk).update(is_public=True)
    page = Client().get(mine.get_absolute_url()).content.decode()
    assert "1 job will start before this one." in page
    polled = Client().get(f"/submissions/{mine.public_id}/status.json").json()
    assert polled["jobs_ahead"] == 1 and polled["queue_text"] == "1 job will start before this one."


def _locked_elsewhere(pk: int, lock: str):
    """Hold a lock on job ``pk`` from another connection (another process's transaction) until the event it
    returns is set; ``lock`` is "update" (a write, as the sender's) or "select" (SELECT ... FOR UPDATE)."""
    import threading

    from django.db import connection, connections, transaction

    if connection.vendor != "postgresql":
        pytest.skip("row locks (SELECT ... FOR UPDATE SKIP LOCKED) are PostgreSQL's; SQLite has none to skip")
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                if lock == "update":
                    Submission.objects.filter(pk=pk).update(task_id="the-message")
                else:
                    list(Submission.objects.select_for_update().filter(pk=pk))
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(10)
    return release, thread


@pytest.mark.django_db(transaction=True)
def test_a_job_locked_for_a_moment_by_its_sender_is_still_claimed(digits_track):
    """The sender writes the message's id on the job right after sending it (dispatch.enqueue), the watchdog its
    wake-up time: a worker that takes the message within that write found the job locked, passed it over and went
    idle, leaving it queued with no message (CI, test_worker_faults). It now looks again a moment later."""
    import threading

    [job] = _queue(_user("ada"), digits_track)
    release, thread = _locked_elsewhere(job.pk, "update")
    threading.Timer(0.08, release.set).start()  # the write commits 80 ms into the worker's claim
    claim = scheduling.claim_next(queue_of(digits_track), "the-message")
    thread.join(10)
    assert claim is not None and claim.submission_id == job.pk
    job.refresh_from_db()
    assert job.state == Submission.State.RUNNING and job.task_id == "the-message"


@pytest.mark.django_db(transaction=True)
def test_a_job_locked_for_longer_than_the_retries_is_left_for_the_next_message(digits_track):
    """The retries are bounded: a job locked for seconds (an operator's long transaction) is passed over, as before,
    and a second job of the queue that is not locked is taken meanwhile."""
    first, second = _queue(_user("ada"), digits_track, 2)
    release, thread = _locked_elsewhere(first.pk, "select")
    try:
        assert scheduling.claim_next(queue_of(digits_track), "m-1").submission_id == second.pk
        assert scheduling.claim_next(queue_of(digits_track), "m-2") is None  # after its retries: locked still
    finally:
        release.set()
        thread.join(10)
    assert scheduling.claim_next(queue_of(digits_track), "m-3").submission_id == first.pk
