"""What a job's processes inherit from the worker: a fixed environment, and the evaluator's code.

Nothing of the worker's own environment (database or broker credentials) reaches a job: the
scorer, the model process and a plain child in the unsandboxed mode all start from
:func:`child_env` alone.
"""

from __future__ import annotations

from pathlib import Path

from evaluator.sandbox.limits import SandboxLimits


def project_root() -> Path:
    """The checkout holding the ``evaluator`` package, which the scorer runs from (PYTHONPATH)."""
    return Path(__file__).resolve().parents[2]


def child_env(limits: SandboxLimits, code_dir: str) -> dict[str, str]:
    """The whole environment of a job's processes: nothing inherited from the worker."""
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
