"""Turn an uploaded benchmark bundle (a zip file, or a folder) into a checked folder.

A bundle is a ``benchmark.yaml`` manifest plus data files. Bundles arrive through the admin, so
every one is treated as hostile: an archive can try to write outside its destination (absolute
names, ``..`` components, drive letters, backslashes that turn into separators on Windows),
smuggle in symlinks or device files that a later reader would follow, shadow one file with
another (duplicates, or names that only differ in case and collide once the bundle is exported
to a case-insensitive file system), or exhaust the disk (archive bombs, including ones whose
headers lie about their sizes and ones whose members overlap in the file).

Everything that the central directory shows is checked before a single byte is written; what it
cannot show (the real length of each member's data) is counted while extracting, and any
refusal removes the destination again. Files are streamed with a fixed buffer (never
``extractall``) and written with mode 0o644, folders with 0o755, whatever the archive says.

Every refusal is an :class:`ArchiveError` whose message starts with the offending member's name
as Python's ``repr`` writes it (so control characters cannot forge log lines), then the reason;
the phrases are listed in :data:`REFUSAL_PHRASES` for callers that show or match them.
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import stat
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

#: The manifest every bundle has at its root.
MANIFEST = "benchmark.yaml"
#: Fixed copy buffer: memory use does not depend on what the archive declares.
_CHUNK = 1 << 20
#: Members at most this large are exempt from the per-member ratio check (small text files
#: compress far beyond any sensible limit without being a threat); the total is too when below it.
_RATIO_FLOOR = 1 << 20
_FILE_MODE = 0o644
_FOLDER_MODE = 0o755
#: Compression methods the standard library decodes; anything else would fail half-way through.
_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
#: Fixed part of a zip local file header (before the name and extra field).
_LOCAL_HEADER = 30
_DRIVE = re.compile(r"^[A-Za-z]:")
#: What a member's data can raise while it is decompressed (bz2 reports bad data as OSError).
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
)
_KINDS = {
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
    stat.S_IFDIR: "folder",
    stat.S_IFREG: "regular file",
}

#: The phrases of every refusal message, for callers that match on them. ``{name}`` is the
#: member's path as ``repr`` writes it; the other fields are numbers or names.
REFUSAL_PHRASES = (
    "{archive} is not a zip archive",
    "{root} is not a folder",
    "no benchmark.yaml at the top of the bundle",
    "the bundle has more than {max_files} files and folders",
    "the bundle is {n} bytes uncompressed, more than the limit of {max_total_bytes} bytes",
    "the bundle has a compression ratio of {r}, more than the limit of {max_ratio}",
    "{name} has an empty name",
    "{name} contains a control character",
    "{name} contains a backslash",
    "{name} is an absolute path",
    "{name} starts with a drive letter",
    "{name} has a '..' component",
    "{name} is {d} levels deep, more than the limit of {max_depth}",
    "{name} duplicates {other}",
    "{name} duplicates {other} (names equal ignoring case)",
    "{name} collides with {other} (one is a file, the other a folder)",
    "{name} is a symlink",
    "{name} is not a regular file ({kind})",
    "{name} is hard-linked to a file outside the bundle",
    "{name} is encrypted",
    "{name} uses an unsupported compression method ({method})",
    "{name} is {n} bytes, more than the per-file limit of {max_member_bytes} bytes",
    "{name} has a compression ratio of {r}, more than the limit of {max_ratio}",
    "{name} overlaps {other} in the archive",
    "{name} expands beyond its declared size of {n} bytes",
    "{name} expands beyond the bundle's declared total size",
    "{name} is corrupt ({detail})",
)


class ArchiveError(ValueError):
    """A bundle refused: before anything is written when the zip's directory shows the problem,
    otherwise while extracting (and then the destination is removed again). The message names
    the offending member and why, so the staff member who uploaded it can fix the bundle."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what one bundle may hold; the defaults fit the largest benchmark we host with
    room to spare, tests pass small ones to exercise the refusals quickly."""

    max_files: int = 200_000
    max_total_bytes: int = 8 * 2**30  # uncompressed, all members together
    max_member_bytes: int = 4 * 2**30
    max_ratio: float = 200.0  # uncompressed / compressed, per member with size > 1 MiB and for the total
    max_depth: int = 16  # path components


@dataclass(frozen=True)
class _Member:
    """One zip entry that passed the checks: where it goes and whether it is written at all."""

    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    is_dir: bool
    ignored: bool


class _PathRegistry:
    """Every path a bundle would create, keyed as a case-insensitive, Unicode-normalising file
    system would see it, so two names that would land on the same file are caught on Linux too."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, bool, str]] = {}  # key -> (spelling, is folder, member)

    @staticmethod
    def _key(spelling: str) -> str:
        return unicodedata.normalize("NFC", spelling).casefold()

    def add(self, parts: tuple[str, ...], is_dir: bool, name: str) -> None:
        """Record a member and the folders above it; raise if it clashes with an earlier one."""
        for depth in range(1, len(parts)):
            self._add_one(parts[:depth], True, name)
        self._add_one(parts, is_dir, name)

    def _add_one(self, parts: tuple[str, ...], is_dir: bool, name: str) -> None:
        spelling = "/".join(parts)
        key = self._key(spelling)
        prior = self._seen.get(key)
        if prior is None:
            self._seen[key] = (spelling, is_dir, name)
            return
        prior_spelling, prior_is_dir, prior_name = prior
        if is_dir and prior_is_dir and spelling == prior_spelling:
            return  # the same folder again (explicit entry, or the parent of several files)
        if is_dir != prior_is_dir:
            raise ArchiveError(f"{name!r} collides with {prior_name!r} (one is a file, the other a folder)")
        if spelling == prior_spelling:
            raise ArchiveError(f"{name!r} duplicates {prior_name!r}")
        raise ArchiveError(f"{name!r} duplicates {prior_name!r} (names equal ignoring case)")


