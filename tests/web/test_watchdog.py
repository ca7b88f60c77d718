"""The heartbeat watchdog and the claim of a delivered job, driven deterministically (no worker, no broker).

Heartbeats are set in the past by hand; the watchdog's requeue sends through a recording stand-in
for ``submissions.dispatch.enqueue``, so nothing reaches a real broker.
"""

from __future__ import annotations

import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from accounts.models import QuotaEntry
from benchmarks.models import Benchmark, Track
from submissions import fault_settings, quota, recovery
from submissions.models import Submission

pytestmark = pytest.mark.django_db


@pytest.fixture
def track(db) -> Track:
    benchmark = Benchmark.objects.create(slug="w", name="Watchdog")
    return Track.objects.create(benchmark=benchmark, slug="wd", name="Watchdog track", task_kind="classifier",
                                input_channels=1, input_height=28, input_width=28)


@pytest.fixture
def sent(monkeypatch) -> list[int]:
    """Submissions the code under test sent to the broker (recorded, not sent)."""
    calls: list[int] = []

    def enqueue(submission: Submission) -> None:
        calls.append(submission.pk)
        Submission.objects.filter(pk=submission.pk).update(task_id=f"task-{len(calls)}")

    monkeypatch.setattr("submissions.dispatch.enqueue", enqueue)
    monkeypatch.setattr("submissions.dispatch.wake", lambda queue, expires=None: calls.append(queue))
    return calls


def _running(owner, track, *, attempts: int = 1, silent_for: float = 600.0, name: str = "m") -> Submission:
    """A charged submission that has been ``running`` for a while, last heartbeat ``silent_for`` s ago."""
    beat = timezone.now() - timedelta(seconds=silent_for)
    submission = Submission.objects.create(
        owner=owner, track=track, name=name, artifact=f"artifacts/wd/{name}.safetensors", artifact_format="safetensors",
        artifact_sha256="0" * 64, state=Submission.State.RUNNING, attempts=attempts, task_id="task-0",
        started_at=beat - timedelta(seconds=5), heartbeat_at=beat, progress=0.4, progress_stage="attacks",
    )
    quota.charge(submission)
    return submission


def test_a_stale_running_job_is_requeued_once_and_a_live_one_is_left_alone(
    track, researcher, sent, django_capture_on_commit_callbacks
):
    stale = _running(researcher, track, silent_for=95, name="stale")
    live = _running(researcher, track, silent_for=1, name="live")

    with django_capture_on_commit_callbacks(execute=True):
        done = recovery.requeue_stale(stale=timedelta(seconds=30))
    assert [(r.public_id, r.action) for r in done] == [(str(stale.public_id), "requeued")]
    stale.refresh_from_db()
    assert stale.state == "queued" and stale.attempts == 1  # the attempt count survives the requeue
    assert stale.progress_stage.startswith("Requeued:") and "no heartbeat for 95 s" in stale.progress_stage
    assert stale.heartbeat_at is None and stale.started_at is None and stale.progress == 0.0
    assert sent == [stale.pk]
    live.refresh_from_db()
    assert live.state == "running" and live.attempts == 1

    # A second sweep (or a second watchdog at the same moment) finds nothing more to do.
    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.requeue_stale(stale=timedelta(seconds=30)) == []
    assert sent == [stale.pk]
    assert not QuotaEntry.objects.filter(kind="refund").exists()  # requeued, not failed: the charge stands


