"""Runs one JobSpec in a child process, under bubblewrap where the host has it.

The trusted parent (a Celery worker) never loads a submission itself. It starts
``python -m evaluator run -`` in a child with no network, no inherited environment (so no
database or broker credentials), read-only views of the artifact, the evaluation sets and the
Python installation, a private /tmp, resource limits and a wall-clock timeout; it passes the
JobSpec on stdin and reads back JSON lines only.

Without bubblewrap the child still gets a scrubbed environment and resource limits, but it
shares the host's network and file system: that mode must be allowed explicitly by the operator
(``allow_unsandboxed``), and the Result's provenance says which mode ran.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from evaluator.progress import ProgressCallback, ignore_progress
from evaluator.spec import JobSpec, Result

#: Where the evaluator package and the job's files appear inside the sandbox.
_CODE_DIR = "/opt/arena"
_JOB_DIR = "/job"
_STDERR_TAIL = 4000


class SandboxUnavailable(RuntimeError):
    """Raised when bubblewrap is missing and the operator has not allowed the unsandboxed mode."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-job limits. Memory is a limit on the child's data segment (RLIMIT_DATA)."""

    wall_seconds: float = 3600.0
    cpu_seconds: int = 4 * 3600
    memory_bytes: int = 8 * 1024**3
    max_file_bytes: int = 256 * 1024**2
    max_processes: int = 512
    threads: int = max(1, (os.cpu_count() or 1))


def bubblewrap_path() -> str | None:
    return shutil.which("bwrap")


def _project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _python_roots() -> list[str]:
    """The Python installation (and virtual environment) the child needs, read-only."""
    roots = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix}
    return sorted(r for r in roots if r and not r.startswith("/usr"))


def _bwrap_command(spec_paths: dict[str, str], limits: SandboxLimits) -> list[str]:
    cmd = [
        bubblewrap_path() or "bwrap",
        "--unshare-all",  # network, PID, IPC, UTS, cgroup and user namespaces
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--ro-bind", "/usr", "/usr",
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        "--chdir", "/tmp",
    ]
    for name in ("bin", "lib", "lib64", "sbin"):
        host = Path("/") / name
        if host.is_symlink():
            cmd += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            cmd += ["--ro-bind", str(host), f"/{name}"]
    # Only what the dynamic loader needs from /etc: no passwd, hosts or credentials.
    for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime"):
        if os.path.exists(etc):
            cmd += ["--ro-bind", etc, etc]
    for root in _python_roots():
        cmd += ["--ro-bind", root, root]
    cmd += ["--ro-bind", str(_project_root() / "evaluator"), f"{_CODE_DIR}/evaluator"]
    for host_path, inside in spec_paths.items():
        cmd += ["--ro-bind", host_path, inside]
    for key, value in _child_env(limits, _CODE_DIR).items():
        cmd += ["--setenv", key, value]
    return cmd


def _child_env(limits: SandboxLimits, code_dir: str) -> dict[str, str]:
    threads = str(limits.threads)
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "PYTHONPATH": code_dir,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": threads,
        # Spinning OpenMP threads collapse throughput when cores are shared (seen: 7x slower).
        "OMP_WAIT_POLICY": "PASSIVE",
        "MKL_NUM_THREADS": threads,
        "TORCHINDUCTOR_CACHE_DIR": "/tmp/inductor",
    }


def _limit_resources(limits: SandboxLimits) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _relocate(spec: JobSpec) -> tuple[JobSpec, dict[str, str]]:
    """Rewrite host paths in the spec to their read-only mount points inside the sandbox."""
    mounts: dict[str, str] = {os.path.realpath(spec.artifact.path): f"{_JOB_DIR}/artifact"}
    sets = []
    for s in spec.evaluation_sets:
        host = os.path.realpath(s.path)
        inside = mounts.setdefault(host, f"{_JOB_DIR}/data/{len(mounts)}.safetensors")
        sets.append(replace(s, path=inside))
    generator = spec.generator
    if generator is not None:
        host = os.path.realpath(generator.path)
        generator = replace(generator, path=mounts.setdefault(host, f"{_JOB_DIR}/generator.safetensors"))
    relocated = replace(
        spec, artifact=replace(spec.artifact, path=mounts[os.path.realpath(spec.artifact.path)]),
        evaluation_sets=tuple(sets), generator=generator,
    )
    return relocated, mounts


