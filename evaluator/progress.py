"""Progress events from inside an evaluation, so the submission page moves while a job runs.

The evaluator only ever calls a ``ProgressCallback``; where the events go (a JSON line on the
sandboxed child's stdout, a database row in the worker) is the caller's business.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

ProgressCallback = Callable[[float, str], None]


def ignore_progress(fraction: float, stage: str) -> None:
    """The default callback: drop events."""


class JsonLineProgress:
    """Writes ``{"event": "progress", "fraction": f, "stage": s}`` lines to a stream."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, fraction: float, stage: str) -> None:
        line = json.dumps({"event": "progress", "fraction": round(float(fraction), 4), "stage": stage})
        self.stream.write(line + "\n")
        self.stream.flush()


class StagedProgress:
    """Maps progress inside one stage onto the job's overall fraction.

    Stages are weighted (for example by the number of images they see), so the bar advances
    at an even pace rather than jumping at stage boundaries.
    """

    def __init__(self, callback: ProgressCallback, weights: Sequence[float]) -> None:
        total = float(sum(weights)) or 1.0
        self.callback = callback
        self.starts: list[float] = []
        acc = 0.0
        for w in weights:
            self.starts.append(acc / total)
            acc += w
        self.spans = [w / total for w in weights]
        # A stage ends exactly where the next begins, so the fraction never steps back by a rounding.
        self.ends = self.starts[1:] + [1.0]

    def report(self, stage_index: int, inner_fraction: float, stage: str) -> None:
        inner = min(max(inner_fraction, 0.0), 1.0)
        end = self.ends[stage_index]
        self.callback(min(self.starts[stage_index] + self.spans[stage_index] * inner, end), stage)
