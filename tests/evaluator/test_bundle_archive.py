"""Hostile benchmark bundles: every one must be refused with a message naming the member, and a
refused zip must leave nothing behind in the destination.

The zips are built here with :mod:`zipfile` and then edited where an attacker would edit them
(crafted names, Unix mode bits, flag bits, header fields patched with :mod:`struct`), because the
standard writer refuses to produce most of them directly. Limits are passed small so the bomb
and count cases stay fast.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import unicodedata
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest

from evaluator.data.archives import ArchiveError, ArchiveLimits, check_bundle_folder, extract_bundle

MANIFEST = b"name: demo\n"
Member = tuple[str | zipfile.ZipInfo, bytes]


def make_zip(path: Path, members: list[Member], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """A zip holding ``members`` in order (a duplicate name is written as asked, warning muted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns on duplicate names
        with zipfile.ZipFile(path, "w", compression) as zipped:
            for name, data in members:
                zipped.writestr(name, data)
    return path


def info(name: str, mode: int) -> zipfile.ZipInfo:
    """A member with Unix mode bits (type and permissions), as a zip made on Unix carries them."""
    member = zipfile.ZipInfo(name)
    member.create_system = 3
    member.external_attr = mode << 16
    return member


def refusal(archive: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> str:
    """Extraction is refused, ``dest`` is gone afterwards; returns the message."""
    with pytest.raises(ArchiveError) as refused:
        extract_bundle(archive, dest, limits)
    assert not dest.exists(), sorted(dest.rglob("*"))
    return str(refused.value)


def central_entries(data: bytes) -> list[int]:
    """Offsets of the central-directory headers of a zip without zip64 records or comment."""
    eocd = data.rfind(b"PK\x05\x06")
    count, _, start = struct.unpack_from("<HII", data, eocd + 10)
    offsets = []
    for _ in range(count):
        assert data[start : start + 4] == b"PK\x01\x02"
        offsets.append(start)
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, start + 28)
        start += 46 + name_len + extra_len + comment_len
    return offsets


def patch_member(
    path: Path, index: int, *, file_size: int | None = None, crc: int | None = None, offset: int | None = None
) -> None:
    """Rewrite header fields of member ``index`` in both its local and its central header, as an
    attacker with a hex editor would (``offset`` only exists in the central one)."""
    data = bytearray(path.read_bytes())
    central = central_entries(bytes(data))[index]
    local = struct.unpack_from("<I", data, central + 42)[0]
    if crc is not None:
        struct.pack_into("<I", data, central + 16, crc)
        struct.pack_into("<I", data, local + 14, crc)
    if file_size is not None:
        struct.pack_into("<I", data, central + 24, file_size)
        struct.pack_into("<I", data, local + 22, file_size)
    if offset is not None:
        struct.pack_into("<I", data, central + 42, offset)
    path.write_bytes(bytes(data))


# --- good zips ---------------------------------------------------------------------------------


def test_manifest_at_the_top_extracts_with_fixed_modes(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "bundle.zip",
        [
            ("benchmark.yaml", MANIFEST),
            (info("data/", stat.S_IFDIR | 0o777), b""),
            (info("data/labels.csv", stat.S_IFREG | 0o4777), b"a,b\n1,2\n"),  # setuid, world-writable
            ("data/inner.zip", b"PK\x03\x04 a nested archive stays a file"),
            (info("docs/", stat.S_IFREG | 0o600), b""),  # some writers mark folder entries as files
        ],
    )
    dest = tmp_path / "out"
    root = extract_bundle(archive, dest)
    assert root == dest
    assert (root / "benchmark.yaml").read_bytes() == MANIFEST
    assert (root / "data/labels.csv").read_bytes() == b"a,b\n1,2\n"
    assert (root / "data/inner.zip").read_bytes() == b"PK\x03\x04 a nested archive stays a file"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "benchmark.yaml",
        "data",
        "data/inner.zip",
        "data/labels.csv",
        "docs",
    ]
    assert stat.S_IMODE((root / "docs").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "data/labels.csv").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "benchmark.yaml").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "data").stat().st_mode) == 0o755
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755


