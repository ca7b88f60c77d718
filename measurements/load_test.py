"""Load test: pages and the API list at 1,000 submissions, anonymous and signed in, quiet or busy (issue 19).

Creates a throw-away database (``--database sqlite``: a file under a temporary ARENA_VAR_DIR;
``--database postgres``: a ``test_`` copy of ``DATABASE_URL``'s database, or of
``postgres://postgres@127.0.0.1:5432/arena_load`` when that is not PostgreSQL) filled by
``leaderboard_latency.populate`` (one track, ``--submissions`` finished models from 20 users), plus
one running and one queued submission (the newest, so the API list's first page shows them), starts
gunicorn on a free loopback port and drives it with ``wrk`` (``apt-get install -y wrk`` when missing
and root; else a Python asyncio load generator with the same outputs) at ``--connections``
connections against each endpoint for each kind of reader:

* endpoints: the leaderboard page (``/tracks/<slug>/``), a model page (a finished public model of
  another user than the signed-in one), the API list (``/api/v1/submissions/?track=<slug>``,
  100 per page);
* readers: ``anonymous``; ``session``: the session cookie of a user created here and signed in
  (who owns 1 in 20 of the models: their leaderboard has ringed rows, their API list their private
  model); ``token``: the API with that user's ``Authorization: Token`` header.

Quiet and busy: ``--busy`` runs ``measurements/busy_evaluation.py`` beside the server for the whole
measurement (a real evaluation of the shared LeNet-5 through ``evaluator.run_job``, in a loop, at the
CPU priority a worker gives a job, ``--evaluation-nice``, ARENA_EVAL_NICE's default 10; the output says
what ran and how many finished); ``--both`` measures quiet first, then busy. While it
measures, the running submission reports progress every ``--progress-interval`` seconds (the
worker's interval) with ``QuerySet.update()``, as a worker does; after each run the script reads
the API list and checks that it shows the progress just written (no stale state).

It prints one row per endpoint, reader, database and load: requests per second, p50 and p99 latency,
errors (socket errors, timeouts, non-2xx) and PASS/FAIL against ``--target-ms`` (100 ms p99). The API's
throttles are raised for the server (they would answer 429 after 120 anonymous requests a minute).
Requests carry a browser's ``Accept-Encoding: gzip, deflate, br``. ``--cache-seconds 0`` serves
with the caches off (ARENA_LEADERBOARD_CACHE_SECONDS), for a before/after comparison.

    .venv/bin/python measurements/load_test.py [--database sqlite|postgres] [--busy | --both]
        [--duration 10] [--connections 50] [--workers 3] [--threads 1] [--submissions 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAR_DIR = tempfile.mkdtemp(prefix="arena-load-")
os.environ["ARENA_VAR_DIR"] = VAR_DIR  # the servers and this process share the secret key and SQLite file
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arena.settings")

#: What every browser sends; the cache keeps bodies gzipped and serves them as they are to such clients.
ACCEPT_ENCODING = "gzip, deflate, br"

# wrk's Lua hook: one JSON line with the numbers we need (latencies are in microseconds).
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
    .. '"errors": %d, "non2xx": %d, "timeouts": %d}\\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status, e.timeout))
end
"""


@dataclass
class Measurement:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors and timeouts
    non2xx: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _load_populate():
    """``populate`` from leaderboard_latency.py (a script, not a package: loaded from its file)."""
    script = ROOT / "measurements" / "leaderboard_latency.py"
    spec = importlib.util.spec_from_file_location("leaderboard_latency", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts platform/ on sys.path and runs django.setup()
    return module.populate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(database_url: str, cache_seconds: int, workers: int, threads: int,
                  root: Path = ROOT) -> tuple[subprocess.Popen, str]:
    """gunicorn serving the code of ``root`` on a free loopback port."""
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "ARENA_LEADERBOARD_CACHE_SECONDS": str(cache_seconds),
           "ARENA_API_ANON_RATE": "100000000/s", "ARENA_API_USER_RATE": "100000000/s", "DEBUG": "0",
           "LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).with_name("gunicorn")), "arena.wsgi:application", "--pythonpath", "platform",
               "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads),
               "--worker-class", "gthread" if threads > 1 else "sync", "--backlog", "2048", "--timeout", "300",
               "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=root, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/", timeout=5) as response:
                if response.status == 200:
                    return process, base
        except OSError:
            time.sleep(0.3)
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}")
    process.terminate()
    raise RuntimeError("gunicorn did not answer within 90 s")


def _drain(base: str) -> None:
    """Wait until a server has worked through requests a finished run left queued (its clients are gone).

    A request sent now is answered after those before it, so later runs do not share the CPU with them.
    """
    with urllib.request.urlopen(f"{base}/", timeout=600) as response:
        response.read()


