"""Corruption sets: a published corruption benchmark's definitions, applied reproducibly.

Two definitions are registered (:data:`DEFINITIONS`), and every set and every cell says in its
provenance which one it follows:

* ``cifar10-c``: CIFAR-10-C as Hendrycks & Dietterich (2019) published it, with their
  generator's constants for 32x32 images (:mod:`evaluator.shifts.cifar10c`, written in this
  project and measured against the authors' generator);
* ``imagenet-c``: the 15 ImageNet-C corruptions with ImageNet-C's constants (made for 224 px
  images), from the ``imagecorruptions`` package (the maintained ``imagecorruptions-imaug``
  fork), on images reflect-padded to at least 32 px. On small images this is *not* a published
  benchmark: its defocus blur at severity 1 (a 3 px disk) is wider than CIFAR-10-C's at
  severity 5 (1.5 px), and on MNIST it is not Mu & Gilmer's MNIST-C (a different list of 15
  corruptions, one severity each). A set built with it should be named for what it is (e.g.
  ``mnist-imagenet-c-padded``).

The rest of this docstring describes the ``imagenet-c`` implementation.

Determinism. Every model must see the same corrupted pixels, and a rebuilt set must have the
same sha256, so randomness is pinned per image:

* each image gets its own seed, :func:`image_seed`, a sha256 of (base seed, corruption,
  severity, source index); Python's ``hash()`` is salted per process and cannot be used;
* most corruptions draw from numpy's *global* legacy RNG (gaussian/shot noise, motion blur's
  angle, snow, frost's choice of texture and crop, fog's plasma fractal, elastic transform).
  :func:`corrupt_image` seeds it for the call and restores the caller's state afterwards, so
  that it neither depends on nor disturbs anyone else's random numbers (this is why the
  function is not thread-safe: the global state is shared by all threads);
* two corruptions ignore the global RNG: ``impulse_noise`` (scikit-image's ``random_noise``
  builds a fresh ``default_rng``) and ``glass_blur`` (its pixel shuffle runs in numba, whose
  RNG is separate from numpy's, and is seeded from OS entropy by default). Both take a
  ``seed`` argument, which we pass;
* nothing else is random: no Python ``random``, and the frost textures are files shipped in
  the package, read and resized deterministically.

Legacy ``np.random`` streams are frozen by numpy's policy (NEP 19), but ``default_rng`` streams
(impulse noise) and numerical details of scipy/OpenCV may change between versions, so pixels
are reproducible for pinned package versions; the set's sha256 records the result either way.

Small images. The package refuses images under 32 px, and its algorithms (kernel radii, frost
crops, fog's fractal) assume at least that. An image smaller than 32 px in height or width is
padded to 32 by mirror reflection (``np.pad(mode="reflect")``, the same border rule as
OpenCV's filters), corrupted, and cropped back, so the output has the input's shape and no
resampling blurs it before the corruption does. For MNIST's 28x28 digits the 2-px border is
black, so this is the familiar 32x32 zero-padded MNIST framing. Resizing instead would blur
every digit even at severity 1, and the blur would not be part of the named corruption.

One-channel images are stacked to RGB (as the package itself does) and brought back to one
channel afterwards: by the first channel for most corruptions, which for a gray input all keep
gray except the three noise corruptions, which draw independent noise per channel (one channel
keeps the stated noise strength; averaging channels would weaken it); and by ITU-R 601 luminance
for ``frost`` (its textures are coloured) and ``jpeg_compression`` (chroma subsampling), which
is what the package's own gray code paths do.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from evaluator.progress import ProgressCallback
from evaluator.shifts import cifar10c

#: The 15 corruptions in the papers' order (noise, blur, weather, digital): ImageNet-C and CIFAR-10-C
#: name the same 15, so both definitions share cifar10c's list.
CORRUPTIONS: tuple[str, ...] = cifar10c.CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: Smallest height and width the package handles; smaller images are padded to it.
MIN_SIDE = 32
#: Corruptions whose randomness comes from a ``seed`` argument instead of numpy's global RNG.
_SEED_ARGUMENT = frozenset({"impulse_noise", "glass_blur"})
#: Corruptions whose output for a gray input is coloured, so gray is taken as luminance.
_LUMINANCE_BACK = frozenset({"frost", "jpeg_compression"})
_LUMA = np.array([0.299, 0.587, 0.114])
#: Images per task handed to one worker process: small enough to balance load and report
#: progress often, large enough that pickling and scheduling cost little.
_CHUNK = 250
#: Below this many output images the default is to work in this process: each spawned worker
#: first spends ~2 s importing and ~5 s compiling glass blur's numba kernel, time in which
#: one process corrupts several thousand 32-px images (~2 ms each on average).
_PARALLEL_MIN_IMAGES = 10_000


def _stable_seed(*parts: object) -> int:
    """A 32-bit seed from a sha256 of ``parts``: equal in every process and on every machine."""
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def image_seed(base_seed: int, corruption: str, severity: int, index: int) -> int:
    """The seed of one source image in one (corruption, severity) cell, in ``[0, 2**32)``.

    It depends on the source index, not the position in the output, so one image is corrupted
    the same way whatever subset or order it is built in.
    """
    return _stable_seed("image", int(base_seed), corruption, int(severity), int(index))


def _check_request(corruption: str, severity: int, definition: str = "imagenet-c") -> None:
    known = get_definition(definition).all_corruptions
    if corruption not in known:
        raise ValueError(f"unknown corruption {corruption!r} for {definition}; expected one of {', '.join(known)}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")


@contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """Restore numpy's global RNG state on exit (saving it costs ~0.1 ms, so batches save once)."""
    saved = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(saved)


