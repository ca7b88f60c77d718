"""The client's streaming multipart body: what Django parses is exactly what was sent, and the
length announced up front is the length streamed."""

from __future__ import annotations

import io

from django.core.files.uploadhandler import MemoryFileUploadHandler
from django.http.multipartparser import MultiPartParser

from arena_client.multipart import MultipartStream


def test_multipart_stream_round_trips_through_djangos_parser(tmp_path):
    payload = bytes(range(256)) * 4099  # ~1 MiB, several chunks, every byte value
    path = tmp_path / 'my "model".pt2'
    path.write_bytes(payload)
    seen: list[int] = []
    body = MultipartStream({"track": "digits", "name": "Ünïcode \"quoted\" name"}, "artifact", path,
                           on_chunk=seen.append, chunk_size=64 * 1024)
    raw = b"".join(body)
    assert len(raw) == len(body) and sum(seen) == len(payload) and len(seen) == 17
    meta = {"CONTENT_TYPE": body.content_type, "CONTENT_LENGTH": str(len(body))}
    data, files = MultiPartParser(meta, io.BytesIO(raw), [MemoryFileUploadHandler()]).parse()
    assert data["track"] == "digits" and data["name"] == "Ünïcode \"quoted\" name"
    upload = files["artifact"]
    assert upload.name == "my %22model%22.pt2" and upload.read() == payload
