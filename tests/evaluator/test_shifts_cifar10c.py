"""CIFAR-10-C corruptions against the published definition's constants, in closed form where it has one.

The constants are Hendrycks & Dietterich's (make_cifar_c.py in hendrycks/robustness). Each test
builds the expected effect of a constant independently of the implementation: noise strength
from the output's statistics, HSV shifts with the standard library's ``colorsys``, kernels from
their formulas, JPEG quality and pixelation sizes through Pillow with the published numbers.
Pixel identity with the authors' generator itself is measured by
``measurements/cifar10c_agreement.py`` (docs/cifar10c_agreement.md).
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math

import numpy as np
import pytest
from PIL import Image

from evaluator.shifts import (
    build_corruption_set,
    cell_provenance,
    corrupt_image,
    corruption_set_metadata,
    describe_corruption_set,
    get_definition,
    image_seed,
)
from evaluator.shifts import cifar10c as c10c

SEVERITIES = (1, 2, 3, 4, 5)


def _flat(value: int) -> np.ndarray:
    return np.full((32, 32, 3), value, dtype=np.uint8)


def _photo(seed: int = 0) -> np.ndarray:
    """A smooth random colour image (a blurred random field), as a stand-in for a photograph."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((32, 32), Image.Resampling.BICUBIC))


def _runs(image: np.ndarray, corruption: str, severity: int, seeds: range) -> np.ndarray:
    return np.stack([c10c.corrupt_hwc(image, corruption, severity, s) for s in seeds]).astype(np.float64)


# ------------------------------------------------------------------ the published constants


def test_the_fifteen_and_the_four_extra_corruptions() -> None:
    assert len(c10c.CORRUPTIONS) == 15 and len(c10c.EXTRA_CORRUPTIONS) == 4
    assert c10c.EXTRA_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert [c10c.spec(n).family for n in c10c.CORRUPTIONS] == ["noise"] * 3 + ["blur"] * 4 + ["weather"] * 3 + [
        "digital"
    ] * 5
    deterministic = {n for n in c10c.ALL_CORRUPTIONS if not c10c.spec(n).random}
    assert deterministic == {"defocus_blur", "zoom_blur", "gaussian_blur", "brightness", "contrast", "saturate"} | {
        "pixelate",
        "jpeg_compression",
    }


@pytest.mark.parametrize(
    ("corruption", "published"),
    [
        # Values as printed in make_cifar_c.py (CIFAR-10-C), which differ from ImageNet-C's.
        ("gaussian_noise", (0.04, 0.06, 0.08, 0.09, 0.10)),
        ("shot_noise", (500, 250, 100, 75, 50)),
        ("impulse_noise", (0.01, 0.02, 0.03, 0.05, 0.07)),
        ("speckle_noise", (0.06, 0.1, 0.12, 0.16, 0.2)),
        ("gaussian_blur", (0.4, 0.6, 0.7, 0.8, 1)),
        ("defocus_blur", ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))),
        ("glass_blur", ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))),
        ("motion_blur", ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))),
        ("frost", ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))),
        ("fog", ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))),
        ("brightness", (0.05, 0.1, 0.15, 0.2, 0.3)),
        ("contrast", (0.75, 0.5, 0.4, 0.3, 0.15)),
        ("saturate", ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))),
        ("jpeg_compression", (80, 65, 58, 50, 40)),
        ("pixelate", (0.95, 0.9, 0.85, 0.75, 0.65)),
        # IMSIZE * (0, 0, 0.08), IMSIZE * (0.05, 0.2, 0.07), ... with IMSIZE = 32.
        (
            "elastic_transform",
            ((0, 0, 2.56), (1.6, 6.4, 2.24), (2.56, 1.92, 1.92), (3.2, 1.28, 1.6), (3.2, 0.96, 0.96)),
        ),
    ],
)
def test_severity_tables_are_the_authors(corruption: str, published: tuple) -> None:
    assert np.allclose(np.array(c10c.spec(corruption).parameters, dtype=float), np.array(published, dtype=float))


