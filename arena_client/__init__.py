"""Python client and command line for Robustness Arena (``python -m arena_client --help``)."""

from arena_client.client import (
    ArenaClient,
    ArenaError,
    EvaluationFailed,
    QuotaExceeded,
    RemoteSubmission,
    Score,
    Scores,
)

__all__ = ["ArenaClient", "ArenaError", "EvaluationFailed", "QuotaExceeded", "RemoteSubmission", "Score", "Scores"]
