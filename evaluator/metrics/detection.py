"""Metrics for synthetic-image (deepfake) detectors.

Convention: fake is the positive class (label 1) and a higher score means "more likely fake".
Point estimates come from scikit-learn; the bootstrap recomputes the same quantities from
count matrices so that 1,000 stratified resamples of 4,000 scores take well under a second.
"""

from __future__ import annotations

import math

import numpy as np

from evaluator.metrics.classification import accuracy_with_interval
from evaluator.spec import MetricValue

#: Relative slack when comparing an FPR with its target, so that e.g. 29/100 counts as <= 0.29.
_FPR_SLACK = 1e-9


def _check_binary(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be equal 1-D shapes")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    labels = labels.astype(np.int64)
    if labels.min(initial=1) == labels.max(initial=0) or labels.size == 0:
        raise ValueError("detection metrics need at least one real (0) and one fake (1) example")
    return scores, labels


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half): P(score of a fake > score of a real)."""
    from sklearn.metrics import roc_auc_score

    scores, labels = _check_binary(scores, labels)
    return float(roc_auc_score(labels, scores))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision with fakes as positives (scikit-learn's step-wise definition)."""
    from sklearn.metrics import average_precision_score

    scores, labels = _check_binary(scores, labels)
    return float(average_precision_score(labels, scores))


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """The largest true-positive rate among ROC operating points whose FPR is <= ``fpr``."""
    from sklearn.metrics import roc_curve

    scores, labels = _check_binary(scores, labels)
    fprs, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(tprs[fprs <= fpr + _FPR_SLACK].max())


def threshold_at_fpr(real_scores: np.ndarray, fpr: float) -> float:
    """The lowest threshold t with at most ``fpr`` of ``real_scores`` >= t ("fake" means score >= t).

    Meant to be set on clean real images and then held fixed: applied with
    :func:`tpr_at_threshold` to fakes that were attacked or shifted afterwards, it measures how
    many of them are still caught at the false-alarm rate the detector was tuned for. On the
    data it was set on it reproduces :func:`tpr_at_fpr`.
    """
    reals = np.sort(np.asarray(real_scores, dtype=np.float64))[::-1]
    if reals.ndim != 1 or reals.size == 0 or not np.all(np.isfinite(reals)):
        raise ValueError("real_scores must be a non-empty 1-D array of finite scores")
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    allowed = math.floor(fpr * reals.size * (1 + _FPR_SLACK))  # false positives tolerated
    if allowed >= reals.size:  # every real may be flagged, so every score is "fake"
        return -math.inf
    # Just above the highest real score that must not be flagged.
    return float(np.nextafter(reals[allowed], np.inf))


def tpr_at_threshold(fake_scores: np.ndarray, threshold: float) -> float:
    """Fraction of fakes flagged (score >= ``threshold``) at a fixed threshold."""
    fakes = np.asarray(fake_scores, dtype=np.float64)
    if fakes.size == 0:
        raise ValueError("fake_scores must not be empty")
    return float(np.mean(fakes >= threshold))