# ------------------------------------------------------------------ noise


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_noise_has_the_published_std(severity: int) -> None:
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    grey = _flat(128)
    out = _runs(grey, "gaussian_noise", severity, range(8)) / 255
    # Truncation to uint8 adds a uniform quantisation error (variance 1/12 level^2) and lowers the mean by 1/2 level.
    measured = out.std()
    expected = math.sqrt(sigma**2 + (1 / 255) ** 2 / 12)
    assert abs(measured - expected) < 0.03 * expected, (measured, expected)
    assert abs(out.mean() - (128 - 0.5) / 255) < 0.002


@pytest.mark.parametrize("severity", SEVERITIES)
def test_shot_noise_is_poisson_with_the_published_rate(severity: int) -> None:
    rate = (500, 250, 100, 75, 50)[severity - 1]
    x = 128 / 255
    out = _runs(_flat(128), "shot_noise", severity, range(8)) / 255
    # Poisson(x * rate) / rate has variance x / rate; the output only takes values k / rate (truncated to levels).
    expected = math.sqrt(x / rate)
    assert abs(out.std() - expected) < 0.05 * expected, (out.std(), expected)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_impulse_noise_hits_the_published_fraction_half_salt_half_pepper(severity: int) -> None:
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
    out = _runs(_flat(128), "impulse_noise", severity, range(20))
    n = out.size
    salt, pepper = (out == 255).mean(), (out == 0).mean()
    tolerance = 4 * math.sqrt(amount * (1 - amount) / n)
    assert abs(salt + pepper - amount) < tolerance, (salt + pepper, amount)
    assert abs(salt - pepper) < 2 * tolerance
    # Everything else keeps its value (128/255*255 can truncate to 127).
    assert set(np.unique(out)) <= {0, 127, 128, 255}


@pytest.mark.parametrize("severity", SEVERITIES)
def test_speckle_noise_is_multiplicative_with_the_published_std(severity: int) -> None:
    sigma = (0.06, 0.1, 0.12, 0.16, 0.2)[severity - 1]
    for level in (64, 128):  # far enough from 0 and 255 that clipping is negligible
        out = _runs(_flat(level), "speckle_noise", severity, range(8)) / 255
        expected = math.sqrt((level / 255 * sigma) ** 2 + (1 / 255) ** 2 / 12)
        assert abs(out.std() - expected) < 0.03 * expected, (level, out.std(), expected)


# ------------------------------------------------------------------ blur


def _impulse() -> np.ndarray:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[16, 16] = 255
    return image


@pytest.mark.parametrize("severity", SEVERITIES)
def test_defocus_blur_impulse_response_is_the_antialiased_disk(severity: int) -> None:
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[severity - 1]
    # The disk: grid points within ``radius`` of the centre, equal weights; then a 3x3 Gaussian
    # of sigma ``alias`` (OpenCV's kernel: exp(-k^2 / (2 sigma^2)) for k in -1, 0, 1, normalised).
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy * dy + dx * dx <= radius * radius]
    disk = np.zeros((5, 5))
    for dy, dx in offsets:
        disk[2 + dy, 2 + dx] = 1 / len(offsets)
    side = math.exp(-1 / (2 * alias * alias))
    g = np.array([side, 1, side]) / (1 + 2 * side)
    # Full 2-D convolution of the disk with the separable Gaussian, written out.
    kernel = np.zeros((5, 5))
    for y in range(5):
        for x in range(5):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if 0 <= y - dy < 5 and 0 <= x - dx < 5:
                        kernel[y, x] += g[dy + 1] * g[dx + 1] * disk[y - dy, x - dx]
    out = c10c.corrupt_hwc(_impulse(), "defocus_blur", severity, 0).astype(int)
    expected = np.floor(255 * kernel)
    assert np.abs(out[14:19, 14:19, 0] - expected).max() <= 1, (out[14:19, 14:19, 0], expected)
    assert out[:14].max() == 0 and out[19:].max() == 0


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_blur_impulse_response_has_the_published_sigma(severity: int) -> None:
    sigma = (0.4, 0.6, 0.7, 0.8, 1)[severity - 1]
    radius = int(4 * sigma + 0.5)  # SciPy's default truncation at 4 sigma
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    out = c10c.corrupt_hwc(_impulse(), "gaussian_blur", severity, 0).astype(int)[:, :, 1]
    expected = np.floor(255 * np.outer(taps, taps))
    window = out[16 - radius : 17 + radius, 16 - radius : 17 + radius]
    assert np.abs(window - expected).max() <= 1


