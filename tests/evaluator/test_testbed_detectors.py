"""Platform-trained detectors: deterministic training, a working detector, and the transfer attack."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluator.detector_attacks.common import fake_scores
from evaluator.models.zoo import build_model, get_architecture
from evaluator.testbed.detectors import (
    BASELINE_ARCHITECTURE,
    SURROGATE_ARCHITECTURE,
    detector_auc,
    sample_generator,
    train_detector,
    transfer_attack,
)

#: Tiny on purpose: the point is the code path and its guarantees, not a good detector.
COUNT = 200
EPS = 8 / 255


def _blobs(count: int, seed: int) -> np.ndarray:
    """Digit-like images: one smooth bright blob of random place and size on a black background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:28, 0:28]
    centres = rng.uniform(9, 19, size=(count, 2))
    widths = rng.uniform(2.5, 5.0, size=count)
    squared = (rows[None] - centres[:, 0, None, None]) ** 2 + (cols[None] - centres[:, 1, None, None]) ** 2
    images = 255.0 * np.exp(-squared / (2 * widths[:, None, None] ** 2))
    return np.round(images).astype(np.uint8)[:, None]


def _checkered(images: np.ndarray) -> np.ndarray:
    """The same kind of image with a faint checkerboard: a generator's upsampling artefact, stylised."""
    rows, cols = np.mgrid[0:28, 0:28]
    board = np.where((rows + cols) % 2 == 0, 30, 0)
    return np.clip(images.astype(np.int64) + board, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def easy_pair() -> tuple[np.ndarray, np.ndarray]:
    return _blobs(COUNT, seed=1), _checkered(_blobs(COUNT, seed=2))


@pytest.fixture(scope="module")
def surrogate(easy_pair) -> torch.nn.Module:
    reals, fakes = easy_pair
    return train_detector(SURROGATE_ARCHITECTURE, reals, fakes, seed=3, epochs=1, batch_size=32)


def test_surrogate_is_a_different_registered_detector() -> None:
    entry = get_architecture(SURROGATE_ARCHITECTURE)
    assert entry.task == "detector" and entry.input_shape == (1, 28, 28)
    baseline, other = build_model(BASELINE_ARCHITECTURE).state_dict(), build_model(SURROGATE_ARCHITECTURE).state_dict()
    assert {k: v.shape for k, v in baseline.items()} != {k: v.shape for k, v in other.items()}
    with torch.no_grad():
        assert build_model(SURROGATE_ARCHITECTURE)(torch.rand(3, 1, 28, 28)).shape == (3,)


def test_training_is_deterministic(easy_pair) -> None:
    reals, fakes = easy_pair
    first = train_detector(BASELINE_ARCHITECTURE, reals, fakes, seed=11, epochs=1, batch_size=32)
    second = train_detector(BASELINE_ARCHITECTURE, reals.copy(), fakes.copy(), seed=11, epochs=1, batch_size=32)
    other = train_detector(BASELINE_ARCHITECTURE, reals, fakes, seed=12, epochs=1, batch_size=32)
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)
    assert not first.training and not any(p.requires_grad for p in first.parameters())


def test_trained_detector_separates_an_easy_pair(easy_pair) -> None:
    reals, fakes = easy_pair
    model = train_detector(BASELINE_ARCHITECTURE, reals, fakes, seed=5, epochs=2, batch_size=32)
    fresh_reals, fresh_fakes = _blobs(100, seed=21), _checkered(_blobs(100, seed=22))
    assert detector_auc(model, fresh_reals, fresh_fakes) > 0.9


def test_bad_training_requests_are_refused(easy_pair) -> None:
    reals, fakes = easy_pair
    with pytest.raises(ValueError):
        train_detector("mnist_lenet5", reals, fakes)  # a classifier, not a detector
    with pytest.raises(ValueError):
        train_detector(BASELINE_ARCHITECTURE, reals[:, :, :14], fakes)
    with pytest.raises(ValueError):
        train_detector(BASELINE_ARCHITECTURE, reals.astype(np.float32), fakes)


def test_transfer_attack_stays_in_budget_and_lowers_the_surrogate(surrogate, easy_pair) -> None:
    _, fakes = easy_pair
    attacked = transfer_attack(surrogate, fakes, EPS, steps=5, seed=7)
    assert isinstance(attacked, np.ndarray) and attacked.dtype == np.uint8 and attacked.shape == fakes.shape
    assert int(np.abs(attacked.astype(np.int64) - fakes).max()) <= 8  # 8/255 is eight grey levels
    assert not np.array_equal(attacked, fakes)
    clean_scores = fake_scores(surrogate, torch.tensor(fakes).float() / 255)
    attacked_scores = fake_scores(surrogate, torch.tensor(attacked).float() / 255)
    assert float(attacked_scores.mean()) < float(clean_scores.mean())

    again = transfer_attack(surrogate, torch.tensor(fakes), EPS, steps=5, seed=7)
    assert isinstance(again, torch.Tensor) and np.array_equal(again.numpy(), attacked)  # deterministic


def test_sample_generator_is_seeded_and_quantised() -> None:
    torch.manual_seed(0)
    generator = build_model("mnist_gan_generator")
    first, second = sample_generator(generator, 5, 9, 64), sample_generator(generator, 5, 9, 64)
    assert first.dtype == np.uint8 and first.shape == (5, 1, 28, 28)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, sample_generator(generator, 5, 10, 64))


def test_tone_preserving_transfer_adds_no_noise(surrogate, easy_pair) -> None:
    """Each pixel moves only towards its nearer extreme: black stays black, white stays white."""
    _, fakes = easy_pair
    fakes = np.asarray(fakes).copy()
    fakes[:, :, :4, :] = 0  # a flat black band, like MNIST's background
    attacked = transfer_attack(surrogate, fakes, 16 / 255, steps=5).astype(np.int64)
    clean = fakes.astype(np.int64)
    assert np.all(attacked[clean == 0] == 0) and np.all(attacked[clean == 255] == 255)
    dark, light = clean < 128, clean >= 128
    assert np.all(attacked[dark] <= clean[dark]) and np.all(attacked[light] >= clean[light])
    assert np.abs(attacked - clean).max() <= 16
    plain = transfer_attack(surrogate, fakes, 16 / 255, steps=5, tone_preserving=False).astype(np.int64)
    assert np.any(plain[clean == 0] > 0)  # the plain ball does put noise on the black band
