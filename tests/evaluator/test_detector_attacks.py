"""Detector attacks against closed forms: on a linear detector s(x) = w.x + b (and a linear
generator G(z) = A z + c) every attack's optimum is known exactly, so each test can fail by a
margin a wrong attack could not hide in."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from evaluator.attacks.threat import lp_norm
from evaluator.detector_attacks.latent import generate, latent_attack, learn_latent_offset, objective_loss
from evaluator.detector_attacks.minimal import minimal_distortion
from evaluator.detector_attacks.patch import (
    apply_patch,
    learn_patch,
    patch_label,
    patch_side,
    random_positions,
)
from evaluator.detector_attacks.pgd import lower_score
from evaluator.detector_attacks.suite import attacked_subset, budget_label, median_interval, run_detector_suite
from evaluator.metrics.detection import roc_auc
from evaluator.models.contract import pixels_to_unit
from evaluator.spec import DetectorAttackSpec
from tests.evaluator.attack_models import one_thread  # noqa: F401 (autouse fixture)


class LinearDetector(nn.Module):
    """s(x) = w . x + b, one score per image (shape (N,))."""

    def __init__(self, weight: Tensor, bias: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.flatten().clone())
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight + self.bias


class ExpLinearDetector(LinearDetector):
    """exp(4 (w . x + b)): the same ordering and optimal attacks as the linear detector, but its
    first-order distance estimate is wrong, so the radius search has to grow and bisect."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(4.0 * super().forward(x))


class LinearGenerator(nn.Module):
    """G(z) = A z + c, shaped as (N, 1, side, side) images."""

    def __init__(self, matrix: Tensor, offset: Tensor, side: int) -> None:
        super().__init__()
        self.matrix, self.offset, self.side = matrix, offset, side
        self.latent_dim = matrix.shape[1]

    def forward(self, z: Tensor) -> Tensor:
        return (z @ self.matrix.t() + self.offset).view(-1, 1, self.side, self.side)


def linear_problem(n: int = 24, seed: int = 0, eight_bit: bool = False) -> tuple[LinearDetector, Tensor, Tensor]:
    """A linear detector and images in [0.3, 0.7] (where small budgets never meet the box)."""
    g = torch.Generator().manual_seed(seed)
    weight = 0.1 * torch.randn(64, generator=g)
    if eight_bit:
        x = pixels_to_unit(torch.randint(77, 179, (n, 1, 8, 8), generator=g, dtype=torch.uint8))
    else:
        x = 0.3 + 0.4 * torch.rand(n, 1, 8, 8, generator=g)
    model = LinearDetector(weight, 0.05)
    with torch.no_grad():
        scores = model(x)
    return model, x, scores


# --------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_lower_score_reaches_the_linear_optimum(norm: str) -> None:
    model, x, scores = linear_problem()
    w = model.weight.detach()
    eps = 0.02 if norm == "Linf" else 0.1
    dual = w.abs().sum() if norm == "Linf" else w.norm()
    x_adv, adv_scores = lower_score(model, x, norm, eps, steps=10)  # type: ignore[arg-type]
    expected = scores - eps * dual
    assert torch.allclose(adv_scores, expected, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(model(x_adv), expected, atol=1e-4)
    assert bool((lp_norm(x_adv - x, norm) <= eps * (1 + 1e-5)).all())  # type: ignore[arg-type]


def test_box_descent_reaches_the_linear_corner_and_keeps_tones() -> None:
    """In a per-pixel box a linear score is lowest at the corner picked by the signs of w."""
    from evaluator.detector_attacks.pgd import lower_score_in_box, tone_preserving_box

    model, x, _ = linear_problem()
    w = model.weight.detach().view(1, 1, 8, 8)
    low, high = tone_preserving_box(x, 0.05)
    x_adv, adv_scores = lower_score_in_box(model, x, low, high, 0.05, steps=10)
    corner = torch.where(w > 0, low, high)
    with torch.no_grad():
        assert torch.allclose(adv_scores, model(corner), atol=1e-5)
    assert bool(((x_adv >= low - 1e-7) & (x_adv <= high + 1e-7)).all())
    light = x >= 0.5
    assert bool((x_adv[light] >= x[light]).all()) and bool((x_adv[~light] <= x[~light]).all())


def test_linf_keeps_the_better_of_both_step_rules_per_image() -> None:
    """Both Linf step rules run and each image keeps the lower of their two scores."""
    from evaluator.detector_attacks.pgd import _lower_score_rule

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(72, 16), nn.ReLU(),
                          nn.Linear(16, 1))
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    _, both = lower_score(model, x, "Linf", 8 / 255, steps=10)
    _, sign = _lower_score_rule(model, x, "Linf", 8 / 255, 10, False, 0, 256, "sign")
    _, scaled = _lower_score_rule(model, x, "Linf", 8 / 255, 10, False, 0, 256, "scaled")
    assert torch.equal(both, torch.minimum(sign, scaled))
    assert bool((both < model(x).squeeze(1).detach()).all())


