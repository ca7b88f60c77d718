"""The Celery tasks that check and import a bundle uploaded on the admin's import page.

Why on a worker and not in the web request: the web tier never sees ``ARENA_DATA_DIR`` (systemd's
``InaccessiblePaths``, and the Compose and Kubernetes web containers do not mount the data volume),
and a large bundle takes far longer to check and import than a request should last. The page stores
the zip in the media storage (:class:`~bundles.models.BundleUpload`), and :mod:`bundles.dispatch`
sends these tasks by name to the bundle queue (``ARENA_BUNDLE_QUEUE``, what ``celery -A arena worker
-Q bundles`` consumes), not to the evaluation workers, which the shipped deployments give read-only
data and media. The bundle worker reads the zip from the media storage, writes ``ARENA_DATA_DIR`` and
deletes the zip.

* ``bundles.check`` runs the dry run (every check, every set written to staging and thrown away,
  nothing registered) and stores its report (state ``checked``) or every problem (``refused``).
* ``bundles.import`` runs the real import of a ``checked`` upload, once staff confirmed it.

Both are acknowledged late, like the evaluation task, so a delivery whose worker died comes back.
Each step is *claimed* by one conditional UPDATE, so a second delivery never runs a step twice: an
import is claimed by moving ``checked`` to ``importing``, a check by stamping ``started_at``. While a
step runs, a heartbeat thread stamps ``updated_at`` (and the importer's latest log lines, which the page
shows). A delivery that finds its step already running watches that heartbeat: if it moves, the step
is alive elsewhere (Redis delivers a message again after its visibility timeout even while the first
worker still runs it) and the delivery drops itself; if it stands still, the worker died mid-step and
the upload is marked ``failed`` ("interrupted; upload again") for staff to look at, never re-run blindly.

Whatever ends a step, the upload gets a final state and a sentence, never a traceback on the page
(the traceback goes to the worker's log), and a final upload's zip is deleted from the storage.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from bundles.dispatch import CHECK_TASK, IMPORT_TASK, short
from bundles.importer import Importer
from bundles.loading import opened_bundle
from bundles.manifest import BundleInvalid
from bundles.models import BundleUpload, discard_archive
from submissions.recovery import with_db_retry

logger = logging.getLogger(__name__)

State = BundleUpload.State

#: Seconds between two heartbeats of a running step (each also stores the importer's latest lines).
HEARTBEAT_SECONDS = 5.0
#: How long a second delivery watches a running step's heartbeat before it calls the step dead.
STALE_SECONDS = 60.0
#: Log lines shown while a step runs, and kept once it ended.
PROGRESS_LINES = 200
KEPT_LINES = 2000
CHUNK = 1024 * 1024


class ArchiveUnavailable(Exception):
    """The stored zip is gone or no longer the one uploaded: a platform fault, not the bundle's."""


# --- The tasks (worker side) --------------------------------------------------------------------