def _curve_counts(
    real_positions: np.ndarray, fake_positions: np.ndarray, n_levels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (false, true) positives per resample at each distinct score level.

    Positions index the distinct scores in descending order; each row of the inputs is one
    resample. Row b of the outputs holds FP and TP when flagging every score >= level j,
    i.e. the ROC curve of resample b without dropped points.
    """
    n_rows = real_positions.shape[0]
    offsets = (np.arange(n_rows, dtype=np.int64) * n_levels)[:, None]
    size = n_rows * n_levels
    false_pos = np.bincount((real_positions + offsets).ravel(), minlength=size).reshape(n_rows, n_levels)
    true_pos = np.bincount((fake_positions + offsets).ravel(), minlength=size).reshape(n_rows, n_levels)
    return np.cumsum(false_pos, axis=1), np.cumsum(true_pos, axis=1)


def _metrics_from_counts(false_pos: np.ndarray, true_pos: np.ndarray, fprs: tuple[float, ...]) -> np.ndarray:
    """(rows, 2 + len(fprs)) array: AUC, average precision, then TPR at each target FPR."""
    n_real = false_pos[:, -1:].astype(np.float64)
    n_fake = true_pos[:, -1:].astype(np.float64)
    zeros = np.zeros((false_pos.shape[0], 1))
    fp = np.hstack([zeros, false_pos]).astype(np.float64)
    tp = np.hstack([zeros, true_pos]).astype(np.float64)
    # Trapezoids under the ROC curve: exactly the Mann-Whitney statistic with ties as one half.
    auc = np.sum(np.diff(fp, axis=1) * (tp[:, 1:] + tp[:, :-1]) / 2.0, axis=1) / (n_real[:, 0] * n_fake[:, 0])
    flagged = fp[:, 1:] + tp[:, 1:]
    precision = np.divide(tp[:, 1:], flagged, out=np.zeros_like(flagged), where=flagged > 0)
    ap = np.sum(np.diff(tp, axis=1) / n_fake * precision, axis=1)
    columns = [auc, ap]
    for target in fprs:
        ok = fp / n_real <= target + _FPR_SLACK  # the (0, 0) point always qualifies
        columns.append(np.max(np.where(ok, tp, 0.0), axis=1) / n_fake[:, 0])
    return np.stack(columns, axis=1)


def detection_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    evaluation_set: str = "",
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
    block_size: int = 100,
) -> list[MetricValue]:
    """AUC, average precision, TPR at 1 % and at 5 % FPR, each with a bootstrap interval.

    The bootstrap is stratified (reals and fakes are resampled separately, keeping their
    counts, since the test set fixes them) and seeded; the interval is the percentile
    interval of ``n_bootstrap`` resamples. Resamples are processed ``block_size`` at a time to
    bound memory.
    """
    scores, labels = _check_binary(scores, labels)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    fprs = (0.01, 0.05)
    names = ("auc", "average_precision", "tpr@1%fpr", "tpr@5%fpr")
    points = (
        roc_auc(scores, labels),
        average_precision(scores, labels),
        *(tpr_at_fpr(scores, labels, f) for f in fprs),
    )

    levels, inverse = np.unique(-scores, return_inverse=True)  # position 0 = highest score
    real_pos = inverse[labels == 0]
    fake_pos = inverse[labels == 1]
    rng = np.random.Generator(np.random.PCG64(seed))
    blocks = []
    for start in range(0, n_bootstrap, block_size):
        rows = min(block_size, n_bootstrap - start)
        real_sample = real_pos[rng.integers(0, real_pos.size, size=(rows, real_pos.size))]
        fake_sample = fake_pos[rng.integers(0, fake_pos.size, size=(rows, fake_pos.size))]
        blocks.append(_metrics_from_counts(*_curve_counts(real_sample, fake_sample, levels.size), fprs))
    alpha = 1.0 - confidence
    if blocks:
        boot = np.vstack(blocks)
        lows, highs = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    else:
        lows = highs = [None] * len(names)
    method = f"bootstrap-{round(confidence * 100)}"
    n = int(labels.size)
    return [
        MetricValue(
            evaluation_set=evaluation_set,
            metric=name,
            value=float(point),
            num_examples=n,
            ci_low=None if low is None else float(low),
            ci_high=None if high is None else float(high),
            ci_method=method if blocks else "",
        )
        for name, point, low, high in zip(names, points, lows, highs, strict=True)
    ]


def fixed_threshold_rates(
    scores: np.ndarray, labels: np.ndarray, thresholds: dict[float, float], evaluation_set: str = ""
) -> list[MetricValue]:
    """TPR and FPR at thresholds fixed beforehand (on clean reals), with Clopper-Pearson intervals.

    ``thresholds`` maps a target FPR (e.g. 0.05) to the threshold that achieved it on clean
    data. The threshold is treated as fixed, so each rate is a binomial proportion of the
    fakes (TPR) or reals (FPR) of this set that reach it.
    """
    scores, labels = _check_binary(scores, labels)
    fakes, reals = scores[labels == 1], scores[labels == 0]
    out: list[MetricValue] = []
    for target, threshold in sorted(thresholds.items()):
        name = f"{target * 100:g}%fpr"
        for metric, group in ((f"tpr@{name}", fakes), (f"fpr@{name}", reals)):
            value, low, high = accuracy_with_interval(int(np.sum(group >= threshold)), int(group.size))
            out.append(MetricValue(evaluation_set, metric, value, int(group.size), low, high, "clopper-pearson-95"))
    return out
