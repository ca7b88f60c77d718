"""The same file from the same user on the same track and suite version is evaluated once, and costs no
quota twice; another user's identical file is a new submission (an upload reveals nobody else's)."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
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


def _client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def test_duplicate_upload_is_refused_with_a_pointer(digits_track, researcher, token, lenet5_safetensors):
    client = _client(token)
    first = _upload(client, lenet5_safetensors, digits_track.slug)
    assert first.status_code == 201, first.content
    charged = QuotaEntry.objects.count()
    again = _upload(client, lenet5_safetensors, digits_track.slug, "same weights, new name")
    assert again.status_code == 409 and again.json()["code"] == "duplicate"
    assert again.json()["duplicate_of"] == first.json()["id"]
    assert "You already submitted this file" in again.json()["detail"] and "“lenet”" in again.json()["detail"]
    assert Submission.objects.count() == 1 and QuotaEntry.objects.count() == charged


def test_another_users_identical_file_is_a_new_submission(digits_track, researcher, other_user, token,
                                                         lenet5_safetensors, django_user_model):
    """An upload never reveals that someone else, maybe privately, submitted the same bytes."""
    first = _upload(_client(token), lenet5_safetensors, digits_track.slug, "ada's secret")
    assert first.status_code == 201, first.content
    Submission.objects.filter(public_id=first.json()["id"]).update(is_public=False)
    other_token = Token.objects.create(user=other_user).key
    second = _upload(_client(other_token), lenet5_safetensors, digits_track.slug, "bob's copy")
    assert second.status_code == 201, second.content
    body = second.content.decode()
    assert first.json()["id"] not in body and "ada's secret" not in body
    assert second.json()["owner"] == other_user.username and second.json()["state"] == "queued"
    assert QuotaEntry.objects.filter(user=other_user, kind="charge").count() == 1

    # Through the web form too: accepted, and the page names nobody else's submission.
    carol = django_user_model.objects.create_user("carol")
    web = Client()
    web.force_login(carol)
    with open(lenet5_safetensors, "rb") as handle:
        page = web.post(reverse("submit"), {"track": digits_track.pk, "name": "carol's copy", "artifact": handle,
                                            "zoo_architecture": "mnist_lenet5", "is_public": "on"})
    assert page.status_code == 302, page.content.decode()[-2000:]
    assert Submission.objects.filter(artifact_sha256=Submission.objects.get(name="bob's copy").artifact_sha256
                                     ).count() == 3
    # The owner's own second upload is still refused, on the page with the owner's earlier name.
    with open(lenet5_safetensors, "rb") as handle:
        refused = web.post(reverse("submit"), {"track": digits_track.pk, "name": "again", "artifact": handle,
                                               "zoo_architecture": "mnist_lenet5", "is_public": "on"})
    assert refused.status_code == 200 and "You already submitted this file" in refused.content.decode()
    assert "carol&#x27;s copy" in refused.content.decode() and "ada&#x27;s secret" not in refused.content.decode()


def test_services_compare_only_the_uploaders_own_submissions(digits_track, researcher, other_user,
                                                              lenet5_safetensors):
    with open(lenet5_safetensors, "rb") as handle:
        data = handle.read()

    def submit(user, name: str) -> Submission:
        return services.create_submission(user, digits_track, SimpleUploadedFile("x.safetensors", data),
                                          name=name, zoo_architecture="mnist_lenet5")

    mine = submit(researcher, "mine")
    assert submit(other_user, "theirs").pk != mine.pk
    with pytest.raises(services.DuplicateSubmission) as caught:
        submit(researcher, "mine again")
    assert caught.value.existing == mine


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
