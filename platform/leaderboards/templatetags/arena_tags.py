"""Template filters for showing scores: a score is never printed without its interval."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.html import format_html

from submissions.rounding import decimals_for, is_percent

register = template.Library()



@register.filter
def dictget(mapping: dict, key: str) -> Any:
    return mapping.get(key) if mapping else None


def _fmt(metric: str, value: float | None, decimals: int | None = None) -> str:
    if value is None:
        return "–"
    if metric == "points":  # an accuracy difference (drop, effective robustness)
        return f"{100 * value:+.{2 if decimals is None else decimals}f} pt"
    if is_percent(metric):
        return f"{100 * value:.{2 if decimals is None else decimals}f}%"
    if metric == "median_distortion@min-L0":  # pixels changed
        return f"{value:.1f} px"
    if metric == "median_distortion@min-Linf":  # grey levels are how people think of an Linf change
        return f"{255 * value:.2f}/255"
    return f"{value:.{3 if decimals is None else decimals}f}"


@register.filter
def score(result: Any) -> str:
    """``98.9% [98.6%, 99.2%]`` for accuracies, ``0.95 [0.94, 0.96]`` for AUC, ``+1.2 pt`` for gaps.

    Digits are those the interval justifies (:mod:`submissions.rounding`).
    """
    if result is None:
        return "–"
    interval = ""
    digits = None
    if result.ci_low is not None and result.ci_high is not None:
        digits = decimals_for(result.metric, result.ci_low, result.ci_high)
        interval = f" [{_fmt(result.metric, result.ci_low, digits)}, {_fmt(result.metric, result.ci_high, digits)}]"
    found_by = getattr(result, "found_by", "")
    if found_by:  # the name is the attack author's text: escaped by format_html
        return format_html('{}<span class="ci">{}</span><span class="found-by">lowest found by {}</span>',
                           _fmt(result.metric, result.value, digits), interval, found_by)
    return format_html('{}<span class="ci">{}</span>', _fmt(result.metric, result.value, digits), interval)


@register.filter
def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


@register.filter
def metric_value(value: float | None, metric: str) -> str:
    """A released number without its interval: ``25.0%`` for an accuracy, ``0.87`` for an AUC (already rounded)."""
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if is_percent(metric) else f"{value:g}"


@register.filter
def seconds(value: Any) -> str:
    """A duration people read at a glance: ``42.1 s``, ``3 min 05 s``, ``1 h 02 min``."""
    try:
        value = float(value)
    except (TypeError, ValueError):  # missing from older provenance records
        return "–"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60):02d} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60):02d} min"


@register.filter
def points(value: float | None) -> str:
    """An accuracy difference in percentage points, signed: ``+1.23 pt``."""
    return "–" if value is None else f"{100 * value:+.2f} pt"
