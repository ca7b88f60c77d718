"""The detector attack suite: how far a detector's AUC falls under each attack of Carlini & Farid.

Every attack works on the same seeded subset of hidden fakes and every AUC compares those
(attacked, then quantised to 8 bits) fakes with all hidden reals of the clean set. The same
subset is also scored un-attacked (``@clean-subset``), so each drop compares like with like
rather than with the AUC on all fakes. The operating threshold (the one that flags
``target_fpr`` of the clean reals) is fixed before any attack, as a deployed detector's is.

Metric names (suffix after ``@``), each with auc, average_precision, tpr@1%fpr and tpr@5%fpr:

* ``clean-subset``: the attacked subset before any attack;
* ``Linf-k/255``: score-lowering PGD within each Linf budget;
* ``min-<norm>``: the distortion-minimising attack's images, just below the threshold, plus
  ``median_distortion@min-<norm>`` and ``success_rate@min-<norm>``, both over the fakes the
  detector caught before the attack (the median over those it made pass);
* ``patch-<area>%``: a universal patch learned on public fakes, pasted on the hidden ones;
* ``latent`` and ``latent-reference``: hidden latents with and without a universal offset.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from evaluator.attacks.common import derive_seed, make_generator
from evaluator.detector_attacks.common import fake_scores, quantize
from evaluator.detector_attacks.latent import draw_latents, generate, latent_attack
from evaluator.detector_attacks.minimal import minimal_distortion
from evaluator.detector_attacks.patch import apply_patch, learn_patch, patch_label, patch_side, random_positions
from evaluator.detector_attacks.pgd import lower_score
from evaluator.metrics.classification import accuracy_with_interval
from evaluator.metrics.detection import detection_metrics, threshold_at_fpr
from evaluator.models.contract import pixels_to_unit
from evaluator.progress import StagedProgress, ignore_progress
from evaluator.spec import DetectorAttackSpec, MetricValue, budget_label

__all__ = ["attacked_subset", "budget_label", "median_interval", "run_detector_suite"]

#: PGD iterations per radius tried by the distortion-minimising attack (it tries ~10-20 radii).
MIN_STEPS = 20
#: Bisection rounds of the distortion-minimising attack after its first success.
MIN_SEARCH_STEPS = 10


def attacked_subset(num_fakes: int, points: int, seed: int) -> Tensor:
    """The seeded subset of fakes every attack works on (sorted indices, at most ``points``)."""
    order = torch.randperm(num_fakes, generator=make_generator(derive_seed(seed, "detector-attacks", "subset")))
    return order[: min(points, num_fakes)].sort().values


def median_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """The median and a distribution-free interval for it from order statistics.

    The number of values below the true median is Binomial(n, 1/2), so [x_(k), x_(n+1-k)]
    covers it with probability at least ``confidence`` for the largest k with
    P(Bin(n, 1/2) < k) <= (1 - confidence) / 2. With too few values there is no such k and no
    interval (None); unlike a bootstrap this needs no resampling and holds for any distribution.
    """
    from scipy.stats import binom

    ordered = np.sort(np.asarray(values, dtype=np.float64))
    n = ordered.size
    if n == 0:
        raise ValueError("the median needs at least one value")
    alpha = 1.0 - confidence
    # The smallest k with P(Bin <= k) >= alpha / 2, so P(Bin <= k - 1) < alpha / 2: fewer than k
    # values fall below the median (or above it) with probability under alpha / 2 each.
    k = int(binom.ppf(alpha / 2, n, 0.5))
    if k < 1:
        return float(np.median(ordered)), None, None
    return float(np.median(ordered)), float(ordered[k - 1]), float(ordered[n - k])


def run_detector_suite(
    model: nn.Module,
    reals: Tensor,
    fakes: Tensor,
    config: DetectorAttackSpec,
    set_name: str,
    seed: int,
    generator: nn.Module | None = None,
    latent_dim: int = 0,
    batch_size: int = 256,
    device: torch.device = torch.device("cpu"),
    progress: Callable[[float, str], None] | None = None,
    known_scores: tuple[np.ndarray, np.ndarray] | None = None,
    secret_seed: int | None = None,
) -> tuple[list[MetricValue], dict[str, Any]]:
    """Runs every attack of ``config`` against the detector ``model`` (in eval mode).

    ``secret_seed``, when given (the platform gives a fresh one per job), seeds what a submitter
    could otherwise replay offline: the universal patch's training and positions, and the latent
    attack's training and hidden latents. With public seeds those attacks learn on public fakes
    with public randomness, so a detector could be built to recognise the very patch or offset
    the evaluation will use; with a secret one it cannot. Without it, ``seed`` seeds everything
    (experiments, tests).

    ``known_scores``, if given, are the model's scores of ``reals`` and of ``fakes`` (in their
    order), already computed by the caller; else they are computed here.

    ``reals`` and ``fakes`` are the clean set's hidden images as uint8 (N, C, H, W). The
    universal attacks run only when a ``generator`` (latents of ``latent_dim`` dims to images in
    [0, 1] of the same shape) is given and ``config.universal_train_images`` > 0. Returns the
    metrics (see the module docstring for their names) and a provenance dict with, per attack,
    its parameters, seconds and gradient passes. Deterministic for a given ``seed`` (and ``secret_seed``).
    """
    report = progress or ignore_progress
    unseen = seed if secret_seed is None else secret_seed
    if reals.dtype != torch.uint8 or fakes.dtype != torch.uint8:
        raise ValueError("reals and fakes must be uint8 images")
    if reals.shape[0] == 0 or fakes.shape[0] == 0:
        raise ValueError("the detector attack suite needs at least one real and one fake")
    if reals.shape[1:] != fakes.shape[1:]:
        raise ValueError(f"reals {tuple(reals.shape[1:])} and fakes {tuple(fakes.shape[1:])} differ in shape")
    if latent_dim <= 0 and generator is not None:
        latent_dim = int(getattr(generator, "latent_dim", 0))
    universal = generator is not None and config.universal_train_images > 0 and latent_dim > 0
    # Rough relative costs: a PGD run, a minimal-distortion search (many radii), a universal attack.
    weights = [0.2] + [1.0] * len(config.pgd_budgets) + [2.0] * len(config.min_norms)
    weights += [1.0, 1.0] if universal else []
    stages = StagedProgress(report, weights)
    started = time.perf_counter()

    stages.report(0, 0.0, "detector attacks: clean scores")
    subset = attacked_subset(int(fakes.shape[0]), config.points, seed)
    fakes_subset = fakes[subset]
    x = pixels_to_unit(fakes_subset).to(device)
    if known_scores is None:
        real_scores = fake_scores(model, pixels_to_unit(reals).to(device), batch_size).double().numpy()
        clean_scores = fake_scores(model, x, batch_size).double().numpy()
    else:
        real_scores, all_fake_scores = (np.asarray(part, dtype=np.float64) for part in known_scores)
        if real_scores.shape != (reals.shape[0],) or all_fake_scores.shape != (fakes.shape[0],):
            raise ValueError("known_scores must hold one score per real and one per fake")
        clean_scores = all_fake_scores[subset]
    threshold = threshold_at_fpr(real_scores, config.target_fpr)
    labels = np.concatenate([np.zeros(real_scores.size, dtype=np.int64), np.ones(clean_scores.size, dtype=np.int64)])

    def scored(suffix: str, attacked_scores: np.ndarray) -> list[MetricValue]:
        """The four detection metrics of all reals against these fakes, named ``<metric>@suffix``."""
        values = detection_metrics(np.concatenate([real_scores, attacked_scores]), labels, set_name, seed=seed)
        return [replace(v, metric=f"{v.metric}@{suffix}") for v in values]

    def score_images(images_uint8: Tensor) -> np.ndarray:
        return fake_scores(model, pixels_to_unit(images_uint8).to(device), batch_size).double().numpy()

    def caught(attacked_scores: np.ndarray) -> float:
        """Share of fakes still flagged at the clean threshold (for the provenance)."""
        return float(np.mean(attacked_scores >= threshold))

    metrics = scored("clean-subset", clean_scores)
    provenance: dict[str, Any] = {
        "points": int(x.shape[0]),
        "fakes_available": int(fakes.shape[0]),
        "reals": int(reals.shape[0]),
        "target_fpr": config.target_fpr,
        "threshold": threshold,
        "caught_clean": caught(clean_scores),
        "pgd": {},
        "minimal": {},
    }
    stages.report(0, 1.0, "detector attacks: clean scores")

    stage = 1
    for eps in config.pgd_budgets:
        label = budget_label(eps)
        stages.report(stage, 0.0, f"detector attacks: PGD {label}")
        begun = time.perf_counter()
        x_adv, _ = lower_score(
            model, x, "Linf", float(eps), config.pgd_steps, seed=derive_seed(seed, "detector-attacks", label),
            batch_size=batch_size,
        )
        attacked = score_images(quantize(x_adv, x, "Linf", float(eps)))
        metrics += scored(label, attacked)
        provenance["pgd"][label] = {
            "norm": "Linf", "eps": float(eps), "steps": config.pgd_steps,
            "gradient_passes": 2 * (config.pgd_steps + 1) * int(x.shape[0]),  # two step rules
            "caught": caught(attacked), "seconds": round(time.perf_counter() - begun, 3),
        }
        stage += 1

    # The distortion-minimising attack only has work to do on fakes the detector catches: a fake
    # already below the threshold needs no change, and counting its zero would make a weak
    # detector look as if it fell to no distortion at all.
    caught_mask = torch.from_numpy(clean_scores >= threshold)
    provenance["minimal_points"] = int(caught_mask.sum())
    for norm in config.min_norms:
        label = f"min-{norm}"
        stages.report(stage, 0.0, f"detector attacks: minimal {norm}")
        begun = time.perf_counter()
        attacked = clean_scores.copy()
        successes = n = 0
        passes = 0
        if bool(caught_mask.any()):
            result = minimal_distortion(
                model, x[caught_mask.to(x.device)], threshold, norm, steps=MIN_STEPS, search_steps=MIN_SEARCH_STEPS,
                seed=derive_seed(seed, "detector-attacks", label), batch_size=batch_size, quantized=True,
            )
            successes, n, passes = int(result.success.sum()), int(result.success.numel()), result.gradient_passes
            attacked[caught_mask.numpy()] = result.scores.double().numpy()
            rate, low, high = accuracy_with_interval(successes, n)
            metrics.append(MetricValue(set_name, f"success_rate@{label}", rate, n, low, high, "clopper-pearson-95"))
            if successes:
                # Failures have no finite distance (and JSON holds no inf): the median is over the
                # successes, and the success rate next to it says how many those are.
                median, m_low, m_high = median_interval(result.distance[result.success].double().numpy())
                metrics.append(MetricValue(
                    set_name, f"median_distortion@{label}", median, successes, m_low, m_high,
                    "order-statistic-95" if m_low is not None else "",
                ))
        metrics += scored(label, attacked)
        provenance["minimal"][norm] = {
            "steps": MIN_STEPS if norm != "L0" else None,
            "search_steps": MIN_SEARCH_STEPS if norm != "L0" else None,
            "attacked": n, "successes": successes, "gradient_passes": passes,
            "distance_units": "pixels" if norm == "L0" else "[0, 1] pixel scale",
            "median_over": "caught fakes made to pass", "seconds": round(time.perf_counter() - begun, 3),
        }
        stage += 1

    if universal:
        assert generator is not None
        channels, height, width = (int(d) for d in fakes.shape[1:])
        stages.report(stage, 0.0, "detector attacks: universal patch")
        begun = time.perf_counter()
        z_public = draw_latents(config.universal_train_images, latent_dim, derive_seed(config.public_seed, "public-z"),
                                device)
        public_fakes = generate(generator, z_public, batch_size)
        if tuple(public_fakes.shape[1:]) != (channels, height, width):
            raise ValueError(f"the generator makes {tuple(public_fakes.shape[1:])} images, the fakes are "
                             f"{(channels, height, width)}")
        side = patch_side(config.patch_area, height, width)
        patch = learn_patch(
            model, public_fakes, config.patch_area, config.universal_steps,
            seed=derive_seed(unseen, "detector-attacks", "patch", "train"), batch_size=batch_size,
        )
        patch_uint8 = quantize(patch)
        positions = random_positions(int(x.shape[0]), height, width, side,
                                     derive_seed(unseen, "detector-attacks", "patch", "positions"))
        patched = apply_patch(fakes_subset.to(device), patch_uint8.to(device), positions)
        attacked = score_images(patched)
        label = patch_label(config.patch_area)
        metrics += scored(label, attacked)
        provenance["patch"] = {
            "label": label, "area": config.patch_area, "side": side, "covered": side * side / (height * width),
            "train_images": config.universal_train_images, "steps": config.universal_steps,
            "gradient_passes": config.universal_steps * min(batch_size, config.universal_train_images),
            "caught": caught(attacked), "seconds": round(time.perf_counter() - begun, 3),
        }
        stage += 1

        stages.report(stage, 0.0, "detector attacks: universal latent offset")
        begun = time.perf_counter()
        outcome = latent_attack(
            model, generator, latent_dim, latent_radius=config.latent_radius, steps=config.universal_steps,
            n_eval=int(x.shape[0]), public_seed=derive_seed(config.public_seed, "public-z"),
            hidden_seed=derive_seed(unseen, "detector-attacks", "latent", "hidden"), z_public=z_public,
            seed=derive_seed(unseen, "detector-attacks", "latent", "train"), batch_size=batch_size, device=device,
            threshold=threshold, real_scores=real_scores,
        )
        attacked = score_images(outcome.attacked)
        reference = score_images(outcome.reference)
        metrics += scored("latent", attacked)
        metrics += scored("latent-reference", reference)
        provenance["latent"] = {
            "latent_dim": latent_dim, "latent_radius": config.latent_radius, "radius": outcome.radius,
            "delta_norm": float(outcome.delta.norm()), "train_images": config.universal_train_images,
            "steps": config.universal_steps, "gradient_passes": outcome.gradient_passes,
            "objective": outcome.objective, "public_auc": outcome.public_auc,
            "public_flagged": outcome.public_flagged,
            "caught": caught(attacked), "caught_reference": caught(reference),
            "seconds": round(time.perf_counter() - begun, 3),
        }
        stage += 1
    elif generator is not None:
        provenance["universal_skipped"] = "no latent dimension known" if latent_dim <= 0 else "no training images"

    provenance["seconds"] = round(time.perf_counter() - started, 3)
    report(1.0, "detector attacks: done")
    return metrics, provenance
