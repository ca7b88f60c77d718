"""A streaming multipart/form-data body: the file is read in chunks while it is sent, never whole.

``requests`` would otherwise build the whole body in memory. This body has a known length (so it
goes out with Content-Length, which every WSGI server accepts, rather than chunked encoding) and
reports each chunk it yields, which is what drives the upload progress bar.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

CHUNK = 256 * 1024


def _quote(value: str) -> str:
    """Quote a header parameter the way browsers do (RFC 7578): escape quotes and line breaks."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartStream:
    """An iterable request body of text fields and one file, with ``len()`` known in advance."""

    def __init__(self, fields: Mapping[str, str], file_field: str, path: str | os.PathLike[str],
                 content_type: str = "application/octet-stream", on_chunk: Callable[[int], None] | None = None,
                 chunk_size: int = CHUNK) -> None:
        self.path = Path(path)
        self.boundary = f"arena-{secrets.token_hex(16)}"
        self.on_chunk = on_chunk
        self.chunk_size = chunk_size
        self.file_size = self.path.stat().st_size
        head = b"".join(self._field(name, str(value)) for name, value in fields.items())
        head += (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{_quote(file_field)}\"; "
                 f"filename=\"{_quote(self.path.name)}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
        self._head = head
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()

    def _field(self, name: str, value: str) -> bytes:
        return (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{_quote(name)}\"\r\n\r\n"
                f"{value}\r\n").encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self._head) + self.file_size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        sent = 0
        with self.path.open("rb") as handle:
            while chunk := handle.read(self.chunk_size):
                sent += len(chunk)
                if sent > self.file_size:
                    raise OSError(f"{self.path} grew while it was being uploaded")
                yield chunk
                if self.on_chunk is not None:
                    self.on_chunk(len(chunk))
        if sent != self.file_size:
            raise OSError(f"{self.path} changed size while it was being uploaded")
        yield self._tail
