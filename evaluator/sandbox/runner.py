"""Runs one JobSpec across two processes, with the submitted model alone in bubblewrap.

The trusted parent (a Celery worker) never loads a submission itself. It starts the scorer,
``python -m evaluator run -``, as an ordinary child with no inherited environment (so no
database or broker credentials), resource limits and a wall-clock timeout; it passes the
JobSpec on stdin and reads back JSON lines only. The scorer holds the evaluation sets and
computes every number, and starts the model process (:mod:`evaluator.remote`) under
bubblewrap: no network, read-only views of the artifact (the only job file it can see) and the
Python installation, a private size-limited /tmp. The model process receives image batches and
returns outputs and gradients, nothing else: it never sees a label, an evaluation-set file, the
generator or the result.

Who the model process runs as matters as much as what it sees. A worker running as root starts
bubblewrap as root (so it can mount files only root may reach) and the sandboxed program is then
dropped, by ``setpriv``, to a uid of its own with no capabilities and ``no_new_privs``: the
kernel does not apply the process-count limit to root, so a fork bomb is only contained once the
child is not root. A worker running as an ordinary user runs bubblewrap in a user namespace
instead, and the limits apply to that user.

Besides the rlimits (hard per-process or per-uid caps that make an allocation or a fork fail),
the parent samples the job's process tree (scorer and model process) twice a second and stops
a job whose processes together exceed the process or memory limit, so such a job ends quickly
with a clear reason.

Without bubblewrap the model still runs in a process of its own with a scrubbed environment and
resource limits, but it shares the host's network and file system: that mode must be allowed
explicitly by the operator (``allow_unsandboxed``), and the Result's provenance says which mode
ran.
"""

from __future__ import annotations

import functools
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from evaluator.progress import ProgressCallback, ignore_progress
from evaluator.sandbox.identity import (
    DEFAULT_IDENTITY,
    IdentityUnavailable,
    SandboxIdentity,
    claim_identity,
    wait_until_gone,
)
from evaluator.sandbox.monitor import TreeUsage, tree_usage
from evaluator.spec import JobSpec, Result

#: Where the evaluator package and the job's files appear inside the sandbox.
_CODE_DIR = "/opt/arena"
_JOB_DIR = JOB_DIR = "/job"
_STDERR_TAIL = 4000
#: Longest stdout/stderr line the parent keeps (a hostile child may print one endless line).
_MAX_LINE = 16 * 1024**2
#: Seconds between two looks at the child (timeout, cancellation, process tree).
_POLL_SECONDS = 0.5
#: Share of the process limit at which the job is stopped as a fork bomb (the kernel refuses
#: forks at the limit itself; the parent stops the job instead of letting it spin there).
_PROCESS_ALARM = 0.9
#: The only capabilities bubblewrap keeps for the program it starts when run as root, so that
#: setpriv can switch to the job's uid and empty the bounding set; setpriv then drops them all.
_SETPRIV_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")