def test_nested_zip_is_not_extracted(tmp_path: Path) -> None:
    inner = make_zip(tmp_path / "inner.zip", [("../../escape", b"x"), ("benchmark.yaml", MANIFEST)])
    archive = make_zip(tmp_path / "bundle.zip", [("benchmark.yaml", MANIFEST), ("inner.zip", inner.read_bytes())])
    root = extract_bundle(archive, tmp_path / "out")
    assert (root / "inner.zip").read_bytes() == inner.read_bytes()
    assert not (tmp_path / "escape").exists()


def test_single_top_folder_is_the_root_and_macos_litter_is_skipped(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "bundle.zip",
        [
            ("cifar-shift/", b""),
            ("cifar-shift/benchmark.yaml", MANIFEST),
            ("cifar-shift/data/x.npy", b"\x93NUMPY"),
            ("cifar-shift/.DS_Store", b"finder"),
            ("__MACOSX/cifar-shift/._benchmark.yaml", b"resource fork"),
            (".DS_Store", b"finder"),
        ],
    )
    dest = tmp_path / "out"
    root = extract_bundle(archive, dest)
    assert root == dest / "cifar-shift"
    assert (root / "benchmark.yaml").read_bytes() == MANIFEST
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "cifar-shift",
        "cifar-shift/benchmark.yaml",
        "cifar-shift/data",
        "cifar-shift/data/x.npy",
    ]


def test_existing_empty_dest_is_used_and_a_full_one_refused_untouched(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bundle.zip", [("benchmark.yaml", MANIFEST)])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert extract_bundle(archive, empty) == empty
    with pytest.raises(FileExistsError):
        extract_bundle(archive, empty)
    assert (empty / "benchmark.yaml").read_bytes() == MANIFEST


# --- hostile names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("/etc/passwd", "'/etc/passwd' is an absolute path"),
        ("..\\x", "'..\\\\x' contains a backslash"),
        ("data\\..\\..\\x", "contains a backslash"),
        ("C:/x", "'C:/x' starts with a drive letter"),
        ("c:x", "'c:x' starts with a drive letter"),
        ("../x", "'../x' has a '..' component"),
        ("data/../../x", "'data/../../x' has a '..' component"),
        ("data/..", "has a '..' component"),
        ("a\nb", "'a\\nb' contains a control character"),
        ("./", "'./' has an empty name"),
    ],
)
def test_escaping_names_are_refused(tmp_path: Path, name: str, phrase: str) -> None:
    archive = make_zip(tmp_path / "bundle.zip", [("benchmark.yaml", MANIFEST), (zipfile.ZipInfo(name), b"x")])
    assert phrase in refusal(archive, tmp_path / "out")
    assert not (tmp_path / "x").exists() and not Path("/x").exists()


@pytest.mark.parametrize(
    ("first", "second", "phrase"),
    [
        ("data/a.png", "data/a.png", "'data/a.png' duplicates 'data/a.png'"),
        ("data/A.png", "data/a.png", "'data/a.png' duplicates 'data/A.png' (names equal ignoring case)"),
        ("Data/x.png", "data/y.png", "'data/y.png' duplicates 'Data/x.png' (names equal ignoring case)"),
        ("data/a.png", "data//./a.png", "'data//./a.png' duplicates 'data/a.png'"),
        (
            unicodedata.normalize("NFC", "caf\u00e9.csv"),
            unicodedata.normalize("NFD", "caf\u00e9.csv"),
            "(names equal ignoring case)",
        ),
        ("data", "data/a.png", "'data/a.png' collides with 'data' (one is a file, the other a folder)"),
        ("data/a.png", "data", "'data' collides with 'data/a.png' (one is a file, the other a folder)"),
    ],
)
def test_duplicates_are_refused(tmp_path: Path, first: str, second: str, phrase: str) -> None:
    archive = make_zip(
        tmp_path / "bundle.zip",
        [("benchmark.yaml", MANIFEST), (zipfile.ZipInfo(first), b"1"), (zipfile.ZipInfo(second), b"2")],
    )
    assert phrase in refusal(archive, tmp_path / "out")


