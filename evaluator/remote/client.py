"""The scorer's handle on the model process, and the model as the scorer's code sees it.

:class:`ModelProcess` starts the server, ``python -m evaluator.remote`` (under bubblewrap with only
the artifact mounted, or as a plain child where the operator allowed no sandbox), and bounds
every request by a deadline derived from the track's time budget, so a model that hangs is
refused in seconds rather than at the job's wall clock. :class:`RemoteModel` is an
``nn.Module`` whose forward pass crosses the boundary and whose backward pass asks the model
process for the vector-Jacobian product, so every attack keeps working unchanged.

What comes back is checked before it is used: a float32 tensor of the size that was asked for,
or a failure whose code is one a model may cause. Text the model process sends is shown to
the researcher only while no hidden image has crossed the boundary (loading and the contract
probe on public random images); afterwards only the exception's type is kept.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from evaluator.deadline import JobDeadline, OutOfTime
from evaluator.errors import EvaluationError
from evaluator.remote.wire import Deadline, DeadlineChannel, PeerGone, WireError, tensor_bytes, tensor_from
from evaluator.sandbox.availability import bubblewrap_path
from evaluator.sandbox.bubblewrap import JOB_DIR, gpu_device_nodes, sandbox_prefix
from evaluator.sandbox.environment import child_env, project_root
from evaluator.sandbox.exit_reasons import describe_model_exit
from evaluator.sandbox.identity import SandboxIdentity
from evaluator.sandbox.limits import SandboxLimits
from evaluator.spec import InputSpec

#: Failure codes the model process may report for its model; anything else it sends becomes
#: ``model_error`` (a model cannot claim a platform fault and have its quota refunded).
MODEL_CODES = frozenset({
    "wrong_dtype", "model_error", "out_of_memory", "wrong_input_shape", "wrong_output_shape", "corrupt_artifact",
    "unsafe_format", "format_mismatch", "unknown_architecture", "weights_mismatch", "model_too_large",
    "non_finite_output",
})
#: No request is refused before this many seconds (process start-up, lazy initialisation, a busy host).
MIN_DEADLINE_S = 10.0
#: A batch may take this many times its share of the track's time budget before it is refused.
DEADLINE_SLACK = 4.0
#: A backward pass is allowed this many forward passes' time.
BACKWARD_FACTOR = 3.0
#: Seconds allowed for loading the artifact (the loader itself bounds what it reads).
LOAD_SECONDS = 300.0
#: Share of forward calls on hidden data in which one image is re-evaluated alone and compared.
SPOT_CHECK_RATE = 0.1
_PRINTABLE = re.compile(r"[^\x20-\x7e]")
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}")

Sandbox = Literal["bubblewrap", "process"]


def sanitize(text: Any, limit: int = 600) -> str:
    """Printable ASCII on one line, at most ``limit`` characters (pages escape it like any other text)."""
    flat = _PRINTABLE.sub("?", " ".join(str(text).split()))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class ModelRaised(Exception):
    """The model's own code raised; ``type_name`` is its exception's class name, ``detail`` its text."""

    def __init__(self, type_name: str, detail: str) -> None:
        super().__init__(detail)
        self.type_name = type_name
        self.detail = detail


def model_server_command() -> list[str]:
    """The model process's command line: this Python running ``python -m evaluator.remote`` (the server).

    The model process runs on the scorer's own interpreter and installation (read-only inside
    the sandbox), so the artifact is loaded by exactly the torch the scorer checks it against.
    """
    return [sys.executable, "-m", "evaluator.remote"]


@dataclass(frozen=True)
class HostOptions:
    """How the model process is started."""

    sandbox: Sandbox = "bubblewrap"
    limits: Any = None  # evaluator.sandbox.limits.SandboxLimits (imported lazily: no cycle)
    spot_check_rate: float = SPOT_CHECK_RATE
    #: The sandbox uid the worker claimed for this job (a root worker); None: claim one here.
    uid: int | None = None

    @classmethod
    def default(cls) -> HostOptions:
        """bubblewrap where it is installed, else a plain child process (tests, benchmarks, ``check``)."""
        return cls("bubblewrap" if bubblewrap_path() else "process")


class StderrTail:
    """Reads a sandboxed child's stderr so it never blocks; keeps a bounded tail for the operator only."""

    def __init__(self, stream: Any) -> None:
        self.tail: list[str] = []
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(stream,), daemon=True).start()

    def _run(self, stream: Any) -> None:
        try:
            for raw in iter(lambda: stream.readline(64 * 1024), b""):
                self.tail.append(raw.decode("utf-8", "replace"))
                del self.tail[:-20]
        except (ValueError, OSError):
            # stop_child closed the pipe under a read in progress (the child is dead; CPython then raises
            # ValueError from the closed buffer): the tail read so far is all there is.
            pass
        finally:
            self.done.set()

    def text(self) -> str:
        return "".join(self.tail)


