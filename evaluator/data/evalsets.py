"""Materialised evaluation sets: the only data format the evaluator reads at evaluation time.

One set is one safetensors file with two tensors, ``images`` uint8 (N, C, H, W) and ``labels``
int64 (N,), and string metadata (provenance, seed, corruption, ...) in the safetensors header.
safetensors cannot run code when loaded, and one file with one sha256 makes a set easy to pin
in a :class:`evaluator.spec.EvaluationSetSpec` and to check before use.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from evaluator.errors import EvaluationError

_TENSOR_NAMES = frozenset({"images", "labels"})
_METADATA_KEY = "arena"


@dataclass
class EvaluationSetData:
    """A loaded evaluation set; ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _check_arrays(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, where: str) -> None:
    """Refuse anything but uint8 (N, C, H, W) images and int64 (N,) labels of the same N."""
    image_dtype = str(images.dtype).removeprefix("torch.")
    label_dtype = str(labels.dtype).removeprefix("torch.")
    if image_dtype != "uint8" or len(images.shape) != 4:
        raise EvaluationError(
            "data_integrity", f"{where}: images must be uint8 (N, C, H, W), got {image_dtype} {tuple(images.shape)}"
        )
    if label_dtype != "int64" or len(labels.shape) != 1:
        raise EvaluationError(
            "data_integrity", f"{where}: labels must be int64 (N,), got {label_dtype} {tuple(labels.shape)}"
        )
    if images.shape[0] != labels.shape[0]:
        raise EvaluationError("data_integrity", f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")


def write_evaluation_set(
    path: str | Path, images: np.ndarray, labels: np.ndarray, metadata: dict[str, str] | None = None
) -> str:
    """Write one evaluation set atomically (temporary file, fsync, rename); returns its sha256.

    Metadata keys and values must be strings, as the safetensors header requires.
    """
    from safetensors.torch import save

    path = Path(path)
    metadata = dict(metadata or {})
    bad = [key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str)]
    if bad:
        raise ValueError(f"metadata keys and values must be strings; offending keys: {bad}")
    images = np.asarray(images)
    labels = np.asarray(labels)
    _check_arrays(images, labels, str(path))
    tensors = {
        "images": torch.from_numpy(np.array(images, dtype=np.uint8, order="C", copy=True)),
        "labels": torch.from_numpy(np.ascontiguousarray(labels)),
    }
    # One header entry holding sorted JSON: safetensors writes metadata from a hash map, whose
    # order changes between processes, and the same set must always have the same sha256.
    payload = save(tensors, metadata={_METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    digest = hashlib.sha256(payload).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return digest


def _header_metadata(payload: bytes, where: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (8-byte little-endian length, then JSON)."""
    try:
        (length,) = struct.unpack("<Q", payload[:8])
        header = json.loads(payload[8 : 8 + length])
    except (struct.error, ValueError) as exc:
        raise EvaluationError("data_integrity", f"{where} is not a readable safetensors file: {exc}") from exc
    metadata = (header.get("__metadata__") or {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise EvaluationError("data_integrity", f"{where} has a malformed safetensors header")
    if _METADATA_KEY in metadata:
        try:
            packed = json.loads(metadata[_METADATA_KEY])
        except ValueError as exc:
            raise EvaluationError("data_integrity", f"{where} has malformed metadata: {exc}") from exc
        if not isinstance(packed, dict) or not all(isinstance(v, str) for v in packed.values()):
            raise EvaluationError("data_integrity", f"{where} has malformed metadata")
        return dict(packed)
    return dict(metadata)


def read_evaluation_set(path: str | Path, expected_sha256: str | None = None) -> EvaluationSetData:
    """Read and check one evaluation set; any defect raises ``EvaluationError("data_integrity")``.

    The sha256 is computed over the same bytes that are then parsed, so a file cannot change
    between the check and the load.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    where = str(path)
    try:
        payload = Path(path).read_bytes()
    except OSError as exc:
        raise EvaluationError("data_integrity", f"cannot read evaluation set {where}: {exc.strerror or exc}") from exc
    if expected_sha256:
        actual = hashlib.sha256(payload).hexdigest()
        if actual != expected_sha256.lower():
            raise EvaluationError(
                "data_integrity", f"evaluation set {where} has sha256 {actual}, expected {expected_sha256}"
            )
    metadata = _header_metadata(payload, where)
    try:
        tensors = load(payload)
    except SafetensorError as exc:
        raise EvaluationError("data_integrity", f"{where} is not a readable safetensors file: {exc}") from exc
    if set(tensors) != _TENSOR_NAMES:
        raise EvaluationError("data_integrity", f"{where} holds tensors {sorted(tensors)}; expected images and labels")
    _check_arrays(tensors["images"], tensors["labels"], where)
    return EvaluationSetData(images=tensors["images"], labels=tensors["labels"], metadata=metadata)


def split_indices(n: int, hidden_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (public, hidden) index arrays, each sorted, int64.

    One seeded permutation (``Generator(PCG64(seed))``), class-agnostic, so that the split is
    reproducible from (n, fraction, seed) alone; the hidden part has ``round(n * fraction)``
    items.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if not 0.0 <= hidden_fraction <= 1.0:
        raise ValueError(f"hidden_fraction must lie in [0, 1], got {hidden_fraction}")
    permutation = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    n_hidden = round(n * hidden_fraction)
    hidden = np.sort(permutation[:n_hidden]).astype(np.int64)
    public = np.sort(permutation[n_hidden:]).astype(np.int64)
    return public, hidden
