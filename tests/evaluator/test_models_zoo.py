"""The zoo registry: every entry builds, takes [0, 1] images and keeps state dicts weights-only."""

from __future__ import annotations

import pytest
import torch

from evaluator.errors import EvaluationError
from evaluator.models.zoo import (
    build_model,
    get_architecture,
    list_architectures,
    register_architecture,
    remap_checkpoint,
)
from evaluator.spec import InputSpec

EXPECTED = {
    "cifar_resnet20": ((3, 32, 32), "classifier"),
    "cifar_resnet32": ((3, 32, 32), "classifier"),
    "cifar_resnet44": ((3, 32, 32), "classifier"),
    "cifar_resnet56": ((3, 32, 32), "classifier"),
    "mnist_lenet5": ((1, 28, 28), "classifier"),
    "lenet5_classic": ((1, 28, 28), "classifier"),
    "resnet18": ((3, 32, 32), "classifier"),
    "resnet18_imagenet": ((3, 224, 224), "classifier"),
    "mnist_gan_discriminator": ((1, 28, 28), "detector"),
    "mnist_gan_generator": ((1, 28, 28), "generator"),
    "mnist_vae_decoder": ((1, 28, 28), "generator"),
    "mnist_small_cnn_detector": ((1, 28, 28), "detector"),
}


def test_registry_lists_every_architecture_sorted() -> None:
    names = [entry.name for entry in list_architectures()]
    assert names == sorted(names)
    assert set(EXPECTED) <= set(names)
    for name, (shape, task) in EXPECTED.items():
        entry = get_architecture(name)
        assert (entry.input_shape, entry.task) == (shape, task)
        assert entry.description


def test_unknown_architecture_lists_valid_names() -> None:
    with pytest.raises(EvaluationError) as caught:
        get_architecture("vgg_nonexistent")
    assert caught.value.code == "unknown_architecture"
    assert "cifar_resnet20" in caught.value.message


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError):
        register_architecture("mnist_lenet5", input_shape=(1, 28, 28), task="classifier", description="dup")(
            lambda: torch.nn.Identity()
        )


@pytest.mark.parametrize("name", [n for n, (_, task) in EXPECTED.items() if task != "generator"])
def test_scoring_models_take_unit_range_images(name: str) -> None:
    entry = get_architecture(name)
    model = build_model(name)
    assert not model.training
    with torch.no_grad():
        out = model(torch.rand(2, *entry.input_shape))
    expected = (2, entry.num_classes) if entry.task == "classifier" else (2,)
    assert tuple(out.shape) == expected
    assert entry.accepts(InputSpec(*entry.input_shape))
    assert not entry.accepts(InputSpec(*entry.input_shape, value_range=(-1.0, 1.0)))


@pytest.mark.parametrize(("name", "latent_dim"), [("mnist_gan_generator", 64), ("mnist_vae_decoder", 20)])
def test_generators_map_latents_to_unit_range_images(name: str, latent_dim: int) -> None:
    entry = get_architecture(name)
    model = build_model(name)
    assert entry.latent_dim == latent_dim == model.latent_dim
    with torch.no_grad():
        images = model(torch.randn(3, latent_dim))
    assert images.shape == (3, 1, 28, 28)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_normalisation_stays_out_of_state_dicts() -> None:
    for entry in list_architectures():
        keys = build_model(entry.name).state_dict()
        assert not any(k.endswith((".mean", ".std")) or k in ("mean", "std") for k in keys), entry.name


def test_resnet18_imagenet_uses_torchvision_names() -> None:
    keys = set(build_model("resnet18_imagenet").state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.bn2.bias",
        "fc.weight",
        "fc.bias",
    ):
        assert key in keys
    assert len([k for k in keys if not k.endswith("num_batches_tracked")]) == 102


def test_cifar_resnet_has_the_published_depth() -> None:
    for depth in (20, 32, 44, 56):
        model = build_model(f"cifar_resnet{depth}")
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) + 1 == depth  # plus the final linear layer; option A adds no convs


def test_remap_hooks() -> None:
    tensor = torch.zeros(1)
    wrapped = {"state_dict": {"module.conv1.weight": tensor}, "best_prec1": 91.0}
    assert list(remap_checkpoint("cifar_resnet20", wrapped)) == ["conv1.weight"]
    assert list(remap_checkpoint("mnist_gan_discriminator", {"0.weight": tensor})) == ["net.0.weight"]
    assert list(remap_checkpoint("mnist_vae_decoder", {"fc1.weight": tensor, "fc3.bias": tensor})) == ["fc3.bias"]
    kuangliu = {"layer2.0.shortcut.0.weight": tensor, "linear.bias": tensor}
    assert set(remap_checkpoint("resnet18", kuangliu)) == {"layer2.0.downsample.0.weight", "fc.bias"}