def test_a_job_that_lost_its_worker_too_often_fails_as_a_refunded_platform_fault(
    track, researcher, sent, settings, django_capture_on_commit_callbacks
):
    settings.ARENA_MAX_ATTEMPTS = 3
    doomed = _running(researcher, track, attempts=3, silent_for=120)
    used_before = quota.usage_for(researcher, [track])[track.pk].used_total

    with django_capture_on_commit_callbacks(execute=True):
        (done,) = recovery.requeue_stale(stale=timedelta(seconds=30))
    assert done.action == "failed"
    doomed.refresh_from_db()
    assert doomed.state == "failed" and doomed.failure_code == "worker_lost"
    assert "stopped responding 3 times" in doomed.failure_reason
    assert "does not count against your quota" in doomed.failure_reason
    assert doomed.finished_at is not None
    assert sent == []
    refund = QuotaEntry.objects.get(submission=doomed, kind="refund")
    assert refund.reason == "platform fault: worker_lost"
    assert quota.usage_for(researcher, [track])[track.pk].used_total == used_before - 1

    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.requeue_stale(stale=timedelta(seconds=30)) == []
    assert QuotaEntry.objects.filter(submission=doomed, kind="refund").count() == 1


def test_the_management_command_uses_the_configured_threshold(track, researcher, sent, settings,
                                                              django_capture_on_commit_callbacks, capsys):
    settings.ARENA_HEARTBEAT_SECONDS = 10
    settings.ARENA_HEARTBEAT_STALE_SECONDS = None  # 3 heartbeats: 30 s
    assert fault_settings.stale_after() == timedelta(seconds=30)
    young = _running(researcher, track, silent_for=20, name="young")
    old = _running(researcher, track, silent_for=40, name="old")
    with django_capture_on_commit_callbacks(execute=True):
        call_command("requeue_stale")
    out = capsys.readouterr().out
    assert f"{old.public_id} requeued (attempts 1)" in out and str(young.public_id) not in out
    assert sent == [old.pk]
    with django_capture_on_commit_callbacks(execute=True):
        call_command("requeue_stale", "--stale-seconds", "10")
    assert sent == [old.pk, young.pk]


def test_a_queued_job_whose_message_never_reached_the_broker_is_sent(track, researcher, sent):
    submission = _running(researcher, track)
    submission.transition(Submission.State.QUEUED)  # a re-run: task_id is empty until the message is sent
    assert submission.task_id == "" and submission.attempts == 0
    assert recovery.requeue_stale(stale=timedelta(seconds=30)) == []  # just queued: its message may be on its way
    Submission.objects.filter(pk=submission.pk).update(queued_at=timezone.now() - timedelta(minutes=5))
    (done,) = recovery.requeue_stale(stale=timedelta(seconds=30))
    assert done.action == "sent" and sent == [submission.pk]
    assert recovery.requeue_stale(stale=timedelta(seconds=30)) == []  # it has a task id now


def test_claim_starts_queued_jobs_and_carries_the_requeue_reason(track, researcher, sent,
                                                               django_capture_on_commit_callbacks):
    submission = _running(researcher, track, silent_for=100)
    with django_capture_on_commit_callbacks(execute=True):
        recovery.requeue_stale(stale=timedelta(seconds=30))
    claim = recovery.claim(submission.pk)
    assert isinstance(claim, recovery.Claim)
    assert claim.attempt == 2 and claim.note.startswith("Requeued: the worker of attempt 1 stopped responding")
    submission.refresh_from_db()
    assert submission.state == "running" and submission.attempts == 2 and submission.progress_stage == "starting"
    # The requeued message and a late duplicate: the duplicate finds the job running and drops itself.
    assert recovery.claim(submission.pk) == "running"
    submission.refresh_from_db()
    assert submission.attempts == 2


def test_claim_drops_messages_of_finished_cancelled_or_missing_jobs(track, researcher):
    submission = _running(researcher, track)
    submission.transition(Submission.State.FINISHED)
    assert recovery.claim(submission.pk, redelivered=True) == "finished"
    submission.transition(Submission.State.QUEUED)
    submission.transition(Submission.State.CANCELLED)
    assert recovery.claim(submission.pk) == "cancelled"
    assert recovery.claim(10**9) == "missing"


