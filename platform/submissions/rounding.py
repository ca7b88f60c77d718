"""How many digits of a hidden-set score are released: as many as its confidence interval justifies.

A score printed to more digits than its interval supports invites reading noise as progress and,
worse, lets a submitter watch the last digits move as they tune against the hidden set (the
adaptive-overfitting route that Blum and Hardt's Ladder closes). The rule here: round to the
decimal place of the leading digit of the interval's half-width. An accuracy of 98.8834 % with
the interval [98.55 %, 99.15 %] (half-width 0.30 points) is released as 98.9 % [98.6 %, 99.2 %];
an AUC of 0.77712 with half-width 0.0147 as 0.78 [0.76, 0.79]. Scores without an interval keep
the display's default precision.
"""

from __future__ import annotations

import math

#: Metrics shown in percent (their half-width is measured in points).
PERCENT_PREFIXES = ("accuracy", "robust_accuracy", "attacked_clean_accuracy", "tpr@", "fpr@", "success_rate@", "points")
#: Digits after the point when there is no interval, and the most ever shown (per unit).
DEFAULT_DECIMALS = {"percent": 2, "plain": 3}
MAX_DECIMALS = {"percent": 2, "plain": 4}


def is_percent(metric: str) -> bool:
    return metric.startswith(PERCENT_PREFIXES)


def decimals_for(metric: str, low: float | None, high: float | None) -> int:
    """Digits after the point, in the unit the metric is shown in (points for percentages)."""
    unit = "percent" if is_percent(metric) else "plain"
    if low is None or high is None or not math.isfinite(low) or not math.isfinite(high):
        return DEFAULT_DECIMALS[unit]
    half = (high - low) / 2 * (100 if unit == "percent" else 1)
    if half <= 0:
        return MAX_DECIMALS[unit]
    return max(0, min(MAX_DECIMALS[unit], -math.floor(math.log10(half))))


def round_released(metric: str, value: float | None, low: float | None = None,
                   high: float | None = None) -> tuple[float | None, float | None, float | None]:
    """(value, low, high) rounded to the released precision, in the metric's stored unit."""
    digits = decimals_for(metric, low, high) + (2 if is_percent(metric) else 0)

    def cut(x: float | None) -> float | None:
        return None if x is None or not math.isfinite(x) else round(x, digits)

    return cut(value), cut(low), cut(high)
