"""``manage.py requeue_stale``: the stale-job watchdog, for cron or by hand (Celery beat runs the same sweep).

Requeues every ``running`` submission whose worker stopped sending heartbeats (or fails it with
``worker_lost`` after ``ARENA_MAX_ATTEMPTS`` attempts, refunding the quota), and sends queued jobs
whose message never reached the broker. Safe to run at any time and from several machines at once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from submissions.fault_settings import stale_after
from submissions.recovery import requeue_stale


class Command(BaseCommand):
    help = "Requeue (or fail, after too many attempts) evaluations whose worker stopped sending heartbeats."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stale-seconds", type=float, default=None,
            help=f"Heartbeat age that counts as a lost worker (default ARENA_HEARTBEAT_STALE_SECONDS, now "
                 f"{stale_after().total_seconds():.0f}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        seconds = options["stale_seconds"]
        done = requeue_stale(stale=timedelta(seconds=seconds) if seconds is not None else None)
        for r in done:
            self.stdout.write(f"{r.public_id} {r.action} (attempts {r.attempts}): {r.reason}")
        if not done and options["verbosity"] >= 2:
            self.stdout.write("no stale evaluations")
