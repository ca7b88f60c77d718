"""Streaming readers for the image data sets that benchmark hosts upload in bundles.

:mod:`evaluator.data.loaders` returns whole arrays, which suits the benchmark's own fixed data sets
but not uploads: a host may send 100,000 images and the importer must stay in constant memory. So
every reader here checks what headers can tell at :func:`open_stream` time (paths, shapes, dtypes,
counts, image sizes) so that most mistakes are reported before any pixel is decoded, and then
yields uint8 NCHW chunks whose size the caller chooses. Labels are the one thing read whole
(8 bytes per image), because the caller needs them all to plan public/hidden splits.

Messages of :class:`StreamError` are for the host who made the bundle: they name files by their
path inside the bundle (array members as ``file:member``, images inside an image folder relative
to that folder) and never carry a manifest key, which the caller prefixes.

A bundle is untrusted input, so: no path may leave the bundle folder or pass through a link
(a link could point at any file of the server), no pickle is ever loaded, HDF5 files may not
reach other files (external links, external storage, virtual datasets), Pillow only gets the
formats an image folder may hold (some others run external programs), and no header is believed
where believing it would allocate memory the file cannot back.

Nothing here memory-maps a data file: plain files (``.npy``, raw IDX, safetensors) are read with
positioned reads of just the rows a chunk needs. Every page a map's pass touches stays resident,
counted in the process's RSS, until the map is closed, so a mapped pass over 300 MB of images
peaks 300 MB higher than one that reads its rows.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from safetensors import SafetensorError

from evaluator.data.loaders import _GRAY_MODES, _IDX_DTYPES, _RANGE_TOL, IMAGE_SUFFIXES, _float_to_uint8

__all__ = ["LAYOUTS", "SPEC_KEYS", "ImageStream", "StreamError", "open_stream"]


class StreamError(ValueError):
    """A data file that does not hold what the manifest says; the message is for people.

    It carries no manifest key path: the caller knows which key named the file and prefixes it.
    """


#: The layouts :func:`open_stream` reads (the same names as the bundle schema's ``layout``).
LAYOUTS = ("folders", "real_fake", "npz", "npy", "safetensors", "idx", "hdf5")

#: The ``spec`` keys each layout reads; other keys (``layout`` itself, say) are ignored, so a
#: caller that wants typos reported checks against this table.
SPEC_KEYS: dict[str, frozenset[str]] = {
    "folders": frozenset({"path"}),
    "real_fake": frozenset({"path"}),
    "npz": frozenset({"path", "images", "labels"}),
    "npy": frozenset({"images", "labels"}),
    "safetensors": frozenset({"path", "images", "labels"}),
    "idx": frozenset({"images", "labels"}),
    "hdf5": frozenset({"path", "images", "labels"}),
}

#: Pillow formats an image folder may hold (what :data:`IMAGE_SUFFIXES` name). Passing them to
#: ``Image.open`` keeps Pillow from sniffing other formats, EPS among them, which runs Ghostscript.
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")

#: Deflate cannot expand data more than about 1032-fold; a header that claims more than its
#: compressed bytes can hold is refused before anything is allocated for it.
_MAX_DEFLATE_RATIO = 1032

#: Bytes read at a time when skipping forward through a compressed stream.
_SKIP_PIECE = 1 << 20

#: Exceptions that mean "this file cannot be read" while rows are read (turned into StreamError).
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    RuntimeError,
    KeyError,
    zlib.error,
    zipfile.BadZipFile,
    SafetensorError,
)

#: ``read(start, stop, picks)``: images ``start:stop`` as uint8 NCHW, or only rows ``picks``
#: (sorted absolute indices inside ``[start, stop)``) when picks is not None.
_Read = Callable[[int, int, np.ndarray | None], np.ndarray]

#: ``rows(start, stop)``: rows ``start:stop`` of an array as stored (dtype and layout of the file).
_Rows = Callable[[int, int], np.ndarray]


# --- The stream objects -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageStream:
    """Images of one evaluation set, read chunk by chunk so that memory does not grow with ``count``.

    ``shape`` is the (C, H, W) of every image and already equals the track's. Each call of
    :meth:`chunks` or :meth:`take` opens the files afresh, so a stream can be iterated any
    number of times, and abandoning an iteration early closes what it opened.
    """

    count: int
    shape: tuple[int, int, int]

    def labels(self) -> np.ndarray:
        """All labels, int64 (count,), without decoding any image. Their range is not checked here."""
        raise NotImplementedError

    def _reader(self) -> AbstractContextManager[_Read]:
        """Open the files for one pass; subclasses say how their rows are read."""
        raise NotImplementedError

    def chunks(self, size: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(images uint8 (n, C, H, W) C-contiguous, labels int64 (n,))`` in file order, ``n <= size``.

        Every chunk is a fresh writable array (never a view of a file), so the caller may keep it.
        A file that turns out to be bad part-way (a float chunk out of [0, 1], a truncated
        compressed stream, an image that cannot be decoded) raises :class:`StreamError` then.
        """
        _check_chunk_size(size)
        return self._chunks(size)

    def _chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        labels = self.labels()
        with self._reader() as read:
            for start in range(0, self.count, size):
                stop = min(start + size, self.count)
                yield read(start, stop, None), labels[start:stop].copy()

    def take(self, indices: np.ndarray, size: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Like :meth:`chunks` for the images at ``indices`` (sorted int64), in index order.

        The files are read front to back in windows of at most ``size`` images, keeping the wanted
        ones, so a public/hidden split of a compressed file costs one sequential pass and memory
        stays at a few chunks whatever the subset.
        """
        _check_chunk_size(size)
        wanted = _check_indices(indices, self.count)
        return self._take(wanted, size)

    def _take(self, wanted: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if wanted.size == 0:
            return
        labels = self.labels()
        with self._reader() as read:
            pieces: list[np.ndarray] = []
            filled = 0
            chunk_start = 0
            pos = 0
            while pos < wanted.size:
                first = int(wanted[pos])
                # Wanted indices in the window [first, first + size), no more than the chunk still takes.
                end = min(int(np.searchsorted(wanted, first + size, side="left")), pos + size - filled)
                picks = wanted[pos:end]
                pieces.append(read(first, int(picks[-1]) + 1, picks))
                filled += end - pos
                pos = end
                if filled == size or pos == wanted.size:
                    images = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
                    yield images, labels[wanted[chunk_start:pos]]
                    pieces, filled, chunk_start = [], 0, pos


@dataclass(frozen=True)
class _FolderStream(ImageStream):
    """Image files (``folders`` and ``real_fake``), scanned at open and decoded per chunk."""

    folder: Path
    files: tuple[str, ...]  # relative to ``folder``, in stream order
    file_labels: np.ndarray = field(repr=False, compare=False)

    def labels(self) -> np.ndarray:
        return self.file_labels.copy()

    @contextmanager
    def _reader(self) -> Iterator[_Read]:
        def read(start: int, stop: int, picks: np.ndarray | None) -> np.ndarray:
            rows = range(start, stop) if picks is None else picks.tolist()
            out = np.empty((len(rows), *self.shape), dtype=np.uint8)
            for i, row in enumerate(rows):
                out[i] = _decode_image(self.folder, self.files[row], self.shape)
            return out

        yield read


@dataclass(frozen=True)
class _Array:
    """One stored array: its name for messages, header facts, and how to read rows of it."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    open_rows: Callable[[], AbstractContextManager[_Rows]] = field(repr=False)

    def read_all(self) -> np.ndarray:
        """The whole array (used for labels only)."""
        with ExitStack() as stack:
            return _read_rows(self.name, self.enter(stack), 0, self.shape[0], "labels")

    def enter(self, stack: ExitStack) -> _Rows:
        """Open the array for one pass inside ``stack``; a file gone bad since the scan is a StreamError."""
        try:
            return stack.enter_context(self.open_rows())
        except StreamError:
            raise
        except _READ_ERRORS as exc:
            raise StreamError(f"{self.name} cannot be opened: {exc}") from exc


@dataclass(frozen=True)
class _ArrayStream(ImageStream):
    """An image array and a label array in one of the array layouts."""

    images: _Array
    label_array: _Array
    plan: str  # "nchw", "nhwc" or "nhw": how the stored axes map to (N, C, H, W)

    def labels(self) -> np.ndarray:
        return np.array(self.label_array.read_all(), dtype=np.int64)  # a plain array, not a memmap

    @contextmanager
    def _reader(self) -> Iterator[_Read]:
        with ExitStack() as stack:
            rows = self.images.enter(stack)

            def read(start: int, stop: int, picks: np.ndarray | None) -> np.ndarray:
                raw = _read_rows(self.images.name, rows, start, stop, "images")
                if picks is not None:
                    raw = raw[picks - start]
                return self._convert(raw, start, stop - 1)

            yield read

    def _convert(self, raw: np.ndarray, first: int, last: int) -> np.ndarray:
        """Stored rows to uint8 NCHW, with loaders' rounding for floats (checked chunk by chunk)."""
        block = raw
        if self.plan == "nhw":
            block = block[:, None, :, :]
        elif self.plan == "nhwc":
            block = block.transpose(0, 3, 1, 2)
        if block.dtype == np.uint8:
            return np.array(block, dtype=np.uint8, order="C")  # a copy: never a view of a mapped file
        _check_float_range(raw, self.images.name, first, last)
        return np.ascontiguousarray(_float_to_uint8(block, self.images.name))


def _read_rows(name: str, rows: _Rows, start: int, stop: int, noun: str) -> np.ndarray:
    """Call a row reader, turning library exceptions into a StreamError that names the file."""
    try:
        return rows(start, stop)
    except StreamError:
        raise
    except _READ_ERRORS as exc:
        raise StreamError(f"{name} cannot be read ({noun} {start}-{stop - 1}): {exc}") from exc


def _check_float_range(raw: np.ndarray, name: str, first: int, last: int) -> None:
    """Refuse a float chunk with NaN/inf or values outside [0, 1], saying what was seen."""
    if not np.isfinite(raw).all():
        raise StreamError(
            f"{name} has NaN or infinite pixels in images {first}-{last}; float pixels must lie in [0, 1]"
        )
    low, high = float(raw.min()), float(raw.max())
    if low < -_RANGE_TOL or high > 1.0 + _RANGE_TOL:
        hint = " (pixels in 0-255 are stored as uint8)" if low >= 0 and high <= 255 else ""
        raise StreamError(
            f"{name} has float pixels in [{low:g}, {high:g}] in images {first}-{last}; "
            f"float pixels must lie in [0, 1]{hint}"
        )


def _check_chunk_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"chunk size must be a positive integer, not {size!r}")


