"""Refusing uploads that cannot be evaluated before anything is stored or charged.

Malformed uploads (below, :func:`check_artifact` and friends) are refused by the API's serializer
and the web form with a 400 or a form error naming the field, before the quota is checked: a
file in a format the evaluator refuses, a declared format the content contradicts, safetensors
without a zoo architecture or with one the zoo does not have, and a field sent twice (which one
would count is the parser's choice, not the researcher's). Charging for these would make a typo
cost a submission, and storing them would only queue a failure.

Oversized uploads get HTTP 413 before they are written anywhere.

Why here and not in the serializer: by the time a serializer or form sees the file, Django has
already streamed the whole request body into a temporary file, so a multi-gigabyte upload would
fill the disk before being refused. Two checks run earlier instead:

* the middleware answers 413 from the request's ``Content-Length`` alone, before the body is read
  (the WSGI body stream never yields more than ``Content-Length`` bytes, so the header cannot
  understate the body), allowing room for the other form fields and the multipart framing;
* for the API, an upload handler placed first counts each file's bytes as they arrive and stops
  the upload (removing the partial temporary file) as soon as one file passes the limit.

The web form keeps its in-page message for files up to about twice the limit, since a person reads it
(the file is then streamed to a temporary file and refused by the form); bodies beyond that get
the 413 from their header too, so no form post can fill the disk either. The admin's bundle import
page (staff only, :mod:`bundles.admin`) is the one exception: its header limit is
``ARENA_BUNDLE_MAX_UPLOAD_BYTES`` plus the framing, and it counts the file's bytes itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import NoReverseMatch, reverse
from rest_framework import status
from rest_framework.exceptions import APIException

#: Bytes of multipart framing (boundaries, part headers) allowed on top of the fields.
_FRAMING_BYTES = 64 * 1024
#: How far past the limit a web-form upload may go and still get the form's readable page.
_FORM_GRACE_BYTES = 16 * 1024**2


def _limit_message() -> str:
    return f"The file is larger than the limit of {settings.ARENA_MAX_UPLOAD_BYTES // 1024**2} MiB."


class UploadTooLarge(APIException):
    """An uploaded file passed ARENA_MAX_UPLOAD_BYTES while it was being received."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "upload_too_large"


def largest_acceptable_body(api: bool) -> int:
    """The largest request body let through to the view.

    For the API: one file within the limit plus the other fields and the framing. For the web
    form: room for a file up to twice the limit plus 16 MiB, which the form then refuses with a
    readable page.
    """
    fields = settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 2 * 1024**2
    limit = settings.ARENA_MAX_UPLOAD_BYTES
    files = limit if api else 2 * limit + _FORM_GRACE_BYTES
    return files + fields + _FRAMING_BYTES


#: The admin page where staff upload benchmark bundles (bundles/admin.py), limited by ARENA_BUNDLE_MAX_UPLOAD_BYTES.
BUNDLE_IMPORT_URL_NAME = "admin:bundles_bundleimport_import"


def bundle_import_body_limit(path: str) -> int:
    """The largest body the admin's bundle import page accepts when ``path`` is that page, else 0.

    Bundles are far larger than models, and the page streams them to disk (and counts their bytes)
    itself; only the staff who may import reach the point where it reads a body.
    """
    try:
        if path != reverse(BUNDLE_IMPORT_URL_NAME):
            return 0
    except NoReverseMatch:
        return 0
    fields = settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 2 * 1024**2
    return settings.ARENA_BUNDLE_MAX_UPLOAD_BYTES + fields + _FRAMING_BYTES


class FileSizeLimitHandler(FileUploadHandler):
    """Counts each uploaded file's bytes and stops the upload when one passes the limit.

    It must come before the handler that writes to disk, so the chunk past the limit is never
    written; the files already opened by later handlers are closed (a closed temporary upload
    file is deleted).
    """

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > settings.ARENA_MAX_UPLOAD_BYTES:
            for handler in self.request.upload_handlers if self.request is not None else ():
                partial = getattr(handler, "file", None)
                if partial is not None and handler is not self:
                    partial.close()
            raise UploadTooLarge(_limit_message())
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler builds the uploaded file