def _split_name(name: str, limits: ArchiveLimits) -> tuple[str, ...]:
    """The path components of a member name, or ArchiveError if it could land outside the bundle.

    Empty and ``.`` components are dropped (``a//./b`` is ``a/b``), so the duplicate check sees
    what a file system would; everything that could escape or mean something else elsewhere
    (absolute, drive letter, backslash, ``..``) is refused rather than repaired."""
    if not name:
        raise ArchiveError(f"{name!r} has an empty name")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise ArchiveError(f"{name!r} contains a control character")
    if "\\" in name:
        raise ArchiveError(f"{name!r} contains a backslash")
    if name.startswith("/"):
        raise ArchiveError(f"{name!r} is an absolute path")
    if _DRIVE.match(name):
        raise ArchiveError(f"{name!r} starts with a drive letter")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"{name!r} has a '..' component")
    if not parts:
        raise ArchiveError(f"{name!r} has an empty name")
    if len(parts) > limits.max_depth:
        raise ArchiveError(f"{name!r} is {len(parts)} levels deep, more than the limit of {limits.max_depth}")
    return parts


def _is_ignored(parts: tuple[str, ...]) -> bool:
    """macOS litter (resource forks under ``__MACOSX/``, Finder's ``.DS_Store``): never written."""
    return parts[0] == "__MACOSX" or parts[-1] == ".DS_Store"


def _kind(mode: int) -> str:
    """A file type in words for a refusal message, so the uploader sees what the entry was."""
    return _KINDS.get(stat.S_IFMT(mode), f"mode {oct(mode)}")


def _check_size(name: str, size: int, limits: ArchiveLimits) -> None:
    """One file over the per-file limit (shared by zip members and folder files)."""
    if size > limits.max_member_bytes:
        raise ArchiveError(f"{name!r} is {size} bytes, more than the per-file limit of {limits.max_member_bytes} bytes")


def _check_total(total: int, limits: ArchiveLimits) -> None:
    """The whole bundle over the uncompressed-size limit: the disk it may take."""
    if total > limits.max_total_bytes:
        raise ArchiveError(
            f"the bundle is {total} bytes uncompressed, more than the limit of {limits.max_total_bytes} bytes"
        )


def _check_count(count: int, limits: ArchiveLimits) -> None:
    """Too many entries (files and folders alike: each costs an inode and a database row later)."""
    if count > limits.max_files:
        raise ArchiveError(f"the bundle has more than {limits.max_files} files and folders")


def _bundle_root(entries: Iterable[tuple[tuple[str, ...], bool]], marker: str = MANIFEST) -> tuple[str, ...]:
    """The components of the folder holding the manifest (``marker``: another file for other archives, e.g.
    an attack package's ``attack.py``): none when it sits at the top, or the one top-level folder that
    wraps everything else (what zipping a folder in a file manager makes).

    ``entries`` are (components, is folder) of everything that is kept."""
    files: set[tuple[str, ...]] = set()
    tops: set[str] = set()
    for parts, is_dir in entries:
        tops.add(parts[0])
        if not is_dir:
            files.add(parts)
    if (marker,) in files:
        return ()
    if len(tops) == 1:
        (top,) = tops
        if (top, marker) in files:
            return (top,)
    raise ArchiveError(f"no {marker} at the top of the bundle")


