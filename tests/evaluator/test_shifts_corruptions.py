"""ImageNet-C corruptions on real digits and CIFAR images: shapes, severity, determinism, sets."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from evaluator.data.evalsets import read_evaluation_set, write_evaluation_set
from evaluator.errors import EvaluationError
from evaluator.shifts import CORRUPTIONS, SEVERITIES, build_corruption_set, corrupt_image, image_seed, select_subset

ROOT = Path(__file__).resolve().parents[2]


def _shared_data() -> Path:
    """The real-data mirror: $ARENA_DATA_MIRROR, or shared/data inside or beside the checkout."""
    candidates = [os.environ.get("ARENA_DATA_MIRROR", ""), ROOT / "shared" / "data", ROOT.parent / "shared" / "data"]
    return next((Path(c) for c in candidates if c and (Path(c) / "mnist").is_dir()), ROOT.parent / "shared" / "data")


DATA = _shared_data()
MNIST = DATA / "mnist" / "t10k-images-idx3-ubyte.gz"
CIFAR = DATA / "cifar10_jpeg" / "test"

#: Corruptions that draw random numbers; the others are deterministic functions of the image.
RANDOM = frozenset(
    {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur"}
    | {"snow", "frost", "fog", "elastic_transform"}
)

pytestmark = pytest.mark.skipif(not (MNIST.exists() and CIFAR.exists()), reason="shared data not available")


def _mnist(n: int) -> np.ndarray:
    """The first ``n`` MNIST test digits, uint8 (n, 1, 28, 28), read straight from the IDX file."""
    raw = gzip.decompress(MNIST.read_bytes())
    assert int.from_bytes(raw[:4], "big") == 0x0803
    count, rows, cols = (int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in (1, 2, 3))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, 1, rows, cols)[:n].copy()


def _cifar(names: list[str]) -> np.ndarray:
    """CIFAR-10 test JPEGs as uint8 (n, 3, 32, 32)."""
    return np.stack([np.asarray(Image.open(CIFAR / name).convert("RGB")).transpose(2, 0, 1) for name in names])


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return _mnist(2)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return _cifar(["cat/0000.jpg", "ship/0001.jpg"])


def test_names_and_severities() -> None:
    from imagecorruptions import get_corruption_names

    assert CORRUPTIONS == tuple(get_corruption_names("common")) and len(CORRUPTIONS) == 15
    assert SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_corruption_and_severity_runs_and_damages_more_with_severity(
    corruption: str, digits: np.ndarray, photos: np.ndarray
) -> None:
    for images in (digits, photos):
        damage = []
        for severity in SEVERITIES:
            # One seed per image across severities (same frost texture, fog fractal, ...), so
            # that the comparison between severities is not drowned by those random choices.
            outs = [corrupt_image(img, corruption, severity, 100 + i) for i, img in enumerate(images)]
            for out, img in zip(outs, images, strict=True):
                assert out.shape == img.shape and out.dtype == np.uint8 and out.flags.c_contiguous
            damage.append(
                np.mean([np.abs(out.astype(float) - img).mean() for out, img in zip(outs, images, strict=True)])
            )
        # Loosely monotone: the worst severity hurts more than the mildest, and no step back is
        # large. Mean pixel change dips for glass blur at severity 4 (fewer iterations in
        # ImageNet-C's own parameters), and for fog, frost and snow, whose overlays saturate.
        assert damage[-1] > 1.05 * damage[0] > 0, (corruption, damage)
        assert all(later > 0.8 * earlier for earlier, later in pairwise(damage)), (corruption, damage)


#: Corruptions whose mean pixel change grows strictly with severity on any image.
STRICTLY_MONOTONE = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "zoom_blur",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
)


@pytest.mark.parametrize("corruption", STRICTLY_MONOTONE)
def test_some_corruptions_are_strictly_monotone_in_severity(
    corruption: str, digits: np.ndarray, photos: np.ndarray
) -> None:
    for images in (digits, photos):
        damage = [
            np.mean(
                [
                    np.abs(corrupt_image(im, corruption, s, 7 + i).astype(float) - im).mean()
                    for i, im in enumerate(images)
                ]
            )
            for s in SEVERITIES
        ]
        assert all(later > earlier for earlier, later in pairwise(damage)), (corruption, damage)


def test_other_small_sizes_keep_their_shape() -> None:
    rng = np.random.default_rng(0)
    for shape in [(1, 16, 16), (3, 28, 28), (1, 32, 40), (3, 40, 33)]:
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        for corruption in CORRUPTIONS:
            assert corrupt_image(image, corruption, 5, 1).shape == shape


def test_digit_padding_is_undone_exactly(digits: np.ndarray) -> None:
    # Brightness is pointwise: a padded-and-cropped digit must match a direct computation.
    out = corrupt_image(digits[0], "brightness", 5, 0)
    expected = np.uint8(np.clip(digits[0] / 255.0 + 0.5, 0, 1) * 255)
    assert np.abs(out.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_same_seed_same_pixels_different_seed_different_pixels(
    corruption: str, digits: np.ndarray, photos: np.ndarray
) -> None:
    for image in (digits[0], photos[0]):
        first = corrupt_image(image, corruption, 3, 12345)
        np.random.seed(999)  # whatever state the caller left must not matter
        np.random.random(17)
        assert np.array_equal(first, corrupt_image(image, corruption, 3, 12345))
        other = corrupt_image(image, corruption, 3, 54321)
        if corruption in RANDOM and not (corruption == "shot_noise" and image.shape[0] == 1):
            assert not np.array_equal(first, other), corruption
        elif corruption not in RANDOM:
            assert np.array_equal(first, other), corruption
    # Shot noise on a digit: the black background has no photons to vary, but the stroke does.
    assert not np.array_equal(
        corrupt_image(digits[0], "shot_noise", 5, 1), corrupt_image(digits[0], "shot_noise", 5, 2)
    )


def test_global_numpy_rng_is_left_alone(photos: np.ndarray) -> None:
    np.random.seed(2024)
    expected = np.random.random(5)
    np.random.seed(2024)
    for corruption in CORRUPTIONS:
        corrupt_image(photos[1], corruption, 2, 77)
    assert np.array_equal(np.random.random(5), expected)


def test_image_seed_is_stable_and_spread() -> None:
    # A fixed value: the seed must not depend on the process (Python's hash() is salted).
    assert image_seed(0, "fog", 3, 10) == int.from_bytes(hashlib.sha256(b'["image",0,"fog",3,10]').digest()[:4], "big")
    seeds = {image_seed(b, c, s, i) for b in (0, 1) for c in ("fog", "snow") for s in (1, 2) for i in range(50)}
    assert len(seeds) == 400 and all(0 <= s < 2**32 for s in seeds)


def test_bad_requests_are_refused(photos: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_image(photos[0], "speckle_noise", 1, 0)
    with pytest.raises(ValueError, match="severity"):
        corrupt_image(photos[0], "fog", 6, 0)
    with pytest.raises(ValueError, match="seed"):
        corrupt_image(photos[0], "fog", 1, 2**32)
    with pytest.raises(ValueError, match="uint8"):
        corrupt_image(photos[0].astype(np.float32), "fog", 1, 0)
    with pytest.raises(ValueError, match="uint8"):
        corrupt_image(photos[0].transpose(1, 2, 0), "fog", 1, 0)  # HWC, not CHW


CROSS_PROCESS = """
import hashlib, json, sys
import numpy as np
from PIL import Image
from evaluator.shifts import CORRUPTIONS, corrupt_image
np.random.seed(31337)  # a different global state from the parent's
np.random.random(1000)
digit = np.load(sys.argv[1])
photo = np.asarray(Image.open(sys.argv[2]).convert("RGB")).transpose(2, 0, 1)
digests = {}
for corruption in reversed(CORRUPTIONS):  # a different order too
    out = [corrupt_image(img, corruption, s, 4242 + s) for img in (digit, photo) for s in (1, 5)]
    digests[corruption] = hashlib.sha256(b"".join(o.tobytes() for o in out)).hexdigest()
