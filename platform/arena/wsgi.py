"""WSGI entry point for gunicorn: ``gunicorn --pythonpath platform arena.wsgi``."""

import os
import sys
from pathlib import Path

_platform_dir = str(Path(__file__).resolve().parents[1])
if _platform_dir not in sys.path:
    sys.path.insert(0, _platform_dir)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arena.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

from arena.gc_settle import settle_after  # noqa: E402

application = get_wsgi_application()
# Full garbage-collector passes off the request path (arena.gc_settle): after start-up, then after warming up.
settle_after(200)
