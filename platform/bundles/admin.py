"""Admin: the record of bundle imports, and pages where staff upload a benchmark bundle (a zip) for a worker
to check and import.

Why the import page works the way it does:

* **The web server only stores the zip.** It never sees ``ARENA_DATA_DIR`` in the shipped deployments
  (the hidden sets stay off the web tier), and a large bundle takes far longer to check and import than a
  request should last. So the upload goes into the media storage (``bundles/<token>.zip``, local or S3) as
  a :class:`~bundles.models.BundleUpload`, and a worker of the bundle queue (``ARENA_BUNDLE_QUEUE``) checks
  it and, once confirmed, imports it (:mod:`bundles.tasks`, sent by name by :mod:`bundles.dispatch`, so the
  web server never even imports the importer). Nothing on these pages reads or writes ``ARENA_DATA_DIR``.
* **Two steps.** A worker first runs a dry run (every set written to staging and thrown away, nothing
  registered), so staff read exactly what would change before anything does; only an explicit "Confirm
  import" queues the real import. The upload's status page (``/admin/bundles/bundleupload/<token>/``)
  reloads itself while a worker is busy and then shows the report, the problems, or the failure.
* **Only the uploader.** An upload is named by a random token, and its page and its confirmation are the
  uploader's (or a superuser's) alone: another user's token answers 404, as an unknown one does.
* **Never in memory.** A bundle may be gigabytes: the view replaces the request's upload handlers with a
  byte counter (which also takes the sha256 as the bytes arrive) and
  :class:`~django.core.files.uploadhandler.TemporaryFileUploadHandler` before the body is read, whatever
  ``FILE_UPLOAD_HANDLERS`` says, and the storage moves or streams that temporary file. Changing handlers is
  only possible before CSRF protection reads ``request.POST``, hence the ``csrf_exempt`` outer view with
  a ``csrf_protect`` inner one (Django's documented pattern); the permission check comes first, so nobody
  without it gets a body parsed at all.
* **Nobody edits the records.** :class:`~bundles.models.BundleImport` rows are what the importer compares
  the next bundle with, and :class:`~bundles.models.BundleUpload` rows are the workers' to move on: the
  admin shows both read-only.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile, TemporaryFileUploadHandler
from django.core.validators import FileExtensionValidator
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, re_path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from bundles.dispatch import bundle_queue, send_check, send_import
from bundles.models import BundleImport, BundleUpload, discard_archive

logger = logging.getLogger(__name__)

State = BundleUpload.State

#: An upload's token: what :func:`bundles.models.new_upload_token` makes, and nothing else is ever looked up.
TOKEN = re.compile(r"[0-9a-f]{32}")
#: A checked upload nobody confirmed is discarded (its zip deleted) this long after its check.
UNCONFIRMED_TTL = timedelta(hours=24)
#: Set on the request when the byte counter stopped an oversized upload.
TOO_LARGE_FLAG = "_bundle_upload_too_large"
#: Set on the request: field name -> sha256 of the file received in that field.
DIGESTS_ATTR = "_bundle_upload_sha256"
#: Uploads listed on the import page.
RECENT_UPLOADS = 10


def _limit_text() -> str:
    return f"{settings.ARENA_BUNDLE_MAX_UPLOAD_BYTES / 1024**3:g} GiB"


def can_import(request: HttpRequest) -> bool:
    """Importing registers tracks and sets: active staff with the add permission on imports, or a superuser."""
    user = request.user
    return bool(user.is_active and user.is_staff
                and (user.is_superuser or user.has_perm("bundles.add_bundleimport")))


class BundleSizeLimitHandler(FileUploadHandler):
    """Counts and hashes each file's bytes, and drops the file as soon as it passes ARENA_BUNDLE_MAX_UPLOAD_BYTES.

    Placed before the handler that writes to disk, so the chunk past the limit is never written (Django
    closes, hence deletes, the partial temporary file on ``SkipFile``); the flag it sets on the request lets
    the page say why the file is missing. The sha256 is taken here, as the bytes arrive, because the storage
    may move the temporary file away and a second pass over gigabytes would only cost time; the worker checks
    its copy against it.
    """

    def new_file(self, field_name: str, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, *args, **kwargs)
        self._digest = hashlib.sha256()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > settings.ARENA_BUNDLE_MAX_UPLOAD_BYTES:
            if self.request is not None:
                setattr(self.request, TOO_LARGE_FLAG, True)
            raise SkipFile
        self._digest.update(raw_data)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        if self.request is not None:
            digests = getattr(self.request, DIGESTS_ATTR, {})
            digests[self.field_name] = self._digest.hexdigest()
            setattr(self.request, DIGESTS_ATTR, digests)
        return None  # the next handler builds the uploaded file


def bundle_upload_handlers(request: HttpRequest) -> list[FileUploadHandler]:
    """The handlers a bundle upload goes through: a byte counter, then a temporary file on disk."""
    return [BundleSizeLimitHandler(request), TemporaryFileUploadHandler(request)]


class BundleUploadForm(forms.Form):
    """The zip to check."""

    bundle = forms.FileField(label="Bundle (.zip)", validators=[FileExtensionValidator(["zip"])],
                             help_text="A zip of a bundle folder: benchmark.yaml and the data it names "
                                       "(docs/bundles.md).")

    def clean_bundle(self) -> UploadedFile:
        upload: UploadedFile = self.cleaned_data["bundle"]
        if upload.size is not None and upload.size > settings.ARENA_BUNDLE_MAX_UPLOAD_BYTES:
            raise forms.ValidationError(f"The bundle is larger than the limit of {_limit_text()}.")
        return upload


# --- Stored uploads ------------------------------------------------------------------------------

def store_archive(upload: BundleUpload, received: UploadedFile) -> None:
    """Put the received zip into the media storage as ``bundles/<token>.zip`` (the row is not saved here).

    ``received`` is the request's temporary file: the filesystem storage moves it, an object store streams
    it in parts, so the bundle never sits in memory.
    """
    upload.archive.save(f"{upload.token}.zip", received, save=False)


def sweep_uploads() -> None:
    """Discard checked uploads nobody confirmed within :data:`UNCONFIRMED_TTL`, and delete the zips that final
    uploads still hold (a worker that mounts the media read-only could not): a forgotten upload must not
    hold gigabytes forever. Run on each new upload; never raises."""
    try:
        cutoff = timezone.now() - UNCONFIRMED_TTL
        stale = BundleUpload.objects.filter(state=State.CHECKED, confirmed_at__isnull=True, updated_at__lt=cutoff)
        for pk in list(stale.values_list("pk", flat=True)[:100]):
            if stale.filter(pk=pk).update(state=State.DISCARDED, updated_at=timezone.now(),
                                          message="Not confirmed within 24 hours: discarded."):
                discard_archive(pk)
        leftovers = BundleUpload.objects.filter(state__in=BundleUpload.FINAL).exclude(archive="")
        for pk in list(leftovers.values_list("pk", flat=True)[:100]):
            discard_archive(pk)
    except Exception:  # a sweep must never cost staff their upload
        logger.exception("sweeping old bundle uploads failed")


def status_url(upload: BundleUpload) -> str:
    return reverse("admin:bundles_bundleupload_status", args=[upload.token])


# --- The admin -----------------------------------------------------------------------------------

@admin.register(BundleImport)
class BundleImportAdmin(admin.ModelAdmin):
    """Read-only record of imports, plus the upload page (linked from the list's object tools)."""

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

    can_import = staticmethod(can_import)

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_import"
        return [path("import/", self.admin_site.admin_view(self.import_view), name=name),
                *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_import": can_import(request)}
        return super().changelist_view(request, extra_context)

    # -- the upload page -------------------------------------------------------------------------
    @method_decorator(csrf_exempt)
    def import_view(self, request: HttpRequest) -> HttpResponse:
        """Check permission, route the upload to disk, then hand over to the CSRF-protected view."""
        if not can_import(request):
            raise PermissionDenied
        request.upload_handlers = bundle_upload_handlers(request)
        return self._import_view(request)

    @method_decorator(csrf_protect)
    def _import_view(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return self._render(request, upload_form=BundleUploadForm())
        return self._upload(request)

    def _render(self, request: HttpRequest, status: int = 200, **context: Any) -> TemplateResponse:
        recent = BundleUpload.objects.filter(uploaded_by=request.user)[:RECENT_UPLOADS]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Import a benchmark bundle",
            "limit": _limit_text(),
            "changelist_url": reverse("admin:bundles_bundleimport_changelist", current_app=self.admin_site.name),
            "recent_uploads": [(upload, status_url(upload)) for upload in recent],
            **context,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/bundles/import.html", context, status=status)

    def _upload(self, request: HttpRequest) -> HttpResponse:
        data, files = request.POST, request.FILES  # parse the body now: the handlers set their flags while it is read
        if getattr(request, TOO_LARGE_FLAG, False):  # dropped while arriving: say why, not "required"
            return self._render(request, upload_form=BundleUploadForm(),
                                upload_error=f"The bundle is larger than the limit of {_limit_text()}.")
        form = BundleUploadForm(data, files)
        if not form.is_valid():
            return self._render(request, upload_form=form)
        received: UploadedFile = form.cleaned_data["bundle"]
        digest = getattr(request, DIGESTS_ATTR, {}).get("bundle")
        if digest is None:  # not through our handlers (cannot happen from this view): refuse rather than guess
            return self._render(request, upload_form=BundleUploadForm(), status=400,
                                upload_error="The upload could not be read; upload it again.")
        sweep_uploads()
        upload = BundleUpload(uploaded_by=request.user, name=(received.name or "")[:255], size=received.size or 0,
                              sha256=digest)
        store_archive(upload, received)
        try:
            with transaction.atomic():
                upload.save()
                transaction.on_commit(lambda pk=upload.pk: send_check(pk))
        except BaseException:
            upload.archive.storage.delete(upload.archive.name)
            raise
        logger.info("bundle upload %s (%s, %d bytes) by %s stored; check queued on %s", upload.token, upload.name,
                    upload.size, request.user.get_username(), bundle_queue())
        return HttpResponseRedirect(status_url(upload), status=303)


@admin.register(BundleUpload)
class BundleUploadAdmin(admin.ModelAdmin):
    """Read-only list of uploads (each user sees their own; superusers all), and each upload's status page."""

    list_display = ["upload_name", "state", "uploaded_by", "size_text", "created_at", "updated_at"]
    list_display_links = None
    list_filter = ["state"]
    search_fields = ["name", "benchmark"]
    readonly_fields = ["token", "name", "uploaded_by", "confirmed_by", "confirmed_at", "archive", "size", "sha256",
                       "state", "benchmark", "tracks", "report", "log", "problems", "message", "started_at",
                       "created_at", "updated_at"]

    @admin.display(description="upload", ordering="name")
    def upload_name(self, obj: BundleUpload) -> str:
        return format_html('<a href="{}">{}</a>', status_url(obj), obj.name or obj.token)

    @admin.display(description="size", ordering="size")
    def size_text(self, obj: BundleUpload) -> str:
        return filesizeformat(obj.size)

    def get_queryset(self, request: HttpRequest) -> QuerySet[BundleUpload]:
        queryset = super().get_queryset(request).select_related("uploaded_by")
        return queryset if request.user.is_superuser else queryset.filter(uploaded_by=request.user)

    def has_view_permission(self, request: HttpRequest, obj: BundleUpload | None = None) -> bool:
        return can_import(request) and (obj is None or self._owns(request, obj))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # uploads come from the import page only

    def has_change_permission(self, request: HttpRequest, obj: BundleUpload | None = None) -> bool:
        return False  # states are the workers' and the status page's to change

    def has_delete_permission(self, request: HttpRequest, obj: BundleUpload | None = None) -> bool:
        return False

    @staticmethod
    def _owns(request: HttpRequest, upload: BundleUpload) -> bool:
        return bool(request.user.is_superuser or upload.uploaded_by_id == request.user.pk)

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_status"
        return [re_path(r"^(?P<token>[0-9a-f]{32})/$", self.admin_site.admin_view(self.status_view), name=name),
                *super().get_urls()]

    # -- the status page -------------------------------------------------------------------------
    def status_view(self, request: HttpRequest, token: str) -> HttpResponse:
        """An upload's state; POST ``action=confirm`` queues its import, ``action=discard`` drops it."""
        if not can_import(request):
            raise PermissionDenied
        upload = BundleUpload.objects.filter(token=token).first() if TOKEN.fullmatch(token) else None
        if upload is None or not self._owns(request, upload):
            raise Http404("No such upload.")  # another user's upload looks exactly like none
        if request.method == "POST":
            return self._act(request, upload)
        return self._render_status(request, upload)

    def _act(self, request: HttpRequest, upload: BundleUpload) -> HttpResponse:
        action = request.POST.get("action", "")
        # One UPDATE decides, so a double click or a second tab confirms (and queues) once.
        waiting = BundleUpload.objects.filter(pk=upload.pk, state=State.CHECKED, confirmed_at__isnull=True)
        if action == "confirm":
            with transaction.atomic():
                done = waiting.update(confirmed_at=timezone.now(), confirmed_by=request.user, message="",
                                      updated_at=timezone.now())
                if done:
                    transaction.on_commit(lambda: send_import(upload.pk))
            if done:
                logger.info("bundle upload %s confirmed by %s; import queued", upload.token,
                            request.user.get_username())
                return HttpResponseRedirect(status_url(upload), status=303)
        elif action == "discard":
            with transaction.atomic():
                done = waiting.update(state=State.DISCARDED, updated_at=timezone.now(),
                                      message="Discarded by staff; nothing was registered.")
                if done:
                    transaction.on_commit(lambda: discard_archive(upload.pk))
            if done:
                return HttpResponseRedirect(status_url(upload), status=303)
        else:
            return self._render_status(request, upload, status=400, error="Unknown action.")
        upload.refresh_from_db()
        return self._render_status(request, upload, status=409,
                                   error=f"This upload cannot be {'imported' if action == 'confirm' else 'discarded'} "
                                         f"now: it is {upload.get_state_display()}"
                                         f"{' and already confirmed' if upload.confirmed_at else ''}.")

    def _render_status(self, request: HttpRequest, upload: BundleUpload, status: int = 200,
                       error: str = "") -> TemplateResponse:
        if error:
            messages.error(request, error)
        track_links = [(slug, reverse("leaderboard", args=[slug])) for slug in upload.tracks]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Bundle upload {upload.name or upload.token}",
            "upload": upload,
            "queue": bundle_queue(),
            "track_links": track_links if upload.state == State.IMPORTED else [],
            "import_url": reverse("admin:bundles_bundleimport_import", current_app=self.admin_site.name),
            "imports_url": reverse("admin:bundles_bundleimport_changelist", current_app=self.admin_site.name),
            "changelist_url": reverse("admin:bundles_bundleupload_changelist", current_app=self.admin_site.name),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/bundles/upload_status.html", context, status=status)