def _check_indices(indices: np.ndarray, count: int) -> np.ndarray:
    """Indices as sorted int64 inside [0, count); a bad subset is the caller's bug (ValueError)."""
    array = np.asarray(indices)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"indices must be a 1-D integer array, not {array.dtype} of shape {array.shape}")
    array = array.astype(np.int64)
    if np.any(array[1:] < array[:-1]):
        raise ValueError("indices must be sorted")
    if array[0] < 0 or array[-1] >= count:
        raise ValueError(f"indices must lie in [0, {count}); got {array[0]}..{array[-1]}")
    return array


# --- Opening ------------------------------------------------------------------------------------------------------


def open_stream(
    layout: str,
    root: Path,
    spec: Mapping[str, Any],
    expected: tuple[int, int, int],
    class_names: list[str] | None = None,
) -> ImageStream:
    """Open one evaluation set's data in ``layout`` under the bundle folder ``root``.

    ``spec`` holds the layout's keys (:data:`SPEC_KEYS`), paths relative to ``root``;
    ``expected`` is the track's (C, H, W), which every image must have (grayscale folder images
    are widened to RGB on a 3-channel track; nothing else is converted). ``class_names`` maps
    class folder names to labels for ``folders`` (without it: sorted folder names); the other
    layouts ignore it. Everything that headers and image headers can tell is checked here; the
    pixels themselves are checked as :meth:`ImageStream.chunks` reads them.
    """
    shape = _check_expected(expected)
    root = Path(root)
    if layout == "folders":
        return _open_folders(root, spec, shape, class_names, real_fake=False)
    if layout == "real_fake":
        return _open_folders(root, spec, shape, None, real_fake=True)
    openers: dict[str, Callable[[Path, Mapping[str, Any]], tuple[_Array, _Array]]] = {
        "npz": _open_npz,
        "npy": _open_npy,
        "safetensors": _open_safetensors,
        "idx": _open_idx,
        "hdf5": _open_hdf5,
    }
    if layout not in openers:
        raise StreamError(f"unknown data layout {layout!r}; the layouts are {', '.join(LAYOUTS)}")
    images, labels = openers[layout](root, spec)
    return _array_stream(images, labels, shape)


