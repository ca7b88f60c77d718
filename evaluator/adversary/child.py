"""The attack process: runs one submitted attack inside the sandbox, its model calls answered by the scorer.

Run as ``python -m evaluator.adversary.child`` under bubblewrap, where the only job files it can see
are the attack's: its source (``/job/attack.py``), or a package's folder (``/job/attack/``, its entry
point ``attack.py`` beside the modules it imports). The scorer sends one ``start`` frame (the attacked
points, their labels, the threat model, the pass budget, a seed); the attack's entry point

    attack(model, x, y, threat, budget, generator) -> x_adv

runs with ``model`` a :class:`ModelHandle`: an ``nn.Module`` giving logits for a batch of images in
[0, 1] (on a detector track: one score per image, shape (N,), higher meaning fake; the points are
fakes, ``y`` all 1, and ``threat.task`` is ``"detector"``), and input gradients through ordinary
autograd (``loss.backward()``), every pass counted by the scorer. The answer is one ``done`` frame
with the adversarial images. Nothing else leaves: the attack's prints go to stderr, which the scorer
keeps for the operator only.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from evaluator.remote.wire import read_frame, tensor_bytes, tensor_from, widen_pipe, write_frame

#: Where the sandbox puts the attack's source.
ATTACK_PATH = "/job/attack.py"
#: Largest answer accepted from the scorer (logits or an input gradient for a batch).
MAX_ANSWER_BYTES = 4 << 30


class ModelError(RuntimeError):
    """The scorer refused a call (over budget, a malformed batch): the attack may catch it and stop."""


@dataclass(frozen=True)
class Threat:
    """The track's threat model in pixel units: ``norm`` is ``"Linf"`` or ``"L2"``, images live in [0, 1].

    ``task`` says what the model answers: ``"classifier"`` (logits, shape (N, classes); the attack wants
    a wrong class) or ``"detector"`` (a fake score, shape (N,); the attack wants it low).
    """

    norm: str
    eps: float
    task: str = "classifier"


class _Channel:
    """The attack's side of the pipes: one request, one answer."""

    def __init__(self, requests: io.FileIO, answers: io.FileIO) -> None:
        self.requests, self.answers = requests, answers

    def call(self, header: dict[str, Any], payload: bytes | memoryview = b"") -> tuple[dict[str, Any], bytearray]:
        write_frame(self.requests, header, payload)
        answer, data = read_frame(self.answers, MAX_ANSWER_BYTES)
        if not answer.get("ok"):
            raise ModelError(str(answer.get("message", "the call was refused")))
        return answer, data


class _Crossing(torch.autograd.Function):
    """Forward through the scorer; backward asks it for the input gradient of that very forward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, handle: ModelHandle) -> Tensor:  # type: ignore[override]
        keep = bool(ctx.needs_input_grad[0])
        logits, graph = handle._forward(x, keep)
        ctx.handle, ctx.graph, ctx.shape = handle, graph, x.shape
        return logits

    @staticmethod
    def backward(ctx: Any, grad_logits: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return ctx.handle._backward(ctx.graph, grad_logits, ctx.shape), None


class ModelHandle(nn.Module):
    """The model under attack, as the attack sees it: logits for images in [0, 1], gradients by autograd.

    Each image through a forward call is one pass of the budget; a backward call costs no extra
    budget (it needs its forward pass, already counted). ``passes_left`` says what remains of the
    budget of all points together. The weights never come here.
    """

    def __init__(self, channel: _Channel, passes_left: int) -> None:
        super().__init__()
        self._channel = channel
        self.passes_left = passes_left

    def forward(self, x: Tensor) -> Tensor:
        return _Crossing.apply(x, self)

    def _forward(self, x: Tensor, keep: bool) -> tuple[Tensor, int]:
        x = x.detach()
        answer, data = self._channel.call({"op": "forward", "shape": list(x.shape), "keep": keep}, tensor_bytes(x))
        self.passes_left = int(answer.get("passes_left", self.passes_left))
        return tensor_from(data, answer["shape"]), int(answer.get("graph", 0))

    def _backward(self, graph: int, grad_logits: Tensor, shape: torch.Size) -> Tensor:
        grad_logits = grad_logits.detach()
        _, data = self._channel.call({"op": "backward", "graph": graph, "shape": list(grad_logits.shape)},
                                     tensor_bytes(grad_logits))
        return tensor_from(data, list(shape))


def _load_attack(path: str) -> Any:
    # A package's attack.py imports its sibling modules: its folder goes first on the path.
    sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location("submitted_attack", path)
    if spec is None or spec.loader is None:
        raise ImportError("the attack's source could not be loaded")
    module = importlib.util.module_from_spec(spec)
    sys.modules["submitted_attack"] = module
    spec.loader.exec_module(module)
    entry = getattr(module, "attack", None)
    if not callable(entry):
        raise ImportError("the attack's source defines no function attack(model, x, y, threat, budget, generator)")
    return entry


def main(path: str = ATTACK_PATH) -> int:
    # The protocol keeps private copies of stdin and stdout; fd 1 then points at stderr, so nothing the
    # attack prints can pass for a frame.
    requests = io.FileIO(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    answers = io.FileIO(os.dup(sys.stdin.fileno()), "rb")
    widen_pipe(requests.fileno())
    widen_pipe(answers.fileno())
    channel = _Channel(requests, answers)
    start, payload = read_frame(answers, MAX_ANSWER_BYTES)
    shape = start["shape"]
    split = 4 * int(torch.Size(shape).numel())
    x = tensor_from(payload[:split], shape)
    y = torch.frombuffer(bytearray(payload[split:]), dtype=torch.int64).clone()
    torch.manual_seed(int(start["seed"]))
    generator = torch.Generator().manual_seed(int(start["seed"]))
    threat = Threat(str(start["norm"]), float(start["eps"]), str(start.get("task", "classifier")))
    model = ModelHandle(channel, int(start["passes_left"]))
    try:
        entry = _load_attack(path)
        x_adv = entry(model, x.clone(), y.clone(), threat, int(start["budget"]), generator)
    except ModelError as exc:  # the scorer ended the run (over budget): it already knows why
        write_frame(requests, {"op": "failed", "code": "refused", "message": str(exc)[:300]})
        return 0
    except Exception as exc:  # the attack's own failure; its text stays in this process's stderr
        print(f"the attack raised {type(exc).__name__}: {exc}", file=sys.stderr)
        write_frame(requests, {"op": "failed", "code": "attack_error", "type": type(exc).__name__[:64]})
        return 0
    if not isinstance(x_adv, Tensor):
        write_frame(requests, {"op": "failed", "code": "wrong_output", "type": type(x_adv).__name__[:64]})
        return 0
    x_adv = x_adv.detach().to("cpu", torch.float32)
    write_frame(requests, {"op": "done", "shape": list(x_adv.shape)}, tensor_bytes(x_adv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ATTACK_PATH))
