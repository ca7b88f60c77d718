"""Bring USPS digits into MNIST's 28x28 framing, so that MNIST -> USPS is a population shift
and not also a change of image size, scale and position.

MNIST was made (LeCun, Cortes and Burges, "The MNIST database of handwritten digits") by
size-normalising each NIST digit so that its bounding box fits a 20x20 box with its aspect
ratio preserved, which produced grey levels through anti-aliasing, and then placing that
20x20-or-smaller image in a 28x28 field so that the digit's centre of mass lies at the centre
of the field. :func:`usps_to_mnist_framing` repeats those steps on USPS.
"""

from __future__ import annotations

import numpy as np

#: Side of the box the digit's bounding box is scaled to fit (MNIST: 20 px).
BOX_SIZE = 20
#: Side of the output field (MNIST: 28 px).
FIELD_SIZE = 28
#: Where the centre of mass is placed, in 0-indexed pixel coordinates (row, column). MNIST's
#: own test images have a mean centre of mass of (13.99, 14.00) with integer placement, so
#: "the centre" of the 28-px field is pixel 14 there, not the geometric 13.5.
TARGET_CENTRE = (14.0, 14.0)


def _frame_one(digit: np.ndarray) -> np.ndarray:
    """Frame one (H, W) float image in [0, 1]; returns a (28, 28) float image in [0, 1]."""
    from PIL import Image
    from scipy import ndimage

    field = np.zeros((FIELD_SIZE, FIELD_SIZE), dtype=np.float32)
    rows = np.flatnonzero(digit.any(axis=1))
    cols = np.flatnonzero(digit.any(axis=0))
    if rows.size == 0:  # a blank image stays blank
        return field
    crop = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    scale = BOX_SIZE / max(height, width)
    new_h = min(BOX_SIZE, max(1, round(height * scale)))
    new_w = min(BOX_SIZE, max(1, round(width * scale)))
    # Lanczos resampling in float mode is the anti-aliased size normalisation; its small
    # ringing overshoots are clipped back into [0, 1].
    resized = Image.fromarray(crop.astype(np.float32), mode="F").resize((new_w, new_h), Image.Resampling.LANCZOS)
    box = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    if box.sum() <= 0:
        return field
    com_r, com_c = ndimage.center_of_mass(box)
    # Integer placement (no second resampling); a very lopsided digit is kept whole inside
    # the field rather than exactly centred.
    top = int(np.clip(round(TARGET_CENTRE[0] - com_r), 0, FIELD_SIZE - new_h))
    left = int(np.clip(round(TARGET_CENTRE[1] - com_c), 0, FIELD_SIZE - new_w))
    field[top : top + new_h, left : left + new_w] = box
    return field


def usps_to_mnist_framing(images_16: np.ndarray) -> np.ndarray:
    """Re-frame bright-on-dark digits (N, 1, H, W) uint8 (USPS: 16x16) as MNIST does: uint8 (N, 1, 28, 28).

    For each image: crop to the bounding box of non-zero pixels; scale it with Lanczos
    (anti-aliased) resampling so that its longer side is 20 px, aspect ratio preserved; place
    it in a black 28x28 field, shifted by whole pixels so that its centre of mass lands at
    :data:`TARGET_CENTRE` (within half a pixel, unless that would push the digit out of the
    field). Polarity must already be MNIST's (see :func:`evaluator.data.loaders.load_usps_hdf5`).
    """
    images = np.asarray(images_16)
    if images.ndim != 4 or images.shape[1] != 1 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, 1, H, W), got {images.dtype} {images.shape}")
    out = np.empty((images.shape[0], 1, FIELD_SIZE, FIELD_SIZE), dtype=np.uint8)
    for i, image in enumerate(images[:, 0].astype(np.float32) / 255.0):
        out[i, 0] = np.rint(_frame_one(image) * 255.0).astype(np.uint8)
    return out
