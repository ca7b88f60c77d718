"""Hostile code inside the sandbox: every attempt ends with a failure code and a sentence, the host is unharmed.

A ``.pt2`` upload can only carry ATen operators, so "a model that opens a socket" or "a model that
forks" really means code that escaped the loader. These tests therefore run hostile Python through
``run_program_sandboxed``, which uses the very bubblewrap command, uid, limits and watchdog that
evaluations get, and end with a real evaluation to show the sandbox keeps serving.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from evaluator.sandbox import SandboxLimits, bubblewrap_path, run_sandboxed
from evaluator.sandbox.environment import project_root
from evaluator.sandbox.identity import processes_of
from evaluator.spec import ArtifactSpec, EvaluationSetSpec, InputSpec, JobSpec
from tests.sandboxed_programs import SandboxRun, run_program_sandboxed

pytestmark = pytest.mark.skipif(bubblewrap_path() is None, reason="bubblewrap is not installed")

MiB = 1024**2


def run_python(code: str, limits: SandboxLimits | None = None, **kwargs) -> SandboxRun:
    """Run ``code`` with the sandbox's own Python, exactly as an evaluation would be run."""
    return run_program_sandboxed([sys.executable, "-c", code], limits=limits or SandboxLimits(wall_seconds=60),
                                 **kwargs)


def assert_failed(run: SandboxRun, code: str) -> None:
    assert run.error_code == code, (run.error_code, run.message, run.stderr_tail[-500:])
    assert len(run.message) > 30 and run.message.endswith("."), run.message  # a sentence, not a code


def host_process_count() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def assert_nothing_left(run: SandboxRun) -> None:
    """No process of the job's sandbox uid outlives the job (the uid is then free for the next job)."""
    if run.uid is not None:
        assert not processes_of(run.uid), run.uid


def test_a_socket_to_the_host_cannot_be_opened():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the host itself can connect
    server.accept()[0].close()
    code = f"""
import socket
socket.create_connection(("127.0.0.1", {port}), timeout=3)
print("connected")
"""
    try:
        run = run_python(code)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing is waiting in the listen queue
            server.accept()
    finally:
        server.close()
    assert "connected" not in run.stdout
    assert_failed(run, "crashed")
    assert "ConnectionRefusedError" in run.message or "Network is unreachable" in run.message, run.message


def test_no_secret_reaches_the_sandbox(monkeypatch):
    secrets = {"DATABASE_URL": "postgres://arena:hunter2@db/arena", "SECRET_KEY": "django-insecure-hunter2",
               "CELERY_BROKER_URL": "redis://:hunter2@broker:6379/0"}
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    project = project_root()
    code = f"""
import json, os
found = {{"env": dict(os.environ), "proc_environ": []}}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            found["proc_environ"].append(open(f"/proc/{{pid}}/environ", "rb").read().decode(errors="replace"))
        except OSError:
            pass
found["files"] = {{path: os.path.exists(path) for path in
                  ("/etc/passwd", "/etc/shadow", "/etc/hosts", "/root/.ssh", "/home", "{project}/var")}}
try:
    found["passwd"] = open("/etc/passwd").read()
except OSError as exc:
    found["passwd"] = type(exc).__name__
print(json.dumps(found))
"""
    run = run_python(code)
    assert run.ok, run.stderr_tail
    report = json.loads(run.stdout.strip().splitlines()[-1])
    seen = json.dumps(report)
    for key, value in secrets.items():
        assert key not in report["env"] and value not in seen, key
    assert not any(report["files"].values()), report["files"]
    assert report["passwd"] == "FileNotFoundError"


