"""Write an evaluation set chunk by chunk, byte for byte what :func:`write_evaluation_set` writes.

:func:`evaluator.data.evalsets.write_evaluation_set` needs every image in memory (safetensors'
own ``save`` serialises a dict of whole tensors). A benchmark bundle may hold hundreds of
thousands of images, so the importer writes through :class:`EvaluationSetWriter` instead: the
labels (8 bytes an image) are known up front, the images arrive in chunks and go straight to
disk, and the sha256 is computed on the way. The layout is the one safetensors itself writes
(header JSON sorted by dtype alignment then name, padded with spaces to 8 bytes; the int64
tensors first, then the images), so a set written either way has the same sha256, and every
reader of evaluation sets reads both (a test compares the bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np

from evaluator.data.evalsets import _GROUP_NAMES_KEY, _METADATA_KEY, _check_groups


class EvaluationSetWriter:
    """``with EvaluationSetWriter(path, labels, shape, metadata) as w: w.write(chunk)...``; then ``w.sha256``.

    The file appears at ``path`` only when every image was written (temporary file, fsync,
    rename); an exception inside the ``with`` block, or too few or too many images, leaves
    nothing behind.
    """

    def __init__(self, path: str | Path, labels: np.ndarray, shape: tuple[int, int, int],
                 metadata: dict[str, str] | None = None, groups: np.ndarray | None = None,
                 group_names: list[str] | None = None) -> None:
        self.path = Path(path)
        labels = np.ascontiguousarray(labels)
        if labels.dtype != np.int64 or labels.ndim != 1:
            raise ValueError(f"labels must be int64 (N,), got {labels.dtype} {labels.shape}")
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W), got {shape}")
        metadata = dict(metadata or {})
        if any(not isinstance(k, str) or not isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("metadata keys and values must be strings")
        if _GROUP_NAMES_KEY in metadata:
            raise ValueError(f"metadata key {_GROUP_NAMES_KEY!r} is reserved; pass group_names instead")
        if (groups is None) != (group_names is None):
            raise ValueError("groups and group_names must be given together")
        self.count = int(labels.shape[0])
        self.shape = tuple(int(s) for s in shape)
        packed: dict[str, object] = dict(metadata)
        int_tensors: list[tuple[str, np.ndarray]] = [("labels", labels)]
        if groups is not None:
            groups = np.ascontiguousarray(groups)
            packed[_GROUP_NAMES_KEY] = _check_groups(groups, list(group_names or []), self.count, str(self.path))
            int_tensors.insert(0, ("groups", groups))  # safetensors orders equal alignments by name
        header: dict[str, object] = {"__metadata__": {_METADATA_KEY: json.dumps(packed, sort_keys=True)}}
        offset = 0
        for name, array in int_tensors:
            header[name] = {"dtype": "I64", "shape": [self.count], "data_offsets": [offset, offset + array.nbytes]}
            offset += array.nbytes
        image_bytes = self.count * int(np.prod(self.shape))
        header["images"] = {"dtype": "U8", "shape": [self.count, *self.shape],
                            "data_offsets": [offset, offset + image_bytes]}
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)
        self._prefix = struct.pack("<Q", len(text)) + text + b"".join(a.astype("<i8").tobytes() for _, a in int_tensors)
        self._written = 0
        self._digest = hashlib.sha256()
        self._handle = None
        self._tmp: str | None = None
        self.sha256 = ""

    def __enter__(self) -> EvaluationSetWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part")
        self._handle = os.fdopen(fd, "wb")
        self._emit(self._prefix)
        return self

    def _emit(self, data: bytes | memoryview) -> None:
        self._digest.update(data)
        self._handle.write(data)

    def write(self, images: np.ndarray) -> None:
        """Append a chunk of uint8 (n, C, H, W) images."""
        if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"a chunk must be uint8 (n, {', '.join(map(str, self.shape))}), "
                             f"got {images.dtype} {images.shape}")
        if self._written + len(images) > self.count:
            raise ValueError(f"more than the {self.count} images announced")
        self._emit(memoryview(np.ascontiguousarray(images)).cast("B"))
        self._written += len(images)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            if kind is None and self._written != self.count:
                raise ValueError(f"{self._written} images written, {self.count} announced")
            self._handle.flush()
            if kind is None:
                os.fsync(self._handle.fileno())
            self._handle.close()
            if kind is None:
                os.replace(self._tmp, self.path)
                self.sha256 = self._digest.hexdigest()
        finally:
            if not self._handle.closed:
                self._handle.close()
            Path(self._tmp).unlink(missing_ok=True)
