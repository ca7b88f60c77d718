"""The architecture zoo: weights-only submissions (safetensors) name one of these entries.

A safetensors file holds tensors but no code, so the platform has to supply the code. Each
entry is registered declaratively with :func:`register_architecture`; adding an architecture
means adding one decorated builder, never editing a chain of ``if``s.

Every zoo model takes float images in [0, 1] shaped (N, C, H, W) and does its own input
normalisation with *non-persistent* buffers: the evaluator never needs to know a model's
preprocessing, and a state dict holds only trained weights, so a file from the original
training code loads strictly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evaluator.errors import EvaluationError
from evaluator.spec import InputSpec

ZooTask = Literal["classifier", "detector", "generator"]
RemapHook = Callable[[dict[str, Tensor]], dict[str, Tensor]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

#: Wrappers that training scripts put around a state dict (checked in this order).
_STATE_DICT_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
#: Prefixes that DataParallel / torch.compile add to every key.
_KEY_PREFIXES = ("module.", "_orig_mod.")


def _keep_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return state_dict


@dataclass(frozen=True)
class ZooEntry:
    """One registered architecture: how to build it and what it expects."""

    name: str
    builder: Callable[[], nn.Module]
    #: Expected input (channels, height, width); the batch dimension is free.
    input_shape: tuple[int, int, int]
    task: ZooTask
    description: str
    #: Output classes for classifiers; ``None`` otherwise.
    num_classes: int | None = None
    #: Length of the latent vector for generators; ``None`` otherwise.
    latent_dim: int | None = None
    #: Turns an already unwrapped, prefix-stripped checkpoint dict into this entry's keys.
    remap: RemapHook = field(default=_keep_keys, repr=False)

    def build(self) -> nn.Module:
        """A fresh, randomly initialised instance in eval mode."""
        return self.builder().eval()

    def accepts(self, input_spec: InputSpec) -> bool:
        """Whether the evaluator's images fit this architecture (shape and [0, 1] range)."""
        if self.task == "generator":
            return False
        value_range = tuple(float(v) for v in input_spec.value_range)
        return input_spec.shape == self.input_shape and value_range == (0.0, 1.0)


_REGISTRY: dict[str, ZooEntry] = {}


def register_architecture(
    name: str,
    *,
    input_shape: tuple[int, int, int],
    task: ZooTask,
    description: str,
    num_classes: int | None = None,
    latent_dim: int | None = None,
    remap: RemapHook | None = None,
) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Decorator that registers a zero-argument builder under ``name``."""

    def decorate(builder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = ZooEntry(
            name=name,
            builder=builder,
            input_shape=input_shape,
            task=task,
            description=description,
            num_classes=num_classes,
            latent_dim=latent_dim,
            remap=remap or _keep_keys,
        )
        return builder

    return decorate


def get_architecture(name: str) -> ZooEntry:
    """The entry called ``name``; an unknown name is the submitter's error, so say what exists."""
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY))
        shown = repr(name) if name else "no architecture"
        raise EvaluationError(
            "unknown_architecture",
            f"The model zoo has no architecture called {shown}. Valid names: {valid}.",
        ) from None


def list_architectures() -> list[ZooEntry]:
    """All entries, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def build_model(name: str) -> nn.Module:
    """A fresh instance of architecture ``name`` in eval mode."""
    return get_architecture(name).build()


def unwrap_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Finds the tensors in a training checkpoint and strips wrapper prefixes.

    Training scripts save ``{"state_dict": ..., "epoch": ...}`` and DataParallel prefixes
    every key with ``module.``; neither belongs in a zoo state dict.
    """
    current: Mapping[str, Any] = checkpoint
    for key in _STATE_DICT_WRAPPER_KEYS:
        inner = current.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
            current = inner
            break
    tensors: dict[str, Tensor] = {}
    for key, value in current.items():
        if not isinstance(value, Tensor):
            continue
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        tensors[key] = value
    return tensors


