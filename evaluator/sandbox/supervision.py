"""Starting one child under the job's limits and watching it until it ends.

The parent feeds the child its stdin, reads its output line by line (each line capped, since a
hostile child may print one endless line), keeps a bounded tail of its stderr, and samples the
job's process tree (scorer and model process) twice a second: a job that runs past its wall
clock, whose processes together exceed the process or memory limit, or that is cancelled, is
killed as a whole, so it ends quickly with a clear reason. The child dies with the worker
(PR_SET_PDEATHSIG), so a worker killed mid-job leaves nothing running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from evaluator.sandbox.limits import SandboxLimits, apply_rlimits
from evaluator.sandbox.monitor import TreeUsage, tree_usage

#: Characters of the child's stderr kept for the failure sentence and the operator.
_STDERR_TAIL = 4000
#: Longest stdout/stderr line the parent keeps (a hostile child may print one endless line).
MAX_LINE = 16 * 1024**2
#: Seconds between two looks at the child (timeout, cancellation, process tree).
_POLL_SECONDS = 0.5
#: Share of the process limit at which the job is stopped as a fork bomb (the kernel refuses
#: forks at the limit itself; the parent stops the job instead of letting it spin there).
_PROCESS_ALARM = 0.9
#: prctl(2) option: the signal the kernel sends a process when its parent dies.
_PR_SET_PDEATHSIG = 1


@dataclass
class ChildExit:
    """What the parent observed of one child run."""

    returncode: int
    #: Why the parent stopped the child (timeout, cancelled, too_many_processes, out_of_memory), or "".
    stopped: str
    stderr_tail: str
    wall_seconds: float
    peak: TreeUsage


def _death_signal_setter() -> Callable[[], None]:
    """A function, for the child between fork and exec, that has the kernel SIGKILL it when the worker dies.

    The scorer is not under bubblewrap (whose ``--die-with-parent`` guards the model process), so
    without this a worker killed mid-job would leave its scorer running, still holding the job's
    model process under a sandbox uid the dead worker's lock no longer reserves.
    """
    parent = os.getpid()
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: nothing to set
        return lambda: None

    def apply() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the worker died before the signal was armed
            os._exit(1)

    return apply


def _child_setup(limits: SandboxLimits) -> Callable[[], None]:
    """What the child runs between fork and exec: die with the worker, lead a process group, take the rlimits."""
    die_with_parent = _death_signal_setter()

    def apply() -> None:  # runs in the child between fork and exec
        die_with_parent()
        os.setsid()
        apply_rlimits(limits)

    return apply


def _read_lines(stream: IO[str]) -> Iterator[str]:
    """Lines of ``stream``, each cut at MAX_LINE characters (the rest of a longer line is dropped)."""
    truncated = False
    while True:
        line = stream.readline(MAX_LINE)
        if not line:
            return
        complete = line.endswith("\n")
        if not truncated:
            yield line
        truncated = not complete


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the bubblewrap process group; the sandbox's PID namespace dies with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def supervise(
    cmd: Sequence[str],
    *,
    stdin_text: str,
    limits: SandboxLimits,
    on_stdout_line: Callable[[str], None],
    env: Mapping[str, str],
    cwd: str | None = None,
    pass_fds: Sequence[int] = (),
    should_cancel: Callable[[], bool] | None = None,
) -> ChildExit:
    """Start ``cmd`` with the limits, feed it ``stdin_text``, and watch it until it ends."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(cmd),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        pass_fds=tuple(pass_fds),
        preexec_fn=_child_setup(limits),  # noqa: PLW1509 - needed for setrlimit in the child
        text=True,
        errors="replace",
    )
    stderr_chunks: list[str] = []

    def drain_stderr() -> None:
        assert proc.stderr is not None
        for line in _read_lines(proc.stderr):
            stderr_chunks.append(line[-_STDERR_TAIL:])
            if sum(len(c) for c in stderr_chunks) > 4 * _STDERR_TAIL:
                del stderr_chunks[: len(stderr_chunks) // 2]

    stderr_thread = threading.Thread(target=drain_stderr, daemon=True)
    stderr_thread.start()
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(stdin_text)
        proc.stdin.close()
    except BrokenPipeError:  # the child ended (or never read); its exit says why
        pass

    stopped: list[str] = []
    peak = {"processes": 0, "tasks": 0, "memory_bytes": 0}

    def watchdog() -> None:
        while proc.poll() is None:
            usage = tree_usage(proc.pid)
            for key in peak:
                peak[key] = max(peak[key], getattr(usage, key))
            if time.monotonic() - started > limits.wall_seconds:
                stopped.append("timeout")
            elif usage.tasks >= _PROCESS_ALARM * limits.max_processes:
                stopped.append("too_many_processes")
            elif usage.memory_bytes > limits.memory_bytes:
                stopped.append("out_of_memory")
            elif should_cancel is not None and should_cancel():
                stopped.append("cancelled")
            if stopped:
                _kill_group(proc)
                return
            time.sleep(_POLL_SECONDS)

    watch_thread = threading.Thread(target=watchdog, daemon=True)
    watch_thread.start()
    for line in _read_lines(proc.stdout):
        on_stdout_line(line)
    proc.wait()
    watch_thread.join(timeout=2)
    stderr_thread.join(timeout=2)
    return ChildExit(
        returncode=proc.returncode,
        stopped=stopped[0] if stopped else "",
        stderr_tail="".join(stderr_chunks)[-_STDERR_TAIL:],
        wall_seconds=round(time.monotonic() - started, 3),
        peak=TreeUsage(**peak),
    )
