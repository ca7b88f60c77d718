"""Fetch registered datasets into a local data directory, with sha256 checks, and load them.

Files come, in order of preference, from the destination itself (already there with the right
hash), from a local mirror directory laid out like ``shared/data`` (the ``mirror`` argument or
the ``ARENA_DATA_MIRROR`` environment variable; this is how CI and offline machines work), or
from the dataset's official URL. Every file is written to a temporary name next to its target,
checked, and only then renamed into place, so an interrupted or tampered fetch never leaves a
file that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np

from evaluator.data import loaders
from evaluator.data.integrity import iter_tree_files, sha256_file, sha256_gunzipped, tree_sha256
from evaluator.data.registry import DatasetSource, RemoteFile, get_dataset
from evaluator.errors import EvaluationError

#: Environment variable naming a local mirror directory, used when no ``mirror`` is passed.
MIRROR_ENV = "ARENA_DATA_MIRROR"
#: Seconds a download may stall before it is abandoned.
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def _mismatch(source: DatasetSource, remote: RemoteFile, origin: str, actual: str) -> EvaluationError:
    return EvaluationError(
        "data_integrity",
        f"{source.id}: {remote.mirror_path} from {origin} has sha256 {actual}, expected {remote.sha256}",
    )


def _file_hash_ok(path: Path, remote: RemoteFile) -> tuple[bool, str]:
    """Whether a file has the registered hash (or decompressed-content hash); also the actual hash."""
    actual = sha256_file(path)
    if actual == remote.sha256:
        return True, actual
    if remote.content_sha256:
        try:
            if sha256_gunzipped(path) == remote.content_sha256:
                return True, actual
        except (OSError, EOFError, zlib.error):  # not gzip, truncated or corrupt
            pass
    return False, actual


def _resolve_mirror(mirror: str | Path | None) -> Path | None:
    if mirror is not None:
        return Path(mirror)
    from_env = os.environ.get(MIRROR_ENV, "").strip()
    return Path(from_env) if from_env else None


def _download(url: str, handle: BinaryIO) -> None:
    """Stream ``url`` into an open file; network failures become ``data_unavailable``."""
    if not url.startswith(("https://", "http://")):
        raise EvaluationError("data_unavailable", f"refusing to download from {url!r}: not an http(s) URL")
    request = urllib.request.Request(url, headers={"User-Agent": "robustness-arena-fetch/1"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:  # scheme checked above
            shutil.copyfileobj(response, handle, _CHUNK)
    except (urllib.error.URLError, OSError) as exc:
        raise EvaluationError("data_unavailable", f"cannot download {url}: {exc}") from exc


@contextmanager
def _temporary_file(target: Path) -> Iterator[Path]:
    """A temporary file next to ``target`` (same file system, so the final rename is atomic),
    removed on the way out unless it was renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _fetch_file(source: DatasetSource, remote: RemoteFile, dest: Path, mirror: Path | None) -> None:
    target = dest / remote.mirror_path
    if target.is_file() and _file_hash_ok(target, remote)[0]:
        return
    mirrored = mirror / remote.mirror_path if mirror is not None else None
    with _temporary_file(target) as part:
        if mirrored is not None and mirrored.is_file():
            origin = str(mirrored)
            shutil.copyfile(mirrored, part)
        else:
            origin = remote.url
            with open(part, "wb") as handle:
                _download(remote.url, handle)
        ok, actual = _file_hash_ok(part, remote)
        if not ok:
            raise _mismatch(source, remote, origin, actual)
        os.replace(part, target)


def _safe_relative(name: str) -> PurePosixPath | None:
    """An archive member's path below the archive's top-level folder, or None if it escapes."""
    parts = PurePosixPath(name).parts
    if not parts or parts[0] in ("/", "..") or ".." in parts:
        return None
    return PurePosixPath(*parts[1:]) if len(parts) > 1 else None


def _extract_member(archive: Path, member: str, staging: Path) -> None:
    """Extract the regular files under ``<top>/<member>/`` of a .tar.gz or .zip into ``staging``."""
    prefix = PurePosixPath(member)

    def destination(name: str) -> Path | None:
        relative = _safe_relative(name)
        if relative is None or relative == prefix or prefix not in relative.parents:
            return None
        out = staging / relative.relative_to(prefix)
        out.parent.mkdir(parents=True, exist_ok=True)
        return out

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                if not info.is_dir() and (out := destination(info.filename)) is not None:
                    with zipped.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
        return
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                if info.isfile() and (out := destination(info.name)) is not None:
                    src = tar.extractfile(info)
                    if src is None:
                        continue
                    with src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
    except tarfile.TarError as exc:
        raise EvaluationError("data_integrity", f"{archive} is neither a readable zip nor tar archive: {exc}") from exc