def _wrk(url: str, connections: int, duration: float, threads: int, script: Path,
         headers: dict[str, str] | None = None) -> Measurement:
    extra = [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
    command = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{duration:g}s",
               "--timeout", "60s", "-H", f"Accept-Encoding: {ACCEPT_ENCODING}", *extra, "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    data = json.loads(line[len("RESULT "):])
    return Measurement(data["requests"], data["duration_us"] / 1e6, data["p50_us"] / 1000, data["p99_us"] / 1000,
                       data["errors"], data["non2xx"])


async def _python_load(url: str, connections: int, duration: float,
                       headers: dict[str, str] | None = None) -> Measurement:
    """wrk's job in asyncio: ``connections`` keep-alive clients (reconnecting when the server closes)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    request = (f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept-Encoding: {ACCEPT_ENCODING}\r\n{extra}"
               "Connection: keep-alive\r\n\r\n").encode()
    latencies: list[float] = []
    counts = {"errors": 0, "non2xx": 0}
    loop = asyncio.get_running_loop()
    end = loop.time() + duration

    async def client() -> None:
        reader = writer = None
        while loop.time() < end:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                assert reader is not None
                started = loop.time()
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                await reader.readexactly(int(headers.get("content-length", "0")))
                latencies.append(loop.time() - started)
                counts["non2xx"] += not 200 <= status < 300
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                counts["errors"] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    started = loop.time()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = loop.time() - started
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, round(q * (len(latencies) - 1)))] * 1000 if latencies else 0.0

    return Measurement(len(latencies), elapsed, pct(0.50), pct(0.99), counts["errors"], counts["non2xx"])


def _find_wrk() -> str | None:
    """wrk, installed from Debian when missing and this process may (root); None when it cannot be had."""
    if shutil.which("wrk"):
        return shutil.which("wrk")
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("wrk is missing: apt-get install -y wrk", flush=True)
        subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True, check=False)
    return shutil.which("wrk")


def _use_database(choice: str) -> None:
    """Point Django at SQLite (the default settings) or PostgreSQL, before it is set up."""
    if choice == "sqlite":
        os.environ.pop("DATABASE_URL", None)
    elif not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        os.environ["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/arena_load"


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class ProgressWriter:
    """Moves the running submission's progress every ``interval`` s with ``QuerySet.update()``, as a worker does."""

    def __init__(self, submission_id: int, interval: float) -> None:
        import threading

        self.submission_id, self.interval = submission_id, interval
        self.value = 0.0
        self._threading = threading

    def write(self) -> float:
        from django.db import connection

        from submissions.models import Submission

        self.value = round((self.value + 0.001) % 1.0, 3)
        Submission.objects.filter(pk=self.submission_id).update(progress=self.value,
                                                                progress_stage=f"attacks: {self.value:.3f}")
        connection.close()
        return self.value

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write()

    def __enter__(self) -> ProgressWriter:
        self._stop = self._threading.Event()
        self._thread = self._threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _api_shows(url: str, headers: dict[str, str], public_id: str, progress: float) -> bool:
    """Whether the API list at ``url`` shows the running submission at exactly ``progress``."""
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        rows = json.loads(response.read())["results"]
    return any(row["id"] == public_id and row["progress"] == progress for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--busy", action="store_true", help="one evaluation running beside the server")
    load.add_argument("--both", action="store_true", help="quiet first, then busy")
    parser.add_argument("--evaluation-nice", type=int, default=10,
                        help="the busy evaluation's CPU priority given up (ARENA_EVAL_NICE; 10 as a worker runs it)")
    parser.add_argument("--submissions", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker (>1: gthread)")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--cache-seconds", type=int, default=600, help="ARENA_LEADERBOARD_CACHE_SECONDS; 0: no cache")
    parser.add_argument("--progress-interval", type=float, default=0.5,
                        help="how often the running submission reports progress (the worker's PROGRESS_INTERVAL)")
    parser.add_argument("--target-ms", type=float, default=100.0)
    parser.add_argument("--only", default="", help="comma-separated endpoint names to measure (default: all)")
    args = parser.parse_args()

    _use_database(args.database)
    populate = _load_populate()
    from django.contrib.auth import get_user_model
    from django.db import connection, connections
    from django.test import Client
    from django.test.utils import setup_test_environment
    from rest_framework.authtoken.models import Token

    from arena.database import database_url
    from submissions.models import Submission

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    servers: list[subprocess.Popen] = []
    busy: subprocess.Popen | None = None
    busy_log = Path(VAR_DIR) / "busy.log"
    try:
        started = time.perf_counter()
        track, _, user = populate(args.submissions)
        other = get_user_model().objects.exclude(pk=user.pk).order_by("pk").first()
        template = Submission.objects.filter(owner=other).order_by("pk").first()
        assert template is not None
        running = Submission.objects.create(track=track, owner=other, name="running model", artifact="artifacts/r.pt2",
                                            artifact_format="pt2", artifact_sha256="r" * 64, state="running",
                                            progress=0.0, progress_stage="clean")
        Submission.objects.create(track=track, owner=user, name="my private queued model", artifact="artifacts/q.pt2",
                                  artifact_format="pt2", artifact_sha256="q" * 64, state="queued", is_public=False)
        model_page = Submission.objects.filter(track=track, owner=other, state="finished").order_by("pk")[
            args.submissions // 40].get_absolute_url()
        print(f"populated {args.submissions} submissions (+1 running, +1 queued) in "
              f"{time.perf_counter() - started:.1f} s ({connection.vendor})", flush=True)
        with connection.cursor() as cursor:  # planner statistics, as a live database has them (autovacuum)
            cursor.execute("ANALYZE")
        client = Client()
        client.force_login(user)
        from django.conf import settings

        session = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"}
        token = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
        db_url = database_url(connection.settings_dict)
        writer = ProgressWriter(running.pk, args.progress_interval)
        connections.close_all()

        wrk = None if args.tool == "python" else _find_wrk()
        if args.tool == "wrk" and wrk is None:
            raise SystemExit("wrk is not installed and could not be installed")
        script = Path(VAR_DIR) / "report.lua"
        script.write_text(WRK_SCRIPT)

        def load(url: str, connections_: int, duration: float, headers: dict[str, str]) -> Measurement:
            if wrk is not None:
                measured = _wrk(url, connections_, duration, args.wrk_threads, script, headers)
            else:
                measured = asyncio.run(_python_load(url, connections_, duration, headers))
            _drain(url.split("/", 3)[0] + "//" + url.split("/", 3)[2])
            return measured

        server_proc, server = _start_server(db_url, args.cache_seconds, args.workers, args.threads)
        servers.append(server_proc)
        api = f"/api/v1/submissions/?track={track.slug}"
        endpoints = {"leaderboard": f"/tracks/{track.slug}/", "model page": model_page, "API list": api}
        if args.only:
            endpoints = {k: v for k, v in endpoints.items() if k in {x.strip() for x in args.only.split(",")}}
        readers = {"anonymous": {}, "session": session}
        cases = [(name, path, who, headers) for name, path in endpoints.items() for who, headers in
                 [*readers.items(), *([("token", token)] if name == "API list" else [])]]
        for _name, path, _who, headers in cases:  # warm up: every worker imports its code and fills its cache
            load(server + path, args.workers * 2, 2.0, headers)

        modes = ["quiet", "busy"] if args.both else ["busy"] if args.busy else ["quiet"]
        rows: list[tuple[str, str, str, Measurement]] = []
        fresh: list[str] = []
        described = ""
        tool = f"wrk ({wrk})" if wrk else "Python asyncio load generator"
        for mode in modes:
            if mode == "busy":
                busy = subprocess.Popen([sys.executable, str(ROOT / "measurements" / "busy_evaluation.py"),
                                         "--nice", str(args.evaluation_nice)],
                                        stdout=busy_log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
                deadline = time.monotonic() + 120
                while "evaluation 1:" not in busy_log.read_text() and time.monotonic() < deadline:
                    time.sleep(1)  # until its first evaluation has run: the model and data are loaded
                described = busy_log.read_text().splitlines()[0] if busy_log.read_text() else "(no output)"
            print(f"\n{mode}: load average {_load_average()}", flush=True)
            with writer:
                for name, path, who, headers in cases:
                    measured = load(server + path, args.connections, args.duration, headers)
                    rows.append((name, who, mode, measured))
                    print(f"  {name:12s} {who:10s} {measured.rps:8.1f} req/s  p99 {measured.p99_ms:7.1f} ms  "
                          f"(load {_load_average()})", flush=True)
            for who, headers in (("anonymous", {}), ("token", token)):
                value = writer.write()
                ok = _api_shows(server + api, headers, str(running.public_id), value)
                fresh.append(f"{mode}/{who}: {'fresh' if ok else 'STALE'}")
            if busy is not None:
                busy.terminate()
                busy.wait(timeout=60)
                finished = busy_log.read_text().count("evaluation ")
                described += f"; {finished} evaluation(s) finished during the busy runs"
                busy = None

        print(f"\n{tool}; {args.connections} connections, {args.duration:g} s per run; gunicorn {args.workers} "
              f"workers x {args.threads} threads; {os.cpu_count()} CPUs; cache {args.cache_seconds} s; "
              f"{args.submissions} submissions")
        if described:
            print(f"busy: {described}")
        print(f"progress written every {args.progress_interval:g} s during the runs; API list right after a "
              f"write: {', '.join(fresh)}\n")
        print(f"{'endpoint':12s} {'who':10s} {'database':9s} {'load':6s} {'req/s':>8s} {'p50 ms':>8s} "
              f"{'p99 ms':>8s} {'errors':>7s}  p99 < {args.target_ms:g} ms")
        print("-" * 92)
        for name, who, mode, m in rows:
            verdict = "PASS" if m.p99_ms < args.target_ms and not (m.errors + m.non2xx) else "FAIL"
            print(f"{name:12s} {who:10s} {connection.vendor:9s} {mode:6s} {m.rps:8.1f} {m.p50_ms:8.1f} "
                  f"{m.p99_ms:8.1f} {m.errors + m.non2xx:7d}  {verdict}")
        print(f"\nload average at the end: {_load_average()}")
    finally:
        if busy is not None:
            busy.terminate()
        for process in servers:
            process.terminate()
        for process in servers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        connections.close_all()
        connection.creation.destroy_test_db(old_name, verbosity=0)
        shutil.rmtree(VAR_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