def stop_child(proc: subprocess.Popen[bytes]) -> None:
    """Kill a child's whole process group at once and close its pipes: it holds nothing worth a graceful exit
    (a model process's torch teardown alone costs a third of a second)."""
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


@contextmanager
def sandboxed_child(command: Callable[[str], list[str]], host_path: str, inside: str, options: HostOptions,
                    devices: Sequence[str] = ()) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A child process that sees one job file or folder of the host, with pipes on stdin, stdout and stderr.

    Under bubblewrap ``host_path`` is mounted read-only at ``inside`` and is the only job file the child
    sees; otherwise (the operator allowed it, or tests) the child is a plain process with a scrubbed
    environment and sees the host's path. ``command(path_seen)`` builds the command line from the path as
    the child sees it. Yields the process and that path; the child's group is killed on leaving.
    """
    limits = options.limits or SandboxLimits()
    with ExitStack() as stack:
        if options.sandbox == "bubblewrap":
            given = SandboxIdentity(options.uid) if options.uid is not None else None
            prefix, fds, _identity = stack.enter_context(sandbox_prefix(
                {os.path.realpath(host_path): inside}, limits, devices, given))
            seen, env, cwd = inside, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, None
            argv = [*prefix, *command(seen)]
        else:
            seen, fds = host_path, ()
            cwd = tempfile.mkdtemp(prefix="arena-child-")
            stack.callback(shutil.rmtree, cwd, True)
            env = child_env(limits, str(project_root()))
            env["HOME"] = cwd
            argv = command(seen)
        proc = subprocess.Popen(  # noqa: S603 - a fixed program; the submission is data to it
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
            pass_fds=tuple(fds), start_new_session=True,
        )
        stack.callback(stop_child, proc)
        yield proc, seen


class ModelProcess:
    """One running model process and the channel to it."""

    def __init__(self, proc: subprocess.Popen[bytes], mode: str) -> None:
        self.proc = proc
        self.mode = mode
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.channel = DeadlineChannel(proc.stdin.fileno(), proc.stdout.fileno())
        self.stderr = StderrTail(proc.stderr)
        self.dead = False

    @classmethod
    @contextmanager
    def start(cls, artifact_path: str, device: str, options: HostOptions) -> Iterator[tuple[ModelProcess, str]]:
        """Start the model process; yields it and the artifact's path as the process sees it."""
        with sandboxed_child(lambda _seen: model_server_command(), artifact_path, f"{JOB_DIR}/artifact", options,
                             gpu_device_nodes(device)) as (proc, inside):
            process = cls(proc, options.sandbox)
            try:
                yield process, inside
            finally:
                process.dead = True

    def request(self, header: dict[str, Any], payload: memoryview | bytes, *, max_payload: int,
                seconds: float) -> tuple[dict[str, Any], bytearray]:
        """One round trip; raises Deadline, or PeerGone/WireError (the process is then stopped)."""
        if self.dead:
            raise PeerGone("the model process has ended")
        deadline = time.monotonic() + seconds
        try:
            self.channel.send(header, payload, deadline)
            return self.channel.receive(max_payload, deadline)
        except (Deadline, PeerGone, WireError):
            self.kill()
            raise

    def kill(self) -> None:
        self.dead = True
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass

    def exit_failure(self) -> EvaluationError:
        """Why the process ended, from its exit status only (its own words are not repeated to anyone)."""
        try:
            returncode = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = self.proc.wait(timeout=10)
        code, message = describe_model_exit(returncode, self.stderr.text(), self.mode == "bubblewrap")
        return EvaluationError(code, message)


