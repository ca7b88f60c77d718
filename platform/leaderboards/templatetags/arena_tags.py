"""Template filters for showing scores: a score is never printed without its interval."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.html import format_html

register = template.Library()

_PERCENT_METRICS = {"accuracy"}


@register.filter
def dictget(mapping: dict, key: str) -> Any:
    return mapping.get(key) if mapping else None


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    if metric in _PERCENT_METRICS:
        return f"{100 * value:.2f}%"
    return f"{value:.3f}"


@register.filter
def score(result: Any) -> str:
    """``98.90% [98.6, 99.1]`` for accuracy, ``0.953 [0.941, 0.962]`` for other metrics."""
    if result is None:
        return "–"
    interval = ""
    if result.ci_low is not None and result.ci_high is not None:
        interval = f" [{_fmt(result.metric, result.ci_low)}, {_fmt(result.metric, result.ci_high)}]"
    return format_html('{}<span class="ci">{}</span>', _fmt(result.metric, result.value), interval)


@register.filter
def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


@register.filter
def points(value: float | None) -> str:
    """An accuracy difference in percentage points, signed: ``+1.23 pt``."""
    return "–" if value is None else f"{100 * value:+.2f} pt"
