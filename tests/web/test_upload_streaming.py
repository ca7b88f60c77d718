"""Large uploads stream to a temporary file and are hashed in chunks, never held in memory."""

from __future__ import annotations

import hashlib
import io
import tracemalloc

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.files.uploadhandler import load_handler
from django.http.multipartparser import MultiPartParser

from submissions.services import sha256_of

SIZE = 48 * 1024 * 1024
BOUNDARY = "arenaboundary"


class LazyBody(io.RawIOBase):
    """A multipart body of SIZE bytes generated as it is read, so the test itself holds no copy."""

    def __init__(self) -> None:
        self.head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"artifact\"; filename=\"big.pt2\"\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n").encode()
        self.tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.length = len(self.head) + SIZE + len(self.tail)
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.length - self.position)
        if n <= 0:
            return 0
        start, end = self.position, self.position + n
        view = memoryview(buffer)[:n]
        view[:] = bytes(n)  # the zero payload
        head_end, tail_start = len(self.head), len(self.head) + SIZE
        if start < head_end:  # the part of the header inside this window
            piece = self.head[start:min(end, head_end)]
            view[: len(piece)] = piece
        if end > tail_start:  # the part of the trailer inside this window
            lo = max(start, tail_start)
            piece = self.tail[lo - tail_start : end - tail_start]
            view[lo - start : lo - start + len(piece)] = piece
        self.position = end
        return n


def test_multipart_upload_goes_to_disk_and_memory_stays_small():
    body = io.BufferedReader(LazyBody(), buffer_size=64 * 1024)
    meta = {"CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}",
            "CONTENT_LENGTH": str(LazyBody().length)}
    handlers = [load_handler(path) for path in settings.FILE_UPLOAD_HANDLERS]
    tracemalloc.start()
    try:
        _, files = MultiPartParser(meta, body, handlers).parse()
        upload = files["artifact"]
        digest = sha256_of(upload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(upload, TemporaryUploadedFile)
    assert upload.size == SIZE
    assert digest == hashlib.sha256(bytes(SIZE)).hexdigest()
    assert peak < 8 * 1024 * 1024, f"peak Python allocation {peak / 1e6:.1f} MB for a {SIZE / 1e6:.0f} MB upload"
