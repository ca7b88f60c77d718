"""Running a fixed program under exactly the sandbox and limits an evaluation gets (tests only).

The platform never runs anything but the scorer and the model server in the sandbox; these
tests run hostile Python there (sockets, fork bombs, huge allocations), which a ``.pt2`` upload
cannot carry, to show the containment. The helper is built from the production pieces an
evaluation uses: the same bubblewrap prefix and uid, the same rlimits and watchdog, the same
failure codes and sentences.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from evaluator.sandbox.bubblewrap import JOB_DIR, sandbox_prefix
from evaluator.sandbox.exit_reasons import describe_exit, describe_stop
from evaluator.sandbox.limits import SandboxLimits
from evaluator.sandbox.monitor import TreeUsage
from evaluator.sandbox.supervision import MAX_LINE, supervise


@dataclass(frozen=True)
class SandboxRun:
    """What a program run by :func:`run_program_sandboxed` did."""

    returncode: int
    #: "" when the program exited 0 within its limits; else a failure code as evaluations use.
    error_code: str
    #: A sentence saying why it failed ("" when it did not).
    message: str
    stdout: str
    stderr_tail: str
    wall_seconds: float
    peak: TreeUsage
    #: The sandbox uid it ran as (None when the worker is not root and no uid was switched).
    uid: int | None = None

    @property
    def ok(self) -> bool:
        return not self.error_code


def run_program_sandboxed(
    argv: Sequence[str],
    *,
    limits: SandboxLimits | None = None,
    files: Mapping[str, str] | None = None,
    stdin_text: str = "",
) -> SandboxRun:
    """Run a fixed program under exactly the sandbox and limits an evaluation gets.

    ``files`` maps host files to the read-only paths they get inside (under ``/job``). Raises
    :class:`evaluator.sandbox.SandboxUnavailable` when bubblewrap (or, as root, setpriv) is missing.
    """
    limits = limits or SandboxLimits()
    mounts = {os.path.realpath(host): inside for host, inside in (files or {}).items()}
    if any(not inside.startswith(f"{JOB_DIR}/") for inside in mounts.values()):
        raise ValueError(f"files must appear under {JOB_DIR}/ inside the sandbox")
    lines: list[str] = []
    kept = [0]

    def keep(line: str) -> None:
        if kept[0] < MAX_LINE:
            lines.append(line)
            kept[0] += len(line)

    with sandbox_prefix(mounts, limits) as (prefix, fds, identity):
        outcome = supervise(
            [*prefix, *argv], stdin_text=stdin_text, limits=limits, on_stdout_line=keep,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, pass_fds=fds,
        )
    if outcome.stopped:
        code, message = describe_stop(outcome.stopped, limits)
    elif outcome.returncode != 0:
        code, message = describe_exit(outcome.returncode, limits, outcome.stderr_tail)
    else:
        code, message = "", ""
    return SandboxRun(outcome.returncode, code, message, "".join(lines), outcome.stderr_tail, outcome.wall_seconds,
                      outcome.peak, identity.uid if identity is not None else None)