def _check_zip_member(info: zipfile.ZipInfo, limits: ArchiveLimits) -> _Member:
    """Everything one central-directory entry can be refused for on its own."""
    name = info.filename
    parts = _split_name(name, limits)
    is_dir = info.is_dir()
    if info.flag_bits & 0x1:
        raise ArchiveError(f"{name!r} is encrypted")
    if info.compress_type not in _METHODS:
        raise ArchiveError(f"{name!r} uses an unsupported compression method ({info.compress_type})")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise ArchiveError(f"{name!r} is a symlink")
    # Zips made on Windows leave the Unix bits at 0; those are plain files or (trailing slash) folders.
    # Some writers mark folder entries as regular files; a folder is all we ever make of them.
    allowed = (0, stat.S_IFDIR, stat.S_IFREG) if is_dir else (0, stat.S_IFREG)
    if kind not in allowed:
        raise ArchiveError(f"{name!r} is not a regular file ({_kind(mode)})")
    _check_size(name, info.file_size, limits)
    if info.file_size > _RATIO_FLOOR:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_ratio:
            raise ArchiveError(
                f"{name!r} has a compression ratio of {ratio:.0f}, more than the limit of {limits.max_ratio:g}"
            )
    return _Member(info, parts, is_dir, _is_ignored(parts))


