"""Classification metrics with exact (Clopper-Pearson) intervals.

Accuracy on a test set of n images is a binomial proportion; the Clopper-Pearson interval is
exact (never below its nominal coverage), which matters for small shifted sets and for
accuracies near 0 or 1, where the normal approximation fails.
"""

from __future__ import annotations

import numpy as np

from evaluator.spec import MetricValue


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return 1.0 - confidence


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for ``successes`` out of ``n``.

    Endpoints are quantiles of beta distributions: low = Beta(alpha/2; k, n-k+1),
    high = Beta(1-alpha/2; k+1, n-k), with low = 0 exactly at k = 0 and high = 1 at k = n.
    """
    from scipy.stats import beta

    alpha = _check_confidence(confidence)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return low, high


def accuracy_with_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """(accuracy, low, high) with the Clopper-Pearson interval."""
    low, high = clopper_pearson(correct, n, confidence)
    return correct / n, low, high


def accuracy_metric(
    predictions: np.ndarray, labels: np.ndarray, evaluation_set: str, confidence: float = 0.95
) -> MetricValue:
    """Top-1 accuracy of predicted class indices as a :class:`MetricValue` (``clopper-pearson-95``)."""
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.shape != labels.shape or labels.ndim != 1:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be equal 1-D shapes")
    n = int(labels.shape[0])
    correct = int(np.count_nonzero(predictions == labels))
    value, low, high = accuracy_with_interval(correct, n, confidence)
    return MetricValue(
        evaluation_set=evaluation_set,
        metric="accuracy",
        value=value,
        num_examples=n,
        ci_low=low,
        ci_high=high,
        ci_method=f"clopper-pearson-{round(confidence * 100)}",
    )


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy per true class, keyed by the class index as a string (JSON-friendly).

    Classes without examples are left out rather than reported as 0 or NaN.
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels).astype(np.int64)
    if predictions.shape != labels.shape or labels.ndim != 1:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be equal 1-D shapes")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    totals = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels[predictions == labels], minlength=num_classes)
    return {str(c): float(hits[c] / totals[c]) for c in range(num_classes) if totals[c] > 0}