# --- member types and flags --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "phrase"),
    [
        (stat.S_IFLNK | 0o777, "'data/link' is a symlink"),
        (stat.S_IFIFO | 0o644, "'data/link' is not a regular file (fifo)"),
        (stat.S_IFCHR | 0o644, "'data/link' is not a regular file (character device)"),
        (stat.S_IFBLK | 0o644, "'data/link' is not a regular file (block device)"),
        (stat.S_IFSOCK | 0o644, "'data/link' is not a regular file (socket)"),
        (stat.S_IFDIR | 0o755, "'data/link' is not a regular file (folder)"),
    ],
)
def test_links_and_special_files_are_refused(tmp_path: Path, mode: int, phrase: str) -> None:
    archive = make_zip(
        tmp_path / "bundle.zip", [("benchmark.yaml", MANIFEST), (info("data/link", mode), b"/etc/passwd")]
    )
    assert phrase in refusal(archive, tmp_path / "out")


def test_symlinked_folder_entry_is_refused(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "bundle.zip", [("benchmark.yaml", MANIFEST), (info("data/", stat.S_IFLNK | 0o777), b"")]
    )
    assert "'data/' is a symlink" in refusal(archive, tmp_path / "out")


def test_encrypted_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("benchmark.yaml", MANIFEST)
        zipped.writestr("secret.bin", b"ciphertext")
        zipped.infolist()[-1].flag_bits |= 0x1  # the central directory is written from this at close
    assert "'secret.bin' is encrypted" in refusal(path, tmp_path / "out")


def test_unknown_compression_method_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("benchmark.yaml", MANIFEST)
        zipped.writestr("data.bin", b"data")
        zipped.infolist()[-1].compress_type = 9  # Deflate64, which the standard library cannot read
    assert "'data.bin' uses an unsupported compression method (9)" in refusal(path, tmp_path / "out")


# --- counts, depth, sizes, bombs ---------------------------------------------------------------


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    members: list[Member] = [("benchmark.yaml", MANIFEST)] + [(f"f{i}.txt", b"x") for i in range(5)]
    archive = make_zip(tmp_path / "bundle.zip", members)
    limits = ArchiveLimits(max_files=5)
    assert refusal(archive, tmp_path / "out", limits) == "the bundle has more than 5 files and folders"
    assert extract_bundle(archive, tmp_path / "ok", ArchiveLimits(max_files=6)) == tmp_path / "ok"


def test_deep_member_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bundle.zip", [("benchmark.yaml", MANIFEST), ("a/b/c/d/e.txt", b"x")])
    message = refusal(archive, tmp_path / "out", ArchiveLimits(max_depth=4))
    assert message == "'a/b/c/d/e.txt' is 5 levels deep, more than the limit of 4"
    assert extract_bundle(archive, tmp_path / "ok", ArchiveLimits(max_depth=5)) == tmp_path / "ok"


def test_default_depth_limit(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bundle.zip", [("benchmark.yaml", MANIFEST), ("d/" * 16 + "x", b"x")])
    assert "17 levels deep, more than the limit of 16" in refusal(archive, tmp_path / "out")


def test_declared_sizes_over_the_limits_are_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "big.zip", [("benchmark.yaml", MANIFEST), ("big.bin", os.urandom(2000))])
    message = refusal(archive, tmp_path / "out", ArchiveLimits(max_member_bytes=1000))
    assert message == "'big.bin' is 2000 bytes, more than the per-file limit of 1000 bytes"

    members: list[Member] = [("benchmark.yaml", MANIFEST)] + [(f"{i}.bin", os.urandom(600)) for i in range(3)]
    archive = make_zip(tmp_path / "total.zip", members)
    message = refusal(archive, tmp_path / "out", ArchiveLimits(max_total_bytes=1500))
    assert message == f"the bundle is {1800 + len(MANIFEST)} bytes uncompressed, more than the limit of 1500 bytes"


def test_highly_compressed_member_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", [("benchmark.yaml", MANIFEST), ("zeros.bin", bytes(4 << 20))])
    message = refusal(archive, tmp_path / "out")
    assert message.startswith("'zeros.bin' has a compression ratio of ")
    assert message.endswith(", more than the limit of 200")
    # Members up to 1 MiB compress as they like (the total ratio still counts them).
    archive = make_zip(
        tmp_path / "small.zip",
        [("benchmark.yaml", MANIFEST), ("zeros.bin", bytes(1 << 20)), ("noise.bin", os.urandom(100_000))],
    )
    assert extract_bundle(archive, tmp_path / "ok") == tmp_path / "ok"


