"""Image laundering for detector tracks: the re-encoding every image gets on its way round the web.

A synthetic-image detector that keys on the generator's exact pixel statistics can be defeated
without any attack at all: a JPEG re-save or a resize on upload smooths those statistics away
(Carlini & Farid 2020 call this "laundering"). The shift is applied to reals *and* fakes alike,
because that is what happens in practice and because laundering only one class would hand the
detector a trivial cue (compression artefacts) that has nothing to do with being fake.

The conditions are plain and reproducible: Pillow's JPEG encoder at qualities 90, 75 and 50,
and a bilinear down-then-up scale by 0.5 and 0.75 back to the original size. Nothing is random,
so the same images give the same pixels on every run (for a pinned Pillow and libjpeg; a set's
sha256 records the result either way).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal, overload

import numpy as np
import torch
from PIL import Image

LaunderKind = Literal["jpeg", "rescale"]
#: The conditions of a laundered set, in group order: JPEG from mild to strong, then rescaling
#: from strong to mild. Qualities 90/75/50 span "camera default" to "aggressive social media";
#: 0.5 and 0.75 are the usual thumbnail and preview scalings.
CONDITIONS: tuple[tuple[LaunderKind, float], ...] = (
    ("jpeg", 90),
    ("jpeg", 75),
    ("jpeg", 50),
    ("rescale", 0.5),
    ("rescale", 0.75),
)


def condition_name(kind: LaunderKind, param: float) -> str:
    """The group name of one condition, e.g. ``jpeg-q75`` or ``rescale-0.5`` (stable: results key on it)."""
    if kind == "jpeg":
        return f"jpeg-q{int(param)}"
    if kind == "rescale":
        return f"rescale-{float(param):g}"
    raise ValueError(f"unknown laundering kind {kind!r}; expected 'jpeg' or 'rescale'")


def _check_param(kind: LaunderKind, param: float) -> None:
    if kind == "jpeg":
        if int(param) != param or not 1 <= int(param) <= 95:
            raise ValueError(f"JPEG quality must be a whole number in [1, 95], got {param!r}")
    elif kind == "rescale":
        if not 0.0 < float(param) <= 1.0:
            raise ValueError(f"rescale factor must lie in (0, 1], got {param!r}")
    else:
        raise ValueError(f"unknown laundering kind {kind!r}; expected 'jpeg' or 'rescale'")


def _to_pil(image_chw: np.ndarray) -> Image.Image:
    """A (1|3, H, W) uint8 array as a Pillow image: gray stays gray, so JPEG encodes one channel."""
    if image_chw.shape[0] == 1:
        return Image.fromarray(np.ascontiguousarray(image_chw[0]), mode="L")
    return Image.fromarray(np.ascontiguousarray(image_chw.transpose(1, 2, 0)), mode="RGB")


def _from_pil(image: Image.Image, channels: int) -> np.ndarray:
    array = np.asarray(image, dtype=np.uint8)
    if channels == 1:
        return array[np.newaxis]
    return array.transpose(2, 0, 1)


def _launder_one(image_chw: np.ndarray, kind: LaunderKind, param: float) -> np.ndarray:
    channels, height, width = image_chw.shape
    pil = _to_pil(image_chw)
    if kind == "jpeg":
        # In memory, with Pillow's fixed defaults (no optimisation pass, standard tables), so
        # the encoding depends only on the pixels and the quality.
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=int(param))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out = decoded.convert(pil.mode)
    else:
        small = (max(1, round(width * float(param))), max(1, round(height * float(param))))
        out = pil.resize(small, Image.Resampling.BILINEAR).resize((width, height), Image.Resampling.BILINEAR)
    return _from_pil(out, channels)


@overload
def launder(images_uint8: np.ndarray, kind: LaunderKind, param: float) -> np.ndarray: ...
@overload
def launder(images_uint8: torch.Tensor, kind: LaunderKind, param: float) -> torch.Tensor: ...


def launder(images_uint8: np.ndarray | torch.Tensor, kind: LaunderKind, param: float) -> np.ndarray | torch.Tensor:
    """Launder uint8 (N, C, H, W) images, C in {1, 3}: ``jpeg`` at quality ``param`` or
    ``rescale`` by factor ``param`` (bilinear down, then bilinear back to H x W).

    Returns uint8 images of the same shape, as a numpy array or a tensor like the input, so
    the evaluator (tensors) and the set builders (numpy) can both call it without conversions.
    """
    _check_param(kind, param)
    as_tensor = isinstance(images_uint8, torch.Tensor)
    images = images_uint8.detach().cpu().numpy() if isinstance(images_uint8, torch.Tensor) else images_uint8
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, C, H, W) images with C in (1, 3), got {images.dtype} {images.shape}")
    out = np.empty_like(images)
    for index, image in enumerate(images):
        out[index] = _launder_one(image, kind, param)
    return torch.from_numpy(out) if as_tensor else out


def laundered_set(
    images: np.ndarray,
    labels: np.ndarray,
    conditions: Sequence[tuple[LaunderKind, float]] = CONDITIONS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Every image under every condition, for one grouped evaluation set.

    Returns ``(images, labels, groups, group_names)`` in the format of
    :func:`evaluator.shifts.corruptions.build_corruption_set`: uint8 (M, C, H, W), int64 (M,),
    int64 (M,) condition index per image and ``group_names[g]`` such as ``jpeg-q75``, with
    M = len(conditions) * N, condition-major. All images go through every condition, so each
    group's AUC compares the same reals with the same fakes and differs only by the laundering.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    conditions = list(conditions)
    names = [condition_name(kind, param) for kind, param in conditions]
    if not conditions or len(set(names)) != len(names):
        raise ValueError("conditions must be non-empty and free of duplicates")
    parts = [launder(images, kind, param) for kind, param in conditions]
    groups = np.repeat(np.arange(len(conditions), dtype=np.int64), images.shape[0])
    return np.concatenate(parts), np.tile(labels.astype(np.int64), len(conditions)), groups, names
