"""Answers to read-only queries, kept per database connection for as long as the database has not changed.

A signed-in request reads its session and its user, a token request its token and user, a cached page
its data stamp: a handful of small queries whose answers stay the same between two writes to the
database, which a busy site makes a few times a second while it serves hundreds of reads. Building
each query in the ORM costs more than running it (0.3 to 0.8 ms a request each on this project's
development machine). So such an answer is kept on the connection together with the database's
**version**, a value that changes whenever anything this connection can read may have changed, and
served again while the version reads the same (one tiny query):

* PostgreSQL: the current snapshot (``pg_current_snapshot()``). Which transactions are visible is all
  that decides what a read returns, and every commit anywhere moves the snapshot (the committed id
  leaves the list of transactions in progress, or raises its upper bound).
* SQLite: ``data_version`` (changes with every commit by another connection) and ``total_changes()``
  (the rows this connection has written).

Inside a transaction nothing is kept or served (its own writes may still be rolled back). The version
is read *before* the query it guards: a commit in between makes the kept answer newer than its
version, and the next read, seeing a newer version, asks again; the other way round cannot happen,
so an answer is never older than the database. A reconnection starts afresh (the answers are kept
with the raw connection they came from). Other databases get no version: every call asks.

**One version read per request.** Inside a request (:class:`RequestScopeMiddleware`, first in the
stack: the scope opens when the request enters it and closes in a ``finally`` when the response leaves
it, so no scope can outlive its request) the version is read once per database and reused by every
later use of the memo in that request, until the request itself runs a statement other than a
``SELECT`` on that database (an execute wrapper installed on each connection notices it) or opens a
transaction: a signed-in leaderboard reads its stamp, its session, its user and the reader's own
models with one version query instead of four. What another connection commits while the request
runs is then seen by the next request, not by the rest of this one: an answer is never older than the
request's start. Outside a request (workers, commands, a streamed body's iteration) every use reads the
version, as before. (Django's request signals were tried first: a WSGI caller that never closes a
response never sends ``request_finished``, and the scope then outlived its request in that thread.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from django.db import connections
from django.db.backends.signals import connection_created

T = TypeVar("T")

#: Distinct answers kept per connection between two changes; past it they are dropped and asked again.
MAX_ANSWERS = 2048
_ATTRIBUTE = "_arena_read_memo"

#: Per thread: the versions read in the current request, by database alias (None outside a request).
_request = threading.local()


def data_version(database: Any) -> tuple[Any, ...] | None:
    """The database's version as this connection sees it now (see the module docstring), or None."""
    if database.in_atomic_block or not database.get_autocommit():
        return None
    if database.vendor == "postgresql":
        sql = "SELECT pg_current_snapshot()::text"
    elif database.vendor == "sqlite":
        sql = "SELECT data_version, total_changes() FROM pragma_data_version()"
    else:
        return None
    with database.cursor() as cursor:
        cursor.execute(sql)
        return tuple(cursor.fetchone())


def _request_version(database: Any) -> tuple[Any, ...] | None:
    """The version for this use: read once per request and database (see the module docstring)."""
    versions: dict[str, tuple[Any, Any]] | None = getattr(_request, "versions", None)
    if versions is None:  # not inside a request
        return data_version(database)
    if database.in_atomic_block or not database.get_autocommit():
        versions.pop(database.alias, None)
        return None
    seen = versions.get(database.alias)
    if seen is not None and seen[0] is database.connection:
        return seen[1]
    version = data_version(database)
    if version is not None:
        versions[database.alias] = (database.connection, version)
    return version


@contextmanager
def request_scope() -> Iterator[None]:
    """One request's scope: the version read once per database inside it (see the module docstring)."""
    outer = getattr(_request, "versions", None)
    _request.versions = {}
    try:
        yield
    finally:
        _request.versions = outer


class RequestScopeMiddleware:
    """Opens :func:`request_scope` around the rest of the stack; first in ``MIDDLEWARE``."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        with request_scope():
            return self.get_response(request)


def _forget_on_write(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    """Execute wrapper: any statement but a SELECT may change what the memo's queries read; read the version again."""
    if not (isinstance(sql, str) and sql.lstrip()[:6].upper() == "SELECT"):
        versions = getattr(_request, "versions", None)
        if versions:
            versions.pop(context["connection"].alias, None)
    return execute(sql, params, many, context)


def _watch_writes(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Installed on each database wrapper once, when it first connects."""
    if _forget_on_write not in connection.execute_wrappers:
        # First in the list: ``connection.execute_wrapper()`` blocks pop the last one on leaving.
        connection.execute_wrappers.insert(0, _forget_on_write)


def connect_signals() -> None:
    """Called from the accounts app's ``ready()``: the write watch on every new connection."""
    connection_created.connect(_watch_writes, dispatch_uid="arena-read-memo-writes")


def remembered(key: Hashable, ask: Callable[[], T], using: str = "default") -> T:
    """``ask()``'s answer, from this connection's memo when the database is unchanged since it was kept.

    ``ask`` must only read, and its answer must depend on nothing but the database and ``key`` (what
    it returns is shared by later calls: a tuple or a frozen object, never a model instance a caller
    might change). Keys are namespaced by the caller (``("session", key)``).
    """
    database = connections[using]
    if _forget_on_write not in database.execute_wrappers:  # connected before the signal was connected
        _watch_writes(None, database)
    version = _request_version(database)
    if version is None:
        return ask()
    memo = getattr(database, _ATTRIBUTE, None)
    if memo is None or memo[0] is not database.connection or memo[1] != version:
        memo = (database.connection, version, {})
        setattr(database, _ATTRIBUTE, memo)
    answers: dict[Hashable, Any] = memo[2]
    if key in answers:
        return answers[key]
    answer = ask()
    if len(answers) >= MAX_ANSWERS:
        answers.clear()
    answers[key] = answer
    return answer
