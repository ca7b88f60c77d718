"""Why a child ended without a result: a failure code and a sentence a researcher can act on.

A child the parent stopped (timeout, fork bomb, memory, cancellation) is described from the
reason the parent recorded; one that ended by itself from its exit status and signal, and from
fixed signs in its stderr (out of memory, file too large, ...). For the model process, which is
untrusted, those signs only select among fixed sentences (:func:`describe_model_exit`).
"""

from __future__ import annotations

import signal

from evaluator.sandbox.limits import SandboxLimits

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


def describe_stop(reason: str, limits: SandboxLimits) -> tuple[str, str]:
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


def describe_exit(
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
    code, message = describe_exit(returncode, SandboxLimits(), stderr_tail, sandboxed)
    if code == "crashed":
        return "model_crashed", f"The model process ended unexpectedly (exit status {returncode})."
    if code == "killed":
        return "killed", "The model process was killed (most often: it exceeded the memory limit)."
    return code, message.replace("The evaluation", "The model")
