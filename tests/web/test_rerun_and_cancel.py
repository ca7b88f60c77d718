"""Re-runs are for staff only (an owner's re-run would be an evaluation the quota never sees), and a
cancelled upload's file is deleted from storage, through the API, the page and the admin."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import QuotaEntry
from submissions import services
from submissions.models import Submission
from submissions.tasks import evaluate_submission

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch) -> list[int]:
    """Stands in for the broker: the ids of the submissions sent to the queue."""
    ids: list[int] = []
    monkeypatch.setattr("submissions.dispatch.enqueue", lambda submission: ids.append(submission.pk))
    return ids


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("operator", is_staff=True)


def _upload(user, track, name: str = "m") -> Submission:
    content = b"PK\x03\x04 stand-in for a model " + uuid.uuid4().bytes
    return services.create_submission(user, track, ContentFile(content, name="m.pt2"), name=name)


def _settled(user, track, state: str = "finished") -> Submission:
    submission = _upload(user, track)
    submission.transition(Submission.State.RUNNING)
    submission.transition(state)
    return submission


def _web(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_an_owner_cannot_rerun_for_free(digits_track, researcher, sent, django_capture_on_commit_callbacks):
    submission = _settled(researcher, digits_track)
    charges = QuotaEntry.objects.filter(user=researcher).count()
    with django_capture_on_commit_callbacks(execute=True):
        response = _web(researcher).post(f"/submissions/{submission.public_id}/rerun/", follow=True)
    assert "Only staff can re-run an evaluation" in response.content.decode()
    submission.refresh_from_db()
    assert submission.state == "finished" and sent == []
    assert QuotaEntry.objects.filter(user=researcher).count() == charges


def test_staff_rerun_queues_again_without_charging(digits_track, researcher, staff, sent,
                                                   django_capture_on_commit_callbacks):
    submission = _settled(researcher, digits_track, "failed")
    charges = QuotaEntry.objects.filter(user=researcher).count()
    with django_capture_on_commit_callbacks(execute=True):
        response = _web(staff).post(f"/submissions/{submission.public_id}/rerun/")
    assert response.status_code == 302
    submission.refresh_from_db()
    assert submission.state == "queued" and sent == [submission.pk]
    assert QuotaEntry.objects.filter(user=researcher).count() == charges  # an operator's re-run is not charged


def _stored(submission: Submission) -> Path:
    return Path(submission.artifact.path)


def test_cancelling_through_the_api_deletes_the_file(digits_track, researcher, token,
                                                     django_capture_on_commit_callbacks):
    submission = _upload(researcher, digits_track)
    stored = _stored(submission)
    assert stored.is_file()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/submissions/{submission.public_id}/cancel/")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert not stored.exists()
    kept = Submission.objects.get(pk=submission.pk)
    assert not kept.artifact and kept.artifact_sha256 == submission.artifact_sha256  # the record stays
    assert kept.artifact_size == submission.artifact_size and kept.original_filename == "m.pt2"
    # The job's message may still arrive: it finds the job cancelled and does nothing (no failure, no refund).
    assert evaluate_submission(submission.pk) == "cancelled"
    kept.refresh_from_db()
    assert kept.state == "cancelled" and kept.failure_code == ""
    assert not QuotaEntry.objects.filter(submission=submission, kind="refund").exists()


def test_cancelling_on_the_page_deletes_the_file_and_it_cannot_be_rerun(digits_track, researcher, staff, sent,
                                                                         django_capture_on_commit_callbacks):
    submission = _upload(researcher, digits_track)
    stored = _stored(submission)
    with django_capture_on_commit_callbacks(execute=True):
        assert _web(researcher).post(f"/submissions/{submission.public_id}/cancel/").status_code == 302
    assert not stored.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = _web(staff).post(f"/submissions/{submission.public_id}/rerun/", follow=True)
    assert "its file was deleted when it was cancelled" in response.content.decode()
    submission.refresh_from_db()
    assert submission.state == "cancelled" and sent == []


def test_cancelling_in_the_admin_deletes_the_file(digits_track, researcher, django_capture_on_commit_callbacks):
    submission = _upload(researcher, digits_track)
    stored = _stored(submission)
    root = get_user_model().objects.create_user("root", is_staff=True, is_superuser=True)
    with django_capture_on_commit_callbacks(execute=True):
        _web(root).post("/admin/submissions/submission/", {"action": "cancel_selected",
                                                           "_selected_action": [submission.pk]})
    submission.refresh_from_db()
    assert submission.state == "cancelled" and not stored.exists()


def test_the_file_goes_only_once_the_cancel_commits(digits_track, researcher, django_capture_on_commit_callbacks):
    """The file goes only once the cancellation is committed."""
    submission = _upload(researcher, digits_track)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.cancel(submission)
    assert callbacks and _stored(submission).is_file()  # deferred to the commit, which never came
