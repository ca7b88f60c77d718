"""The track page says how many points the attack suite attacks and how wide a robust accuracy's interval can be."""

from __future__ import annotations

import pytest
from django.test import Client
from scipy.stats import beta

pytestmark = pytest.mark.django_db


def _widest_half_width_percent(n: int) -> float:
    """Clopper-Pearson at k = n // 2, straight from the beta quantiles (independent of the platform's code)."""
    k = n // 2
    return (beta.ppf(0.975, k + 1, n - k) - beta.ppf(0.025, k, n - k + 1)) / 2 * 100


@pytest.mark.parametrize(("attack_points", "shown_points"), [(500, 500), (5000, 2000)])
def test_the_page_states_the_attack_points_and_their_interval(digits_track, settings, attack_points, shown_points):
    settings.ARENA_LEADERBOARD_CACHE_SECONDS = 0
    digits_track.threat_models = [{"norm": "Linf", "eps": 0.3, "label": "Linf-0.3"},
                                  {"norm": "L2", "eps": 2.0, "label": "L2-2.0"}]
    digits_track.attack_points = attack_points  # the clean set holds 2,000 images: no more can be attacked
    digits_track.save()
    page = Client().get(f"/tracks/{digits_track.slug}/").content.decode()
    expected = f"&plusmn;{_widest_half_width_percent(shown_points):.1f} points"
    assert f"on {shown_points} hidden clean points" in page and "(Linf-0.3, L2-2.0)" in page
    assert expected in page.replace("±", "&plusmn;")


def test_a_track_without_attacks_says_nothing_of_them(digits_track, settings):
    settings.ARENA_LEADERBOARD_CACHE_SECONDS = 0
    page = Client().get(f"/tracks/{digits_track.slug}/").content.decode()
    assert 'id="attack-plan"' not in page