@pytest.mark.parametrize("severity", (1, 4))
def test_glass_blur_moves_pixels_by_at_most_one_up_or_left(severity: int) -> None:
    # Severity 1's Gaussian (sigma 0.05) leaves pixels as they are, so the output is the local
    # shuffle alone. The published generator draws offsets from randint(-1, 1), i.e. -1 or 0,
    # and copies the neighbour onto the visited pixel: every pixel in rows and columns 2..31
    # comes from itself or its upper/left neighbours; rows and columns 0 and 1 never move.
    image = _photo(3)
    for seed in range(5):
        out = c10c.corrupt_hwc(image, "glass_blur", 1, seed).astype(int)
        assert np.abs(out[:2] - image[:2]).max() <= 1 and np.abs(out[:, :2] - image[:, :2]).max() <= 1
        for h in range(2, 32):
            for w in range(2, 32):
                candidates = np.stack([image[h, w], image[h - 1, w], image[h, w - 1], image[h - 1, w - 1]]).astype(int)
                assert np.abs(candidates - out[h, w]).max(axis=1).min() <= 1, (h, w)
    # Two passes (severity 4) move content further than one (severity 2, same sigma).
    moved = [np.abs(_runs(image, "glass_blur", s, range(4)) - image).mean() for s in (2, 4)]
    assert moved[1] > moved[0]


def _motion_blur_by_definition(image: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's documented motion blur, written out pixel by pixel (16-bit quanta, edge pixels)."""
    width = 2 * math.ceil(radius) + 1
    weights = [math.exp(-i * i / (2 * sigma * sigma)) for i in range(width)]
    total = sum(weights)
    a = math.radians(angle)
    out = np.zeros_like(image)
    for y in range(32):
        for x in range(32):
            for c in range(image.shape[2]):
                acc = 0.0
                for i, weight in enumerate(weights):
                    xx = min(max(x + math.ceil(i * math.cos(a) - 0.5), 0), 31)
                    yy = min(max(y + math.ceil(i * math.sin(a) - 0.5), 0), 31)
                    acc += weight / total * 257 * int(image[yy, xx, c])
                out[y, x, c] = int(acc + 0.5) // 257
    return out


@pytest.mark.parametrize("severity", (1, 5))
def test_motion_blur_is_imagemagicks_with_the_published_radius_sigma_and_angle_range(severity: int) -> None:
    radius, sigma = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))[severity - 1]
    image = _photo(4)
    for seed in (0, 11):
        angle = np.random.RandomState(seed).uniform(-45, 45)  # the generator's one draw
        out = c10c.corrupt_hwc(image, "motion_blur", severity, seed).astype(int)
        assert np.abs(out - _motion_blur_by_definition(image, radius, sigma, angle)).max() <= 1


def test_zoom_blur_uses_the_published_zoom_factors_and_keeps_flat_images() -> None:
    # np.arange(1, stop, 0.01) as the generator writes it; floating-point rounding keeps the
    # stop itself at severities 1 and 2 (1.06 and 1.11), so they average 7 and 12 zooms.
    factors = [np.round(np.arange(1, stop, 0.01), 2).tolist() for stop in c10c.spec("zoom_blur").parameters]
    last = (1.06, 1.11, 1.15, 1.20, 1.25)
    assert factors == [[round(1 + k / 100, 2) for k in range(round((end - 1) * 100) + 1)] for end in last]
    for severity in SEVERITIES:
        out = c10c.corrupt_hwc(_flat(100), "zoom_blur", severity, 0).astype(int)
        assert np.abs(out - 100).max() <= 1


