"""The knobs of fault recovery, readable before Django's apps are loaded (Celery's configuration needs them).

Each is the Django setting of that name when the project defines one, else the environment variable
of that name, else the default:

* ``ARENA_HEARTBEAT_SECONDS`` (10): how often a worker stamps ``heartbeat_at`` while it evaluates.
* ``ARENA_HEARTBEAT_STALE_SECONDS`` (3 x the heartbeat): a ``running`` job whose heartbeat is older
  is presumed to have lost its worker.
* ``ARENA_MAX_ATTEMPTS`` (3): evaluations started for one request before a lost worker fails the job
  (``worker_lost``) instead of requeueing it; it keeps a job that kills its worker from looping forever.
* ``ARENA_WATCHDOG_SECONDS`` (30): how often each worker runs the stale-job watchdog (submissions.sweeper;
  0: never).
"""

from __future__ import annotations

import os
from datetime import timedelta

from django.conf import settings


def _number(name: str, default: float) -> float:
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(name) or default
    return float(value)


def heartbeat_seconds() -> float:
    return max(_number("ARENA_HEARTBEAT_SECONDS", 10.0), 0.1)


def stale_after() -> timedelta:
    return timedelta(seconds=_number("ARENA_HEARTBEAT_STALE_SECONDS", 3 * heartbeat_seconds()))


def max_attempts() -> int:
    return max(int(_number("ARENA_MAX_ATTEMPTS", 3)), 1)


def watchdog_seconds() -> float:
    return _number("ARENA_WATCHDOG_SECONDS", 30.0)

