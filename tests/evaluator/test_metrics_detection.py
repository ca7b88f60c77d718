"""Detector metrics: hand-computed references, sklearn agreement and the bootstrap."""

from __future__ import annotations

import time

import numpy as np
import pytest

from evaluator.metrics import detection
from evaluator.metrics.detection import (
    average_precision,
    detection_metrics,
    roc_auc,
    threshold_at_fpr,
    tpr_at_fpr,
    tpr_at_threshold,
)
from evaluator.spec import MetricValue


def _mann_whitney_auc(reals: list[float], fakes: list[float]) -> float:
    """Independent reference: the fraction of (fake, real) pairs ranked right, ties one half."""
    wins = sum(1.0 if f > r else 0.5 if f == r else 0.0 for f in fakes for r in reals)
    return wins / (len(reals) * len(fakes))


def _scores(reals: list[float], fakes: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return np.array(reals + fakes, dtype=float), np.array([0] * len(reals) + [1] * len(fakes))


def test_auc_with_ties_by_hand() -> None:
    # fake 2: beats 1, ties 2, loses to 3 -> 1.5; fake 3: 2.5; fake 4: 3 -> 7 / 9
    scores, labels = _scores([1, 2, 3], [2, 3, 4])
    assert roc_auc(scores, labels) == pytest.approx(7 / 9)
    rng = np.random.default_rng(0)
    reals = list(rng.integers(0, 5, 30).astype(float))
    fakes = list(rng.integers(1, 6, 25).astype(float))
    assert roc_auc(*_scores(reals, fakes)) == pytest.approx(_mann_whitney_auc(reals, fakes))


def test_average_precision_by_hand() -> None:
    # Ranking: fake (P=1/1), real, fake (P=2/3): AP = 1/2 * 1 + 1/2 * 2/3
    scores, labels = _scores([0.5, 0.1], [0.9, 0.3])
    assert average_precision(scores, labels) == pytest.approx(0.5 + 1 / 3)


def test_tpr_at_fpr_hand_built() -> None:
    reals = [float(v) for v in range(100)]  # 0 ... 99
    fakes = [99.5, 98.5, 97.5, 50.0, 20.0]
    scores, labels = _scores(reals, fakes)
    # The best threshold sits just above the highest real that must stay unflagged.
    assert tpr_at_fpr(scores, labels, 0.0) == pytest.approx(0.2)  # > 99: only 99.5
    assert tpr_at_fpr(scores, labels, 0.01) == pytest.approx(0.4)  # > 98: flags real 99, fakes 99.5, 98.5
    assert tpr_at_fpr(scores, labels, 0.02) == pytest.approx(0.6)  # > 97: adds 97.5
    assert tpr_at_fpr(scores, labels, 0.05) == pytest.approx(0.6)  # > 94: no further fake
    assert tpr_at_fpr(scores, labels, 0.5) == pytest.approx(0.8)  # > 49: adds 50
    assert tpr_at_fpr(scores, labels, 1.0) == pytest.approx(1.0)


def test_threshold_from_clean_reals_applies_to_new_fakes() -> None:
    reals = np.arange(100, dtype=float)
    threshold = threshold_at_fpr(reals, 0.05)
    assert np.mean(reals >= threshold) == pytest.approx(0.05)  # 95 ... 99 are flagged
    assert threshold > 94.0
    attacked_fakes = np.array([99.5, 96.0, 94.5, 94.0, 10.0])  # scores after an attack
    assert tpr_at_threshold(attacked_fakes, threshold) == pytest.approx(0.6)  # 94 is not > 94
    assert threshold_at_fpr(reals, 0.0) > 99.0
    assert threshold_at_fpr(reals, 1.0) == -np.inf


def test_threshold_agrees_with_roc_on_random_data_with_ties() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        reals = np.round(rng.normal(0, 1, rng.integers(5, 80)), 1)
        fakes = np.round(rng.normal(1, 1, rng.integers(5, 80)), 1)
        scores, labels = np.concatenate([reals, fakes]), np.r_[np.zeros(reals.size), np.ones(fakes.size)]
        for fpr in (0.0, 0.01, 0.05, 0.1, 0.37):
            expected = tpr_at_fpr(scores, labels, fpr)
            assert tpr_at_threshold(fakes, threshold_at_fpr(reals, fpr)) == pytest.approx(expected)


def test_vectorised_curves_equal_sklearn() -> None:
    rng = np.random.default_rng(9)
    for _ in range(30):
        scores = np.round(rng.normal(size=60), 1)
        labels = (rng.random(60) < 0.4).astype(int)
        labels[:2] = [0, 1]
        levels, inverse = np.unique(-scores, return_inverse=True)
        counts = detection._curve_counts(inverse[labels == 0][None], inverse[labels == 1][None], levels.size)
        got = detection._metrics_from_counts(*counts, (0.01, 0.05))[0]
        expected = [
            roc_auc(scores, labels),
            average_precision(scores, labels),
            tpr_at_fpr(scores, labels, 0.01),
            tpr_at_fpr(scores, labels, 0.05),
        ]
        np.testing.assert_allclose(got, expected, atol=1e-12)


def _gaussian_set(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(0, 1, n_per_class), rng.normal(1.2, 1, n_per_class)])
    return scores, np.r_[np.zeros(n_per_class, dtype=int), np.ones(n_per_class, dtype=int)]