def _check_overlaps(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse members whose data share bytes of the file: the trick behind zip bombs that reach
    enormous sizes with ratios no single member shows. Each member's span is counted from its
    local header with the shortest possible header (no extra field), so a legal zip never trips."""
    spans = []
    for info in infos:
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        name_length = len(info.orig_filename.encode(encoding, errors="replace"))
        end = info.header_offset + _LOCAL_HEADER + name_length + info.compress_size
        spans.append((info.header_offset, end, info.filename))
    spans.sort()
    for (_, previous_end, previous), (start, _, name) in zip(spans, spans[1:], strict=False):
        if start < previous_end:
            raise ArchiveError(f"{name!r} overlaps {previous!r} in the archive")


def _plan_zip(zipped: zipfile.ZipFile, limits: ArchiveLimits,
              marker: str = MANIFEST) -> tuple[list[_Member], tuple[str, ...], int]:
    """All checks the central directory allows, before anything is written: the members, the
    bundle root's components and the declared uncompressed total (the cap while extracting)."""
    infos = zipped.infolist()
    _check_count(len(infos), limits)
    registry = _PathRegistry()
    members = []
    total = compressed = 0
    for info in infos:
        member = _check_zip_member(info, limits)
        registry.add(member.parts, member.is_dir, info.filename)
        members.append(member)
        total += info.file_size
        compressed += info.compress_size
    _check_total(total, limits)
    if total > _RATIO_FLOOR and total / max(compressed, 1) > limits.max_ratio:
        raise ArchiveError(
            f"the bundle has a compression ratio of {total / max(compressed, 1):.0f}, "
            f"more than the limit of {limits.max_ratio:g}"
        )
    _check_overlaps(infos)
    root = _bundle_root(((member.parts, member.is_dir) for member in members if not member.ignored), marker)
    return members, root, total


class _MemberReader:
    """A member's decompressed stream whose decoding failures (bad CRC from a header that lies
    about the size, truncated data) become ArchiveError naming the member."""

    def __init__(self, source: IO[bytes], name: str) -> None:
        self._source = source
        self._name = name

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` decompressed bytes; decoding errors name the member."""
        try:
            return self._source.read(size)
        except _DECODE_ERRORS as exc:
            raise ArchiveError(f"{self._name!r} is corrupt ({exc})") from exc


class _BoundedWriter:
    """Counts the bytes really written and stops at the declared size: the decompressor's output,
    not the header, decides how much lands on disk, so a lying header must not raise the cap."""

    def __init__(self, target: IO[bytes], name: str, declared: int, room: int) -> None:
        self._target = target
        self._name = name
        self._declared = declared
        self._room = room  # what the declared total leaves for this member
        self.written = 0

    def write(self, data: bytes) -> int:
        """Write ``data`` unless it takes the member past its declared size or the bundle past its total."""
        self.written += len(data)
        if self.written > self._declared:
            raise ArchiveError(f"{self._name!r} expands beyond its declared size of {self._declared} bytes")
        if self.written > self._room:
            raise ArchiveError(f"{self._name!r} expands beyond the bundle's declared total size")
        return self._target.write(data)


def _make_folder(path: Path) -> None:
    """A new folder with mode 0o755 whatever the archive or the umask say (mkdir fails if it exists)."""
    os.mkdir(path, _FOLDER_MODE)
    os.chmod(path, _FOLDER_MODE)  # the umask may have removed bits


def _new_file(path: Path) -> IO[bytes]:
    """A new file opened for writing: never an existing one, never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb")


def _write_members(zipped: zipfile.ZipFile, members: list[_Member], dest: Path, total: int) -> None:
    """Write the checked members under ``dest``, streaming each through the byte counter; only
    folders this function made are written into, so no symlink can redirect a write."""
    made: set[tuple[str, ...]] = set()
    written = 0
    for member in members:
        if member.ignored:
            continue
        folder = member.parts if member.is_dir else member.parts[:-1]
        for depth in range(1, len(folder) + 1):
            if folder[:depth] not in made:
                _make_folder(dest.joinpath(*folder[:depth]))
                made.add(folder[:depth])
        if member.is_dir:
            continue
        name = member.info.filename
        try:
            source = zipped.open(member.info)
        except _DECODE_ERRORS as exc:
            raise ArchiveError(f"{name!r} is corrupt ({exc})") from exc
        with source, _new_file(dest.joinpath(*member.parts)) as target:
            writer = _BoundedWriter(target, name, member.info.file_size, total - written)
            shutil.copyfileobj(_MemberReader(source, name), writer, _CHUNK)
        if writer.written != member.info.file_size:  # short data: the header lies the other way
            raise ArchiveError(
                f"{name!r} is corrupt ({writer.written} bytes of data, {member.info.file_size} declared)"
            )
        written += writer.written


def _remove(dest: Path) -> None:
    """Undo a refused extraction: ``dest`` was absent or empty before, so all of it is ours."""
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)


def extract_bundle(archive: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits(), marker: str = MANIFEST) -> Path:
    """Extract a zip into the empty or absent folder `dest`; return the bundle root (the folder
    holding benchmark.yaml, or `marker`: `dest` itself, or its single top-level folder when the zip wraps
    everything in one folder). On any refusal, `dest` is removed again (nothing is left written)
    and ArchiveError raised.

    A `dest` that exists and is not an empty folder raises FileExistsError untouched: that is the
    caller's mistake, not the bundle's, and must not cost anyone their files. Missing parents of
    `dest` are created (and left in place on a refusal: they hold nothing from the bundle)."""
    archive, dest = Path(archive), Path(dest)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise FileExistsError(f"{dest} exists and is not an empty folder")
    try:
        try:
            zipped = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
            raise ArchiveError(f"{archive.name} is not a zip archive") from exc
        with zipped:
            members, root, total = _plan_zip(zipped, limits, marker)
            dest.mkdir(mode=_FOLDER_MODE, parents=True, exist_ok=True)
            os.chmod(dest, _FOLDER_MODE)
            _write_members(zipped, members, dest, total)
    except BaseException:
        _remove(dest)
        raise
    return dest.joinpath(*root)


def check_bundle_folder(root: Path, limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """The same checks for a bundle given as a folder: no symlinks/hardlinked-outside/special
    files (fifos, devices, sockets) anywhere inside, limits on file count/size/depth; returns the
    bundle root (same single-top-folder rule). Nothing is modified.

    A file with several hard links is allowed only when every link is inside the bundle: a link
    to a file elsewhere would let a copy of the bundle carry that file's contents (or let the
    bundle change under its checker). ``.DS_Store`` and ``__MACOSX`` are checked like everything
    else (they are on disk) but ignored when looking for the manifest. The walk never follows a
    link, and stops at the first entry over the count or depth limit, so its work is bounded."""
    root = Path(root)
    if not root.is_dir():
        raise ArchiveError(f"{root} is not a folder")
    registry = _PathRegistry()
    kept: list[tuple[tuple[str, ...], bool]] = []
    linked: dict[tuple[int, int], tuple[int, str]] = {}  # (device, inode) -> (link count, first name)
    seen_links: dict[tuple[int, int], int] = {}  # (device, inode) -> links found inside
    count = total = 0
    pending: list[tuple[str, ...]] = [()]
    while pending:
        folder = pending.pop()
        with os.scandir(root.joinpath(*folder)) as scan:
            items = sorted(scan, key=lambda item: item.name)
        for item in items:
            count += 1
            _check_count(count, limits)
            name = "/".join((*folder, item.name))
            parts = _split_name(name, limits)
            info = item.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise ArchiveError(f"{name!r} is a symlink")
            is_dir = stat.S_ISDIR(info.st_mode)
            if is_dir:
                pending.append(parts)
            elif stat.S_ISREG(info.st_mode):
                _check_size(name, info.st_size, limits)
                total += info.st_size
                _check_total(total, limits)
                if info.st_nlink > 1:
                    inode = (info.st_dev, info.st_ino)
                    linked.setdefault(inode, (info.st_nlink, name))
                    seen_links[inode] = seen_links.get(inode, 0) + 1
            else:
                raise ArchiveError(f"{name!r} is not a regular file ({_kind(info.st_mode)})")
            registry.add(parts, is_dir, name)
            if not _is_ignored(parts):
                kept.append((parts, is_dir))
    for inode, (nlink, name) in linked.items():
        if seen_links[inode] < nlink:
            raise ArchiveError(f"{name!r} is hard-linked to a file outside the bundle")
    return root.joinpath(*_bundle_root(kept))
