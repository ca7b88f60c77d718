"""The sandbox the worker runs evaluations in: no network, no secrets, read-only inputs, limits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from evaluator.sandbox import runner
from evaluator.sandbox.runner import SandboxLimits, bubblewrap_path

pytestmark = pytest.mark.skipif(bubblewrap_path() is None, reason="bubblewrap is not installed")

PROBE = r"""
import json, os, socket, platform
report = {"env": sorted(os.environ), "platform": platform.__file__, "uid": os.getuid()}
try:
    socket.create_connection(("127.0.0.1", int(os.environ.get("PROBE_PORT", "0") or 0) or 9), timeout=2)
    report["network"] = "open"
except OSError as exc:
    report["network"] = type(exc).__name__
report["passwd"] = os.path.exists("/etc/passwd")
try:
    open("/job/artifact", "ab").write(b"x")
    report["artifact_writable"] = True
except OSError:
    report["artifact_writable"] = False
report["artifact"] = open("/job/artifact").read()
report["home_secrets"] = os.path.exists(os.path.expanduser("~/.pgpass")) or os.path.exists("/root")
print(json.dumps(report))
"""


@pytest.fixture
def listening_port():
    """A TCP server on the host's loopback, which the sandbox must not reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    threading.Thread(target=lambda: server.accept(), daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_sandbox_has_no_network_no_secrets_and_read_only_inputs(tmp_path, listening_port, monkeypatch):
    artifact = tmp_path / "model.pt2"
    artifact.write_text("weights")
    monkeypatch.setenv("DATABASE_URL", "postgres://secret@db/arena")
    # The host can reach the port; the sandbox must not.
    socket.create_connection(("127.0.0.1", listening_port), timeout=2).close()

    command = runner._bwrap_command({str(artifact): "/job/artifact"}, SandboxLimits())
    env_args = ["--setenv", "PROBE_PORT", str(listening_port)]
    out = subprocess.run([*command, *env_args, sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=60, env={"PATH": os.environ["PATH"], "DATABASE_URL": os.environ["DATABASE_URL"]},
                         check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["network"] in {"ConnectionRefusedError", "OSError", "TimeoutError"}, report
    assert "DATABASE_URL" not in report["env"] and "CELERY_BROKER_URL" not in report["env"]
    assert not report["passwd"]
    assert report["artifact"] == "weights" and not report["artifact_writable"]
    assert artifact.read_text() == "weights"
    assert report["platform"].endswith("/lib/python3.11/platform.py")


def test_wall_clock_timeout_kills_the_job(tmp_path, monkeypatch):
    """A job that never ends is killed at the wall-clock limit and reported as a timeout."""
    from evaluator.spec import ArtifactSpec, InputSpec, JobSpec

    artifact = tmp_path / "a.pt2"
    artifact.write_bytes(b"")
    spec = JobSpec("j", "classifier", InputSpec(1, 28, 28), ArtifactSpec(str(artifact), "pt2"), ())
    real_command = runner._bwrap_command

    def sleeping_child(mounts, limits):
        return [*real_command(mounts, limits), sys.executable, "-c", "import time; time.sleep(600)", "--"]

    monkeypatch.setattr(runner, "_bwrap_command", sleeping_child)
    result = runner.run_sandboxed(spec, limits=SandboxLimits(wall_seconds=2))
    assert not result.ok and result.error_code == "timeout"
    assert result.provenance["wall_seconds"] < 30
