"""USPS -> MNIST framing: 20-px box, centre of mass at the field's centre."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from evaluator.data.framing import usps_to_mnist_framing
from evaluator.data.loaders import load_usps_hdf5

REPO = Path(__file__).resolve().parents[2]


def _shared_data() -> Path | None:
    candidates = [os.environ.get("ARENA_DATA_MIRROR", ""), REPO / "shared" / "data", REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "usps").is_dir():
            return Path(candidate)
    return None


SHARED = _shared_data()


def _bbox_sides(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = images[:, 0] > 0
    return mask.any(axis=2).sum(axis=1), mask.any(axis=1).sum(axis=1)


def _centres(images: np.ndarray) -> np.ndarray:
    return np.array([ndimage.center_of_mass(image[0].astype(np.float64)) for image in images])


@pytest.mark.skipif(SHARED is None, reason="shared/data mirror not available")
def test_usps_framed_like_mnist() -> None:
    digits, _ = load_usps_hdf5(SHARED / "usps/usps.h5")
    framed = usps_to_mnist_framing(digits)
    assert framed.shape == (2007, 1, 28, 28) and framed.dtype == np.uint8
    centres = _centres(framed)
    # MNIST's convention: centre of mass at the centre of the 28x28 field, which in MNIST's own
    # test images is pixel 14 (mean 13.99, 14.00); integer placement keeps it within half a pixel.
    assert np.all(np.abs(centres - 14.0) <= 1.0)
    assert np.abs(centres.mean(axis=0) - 14.0).max() < 0.1
    heights, widths = _bbox_sides(framed)
    assert np.all(np.maximum(heights, widths) >= 19) and np.all(np.maximum(heights, widths) <= 20)
    # The 4-px margin MNIST keeps around a centred digit holds for typical digits.
    assert np.median(np.maximum(heights, widths)) == 20


def test_aspect_ratio_and_centring_on_a_synthetic_digit() -> None:
    image = np.zeros((1, 1, 16, 16), dtype=np.uint8)
    image[0, 0, 0:8, 0:4] = 255  # an 8x4 bar in the corner
    framed = usps_to_mnist_framing(image)
    heights, widths = _bbox_sides(framed)
    assert heights[0] == 20 and widths[0] == 10  # aspect ratio kept
    np.testing.assert_allclose(_centres(framed)[0], (14.0, 14.0), atol=0.51)


def test_blank_stays_blank_and_bad_input_is_refused() -> None:
    assert usps_to_mnist_framing(np.zeros((2, 1, 16, 16), dtype=np.uint8)).max() == 0
    with pytest.raises(ValueError):
        usps_to_mnist_framing(np.zeros((2, 16, 16), dtype=np.uint8))
