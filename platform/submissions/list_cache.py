"""Caching of the API's submission list (``GET /api/v1/submissions/``) without ever serving a stale row.

Serializing a page of 100 submissions with their scores costs tens of milliseconds (a model
instance per result row, DRF's fields, JSON), while reading the rows that page shows costs one
small query. So a page is cached under a **fingerprint of exactly what it shows**: the number of
visible submissions (the ``count`` and the ``next``/``previous`` links) and every column of every
submission on the page, with its owner's name and its track's slug and suite version, as one query
reads them now. Whatever changes a listed submission (a state transition, a progress report, a
visibility or Ladder release made with ``QuerySet.update()`` in a worker, a rename) changes the
fingerprint, so the next request builds the page again: there is no lag at all, not even the
progress interval's. A track's cache version (``benchmarks.cache_versions.track_version``, bumped by the
signals of results, evaluation sets and tracks) is part of the key too, for what a submission's
row does not show (a result or a set renamed in the admin).

Privacy holds by construction rather than by a rule about who may share: the serialized page is a
function of its key (the rows themselves, the count, whether the reader is staff, since staff see
withheld scores, the host and the query), so two readers get the same entry only when their
queries return the same rows, and then each of them may see every one of them. A signed-in user
whose own private submissions are on the page has a different set of rows, hence a different key,
from anyone who cannot see them. tests/web/test_page_cache_privacy.py holds it to that.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from django.core.cache import cache
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpResponse

from benchmarks import cache_versions as lb_cache
from submissions.models import Submission

logger = logging.getLogger(__name__)

_PREFIX = "arena:api-list"


def _rows_sql(database: Any, ids_sql: str) -> str:
    """The submissions ``ids_sql`` selects, each as its id, its track and one text holding its whole row with
    what the list shows of its owner and track (name, slug, suite version).

    The text is unambiguous: PostgreSQL writes a row as a row literal (``(s.*)::text``, values quoted
    where they need it); on SQLite one ``printf`` writes each value as ``%Q`` (in quotes, inner quotes
    doubled, NULL as ``NULL``): chaining ``||`` over 40 values copied each row's text 80 times.
    """
    sub = Submission._meta.db_table
    user = Submission._meta.get_field("owner").related_model._meta.db_table
    track = Submission._meta.get_field("track").related_model._meta.db_table
    if database.vendor == "postgresql":
        text = "(s.*)::text || quote_nullable(u.username) || quote_nullable(t.slug) || quote_nullable(t.suite_version)"
    else:
        columns = [f"s.{database.ops.quote_name(f.column)}" for f in Submission._meta.concrete_fields]
        columns += ["u.username", "t.slug", "t.suite_version"]
        text = f"printf('{','.join(['%%Q'] * len(columns))}', {', '.join(columns)})"  # %% : the query has params
    return (f"SELECT s.id AS arena_id, s.track_id AS arena_track, {text} AS arena_row "
            f"FROM {sub} s JOIN {user} u ON u.id = s.owner_id JOIN {track} t ON t.id = s.track_id "
            f"WHERE s.id IN ({ids_sql})")


def _fingerprint_sql(database: Any, ids_sql: str) -> str:
    """One row: a digest of the rows of :func:`_rows_sql`, and their least and greatest track, computed in the
    database.

    Rows are joined in id order (PostgreSQL orders the aggregate; SQLite keeps its subquery's order):
    an order that differed would only cost a cache miss, since the same rows always read the same.
    SQLite's MD5 is the one Django registers on its connections.
    """
    rows = _rows_sql(database, ids_sql)
    tracks = "MIN(p.arena_track), MAX(p.arena_track)"
    if database.vendor == "postgresql":
        return f"SELECT md5(string_agg(p.arena_row, '|' ORDER BY p.arena_id)), {tracks} FROM ({rows}) p"
    return f"SELECT MD5(group_concat(p.arena_row, '|')), {tracks} FROM ({rows} ORDER BY s.id) p"


def page_key(request: Any, queryset: QuerySet[Submission], offset: int, limit: int, count: int) -> str:
    """The key of one page as ``request``'s reader sees it now (see the module docstring).

    The page's ids come from the view's own queryset (the same filters, visibility and order as
    the page it serves), so the digest covers exactly the rows served.
    """
    if count == 0 or offset >= count:  # an empty page (DRF reads no rows either; a huge offset overflows SQL)
        return f"{_PREFIX}:" + hashlib.sha256(repr((count, offset, limit, request.get_host(), request.scheme,
                                                    sorted(request.query_params.lists()),
                                                    request.accepted_media_type)).encode()).hexdigest()
    ids = queryset.prefetch_related(None).order_by(*queryset.query.order_by).values("id")[offset:offset + limit]
    ids_sql, params = ids.query.sql_with_params()
    database = connections[queryset.db]
    with database.cursor() as cursor:
        cursor.execute(_fingerprint_sql(database, ids_sql), params)
        digest, first, last = cursor.fetchone()
        tracks = [first] if first == last else []
        if first != last:  # a page of several tracks (no ?track=): each one's version
            cursor.execute(f"SELECT DISTINCT track_id FROM {Submission._meta.db_table} WHERE id IN ({ids_sql})",
                           params)
            tracks = sorted(row[0] for row in cursor.fetchall())
    user = request.user
    raw = repr((count, offset, limit, digest, [(t, lb_cache.track_version(t)) for t in tracks if t is not None],
                bool(user.is_authenticated and user.is_staff), request.scheme, request.get_host(),
                sorted(request.query_params.lists()), request.accepted_media_type))
    return f"{_PREFIX}:{hashlib.sha256(raw.encode()).hexdigest()}"


def _row_key(request: Any, digest: str, track_id: int) -> str:
    """One serialized submission: its row's digest, its track's version, and what else its JSON depends on."""
    user = request.user
    raw = repr((digest, track_id, lb_cache.track_version(track_id), bool(user.is_authenticated and user.is_staff),
                request.scheme, request.get_host()))
    return f"{_PREFIX}:row:{hashlib.sha256(raw.encode()).hexdigest()}"


def assemble(request: Any, queryset: QuerySet[Submission], offset: int, limit: int,
             envelope: Callable[[], bytes], serialize: Callable[[Submission], bytes]) -> bytes | None:
    """A compact JSON page built from cached rows: only the submissions whose row changed are serialized again.

    A running job's progress report changes one row of a page; building the page anew (every row's
    results, serialization) cost tens of milliseconds per report and web process. Here each row's
    JSON is kept under its own digest (:func:`_row_key`), and the page is the envelope
    (``envelope()``: count, links and an empty ``results``) with the rows spliced in, byte for byte
    what DRF's compact JSON renderer writes for the whole (tests/web/test_page_cache_privacy.py
    compares them). None when a row left the reader's view while this ran: the caller builds it whole.
    """
    ids = list(queryset.prefetch_related(None).values_list("id", flat=True)[offset:offset + limit])
    if not ids:
        return None
    database = connections[queryset.db]
    ids_sql = ", ".join(["%s"] * len(ids))
    with database.cursor() as cursor:
        md5 = "md5" if database.vendor == "postgresql" else "MD5"
        cursor.execute(f"SELECT p.arena_id, p.arena_track, {md5}(p.arena_row) FROM ({_rows_sql(database, ids_sql)}) p",
                       ids)
        digests = {pk: (track_id, digest) for pk, track_id, digest in cursor.fetchall()}
    if set(digests) != set(ids):
        return None
    keys = {pk: _row_key(request, digests[pk][1], digests[pk][0]) for pk in ids}
    rows: dict[str, bytes] = cache.get_many(list(keys.values()))
    missing = [pk for pk in ids if keys[pk] not in rows]
    if missing:
        fresh = {s.pk: s for s in queryset.filter(pk__in=missing)}
        if set(fresh) != set(missing):
            return None
        built = {keys[pk]: serialize(fresh[pk]) for pk in missing}
        cache.set_many(built, timeout=lb_cache.cache_seconds())
        rows.update(built)
    head = envelope()
    if not head.endswith(b'"results":[]}'):
        return None
    return head[:-2] + b",".join(rows[keys[pk]] for pk in ids) + b"]}"


def cached_page(request: Any, key: str | None, build: Callable[[], tuple[bytes, str]]) -> HttpResponse:
    """The page's response: from the cache under ``key``, else ``build()`` (body, content type), then stored.

    ``key`` None (caching off) builds every time. The response carries ``X-Arena-Cache``.
    """
    stored = None
    if key is not None:
        try:
            stored = cache.get(key)
        except Exception:  # a cache server that is down must not take the API down with it
            logger.warning("API list cache unavailable; building the page", exc_info=True)
            key = None
    how = "hit"
    if stored is None:
        stored = build()
        how = "miss" if key is not None else "bypass"
        if key is not None:
            try:
                cache.set(key, stored, timeout=lb_cache.cache_seconds())
            except Exception:
                logger.warning("API list cache unavailable; page not stored", exc_info=True)
    body, content_type = stored
    response = HttpResponse(body, content_type=content_type)
    response[lb_cache.CACHE_HEADER] = how
    return response
