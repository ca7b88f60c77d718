"""Latency of the leaderboard, a model page and the API at 1,000 submissions, with query counts.

Builds a throw-away test database (SQLite under a temporary ARENA_VAR_DIR, or the database of
DATABASE_URL with a ``test_`` prefix), fills one track with 1,000 finished submissions (clean,
natural-shift, corruption and robust accuracies, a fitted baseline line), then requests each page
through Django's test client and prints p50 / p99 latency and the number of SQL queries. This
measures the application, not the network; issue 8's load test drives gunicorn.

    .venv/bin/python measurements/leaderboard_latency.py [--requests 30] [--submissions 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
os.environ.setdefault("ARENA_VAR_DIR", tempfile.mkdtemp(prefix="arena-bench-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arena.settings")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402

THREAT = "Linf-0.3"


def populate(count: int):
    from benchmarks.models import Benchmark, EvaluationSet, Track
    from leaderboards.fits import refit_track
    from submissions.models import EvaluationRun, Result, Submission

    users = [get_user_model().objects.create_user(f"user{i}", password="x") for i in range(20)]
    track = Track.objects.create(
        benchmark=Benchmark.objects.create(slug="bench", name="Bench"), slug="digits", name="Digits",
        task_kind="classifier", input_channels=1, input_height=28, input_width=28,
        threat_models=[{"norm": "Linf", "eps": 0.3, "label": THREAT}],
    )
    sets = {name: EvaluationSet.objects.create(track=track, name=name, role=role, shift_kind=kind, relative_path="x",
                                               sha256="0" * 64, num_examples=5000)
            for name, role, kind in [("mnist-hidden", "clean", ""), ("usps", "shift", "natural"),
                                     ("mnist-imagenet-c-padded", "shift", "synthetic")]}
    rng = np.random.default_rng(0)
    types = ["standard", "robust", "extra_data", "submission"]
    submissions = Submission.objects.bulk_create([
        Submission(track=track, owner=users[i % len(users)], name=f"model {i:04d}", artifact="artifacts/x.pt2",
                   artifact_format="pt2", artifact_sha256=f"{i:064d}", state="finished", model_type=types[i % 4],
                   is_baseline=i % 25 == 0, extra_data=i % 4 == 2, public_id=uuid.uuid4())
        for i in range(count)
    ])
    results, runs = [], []
    for s in submissions:
        clean = float(rng.uniform(0.85, 0.995))
        values = {("mnist-hidden", "accuracy"): clean, ("usps", "accuracy"): clean - rng.uniform(0.02, 0.1),
                  ("mnist-imagenet-c-padded", "accuracy"): clean - 0.15,
                  ("mnist-hidden", f"robust_accuracy@{THREAT}"): clean / 3}
        for (set_name, metric), v in values.items():
            results.append(Result(submission=s, evaluation_set=sets[set_name], metric=metric, value=v,
                                  ci_low=v - 0.01, ci_high=v + 0.01, num_examples=5000,
                                  suite_version=track.suite_version, seed=0))
        runs.append(EvaluationRun(submission=s, suite_version=track.suite_version, seed=0, ok=True,
                                  provenance={"attacks": {THREAT: {"flags": []}}}))
    Result.objects.bulk_create(results, batch_size=1000)
    EvaluationRun.objects.bulk_create(runs, batch_size=1000)
    refit_track(track)
    return track, submissions[len(submissions) // 2], users[0]


def measure(client: Client, url: str, requests: int) -> tuple[float, float, int]:
    for _ in range(2):
        assert client.get(url).status_code == 200, url
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        client.get(url)
        times.append(time.perf_counter() - started)
    with CaptureQueriesContext(connection) as queries:
        client.get(url)
    times.sort()
    p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    return statistics.median(times) * 1000, p99 * 1000, len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--submissions", type=int, default=1000)
    args = parser.parse_args()
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        track, submission, user = populate(args.submissions)
        client = Client()
        client.force_login(user)
        pages = {
            "leaderboard (overview)": f"/tracks/{track.slug}/",
            "leaderboard (shift usps, probit)": f"/tracks/{track.slug}/?view=shift:usps&scale=probit",
            "leaderboard JSON export": f"/tracks/{track.slug}/leaderboard.json",
            "model page": submission.get_absolute_url(),
            "API submissions list (100)": f"/api/v1/submissions/?track={track.slug}&limit=100",
        }
        print(f"{args.submissions} submissions, {args.requests} requests per page, database {connection.vendor}")
        for label, url in pages.items():
            p50, p99, queries = measure(client, url, args.requests)
            print(f"{label:34s} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   {queries:3d} queries")
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
