"""The model process: loads one submitted artifact and answers requests for outputs and gradients.

Run as ``python -m evaluator.remote`` (:mod:`evaluator.remote.__main__`, which lowers the session's CPU
priority before this module and torch are imported) inside the sandbox, where the only job file it can
see is the artifact. It reads frames on stdin and answers on a private duplicate of stdout
(stdout itself is pointed at stderr first, so anything printed cannot pass for a frame). It is
told nothing about the job beyond the input shape, the task and the device: no labels, no
evaluation sets, no seed, no generator. It never decides anything about a score; the scorer
checks every frame it sends back.

Requests (header ``op``):

* ``hello``: resolve the device (before any byte of the artifact is read, so its answer is
  the platform's own);
* ``load``: load the artifact and put it in eval mode;
* ``forward``: outputs for a float32 batch; with ``keep`` the autograd graph is kept under the
  request's ``id`` for one later ``backward``;
* ``backward``: the input gradient of a kept forward for a given output gradient;
* ``vjp``: forward and backward in one request (when a kept graph was evicted);
* ``plan``: the batch size that fits the device (:func:`evaluator.devices.choose_batch_size`);
* ``memory``: the peak GPU memory this process has held (nothing on the CPU), for the provenance.
"""

from __future__ import annotations

import io
import os
import sys
from collections import OrderedDict
from typing import Any

import torch

from evaluator.devices import choose_batch_size, precision, resolve_device, set_float32_precision
from evaluator.errors import EvaluationError
from evaluator.hardware import hardware_description
from evaluator.models.contract import set_eval_mode
from evaluator.models.loading import load_model
from evaluator.remote.wire import PeerGone, read_frame, tensor_bytes, tensor_from, widen_pipe, write_frame
from evaluator.spec import ArtifactSpec, InputSpec

#: Kept autograd graphs (the attacks keep at most one or two at a time).
MAX_KEPT_GRAPHS = 4
#: Largest request payload accepted (a batch of images).
MAX_REQUEST_BYTES = 8 << 30


def _failure(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message[:600]}


def _exception_failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, EvaluationError):
        return _failure(exc.code, exc.message)
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return _failure("out_of_memory", "The model ran out of memory.")
    detail = " ".join(str(exc).split())[:300]
    return {"ok": False, "code": "model_error", "type": type(exc).__name__[:64], "message": detail}


