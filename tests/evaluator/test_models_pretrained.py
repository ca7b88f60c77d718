"""The shared pretrained checkpoints load through convert_checkpoint + load_model and score as published.

These are the only tests that prove the zoo's architectures are right: a wrong activation,
pooling, shortcut or normalisation still loads strictly but loses accuracy.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from evaluator.models.convert import convert_checkpoint
from evaluator.models.loading import load_model, load_weights_strict
from evaluator.models.zoo import build_model
from evaluator.spec import ArtifactSpec, InputSpec

SHARED = Path(os.environ.get("ARENA_SHARED_DIR", Path(__file__).resolve().parents[2].parent / "shared"))
MODELS = SHARED / "models"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MNIST_SPEC = InputSpec(1, 28, 28)
CIFAR_SPEC = InputSpec(3, 32, 32)

pytestmark = pytest.mark.skipif(not MODELS.is_dir(), reason="shared pretrained weights not available")


def read_idx(path: Path) -> np.ndarray:
    """IDX: two zero bytes, a dtype byte (0x08 = uint8), the rank, big-endian uint32 dims, then data."""
    raw = gzip.decompress(path.read_bytes())
    assert raw[:3] == b"\x00\x00\x08"
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


@pytest.fixture(scope="module")
def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 1,000 MNIST test digits as floats in [0, 1] and their labels."""
    images = read_idx(SHARED / "data/mnist/t10k-images-idx3-ubyte.gz")[:1000]
    labels = read_idx(SHARED / "data/mnist/t10k-labels-idx1-ubyte.gz")[:1000]
    return torch.from_numpy(images.copy()).float().div(255).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


@pytest.fixture(scope="module")
def cifar_test() -> tuple[torch.Tensor, torch.Tensor]:
    """50 JPEG test images per class (500 in all); the label is the sorted folder index."""
    root = SHARED / "data/cifar10_jpeg/test"
    assert tuple(sorted(p.name for p in root.iterdir())) == CIFAR_CLASSES
    images, labels = [], []
    for label, name in enumerate(CIFAR_CLASSES):
        for path in sorted((root / name).glob("*.jpg"))[:50]:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(label)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)
    return batch, torch.tensor(labels)


def converted(architecture: str, source: str, tmp_path: Path) -> Path:
    return convert_checkpoint(architecture, MODELS / source, tmp_path / f"{architecture}.safetensors")


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in images.split(250)])
    return float((predictions == labels).float().mean())


def test_mnist_lenet5_accuracy(tmp_path: Path, mnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    path = converted("mnist_lenet5", "mnist/mnist_lenet5_clntrained.pt", tmp_path)
    model = load_model(ArtifactSpec(str(path), "safetensors", architecture="mnist_lenet5"), MNIST_SPEC)
    measured = accuracy(model, *mnist_test)
    print(f"mnist_lenet5 accuracy on 1,000 MNIST test digits: {measured:.4f}")
    assert measured >= 0.98


def test_lenet5_classic_accuracy(tmp_path: Path, mnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    path = converted("lenet5_classic", "mnist_gan/lenet_epoch=12_test_acc=0.991.pth", tmp_path)
    model = load_model(ArtifactSpec(str(path), "safetensors", architecture="lenet5_classic"), MNIST_SPEC)
    measured = accuracy(model, *mnist_test)
    print(f"lenet5_classic accuracy on 1,000 MNIST test digits: {measured:.4f}")
    assert measured >= 0.98


def test_cifar_resnet20_accuracy(tmp_path: Path, cifar_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    path = converted("cifar_resnet20", "cifar10/resnet20-12fca82f.th", tmp_path)
    model = load_model(ArtifactSpec(str(path), "safetensors", architecture="cifar_resnet20"), CIFAR_SPEC)
    measured = accuracy(model, *cifar_test)
    print(f"cifar_resnet20 accuracy on 500 CIFAR-10 JPEG test images: {measured:.4f}")
    assert measured >= 0.75


@pytest.mark.slow
@pytest.mark.parametrize(("depth", "source"), [(32, "resnet32-d509ac18.th"), (44, "resnet44-014dd654.th")])
def test_deeper_cifar_resnets_accuracy(
    tmp_path: Path, cifar_test: tuple[torch.Tensor, torch.Tensor], depth: int, source: str
) -> None:
    name = f"cifar_resnet{depth}"
    model = load_model(
        ArtifactSpec(str(converted(name, f"cifar10/{source}", tmp_path)), "safetensors", architecture=name),
        CIFAR_SPEC,
    )
    assert accuracy(model, *cifar_test) >= 0.75


def load_generator(name: str, source: str, tmp_path: Path) -> torch.nn.Module:
    model = build_model(name)
    load_weights_strict(model, load_file(str(converted(name, source, tmp_path))), name)
    return model


def test_gan_discriminator_separates_real_from_generated(
    tmp_path: Path, mnist_test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    path = converted("mnist_gan_discriminator", "mnist_gan/D--300.ckpt", tmp_path)
    detector = load_model(ArtifactSpec(str(path), "safetensors", architecture="mnist_gan_discriminator"), MNIST_SPEC)
    generator = load_generator("mnist_gan_generator", "mnist_gan/G--300.ckpt", tmp_path)
    real = mnist_test[0][:500]
    with torch.inference_mode():
        fake = generator(torch.randn(500, 64, generator=torch.Generator().manual_seed(0)))
        # Quantise like every evaluation set (uint8 on disk), so the detector cannot key on it.
        fake = (fake * 255).round() / 255
        scores = detector(torch.cat([real, fake]))
    assert scores.shape == (1000,)
    labels = np.r_[np.zeros(500), np.ones(500)]
    auc = roc_auc_score(labels, scores.numpy())
    print(f"GAN discriminator AUC, 500 MNIST vs 500 GAN samples: {auc:.3f}")
    assert auc > 0.6


def test_vae_decoder_loads_and_decodes(tmp_path: Path) -> None:
    decoder = load_generator("mnist_vae_decoder", "mnist_gan/vae_epoch_25.pth", tmp_path)
    with torch.inference_mode():
        images = decoder(torch.randn(16, 20, generator=torch.Generator().manual_seed(0)))
    assert images.shape == (16, 1, 28, 28)
    # Decoded digits are mostly dark background with some bright strokes.
    assert 0.05 < float(images.mean()) < 0.3
    assert float(images.amax(dim=(1, 2, 3)).min()) > 0.5


def test_converted_file_records_its_architecture(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = converted("cifar_resnet20", "cifar10/resnet20-12fca82f.th", tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"architecture": "cifar_resnet20"}
        assert not any(key.startswith("module.") for key in handle.keys())
