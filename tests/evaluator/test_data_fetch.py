"""Registry, fetch (mirror, download, folders) and load_dataset, with hash checks."""

from __future__ import annotations

import functools
import http.server
import io
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from evaluator.data import fetch as fetch_module
from evaluator.data import registry
from evaluator.data.fetch import fetch_dataset, load_dataset, load_labels
from evaluator.data.integrity import sha256_file, tree_sha256
from evaluator.data.registry import DatasetSource, RemoteFile, get_dataset, list_datasets
from evaluator.errors import EvaluationError
from tests.shared_paths import SHARED_DATA, needs_shared

SHARED = SHARED_DATA


def _files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_registry_contents() -> None:
    ids = [source.id for source in list_datasets()]
    assert {"mnist-test", "usps", "cifar10-jpeg-test", "cifar10.1-v6-labels"} <= set(ids)
    assert ids == sorted(ids)
    mnist = get_dataset("mnist-test")
    assert mnist.file("images").sha256 == "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b"
    for source in list_datasets():
        for remote in source.files:
            assert remote.url.startswith("https://")
    with pytest.raises(KeyError, match="registered"):
        get_dataset("imagenet")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(mnist)


@needs_shared
def test_registered_hashes_match_the_mirror() -> None:
    for source in list_datasets():
        for remote in source.files:
            path = SHARED / remote.mirror_path
            if remote.kind == "folder":
                continue  # hashed in test_fetch_folder_from_mirror (slow)
            assert sha256_file(path) == remote.sha256, remote.mirror_path


@needs_shared
def test_fetch_from_mirror_then_load(tmp_path: Path) -> None:
    dest = tmp_path / "data"
    assert fetch_dataset("mnist-test", dest, mirror=SHARED) == dest
    assert _files_under(dest) == ["mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"]
    stamp = (dest / "mnist/t10k-images-idx3-ubyte.gz").stat().st_mtime_ns
    fetch_dataset("mnist-test", dest, mirror=SHARED)  # already there: nothing is copied again
    assert (dest / "mnist/t10k-images-idx3-ubyte.gz").stat().st_mtime_ns == stamp
    images, labels = load_dataset("mnist-test", dest)
    assert images.shape == (10000, 1, 28, 28) and labels[:3].tolist() == [7, 2, 1]


@needs_shared
def test_fetch_uses_env_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch_module.MIRROR_ENV, str(SHARED))
    fetch_dataset("usps", tmp_path)
    images, labels = load_dataset("usps", tmp_path)
    assert images.shape == (2007, 1, 16, 16) and labels.shape == (2007,)
    fetch_dataset("cifar10.1-v6-labels", tmp_path)
    labels = load_labels("cifar10.1-v6-labels", tmp_path)
    assert labels.shape == (2000,) and np.bincount(labels).tolist() == [200] * 10
    with pytest.raises(EvaluationError, match="labels only"):
        load_dataset("cifar10.1-v6-labels", tmp_path)


@needs_shared
def test_tampered_mirror_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(SHARED / "mnist", mirror / "mnist")
    labels = mirror / "mnist/t10k-labels-idx1-ubyte.gz"
    labels.chmod(0o644)
    raw = bytearray(labels.read_bytes())
    raw[100] ^= 0xFF
    labels.write_bytes(bytes(raw))
    dest = tmp_path / "dest"
    with pytest.raises(EvaluationError) as err:
        fetch_dataset("mnist-test", dest, mirror=mirror)
    remote = get_dataset("mnist-test").file("labels")
    assert err.value.code == "data_integrity" and err.value.platform_fault
    assert remote.mirror_path in err.value.message
    assert remote.sha256 in err.value.message and sha256_file(labels) in err.value.message
    # The good images file may be in place; the tampered labels file and temporaries are not.
    assert _files_under(dest) == ["mnist/t10k-images-idx3-ubyte.gz"]


@needs_shared
def test_load_dataset_detects_later_tampering(tmp_path: Path) -> None:
    fetch_dataset("cifar10.1-v6-labels", tmp_path, mirror=SHARED)
    target = tmp_path / get_dataset("cifar10.1-v6-labels").file("labels").mirror_path
    raw = bytearray(target.read_bytes())
    raw[-4] ^= 0x01  # one label changes
    target.write_bytes(bytes(raw))
    with pytest.raises(EvaluationError, match="expected ae40beda"):
        load_labels("cifar10.1-v6-labels", tmp_path)
    fetch_dataset("cifar10.1-v6-labels", tmp_path, mirror=SHARED)  # repaired by a new fetch
    assert load_labels("cifar10.1-v6-labels", tmp_path).shape == (2000,)


@pytest.mark.slow
@needs_shared
def test_fetch_folder_from_mirror(tmp_path: Path) -> None:
    fetch_dataset("cifar10-jpeg-test", tmp_path, mirror=SHARED)
    folder = tmp_path / "cifar10_jpeg/test"
    assert tree_sha256(folder) == get_dataset("cifar10-jpeg-test").file("test").sha256
    assert len(_files_under(folder)) == 10000
    assert [p.name for p in tmp_path.joinpath("cifar10_jpeg").iterdir()] == ["test"]  # no temporaries


# --- a tiny registered dataset, served over HTTP from a local folder ----------------------------


