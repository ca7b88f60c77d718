"""Laundering shifts: JPEG re-saves and down-then-up rescaling, applied to reals and fakes alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluator.data.evalsets import read_evaluation_set, write_evaluation_set
from evaluator.shifts.laundering import CONDITIONS, condition_name, launder, laundered_set


@pytest.fixture(scope="module")
def digits(mnist_test) -> np.ndarray:
    """Real digits: sharp strokes on black, the content where JPEG and resampling differ visibly."""
    images, _ = mnist_test
    return np.ascontiguousarray(images[:64])


def _changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    return float((a != b).mean())


def test_jpeg_strength_orders_the_damage(digits: np.ndarray) -> None:
    q90, q50 = launder(digits, "jpeg", 90), launder(digits, "jpeg", 50)
    assert q90.dtype == np.uint8 and q90.shape == digits.shape
    mild, strong = _changed_fraction(digits, q90), _changed_fraction(digits, q50)
    error90 = np.abs(q90.astype(int) - digits).mean()
    error50 = np.abs(q50.astype(int) - digits).mean()
    assert 0 < mild < strong  # a re-save always changes something, a harsher one more
    assert error90 < error50 and error90 < 4.0  # quality 90 stays close to the original


def test_rescale_keeps_shape_and_blurs(digits: np.ndarray) -> None:
    for scale in (0.5, 0.75):
        out = launder(digits, "rescale", scale)
        assert out.shape == digits.shape and out.dtype == np.uint8
        assert 0 < _changed_fraction(digits, out)
    # Halving loses more detail than three quarters.
    half = np.abs(launder(digits, "rescale", 0.5).astype(int) - digits).mean()
    three_quarters = np.abs(launder(digits, "rescale", 0.75).astype(int) - digits).mean()
    assert three_quarters < half


@pytest.mark.parametrize("value", [0, 128, 200, 255])
@pytest.mark.parametrize("channels", [1, 3])
def test_constant_image_is_a_fixed_point(value: int, channels: int) -> None:
    """Closed form: a flat image has only a DC coefficient, which these qualities quantise exactly
    for even offsets from 128 (255 rounds up and is clipped back), and a bilinear kernel's weights
    sum to one, so resampling a constant returns it."""
    flat = np.full((3, channels, 28, 28), value, dtype=np.uint8)
    for kind, param in CONDITIONS:
        assert np.array_equal(launder(flat, kind, param), flat), (kind, param, value)


def test_deterministic_and_tensor_in_tensor_out(digits: np.ndarray) -> None:
    for kind, param in CONDITIONS:
        assert np.array_equal(launder(digits, kind, param), launder(digits.copy(), kind, param))
    as_tensor = launder(torch.tensor(digits), "jpeg", 75)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.uint8
    assert np.array_equal(as_tensor.numpy(), launder(digits, "jpeg", 75))
    colour = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    assert launder(colour, "jpeg", 50).shape == colour.shape


def test_bad_requests_are_refused(digits: np.ndarray) -> None:
    with pytest.raises(ValueError):
        launder(digits, "jpeg", 0)
    with pytest.raises(ValueError):
        launder(digits, "rescale", 1.5)
    with pytest.raises(ValueError):
        launder(digits, "blur", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        launder(digits.astype(np.float32), "jpeg", 75)


def test_laundered_set_is_grouped_and_keeps_labels(digits: np.ndarray, tmp_path) -> None:
    labels = np.array([0, 1] * (len(digits) // 2), dtype=np.int64)
    images, out_labels, groups, names = laundered_set(digits, labels)
    n = len(digits)
    assert names == ["jpeg-q90", "jpeg-q75", "jpeg-q50", "rescale-0.5", "rescale-0.75"]
    assert images.shape == (len(CONDITIONS) * n, *digits.shape[1:]) and images.dtype == np.uint8
    assert out_labels.dtype == np.int64 and groups.dtype == np.int64
    for g, (kind, param) in enumerate(CONDITIONS):
        block = slice(g * n, (g + 1) * n)
        assert (groups[block] == g).all()
        assert np.array_equal(out_labels[block], labels)
        assert np.array_equal(images[block], launder(digits, kind, param))
    assert condition_name("rescale", 0.75) == "rescale-0.75" and condition_name("jpeg", 90.0) == "jpeg-q90"

    # The format the runner's grouped metrics read, byte-identical when rebuilt.
    first = write_evaluation_set(tmp_path / "a.safetensors", images, out_labels, {}, groups=groups, group_names=names)
    again = laundered_set(digits, labels)
    second = write_evaluation_set(tmp_path / "b.safetensors", again[0], again[1], {}, groups=again[2],
                                  group_names=again[3])
    assert first == second
    loaded = read_evaluation_set(tmp_path / "a.safetensors", first)
    assert loaded.group_names == names and torch.equal(loaded.groups, torch.from_numpy(groups))