class ModelServer:
    """The state of one model process: the loaded model, its device and its kept graphs."""

    def __init__(self) -> None:
        self.model: Any = None
        self.device: Any = None
        self.input_shape: tuple[int, int, int] | None = None
        self.mixed = False
        self.kept: OrderedDict[int, tuple[Any, Any]] = OrderedDict()

    def handle(self, header: dict[str, Any], payload: bytearray) -> tuple[dict[str, Any], memoryview | bytes]:
        op = header.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) and op.isidentifier() else None
        if handler is None:
            return _failure("internal", f"unknown request {op!r}"), b""
        try:
            return handler(header, payload)
        except Exception as exc:  # the model's own failure: reported, never fatal
            self.kept.clear()
            return _exception_failure(exc), b""

    def op_hello(self, header: dict[str, Any], payload: bytearray) -> tuple[dict[str, Any], bytes]:
        torch.set_num_threads(max(1, int(header.get("threads") or torch.get_num_threads())))
        self.device = torch.device(resolve_device(str(header.get("device", "cpu"))))
        self.mixed = bool(header.get("mixed_precision")) and self.device.type == "cuda"
        set_float32_precision(self.mixed)
        return {"ok": True, "device": str(self.device), "hardware": hardware_description(str(self.device))}, b""

    def op_load(self, header: dict[str, Any], payload: bytearray) -> tuple[dict[str, Any], bytes]:
        artifact = ArtifactSpec(**header["artifact"])
        raw_input = dict(header["input"])
        raw_input["value_range"] = tuple(raw_input.get("value_range", (0.0, 1.0)))
        input_spec = InputSpec(**raw_input)
        model = load_model(artifact, input_spec)
        set_eval_mode(model)
        self.model = model.to(self.device)
        self.input_shape = input_spec.shape
        return {"ok": True}, b""

    def _batch(self, header: dict[str, Any], payload: bytearray) -> Any:
        shape = [int(d) for d in header["shape"]]
        if self.model is None or len(shape) != 4 or tuple(shape[1:]) != self.input_shape:
            raise ValueError(f"unexpected batch shape {shape}")
        return tensor_from(payload, shape).to(self.device)

    def _run(self, x: Any) -> Any:
        with precision(self.mixed, self.device):
            out = self.model(x)
        if not isinstance(out, torch.Tensor):
            raise EvaluationError(
                "wrong_dtype", f"The model returned a {type(out).__name__}; it must return one floating-point tensor."
            )
        if not out.is_floating_point():
            raise EvaluationError(
                "wrong_dtype", f"The model returned a {out.dtype} tensor; scores must be floating point (logits)."
            )
        return out

    def _answer(self, out: Any) -> tuple[dict[str, Any], memoryview]:
        return {"ok": True, "shape": list(out.shape)}, tensor_bytes(out)

    def op_forward(self, header: dict[str, Any], payload: bytearray) -> tuple[dict[str, Any], memoryview]:
        x = self._batch(header, payload)
        if not header.get("keep"):
            with torch.inference_mode():
                return self._answer(self._run(x))
        x.requires_grad_(True)
        with torch.enable_grad():
            out = self._run(x)
        self.kept[int(header["id"])] = (x, out)
        while len(self.kept) > MAX_KEPT_GRAPHS:
            self.kept.popitem(last=False)
        return self._answer(out)

    def _gradient(self, x: Any, out: Any, payload: bytearray) -> tuple[dict[str, Any], memoryview]:
        grad_out = tensor_from(payload, list(out.shape)).to(device=self.device, dtype=out.dtype)
        grad = None
        if out.requires_grad:
            (grad,) = torch.autograd.grad(out, [x], grad_out, allow_unused=True)
        return self._answer(torch.zeros_like(x) if grad is None else grad)

    def op_backward(self, header: dict[str, Any], payload: bytearray) -> tuple[dict[str, Any], memoryview | bytes]:
        kept = self.kept.pop(int(header["id"]), None)
        if kept is None:
            return _failure("unknown_handle", "that forward pass is no longer kept"), b""
        return self._gradient(*kept, payload)

    def op_vjp(self, header: dict[str, Any], payload: bytearray) -> tuple[dict[str, Any], memoryview]:
        split = 4
        for dim in header["shape"]:
            split *= int(dim)
        x = self._batch(header, payload[:split]).requires_grad_(True)
        with torch.enable_grad():
            out = self._run(x)
        return self._gradient(x, out, payload[split:])

    def op_plan(self, header: dict[str, Any], payload: bytearray) -> tuple[dict[str, Any], bytes]:
        assert self.input_shape is not None
        channels, height, width = self.input_shape
        spec = InputSpec(channels, height, width, tuple(header.get("value_range", (0.0, 1.0))))
        choice = choose_batch_size(self.model, spec, self.device, int(header["requested"]),
                                   backward=bool(header.get("backward")))
        return {"ok": True, "choice": choice.to_dict()}, b""

    def op_memory(self, header: dict[str, Any], payload: bytearray) -> tuple[dict[str, Any], bytes]:
        """The most GPU memory CUDA's allocator gave out (and reserved) in this process; nothing on the CPU.

        Only this process can say: the allocator's counters are per process, and the scorer never
        touches the GPU. The batch-size trial (``plan``) resets the counters, so the peak is the
        largest after it, which is above the trial's own (the weights stay allocated throughout).
        """
        if self.device is None or self.device.type != "cuda":
            return {"ok": True}, b""
        return {"ok": True, "peak_allocated_bytes": int(torch.cuda.max_memory_allocated(self.device)),
                "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(self.device))}, b""


def main() -> int:
    """Serve requests until the scorer closes the pipe; started by ``python -m evaluator.remote``."""
    # The protocol keeps a private copy of stdout; fd 1 then points at stderr, so nothing printed
    # by torch, a library or the model can be mistaken for (or interleave with) an answer.
    answers = io.FileIO(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    requests = io.FileIO(os.dup(sys.stdin.fileno()), "rb")
    widen_pipe(answers.fileno())
    widen_pipe(requests.fileno())
    server = ModelServer()
    while True:
        try:
            header, payload = read_frame(requests, MAX_REQUEST_BYTES)
        except PeerGone:
            return 0
        answer, data = server.handle(header, payload)
        write_frame(answers, answer, data)
