"""Where the shared data mirror is, for tests that read real data (skipped when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    """ARENA_DATA_MIRROR, else shared/data inside or beside the checkout, if it holds MNIST."""
    candidates = [os.environ.get("ARENA_DATA_MIRROR", ""), REPO / "shared" / "data", REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "mnist").is_dir():
            return Path(candidate)
    return None


SHARED_DATA = shared_data()
needs_shared = pytest.mark.skipif(SHARED_DATA is None, reason="shared/data mirror not available")