def _tiny_tree(root: Path) -> None:
    for name, payload in (("cats/0.bin", b"meow"), ("dogs/0.bin", b"woof"), ("dogs/1.bin", b"")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean."""


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _register_tiny(monkeypatch: pytest.MonkeyPatch, base_url: str, tree_hash: str, file_hash: str) -> None:
    source = DatasetSource(
        id="tiny-test",
        version="1",
        description="test only",
        license="none",
        homepage="",
        files=(
            RemoteFile(name="blob", url=f"{base_url}/blob.bin", sha256=file_hash, mirror_path="tiny/blob.bin"),
            RemoteFile(
                name="tree",
                url=f"{base_url}/repo.tar.gz",
                sha256=tree_hash,
                mirror_path="tiny/tree",
                kind="folder",
                archive_member="test",
            ),
        ),
        loader="npy_pair",
    )
    monkeypatch.setitem(registry._REGISTRY, source.id, source)


def test_download_and_extract_archive(tmp_path: Path, http_root: tuple[Path, str], monkeypatch) -> None:
    served, base_url = http_root
    monkeypatch.delenv(fetch_module.MIRROR_ENV, raising=False)
    expected = tmp_path / "expected"
    _tiny_tree(expected)
    (served / "blob.bin").write_bytes(b"blob-bytes")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(expected, arcname="repo-abc123/test")
        tar.add(served / "blob.bin", arcname="repo-abc123/train/ignored.bin")
        tar.add(served / "blob.bin", arcname="../escape.bin")
    (served / "repo.tar.gz").write_bytes(buffer.getvalue())
    _register_tiny(monkeypatch, base_url, tree_sha256(expected), sha256_file(served / "blob.bin"))

    dest = tmp_path / "dest"
    fetch_dataset("tiny-test", dest)
    assert _files_under(dest) == [
        "tiny/blob.bin",
        "tiny/tree/cats/0.bin",
        "tiny/tree/dogs/0.bin",
        "tiny/tree/dogs/1.bin",
    ]
    assert not (tmp_path / "escape.bin").exists()

    # The server now serves a different tree: refused, the good copy stays, no temporaries.
    shutil.rmtree(dest / "tiny/tree")
    (expected / "cats/0.bin").write_bytes(b"purr")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(expected, arcname="repo-abc123/test")
    (served / "repo.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(EvaluationError) as err:
        fetch_dataset("tiny-test", dest)
    assert err.value.code == "data_integrity" and "repo.tar.gz" in err.value.message
    assert _files_under(dest) == ["tiny/blob.bin"]
    assert [p.name for p in (dest / "tiny").iterdir()] == ["blob.bin"]


def test_download_mismatch_and_unreachable(tmp_path: Path, http_root: tuple[Path, str], monkeypatch) -> None:
    served, base_url = http_root
    monkeypatch.delenv(fetch_module.MIRROR_ENV, raising=False)
    (served / "blob.bin").write_bytes(b"tampered")
    _register_tiny(monkeypatch, base_url, "0" * 64, sha256_file(served / "blob.bin").replace("a", "b", 1))
    dest = tmp_path / "dest"
    with pytest.raises(EvaluationError) as err:
        fetch_dataset("tiny-test", dest)
    assert err.value.code == "data_integrity" and "tiny/blob.bin" in err.value.message
    assert _files_under(dest) == []
    (served / "blob.bin").unlink()
    with pytest.raises(EvaluationError) as err:
        fetch_dataset("tiny-test", dest)
    assert err.value.code == "data_unavailable" and _files_under(dest) == []


def test_gzip_content_hash_accepts_other_compression(tmp_path: Path, monkeypatch) -> None:
    import gzip

    payload = b"idx-bytes" * 100
    original = tmp_path / "mirror/x/data.gz"
    original.parent.mkdir(parents=True)
    original.write_bytes(gzip.compress(payload, mtime=0))
    other = gzip.compress(payload, compresslevel=1, mtime=12345)
    content_hash = __import__("hashlib").sha256(payload).hexdigest()
    source = DatasetSource(
        id="gz-test",
        version="1",
        description="",
        license="",
        homepage="",
        files=(
            RemoteFile(
                name="data",
                url="https://example.invalid/data.gz",
                sha256=sha256_file(original),
                content_sha256=content_hash,
                mirror_path="x/data.gz",
            ),
        ),
        loader="npy_pair",
    )
    monkeypatch.setitem(registry._REGISTRY, source.id, source)
    original.write_bytes(other)  # the mirror now holds a differently compressed copy
    fetch_dataset("gz-test", tmp_path / "dest", mirror=tmp_path / "mirror")
    assert (tmp_path / "dest/x/data.gz").read_bytes() == other


def test_zip_archive_member_extraction(tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "repo.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("repo-main/test/a/0.jpg", b"x")
        zipped.writestr("repo-main/test/b/", b"")
        zipped.writestr("repo-main/testing/c.jpg", b"not under test/")
        zipped.writestr("repo-main/train/a/0.jpg", b"y")
    staging = tmp_path / "out"
    staging.mkdir()
    fetch_module._extract_member(archive, "test", staging)
    assert _files_under(staging) == ["a/0.jpg"]
