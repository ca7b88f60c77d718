"""Materialised evaluation sets: the only data format the evaluator reads at evaluation time.

One set is one safetensors file with two tensors, ``images`` uint8 (N, C, H, W) and ``labels``
int64 (N,), and string metadata (provenance, seed, corruption, ...) in the safetensors header.
A set may carry a third tensor, ``groups`` int64 (N,), naming each image's subgroup (for example
its corruption and severity) by index into ``group_names``, a JSON list stored in the packed
metadata; one file then serves every subgroup's score, and cannot fall out of step with them.
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
_GROUPED_TENSOR_NAMES = _TENSOR_NAMES | {"groups"}
_METADATA_KEY = "arena"
#: Key of the group names inside the packed metadata; reserved, so callers' metadata cannot use it.
_GROUP_NAMES_KEY = "group_names"


@dataclass
class EvaluationSetData:
    """A loaded evaluation set; ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,).

    ``groups`` (int64 (N,)) and ``group_names`` are set only for a grouped set: image ``i``
    belongs to ``group_names[groups[i]]``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)
    groups: torch.Tensor | None = None
    group_names: list[str] = field(default_factory=list)

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


def _check_groups(groups: np.ndarray | torch.Tensor, group_names: object, n: int, where: str) -> list[str]:
    """Refuse groups that are not int64 (N,) indices into a list of distinct string names.

    Returns the names, now known to be a ``list[str]``.
    """
    if (
        not isinstance(group_names, list)
        or not all(isinstance(name, str) for name in group_names)
        or len(set(group_names)) != len(group_names)
    ):
        raise EvaluationError("data_integrity", f"{where}: group_names must be a list of distinct strings")
    dtype = str(groups.dtype).removeprefix("torch.")
    if dtype != "int64" or tuple(groups.shape) != (n,):
        raise EvaluationError(
            "data_integrity", f"{where}: groups must be int64 ({n},), got {dtype} {tuple(groups.shape)}"
        )
    if n and (int(groups.min()) < 0 or int(groups.max()) >= len(group_names)):
        raise EvaluationError(
            "data_integrity",
            f"{where}: group ids must lie in [0, {len(group_names)}), found {int(groups.min())}..{int(groups.max())}",
        )
    return group_names


def write_evaluation_set(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    metadata: dict[str, str] | None = None,
    groups: np.ndarray | None = None,
    group_names: list[str] | None = None,
) -> str:
    """Write one evaluation set atomically (temporary file, fsync, rename); returns its sha256.

    Metadata keys and values must be strings, as the safetensors header requires. ``groups``
    and ``group_names`` go together; a set without them is byte-identical to one written
    before groups existed, so its sha256 does not change.
    """
    from safetensors.torch import save

    path = Path(path)
    metadata = dict(metadata or {})
    bad = [key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str)]
    if bad:
        raise ValueError(f"metadata keys and values must be strings; offending keys: {bad}")
    if _GROUP_NAMES_KEY in metadata:
        raise ValueError(f"metadata key {_GROUP_NAMES_KEY!r} is reserved; pass group_names instead")
    if (groups is None) != (group_names is None):
        raise ValueError("groups and group_names must be given together")
    images = np.asarray(images)
    labels = np.asarray(labels)
    _check_arrays(images, labels, str(path))
    tensors = {
        "images": torch.from_numpy(np.array(images, dtype=np.uint8, order="C", copy=True)),
        "labels": torch.from_numpy(np.ascontiguousarray(labels)),
    }
    packed: dict[str, object] = dict(metadata)
    if groups is not None:
        groups = np.asarray(groups)
        group_names = list(group_names) if isinstance(group_names, tuple) else group_names
        _check_groups(groups, group_names, int(labels.shape[0]), str(path))
        tensors["groups"] = torch.from_numpy(np.ascontiguousarray(groups))
        packed[_GROUP_NAMES_KEY] = group_names
    # One header entry holding sorted JSON: safetensors writes metadata from a hash map, whose
    # order changes between processes, and the same set must always have the same sha256.
    payload = save(tensors, metadata={_METADATA_KEY: json.dumps(packed, sort_keys=True)})
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


def _header_metadata(payload: bytes, where: str) -> tuple[dict[str, str], object]:
    """The ``__metadata__`` of a safetensors header (8-byte little-endian length, then JSON).

    Returns (metadata, group names or None); the names are checked with the groups tensor.
    """
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
        if not isinstance(packed, dict):
            raise EvaluationError("data_integrity", f"{where} has malformed metadata")
        group_names = packed.pop(_GROUP_NAMES_KEY, None)
        if not all(isinstance(v, str) for v in packed.values()):
            raise EvaluationError("data_integrity", f"{where} has malformed metadata")
        return dict(packed), group_names
    return dict(metadata), None


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
    metadata, group_names = _header_metadata(payload, where)
    try:
        tensors = load(payload)
    except SafetensorError as exc:
        raise EvaluationError("data_integrity", f"{where} is not a readable safetensors file: {exc}") from exc
    if set(tensors) not in (_TENSOR_NAMES, _GROUPED_TENSOR_NAMES):
        raise EvaluationError(
            "data_integrity", f"{where} holds tensors {sorted(tensors)}; expected images, labels and optional groups"
        )
    _check_arrays(tensors["images"], tensors["labels"], where)
    groups = tensors.get("groups")
    if (groups is None) != (group_names is None):
        raise EvaluationError("data_integrity", f"{where} has a groups tensor or group names, but not both")
    if groups is None:
        return EvaluationSetData(images=tensors["images"], labels=tensors["labels"], metadata=metadata)
    names = _check_groups(groups, group_names, int(tensors["labels"].shape[0]), where)
    return EvaluationSetData(
        images=tensors["images"], labels=tensors["labels"], metadata=metadata, groups=groups, group_names=names
    )


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