def _fetch_folder(source: DatasetSource, remote: RemoteFile, dest: Path, mirror: Path | None) -> None:
    target = dest / remote.mirror_path
    if target.is_dir() and tree_sha256(target) == remote.sha256:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part"))
    try:
        mirrored = mirror / remote.mirror_path if mirror is not None else None
        if mirrored is not None and mirrored.is_dir():
            origin = str(mirrored)
            for relative, path in iter_tree_files(mirrored):
                out = staging / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out)
        else:
            origin = remote.url
            with _temporary_file(target.with_name(target.name + ".archive")) as archive:
                with open(archive, "wb") as handle:
                    _download(remote.url, handle)
                _extract_member(archive, remote.archive_member, staging)
        actual = tree_sha256(staging)
        if actual != remote.sha256:
            raise _mismatch(source, remote, origin, actual)
        # A directory cannot be renamed over a non-empty one: move the stale copy aside first.
        if target.exists():
            stale = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".stale"))
            os.replace(target, stale / "old")
            os.replace(staging, target)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_dataset(dataset_id: str, dest_dir: str | Path, mirror: str | Path | None = None) -> Path:
    """Make ``dest_dir`` hold the registered dataset's files, each with its registered sha256.

    Returns ``dest_dir``, laid out like the mirror (e.g. ``dest_dir/mnist/t10k-...gz``), which is
    what :func:`load_dataset` takes. A hash mismatch raises ``EvaluationError("data_integrity")``
    naming the file, the expected and the actual hash; a failed download raises
    ``EvaluationError("data_unavailable")``.
    """
    source = get_dataset(dataset_id)
    dest = Path(dest_dir)
    mirror_dir = _resolve_mirror(mirror)
    for remote in source.files:
        if remote.kind == "folder":
            _fetch_folder(source, remote, dest, mirror_dir)
        else:
            _fetch_file(source, remote, dest, mirror_dir)
    return dest


def verify_dataset(dataset_id: str, root: str | Path) -> None:
    """Check that ``root`` holds the dataset's files with their registered hashes."""
    source = get_dataset(dataset_id)
    for remote in source.files:
        path = Path(root) / remote.mirror_path
        if remote.kind == "folder":
            if not path.is_dir():
                raise EvaluationError("data_integrity", f"{source.id}: {path} is missing; fetch the dataset first")
            actual = tree_sha256(path)
            ok = actual == remote.sha256
        else:
            if not path.is_file():
                raise EvaluationError("data_integrity", f"{source.id}: {path} is missing; fetch the dataset first")
            ok, actual = _file_hash_ok(path, remote)
        if not ok:
            raise _mismatch(source, remote, str(path), actual)


def load_dataset(dataset_id: str, root: str | Path, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load a fetched dataset from ``root`` with its registered loader: uint8 NCHW images, int64 labels.

    The files are hash-checked first unless ``verify`` is False, so a file altered after the
    fetch is caught here rather than silently changing a benchmark.
    """
    source = get_dataset(dataset_id)
    if verify:
        verify_dataset(dataset_id, root)
    paths = {remote.name: Path(root) / remote.mirror_path for remote in source.files}
    if source.loader == "idx_pair":
        return loaders.load_idx_pair(paths["images"], paths["labels"])
    if source.loader == "npy_pair":
        return loaders.load_npy(paths["images"], paths["labels"])
    if source.loader == "usps_hdf5":
        (path,) = paths.values()
        return loaders.load_usps_hdf5(path, **source.loader_args)
    if source.loader == "image_folder":
        (path,) = paths.values()
        images, labels, names = loaders.load_image_folder(path)
        if source.class_names and tuple(names) != source.class_names:
            raise EvaluationError("data_integrity", f"{source.id}: class folders {names} != {list(source.class_names)}")
        return images, labels
    if source.loader == "labels_npy":
        raise EvaluationError("data_unavailable", f"{source.id} registers labels only; use load_labels()")
    raise EvaluationError("internal", f"{source.id}: unknown loader {source.loader!r}")


def load_labels(dataset_id: str, root: str | Path, verify: bool = True) -> np.ndarray:
    """Load only the labels (int64) of a fetched dataset; works for label-only datasets too."""
    source = get_dataset(dataset_id)
    if source.loader != "labels_npy":
        return load_dataset(dataset_id, root, verify=verify)[1]
    if verify:
        verify_dataset(dataset_id, root)
    (remote,) = source.files
    return loaders.load_labels_npy(Path(root) / remote.mirror_path)
