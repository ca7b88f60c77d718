"""The bubblewrap (and, as root, setpriv) command line a model process starts under.

Inside: no network, read-only views of the Python installation, the evaluator's code and the
job's files, a minimal /dev (plus the GPU's device files for a CUDA job), a private
size-limited /tmp, and the fixed environment of :mod:`evaluator.sandbox.environment`.

Who the program runs as matters as much as what it sees. A worker running as root starts
bubblewrap as root (so it can mount files only root may reach) and the sandboxed program is then
dropped, by ``setpriv``, to a uid of its own with no capabilities and ``no_new_privs``: the
kernel does not apply the process-count limit to root, so a fork bomb is only contained once the
child is not root. A worker running as an ordinary user runs bubblewrap in a user namespace
instead, and the limits apply to that user.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath

from evaluator.sandbox import availability
from evaluator.sandbox.availability import SandboxUnavailable, bubblewrap_path, check_sandbox_available, setpriv_path
from evaluator.sandbox.environment import child_env, project_root
from evaluator.sandbox.identity import (
    DEFAULT_IDENTITY,
    IdentityUnavailable,
    SandboxIdentity,
    claim_identity,
    wait_until_gone,
)
from evaluator.sandbox.limits import SandboxLimits

#: Where the evaluator package and the job's files appear inside the sandbox.
_CODE_DIR = "/opt/arena"
JOB_DIR = "/job"
#: The only capabilities bubblewrap keeps for the program it starts when run as root, so that
#: setpriv can switch to the job's uid and empty the bounding set; setpriv then drops them all.
_SETPRIV_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")


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


def bwrap_command(
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
    privileged = availability.runs_as_root()
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
    build.ro_bind(str(project_root() / "evaluator"), f"{_CODE_DIR}/evaluator")
    for host_path, inside in spec_paths.items():
        build.ro_bind(host_path, inside)
    for inside, fd in (copied or {}).items():
        build.ro_data(fd, inside)
    for node in devices:  # GPU jobs only (gpu_device_nodes)
        build.args += ["--dev-bind", node, node]
    for key, value in child_env(limits, _CODE_DIR).items():
        build.args += ["--setenv", key, value]
    if privileged:
        identity = identity or DEFAULT_IDENTITY
        build.args += [
            setpriv_path() or "/usr/bin/setpriv",
            f"--reuid={identity.uid}", f"--regid={identity.gid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
        ]
    return build.args


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
def sandbox_prefix(
    mounts: Mapping[str, str], limits: SandboxLimits, devices: Sequence[str] = (),
    identity: SandboxIdentity | None = None,
) -> Iterator[tuple[list[str], tuple[int, ...], SandboxIdentity | None]]:
    """The bubblewrap prefix for one run, the descriptors it needs and the uid it runs as; cleans up after.

    As root, a sandbox uid is claimed for the run and released only once no process of that uid
    is left, so the next job starts with a clean process count. A caller that already holds a
    uid (the worker claims one per evaluation job, see :func:`evaluator.sandbox.launch.run_sandboxed`)
    passes it as ``identity``; the caller then also waits for it to be empty.
    """
    check_sandbox_available()
    privileged = availability.runs_as_root()
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
        yield bwrap_command(binds, limits, identity, fds, devices), tuple(fds.values()), identity
