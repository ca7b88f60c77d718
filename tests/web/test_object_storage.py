"""Artifacts in an S3-compatible object store: uploaded through the API, evaluated by a worker that copies them.

The store is moto's S3 server, a real HTTP endpoint on loopback spoken to by boto3 through
django-storages, exactly as a MinIO or AWS bucket would be. The evaluation runs in the real
bubblewrap sandbox (the task is called in-process, as in test_submission_flow).
"""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from django.core.exceptions import ImproperlyConfigured

from accounts.models import QuotaEntry
from arena.settings import media_storage
from evaluator.sandbox import bubblewrap_path
from submissions.models import Result
from submissions.tasks import evaluate_submission
from tests.web.test_hostile_uploads import _files_under, _upload
from tests.web.test_submission_flow import _reference_accuracy

moto_server = pytest.importorskip("moto.server")

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(bubblewrap_path() is None, reason="bubblewrap is not installed"),
]

BUCKET = "arena-artifacts"
CREDENTIALS = {"aws_access_key_id": "arena-test", "aws_secret_access_key": "arena-test-secret"}


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, settings, monkeypatch, tmp_path):
    """A fresh private bucket as the default storage, configured the way settings.py does it from the environment."""
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **CREDENTIALS)
    client.create_bucket(Bucket=BUCKET)
    for name, value in {"ARENA_MEDIA_STORAGE": "s3", "ARENA_S3_BUCKET": BUCKET, "ARENA_S3_ENDPOINT_URL": s3_endpoint,
                        "ARENA_S3_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
                        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"]}.items():
        monkeypatch.setenv(name, value)
    settings.STORAGES = {**settings.STORAGES, "default": media_storage()}
    settings.ARENA_SCRATCH_DIR = tmp_path / "scratch"
    yield client
    objects = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    for item in objects:
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def _keys(client) -> list[str]:
    return [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def test_an_artifact_in_the_bucket_is_scored_like_one_on_disk(
    digits_track, token, bucket, arena_dirs, lenet5_safetensors, mnist_test, settings
):
    submission = _upload(token, lenet5_safetensors, zoo_architecture="mnist_lenet5")
    keys = _keys(bucket)
    assert keys == [f"artifacts/{submission.artifact.name}"]
    assert _files_under(Path(settings.MEDIA_ROOT)) == []  # nothing written to the local media folder
    stored = bucket.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read()
    assert stored == lenet5_safetensors.read_bytes()
    # Private: the object's only grant is its owner's (no public-read ACL).
    grants = bucket.get_object_acl(Bucket=BUCKET, Key=keys[0])["Grants"]
    assert [grant["Permission"] for grant in grants] == ["FULL_CONTROL"]
    assert "URI" not in grants[0]["Grantee"]  # a canonical user, not AllUsers or AuthenticatedUsers

    evaluate_submission(submission.pk)
    submission.refresh_from_db()
    assert submission.state == "finished", submission.failure_reason
    accuracy = Result.objects.get(submission=submission, metric="accuracy").value
    assert accuracy == pytest.approx(_reference_accuracy(lenet5_safetensors, mnist_test), abs=1e-9)
    assert submission.runs.get().provenance["sandbox"] == "bubblewrap"
    assert _files_under(Path(settings.ARENA_SCRATCH_DIR)) == []  # the worker's copy is gone


@pytest.mark.parametrize("damage", ["replaced", "truncated", "deleted"])
def test_a_damaged_or_missing_object_is_a_refunded_platform_fault(
    digits_track, token, bucket, lenet5_safetensors, settings, damage
):
    submission = _upload(token, lenet5_safetensors, zoo_architecture="mnist_lenet5")
    key = f"artifacts/{submission.artifact.name}"
    original = lenet5_safetensors.read_bytes()
    if damage == "replaced":
        bucket.put_object(Bucket=BUCKET, Key=key, Body=bytes(reversed(original)))
    elif damage == "truncated":
        bucket.put_object(Bucket=BUCKET, Key=key, Body=original[: len(original) // 2])
    else:
        bucket.delete_object(Bucket=BUCKET, Key=key)

    evaluate_submission(submission.pk)
    submission.refresh_from_db()
    assert submission.state == "failed"
    assert submission.failure_code == "internal"
    expected = "missing" if damage == "deleted" else "does not match the sha256"
    assert expected in submission.failure_reason, submission.failure_reason
    assert "platform fault" in submission.failure_reason
    assert not Result.objects.filter(submission=submission).exists()
    assert QuotaEntry.objects.filter(submission=submission, kind="refund").exists()
    assert _files_under(Path(settings.ARENA_SCRATCH_DIR)) == []


def test_a_missing_file_on_disk_is_a_platform_fault_too(digits_track, token, lenet5_safetensors):
    submission = _upload(token, lenet5_safetensors, zoo_architecture="mnist_lenet5")
    Path(submission.artifact.path).unlink()
    evaluate_submission(submission.pk)
    submission.refresh_from_db()
    assert (submission.state, submission.failure_code) == ("failed", "internal")
    assert "missing" in submission.failure_reason
    assert QuotaEntry.objects.filter(submission=submission, kind="refund").exists()


def test_storage_settings_come_from_the_environment(monkeypatch):
    for name in ("ARENA_MEDIA_STORAGE", "ARENA_S3_BUCKET", "ARENA_S3_ENDPOINT_URL", "ARENA_S3_REGION",
                 "ARENA_S3_PREFIX", "ARENA_S3_ENCRYPT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert media_storage() == {"BACKEND": "django.core.files.storage.FileSystemStorage"}

    monkeypatch.setenv("ARENA_MEDIA_STORAGE", "s3")
    with pytest.raises(ImproperlyConfigured, match="ARENA_S3_BUCKET"):
        media_storage()
    monkeypatch.setenv("ARENA_S3_BUCKET", "b")
    monkeypatch.setenv("ARENA_S3_ENDPOINT_URL", "https://minio.internal:9000")
    monkeypatch.setenv("ARENA_S3_ENCRYPT", "1")
    config = media_storage()
    assert config["BACKEND"] == "storages.backends.s3.S3Storage"
    options = config["OPTIONS"]
    assert options["bucket_name"] == "b" and options["endpoint_url"] == "https://minio.internal:9000"
    assert options["default_acl"] is None and options["querystring_auth"] and not options["file_overwrite"]
    assert options["object_parameters"] == {"ServerSideEncryption": "AES256"}
    assert "access_key" not in options  # left to boto3's credential chain (an instance role, ...)

    monkeypatch.setenv("ARENA_MEDIA_STORAGE", "ftp")
    with pytest.raises(ImproperlyConfigured, match="'filesystem' or 's3'"):
        media_storage()
