"""The Celery application that carries evaluation jobs from the web server to workers.

The stale-job watchdog needs no beat: every worker runs it on a timer of its own
(:mod:`submissions.sweeper`), so it runs while every worker is busy and never queues messages behind
evaluations. One thing is configured here rather than in settings because it concerns only Celery:

* ``ARENA_BROKER_VISIBILITY_TIMEOUT`` (seconds, Redis and SQS): how long a message taken by a worker
  that never acknowledges it (the worker was killed) waits before the broker delivers it again.
  Redis's default is one hour; a job running longer than it is delivered a second time (the second
  delivery sees the first one's heartbeat and drops itself). The watchdog usually recovers a lost job
  much sooner, so the default needs no change; tests shorten it to exercise the broker's redelivery.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arena.settings")

app = Celery("arena")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _fault_tolerance(sender: Celery, **kwargs: object) -> None:
    """Set the broker's visibility timeout, once the settings are loaded."""
    visibility = os.environ.get("ARENA_BROKER_VISIBILITY_TIMEOUT")
    if visibility:
        seconds = float(visibility)
        sender.conf.broker_transport_options = {
            **(sender.conf.broker_transport_options or {}),
            "visibility_timeout": seconds,
            # How often kombu looks for messages past the timeout (its defaults suit an hour-long timeout).
            "unacked_restore_interval": max(1.0, min(10.0, seconds / 4)),
            "unacked_restore_throttle": 1,
        }


@app.task(name="arena.diagnostics", ignore_result=False)
def diagnostics() -> dict[str, str]:
    """Where the worker's ``platform`` module comes from (a test asserts it is the stdlib's)."""
    import platform

    return {"platform_file": platform.__file__, "python": platform.python_version()}
