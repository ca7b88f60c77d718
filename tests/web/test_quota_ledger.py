"""Submission quotas: daily and total limits per track, an append-only ledger, no refund for
cancelling or deleting, a refund for platform faults, and exempt staff and robots."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import AppendOnlyError, QuotaEntry, TrackQuota
from evaluator.spec import JobResult
from submissions import services
from submissions.arrival import record_result
from submissions.failures import is_platform_fault
from submissions.models import Submission
from submissions.quota import QuotaExceeded, refund_platform_failure, usage_for

pytestmark = pytest.mark.django_db


def _upload(user, track, name: str = "m") -> Submission:
    # Distinct bytes each time: the same file twice on a track is refused as a duplicate.
    content = b"PK\x03\x04 not really a model " + uuid.uuid4().bytes
    return services.create_submission(user, track, ContentFile(content, name="m.pt2"), name=name)


def _fail(submission: Submission, code: str) -> None:
    submission.transition("running")
    record_result(submission, JobResult(job_id=str(submission.public_id), ok=False, suite_version="clean-1",
                                              seed=0, error_code=code, error="detail"))
    submission.refresh_from_db()


def _left(user, track) -> int | None:
    return usage_for(user, [track])[track.pk].left_today


def test_daily_and_total_limits(digits_track, researcher, settings):
    settings.ARENA_DEFAULT_DAILY_LIMIT = 3
    assert _left(researcher, digits_track) == 3
    TrackQuota.objects.create(track=digits_track, daily_limit=2, total_limit=3)
    _upload(researcher, digits_track)
    _upload(researcher, digits_track)
    assert _left(researcher, digits_track) == 0
    with pytest.raises(QuotaExceeded, match="today's 2 submissions") as refused:
        _upload(researcher, digits_track)
    assert 0 < refused.value.retry_after <= 86400
    assert Submission.objects.count() == 2 and QuotaEntry.objects.count() == 2  # nothing stored when refused

    # Yesterday's charges no longer count against today, but still against the total. The ORM
    # refuses to edit the ledger, so the test moves the clock back in SQL.
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {QuotaEntry._meta.db_table} SET created_at = %s",
                       [connection.ops.adapt_datetimefield_value(yesterday)])
    assert _left(researcher, digits_track) == 1  # min(2 left today, 1 left in all)
    _upload(researcher, digits_track)
    with pytest.raises(QuotaExceeded, match="all 3 submissions"):
        _upload(researcher, digits_track)


def test_api_answers_429_and_the_form_shows_the_reason(digits_track, researcher, token, lenet5_safetensors):
    TrackQuota.objects.create(track=digits_track, daily_limit=1, total_limit=10)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    for expected in (201, 429):
        with lenet5_safetensors.open("rb") as handle:
            response = client.post("/api/v1/submissions/", {"track": "digits", "name": "x", "artifact": handle,
                                                            "zoo_architecture": "mnist_lenet5"}, format="multipart")
        assert response.status_code == expected
    assert response.json()["code"] == "quota_exceeded" and "resets at midnight UTC" in response.json()["detail"]
    assert int(response["Retry-After"]) > 0
    assert client.get("/api/v1/quota/").json() == [{"track": "digits", "used_today": 1, "used_total": 1,
                                                    "daily_limit": 1, "total_limit": 10, "left_today": 0,
                                                    "exempt": False}]

    web = Client()
    web.force_login(researcher)
    with lenet5_safetensors.open("rb") as handle:
        page = web.post(reverse("submit"), {"track": digits_track.pk, "name": "y", "artifact": handle,
                                            "zoo_architecture": "mnist_lenet5", "is_public": "on"})
    assert page.status_code == 200 and "today&#x27;s 1 submissions on Digits" in page.content.decode()
    assert Submission.objects.count() == 1
    mine = web.get(reverse("my-submissions")).content.decode()
    assert '<span class="quota-none">0</span>' in mine and "1 of 1" in mine


def test_ledger_is_append_only(digits_track, researcher):
    submission = _upload(researcher, digits_track)
    entry = QuotaEntry.objects.get(submission=submission)
    entry.reason = "edited"
    with pytest.raises(AppendOnlyError):
        entry.save()
    with pytest.raises(AppendOnlyError):
        entry.delete()
    with pytest.raises(AppendOnlyError):
        QuotaEntry.objects.filter(pk=entry.pk).update(reason="edited")
    with pytest.raises(AppendOnlyError):
        QuotaEntry.objects.all().delete()
    assert QuotaEntry.objects.get(pk=entry.pk).reason == "submission created"


def test_cancel_and_delete_do_not_refund(digits_track, researcher):
    TrackQuota.objects.create(track=digits_track, daily_limit=2, total_limit=10)
    first = _upload(researcher, digits_track)
    assert services.cancel(first)
    second = _upload(researcher, digits_track)
    second.delete()  # the charge stays, without its submission
    assert QuotaEntry.objects.filter(submission__isnull=True, kind="charge").count() == 1
    assert _left(researcher, digits_track) == 0
    assert refund_platform_failure(first) is None  # cancelled is not a platform fault


def test_platform_faults_are_refunded_once(digits_track, researcher):
    TrackQuota.objects.create(track=digits_track, daily_limit=2, total_limit=10)
    platform_fault = _upload(researcher, digits_track, "a")
    model_fault = _upload(researcher, digits_track, "b")
    assert is_platform_fault("internal") and not is_platform_fault("non_finite_output")
    _fail(platform_fault, "internal")
    _fail(model_fault, "non_finite_output")

    assert refund_platform_failure(model_fault) is None
    web = Client()
    web.force_login(researcher)
    mine = web.get(reverse("my-submissions")).content.decode()
    assert "The platform failed while evaluating (a platform fault; it does not count)." in mine
    assert "The model returned NaN or infinite values." in mine
    refund = refund_platform_failure(platform_fault)
    assert refund.kind == "refund" and refund.charge.submission == platform_fault
    assert refund.reason == "platform fault: internal"
    assert refund_platform_failure(platform_fault) is None  # a redelivered task refunds nothing more
    assert _left(researcher, digits_track) == 1
    usage = usage_for(researcher, [digits_track])[digits_track.pk]
    assert (usage.used_today, usage.used_total) == (1, 1)

    # A re-run that hits a second platform fault is not refunded twice: it was charged once.
    services.rerun(platform_fault)
    _fail(platform_fault, "sandbox_unavailable")
    assert refund_platform_failure(platform_fault) is None
    assert QuotaEntry.objects.filter(kind="refund").count() == 1


def test_staff_and_robots_are_exempt(digits_track, researcher, other_user, django_user_model):
    TrackQuota.objects.create(track=digits_track, daily_limit=1, total_limit=1)
    staff = django_user_model.objects.create_user("op", password="x-long-password-3", is_staff=True)
    Group.objects.create(name="robots").user_set.add(other_user)
    for user in (staff, other_user):
        for i in range(3):
            _upload(user, digits_track, f"{user.username}-{i}")
        usage = usage_for(user, [digits_track])[digits_track.pk]
        assert usage.exempt and usage.left_today is None
    assert not QuotaEntry.objects.exists()
    _upload(researcher, digits_track)
    with pytest.raises(QuotaExceeded):
        _upload(researcher, digits_track)
