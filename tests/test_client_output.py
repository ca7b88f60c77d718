"""What ``python -m arena_client`` prints while it waits when its output is not a terminal (issue 15): the
submission's id and status URL, then one plain line per change of state, queue position or stage, each
flushed at once, so a log file or a pipe shows them while the job still runs. Against a stub HTTP server
started here (no Django, no worker): fast."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from arena_client import ArenaClient, RemoteSubmission
from arena_client.cli import main
from arena_client.client import _LiveBar, _queue_text, _utc_clock

ROOT = Path(__file__).resolve().parents[1]
SUB_ID = "5c0f3f7e-0000-4000-8000-000000000015"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "  # every status line starts with the UTC time


def _status(state: str, **fields: Any) -> dict[str, Any]:
    data = {"id": SUB_ID, "name": "Stub LeNet", "state": state, "progress": 0.0, "progress_stage": "",
            "queue_position": None, "jobs_ahead": None, "estimated_start": None, "failure_code": "",
            "failure_reason": "", "results": []}
    data.update(fields)
    return data


def _queued(ahead: int, start: str | None) -> dict[str, Any]:
    return _status("queued", jobs_ahead=ahead, queue_position=ahead + 1, estimated_start=start)


class StubArena:
    """A stub of the API: POST /api/v1/submissions/ queues the upload; each GET of its status URL returns the
    next scripted status. ``hold`` (an index into the script) stays served until ``release`` is set."""

    def __init__(self, script: list[dict[str, Any] | None], hold: int | None = None) -> None:
        self.script = script
        self.hold = hold
        self.release = threading.Event()
        self.served = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep the test output clean
                pass

            def _send(self, status: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._send(201, stub.with_urls(stub.script[0]))

            def do_GET(self) -> None:
                if self.path != f"/api/v1/submissions/{SUB_ID}/":
                    self._send(404, {"detail": "Not found."})
                    return
                data = stub.next_status()
                if data is None:  # a dropped connection: the client retries
                    self.close_connection = True
                    return
                self._send(200, stub.with_urls(data))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def next_status(self) -> dict[str, Any] | None:
        with self.lock:
            index = min(self.served, len(self.script) - 1)
            if index == self.hold and not self.release.is_set():
                return self.script[index]  # held: served again and again until released
            self.served += 1
            return self.script[index]

    def with_urls(self, data: dict[str, Any] | None) -> dict[str, Any]:
        assert data is not None
        return {**data, "status_url": f"{self.url}/api/v1/submissions/{SUB_ID}/",
                "page_url": f"{self.url}/submissions/{SUB_ID}/"}


@pytest.fixture
def start_stub() -> Iterator[Any]:
    stubs: list[StubArena] = []

    def start(script: list[dict[str, Any] | None], hold: int | None = None) -> StubArena:
        stub = StubArena(script, hold)
        stub.thread.start()
        stubs.append(stub)
        return stub

    yield start
    for stub in stubs:
        stub.release.set()
        stub.server.shutdown()
        stub.server.server_close()


def _script(start: str) -> list[dict[str, Any]]:
    """Queued with 2 jobs ahead, then 1, running through two stages, finished; each status polled twice or more
    (unchanged states must not print again; nor may a new percentage within one stage)."""
    finished = _status("finished", progress=1.0, progress_stage="finished", results=[
        {"evaluation_set": "mnist-hidden", "metric": "accuracy", "value": 0.9876, "ci_low": 0.98, "ci_high": 0.99,
         "num_examples": 2000, "suite_version": "clean-1", "seed": 0}])
    return [
        _queued(2, start), _queued(2, start), _queued(2, start),
        _queued(1, start), _queued(1, start),
        _status("running", progress=0.0, progress_stage="loading model"),
        _status("running", progress=0.0, progress_stage="loading model"),
        _status("running", progress=0.4, progress_stage="attacking (APGD-CE)"),
        _status("running", progress=0.6, progress_stage="attacking (APGD-CE)"),
        _status("running", progress=0.8, progress_stage="attacking (APGD-CE)"),
        finished,
    ]


def _expected(stub: StubArena, start: datetime) -> list[str]:
    clock = _utc_clock(start.isoformat())
    return [
        f"submission {SUB_ID}: {stub.url}/api/v1/submissions/{SUB_ID}/",
        f"queued: 2 jobs will start before this one (estimated start {clock})",
        f"queued: 1 job will start before this one (estimated start {clock})",
        "running: loading model 0%",
        "running: attacking (APGD-CE) 40%",
        "finished",
    ]


def _strip(line: str) -> str:
    assert re.match(STAMP, line), line
    return re.sub("^" + STAMP, "", line)


@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "model.pt2"
    path.write_bytes(b"not really an archive; the stub does not look")
    return path


def _submit_args(stub: StubArena, model: Path, *extra: str) -> list[str]:
    return ["submit", str(model), "--track", "digits", "--name", "Stub LeNet", "--url", stub.url,
            "--token", "stub-token", "--poll", "0.01", *extra]


def test_status_lines_one_per_change_in_order(start_stub, model_file, capsys):
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=17)
    stub = start_stub(_script(start.isoformat()))
    assert main(_submit_args(stub, model_file)) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    status_lines = [_strip(line) for line in lines[:6]]
    assert status_lines == _expected(stub, start)
    assert "mnist-hidden:accuracy  0.9876 [0.9800, 0.9900]" in lines[6:]  # then the scores, as before
    assert err == f"uploaded: {stub.url}/submissions/{SUB_ID}/\n"
    assert stub.served == len(stub.script)  # every scripted status was polled: the repeats were seen, not printed


def test_json_keeps_stdout_for_the_json_and_status_lines_go_to_stderr(start_stub, model_file, capsys):
    start = datetime.now(UTC) + timedelta(minutes=5)
    stub = start_stub(_script(start.isoformat()))
    assert main([*_submit_args(stub, model_file), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["state"] == "finished"
    assert [_strip(line) for line in err.splitlines()] == _expected(stub, start)


def test_quiet_prints_no_status_lines(start_stub, model_file, capsys):
    stub = start_stub(_script(datetime.now(UTC).isoformat()))
    assert main(["status", SUB_ID, "--wait", "--url", stub.url, "--poll", "0.01", "-q"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith(f"Stub LeNet [{SUB_ID}]: finished\n") and "queued" not in out


def test_failed_evaluation_says_so_and_exits_1(start_stub, capsys):
    failed = _status("failed", failure_code="wrong_input_shape", failure_reason="The model wants 3x32x32 inputs.")
    stub = start_stub([_queued(0, None), _queued(0, None), _status("running", progress_stage="starting"), failed])
    assert main(["status", SUB_ID, "--wait", "--url", stub.url, "--poll", "0.01"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [_strip(line) for line in lines[:4]] == [
        f"submission {SUB_ID}: {stub.url}/api/v1/submissions/{SUB_ID}/", "queued: next to start",
        "running: starting 0%", "failed (wrong_input_shape)"]
    assert lines[4:] == [f"Stub LeNet [{SUB_ID}]: failed", "The model wants 3x32x32 inputs.",
                         f"{stub.url}/submissions/{SUB_ID}/"]


def test_a_dropped_connection_is_retried_with_a_warning_on_stderr(start_stub, capsys):
    stub = start_stub([_queued(0, None), None, _queued(0, None), _status("running", progress_stage="starting"),
                       _status("cancelled", failure_code="cancelled", failure_reason="Cancelled by its owner.")])
    assert main(["status", SUB_ID, "--wait", "--url", stub.url, "--poll", "0.01"]) == 1
    out, err = capsys.readouterr()
    assert [_strip(line) for line in out.splitlines()[1:4]] == [
        "queued: next to start", "running: starting 0%", "cancelled (cancelled)"]
    assert re.fullmatch(STAMP + r"no answer from http://127\.0\.0\.1:\d+ \(ConnectionError\), retrying \(1/5\)\n",
                        err), err


def test_lines_can_be_read_from_a_pipe_while_the_job_is_still_queued(start_stub, model_file):
    """The real program with stdout on a pipe (Python block-buffers it there): the queued lines must arrive
    while the stub still holds the job in the queue, not when the process exits."""
    start = datetime.now(UTC) + timedelta(minutes=30)
    script = _script(start.isoformat())
    stub = start_stub(script, hold=4)  # the second "1 job ahead" status: served until released
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "ARENA_TOKEN")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "arena_client", *_submit_args(stub, model_file)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    try:
        expected = _expected(stub, start)
        for want in expected[:3]:  # id and status URL, queued with 2 ahead, queued with 1 ahead
            assert _strip(lines.get(timeout=20).rstrip("\n")) == want
        assert proc.poll() is None and not stub.release.is_set()  # still waiting in the queue
        stub.release.set()
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
        reader.join(timeout=5)
        rest = []
        while not lines.empty():
            rest.append(lines.get().rstrip("\n"))
        assert [_strip(line) for line in rest[:3]] == expected[3:]
        assert rest[3] == f"Stub LeNet [{SUB_ID}]: finished"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_queue_text_and_clock():
    now = datetime(2026, 12, 2, 1, 23, 45, tzinfo=UTC)
    data = _queued(3, "2026-12-02T01:40:12+00:00")
    assert _queue_text(data, brief=False, now=now) == \
        "queued: 3 jobs will start before this one (estimated start 01:40 UTC)"
    assert _queue_text(data, brief=True, now=now) == "queued: 3 jobs ahead, estimated start 01:40 UTC"
    assert _queue_text(_queued(1, None), brief=True) == "queued: 1 job ahead"
    assert _queue_text(_queued(0, None), brief=False) == "queued: next to start"
    # An older server without jobs_ahead: queue_position 1 = next.
    old = {"state": "queued", "queue_position": 2}
    assert _queue_text(old, brief=False) == "queued: 1 job will start before this one"
    assert _queue_text({"state": "queued"}, brief=True) == "queued"
    requeued = {**_queued(0, None), "progress_stage": "Requeued: the worker of attempt 1 stopped responding"}
    assert _queue_text(requeued, brief=False) == \
        "queued: next to start. Requeued: the worker of attempt 1 stopped responding"
    assert _utc_clock("2026-12-03T00:05:00Z", now) == "2026-12-03 00:05 UTC"  # not today: with its date
    assert _utc_clock("2026-12-02T03:40:00+02:00", now) == "01:40 UTC"
    assert _utc_clock(None, now) == _utc_clock("soon", now) == ""


def test_terminal_bar_shows_jobs_ahead_and_estimated_start():
    class Bar:
        n = 0.0
        desc = ""

        def set_description_str(self, text: str) -> None:
            self.desc = text

        def update(self, n: float) -> None:
            self.n += n

    client = ArenaClient("http://127.0.0.1:1", "t", progress=True)
    live = _LiveBar(True)
    live.bar = Bar()
    start = (datetime.now(UTC) + timedelta(minutes=3)).isoformat()
    live.show(RemoteSubmission(client, _queued(4, start)))
    assert live.bar.desc == f"queued: 4 jobs ahead, estimated start {_utc_clock(start)}"
    live.show(RemoteSubmission(client, _status("running", progress=0.4, progress_stage="attacking (APGD-CE)")))
    assert live.bar.desc == "running: attacking (APGD-CE)" and live.bar.n == 40
