"""The job's own deadline: the point on the monotonic clock after which it stops and keeps what it finished.

Kept apart from the per-call deadline the model is held to (a model slower than the track's
per-batch budget is ``too_slow``, its own fault): running out of the job's budget is the
platform's matter (see :mod:`evaluator.scoring.budget`). The model client checks it before each
call, so no attack needs to know about it: the next pass after the deadline raises
:class:`OutOfTime`, which the job catches.
"""

from __future__ import annotations

import time

__all__ = ["JobDeadline", "OutOfTime"]


class OutOfTime(Exception):
    """The job's time budget ran out; raised at the next model call, caught by the job."""


class JobDeadline:
    """``seconds`` from now; :meth:`check` raises :class:`OutOfTime` once they have passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise OutOfTime(f"the job's time budget of {self.seconds:.0f} s ran out")
