"""Creating, re-running and cancelling submissions: shared by the web form, the API and the admin."""

from __future__ import annotations

import hashlib
from pathlib import PurePath
from typing import Any

from django.core.files import File
from django.db import transaction

from benchmarks.models import Track
from submissions import dispatch, quota, scheduling
from submissions.models import IllegalTransition, Submission

CHUNK = 1024 * 1024


class DuplicateSubmission(Exception):
    """The uploader already submitted these exact weights to this track, and that evaluation still counts.

    A second evaluation would cost a worker and tell the uploader nothing new. Only the uploader's
    own submissions are compared: telling someone that *another* user uploaded the same file would
    reveal that user's (possibly private) submission, so another user's identical file is simply a
    new submission. ``existing`` is the uploader's earlier submission.
    """

    def __init__(self, message: str, existing: Submission) -> None:
        super().__init__(message)
        self.message = message
        self.existing = existing


class ArtifactDeleted(IllegalTransition):
    """The submission cannot be queued again: its file was deleted when it was cancelled."""


def find_duplicate(owner: Any, track: Track, sha256: str, zoo_architecture: str = "") -> Submission | None:
    """``owner``'s earlier submission of the same file (and zoo architecture) whose evaluation still counts.

    Counted: one queued or running, and one finished under the track's current suite version.
    Not counted: failed or cancelled ones (a platform fault must be retryable) and those scored
    under an older suite (the new suite has not seen the file yet). Other users' submissions are
    never looked at (see :class:`DuplicateSubmission`).
    """
    same = Submission.objects.filter(owner=owner, track=track, artifact_sha256=sha256,
                                     zoo_architecture=zoo_architecture)
    pending = same.filter(state__in=[Submission.State.QUEUED, Submission.State.RUNNING])
    current = same.filter(state=Submission.State.FINISHED, runs__suite_version=track.suite_version)
    return (pending | current).order_by("created_at", "id").first()


def sha256_of(file: File) -> str:
    """Hash an uploaded file chunk by chunk: uploads are temporary files, never read whole."""
    digest = hashlib.sha256()
    file.seek(0)
    for chunk in file.chunks(CHUNK):
        digest.update(chunk)
    file.seek(0)
    return digest.hexdigest()


def infer_format(file: File, declared: str = "", zoo_architecture: str = "") -> str:
    """The declared format if any; else the file name's suffix; else the first bytes.

    This is only a routing guess: the evaluator checks the content itself and fails the
    submission with a clear reason if the file is not what it claims to be.
    """
    if declared:
        return declared
    suffix = PurePath(getattr(file, "name", "") or "").suffix.lower()
    if suffix == ".pt2":
        return Submission.Format.PT2
    if suffix == ".safetensors" or zoo_architecture:
        return Submission.Format.SAFETENSORS
    file.seek(0)
    head = file.read(4)
    file.seek(0)
    return Submission.Format.PT2 if head.startswith(b"PK") else Submission.Format.SAFETENSORS


def safe_display_name(name: str) -> str:
    """Keep only the last path component of an uploaded name, for display."""
    return PurePath(name.replace("\\", "/")).name[:255]


def create_submission(owner: Any, track: Track, upload: File, **metadata: Any) -> Submission:
    """Store the artifact under a generated name, record its sha256, charge the quota, and queue it.

    Raises ``submissions.quota.QuotaExceeded`` (before anything is stored) when the owner has used up
    a daily or total limit on the track, and :class:`DuplicateSubmission` (nothing stored, no quota
    charged) when the owner's own earlier upload of the same file still counts on the track.
    The upload is trusted to be well-formed: the API's serializer and the web form check it first
    (``submissions.uploads.check_artifact``); internal callers (demo, baselines) pass known files.
    """
    declared = metadata.pop("artifact_format", "") or ""
    submission = Submission(
        owner=owner,
        track=track,
        artifact_format=infer_format(upload, declared, metadata.get("zoo_architecture", "")),
        artifact_sha256=sha256_of(upload),
        artifact_size=upload.size or 0,
        original_filename=safe_display_name(getattr(upload, "name", "") or ""),
        **metadata,
    )
    with transaction.atomic():
        quota.check_and_lock(owner, track)
        duplicate = find_duplicate(owner, track, submission.artifact_sha256, submission.zoo_architecture)
        if duplicate is not None:
            raise DuplicateSubmission(
                f"You already submitted this file to {track.name} as “{duplicate.name}”, and that evaluation "
                f"under suite {track.suite_version} stands; it is not evaluated twice.", duplicate)
        submission.artifact.save("upload", upload, save=False)
        scheduling.assign_round(submission)
        submission.save()
        quota.charge(submission)
        transaction.on_commit(lambda: dispatch.enqueue(submission))
    return submission


def rerun(submission: Submission) -> None:
    """Queue a finished, failed or cancelled submission again (staff and operators only: it is not charged).

    Raises :class:`ArtifactDeleted` when its file is gone (deleted when it was cancelled) and
    ``IllegalTransition`` when it is still queued or running.
    """
    if not submission.artifact:
        raise ArtifactDeleted(f"{submission.public_id}: its file was deleted when it was cancelled")
    with transaction.atomic():
        submission.transition(Submission.State.QUEUED)
        scheduling.assign_round(submission)
    transaction.on_commit(lambda: dispatch.enqueue(submission))


class NotIncomplete(Exception):
    """Only an incomplete evaluation can be resumed."""


def resume(submission: Submission) -> None:
    """Queue an incomplete evaluation again, to run only the stages it did not finish (not charged).

    Open to the owner: running out of time was the platform's doing (the budget is its estimate of its
    own work), and a resumed run computes exactly the numbers the uninterrupted one would have, so it is
    no second look at any score. Raises :class:`NotIncomplete` for any other state.
    """
    if submission.state != Submission.State.INCOMPLETE:
        raise NotIncomplete(f"a {submission.state} submission cannot be resumed")
    if not submission.artifact:
        raise ArtifactDeleted(f"{submission.public_id}: its file was deleted")
    with transaction.atomic():
        submission.transition(Submission.State.QUEUED, progress_stage="resuming after the finished stages")
        scheduling.assign_round(submission)
    transaction.on_commit(lambda: dispatch.enqueue(submission))


def cancel(submission: Submission) -> bool:
    """Cancel a queued or running job and delete its stored file; False when it had already ended.

    A running sandbox notices within a second and is killed. The file goes once the cancellation
    is committed (a rolled-back cancel keeps it); the row keeps the sha256, size and name for the
    record. An evaluation that still picks the job up finds it cancelled and does nothing, and a
    worker that loses the file mid-run records nothing either: its attempt no longer owns the job.
    """
    if submission.is_terminal:
        return False
    submission.transition(Submission.State.CANCELLED, failure_reason="Cancelled.")
    # robust: a storage outage is logged by Django and leaves the file (and its name) for later; the
    # cancellation itself stands either way.
    transaction.on_commit(lambda: delete_artifact(submission), robust=True)
    return True


def delete_artifact(submission: Submission) -> None:
    """Remove the stored file of a cancelled submission and forget its storage name."""
    if submission.artifact:
        submission.artifact.delete(save=False)
    Submission.objects.filter(pk=submission.pk).update(artifact="")
