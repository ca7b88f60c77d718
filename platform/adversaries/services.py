"""Creating and withdrawing attacks: shared by the web form and the API."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from adversaries.checks import AttackRefused, check_upload, is_package
from adversaries.models import Attack
from adversaries.scheduling import schedule_attack
from adversaries.signals import attack_scores_changed
from adversaries.targets import takes_attacks
from benchmarks.models import Track
from submissions.quota import is_exempt

__all__ = ["AttackRefused", "DuplicateAttack", "create_attack", "withdraw_attack"]


class DuplicateAttack(AttackRefused):
    """The same source was already submitted to the track."""

    def __init__(self, message: str, existing: Attack) -> None:
        super().__init__(message)
        self.existing = existing


def _attacks_today(user: Any, track: Track) -> int:
    start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    return Attack.objects.filter(owner=user, track=track, created_at__gte=start).count()


def create_attack(user: Any, track: Track, raw: bytes, *, name: str, description: str = "", paper_url: str = "",
                  code_url: str = "") -> Attack:
    """Check, store and schedule an attack; :class:`AttackRefused` says why one is not accepted.

    Public tracks with something to attack under take attacks: a classifier track's threat models, a
    detector track's Linf budgets (:mod:`adversaries.targets`). The daily and total limits per user and track
    (``ARENA_ATTACK_DAILY_LIMIT``, ``ARENA_ATTACK_TOTAL_LIMIT``) apply as the model quota's do, staff and the
    quota-exempt group aside; withdrawn attacks count, so withdrawing frees nothing.
    """
    if not takes_attacks(track):
        raise AttackRefused(f"{track.name} does not take attack submissions (public classifier tracks with threat "
                            "models and detector tracks with Linf attacks do).")
    check_upload(raw)
    digest = hashlib.sha256(raw).hexdigest()
    with transaction.atomic():
        if not is_exempt(user):
            limit = settings.ARENA_ATTACK_DAILY_LIMIT
            if _attacks_today(user, track) >= limit:
                now = timezone.now()
                reset = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
                hours = int((reset - now).total_seconds() // 3600)
                raise AttackRefused(f"You have submitted today's {limit} attacks on {track.name}; the limit resets "
                                    f"at midnight UTC (in {hours} h).")
            total = settings.ARENA_ATTACK_TOTAL_LIMIT
            if Attack.objects.filter(owner=user, track=track).count() >= total:
                raise AttackRefused(f"You have submitted {total} attacks to {track.name}, the most one account may "
                                    "submit to a track.")
        existing = Attack.objects.filter(track=track, source_sha256=digest).first()
        if existing is not None:
            raise DuplicateAttack("This attack's source was already submitted to this track.", existing)
        attack = Attack(owner=user, track=track, name=name, description=description, paper_url=paper_url,
                        code_url=code_url, source_sha256=digest, source_size=len(raw),
                        passes_per_point=settings.ARENA_ATTACK_PASSES_PER_POINT)
        attack.source.save("attack.zip" if is_package(raw) else "attack.py", ContentFile(raw), save=False)
        attack.save()
        schedule_attack(attack)
    return attack


def withdraw_attack(attack: Attack) -> None:
    """Withdraw an attack: no new runs, and its results no longer lower any model's score."""
    Attack.objects.filter(pk=attack.pk).update(state=Attack.State.WITHDRAWN)
    attack_scores_changed.send(sender=Attack, track_id=attack.track_id)
