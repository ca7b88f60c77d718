"""Fixtures shared by the whole suite: real data from ../shared, small models made here."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ARENA_SHARED_DIR", ROOT.parent / "shared"))
SHARED_DATA = Path(os.environ.get("ARENA_DATA_MIRROR", SHARED / "data"))
SHARED_MODELS = Path(os.environ.get("ARENA_MODEL_MIRROR", SHARED / "models"))

#: Test accuracy of the shared advertorch LeNet-5 on the full MNIST test set (shared/README.md).
LENET5_MNIST_ACCURACY = 0.9889


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.fixture(scope="session")
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """The real MNIST test set, read independently of the evaluator's loaders."""
    images = _read_idx(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz")[:, None]
    labels = _read_idx(SHARED_DATA / "mnist" / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


@pytest.fixture(scope="session")
def lenet5_safetensors(tmp_path_factory) -> Path:
    """The shared MNIST LeNet-5 converted to zoo safetensors, as a researcher would upload it."""
    from evaluator.models.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("models") / "lenet5.safetensors"
    convert_checkpoint("mnist_lenet5", SHARED_MODELS / "mnist" / "mnist_lenet5_clntrained.pt", out)
    return out


@pytest.fixture(scope="session")
def lenet5_pt2(tmp_path_factory) -> Path:
    """The same LeNet-5 exported with torch.export (the recommended format)."""
    import torch
    from safetensors.torch import load_file

    from evaluator.models.convert import convert_checkpoint, export_module
    from evaluator.models.zoo import build_model
    from evaluator.spec import InputSpec

    folder = tmp_path_factory.mktemp("pt2")
    weights = folder / "lenet5.safetensors"
    convert_checkpoint("mnist_lenet5", SHARED_MODELS / "mnist" / "mnist_lenet5_clntrained.pt", weights)
    model = build_model("mnist_lenet5")
    model.load_state_dict(load_file(weights))
    model.eval()
    out = folder / "lenet5.pt2"
    with torch.no_grad():
        export_module(model, InputSpec(1, 28, 28), out)
    return out