def test_many_small_compressible_members_are_refused_by_the_total_ratio(tmp_path: Path) -> None:
    members: list[Member] = [("benchmark.yaml", MANIFEST)] + [(f"{i}.bin", bytes(600 << 10)) for i in range(4)]
    archive = make_zip(tmp_path / "bomb.zip", members)
    message = refusal(archive, tmp_path / "out")
    assert message.startswith("the bundle has a compression ratio of ")
    assert message.endswith(", more than the limit of 200")


def test_header_understating_the_size_is_refused_after_partial_writes(tmp_path: Path) -> None:
    """The classic lying header: the directory says 1000 bytes (so no ratio or size check fires)
    while the data inflates to 4 MiB. The bytes past the declared size are never written, and
    the checksum of what was kept fails; the manifest already written is removed again."""
    archive = make_zip(tmp_path / "liar.zip", [("benchmark.yaml", MANIFEST), ("zeros.bin", bytes(4 << 20))])
    patch_member(archive, 1, file_size=1000)
    message = refusal(archive, tmp_path / "out")
    assert message.startswith("'zeros.bin' is corrupt (")


def test_header_understating_the_size_with_a_matching_checksum_writes_only_the_declared_size(tmp_path: Path) -> None:
    """Even with a forged checksum, what reaches the disk is what the checked header declared."""
    archive = make_zip(tmp_path / "liar.zip", [("benchmark.yaml", MANIFEST), ("zeros.bin", bytes(4 << 20))])
    patch_member(archive, 1, file_size=1000, crc=zlib.crc32(bytes(1000)))
    root = extract_bundle(archive, tmp_path / "out")
    assert (root / "zeros.bin").stat().st_size == 1000


def test_header_overstating_the_size_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "liar.zip", [("benchmark.yaml", MANIFEST), ("data.bin", os.urandom(5000))])
    patch_member(archive, 1, file_size=6000)
    assert refusal(archive, tmp_path / "out") == "'data.bin' is corrupt (5000 bytes of data, 6000 declared)"


