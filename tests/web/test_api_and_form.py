"""Uploading through the REST API (token) and the web form (login + CSRF), and who sees what."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from submissions.models import Submission

pytestmark = pytest.mark.django_db


def _api(token: str | None = None) -> APIClient:
    client = APIClient()
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def test_api_upload_returns_id_and_status_url(digits_track, token, lenet5_safetensors):
    with lenet5_safetensors.open("rb") as handle:
        response = _api(token).post(
            "/api/v1/submissions/",
            {"track": "digits", "name": "LeNet-5 via API", "artifact": handle, "zoo_architecture": "mnist_lenet5",
             "paper_url": "https://example.org/paper", "license": "MIT"},
            format="multipart",
        )
    assert response.status_code == 201, response.content
    body = response.json()
    submission = Submission.objects.get(public_id=body["id"])
    assert body["state"] == "queued"
    assert body["status_url"].endswith(f"/api/v1/submissions/{body['id']}/")
    assert response["Location"] == body["status_url"]
    assert submission.artifact_format == "safetensors" and submission.license == "MIT"
    assert len(submission.artifact_sha256) == 64
    # The stored name is generated, never the uploaded one.
    assert str(submission.public_id) in submission.artifact.name
    status = _api(token).get(body["status_url"])
    assert status.status_code == 200 and status.json()["state"] == "queued"


def test_api_requires_a_token_to_upload(digits_track, lenet5_safetensors):
    with lenet5_safetensors.open("rb") as handle:
        response = _api().post("/api/v1/submissions/", {"track": "digits", "name": "x", "artifact": handle},
                               format="multipart")
    assert response.status_code == 401
    assert not Submission.objects.exists()


def test_api_rejects_unknown_track_and_missing_architecture(digits_track, token, lenet5_safetensors):
    with lenet5_safetensors.open("rb") as handle:
        unknown = _api(token).post("/api/v1/submissions/", {"track": "nope", "name": "x", "artifact": handle},
                                   format="multipart")
    assert unknown.status_code == 400 and "track" in unknown.json()
    with lenet5_safetensors.open("rb") as handle:
        missing = _api(token).post(
            "/api/v1/submissions/",
            {"track": "digits", "name": "x", "artifact": handle, "artifact_format": "safetensors"},
            format="multipart",
        )
    assert missing.status_code == 400 and "zoo_architecture" in missing.json()


def test_private_submissions_are_seen_only_by_owner_and_staff(digits_track, researcher, other_user, token,
                                                              lenet5_safetensors, django_user_model):
    with lenet5_safetensors.open("rb") as handle:
        body = _api(token).post(
            "/api/v1/submissions/",
            {"track": "digits", "name": "secret", "artifact": handle, "zoo_architecture": "mnist_lenet5",
             "is_public": False},
            format="multipart",
        ).json()
    url = f"/api/v1/submissions/{body['id']}/"
    page = reverse("submission-detail", args=[body["id"]])
    assert _api(token).get(url).status_code == 200
    assert _api().get(url).status_code == 404
    other = APIClient()
    other.force_authenticate(other_user)
    assert other.get(url).status_code == 404
    assert all(row["id"] != body["id"] for row in other.get("/api/v1/submissions/").json()["results"])
    staff = django_user_model.objects.create_user("staff", password="x-long-password", is_staff=True)
    staff_client = APIClient()
    staff_client.force_authenticate(staff)
    assert staff_client.get(url).status_code == 200
    web = Client()
    assert web.get(page).status_code == 404
    web.force_login(other_user)
    assert web.get(page).status_code == 404
    web.force_login(researcher)
    assert web.get(page).status_code == 200


def test_only_the_owner_can_cancel(digits_track, researcher, other_user, token, lenet5_safetensors):
    with lenet5_safetensors.open("rb") as handle:
        body = _api(token).post(
            "/api/v1/submissions/",
            {"track": "digits", "name": "mine", "artifact": handle, "zoo_architecture": "mnist_lenet5"},
            format="multipart",
        ).json()
    other = APIClient()
    other.force_authenticate(other_user)
    assert other.post(f"/api/v1/submissions/{body['id']}/cancel/").status_code == 403
    assert _api(token).post(f"/api/v1/submissions/{body['id']}/cancel/").json()["state"] == "cancelled"
    assert _api(token).post(f"/api/v1/submissions/{body['id']}/cancel/").status_code == 409


def test_web_form_upload_with_login_and_csrf(digits_track, researcher, lenet5_safetensors):
    client = Client(enforce_csrf_checks=True)
    assert client.get(reverse("submit")).status_code == 302  # login required
    login_page = client.get(reverse("login"))
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.content.decode()).group(1)
    response = client.post(reverse("login"), {"username": "ada", "password": "a-long-password-1",
                                              "csrfmiddlewaretoken": csrf})
    assert response.status_code == 302
    form_page = client.get(reverse("submit"))
    assert form_page.status_code == 200
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form_page.content.decode()).group(1)
    fields = {"track": digits_track.pk, "name": "LeNet-5 via form", "zoo_architecture": "mnist_lenet5",
              "is_public": "on"}
    with lenet5_safetensors.open("rb") as handle:
        forged = client.post(reverse("submit"), {**fields, "artifact": handle})
    assert forged.status_code == 403  # no CSRF token
    with lenet5_safetensors.open("rb") as handle:
        response = client.post(reverse("submit"), {**fields, "artifact": handle, "csrfmiddlewaretoken": csrf})
    submission = Submission.objects.get(name="LeNet-5 via form")
    assert response.status_code == 302 and response["Location"] == submission.get_absolute_url()
    assert submission.owner == researcher and submission.state == "queued"
    detail = client.get(submission.get_absolute_url())
    assert b"Queued" in detail.content and b'<progress id="progress"' in detail.content
    status = client.get(reverse("submission-status", args=[submission.public_id])).json()
    assert status["state"] == "queued" and status["queue_position"] == 1


def test_form_rejects_oversized_upload(digits_track, researcher, lenet5_safetensors, settings):
    settings.ARENA_MAX_UPLOAD_BYTES = 1000
    client = Client()
    client.force_login(researcher)
    with lenet5_safetensors.open("rb") as handle:
        response = client.post(reverse("submit"), {"track": digits_track.pk, "name": "big", "artifact": handle,
                                                   "zoo_architecture": "mnist_lenet5"})
    assert response.status_code == 200 and b"larger than the limit" in response.content
    assert not Submission.objects.exists()


def test_uploaded_file_name_cannot_traverse_paths(digits_track, token, lenet5_safetensors):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("../../../../etc/evil.safetensors", lenet5_safetensors.read_bytes())
    response = _api(token).post("/api/v1/submissions/", {"track": "digits", "name": "t", "artifact": upload,
                                                         "zoo_architecture": "mnist_lenet5"}, format="multipart")
    assert response.status_code == 201
    submission = Submission.objects.get()
    assert ".." not in submission.artifact.name and submission.artifact.name.startswith("artifacts/digits/")
    assert submission.original_filename == "evil.safetensors"
