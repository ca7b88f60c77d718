"""The stale-job watchdog as a timer inside every worker process, not a message on the evaluation queue.

A sweep sent through the broker (Celery beat) waits behind every evaluation in the queue: with all
workers busy on long jobs it never runs, and its messages pile up (71 were seen). Instead each
worker's main process runs :func:`submissions.recovery.requeue_stale` from a thread of its own every
``ARENA_WATCHDOG_SECONDS`` (0: never), whether or not the worker is evaluating. Several workers
sweeping at once are harmless: each candidate is re-checked under its row lock. ``manage.py
requeue_stale`` runs the same sweep from cron where no worker is running.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from django.db import connection

from submissions.fault_settings import watchdog_seconds
from submissions.recovery import requeue_stale

logger = logging.getLogger(__name__)


class Sweeper:
    """A daemon thread that runs the watchdog every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="arena-watchdog", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                requeue_stale()  # it logs each job it requeues, fails, sends or wakes for
            except Exception:  # a sweep that failed (database away) is retried at the next tick
                logger.exception("watchdog sweep failed")
            finally:
                connection.close()  # this thread's own connection; the next sweep opens a fresh one


_running: list[Sweeper] = []


@worker_ready.connect
def _start(**kwargs: Any) -> None:
    interval = watchdog_seconds()
    if interval > 0 and not _running:
        _running.append(Sweeper(interval).start())
        logger.info("watchdog: sweeping every %.0f s in this worker", interval)


@worker_shutdown.connect
def _stop(**kwargs: Any) -> None:
    while _running:
        _running.pop().stop()
