"""What a sandboxed job's processes use together: tasks (processes and threads) and memory.

Why the parent measures this itself: rlimits are per process (RLIMIT_DATA) or per uid
(RLIMIT_NPROC), and they only make a fork or an allocation fail; a fork bomb whose processes
catch the error keeps running, and a job that forks and allocates in every child can use its
memory limit many times over. Sampling the job's process tree lets the parent
(:mod:`evaluator.sandbox.supervision`) stop such a job quickly, with a reason, while the rlimits
remain the hard backstop between two samples.

The tree is found through parent pids in ``/proc``: every process of the sandbox descends from the
bubblewrap process the parent started (orphans are adopted by the sandbox's own PID 1, which is one
of those descendants).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class TreeUsage:
    """A snapshot of one process tree: how many tasks (threads count) and how much private memory."""

    processes: int
    tasks: int
    memory_bytes: int


def _stat_fields(pid: str) -> tuple[int, int] | None:
    """(parent pid, thread count) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(rest[1]), int(rest[17])
    except (IndexError, ValueError):
        return None


def _private_memory(pid: int) -> int:
    """Resident anonymous plus shared-memory bytes of one process (file-backed pages excluded).

    File-backed pages (the torch libraries, memory-mapped evaluation sets) are shared with the
    page cache and other processes; counting them would charge every job for the same libraries.
    """
    total = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith((b"RssAnon:", b"RssShmem:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


def tree_usage(root_pid: int) -> TreeUsage:
    """Tasks and private memory of ``root_pid`` and all its descendants, right now."""
    children: dict[int, list[int]] = {}
    threads: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is None:
            continue
        pid = int(entry.name)
        children.setdefault(fields[0], []).append(pid)
        threads[pid] = fields[1]
    if root_pid not in threads:
        return TreeUsage(0, 0, 0)
    members = [root_pid]
    index = 0
    while index < len(members):
        members.extend(children.get(members[index], ()))
        index += 1
    return TreeUsage(
        processes=len(members),
        tasks=sum(threads.get(pid, 1) for pid in members),
        memory_bytes=sum(_private_memory(pid) for pid in members),
    )


__all__ = ["TreeUsage", "tree_usage"]
