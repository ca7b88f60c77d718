"""Streaming readers of uploaded data sets: same pixels as the whole-array loaders, constant memory, clear refusals."""

from __future__ import annotations

import gzip
import os
import struct
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from evaluator.data import loaders
from evaluator.data.streams import LAYOUTS, SPEC_KEYS, ImageStream, StreamError, open_stream


def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _labels(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, n).astype(np.int64)


def _gather(chunks: object) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate chunks, checking what every chunk promises on the way."""
    images, labels = [], []
    for chunk_images, chunk_labels in chunks:  # type: ignore[attr-defined]
        assert chunk_images.dtype == np.uint8 and chunk_images.flags.c_contiguous and chunk_images.flags.writeable
        assert type(chunk_images) is np.ndarray
        assert chunk_labels.dtype == np.int64 and chunk_labels.shape == (chunk_images.shape[0],)
        images.append(chunk_images)
        labels.append(chunk_labels)
    return np.concatenate(images), np.concatenate(labels)


def _check_stream(stream: ImageStream, images: np.ndarray, labels: np.ndarray, size: int = 7) -> None:
    """Chunks, labels and take of ``stream`` against the arrays it should hold (NCHW uint8)."""
    assert stream.count == images.shape[0] and stream.shape == images.shape[1:]
    got_images, got_labels = _gather(stream.chunks(size))
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert all(chunk.shape[0] <= size for chunk, _ in stream.chunks(size))
    np.testing.assert_array_equal(stream.labels(), labels)
    assert stream.labels().dtype == np.int64
    # Re-iterable: a second pass gives the same.
    np.testing.assert_array_equal(_gather(stream.chunks(size + 3))[0], images)
    rng = np.random.default_rng(7)
    for fraction in (0.05, 0.5, 1.0):
        subset = np.sort(rng.choice(stream.count, max(1, int(stream.count * fraction)), replace=False))
        sub_images, sub_labels = _gather(stream.take(subset, size))
        np.testing.assert_array_equal(sub_images, images[subset])
        np.testing.assert_array_equal(sub_labels, labels[subset])
        assert all(chunk.shape[0] <= size for chunk, _ in stream.take(subset, size))
    assert list(stream.take(np.zeros(0, dtype=np.int64))) == []


def _stored(nchw: np.ndarray, axes: str) -> np.ndarray:
    """NCHW images as a file stores them in ``axes`` order."""
    if axes == "nhwc":
        return np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
    if axes == "nhw":
        return np.ascontiguousarray(nchw[:, 0])
    return nchw


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    data = struct.pack(">HBB", 0, codes[array.dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype).tobytes()
    path.write_bytes(gzip.compress(data, compresslevel=1) if compress else data)


def _write_png(path: Path, chw: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)
    Image.fromarray(array).save(path, format=fmt)


def _npy(tmp_path: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    return {"images": "images.npy", "labels": "labels.npy"}


# --- Array layouts: the same pixels as the loaders ---------------------------------------------------------------


@pytest.mark.parametrize("axes", ["nchw", "nhwc", "nhw"])
def test_npy_matches_loader(tmp_path: Path, axes: str) -> None:
    shape = (1, 6, 5) if axes == "nhw" else (3, 6, 5)
    images, labels = _images(40, shape), _labels(40)
    spec = _npy(tmp_path, _stored(images, axes), labels.astype(np.int32))
    stream = open_stream("npy", tmp_path, spec, shape)
    _check_stream(stream, images, labels)
    whole, whole_labels = loaders.load_npy(tmp_path / "images.npy", tmp_path / "labels.npy")
    np.testing.assert_array_equal(_gather(stream.chunks(16))[0], whole)
    np.testing.assert_array_equal(stream.labels(), whole_labels)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("axes", ["nchw", "nhwc"])
def test_npz_stored_and_deflated(tmp_path: Path, compressed: bool, axes: str) -> None:
    images, labels = _images(45, (3, 4, 6)), _labels(45)
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "x.npz", x_test=_stored(images, axes), y_test=labels.astype(np.uint8))
    with zipfile.ZipFile(tmp_path / "x.npz") as archive:  # the test exercises what it says
        wanted = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
        assert {info.compress_type for info in archive.infolist()} == {wanted}
    stream = open_stream("npz", tmp_path, {"path": "x.npz", "images": "x_test", "labels": "y_test"}, (3, 4, 6))
    _check_stream(stream, images, labels)


def test_npz_default_member_names_and_npy_suffix(tmp_path: Path) -> None:
    images, labels = _images(9, (1, 3, 3)), _labels(9)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    _check_stream(open_stream("npz", tmp_path, {"path": "d.npz"}, (1, 3, 3)), images, labels, size=4)
    spec = {"path": "d.npz", "images": "images.npy", "labels": "labels.npy"}
    _check_stream(open_stream("npz", tmp_path, spec, (1, 3, 3)), images, labels, size=4)


@pytest.mark.parametrize("axes", ["nchw", "nhwc"])
def test_safetensors(tmp_path: Path, axes: str) -> None:
    images, labels = _images(33, (3, 5, 4)), _labels(33)
    save_file({"pixels": _stored(images, axes), "targets": labels}, str(tmp_path / "x.safetensors"))
    spec = {"path": "x.safetensors", "images": "pixels", "labels": "targets"}
    _check_stream(open_stream("safetensors", tmp_path, spec, (3, 5, 4)), images, labels)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_matches_loader(tmp_path: Path, compress: bool) -> None:
    images, labels = _images(50, (1, 7, 6)), _labels(50).astype(np.uint8)
    _write_idx(tmp_path / "images-idx3-ubyte", images[:, 0], compress)
    _write_idx(tmp_path / "labels-idx1-ubyte", labels, compress)
    spec = {"images": "images-idx3-ubyte", "labels": "labels-idx1-ubyte"}
    stream = open_stream("idx", tmp_path, spec, (1, 7, 6))
    whole, whole_labels = loaders.load_idx_pair(tmp_path / spec["images"], tmp_path / spec["labels"])
    _check_stream(stream, whole, whole_labels)
    np.testing.assert_array_equal(whole, images)


def test_idx_int32_labels_and_nchw_images(tmp_path: Path) -> None:
    images, labels = _images(12, (3, 4, 4)), _labels(12).astype(np.int32)
    _write_idx(tmp_path / "im", images, compress=True)
    _write_idx(tmp_path / "lb", labels)
    _check_stream(open_stream("idx", tmp_path, {"images": "im", "labels": "lb"}, (3, 4, 4)), images, labels, 5)


@pytest.mark.parametrize("chunked", [False, True])
def test_hdf5(tmp_path: Path, chunked: bool) -> None:
    images, labels = _images(37, (3, 4, 5)), _labels(37)
    options = {"chunks": (5, 4, 5, 3), "compression": "gzip"} if chunked else {}
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle.create_dataset("test/data", data=_stored(images, "nhwc"), **options)
        handle.create_dataset("test/target", data=labels.astype(np.int16))
    stream = open_stream("hdf5", tmp_path, {"path": "x.h5", "images": "test/data", "labels": "test/target"}, (3, 4, 5))
    _check_stream(stream, images, labels)


# --- Floats: mapped like loaders._float_to_uint8, checked chunk by chunk -----------------------------------------


def _write_array_layout(layout: str, tmp_path: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    if layout == "npy":
        return _npy(tmp_path, images, labels)
    if layout == "npz":
        np.savez_compressed(tmp_path / "x.npz", images=images, labels=labels)
        return {"path": "x.npz"}
    if layout == "safetensors":
        save_file({"images": images, "labels": labels}, str(tmp_path / "x.safetensors"))
        return {"path": "x.safetensors"}
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle["images"] = images
        handle["labels"] = labels
    return {"path": "x.h5", "images": "images", "labels": "labels"}


ARRAY_LAYOUTS = ["npy", "npz", "safetensors", "hdf5"]


@pytest.mark.parametrize("layout", ARRAY_LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_images_map_like_loaders(tmp_path: Path, layout: str, dtype: type) -> None:
    rng = np.random.default_rng(3)
    floats = rng.random((30, 6, 6, 3)).astype(dtype)
    floats[0, 0, 0] = [0.0, 1.0, 0.5 / 255]  # the edges and a rounding tie
    floats[1, 0, 0] = [1.0 + 5e-7, -5e-7, 254.5 / 255]  # inside the tolerance
    labels = _labels(30)
    spec = _write_array_layout(layout, tmp_path, floats, labels)
    stream = open_stream(layout, tmp_path, spec, (3, 6, 6))
    expected = np.ascontiguousarray(loaders._float_to_uint8(floats.transpose(0, 3, 1, 2), "x"))
    _check_stream(stream, expected, labels)


@pytest.mark.parametrize("layout", ARRAY_LAYOUTS)
def test_float_out_of_range_chunk_is_named(tmp_path: Path, layout: str) -> None:
    floats = np.random.default_rng(0).random((20, 1, 4, 4)).astype(np.float32)
    floats[13, 0, 1, 1] = 2.0
    spec = _write_array_layout(layout, tmp_path, floats, _labels(20))
    stream = open_stream(layout, tmp_path, spec, (1, 4, 4))
    chunks = stream.chunks(10)
    next(chunks)  # images 0-9 are fine: the check is per chunk
    with pytest.raises(StreamError, match=r"has float pixels in \[0(\.\d+)?, 2\] in images 10-19; .*\[0, 1\]"):
        next(chunks)


def test_float_nan_and_255_scale(tmp_path: Path) -> None:
    floats = np.random.default_rng(0).random((8, 1, 4, 4)).astype(np.float32)
    floats[2, 0, 0, 0] = np.nan
    spec = _npy(tmp_path, floats, _labels(8))
    with pytest.raises(StreamError, match=r"^images.npy has NaN or infinite pixels in images 0-7"):
        _gather(open_stream("npy", tmp_path, spec, (1, 4, 4)).chunks())
    spec = _npy(tmp_path, floats[[0, 1]] * 255, _labels(2))
    with pytest.raises(StreamError, match=r"pixels in 0-255 are stored as uint8"):
        _gather(open_stream("npy", tmp_path, spec, (1, 4, 4)).chunks())


# --- Image folders ----------------------------------------------------------------------------------------------


def _class_folders(root: Path, per_class: dict[str, np.ndarray], fmt: str = "PNG", suffix: str = ".png") -> None:
    for name, images in per_class.items():
        for i, image in enumerate(images):
            _write_png(root / name / f"{i:04d}{suffix}", image, fmt)


def test_folders_match_loader(tmp_path: Path) -> None:
    per_class = {"cat": _images(5, (3, 8, 6), 1), "airplane": _images(4, (3, 8, 6), 2), "dog": _images(6, (3, 8, 6), 3)}
    _class_folders(tmp_path / "test", per_class)
    (tmp_path / "test" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "test" / ".DS_Store").write_bytes(b"\0")
    stream = open_stream("folders", tmp_path, {"path": "test"}, (3, 8, 6))
    whole, whole_labels, names = loaders.load_image_folder(tmp_path / "test")
    assert names == ["airplane", "cat", "dog"]
    _check_stream(stream, whole, whole_labels, size=4)


def test_folders_take_labels_from_class_names(tmp_path: Path) -> None:
    per_class = {"cat": _images(3, (3, 4, 4), 1), "airplane": _images(2, (3, 4, 4), 2)}
    _class_folders(tmp_path / "d", per_class)
    names = ["truck", "cat", "bird", "airplane"]
    stream = open_stream("folders", tmp_path, {"path": "d"}, (3, 4, 4), class_names=names)
    # Classes in label order (cat = 1 before airplane = 3), files sorted within each.
    _check_stream(stream, np.concatenate([per_class["cat"], per_class["airplane"]]), np.array([1, 1, 1, 3, 3]))


def test_folders_skip_macos_zip_debris(tmp_path: Path) -> None:
    per_class = {"b": _images(2, (3, 4, 4), 1), "c": _images(1, (3, 4, 4), 2)}
    _class_folders(tmp_path / "d", per_class)
    # Taken for a class, __MACOSX would sort first and shift every label by one.
    _write_png(tmp_path / "d" / "__MACOSX" / "b" / "._0000.png", per_class["b"][0])
    _write_png(tmp_path / "d" / "b" / "._0000.png", per_class["b"][0])
    stream = open_stream("folders", tmp_path, {"path": "d"}, (3, 4, 4))
    _check_stream(stream, np.concatenate([per_class["b"], per_class["c"]]), np.array([0, 0, 1]), size=2)


def test_folders_grayscale_on_rgb_track_and_on_gray_track(tmp_path: Path) -> None:
    gray = _images(4, (1, 5, 5))
    _class_folders(tmp_path / "g", {"a": gray[:2], "b": gray[2:]})
    rgb = open_stream("folders", tmp_path, {"path": "g"}, (3, 5, 5))
    _check_stream(rgb, np.repeat(gray, 3, axis=1), np.array([0, 0, 1, 1]), size=3)
    one = open_stream("folders", tmp_path, {"path": "g"}, (1, 5, 5))
    whole, whole_labels, _ = loaders.load_image_folder(tmp_path / "g")
    _check_stream(one, whole, whole_labels, size=3)


def test_folders_jpeg_and_palette_decode_like_loader(tmp_path: Path) -> None:
    _class_folders(tmp_path / "j", {"x": _images(3, (3, 16, 16))}, fmt="JPEG", suffix=".JPG")
    palette = Image.fromarray(_images(1, (3, 16, 16))[0].transpose(1, 2, 0)).convert("P")
    palette.save(tmp_path / "j" / "x" / "zz.png")
    stream = open_stream("folders", tmp_path, {"path": "j"}, (3, 16, 16))
    whole, whole_labels, _ = loaders.load_image_folder(tmp_path / "j")
    assert whole.shape[0] == 4
    _check_stream(stream, whole, whole_labels, size=2)


def test_real_fake(tmp_path: Path) -> None:
    real, fake = _images(3, (3, 4, 4), 1), _images(5, (3, 4, 4), 2)
    _class_folders(tmp_path / "hidden", {"fake": fake, "real": real})
    stream = open_stream("real_fake", tmp_path, {"path": "hidden"}, (3, 4, 4), class_names=["ignored"])
    _check_stream(stream, np.concatenate([real, fake]), np.array([0] * 3 + [1] * 5), size=3)


# --- Refusals -----------------------------------------------------------------------------------------------------


def test_wrong_image_size_is_counted_and_named(tmp_path: Path) -> None:
    _class_folders(tmp_path / "test", {"cat": _images(5, (3, 32, 32)), "dog": _images(2, (3, 32, 32))})
    for name in ("0003", "0004"):
        _write_png(tmp_path / "test" / "cat" / f"{name}.png", _images(1, (3, 32, 30))[0])  # 30 wide, 32 high
    _write_png(tmp_path / "test" / "dog" / "0000.png", _images(1, (3, 32, 30))[0])
    with pytest.raises(StreamError) as err:
        open_stream("folders", tmp_path, {"path": "test"}, (3, 32, 32))
    assert str(err.value) == "3 images are 30x32, the track says 32x32 (first: cat/0003.png)"
    _write_png(tmp_path / "test" / "dog" / "0001.png", _images(1, (3, 10, 10))[0])
    with pytest.raises(StreamError) as err:
        open_stream("folders", tmp_path, {"path": "test"}, (3, 32, 32))
    assert str(err.value) == "3 images are 30x32, the track says 32x32 (first: cat/0003.png); 1 more has another size"


def test_rgb_images_on_one_channel_track(tmp_path: Path) -> None:
    _class_folders(tmp_path / "d", {"0": _images(2, (1, 4, 4)), "1": _images(3, (3, 4, 4))})
    with pytest.raises(StreamError) as err:
        open_stream("folders", tmp_path, {"path": "d"}, (1, 4, 4))
    assert str(err.value) == "3 images are RGB, the track has 1 channel (first: 1/0000.png)"


def test_unreadable_and_damaged_images(tmp_path: Path) -> None:
    _class_folders(tmp_path / "d", {"a": _images(2, (3, 8, 8))})
    (tmp_path / "d" / "a" / "0001.png").write_bytes(b"not a png at all")
    with pytest.raises(StreamError, match=r"^a/0001.png cannot be read as an image"):
        open_stream("folders", tmp_path, {"path": "d"}, (3, 8, 8))
    # A header that parses but pixels that do not: found when the chunk is decoded.
    good = (tmp_path / "d" / "a" / "0000.png").read_bytes()
    (tmp_path / "d" / "a" / "0001.png").write_bytes(good[: len(good) // 2])
    stream = open_stream("folders", tmp_path, {"path": "d"}, (3, 8, 8))
    with pytest.raises(StreamError, match=r"^a/0001.png cannot be decoded"):
        _gather(stream.chunks())


def test_unknown_class_folder(tmp_path: Path) -> None:
    _class_folders(tmp_path / "d", {"cat": _images(1, (3, 4, 4)), "zebra": _images(1, (3, 4, 4))})
    with pytest.raises(StreamError) as err:
        open_stream("folders", tmp_path, {"path": "d"}, (3, 4, 4), class_names=["cat", "dog"])
    assert str(err.value) == "d/zebra is not a class of the track (its classes: cat, dog)"


def test_folder_structure_refusals(tmp_path: Path) -> None:
    _class_folders(tmp_path / "d", {"cat": _images(1, (3, 4, 4))})
    _write_png(tmp_path / "d" / "stray.png", _images(1, (3, 4, 4))[0])
    with pytest.raises(StreamError, match=r"^d/stray.png lies outside the class folders"):
        open_stream("folders", tmp_path, {"path": "d"}, (3, 4, 4))
    (tmp_path / "d" / "stray.png").unlink()
    (tmp_path / "d" / "cat" / "nested").mkdir()
    with pytest.raises(StreamError, match=r"^cat/nested is a folder inside a class folder"):
        open_stream("folders", tmp_path, {"path": "d"}, (3, 4, 4))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(StreamError, match=r"^empty holds no images$"):
        open_stream("folders", tmp_path, {"path": "empty"}, (3, 4, 4))
    with pytest.raises(StreamError, match=r"^d is a folder"):
        open_stream("npy", tmp_path, {"images": "d", "labels": "d"}, (3, 4, 4))


def test_real_fake_refusals(tmp_path: Path) -> None:
    _class_folders(tmp_path / "h", {"real": _images(1, (3, 4, 4)), "fake": _images(1, (3, 4, 4))})
    (tmp_path / "h" / "maybe").mkdir()
    with pytest.raises(StreamError) as err:
        open_stream("real_fake", tmp_path, {"path": "h"}, (3, 4, 4))
    assert str(err.value) == "h holds maybe; a real_fake set holds only real/ and fake/"
    (tmp_path / "h" / "maybe").rmdir()
    (tmp_path / "h" / "README").write_text("x")
    with pytest.raises(StreamError, match="h holds README"):
        open_stream("real_fake", tmp_path, {"path": "h"}, (3, 4, 4))
    _class_folders(tmp_path / "r", {"real": _images(1, (3, 4, 4))})
    with pytest.raises(StreamError, match=r"^r has no fake/ folder"):
        open_stream("real_fake", tmp_path, {"path": "r"}, (3, 4, 4))


def test_missing_files(tmp_path: Path) -> None:
    np.save(tmp_path / "labels.npy", _labels(3))
    with pytest.raises(StreamError) as err:
        open_stream("npy", tmp_path, {"images": "images.npy", "labels": "labels.npy"}, (1, 2, 2))
    assert str(err.value) == "images.npy is missing"
    with pytest.raises(StreamError, match=r"^data/x.npz is missing$"):
        open_stream("npz", tmp_path, {"path": "data/x.npz"}, (1, 2, 2))
    with pytest.raises(StreamError, match=r"^the data needs 'images'$"):
        open_stream("npy", tmp_path, {"labels": "labels.npy"}, (1, 2, 2))


def test_links_are_refused_anywhere(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    outside = tmp_path / "outside"
    _class_folders(outside, {"cat": _images(2, (3, 4, 4))})
    _npy(outside, _images(2, (3, 4, 4)), _labels(2))
    _class_folders(bundle / "test", {"cat": _images(2, (3, 4, 4))})
    cases: list[tuple[str, dict[str, str], str]] = []
    os.symlink(outside / "images.npy", bundle / "images.npy")  # the file itself
    (bundle / "real").mkdir()
    np.save(bundle / "real" / "labels.npy", _labels(2))
    cases.append(("npy", {"images": "images.npy", "labels": "real/labels.npy"}, "images.npy"))
    os.symlink(outside, bundle / "via")  # a folder on the way
    cases.append(("npy", {"images": "real/labels.npy", "labels": "via/labels.npy"}, "via"))
    cases.append(("folders", {"path": "via"}, "via"))
    os.symlink(outside / "cat" / "0000.png", bundle / "test" / "cat" / "zz.png")  # inside a class folder
    cases.append(("folders", {"path": "test"}, "cat/zz.png"))
    for layout, spec, named in cases:
        with pytest.raises(StreamError) as err:
            open_stream(layout, bundle, spec, (3, 4, 4))
        assert str(err.value) == f"{named} is a link; bundles may not contain links"
    os.symlink(outside / "cat", bundle / "test" / "dog")  # a class folder
    (bundle / "test" / "cat" / "zz.png").unlink()
    with pytest.raises(StreamError, match=r"^test/dog is a link; bundles may not contain links$"):
        open_stream("folders", bundle, {"path": "test"}, (3, 4, 4))


def test_paths_stay_inside_the_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec = _npy(tmp_path, _images(2, (1, 2, 2)), _labels(2))
    with pytest.raises(StreamError, match=r"^\.\./images.npy goes up out of its folder \(\.\.\)"):
        open_stream("npy", bundle, {"images": "../images.npy", "labels": "../labels.npy"}, (1, 2, 2))
    with pytest.raises(StreamError, match=r"goes up out of its folder"):
        open_stream("npy", bundle, {"images": "a/../../images.npy", "labels": "x"}, (1, 2, 2))
    absolute = str(tmp_path / spec["images"])
    with pytest.raises(StreamError, match=r"is an absolute path; paths in a bundle are relative"):
        open_stream("npy", bundle, {"images": absolute, "labels": absolute}, (1, 2, 2))


def test_pickles_are_never_loaded(tmp_path: Path) -> None:
    objects = np.empty(2, dtype=object)
    objects[:] = [np.zeros((2, 2)), np.zeros((2, 2))]
    np.savez(tmp_path / "x.npz", images=objects, labels=_labels(2))
    with pytest.raises(StreamError) as err:
        open_stream("npz", tmp_path, {"path": "x.npz"}, (1, 2, 2))
    assert str(err.value) == "x.npz:images holds Python objects (a pickle); bundles may hold only numeric arrays"
    np.save(tmp_path / "images.npy", objects, allow_pickle=True)
    np.save(tmp_path / "labels.npy", _labels(2))
    with pytest.raises(StreamError, match=r"^images.npy holds Python objects \(a pickle\)"):
        open_stream("npy", tmp_path, {"images": "images.npy", "labels": "labels.npy"}, (1, 2, 2))


def test_count_mismatch(tmp_path: Path) -> None:
    spec = _npy(tmp_path, _images(100, (1, 2, 2)), _labels(99))
    with pytest.raises(StreamError) as err:
        open_stream("npy", tmp_path, spec, (1, 2, 2))
    assert str(err.value) == "images.npy has 100 images but labels.npy has 99 labels"


def test_shape_and_dtype_refusals(tmp_path: Path) -> None:
    spec = _npy(tmp_path, np.zeros((100, 30, 32, 3), dtype=np.uint8), _labels(100))
    with pytest.raises(StreamError) as err:
        open_stream("npy", tmp_path, spec, (3, 32, 32))
    assert str(err.value) == "images.npy has shape (100, 30, 32, 3); the track says 3x32x32 (C x H x W)"
    spec = _npy(tmp_path, np.zeros((4, 8, 8), dtype=np.uint8), _labels(4))
    with pytest.raises(StreamError, match=r"has shape \(4, 8, 8\); the track says 3x8x8"):
        open_stream("npy", tmp_path, spec, (3, 8, 8))  # (N, H, W) only on a 1-channel track
    spec = _npy(tmp_path, np.zeros((4, 1, 8, 8), dtype=np.int16), _labels(4))
    with pytest.raises(StreamError, match=r"^images.npy holds int16 pixels; images must be uint8"):
        open_stream("npy", tmp_path, spec, (1, 8, 8))
    spec = _npy(tmp_path, np.zeros((4, 1, 8, 8), dtype=np.uint8), np.zeros(4, dtype=np.float32))
    with pytest.raises(StreamError, match=r"^labels.npy holds float32; labels must be integers$"):
        open_stream("npy", tmp_path, spec, (1, 8, 8))
    spec = _npy(tmp_path, np.zeros((4, 1, 8, 8), dtype=np.uint8), np.zeros((4, 1), dtype=np.int64))
    with pytest.raises(StreamError, match=r"^labels.npy has shape \(4, 1\); labels must be a 1-D array"):
        open_stream("npy", tmp_path, spec, (1, 8, 8))
    spec = _npy(tmp_path, np.zeros((0, 1, 8, 8), dtype=np.uint8), np.zeros(0, dtype=np.int64))
    with pytest.raises(StreamError, match=r"^images.npy holds no images$"):
        open_stream("npy", tmp_path, spec, (1, 8, 8))


def test_negative_and_wide_labels_do_not_crash(tmp_path: Path) -> None:
    labels = np.array([-1, 5, 2**40, -7], dtype=np.int64)
    spec = _npy(tmp_path, _images(4, (1, 2, 2)), labels)
    stream = open_stream("npy", tmp_path, spec, (1, 2, 2))
    np.testing.assert_array_equal(stream.labels(), labels)
    np.testing.assert_array_equal(_gather(stream.take(np.array([0, 3])))[1], labels[[0, 3]])


def test_truncated_files(tmp_path: Path) -> None:
    images, labels = _images(50, (1, 7, 6)), _labels(50).astype(np.uint8)
    _write_idx(tmp_path / "im", images[:, 0])
    _write_idx(tmp_path / "lb", labels)
    data = (tmp_path / "im").read_bytes()
    (tmp_path / "im").write_bytes(data[:-10])
    with pytest.raises(StreamError, match=r"^im declares dimensions \(50, 7, 6\) \(2100 data bytes\) but holds 2090"):
        open_stream("idx", tmp_path, {"images": "im", "labels": "lb"}, (1, 7, 6))
    (tmp_path / "im").write_bytes(gzip.compress(data)[:-500])  # header fine, data cut short
    stream = open_stream("idx", tmp_path, {"images": "im", "labels": "lb"}, (1, 7, 6))
    with pytest.raises(StreamError, match=r"^im (ends after|cannot be read)"):
        _gather(stream.chunks(8))
    np.save(tmp_path / "x.npy", images)
    (tmp_path / "x.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:-1])
    np.save(tmp_path / "y.npy", labels)
    with pytest.raises(StreamError, match=r"^x.npy is truncated"):
        open_stream("npy", tmp_path, {"images": "x.npy", "labels": "y.npy"}, (1, 7, 6))
    (tmp_path / "bad").write_bytes(b"\x00\x00\x99\x03" + b"\0" * 12)
    with pytest.raises(StreamError, match=r"^bad does not start with an IDX header"):
        open_stream("idx", tmp_path, {"images": "bad", "labels": "lb"}, (1, 7, 6))


def test_container_member_refusals(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", pixels=_images(2, (1, 2, 2)), labels=_labels(2))
    with pytest.raises(StreamError) as err:
        open_stream("npz", tmp_path, {"path": "x.npz"}, (1, 2, 2))
    assert str(err.value) == "x.npz has no array 'images' (it holds: labels, pixels)"
    (tmp_path / "junk.npz").write_bytes(b"PK not really")
    with pytest.raises(StreamError, match=r"^junk.npz is not a readable .npz"):
        open_stream("npz", tmp_path, {"path": "junk.npz"}, (1, 2, 2))
    save_file({"images": _images(2, (1, 2, 2))}, str(tmp_path / "x.safetensors"))
    with pytest.raises(StreamError, match=r"^x.safetensors has no tensor 'labels' \(it holds: images\)$"):
        open_stream("safetensors", tmp_path, {"path": "x.safetensors"}, (1, 2, 2))
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle["g/images"] = _images(2, (1, 2, 2))
        handle["g/labels"] = _labels(2)
        handle["ext"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/labels")
        handle.create_dataset("raw", shape=(2,), dtype=np.int64, external=[(str(tmp_path / "secret"), 0, 16)])
    spec = {"path": "x.h5", "images": "g/images", "labels": "g/missing"}
    with pytest.raises(StreamError, match=r"^x.h5 has no dataset 'g/missing' \(datasets: g/images, g/labels"):
        open_stream("hdf5", tmp_path, spec, (1, 2, 2))
    with pytest.raises(StreamError, match=r"^x.h5:ext is an external link; bundles may not contain links$"):
        open_stream("hdf5", tmp_path, {**spec, "labels": "ext"}, (1, 2, 2))
    with pytest.raises(StreamError, match=r"^x.h5:raw keeps its data in external files"):
        open_stream("hdf5", tmp_path, {**spec, "labels": "raw"}, (1, 2, 2))
    with h5py.File(tmp_path / "x.h5", "a") as handle:
        handle["soft"] = h5py.SoftLink("/ext")
    with pytest.raises(StreamError, match=r"^x.h5:soft is a soft link"):
        open_stream("hdf5", tmp_path, {**spec, "labels": "soft"}, (1, 2, 2))
    with pytest.raises(StreamError, match=r"^x.h5:g is a group, not a dataset"):
        open_stream("hdf5", tmp_path, {**spec, "labels": "g"}, (1, 2, 2))


def test_api_misuse(tmp_path: Path) -> None:
    spec = _npy(tmp_path, _images(5, (1, 2, 2)), _labels(5))
    stream = open_stream("npy", tmp_path, {**spec, "layout": "npy"}, (1, 2, 2))  # other keys are ignored
    with pytest.raises(ValueError, match="sorted"):
        stream.take(np.array([3, 1]))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        stream.take(np.array([1, 5]))
    with pytest.raises(ValueError, match="chunk size"):
        stream.chunks(0)
    with pytest.raises(StreamError, match="unknown data layout 'csv'"):
        open_stream("csv", tmp_path, spec, (1, 2, 2))
    assert set(SPEC_KEYS) == set(LAYOUTS)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
@pytest.mark.parametrize("layout", ["npy", "npz", "idx_gz", "hdf5", "safetensors"])
def test_abandoned_pass_closes_its_files(tmp_path: Path, layout: str) -> None:
    images, labels = _images(30, (1, 4, 4)), _labels(30).astype(np.uint8)
    if layout == "idx_gz":
        _write_idx(tmp_path / "im", images[:, 0], compress=True)
        _write_idx(tmp_path / "lb", labels, compress=True)
        spec, layout = {"images": "im", "labels": "lb"}, "idx"
    else:
        spec = _write_array_layout(layout, tmp_path, images, labels)
    def held() -> int:
        """Open descriptors and memory maps of files under tmp_path (safetensors maps and closes)."""
        fds = [os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")]
        maps = Path("/proc/self/maps").read_text().splitlines()
        return sum(str(tmp_path) in line for line in fds + maps)

    stream = open_stream(layout, tmp_path, spec, (1, 4, 4))
    assert held() == 0
    for passes in (stream.chunks(4), stream.take(np.arange(0, 30, 3), 4)):
        next(passes)
        assert held() > 0
        passes.close()  # what a `break` out of a for loop leads to
        assert held() == 0


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc/self/maps")
@pytest.mark.parametrize("layout", ["npy", "idx", "safetensors", "npz", "idx_gz", "hdf5"])
def test_passes_map_no_data_file(tmp_path: Path, layout: str) -> None:
    """Rows are read, never mapped: a map keeps every page a pass touched in RSS until the pass ends."""
    images, labels = _images(64, (3, 8, 8)), _labels(64).astype(np.uint8)
    if layout in ("idx", "idx_gz"):
        _write_idx(tmp_path / "im", images, compress=layout == "idx_gz")
        _write_idx(tmp_path / "lb", labels, compress=layout == "idx_gz")
        spec, layout = {"images": "im", "labels": "lb"}, "idx"
    else:
        spec = _write_array_layout(layout, tmp_path, images, labels)

    def mapped() -> list[str]:
        return [line for line in Path("/proc/self/maps").read_text().splitlines() if str(tmp_path) in line]

    stream = open_stream(layout, tmp_path, spec, (3, 8, 8))
    for passes in (stream.chunks(8), stream.take(np.arange(0, 64, 5), 4)):
        seen = []
        for chunk, _ in passes:
            assert mapped() == []
            seen.append(chunk)
        assert len(seen) > 1
    np.testing.assert_array_equal(_gather(stream.chunks(16))[0], images)


@pytest.mark.parametrize("axes", ["nchw", "nhwc", "nhw"])
def test_npy_fortran_order_and_big_endian(tmp_path: Path, axes: str) -> None:
    shape = (1, 6, 5) if axes == "nhw" else (3, 6, 5)
    images, labels = _images(23, shape), _labels(23)
    stored = _stored(images, axes)
    np.save(tmp_path / "f.npy", np.asfortranarray(stored))
    np.save(tmp_path / "b.npy", labels.astype(">i4"))
    spec = {"images": "f.npy", "labels": "b.npy"}
    _check_stream(open_stream("npy", tmp_path, spec, shape), images, labels, size=5)
    floats = np.asfortranarray(stored.astype(">f4") / 255)
    np.save(tmp_path / "f.npy", floats)
    _check_stream(open_stream("npy", tmp_path, spec, shape), images, labels, size=5)


@pytest.mark.parametrize("layout", ["npy", "idx", "safetensors", "npy_fortran"])
def test_file_cut_short_after_opening(tmp_path: Path, layout: str) -> None:
    """A file that shrinks between open_stream and a pass is a StreamError, not garbage or a crash."""
    images, labels = _images(20, (1, 4, 4)), _labels(20).astype(np.uint8)
    if layout == "idx":
        _write_idx(tmp_path / "im", images[:, 0])
        _write_idx(tmp_path / "lb", labels)
        spec, data = {"images": "im", "labels": "lb"}, tmp_path / "im"
    elif layout == "safetensors":
        save_file({"codes": labels, "pixels": images}, str(tmp_path / "x.safetensors"))  # pixels stored last
        spec, data = {"path": "x.safetensors", "images": "pixels", "labels": "codes"}, tmp_path / "x.safetensors"
    else:
        stored = np.asfortranarray(images) if layout == "npy_fortran" else images
        spec, data = _npy(tmp_path, stored, labels), tmp_path / "images.npy"
    stream = open_stream(layout.removesuffix("_fortran"), tmp_path, spec, (1, 4, 4))
    cut = data.stat().st_size - 16 * 5 - 3  # the last 5 images and 3 bytes of the one before
    with data.open("r+b") as handle:
        handle.truncate(cut)
    name = data.name + (":pixels" if layout == "safetensors" else "")
    chunks = stream.chunks(8)
    if layout == "npy_fortran":  # every chunk reads from the end of the file
        with pytest.raises(StreamError, match=rf"^{name} is truncated: its header says \(20, 1, 4, 4\) uint8"):
            next(chunks)
        return
    next(chunks)
    with pytest.raises(StreamError, match=rf"^{name} ends after 14 images; its header says 20$"):
        next(chunks)


# --- Memory: a pass costs a few chunks, whatever the number of images ----------------------------------------------

BIG_COUNT = 20_000
BIG_SHAPE = (3, 32, 32)  # 61 MB of uint8 pixels


def _big_images(start: int, stop: int) -> np.ndarray:
    """Image i is a ramp shifted by i: cheap to make, compressible, and every image differs."""
    ramp = np.arange(int(np.prod(BIG_SHAPE)), dtype=np.int64)
    index = np.arange(start, stop, dtype=np.int64)[:, None]
    return ((ramp[None, :] + index * 7) % 251).astype(np.uint8).reshape(-1, *BIG_SHAPE)


def _write_big(layout: str, root: Path) -> dict[str, str]:
    images, labels = _big_images(0, BIG_COUNT), np.arange(BIG_COUNT, dtype=np.int64) % 10
    if layout == "npz_deflated":
        np.savez_compressed(root / "x.npz", images=images, labels=labels)
        return {"path": "x.npz"}
    if layout in ("idx", "idx_gz"):
        _write_idx(root / "im", images, compress=layout == "idx_gz")
        _write_idx(root / "lb", labels.astype(np.uint8))
        return {"images": "im", "labels": "lb"}
    return _write_array_layout(layout, root, images, labels)


@pytest.mark.parametrize("layout", ["npy", "npz", "npz_deflated", "safetensors", "hdf5", "idx", "idx_gz"])
def test_streaming_memory_stays_flat(tmp_path: Path, layout: str) -> None:
    spec = _write_big(layout, tmp_path)
    kind = {"npz_deflated": "npz", "idx_gz": "idx"}.get(layout, layout)
    size = 512
    chunk_bytes = size * int(np.prod(BIG_SHAPE))
    limit = 8 * 2**20
    assert BIG_COUNT * int(np.prod(BIG_SHAPE)) > 7 * limit

    def measure(run: Callable[[], None]) -> int:
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            run()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def full_pass() -> None:
        stream = open_stream(kind, tmp_path, spec, BIG_SHAPE)
        seen = 0
        for images, labels in stream.chunks(size):
            assert images.shape[0] <= size
            for row in (0, images.shape[0] - 1):  # spot checks, no whole-array reference
                assert np.array_equal(images[row], _big_images(seen + row, seen + row + 1)[0])
            assert labels[0] == seen % 10
            seen += images.shape[0]
        assert seen == BIG_COUNT

    def subset_pass() -> None:
        stream = open_stream(kind, tmp_path, spec, BIG_SHAPE)
        subset = np.sort(np.random.default_rng(0).choice(BIG_COUNT, 6000, replace=False))
        seen = 0
        for images, _ in stream.take(subset, size):
            index = int(subset[seen])
            assert np.array_equal(images[0], _big_images(index, index + 1)[0])
            seen += images.shape[0]
        assert seen == subset.size

    for run in (full_pass, subset_pass):
        peak = measure(run)
        assert peak < limit, f"{layout} {run.__name__}: peak {peak / 2**20:.1f} MiB (chunk {chunk_bytes / 2**20:.1f})"