# ------------------------------------------------------------------ weather


@pytest.mark.parametrize("severity", SEVERITIES)
def test_fog_keeps_black_black_and_lifts_white_by_the_published_strength(severity: int) -> None:
    strength = (0.2, 0.5, 0.75, 1, 1.5)[severity - 1]
    assert c10c.corrupt_hwc(_flat(0), "fog", severity, 1).max() == 0  # fog is scaled by the image's maximum
    for seed in range(3):
        out = c10c.corrupt_hwc(_flat(255), "fog", severity, seed).astype(int)
        # (1 + strength * p) / (1 + strength) for a fractal p spanning exactly [0, 1].
        assert abs(out.min() - math.floor(255 / (1 + strength))) <= 1 and out.max() == 255


@pytest.mark.parametrize("severity", SEVERITIES)
def test_frost_is_the_published_mix_of_image_and_an_authors_texture(severity: int) -> None:
    import cv2

    image_weight, frost_weight = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[severity - 1]
    black = c10c.corrupt_hwc(_flat(0), "frost", severity, 5).astype(int)
    grey = c10c.corrupt_hwc(_flat(100), "frost", severity, 5).astype(int)
    assert black.max() <= frost_weight * 255
    unclipped = grey < 255
    shift = grey[unclipped] - black[unclipped]  # image_weight * 100 plus up to one level of truncation
    assert shift.min() >= math.floor(image_weight * 100) - 1 and shift.max() <= image_weight * 100 + 1
    # The overlay is a 32x32 crop of one of the first five textures, shrunk by 0.2 (OpenCV bilinear).
    folder = c10c.frost_texture_folder()
    found = False
    for name, digest in c10c.FROST_TEXTURES_SHA256[:5]:
        data = (folder / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        texture = cv2.resize(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), (0, 0), fx=0.2, fy=0.2)
        scaled = np.floor(frost_weight * texture[..., ::-1].astype(float))
        corners = np.argwhere(np.abs(scaled[:-31, :-31] - black[0, 0]).max(axis=-1) <= 1)
        found |= any(np.abs(scaled[y : y + 32, x : x + 32] - black).max() <= 1 for y, x in corners)
    assert found


@pytest.mark.parametrize("severity", SEVERITIES)
def test_snow_lifts_black_to_the_published_image_weight(severity: int) -> None:
    weight = (0.95, 0.9, 0.9, 0.85, 0.8)[severity - 1]
    # On black, the image term is (1 - weight) * max(0, 1.5 * grey + 0.5) = (1 - weight) / 2;
    # flakes only add to it, and some pixel is free of flakes.
    floors = [c10c.corrupt_hwc(_flat(0), "snow", severity, seed).min() for seed in range(4)]
    assert all(abs(int(f) - math.floor((1 - weight) * 0.5 * 255)) <= 1 for f in floors), floors


@pytest.mark.parametrize("severity", SEVERITIES)
def test_spatter_adds_water_or_covers_with_mud(severity: int) -> None:
    mud = severity >= 4
    if not mud:
        image = _flat(60)
        out = np.stack([c10c.corrupt_hwc(image, "spatter", severity, s) for s in range(6)]).astype(int)
        added = out - 60
        assert added.min() >= -1
        wet = added[..., 1] > 20
        # Water's colour is the BGR triple (175, 238, 238) added to R, G, B: red gains 175/238 of green.
        ratio = added[..., 0][wet] / added[..., 1][wet]
        assert wet.any() and abs(np.median(ratio) - 175 / 238) < 0.05
    else:
        image = _flat(255)
        out = np.stack([c10c.corrupt_hwc(image, "spatter", severity, s) for s in range(6)]).astype(int)
        muddy = out[..., 0] < 250
        assert muddy.any()
        # Covered pixels are 255 (1 - m) + (63, 42, 20) m with m in [0.8, 1]: red - green = 21 m.
        difference = out[..., 0][muddy] - out[..., 1][muddy]
        assert difference.min() >= 16 and difference.max() <= 22


