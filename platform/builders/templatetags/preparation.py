"""``{% preparation_notice track %}``: what a background build is still preparing for a track.

Lives with the builders (the top layer) so that the leaderboard's view and queries need not know
about it: the track page loads this library and asks for the track's rows of
:class:`builders.models.Preparation`. One short line per step that is waiting, running, stalled
(its run stopped sending heartbeats) or failed; nothing once every step is done.
"""

from __future__ import annotations

from django import template
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from builders.models import Preparation

register = template.Library()


def _clock(moment) -> str:
    return timezone.localtime(moment).strftime("%H:%M %Z") if moment else ""


def describe(preparation: Preparation, now=None) -> tuple[str, str]:
    """(css class, sentence) for one step, e.g. ("running", "Preparing: transfer-attack set (surrogate
    training), started 01:02 UTC")."""
    p = preparation
    what = p.label + (f" ({p.step})" if p.step and p.state == p.State.RUNNING else "")
    progress = f", {p.progress}" if p.progress else ""
    if p.state == p.State.FAILED:
        reason = f": {p.message}" if p.message else ""
        return "failed", f"Failed: {p.label}{progress}, stopped {_clock(p.finished_at or p.updated_at)}{reason}"
    if p.is_stalled(now):
        return "stalled", (f"Stalled: {what}{progress}, no sign of life since {_clock(p.updated_at)} "
                           f"(run `manage.py prepare_demo` again)")
    if p.state == p.State.RUNNING:
        return "running", f"Preparing: {what}{progress}, started {_clock(p.started_at)}"
    return "waiting", f"Waiting: {what}{progress}, queued behind the other background steps"


@register.simple_tag
def preparation_notice(track) -> str:
    """The track's unfinished background steps as a short list (empty when there are none)."""
    rows = [p for p in Preparation.objects.filter(track=track) if p.state != Preparation.State.DONE]
    if not rows:
        return ""
    now = timezone.now()
    items = format_html_join("", '<li class="{}">{}</li>', (describe(p, now) for p in rows))
    return format_html('<ul class="muted preparation" id="preparation" role="status">{}</ul>', items)
