"""The Python client and its command line against a live server and a real worker: upload the
shared LeNet-5, follow its evaluation, get the same scores the database holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from accounts.models import TrackQuota
from arena_client import ArenaClient, QuotaExceeded
from submissions.models import Result
from submissions.rounding import round_released

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ARENA_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "arena_client", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_client_submits_waits_and_returns_the_scores(live_server, live_worker, digits_track, researcher, token,
                                                     lenet5_safetensors):
    client = ArenaClient(live_server.url, token, progress=False)
    submission = client.submit(lenet5_safetensors, track="digits", name="LeNet-5 via the client",
                               zoo_architecture="mnist_lenet5", code_url="https://example.org/lenet")
    assert submission.state == "queued" and submission.status_url.startswith(live_server.url)
    seen: list[tuple[str, float]] = []
    scores = submission.wait(poll_interval=0.5, timeout=240,
                             on_update=lambda s: seen.append((s.state, s.data["progress"])))
    stored = Result.objects.get(submission__public_id=submission.id, metric="accuracy")
    score = scores["mnist-hidden:accuracy"]
    # The API releases the digits the interval justifies (submissions.rounding).
    released = round_released("accuracy", stored.value, stored.ci_low, stored.ci_high)
    assert (score.value, score.ci_low, score.ci_high) == released and score.value > 0.97
    assert abs(score.value - stored.value) <= 0.005
    assert score.num_examples == 2000 and scores.suite_version == "clean-1" and scores.seed == 0
    assert scores.page_url == f"{live_server.url}/submissions/{submission.id}/"
    assert seen[-1] == ("finished", 1.0)
    assert [q["left_today"] for q in client.quota() if q["track"] == "digits"] == [9]

    # The command line reads the same submission, and reports a used-up quota with its own exit status.
    shown = _cli("status", submission.id, "--json", "--url", live_server.url, "--token", token)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["results"][0]["value"] == released[0]
    TrackQuota.objects.create(track=digits_track, daily_limit=1, total_limit=10)
    refused = _cli("submit", str(lenet5_safetensors), "--track", "digits", "--name", "Again", "--zoo-architecture",
                   "mnist_lenet5", "--url", live_server.url, "--token", token, "-q")
    assert refused.returncode == 3 and "today's 1 submissions" in refused.stderr
    with pytest.raises(QuotaExceeded) as exc:
        client.submit(lenet5_safetensors, track="digits", name="Again", zoo_architecture="mnist_lenet5")
    assert exc.value.retry_after and exc.value.retry_after > 0
    unauthenticated = _cli("submit", str(lenet5_safetensors), "--track", "digits", "--name", "No token",
                           "--url", live_server.url, "-q")
    assert unauthenticated.returncode == 4 and "no API token given" in unauthenticated.stderr
