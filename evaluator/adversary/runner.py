"""The scorer's side of an attack run: start the attack's sandbox, answer its model calls, check its images.

The scorer holds the model (a :class:`evaluator.remote.client.RemoteModel`, itself in a sandbox of
its own, or any ``nn.Module`` in tests) and the attacked points. It answers the attack's calls one by
one, counting every image of every forward call against the budget (``passes_per_point`` times the
points, spent however the attack likes), and keeps the autograd graphs of the forward calls the
attack wants gradients of. When the attack answers with its images, they are checked here, in the
scorer, never in the attack's process: the shape, finite values, the [0, 1] box, the threat model,
and then the platform's own forward pass judges them: on a classifier, whether it still gets each
point right; on a detector, the score of each attacked fake once rounded to 8 bits, as a saved image
would be (the detector suite's rule). Any broken promise ends the run with a code and a sentence
(:data:`ATTACK_FAILURES`), like a model's failures.

On a detector the attack's ``model`` answers one score per image, shape (N,), higher meaning fake:
the detector's first output column, the score every detector metric reads.
"""

from __future__ import annotations

import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from evaluator.attacks.threat import lp_norm
from evaluator.detector_attacks.common import fake_scores, quantize
from evaluator.failures import ATTACK_CODES, FAILURES
from evaluator.models.contract import detector_scores, pixels_to_unit
from evaluator.remote.client import HostOptions, StderrTail, sandboxed_child
from evaluator.remote.wire import Deadline, DeadlineChannel, PeerGone, WireError, tensor_bytes, tensor_from
from evaluator.sandbox.bubblewrap import JOB_DIR
from evaluator.spec import TaskKind, ThreatModel

__all__ = ["ATTACK_FAILURES", "AttackRun", "run_attack"]

#: Every way an attack run can end without a verified result: the code and the sentence shown (one table
#: with the model failures', evaluator.failures).
ATTACK_FAILURES: dict[str, str] = {code: FAILURES[code].headline for code in ATTACK_CODES}
#: Float32 rounding the threat-model check forgives (an image exactly on the sphere may land a hair outside).
BALL_TOLERANCE = 1e-5
#: Autograd graphs kept for the attack's backward calls (most attacks need one at a time).
MAX_GRAPHS = 4
#: Largest batch the attack may send in one call.
MAX_BATCH = 4096


@dataclass
class AttackRun:
    """How one attack did against one model on the attacked points; ``error_code`` set when it failed."""

    points: int
    #: Classifier: per point, correctly classified at the attack's image (and clean); None when the run failed.
    robust: Tensor | None = None
    #: Detector: per point, the platform's score of the attack's image rounded to 8 bits; None otherwise.
    scores: Tensor | None = None
    forward_passes: int = 0
    backward_passes: int = 0
    seconds: float = 0.0
    error_code: str = ""
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error_code

    @property
    def robust_accuracy(self) -> float | None:
        return None if self.robust is None else int(self.robust.sum()) / self.points