class SandboxUnavailable(RuntimeError):
    """Raised when bubblewrap is missing and the operator has not allowed the unsandboxed mode."""


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
    """

    wall_seconds: float = 3600.0
    cpu_seconds: int = 4 * 3600
    memory_bytes: int = 8 * 1024**3
    max_file_bytes: int = 256 * 1024**2
    tmp_bytes: int = 1024**3
    max_processes: int = 512
    threads: int = field(default_factory=_default_threads)


def bubblewrap_path() -> str | None:
    return shutil.which("bwrap")


#: bubblewrap 0.8 brought --size (the /tmp cap) and --disable-userns.
_MIN_BWRAP_VERSION = (0, 8)


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


def _privileged() -> bool:
    """Whether bubblewrap runs as root here (and the child must then be dropped to a sandbox uid)."""
    return os.geteuid() == 0


def _project_root() -> Path:
    return Path(__file__).resolve().parents[2]


project_root = _project_root


def _python_roots() -> list[str]:
    """The Python installation (and virtual environment) the child needs, read-only."""
    roots = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix}
    return sorted(r for r in roots if r and not r.startswith("/usr"))


class _CommandBuilder:
    """Accumulates bubblewrap arguments; creates mount points' parents world-readable.

    bubblewrap creates missing parent folders with mode 0700 owned by root, which an
    unprivileged sandbox user could not walk through; they are created explicitly with 0755.
    """

    def __init__(self, head: list[str]) -> None:
        self.args = head
        self.folders: set[str] = {"/"}

    def parents(self, inside: str) -> None:
        for parent in reversed(PurePosixPath(inside).parents):
            if str(parent) not in self.folders:
                self.folders.add(str(parent))
                self.args += ["--perms", "0755", "--dir", str(parent)]

    def ro_bind(self, host: str, inside: str) -> None:
        self.parents(inside)
        self.args += ["--ro-bind", host, inside]

    def ro_data(self, fd: int, inside: str) -> None:
        self.parents(inside)
        self.args += ["--perms", "0444", "--ro-bind-data", str(fd), inside]


def gpu_device_nodes(device: str, dev_root: str = "/dev") -> list[str]:
    """The NVIDIA device files a job on ``device`` needs inside the sandbox (none for a CPU job).

    The sandbox's /dev is a fresh, minimal one, so CUDA sees no GPU unless its device files are
    bound in. Only jobs that asked for CUDA (or "auto") get them: a GPU passed into the sandbox
    exposes the driver's large kernel interface, which the README's Security section discusses.
    """
    if not (device.startswith("cuda") or device == "auto"):
        return []
    root = Path(dev_root)
    names = sorted(p.name for p in root.glob("nvidia*") if p.name != "nvidia-caps") if root.is_dir() else []
    return [str(root / name) for name in names]


def _bwrap_command(
    spec_paths: Mapping[str, str],
    limits: SandboxLimits,
    identity: SandboxIdentity | None = None,
    copied: Mapping[str, int] | None = None,
    devices: Sequence[str] = (),
) -> list[str]:
    """The bubblewrap command line up to (not including) the program to run inside.

    ``spec_paths`` maps host files to where they appear read-only inside; ``copied`` maps places
    inside to open file descriptors whose content is copied in instead (files the sandbox uid
    may not read on the host; see :func:`_plan_mounts`). ``identity`` is the uid the program
    runs as when bubblewrap runs as root (default: the first sandbox uid).
    """
    privileged = _privileged()
    if privileged:
        # As root, a user namespace would map the child's uid 0 to the host's root, so none is
        # made: the mounts are set up as root and the program is dropped to its own uid below.
        namespaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                      "--cap-drop", "ALL"]
        for cap in _SETPRIV_CAPS:
            namespaces += ["--cap-add", cap]
    else:
        # Unprivileged: bubblewrap needs a user namespace; none may be nested inside it.
        namespaces = ["--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
    build = _CommandBuilder([
        bubblewrap_path() or "bwrap",
        *namespaces,  # network, PID, IPC, UTS and cgroup namespaces
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--ro-bind", "/usr", "/usr",
        "--proc", "/proc",
        "--dev", "/dev",
        "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
        "--chdir", "/tmp",
    ])
    build.folders.update({"/usr", "/proc", "/dev", "/tmp"})
    for name in ("bin", "lib", "lib64", "sbin"):
        host = Path("/") / name
        if host.is_symlink():
            build.args += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            build.ro_bind(str(host), f"/{name}")
    # Only what the dynamic loader needs from /etc: no passwd, hosts or credentials.
    for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime"):
        if os.path.exists(etc):
            build.ro_bind(etc, etc)
    for root in _python_roots():
        build.ro_bind(root, root)
    build.ro_bind(str(_project_root() / "evaluator"), f"{_CODE_DIR}/evaluator")
    for host_path, inside in spec_paths.items():
        build.ro_bind(host_path, inside)
    for inside, fd in (copied or {}).items():
        build.ro_data(fd, inside)
    for node in devices:  # GPU jobs only (gpu_device_nodes)
        build.args += ["--dev-bind", node, node]
    for key, value in _child_env(limits, _CODE_DIR).items():
        build.args += ["--setenv", key, value]
    if privileged:
        identity = identity or DEFAULT_IDENTITY
        build.args += [
            setpriv_path() or "/usr/bin/setpriv",
            f"--reuid={identity.uid}", f"--regid={identity.gid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
        ]
    return build.args


def child_env(limits: SandboxLimits, code_dir: str) -> dict[str, str]:
    """The whole environment of a job's processes: nothing inherited from the worker."""
    return _child_env(limits, code_dir)


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
        # glibc returns freed blocks above its (dynamic) mmap threshold to the kernel, so every batch's
        # activations are page-faulted in afresh: measured on the ResNet-20 evaluation, a fresh process
        # ran 1,250 images/s against 1,620 with these two fixed (largest allowed mmap threshold, no trim).
        "MALLOC_MMAP_THRESHOLD_": str(32 * 1024**2),
        "MALLOC_TRIM_THRESHOLD_": str(1024**3),
    }


#: prctl(2) option: the signal the kernel sends a process when its parent dies.
_PR_SET_PDEATHSIG = 1


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


