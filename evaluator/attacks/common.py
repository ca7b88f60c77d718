"""What every attack shares: the losses, batched model calls with gradients, and seeded randomness.

All randomness comes from explicit ``torch.Generator`` objects whose seeds are derived from the
job's seed and a description of where they are used (threat model, stage, chunk), so a result
is reproducible from (model, suite version, seed) and never touches the global RNG that the
submission's own code may depend on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: A per-sample loss of (logits, labels, targets or None) -> (N,), to be maximised by the attacker.
LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]

_TINY = 1e-12


@dataclass
class AttackResult:
    """The outcome of one attack on a batch.

    ``fooled[i]`` says whether the attack found an image in the threat model that the model
    misclassifies; ``x_adv[i]`` is that image, or the attack's best effort where it failed.
    """

    x_adv: Tensor
    fooled: Tensor


@dataclass
class MinNormResult:
    """The outcome of a minimum-norm attack (FMN, FAB-T) on a batch.

    ``x_adv[i]`` is the smallest-norm adversarial image found for point ``i`` (the original image
    where none was found) and ``norms[i]`` its perturbation's norm in the attack's norm (+inf where
    none was found; 0 for a point the model already misclassifies).
    """

    x_adv: Tensor
    norms: Tensor


def with_restarts(
    x: Tensor, restarts: int, progress: Callable[[float], None],
    run: Callable[[Tensor, Callable[[float], None]], AttackResult],
) -> AttackResult:
    """``run(todo, progress)`` up to ``restarts`` times, each on the points no earlier run fooled.

    ``todo`` indexes the points of ``x`` still robust; each run keeps drawing from the caller's
    generator, so a restart is a fresh random start and the whole is still reproducible.
    """
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    x_adv = x.clone()
    restarts = max(restarts, 1)
    for restart in range(restarts):
        todo = (~fooled).nonzero().squeeze(1)
        if todo.numel() == 0:
            break

        def inner(fraction: float, restart: int = restart) -> None:
            progress((restart + fraction) / restarts)

        result = run(todo, inner)
        x_adv[todo] = result.x_adv
        fooled[todo] = result.fooled
    return AttackResult(x_adv, fooled)


# --------------------------------------------------------------------------- seeds


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the job seed and a path of names (stable across runs and platforms)."""
    text = "|".join([str(int(seed)), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device``, so random draws happen where the images are."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(int(seed))
    return generator


def random_signs(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Uniform +1/-1 values."""
    bits = torch.randint(0, 2, shape, generator=generator, device=device)
    return bits.float() * 2 - 1


# --------------------------------------------------------------------------- losses


def other_max(logits: Tensor, y: Tensor) -> Tensor:
    """The largest logit among the classes other than ``y``."""
    masked = logits.clone()
    masked[torch.arange(logits.shape[0], device=logits.device), y] = -torch.inf
    return masked.amax(dim=1)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y - max_{j != y} z_j: positive while correctly classified (Square minimises it)."""
    return logits.gather(1, y[:, None]).squeeze(1) - other_max(logits, y)


def ce_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Cross-entropy of the label (untargeted; ``target`` is ignored)."""
    return F.cross_entropy(logits, y, reduction="none")


def _sorted_logit(sorted_logits: Tensor, rank: int) -> Tensor:
    """The ``rank``-th largest logit (1-based), falling back to the smallest with fewer classes."""
    index = min(rank, sorted_logits.shape[1]) - 1
    return sorted_logits[:, index]


def dlr_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Croce & Hein's difference-of-logits-ratio: shift- and scale-invariant, unlike CE, so a
    model cannot hide behind large logits (a classic cause of CE gradient masking)."""
    top = logits.sort(dim=1, descending=True).values
    scale = _sorted_logit(top, 1) - _sorted_logit(top, 3)
    return -margin(logits, y) / (scale + _TINY)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """The targeted DLR loss towards ``target`` (one class per sample)."""
    if target is None:
        raise ValueError("the targeted DLR loss needs a target class per sample")
    top = logits.sort(dim=1, descending=True).values
    scale = _sorted_logit(top, 1) - 0.5 * (_sorted_logit(top, 3) + _sorted_logit(top, 4))
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (scale + _TINY)


# --------------------------------------------------------------------------- targets


def targets_by_rank(clean_logits: Tensor, y: Tensor, n_target_classes: int) -> list[tuple[Tensor, Tensor]]:
    """Per rank 1..k (k at most classes - 1): the rank-th most likely class other than the label, and
    where it exists. Ranked once on the clean logits (AutoAttack re-ranks before every target, which
    costs a forward pass each and gives the same order); the targeted attacks (APGD-T, FAB-T) share it."""
    num_classes = clean_logits.shape[1]
    ranking = clean_logits.argsort(dim=1, descending=True)
    not_label = ranking != y[:, None]
    order = torch.cumsum(not_label.long(), dim=1)
    out = []
    for rank in range(1, max(min(n_target_classes, num_classes - 1), 0) + 1):
        pick = ((order == rank) & not_label).float().argmax(dim=1)
        out.append((ranking.gather(1, pick[:, None]).squeeze(1), not_label.sum(dim=1) >= rank))
    return out


# --------------------------------------------------------------------------- batched model calls


def _check_logits(out: object) -> Tensor:
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the model must return (N, classes) logits, got {shape}")
    return out.float()


def predict_logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Logits without autograd, in batches of at most ``batch_size``."""
    outputs = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            outputs.append(_check_logits(model(x[start : start + batch_size])))
    if not outputs:
        return torch.zeros((0, 0), device=x.device)
    return torch.cat(outputs)


def logits_loss_grad(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    batch_size: int,
    need_grad: bool = True,
    target: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Logits, per-sample loss and its input gradient, in batches of at most ``batch_size``.

    A model whose output carries no gradient (detached, or not differentiable) yields a zero
    gradient rather than an error, and NaN or infinite gradients are zeroed: the attack then
    simply makes no progress on those points, and the reliability checks report why.
    """
    all_logits, all_loss, all_grad = [], [], []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].detach()
        yb = y[start : start + batch_size]
        tb = None if target is None else target[start : start + batch_size]
        if not need_grad:
            with torch.no_grad():
                logits = _check_logits(model(xb))
                all_logits.append(logits)
                all_loss.append(loss_fn(logits, yb, tb))
            continue
        xb = xb.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = _check_logits(model(xb))
            loss = loss_fn(logits, yb, tb)
            if loss.requires_grad:
                (grad,) = torch.autograd.grad(loss.sum(), [xb], allow_unused=True)
            else:
                grad = None
        all_logits.append(logits.detach())
        all_loss.append(loss.detach())
        if grad is None:
            grad = torch.zeros_like(xb)
        else:
            grad = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
        all_grad.append(grad)
    if not all_logits:
        empty = torch.zeros((0,), device=x.device)
        return torch.zeros((0, 0), device=x.device), empty, (torch.zeros_like(x) if need_grad else None)
    return torch.cat(all_logits), torch.cat(all_loss), (torch.cat(all_grad) if need_grad else None)
