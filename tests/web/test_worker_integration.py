"""A real Celery worker process, on the configured broker and database, consumes real jobs.

In CI the broker is Redis and the database PostgreSQL (DATABASE_URL / CELERY_BROKER_URL); on a
first run they are kombu's filesystem transport and SQLite. Either way the worker is a separate
process started with the same command an operator uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from submissions.models import Result, Submission

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def live_worker(arena_dirs, settings, tmp_path):
    """Start `celery -A arena worker` on a queue of its own, pointed at the test database."""
    queue = f"test-{uuid.uuid4().hex[:8]}"
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "ARENA_DATA_DIR": str(settings.ARENA_DATA_DIR),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "ARENA_EVAL_QUEUE": queue,
        "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
    }
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "arena", "worker", "--pool=solo", "-Q", queue, "--loglevel=INFO",
         "--without-heartbeat", "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    yield queue
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    print((tmp_path / "worker.log").read_text()[-3000:])


def _wait_terminal(public_id: str, timeout: float = 240.0) -> Submission:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        submission = Submission.objects.get(public_id=public_id)
        if submission.is_terminal:
            return submission
        time.sleep(0.5)
    raise AssertionError(f"submission {public_id} still {submission.state} after {timeout} s")


def test_worker_imports_the_standard_platform_module(live_worker):
    from arena.celery import diagnostics

    info = diagnostics.apply_async(queue=live_worker).get(timeout=120)
    assert info["platform_file"].endswith("/lib/python3.11/platform.py")
    assert str(ROOT) not in info["platform_file"]


def test_real_worker_evaluates_uploads_from_the_api(live_worker, digits_track, token, lenet5_safetensors,
                                                    bad_models):
    print(f"broker: {settings.CELERY_BROKER_URL}, database: {connection.vendor}")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    ids = {}
    for label, path, extra in [
        ("nan", bad_models["nan"], {}),
        ("lenet", lenet5_safetensors, {"zoo_architecture": "mnist_lenet5"}),
    ]:
        with path.open("rb") as handle:
            response = client.post("/api/v1/submissions/",
                                   {"track": "digits", "name": label, "artifact": handle, **extra}, format="multipart")
        assert response.status_code == 201
        ids[label] = response.json()["id"]

    lenet = _wait_terminal(ids["lenet"])
    nan = _wait_terminal(ids["nan"])
    assert lenet.state == "finished", lenet.failure_reason
    accuracy = Result.objects.get(submission=lenet, metric="accuracy")
    assert accuracy.value > 0.97 and accuracy.num_examples == 2000
    assert nan.state == "failed" and nan.failure_code == "non_finite_output"
    polled = client.get(f"/api/v1/submissions/{ids['lenet']}/").json()
    assert polled["state"] == "finished"
    assert polled["results"][0]["value"] == pytest.approx(accuracy.value)
