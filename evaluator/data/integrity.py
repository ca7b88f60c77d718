"""Content hashes for dataset files and folders.

A folder (such as the CIFAR-10 JPEG test set) has no single file to hash, and the archive it
is downloaded in is not byte-stable (GitHub re-creates archives), so a folder is identified by
a hash over its content alone: see :func:`tree_sha256`.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_gunzipped(path: str | Path) -> str:
    """Hex sha256 of a gzip file's decompressed content.

    Two gzip files of the same data differ when they were compressed by different tools or
    with different header fields (name, time); this hash is the same for both.
    """
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def iter_tree_files(root: str | Path) -> Iterator[tuple[str, Path]]:
    """Yield ``(relative POSIX path, path)`` for every regular file under ``root``, sorted by
    relative path. Symbolic links are refused so that a tree cannot point outside itself."""
    root = Path(root)
    entries: list[tuple[str, Path]] = []
    for path in root.rglob("*"):
        if path.is_symlink():
            raise ValueError(f"{path} is a symbolic link; dataset folders must hold plain files")
        if path.is_file():
            entries.append((path.relative_to(root).as_posix(), path))
    entries.sort(key=lambda entry: entry[0])
    yield from entries


def tree_sha256(root: str | Path) -> str:
    """Hex sha256 over a folder's files, independent of timestamps, permissions and file system.

    For each regular file, in order of its relative POSIX path (sorted as Python strings), the
    hash takes: the UTF-8 relative path, a NUL byte, the file size as 8 big-endian bytes, and
    the file's bytes. The size prefix makes the concatenation unambiguous. Empty directories
    do not count.
    """
    digest = hashlib.sha256()
    for relative, path in iter_tree_files(root):
        data = path.read_bytes()
        digest.update(relative.encode("utf-8"))
        digest.update(b"\x00")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()