def test_lower_score_takes_one_radius_per_image() -> None:
    model, x, scores = linear_problem(n=6)
    eps = torch.tensor([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])
    _, adv_scores = lower_score(model, x, "Linf", eps, steps=5)
    assert torch.allclose(adv_scores, scores - eps * model.weight.detach().abs().sum(), atol=1e-4)


# --------------------------------------------------------------------------- minimal distortion


@pytest.mark.parametrize("squashed", [False, True])
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_minimal_distortion_matches_the_closed_form(norm: str, squashed: bool) -> None:
    linear, x, scores = linear_problem(n=30)
    w = linear.weight.detach()
    dual = w.abs().sum() if norm == "Linf" else w.norm()
    linear_threshold = float(scores.quantile(0.3))
    exact = ((scores - linear_threshold) / dual).clamp(min=0.0)
    model: LinearDetector = linear
    threshold = linear_threshold
    if squashed:  # same minimal distances, at the transformed threshold
        model, threshold = ExpLinearDetector(w, float(linear.bias.detach())), math.exp(4.0 * linear_threshold)
    # The closed form assumes the box never binds: the optimal perturbation stays inside [0, 1].
    step = exact[:, None] * (w.sign()[None] if norm == "Linf" else (w / w.norm())[None])
    assert bool(((x.flatten(1) - step) > 0).all()) and bool(((x.flatten(1) - step) < 1).all())

    result = minimal_distortion(model, x, threshold, norm, quantized=False)
    below = scores < linear_threshold
    assert below.sum() >= 5 and (~below).sum() >= 10
    assert bool(result.success.all())
    assert torch.equal(result.distance[below], torch.zeros(int(below.sum())))
    relative = (result.distance[~below] - exact[~below]).abs() / exact[~below]
    assert float(relative.max()) < 0.01
    assert bool((result.scores < threshold).all())
    assert torch.allclose(lp_norm(result.x_adv - x, norm), result.distance, atol=1e-6)  # type: ignore[arg-type]
    assert result.x_adv.dtype == torch.float32


def test_quantised_linf_minimum_is_the_first_whole_grey_level_that_suffices() -> None:
    model, x, scores = linear_problem(n=30, eight_bit=True)
    dual = model.weight.detach().abs().sum()
    threshold = float(scores.quantile(0.3))
    result = minimal_distortion(model, x, threshold, "Linf", max_eps=4 / 255)
    assert result.x_adv.dtype == torch.uint8
    # Smallest k with s - k/255 * ||w||_1 < threshold; beyond the 4-level cap the attack must fail.
    levels = torch.ceil((scores - threshold) * 255 / dual + 1e-6).clamp(min=0)
    reachable = levels <= 4
    assert reachable.sum() >= 5 and (~reachable).sum() >= 5
    assert torch.equal(result.success, reachable)
    assert torch.equal(torch.round(result.distance[reachable] * 255), levels[reachable])
    assert bool(torch.isinf(result.distance[~reachable]).all())
    unit = pixels_to_unit(result.x_adv)
    assert bool((lp_norm(unit - x, "Linf") <= 4 / 255 + 1e-6).all())
    with torch.no_grad():
        assert bool((model(unit)[reachable] < threshold).all())
        assert bool((model(unit)[~reachable] >= threshold).all())