class _RemoteForward(torch.autograd.Function):
    """Forward across the boundary; backward asks the model process for the vector-Jacobian product."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, remote: RemoteModel) -> Tensor:  # type: ignore[override]
        keep = bool(ctx.needs_input_grad[0])
        out, handle = remote.call_forward(x, keep)
        ctx.remote, ctx.handle = remote, handle
        if keep:
            ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return ctx.remote.call_backward(ctx.handle, x, grad_out), None


class RemoteModel(nn.Module):
    """The submitted model as attacks and metrics see it: a function of CPU float32 batches.

    ``hidden`` is set by the scorer before the first hidden image is sent; from then on the
    model process's own text is never kept. ``strict`` is set once the contract check passed:
    from then on every output must have exactly the contract's shape.
    """

    def __init__(self, process: ModelProcess, input_spec: InputSpec, task: str, num_classes: int,
                 time_budget_s: float, batch_size: int, spot_check_rate: float = SPOT_CHECK_RATE,
                 tolerance: float = 1e-4) -> None:
        super().__init__()
        self.process = process
        self.input_spec, self.task, self.num_classes = input_spec, task, num_classes
        self.time_budget_s, self.batch_size = float(time_budget_s), max(int(batch_size), 1)
        self.hidden = False
        self.strict = False
        self.spot_check_rate = spot_check_rate
        self.tolerance = tolerance
        self._ids = itertools.count(1)
        self._random = random.SystemRandom()
        self.calls = 0
        self.spot_checks = 0
        #: The job's own deadline (set once the budget is known): checked before every call.
        self.deadline: JobDeadline | None = None
        #: Seconds spent waiting for the model's answers (round trips included): what its own speed cost.
        self.model_seconds = 0.0

    # ------------------------------------------------------------------ policy

    def seconds_for(self, images: int, backward: bool = False) -> float:
        share = self.time_budget_s * max(images, 1) / self.batch_size * DEADLINE_SLACK
        return max(MIN_DEADLINE_S, share * (BACKWARD_FACTOR if backward else 1.0))

    def _out_width(self) -> int:
        return self.num_classes if self.task == "classifier" else 1

    def _check_shape(self, shape: Sequence[int], images: int) -> None:
        if self.task == "classifier":
            ok = tuple(shape) == (images, self.num_classes)
            expected = f"({images}, {self.num_classes})"
        else:
            ok = tuple(shape) in ((images,), (images, 1))
            expected = f"({images},) or ({images}, 1)"
        if self.strict and not ok:
            raise EvaluationError(
                "wrong_output_shape",
                f"On a batch of {images} evaluation images the model returned shape {tuple(shape)}; "
                f"expected {expected}.",
            )

    # ------------------------------------------------------------------ transport

    def _fail(self, header: dict[str, Any], images: int) -> EvaluationError | ModelRaised:
        code = str(header.get("code", ""))
        if code not in MODEL_CODES:
            code = "model_error"
        type_name = str(header.get("type", ""))
        type_name = type_name if _TYPE_NAME.fullmatch(type_name) else "an exception"
        if self.hidden:
            if code == "model_error":
                return ModelRaised(type_name, f"The model raised {type_name} on a batch of {images} evaluation images.")
            return EvaluationError(code, f"The model failed on a batch of {images} evaluation images ({code}).")
        if code == "model_error":
            return ModelRaised(type_name, sanitize(header.get("message", ""), 300))
        return EvaluationError(code, sanitize(header.get("message", "")))

    def _lost(self, exc: Exception, images: int, seconds: float) -> EvaluationError:
        if isinstance(exc, Deadline):
            return EvaluationError(
                "too_slow",
                f"The model did not answer a batch of {images} images within {seconds:.0f} s (the track allows "
                f"{self.time_budget_s:g} s per batch of {self.batch_size}); it was stopped.",
            )
        if isinstance(exc, WireError):
            return EvaluationError("model_error", "The model process broke the evaluation protocol and was stopped.")
        return self.process.exit_failure()

    def _round_trip(self, header: dict[str, Any], payload: memoryview | bytes, images: int, backward: bool,
                    max_payload: int) -> tuple[dict[str, Any], bytearray]:
        seconds = self.seconds_for(images, backward)
        allowed = seconds
        if self.deadline is not None:
            # A call may not outlast the job's own deadline: running into it is the job running out of time,
            # not the model being slow (its own per-batch deadline is the longer one then).
            self.deadline.check()
            allowed = min(seconds, max(self.deadline.remaining(), 0.5))
        started = time.perf_counter()
        try:
            return self.process.request(header, payload, max_payload=max_payload, seconds=allowed)
        except Deadline as exc:
            if allowed < seconds:
                raise OutOfTime(f"the job's time budget of {self.deadline.seconds:.0f} s ran out") from None
            raise self._lost(exc, images, seconds) from None
        except (PeerGone, WireError) as exc:
            raise self._lost(exc, images, seconds) from None
        finally:
            self.model_seconds += time.perf_counter() - started

    def _tensor(self, header: dict[str, Any], payload: bytearray, images: int) -> Tensor:
        shape = header.get("shape")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape) and len(shape) <= 8):
            raise EvaluationError("model_error", "The model process broke the evaluation protocol and was stopped.")
        try:
            out = tensor_from(payload, shape)
        except WireError:
            self.process.kill()
            raise EvaluationError(
                "model_error", "The model process broke the evaluation protocol and was stopped."
            ) from None
        self._check_shape(shape, images)
        return out

    def call_forward(self, x: Tensor, keep: bool) -> tuple[Tensor, int]:
        images = int(x.shape[0])
        handle = next(self._ids)
        header = {"op": "forward", "id": handle, "keep": keep, "shape": list(x.shape)}
        answer, payload = self._round_trip(header, tensor_bytes(x), images, False,
                                           max_payload=8 * images * max(self._out_width(), 1) + 64)
        if not answer.get("ok"):
            raise self._fail(answer, images)
        out = self._tensor(answer, payload, images)
        self.calls += 1
        if self.hidden and images > 1 and self._random.random() < self.spot_check_rate:
            self._spot_check(x, out)
        return out, handle

    def call_backward(self, handle: int, x: Tensor, grad_out: Tensor) -> Tensor:
        images = int(x.shape[0])
        limit = 4 * x.numel() + 64
        answer, payload = self._round_trip({"op": "backward", "id": handle, "shape": list(grad_out.shape)},
                                           tensor_bytes(grad_out), images, True, max_payload=limit)
        if not answer.get("ok") and answer.get("code") == "unknown_handle":
            both = tensor_bytes(x).tobytes() + tensor_bytes(grad_out).tobytes()
            answer, payload = self._round_trip({"op": "vjp", "shape": list(x.shape)}, both, images, True,
                                               max_payload=limit)
        if not answer.get("ok"):
            raise self._fail(answer, images)
        if answer.get("shape") != list(x.shape):
            raise EvaluationError("model_error", "The model process broke the evaluation protocol and was stopped.")
        return tensor_from(payload, x.shape).to(grad_out.dtype)

    def _spot_check(self, x: Tensor, out: Tensor) -> None:
        """One image of this batch again, alone: a batch-dependent model cannot know which call is checked."""
        index = self._random.randrange(int(x.shape[0]))
        alone, _ = self.call_forward_plain(x[index : index + 1])
        self.spot_checks += 1
        a, b = out[index].double().reshape(-1), alone.double().reshape(-1)
        scale = max(float(a.abs().max()), float(b.abs().max()), 1.0)
        if float((a - b).abs().max()) > self.tolerance * scale:
            raise EvaluationError(
                "batch_dependent",
                "The model's output for an image changed with the other images in its batch. Evaluation needs "
                "each image's output to depend on that image alone (no batch statistics, eval mode).",
            )

    def call_forward_plain(self, x: Tensor) -> tuple[Tensor, int]:
        """A forward pass without spot checks (the spot check's own request)."""
        rate, self.spot_check_rate = self.spot_check_rate, 0.0
        try:
            with torch.inference_mode():
                return self.call_forward(x.detach(), False)
        finally:
            self.spot_check_rate = rate

    def plan(self, requested: int, backward: bool, value_range: tuple[float, float]) -> dict[str, Any]:
        """The batch size that fits the model's GPU, measured there; it can only lower ``requested``."""
        answer, _ = self._round_trip({"op": "plan", "requested": int(requested), "backward": bool(backward),
                                      "value_range": list(value_range)}, b"", 8, True, max_payload=0)
        choice = answer.get("choice") if answer.get("ok") else None
        if not isinstance(choice, dict):
            return {"batch_size": requested, "requested": requested, "reason": "trial_failed"}
        size = choice.get("batch_size")
        chosen = min(int(size), requested) if isinstance(size, int) and size >= 1 else requested
        reason = choice.get("reason") if choice.get("reason") in ("cpu", "fits", "memory", "trial_failed") else "fits"
        kept = {k: float(v) for k, v in choice.items()
                if k in ("free_bytes", "bytes_per_image", "fixed_bytes") and isinstance(v, int | float)}
        return {"batch_size": chosen, "requested": requested, "reason": reason, **kept}

    def gpu_memory(self) -> dict[str, int]:
        """The model process's peak GPU memory (``peak_allocated_bytes``, ``peak_reserved_bytes``); {} on the CPU.

        For the provenance only: the numbers come from the process that runs the submission, so
        they describe the run and decide nothing. Whatever is not a non-negative integer is dropped,
        and a process that no longer answers gives {}: it is asked once the scores are computed,
        which a missing provenance field must not undo.
        """
        try:
            answer, _ = self._round_trip({"op": "memory"}, b"", 1, False, max_payload=0)
        except EvaluationError:
            return {}
        if not answer.get("ok"):
            return {}
        return {key: value for key in ("peak_allocated_bytes", "peak_reserved_bytes")
                if isinstance(value := answer.get(key), int) and not isinstance(value, bool) and value >= 0}

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32:
            x = x.to(device="cpu", dtype=torch.float32)
        return _RemoteForward.apply(x, self)


@dataclass(frozen=True)
class HostedModel:
    """What :func:`host_model` gives: the model, where it runs, and how it was sandboxed."""

    model: RemoteModel
    device: str
    hardware: dict[str, Any]
    sandbox: str


_HARDWARE_KEYS = ("device", "machine", "processor", "cpu_count", "python", "torch", "evaluator",
                  "stdlib_platform_module", "gpu")


def _clean_hardware(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    clean: dict[str, Any] = {}
    for key in _HARDWARE_KEYS:
        value = raw.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            clean[key] = value
        elif isinstance(value, str):
            clean[key] = sanitize(value, 120)
    return clean


@contextmanager
def host_model(artifact: Any, input_spec: InputSpec, *, task: str, num_classes: int, device: str,
               time_budget_s: float, batch_size: int, mixed_precision: bool = False,
               options: HostOptions | None = None, threads: int | None = None) -> Iterator[HostedModel]:
    """Start the model process, load ``artifact`` there and yield the model as a :class:`RemoteModel`."""
    from dataclasses import asdict

    options = options or HostOptions.default()
    if not os.path.isfile(artifact.path):
        # The platform lost the file: not the submitter's fault.
        raise EvaluationError("internal", "The stored model file is missing; please contact the organisers.")
    with ModelProcess.start(artifact.path, device, options) as (process, inside):
        remote = RemoteModel(process, input_spec, task, num_classes, time_budget_s, batch_size,
                             options.spot_check_rate)
        hello = {"op": "hello", "device": device, "mixed_precision": mixed_precision,
                 "threads": threads or (options.limits.threads if options.limits else os.cpu_count() or 1)}
        try:
            answer, _ = process.request(hello, b"", max_payload=0, seconds=LOAD_SECONDS)
        except (Deadline, PeerGone, WireError) as exc:
            raise EvaluationError(
                "internal", f"The model process could not be started ({type(exc).__name__})."
            ) from None
        if not answer.get("ok"):
            # Nothing of the artifact has been read yet: this is the platform's own answer (a missing GPU).
            raise EvaluationError("internal", sanitize(answer.get("message", "The model process failed to start.")))
        used_device = sanitize(answer.get("device", device), 40)
        hardware = _clean_hardware(answer.get("hardware"))
        load = {"op": "load", "artifact": {**asdict(artifact), "path": inside}, "input": asdict(input_spec)}
        try:
            answer, _ = process.request(load, b"", max_payload=0, seconds=LOAD_SECONDS)
        except Deadline:
            raise EvaluationError("too_slow", f"The model did not load within {LOAD_SECONDS:.0f} s.") from None
        except (PeerGone, WireError):
            raise process.exit_failure() from None
        if not answer.get("ok"):
            code = str(answer.get("code", ""))
            raise EvaluationError(code if code in MODEL_CODES else "corrupt_artifact",
                                  sanitize(answer.get("message", "The model could not be loaded.")))
        yield HostedModel(remote, used_device, hardware, options.sandbox)