def test_detection_metrics_bootstrap() -> None:
    scores, labels = _gaussian_set(2000, seed=1)
    start = time.perf_counter()
    metrics = detection_metrics(scores, labels, "gan-clean", n_bootstrap=1000, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0
    assert [m.metric for m in metrics] == ["auc", "average_precision", "tpr@1%fpr", "tpr@5%fpr"]
    for metric in metrics:
        assert isinstance(metric, MetricValue)
        assert metric.evaluation_set == "gan-clean" and metric.num_examples == 4000
        assert metric.ci_method == "bootstrap-95"
        assert metric.ci_low <= metric.value <= metric.ci_high
    assert metrics[0].value == pytest.approx(roc_auc(scores, labels))
    # Seeded: the same call gives the same intervals.
    again = detection_metrics(scores, labels, "gan-clean", n_bootstrap=1000, seed=0)
    assert [(m.ci_low, m.ci_high) for m in again] == [(m.ci_low, m.ci_high) for m in metrics]


def test_bootstrap_interval_narrows_with_n() -> None:
    small = detection_metrics(*_gaussian_set(100, seed=2), "s", n_bootstrap=400)
    large = detection_metrics(*_gaussian_set(2000, seed=2), "l", n_bootstrap=400)
    for a, b in zip(small, large, strict=True):
        assert (b.ci_high - b.ci_low) < (a.ci_high - a.ci_low) / 2  # about sqrt(20) narrower


def test_stratified_resampling_keeps_both_classes() -> None:
    # Only 2 fakes among 300: an unstratified bootstrap would often draw no fake at all.
    scores = np.r_[np.linspace(0, 1, 298), [0.95, 0.2]]
    labels = np.r_[np.zeros(298, dtype=int), [1, 1]]
    metrics = detection_metrics(scores, labels, "tiny", n_bootstrap=200)
    assert all(np.isfinite(m.ci_low) and np.isfinite(m.ci_high) for m in metrics)


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="at least one real"):
        roc_auc(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        roc_auc(np.array([0.1, 0.2]), np.array([0, 2]))
    with pytest.raises(ValueError):
        threshold_at_fpr(np.array([]), 0.01)


def test_fixed_threshold_rates_count_by_hand() -> None:
    """Rates at a threshold fixed on clean reals are plain proportions with Clopper-Pearson intervals."""
    from evaluator.metrics.classification import clopper_pearson
    from evaluator.metrics.detection import fixed_threshold_rates

    reals = [0.1, 0.2, 0.3, 0.9]  # one real at or above 0.5
    fakes = [0.4, 0.5, 0.6, 0.7, 0.8]  # four fakes at or above 0.5
    scores, labels = _scores(reals, fakes)
    rates = {m.metric: m for m in fixed_threshold_rates(scores, labels, {0.05: 0.5, 0.01: 0.85}, "s")}
    assert set(rates) == {"tpr@5%fpr", "fpr@5%fpr", "tpr@1%fpr", "fpr@1%fpr"}
    assert rates["tpr@5%fpr"].value == pytest.approx(4 / 5) and rates["fpr@5%fpr"].value == pytest.approx(1 / 4)
    assert rates["tpr@1%fpr"].value == 0.0 and rates["fpr@1%fpr"].value == pytest.approx(1 / 4)
    low, high = clopper_pearson(4, 5)
    assert (rates["tpr@5%fpr"].ci_low, rates["tpr@5%fpr"].ci_high) == pytest.approx((low, high))
    assert rates["tpr@5%fpr"].num_examples == 5 and rates["fpr@5%fpr"].num_examples == 4
