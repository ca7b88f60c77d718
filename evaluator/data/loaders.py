"""Readers for the public dataset formats the benchmark is built from.

Every loader returns ``(images, labels)`` with images uint8 (N, C, H, W) and labels int64 (N,),
so that everything downstream (framing, corruptions, :mod:`evaluator.data.evalsets`) sees one
layout whatever the source format was. A malformed file raises
``EvaluationError("data_integrity", ...)``: at evaluation time such a file is the platform's
fault, never the submission's.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from evaluator.errors import EvaluationError

#: IDX type codes (third magic byte) that this module understands.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: File suffixes :func:`load_image_folder` reads; anything else in a class folder is ignored.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

#: PIL modes read as one channel; every other mode (P, RGBA, CMYK, ...) is converted to RGB.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})

#: Tolerance when checking that float images lie in [0, 1] (float32 rounding of 1.0 etc.).
_RANGE_TOL = 1e-6


def _fail(message: str) -> EvaluationError:
    return EvaluationError("data_integrity", message)


def _read_maybe_gzip(path: Path) -> bytes:
    """Read a file, decompressing it when it starts with the gzip magic (not judged by name)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror or exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise _fail(f"{path} looks gzip-compressed but cannot be decompressed: {exc}") from exc
    return raw


def _parse_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Parse one IDX file (LeCun's format: 2 zero bytes, type code, ndim, big-endian dims, data)."""
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise _fail(f"{path} is too short to be an IDX file ({len(data)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _IDX_DTYPES:
        raise _fail(f"{path} has IDX magic number 0x{data[:4].hex()}, which is not a valid IDX header")
    if ndim != expected_ndim:
        raise _fail(f"{path} has {ndim} dimensions in its IDX header, expected {expected_ndim}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise _fail(f"{path} is truncated inside its IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _IDX_DTYPES[type_code]
    expected_bytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header_len != expected_bytes:
        raise _fail(
            f"{path} declares dimensions {dims} ({expected_bytes} data bytes) "
            f"but holds {len(data) - header_len} data bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)


def load_idx_pair(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load an IDX image file (N, H, W) and its IDX label file (N,), gzip-compressed or raw.

    Images must be unsigned bytes (type 0x08), as in MNIST and its relatives.
    """
    images = _parse_idx(Path(images_path), expected_ndim=3)
    labels = _parse_idx(Path(labels_path), expected_ndim=1)
    if images.dtype != np.uint8:
        raise _fail(f"{images_path} holds {images.dtype} pixels; only unsigned bytes (IDX type 0x08) are supported")
    if images.shape[0] != labels.shape[0]:
        raise _fail(f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels")
    return np.ascontiguousarray(images[:, None, :, :]), labels.astype(np.int64)


def _float_to_uint8(array: np.ndarray, source: str) -> np.ndarray:
    """Map floats in [0, 1] to uint8 by rounding, refusing data outside that range."""
    if not np.all(np.isfinite(array)):
        raise _fail(f"{source} contains NaN or infinite pixel values")
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if low < -_RANGE_TOL or high > 1.0 + _RANGE_TOL:
        raise _fail(f"{source} has float pixels in [{low:g}, {high:g}]; expected values in [0, 1]")
    return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def load_usps_hdf5(path: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Load one split of the Kaggle ``usps.h5`` file as 1x16x16 uint8 digits.

    The file stores ``<split>/data`` as (N, 256) float32 in [0, 1] and ``<split>/target``. Its
    polarity already matches MNIST (bright digit on a black background: the median pixel is 0),
    but the polarity is checked on the whole split and inverted if a copy ever stores dark
    digits on white, because a silent polarity flip would look like a catastrophic shift.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            if f"{split}/data" not in handle or f"{split}/target" not in handle:
                raise _fail(f"{path} has no '{split}/data' and '{split}/target' datasets (splits: {sorted(handle)})")
            data = np.asarray(handle[f"{split}/data"][()], dtype=np.float64)
            target = np.asarray(handle[f"{split}/target"][()])
    except OSError as exc:
        raise _fail(f"cannot read {path} as HDF5: {exc}") from exc
    if data.ndim != 2 or data.shape[1] != 256:
        raise _fail(f"{path}:{split}/data has shape {data.shape}; expected (N, 256) for 16x16 digits")
    if target.shape != (data.shape[0],):
        raise _fail(f"{path}:{split}/target has shape {target.shape}; expected ({data.shape[0]},)")
    if not np.issubdtype(target.dtype, np.integer):
        raise _fail(f"{path}:{split}/target holds {target.dtype}; expected integer class labels")
    images = _float_to_uint8(data, f"{path}:{split}/data").reshape(-1, 1, 16, 16)
    if np.median(images) > 127:  # background dominates every digit image
        images = 255 - images
    return np.ascontiguousarray(images), target.astype(np.int64)


def _to_nchw(images: np.ndarray, source: str) -> np.ndarray:
    """Accept (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3} and return NCHW."""
    if images.ndim == 3:
        return images[:, None, :, :]
    if images.ndim != 4:
        raise _fail(f"{source} has shape {images.shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C)")
    channels_first = images.shape[1] in (1, 3)
    channels_last = images.shape[3] in (1, 3)
    if channels_first:  # ambiguous shapes such as (N, 3, 32, 3) are read as NCHW
        return images
    if channels_last:
        return np.transpose(images, (0, 3, 1, 2))
    raise _fail(f"{source} has shape {images.shape}; neither axis 1 nor axis 3 has 1 or 3 channels")


def load_npy(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load images and labels from two ``.npy`` files (never pickles).

    Images may be NCHW or NHWC (or N, H, W for grayscale), uint8 or float in [0, 1].
    """
    try:
        images = np.load(images_path, allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read {images_path} / {labels_path} as .npy arrays: {exc}") from exc
    images = _to_nchw(images, str(images_path))
    if images.dtype == np.uint8:
        pass
    elif np.issubdtype(images.dtype, np.floating):
        images = _float_to_uint8(images, str(images_path))
    else:
        raise _fail(f"{images_path} holds {images.dtype}; expected uint8 or float in [0, 1]")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise _fail(f"{labels_path} has shape {labels.shape} and dtype {labels.dtype}; expected 1-D integers")
    if labels.shape[0] != images.shape[0]:
        raise _fail(f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels")
    return np.ascontiguousarray(images), labels.astype(np.int64)


def load_labels_npy(path: str | Path) -> np.ndarray:
    """Load a 1-D integer label array from ``.npy`` (for sets whose images live elsewhere)."""
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read {path} as a .npy array: {exc}") from exc
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise _fail(f"{path} has shape {labels.shape} and dtype {labels.dtype}; expected 1-D integers")
    return labels.astype(np.int64)


def _read_image(path: Path) -> np.ndarray:
    """Read one image as (C, H, W) uint8: grayscale modes give 1 channel, colour modes 3."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "RGB"):
                image = image.convert("L" if image.mode in _GRAY_MODES else "RGB")
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise _fail(f"cannot read image {path}: {exc}") from exc
    return array[None, :, :] if array.ndim == 2 else np.transpose(array, (2, 0, 1))


def load_image_folder(root: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load a folder with one sub-folder per class (``root/<class>/<image>``).

    The class index is the position of the folder name in sorted order, so CIFAR-10's folders
    (airplane ... truck) get CIFAR-10's own label numbers. Images are read in sorted file-name
    order and must all share one size and channel count. Returns ``(images, labels, class_names)``.
    """
    root = Path(root)
    if not root.is_dir():
        raise _fail(f"{root} is not a directory")
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_names:
        raise _fail(f"{root} has no class sub-folders")
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        for path in sorted((root / name).iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
                labels.append(index)
    if not files:
        raise _fail(f"{root} has class folders but no image files")
    first = _read_image(files[0])
    images = np.empty((len(files), *first.shape), dtype=np.uint8)
    images[0] = first
    for i, path in enumerate(files[1:], start=1):
        array = _read_image(path)
        if array.shape != first.shape:
            raise _fail(f"{path} has shape {array.shape} (C, H, W) but {files[0]} has {first.shape}")
        images[i] = array
    return images, np.asarray(labels, dtype=np.int64), class_names