def test_quantised_l2_results_are_8_bit_below_threshold_and_never_beat_the_optimum() -> None:
    model, x, scores = linear_problem(n=30, eight_bit=True)
    threshold = float(scores.quantile(0.3))
    exact = ((scores - threshold) / model.weight.detach().norm()).clamp(min=0.0)
    result = minimal_distortion(model, x, threshold, "L2", max_eps=0.5)
    assert result.x_adv.dtype == torch.uint8
    unit = pixels_to_unit(result.x_adv)
    with torch.no_grad():
        adv_scores = model(unit)
    ok = result.success
    assert ok.sum() >= 15 and bool((exact[~ok] > 0.5 * 0.99).all())
    assert bool((adv_scores[ok] < threshold).all())
    distance = lp_norm(unit - x, "L2")
    assert torch.allclose(distance[ok], result.distance[ok], atol=1e-6)
    assert bool((distance <= 0.5 + 1e-5).all())  # within the budget, failures included
    assert bool((result.distance[ok] >= exact[ok] - 1e-6).all())  # no valid image beats the optimum
    assert bool((result.distance[ok] <= exact[ok] * 1.05 + 8 / 255).all())
    assert bool((result.distance[scores < threshold] == 0).all())


@pytest.mark.parametrize("quantized", [False, True])
def test_greedy_l0_matches_the_sorted_contributions(quantized: bool) -> None:
    model, x, _ = linear_problem(n=30, eight_bit=quantized)
    w = model.weight.detach()
    # One more image, already far on the real side: every pixel at the low-score end of [0.3, 0.7].
    x = torch.cat([x, torch.where(w > 0, 77 / 255, 178 / 255).view(1, 1, 8, 8)])
    with torch.no_grad():
        scores = model(x)
    flat = x.flatten(1)
    # Moving pixel i to the end of its range lowers the score by |w_i| * room_i.
    room = torch.where(w > 0, flat, 1 - flat)
    drops = (w.abs() * room).sort(dim=1, descending=True).values.cumsum(dim=1)
    threshold = float(scores.median()) - 0.3
    still_fake = (scores[:, None] - drops) >= threshold
    exact = torch.where(scores < threshold, 0, still_fake.sum(dim=1) + 1).float()
    assert (exact >= 3).sum() >= 5 and (exact == 0).sum() >= 1

    result = minimal_distortion(model, x, threshold, "L0", quantized=quantized)
    assert torch.equal(result.distance, exact)
    assert bool(result.success.all())
    unit = pixels_to_unit(result.x_adv) if quantized else result.x_adv
    assert result.x_adv.dtype == (torch.uint8 if quantized else torch.float32)
    assert torch.equal((unit != x).flatten(1).sum(dim=1).float(), exact)
    with torch.no_grad():
        assert bool((model(unit) < threshold).all())


def test_greedy_l0_gives_up_at_its_cap() -> None:
    model, x, scores = linear_problem(n=10)
    threshold = float(scores.min()) - 1.0  # out of reach of 3 pixels
    result = minimal_distortion(model, x, threshold, "L0", max_eps=3, quantized=False)
    assert not bool(result.success.any())
    assert bool(torch.isinf(result.distance).all())
    assert torch.equal((result.x_adv != x).flatten(1).sum(dim=1), torch.full((10,), 3))


def test_minimal_distortion_rejects_unknown_norms() -> None:
    model, x, _ = linear_problem(n=2)
    with pytest.raises(ValueError, match="unknown norm"):
        minimal_distortion(model, x, 0.0, "L1")


# --------------------------------------------------------------------------- patch


def test_patch_side_rounds_to_whole_pixels() -> None:
    assert patch_side(0.01, 28, 28) == 3  # 9 / 784 = 1.15 % of the image
    assert patch_side(0.25, 8, 8) == 4
    assert patch_side(1e-6, 8, 8) == 1
    assert patch_label(0.01) == "patch-1%" and patch_label(0.005) == "patch-0.5%"


def test_apply_patch_pastes_at_the_positions_and_nowhere_else() -> None:
    images = torch.zeros(3, 2, 6, 6, dtype=torch.uint8)
    patch = torch.arange(8, dtype=torch.uint8).view(2, 2, 2) + 1
    positions = torch.tensor([[0, 0], [4, 1], [2, 4]])
    out = apply_patch(images, patch, positions)
    assert out.dtype == torch.uint8 and int(images.sum()) == 0
    for i, (r, c) in enumerate(positions.tolist()):
        assert torch.equal(out[i, :, r : r + 2, c : c + 2], patch)
        assert int(out[i].sum()) == int(patch.sum())