class _Failed(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.code, self.detail = code, detail


def attack_command(path: str | None = None) -> list[str]:
    """The attack process's command: this Python running ``python -m evaluator.adversary.child``."""
    return [sys.executable, "-m", "evaluator.adversary.child", *([path] if path else [])]


class ScoreHead(nn.Module):
    """A detector as a detector attack sees it: one score per image, shape (N,), higher meaning fake."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: Tensor) -> Tensor:
        return detector_scores(self.detector(x))


class _Session:
    """Answers one attack's calls with the model, counting passes; checks its images at the end."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, total_passes: int,
                 task: TaskKind = "classifier") -> None:
        self.task = task
        self.model = ScoreHead(model) if task == "detector" else model
        self.x, self.y, self.threat = x, y, threat
        self.total = total_passes
        self.forward = self.backward = 0
        self.graphs: OrderedDict[int, tuple[Tensor, Tensor]] = OrderedDict()
        self.next_graph = 1

    def _batch(self, header: dict[str, Any], payload: bytearray) -> Tensor:
        shape = header.get("shape")
        ok = (isinstance(shape, list) and len(shape) == self.x.dim() and all(isinstance(d, int) for d in shape)
              and 1 <= shape[0] <= MAX_BATCH and list(shape[1:]) == list(self.x.shape[1:])
              and len(payload) == 4 * int(torch.Size(shape).numel()))
        if not ok:
            raise _Failed("bad_query", f"a batch of shape {shape!r} (images are {list(self.x.shape[1:])})")
        batch = tensor_from(payload, shape)
        if not bool(torch.isfinite(batch).all()) or float(batch.min()) < 0.0 or float(batch.max()) > 1.0:
            raise _Failed("bad_query", "a batch with values outside [0, 1]")
        return batch

    def answer(self, header: dict[str, Any], payload: bytearray) -> tuple[dict[str, Any], memoryview | bytes]:
        op = header.get("op")
        if op == "forward":
            batch = self._batch(header, payload)
            n = int(batch.shape[0])
            if self.forward + n > self.total:
                raise _Failed("over_budget", f"{self.forward + n} passes asked for, {self.total} allowed")
            self.forward += n
            if header.get("keep"):
                batch.requires_grad_(True)
                with torch.enable_grad():
                    logits = self.model(batch)
                graph = self.next_graph
                self.next_graph += 1
                self.graphs[graph] = (batch, logits)
                while len(self.graphs) > MAX_GRAPHS:
                    self.graphs.popitem(last=False)
            else:
                graph = 0
                with torch.no_grad():
                    logits = self.model(batch)
            out = logits.detach().float()
            return {"ok": True, "shape": list(out.shape), "graph": graph,
                    "passes_left": self.total - self.forward}, tensor_bytes(out)
        if op == "backward":
            kept = self.graphs.pop(int(header.get("graph", -1)), None) if isinstance(header.get("graph"), int) else None
            if kept is None:
                return {"ok": False, "message": "no such graph (only the last few forward calls keep one)"}, b""
            batch, logits = kept
            shape = header.get("shape")
            if shape != list(logits.shape) or len(payload) != 4 * logits.numel():
                raise _Failed("bad_query", f"a logit gradient of shape {shape!r} for logits {list(logits.shape)}")
            grad_logits = tensor_from(payload, shape)
            (grad,) = torch.autograd.grad(logits, batch, grad_logits)
            self.backward += int(batch.shape[0])
            return {"ok": True, "shape": list(grad.shape)}, tensor_bytes(grad.detach())
        raise _Failed("protocol", f"an unknown request {str(op)[:40]!r}")

    def verify(self, header: dict[str, Any], payload: bytearray, batch_size: int) -> Tensor:
        """The attack's images checked against every promise, then judged by the platform's forward pass.

        A classifier: per point, whether the model still gets it right (at the clean image too). A detector:
        per point, the score of the image rounded to 8 bits (rounding cannot leave an Linf ball of whole grey
        levels around an 8-bit image; an L2 ball is kept by truncating, :func:`quantize`).
        """
        x_adv = self._checked(header, payload)
        if self.task == "detector":
            saved = quantize(x_adv, self.x, self.threat.norm, self.threat.eps)
            return fake_scores(self.model, pixels_to_unit(saved), batch_size)
        with torch.no_grad():
            clean = torch.cat([self.model(self.x[s : s + batch_size]).argmax(1)
                               for s in range(0, len(self.x), batch_size)])
            attacked = torch.cat([self.model(x_adv[s : s + batch_size]).argmax(1)
                                  for s in range(0, len(x_adv), batch_size)])
        return (clean == self.y) & (attacked == self.y)

    def _checked(self, header: dict[str, Any], payload: bytearray) -> Tensor:
        """The attack's images, once every promise holds: shape, finite, the [0, 1] box, the threat model."""
        shape = header.get("shape")
        if shape != list(self.x.shape) or len(payload) != 4 * self.x.numel():
            raise _Failed("wrong_shape", f"shape {shape!r}, expected {list(self.x.shape)}")
        x_adv = tensor_from(payload, shape)
        if not bool(torch.isfinite(x_adv).all()):
            raise _Failed("non_finite")
        if float(x_adv.min()) < 0.0 or float(x_adv.max()) > 1.0:
            raise _Failed("out_of_box", f"values from {float(x_adv.min()):.4g} to {float(x_adv.max()):.4g}")
        distance = lp_norm(x_adv - self.x, self.threat.norm)
        allowed = self.threat.eps + BALL_TOLERANCE * max(self.threat.eps, 1.0)
        if float(distance.max()) > allowed:
            worst = int(distance.argmax())
            raise _Failed("out_of_ball", f"point {worst} at {self.threat.norm} distance {float(distance.max()):.6g} "
                                         f"> eps {self.threat.eps:g}")
        return x_adv


