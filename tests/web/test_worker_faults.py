"""Faults under real `celery -A arena worker` processes: killed workers, a restarting broker, dropped database
connections. Each test ends with the submission finished exactly once: one EvaluationRun, one Result per metric.

The workers run with a 1 s heartbeat and a 3 s stale threshold (the environment variables of
:mod:`submissions.fault_settings`), so that a lost worker is noticed in seconds. Each worker starts in a
session of its own, so that SIGKILL can take its whole process group (main process and pool child; the
bubblewrap sandbox dies with its parent) without touching pytest.

The configured broker (kombu's filesystem transport, or Redis in CI) carries the worker-loss tests; the
broker's own faults use a private ``redis-server`` on a free port (skipped where none is installed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from django.core.files import File
from django.db import connection
from django.utils import timezone
from kombu import Connection

from submissions.models import EvaluationRun, Result, Submission
from submissions.services import create_submission
from tests.web.celery_workers import CeleryWorkers

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: Fault-recovery knobs for the workers: a lost worker is noticed within about 3 s.
FAST_FAULTS = {"ARENA_HEARTBEAT_SECONDS": "1", "ARENA_HEARTBEAT_STALE_SECONDS": "3", "ARENA_MAX_ATTEMPTS": "3",
               "ARENA_WATCHDOG_SECONDS": "0"}


@pytest.fixture
def workers(celery_worker, settings) -> Iterator[CeleryWorkers]:
    """Start workers on a queue of this test's own: prefork with one pool process, the fast fault knobs, and
    stopped by SIGKILL of their process group (no warm shutdown to wait for: the jobs are done, and nothing of
    the group is left). Afterwards, drop what killed workers left on the broker."""
    celery_worker.configure(pool="prefork", concurrency=1, stop="kill", env=FAST_FAULTS)
    yield celery_worker
    celery_worker.stop_all()
    queue = celery_worker.queue
    if settings.CELERY_BROKER_URL.startswith("redis://"):
        _forget_queue(settings.CELERY_BROKER_URL, queue)
    elif settings.CELERY_BROKER_URL.startswith("filesystem://"):  # wake-ups a killed worker left unread
        for leftover in Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]).glob(f"*.{queue}.msg"):
            leftover.unlink(missing_ok=True)


def _forget_queue(broker: str, queue: str) -> None:
    """Drop what a killed worker left on the shared Redis (its unacknowledged message, the queue's list)."""
    import redis

    client = redis.Redis.from_url(broker)
    for tag, raw in client.hgetall("unacked").items():
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key == queue:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    client.delete(queue)
    client.close()


@pytest.fixture
def attack_track(digits_track):
    """The digits track with an attack budget, so that an evaluation runs for several seconds (about 7 s on one
    core: APGD at eps 0.3 on all 2,000 points; a smaller eps leaves points standing for the slow square attack)."""
    digits_track.threat_models = [{"norm": "Linf", "eps": 0.3, "label": "Linf-0.3"}]
    digits_track.attack_points = 2000
    digits_track.reliability_points = 0
    digits_track.save()
    return digits_track


def _submit(owner, track, weights: Path, name: str = "lenet") -> Submission:
    with weights.open("rb") as handle:
        return create_submission(owner, track, File(handle, name=weights.name), name=name,
                                 zoo_architecture="mnist_lenet5")


def _wait(submission: Submission, done: Callable[[Submission], bool], what: str, timeout: float = 120.0) -> Submission:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        submission.refresh_from_db()
        if done(submission):
            return submission
        time.sleep(0.1)
    raise AssertionError(f"submission {submission.public_id} not {what} after {timeout:.0f} s: {submission.state}, "
                         f"{submission.progress_stage!r}")


def _evaluating(submission: Submission) -> bool:
    """Running, and the sandboxed evaluator has started reporting (the job is mid-evaluation)."""
    return submission.state == "running" and submission.progress > 0.0 and submission.progress < 0.9


@pytest.fixture
def clean_track(digits_track):
    """A second track on the same hidden set without attacks: a short evaluation."""
    from benchmarks.models import EvaluationSet, Track

    hidden = digits_track.evaluation_sets.get()
    track = Track.objects.create(benchmark=digits_track.benchmark, slug="digits-clean", name="Digits (clean)",
                                 task_kind="classifier", input_channels=1, input_height=28, input_width=28,
                                 num_classes=10, time_budget_seconds=30)
    EvaluationSet.objects.create(track=track, name=hidden.name, role="clean", relative_path=hidden.relative_path,
                                 sha256=hidden.sha256, num_examples=hidden.num_examples)
    return track


def _assert_finished_once(submission: Submission, attempts: int, attacked: bool = True) -> EvaluationRun:
    assert submission.state == "finished", submission.failure_reason
    assert submission.attempts == attempts
    run = EvaluationRun.objects.get(submission=submission)  # exactly one
    results = list(Result.objects.filter(submission=submission).values_list("evaluation_set", "metric"))
    assert results and len(results) == len(set(results))  # one row per metric, no duplicates
    accuracy = Result.objects.get(submission=submission, metric="accuracy")
    assert accuracy.value > 0.97 and accuracy.num_examples == 2000
    assert Result.objects.filter(submission=submission, metric__contains="Linf-0.3").exists() == attacked
    assert run.ok and run.provenance["attempt"] == attempts
    return run


def test_worker_killed_with_its_pool_is_recovered_by_the_watchdog_and_finishes_once(
    workers, attack_track, researcher, lenet5_safetensors
):
    """SIGKILL of the whole worker (main process and pool process) mid-evaluation.

    Nothing is left to reject the message: kombu's filesystem transport loses it with the worker's
    memory, and Redis keeps it unacknowledged for its visibility timeout (an hour by default). The
    stale heartbeat is what tells: the watchdog, a timer inside the replacement worker (submissions.sweeper),
    requeues the job, and the replacement evaluates it as attempt 2.
    """
    first = workers("first")
    submission = _wait(_submit(researcher, attack_track, lenet5_safetensors), _evaluating, "evaluating")
    first.kill()
    submission.refresh_from_db()
    assert submission.state == "running" and submission.attempts == 1 and not submission.runs.exists()

    second = workers("second", env={"ARENA_WATCHDOG_SECONDS": "1"})
    submission = _wait(submission, lambda s: s.is_terminal, "finished")
    run = _assert_finished_once(submission, attempts=2)
    assert run.provenance["recovery"].startswith("Requeued: the worker of attempt 1 stopped responding")
    assert f"watchdog: submission {submission.public_id} requeued" in second.log()
    assert f"submission {submission.public_id}: attempt 2 starts (Requeued:" in second.log()


def test_the_watchdog_runs_while_the_only_worker_is_busy(workers, attack_track, researcher, other_user,
                                                        lenet5_safetensors):
    """The only worker is mid-evaluation when another job's worker is found dead (its heartbeat stale): the
    busy worker's own timer requeues that job at once, not after its evaluation (no message to wait behind)."""
    only = workers("only", env={"ARENA_WATCHDOG_SECONDS": "1"})
    busy = _wait(_submit(researcher, attack_track, lenet5_safetensors), _evaluating, "evaluating")
    orphan = _submit(other_user, attack_track, lenet5_safetensors, name="orphan")  # the same file, another owner
    long_ago = timezone.now() - timedelta(minutes=10)
    Submission.objects.filter(pk=orphan.pk).update(state="running", attempts=1, started_at=long_ago,
                                                   heartbeat_at=long_ago)
    orphan = _wait(orphan, lambda s: s.state == "queued", "requeued", timeout=30)
    busy.refresh_from_db()
    assert busy.state == "running"  # requeued while the worker was still evaluating the other job
    # The worker logs the requeue after committing it: on a loaded machine the line can trail the row a little.
    line = f"watchdog: submission {orphan.public_id} requeued"
    deadline = time.monotonic() + 15
    while line not in only.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert line in only.log()
    _wait(orphan, lambda s: s.is_terminal, "finished", timeout=240)


def test_killed_pool_process_is_rejected_redelivered_and_taken_over(
    workers, attack_track, researcher, lenet5_safetensors
):
    """SIGKILL of the pool process only: the worker's main process sees it die (WorkerLostError) and, with
    late acknowledgement and ``reject_on_worker_lost``, puts the message back at once. The redelivered
    message waits for the dead attempt's heartbeat to go stale, then takes over (no watchdog here)."""
    worker = workers("only")
    submission = _wait(_submit(researcher, attack_track, lenet5_safetensors), _evaluating, "evaluating")
    (pool_process,) = worker.pool_processes()
    os.kill(pool_process, signal.SIGKILL)

    submission = _wait(submission, lambda s: s.is_terminal, "finished")
    run = _assert_finished_once(submission, attempts=2)
    assert run.provenance["recovery"].startswith("Redelivered: the worker of attempt 1 was lost")
    log = worker.log()
    assert "WorkerLostError" in log or "exited with 'signal 9 (SIGKILL)'" in log
    assert f"submission {submission.public_id}: Redelivered: the worker of attempt 1 was lost" in log


# --- The broker's own faults, on a private Redis. ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateRedis:
    """A ``redis-server`` of this test's own (append-only file on, as a broker in production should be)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no shutdown save, no goodbye to the clients
        self.proc.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: the broker-restart tests need a Redis of their own")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PrivateRedis(folder)
    yield server
    server.kill()


@pytest.fixture
def send_via(monkeypatch):
    """Make new submissions go to the given broker (the test process's own Celery app stays on the configured one).

    The connection is explicit: Celery prefers a ``CELERY_BROKER_URL`` in the environment (CI's Redis) to the
    broker an app is created with.
    """
    app = Celery("arena-test-sender", set_as_current=False)

    def use(broker: str, queue: str) -> None:
        def enqueue(submission: Submission) -> None:
            with Connection(broker) as conn:
                sent = app.send_task("submissions.evaluate", kwargs={"queue": queue}, queue=queue, connection=conn)
            Submission.objects.filter(pk=submission.pk).update(task_id=sent.id)

        monkeypatch.setattr("submissions.dispatch.enqueue", enqueue)

    yield use
    app.close()


def test_redis_redelivers_a_killed_workers_job_after_the_visibility_timeout(
    workers, private_redis, send_via, attack_track, researcher, lenet5_safetensors
):
    """Redis keeps the killed worker's message unacknowledged; after the visibility timeout the replacement
    worker gets it back (flagged as redelivered), sees the stale heartbeat and takes over. No watchdog."""
    timeout = {"ARENA_BROKER_VISIBILITY_TIMEOUT": "6"}
    send_via(private_redis.url, workers.queue)
    first = workers("first", broker=private_redis.url, env=timeout)
    submission = _wait(_submit(researcher, attack_track, lenet5_safetensors), _evaluating, "evaluating")
    first.kill()

    second = workers("second", broker=private_redis.url, env=timeout)
    submission = _wait(submission, lambda s: s.is_terminal, "finished")
    run = _assert_finished_once(submission, attempts=2)
    assert run.provenance["recovery"].startswith("Redelivered: the worker of attempt 1 was lost")
    assert f"submission {submission.public_id}: Redelivered" in second.log()


def test_broker_restart_under_a_running_worker_loses_no_submission(
    workers, private_redis, send_via, attack_track, clean_track, researcher, lenet5_safetensors
):
    """Redis is SIGKILLed while one job runs and another waits in its queue, then started again: the running
    job finishes (its worker reconnects), the waiting one is still in the queue (append-only file) and runs."""
    send_via(private_redis.url, workers.queue)
    worker = workers("only", broker=private_redis.url)
    running = _wait(_submit(researcher, attack_track, lenet5_safetensors), _evaluating, "evaluating")
    waiting = _submit(researcher, clean_track, lenet5_safetensors, name="waiting")
    assert Submission.objects.get(pk=waiting.pk).state == "queued"

    private_redis.kill()
    time.sleep(2)
    private_redis.start()

    running = _wait(running, lambda s: s.is_terminal, "finished")
    waiting = _wait(waiting, lambda s: s.is_terminal, "finished")
    _assert_finished_once(running, attempts=1)
    _assert_finished_once(waiting, attempts=1, attacked=False)
    assert "Connection to broker lost" in worker.log() or "Cannot connect to redis" in worker.log()


# --- The database's faults. -----------------------------------------------------------------------------------


def test_dropped_postgresql_connections_do_not_fail_a_running_evaluation(
    workers, attack_track, researcher, lenet5_safetensors
):
    """PostgreSQL drops every connection of the worker (as a restart or failover does), repeatedly while the job
    runs and once as it writes the result: the heartbeat and progress writes skip a beat, the result write
    reconnects and retries, and the job finishes once, on its first attempt."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL): SQLite has no server connections to drop")
    worker = workers("only")
    submission = _wait(_submit(researcher, attack_track, lenet5_safetensors), _evaluating, "evaluating")

    terminated = 0
    while not submission.is_terminal:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = %s",
                           [worker.application_name])
            terminated += cursor.fetchone()[0]
        time.sleep(0.7)
        submission.refresh_from_db()
    assert terminated >= 2
    _assert_finished_once(submission, attempts=1)
    assert "reconnecting" in worker.log() or "skipped" in worker.log() or "not written" in worker.log()
