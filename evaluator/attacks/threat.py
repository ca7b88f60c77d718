"""The geometry of threat models (an Lp ball of radius eps around each image, inside the [0, 1] box).

The type itself, :class:`evaluator.spec.ThreatModel`, is shared with the job spec and has no
torch in it; here are the tensor operations on it. Every attack in :mod:`evaluator.attacks`
ends each step with :func:`project`, so an adversarial image can never leave the ball or the
box whatever the attack's arithmetic did; the robust accuracy is then a statement about
exactly this set of images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from evaluator.spec import NORMS, Norm, ThreatModel

__all__ = [
    "NORMS", "TRACK_THREAT_MODELS", "Norm", "ThreatModel", "contains", "default_threat_models", "dual_norm", "lp_norm",
    "project", "random_in_ball", "steepest_direction",
]

#: Guards divisions by a norm that may be zero (a zero gradient, a zero perturbation).
_TINY = 1e-12


def _view_per_sample(values: Tensor, like: Tensor) -> Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def lp_norm(x: Tensor, norm: Norm) -> Tensor:
    """Per-sample norm of a batch, shape (N,)."""
    flat = x.flatten(1)
    if norm == "Linf":
        return flat.abs().amax(dim=1)
    if norm == "L2":
        return flat.norm(p=2, dim=1)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def dual_norm(x: Tensor, norm: Norm) -> Tensor:
    """Per-sample dual norm (L1 for Linf, L2 for L2): a linear margin divided by it is a distance."""
    flat = x.flatten(1)
    if norm == "Linf":
        return flat.abs().sum(dim=1)
    if norm == "L2":
        return flat.norm(p=2, dim=1)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def steepest_direction(grad: Tensor, norm: Norm) -> Tensor:
    """The unit-norm direction that increases a linearised loss the most (sign for Linf)."""
    if norm == "Linf":
        return grad.sign()
    if norm == "L2":
        return grad / (_view_per_sample(lp_norm(grad, "L2"), grad) + _TINY)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def project(x_adv: Tensor, x: Tensor, norm: Norm, eps: float | Tensor) -> Tensor:
    """Brings ``x_adv`` into the eps-ball around ``x`` and then into [0, 1].

    For Linf this is the exact Euclidean projection onto ball and box (both are boxes). For L2
    the radial rescale followed by clipping is not the exact projection onto the intersection,
    but it is feasible: clipping moves every coordinate towards ``x`` (which lies in the box), so
    it can only shrink the perturbation.
    """
    delta = x_adv - x
    if isinstance(eps, Tensor):
        eps_b = _view_per_sample(eps.to(delta), delta)
    else:
        eps_b = torch.full((x.shape[0],) + (1,) * (x.dim() - 1), float(eps), dtype=delta.dtype, device=delta.device)
    if norm == "Linf":
        delta = torch.maximum(torch.minimum(delta, eps_b), -eps_b)
    elif norm == "L2":
        length = _view_per_sample(lp_norm(delta, "L2"), delta)
        delta = delta * torch.clamp(eps_b / (length + _TINY), max=1.0)
    else:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    return (x + delta).clamp(0.0, 1.0)


def random_in_ball(x: Tensor, norm: Norm, eps: float, generator: torch.Generator, on_sphere: bool = True) -> Tensor:
    """A random point of the threat model around each image (already clipped to [0, 1]).

    ``on_sphere`` puts the perturbation on the ball's surface (as APGD's start point does): for
    Linf a uniform draw rescaled to max-norm eps, for L2 a Gaussian direction of length eps.
    """
    if norm == "Linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        if on_sphere:
            noise = noise / (_view_per_sample(lp_norm(noise, "Linf"), noise) + _TINY)
        delta = eps * noise
    elif norm == "L2":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = noise / (_view_per_sample(lp_norm(noise, "L2"), noise) + _TINY)
        if on_sphere:
            delta = eps * direction
        else:  # uniform in the ball: radius ~ U^(1/d)
            dims = x[0].numel()
            radius = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / dims)
            delta = eps * direction * _view_per_sample(radius, direction)
    else:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    return project(x + delta, x, norm, eps)


def contains(threat: ThreatModel, x_adv: Tensor, x: Tensor, atol: float = 1e-5) -> Tensor:
    """Per-sample check: within the threat model's eps of ``x`` (up to float rounding) and inside [0, 1].

    The cascade confirms every claimed adversarial image with it before counting it as broken.
    """
    inside_box = ((x_adv >= -atol) & (x_adv <= 1 + atol)).flatten(1).all(dim=1)
    return inside_box & (lp_norm(x_adv - x, threat.norm) <= threat.eps * (1 + atol) + atol)


#: The per-track default threat models (RobustBench's standard radii for CIFAR-10; the usual
#: MNIST radii for digits).
TRACK_THREAT_MODELS: dict[str, tuple[ThreatModel, ...]] = {
    "digits": (ThreatModel("Linf", 0.3), ThreatModel("L2", 2.0)),
    "cifar10": (ThreatModel("Linf", 8 / 255), ThreatModel("L2", 0.5)),
}


def default_threat_models(track: str) -> tuple[ThreatModel, ...]:
    """The threat models a track is scored under; an unknown track names the known ones."""
    try:
        return TRACK_THREAT_MODELS[track]
    except KeyError:
        known = sorted(TRACK_THREAT_MODELS)
        raise ValueError(f"no default threat models for track {track!r}; known: {known}") from None
