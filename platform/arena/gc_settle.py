"""Keeping the garbage collector's full passes off the request path of a web process.

A web process holds about a million long-lived objects (Django, DRF, torch-free but plotly and the
platform's modules, URL resolvers, compiled templates) that never become garbage. CPython's full
(generation 2) collection walks all of them: 120 to 135 ms, measured in process on the development
VM, once every few thousand requests per process, during which that process answers nobody; under the
load test that is several stalls per run, each holding up the requests queued behind it. Moving what
exists after start-up and after a warm-up into the permanent generation (``gc.freeze``) leaves the
collector only the objects made since: in the same measurement 3,000 requests then ran without a full
pass, and the young collections got cheaper too. The frozen objects are never collected, which is
what objects that live as long as the process need; garbage is collected first, so none is frozen.
"""

from __future__ import annotations

import gc
import threading
from typing import Any

from django.core.signals import request_finished

_lock = threading.Lock()
_served = [0]
_freeze_after = [0]


def settle() -> None:
    """Collect what is garbage now, then freeze everything that is left."""
    gc.collect()
    gc.freeze()


def _count(**kwargs: Any) -> None:
    with _lock:
        _served[0] += 1
        due = _served[0] == _freeze_after[0]
    if due:
        request_finished.disconnect(_count, dispatch_uid="arena-gc-settle")
        settle()


def settle_after(requests: int) -> None:
    """Settle now and once more after ``requests`` requests (what the first requests build lazily: URL
    resolvers, template and serializer caches, database connections)."""
    settle()
    if requests > 0:
        _served[0], _freeze_after[0] = 0, requests
        request_finished.connect(_count, dispatch_uid="arena-gc-settle")
