"""A real Celery worker process, on the configured broker and database, consumes real jobs.

In CI the broker is Redis and the database PostgreSQL (DATABASE_URL / CELERY_BROKER_URL); on a
first run they are kombu's filesystem transport and SQLite. Either way the worker is a separate
process started with the same command an operator uses.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from submissions.models import Result
from submissions.rounding import round_released

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_worker_imports_the_standard_platform_module(live_worker):
    from arena.celery import diagnostics

    info = diagnostics.apply_async(queue=live_worker).get(timeout=120)
    assert info["platform_file"].endswith("/lib/python3.11/platform.py")
    assert str(ROOT) not in info["platform_file"]


def test_real_worker_evaluates_uploads_from_the_api(live_worker, digits_track, token, lenet5_safetensors,
                                                    bad_models, wait_terminal):
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

    lenet = wait_terminal(ids["lenet"])
    nan = wait_terminal(ids["nan"])
    assert lenet.state == "finished", lenet.failure_reason
    accuracy = Result.objects.get(submission=lenet, metric="accuracy")
    assert accuracy.value > 0.97 and accuracy.num_examples == 2000
    assert nan.state == "failed" and nan.failure_code == "non_finite_output"
    polled = client.get(f"/api/v1/submissions/{ids['lenet']}/").json()
    assert polled["state"] == "finished"
    # The API releases the digits the interval justifies (submissions.rounding).
    released = round_released("accuracy", accuracy.value, accuracy.ci_low, accuracy.ci_high)
    assert polled["results"][0]["value"] == released[0]
