"""Account-side records: the submission quota ledger, per-track limits, and withdrawals.

The quota ledger is append-only so that "how many evaluations did this user get today?" always
has an auditable answer: a refund is a new row pointing at the charge it gives back, never an
edit or a deletion of the charge.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models


class AppendOnlyError(Exception):
    """Raised on any attempt to change or delete a ledger row through the ORM."""


class QuotaEntryQuerySet(models.QuerySet):
    """Bulk updates and deletes are refused: the ledger only grows."""

    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError("Quota ledger entries cannot be updated.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("Quota ledger entries cannot be deleted.")


class QuotaEntry(models.Model):
    """One charge (a submission was accepted) or refund (its evaluation failed through a platform fault)."""

    class Kind(models.TextChoices):
        CHARGE = "charge", "Charge"
        REFUND = "refund", "Refund"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota_entries")
    track = models.ForeignKey("benchmarks.Track", on_delete=models.CASCADE, related_name="quota_entries")
    # SET_NULL: deleting a submission keeps its charge (deleting does not refund).
    submission = models.ForeignKey(
        "submissions.Submission", null=True, blank=True, on_delete=models.SET_NULL, related_name="quota_entries"
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    # A refund names the charge it gives back, so the pair survives the submission's deletion.
    charge = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="refund",
        limit_choices_to={"kind": "charge"},
    )
    reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = QuotaEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "quota entries"
        indexes = [models.Index(fields=["user", "track", "kind", "created_at"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind="charge", charge__isnull=True) | models.Q(kind="refund", charge__isnull=False),
                name="refund_names_its_charge",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.user_id} {self.track_id} {self.created_at:%Y-%m-%d %H:%M}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("Quota ledger entries cannot be changed once written.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("Quota ledger entries cannot be deleted.")


def _default_daily() -> int:
    return settings.ARENA_DEFAULT_DAILY_LIMIT


def _default_total() -> int:
    return settings.ARENA_DEFAULT_TOTAL_LIMIT


class TrackQuota(models.Model):
    """Per-track limits; a track without a row uses ARENA_DEFAULT_DAILY_LIMIT / ARENA_DEFAULT_TOTAL_LIMIT."""

    track = models.OneToOneField("benchmarks.Track", on_delete=models.CASCADE, related_name="quota")
    daily_limit = models.PositiveIntegerField(
        default=_default_daily, validators=[MinValueValidator(0)], help_text="Submissions per user per UTC day."
    )
    total_limit = models.PositiveIntegerField(
        default=_default_total, validators=[MinValueValidator(0)], help_text="Submissions per user in all."
    )

    def __str__(self) -> str:
        return f"{self.track}: {self.daily_limit}/day, {self.total_limit} in all"


class QueuePriority(models.Model):
    """An admin's adjustment of one user's place in the evaluation queue.

    Researchers' uploads come before baselines and the ``robots`` group's (CI, baseline loaders);
    a positive priority moves a user's jobs ahead of everyone's at the default, a negative one
    behind (``submissions.queue``).
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="queue_priority")
    priority = models.IntegerField(default=0, help_text="Added to the priority of every job of this user.")

    def __str__(self) -> str:
        return f"{self.user}: queue priority {self.priority:+d}"


class Withdrawal(models.Model):
    """A submission its owner took off the leaderboards (it also becomes private).

    Kept here rather than as a Submission field so the submissions app's schema is untouched;
    leaderboards exclude every submission that has a row.
    """

    submission = models.OneToOneField("submissions.Submission", on_delete=models.CASCADE, related_name="withdrawal")
    withdrawn_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"withdrawn {self.submission_id}"