@shared_task(name=CHECK_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def check_upload(self: Task, upload_id: int) -> str:
    """Dry-run an upload in ``checking``: ``checked`` with the report, or ``refused`` with the problems.

    Returns what became of the upload, or why this delivery had nothing to do.
    """
    claimed = with_db_retry(lambda: BundleUpload.objects.filter(
        pk=upload_id, state=State.CHECKING, started_at__isnull=True).update(
        started_at=timezone.now(), updated_at=timezone.now()), what=f"claiming the check of upload {upload_id}")
    if not claimed:
        return _already_taken(upload_id, State.CHECKING)
    return _run_step(upload_id, dry_run=True)


@shared_task(name=IMPORT_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def import_upload(self: Task, upload_id: int) -> str:
    """Import a ``checked`` upload for real: ``imported`` with the report, or ``refused``/``failed``.

    Only a ``checked`` upload is imported, and claiming it (``checked`` -> ``importing``) is one UPDATE, so two
    confirmations or two deliveries import it once. Returns what became of it, or why this delivery did nothing.
    """
    claimed = with_db_retry(lambda: BundleUpload.objects.filter(pk=upload_id, state=State.CHECKED).update(
        state=State.IMPORTING, started_at=timezone.now(), updated_at=timezone.now(), log=[], message=""),
        what=f"claiming the import of upload {upload_id}")
    if not claimed:
        return _already_taken(upload_id, State.IMPORTING)
    return _run_step(upload_id, dry_run=False)


def _run_step(upload_id: int, *, dry_run: bool) -> str:
    """The claimed check (``dry_run``) or import of an upload, from the stored zip to the final state."""
    running = State.CHECKING if dry_run else State.IMPORTING
    step = "check" if dry_run else "import"
    upload = BundleUpload.objects.select_related("uploaded_by", "confirmed_by").get(pk=upload_id)
    person = upload.confirmed_by or upload.uploaded_by
    lines: list[str] = []
    local_name = ""  # the local copy's file name, which problems about the zip itself would name
    # Run inside the caller's transaction (eager mode in a test), the row is invisible to the heartbeat's own
    # connection and no worker can be lost: no heartbeat then.
    with _Heartbeat(upload_id, running, lines, enabled=not connection.in_atomic_block):
        try:
            with local_archive(upload) as archive:
                local_name = archive.name
                with opened_bundle(archive) as root:
                    report = Importer(root, log=lines.append, retire_missing=False,
                                      imported_by=person.get_username() if person else "").run(dry_run=dry_run)
        except BundleInvalid as exc:
            # Name the zip as staff uploaded it, not as stored (bundles/<token>.zip).
            problems = [str(problem).replace(local_name, upload.name) if local_name and upload.name else str(problem)
                        for problem in exc.problems]
            logger.info("bundle upload %s refused by the %s: %d problem(s)", upload.token, step, len(problems))
            outcome = _finish(upload_id, running, state=State.REFUSED, problems=problems, log=lines[-KEPT_LINES:])
        except ArchiveUnavailable as exc:
            logger.error("bundle upload %s: %s", upload.token, exc)
            outcome = _finish(upload_id, running, state=State.FAILED, log=lines[-KEPT_LINES:],
                              message=f"The {step} could not start: {exc}. Upload the bundle again.")
        except Exception as exc:  # the platform's own fault: a sentence on the page, the traceback in the log
            logger.exception("bundle upload %s: the %s failed inside the platform", upload.token, step)
            outcome = _finish(upload_id, running, state=State.FAILED, log=lines[-KEPT_LINES:],
                              message=failure_sentence(exc, step))
        else:
            slugs = [track.slug for track in report.tracks]
            if not dry_run:
                logger.info("bundle %s imported from upload %s by %s: tracks %s", report.benchmark, upload.token,
                            person.get_username() if person else "?", slugs)
            outcome = _finish(upload_id, running, state=State.CHECKED if dry_run else State.IMPORTED,
                              report=report.lines(), log=lines[-KEPT_LINES:], benchmark=report.benchmark[:100],
                              tracks=slugs, problems=[], message="")
    if outcome in BundleUpload.FINAL:
        discard_archive(upload_id)
    return outcome


def failure_sentence(exc: BaseException, step: str) -> str:
    """What the page says about an unexpected error: one sentence, the likely cause first where there is one."""
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"The {step} failed: this worker may not write {exc.filename or 'a file it needs'} ({exc.strerror}). "
                f"The bundle queue ({settings.ARENA_BUNDLE_QUEUE}) needs a worker with ARENA_DATA_DIR writable, "
                "and the media: the shipped bundle worker mounts both read-write, an evaluation worker does not. "
                "Or import with manage.py import_benchmark where the data is writable. Nothing was registered.")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"The {step} failed: no space left on the worker ({exc.filename or 'disk'}). Nothing was registered."
    tail = " Nothing was registered." if step == "check" else ""
    return (f"The {step} failed inside the platform ({type(exc).__name__}: {short(exc)}); the worker's log has "
            f"the details.{tail}")


def _finish(upload_id: int, running: str, **fields: Any) -> str:
    """Write a step's outcome; the state the upload is in afterwards.

    Written over ``running`` and over ``failed`` too: a step that a watching delivery took for dead (its
    heartbeat stood still for a minute, say during a database outage) but that did finish says what it did.
    """
    def write() -> str:
        BundleUpload.objects.filter(pk=upload_id, state__in=(running, State.FAILED)).update(
            updated_at=timezone.now(), **fields)
        return BundleUpload.objects.filter(pk=upload_id).values_list("state", flat=True).first() or "missing"

    return with_db_retry(write, what=f"recording the outcome of upload {upload_id}")


def _already_taken(upload_id: int, running: str) -> str:
    """A delivery whose step was not free to claim: a duplicate, a step already done, or one interrupted.

    When the upload sits in ``running`` with its step started, the step is either alive on another worker or
    was cut off with its worker: watch its heartbeat for up to :data:`STALE_SECONDS` to tell the two apart.
    """
    row = BundleUpload.objects.filter(pk=upload_id).values("state", "started_at", "updated_at").first()
    if row is None:
        return "missing"
    if row["state"] != running or row["started_at"] is None:
        return f"nothing to do: the upload is {row['state']}"
    seen = row["updated_at"]
    deadline = time.monotonic() + STALE_SECONDS
    while time.monotonic() < deadline:
        time.sleep(min(1.0, STALE_SECONDS))
        row = BundleUpload.objects.filter(pk=upload_id).values("state", "updated_at").first()
        if row is None:
            return "missing"
        if row["state"] != running or row["updated_at"] != seen:
            return f"duplicate: the {running} step is alive elsewhere or just ended"
    step = "check" if running == State.CHECKING else "import"
    note = ("The import was interrupted: its worker stopped before it finished. The importer registers a bundle in "
            "one transaction, so it is either wholly imported or not at all: look for it under Bundle imports, "
            "and upload it again if it is not there." if step == "import" else
            "The check was interrupted: its worker stopped before it finished. Nothing was registered; upload "
            "the bundle again.")
    marked = BundleUpload.objects.filter(pk=upload_id, state=running, updated_at=seen).update(
        state=State.FAILED, message=note, updated_at=timezone.now())
    if not marked:
        return f"duplicate: the {running} step is alive elsewhere or just ended"
    logger.warning("bundle upload %s: the %s was interrupted (no heartbeat for %.0f s); marked failed",
                   upload_id, step, STALE_SECONDS)
    discard_archive(upload_id)
    return "interrupted"


class _Heartbeat:
    """While a step runs, stamp ``updated_at`` and store the importer's latest lines, from a thread of its own.

    A thread, because the importer can be silent for minutes (one large set streaming): a heartbeat that
    stands still then means the worker is gone, not busy. Database errors skip a beat and reconnect.
    """

    def __init__(self, upload_id: int, running: str, lines: list[str], enabled: bool = True) -> None:
        self.upload_id = upload_id
        self.running = running
        self.lines = lines
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bundle-heartbeat-{upload_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    BundleUpload.objects.filter(pk=self.upload_id, state=self.running).update(
                        updated_at=timezone.now(), log=self.lines[-PROGRESS_LINES:])
                except DatabaseError as exc:
                    logger.warning("heartbeat of bundle upload %s skipped: %s", self.upload_id, exc)
                    connection.close()
        finally:
            connection.close()  # this thread's own connection


# --- The stored zip -----------------------------------------------------------------------------

@contextmanager
def local_archive(upload: BundleUpload) -> Iterator[Path]:
    """A local path to the upload's zip for the length of one step, checked against the sha256 taken at upload.

    On the filesystem storage that is the stored file itself; from an object store (S3, MinIO) the zip is
    streamed into a private folder under ``ARENA_SCRATCH_DIR`` and removed afterwards, as
    :func:`submissions.artifacts.local_artifact` does for models. Either way the bytes are hashed: what
    is checked and imported is exactly what staff uploaded.
    """
    storage, name = upload.archive.storage, upload.archive.name
    if not name:
        raise ArchiveUnavailable("the upload holds no zip any more")
    try:
        stored = storage.path(name)
    except NotImplementedError:  # object stores have no local path
        stored = None
    if stored is not None:
        if not os.path.isfile(stored):
            raise ArchiveUnavailable(f"the stored zip {name!r} is missing")
        _copy(lambda: open(stored, "rb"), None, upload, name)
        yield Path(stored)
        return
    scratch = Path(settings.ARENA_SCRATCH_DIR)
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"bundle-{upload.token}-", dir=scratch))
    try:
        target = folder / "bundle.zip"
        with target.open("wb") as sink:
            _copy(lambda: storage.open(name, "rb"), sink.write, upload, name)
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _copy(opener: Callable[[], Any], write: Callable[[bytes], object] | None, upload: BundleUpload,
          name: str) -> None:
    """Read the stored zip chunk by chunk (writing each chunk when ``write`` is given); refuse a sha256 mismatch."""
    digest = hashlib.sha256()
    size = 0
    try:
        with opener() as source:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if write is not None:
                    write(chunk)
    except FileNotFoundError as exc:
        raise ArchiveUnavailable(f"the stored zip {name!r} is missing from the media storage") from exc
    except Exception as exc:  # network, permissions, the store's own errors (botocore's ClientError, ...)
        raise ArchiveUnavailable(f"the stored zip {name!r} could not be read ({type(exc).__name__}: "
                                 f"{short(exc)})") from exc
    if digest.hexdigest() != upload.sha256:
        raise ArchiveUnavailable(f"the stored zip {name!r} ({size} bytes) does not match the sha256 taken at upload")
