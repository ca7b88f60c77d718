"""Submission quotas per user and track: a daily and a total limit, kept in an append-only ledger.

Every accepted submission is charged once, when it is created. Deleting or cancelling it gives
nothing back (otherwise cancel-and-resubmit would probe the hidden sets for free); an evaluation
that fails through the platform's own fault is refunded, since the researcher got no answer.
Staff and members of the ``robots`` group (baseline loaders, CI) are exempt.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from accounts.models import QuotaEntry, TrackQuota
from benchmarks.models import Track
from submissions.failures import is_platform_fault


class QuotaExceeded(Exception):
    """The user has used up a limit; ``retry_after`` is seconds until the daily limit resets (None: never)."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Usage:
    """Where one user stands on one track; ``None`` limits mean exempt (unlimited)."""

    track_id: int
    used_today: int
    used_total: int
    daily_limit: int | None
    total_limit: int | None

    @property
    def exempt(self) -> bool:
        return self.daily_limit is None

    @property
    def left_today(self) -> int | None:
        """Submissions still allowed today: the tighter of the daily and the total allowance."""
        if self.daily_limit is None or self.total_limit is None:
            return None
        return max(0, min(self.daily_limit - self.used_today, self.total_limit - self.used_total))

    def as_dict(self) -> dict[str, Any]:
        return {"used_today": self.used_today, "used_total": self.used_total, "daily_limit": self.daily_limit,
                "total_limit": self.total_limit, "left_today": self.left_today, "exempt": self.exempt}


def is_exempt(user: Any) -> bool:
    if user.is_staff or user.is_superuser:
        return True
    return user.groups.filter(name=settings.ARENA_QUOTA_EXEMPT_GROUP).exists()


def day_start(now: dt.datetime | None = None) -> dt.datetime:
    """Start of the current UTC day: daily limits reset at midnight UTC, the same moment for everyone."""
    now = now or timezone.now()
    return now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def seconds_until_reset(now: dt.datetime | None = None) -> int:
    now = now or timezone.now()
    return max(1, int((day_start(now) + dt.timedelta(days=1) - now).total_seconds()) + 1)


def limits_for(tracks: list[Any]) -> dict[int, tuple[int, int]]:
    """track id -> (daily, total), from TrackQuota rows or the settings' defaults (one query)."""
    rows = {q.track_id: (q.daily_limit, q.total_limit) for q in TrackQuota.objects.filter(track__in=tracks)}
    default = (settings.ARENA_DEFAULT_DAILY_LIMIT, settings.ARENA_DEFAULT_TOTAL_LIMIT)
    return {t.pk: rows.get(t.pk, default) for t in tracks}


def _net_counts(user: Any, tracks: list[Any], since: dt.datetime) -> dict[int, tuple[int, int]]:
    """track id -> (net charges since ``since``, net charges ever): charges minus the refunds of them.

    A refund counts against the day of the charge it returns, so a refund today of yesterday's
    charge does not lend extra submissions today.
    """
    today = Q(created_at__gte=since)
    charges = (
        QuotaEntry.objects.filter(user=user, track__in=tracks, kind=QuotaEntry.Kind.CHARGE)
        .values("track_id")
        .annotate(total=Count("id"), today=Count("id", filter=today))
    )
    refunds = (
        QuotaEntry.objects.filter(user=user, track__in=tracks, kind=QuotaEntry.Kind.REFUND)
        .values("track_id")
        .annotate(total=Count("id"), today=Count("id", filter=Q(charge__created_at__gte=since)))
    )
    out: dict[int, list[int]] = {t.pk: [0, 0] for t in tracks}
    for row in charges:
        out[row["track_id"]][0] += row["today"]
        out[row["track_id"]][1] += row["total"]
    for row in refunds:
        out[row["track_id"]][0] -= row["today"]
        out[row["track_id"]][1] -= row["total"]
    return {k: (v[0], v[1]) for k, v in out.items()}


def usage_for(user: Any, tracks: list[Any], now: dt.datetime | None = None) -> dict[int, Usage]:
    """Usage of ``user`` on each of ``tracks`` with a fixed number of queries."""
    tracks = list(tracks)
    if not tracks:
        return {}
    counts = _net_counts(user, tracks, day_start(now))
    if is_exempt(user):
        return {t.pk: Usage(t.pk, *counts[t.pk], None, None) for t in tracks}
    limits = limits_for(tracks)
    return {t.pk: Usage(t.pk, *counts[t.pk], *limits[t.pk]) for t in tracks}


def check_and_lock(user: Any, track: Any) -> None:
    """Refuse with QuotaExceeded when ``user`` may not submit to ``track`` now.

    Call inside the transaction that will write the charge: the user's row is locked, so two
    uploads racing each other cannot both take the last slot (PostgreSQL; SQLite's IMMEDIATE
    transactions already serialise writers).
    """
    if is_exempt(user):
        return
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()
    usage = usage_for(user, [track])[track.pk]
    if usage.total_limit is not None and usage.used_total >= usage.total_limit:
        raise QuotaExceeded(
            f"You have used all {usage.total_limit} submissions allowed on {track.name}. "
            "Ask the organisers if you need more."
        )
    if usage.daily_limit is not None and usage.used_today >= usage.daily_limit:
        retry = seconds_until_reset()
        raise QuotaExceeded(
            f"You have used today's {usage.daily_limit} submissions on {track.name}; "
            f"the limit resets at midnight UTC (in {retry // 3600} h {retry % 3600 // 60} min).",
            retry_after=retry,
        )


def charge(submission: Any, reason: str = "submission created") -> QuotaEntry | None:
    """Record the charge of a newly created submission (nothing for exempt users)."""
    if is_exempt(submission.owner):
        return None
    return QuotaEntry.objects.create(user=submission.owner, track=submission.track, submission=submission,
                                     kind=QuotaEntry.Kind.CHARGE, reason=reason[:300])


def refund_platform_failure(submission: Any) -> QuotaEntry | None:
    """Give back the charge of a submission whose evaluation failed through a platform fault.

    Called when a failure is recorded (:func:`submissions.arrival.receive_result`, the watchdog). Only
    codes the failure table marks as the platform's fault (:mod:`submissions.failures`) qualify; each
    charge is refunded at most once, so calling this again (a redelivered task, a second platform fault
    after a re-run) changes nothing.
    Returns the refund row, or None when nothing was refunded.
    """
    if not is_platform_fault(submission.failure_code):
        return None
    with transaction.atomic():
        charge_row = (
            QuotaEntry.objects.select_for_update(of=("self",))
            .filter(submission=submission, kind=QuotaEntry.Kind.CHARGE, refund__isnull=True)
            .order_by("created_at", "id")
            .first()
        )
        if charge_row is None:
            return None
        return QuotaEntry.objects.create(
            user=charge_row.user, track=charge_row.track, submission=submission, kind=QuotaEntry.Kind.REFUND,
            charge=charge_row, reason=f"platform fault: {submission.failure_code}",
        )


def quota_rows(user: Any) -> list[tuple[Any, Usage]]:
    """(track, usage) for every public track, for the submit and My submissions pages."""
    tracks = list(Track.objects.filter(is_public=True).select_related("benchmark"))
    usage = usage_for(user, tracks)
    return [(t, usage[t.pk]) for t in tracks]