def run_attack(attack_path: str, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel,
               passes_per_point: int, seed: int, *, options: HostOptions | None = None, seconds: float = 3600.0,
               batch_size: int = 256, task: TaskKind = "classifier") -> AttackRun:
    """Run the attack at ``attack_path`` against ``model`` on the points ``x`` (in [0, 1]) with labels ``y``.

    ``task`` says what ``model`` is: a classifier (the run's ``robust``), or a detector whose points are
    fakes (``y`` all 1) that the attack tries to make score as real (the run's ``scores``). Never raises
    for the attack's faults: they come back as an :class:`AttackRun` with an error code. ``seconds``
    bounds the whole run (the attack's process is killed at it).
    """
    options = options or HostOptions.default()
    x = x.detach().to("cpu", torch.float32).contiguous()
    y = y.detach().to("cpu", torch.long).contiguous()
    run = AttackRun(points=int(x.shape[0]))
    session = _Session(model, x, y, threat, passes_per_point * run.points, task)
    started = time.monotonic()
    deadline = started + seconds
    stderr: StderrTail | None = None
    # Under bubblewrap the attack sees its own source (a file, or a package's folder: attack.py beside the
    # modules it imports) and nothing else of the job.
    package = os.path.isdir(attack_path)
    inside = f"{JOB_DIR}/attack" if package else f"{JOB_DIR}/attack.py"

    def entry(seen: str) -> list[str]:
        return attack_command(f"{seen}/attack.py" if package else seen)

    try:
        with sandboxed_child(entry, attack_path, inside, options) as (proc, _seen):
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
            stderr = StderrTail(proc.stderr)
            channel = DeadlineChannel(proc.stdin.fileno(), proc.stdout.fileno())
            start = {"op": "start", "shape": list(x.shape), "norm": threat.norm, "eps": threat.eps,
                     "budget": passes_per_point, "passes_left": session.total, "seed": seed, "task": task}
            channel.send(start, bytes(tensor_bytes(x)) + y.numpy().tobytes(), deadline)
            while True:
                header, payload = channel.receive(4 * (MAX_BATCH + 1) * x[0].numel() + 64, deadline)
                op = header.get("op")
                if op == "done":
                    judged = session.verify(header, payload, batch_size)
                    if task == "detector":
                        run.scores = judged
                    else:
                        run.robust = judged
                    break
                if op == "failed":
                    code = str(header.get("code", ""))
                    raise _Failed("attack_error" if code not in ATTACK_FAILURES else code,
                                  str(header.get("type", ""))[:64])
                answer, data = session.answer(header, payload)
                channel.send(answer, data, deadline)
    except _Failed as exc:
        run.error_code, run.error = exc.code, ATTACK_FAILURES[exc.code] + (f" ({exc.detail})" if exc.detail else "")
    except Deadline:
        run.error_code, run.error = "attack_timeout", ATTACK_FAILURES["attack_timeout"] + f" ({seconds:.0f} s)"
    except (PeerGone, WireError):
        run.error_code, run.error = "attack_crashed", ATTACK_FAILURES["attack_crashed"]
    run.forward_passes, run.backward_passes = session.forward, session.backward
    run.seconds = round(time.monotonic() - started, 3)
    if stderr is not None:
        run.details["stderr_tail"] = stderr.text()[-2000:]  # the operator's, never a page's
    return run