print(json.dumps(digests))
"""


@pytest.mark.slow
def test_same_pixels_in_another_process(tmp_path: Path, digits: np.ndarray, photos: np.ndarray) -> None:
    np.save(tmp_path / "digit.npy", digits[1])
    result = subprocess.run(
        [sys.executable, "-c", CROSS_PROCESS, str(tmp_path / "digit.npy"), str(CIFAR / "cat/0000.jpg")],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    for corruption in CORRUPTIONS:
        out = [corrupt_image(img, corruption, s, 4242 + s) for img in (digits[1], photos[0]) for s in (1, 5)]
        assert theirs[corruption] == hashlib.sha256(b"".join(o.tobytes() for o in out)).hexdigest(), corruption


def test_build_corruption_set_layout(digits: np.ndarray) -> None:
    images = _mnist(10)
    labels = np.arange(10, dtype=np.int64) * 3
    events: list[tuple[float, str]] = []
    corruptions, severities = ["gaussian_noise", "fog", "pixelate"], [1, 5]
    out, out_labels, groups, names = build_corruption_set(
        images, labels, base_seed=5, per_cell=4, corruptions=corruptions, severities=severities,
        progress=lambda f, s: events.append((f, s)), workers=1,
    )  # fmt: skip
    assert out.shape == (24, 1, 28, 28) and out.dtype == np.uint8
    assert out_labels.dtype == np.int64 and groups.dtype == np.int64 and groups.shape == (24,)
    assert names == ["gaussian_noise:1", "gaussian_noise:5", "fog:1", "fog:5", "pixelate:1", "pixelate:5"]
    assert np.array_equal(groups, np.repeat(np.arange(6), 4))
    subset = select_subset(10, 4, 5)
    assert len(set(subset.tolist())) == 4 and np.array_equal(subset, np.sort(subset))
    assert np.array_equal(out_labels, np.tile(labels[subset], 6))
    for cell, name in enumerate(names):
        corruption, severity = name.split(":")
        for k, index in enumerate(subset):
            seed = image_seed(5, corruption, int(severity), int(index))
            assert np.array_equal(out[cell * 4 + k], corrupt_image(images[index], corruption, int(severity), seed))
    assert events[-1][0] == 1.0 and all(0 < f <= 1 for f, _ in events) and events[0][1].startswith("corrupting ")
    assert not np.array_equal(select_subset(10, 4, 6), subset) or not np.array_equal(select_subset(10, 4, 7), subset)

    with pytest.raises(ValueError, match="per_cell"):
        build_corruption_set(images, labels, 0, per_cell=11, workers=1)
    with pytest.raises(ValueError, match="unknown corruption"):
        build_corruption_set(images, labels, 0, per_cell=2, corruptions=["saturate"], workers=1)
    with pytest.raises(ValueError, match="duplicates"):
        build_corruption_set(images, labels, 0, per_cell=2, severities=[1, 1], workers=1)


def test_full_grid_and_evaluation_set_round_trip(tmp_path: Path, photos: np.ndarray) -> None:
    images, labels = photos, np.array([3, 8], dtype=np.int64)
    out, out_labels, groups, names = build_corruption_set(images, labels, base_seed=1, per_cell=2, workers=1)
    assert out.shape == (150, 3, 32, 32) and len(names) == 75 and names[0] == "gaussian_noise:1"
    assert names[-1] == "jpeg_compression:5" and np.array_equal(np.bincount(groups), np.full(75, 2))

    path = tmp_path / "cifar-c.safetensors"
    digest = write_evaluation_set(path, out, out_labels, {"shift": "imagenet-c"}, groups=groups, group_names=names)
    data = read_evaluation_set(path, expected_sha256=digest)
    assert data.group_names == names and data.groups is not None
    assert np.array_equal(data.groups.numpy(), groups) and np.array_equal(data.images.numpy(), out)

    tensors = load_file(str(path))
    tensors["groups"][7] = len(names)  # points past the last group
    save_file(tensors, str(path), metadata={"arena": json.dumps({"shift": "imagenet-c", "group_names": names})})
    with pytest.raises(EvaluationError) as err:
        read_evaluation_set(path)
    assert err.value.code == "data_integrity" and "group ids" in err.value.message


@pytest.mark.slow
def test_worker_processes_give_the_same_set(photos: np.ndarray) -> None:
    images = np.concatenate([photos, _cifar(["dog/0002.jpg", "frog/0003.jpg"])])
    labels = np.array([3, 8, 5, 6], dtype=np.int64)
    kwargs = {"base_seed": 9, "per_cell": 3, "severities": [2, 4]}
    alone = build_corruption_set(images, labels, workers=1, **kwargs)
    pooled = build_corruption_set(images, labels, workers=2, **kwargs)
    for a, b in zip(alone[:3], pooled[:3], strict=True):
        assert np.array_equal(a, b)
    assert alone[3] == pooled[3] and alone[0].shape == (3 * 15 * 2, 3, 32, 32)
