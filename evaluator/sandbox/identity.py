"""Unprivileged user ids for sandboxed jobs, one per concurrently running job.

Why a uid of its own for each job: the kernel's process-count limit (RLIMIT_NPROC) is checked
against the real uid that forks, and it is *not* enforced for root. A worker running as root
therefore could not contain a fork bomb while the sandboxed child kept uid 0. Dropping the child
to an otherwise unused uid makes the limit bite, and giving each concurrent job its own uid means
one job's fork bomb cannot use up the process budget of a job running beside it on the same host.

The uids come from a fixed range that no account should use (``SANDBOX_UID_BASE`` onwards) and are
claimed with ``flock`` on small lock files, so several workers on one host never share one.
Every job shares one group, ``SANDBOX_GID``. Hidden data must never be made readable to it: only
the scorer reads the evaluation sets; the sandbox holds the artifact alone.
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: First uid of the range handed to sandboxed jobs (far above login and system accounts,
#: systemd's dynamic users and the usual /etc/subuid ranges).
SANDBOX_UID_BASE = 1_900_000_000
#: How many jobs may run sandboxed at once on one host.
SANDBOX_UID_COUNT = 256
#: The group every sandboxed job runs with (no supplementary groups).
SANDBOX_GID = SANDBOX_UID_BASE


class IdentityUnavailable(RuntimeError):
    """Raised when every sandbox uid is held by a running job, or the lock folder is unsafe."""


@dataclass(frozen=True)
class SandboxIdentity:
    """The uid and gid one sandboxed job runs as."""

    uid: int
    gid: int = SANDBOX_GID

    def can_read(self, path: str | os.PathLike[str]) -> bool:
        """Whether this identity may read the file at ``path`` by its permission bits.

        Only the file's own bits matter: bubblewrap mounts it into the sandbox as root, so the
        folders above it on the host are never walked by the sandboxed process.
        """
        info = os.stat(path)
        if info.st_uid == self.uid:
            return bool(info.st_mode & stat.S_IRUSR)
        if info.st_gid == self.gid:
            return bool(info.st_mode & stat.S_IRGRP)
        return bool(info.st_mode & stat.S_IROTH)


#: The identity used when a sandbox command is built without claiming one (tests, diagnostics).
DEFAULT_IDENTITY = SandboxIdentity(SANDBOX_UID_BASE)


def _lock_folder() -> Path:
    """A folder for the slot locks that only the worker's own user can write to.

    A folder anybody could write to would let another local user pre-create (and hold) the lock
    files, or swap them for symbolic links.
    """
    folder = Path(tempfile.gettempdir()) / f"arena-sandbox-uids-{os.geteuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise IdentityUnavailable(f"cannot create the sandbox lock folder {folder}: {exc}") from None
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise IdentityUnavailable(f"the sandbox lock folder {folder} is not a private folder of this user")
    return folder


@contextmanager
def claim_identity() -> Iterator[SandboxIdentity]:
    """Hold a sandbox uid no other job on this host holds, for as long as the block runs.

    The lock is released when the block ends (or when the worker dies: the kernel drops ``flock``
    locks with the file descriptor), never while processes of the uid may still be alive, since
    the caller waits for them first (see :func:`wait_until_gone`).
    """
    folder = _lock_folder()
    start = os.getpid() % SANDBOX_UID_COUNT  # spread workers over the range: fewer collisions
    for step in range(SANDBOX_UID_COUNT):
        slot = (start + step) % SANDBOX_UID_COUNT
        fd = os.open(folder / str(slot), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield SandboxIdentity(SANDBOX_UID_BASE + slot)
        finally:
            os.close(fd)  # closing the descriptor releases the lock
        return
    raise IdentityUnavailable(f"all {SANDBOX_UID_COUNT} sandbox uids are in use on this host")


def processes_of(uid: int) -> list[int]:
    """Pids of the live processes whose owner (effective uid) is ``uid``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    found.append(int(entry.name))
            except OSError:  # exited while we looked
                continue
    return found


def wait_until_gone(uid: int, timeout: float = 10.0) -> bool:
    """Kill whatever still runs as ``uid`` and wait until nothing does; True if it all ended.

    After the sandbox's outer process dies, the kernel tears its PID namespace down
    asynchronously; a uid handed to the next job while that happens would start with processes
    already counted against its limit.
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = processes_of(uid)
        if not pids:
            return True
        if time.monotonic() > deadline:
            return False
        for pid in pids:
            _kill_if_owned(pid, uid)
        time.sleep(0.05)


def _kill_if_owned(pid: int, uid: int) -> None:
    """SIGKILL ``pid`` only if it still belongs to ``uid``, without a pid-reuse race.

    The pidfd pins the process we checked: if it exits and its number is reused, the signal
    goes nowhere instead of reaching an unrelated process.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if os.stat(f"/proc/{pid}").st_uid == uid:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)
