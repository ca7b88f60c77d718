"""Clopper-Pearson intervals and per-class accuracy against independent references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from evaluator.metrics.classification import (
    accuracy_metric,
    accuracy_with_interval,
    clopper_pearson,
    per_class_accuracy,
)


@pytest.mark.parametrize("n", [1, 7, 100, 10000])
def test_closed_forms_at_the_ends(n: int) -> None:
    alpha = 0.05
    low, high = clopper_pearson(0, n)
    assert low == 0.0 and high == pytest.approx(1 - (alpha / 2) ** (1 / n), rel=1e-9)
    low, high = clopper_pearson(n, n)
    assert high == 1.0 and low == pytest.approx((alpha / 2) ** (1 / n), rel=1e-9)


def test_tabulated_values() -> None:
    # R: binom.test(1, 10)$conf.int and binom.test(5, 10)$conf.int
    assert clopper_pearson(1, 10) == pytest.approx((0.002528579, 0.445016117), abs=1e-8)
    assert clopper_pearson(5, 10) == pytest.approx((0.187086028, 0.812913972), abs=1e-8)
    # 99 % interval, k=0: 1 - 0.005^(1/10)
    assert clopper_pearson(0, 10, confidence=0.99)[1] == pytest.approx(1 - 0.005**0.1, rel=1e-9)


@pytest.mark.parametrize(("k", "n"), [(3, 20), (17, 40), (912, 1000)])
def test_endpoints_solve_the_binomial_tails(k: int, n: int) -> None:
    low, high = clopper_pearson(k, n)
    assert binom.sf(k - 1, n, low) == pytest.approx(0.025, rel=1e-6)  # P(X >= k | p = low)
    assert binom.cdf(k, n, high) == pytest.approx(0.025, rel=1e-6)  # P(X <= k | p = high)


def test_accuracy_and_argument_checks() -> None:
    acc, low, high = accuracy_with_interval(9889, 10000)
    assert acc == pytest.approx(0.9889) and low < acc < high and high - low < 0.005
    for bad in ((-1, 10), (11, 10), (0, 0)):
        with pytest.raises(ValueError):
            clopper_pearson(*bad)
    with pytest.raises(ValueError):
        clopper_pearson(1, 10, confidence=1.0)


def test_accuracy_metric() -> None:
    metric = accuracy_metric(np.array([1, 2, 3, 0]), np.array([1, 2, 0, 0]), "mnist-clean")
    assert metric.metric == "accuracy" and metric.value == 0.75 and metric.num_examples == 4
    assert metric.ci_method == "clopper-pearson-95"
    assert (metric.ci_low, metric.ci_high) == pytest.approx(clopper_pearson(3, 4))


def test_per_class_accuracy() -> None:
    labels = np.array([0, 0, 0, 1, 1, 3])
    predictions = np.array([0, 1, 0, 1, 1, 0])
    assert per_class_accuracy(predictions, labels, num_classes=4) == {"0": 2 / 3, "1": 1.0, "3": 0.0}
    with pytest.raises(ValueError):
        per_class_accuracy(predictions, labels, num_classes=3)
