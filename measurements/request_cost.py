"""CPU cost of one served request, in process, for the pages and the API list at 1,000 submissions (issue 19).

The load test (``load_test.py``) says whether p99 stays under 100 ms at 50 connections; what decides it is
the CPU each request costs, which this measures without the server, the network or the load generator:
it fills a throw-away database as the load test does (``leaderboard_latency.populate``), then calls
Django's WSGI handler directly (as gunicorn does, response closed, so ``request_finished`` runs) ``--requests``
times per endpoint and reader after a warm-up, and prints milliseconds per request and the response's
size and cache state. With ``--compare PATH`` (a checkout of an earlier commit, e.g. ``git worktree add``)
it runs this script against both trees in alternating subprocesses, ``--rounds`` times each, and prints the
median of each and their ratio: measured side by side in one run, so that a noisy machine moves both.

    .venv/bin/python measurements/request_cost.py [--database sqlite|postgres] [--requests 1000]
        [--compare PATH --rounds 3] [--profile "lb session"]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
POSTGRES = "postgres://postgres@127.0.0.1:5432/arena_request_cost"
CASES = ["api anon", "api session", "api token", "lb anon", "lb session", "model anon", "model session"]


def _measure(root: Path, requests: int, profile: str | None = None) -> dict[str, dict[str, object]]:
    """Populate, then time each case against the code under ``root`` (this process imports that tree).

    With ``profile`` (a case), only that case runs, under cProfile, and its 30 costliest functions (own time)
    are printed: where a request's milliseconds go, to decide what to make cheaper.
    """
    import importlib.util

    os.environ.setdefault("ARENA_VAR_DIR", tempfile.mkdtemp(prefix="arena-cost-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arena.settings")
    os.environ.update({"ARENA_API_ANON_RATE": "100000000/s", "ARENA_API_USER_RATE": "100000000/s", "DEBUG": "0"})
    script = root / "measurements" / "leaderboard_latency.py"
    spec = importlib.util.spec_from_file_location("leaderboard_latency", script)
    assert spec is not None and spec.loader is not None
    latency = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(latency)  # puts root/platform on sys.path and runs django.setup()
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connection
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from submissions.models import Submission

    old = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        track, _, user = latency.populate(1000)
        Submission.objects.create(track=track, owner=user, name="queued", artifact="a", artifact_format="pt2",
                                  artifact_sha256="q" * 64, state="queued", is_public=False)
        other = Submission.objects.exclude(owner=user).filter(state="finished").order_by("pk")[25]
        client = Client()
        client.force_login(user)
        cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
        token = Token.objects.create(user=user).key
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        app = WSGIHandler()

        def call(path: str, headers: dict[str, str]) -> tuple[str, dict[str, str], bytes]:
            path_info, _, query = path.partition("?")
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path_info, "QUERY_STRING": query,
                       "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "HTTP_HOST": "127.0.0.1:8000",
                       "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr,
                       "HTTP_ACCEPT_ENCODING": "gzip, deflate, br", "REMOTE_ADDR": "127.0.0.1", **headers}
            started: dict[str, object] = {}

            def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: object = None) -> None:
                started["status"], started["headers"] = status, dict(response_headers)

            result = app(environ, start_response)
            body = b"".join(result)
            result.close()
            return str(started["status"]), dict(started["headers"]), body  # type: ignore[arg-type]

        api, board = f"/api/v1/submissions/?track={track.slug}", f"/tracks/{track.slug}/"
        targets = {"api": api, "lb": board, "model": other.get_absolute_url()}
        readers = {"anon": {}, "session": {"HTTP_COOKIE": cookie}, "token": {"HTTP_AUTHORIZATION": f"Token {token}"}}
        out: dict[str, dict[str, object]] = {}
        for case in [profile] if profile else CASES:
            where, who = case.split()
            path, headers = targets[where], readers[who]
            for _ in range(20):
                status, response_headers, body = call(path, headers)
            assert status.startswith("200"), (case, status, body[:200])
            if profile:
                import cProfile
                import pstats

                profiler = cProfile.Profile()
                profiler.enable()
            started = time.perf_counter()
            for _ in range(requests):
                call(path, headers)
            if profile:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
            out[case] = {"ms": (time.perf_counter() - started) / requests * 1000, "bytes": len(body),
                         "cache": response_headers.get("X-Arena-Cache", ""),
                         "encoding": response_headers.get("Content-Encoding", "")}
        return out
    finally:
        connection.creation.destroy_test_db(old, verbosity=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--compare", type=Path, help="an earlier checkout, measured side by side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=CASES, help="one case under cProfile: where its time goes")
    parser.add_argument("--root", type=Path, default=HERE, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.database == "postgres":
        os.environ["DATABASE_URL"] = POSTGRES if not os.environ.get("DATABASE_URL", "").startswith("postgres") \
            else os.environ["DATABASE_URL"]
    else:
        os.environ.pop("DATABASE_URL", None)
    if args.profile:
        print(_measure(args.root, args.requests, args.profile))
        return
    if args.json:
        print("RESULT " + json.dumps(_measure(args.root, args.requests)), flush=True)
        return
    trees = {"this tree": HERE, **({"compared": args.compare.resolve()} if args.compare else {})}
    runs: dict[str, list[dict[str, dict[str, object]]]] = {name: [] for name in trees}
    for _ in range(args.rounds if args.compare else 1):
        for name, root in trees.items():
            done = subprocess.run([sys.executable, __file__, "--json", "--root", str(root), "--database",
                                   args.database, "--requests", str(args.requests)],
                                  capture_output=True, text=True, check=True)
            line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
            runs[name].append(json.loads(line[len("RESULT "):]))
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"{args.database}, {args.requests} requests per case, {len(runs['this tree'])} round(s), "
          f"{os.cpu_count()} CPUs, load average at the end {load}")
    head = f"{'case':14s} {'ms/request':>10s} {'bytes':>8s} {'encoding':>8s} {'cache':>10s}"
    print(head + (f" {'compared ms':>11s} {'ratio':>6s}" if args.compare else ""))
    for case in CASES:
        now = statistics.median(float(r[case]["ms"]) for r in runs["this tree"])  # type: ignore[arg-type]
        last = runs["this tree"][-1][case]
        row = f"{case:14s} {now:10.3f} {last['bytes']:8d} {last['encoding'] or '-':>8s} {last['cache']:>10s}"
        if args.compare:
            then = statistics.median(float(r[case]["ms"]) for r in runs["compared"])  # type: ignore[arg-type]
            row += f" {then:11.3f} {now / then:6.2f}"
        print(row)


if __name__ == "__main__":
    main()
