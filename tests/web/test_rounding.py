"""Released scores carry only the digits their confidence interval justifies."""

from __future__ import annotations

import pytest

from leaderboards.queries import Score
from leaderboards.templatetags.arena_tags import score
from submissions.rounding import decimals_for, round_released


@pytest.mark.parametrize(("metric", "low", "high", "decimals"), [
    ("accuracy", 0.9855, 0.9915, 1),  # half-width 0.30 points -> one decimal of a percent
    ("accuracy", 0.80, 0.86, 0),  # 3 points -> whole percents
    ("accuracy", 0.98880, 0.98890, 2),  # 0.005 points would justify 3; the display stops at 2
    ("auc", 0.762, 0.791, 2),  # half-width 0.0145
    ("auc", 0.9990, 0.9996, 4),  # half-width 0.0003
    ("accuracy", None, None, 2),  # no interval: the default
])
def test_decimals_follow_the_half_width(metric, low, high, decimals):
    assert decimals_for(metric, low, high) == decimals


def test_rounding_and_display_agree():
    assert round_released("accuracy", 0.988834, 0.985512, 0.991503) == (0.989, 0.986, 0.992)
    assert round_released("auc", 0.77712, 0.7623, 0.7917) == (0.78, 0.76, 0.79)
    html = str(score(Score("accuracy", 0.988834, 0.985512, 0.991503)))
    assert html.startswith("98.9%") and "[98.6%, 99.2%]" in html
    assert str(score(Score("auc", 0.77712, 0.7623, 0.7917))).startswith("0.78<")