def _check_expected(expected: tuple[int, int, int]) -> tuple[int, int, int]:
    values = tuple(expected)
    if len(values) != 3 or not all(isinstance(v, int | np.integer) and v > 0 for v in values):
        raise ValueError(f"expected must be a (C, H, W) of positive integers, not {expected!r}")
    c, h, w = (int(v) for v in values)
    return c, h, w


def _spec_text(spec: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = spec.get(key, default)
    if value is None:
        raise StreamError(f"the data needs '{key}'")
    if not isinstance(value, str) or not value:
        raise StreamError(f"'{key}' must be a non-empty string, not {value!r}")
    return value


_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def _resolve(root: Path, rel: str, want: str) -> Path:
    """``root / rel`` after refusing absolute paths, ``..``, links on the way, and a missing target.

    ``want`` is "file" (a regular file) or "folder". Every component is checked for being a link,
    not only the last, since a linked folder would let the rest of the path reach anywhere.
    """
    if "\0" in rel:
        raise StreamError(f"{rel!r} contains a NUL character")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or rel.startswith("\\") or _DRIVE.match(rel):
        raise StreamError(f"{rel} is an absolute path; paths in a bundle are relative to the bundle folder")
    if ".." in pure.parts or ".." in rel.split("\\"):
        raise StreamError(f"{rel} goes up out of its folder (..); paths must stay inside the bundle")
    current = root
    for depth, part in enumerate(pure.parts, start=1):
        current = current / part
        if current.is_symlink():
            raise StreamError(f"{'/'.join(pure.parts[:depth])} is a link; bundles may not contain links")
        if not current.exists():
            raise StreamError(f"{rel} is missing")
    if want == "folder":
        if not current.is_dir():
            raise StreamError(f"{rel} is not a folder")
    elif current.is_dir():
        raise StreamError(f"{rel} is a folder, not a file")
    elif not current.is_file():
        raise StreamError(f"{rel} is not a regular file")
    if not current.resolve().is_relative_to(root.resolve()):  # belt and braces after the checks above
        raise StreamError(f"{rel} lies outside the bundle")
    return current


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_image_array(array: _Array, expected: tuple[int, int, int]) -> str:
    """Refuse an image array whose dtype or shape the track cannot take; return its axis plan."""
    c, h, w = expected
    if array.dtype.hasobject:
        raise StreamError(f"{array.name} holds Python objects (a pickle); bundles may hold only numeric arrays")
    if array.dtype != np.uint8 and array.dtype.kind != "f":
        raise StreamError(
            f"{array.name} holds {array.dtype.name} pixels; images must be uint8 (0 to 255) or floats in [0, 1]"
        )
    tail = tuple(array.shape[1:])
    if len(array.shape) == 4 and tail == (c, h, w):
        return "nchw"
    if len(array.shape) == 4 and tail == (h, w, c):
        return "nhwc"
    if len(array.shape) == 3 and c == 1 and tail == (h, w):
        return "nhw"
    raise StreamError(f"{array.name} has shape {_fmt_shape(array.shape)}; the track says {c}x{h}x{w} (C x H x W)")


def _check_label_array(array: _Array) -> None:
    if array.dtype.hasobject:
        raise StreamError(f"{array.name} holds Python objects (a pickle); bundles may hold only numeric arrays")
    if len(array.shape) != 1:
        raise StreamError(f"{array.name} has shape {_fmt_shape(array.shape)}; labels must be a 1-D array of integers")
    if array.dtype.kind not in "iu":
        raise StreamError(f"{array.name} holds {array.dtype.name}; labels must be integers")


def _array_stream(images: _Array, labels: _Array, expected: tuple[int, int, int]) -> _ArrayStream:
    plan = _check_image_array(images, expected)
    _check_label_array(labels)
    count = int(images.shape[0])
    if count != labels.shape[0]:
        raise StreamError(f"{images.name} has {count} images but {labels.name} has {labels.shape[0]} labels")
    if count == 0:
        raise StreamError(f"{images.name} holds no images")
    return _ArrayStream(count=count, shape=expected, images=images, label_array=labels, plan=plan)


# --- .npy and .npz ------------------------------------------------------------------------------------------------


def _read_npy_header(handle: io.BufferedIOBase, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse a .npy header from ``handle`` (left at the first data byte); refuses object dtypes."""
    from numpy.lib import format as npy_format

    try:
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
        else:
            major, minor = version
            raise StreamError(f"{name} uses .npy format version {major}.{minor}; versions 1.0 and 2.0 are read")
    except StreamError:
        raise
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile, SyntaxError) as exc:
        raise StreamError(f"{name} is not a valid .npy array: {exc}") from exc
    if dtype.hasobject:
        raise StreamError(f"{name} holds Python objects (a pickle); bundles may hold only numeric arrays")
    if any(int(d) < 0 for d in shape):
        raise StreamError(f"{name} is not a valid .npy array: its header gives the shape {shape}")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes of an array of ``shape`` (Python ints: a hostile header cannot overflow int64 here)."""
    size = 1
    for dim in shape:
        size *= int(dim)
    return size * dtype.itemsize


def _open_npy(root: Path, spec: Mapping[str, Any]) -> tuple[_Array, _Array]:
    return _npy_array(root, _spec_text(spec, "images")), _npy_array(root, _spec_text(spec, "labels"))


def _npy_array(root: Path, rel: str) -> _Array:
    """A .npy file, its rows read by position per pass (the header parsed here: no pickle, no np.load)."""
    path = _resolve(root, rel, "file")
    with path.open("rb") as handle:
        shape, fortran, dtype = _read_npy_header(handle, rel)
        offset = handle.tell()
    held = path.stat().st_size - offset
    if held < _nbytes(shape, dtype):
        raise StreamError(
            f"{rel} is truncated: its header says {_fmt_shape(shape)} {dtype.name} but it holds {held} data bytes"
        )
    rows = _positioned_rows(path, rel, offset, shape, dtype, fortran, f"{rel} cannot be read as a .npy array")
    return _Array(rel, shape, dtype, rows)


def _open_npz(root: Path, spec: Mapping[str, Any]) -> tuple[_Array, _Array]:
    rel = _spec_text(spec, "path")
    path = _resolve(root, rel, "file")
    return (
        _npz_array(path, rel, _spec_text(spec, "images", "images")),
        _npz_array(path, rel, _spec_text(spec, "labels", "labels")),
    )


def _npz_array(path: Path, rel: str, key: str) -> _Array:
    """One member of an .npz, read front to back from the zip stream (stored or deflated)."""
    name = f"{rel}:{key}"
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            info = members.get(f"{key}.npy") or members.get(key)
            if info is None:
                held = ", ".join(sorted(n.removesuffix(".npy") for n in members)) or "nothing"
                raise StreamError(f"{rel} has no array '{key}' (it holds: {held})")
            if info.flag_bits & 0x1:
                raise StreamError(f"{name} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                method = info.compress_type
                raise StreamError(f"{name} uses zip compression method {method}; numpy writes stored or deflated")
            with archive.open(info) as handle:
                shape, fortran, dtype = _read_npy_header(handle, name)
                header_len = handle.tell()
    except StreamError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise StreamError(f"{rel} is not a readable .npz (zip) file: {exc}") from exc
    if fortran and len(shape) > 1:
        raise StreamError(
            f"{name} is stored in Fortran order, which cannot be read row by row; save np.ascontiguousarray(...)"
        )
    nbytes = _nbytes(shape, dtype)
    if info.file_size - header_len != nbytes:
        raise StreamError(
            f"{name} says {_fmt_shape(shape)} {dtype.name} ({nbytes} data bytes) "
            f"but holds {info.file_size - header_len} data bytes"
        )
    if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise StreamError(
            f"{name} claims {info.file_size} bytes from {info.compress_size} compressed bytes, more than deflate gives"
        )

    @contextmanager
    def open_data() -> Iterator[io.BufferedIOBase]:
        with zipfile.ZipFile(path) as archive, archive.open(info) as handle:
            _skip(handle, header_len)
            yield handle

    return _Array(name, shape, dtype, _sequential_rows(open_data, name, shape, dtype))


# --- Sequential streams (zip members, gzip) ----------------------------------------------------------------------


def _read_up_to(handle: io.BufferedIOBase, nbytes: int) -> bytes:
    """``nbytes`` from the stream, fewer only where it ends (``read`` may return short pieces)."""
    data = handle.read(nbytes)
    if len(data) == nbytes or not data:
        return data
    pieces = [data]
    left = nbytes - len(data)
    while left > 0:
        piece = handle.read(left)
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)


def _skip(handle: io.BufferedIOBase, nbytes: int) -> int:
    """Read and drop ``nbytes`` in bounded pieces (seek on a compressed stream reads 16 MiB at once)."""
    left = nbytes
    while left > 0:
        piece = _read_up_to(handle, min(left, _SKIP_PIECE))
        left -= len(piece)
        if not piece:
            break
    return nbytes - left


class _ForwardRows:
    """Rows of a C-order array in a stream that can only be read forward (a zip member, gzip).

    A read ahead of the current position skips forward; a read behind it reopens the stream
    (``chunks`` and ``take`` only ever read forward, so a pass never decompresses twice).
    """

    def __init__(
        self,
        open_data: Callable[[], AbstractContextManager[io.BufferedIOBase]],
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
    ) -> None:
        self._open_data = open_data
        self._name = name
        self._shape = shape
        self._dtype = dtype
        self._row_bytes = _nbytes(shape[1:], dtype)
        self._stack = ExitStack()
        self._handle: io.BufferedIOBase | None = None
        self._pos = 0

    def __call__(self, start: int, stop: int) -> np.ndarray:
        if self._handle is None or start < self._pos:
            self._stack.close()
            self._handle, self._pos = self._stack.enter_context(self._open_data()), 0
        gap = (start - self._pos) * self._row_bytes
        skipped = _skip(self._handle, gap)
        data = _read_up_to(self._handle, (stop - start) * self._row_bytes) if skipped == gap else b""
        if len(data) < (stop - start) * self._row_bytes:
            ended = self._pos + (skipped + len(data)) // self._row_bytes
            self._handle = None
            noun = "labels" if len(self._shape) == 1 else "images"
            raise StreamError(f"{self._name} ends after {ended} {noun}; its header says {self._shape[0]}")
        self._pos = stop
        # Read-only view of the bytes: every caller copies (conversion, fancy indexing, astype).
        return np.frombuffer(data, dtype=self._dtype).reshape(stop - start, *self._shape[1:])

    def close(self) -> None:
        self._stack.close()
        self._handle = None


def _sequential_rows(
    open_data: Callable[[], AbstractContextManager[io.BufferedIOBase]],
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
) -> Callable[[], AbstractContextManager[_Rows]]:
    """``open_rows`` for an array read forward from ``open_data()`` (a stream at the first data byte)."""

    @contextmanager
    def open_rows() -> Iterator[_Rows]:
        rows = _ForwardRows(open_data, name, shape, dtype)
        try:
            yield rows
        finally:
            rows.close()

    return open_rows


# --- Plain files read by position (.npy, raw IDX, safetensors) ----------------------------------------------------


def _read_at(handle: io.RawIOBase, buffer: np.ndarray, offset: int) -> int:
    """Fill the uint8 ``buffer`` from ``offset`` of the file; the bytes read (fewer only where the file ends)."""
    view = memoryview(buffer)
    handle.seek(offset)
    got = 0
    while got < len(view):
        piece = handle.readinto(view[got:])
        if not piece:
            break
        got += piece
    return got


class _PositionedRows:
    """Rows of an array stored from ``offset`` of a plain file, read by position into fresh buffers.

    No memory map: a map of the whole file keeps every page a pass touched resident (counted in
    RSS) until the pass ends, so peak memory would grow with the file. Each call reads just the
    rows asked for. A C-order array's rows are one run of bytes; a Fortran-order array's rows
    ``start:stop`` are one run per element of an image, each ``shape[0]`` items apart.
    """

    def __init__(
        self,
        handle: io.RawIOBase,
        name: str,
        offset: int,
        shape: tuple[int, ...],
        dtype: np.dtype,
        fortran: bool,
    ) -> None:
        self._handle = handle
        self._name = name
        self._offset = offset
        self._shape = shape
        self._dtype = dtype
        self._fortran = fortran and len(shape) > 1
        self._row_bytes = _nbytes(shape[1:], dtype)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        count = stop - start
        buffer = np.empty(count * self._row_bytes, dtype=np.uint8)
        if not self._fortran:
            got = _read_at(self._handle, buffer, self._offset + start * self._row_bytes)
            if got < buffer.size:
                ended = start + got // self._row_bytes
                noun = "labels" if len(self._shape) == 1 else "images"
                raise StreamError(f"{self._name} ends after {ended} {noun}; its header says {self._shape[0]}")
            return buffer.view(self._dtype).reshape(count, *self._shape[1:])
        run = count * self._dtype.itemsize
        column = self._shape[0] * self._dtype.itemsize
        for element in range(buffer.size // max(run, 1)):
            piece = buffer[element * run : (element + 1) * run]
            if _read_at(self._handle, piece, self._offset + element * column + start * self._dtype.itemsize) < run:
                held = os.fstat(self._handle.fileno()).st_size - self._offset
                raise StreamError(
                    f"{self._name} is truncated: its header says {_fmt_shape(self._shape)} {self._dtype.name} "
                    f"but it holds {held} data bytes"
                )
        # Element m of the trailing axes (Fortran order) is buffer row m: C order over the reversed axes.
        return buffer.view(self._dtype).reshape(*self._shape[:0:-1], count).T


def _positioned_rows(
    path: Path,
    name: str,
    offset: int,
    shape: tuple[int, ...],
    dtype: np.dtype,
    fortran: bool = False,
    open_failure: str | None = None,
) -> Callable[[], AbstractContextManager[_Rows]]:
    """``open_rows`` for an array at ``offset`` of ``path``: one unbuffered handle per pass, never a map.

    ``open_failure`` words the StreamError for a file that can no longer be opened (else the caller's).
    """

    @contextmanager
    def open_rows() -> Iterator[_Rows]:
        try:
            handle = path.open("rb", buffering=0)
        except OSError as exc:
            if open_failure is None:
                raise
            raise StreamError(f"{open_failure}: {exc}") from exc
        with handle:
            yield _PositionedRows(handle, name, offset, shape, dtype, fortran)

    return open_rows


# --- IDX ------------------------------------------------------------------------------------------------------------


def _open_idx(root: Path, spec: Mapping[str, Any]) -> tuple[_Array, _Array]:
    return _idx_array(root, _spec_text(spec, "images")), _idx_array(root, _spec_text(spec, "labels"))


def _idx_array(root: Path, rel: str) -> _Array:
    """An IDX file: read by position when raw, read forward through gzip when it starts with 1f8b."""
    path = _resolve(root, rel, "file")
    size = path.stat().st_size
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if compressed else path.open("rb") as handle:
            head = handle.read(4)
            if len(head) < 4:
                raise StreamError(f"{rel} is too short to be an IDX file")
            zero, type_code, ndim = struct.unpack(">HBB", head)
            if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
                raise StreamError(f"{rel} does not start with an IDX header (it starts 0x{head.hex()})")
            dims_raw = handle.read(4 * ndim)
    except StreamError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise StreamError(f"{rel} cannot be read as an IDX file: {exc}") from exc
    if len(dims_raw) < 4 * ndim:
        raise StreamError(f"{rel} is truncated inside its IDX header")
    shape = tuple(int(d) for d in struct.unpack(f">{ndim}I", dims_raw))
    dtype = _IDX_DTYPES[type_code]
    header_len = 4 + 4 * ndim
    nbytes = _nbytes(shape, dtype)
    if not compressed:
        if size - header_len != nbytes:
            raise StreamError(
                f"{rel} declares dimensions {_fmt_shape(shape)} ({nbytes} data bytes) but holds {size - header_len}"
            )
        return _Array(rel, shape, dtype, _positioned_rows(path, rel, header_len, shape, dtype))
    if nbytes > _MAX_DEFLATE_RATIO * size + 1024:
        raise StreamError(
            f"{rel} declares dimensions {_fmt_shape(shape)}, more than its {size} compressed bytes can hold"
        )

    @contextmanager
    def open_data() -> Iterator[io.BufferedIOBase]:
        with gzip.open(path, "rb") as handle:
            _skip(handle, header_len)
            yield handle

    return _Array(rel, shape, dtype, _sequential_rows(open_data, rel, shape, dtype))


# --- safetensors ------------------------------------------------------------------------------------------------------

#: safetensors dtype names numpy can hold (bfloat16 and the float8 kinds have no numpy dtype).
_SAFETENSORS_DTYPES = {
    "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16, "U32": np.uint32, "I32": np.int32,
    "U64": np.uint64, "I64": np.int64, "F16": np.float16, "F32": np.float32, "F64": np.float64, "BOOL": np.bool_,
}  # fmt: skip


def _open_safetensors(root: Path, spec: Mapping[str, Any]) -> tuple[_Array, _Array]:
    from safetensors import safe_open

    rel = _spec_text(spec, "path")
    path = _resolve(root, rel, "file")
    keys = (_spec_text(spec, "images", "images"), _spec_text(spec, "labels", "labels"))
    arrays: list[_Array] = []
    try:
        # safe_open checks the header (offsets inside the file, no overlaps, sizes that match the
        # shapes); it maps the file but touches only the header here. Passes read rows by offset.
        with safe_open(str(path), framework="numpy") as handle:
            held = list(handle.keys())
            for key in keys:
                name = f"{rel}:{key}"
                if key not in held:
                    raise StreamError(f"{rel} has no tensor '{key}' (it holds: {', '.join(sorted(held)) or 'nothing'})")
                tensor = handle.get_slice(key)
                kind = tensor.get_dtype()
                if kind not in _SAFETENSORS_DTYPES:
                    raise StreamError(f"{name} holds {kind}, which numpy has no type for; store uint8 or float32")
                shape = tuple(int(d) for d in tensor.get_shape())
                dtype = np.dtype(_SAFETENSORS_DTYPES[kind])
                offset = _safetensors_offset(path, rel, key, _nbytes(shape, dtype))
                stored = dtype.newbyteorder("<")  # safetensors data is little-endian
                arrays.append(_Array(name, shape, dtype, _positioned_rows(path, name, offset, shape, stored)))
    except StreamError:
        raise
    except (SafetensorError, OSError) as exc:
        raise StreamError(f"{rel} cannot be read as safetensors: {exc}") from exc
    return arrays[0], arrays[1]


def _safetensors_offset(path: Path, rel: str, key: str, nbytes: int) -> int:
    """Where tensor ``key``'s data starts in the file (after safe_open accepted the header).

    The file is 8 bytes of little-endian header length, the JSON header, then the data, which each
    tensor's ``data_offsets`` locate relative to the end of the header.
    """
    with path.open("rb") as handle:
        head = _read_up_to(handle, 8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        header = _read_up_to(handle, header_len) if header_len > 0 else b""
    try:
        begin, end = (int(v) for v in json.loads(header)[key]["data_offsets"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StreamError(f"{rel} cannot be read as safetensors: no data offsets for '{key}' ({exc})") from exc
    if end - begin != nbytes or begin < 0:
        raise StreamError(f"{rel} cannot be read as safetensors: '{key}' has {end - begin} data bytes, not {nbytes}")
    return 8 + header_len + begin


# --- HDF5 ---------------------------------------------------------------------------------------------------------


def _open_hdf5(root: Path, spec: Mapping[str, Any]) -> tuple[_Array, _Array]:
    import h5py

    rel = _spec_text(spec, "path")
    path = _resolve(root, rel, "file")
    keys = (_spec_text(spec, "images", "images"), _spec_text(spec, "labels", "labels"))
    arrays: list[_Array] = []
    try:
        with h5py.File(path, "r") as handle:
            for key in keys:
                dataset = _h5_dataset(handle, rel, key)
                shape = tuple(int(d) for d in dataset.shape)
                arrays.append(_Array(f"{rel}:{key}", shape, dataset.dtype, _h5_rows(path, key)))
    except StreamError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise StreamError(f"{rel} cannot be read as HDF5: {exc}") from exc
    return arrays[0], arrays[1]


def _h5_dataset(handle: Any, rel: str, key: str) -> Any:
    """The dataset at ``key``, refusing anything that would read another file of the server.

    Only hard links are followed: an external link opens another HDF5 file, and a soft link may
    lead to one; external storage and virtual datasets read raw bytes from other files.
    """
    import h5py

    name = f"{rel}:{key}"
    parts = [p for p in key.split("/") if p]
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        link = handle.get(prefix, getlink=True)
        if link is None:
            raise StreamError(f"{rel} has no dataset '{key}' ({_h5_listing(handle)})")
        if isinstance(link, h5py.ExternalLink):
            raise StreamError(f"{rel}:{prefix} is an external link; bundles may not contain links")
        if not isinstance(link, h5py.HardLink):  # a soft link may name an external link elsewhere in the file
            raise StreamError(f"{rel}:{prefix} is a soft link; name the dataset itself")
    dataset = handle.get(key)
    if not isinstance(dataset, h5py.Dataset):
        raise StreamError(f"{name} is a group, not a dataset ({_h5_listing(handle)})")
    if dataset.external:
        raise StreamError(f"{name} keeps its data in external files; bundles hold their data inside the file")
    if dataset.is_virtual:
        raise StreamError(f"{name} is a virtual dataset (data in other files); bundles hold their data inside the file")
    if dataset.dtype.kind in "OVSUa":
        raise StreamError(f"{name} holds {dataset.dtype}; bundles hold numeric arrays")
    return dataset


def _h5_listing(handle: Any) -> str:
    import h5py

    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and len(found) < 20:
            found.append(name)

    handle.visititems(visit)
    return "datasets: " + (", ".join(found) if found else "none")


def _h5_rows(path: Path, key: str) -> Callable[[], AbstractContextManager[_Rows]]:
    @contextmanager
    def open_rows() -> Iterator[_Rows]:
        import h5py

        with h5py.File(path, "r") as handle:
            dataset = handle[key]
            yield lambda start, stop: dataset[start:stop]

    return open_rows


# --- Image folders ------------------------------------------------------------------------------------------------


def _open_folders(
    root: Path,
    spec: Mapping[str, Any],
    expected: tuple[int, int, int],
    class_names: list[str] | None,
    real_fake: bool,
) -> _FolderStream:
    """Scan class folders (or real/ and fake/): list files, read each image's size and mode, no pixels."""
    rel = _spec_text(spec, "path")
    folder = _resolve(root, rel, "folder")
    channels, height, width = expected
    if channels not in (1, 3):
        raise StreamError(f"image folders give 1 or 3 channels; the track has {channels}")
    classes = _class_folders(folder, rel, real_fake)
    if real_fake:
        for needed in ("real", "fake"):
            if needed not in classes:
                raise StreamError(f"{rel} has no {needed}/ folder; a real_fake set holds real/ and fake/")
        index = {"real": 0, "fake": 1}
    elif class_names is not None:
        index = {}
        for i, class_name in enumerate(class_names):
            index.setdefault(class_name, i)
        unknown = [c for c in classes if c not in index]
        if unknown:
            known = ", ".join(class_names[:10]) + (", ..." if len(class_names) > 10 else "")
            which = ", ".join(f"{rel}/{c}" for c in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            verb = "is not a class" if len(unknown) == 1 else "are not classes"
            raise StreamError(f"{which} {verb} of the track (its classes: {known})")
    else:
        index = {c: i for i, c in enumerate(classes)}

    files: list[str] = []
    labels: list[int] = []
    wrong_sizes: Counter[tuple[int, int]] = Counter()
    first_of_size: dict[tuple[int, int], str] = {}
    colour: list[str] = []
    for class_name in sorted(classes, key=index.__getitem__):
        for file_name in _image_files(folder / class_name, class_name):
            shown = f"{class_name}/{file_name}"
            size, mode = _peek_image(folder / class_name / file_name, shown)
            if size != (width, height):
                wrong_sizes[size] += 1
                first_of_size.setdefault(size, shown)
            if channels == 1 and mode not in _GRAY_MODES:
                colour.append(shown)
            files.append(shown)
            labels.append(index[class_name])
    if not files:
        raise StreamError(f"{rel} holds no images")
    if wrong_sizes:
        (w, h), n = wrong_sizes.most_common(1)[0]
        others = sum(wrong_sizes.values()) - n
        are = "images are" if n > 1 else "image is"
        message = f"{n} {are} {w}x{h}, the track says {width}x{height} (first: {first_of_size[(w, h)]})"
        if others:
            message += f"; {others} more {'have other sizes' if others > 1 else 'has another size'}"
        raise StreamError(message)
    if colour:
        are = "images are" if len(colour) > 1 else "image is"
        raise StreamError(f"{len(colour)} {are} RGB, the track has 1 channel (first: {colour[0]})")
    return _FolderStream(
        count=len(files),
        shape=expected,
        folder=folder,
        files=tuple(files),
        file_labels=np.asarray(labels, dtype=np.int64),
    )


def _ignored(name: str) -> bool:
    """Hidden entries (.DS_Store, ._resource forks) and macOS zip debris, which are no class or image.

    ``__MACOSX`` matters most: taken for a class folder it would sort first and shift every label.
    """
    return name.startswith(".") or name == "__MACOSX"


def _class_folders(folder: Path, rel: str, real_fake: bool) -> list[str]:
    """Sorted class folder names; links refused, hidden entries and macOS debris skipped."""
    names: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_symlink():
                raise StreamError(f"{rel}/{entry.name} is a link; bundles may not contain links")
            if _ignored(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False) and (not real_fake or entry.name in ("real", "fake")):
                names.append(entry.name)
            elif real_fake:
                raise StreamError(f"{rel} holds {entry.name}; a real_fake set holds only real/ and fake/")
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                raise StreamError(f"{rel}/{entry.name} lies outside the class folders; each image goes in its class's")
    if not names:
        raise StreamError(f"{rel} has no class folders")
    return sorted(names)


def _image_files(class_folder: Path, class_name: str) -> list[str]:
    """Sorted image file names of one class folder; links and nested folders refused."""
    names: list[str] = []
    with os.scandir(class_folder) as entries:
        for entry in entries:
            shown = f"{class_name}/{entry.name}"
            if entry.is_symlink():
                raise StreamError(f"{shown} is a link; bundles may not contain links")
            if _ignored(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                raise StreamError(f"{shown} is a folder inside a class folder; a class folder holds only images")
            if Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                continue  # notes, licences... as in loaders.load_image_folder
            if not entry.is_file(follow_symlinks=False):
                raise StreamError(f"{shown} is not a regular file")
            names.append(entry.name)
    return sorted(names)


def _peek_image(path: Path, shown: str) -> tuple[tuple[int, int], str]:
    """(width, height) and mode from the image header; Pillow decodes nothing here."""
    from PIL import Image

    try:
        with Image.open(path, formats=_PIL_FORMATS) as image:
            return (int(image.size[0]), int(image.size[1])), str(image.mode)
    except Exception as exc:  # Pillow's plugins raise many types on malformed files
        raise StreamError(f"{shown} cannot be read as an image: {exc}") from exc


def _decode_image(folder: Path, shown: str, shape: tuple[int, int, int]) -> np.ndarray:
    """Decode one image to (C, H, W) uint8 as loaders._read_image does, widening gray to RGB when C is 3."""
    from PIL import Image

    channels, height, width = shape
    try:
        with Image.open(folder / shown, formats=_PIL_FORMATS) as image:
            if image.size != (width, height):
                raise StreamError(f"{shown} is {image.size[0]}x{image.size[1]}, the track says {width}x{height}")
            if image.mode not in ("L", "RGB"):
                image = image.convert("L" if image.mode in _GRAY_MODES else "RGB")
            if channels == 3 and image.mode == "L":
                image = image.convert("RGB")
            elif channels == 1 and image.mode != "L":
                raise StreamError(f"{shown} is RGB, the track has 1 channel")
            array = np.asarray(image, dtype=np.uint8)
    except StreamError:
        raise
    except Exception as exc:  # Pillow's decoders raise many types on damaged data
        raise StreamError(f"{shown} cannot be decoded: {exc}") from exc
    return array[None, :, :] if array.ndim == 2 else array.transpose(2, 0, 1)