def remap_checkpoint(name: str, state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """Turns a checkpoint dict of the original training code into ``name``'s state-dict keys."""
    return get_architecture(name).remap(unwrap_checkpoint(state_dict))


def _add_prefix(prefix: str) -> RemapHook:
    def remap(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k if k.startswith(prefix) else prefix + k: v for k, v in state_dict.items()}

    return remap


def _only_prefixes(*prefixes: str) -> RemapHook:
    def remap(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v for k, v in state_dict.items() if k.startswith(prefixes)}

    return remap


# --------------------------------------------------------------------------- building blocks


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with non-persistent buffers, so state dicts stay clean."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class ZeroPad(nn.Module):
    """Zero-pads each side: models trained on 32x32 padded MNIST see the same framing."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, (self.pad, self.pad, self.pad, self.pad))


# --------------------------------------------------------------------------- CIFAR ResNets


class _ShortcutA(nn.Module):
    """He et al.'s option A: subsample by striding, zero-pad the new channels (no weights)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        half = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra_channels - half))


class _CifarBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(planes - in_planes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels, n blocks each."""

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n + 2")
        blocks = (depth - 2) // 6
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [_CifarBasicBlock(in_planes, planes, stride)]
        layers += [_CifarBasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _register_cifar_resnet(depth: int) -> None:
    register_architecture(
        f"cifar_resnet{depth}",
        input_shape=(3, 32, 32),
        task="classifier",
        num_classes=10,
        description=(
            f"CIFAR ResNet-{depth} with option-A shortcuts (akamaster/pytorch_resnet_cifar10 keys); "
            "normalises with ImageNet mean/std inside."
        ),
    )(lambda: CifarResNet(depth))


for _depth in (20, 32, 44, 56):
    _register_cifar_resnet(_depth)


# --------------------------------------------------------------------------- torchvision-style ResNet-18


class _BasicBlock(nn.Module):
    """torchvision's BasicBlock, with its parameter names (``downsample.0``/``downsample.1``)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18; ``cifar_stem`` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv (32 px inputs)."""

    def __init__(self, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...], cifar_stem: bool) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(_BasicBlock(64, 64, 1), _BasicBlock(64, 64, 1))
        self.layer2 = nn.Sequential(_BasicBlock(64, 128, 2), _BasicBlock(128, 128, 1))
        self.layer3 = nn.Sequential(_BasicBlock(128, 256, 2), _BasicBlock(256, 256, 1))
        self.layer4 = nn.Sequential(_BasicBlock(256, 512, 2), _BasicBlock(512, 512, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.maxpool(F.relu(self.bn1(self.conv1(self.normalize(x)))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def _remap_cifar_resnet18(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Accepts the widespread kuangliu/pytorch-cifar naming (``shortcut``, ``linear``) too."""
    remapped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        key = key.replace(".shortcut.", ".downsample.")
        if key.startswith("linear."):
            key = "fc." + key[len("linear.") :]
        remapped[key] = value
    return remapped


@register_architecture(
    "resnet18",
    input_shape=(3, 32, 32),
    task="classifier",
    num_classes=10,
    remap=_remap_cifar_resnet18,
    description="ResNet-18 for CIFAR-10 (3x3 stem, no max-pool), torchvision key names; CIFAR-10 mean/std inside.",
)
def _build_resnet18_cifar() -> nn.Module:
    return ResNet18(10, CIFAR10_MEAN, CIFAR10_STD, cifar_stem=True)


@register_architecture(
    "resnet18_imagenet",
    input_shape=(3, 224, 224),
    task="classifier",
    num_classes=1000,
    description="torchvision ResNet-18 (7x7 stem, max-pool, 1000 classes); ImageNet mean/std inside.",
)
def _build_resnet18_imagenet() -> nn.Module:
    return ResNet18(1000, IMAGENET_MEAN, IMAGENET_STD, cifar_stem=False)


# --------------------------------------------------------------------------- MNIST classifiers


class MnistLeNet5(nn.Module):
    """advertorch's MNIST LeNet-5 variant; trained on raw [0, 1] pixels, so no normalisation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.linear1 = nn.Linear(7 * 7 * 64, 200)
        self.linear2 = nn.Linear(200, 10)

    def forward(self, x: Tensor) -> Tensor:
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.max_pool2d(F.relu(self.conv2(out)), 2)
        out = F.relu(self.linear1(out.flatten(1)))
        return self.linear2(out)


@register_architecture(
    "mnist_lenet5",
    input_shape=(1, 28, 28),
    task="classifier",
    num_classes=10,
    description="MNIST LeNet-5 variant (3x3 convs 32/64, linear 3136-200-10), advertorch keys; no normalisation.",
)
def _build_mnist_lenet5() -> nn.Module:
    return MnistLeNet5()


class ClassicLeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling, as in the shared checkpoint (checked by its accuracy).

    The checkpoint was trained on 32x32 zero-padded MNIST, so the model pads 28x28 inputs by 2.
    The original ends in LogSoftmax; it is left out because logits and log-probabilities give
    the same softmax and the same predictions.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pad = ZeroPad(2)
        self.convnet = nn.Sequential(
            OrderedDict(
                c1=nn.Conv2d(1, 6, 5),
                relu1=nn.ReLU(),
                s2=nn.MaxPool2d(2, 2),
                c3=nn.Conv2d(6, 16, 5),
                relu3=nn.ReLU(),
                s4=nn.MaxPool2d(2, 2),
                c5=nn.Conv2d(16, 120, 5),
                relu5=nn.ReLU(),
            )
        )
        self.fc = nn.Sequential(OrderedDict(f6=nn.Linear(120, 84), relu6=nn.ReLU(), f7=nn.Linear(84, 10)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.convnet(self.pad(x)).flatten(1))


@register_architecture(
    "lenet5_classic",
    input_shape=(1, 28, 28),
    task="classifier",
    num_classes=10,
    description="Classic LeNet-5 (c1/c3/c5 5x5 convs, f6, f7), ReLU + max-pool; pads 28x28 to 32x32 inside.",
)
def _build_lenet5_classic() -> nn.Module:
    return ClassicLeNet5()


# --------------------------------------------------------------------------- MNIST GAN / VAE


class MnistGanDiscriminator(nn.Module):
    """The shared GAN's discriminator turned into a platform detector.

    The GAN saw inputs in [-1, 1] and its sigmoid gives P(real); the platform wants one logit
    per image that the image is *fake*, which is the negated pre-sigmoid logit.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(784, 256), nn.LeakyReLU(0.2), nn.Linear(256, 256), nn.LeakyReLU(0.2), nn.Linear(256, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        real_logit = self.net((x * 2 - 1).flatten(1)).squeeze(-1)
        return -real_logit


@register_architecture(
    "mnist_gan_discriminator",
    input_shape=(1, 28, 28),
    task="detector",
    remap=_add_prefix("net."),
    description="MLP discriminator of the shared MNIST GAN (784-256-256-1); returns the logit that an image is fake.",
)
def _build_mnist_gan_discriminator() -> nn.Module:
    return MnistGanDiscriminator()


class MnistGanGenerator(nn.Module):
    """The shared GAN's generator: z ~ N(0, I) in 64 dims to (N, 1, 28, 28) images in [0, 1]."""

    latent_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 784), nn.Tanh()
        )

    def forward(self, z: Tensor) -> Tensor:
        return ((self.net(z) + 1) / 2).view(-1, 1, 28, 28)


@register_architecture(
    "mnist_gan_generator",
    input_shape=(1, 28, 28),
    task="generator",
    latent_dim=MnistGanGenerator.latent_dim,
    remap=_add_prefix("net."),
    description="MLP generator of the shared MNIST GAN (64-256-256-784, tanh); outputs images in [0, 1].",
)
def _build_mnist_gan_generator() -> nn.Module:
    return MnistGanGenerator()


class MnistVaeDecoder(nn.Module):
    """Decoder half of the shared MNIST VAE: z ~ N(0, I) in 20 dims to images in [0, 1]."""

    latent_dim = 20

    def __init__(self) -> None:
        super().__init__()
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))).view(-1, 1, 28, 28)


@register_architecture(
    "mnist_vae_decoder",
    input_shape=(1, 28, 28),
    task="generator",
    latent_dim=MnistVaeDecoder.latent_dim,
    remap=_only_prefixes("fc3.", "fc4."),
    description="Decoder of the shared MNIST VAE (20-400-784, sigmoid); a second generator family.",
)
def _build_mnist_vae_decoder() -> nn.Module:
    return MnistVaeDecoder()


class MnistSmallCnnDetector(nn.Module):
    """A small CNN baseline detector that the platform trains itself; one fake logit per image."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = Normalize(MNIST_MEAN, MNIST_STD)
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.normalize(x)).flatten(1)).squeeze(-1)


@register_architecture(
    "mnist_small_cnn_detector",
    input_shape=(1, 28, 28),
    task="detector",
    description="Small CNN (conv 16/32, linear 1568-64-1) real-vs-fake baseline; MNIST mean/std inside.",
)
def _build_mnist_small_cnn_detector() -> nn.Module:
    return MnistSmallCnnDetector()


class MnistSurrogateCnnDetector(nn.Module):
    """A second small detector family, for black-box transfer attacks on the detector track.

    The transfer set is crafted on this model and then scored by a submission that was never
    queried, so it must *not* share the baseline's architecture: 5x5 kernels, wider channels and
    a linear head (no hidden layer) make it a different function class from the 3x3 small CNN,
    so the attack measures transfer rather than a white-box attack on a look-alike.
    """

    def __init__(self) -> None:
        super().__init__()
        self.normalize = Normalize(MNIST_MEAN, MNIST_STD)
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(64 * 7 * 7, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.normalize(x)).flatten(1)).squeeze(-1)


@register_architecture(
    "mnist_surrogate_cnn_detector",
    input_shape=(1, 28, 28),
    task="detector",
    description="Surrogate CNN (5x5 convs 32/64, linear 3136-1) real-vs-fake detector for transfer attacks; "
    "MNIST mean/std inside.",
)
def _build_mnist_surrogate_cnn_detector() -> nn.Module:
    return MnistSurrogateCnnDetector()
