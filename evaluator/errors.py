"""The exception an evaluation ends with: a code from :mod:`evaluator.failures` and a sentence for people."""

from __future__ import annotations

from evaluator.failures import is_platform_fault


class EvaluationError(Exception):
    """A failure of one job. ``code`` is a row of :data:`evaluator.failures.FAILURES`; ``message`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def platform_fault(self) -> bool:
        """Caused by the platform (bad hidden data, no sandbox), not the model: not charged to the quota."""
        return is_platform_fault(self.code)
