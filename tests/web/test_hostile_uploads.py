"""Hostile uploads through the API, end to end: each ends failed with a reason, and the worker keeps serving.

Uploads go through the REST API with a token; the Celery task is then called in-process (as in
test_submission_flow), so the evaluation runs in the real bubblewrap sandbox. Path-traversal
file names are covered by test_api_and_form.py::test_uploaded_file_name_cannot_traverse_paths.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from django.core.files import File
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from rest_framework.response import Response
from rest_framework.test import APIClient

from accounts.models import QuotaEntry
from evaluator.sandbox import availability, bubblewrap_path, launch
from evaluator.sandbox.identity import IdentityUnavailable
from submissions import services
from submissions.models import Submission
from submissions.tasks import evaluate_submission
from tests.evaluator.test_sandbox_hostile import write_zip_bomb

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(bubblewrap_path() is None, reason="bubblewrap is not installed"),
]

MiB = 1024**2


def _post(token: str, path: Path, **fields) -> Response:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    with path.open("rb") as handle:
        return client.post("/api/v1/submissions/", {"track": "digits", "name": path.stem, "artifact": handle,
                                                    **fields}, format="multipart")


def _upload(token: str, path: Path, **fields) -> Submission:
    response = _post(token, path, **fields)
    assert response.status_code == 201, response.content
    return Submission.objects.get(public_id=response.json()["id"])


def _files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


class Marker:
    """A pickle whose loading would create a file on the host."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_hostile_uploads_fail_with_reasons_and_the_worker_keeps_serving(
    digits_track, researcher, token, tmp_path, lenet5_pt2, lenet5_safetensors
):
    marker = tmp_path / "pwned"
    pickled = tmp_path / "model.pt2"
    pickled.write_bytes(pickle.dumps(Marker(marker)))
    bomb = write_zip_bomb(lenet5_pt2, tmp_path / "bomb.pt2")

    # A pickle is refused at upload (submissions.uploads.check_artifact), before it is stored or charged ...
    refused = _post(token, pickled, artifact_format="pt2")
    assert refused.status_code == 400 and "Pickles execute code" in refused.json()["artifact"][0]
    assert not Submission.objects.exists() and not QuotaEntry.objects.exists()
    # ... and one stored anyway (before that check existed, or by an internal caller) still fails in the sandbox.
    with pickled.open("rb") as handle:
        stored_pickle = services.create_submission(researcher, digits_track, File(handle, name="model.pt2"),
                                                   name="pickle", artifact_format="pt2")
    # The zip bomb likewise: refused at upload by the loader's screen, and failed in the sandbox if stored.
    refused_bomb = _post(token, bomb)
    assert refused_bomb.status_code == 400 and "decompression bomb" in refused_bomb.json()["artifact"][0]
    with bomb.open("rb") as handle:
        stored_bomb = services.create_submission(researcher, digits_track, File(handle, name="bomb.pt2"),
                                                 name="bomb", artifact_format="pt2")
    hostile = {
        "pickle": (stored_pickle, "unsafe_format", "runs code"),
        "zip bomb": (stored_bomb, "corrupt_artifact", "decompression bomb"),
    }
    good = _upload(token, lenet5_safetensors, zoo_architecture="mnist_lenet5")
    for submission, _, _ in hostile.values():
        assert evaluate_submission(submission.pk) == "failed"
    assert evaluate_submission(good.pk) == "finished"

    for label, (submission, code, words) in hostile.items():
        submission.refresh_from_db()
        assert submission.state == "failed" and submission.failure_code == code, (label, submission.failure_reason)
        assert words in submission.failure_reason and len(submission.failure_reason) > 40, label
        assert not submission.results.exists(), label
        # The submission's own fault: its charge stands (only platform faults are refunded).
        assert not QuotaEntry.objects.filter(submission=submission, kind="refund").exists(), label
    assert not marker.exists(), "the pickle was unpickled"
    good.refresh_from_db()
    assert good.state == "finished" and good.results.filter(metric="accuracy").exists()


def test_a_sandbox_that_cannot_start_is_a_refunded_platform_fault(digits_track, token, lenet5_safetensors,
                                                                  monkeypatch):
    """When every sandbox uid is busy the job fails as the platform's fault and costs no quota."""

    def busy():
        raise IdentityUnavailable("all 256 sandbox uids are in use on this host")

    monkeypatch.setattr(launch, "claim_identity", busy)
    monkeypatch.setattr(availability, "runs_as_root", lambda: True)
    submission = _upload(token, lenet5_safetensors, zoo_architecture="mnist_lenet5")
    assert evaluate_submission(submission.pk) == "failed"
    submission.refresh_from_db()
    assert submission.failure_code == "sandbox_unavailable" and "sandbox" in submission.failure_reason
    assert QuotaEntry.objects.filter(submission=submission, kind="refund").exists()


@pytest.mark.parametrize(("size", "stopped_by"), [(4 * MiB, "Content-Length"), (MiB + MiB // 2, "byte count")])
def test_an_upload_over_the_limit_is_refused_with_413_before_it_is_stored(
    digits_track, researcher, token, settings, tmp_path, monkeypatch, size, stopped_by
):
    settings.ARENA_MAX_UPLOAD_BYTES = MiB
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads")
    os.makedirs(settings.FILE_UPLOAD_TEMP_DIR)
    written: list[int] = []
    original = TemporaryFileUploadHandler.receive_data_chunk

    def counting(self, raw_data, start):
        written.append(len(raw_data))
        return original(self, raw_data, start)

    monkeypatch.setattr(TemporaryFileUploadHandler, "receive_data_chunk", counting)
    big = tmp_path / "big.pt2"
    big.write_bytes(os.urandom(size))

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    with big.open("rb") as handle:
        response = client.post("/api/v1/submissions/", {"track": "digits", "name": "big", "artifact": handle},
                               format="multipart")

    assert response.status_code == 413, (stopped_by, response.status_code, response.content)
    assert "larger than the limit of 1 MiB" in response.json()["detail"]
    if stopped_by == "Content-Length":
        assert written == []  # refused from the header: not one byte of the body was read
    else:
        assert sum(written) <= MiB  # stopped at the limit: the rest never reached the disk
    assert _files_under(tmp_path / "uploads") == []  # the partial temporary file is gone
    assert _files_under(Path(settings.MEDIA_ROOT)) == []
    assert not Submission.objects.exists() and not QuotaEntry.objects.filter(user=researcher).exists()
