"""Caching of the API's submission list (``GET /api/v1/submissions/``) without ever serving a stale row.

Serializing a page of 100 submissions with their scores costs tens of milliseconds (a model
instance per result row, DRF's fields, JSON), while reading what that page shows costs one small
query. So a page is cached under a **fingerprint of exactly what it shows**: the number of visible
submissions (the ``count`` and the ``next``/``previous`` links) and the version of every row on the
page, its owner's and its track's (on SQLite their values), as one query reads them now
(:func:`stamp_query`). Whatever changes a listed submission (a state transition, a progress report,
a visibility or Ladder release made with ``QuerySet.update()`` in a worker, a rename) changes the
fingerprint, so the next request builds the page again: there is no lag at all, not even the
progress interval's. A track's cache version (``benchmarks.cache_versions.track_version``, bumped by the
signals of results, evaluation sets and tracks) is part of the key too, for what a submission's
row does not show (a result or a set renamed in the admin). Between two changes to the database
even that query is skipped: a connection asks it again only when the database's own version has
moved (:mod:`accounts.read_memo`). Pages are kept and sent gzipped.

Privacy holds by construction rather than by a rule about who may share: the serialized page is a
function of its key (the rows themselves, the count, whether the reader is staff, since staff see
withheld scores, the host and the query), so two readers get the same entry only when their
queries return the same rows, and then each of them may see every one of them. A signed-in user
whose own private submissions are on the page has a different set of rows, hence a different key,
from anyone who cannot see them. tests/web/test_page_cache_privacy.py holds it to that.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from django.core.cache import cache
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpResponse
from django.utils.cache import patch_vary_headers

from accounts import read_memo
from benchmarks import cache_versions as lb_cache
from submissions.models import Submission

logger = logging.getLogger(__name__)

_PREFIX = "arena:api-list"


#: What a worker writes while a job runs (tasks.py's progress writer). The JSON of a row is kept without the two
#: shown ones, which are filled in from the page's query on every assembly (:func:`assemble`), and the digest that
#: keys it leaves all three out: a progress report then costs a page no row serialized again.
LIVE_FIELDS = ("progress", "progress_stage")
UNSHOWN_FIELDS = ("heartbeat_at",)


def _rows_sql(database: Any, ids_sql: str, *, live_apart: bool = False) -> str:
    """The submissions ``ids_sql`` selects, each as its id, its track and one text that changes whenever its row,
    its owner's row or its track's row changes.

    PostgreSQL: each of the three rows' version, ``xmin`` (the transaction that wrote it) and ``ctid`` (where
    it lies). Every UPDATE writes a new version of the row, by a new transaction (so a new ``xmin``), or by
    the reader's own transaction at a new ``ctid`` (a place is not reused while the old version may still be
    seen). Reading three small system columns instead of writing out every value took the query from 2.3 to
    about 0.3 ms on a page of 100. SQLite keeps no row versions, so there the text is the row itself and
    what the list shows of its owner and track: one ``printf`` writing each value as ``%Q`` (in quotes,
    inner quotes doubled, NULL as ``NULL``), unambiguous.

    ``live_apart`` (the digest that keys a row's kept JSON, :func:`assemble`): the submission's columns but
    :data:`LIVE_FIELDS` and :data:`UNSHOWN_FIELDS` as values (PostgreSQL: a ``ROW(...)::text``, quoted and
    unambiguous), and the live fields' current values as two more columns.
    """
    sub = Submission._meta.db_table
    user = Submission._meta.get_field("owner").related_model._meta.db_table
    track = Submission._meta.get_field("track").related_model._meta.db_table
    apart = {Submission._meta.get_field(name).column for name in (*LIVE_FIELDS, *UNSHOWN_FIELDS)}
    live = "".join(f", s.{database.ops.quote_name(Submission._meta.get_field(name).column)} AS arena_live_{i}"
                   for i, name in enumerate(LIVE_FIELDS)) if live_apart else ""
    kept = [f"s.{database.ops.quote_name(f.column)}" for f in Submission._meta.concrete_fields
            if not (live_apart and f.column in apart)]
    if database.vendor == "postgresql" and live_apart:
        text = f"concat_ws(':', ROW({', '.join(kept)})::text, u.xmin, u.ctid, t.xmin, t.ctid)"
    elif database.vendor == "postgresql":
        text = ("concat_ws(':', s.id, s.xmin, s.ctid, u.xmin, u.ctid, t.xmin, t.ctid)")
    else:
        columns = [*kept, "u.username", "t.slug", "t.suite_version"]
        text = f"printf('{','.join(['%%Q'] * len(columns))}', {', '.join(columns)})"  # %% : the query has params
    return (f"SELECT s.id AS arena_id, s.track_id AS arena_track, {text} AS arena_row{live} "
            f"FROM {sub} s JOIN {user} u ON u.id = s.owner_id JOIN {track} t ON t.id = s.track_id "
            f"WHERE s.id IN ({ids_sql})")


#: Past this offset a page is empty whatever the count (no list is that long) and is keyed without reading rows:
#: a larger integer overflows the databases' LIMIT/OFFSET.
_MAX_OFFSET = 2**31


def _page_ids(visible: QuerySet[Submission], offset: int, limit: int) -> tuple[str, tuple[Any, ...]]:
    """The page's ids in the view's order, as SQL and parameters: the subquery both the stamp and a miss read."""
    ids = visible.prefetch_related(None).order_by(*visible.query.order_by).values("id")[offset:offset + limit]
    sql, params = ids.query.sql_with_params()
    return sql, tuple(params)


def stamp_query(visible: QuerySet[Submission], offset: int, limit: int) -> tuple[str, tuple[Any, ...]]:
    """The one query (SQL and parameters) whose answer keys a page: the number of ``visible`` submissions, a
    digest of the page's rows (see :func:`_rows_sql`) and the tracks on it (comma-separated).

    The count and the page's ids come from the view's own queryset (the same filters, visibility and
    order as the page it serves), so the digest covers exactly the rows served. Compiling the queryset
    costs more than running the query; the view keeps what this returns for the same reader and query.
    """
    database = connections[visible.db]
    count_sql, count_params = visible.order_by().values("id").query.sql_with_params()
    count = f"(SELECT COUNT(*) FROM ({count_sql}) arena_c)"
    if offset >= _MAX_OFFSET:
        return f"SELECT {count}, NULL, NULL", tuple(count_params)
    ids_sql, ids_params = _page_ids(visible, offset, limit)
    rows = _rows_sql(database, ids_sql)
    if database.vendor == "postgresql":
        sql = (f"SELECT {count}, md5(string_agg(p.arena_row, '|' ORDER BY p.arena_id)), "
               f"string_agg(DISTINCT p.arena_track::text, ',') FROM ({rows}) p")
    else:  # SQLite keeps its subquery's order; its MD5 is the one Django registers on its connections
        sql = (f"SELECT {count}, MD5(group_concat(p.arena_row, '|')), group_concat(DISTINCT p.arena_track) "
               f"FROM ({rows} ORDER BY s.id) p")
    return sql, (*count_params, *ids_params)


def page_queries(visible: QuerySet[Submission], offset: int,
                 limit: int) -> tuple[tuple[str, tuple[Any, ...]], tuple[str, tuple[Any, ...]]]:
    """The two queries :func:`assemble` runs on a miss, as SQL and parameters: the page's ids in its order, and
    each of its rows' id, track and digest (:func:`_rows_sql`, over the same ids subquery).

    Like :func:`stamp_query` they depend only on the reader, the filters and the page, so the view compiles
    them once (compiling two querysets per miss was a tenth of its cost).
    """
    database = connections[visible.db]
    ids = _page_ids(visible, offset, limit)
    md5 = "md5" if database.vendor == "postgresql" else "MD5"
    live = "".join(f", p.arena_live_{i}" for i in range(len(LIVE_FIELDS)))
    rows = (f"SELECT p.arena_id, p.arena_track, {md5}(p.arena_row){live} "
            f"FROM ({_rows_sql(database, ids[0], live_apart=True)}) p")
    return ids, (rows, ids[1])


def _stamp(stamp: tuple[str, tuple[Any, ...]]) -> tuple[Any, ...]:
    """The answer to a stamp query, asked again only when the database has changed (accounts.read_memo).

    On a page read a thousand times between two progress reports, the query (a count over the track and
    a digest of 100 rows: 0.5 ms on SQLite, 1.4 ms on PostgreSQL, most of a cached request's time) runs
    once per change and connection.
    """
    def ask() -> tuple[Any, ...]:
        with connections[Submission.objects.db].cursor() as cursor:
            cursor.execute(*stamp)
            return tuple(cursor.fetchone())

    return read_memo.remembered(("api-list-stamp", stamp), ask, using=Submission.objects.db)


def page_key(request: Any, stamp: tuple[str, tuple[Any, ...]], offset: int, limit: int) -> tuple[int, str]:
    """The number of visible submissions and the key of the page as ``request``'s reader sees it now (see the
    module docstring), from the query of :func:`stamp_query`.

    An order of the digest's rows that differed between two reads would only cost a cache miss, since the
    same rows always read the same.
    """
    count, digest, tracks = _stamp(stamp)
    tracks = sorted(int(t) for t in tracks.split(",")) if tracks else []  # each one's version (no ?track=: several)
    user = request.user
    raw = repr((count, offset, limit, digest, [(t, lb_cache.track_version(t)) for t in tracks if t is not None],
                bool(user.is_authenticated and user.is_staff), request.scheme, request.get_host(),
                sorted(request.query_params.lists()), request.accepted_media_type))
    return count, f"{_PREFIX}:{hashlib.sha256(raw.encode()).hexdigest()}"


def _row_keys(request: Any, digests: dict[int, tuple[int, str]]) -> dict[int, str]:
    """Each serialized submission's key: its row's digest, its track's version, and what else its JSON depends on.

    What is the same for every row (the reader's staff flag, scheme and host, each track's version) is read
    once per page: per row it was a sixth of a miss.
    """
    user = request.user
    shared = (bool(user.is_authenticated and user.is_staff), request.scheme, request.get_host())
    versions = {track_id: lb_cache.track_version(track_id) for track_id in {t for t, _ in digests.values()}}
    return {pk: f"{_PREFIX}:row2:" + hashlib.sha256(repr((digest, track_id, versions[track_id],
                                                          *shared)).encode()).hexdigest()
            for pk, (track_id, digest) in digests.items()}


#: Stand-ins for the live fields while a row's JSON is rendered for keeping (no submission holds either value).
_LIVE_STAND_INS = (-7.0e307, "\x00arena-live-progress-stage\x00")


def _kept_row(submission: Submission, serialize: Callable[[Submission], bytes],
              render: Callable[[Any], bytes]) -> tuple[bytes, ...] | None:
    """A row's JSON cut around its live fields' values (rendered with stand-ins), or None if a cut is not unique.

    Each cut is found as the field's key and its stand-in (``"progress":-7e+307``): a name or any other
    text a submitter chooses is rendered as a JSON string, inside which a ``"`` is always escaped, so no
    submitted value can imitate a cut.
    """
    for name, stand_in in zip(LIVE_FIELDS, _LIVE_STAND_INS, strict=True):
        setattr(submission, name, stand_in)
    body = serialize(submission)
    parts: list[bytes] = []
    for name, stand_in in zip(LIVE_FIELDS, _LIVE_STAND_INS, strict=True):
        key = render(name) + b":"
        before, found, body = body.partition(key + render(stand_in))
        if not found or key + render(stand_in) in body:
            return None
        parts.append(before + key)
    return (*parts, body)


def assemble(request: Any, queryset: QuerySet[Submission],
             queries: tuple[tuple[str, tuple[Any, ...]], tuple[str, tuple[Any, ...]]],
             envelope: Callable[[], bytes], serialize: Callable[[Submission], bytes],
             render: Callable[[Any], bytes]) -> bytes | None:
    """A compact JSON page built from cached rows: only the submissions whose row changed are serialized again.

    A running job's progress report changes one row of a page; building the page anew (every row's
    results, serialization) cost tens of milliseconds per report and web process. Here each row's
    JSON is kept under its own digest (:func:`_row_keys`), cut around the values of its live fields
    (:data:`LIVE_FIELDS`, which the digest leaves out and the page's query reads), and the page is the
    envelope (``envelope()``: count, links and an empty ``results``) with the rows spliced in and each
    row's live values rendered by ``render`` (the view's renderer), byte for byte what DRF's compact JSON
    renderer writes for the whole (tests/web/test_page_cache_privacy.py compares them). So a progress
    report costs the page two small queries, not a row's serialization (13 ms of a 20 ms miss on
    PostgreSQL, measured with 1,000 submissions). ``queries`` are the page's (:func:`page_queries`, over
    the same reader and filters as ``queryset``). None when the page changed while this ran (a row left
    or joined it between the two queries, or left the reader's view): the caller builds it whole.
    """
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(*queries[0])
        ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            return None
        cursor.execute(*queries[1])
        found = cursor.fetchall()
    digests = {row[0]: (row[1], row[2]) for row in found}
    live = {row[0]: row[3:] for row in found}
    if set(digests) != set(ids):
        return None
    keys = _row_keys(request, digests)
    rows: dict[str, tuple[bytes, ...]] = cache.get_many(list(keys.values()))
    missing = [pk for pk in ids if keys[pk] not in rows]
    if missing:
        fresh = {s.pk: s for s in queryset.filter(pk__in=missing)}
        if set(fresh) != set(missing):
            return None
        built = {keys[pk]: _kept_row(fresh[pk], serialize, render) for pk in missing}
        if any(parts is None for parts in built.values()):
            return None
        cache.set_many(built, timeout=lb_cache.cache_seconds())
        rows.update(built)  # type: ignore[arg-type]
    head = envelope()
    if not head.endswith(b'"results":[]}'):
        return None
    rendered: dict[tuple[type, Any], bytes] = {}  # a page's live values are a handful of distinct ones

    def value(given: Any) -> bytes:
        if (type(given), given) not in rendered:
            rendered[type(given), given] = render(given)
        return rendered[type(given), given]

    out = []
    for pk in ids:
        parts = rows[keys[pk]]
        progress, stage = live[pk]
        out.append(b"".join((parts[0], value(float(progress)), parts[1], value(stage), parts[2])))
    return head[:-2] + b",".join(out) + b"]}"


def cached_page(request: Any, key: str | None, build: Callable[[], tuple[bytes, str]]) -> HttpResponse:
    """The page's response: from the cache under ``key``, else ``build()`` (body, content type), then stored.

    Pages are stored gzipped and go out that way to every client that takes gzip (browsers, ``requests``,
    ``httpx``, curl with ``--compressed``): a page of 100 submissions is about 155 KB of JSON and a tenth of
    that compressed, and sending the whole of it cost a served request about as much as the rest of its work
    (1,000 submissions on SQLite, one gunicorn worker: 2.5 ms a request against 1.4 ms for a page of 10).
    A client that does not take gzip gets it decompressed. ``key`` None (caching off) builds every time.
    The response carries ``X-Arena-Cache``.
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
        body, content_type = build()
        stored = (gzip.compress(body, compresslevel=6, mtime=0), content_type)
        how = "miss" if key is not None else "bypass"
        if key is not None:
            try:
                cache.set(key, stored, timeout=lb_cache.cache_seconds())
            except Exception:
                logger.warning("API list cache unavailable; page not stored", exc_info=True)
    compressed, content_type = stored
    if lb_cache.accepts_gzip(request):
        response = HttpResponse(compressed, content_type=content_type)
        response["Content-Encoding"] = "gzip"
    else:
        response = HttpResponse(gzip.decompress(compressed), content_type=content_type)
    response["Content-Length"] = str(len(response.content))
    patch_vary_headers(response, ["Accept-Encoding"])
    response[lb_cache.CACHE_HEADER] = how
    return response
