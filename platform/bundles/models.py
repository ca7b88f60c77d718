"""What each bundle import registered: the track's content digest, suite version and manifest.

One row per (track, import). The newest row of a track is what the importer compares a new
bundle with: the same digest leaves the track as it is; a different one registers the new sets
under a new suite version whenever the old one has published results, so no published score is
ever silently re-scored. The stored manifest section is what ``export_benchmark`` publishes (less
its hidden data) and what ``import_benchmark --deferred`` completes.

:class:`BundleUpload` is a zip uploaded on the admin's import page on its way through the workers
(stored, checked, confirmed, imported): see :mod:`bundles.tasks`.
"""

from __future__ import annotations

import logging
import secrets

from django.conf import settings
from django.db import models

logger = logging.getLogger(__name__)


class BundleImport(models.Model):
    track = models.ForeignKey("benchmarks.Track", on_delete=models.CASCADE, related_name="bundle_imports")
    digest = models.CharField(max_length=64, help_text="sha256 of what decides the track's scores: its settings "
                                                       "as imported, each set's sha256 (or deferred recipe), each "
                                                       "generator's sha256.")
    suite_version = models.CharField(max_length=40)
    bundle_sha256 = models.CharField(max_length=64, help_text="sha256 of the manifest file as uploaded.")
    manifest = models.JSONField(help_text="The benchmark's and this track's part of the manifest.")
    public_files = models.JSONField(default=dict, blank=True,
                                    help_text="Public parts of splits: name -> {relative_path, sha256, "
                                              "num_examples} under ARENA_DATA_DIR.")
    pending = models.JSONField(default=list, blank=True,
                               help_text="Deferred generated sets not built yet (import_benchmark --deferred).")
    imported_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        get_latest_by = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.track.slug} {self.suite_version} ({self.digest[:8]})"




def public_part(track_slug: str, name: str) -> tuple[str, str] | None:
    """(relative path under ARENA_DATA_DIR, sha256) of a split's public part as its track's newest import wrote it.

    Baseline training and the surrogate detector read the public half from here: a bundle's public
    part is the only data a platform-trained model may see.
    """
    latest = BundleImport.objects.filter(track__slug=track_slug).first()
    entry = (latest.public_files if latest else {}).get(name)
    return None if entry is None else (entry["relative_path"], entry["sha256"])


def new_upload_token() -> str:
    """An upload's name in URLs and storage: random, so that nobody can guess another upload's page or file."""
    return secrets.token_hex(16)


def archive_path(instance: BundleUpload, filename: str) -> str:
    """Stored names never derive from the uploaded name (no traversal, no collisions): ``bundles/<token>.zip``."""
    return f"bundles/{instance.token}.zip"


class BundleUpload(models.Model):
    """A bundle (zip) uploaded on the admin's import page, and what the workers made of it.

    The web server only stores the zip in the media storage and creates this row; a worker checks it
    (``bundles.check``, a dry run) and, once staff confirm, imports it (``bundles.import``), because only
    the workers may write ``ARENA_DATA_DIR`` and an import can take far longer than a request should.
    The page shows the row's state and reloads itself while a worker is busy with it.
    """

    class State(models.TextChoices):
        CHECKING = "checking", "checking"
        CHECKED = "checked", "checked: waiting for confirmation"
        REFUSED = "refused", "refused"
        IMPORTING = "importing", "importing"
        IMPORTED = "imported", "imported"
        FAILED = "failed", "failed"
        DISCARDED = "discarded", "discarded"

    #: A worker is busy with the upload: the page reloads itself.
    RUNNING = frozenset({State.CHECKING, State.IMPORTING})
    #: Nothing more happens to the upload: its archive is deleted.
    FINAL = frozenset({State.REFUSED, State.IMPORTED, State.FAILED, State.DISCARDED})

    token = models.CharField(max_length=32, unique=True, default=new_upload_token, editable=False)
    name = models.CharField(max_length=255, blank=True, help_text="The file's name as uploaded (shown, never used "
                                                                  "as a path).")
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                                    related_name="bundle_uploads")
    confirmed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    confirmed_at = models.DateTimeField(null=True, blank=True)
    archive = models.FileField(upload_to=archive_path, max_length=300, blank=True,
                               help_text="The zip in the media storage; emptied once the upload is final.")
    size = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, help_text="sha256 of the zip, computed while it arrived; the worker "
                                                       "checks its copy against it.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.CHECKING, db_index=True)
    benchmark = models.CharField(max_length=100, blank=True)
    tracks = models.JSONField(default=list, blank=True, help_text="Slugs of the bundle's tracks.")
    report = models.JSONField(default=list, blank=True, help_text="The dry run's report, then the import's.")
    log = models.JSONField(default=list, blank=True, help_text="The importer's log (the last lines while it runs).")
    problems = models.JSONField(default=list, blank=True, help_text="Why the bundle was refused: 'key: message'.")
    message = models.TextField(blank=True, help_text="Why the check or import failed (a sentence, no traceback).")
    started_at = models.DateTimeField(null=True, blank=True, help_text="When a worker took the current step.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, help_text="Also the running step's heartbeat.")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name or self.token} ({self.state})"

    @property
    def waiting_for_worker(self) -> bool:
        """Queued: checking but not started yet, or confirmed but not taken by a worker yet."""
        return (self.state == self.State.CHECKING and self.started_at is None) or (
            self.state == self.State.CHECKED and self.confirmed_at is not None)

    @property
    def refreshes(self) -> bool:
        """Whether the status page reloads itself: something will change without staff doing anything."""
        return self.state in self.RUNNING or self.waiting_for_worker


def discard_archive(upload_id: int) -> None:
    """Delete a final upload's zip from the media storage and forget its name.

    Called by the workers once a step ends and by the web server (a discarded upload, the sweep of
    :func:`bundles.admin.sweep_uploads`). Never raises: where this process may not delete the file (a worker
    with the media read-only, as the evaluation workers of Compose and Kubernetes mount it, took the task),
    the name stays and the web server's next sweep removes it.
    """
    upload = BundleUpload.objects.filter(pk=upload_id).first()
    if upload is None or not upload.archive.name:
        return
    try:
        upload.archive.storage.delete(upload.archive.name)
    except Exception as exc:  # read-only media, an unreachable object store: left for the sweep
        logger.warning("bundle upload %s: its zip %s was not deleted (%s: %s); the web server's sweep will",
                       upload.token, upload.archive.name, type(exc).__name__, exc)
        return
    BundleUpload.objects.filter(pk=upload_id).update(archive="")