def test_a_redelivered_job_takes_over_from_a_dead_worker(track, researcher, settings):
    settings.ARENA_HEARTBEAT_STALE_SECONDS = 30
    submission = _running(researcher, track, silent_for=45)
    claim = recovery.claim(submission.pk, redelivered=True)
    assert isinstance(claim, recovery.Claim) and claim.attempt == 2
    assert claim.note.startswith("Redelivered: the worker of attempt 1 was lost (no heartbeat for 45 s)")
    submission.refresh_from_db()
    assert submission.state == "running" and submission.attempts == 2
    assert timezone.now() - submission.heartbeat_at < timedelta(seconds=5)


def test_a_redelivered_job_waits_for_the_heartbeat_to_decide(track, researcher, settings, monkeypatch):
    """Redelivered while the heartbeat is fresh: a moving heartbeat means the owner lives, a still one that it died."""
    settings.ARENA_HEARTBEAT_STALE_SECONDS = 30
    alive = _running(researcher, track, silent_for=2, name="alive")
    waits: list[float] = []

    def owner_beats(seconds: float) -> None:
        waits.append(seconds)
        Submission.objects.filter(pk=alive.pk).update(heartbeat_at=timezone.now())

    monkeypatch.setattr(recovery, "_sleep", owner_beats)
    assert recovery.claim(alive.pk, redelivered=True, poll=0.5) == "running"
    assert waits == [0.5]
    alive.refresh_from_db()
    assert alive.attempts == 1

    # The message that started the attempt, back unflagged (kombu's filesystem transport sets no flag): it waits too.
    waits.clear()
    assert recovery.claim(alive.pk, message_id="task-0", poll=0.5) == "running" and waits == [0.5]

    # Any other message for a job with a fresh heartbeat is a duplicate, dropped without waiting.
    waits.clear()
    assert recovery.claim(alive.pk, message_id="another", poll=0.5) == "running" and waits == []
    assert recovery.claim(alive.pk, poll=0.5) == "running" and waits == []

    settings.ARENA_HEARTBEAT_STALE_SECONDS = 0.6
    dead = _running(researcher, track, silent_for=0, name="dead")
    started = time.monotonic()
    monkeypatch.setattr(recovery, "_sleep", time.sleep)
    claim = recovery.claim(dead.pk, redelivered=True, poll=0.2)
    assert isinstance(claim, recovery.Claim) and claim.attempt == 2
    assert 0.5 < time.monotonic() - started < 5


def test_a_redelivered_job_that_killed_its_workers_too_often_fails(track, researcher, settings):
    settings.ARENA_MAX_ATTEMPTS = 2
    settings.ARENA_HEARTBEAT_STALE_SECONDS = 30
    submission = _running(researcher, track, attempts=2, silent_for=60)
    assert recovery.claim(submission.pk, redelivered=True) == "failed"
    submission.refresh_from_db()
    assert submission.failure_code == "worker_lost" and "2 times" in submission.failure_reason
    assert QuotaEntry.objects.filter(submission=submission, kind="refund").count() == 1


def test_a_user_rerun_starts_the_attempt_count_again(track, researcher):
    submission = _running(researcher, track, attempts=3)
    submission.transition(Submission.State.FAILED, failure_code="internal", failure_reason="x")
    submission.transition(Submission.State.QUEUED)
    assert submission.attempts == 0 and submission.failure_code == "" and submission.task_id == ""
    submission.transition(Submission.State.RUNNING)
    assert submission.attempts == 1


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_thread_beats_and_notices_when_the_job_is_taken_away(track, researcher):
    submission = _running(researcher, track, silent_for=60)
    with recovery.Heartbeat(submission.pk, attempt=1, interval=0.2) as heartbeat:
        deadline = time.monotonic() + 10
        while Submission.objects.get(pk=submission.pk).heartbeat_at < timezone.now() - timedelta(seconds=30):
            assert time.monotonic() < deadline, "no heartbeat written"
            time.sleep(0.05)
        assert not heartbeat.should_stop()
        Submission.objects.filter(pk=submission.pk).update(state=Submission.State.CANCELLED)
        while not heartbeat.should_stop():
            assert time.monotonic() < deadline, "the cancellation was not noticed"
            time.sleep(0.05)