class UploadSizeLimitMiddleware:
    """Answers 413 for bodies too large to hold an acceptable upload, before reading them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        api = request.path.startswith("/api/")
        if length > largest_acceptable_body(api):
            bundle_limit = 0 if api else bundle_import_body_limit(request.path)
            if length <= bundle_limit:
                return self.get_response(request)
            if bundle_limit:
                return HttpResponse(f"The bundle is larger than the limit of "
                                    f"{settings.ARENA_BUNDLE_MAX_UPLOAD_BYTES / 1024**3:g} GiB.",
                                    status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                                    content_type="text/plain; charset=utf-8")
            if api:
                return JsonResponse({"detail": _limit_message(), "code": UploadTooLarge.default_code},
                                    status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
            return HttpResponse(_limit_message(), status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                                content_type="text/plain; charset=utf-8")
        if api and request.method in {"POST", "PUT", "PATCH"}:
            request.upload_handlers.insert(0, FileSizeLimitHandler(request))
        return self.get_response(request)


# --- Malformed uploads ------------------------------------------------------------------------------

#: How each format is named in a refusal.
FORMAT_NAMES = {"pt2": "a torch.export program (.pt2)", "safetensors": "safetensors weights"}


def repeated_field_errors(*parts: Any) -> dict[str, str]:
    """field -> its refusal, for each name sent more than once across a request's fields and files.

    ``parts`` are QueryDicts / MultiValueDicts (anything else is ignored). Django keeps every value
    of a repeated multipart field and a form or serializer silently reads the last one: two
    ``artifact`` parts would store one file while the client checked the other.
    """
    counts: Counter[str] = Counter()
    for part in parts:
        if hasattr(part, "lists"):
            for name, values in part.lists():
                counts[name] += len(values)
    return {name: f"“{name}” was sent {count} times; send each field once."
            for name, count in sorted(counts.items()) if count > 1}


def check_zoo_architecture(name: str) -> str:
    """``name`` when the evaluator's model zoo has it (or it is empty); else a ValidationError listing the names.

    The zoo is imported on first use only: it brings torch, which pages and .pt2 uploads never need.
    """
    if not name:
        return name
    # Start-up cost: evaluator.models imports torch (about a second), which page views never need.
    from evaluator.errors import EvaluationError
    from evaluator.models.zoo import get_architecture

    try:
        get_architecture(name)
    except EvaluationError as exc:
        raise ValidationError(exc.message, code=exc.code) from None
    return name


def check_artifact(upload: File, declared_format: str, zoo_architecture: str) -> str:
    """The upload's format as its content says (``pt2`` or ``safetensors``); ValidationError when unusable.

    ``evaluator.models.formats.detect_format`` reads only headers and a zip directory, never unpickles
    and never inflates, and ``evaluator.models.screening.screen_artifact`` reads a .pt2's JSON as data
    (it never calls torch.export.load), so both are safe on the web server; the model process runs
    them again before it loads anything.
    Its one sizeable cost is a safetensors JSON header, which it parses whole (up to the 100 MB the
    safetensors reader itself allows; real headers are kilobytes).
    """
    # Start-up cost: evaluator.models imports torch (about a second), which page views never need.
    from evaluator.errors import EvaluationError
    from evaluator.models.formats import detect_format
    from evaluator.models.screening import screen_artifact

    try:
        with path_on_disk(upload) as path:
            detected = detect_format(path)
            # The loader's whole screen (layout, operator allow-list, shape grammar, size limits): a
            # refused or oversized graph is refused now, in milliseconds, before any quota is charged.
            screen_artifact(path, detected)
    except EvaluationError as exc:
        raise ValidationError({"artifact": ValidationError(exc.message, code=exc.code)}) from None
    if declared_format and declared_format != detected:
        raise ValidationError({"artifact_format": ValidationError(
            f"The file is {FORMAT_NAMES[detected]}, not {FORMAT_NAMES.get(declared_format, declared_format)} "
            "as declared; leave the format empty to have it detected.", code="format_mismatch")})
    if detected == "safetensors" and not zoo_architecture:
        raise ValidationError({"zoo_architecture": ValidationError(
            "Safetensors weights need the zoo architecture they belong to "
            "(`python -m evaluator architectures` lists them).", code="zoo_architecture_required")})
    return detected


@contextmanager
def path_on_disk(upload: File) -> Iterator[str]:
    """A path to the upload's bytes: the temporary file Django streamed it to, else a copy removed afterwards."""
    temporary = getattr(upload, "temporary_file_path", None)
    if temporary is not None:
        yield temporary()
        return
    handle, path = tempfile.mkstemp(prefix="arena-upload-", dir=settings.FILE_UPLOAD_TEMP_DIR)
    try:
        with os.fdopen(handle, "wb") as copy:
            upload.seek(0)
            shutil.copyfileobj(upload, copy)
        upload.seek(0)
        yield path
    finally:
        os.unlink(path)
