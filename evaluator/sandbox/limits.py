"""The limits one job runs under, and the kernel resource limits (rlimits) that enforce them.

The rlimits are hard per-process or per-uid caps that make an allocation or a fork fail at
once; the parent's sampling of the job's process tree (:mod:`evaluator.sandbox.supervision`)
enforces the same limits on all the job's processes together.
"""

from __future__ import annotations

import errno
import os
import resource
import time
from dataclasses import dataclass, field


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class SandboxLimits:
    """Per-job limits.

    ``memory_bytes`` is enforced twice: as RLIMIT_DATA on every process (so one allocation beyond
    it fails at once, with a MemoryError or torch's allocator error) and on the sum of the
    private resident memory of all the job's processes (sampled). RLIMIT_DATA rather than
    RLIMIT_AS: address space reservations that are never backed (CUDA maps tens of GiB; glibc
    reserves 64 MiB per thread arena) would trip an address-space limit without using memory.
    Measured with torch 2.13 on CPU: importing torch takes about 0.2 GiB of data segment; a
    LeNet-5 evaluation of 2,000 MNIST images peaks at about 0.35 GiB of private memory (0.42 GiB
    with the attack suite) and fails below about 0.4 GiB. The 8 GiB default leaves room for
    ImageNet-sized models and batches while a runaway allocation still fails at once.

    ``max_processes`` counts threads too (the kernel's RLIMIT_NPROC does); ``tmp_bytes`` caps the
    private /tmp, which lives in memory.

    ``nice`` lowers the CPU priority of the job's processes (the scorer, and the model process it
    starts, which inherits it): on a host that also serves the site and its database, an evaluation
    then takes the cores they leave idle instead of half of them. An evaluation is minutes of batch
    work; a page is a person waiting. On an idle host it changes nothing.
    """

    wall_seconds: float = 3600.0
    cpu_seconds: int = 4 * 3600
    memory_bytes: int = 8 * 1024**3
    max_file_bytes: int = 256 * 1024**2
    tmp_bytes: int = 1024**3
    max_processes: int = 512
    threads: int = field(default_factory=_default_threads)
    nice: int = 0


def apply_rlimits(limits: SandboxLimits) -> None:
    """Set the job's rlimits on the calling process; run in the child between fork and exec."""
    # SIGXCPU at the soft limit (a clear reason), SIGKILL a little later for a program that ignores it.
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits.nice > 0:
        os.nice(limits.nice)
        lower_session_priority(limits.nice)


def lower_session_priority(nice: int, attempts: int = 5) -> bool:
    """Give this process's session the niceness ``nice`` too (its scheduler autogroup); True when it took.

    With autogroups (``/proc/sys/kernel/sched_autogroup_enabled``, on by default in most distributions'
    kernels) the scheduler first shares the CPU equally between sessions, and a process's nice value
    only counts against the processes of its own session. A job's processes each start a session (the
    scorer with ``setsid``, the model process through bubblewrap's ``--new-session``), so without this a
    niced job still took half of two cores from a web server in another session (measured with
    ``measurements/load_test.py --busy``). Raising an autogroup's nice value needs no privilege; the kernel
    refuses a change more often than every 100 ms from an unprivileged process, hence the retries. A
    kernel without autogroups has no such file, and nothing is needed there.
    """
    if nice <= 0:
        return True
    for attempt in range(attempts):
        try:
            with open("/proc/self/autogroup", "w") as autogroup:
                autogroup.write(str(min(19, nice)))
            return True
        except OSError as exc:
            if exc.errno != errno.EAGAIN:  # no autogroups, a read-only /proc: waiting changes nothing
                return False
            if attempt + 1 < attempts:  # another session changed within 100 ms
                time.sleep(0.11)
    return False