def _limit_resources(limits: SandboxLimits) -> Callable[[], None]:
    die_with_parent = _death_signal_setter()

    def apply() -> None:  # runs in the child between fork and exec
        die_with_parent()
        os.setsid()
        # SIGXCPU at the soft limit (a clear reason), SIGKILL a little later for a program that ignores it.
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
        resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _plan_mounts(
    mounts: Mapping[str, str], identity: SandboxIdentity | None
) -> tuple[dict[str, str], dict[str, str]]:
    """Split the job's files into those bound as they are and those copied into the sandbox.

    A file the sandbox uid may not read (uploads are stored 0600 by the web server) is copied in:
    the parent opens it and bubblewrap copies the content into the sandbox's memory, read-only.
    """
    if identity is None:
        return dict(mounts), {}
    binds: dict[str, str] = {}
    copies: dict[str, str] = {}
    for host, inside in mounts.items():
        if not os.path.exists(host) or identity.can_read(host):
            binds[host] = inside  # a missing file: bubblewrap reports it
        else:
            copies[inside] = host
    return binds, copies


@contextmanager
def _sandbox_prefix(
    mounts: Mapping[str, str], limits: SandboxLimits, devices: Sequence[str] = (),
    identity: SandboxIdentity | None = None,
) -> Iterator[tuple[list[str], tuple[int, ...], SandboxIdentity | None]]:
    """The bubblewrap prefix for one run, the descriptors it needs and the uid it runs as; cleans up after.

    As root, a sandbox uid is claimed for the run and released only once no process of that uid
    is left, so the next job starts with a clean process count. A caller that already holds a
    uid (the worker claims one per evaluation job, see :func:`run_sandboxed`) passes it as
    ``identity``; the caller then also waits for it to be empty.
    """
    check_sandbox_available()
    privileged = _privileged()
    with ExitStack() as stack:
        if privileged and identity is None:
            try:
                identity = stack.enter_context(claim_identity())
            except IdentityUnavailable as exc:
                raise SandboxUnavailable(str(exc)) from None
            stack.callback(wait_until_gone, identity.uid)  # runs before the uid's lock is released
        binds, copies = _plan_mounts(mounts, identity)
        fds: dict[str, int] = {}
        for inside, host in copies.items():
            fds[inside] = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
            stack.callback(os.close, fds[inside])
        yield _bwrap_command(binds, limits, identity, fds, devices), tuple(fds.values()), identity


sandbox_prefix = _sandbox_prefix


def check_sandbox_available() -> None:
    """Raise :class:`SandboxUnavailable` now, in the worker, if bubblewrap cannot be used on this host."""
    bwrap = bubblewrap_path()
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed")
    version = _bwrap_version(bwrap)
    if version < _MIN_BWRAP_VERSION:
        shown = ".".join(map(str, version)) or "unknown"
        raise SandboxUnavailable(f"bubblewrap {shown} is too old; the sandbox needs 0.8 or newer")
    if _privileged() and setpriv_path() is None:
        raise SandboxUnavailable(
            "the worker runs as root, and setpriv (util-linux) is needed to drop the sandboxed process to an "
            "unprivileged uid; install it or run the worker as an ordinary user"
        )


@dataclass
class _ChildExit:
    """What the parent observed of one child run."""

    returncode: int
    #: Why the parent stopped the child (timeout, cancelled, too_many_processes, out_of_memory), or "".
    stopped: str
    stderr_tail: str
    wall_seconds: float
    peak: TreeUsage


def _read_lines(stream: IO[str]) -> Iterator[str]:
    """Lines of ``stream``, each cut at _MAX_LINE characters (the rest of a longer line is dropped)."""
    truncated = False
    while True:
        line = stream.readline(_MAX_LINE)
        if not line:
            return
        complete = line.endswith("\n")
        if not truncated:
            yield line
        truncated = not complete


def _supervise(
    cmd: Sequence[str],
    *,
    stdin_text: str,
    limits: SandboxLimits,
    on_stdout_line: Callable[[str], None],
    env: Mapping[str, str],
    cwd: str | None = None,
    pass_fds: Sequence[int] = (),
    should_cancel: Callable[[], bool] | None = None,
) -> _ChildExit:
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
        preexec_fn=_limit_resources(limits),  # noqa: PLW1509 - needed for setrlimit in the child
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
    return _ChildExit(
        returncode=proc.returncode,
        stopped=stopped[0] if stopped else "",
        stderr_tail="".join(stderr_chunks)[-_STDERR_TAIL:],
        wall_seconds=round(time.monotonic() - started, 3),
        peak=TreeUsage(**peak),
    )