# ------------------------------------------------------------------ digital


def _hsv_reference(image: np.ndarray, change: int, factor: float, shift: float) -> np.ndarray:
    """Change HSV channel ``change`` (1 saturation, 2 value) to clip(v * factor + shift), with colorsys."""
    out = np.empty(image.shape, dtype=np.float64)
    for y in range(32):
        for x in range(32):
            hsv = list(colorsys.rgb_to_hsv(*(image[y, x] / 255.0)))
            hsv[change] = min(max(hsv[change] * factor + shift, 0.0), 1.0)
            out[y, x] = colorsys.hsv_to_rgb(*hsv)
    return np.floor(np.clip(out, 0, 1) * 255)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_shifts_hsv_value_by_the_published_amount(severity: int) -> None:
    shift = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    image = _photo(1)
    out = c10c.corrupt_hwc(image, "brightness", severity, 0).astype(int)
    assert np.abs(out - _hsv_reference(image, 2, 1.0, shift)).max() <= 1


@pytest.mark.parametrize("severity", SEVERITIES)
def test_saturate_scales_and_shifts_hsv_saturation_as_published(severity: int) -> None:
    factor, shift = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))[severity - 1]
    image = _photo(2)
    out = c10c.corrupt_hwc(image, "saturate", severity, 0).astype(int)
    assert np.abs(out - _hsv_reference(image, 1, factor, shift)).max() <= 1


@pytest.mark.parametrize("severity", SEVERITIES)
def test_contrast_scales_deviations_from_each_channel_mean(severity: int) -> None:
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    image = _photo(5)
    x = image / 255.0
    means = x.mean(axis=(0, 1))
    expected = np.floor(np.clip((x - means) * factor + means, 0, 1) * 255)
    assert np.abs(c10c.corrupt_hwc(image, "contrast", severity, 0) - expected).max() <= 1


@pytest.mark.parametrize("severity", SEVERITIES)
def test_jpeg_compression_uses_the_published_quality(severity: int) -> None:
    quality = (80, 65, 58, 50, 40)[severity - 1]
    image = _photo(6)

    def jpeg(q: int) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=q)
        return np.asarray(Image.open(buffer).convert("RGB"))

    out = c10c.corrupt_hwc(image, "jpeg_compression", severity, 0)
    assert np.array_equal(out, jpeg(quality))
    assert not np.array_equal(out, jpeg(quality + 5)) and not np.array_equal(out, jpeg(quality - 5))


@pytest.mark.parametrize(("severity", "side"), [(1, 30), (2, 28), (3, 27), (4, 24), (5, 20)])
def test_pixelate_goes_through_the_published_size(severity: int, side: int) -> None:
    # int(32 * factor) for factors 0.95, 0.9, 0.85, 0.75, 0.65, box filter down and up.
    image = _photo(7)
    small = Image.fromarray(image).resize((side, side), Image.Resampling.BOX)
    expected = np.asarray(small.resize((32, 32), Image.Resampling.BOX))
    assert np.array_equal(c10c.corrupt_hwc(image, "pixelate", severity, 0), expected)


def test_elastic_transform_keeps_flat_images_and_moves_others() -> None:
    # Mirrored borders everywhere: a flat image stays flat whatever the displacement. (Damage
    # is not monotone in severity: severity 1 has no displacement field but the largest affine
    # jitter, 0.08 of the side.)
    for severity in SEVERITIES:
        assert np.abs(c10c.corrupt_hwc(_flat(90), "elastic_transform", severity, 3).astype(int) - 90).max() <= 1
    image = _photo(8)
    assert all(np.abs(_runs(image, "elastic_transform", s, range(3)) - image).mean() > 1 for s in SEVERITIES)


# ------------------------------------------------------------------ reproducibility and the API