def test_random_positions_fit_and_are_seeded() -> None:
    first = random_positions(500, 8, 10, 3, seed=4)
    assert torch.equal(first, random_positions(500, 8, 10, 3, seed=4))
    assert not torch.equal(first, random_positions(500, 8, 10, 3, seed=5))
    assert int(first[:, 0].min()) == 0 and int(first[:, 0].max()) == 5
    assert int(first[:, 1].min()) == 0 and int(first[:, 1].max()) == 7


def _expected_patched_drop(model: LinearDetector, x: Tensor, patch: Tensor) -> float:
    """Mean score drop over the fakes and over every placement (uniform positions, exactly)."""
    side, height, width = patch.shape[-1], x.shape[2], x.shape[3]
    with torch.no_grad():
        clean = model(x)
        total = torch.zeros_like(clean)
        count = 0
        for r in range(height - side + 1):
            for c in range(width - side + 1):
                total += model(apply_patch(x, patch, torch.tensor([[r, c]]).expand(x.shape[0], 2)))
                count += 1
    return float((clean - total / count).mean())


def test_learned_patch_is_within_two_percent_of_the_linear_optimum() -> None:
    g = torch.Generator().manual_seed(1)
    height = width = 8
    # Weights that fall from left to right, so the average weight under each patch pixel changes sign
    # across the patch: the optimum mixes black and white pixels.
    columns = torch.arange(width).float() - 3.5
    weight = (0.3 * columns[None, :].expand(height, width) + 0.5 * torch.randn(height, width, generator=g)).flatten()
    model = LinearDetector(weight)
    fakes = pixels_to_unit(torch.randint(77, 179, (400, 1, height, width), generator=g, dtype=torch.uint8))
    side = patch_side(0.25, height, width)
    # Closed form: the expected score of a patch is linear in it, with coefficient at offset j the
    # average weight over all placements; each pixel goes to 0 where that is positive, else 1.
    w_img = weight.view(1, height, width)
    mean_weight = torch.zeros(1, side, side)
    for r in range(height - side + 1):
        for c in range(width - side + 1):
            mean_weight += w_img[:, r : r + side, c : c + side]
    optimum = (mean_weight <= 0).float()
    assert 0 < int(optimum.sum()) < side * side

    patch = learn_patch(model, fakes, area=0.25, steps=300, seed=0, batch_size=64)
    assert patch.shape == (1, side, side) and float(patch.min()) >= 0 and float(patch.max()) <= 1
    best = _expected_patched_drop(model, fakes, optimum)
    learned = _expected_patched_drop(model, fakes, patch)
    grey = _expected_patched_drop(model, fakes, torch.full_like(patch, 0.5))
    assert grey < 0.1 * best  # the test can tell a useless patch from a good one
    assert learned >= 0.98 * best
    # The learned patch is a pure function of its seed.
    assert torch.equal(patch, learn_patch(model, fakes, area=0.25, steps=300, seed=0, batch_size=64))


# --------------------------------------------------------------------------- latent


def linear_generator(latent_dim: int = 8, side: int = 8, seed: int = 2) -> tuple[LinearGenerator, Tensor]:
    """A linear generator whose outputs stay inside (0, 1) for latents of any plausible size."""
    g = torch.Generator().manual_seed(seed)
    matrix = 0.02 * torch.randn(side * side, latent_dim, generator=g)
    offset = torch.full((side * side,), 0.5)
    weight = torch.randn(side * side, generator=g)
    return LinearGenerator(matrix, offset, side), weight


def test_latent_offset_finds_the_linear_optimum() -> None:
    generator, weight = linear_generator()
    model = LinearDetector(weight)
    z = torch.randn(500, 8, generator=torch.Generator().manual_seed(3))
    radius = 0.5 * math.sqrt(8)
    delta = learn_latent_offset(model, generator, z, radius, steps=200, seed=0, batch_size=64)
    direction = generator.matrix.t() @ weight  # the score's gradient with respect to z: A^T w
    optimum = -radius * direction / direction.norm()
    assert float(torch.nn.functional.cosine_similarity(delta, optimum, dim=0)) > 0.99
    assert abs(float(delta.norm()) - radius) < 1e-3 * radius
    images = generator(z + optimum)
    assert float(images.min()) > 0 and float(images.max()) < 1