def test_fork_bomb_is_stopped_quickly_and_the_host_recovers():
    before = host_process_count()
    started = time.monotonic()
    run = run_python("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    elapsed = time.monotonic() - started
    assert_failed(run, "too_many_processes")
    assert elapsed < 30, elapsed
    # The kernel capped the bomb at the process limit (it would be unlimited for root).
    assert run.peak.tasks <= SandboxLimits().max_processes + 4, run.peak
    assert_nothing_left(run)
    # The machine is shared with other jobs: wait a little for their noise to settle, if need be.
    deadline = time.monotonic() + 10
    while host_process_count() > before + 25 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert host_process_count() <= before + 25
    assert run_python("print('still serving')").stdout.strip() == "still serving"


@pytest.mark.parametrize(
    ("label", "code", "limits"),
    [
        ("torch far beyond the limit", "import torch\ntorch.empty(64 * 1024**3, dtype=torch.uint8)\n",
         SandboxLimits(wall_seconds=60)),
        ("growing step by step", "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 1024**2))\n",
         SandboxLimits(wall_seconds=60, memory_bytes=512 * MiB)),
        ("spread over forked children",
         "import os, time\nfor _ in range(4):\n    if os.fork() == 0:\n        break\n"
         "block = bytearray(300 * 1024**2)\ntime.sleep(60)\n",
         SandboxLimits(wall_seconds=60, memory_bytes=512 * MiB)),
    ],
)
def test_memory_beyond_the_limit_ends_as_out_of_memory(label, code, limits):
    run = run_python(code, limits)
    assert_failed(run, "out_of_memory")
    assert run.wall_seconds < 30, label
    assert_nothing_left(run)


def test_sleeping_forever_hits_the_wall_clock_limit():
    run = run_python("import time\ntime.sleep(3600)\n", SandboxLimits(wall_seconds=1.5))
    assert_failed(run, "timeout")
    assert run.wall_seconds < 15
    assert_nothing_left(run)


def test_spinning_stops_at_the_cpu_time_limit():
    run = run_python("while True:\n    pass\n", SandboxLimits(wall_seconds=60, cpu_seconds=1))
    assert_failed(run, "cpu_time_exceeded")


def test_a_huge_file_stops_at_the_file_size_limit():
    code = "block = b'x' * 2**20\nwith open('/tmp/huge', 'wb') as f:\n    while True:\n        f.write(block)\n"
    assert_failed(run_python(code, SandboxLimits(wall_seconds=60, max_file_bytes=32 * MiB)), "file_size_exceeded")


def test_many_files_stop_at_the_private_tmp_size():
    code = "i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(b'x' * 2**24)\n    i += 1\n"
    assert_failed(run_python(code, SandboxLimits(wall_seconds=60, tmp_bytes=64 * MiB)), "disk_full")


def write_zip_bomb(base: Path, out: Path, unpacked_gib: int = 3) -> Path:
    """Copy the ``.pt2`` archive ``base`` and add a member that inflates to ``unpacked_gib`` GiB of zeros.

    The member is real deflate data with a correct CRC (a loader without a guard would truly
    inflate it), built without ever holding the zeros: after a full flush, deflate emits the same
    bytes for every further MiB of zeros, so one compressed MiB is repeated. About 1 MB per GiB.
    """
    entries: list[tuple[str, int, int, int, int, list[bytes]]] = []
    with zipfile.ZipFile(base) as archive:
        prefix = archive.namelist()[0].split("/")[0]
        for info in archive.infolist():
            data = archive.read(info)
            entries.append((info.filename, zipfile.ZIP_STORED, zlib.crc32(data), len(data), len(data), [data]))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush()
    blocks = unpacked_gib * 1024
    crc, zeros = 0, bytes(MiB)
    for _ in range(blocks):
        crc = zlib.crc32(zeros, crc)
    entries.append((f"{prefix}/extra/zeros", zipfile.ZIP_DEFLATED, crc, len(block) * blocks + len(tail),
                    blocks * MiB, [block] * blocks + [tail]))
    directory = b""
    with out.open("wb") as handle:
        for name, method, crc, packed, size, chunks in entries:
            raw, offset = name.encode(), handle.tell()
            handle.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, packed, size,
                                     len(raw), 0) + raw)
            for chunk in chunks:
                handle.write(chunk)
            directory += struct.pack("<I6H3I5H2I", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, packed, size,
                                     len(raw), 0, 0, 0, 0, 0, offset) + raw
        start = handle.tell()
        handle.write(directory)
        handle.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(directory), start, 0))
    return out


def export_linear(path: Path) -> Path:
    """A small, honest digits classifier, exported the way a researcher would."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    program = torch.export.export(model, (torch.rand(2, 1, 28, 28),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(path))
    return path


def digits_job(tmp_path: Path, artifact: Path) -> JobSpec:
    """A classifier job on 64 random digit-sized images (written private, 0600, like the hidden sets)."""
    from evaluator.data.evalsets import write_evaluation_set

    rng = np.random.default_rng(0)
    data = tmp_path / "hidden.safetensors"
    if not data.exists():
        write_evaluation_set(data, rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8),
                             rng.integers(0, 10, 64).astype(np.int64), {})
    evaluation_set = EvaluationSetSpec("hidden", str(data))
    return JobSpec("hostile", "classifier", InputSpec(1, 28, 28), ArtifactSpec(str(artifact), "pt2"),
                   (evaluation_set,), batch_size=32, reliability_points=0)


def test_zip_bomb_fails_the_evaluation_and_a_good_model_runs_after(tmp_path):
    good = export_linear(tmp_path / "good.pt2")
    bomb = write_zip_bomb(good, tmp_path / "bomb.pt2")
    assert bomb.stat().st_size < 8 * MiB
    with zipfile.ZipFile(bomb) as archive:
        assert sum(info.file_size for info in archive.infolist()) > 3 * 1024**3

    failed = run_sandboxed(digits_job(tmp_path, bomb), limits=SandboxLimits(wall_seconds=120))
    assert not failed.ok and failed.error_code == "corrupt_artifact", (failed.error_code, failed.error)
    assert "decompression bomb" in failed.error

    # After every hostile job above, an honest evaluation still runs (the hidden set, written
    # 0600 by its owner, reaches the unprivileged sandbox user as a read-only copy).
    assert (tmp_path / "hidden.safetensors").stat().st_mode & 0o077 == 0
    result = run_sandboxed(digits_job(tmp_path, good), limits=SandboxLimits(wall_seconds=120))
    assert result.ok, (result.error_code, result.error)
    assert result.provenance["sandbox"] == "bubblewrap" and result.provenance["peak_tasks"] >= 1