@pytest.mark.parametrize("corruption", c10c.ALL_CORRUPTIONS)
def test_seeded_per_image_and_global_rng_untouched(corruption: str) -> None:
    image = _photo(9)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = c10c.corrupt_hwc(image, corruption, 3, 2024)
    assert np.array_equal(np.random.get_state()[1], before)
    assert np.array_equal(first, c10c.corrupt_hwc(image, corruption, 3, 2024))
    other = c10c.corrupt_hwc(image, corruption, 3, 2025)
    assert np.array_equal(first, other) != c10c.spec(corruption).random, corruption
    assert first.dtype == np.uint8 and first.shape == (32, 32, 3)


def test_wrong_images_and_names_are_refused() -> None:
    with pytest.raises(ValueError, match="32x32"):
        c10c.corrupt_hwc(np.zeros((28, 28, 3), np.uint8), "fog", 1, 0)
    with pytest.raises(ValueError, match="32x32"):
        c10c.corrupt_hwc(np.zeros((32, 32, 3), np.float32), "fog", 1, 0)
    with pytest.raises(ValueError, match="unknown CIFAR-10-C corruption"):
        c10c.corrupt_hwc(_flat(0), "zigzag", 1, 0)
    with pytest.raises(ValueError, match="severity"):
        c10c.corrupt_hwc(_flat(0), "fog", 0, 0)
    with pytest.raises(ValueError, match="seed"):
        c10c.corrupt_hwc(_flat(0), "fog", 1, -1)
    with pytest.raises(ValueError, match="definition"):
        get_definition("mnist-c")


def test_provenance_names_the_published_definition() -> None:
    line = cell_provenance("cifar10-c", "gaussian_noise", 3)
    assert line.startswith("CIFAR-10-C (Hendrycks & Dietterich 2019)") and "severity 3" in line and "0.08" in line
    assert "extra corruption saturate" in cell_provenance("cifar10-c", "saturate", 1)
    other = cell_provenance("imagenet-c", "defocus_blur", 1)
    assert "ImageNet-C" in other and "not CIFAR-10-C, not MNIST-C" in other
    text = describe_corruption_set("cifar10-c", c10c.CORRUPTIONS, SEVERITIES, 100, "CIFAR-10 JPEG test set")
    assert "CIFAR-10-C (Hendrycks & Dietterich 2019), 15 corruptions x 5 severities" in text and "100 images" in text


def test_build_a_cifar10c_set() -> None:
    images = np.stack([_photo(i).transpose(2, 0, 1) for i in range(4)])
    labels = np.arange(4, dtype=np.int64)
    out, out_labels, groups, names = build_corruption_set(
        images, labels, base_seed=3, per_cell=2, severities=[1, 5], definition="cifar10-c", workers=1
    )
    assert len(names) == 30 and names[0] == "gaussian_noise:1" and names[-1] == "jpeg_compression:5"
    assert out.shape == (60, 3, 32, 32) and np.array_equal(np.bincount(groups), np.full(30, 2))
    subset = np.unique(out_labels[:2])
    seed = image_seed(3, "fog", 5, int(subset[0]))
    cell = names.index("fog:5")
    assert np.array_equal(out[2 * cell], corrupt_image(images[subset[0]], "fog", 5, seed, definition="cifar10-c"))
    extra = build_corruption_set(images, labels, 3, 2, corruptions=["saturate"], definition="cifar10-c", workers=1)
    assert extra[3] == [f"saturate:{s}" for s in SEVERITIES]
    metadata = corruption_set_metadata("cifar10-c", names, 2)
    assert metadata["definition"] == "cifar10-c"
    assert metadata["cells"]["fog:5"] == cell_provenance("cifar10-c", "fog", 5)
    with pytest.raises(ValueError, match="shape"):
        build_corruption_set(images[:, :, :28, :28], labels, 0, 2, definition="cifar10-c", workers=1)
    with pytest.raises(ValueError, match="unknown corruption"):
        build_corruption_set(images, labels, 0, 2, corruptions=["zigzag"], definition="cifar10-c", workers=1)
