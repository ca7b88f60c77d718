"""A track's cache version: one number per track, bumped whenever anything a cached page of it shows changes.

Kept here, with the tracks, because caches on more than one layer key their entries by it: the
leaderboards' pages (:mod:`leaderboards.cache`, which bumps it) and the submissions API's list pages
(:mod:`submissions.list_cache`), which sit below the leaderboards and may not import them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.cache import cache

_PREFIX = "arena:leaderboard"
#: The response header that says how a cached page was served (hit, miss, bypass), for the load tests.
CACHE_HEADER = "X-Arena-Cache"
#: Seconds a cached page lives at most (``ARENA_LEADERBOARD_CACHE_SECONDS``); 0 turns the caches off.
DEFAULT_SECONDS = 600


def accepts_gzip(request: Any) -> bool:
    """Whether the client takes gzip (the test Django's GZipMiddleware applies): cached bodies are kept gzipped."""
    return "gzip" in request.headers.get("Accept-Encoding", "").lower()


def cache_seconds() -> int:
    """How long an entry lives; 0 (or less) turns the page caches off."""
    return int(getattr(settings, "ARENA_LEADERBOARD_CACHE_SECONDS", DEFAULT_SECONDS))


def _version_key(track_id: int) -> str:
    return f"{_PREFIX}:version:{track_id}"


def track_version(track_id: int) -> int:
    """The track's current version. A missing key (never set, or evicted) starts from the clock.

    Starting from the clock, not 0, matters: were an evicted version to restart at a number used
    before, entries cached under that older version would be served again.
    """
    key = _version_key(track_id)
    version = cache.get(key)
    if version is None:
        cache.add(key, time.time_ns(), timeout=None)
        version = cache.get(key)
    return int(version) if version is not None else 0


def bump_tracks(track_ids: Iterable[int]) -> None:
    """Invalidate every cached entry of these tracks (now, not at commit: see ``leaderboards.cache.invalidate``)."""
    for track_id in set(track_ids):
        key = _version_key(track_id)
        try:
            cache.incr(key)
        except ValueError:  # not in the cache: any fresh value differs from the versions in use
            cache.set(key, time.time_ns(), timeout=None)
