"""Repeat a check that needs no commit from elsewhere until one run of it saw none.

The read memo (accounts/read_memo.py) serves an answer again while the database's version is
unchanged; on PostgreSQL that version is the cluster's snapshot, which every commit in every database
of the cluster moves. In CI other test processes commit into their own databases on the same cluster
all the time, so a check that a second read asks nothing can meet a commit from one of them: the
memo then rightly asks again, and that run proves nothing either way. These helpers run such a check
until one run saw the version unchanged from start to end, and judge that run only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from django.db import connection

from accounts import read_memo

T = TypeVar("T")
TRIES = 40  # with the growing pause between tries, about 15 s at most


def when_quiet(run: Callable[[], T], prepare: Callable[[], object] = lambda: None, tries: int = TRIES) -> T:
    """``run()``'s result from the first try in which the version stayed the same across it.

    ``prepare`` runs before each try, before the version is read (a write of the test's own that the
    try must start from). Fails the test, rather than passing it, when no try in ``tries`` was quiet.
    """
    for attempt in range(tries):
        time.sleep(min(0.02 * attempt, 0.5))  # past a burst of another process's commits
        prepare()
        before = read_memo.data_version(connection)
        assert before is not None, "only meaningful outside a transaction"
        result = run()
        if read_memo.data_version(connection) == before:
            return result
    raise AssertionError(f"the database changed during each of {tries} tries: nothing was checked")
