"""The sandbox the worker runs evaluations in: no network, no secrets, read-only inputs, limits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from evaluator.sandbox import availability, launch
from evaluator.sandbox.availability import bubblewrap_path
from evaluator.sandbox.bubblewrap import bwrap_command, gpu_device_nodes
from evaluator.sandbox.limits import SandboxLimits
from tests.sandboxed_programs import run_program_sandboxed

pytestmark = pytest.mark.skipif(bubblewrap_path() is None, reason="bubblewrap is not installed")

PROBE = r"""
import json, os, socket, platform, sys
report = {"env": sorted(os.environ), "platform": platform.__file__, "uid": os.getuid()}
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
report["caps"] = {key: int(status[key].strip(), 16) for key in ("CapPrm", "CapEff", "CapBnd", "CapAmb")}
report["no_new_privs"] = status["NoNewPrivs"].strip()
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
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

    command = bwrap_command({str(artifact): "/job/artifact"}, SandboxLimits())
    out = subprocess.run([*command, sys.executable, "-c", PROBE, str(listening_port)], capture_output=True, text=True,
                         timeout=60, env={"PATH": os.environ["PATH"], "DATABASE_URL": os.environ["DATABASE_URL"]},
                         check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["network"] in {"ConnectionRefusedError", "OSError", "TimeoutError"}, report
    assert "DATABASE_URL" not in report["env"] and "CELERY_BROKER_URL" not in report["env"]
    assert not report["passwd"]
    assert report["artifact"] == "weights" and not report["artifact_writable"]
    assert artifact.read_text() == "weights"
    assert report["platform"].endswith("/lib/python3.11/platform.py")
    # Not root, no capabilities left, and no way to regain them through a setuid program.
    assert report["uid"] != 0 and report["caps"] == {"CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}, report
    assert report["no_new_privs"] == "1"


def test_wall_clock_timeout_kills_the_job(tmp_path, monkeypatch):
    """A job that never ends is killed at the wall-clock limit; it ran out of time (the scorer's budget should
    have stopped it first: the platform's fault), and the stages it reported before are kept."""
    from evaluator.checkpoints import SETS, Checkpoint
    from evaluator.spec import ArtifactSpec, InputSpec, JobSpec, MetricValue

    artifact = tmp_path / "a.pt2"
    artifact.write_bytes(b"")
    spec = JobSpec("j", "classifier", InputSpec(1, 28, 28), ArtifactSpec(str(artifact), "pt2"), ())
    monkeypatch.setattr(launch, "scorer_command", lambda: [sys.executable, "-c", "import time; time.sleep(600)"])
    result = launch.run_sandboxed(spec, limits=SandboxLimits(wall_seconds=2))
    assert not result.ok and result.error_code == "out_of_time" and result.metrics == []
    assert result.provenance["incomplete"]["finished"] == []
    assert result.provenance["wall_seconds"] < 30

    done = Checkpoint(SETS, [MetricValue("clean", "accuracy", 0.5, 10)], {"clean": {"0": 0.5}}, {"images": 10})
    line = json.dumps({"event": "checkpoint", "checkpoint": done.to_dict()})
    script = f"import sys, time; print({line!r}, flush=True); time.sleep(600)"
    monkeypatch.setattr(launch, "scorer_command", lambda: [sys.executable, "-c", script])
    seen: list[Checkpoint] = []
    result = launch.run_sandboxed(spec, limits=SandboxLimits(wall_seconds=2), on_checkpoint=seen.append)
    assert [c.stage for c in seen] == [SETS]
    assert result.error_code == "out_of_time" and [(m.metric, m.value) for m in result.metrics] == [("accuracy", 0.5)]
    assert result.per_class == {"clean": {"0": 0.5}} and result.provenance["incomplete"]["finished"] == [SETS]


NESTED_USERNS = r"""
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
nested = libc.unshare(0x10000000)  # CLONE_NEWUSER
print(json.dumps({"cap_eff": int(status["CapEff"].strip(), 16), "cap_bnd": int(status["CapBnd"].strip(), 16),
                  "nested_userns": nested == 0}))
"""


def test_unprivileged_worker_command_drops_capabilities_and_nested_user_namespaces(monkeypatch):
    """The command a non-root worker uses (checked here, as root, for what it promises inside).

    A non-root worker cannot switch uids: bubblewrap runs the job in a user namespace and the
    process-count limit applies to the worker's own user; nested user namespaces are refused
    because many kernel exploits start with one.
    """
    monkeypatch.setattr(availability, "runs_as_root", lambda: False)
    command = bwrap_command({}, SandboxLimits())
    assert "--unshare-user" in command and "--disable-userns" in command and "setpriv" not in " ".join(command)
    run = run_program_sandboxed([sys.executable, "-c", NESTED_USERNS], limits=SandboxLimits(wall_seconds=60))
    assert run.ok, run.stderr_tail
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"cap_eff": 0, "cap_bnd": 0, "nested_userns": False}


def test_root_worker_drops_the_job_to_its_own_uid():
    """As root, each job runs as a sandbox uid of its own: the process-count limit applies to it."""
    if os.geteuid() != 0:
        pytest.skip("the worker is not root here")
    from evaluator.sandbox.identity import SANDBOX_GID, SANDBOX_UID_BASE, SANDBOX_UID_COUNT

    code = "import os, resource; print(*os.getresuid(), *os.getresgid(), len(os.getgroups()), " \
           "resource.getrlimit(resource.RLIMIT_NPROC)[0])"
    run = run_program_sandboxed([sys.executable, "-c", code], limits=SandboxLimits(max_processes=77))
    assert run.ok, run.stderr_tail
    ruid, euid, suid, rgid, egid, sgid, groups, nproc = map(int, run.stdout.split())
    assert SANDBOX_UID_BASE <= ruid < SANDBOX_UID_BASE + SANDBOX_UID_COUNT and ruid == euid == suid
    assert rgid == egid == sgid == SANDBOX_GID and groups == 0 and nproc == 77


def test_gpu_jobs_get_the_nvidia_device_files_and_cpu_jobs_none(tmp_path):
    """The sandbox's /dev is minimal; a CUDA job needs the driver's device files bound in."""
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm", "null"):
        (tmp_path / name).touch()
    (tmp_path / "nvidia-caps").mkdir()
    assert gpu_device_nodes("cpu", str(tmp_path)) == []
    expected = [str(tmp_path / n) for n in ("nvidia-uvm", "nvidia0", "nvidiactl")]
    assert gpu_device_nodes("cuda:0", str(tmp_path)) == expected
    assert gpu_device_nodes("auto", str(tmp_path)) == expected
    command = bwrap_command({}, SandboxLimits(), devices=expected)
    assert command[command.index("--dev-bind") + 1] == expected[0] and command.count("--dev-bind") == 3
    assert "--dev-bind" not in bwrap_command({}, SandboxLimits())


ORPHAN_WORKER = r"""
import sys
from evaluator.sandbox import launch
from evaluator.sandbox.limits import SandboxLimits
from evaluator.spec import ArtifactSpec, InputSpec, JobSpec
pid_file = sys.argv[1]
launch.scorer_command = lambda: [sys.executable, "-c",
    f"import os, time; open({pid_file!r}, 'w').write(str(os.getpid())); time.sleep(600)"]
spec = JobSpec("j", "classifier", InputSpec(1, 28, 28), ArtifactSpec(sys.argv[2], "pt2"), ())
launch.run_sandboxed(spec, limits=SandboxLimits(wall_seconds=600))
"""


def test_a_scorer_does_not_outlive_its_worker(tmp_path):
    """A worker killed mid-job takes its scorer with it (and bubblewrap, the model process with the scorer)."""
    import signal
    import time
    from pathlib import Path

    artifact = tmp_path / "a.pt2"
    artifact.write_bytes(b"")
    pid_file = tmp_path / "scorer.pid"
    root = Path(launch.__file__).resolve().parents[2]
    worker = subprocess.Popen([sys.executable, "-c", ORPHAN_WORKER, str(pid_file), str(artifact)],
                              env={**os.environ, "PYTHONPATH": str(root)})
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    scorer = int(pid_file.read_text())
    os.kill(scorer, 0)  # it runs
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(scorer, 0)
        except ProcessLookupError:
            break
        try:  # a zombie until its (dead) parent's parent reaps it: gone for our purpose
            if open(f"/proc/{scorer}/stat").read().split(")")[-1].split()[0] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        os.kill(scorer, signal.SIGKILL)
        raise AssertionError("the scorer outlived its worker")


NICENESS = r"""
import os, subprocess, sys
child = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"], capture_output=True, text=True)
print(os.nice(0), child.stdout.strip())
"""


def test_a_job_gives_up_cpu_priority_and_the_model_process_it_starts_inherits_it():
    """``SandboxLimits.nice``: the scorer runs at the lower priority, and so does every process it starts."""
    base = os.nice(0)
    try:
        for nice in (0, 7):
            run = run_program_sandboxed([sys.executable, "-c", NICENESS], limits=SandboxLimits(nice=nice))
            assert run.ok, run.stderr_tail
            assert run.stdout.split() == [str(min(19, base + nice))] * 2
    except availability.SandboxUnavailable as exc:
        pytest.skip(str(exc))


AUTOGROUP = r"""
import os, sys
from evaluator.sandbox.limits import lower_session_priority
os.nice(int(sys.argv[1]))
print(lower_session_priority(os.nice(0)), open("/proc/self/autogroup").read().split()[-1])
"""


def test_a_job_s_sessions_give_up_priority_too_so_nice_counts_against_other_sessions(tmp_path):
    """With scheduler autogroups a session competes as a whole: the scorer's session (setsid in the child) and
    the model process's (bubblewrap's --new-session, set by the model server itself) get the job's niceness."""
    from evaluator.sandbox.supervision import supervise

    if not os.path.exists("/proc/self/autogroup"):
        pytest.skip("this kernel has no scheduler autogroups")
    lines: list[str] = []
    outcome = supervise([sys.executable, "-c", "print(open('/proc/self/autogroup').read().split()[-1])"],
                        stdin_text="", limits=SandboxLimits(nice=6), on_stdout_line=lines.append,
                        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert outcome.returncode == 0 and lines == ["6\n"]  # the scorer's new session
    try:
        run = run_program_sandboxed([sys.executable, "-c", AUTOGROUP, "5"], limits=SandboxLimits(nice=0))
    except availability.SandboxUnavailable as exc:
        pytest.skip(str(exc))
    assert run.ok, run.stderr_tail
    assert run.stdout.split() == ["True", str(min(19, os.nice(0) + 5))]  # inside the sandbox's own session


TAKE_IT_BACK = r"""
import os
from evaluator.sandbox.limits import lower_session_priority
lower_session_priority(os.nice(0))  # what the model server does before it loads the submission
tries = []
try:
    os.nice(-5)
    tries.append("nice: raised")
except PermissionError:
    tries.append("nice: refused")
try:
    with open("/proc/self/autogroup", "w") as f:
        f.write("0")
    tries.append("autogroup: raised")
except OSError:
    tries.append("autogroup: refused")
print(";".join(tries), os.nice(0), open("/proc/self/autogroup").read().split()[-1])
"""


def test_submitted_code_cannot_take_back_the_cpu_priority_its_job_gave_up():
    """A hostile model, running after the server lowered its priority, tries to raise it again: both refused."""
    if not os.path.exists("/proc/self/autogroup"):
        pytest.skip("this kernel has no scheduler autogroups")
    try:
        run = run_program_sandboxed([sys.executable, "-c", TAKE_IT_BACK], limits=SandboxLimits(nice=5))
    except availability.SandboxUnavailable as exc:
        pytest.skip(str(exc))
    assert run.ok, run.stderr_tail
    expected = str(min(19, os.nice(0) + 5))
    assert run.stdout.split() == ["nice:", "refused;autogroup:", "refused", expected, expected]


BEFORE_TORCH = r"""
import importlib.abc, os, runpy, sys

seen = []


class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(open("/proc/self/autogroup").read().split()[-1])
        return None


sys.meta_path.insert(0, Watch())
os.nice(int(sys.argv[1]))
sys.argv = [sys.argv[0]]
try:
    runpy.run_module("evaluator.remote", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    print("exit", stop.code, "autogroup-at-torch-import", *seen, file=sys.stderr)
"""


def test_the_model_server_gives_up_its_session_s_priority_before_importing_torch():
    """Importing torch is about a second of CPU per job: with autogroups, in a new session, at full weight against
    the web server unless the session's priority is lowered first (``python -m evaluator.remote``, the command a
    job's model process runs). Checked in a new session, as bubblewrap's ``--new-session`` makes one."""
    from evaluator.remote.client import model_server_command

    if not os.path.exists("/proc/self/autogroup"):
        pytest.skip("this kernel has no scheduler autogroups")
    assert model_server_command()[1:] == ["-m", "evaluator.remote"]
    run = subprocess.run([sys.executable, "-c", BEFORE_TORCH, "4"], stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=120, start_new_session=True, cwd=Path(__file__).resolve().parents[2])
    line = [x for x in run.stderr.splitlines() if x.startswith("exit ")]
    assert line == [f"exit 0 autogroup-at-torch-import {min(19, os.nice(0) + 4)}"], run.stderr[-2000:]
