"""The queue's order with a real worker: the database decides who runs next, on every broker.

Jobs are queued while no worker runs, so that the broker holds every wake-up message when the worker
starts; the worker then starts them one at a time (solo pool). The jobs are cheap (a file that is no
model fails in the model process within seconds): what is measured is the order, not the evaluation.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from celery import Celery
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from kombu import Connection

from submissions import dispatch, scheduling
from submissions.models import Submission
from submissions.services import create_submission

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def roomy_quota(settings):
    settings.ARENA_DEFAULT_DAILY_LIMIT = settings.ARENA_DEFAULT_TOTAL_LIMIT = 100


def _user(name: str):
    return get_user_model().objects.create_user(name, password=f"{name}-long-password")


def _queue(owner, track, count: int) -> list[Submission]:
    """``count`` jobs of ``owner`` (files that are no model: each fails fast as corrupt_artifact)."""
    return [create_submission(owner, track, ContentFile(f"not a model {owner.username} {i}".encode(), name="m.pt2"),
                              name=f"{owner.username}-{i}", artifact_format="pt2") for i in range(count)]


def _wait_all(jobs: list[Submission], timeout: float) -> list[Submission]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = list(Submission.objects.filter(pk__in=[j.pk for j in jobs]))
        if all(r.is_terminal for r in rows):
            return rows
        time.sleep(0.5)
    states = dict(Submission.objects.filter(pk__in=[j.pk for j in jobs]).values_list("name", "state"))
    raise AssertionError(f"not all jobs ended after {timeout:.0f} s: {states}")


def _start_order(rows: list[Submission]) -> list[int]:
    return [r.pk for r in sorted(rows, key=lambda r: (r.started_at, r.pk))]


def test_a_late_users_first_job_starts_within_the_next_two(celery_worker, digits_track):
    """User A queues 20 jobs, then user B queues 1: B's starts second, and every job starts in the order of the
    position the platform reported for it while all of them waited."""
    ada, bob = _user("ada"), _user("bob")
    adas = _queue(ada, digits_track, 20)
    [bobs] = _queue(bob, digits_track, 1)
    jobs = [*adas, bobs]
    reported = {pk: where.ahead for pk, where in scheduling.places(jobs).items()}
    assert reported[bobs.pk] == 1

    celery_worker("only")
    rows = _wait_all(jobs, timeout=600)
    assert all(r.state == "failed" and r.failure_code == "corrupt_artifact" for r in rows), \
        {r.name: (r.state, r.failure_code) for r in rows}
    started = _start_order(rows)
    assert started.index(bobs.pk) <= 1
    assert started == sorted(reported, key=reported.get)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _broker(kind: str, folder: Path) -> tuple[str, dict, dict]:
    """(URL, kombu transport options, worker environment) of a broker of this kind for this test alone."""
    if kind == "filesystem":
        var = folder / "var"
        boxes = {name: var / "broker" / name for name in ("queue", "processed", "control")}
        for box in boxes.values():
            box.mkdir(parents=True, exist_ok=True)
        options = {"data_folder_in": str(boxes["queue"]), "data_folder_out": str(boxes["queue"]),
                   "processed_folder": str(boxes["processed"]), "control_folder": str(boxes["control"]),
                   "store_processed": False}
        return "filesystem://", options, {"ARENA_VAR_DIR": str(var)}
    if kind == "redis":
        return "redis://127.0.0.1:6379/5", {}, {}
    return "amqp://guest:guest@127.0.0.1:5672//", {}, {}


@pytest.mark.parametrize("kind", ["filesystem", "redis", "rabbitmq"])
def test_the_start_order_is_the_databases_even_when_the_broker_delivers_in_reverse(
    kind, celery_worker, digits_track, tmp_path, monkeypatch
):
    """Four users' jobs, queued one after another; the broker is handed their messages in the reverse order
    (the last job's message first, as kombu's filesystem transport does once its counter gains a digit). The
    worker still starts them first come, first served."""
    port = {"redis": 6379, "rabbitmq": 5672}.get(kind)
    if port and not _reachable("127.0.0.1", port):
        if settings.CELERY_BROKER_URL != "filesystem://":  # CI runs all three brokers: not reachable is a failure
            pytest.fail(f"{kind} is not answering on 127.0.0.1:{port}")
        pytest.skip(f"{kind} is not running on this machine")
    url, options, env = _broker(kind, tmp_path)
    monkeypatch.setattr("submissions.dispatch.enqueue", lambda submission: None)  # no messages while queueing
    jobs = [job for i in range(4) for job in _queue(_user(f"user{i}"), digits_track, 1)]
    assert [scheduling.place(j).ahead for j in jobs] == [0, 1, 2, 3]

    sender = Celery("arena-test-sender", set_as_current=False)
    queue = dispatch.queue_for(jobs[0])
    with Connection(url, transport_options=options) as conn:
        for job in reversed(jobs):
            sent = sender.send_task(dispatch.EVALUATE_TASK, kwargs={"queue": queue}, queue=queue, connection=conn)
            Submission.objects.filter(pk=job.pk).update(task_id=sent.id)
            time.sleep(0.01)  # distinct timestamps: the broker's own order is unambiguous
    sender.close()

    celery_worker("only", broker=url, env=env)
    rows = _wait_all(jobs, timeout=300)
    assert _start_order(rows) == [j.pk for j in jobs]
