"""Admin: the record of bundle imports, and a page where staff import a benchmark bundle (a zip).

Why the import page works the way it does:

* **Two steps.** An upload is first checked by a dry run (every set written to staging and thrown
  away, nothing registered), so the operator reads exactly what would change before anything does;
  only a second, explicit "Confirm import" registers it. Between the two, the zip waits under
  ``ARENA_DATA_DIR/.bundle-uploads/<token>.zip`` (mode 0600); the confirmation names it by a random
  token that must also belong to the operator's session, so a form field can never point the
  importer at another file (no path, no guessing, no replay from another session).
* **Never in memory.** A bundle may be gigabytes: the view replaces the request's upload handlers
  with a byte counter and :class:`~django.core.files.uploadhandler.TemporaryFileUploadHandler`
  before the body is read, whatever ``FILE_UPLOAD_HANDLERS`` says, and the file is copied chunk by
  chunk. Changing handlers is only possible before CSRF protection reads ``request.POST``, hence
  the ``csrf_exempt`` outer view with a ``csrf_protect`` inner one (Django's documented pattern);
  the permission check comes first, so nobody without it gets a body parsed at all.
* **Nobody edits the record.** :class:`~bundles.models.BundleImport` rows are what the importer
  compares the next bundle with; a hand-made or hand-edited row would make it skip or mis-version
  a changed track, so the admin shows them read-only.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile, TemporaryFileUploadHandler
from django.core.validators import FileExtensionValidator
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from bundles.importer import Importer, ImportReport
from bundles.loading import opened_bundle
from bundles.manifest import BundleInvalid, Problem
from bundles.models import BundleImport

logger = logging.getLogger(__name__)

#: Where uploaded bundles wait between the dry run and the confirmation, under ARENA_DATA_DIR.
UPLOADS = ".bundle-uploads"
#: An upload's token: what ``secrets.token_hex(16)`` makes, and nothing else is ever opened.
TOKEN = re.compile(r"[0-9a-f]{32}")
#: Uploads nobody confirmed or cancelled are removed after this long (checked on each new upload).
UPLOAD_TTL_SECONDS = 24 * 3600
#: Session key holding the tokens this session uploaded.
SESSION_KEY = "bundle_upload_tokens"
#: Set on the request when the byte counter stopped an oversized upload.
TOO_LARGE_FLAG = "_bundle_upload_too_large"


def _limit_text() -> str:
    return f"{settings.ARENA_BUNDLE_MAX_UPLOAD_BYTES / 1024**3:g} GiB"


class BundleSizeLimitHandler(FileUploadHandler):
    """Counts each file's bytes and drops the file as soon as it passes ARENA_BUNDLE_MAX_UPLOAD_BYTES.

    Placed before the handler that writes to disk, so the chunk past the limit is never written
    (Django closes, hence deletes, the partial temporary file on ``SkipFile``); the flag it sets on
    the request lets the page say why the file is missing.
    """

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > settings.ARENA_BUNDLE_MAX_UPLOAD_BYTES:
            if self.request is not None:
                setattr(self.request, TOO_LARGE_FLAG, True)
            raise SkipFile
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler builds the uploaded file


def bundle_upload_handlers(request: HttpRequest) -> list[FileUploadHandler]:
    """The handlers a bundle upload goes through: a byte counter, then a temporary file on disk."""
    return [BundleSizeLimitHandler(request), TemporaryFileUploadHandler(request)]


class BundleUploadForm(forms.Form):
    """Step 1: the zip to check."""

    bundle = forms.FileField(label="Bundle (.zip)", validators=[FileExtensionValidator(["zip"])],
                             help_text="A zip of a bundle folder: benchmark.yaml and the data it names "
                                       "(docs/bundles.md).")

    def clean_bundle(self) -> UploadedFile:
        upload: UploadedFile = self.cleaned_data["bundle"]
        if upload.size is not None and upload.size > settings.ARENA_BUNDLE_MAX_UPLOAD_BYTES:
            raise forms.ValidationError(f"The bundle is larger than the limit of {_limit_text()}.")
        return upload


class BundleConfirmForm(forms.Form):
    """Step 2: which checked upload to import (or discard)."""

    token = forms.CharField(widget=forms.HiddenInput, max_length=32)

    def clean_token(self) -> str:
        token: str = self.cleaned_data["token"]
        if not TOKEN.fullmatch(token):
            raise forms.ValidationError("Not an upload token.")
        return token


# --- Stored uploads ------------------------------------------------------------------------------

def uploads_dir() -> Path:
    """The private folder holding uploads between the steps (created 0700)."""
    folder = Path(settings.ARENA_DATA_DIR) / UPLOADS
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def _sweep_stale_uploads(folder: Path) -> None:
    """Remove uploads left unconfirmed past the TTL: an abandoned dry run must not hold disk forever."""
    cutoff = time.time() - UPLOAD_TTL_SECONDS
    for stale in folder.iterdir():
        try:
            if stale.is_file() and not stale.is_symlink() and stale.stat().st_mtime < cutoff:
                stale.unlink()
        except OSError:
            logger.warning("could not remove stale bundle upload %s", stale, exc_info=True)


def store_upload(upload: UploadedFile) -> tuple[str, Path]:
    """Copy the upload chunk by chunk to a new private file; its token and path.

    ``O_EXCL | O_NOFOLLOW`` with mode 0600: the file is new, ours, and readable by the server alone.
    """
    folder = uploads_dir()
    _sweep_stale_uploads(folder)
    token = secrets.token_hex(16)
    target = folder / f"{token}.zip"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return token, target


def stored_upload(token: str) -> Path | None:
    """The stored upload a (validated) token names, or None when there is no such plain file."""
    if not TOKEN.fullmatch(token):
        return None
    candidate = uploads_dir() / f"{token}.zip"
    if candidate.is_symlink() or not candidate.is_file():
        return None
    return candidate


def _session_tokens(request: HttpRequest) -> list[str]:
    return list(request.session.get(SESSION_KEY, []))


def _remember(request: HttpRequest, token: str) -> None:
    request.session[SESSION_KEY] = [*_session_tokens(request)[-19:], token]


def _forget(request: HttpRequest, token: str) -> None:
    request.session[SESSION_KEY] = [t for t in _session_tokens(request) if t != token]


# --- The admin -----------------------------------------------------------------------------------

@admin.register(BundleImport)
class BundleImportAdmin(admin.ModelAdmin):
    """Read-only record of imports, plus the import page (linked from the list's object tools)."""

    list_display = ["track", "suite_version", "digest_prefix", "imported_by", "created_at"]
    list_filter = ["track__benchmark"]
    list_select_related = ["track"]
    search_fields = ["track__slug", "suite_version", "digest", "imported_by"]
    change_list_template = "admin/bundles/bundleimport/change_list.html"

    @admin.display(description="digest", ordering="digest")
    def digest_prefix(self, obj: BundleImport) -> str:
        return obj.digest[:12]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows come from imports only (see the module docstring)

    def has_change_permission(self, request: HttpRequest, obj: BundleImport | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: BundleImport | None = None) -> bool:
        return False

    @staticmethod
    def can_import(request: HttpRequest) -> bool:
        """Importing registers tracks and sets: the add permission on imports, or a superuser."""
        user = request.user
        return bool(user.is_active and user.is_staff
                    and (user.is_superuser or user.has_perm("bundles.add_bundleimport")))

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_import"
        return [path("import/", self.admin_site.admin_view(self.import_view), name=name),
                *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_import": self.can_import(request)}
        return super().changelist_view(request, extra_context)

    # -- the import page -------------------------------------------------------------------------
    @method_decorator(csrf_exempt)
    def import_view(self, request: HttpRequest) -> HttpResponse:
        """Check permission, route the upload to disk, then hand over to the CSRF-protected view."""
        if not self.can_import(request):
            raise PermissionDenied
        request.upload_handlers = bundle_upload_handlers(request)
        return self._import_view(request)

    @method_decorator(csrf_protect)
    def _import_view(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return self._render(request, upload_form=BundleUploadForm())
        if "token" in request.POST:
            return self._confirm(request)
        return self._upload(request)

    def _render(self, request: HttpRequest, status: int = 200, **context: Any) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Import a benchmark bundle",
            "limit": _limit_text(),
            "changelist_url": reverse("admin:bundles_bundleimport_changelist", current_app=self.admin_site.name),
            **context,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/bundles/import.html", context, status=status)

    def _upload(self, request: HttpRequest) -> HttpResponse:
        if getattr(request, TOO_LARGE_FLAG, False):  # dropped while arriving: say why, not "required"
            form = BundleUploadForm()
            return self._render(request, upload_form=form,
                                upload_error=f"The bundle is larger than the limit of {_limit_text()}.")
        form = BundleUploadForm(request.POST, request.FILES)
        if not form.is_valid():
            return self._render(request, upload_form=form)
        upload: UploadedFile = form.cleaned_data["bundle"]
        token, stored = store_upload(upload)
        log: list[str] = []
        try:
            with opened_bundle(stored) as root:
                report = Importer(root, log=log.append, imported_by=request.user.get_username()).run(dry_run=True)
        except BundleInvalid as exc:
            stored.unlink(missing_ok=True)
            return self._refused(request, upload.name or "", exc.problems, log)
        except BaseException:
            stored.unlink(missing_ok=True)
            raise
        _remember(request, token)
        return self._render(request, step="checked", bundle_name=upload.name, report=report,
                            confirm_form=BundleConfirmForm(initial={"token": token}), log=log)

    def _refused(self, request: HttpRequest, bundle_name: str, problems: list[Problem],
                 log: list[str]) -> TemplateResponse:
        messages.error(request, f"The bundle was refused ({len(problems)} problem(s)); nothing was registered.")
        return self._render(request, step="refused", bundle_name=bundle_name, problems=problems, log=log,
                            upload_form=BundleUploadForm())

    def _confirm(self, request: HttpRequest) -> HttpResponse:
        form = BundleConfirmForm(request.POST)
        token = form.cleaned_data["token"] if form.is_valid() else ""
        stored = stored_upload(token) if token in _session_tokens(request) else None
        if stored is None:
            messages.error(request, "That upload is unknown or was already used: upload the bundle again.")
            return self._render(request, upload_form=BundleUploadForm(), status=400)
        # Claim the file by renaming it: a second click (or a second tab) finds nothing to import.
        claimed = stored.with_suffix(".importing")
        try:
            os.replace(stored, claimed)
        except FileNotFoundError:
            messages.error(request, "That upload is already being imported.")
            return self._render(request, upload_form=BundleUploadForm(), status=409)
        _forget(request, token)
        if request.POST.get("action") == "cancel":
            claimed.unlink(missing_ok=True)
            messages.info(request, "The upload was discarded; nothing was registered.")
            return self._render(request, upload_form=BundleUploadForm())
        log: list[str] = []
        try:
            with opened_bundle(claimed) as root:
                report: ImportReport = Importer(root, log=log.append, retire_missing=False,
                                                imported_by=request.user.get_username()).run(dry_run=False)
        except BundleInvalid as exc:
            return self._refused(request, "", exc.problems, log)
        finally:
            claimed.unlink(missing_ok=True)
        slugs = [track.slug for track in report.tracks]
        logger.info("bundle %s imported by %s: tracks %s", report.benchmark, request.user.get_username(), slugs)
        messages.success(request, f"Benchmark {report.benchmark} imported: {len(slugs)} track(s) registered.")
        return self._render(request, step="imported", report=report, log=log,
                            track_links=[(slug, reverse("leaderboard", args=[slug])) for slug in slugs])
