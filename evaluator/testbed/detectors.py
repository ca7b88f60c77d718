"""Detectors the platform trains itself: the detector track's baseline and the transfer surrogate.

Two jobs need a real-vs-fake detector trained here rather than downloaded. A track needs a
plain, reproducible baseline (the GAN's own discriminator is a weak, idiosyncratic detector);
and the black-box transfer attack needs a *surrogate*, a detector of another architecture,
trained on public data only, whose adversarial fakes are then scored by submissions that were
never queried. Both train on the public MNIST half against fakes drawn with a public seed, so
nothing hidden leaks into them.

As in :mod:`evaluator.testbed.digits`, everything is seeded and runs on the CPU with a pinned
thread count and deterministic algorithms, so a re-run gives bit-identical weights (same
sha256), which lets the platform recognise baselines it already holds.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evaluator.detector_attacks.common import fake_scores, quantize
from evaluator.detector_attacks.pgd import lower_score, lower_score_in_box, tone_preserving_box
from evaluator.metrics.detection import roc_auc
from evaluator.models.contract import pixels_to_unit
from evaluator.models.zoo import build_model, get_architecture
from evaluator.testbed.digits import DEFAULT_NUM_THREADS, DEFAULT_SEED, deterministic_cpu

#: The track's trained baseline architecture and the transfer attack's surrogate (deliberately a
#: different function class, so the transfer set measures transfer, not a white-box attack).
BASELINE_ARCHITECTURE = "mnist_small_cnn_detector"
SURROGATE_ARCHITECTURE = "mnist_surrogate_cnn_detector"
#: Training defaults. On the public MNIST half against 5,000 public GAN fakes, the small CNN
#: reaches a training AUC of about 0.99 (0.97 on the hidden set) after 10 epochs, in about 25 s
#: on one thread; 3 epochs stop at about 0.91.
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 1e-3
#: PGD iterations of the transfer attack. Transfer does not improve with many more steps (the
#: extra steps overfit the surrogate's own quirks), and the attack runs on every hidden fake.
DEFAULT_TRANSFER_STEPS = 20

ImageArray = np.ndarray | Tensor


def _unit_images(images_uint8: ImageArray, what: str) -> Tensor:
    """uint8 (N, C, H, W) images as float [0, 1] tensors with default NCHW strides.

    A copy, because the caller's array may be read-only, and contiguous, because one-channel
    slices of a bigger array can carry channels-last strides that send convolutions down other
    kernels and change trained weights in their last bits.
    """
    images = torch.tensor(np.asarray(images_uint8)).clone(memory_format=torch.contiguous_format)
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"{what} must be uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
    return pixels_to_unit(images)


def _check_detector(architecture: str, images: Tensor) -> None:
    entry = get_architecture(architecture)
    if entry.task != "detector":
        raise ValueError(f"{architecture!r} is a {entry.task}, not a detector")
    if tuple(images.shape[1:]) != entry.input_shape:
        raise ValueError(f"{architecture!r} takes {entry.input_shape} images, got {tuple(images.shape[1:])}")


def train_detector(
    architecture: str,
    reals_uint8: ImageArray,
    fakes_uint8: ImageArray,
    seed: int = DEFAULT_SEED,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    *,
    num_threads: int = DEFAULT_NUM_THREADS,
) -> nn.Module:
    """Train zoo detector ``architecture`` to score fakes (label 1) above reals (label 0).

    Binary cross-entropy on the one fake logit, Adam, reals and fakes shuffled together. The
    initialisation and every epoch's order draw from ``seed`` only, so the same seed, data and
    thread count give bit-identical weights on the same kind of CPU. Returns the model in eval
    mode with frozen parameters (it is exported or attacked next, never trained further).
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    reals, fakes = _unit_images(reals_uint8, "reals"), _unit_images(fakes_uint8, "fakes")
    if not len(reals) or not len(fakes):
        raise ValueError("a detector needs at least one real and one fake image")
    _check_detector(architecture, reals)
    _check_detector(architecture, fakes)
    images = torch.cat([reals, fakes])
    targets = torch.cat([torch.zeros(len(reals)), torch.ones(len(fakes))])
    count = len(targets)
    with deterministic_cpu(num_threads):
        torch.manual_seed(seed)
        model = build_model(architecture)
        generator = torch.Generator().manual_seed(seed)
        # foreach=False: one code path whatever the installed kernels, for reproducible updates.
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, foreach=False)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(count, generator=generator)
            for start in range(0, count, batch_size):
                index = order[start : start + batch_size]
                logits = model(images[index]).reshape(-1)
                loss = F.binary_cross_entropy_with_logits(logits, targets[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    return model


def detector_auc(model: nn.Module, reals_uint8: ImageArray, fakes_uint8: ImageArray, *,
                 num_threads: int = DEFAULT_NUM_THREADS) -> float:
    """ROC AUC of ``model`` with fakes as the positive class (the track's headline metric)."""
    reals, fakes = _unit_images(reals_uint8, "reals"), _unit_images(fakes_uint8, "fakes")
    with deterministic_cpu(num_threads):
        scores = torch.cat([fake_scores(model, reals), fake_scores(model, fakes)]).double().numpy()
    labels = np.concatenate([np.zeros(len(reals), dtype=np.int64), np.ones(len(fakes), dtype=np.int64)])
    return roc_auc(scores, labels)


def sample_generator(generator: nn.Module, count: int, seed: int, latent_dim: int) -> np.ndarray:
    """``count`` uint8 images from ``G(z)``, z ~ N(0, I) drawn from ``seed``, rounded as a saved image is.

    The same recipe as the demo's hidden fakes, so public fakes differ from hidden ones only by
    the seed.
    """
    z = torch.randn(count, latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        images = generator(z)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def transfer_attack(
    surrogate: nn.Module,
    fakes_uint8: ImageArray,
    eps: float,
    steps: int = DEFAULT_TRANSFER_STEPS,
    seed: int = DEFAULT_SEED,
    *,
    tone_preserving: bool = True,
    num_threads: int = DEFAULT_NUM_THREADS,
) -> ImageArray:
    """Fakes pushed towards "real" by sign-gradient descent on the surrogate, quantised to 8 bits.

    ``eps`` is the Linf radius in [0, 1] units (8/255: eight grey levels). The attacked images
    are meant to be scored by *another* model, which is never queried: a black-box transfer
    attack. With ``tone_preserving`` (the default) each pixel may only move towards black or
    white, whichever it is nearer (:func:`~evaluator.detector_attacks.pgd.tone_preserving_box`):
    measured on the demo track, plain Linf steps raise most of a digit's black background by a
    few grey levels and every detector trained on clean MNIST reads that noise as "fake", so the
    plain attack *raises* the target's AUC and measures the noise, not transfer. The descent
    starts at the clean image (no random start, which would add the same noise); ``seed`` is
    kept for the plain variant's random start. Returns uint8 of the input's shape and kind.
    """
    as_tensor = isinstance(fakes_uint8, Tensor)
    fakes = _unit_images(fakes_uint8, "fakes")
    if not len(fakes):
        return fakes_uint8
    with deterministic_cpu(num_threads):
        if tone_preserving:
            low, high = tone_preserving_box(fakes, eps)
            adversarial, _ = lower_score_in_box(surrogate, fakes, low, high, eps, steps=steps)
        else:
            adversarial, _ = lower_score(surrogate, fakes, "Linf", eps, steps=steps, random_start=True, seed=seed)
        attacked = quantize(adversarial)
    # Float error must not cost a grey level beyond the budget (or a step against the tone).
    clean = (fakes * 255.0).round()
    levels = float(np.floor(eps * 255.0 + 1e-6))
    low_q, high_q = clean - levels, clean + levels
    if tone_preserving:
        white = clean >= 127.5
        low_q, high_q = torch.where(white, clean, low_q), torch.where(white, high_q, clean)
    attacked = torch.minimum(torch.maximum(attacked.float(), low_q), high_q).to(torch.uint8)
    return attacked if as_tensor else attacked.numpy()
