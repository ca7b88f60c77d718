"""Errors an evaluation can end with, each with a code and a sentence a researcher understands.

``platform_fault`` separates failures caused by the platform (bad hidden data, a crashed
worker) from failures caused by the submission, because only the latter count against quota.
"""

from __future__ import annotations


class EvaluationError(Exception):
    """A failure of one job. ``code`` is stable and machine-readable; ``message`` is for people."""

    #: Codes whose cause is the platform, not the submitted model. ``worker_lost``: the worker process
    #: evaluating the job vanished too often (set by the platform's heartbeat watchdog, never by the evaluator).
    PLATFORM_CODES = frozenset({"data_integrity", "data_unavailable", "internal", "sandbox_unavailable", "worker_lost"})

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def platform_fault(self) -> bool:
        return self.code in self.PLATFORM_CODES
