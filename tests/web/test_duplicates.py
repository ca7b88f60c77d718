"""The same file on the same track and suite version is evaluated once, and costs no quota twice."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from accounts.models import QuotaEntry
from submissions import services
from submissions.models import EvaluationRun, Submission

pytestmark = pytest.mark.django_db


def _upload(client: APIClient, path, track: str, name: str = "lenet") -> object:
    with open(path, "rb") as handle:
        return client.post("/api/v1/submissions/", {
            "track": track, "name": name, "artifact": handle, "zoo_architecture": "mnist_lenet5",
        }, format="multipart")


def test_duplicate_upload_is_refused_with_a_pointer(digits_track, researcher, other_user, token, lenet5_safetensors):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    first = _upload(client, lenet5_safetensors, digits_track.slug)
    assert first.status_code == 201, first.content
    charged = QuotaEntry.objects.count()
    again = _upload(client, lenet5_safetensors, digits_track.slug, "same weights, new name")
    assert again.status_code == 409 and again.json()["code"] == "duplicate"
    assert again.json()["duplicate_of"] == first.json()["id"]
    assert Submission.objects.count() == 1 and QuotaEntry.objects.count() == charged

    # Another user learns that the file was evaluated, not the private submission behind it.
    existing = Submission.objects.get()
    existing.is_public = False
    existing.save(update_fields=["is_public"])
    with open(lenet5_safetensors, "rb") as handle:
        upload = SimpleUploadedFile("x.safetensors", handle.read())
    with pytest.raises(services.DuplicateSubmission) as caught:
        services.create_submission(other_user, digits_track, upload, name="copy", zoo_architecture="mnist_lenet5")
    assert caught.value.existing is None and existing.name not in caught.value.message


def test_failed_or_older_suite_evaluations_do_not_block(digits_track, researcher, lenet5_safetensors):
    with open(lenet5_safetensors, "rb") as handle:
        data = handle.read()

    def submit(name: str) -> Submission:
        return services.create_submission(researcher, digits_track, SimpleUploadedFile("m.safetensors", data),
                                          name=name, zoo_architecture="mnist_lenet5")

    first = submit("first")
    first.transition(Submission.State.RUNNING)
    first.transition(Submission.State.FAILED, failure_code="internal", failure_reason="platform fault")
    second = submit("after a failure")  # a failed evaluation may be retried
    second.transition(Submission.State.RUNNING)
    second.transition(Submission.State.FINISHED)
    EvaluationRun.objects.create(submission=second, suite_version=digits_track.suite_version, seed=0, ok=True)
    with pytest.raises(services.DuplicateSubmission):
        submit("while its evaluation stands")
    digits_track.suite_version = "clean-2"  # a new suite has not seen the file yet
    digits_track.save(update_fields=["suite_version"])
    assert submit("under the new suite").state == Submission.State.QUEUED
