"""Load test: gunicorn on loopback with 1,000 submissions, driven by wrk at 50 connections.

Creates a throw-away database (SQLite under a temporary ARENA_VAR_DIR, or a ``test_`` copy of the
DATABASE_URL database) filled by ``leaderboard_latency.populate`` (one track, 1,000 finished
models), starts two gunicorn servers on free loopback ports with the same code and data, one with
the leaderboard cache on and one with it off (``ARENA_LEADERBOARD_CACHE_SECONDS=0``), and runs
``wrk`` (installed with ``apt-get install -y wrk`` when missing; else a Python asyncio load
generator with the same outputs) against:

* the leaderboard page (anonymous, as the public reads it), the model page, the API list endpoint
  (``/api/v1/submissions/?track=...&limit=100``), all on the cached server;
* the leaderboard page on the uncached server, alternating with the cached one ``--rounds`` times,
  so that both numbers of the cached/uncached ratio come from the same minutes of this machine.

With ``--baseline-tree DIR`` (another copy of the code, e.g. ``git worktree add /tmp/before HEAD``
or an export of an older commit), a third server runs that code on the same database, and each
endpoint is measured on it and on this tree alternately ``--rounds`` times: a before/after
comparison from the same minutes of a noisy machine, instead of two runs at different times.

It prints requests per second, p50 and p99 latency and errors per endpoint, the ratios, and
whether the target (leaderboard p99 under 100 ms at 50 connections) holds. The API's anonymous
throttle is raised for the servers (it would otherwise answer 429 after 120 requests). Requests carry
a browser's ``Accept-Encoding: gzip, deflate, br``.

    .venv/bin/python measurements/load_test.py [--duration 10] [--connections 50] [--workers 3]
                                             [--baseline-tree DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import socket
import statistics
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
    """gunicorn serving the code of ``root`` (this tree, or the ``--baseline-tree``) on a free loopback port."""
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "ARENA_LEADERBOARD_CACHE_SECONDS": str(cache_seconds),
           "ARENA_API_ANON_RATE": "100000000/s", "DEBUG": "0", "LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}
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


def _wrk(url: str, connections: int, duration: float, threads: int, script: Path) -> Measurement:
    command = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{duration:g}s",
               "--timeout", "60s", "-H", f"Accept-Encoding: {ACCEPT_ENCODING}", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    data = json.loads(line[len("RESULT "):])
    return Measurement(data["requests"], data["duration_us"] / 1e6, data["p50_us"] / 1000, data["p99_us"] / 1000,
                       data["errors"], data["non2xx"])


async def _python_load(url: str, connections: int, duration: float) -> Measurement:
    """wrk's job in asyncio: ``connections`` keep-alive clients (reconnecting when the server closes)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept-Encoding: {ACCEPT_ENCODING}\r\n"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating runs: cached/uncached leaderboard, before/after with --baseline-tree")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes per server")
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker (>1: gthread)")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="another copy of the code (same database schema) to measure against, alternately")
    args = parser.parse_args()
    if args.baseline_tree is not None and not (args.baseline_tree / "platform" / "arena" / "wsgi.py").is_file():
        parser.error(f"--baseline-tree {args.baseline_tree}: no platform/arena/wsgi.py there")

    populate = _load_populate()
    from django.db import connection, connections
    from django.test.utils import setup_test_environment

    from arena.database import database_url

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    servers: list[subprocess.Popen] = []
    try:
        started = time.perf_counter()
        track, submission, _ = populate(args.submissions)
        print(f"populated {args.submissions} submissions in {time.perf_counter() - started:.1f} s "
              f"({connection.vendor})", flush=True)
        with connection.cursor() as cursor:  # planner statistics, as a live database has them (autovacuum)
            cursor.execute("ANALYZE")
        db_url = database_url(connection.settings_dict)
        connections.close_all()

        wrk = None if args.tool == "python" else _find_wrk()
        if args.tool == "wrk" and wrk is None:
            raise SystemExit("wrk is not installed and could not be installed")
        script = Path(VAR_DIR) / "report.lua"
        script.write_text(WRK_SCRIPT)

        def load(url: str, connections_: int, duration: float) -> Measurement:
            if wrk is not None:
                measured = _wrk(url, connections_, duration, args.wrk_threads, script)
            else:
                measured = asyncio.run(_python_load(url, connections_, duration))
            _drain(url.split("/", 3)[0] + "//" + url.split("/", 3)[2])
            return measured

        cached_proc, cached = _start_server(db_url, 600, args.workers, args.threads)
        servers.append(cached_proc)
        uncached_proc, uncached = _start_server(db_url, 0, args.workers, args.threads)
        servers.append(uncached_proc)
        baseline = None
        if args.baseline_tree is not None:
            baseline_proc, baseline = _start_server(db_url, 600, args.workers, args.threads,
                                                    args.baseline_tree.resolve())
            servers.append(baseline_proc)
        pages = {
            "leaderboard page": f"/tracks/{track.slug}/",
            "model page": submission.get_absolute_url(),
            "API list (100 per page)": f"/api/v1/submissions/?track={track.slug}&limit=100",
        }
        # Warm up: every worker builds its own local-memory cache entry and imports its code.
        for path in pages.values():
            load(cached + path, args.workers * 2, 3.0)
        load(uncached + pages["leaderboard page"], args.workers, 3.0)
        if baseline is not None:
            for path in pages.values():
                load(baseline + path, args.workers * 2, 3.0)

        tool = f"wrk ({wrk})" if wrk else "Python asyncio load generator"
        print(f"\n{tool}; {args.connections} connections, {args.duration:g} s per run; gunicorn "
              f"{args.workers} workers x {args.threads} threads per server; {os.cpu_count()} CPUs; "
              f"database {connection.vendor}\n", flush=True)
        results: dict[str, Measurement] = {}
        for label, path in pages.items():
            results[label] = load(cached + path, args.connections, args.duration)
        rounds: dict[str, list[Measurement]] = {"cached": [], "uncached": []}
        for _ in range(args.rounds):
            rounds["cached"].append(load(cached + pages["leaderboard page"], args.connections, args.duration))
            rounds["uncached"].append(load(uncached + pages["leaderboard page"], args.connections, args.duration))
        single = {name: load(base + pages["leaderboard page"], 1, args.duration)
                  for name, base in (("cached", cached), ("uncached", uncached))}
        compared: dict[str, dict[str, list[Measurement]]] = {}
        if baseline is not None:
            for label, path in pages.items():
                compared[label] = {"before": [], "after": []}
                for _ in range(args.rounds):
                    compared[label]["before"].append(load(baseline + path, args.connections, args.duration))
                    compared[label]["after"].append(load(cached + path, args.connections, args.duration))

        def row(label: str, m: Measurement) -> str:
            return (f"{label:44s} {m.rps:9.1f} {m.p50_ms:9.1f} {m.p99_ms:9.1f} {m.requests:9d} "
                    f"{m.errors + m.non2xx:7d}")

        print(f"{'endpoint':44s} {'req/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s} {'requests':>9s} {'errors':>7s}")
        print("-" * 92)
        for label, m in results.items():
            print(row(f"{label} ({args.connections} conn)", m))
        for name in ("cached", "uncached"):
            for i, m in enumerate(rounds[name], 1):
                print(row(f"leaderboard, {name}, round {i} ({args.connections} conn)", m))
        for name, m in single.items():
            print(row(f"leaderboard, {name} (1 connection)", m))

        def median(name: str, attribute: str) -> float:
            return statistics.median(getattr(m, attribute) for m in rounds[name])

        if compared:
            print(f"\nbefore: {args.baseline_tree}; after: {ROOT} (alternating, {args.rounds} rounds each)")
            print(f"{'endpoint':44s} {'req/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s} {'requests':>9s} {'errors':>7s}")
            print("-" * 92)
            for label, runs in compared.items():
                for name in ("before", "after"):
                    for i, m in enumerate(runs[name], 1):
                        print(row(f"{label}, {name}, round {i}", m))
            print()
            for label, runs in compared.items():
                def mid(name: str, attribute: str, runs: dict[str, list[Measurement]] = runs) -> float:
                    return statistics.median(getattr(m, attribute) for m in runs[name])

                print(f"{label}: {mid('before', 'rps'):.1f} -> {mid('after', 'rps'):.1f} req/s "
                      f"({mid('after', 'rps') / max(mid('before', 'rps'), 1e-9):.1f}x), p99 "
                      f"{mid('before', 'p99_ms'):.0f} -> {mid('after', 'p99_ms'):.0f} ms (medians)")

        print()
        print(f"cached / uncached throughput at {args.connections} connections: "
              f"{median('cached', 'rps') / max(median('uncached', 'rps'), 1e-9):.0f}x "
              f"({median('cached', 'rps'):.1f} vs {median('uncached', 'rps'):.2f} req/s, median of {args.rounds})")
        print(f"uncached / cached p50 latency with 1 connection: "
              f"{single['uncached'].p50_ms / max(single['cached'].p50_ms, 1e-9):.0f}x "
              f"({single['cached'].p50_ms:.1f} ms vs {single['uncached'].p50_ms:.1f} ms)")
        p99 = results["leaderboard page"].p99_ms
        print(f"target: leaderboard page p99 < 100 ms at {args.connections} connections: "
              f"{'MET' if p99 < 100 else 'NOT MET'} ({p99:.1f} ms)")
    finally:
        for process in servers:
            process.terminate()
        for process in servers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        connection.creation.destroy_test_db(old_name, verbosity=0)
        shutil.rmtree(VAR_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
