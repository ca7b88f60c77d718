"""Frames on the pipes between the scorer and the model process.

A frame is a fixed prefix (magic, header length, payload length), a small JSON header and a
payload of raw little-endian float32 bytes. The scorer reads every frame with a deadline and
checks it against what it asked for before a byte of it is used: the model process is
untrusted, so a frame that is too long, mis-shaped or late is the model's failure, never a
value the scorer takes on faith.
"""

from __future__ import annotations

import io
import json
import os
import select
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

MAGIC = b"ARM1"
_PREFIX = struct.Struct("<4sIQ")
#: A header is a few hundred bytes; anything much larger is not a header.
MAX_HEADER_BYTES = 1 << 20
#: Bytes moved per system call when a pipe is written or read.
_CHUNK = 1 << 20
#: Pipe capacity asked for (Linux F_SETPIPE_SZ): a 64 KiB default pipe moves a 3 MB batch in 48
#: round trips between the two processes; 1 MiB (the usual unprivileged maximum) in 3.
PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031


def widen_pipe(fd: int) -> None:
    """Ask the kernel for a larger pipe buffer; harmless where it refuses."""
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
    except (OSError, ImportError):
        pass


class WireError(Exception):
    """A frame that breaks the protocol (wrong magic, oversized, truncated, malformed header)."""


class Deadline(Exception):
    """The other side did not answer in time."""


class PeerGone(Exception):
    """The other side closed its end of the pipe (it exited or crashed)."""


def tensor_bytes(tensor: Tensor) -> memoryview:
    """A float32, contiguous, CPU view of ``tensor`` as bytes (copies only when it must)."""
    flat = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if sys.byteorder != "little":  # pragma: no cover - every platform we run on is little-endian
        flat = flat.view(torch.int32).byteswap().view(torch.float32)
    return memoryview(flat.numpy()).cast("B")


def tensor_from(payload: bytearray, shape: Sequence[int]) -> Tensor:
    """The float32 tensor of ``shape`` held by ``payload`` (which must be exactly that long)."""
    count = 1
    for dim in shape:
        count *= int(dim)
    if len(payload) != 4 * count:
        raise WireError(f"payload of {len(payload)} bytes does not hold a float32 tensor of shape {tuple(shape)}")
    if count == 0:
        return torch.zeros(tuple(int(d) for d in shape), dtype=torch.float32)
    return torch.frombuffer(payload, dtype=torch.float32).reshape(tuple(int(d) for d in shape))


def encode_header(header: dict[str, Any], payload_len: int) -> bytes:
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError("header too large")
    return _PREFIX.pack(MAGIC, len(raw), payload_len) + raw


# --------------------------------------------------------------------------- blocking side (model process)


def write_frame(
    stream: io.RawIOBase | io.BufferedIOBase, header: dict[str, Any], payload: memoryview | bytes = b""
) -> None:
    """Blocking write of one frame (the model process's side: it has nothing else to do)."""
    stream.write(encode_header(header, len(payload)))
    if len(payload):
        stream.write(payload)
    stream.flush()


def _read_into(stream: io.RawIOBase | io.BufferedIOBase, buffer: bytearray | memoryview) -> None:
    view = memoryview(buffer)
    position = 0
    while position < len(view):
        got = stream.readinto(view[position:])
        if not got:
            raise PeerGone("end of stream")
        position += got


def read_frame(stream: io.RawIOBase | io.BufferedIOBase, max_payload: int) -> tuple[dict[str, Any], bytearray]:
    """Blocking read of one frame; raises PeerGone at a clean end of stream."""
    prefix = bytearray(_PREFIX.size)
    _read_into(stream, prefix)
    header, payload_len = _parse_prefix(prefix, max_payload)
    raw = bytearray(header)
    _read_into(stream, raw)
    payload = bytearray(payload_len)
    _read_into(stream, payload)
    return _parse_header(raw), payload


def _parse_prefix(prefix: bytes | bytearray, max_payload: int) -> tuple[int, int]:
    magic, header_len, payload_len = _PREFIX.unpack(bytes(prefix))
    if magic != MAGIC:
        raise WireError("bad magic")
    if header_len > MAX_HEADER_BYTES:
        raise WireError(f"header of {header_len} bytes")
    if payload_len > max_payload:
        raise WireError(f"payload of {payload_len} bytes, more than the {max_payload} expected")
    return header_len, payload_len


def _parse_header(raw: bytearray) -> dict[str, Any]:
    try:
        header = json.loads(bytes(raw))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError("header is not JSON") from exc
    if not isinstance(header, dict):
        raise WireError("header is not a JSON object")
    return header


# --------------------------------------------------------------------------- deadline side (scorer)


class DeadlineChannel:
    """The scorer's end: non-blocking pipes, every read and write bounded by a deadline.

    A model process that stops reading (its pipe fills) or stops answering cannot hold the
    scorer: the call ends with :class:`Deadline` at the time the caller allowed.
    """

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.write_fd, self.read_fd = write_fd, read_fd
        widen_pipe(write_fd)
        widen_pipe(read_fd)
        os.set_blocking(write_fd, False)
        os.set_blocking(read_fd, False)
        self._reader = io.FileIO(read_fd, "rb", closefd=False)
        self._pollers: dict[int, Any] = {}

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        poller = self._pollers.get(fd)
        if poller is None:
            poller = self._pollers[fd] = select.poll()
            poller.register(fd, event | select.POLLHUP | select.POLLERR)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Deadline()
            if poller.poll(max(1, int(min(left, 1.0) * 1000))):
                return

    def send(self, header: dict[str, Any], payload: memoryview | bytes, deadline: float) -> None:
        for part in (memoryview(encode_header(header, len(payload))), memoryview(payload).cast("B")):
            position = 0
            while position < len(part):
                try:
                    position += os.write(self.write_fd, part[position : position + _CHUNK])
                except BlockingIOError:  # the pipe is full: wait until the model process reads
                    self._wait(self.write_fd, select.POLLOUT, deadline)
                except BrokenPipeError as exc:
                    raise PeerGone("the model process closed its input") from exc
                if time.monotonic() > deadline:
                    raise Deadline()

    def _fill(self, buffer: bytearray | memoryview, deadline: float) -> None:
        view = memoryview(buffer)
        position = 0
        while position < len(view):
            try:
                got = self._reader.readinto(view[position:])
            except BlockingIOError:
                got = None
            except OSError as exc:
                raise PeerGone(str(exc)) from exc
            if got is None:  # nothing yet: wait for the model process
                self._wait(self.read_fd, select.POLLIN, deadline)
                continue
            if got == 0:
                raise PeerGone("the model process closed its output")
            position += got

    def receive(self, max_payload: int, deadline: float) -> tuple[dict[str, Any], bytearray]:
        prefix = bytearray(_PREFIX.size)
        self._fill(prefix, deadline)
        header_len, payload_len = _parse_prefix(prefix, max_payload)
        raw = bytearray(header_len)
        self._fill(raw, deadline)
        header = _parse_header(raw)
        payload = bytearray(payload_len)
        self._fill(payload, deadline)
        return header, payload