def test_latent_attack_returns_8_bit_hidden_fakes_with_and_without_the_offset() -> None:
    generator, weight = linear_generator()
    model = LinearDetector(weight)
    kwargs = {"latent_radius": 0.5, "steps": 40, "n_eval": 50, "public_seed": 1, "hidden_seed": 2,
              "n_train": 100, "batch_size": 50}
    outcome = latent_attack(model, generator, 8, **kwargs)  # type: ignore[arg-type]
    assert outcome.attacked.dtype == torch.uint8 and outcome.reference.dtype == torch.uint8
    assert outcome.attacked.shape == (50, 1, 8, 8)
    assert float(outcome.delta.norm()) <= outcome.radius * (1 + 1e-6)
    with torch.no_grad():
        attacked, reference = model(pixels_to_unit(outcome.attacked)), model(pixels_to_unit(outcome.reference))
        assert float(attacked.mean()) < float(reference.mean()) - 0.5
    again = latent_attack(model, generator, 8, **kwargs)  # type: ignore[arg-type]
    assert torch.equal(again.attacked, outcome.attacked) and torch.equal(again.delta, outcome.delta)
    z_hidden = torch.randn((50, 8), generator=torch.Generator().manual_seed(2))
    assert torch.equal(outcome.reference, generate(generator, z_hidden))
    with pytest.raises(ValueError, match="another seed"):
        latent_attack(model, generator, 8, **{**kwargs, "hidden_seed": 1})  # type: ignore[arg-type]


def test_latent_restarts_keep_the_offset_whose_public_fakes_hide_best() -> None:
    generator, weight = linear_generator()
    model = LinearDetector(weight)
    z_public = torch.randn(120, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        real_scores = model(torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(6))).numpy()
    common = {"latent_radius": 0.5, "steps": 30, "n_eval": 40, "public_seed": 1, "hidden_seed": 2,
              "z_public": z_public, "batch_size": 40, "seed": 9}
    # One restart of the mean score is exactly the single run of earlier suite versions.
    single = latent_attack(model, generator, 8, objectives=("mean-score",), restarts=1, **common)
    alone = learn_latent_offset(model, generator, z_public, 0.5 * math.sqrt(8), 30, 9, 40)
    assert torch.equal(single.delta, alone) and single.public_auc == {}
    outcome = latent_attack(model, generator, 8, threshold=float(np.quantile(real_scores, 0.95)),
                            real_scores=real_scores, **common)
    assert set(outcome.public_auc) == {"mean-score", "mean-score#2", "flagged", "flagged#2"}
    assert outcome.objective == min(outcome.public_auc, key=outcome.public_auc.get)
    assert set(outcome.public_flagged) == set(outcome.public_auc)
    assert all(0.0 <= v <= 1.0 for v in outcome.public_auc.values())
    assert outcome.gradient_passes == 4 * 30 * 40
    with pytest.raises(ValueError, match="unknown latent attack objective"):
        latent_attack(model, generator, 8, objectives=("median",), **common)


def test_flagged_objective_is_the_smoothed_share_above_the_threshold() -> None:
    scores = torch.tensor([-50.0, 0.0, 50.0])
    assert float(objective_loss(scores, "flagged", 0.0)) == pytest.approx((0.0 + 0.5 + 1.0) / 3, abs=1e-6)
    assert float(objective_loss(scores, "flagged", 50.0)) == pytest.approx((0.0 + 0.0 + 0.5) / 3, abs=1e-6)
    assert float(objective_loss(scores, "mean-score", 7.0)) == pytest.approx(0.0)


# --------------------------------------------------------------------------- suite


def test_budget_labels_and_median_interval() -> None:
    assert budget_label(1 / 255) == "Linf-1/255" and budget_label(4 / 255) == "Linf-4/255"
    assert budget_label(0.01) == "Linf-0.01"
    median, low, high = median_interval(np.arange(1.0, 101.0))
    assert median == 50.5 and (low, high) == (40.0, 61.0)  # the textbook ranks for n = 100
    assert median_interval(np.arange(5.0)) == (2.0, None, None)  # too few values for 95 %


