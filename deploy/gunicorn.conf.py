"""gunicorn settings for the web server (the worker count and bind come from the environment)."""

import multiprocessing
import os

pythonpath = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "platform")
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", min(4, multiprocessing.cpu_count() * 2 + 1)))
threads = int(os.environ.get("GUNICORN_THREADS", 2))
# Uploads of large checkpoints stream to disk; give slow links time.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 300))
graceful_timeout = 30
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
