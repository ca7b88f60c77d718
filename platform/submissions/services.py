"""Creating, re-running and cancelling submissions: shared by the web form, the API and the admin."""

from __future__ import annotations

import hashlib
from pathlib import PurePath
from typing import Any

from django.core.files import File
from django.db import transaction

from benchmarks.models import Track
from submissions.models import Submission

CHUNK = 1024 * 1024


class DuplicateSubmission(Exception):
    """These exact weights were already evaluated (or are being evaluated) on this track and suite.

    A second evaluation would cost a worker and tell nobody anything new, and letting identical
    files through under new names would let a leaderboard be padded. ``existing`` is the earlier
    submission when the uploader may see it, else None.
    """

    def __init__(self, message: str, existing: Submission | None) -> None:
        super().__init__(message)
        self.message = message
        self.existing = existing


def find_duplicate(track: Track, sha256: str, zoo_architecture: str = "") -> Submission | None:
    """An earlier submission of the same file (and zoo architecture) whose evaluation still counts.

    Counted: one queued or running, and one finished under the track's current suite version.
    Not counted: failed or cancelled ones (a platform fault must be retryable) and those scored
    under an older suite (the new suite has not seen the file yet).
    """
    same = Submission.objects.filter(track=track, artifact_sha256=sha256, zoo_architecture=zoo_architecture)
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

    Raises ``accounts.quota.QuotaExceeded`` (before anything is stored) when the owner has used up
    a daily or total limit on the track, and :class:`DuplicateSubmission` (nothing stored, no quota
    charged) when the same file is already evaluated on the track under its current suite.
    """
    from accounts import quota
    from submissions.tasks import enqueue

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
        duplicate = find_duplicate(track, submission.artifact_sha256, submission.zoo_architecture)
        if duplicate is not None:
            visible = duplicate if duplicate.visible_to(owner) else None
            where = f" as “{duplicate.name}”" if visible is not None else ""
            raise DuplicateSubmission(
                f"This file was already submitted to {track.name}{where} and its evaluation under suite "
                f"{track.suite_version} stands; it is not evaluated twice.", visible)
        submission.artifact.save("upload", upload, save=False)
        submission.save()
        quota.charge(submission)
        transaction.on_commit(lambda: enqueue(submission))
    return submission


def rerun(submission: Submission) -> None:
    from submissions.tasks import enqueue

    submission.transition(Submission.State.QUEUED)
    transaction.on_commit(lambda: enqueue(submission))


def cancel(submission: Submission) -> bool:
    """Cancel a queued or running job; a running sandbox notices within a second and is killed."""
    if submission.is_terminal:
        return False
    submission.transition(Submission.State.CANCELLED, failure_reason="Cancelled.")
    return True