class EightBitCheck(nn.Module):
    """Wraps a detector and records whether every image it scores without gradients is 8-bit."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.scored = 0
        self.off_grid = 0

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            self.scored += x.shape[0]
            self.off_grid += int(((x * 255 - (x * 255).round()).abs() > 1e-3).flatten(1).any(dim=1).sum())
        return self.inner(x)


def suite_setting() -> tuple[nn.Module, Tensor, Tensor, LinearGenerator]:
    """8 x 8 reals around grey and fakes from a linear generator whose mean carries a faint pattern
    that a linear detector picks up (clean AUC about 0.9 on these sizes)."""
    g = torch.Generator().manual_seed(7)
    pattern = torch.randn(64, generator=g)
    pattern = pattern / pattern.norm()
    matrix = 0.05 * torch.randn(64, 8, generator=g)
    generator = LinearGenerator(matrix, 0.5 + 0.12 * pattern, 8)
    reals = (0.5 + 0.05 * torch.randn(300, 1, 8, 8, generator=g)).clamp(0, 1)
    fakes = generator(torch.randn(200, 8, generator=g))
    model = LinearDetector(pattern, -float(pattern @ torch.full((64,), 0.5)))
    return model, _as_uint8(reals), _as_uint8(fakes), generator


def _as_uint8(images: Tensor) -> Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def test_suite_names_its_metrics_drops_the_auc_and_is_deterministic() -> None:
    model, reals, fakes, generator = suite_setting()
    config = DetectorAttackSpec(
        points=60, target_fpr=0.05, pgd_budgets=(1 / 255, 3 / 255), pgd_steps=5, min_norms=("Linf", "L2", "L0"),
        patch_area=0.05, universal_train_images=128, universal_steps=30, latent_radius=0.5, public_seed=1,
    )
    checked = EightBitCheck(model)
    events: list[tuple[float, str]] = []
    metrics, provenance = run_detector_suite(
        checked, reals, fakes, config, "clean", seed=3, generator=generator, latent_dim=8, batch_size=64,
        progress=lambda f, s: events.append((f, s)),
    )
    by_name = {m.metric: m for m in metrics}
    four = ("auc", "average_precision", "tpr@1%fpr", "tpr@5%fpr")
    suffixes = ("clean-subset", "Linf-1/255", "Linf-3/255", "min-Linf", "min-L2", "min-L0", "patch-5%", "latent",
                "latent-reference")
    expected = {f"{m}@{s}" for m in four for s in suffixes}
    expected |= {f"{m}@min-{n}" for m in ("median_distortion", "success_rate") for n in ("Linf", "L2", "L0")}
    assert set(by_name) == expected
    assert all(m.evaluation_set == "clean" for m in metrics)
    assert all(math.isfinite(m.value) for m in metrics)

    clean_auc = by_name["auc@clean-subset"].value
    assert clean_auc > 0.8
    assert by_name["auc@Linf-1/255"].value <= clean_auc
    assert by_name["auc@Linf-3/255"].value <= by_name["auc@Linf-1/255"].value
    assert by_name["auc@Linf-3/255"].value < clean_auc - 0.2
    assert by_name["auc@patch-5%"].value < clean_auc
    assert by_name["auc@latent"].value < by_name["auc@latent-reference"].value
    for norm in ("Linf", "L2", "L0"):
        assert by_name[f"success_rate@min-{norm}"].value > 0.5
        assert by_name[f"auc@min-{norm}"].value < clean_auc
    assert by_name["median_distortion@min-Linf"].value <= by_name["median_distortion@min-L2"].value
    assert by_name["auc@clean-subset"].num_examples == 300 + 60
    # Only fakes caught at the clean threshold need a change; the rate is over exactly those.
    caught = round(provenance["caught_clean"] * 60)
    assert caught > 0
    assert by_name["success_rate@min-L2"].num_examples == caught == provenance["minimal_points"]

    assert provenance["points"] == 60 and provenance["patch"]["side"] == 2 and provenance["threshold"] > 0
    assert provenance["latent"]["delta_norm"] <= 0.5 * math.sqrt(8) + 1e-5

    assert checked.scored > 0 and checked.off_grid == 0  # everything scored was an 8-bit image
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] == 0.0

    again, _ = run_detector_suite(model, reals, fakes, config, "clean", seed=3, generator=generator, latent_dim=8,
                                  batch_size=64)
    assert again == metrics
    other, _ = run_detector_suite(model, reals, fakes, config, "clean", seed=4, generator=generator, latent_dim=8,
                                  batch_size=64)
    assert other != metrics


def test_suite_without_a_generator_runs_only_the_pixel_attacks() -> None:
    model, reals, fakes, _ = suite_setting()
    config = DetectorAttackSpec(points=20, pgd_budgets=(2 / 255,), pgd_steps=3, min_norms=("L0",))
    metrics, provenance = run_detector_suite(model, reals, fakes, config, "clean", seed=0, batch_size=64)
    values = {m.metric: m.value for m in metrics}
    assert {"auc@Linf-2/255", "success_rate@min-L0", "median_distortion@min-L0", "auc@min-L0"} <= set(values)
    assert not any("patch" in name or "latent" in name for name in values)
    assert "patch" not in provenance and "latent" not in provenance
    # The clean-subset AUC is the AUC of the seeded subset of fakes, un-attacked, against every real.
    with torch.no_grad():
        real_scores = model(pixels_to_unit(reals)).numpy()
        subset_scores = model(pixels_to_unit(fakes[attacked_subset(int(fakes.shape[0]), 20, 0)])).numpy()
    labels = np.r_[np.zeros(real_scores.size), np.ones(subset_scores.size)]
    assert values["auc@clean-subset"] == pytest.approx(roc_auc(np.r_[real_scores, subset_scores], labels), abs=1e-9)


def test_suite_takes_the_callers_clean_scores_and_checks_their_shape() -> None:
    model, reals, fakes, _ = suite_setting()
    config = DetectorAttackSpec(points=20, pgd_budgets=(2 / 255,), pgd_steps=3, min_norms=("L2",))
    computed, _ = run_detector_suite(model, reals, fakes, config, "clean", seed=0, batch_size=64)
    with torch.no_grad():
        known = (model(pixels_to_unit(reals)).double().numpy(), model(pixels_to_unit(fakes)).double().numpy())
    given, _ = run_detector_suite(model, reals, fakes, config, "clean", seed=0, batch_size=64, known_scores=known)
    assert given == computed
    # Scores that are not the model's change the clean numbers: the suite really uses them.
    shifted, _ = run_detector_suite(model, reals, fakes, config, "clean", seed=0, batch_size=64,
                                    known_scores=(known[0] + 1.0, known[1]))
    assert {m.metric: m.value for m in shifted}["auc@clean-subset"] < {
        m.metric: m.value for m in computed}["auc@clean-subset"]
    with pytest.raises(ValueError, match="one score per real"):
        run_detector_suite(model, reals, fakes, config, "clean", seed=0, known_scores=(known[0][:-1], known[1]))


def test_a_secret_seed_changes_only_the_attacks_a_submitter_could_replay_offline() -> None:
    """With public seeds the universal patch and latent offset learn on public fakes with public randomness:
    a submitter could reproduce them offline and train a detector to recognise exactly those. A secret seed
    per job changes them (and the latent attack's hidden latents); the per-image attacks are untouched."""
    model, reals, fakes, generator = suite_setting()
    config = DetectorAttackSpec(
        points=40, pgd_budgets=(2 / 255,), pgd_steps=5, min_norms=("Linf",), patch_area=0.05,
        universal_train_images=64, universal_steps=10, public_seed=1,
    )

    def run(secret: int | None) -> dict[str, float]:
        metrics, _ = run_detector_suite(model, reals, fakes, config, "clean", seed=3, generator=generator,
                                        latent_dim=8, batch_size=64, secret_seed=secret)
        return {m.metric: m.value for m in metrics}

    public, first, second = run(None), run(101), run(202)
    assert run(101) == first  # deterministic for a given secret
    replayable = ("auc@patch-5%", "auc@latent", "auc@latent-reference")
    assert any(first[k] != second[k] for k in replayable) and any(first[k] != public[k] for k in replayable)
    for per_image in ("auc@clean-subset", "auc@Linf-2/255", "auc@min-Linf"):
        assert first[per_image] == second[per_image] == public[per_image]
