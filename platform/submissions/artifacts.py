"""A submission's artifact as a local file, wherever the media storage keeps it.

The sandbox bind-mounts the artifact read-only, so the evaluator needs a path on the worker's
own disk. On the filesystem storage that is the stored file itself. On an object store (S3,
MinIO) the worker streams the object into a private scratch folder, checks its sha256 against
the one recorded at upload on the way (a truncated or replaced object must never be scored as
the researcher's model), and removes the copy when the job ends, however it ends.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from submissions.models import Submission

CHUNK = 1024 * 1024


class ArtifactUnavailable(Exception):
    """The stored artifact is missing or no longer matches its sha256: a platform fault, not the model's."""


def stored_path(submission: Submission) -> str | None:
    """The artifact's path on this machine when the storage has one (the filesystem storage), else None."""
    try:
        return submission.artifact.storage.path(submission.artifact.name)
    except NotImplementedError:  # object stores have no local path
        return None


@contextmanager
def local_artifact(submission: Submission) -> Iterator[str]:
    """Yield a local path to the submission's artifact for the length of one evaluation."""
    path = stored_path(submission)
    if path is not None:
        if not os.path.isfile(path):
            raise ArtifactUnavailable(f"the stored artifact {submission.artifact.name!r} is missing")
        yield path
        return
    scratch = Path(settings.ARENA_SCRATCH_DIR)
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"artifact-{submission.public_id}-", dir=scratch))
    try:
        target = folder / "artifact"
        _copy_verified(submission, target)
        # The sandbox reads the file as an unprivileged job user through a bind mount of the file
        # itself; the folder stays private to the worker.
        target.chmod(0o444)
        yield str(target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _copy_verified(submission: Submission, target: Path) -> None:
    storage, name = submission.artifact.storage, submission.artifact.name
    digest = hashlib.sha256()
    size = 0
    try:
        with storage.open(name, "rb") as source, target.open("wb") as sink:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                sink.write(chunk)
                size += len(chunk)
    except FileNotFoundError as exc:
        raise ArtifactUnavailable(f"the stored artifact {name!r} is missing from the media storage") from exc
    except Exception as exc:  # network, permissions, the store's own errors (botocore's ClientError, ...)
        raise ArtifactUnavailable(
            f"the stored artifact {name!r} could not be read: {type(exc).__name__}: {exc}") from exc
    if digest.hexdigest() != submission.artifact_sha256:
        raise ArtifactUnavailable(
            f"the stored artifact {name!r} ({size} bytes) does not match the sha256 recorded at upload"
        )
