"""One way for the tests to start a real `celery -A arena worker` process, as an operator starts it.

A :class:`CeleryWorker` runs on the test database (through ``DATABASE_URL``, as in deployment) and on the
configured broker or one it is given, consumes the queues it is given and writes its log to a file. Under
pytest-xdist, that is its test process's own database, broker (Redis database or broker folder) and var/
(see tests/conftest.py).
Each worker starts in a session of its own, so that :meth:`CeleryWorker.kill` can SIGKILL its whole process
group (main process, pool processes and the bubblewrap sandboxes under them) without touching pytest.

    with CeleryWorker("a", queue, folder=tmp_path, settings=settings) as worker:  # started and ready
        ...
    worker.log()  # everything it wrote

The ``celery_worker`` fixture of ``tests/web/conftest.py`` starts workers on a queue of the test's own and
stops them (showing their logs) afterwards; most tests want that rather than this class directly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from celery.utils.nodenames import host_format
from django.db import connection

from arena.database import database_url

ROOT = Path(__file__).resolve().parents[2]

#: What :meth:`CeleryWorker.stop` does: ``graceful`` (SIGTERM, Celery's warm shutdown, then SIGKILL of the
#: process group if it takes longer than ``stop_timeout``) or ``kill`` (SIGKILL of the process group at once).
StopMode = Literal["graceful", "kill"]


class CeleryWorker:
    """One `celery -A arena worker` process and its log.

    ``queues``: what it consumes (a name or several); the first is also its default queue
    (``ARENA_EVAL_QUEUE``, where the worker itself requeues jobs and beat sends the watchdog).
    ``pool`` and ``concurrency``: Celery's ``--pool`` and ``--concurrency`` (left to Celery when None).
    ``beat``: run Celery beat inside the worker (``--beat``, its schedule file in ``folder``).
    ``broker``: another broker than the configured one; the worker then keeps its results there too.
    ``env``: environment variables over the ones given here (fault knobs, visibility timeouts...).
    ``hostname``: the node name (``-n``); by default ``<name>-<random>@%h``, unique on a shared broker.
    ``stop``: see :data:`StopMode`. The log is ``folder/worker-<name>.log`` unless ``log_path`` says otherwise.
    """

    def __init__(self, name: str, queues: str | Sequence[str], *, folder: Path, settings, broker: str | None = None,
                 pool: str = "solo", concurrency: int | None = None, beat: bool = False,
                 env: Mapping[str, str] | None = None, hostname: str | None = None, stop: StopMode = "graceful",
                 stop_timeout: float = 30.0, log_path: Path | None = None) -> None:
        self.name = name
        self.queues = [queues] if isinstance(queues, str) else list(queues)
        self.broker = broker or settings.CELERY_BROKER_URL
        self.hostname = host_format(hostname or f"{name}-{uuid.uuid4().hex[:6]}@%h")
        self.log_path = log_path or folder / f"worker-{name}.log"
        #: PostgreSQL's ``application_name`` on the worker's connections (pg_stat_activity tells them apart).
        self.application_name = f"arena-worker-{uuid.uuid4().hex[:8]}"
        self.stop_mode = stop
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None

        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(connection.settings_dict, self.application_name),
            "CELERY_BROKER_URL": self.broker,
            "ARENA_VAR_DIR": str(settings.VAR_DIR),  # filesystem broker, results, scratch: the test process's
            "ARENA_DATA_DIR": str(settings.ARENA_DATA_DIR),
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "ARENA_EVAL_QUEUE": self.queues[0],
            "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
            **(env or {}),
        }
        if self.broker != settings.CELERY_BROKER_URL:
            self.env.pop("CELERY_RESULT_BACKEND", None)  # results go to the broker the worker is given
        self.command = [sys.executable, "-m", "celery", "-A", "arena", "worker", f"--pool={pool}",
                        "-Q", ",".join(self.queues), "-n", self.hostname, "--loglevel=INFO",
                        "--without-heartbeat", "--without-mingle", "--without-gossip"]
        if concurrency is not None:
            self.command.append(f"--concurrency={concurrency}")
        if beat:
            self.command += ["--beat", "--schedule", str(folder / f"beat-{name}")]

    # --- Starting. ---------------------------------------------------------------------------------------------

    def start(self, *, wait: bool = True, how: Literal["log", "ping"] = "log",
              timeout: float = 120.0) -> CeleryWorker:
        """Start the process; unless ``wait`` is false, return once it consumes (see :meth:`wait_ready`)."""
        assert self.proc is None, f"worker {self.name} already started"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if wait:
            self.wait_ready(how=how, timeout=timeout)
        return self

    def wait_ready(self, *, how: Literal["log", "ping"] = "log", timeout: float = 120.0) -> None:
        """Wait until the worker consumes its queues: its ``<hostname> ready.`` log line, or its answer to
        ``celery inspect ping`` over the broker. Fails at once, with the log, if the process exits first."""
        assert self.proc is not None, f"worker {self.name} not started"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited ({self.proc.returncode}) before it was ready:\n"
                                     f"{self.log()[-4000:]}")
            if self._answers_ping() if how == "ping" else f"{self.hostname} ready." in self.log():
                return
            time.sleep(0.2)
        raise AssertionError(f"worker {self.name} not ready after {timeout:.0f} s:\n{self.log()[-4000:]}")

    def _answers_ping(self) -> bool:
        from arena.celery import app

        with app.connection_for_write(self.broker) as conn:
            replies = app.control.ping(destination=[self.hostname], timeout=1.0, connection=conn)
        return any(self.hostname in reply for reply in replies)

    # --- Looking at it. ----------------------------------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the log under a header naming the worker (what teardown prints)."""
        return f"----- worker {self.name} ({self.hostname}) -----\n{self.log()[-chars:]}"

    def pool_processes(self) -> list[int]:
        """The main process's children: with the prefork pool, ``concurrency=1`` and no beat, the one pool process."""
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    # --- Stopping. ---------------------------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the whole process group at once: nothing of the worker gets to clean up or acknowledge."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """End the worker as ``stop`` says; nothing of its process group is left either way. Safe to repeat."""
        if self.proc is None:
            return
        if self.stop_mode == "graceful" and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def __enter__(self) -> CeleryWorker:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class CeleryWorkers:
    """Starts :class:`CeleryWorker`\\ s that share a folder, settings and defaults (what the ``celery_worker`` fixture
    hands a test), and stops them all at the end.

    ``workers(name, queues=None, *, wait=True, **options)`` starts one (``queues`` defaults to :attr:`queue`;
    ``options`` are :class:`CeleryWorker`'s, over the defaults of :meth:`configure`) and returns it, ready unless
    ``wait`` is false. A started worker is also a context manager that stops it on leaving.
    """

    def __init__(self, folder: Path, settings, queue: str) -> None:
        self.folder = folder
        self.settings = settings
        #: The queue of the test's own: what workers consume unless told otherwise.
        self.queue = queue
        self.defaults: dict[str, Any] = {"env": {}}
        self.started: list[CeleryWorker] = []

    def configure(self, *, env: Mapping[str, str] | None = None, **defaults: Any) -> None:
        """Defaults for the workers started from now on; ``env`` adds to the environment defaults."""
        self.defaults.update(defaults, env={**self.defaults["env"], **(env or {})})

    def __call__(self, name: str = "worker", queues: str | Sequence[str] | None = None, *, wait: bool = True,
                 env: Mapping[str, str] | None = None, **options: Any) -> CeleryWorker:
        options = {**self.defaults, **options, "env": {**self.defaults["env"], **(env or {})}}
        worker = CeleryWorker(name, queues or self.queue, folder=self.folder, settings=self.settings, **options)
        self.started.append(worker)
        return worker.start(wait=wait)

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()

    def close(self) -> None:
        """Stop every worker started here, then print the end of each log (pytest shows it when a test fails)."""
        self.stop_all()
        for worker in self.started:
            print(worker.log_tail())
