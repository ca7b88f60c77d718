"""Universal latent-space attack: one shift of the generator's input that makes its fakes look real.

Carlini & Farid (2020) show that an attacker who controls the generator need not touch pixels
at all: a single offset ``delta`` added to every latent vector, learned once, moves the whole
output distribution to where the detector is blind, and the images still look like the
generator's own. The offset is bounded, ||delta||_2 <= latent_radius * sqrt(latent_dim) (a
latent z ~ N(0, I) has norm about sqrt(latent_dim), so the radius is relative to a typical z),
learned on public latents and evaluated on fresh hidden ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from evaluator.attacks.common import make_generator
from evaluator.detector_attacks.common import _first_column, quantize

#: Adam's per-coordinate step, relative to ``radius / sqrt(latent_dim)``: about twenty steps
#: cross the ball, and a cosine decay to a hundredth of it lets the last steps settle.
DEFAULT_LR_SHARE = 0.05


@dataclass
class LatentAttack:
    """The learned offset and the hidden fakes made with and without it (both uint8).

    ``reference`` are the same hidden latents without the offset, so the pair isolates what the
    offset does from how well the detector handles the generator in the first place.
    """

    delta: Tensor
    attacked: Tensor
    reference: Tensor
    radius: float
    #: Detector-gradient evaluations spent learning (one per latent per step).
    gradient_passes: int = 0


def latent_bound(latent_radius: float, latent_dim: int) -> float:
    """The largest allowed ||delta||_2: ``latent_radius * sqrt(latent_dim)``."""
    return float(latent_radius) * math.sqrt(latent_dim)


def draw_latents(n: int, latent_dim: int, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """(n, latent_dim) standard normal latents from a seeded generator (on the CPU, then moved)."""
    z = torch.randn((n, latent_dim), generator=make_generator(seed))
    return z.to(device)


def generate(generator: nn.Module, z: Tensor, batch_size: int = 256) -> Tensor:
    """The generator's images of latents ``z``, quantised to 8 bits, as a stored fake would be."""
    parts: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, z.shape[0], batch_size):
            parts.append(quantize(generator(z[start : start + batch_size]).float()))
    if not parts:
        raise ValueError("generate needs at least one latent")
    return torch.cat(parts)


def _onto_ball(v: Tensor, radius: float) -> Tensor:
    """The Euclidean projection of ``v`` onto the L2 ball of ``radius`` (differentiable)."""
    return v * torch.clamp(radius / (v.norm() + 1e-12), max=1.0)


def learn_latent_offset(
    model: nn.Module,
    generator: nn.Module,
    z_public: Tensor,
    radius: float,
    steps: int = 300,
    seed: int = 0,
    batch_size: int = 256,
    lr: float | None = None,
) -> Tensor:
    """The offset in the L2 ball of ``radius`` that minimises the mean score of G(z + delta).

    Adam runs on an unconstrained vector ``v`` and the offset is its projection onto the ball,
    delta = v * min(1, radius / ||v||), taken inside the objective. Projecting ``v`` itself after
    every Adam step would not do: Adam's steps are close to the sign of the gradient, and
    "sign step, then project" settles on the sign direction, not the gradient's, which for a
    linear detector and generator is far from the optimum -r A^T w / ||A^T w||. With the
    projection inside the objective the gradient with respect to ``v`` outside the ball is the
    gradient's component along the sphere, which vanishes exactly at the constrained optimum,
    whatever Adam's per-coordinate scaling.

    Each step uses the next ``batch_size`` latents of a seeded shuffle of ``z_public``; the step
    size follows a cosine decay to a hundredth of ``lr`` (default: a share of
    ``radius / sqrt(latent_dim)``).
    """
    n, dim = z_public.shape
    if n == 0 or radius <= 0:
        raise ValueError("learn_latent_offset needs latents and a positive radius")
    base_lr = lr if lr is not None else DEFAULT_LR_SHARE * radius / math.sqrt(dim)
    shuffle = make_generator(seed)
    v = torch.zeros(dim, device=z_public.device, requires_grad=True)
    optimiser = torch.optim.Adam([v], lr=base_lr)
    take = min(batch_size, n)
    order, cursor = torch.randperm(n, generator=shuffle), 0
    for step in range(steps):
        if cursor + take > n:
            order, cursor = torch.randperm(n, generator=shuffle), 0
        z = z_public[order[cursor : cursor + take].to(z_public.device)]
        cursor += take
        with torch.enable_grad():
            images = generator(z + _onto_ball(v, radius)).float()
            loss = _first_column(model(images)).mean()
            # Only the offset's gradient: neither network's parameters are touched.
            (grad,) = torch.autograd.grad(loss, [v])
        scale = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / max(steps - 1, 1)))
        for group in optimiser.param_groups:
            group["lr"] = base_lr * scale
        optimiser.zero_grad(set_to_none=True)
        v.grad = grad
        optimiser.step()
    return _onto_ball(v.detach(), radius)


def latent_attack(
    model: nn.Module,
    generator: nn.Module,
    latent_dim: int,
    *,
    latent_radius: float,
    steps: int,
    n_eval: int,
    public_seed: int,
    hidden_seed: int,
    n_train: int = 0,
    z_public: Tensor | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> LatentAttack:
    """Learns the offset on public latents and applies it to ``n_eval`` fresh hidden ones.

    The public latents are ``z_public`` when given (so the patch attack can share them), else
    ``n_train`` draws seeded with ``public_seed``; the hidden ones are seeded with
    ``hidden_seed``, which must differ. ``seed`` drives the minibatch order.
    """
    if z_public is None:
        if n_train <= 0:
            raise ValueError("latent_attack needs public latents or n_train > 0")
        z_public = draw_latents(n_train, latent_dim, public_seed, device)
    if hidden_seed == public_seed:
        raise ValueError("hidden latents must be drawn with another seed than the public ones")
    radius = latent_bound(latent_radius, latent_dim)
    z_public = z_public.to(device)
    delta = learn_latent_offset(model, generator, z_public, radius, steps, seed, batch_size)
    z_hidden = draw_latents(n_eval, latent_dim, hidden_seed, device)
    return LatentAttack(
        delta=delta,
        attacked=generate(generator, z_hidden + delta, batch_size),
        reference=generate(generator, z_hidden, batch_size),
        radius=radius,
        gradient_passes=steps * min(batch_size, int(z_public.shape[0])),
    )