def test_db_retry_reconnects_and_repeats_the_unit_of_work(monkeypatch):
    monkeypatch.setattr(recovery, "_sleep", lambda seconds: None)
    monkeypatch.setattr(recovery, "connection", SimpleNamespace(in_atomic_block=False))  # as in a worker
    dropped: list[bool] = []
    monkeypatch.setattr(recovery, "_drop_connection", lambda: dropped.append(True))
    failures = [OperationalError("terminating connection due to administrator command"),
                InterfaceError("connection already closed")]

    def work() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert recovery.with_db_retry(work, what="testing") == "done"
    assert len(dropped) == 2

    def broken() -> str:
        raise OperationalError("the server is gone")

    with pytest.raises(OperationalError):
        recovery.with_db_retry(broken, what="testing", timeout=0.0)


def test_only_the_owning_attempt_writes_and_a_repeated_write_counts_once(track, researcher):
    """The final write checks ownership under the row lock; repeated after a commit whose acknowledgement was
    lost (a dropped connection), it recognises its own run instead of reporting the job as taken over."""
    from evaluator.spec import JobResult
    from submissions.arrival import receive_result

    submission = _running(researcher, track, attempts=2)

    def result(attempt: int) -> JobResult:
        return JobResult(job_id=str(submission.public_id), ok=False, suite_version=track.suite_version, seed=0,
                               error_code="internal", error="boom", provenance={"attempt": attempt})

    assert receive_result(submission.pk, 1, result(1)) is None  # attempt 1 was replaced by attempt 2: it writes nothing
    assert not submission.runs.exists()
    written = receive_result(submission.pk, 2, result(2))
    assert written is not None and written.state == "failed" and written.failure_code == "internal"
    again = receive_result(submission.pk, 2, result(2))
    assert again is not None and again.pk == submission.pk
    assert submission.runs.count() == 1


@pytest.mark.django_db(transaction=True)  # the timer's thread has a connection of its own
def test_every_worker_runs_the_watchdog_on_its_own_timer(track, researcher, sent, settings):
    """No message on the evaluation queue: a thread of the worker's main process sweeps every
    ARENA_WATCHDOG_SECONDS, whether or not the worker is busy (a busy worker is in test_worker_faults.py)."""
    from arena.celery import app
    from submissions import sweeper

    assert "requeue-stale-evaluations" not in (app.conf.beat_schedule or {})  # nothing rides the broker
    settings.ARENA_HEARTBEAT_STALE_SECONDS = 30
    stale = _running(researcher, track, silent_for=600)
    timer = sweeper.Sweeper(0.05).start()
    try:
        deadline = time.monotonic() + 10
        while Submission.objects.get(pk=stale.pk).state != "queued" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        timer.stop()
    assert Submission.objects.get(pk=stale.pk).state == "queued" and sent == [stale.pk]


def test_a_stalled_queue_gets_one_more_wake_up_and_not_one_per_sweep(track, researcher, sent):
    """A job's wake-up can be lost without a trace (a worker killed between taking it and claiming a job):
    a queue whose jobs wait long past their wake-up with nothing running gets another, once per stall."""
    submission = _running(researcher, track)
    submission.transition(Submission.State.QUEUED)
    Submission.objects.filter(pk=submission.pk).update(task_id="lost", woken_at=timezone.now() - timedelta(minutes=5))
    (done,) = recovery.requeue_stale(stale=timedelta(seconds=30))
    assert done.action == "woke" and sent == [settings_queue()]
    assert recovery.requeue_stale(stale=timedelta(seconds=30)) == []  # just woken: not again at the next sweep
    running = _running(researcher, track, name="busy", silent_for=1)  # a job of the queue runs: not stalled
    Submission.objects.filter(pk=submission.pk).update(woken_at=timezone.now() - timedelta(minutes=5))
    assert recovery.requeue_stale(stale=timedelta(seconds=30)) == [] and running.state == "running"


def settings_queue() -> str:
    from django.conf import settings

    return settings.CELERY_TASK_DEFAULT_QUEUE
