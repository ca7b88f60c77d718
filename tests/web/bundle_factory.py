"""Small benchmark bundles made by the tests: a manifest dict and the data files it names."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

SHAPE = (1, 8, 8)


def images_and_labels(n: int, seed: int, classes: int = 3, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Distinct random images (each one's bytes differ from every other's with overwhelming probability)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, classes, n).astype(np.int64)


def manifest(slug: str = "toy", track: str = "toy-digits", version: str = "toy-1") -> dict[str, Any]:
    return {
        "format": 1,
        "benchmark": {"slug": slug, "name": "Toy benchmark", "description": "made by the tests"},
        "tracks": [{
            "slug": track, "name": "Toy digits", "task": "classifier",
            "input": {"channels": SHAPE[0], "height": SHAPE[1], "width": SHAPE[2]},
            "classes": 3, "class_names": ["zero", "one", "two"], "seed": 7, "suite_version": version,
            "threat_models": [{"norm": "Linf", "eps": 0.1, "label": "Linf-0.1"}], "attack_points": 20,
            "quota": {"daily": 3, "total": 30},
            "evaluation_sets": [
                {"name": "toy-hidden", "role": "clean", "source": "random images", "license": "CC0",
                 "split": {"data": {"layout": "npz", "path": "clean.npz"}, "hidden_fraction": 0.5,
                           "secret": "split", "public_name": "toy-public"}},
                {"name": "toy-shift", "role": "shift", "shift_kind": "natural", "source": "PNG folders",
                 "license": "CC0", "data": {"layout": "folders", "path": "shift"}},
            ],
        }],
    }


def write_bundle(root: Path, spec: dict[str, Any] | None = None, n: int = 60, seed: int = 0) -> Path:
    """A bundle folder: clean.npz (n images), shift/<class>/*.png (n // 2), benchmark.yaml."""
    spec = copy.deepcopy(spec or manifest())
    root.mkdir(parents=True, exist_ok=True)
    images, labels = images_and_labels(n, seed)
    np.savez(root / "clean.npz", images=images, labels=labels)
    shift, shift_labels = images_and_labels(n // 2, seed + 1)
    names = spec["tracks"][0].get("class_names", ["zero", "one", "two"])
    for i, (image, label) in enumerate(zip(shift, shift_labels, strict=True)):
        folder = root / "shift" / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{i:04d}.png")
    (root / "benchmark.yaml").write_text(dump(spec))
    return root


class _PlainDumper(yaml.SafeDumper):
    """YAML without anchors and aliases (the importer refuses them), even where the dict shares objects."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(spec: dict[str, Any]) -> str:
    return yaml.dump(spec, Dumper=_PlainDumper, sort_keys=False)


def set_manifest(root: Path, spec: dict[str, Any]) -> None:
    (root / "benchmark.yaml").write_text(dump(spec))
