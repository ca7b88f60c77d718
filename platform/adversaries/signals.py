"""Sent when an attack run's outcome is written (``run``): the leaderboards, which sit above, refresh."""

from django.dispatch import Signal

attack_run_recorded = Signal()
