"""The Celery application that carries evaluation jobs from the web server to workers."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arena.settings")

app = Celery("arena")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="arena.diagnostics", ignore_result=False)
def diagnostics() -> dict[str, str]:
    """Where the worker's ``platform`` module comes from (a test asserts it is the stdlib's)."""
    import platform

    return {"platform_file": platform.__file__, "python": platform.python_version()}
