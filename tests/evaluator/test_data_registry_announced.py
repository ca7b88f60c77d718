"""CIFAR-10.1 v6 in the registry: announced by git object id, pinned by sha256 once bytes are verified."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from evaluator.data import registry
from evaluator.data.fetch import fetch_dataset, load_dataset
from evaluator.data.registry import DatasetSource, RemoteFile, announce, get_dataset, git_blob_sha1, pin_from_folder
from evaluator.errors import EvaluationError

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("ARENA_DATA_MIRROR", "") or ROOT.parent / "shared" / "data")
#: Commit d9982abb of modestyachts/CIFAR-10.1 ("Update to numpy format version 2.0"): git's ids
#: of datasets/cifar10.1_v6_data.npy and cifar10.1_v6_labels.npy in its tree.
V6_DATA_BLOB = "24349cc5f3fb59648d75cd8015b5a184b1f5c250"
V6_LABELS_BLOB = "e713b09cecf2ecd933970001909fcdec7c907ab0"


@pytest.fixture
def private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registry dicts of this test's own, so that pinning or announcing leaves the real ones alone."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ANNOUNCED", dict(registry._ANNOUNCED))


def test_git_blob_id_is_gits(tmp_path: Path) -> None:
    # git's well-known ids (git hash-object) of the empty blob and of "hello\n".
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    assert git_blob_sha1(probe) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    probe.write_bytes(b"hello\n")
    assert git_blob_sha1(probe) == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_cifar10_1_v6_is_announced_with_the_authors_addresses_and_ids() -> None:
    (source,) = [s for s in registry.announced_datasets() if s.id == "cifar10.1-v6"]
    images, labels = source.file("images"), source.file("labels")
    commit = "d9982abb0bfc4846b8d13a11e66b887d946205d0"
    assert images.url.endswith(f"/modestyachts/CIFAR-10.1/{commit}/datasets/cifar10.1_v6_data.npy")
    assert labels.url.endswith(f"/modestyachts/CIFAR-10.1/{commit}/datasets/cifar10.1_v6_labels.npy")
    assert (images.sha256, images.git_blob_sha1) == ("", V6_DATA_BLOB)  # no published sha256: none invented
    assert labels.git_blob_sha1 == V6_LABELS_BLOB and labels == get_dataset("cifar10.1-v6-labels").file("labels")
    assert source.loader == "npy_pair" and len(source.class_names) == 10
    # The repository's MIT licence explicitly excludes the data folder; the platform stores
    # licences in 200 characters.
    assert source.license.startswith("not MIT") and len(source.license) <= 200
    with pytest.raises(KeyError, match="announced but not yet pinned"):
        get_dataset("cifar10.1-v6")


@pytest.mark.skipif(not (SHARED / "cifar10_1").is_dir(), reason="shared CIFAR-10.1 labels not available")
def test_mirror_labels_are_the_authors_and_missing_images_are_reported(private_registry: None) -> None:
    labels = SHARED / "cifar10_1" / "cifar10.1_v6_labels.npy"
    assert git_blob_sha1(labels) == V6_LABELS_BLOB
    assert hashlib.sha256(labels.read_bytes()).hexdigest() == get_dataset("cifar10.1-v6-labels").file("labels").sha256
    if not (SHARED / "cifar10_1" / "cifar10.1_v6_data.npy").exists():
        with pytest.raises(EvaluationError) as err:
            pin_from_folder("cifar10.1-v6", SHARED)
        assert err.value.code == "data_unavailable" and "cifar10.1_v6_data.npy" in err.value.message


def _announced_toy(folder: Path) -> tuple[DatasetSource, bytes]:
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", np.array([3, 1], dtype=np.int64))
    data = (folder / "images.npy").read_bytes()
    header = f"blob {len(data)}\0".encode()
    source = DatasetSource(
        id="toy-announced", version="1", description="toy", license="none", homepage="https://example.invalid",
        files=(
            RemoteFile("images", "https://example.invalid/images.npy", "", "images.npy",
                       git_blob_sha1=hashlib.sha1(header + data, usedforsecurity=False).hexdigest()),
            RemoteFile("labels", "https://example.invalid/labels.npy",
                       hashlib.sha256((folder / "labels.npy").read_bytes()).hexdigest(), "labels.npy"),
        ),
        loader="npy_pair",
    )  # fmt: skip
    return source, data


def test_pin_from_folder_registers_verified_bytes(private_registry: None, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    source, data = _announced_toy(mirror)
    with pytest.raises(ValueError, match="announce it instead"):
        registry.register(source)
    announce(source)
    with pytest.raises(ValueError, match="already registered or announced"):
        announce(source)
    pinned = pin_from_folder("toy-announced", mirror)
    assert pinned.file("images").sha256 == hashlib.sha256(data).hexdigest()
    assert get_dataset("toy-announced") is pinned and pin_from_folder("toy-announced", mirror) is pinned
    assert "toy-announced" not in {s.id for s in registry.announced_datasets()}
    # From then on it is an ordinary registered dataset for the fetch command.
    fetch_dataset("toy-announced", tmp_path / "dest", mirror=mirror)
    images, labels = load_dataset("toy-announced", tmp_path / "dest")
    assert images.shape == (2, 3, 4, 4) and labels.tolist() == [3, 1]


def test_pin_from_folder_refuses_other_bytes_and_missing_files(private_registry: None, tmp_path: Path) -> None:
    source, data = _announced_toy(tmp_path)
    announce(source)
    (tmp_path / "images.npy").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(EvaluationError) as err:
        pin_from_folder("toy-announced", tmp_path)
    assert err.value.code == "data_integrity" and "git object id" in err.value.message
    (tmp_path / "images.npy").unlink()
    with pytest.raises(EvaluationError) as err:
        pin_from_folder("toy-announced", tmp_path)
    assert err.value.code == "data_unavailable"
    with pytest.raises(KeyError):
        get_dataset("toy-announced")


def test_a_file_needs_a_sha256_or_a_git_id() -> None:
    with pytest.raises(ValueError, match="sha256"):
        RemoteFile("x", "https://example.invalid/x", "", "x")
    with pytest.raises(ValueError, match="git_blob_sha1"):
        RemoteFile("x", "https://example.invalid/x", "", "x", git_blob_sha1="abc")
