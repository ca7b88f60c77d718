"""Whether this host can sandbox a job: bubblewrap, its version, and setpriv when the worker is root.

A worker checks this before it starts a job, so that a host that cannot sandbox fails the job
as the platform's fault (``SandboxUnavailable``) instead of running a submission unconfined.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

#: bubblewrap 0.8 brought --size (the /tmp cap) and --disable-userns.
_MIN_BWRAP_VERSION = (0, 8)


class SandboxUnavailable(RuntimeError):
    """Raised when bubblewrap is missing and the operator has not allowed the unsandboxed mode."""


def bubblewrap_path() -> str | None:
    """The bubblewrap program on PATH, or None where it is not installed."""
    return shutil.which("bwrap")


@functools.lru_cache(maxsize=4)
def _bwrap_version(path: str) -> tuple[int, ...]:
    """The installed bubblewrap's version, e.g. (0, 8, 0); () when it cannot be told."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    words = out.split()
    try:
        return tuple(int(part) for part in words[-1].split(".")) if words else ()
    except ValueError:
        return ()


def setpriv_path() -> str | None:
    """setpriv (util-linux) drops the sandboxed program to its uid when the worker is root."""
    return shutil.which("setpriv")


def runs_as_root() -> bool:
    """Whether bubblewrap runs as root here (and the child must then be dropped to a sandbox uid).

    The one place that decides between the two ways of sandboxing (a uid of the job's own as
    root, a user namespace otherwise); callers look it up on this module so that the command
    line, the availability check and the uid claim always agree.
    """
    return os.geteuid() == 0


def check_sandbox_available() -> None:
    """Raise :class:`SandboxUnavailable` now, in the worker, if bubblewrap cannot be used on this host."""
    bwrap = bubblewrap_path()
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed")
    version = _bwrap_version(bwrap)
    if version < _MIN_BWRAP_VERSION:
        shown = ".".join(map(str, version)) or "unknown"
        raise SandboxUnavailable(f"bubblewrap {shown} is too old; the sandbox needs 0.8 or newer")
    if runs_as_root() and setpriv_path() is None:
        raise SandboxUnavailable(
            "the worker runs as root, and setpriv (util-linux) is needed to drop the sandboxed process to an "
            "unprivileged uid; install it or run the worker as an ordinary user"
        )