def corrupt_image(
    image_uint8_chw: np.ndarray, corruption: str, severity: int, seed: int, definition: str = "imagenet-c"
) -> np.ndarray:
    """Corrupt one uint8 (C, H, W) image under ``definition``; returns a new uint8 array of the same shape.

    ``imagenet-c`` takes C in {1, 3} and any size; ``cifar10-c`` takes (3, 32, 32) only. The
    same (image, corruption, severity, seed) gives the same pixels in any process; the caller's
    numpy global RNG state is left as it was. ``seed`` must lie in ``[0, 2**32)`` (numpy's
    legacy seeding range); use :func:`image_seed` to derive one.
    """
    chosen = get_definition(definition)
    _check_request(corruption, severity, chosen.id)
    return chosen.corrupt(image_uint8_chw, corruption, severity, seed)


def _imagenet_c_image(image_uint8_chw: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """The ``imagenet-c`` definition's :func:`corrupt_image`."""
    with _global_rng_preserved():
        return _corrupt_seeded(image_uint8_chw, corruption, severity, seed)


def _corrupt_seeded(image_uint8_chw: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """:func:`_imagenet_c_image` without restoring the global RNG, which it reseeds."""
    from imagecorruptions import corrupt

    _check_request(corruption, severity, "imagenet-c")
    image = np.asarray(image_uint8_chw)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a uint8 (C, H, W) image with C in (1, 3), got {image.dtype} {image.shape}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    seed = int(seed)
    channels, height, width = image.shape
    rgb = np.repeat(image, 3, axis=0) if channels == 1 else image
    hwc = np.ascontiguousarray(rgb.transpose(1, 2, 0))
    pad_h, pad_w = max(0, MIN_SIDE - height), max(0, MIN_SIDE - width)
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        hwc = np.pad(hwc, ((top, pad_h - top), (left, pad_w - left), (0, 0)), mode="reflect")

    np.random.seed(seed)
    kwargs = {"seed": seed} if corruption in _SEED_ARGUMENT else {}
    out = corrupt(hwc, severity=severity, corruption_name=corruption, **kwargs)

    out = np.asarray(out, dtype=np.uint8)[top : top + height, left : left + width]
    if channels == 1:
        if corruption in _LUMINANCE_BACK:
            gray = np.clip(np.rint(out.astype(np.float64) @ _LUMA), 0, 255).astype(np.uint8)
        else:
            gray = out[:, :, 0]
        return np.ascontiguousarray(gray[np.newaxis])
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover - the package is a pinned requirement
        return "unknown version"


def _imagenet_c_cell(corruption: str, severity: int) -> str:
    return (
        f"ImageNet-C (Hendrycks & Dietterich 2019) corruption {corruption}, severity {severity}, with ImageNet-C's "
        f"constants (made for 224 px images) from imagecorruptions-imaug {_package_version('imagecorruptions-imaug')}; "
        f"images under {MIN_SIDE} px reflect-padded to {MIN_SIDE} and cropped back. Not a published benchmark at "
        "small sizes (not CIFAR-10-C, not MNIST-C)"
    )


@dataclass(frozen=True)
class CorruptionDefinition:
    """A corruption benchmark's definition: its names, whose constants, and the implementation.

    ``corruptions`` are the benchmark's own list (its mean corruption accuracy is over these);
    ``extra_corruptions`` are published alongside and built only on request. ``image_shape``
    is the (C, H, W) the constants were made for, or None when any size is accepted.
    """

    id: str
    reference: str
    constants: str
    corruptions: tuple[str, ...]
    extra_corruptions: tuple[str, ...]
    image_shape: tuple[int, int, int] | None
    corrupt: Callable[[np.ndarray, str, int, int], np.ndarray]
    describe_cell: Callable[[str, int], str]

    @property
    def all_corruptions(self) -> tuple[str, ...]:
        """The benchmark's corruptions followed by its extra ones."""
        return self.corruptions + self.extra_corruptions


#: Every corruption definition a set can be built with, by id.
DEFINITIONS: dict[str, CorruptionDefinition] = {
    definition.id: definition
    for definition in (
        CorruptionDefinition(
            id="cifar10-c",
            reference=cifar10c.REFERENCE,
            constants=f"the authors' constants for 32x32 images ({cifar10c.GENERATOR})",
            corruptions=cifar10c.CORRUPTIONS,
            extra_corruptions=cifar10c.EXTRA_CORRUPTIONS,
            image_shape=(3, cifar10c.SIDE, cifar10c.SIDE),
            corrupt=cifar10c.corrupt_image,
            describe_cell=cifar10c.provenance,
        ),
        CorruptionDefinition(
            id="imagenet-c",
            reference="ImageNet-C (Hendrycks & Dietterich 2019)",
            constants="ImageNet-C's constants, made for 224 px images (imagecorruptions package)",
            corruptions=CORRUPTIONS,
            extra_corruptions=(),
            image_shape=None,
            corrupt=_imagenet_c_image,
            describe_cell=_imagenet_c_cell,
        ),
    )
}


def get_definition(definition: str) -> CorruptionDefinition:
    """The registered definition with this id (ValueError listing the known ones if none)."""
    try:
        return DEFINITIONS[definition]
    except KeyError:
        known = ", ".join(DEFINITIONS)
        raise ValueError(f"unknown corruption definition {definition!r}; expected one of {known}") from None


@cache
def cell_provenance(definition: str, corruption: str, severity: int) -> str:
    """Which published definition one (corruption, severity) cell follows, with its constants."""
    _check_request(corruption, severity, definition)
    return get_definition(definition).describe_cell(corruption, severity)


def describe_corruption_set(
    definition: str, corruptions: Sequence[str], severities: Sequence[int], per_cell: int, source: str
) -> str:
    """One paragraph of provenance for a built set (an evaluation set's ``source`` field).

    ``source`` names the clean images, e.g. "CIFAR-10 JPEG test set".
    """
    chosen = get_definition(definition)
    extra = [c for c in corruptions if c in chosen.extra_corruptions]
    listed = f"{len(corruptions) - len(extra)} corruptions" + (f" and {len(extra)} extra ones" if extra else "")
    return (
        f"{source}: {chosen.reference}, {listed} x {len(severities)} severities "
        f"({', '.join(str(s) for s in severities)}) with {chosen.constants}; {per_cell} images per cell, "
        "the same images in every cell, a fixed seed per image"
    )


def corruption_set_metadata(definition: str, group_names: Sequence[str], per_cell: int) -> dict[str, object]:
    """Provenance to store with a built set: the definition and, per cell, the definition it follows."""
    chosen = get_definition(definition)
    cells = {}
    for name in group_names:
        corruption, _, severity = name.rpartition(":")
        cells[name] = cell_provenance(chosen.id, corruption, int(severity))
    return {"definition": chosen.id, "reference": chosen.reference, "constants": chosen.constants,
            "per_cell": per_cell, "cells": cells}  # fmt: skip


def select_subset(n: int, per_cell: int, base_seed: int) -> np.ndarray:
    """The sorted int64 source indices every cell of a corruption set is built from.

    One subset for all cells makes cells comparable: accuracy differences between cells come
    from the corruption, not from which images were drawn.
    """
    if not 1 <= per_cell <= n:
        raise ValueError(f"per_cell must lie in [1, {n}] (the number of source images), got {per_cell}")
    rng = np.random.Generator(np.random.PCG64(_stable_seed("subset", int(base_seed))))
    return np.sort(rng.choice(n, size=per_cell, replace=False)).astype(np.int64)


def _corrupt_chunk(
    images: np.ndarray, corruption: str, severity: int, seeds: list[int], definition: str = "imagenet-c"
) -> np.ndarray:
    """Worker task: corrupt a chunk of images (module level, so that it can be pickled)."""
    if definition != "imagenet-c":
        corrupt = get_definition(definition).corrupt
        return np.stack([corrupt(im, corruption, severity, s) for im, s in zip(images, seeds, strict=True)])
    with _global_rng_preserved():
        return np.stack([_corrupt_seeded(im, corruption, severity, s) for im, s in zip(images, seeds, strict=True)])


def _init_worker() -> None:
    """Keep OpenCV single-threaded in workers: the images are tiny and the cores are taken."""
    import cv2

    cv2.setNumThreads(1)


def build_corruption_set(
    images: np.ndarray,
    labels: np.ndarray,
    base_seed: int,
    per_cell: int,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
    definition: str = "imagenet-c",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Corrupt a seeded subset of ``per_cell`` images once per (corruption, severity) cell.

    ``definition`` is the published benchmark the cells follow (:data:`DEFINITIONS`);
    ``corruptions`` defaults to its own list (for ``cifar10-c``, the 15 without the 4 extra
    ones, which are built only when named). Describe the result with
    :func:`describe_corruption_set` and :func:`corruption_set_metadata`.

    Returns ``(images, labels, groups, group_names)``: uint8 (M, C, H, W), int64 (M,), int64
    (M,) cell index per image, and ``group_names[g] == f"{corruption}:{severity}"``, where
    M = cells * per_cell and cells come corruption-major, severity-minor. The result depends only
    on the inputs and ``base_seed``, never on ``workers`` or scheduling.

    ``workers``: processes to use; by default ``os.cpu_count()`` for sets of at least 10,000
    images and 1 (this process) for smaller ones, whose work would not repay the workers'
    start-up. A daemonic caller (which may not start children, e.g. a Celery prefork worker)
    always corrupts in this process. Workers
    are spawned, not forked (a fork of a process with live OpenMP/OpenCV thread pools can
    hang), so a script calling this needs the usual ``if __name__ == "__main__":`` guard.
    ``progress(fraction, stage)`` is called in this process as work completes.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 (N, C, H, W) with C in (1, 3), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    chosen = get_definition(definition)
    if chosen.image_shape is not None and images.shape[1:] != chosen.image_shape:
        raise ValueError(f"{chosen.id} is defined for images of shape {chosen.image_shape}, got {images.shape[1:]}")
    corruptions = list(chosen.corruptions if corruptions is None else corruptions)
    severities = list(severities)
    for corruption in corruptions:
        for severity in severities:
            _check_request(corruption, severity, chosen.id)
    if (
        not corruptions
        or not severities
        or len(set(corruptions)) < len(corruptions)
        or len(set(severities)) < len(severities)
    ):
        raise ValueError("corruptions and severities must be non-empty and free of duplicates")

    subset = select_subset(images.shape[0], per_cell, base_seed)
    source = np.ascontiguousarray(images[subset])
    cells = [(c, s) for c in corruptions for s in severities]
    group_names = [f"{c}:{s}" for c, s in cells]
    out = np.empty((len(cells) * per_cell, *source.shape[1:]), dtype=np.uint8)
    tasks = [
        (cell, start, corruption, severity)
        for cell, (corruption, severity) in enumerate(cells)
        for start in range(0, per_cell, _CHUNK)
    ]

    def arguments(start: int, corruption: str, severity: int) -> tuple[np.ndarray, str, int, list[int], str]:
        indices = subset[start : start + _CHUNK]
        seeds = [image_seed(base_seed, corruption, severity, int(i)) for i in indices]
        return source[start : start + _CHUNK], corruption, severity, seeds, chosen.id

    def store(cell: int, start: int, chunk: np.ndarray, done: int) -> None:
        out[cell * per_cell + start : cell * per_cell + start + len(chunk)] = chunk
        if progress is not None:
            progress(done / len(tasks), f"corrupting {group_names[cell]}")

    if workers is None:
        workers = (os.cpu_count() or 1) if len(out) >= _PARALLEL_MIN_IMAGES else 1
    if workers <= 1 or len(tasks) == 1 or multiprocessing.current_process().daemon:
        for done, (cell, start, corruption, severity) in enumerate(tasks, 1):
            store(cell, start, _corrupt_chunk(*arguments(start, corruption, severity)), done)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context, initializer=_init_worker) as pool:
            futures = {
                pool.submit(_corrupt_chunk, *arguments(start, corruption, severity)): (cell, start)
                for cell, start, corruption, severity in tasks
            }
            for done, future in enumerate(as_completed(futures), 1):
                store(*futures[future], future.result(), done)

    groups = np.repeat(np.arange(len(cells), dtype=np.int64), per_cell)
    return out, np.tile(labels[subset].astype(np.int64), len(cells)), groups, group_names