def _describe_exit(returncode: int, limits: SandboxLimits, stderr_tail: str) -> tuple[str, str]:
    if returncode < 0:
        sig = signal.Signals(-returncode)
        if sig == signal.SIGXCPU:
            return "cpu_time_exceeded", f"The evaluation used more than {limits.cpu_seconds} s of CPU time."
        if sig == signal.SIGXFSZ:
            return "file_size_exceeded", "The model tried to write a file larger than the sandbox allows."
        if sig == signal.SIGKILL:
            return "killed", "The evaluation process was killed (most often: it exceeded the memory limit)."
        return "crashed", f"The evaluation process died with signal {sig.name}."
    if "MemoryError" in stderr_tail or "Cannot allocate memory" in stderr_tail or "DefaultCPUAllocator" in stderr_tail:
        return "out_of_memory", f"The model exceeded the memory limit of {limits.memory_bytes // 1024**2} MiB."
    last = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else "no output"
    return "crashed", f"The evaluation process exited with status {returncode} without a result ({last[:300]})."


def run_sandboxed(
    spec: JobSpec,
    progress: ProgressCallback = ignore_progress,
    limits: SandboxLimits | None = None,
    allow_unsandboxed: bool = False,
    should_cancel: Callable[[], bool] | None = None,
) -> Result:
    """Evaluate ``spec`` in a child process and return its Result (never raises for model faults).

    ``should_cancel`` is polled about once a second; when it returns True the child is killed
    and a ``cancelled`` Result comes back.
    """
    limits = limits or SandboxLimits()
    use_bwrap = bubblewrap_path() is not None
    if not use_bwrap and not allow_unsandboxed:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed, and unsandboxed evaluation is not allowed on this worker"
        )
    mode = "bubblewrap" if use_bwrap else "unsandboxed"
    if use_bwrap:
        child_spec, mounts = _relocate(spec)
        cmd = [*_bwrap_command(mounts, limits), sys.executable, "-m", "evaluator", "run", "-"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        cwd = None
    else:
        child_spec = spec
        cwd = tempfile.mkdtemp(prefix="arena-job-")
        env = _child_env(limits, str(_project_root()))
        env["HOME"] = cwd
        cmd = [sys.executable, "-m", "evaluator", "run", "-"]

    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        preexec_fn=_limit_resources(limits),  # noqa: PLW1509 - needed for setrlimit in the child
        text=True,
    )
    stderr_chunks: list[str] = []

    def drain_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_chunks.append(line)
            if sum(len(c) for c in stderr_chunks) > 4 * _STDERR_TAIL:
                del stderr_chunks[: len(stderr_chunks) // 2]

    stderr_thread = threading.Thread(target=drain_stderr, daemon=True)
    stderr_thread.start()
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(child_spec.to_json())
    proc.stdin.close()

    outcome: dict[str, str] = {}

    def watchdog() -> None:
        while proc.poll() is None:
            if time.monotonic() - started > limits.wall_seconds:
                outcome["why"] = "timeout"
            elif should_cancel is not None and should_cancel():
                outcome["why"] = "cancelled"
            if outcome:
                _kill_group(proc)
                return
            time.sleep(0.5)

    watch_thread = threading.Thread(target=watchdog, daemon=True)
    watch_thread.start()

    result: Result | None = None
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("event") == "progress":
            progress(float(event.get("fraction", 0.0)), str(event.get("stage", "")))
        elif event.get("event") == "result" and result is None:
            result = Result.from_dict(event["result"])
    proc.wait()
    watch_thread.join(timeout=2)
    stderr_thread.join(timeout=2)
    stderr_tail = "".join(stderr_chunks)[-_STDERR_TAIL:]
    elapsed = round(time.monotonic() - started, 3)

    if outcome.get("why") == "timeout":
        result = Result.failure(spec, "timeout", f"The evaluation did not finish within {limits.wall_seconds:.0f} s.")
    elif outcome.get("why") == "cancelled":
        result = Result.failure(spec, "cancelled", "The evaluation was cancelled.")
    elif result is None:
        code, message = _describe_exit(proc.returncode, limits, stderr_tail)
        result = Result.failure(spec, code, message)
    if result.job_id != spec.job_id:
        result = Result.failure(spec, "internal", "The evaluation returned a result for another job.")
    result.provenance.update(sandbox=mode, wall_seconds=elapsed)
    if cwd is not None:
        shutil.rmtree(cwd, ignore_errors=True)
    return result


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


