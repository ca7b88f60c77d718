"""Operators re-run and cancel from the admin; hidden data and artifacts are never served."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.test import Client

from submissions.models import Submission

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(django_user_model):
    staff = django_user_model.objects.create_user("op", password="op-long-password", is_staff=True,
                                                  is_superuser=True)
    client = Client()
    client.force_login(staff)
    return client


def _submission(track, owner, state: str) -> Submission:
    s = Submission(track=track, owner=owner, name=f"model-{state}", artifact_format="pt2",
                   artifact_sha256="0" * 64)
    s.artifact.save("x", ContentFile(b"PK"), save=False)
    s.save()
    Submission.objects.filter(pk=s.pk).update(state=state)
    s.refresh_from_db()
    return s


def test_admin_reruns_and_cancels(staff_client, digits_track, researcher):
    failed = _submission(digits_track, researcher, "failed")
    queued = _submission(digits_track, researcher, "queued")
    url = "/admin/submissions/submission/"
    response = staff_client.post(url, {"action": "rerun_selected", "_selected_action": [failed.pk]}, follow=True)
    assert response.status_code == 200
    failed.refresh_from_db()
    assert failed.state == "queued" and failed.failure_reason == ""
    staff_client.post(url, {"action": "cancel_selected", "_selected_action": [queued.pk]}, follow=True)
    queued.refresh_from_db()
    assert queued.state == "cancelled"
    for page in ("/admin/benchmarks/benchmark/", "/admin/benchmarks/track/", "/admin/auth/user/",
                 f"/admin/benchmarks/track/{digits_track.pk}/change/"):
        assert staff_client.get(page).status_code == 200, page


def test_admin_is_closed_to_researchers(digits_track, researcher):
    client = Client()
    client.force_login(researcher)
    assert client.get("/admin/submissions/submission/").status_code == 302


def test_hidden_sets_and_artifacts_are_not_served(digits_track, researcher, staff_client):
    evaluation_set = digits_track.evaluation_sets.get()
    submission = _submission(digits_track, researcher, "finished")
    for client in (Client(), staff_client):
        for path in (f"/media/{submission.artifact.name}", f"/media/../data/{evaluation_set.relative_path}",
                     f"/static/../data/{evaluation_set.relative_path}", f"/data/{evaluation_set.relative_path}"):
            response = client.get(path)
            assert response.status_code == 404, path
    api = Client().get(f"/api/v1/tracks/{digits_track.slug}/").json()
    assert "relative_path" not in str(api) and str(evaluation_set.path) not in str(api)
    # What the track page documents, the API says too: the attack suite and budget, notes, each set's metadata.
    assert (api["attack_suite"], api["attack_points"], api["notes"]) == (
        digits_track.attack_suite, digits_track.attack_points, digits_track.notes)
    assert api["threat_models"] == digits_track.threat_models
    assert api["evaluation_sets"][0]["metadata"] == evaluation_set.metadata
