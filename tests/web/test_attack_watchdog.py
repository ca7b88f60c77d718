"""The watchdog's sweep of attack runs (issue 20): a run whose worker died is queued again, then given up with
``worker_lost``; a queued run whose message never reached the broker is sent; a run still within its time and a
finished one are left alone. The sweep runs inside the evaluations' (``requeue_stale``) and its command."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.utils import timezone

from adversaries.models import Attack, AttackRun
from submissions.recovery import requeue_stale
from tests.web.test_leaderboards_helpers import new_submission

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch) -> list[int]:
    ids: list[int] = []
    monkeypatch.setattr("adversaries.dispatch.enqueue", lambda run, countdown=None: ids.append(run.pk))
    return ids


@pytest.fixture
def runs(digits_track, researcher, other_user, settings):
    """Five runs of one attack against five public models, in every state the sweep must tell apart."""
    settings.ARENA_EVAL_WALL_SECONDS = 600
    settings.ARENA_HEARTBEAT_STALE_SECONDS = 30
    settings.ARENA_MAX_ATTEMPTS = 3
    attack = Attack(owner=other_user, track=digits_track, name="A", source_sha256="0" * 64, passes_per_point=10)
    attack.source.save("attack.py", ContentFile(b"def attack(*a):\n    return a[1]\n"), save=False)
    attack.save()
    now = timezone.now()
    long_ago, recently = now - timedelta(seconds=700), now - timedelta(seconds=300)
    made = {}
    for name, state, attempts, started, task_id in [
        ("lost", "running", 1, long_ago, "t1"),          # past 600 s + 30 s: its worker is gone
        ("lost-last", "running", 3, long_ago, "t2"),     # ... for the last allowed time
        ("busy", "running", 1, recently, "t3"),          # still within the wall limit
        ("unsent", "queued", 0, None, ""),               # its message never left
        ("done", "finished", 1, long_ago, "t5"),
    ]:
        model = new_submission(digits_track, researcher, name, state="finished", is_public=True)
        made[name] = AttackRun.objects.create(attack=attack, submission=model, suite_version="clean-1", state=state,
                                              attempts=attempts, started_at=started, task_id=task_id)
    AttackRun.objects.filter(pk=made["unsent"].pk).update(created_at=now - timedelta(seconds=120))
    return made


def test_the_sweep_requeues_fails_and_sends_attack_runs(runs, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        done = requeue_stale()
    actions = {r.public_id: r.action for r in done}
    assert actions == {f"attack-run-{runs['lost'].pk}": "requeued", f"attack-run-{runs['lost-last'].pk}": "failed",
                       f"attack-run-{runs['unsent'].pk}": "sent"}
    state = {name: AttackRun.objects.get(pk=run.pk) for name, run in runs.items()}
    assert state["lost"].state == "queued" and state["lost"].attempts == 1 and state["lost"].task_id == ""
    assert state["lost-last"].state == "failed" and state["lost-last"].failure_code == "worker_lost"
    assert "stopped responding 3 times" in state["lost-last"].failure_reason
    assert state["busy"].state == "running" and state["done"].state == "finished"
    assert sorted(sent) == sorted([runs["lost"].pk, runs["unsent"].pk])
    # Requeued and sent, nothing is left for the next sweep (the enqueue was faked, so the task ids stay empty;
    # what is left is a queued run too young to be called unsent).
    sent.clear()
    AttackRun.objects.filter(pk__in=[runs["lost"].pk, runs["unsent"].pk]).update(task_id="sent")
    assert not [r for r in requeue_stale() if r.public_id.startswith("attack-run")] and sent == []


def test_the_command_reports_attack_runs_too(runs, sent):
    out = StringIO()
    call_command("requeue_stale", stdout=out)
    assert f"attack-run-{runs['lost'].pk} requeued" in out.getvalue()
    assert f"attack-run-{runs['unsent'].pk} sent" in out.getvalue()