def _describe_stop(reason: str, limits: SandboxLimits) -> tuple[str, str]:
    """Code and sentence for a child the parent stopped."""
    if reason == "timeout":
        return "timeout", f"The evaluation did not finish within {limits.wall_seconds:.0f} s."
    if reason == "too_many_processes":
        return "too_many_processes", (
            f"The evaluation started too many processes or threads (limit {limits.max_processes}); it was stopped "
            "as a fork bomb."
        )
    if reason == "out_of_memory":
        return "out_of_memory", (
            f"The evaluation's processes together used more than the memory limit of "
            f"{limits.memory_bytes // 1024**2} MiB; it was stopped."
        )
    return "cancelled", "The evaluation was cancelled."


_STDERR_SIGNS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("MemoryError", "Cannot allocate memory", "DefaultCPUAllocator", "std::bad_alloc"), "out_of_memory",
     "The model exceeded the memory limit of {memory} MiB."),
    (("File too large", "[Errno 27]"), "file_size_exceeded",
     "The evaluation tried to write a file larger than the sandbox allows ({file} MiB)."),
    (("No space left on device", "[Errno 28]"), "disk_full",
     "The evaluation filled its private temporary folder (limit {tmp} MiB)."),
    (("Resource temporarily unavailable", "BlockingIOError", "can't start new thread"), "too_many_processes",
     "The evaluation could not start more processes or threads (limit {processes})."),
)


def _exit_signal(returncode: int, sandboxed: bool) -> int:
    """The signal that ended the program, or 0.

    bubblewrap reports a program killed by signal N as exit status 128 + N (it only dies by a
    signal itself when the parent kills it); a program run directly shows up as -N.
    """
    if returncode < 0:
        return -returncode
    if sandboxed and 128 < returncode <= 128 + 64:
        return returncode - 128
    return 0


