"""This project's CIFAR-10-C against the authors' own generator, on the same images and seeds.

Hendrycks & Dietterich's CIFAR-10-C generator (``ImageNet-C/create_c/make_cifar_c.py`` in a
checkout of github.com/hendrycks/robustness, given on the command line and kept outside this
repository) and :mod:`evaluator.shifts.cifar10c` corrupt the same CIFAR-10 test images. Before
each reference call numpy's global RNG is seeded with the seed this project gives that image,
so every corruption whose randomness the reference draws from that RNG should give the same
pixels; impulse noise cannot (the reference's scikit-image draws from an unseeded generator),
so only its statistics can agree, and it gets more images (``--unseeded-images``).

Printed per corruption and severity: the mean absolute pixel difference (0-255 scale) between
the two sets, how many images are identical, and the accuracy of the shared CIFAR-10 ResNet-20
on both (and, with ``--imagenet-c``, on the same images corrupted with ImageNet-C's constants,
as the ``imagenet-c`` definition does). Then the mean over the 15 corruptions.

Running the reference needs what it imports: scikit-image, OpenCV and SciPy (installed with
this project) and Wand with ImageMagick 6 (measurement only: ``pip install wand`` and Debian's
``libmagickwand-6.q16-6``). The reference was written for 2018-era libraries, so a few renamed
APIs are mapped to their current names before it is imported; none changes a computed value:

* ``np.float_`` (removed in NumPy 2.0) is ``np.float64``;
* ``np.fromstring(bytes, dtype)`` (binary mode removed) is ``np.frombuffer``;
* scikit-image's ``gaussian(..., multichannel=True)`` (removed in 0.21) is ``channel_axis=-1``;
* ``torchvision``, imported for the dataset loop at the bottom of the file, is stubbed: only the
  corruption functions above that loop are imported.

The source images are the CIFAR-10 test set as the shared mirror holds it: JPEG (quality 75)
copies, not the lossless images (the clean accuracy printed is on those JPEGs). Both generators
see the same JPEG-decoded pixels, so the comparison is unaffected; the accuracies are lower than
on the original CIFAR-10-C.

    .venv/bin/python measurements/cifar10c_agreement.py /path/to/robustness --images 1000 \\
        --imagenet-c --markdown /tmp/cifar10c_agreement.md
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import json
import os
import platform
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from evaluator.data.fetch import load_dataset  # noqa: E402
from evaluator.models.zoo import build_model, remap_checkpoint  # noqa: E402
from evaluator.shifts import cifar10c  # noqa: E402
from evaluator.shifts.corruptions import corrupt_image, image_seed, select_subset  # noqa: E402

SHARED = ROOT.parent / "shared"
MODEL = ("cifar_resnet20", "cifar10/resnet20-12fca82f.th")
#: Corruptions whose reference randomness does not come from numpy's global RNG.
UNSEEDED_REFERENCE = frozenset({"impulse_noise"})
END_OF_DEFINITIONS = "# /////////////// End Distortions ///////////////"


class _TrimmedSource(importlib.abc.SourceLoader):
    """Imports the generator's corruption functions without the dataset loop that follows them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get_filename(self, fullname: str) -> str:
        return str(self.path)

    def get_data(self, path: str) -> bytes:
        source = Path(path).read_text()
        if END_OF_DEFINITIONS not in source:
            raise SystemExit(f"{path} has no line {END_OF_DEFINITIONS!r}; is this the authors' make_cifar_c.py?")
        return source[: source.index(END_OF_DEFINITIONS)].encode()


def _install_api_renames() -> None:
    """Map the 2018 APIs the generator calls to their current names (see the module docstring)."""
    import skimage.filters

    np.float_ = np.float64  # type: ignore[attr-defined]
    np.fromstring = lambda data, dtype=float: np.frombuffer(data, dtype=dtype)  # type: ignore[assignment]
    for name in ("torchvision", "torchvision.datasets", "torchvision.transforms"):
        sys.modules.setdefault(name, types.ModuleType(name))
    current_gaussian = skimage.filters.gaussian

    def gaussian(image: np.ndarray, sigma: float = 1, multichannel: bool | None = None, **kwargs: object) -> np.ndarray:
        if multichannel:
            kwargs["channel_axis"] = -1
        return current_gaussian(image, sigma=sigma, **kwargs)

    skimage.filters.gaussian = gaussian


