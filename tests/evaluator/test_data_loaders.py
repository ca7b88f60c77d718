"""Loaders on the real shared files and on tiny data made here."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluator.data import loaders
from evaluator.errors import EvaluationError
from tests.shared_paths import SHARED_DATA, needs_shared

SHARED = SHARED_DATA

# Per-class counts of the MNIST test set (LeCun's files).
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@needs_shared
def test_mnist_test_set() -> None:
    images, labels = loaders.load_idx_pair(
        SHARED / "mnist/t10k-images-idx3-ubyte.gz", SHARED / "mnist/t10k-labels-idx1-ubyte.gz"
    )
    assert images.shape == (10000, 1, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels).tolist() == MNIST_TEST_COUNTS
    # White digit on black: the border is background.
    assert np.median(images) == 0 and images[:, :, 0, :].max() == 0


@needs_shared
def test_usps_splits_and_polarity() -> None:
    images, labels = loaders.load_usps_hdf5(SHARED / "usps/usps.h5")
    assert images.shape == (2007, 1, 16, 16) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(np.unique(labels)) == set(range(10))
    # MNIST polarity: dark background (median 0), bright strokes in the middle.
    assert np.median(images) == 0
    assert images[:, :, 6:10, 6:10].mean() > images[:, :, 0, :].mean()
    train, _ = loaders.load_usps_hdf5(SHARED / "usps/usps.h5", split="train")
    assert train.shape == (7291, 1, 16, 16)
    with pytest.raises(EvaluationError) as err:
        loaders.load_usps_hdf5(SHARED / "usps/usps.h5", split="valid")
    assert err.value.code == "data_integrity"


@needs_shared
def test_cifar_jpeg_folder_subset(tmp_path: Path) -> None:
    source = SHARED / "cifar10_jpeg/test"
    for class_dir in sorted(source.iterdir()):
        (tmp_path / class_dir.name).mkdir()
        for image in sorted(class_dir.iterdir())[:5]:
            shutil.copyfile(image, tmp_path / class_dir.name / image.name)
    images, labels, names = loaders.load_image_folder(tmp_path)
    assert names[:3] == ["airplane", "automobile", "bird"] and len(names) == 10
    assert images.shape == (50, 3, 32, 32) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [5] * 10


@pytest.mark.slow
@needs_shared
def test_cifar_jpeg_folder_full() -> None:
    images, labels, names = loaders.load_image_folder(SHARED / "cifar10_jpeg/test")
    assert images.shape == (10000, 3, 32, 32)
    assert np.bincount(labels).tolist() == [1000] * 10
    assert names[-1] == "truck"


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_idx_raw_and_gzip(tmp_path: Path) -> None:
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([2, 0, 1], dtype=np.uint8)
    (tmp_path / "img").write_bytes(_idx_bytes(images))
    (tmp_path / "lbl.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    got_images, got_labels = loaders.load_idx_pair(tmp_path / "img", tmp_path / "lbl.gz")
    np.testing.assert_array_equal(got_images[:, 0], images)
    assert got_labels.tolist() == [2, 0, 1] and got_labels.dtype == np.int64


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda raw: b"\x08\x03" + raw[2:], "magic number"),  # corrupted magic
        (lambda raw: raw[:2] + b"\x42" + raw[3:], "magic number"),  # unknown type code
        (lambda raw: raw[:3] + b"\x02" + raw[4:], "dimensions"),  # wrong ndim
        (lambda raw: raw[:-7], "data bytes"),  # truncated
    ],
)
def test_idx_rejects_corrupt_files(tmp_path: Path, mutate, needle: str) -> None:
    images = np.zeros((2, 3, 3), dtype=np.uint8)
    (tmp_path / "img").write_bytes(mutate(_idx_bytes(images)))
    (tmp_path / "lbl").write_bytes(_idx_bytes(np.zeros(2, dtype=np.uint8)))
    with pytest.raises(EvaluationError) as err:
        loaders.load_idx_pair(tmp_path / "img", tmp_path / "lbl")
    assert err.value.code == "data_integrity" and needle in err.value.message


def test_idx_count_mismatch(tmp_path: Path) -> None:
    (tmp_path / "img").write_bytes(_idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8)))
    (tmp_path / "lbl").write_bytes(_idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(EvaluationError, match="2 images but"):
        loaders.load_idx_pair(tmp_path / "img", tmp_path / "lbl")


def test_image_folder_tiny(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = {}
    for name, count in (("zebra", 2), ("ant", 1)):
        (tmp_path / name).mkdir()
        for i in range(count):
            array = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
            Image.fromarray(array, mode="RGB").save(tmp_path / name / f"{i}.png")
            pixels[(name, i)] = array
    (tmp_path / "ant" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "ant" / "notes.txt").write_text("ignored")
    images, labels, names = loaders.load_image_folder(tmp_path)
    assert names == ["ant", "zebra"]  # sorted: class index = position
    assert labels.tolist() == [0, 1, 1]
    assert images.shape == (3, 3, 6, 5)
    np.testing.assert_array_equal(images[0], pixels[("ant", 0)].transpose(2, 0, 1))
    np.testing.assert_array_equal(images[2], pixels[("zebra", 1)].transpose(2, 0, 1))


def test_image_folder_grayscale_and_mismatch(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((4, 4), 7, dtype=np.uint8), mode="L").save(tmp_path / "a" / "0.png")
    images, _, _ = loaders.load_image_folder(tmp_path)
    assert images.shape == (1, 1, 4, 4) and images.max() == 7
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8), mode="RGB").save(tmp_path / "a" / "1.png")
    with pytest.raises(EvaluationError, match="has shape"):
        loaders.load_image_folder(tmp_path)


def test_npy_layouts(tmp_path: Path) -> None:
    nchw = np.random.default_rng(1).integers(0, 256, size=(4, 3, 5, 6), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3], dtype=np.int32)
    np.save(tmp_path / "y.npy", labels)
    np.save(tmp_path / "nhwc.npy", nchw.transpose(0, 2, 3, 1))
    np.save(tmp_path / "nchw_float.npy", nchw.astype(np.float32) / 255.0)
    for name in ("nhwc.npy", "nchw_float.npy"):
        images, got = loaders.load_npy(tmp_path / name, tmp_path / "y.npy")
        np.testing.assert_array_equal(images, nchw)
        assert images.dtype == np.uint8 and got.dtype == np.int64
    np.save(tmp_path / "gray.npy", nchw[:, 0])
    assert loaders.load_npy(tmp_path / "gray.npy", tmp_path / "y.npy")[0].shape == (4, 1, 5, 6)


def test_npy_rejects_bad_input(tmp_path: Path) -> None:
    np.save(tmp_path / "y.npy", np.arange(4))
    np.save(tmp_path / "big.npy", np.full((4, 1, 2, 2), 2.0, dtype=np.float32))
    with pytest.raises(EvaluationError, match=r"expected values in \[0, 1\]"):
        loaders.load_npy(tmp_path / "big.npy", tmp_path / "y.npy")
    np.save(tmp_path / "short.npy", np.zeros((3, 1, 2, 2), dtype=np.uint8))
    with pytest.raises(EvaluationError, match="3 images but"):
        loaders.load_npy(tmp_path / "short.npy", tmp_path / "y.npy")
    np.save(tmp_path / "odd.npy", np.zeros((4, 5, 2, 2), dtype=np.uint8))
    with pytest.raises(EvaluationError, match="channels"):
        loaders.load_npy(tmp_path / "odd.npy", tmp_path / "y.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(EvaluationError):  # pickles are never loaded
        loaders.load_npy(tmp_path / "obj.npy", tmp_path / "y.npy")