def _describe_exit(
    returncode: int, limits: SandboxLimits, stderr_tail: str, sandboxed: bool = True
) -> tuple[str, str]:
    """Code and sentence for a child that ended without a result (a crash, a signal, a limit)."""
    number = _exit_signal(returncode, sandboxed)
    if number:
        try:
            sig = signal.Signals(number)
        except ValueError:
            return "crashed", f"The evaluation process died with signal {number}."
        if sig == signal.SIGXCPU:
            return "cpu_time_exceeded", f"The evaluation used more than {limits.cpu_seconds} s of CPU time."
        if sig == signal.SIGXFSZ:
            return "file_size_exceeded", "The model tried to write a file larger than the sandbox allows."
        if sig == signal.SIGKILL:
            return "killed", "The evaluation process was killed (most often: it exceeded the memory limit)."
        return "crashed", f"The evaluation process died with signal {sig.name}."
    sizes = {"memory": limits.memory_bytes // 1024**2, "file": limits.max_file_bytes // 1024**2,
             "tmp": limits.tmp_bytes // 1024**2, "processes": limits.max_processes}
    for signs, code, message in _STDERR_SIGNS:
        if any(sign in stderr_tail for sign in signs):
            return code, message.format(**sizes)
    last = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else "no output"
    return "crashed", f"The evaluation process exited with status {returncode} without a result ({last[:300]})."


def describe_model_exit(returncode: int, stderr_tail: str, sandboxed: bool) -> tuple[str, str]:
    """Code and sentence for a model process that ended during a job.

    Its stderr only selects among fixed sentences (out of memory, file too large, ...): the model
    process is untrusted, so nothing it wrote is repeated on a page.
    """
    code, message = _describe_exit(returncode, SandboxLimits(), stderr_tail, sandboxed)
    if code == "crashed":
        return "model_crashed", f"The model process ended unexpectedly (exit status {returncode})."
    if code == "killed":
        return "killed", "The model process was killed (most often: it exceeded the memory limit)."
    return code, message.replace("The evaluation", "The model")


def _parse_result(line: str, progress: ProgressCallback) -> Result | None:
    """One JSON line from the child: reports progress, returns the Result if it is one."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    if event.get("event") == "progress":
        try:
            fraction = float(event.get("fraction", 0.0))
        except (TypeError, ValueError):  # a malformed event is ignored; the callback's own errors are not
            return None
        progress(fraction, str(event.get("stage", "")))
        return None
    if event.get("event") == "result" and isinstance(event.get("result"), dict):
        try:
            return Result.from_dict(event["result"])
        except (TypeError, ValueError):  # a malformed result is no result
            return None
    return None


def _scorer_command() -> list[str]:
    """The scorer's command line (a function so that tests can stand a misbehaving scorer in)."""
    return [sys.executable, "-m", "evaluator", "run", "-"]


def run_sandboxed(
    spec: JobSpec,
    progress: ProgressCallback = ignore_progress,
    limits: SandboxLimits | None = None,
    allow_unsandboxed: bool = False,
    should_cancel: Callable[[], bool] | None = None,
) -> Result:
    """Evaluate ``spec`` in the scorer process (the model in its sandbox) and return its Result.

    Never raises for model faults. ``should_cancel`` is polled about once a second; when it
    returns True the job's processes are killed and a ``cancelled`` Result comes back. Raises
    :class:`SandboxUnavailable` when no sandbox can be set up and the unsandboxed mode is not
    allowed.
    """
    limits = limits or SandboxLimits()
    use_bwrap = bubblewrap_path() is not None
    if use_bwrap:
        check_sandbox_available()
    elif not allow_unsandboxed:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed, and unsandboxed evaluation is not allowed on this worker"
        )
    mode = "bubblewrap" if use_bwrap else "unsandboxed"
    found: list[Result] = []

    def on_line(line: str) -> None:
        result = _parse_result(line, progress)
        if result is not None and not found:
            found.append(result)

    host: dict[str, Any] = {"sandbox": "bubblewrap" if use_bwrap else "process", "limits": asdict(limits)}
    cwd = tempfile.mkdtemp(prefix="arena-job-")
    env = _child_env(limits, str(_project_root()))
    env["HOME"] = cwd
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, cwd, True)
        if use_bwrap and _privileged():
            # The worker holds the job's sandbox uid, so that it is released only once nothing of the job
            # is left, even when the scorer itself was killed.
            try:
                identity = stack.enter_context(claim_identity())
            except IdentityUnavailable as exc:
                raise SandboxUnavailable(str(exc)) from None
            stack.callback(wait_until_gone, identity.uid)
            host["uid"] = identity.uid
        job = json.dumps({"spec": json.loads(spec.to_json()), "host": host})
        outcome = _supervise(
            _scorer_command(), stdin_text=job, limits=limits, on_stdout_line=on_line, env=env, cwd=cwd,
            should_cancel=should_cancel,
        )

    result = found[0] if found else None
    if outcome.stopped:
        result = Result.failure(spec, *_describe_stop(outcome.stopped, limits))
    elif result is None:
        result = Result.failure(spec, *_describe_exit(outcome.returncode, limits, outcome.stderr_tail, False))
    if result.job_id != spec.job_id:
        result = Result.failure(spec, "internal", "The evaluation returned a result for another job.")
    result.provenance.update(
        sandbox=mode, wall_seconds=outcome.wall_seconds, peak_tasks=outcome.peak.tasks,
        peak_memory_bytes=outcome.peak.memory_bytes,
    )
    return result


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

    For tests and operator diagnostics only: the platform never calls it, and nothing a user
    sends reaches ``argv``. It exists so that the sandbox's containment can be shown with
    hostile Python (sockets, fork bombs, huge allocations), which a ``.pt2`` upload cannot carry.
    ``files`` maps host files to the read-only paths they get inside (under ``/job``). Raises
    :class:`SandboxUnavailable` when bubblewrap (or, as root, setpriv) is missing.
    """
    limits = limits or SandboxLimits()
    mounts = {os.path.realpath(host): inside for host, inside in (files or {}).items()}
    if any(not inside.startswith(f"{_JOB_DIR}/") for inside in mounts.values()):
        raise ValueError(f"files must appear under {_JOB_DIR}/ inside the sandbox")
    lines: list[str] = []
    kept = [0]

    def keep(line: str) -> None:
        if kept[0] < _MAX_LINE:
            lines.append(line)
            kept[0] += len(line)

    with _sandbox_prefix(mounts, limits) as (prefix, fds, identity):
        outcome = _supervise(
            [*prefix, *argv], stdin_text=stdin_text, limits=limits, on_stdout_line=keep,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, pass_fds=fds,
        )
    if outcome.stopped:
        code, message = _describe_stop(outcome.stopped, limits)
    elif outcome.returncode != 0:
        code, message = _describe_exit(outcome.returncode, limits, outcome.stderr_tail)
    else:
        code, message = "", ""
    return SandboxRun(outcome.returncode, code, message, "".join(lines), outcome.stderr_tail, outcome.wall_seconds,
                      outcome.peak, identity.uid if identity is not None else None)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the bubblewrap process group; the sandbox's PID namespace dies with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