def test_output_is_counted_whatever_the_decompressor_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The byte count is ours, not zipfile's: a reader that returns more than the header declared
    (a future zipfile that stops truncating, a decoder bug) is stopped at the declared size."""
    archive = make_zip(tmp_path / "bundle.zip", [("benchmark.yaml", MANIFEST), ("data.bin", b"0123456789")])
    real_open = zipfile.ZipFile.open

    def generous_open(self: zipfile.ZipFile, name: zipfile.ZipInfo | str, *args: object, **kwargs: object) -> object:
        member = self.getinfo(name) if isinstance(name, str) else name
        if member.filename == "data.bin":
            return io.BytesIO(bytes(3 << 20))
        return real_open(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(zipfile.ZipFile, "open", generous_open)
    assert refusal(archive, tmp_path / "out") == "'data.bin' expands beyond its declared size of 10 bytes"


def test_overlapping_members_are_refused(tmp_path: Path) -> None:
    """Several directory entries sharing one stretch of data: the non-recursive zip bomb."""
    archive = make_zip(
        tmp_path / "overlap.zip",
        [("benchmark.yaml", MANIFEST), ("a.bin", os.urandom(100)), ("b.bin", os.urandom(100))],
    )
    first = struct.unpack_from("<I", archive.read_bytes(), central_entries(archive.read_bytes())[1] + 42)[0]
    patch_member(archive, 2, offset=first)
    assert refusal(archive, tmp_path / "out") == "'b.bin' overlaps 'a.bin' in the archive"


# --- not a bundle ------------------------------------------------------------------------------


def test_non_zip_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("benchmark.yaml\n")
    assert refusal(text, tmp_path / "out") == "notes.txt is not a zip archive"
    good = make_zip(tmp_path / "bundle.zip", [("benchmark.yaml", MANIFEST), ("data.bin", os.urandom(4000))])
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:2000])
    assert refusal(truncated, tmp_path / "out") == "truncated.zip is not a zip archive"


@pytest.mark.parametrize(
    "names",
    [
        ["data.csv"],
        ["a/b/benchmark.yaml"],
        ["one/benchmark.yaml", "two/data.csv"],
        ["one/benchmark.yaml", "readme.txt"],
        ["Benchmark.yaml"],
        ["__MACOSX/benchmark.yaml", "data.csv"],
        ["benchmark.yaml/", "data.csv"],
    ],
)
def test_bundle_without_manifest_at_the_top_is_refused(tmp_path: Path, names: list[str]) -> None:
    archive = make_zip(tmp_path / "bundle.zip", [(name, b"" if name.endswith("/") else MANIFEST) for name in names])
    assert refusal(archive, tmp_path / "out") == "no benchmark.yaml at the top of the bundle"


# --- folders -----------------------------------------------------------------------------------


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    return sorted((p.relative_to(root).as_posix(), p.lstat().st_mode, p.lstat().st_mtime_ns) for p in root.rglob("*"))


def test_folder_bundle_at_the_top_and_wrapped(tmp_path: Path) -> None:
    top = write_tree(tmp_path / "top", {"benchmark.yaml": MANIFEST, "data/x.csv": b"1", ".DS_Store": b""})
    before = snapshot(top)
    assert check_bundle_folder(top) == top
    assert snapshot(top) == before
    wrapped = write_tree(
        tmp_path / "wrapped",
        {"bench/benchmark.yaml": MANIFEST, "bench/data/x.csv": b"1", ".DS_Store": b"", "__MACOSX/._x": b""},
    )
    assert check_bundle_folder(wrapped) == wrapped / "bench"


def test_folder_hard_links_inside_are_fine_outside_refused(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "bundle", {"benchmark.yaml": MANIFEST, "a.bin": b"data"})
    os.link(root / "a.bin", root / "b.bin")
    assert check_bundle_folder(root) == root
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"secret")
    os.link(outside, root / "c.txt")
    with pytest.raises(ArchiveError, match=r"^'c.txt' is hard-linked to a file outside the bundle$"):
        check_bundle_folder(root)


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (lambda root: os.symlink("/etc/passwd", root / "data/passwd"), "'data/passwd' is a symlink"),
        (lambda root: os.symlink("/etc", root / "data/etc"), "'data/etc' is a symlink"),
        (lambda root: os.mkfifo(root / "data/pipe"), "'data/pipe' is not a regular file (fifo)"),
        (lambda root: (root / "data/A.csv").write_bytes(b"2"), "(names equal ignoring case)"),
        (lambda root: (root / "data/back\\slash").write_bytes(b""), "contains a backslash"),
    ],
)
def test_hostile_folder_entries_are_refused(tmp_path: Path, make: object, phrase: str) -> None:
    root = write_tree(tmp_path / "bundle", {"benchmark.yaml": MANIFEST, "data/a.csv": b"1"})
    make(root)  # type: ignore[operator]
    before = snapshot(root)
    with pytest.raises(ArchiveError) as refused:
        check_bundle_folder(root)
    assert phrase in str(refused.value)
    assert snapshot(root) == before


def test_folder_limits(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "bundle", {"benchmark.yaml": MANIFEST, "a/b/c/d.bin": b"x" * 100})
    # Entries: benchmark.yaml, a, a/b, a/b/c, a/b/c/d.bin.
    with pytest.raises(ArchiveError, match="^the bundle has more than 4 files and folders$"):
        check_bundle_folder(root, ArchiveLimits(max_files=4))
    with pytest.raises(ArchiveError, match=r"^'a/b/c/d.bin' is 4 levels deep, more than the limit of 3$"):
        check_bundle_folder(root, ArchiveLimits(max_depth=3))
    with pytest.raises(ArchiveError, match=r"^'a/b/c/d.bin' is 100 bytes, more than the per-file limit of 50 bytes$"):
        check_bundle_folder(root, ArchiveLimits(max_member_bytes=50))
    with pytest.raises(ArchiveError, match="^the bundle is .* bytes uncompressed, more than the limit of 100 bytes$"):
        check_bundle_folder(root, ArchiveLimits(max_total_bytes=100))
    assert check_bundle_folder(root, ArchiveLimits(max_files=5, max_depth=4, max_total_bytes=200)) == root


def test_folder_without_manifest_or_not_a_folder(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "bundle", {"one/benchmark.yaml": MANIFEST, "two/x": b""})
    with pytest.raises(ArchiveError, match="^no benchmark.yaml at the top of the bundle$"):
        check_bundle_folder(root)
    with pytest.raises(ArchiveError, match="is not a folder$"):
        check_bundle_folder(root / "one/benchmark.yaml")