def load_reference(checkout: Path) -> tuple[types.ModuleType, Path]:
    """The authors' generator as a module, and the folder it must run in (it opens ./frost*.png)."""
    folder = checkout / "ImageNet-C" / "create_c"
    path = folder / "make_cifar_c.py"
    if not path.is_file():
        raise SystemExit(f"{path} not found: give the root of a checkout of hendrycks/robustness")
    _install_api_renames()
    loader = _TrimmedSource(path)
    spec = importlib.util.spec_from_loader("make_cifar_c", loader, origin=str(path))
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module, folder


@contextlib.contextmanager
def _working_directory(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def reference_cell(
    reference: types.ModuleType, images: np.ndarray, indices: np.ndarray, corruption: str, severity: int, base: int
) -> np.ndarray:
    """The reference's pixels for one cell, (N, 32, 32, 3) uint8, each image after seeding the global RNG."""
    from PIL import Image

    function: Callable[..., object] = getattr(reference, corruption)
    out = np.empty_like(images)
    for k, (image, index) in enumerate(zip(images, indices, strict=True)):
        np.random.seed(image_seed(base, corruption, severity, int(index)))
        out[k] = np.uint8(function(Image.fromarray(image), severity))
    return out


def our_cell(images: np.ndarray, indices: np.ndarray, corruption: str, severity: int, base: int) -> np.ndarray:
    return np.stack(
        [
            cifar10c.corrupt_hwc(image, corruption, severity, image_seed(base, corruption, severity, int(index)))
            for image, index in zip(images, indices, strict=True)
        ]
    )


def imagenet_c_cell(images: np.ndarray, indices: np.ndarray, corruption: str, severity: int, base: int) -> np.ndarray:
    return np.stack(
        [
            corrupt_image(
                image.transpose(2, 0, 1), corruption, severity, image_seed(base, corruption, severity, int(index))
            ).transpose(1, 2, 0)
            for image, index in zip(images, indices, strict=True)
        ]
    )


def load_model(models: Path) -> torch.nn.Module:
    architecture, relative = MODEL
    checkpoint = torch.load(models / relative, map_location="cpu", weights_only=True)
    model = build_model(architecture)
    model.load_state_dict(remap_checkpoint(architecture, checkpoint))
    return model.eval()


def accuracy(model: torch.nn.Module, images_hwc: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy on uint8 (N, 32, 32, 3) images; the zoo model normalises inside."""
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images_hwc), 500):
            batch = torch.from_numpy(images_hwc[start : start + 500]).permute(0, 3, 1, 2).float() / 255
            correct += int((model(batch).argmax(1).numpy() == labels[start : start + 500]).sum())
    return correct / len(images_hwc)


def versions() -> dict[str, str]:
    """Library versions the pixels depend on (the reference's and this project's primitives)."""
    import cv2
    import PIL
    import scipy
    import skimage

    found = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
             "scikit-image": skimage.__version__, "opencv": cv2.__version__, "pillow": PIL.__version__}  # fmt: skip
    with contextlib.suppress(ImportError):
        import wand.version

        found["imagemagick"] = wand.version.MAGICK_VERSION
    return found


def markdown(rows: list[dict[str, object]], summary: dict[str, object], with_imagenet_c: bool) -> str:
    head = (
        "| corruption | sev | reference seeded | images | mean abs. pixel diff. | identical images "
        "| acc. ours | acc. reference | diff. (points) |"
    )
    rule = "|---|---:|:---:|---:|---:|---:|---:|---:|---:|"
    if with_imagenet_c:
        head += " acc. ImageNet-C constants |"
        rule += "---:|"
    lines = [head, rule]
    for row in rows:
        line = (
            f"| {row['corruption']}{' (extra)' if row['extra'] else ''} | {row['severity']} | "
            f"{'yes' if row['seeded'] else 'no'} | {row['images']} | {row['mad']:.4f} | "
            f"{row['identical']}/{row['images']} | {100 * row['acc_ours']:.1f} | {100 * row['acc_reference']:.1f} | "
            f"{100 * (row['acc_ours'] - row['acc_reference']):+.1f} |"
        )
        if with_imagenet_c:
            value = row.get("acc_imagenet_c")
            line += f" {100 * value:.1f} |" if isinstance(value, float) else " - |"
        lines.append(line)
    lines.append("")
    lines.append(
        f"Clean accuracy on the {summary['images']} source images: {100 * summary['clean']:.1f}%. "
        f"Mean over the {summary['cells']} cells of the 15 corruptions: ours {100 * summary['mean_ours']:.2f}%, "
        f"reference {100 * summary['mean_reference']:.2f}%"
        + (f", ImageNet-C constants {100 * summary['mean_imagenet_c']:.2f}%." if with_imagenet_c else ".")
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="root of a checkout of github.com/hendrycks/robustness")
    parser.add_argument("--images", type=int, default=1000, help="source images per cell (seeded subset)")
    parser.add_argument("--unseeded-images", type=int, default=10_000, help="images for impulse noise")
    parser.add_argument("--base-seed", type=int, default=0)
    parser.add_argument("--corruptions", nargs="+", default=list(cifar10c.ALL_CORRUPTIONS))
    parser.add_argument("--severities", type=int, nargs="+", default=list(cifar10c.SEVERITIES))
    parser.add_argument("--imagenet-c", action="store_true", help="also score ImageNet-C's constants")
    parser.add_argument("--mirror", type=Path, default=SHARED / "data", help="data mirror (cifar10_jpeg/test)")
    parser.add_argument("--models", type=Path, default=SHARED / "models", help="model mirror")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    reference, folder = load_reference(args.checkout.resolve())
    images_chw, labels = load_dataset("cifar10-jpeg-test", args.mirror)
    images = np.ascontiguousarray(images_chw.transpose(0, 2, 3, 1))
    model = load_model(args.models)
    started = time.perf_counter()

    rows: list[dict[str, object]] = []
    subsets: dict[int, np.ndarray] = {}
    for corruption in args.corruptions:
        seeded = corruption not in UNSEEDED_REFERENCE
        count = args.images if seeded else max(args.images, args.unseeded_images)
        indices = subsets.setdefault(count, select_subset(len(labels), count, args.base_seed))
        for severity in args.severities:
            ours = our_cell(images[indices], indices, corruption, severity, args.base_seed)
            with _working_directory(folder):
                theirs = reference_cell(reference, images[indices], indices, corruption, severity, args.base_seed)
            difference = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
            row: dict[str, object] = {
                "corruption": corruption,
                "severity": severity,
                "extra": corruption in cifar10c.EXTRA_CORRUPTIONS,
                "seeded": seeded,
                "images": int(count),
                "mad": float(difference.mean()),
                "max_diff": int(difference.max()),
                "identical": int((difference.reshape(count, -1).max(1) == 0).sum()),
                "acc_ours": accuracy(model, ours, labels[indices]),
                "acc_reference": accuracy(model, theirs, labels[indices]),
            }
            if args.imagenet_c and corruption in cifar10c.CORRUPTIONS:
                row["acc_imagenet_c"] = accuracy(
                    model, imagenet_c_cell(images[indices], indices, corruption, severity, args.base_seed),
                    labels[indices],
                )  # fmt: skip
            rows.append(row)
            print(
                f"{corruption:18s} {severity}  mad {row['mad']:.4f}  identical {row['identical']}/{count}  "
                f"acc ours {100 * row['acc_ours']:.1f}  reference {100 * row['acc_reference']:.1f}"
                + (f"  imagenet-c {100 * row['acc_imagenet_c']:.1f}" if "acc_imagenet_c" in row else "")
                + f"  [{time.perf_counter() - started:.0f} s]",
                flush=True,
            )

    main_rows = [r for r in rows if not r["extra"]]
    first = subsets.get(args.images, select_subset(len(labels), args.images, args.base_seed))
    summary: dict[str, object] = {
        "images": args.images,
        "cells": len(main_rows),
        "clean": accuracy(model, images[first], labels[first]),
        "mean_ours": float(np.mean([r["acc_ours"] for r in main_rows])) if main_rows else float("nan"),
        "mean_reference": float(np.mean([r["acc_reference"] for r in main_rows])) if main_rows else float("nan"),
    }
    with_imagenet_c = args.imagenet_c and bool(main_rows)
    if with_imagenet_c:
        summary["mean_imagenet_c"] = float(np.mean([r["acc_imagenet_c"] for r in main_rows]))
    table = markdown(rows, summary, with_imagenet_c)
    print()
    print(table)
    print()
    print(json.dumps(versions()))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary, "versions": versions()}, indent=1))


if __name__ == "__main__":
    main()
