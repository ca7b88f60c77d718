"""Caching of the public leaderboard: the page, its CSV/JSON exports and the API table.

Building a track's leaderboard at 1,000 models takes the better part of a second (a few thousand
result rows, the effective-robustness band of every model, three plotly figures, a large template),
while the underlying data changes a few times an hour. Anonymous requests, which see exactly the
same page, are therefore served from Django's cache (``CACHE_URL``: Redis in a deployment, so that
every web process shares the entries; local memory per process otherwise): the page and exports by
:class:`LeaderboardCacheMiddleware`, the API's table by :func:`cached_data` inside its view.

Correctness comes first, so an entry's key carries two independent things:

* a **version per track**, kept in the cache and bumped (after the transaction commits) by the
  ``post_save``/``post_delete`` signals of the models a leaderboard is built from (see
  :func:`connect_signals`); this catches edits that keep the set of listed models (a result
  rewritten, a model renamed in the admin, a new baseline fit, a track's settings);
* a **data stamp**: one query that aggregates the listed models (how many, which, the latest
  ``finished_at``) and the track's current baseline fits. Much of the platform changes
  state with ``QuerySet.update()`` (a submission's transitions, visibility, the Ladder's release),
  which sends no signal, and a Celery worker on the default per-process cache cannot bump the web
  server's version at all: the stamp makes a model that finishes, turns private or is withdrawn
  leave the cached page on the very next request, whatever process made the change.

The public **model page** of a finished (or failed, or cancelled) public submission is cached the
same way, by the same middleware: a 1,000-model track means 1,000 such pages, each a handful of
queries and, with corruption results, a plotly heatmap. Its stamp (:func:`lookup_submission`) is
the submission's whole row with its owner's name, its track's row, its withdrawal, its reference
model (name and ``finished_at``) and the track's current fits; the track's version covers the
rest (its results, run and evaluation sets, through the signals above). Pages of queued or running
submissions, whose progress and queue position move without any of that, are never cached. The
default local-memory cache evicts the least recently used entries first, so a crawler walking
every model page pushes out cold model pages, not the leaderboard read a hundred times a second.

Only requests without a session or a pending message (and, on the API, without a token) use the
cache: a signed-in reader sees their private models (and the "mine" ring), so their page is always
built for them. A time limit (``ARENA_LEADERBOARD_CACHE_SECONDS``; 0 turns caching off) bounds
what neither mechanism sees, such as raw SQL.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import struct
import threading
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.messages import get_messages
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models.signals import post_delete, post_save
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.template.loader import get_template, render_to_string
from django.urls import Resolver404, resolve
from django.utils.cache import patch_vary_headers

from accounts.models import Withdrawal
from accounts.read_memo import remembered
from adversaries.signals import attack_scores_changed

# The per-track version lives with the tracks: the submissions API's list cache keys by it too.
from benchmarks.cache_versions import _PREFIX, CACHE_HEADER, accepts_gzip, bump_tracks, cache_seconds, track_version
from benchmarks.models import BaselineFit, EvaluationSet, Track
from leaderboards.fits import TRANSFORMS
from leaderboards.queries import Filters
from submissions.models import EvaluationRun, Result, Submission

logger = logging.getLogger(__name__)

#: Response header that says whether a leaderboard response came from the cache (for operators and tests).


# --- Signals: remember what changed, bump once the transaction commits. -------------------------------

_pending = threading.local()


def _pending_sets() -> tuple[set[int], set[int]]:
    if not hasattr(_pending, "tracks"):
        _pending.tracks, _pending.submissions = set(), set()
    return _pending.tracks, _pending.submissions


def _flush() -> None:
    """Bump the tracks touched since the last commit (submission ids are resolved to tracks in one query)."""
    tracks, submissions = _pending_sets()
    if submissions:
        tracks.update(Submission.objects.filter(pk__in=list(submissions)).values_list("track_id", flat=True))
    pending = list(tracks)
    tracks.clear()
    submissions.clear()
    bump_tracks(pending)


def invalidate(track_id: int | None = None, submission_id: int | None = None) -> None:
    """Bump a track's version when the current transaction commits (immediately outside one).

    Bumping before the commit would let a request that runs in between cache the old data under
    the new version. Several changes in one transaction (an evaluation writes dozens of results)
    cost one bump. Changes rolled back are bumped with the next commit: harmless.
    """
    tracks, submissions = _pending_sets()
    if track_id is not None:
        tracks.add(track_id)
    if submission_id is not None:
        submissions.add(submission_id)
    transaction.on_commit(_flush)


def _submission_changed(sender: type, instance: Submission, **kwargs: Any) -> None:
    if instance.state == Submission.State.FINISHED or kwargs.get("signal") is post_delete:
        invalidate(track_id=instance.track_id)


def _by_submission(sender: type, instance: Any, **kwargs: Any) -> None:
    """A Result, EvaluationRun or Withdrawal: its track through the submission (cached on it when loaded)."""
    field = type(instance)._meta.get_field("submission")
    if field.is_cached(instance):
        invalidate(track_id=instance.submission.track_id)
    else:
        invalidate(submission_id=instance.submission_id)


def _by_track(sender: type, instance: Any, **kwargs: Any) -> None:
    invalidate(track_id=instance.pk if isinstance(instance, Track) else instance.track_id)


def connect_signals() -> None:
    """Connect the receivers (from ``LeaderboardsConfig.ready``); ``dispatch_uid`` keeps them single."""
    receivers: list[tuple[type, Callable[..., None]]] = [
        (Submission, _submission_changed), (Result, _by_submission), (EvaluationRun, _by_submission),
        (Withdrawal, _by_submission), (Track, _by_track), (EvaluationSet, _by_track), (BaselineFit, _by_track),
    ]
    for model, receiver in receivers:
        for signal in (post_save, post_delete):
            signal.connect(receiver, sender=model, weak=False,
                           dispatch_uid=f"leaderboard-cache-{model.__name__}-{id(signal)}")
    # What submitted attacks found lowers robust accuracies on the tables (adversaries.scores).
    attack_scores_changed.connect(_attacks_changed, weak=False, dispatch_uid="leaderboard-cache-attacks")


def _attacks_changed(sender: type, track_id: int, **kwargs: Any) -> None:
    invalidate(track_id=track_id)


# --- Keys. ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lookup:
    """A public track as a cache key needs it, read with two small raw queries (no model instance)."""

    track_id: int
    suite_version: str
    stamp: str
    owner_id: int | None = None  # a model page's: its owner (who may see more than others)


def _current_fits_sql(track: str) -> str:
    """A subquery naming the current fits of the track ``track`` (an SQL expression): refitting changes it."""
    return (f"SELECT COUNT(f.id) || ':' || COALESCE(SUM(f.id), 0) FROM {BaselineFit._meta.db_table} f "
            f"WHERE f.track_id = {track} AND f.is_current = %(true)s")


def _stamp_sql() -> str:
    """The data stamp as raw SQL: the ORM's compilation of it cost more than running it.

    Listed models are ``queries._visible_submissions`` for an anonymous reader: finished, public,
    released and not withdrawn. The statement aggregates the first three over the submissions
    (through the index on track, state and visibility) and the track's withdrawals on their own (a
    few rows; an anti-join per submission, or a join with the track row, each cost as much again);
    tests/web/test_leaderboard_cache.py checks that the stamp follows the listing.
    """
    sub, wd = Submission._meta.db_table, Withdrawal._meta.db_table
    withdrawn = f"FROM {wd} w JOIN {sub} ws ON ws.id = w.submission_id WHERE ws.track_id = %(track)s"
    return (f"SELECT COUNT(s.id), SUM(s.id), MAX(s.finished_at), "
            f"(SELECT COUNT(w.id) || ':' || COALESCE(SUM(w.submission_id), 0) {withdrawn}), "
            f"({_current_fits_sql('%(track)s')}) "
            f"FROM {sub} s WHERE s.track_id = %(track)s AND s.state = %(finished)s AND s.is_public = %(true)s "
            f"AND s.released = %(true)s")


def lookup(slug: str) -> Lookup | None:
    """The public track ``slug`` with its data stamp (see the module docstring); None when there is none.

    The count and sum of the ids of the finished, public, released models and of the withdrawn ones
    tell the listed set apart (a model leaving or joining changes a sum); the latest
    ``finished_at`` changes when a listed model is evaluated again; the current fits' ids change
    when a line is refitted.
    """
    def ask() -> Lookup | None:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id, suite_version FROM {Track._meta.db_table} WHERE slug = %s AND is_public = %s",
                           [slug, True])
            track = cursor.fetchone()
            if track is None:
                return None
            cursor.execute(_stamp_sql(), {"track": track[0], "true": True, "finished": Submission.State.FINISHED})
            row = cursor.fetchone()
        return Lookup(track[0], track[1], ".".join("" if v is None else str(v) for v in row))

    return remembered(("leaderboard-lookup", slug), ask)  # asked again whenever the database changed


#: Submission states whose model page no longer changes by itself (no progress, no queue position).
_SETTLED_STATES = (Submission.State.FINISHED, Submission.State.FAILED, Submission.State.CANCELLED,
                   Submission.State.INCOMPLETE)


def _submission_stamp_sql() -> str:
    """One row: everything a model page shows that can change without a signal reaching this process.

    ``QuerySet.update()`` changes a submission's visibility, state and Ladder release, and a worker
    (another process) writes evaluations, withdrawals and refits. So the whole submission row, its
    owner's name, the track's row and its benchmark's name, the withdrawal's id, the reference
    model's name and ``finished_at`` and the ids of the track's current fits are read here instead.
    Results are rewritten only by an evaluation, which moves ``finished_at``.
    """
    sub, track = Submission._meta.db_table, Track._meta.db_table
    user, wd = Submission._meta.get_field("owner").related_model._meta.db_table, Withdrawal._meta.db_table
    bench = Track._meta.get_field("benchmark").related_model._meta.db_table
    fits = _current_fits_sql("s.track_id")
    return (f"SELECT s.track_id AS arena_track, t.suite_version AS arena_suite, s.is_public AS arena_public, "
            f"s.state AS arena_state, s.owner_id AS arena_owner, "
            f"s.*, u.username, t.*, b.name, w.id, r.name, r.finished_at, ({fits}) "
            f"FROM {sub} s JOIN {user} u ON u.id = s.owner_id JOIN {track} t ON t.id = s.track_id "
            f"JOIN {bench} b ON b.id = t.benchmark_id "
            f"LEFT JOIN {wd} w ON w.submission_id = s.id LEFT JOIN {sub} r ON r.id = s.relative_to_id "
            f"WHERE s.public_id = %(public_id)s")


def lookup_submission(public_id: uuid.UUID) -> Lookup | None:
    """The model page's stamp, or None when an anonymous reader's page is not to be shared.

    None for a submission that does not exist or is private (the view answers 404), and for one
    still queued or running (its page changes with every progress report).
    """
    field = Submission._meta.get_field("public_id")

    def ask() -> tuple[Any, ...] | None:
        with connection.cursor() as cursor:
            cursor.execute(_submission_stamp_sql(), {"public_id": field.get_db_prep_value(public_id, connection),
                                                     "true": True})
            found = cursor.fetchone()
        return None if found is None else tuple(found)

    row = remembered(("model-page-lookup", str(public_id)), ask)
    if row is None:
        return None
    track_id, suite_version, is_public, state, owner_id = row[:5]
    if not is_public or state not in _SETTLED_STATES:
        return None
    return Lookup(track_id, suite_version, f"{public_id}:{hashlib.sha256(repr(row).encode()).hexdigest()}", owner_id)


def _normalized(kind: str, params: Any) -> list[tuple[str, str]]:
    """The parameters that change the response, in one canonical form per equivalent URL."""
    if kind == MODEL_PAGE:
        transform = params.get("transform")
        return [("transform", transform if transform in TRANSFORMS else "logit")]
    return sorted(Filters.from_params(params).as_params().items())


def cache_key(kind: str, found: Lookup, request: HttpRequest, params: Any) -> str:
    """One entry per kind, track version and data stamp, host (exports hold absolute URLs) and filters.

    Filters are normalised first (``Filters.as_params``; the model page's only one is ``transform``),
    so equivalent URLs share an entry and unknown parameters (``?utm_source=...``) do not split the cache.
    """
    normalized = _normalized(kind, params)
    raw = repr((found.stamp, found.suite_version, request.scheme, request.get_host(), normalized))
    digest = hashlib.sha256(raw.encode()).hexdigest()[:32]
    return f"{_PREFIX}:{kind}:{found.track_id}:{track_version(found.track_id)}:{digest}"


def shareable(request: HttpRequest) -> bool:
    """A GET by a reader without a session or a pending message: the response every such reader gets.

    Pages sign people in with the session cookie only, so without one the reader is anonymous
    (this holds before the authentication middleware has run). The messages cookie means a message
    to show on this page, for this reader.
    """
    if cache_seconds() <= 0 or request.method != "GET":
        return False
    cookies = request.COOKIES
    return settings.SESSION_COOKIE_NAME not in cookies and "messages" not in cookies


# --- Pages and exports: a middleware, so that a hit skips the rest of the stack. ----------------------

#: The kind of entry of a model page (a submission's public page).
MODEL_PAGE = "model"
#: URL names served through the cache, and the kind of entry each is.
CACHED_VIEWS = {"leaderboard": "page", "leaderboard-csv": "csv", "leaderboard-json": "json",
                "submission-detail": MODEL_PAGE}
#: Never kept with a cached body: per-response or recomputed headers.
_DROPPED_HEADERS = {"set-cookie", "content-length", "content-encoding", CACHE_HEADER.lower()}


def _from_cache(request: HttpRequest, stored: dict[str, Any], how: str = "hit") -> HttpResponse:
    """A response from a stored entry: the compressed body as it is when the client takes gzip."""
    if accepts_gzip(request):
        response = HttpResponse(stored["gzip"])
        response["Content-Encoding"] = "gzip"
    else:
        response = HttpResponse(gzip.decompress(stored["gzip"]))
    for name, value in stored["headers"]:
        response[name] = value
    patch_vary_headers(response, ["Accept-Encoding"])
    response["Content-Length"] = str(len(response.content))
    response[CACHE_HEADER] = how
    return response


class LeaderboardCacheMiddleware:
    """Serves leaderboards, their CSV/JSON exports and model pages from the cache to readers who may share them.

    It sits near the top of the stack (after the security and static-file middleware): a hit costs
    two small queries (one for a model page) and a cache read, and skips sessions, authentication,
    CSRF, the CSP header's construction and the view. What it stores is the final response of the rest of the stack
    (headers included, cookies never), so a hit is byte for byte what the view would have sent.
    Bodies are kept gzipped: a 1,000-model page is ~1.1 MB of HTML and ~160 KB compressed, which is
    what browsers ask for; the rare client without gzip gets it decompressed.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        kind, target = self._route(request)
        if kind is None:
            return self.get_response(request)
        if not shareable(request):
            response = self.get_response(request)
            if not response.has_header(CACHE_HEADER):  # the view may have used a shared body (page_for_reader)
                response[CACHE_HEADER] = "bypass"
            return response
        found = lookup_submission(target) if kind == MODEL_PAGE else lookup(target)
        if found is None:  # no such public track, or a model page not to share: the view answers
            return self.get_response(request)
        try:
            key = cache_key(kind, found, request, request.GET)
            stored = cache.get(key)
        except Exception:  # a cache server that is down must not take the leaderboard down with it
            logger.warning("leaderboard cache unavailable; building the page", exc_info=True)
            response = self.get_response(request)
            response[CACHE_HEADER] = "bypass"
            return response
        if stored is not None:
            return _from_cache(request, stored)
        response = self.get_response(request)
        if response.status_code != 200 or getattr(response, "streaming", False) or response.has_header("Set-Cookie") \
                or response.has_header("Content-Encoding"):
            response[CACHE_HEADER] = "miss"
            return response
        stored = {"gzip": gzip.compress(response.content, compresslevel=6),
                  "headers": [(name, value) for name, value in response.items()
                              if name.lower() not in _DROPPED_HEADERS]}
        try:
            cache.set(key, stored, timeout=cache_seconds())
        except Exception:
            logger.warning("leaderboard cache unavailable; page not stored", exc_info=True)
        if accepts_gzip(request):
            return _from_cache(request, stored, "miss")
        patch_vary_headers(response, ["Accept-Encoding"])
        response[CACHE_HEADER] = "miss"
        return response

    @staticmethod
    def _route(request: HttpRequest) -> tuple[str | None, Any]:
        """The kind of entry and what it is of: a track's slug, or a submission's public id."""
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return None, ""
        kind = CACHED_VIEWS.get(match.url_name or "")
        if kind is None:
            return None, ""
        return kind, match.kwargs.get("public_id") if kind == MODEL_PAGE else match.kwargs.get("slug", "")


# --- The API's table: cached in the view, after DRF's authentication and throttles. ------------------

def cached_data(request: Any, kind: str, track: Track, params: Any, build: Callable[[], Any]) -> tuple[Any, str]:
    """``build()``'s data (JSON-ready), from the cache when shareable; also "hit", "miss" or "bypass".

    ``request`` is DRF's: its user is authenticated by token as well as by session.
    """
    if not shareable(request) or request.user.is_authenticated:
        return build(), "bypass"
    found = lookup(track.slug)
    if found is None:
        return build(), "bypass"
    key = cache_key(kind, found, request, params)
    data = cache.get(key)
    if data is not None:
        return data, "hit"
    data = build()
    cache.set(key, data, timeout=cache_seconds())
    return data, "miss"


# --- Pages for signed-in readers: a shared body, the reader's header filled in. -----------------------

#: Where base.html leaves the reader's own parts (the header's links and form, the messages) in a shared body.
NAV_MARKER = "<!--arena:nav-->"
MESSAGES_MARKER = "<!--arena:messages-->"
#: A body holding a form's CSRF token belongs to one session: it is never stored.
_CSRF_FIELD = 'name="csrfmiddlewaretoken"'


def _own_listed_sql() -> str:
    """The reader's own models a leaderboard lists (``queries._visible_submissions``), private ones included."""
    sub, wd = Submission._meta.db_table, Withdrawal._meta.db_table
    return (f"SELECT COUNT(s.id), SUM(s.id), MAX(s.finished_at), "
            f"SUM(CASE WHEN s.is_public = %(true)s THEN 1 ELSE 0 END) FROM {sub} s "
            f"LEFT JOIN {wd} w ON w.submission_id = s.id WHERE s.track_id = %(track)s AND s.owner_id = %(owner)s "
            f"AND s.state = %(finished)s AND s.released = %(true)s AND w.id IS NULL")


def reader_scope(kind: str, request: HttpRequest, found: Lookup) -> str | None:
    """Which readers see the same page body as this one (their header aside); None: build it for them alone.

    * a leaderboard: every anonymous reader; every signed-in reader with no model of their own on
      it (what they see differs from the anonymous page only by a sentence); a reader with models
      on it (ringed, and their private ones listed) shares only with themselves, under a stamp of
      those models (which, how many public, the latest ``finished_at``) read now;
    * a model page (of a public, settled submission: ``found`` says so): every anonymous reader,
      every signed-in reader other than its owner and staff; the owner and staff (forms, withheld
      scores) get a page built for them.
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return "anonymous"
    if kind == MODEL_PAGE:
        return None if user.is_staff or user.pk == found.owner_id else "signed-in"
    def ask() -> tuple[Any, ...] | None:
        with connection.cursor() as cursor:
            cursor.execute(_own_listed_sql(), {"track": found.track_id, "owner": user.pk, "true": True,
                                               "finished": Submission.State.FINISHED})
            row = cursor.fetchone()
        return None if row is None else tuple(row)

    own = remembered(("own-listed", found.track_id, user.pk), ask)
    if not own or not own[0]:
        return "signed-in"
    return f"user:{user.pk}:" + ".".join("" if v is None else str(v) for v in own)


def _deflate(data: bytes) -> bytes:
    """Raw deflate ending in a full flush: byte-aligned, not final, and independent of what comes before it."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


def _crc_shift(length: int) -> tuple[int, ...]:
    """The linear part of CRC-32 over ``length`` more bytes, as the images of the 32 state bits.

    ``zlib.crc32(data, v)`` is ``L(v) ^ zlib.crc32(data, 0)`` with ``L`` depending only on
    ``len(data)``, so the CRC of (reader's header + shared tail) is the shared tail's CRC XOR ``L``
    applied to the CRC so far: no pass over the tail per request.
    """
    zeros = bytes(length)
    base = zlib.crc32(zeros, 0)
    return tuple(zlib.crc32(zeros, 1 << bit) ^ base for bit in range(32))


def _shifted(value: int, shift: tuple[int, ...]) -> int:
    out = 0
    for bit in range(32):
        if value >> bit & 1:
            out ^= shift[bit]
    return out


#: gzip member header: deflate, no name, no mtime, unknown OS.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
#: The final empty deflate block.
_FINAL_BLOCK = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS).flush()


def _split(body: str) -> tuple[Any, ...] | None:
    """The body, stored compressed, around its two markers (None without them).

    Kept: the head and the tail (up to and after the reader's header and messages) as independent deflate
    segments, the few bytes between the markers as they are, the head's CRC, the tail's CRC, length
    and CRC shift. A hit for a client that takes gzip (every browser) joins them with the reader's
    header into one gzip stream without compressing or even reading the shared 1 MB again.
    """
    head, nav, rest = body.partition(NAV_MARKER)
    middle, messages, tail = rest.partition(MESSAGES_MARKER)
    if not nav or not messages:
        return None
    head_b, middle_b, tail_b = head.encode(), middle.encode(), tail.encode()
    return (_deflate(head_b), zlib.crc32(head_b), len(head_b), middle_b, _deflate(tail_b), zlib.crc32(tail_b),
            len(tail_b), _crc_shift(len(tail_b)))


#: Stands for the reader's CSRF token in a kept header (a NUL: no username, URL or markup holds one).
_TOKEN_SLOT = "\x00arena-csrf-token\x00"
#: The reader's header as rendered for a (user id, username) with the slot for the token, per process.
_kept_navs: dict[tuple[Any, str], tuple[bytes, bytes | None]] = {}
_MAX_KEPT_NAVS = 4096


def _reader_nav(request: HttpRequest) -> bytes:
    """The reader's header (``_site_nav.html``): rendered once per reader and process, the token filled per request.

    The template reads only the user (signed in or not, and the username) and the CSRF token; URLs are fixed
    for the process. So the rendered text is kept under (id, username) with :data:`_TOKEN_SLOT` where the
    token goes, and each request gets its own masked token from ``get_token`` (what ``{% csrf_token %}``
    calls, cookie update included). Rendering it per request was a sixth of a signed-in page's worker time.
    """
    user = request.user
    key = (user.pk, user.get_username()) if user.is_authenticated else (None, "")
    kept = _kept_navs.get(key)
    if kept is None:
        text = get_template("_site_nav.html").render({"user": user, "csrf_token": _TOKEN_SLOT})
        before, slot, after = text.partition(_TOKEN_SLOT)
        if _TOKEN_SLOT in after:  # not the template this function was written for: render it per request
            return render_to_string("_site_nav.html", request=request).encode()
        kept = (before.encode(), after.encode() if slot else None)
        if len(_kept_navs) >= _MAX_KEPT_NAVS:
            _kept_navs.clear()
        _kept_navs[key] = kept
    if kept[1] is None:  # no form in it (an anonymous reader's header)
        return kept[0]
    return kept[0] + get_token(request).encode() + kept[1]


@functools.cache
def _no_messages() -> bytes:
    """``_messages.html`` rendered with no messages, once per process."""
    return get_template("_messages.html").render({"messages": []}).encode()


def _reader_messages(request: HttpRequest) -> bytes:
    """The reader's messages (``_messages.html``); with none, the template's empty rendering, kept per process."""
    if len(get_messages(request)):
        return render_to_string("_messages.html", request=request).encode()
    return _no_messages()


def _fill(request: HttpRequest, parts: tuple[Any, ...]) -> HttpResponse:
    """The shared body with this reader's header and messages (rendered now, with their CSRF token)."""
    head_z, head_crc, head_len, middle, tail_z, tail_crc, tail_len, tail_shift = parts
    nav = _reader_nav(request)
    messages = _reader_messages(request)
    if not accepts_gzip(request):
        inflate = zlib.decompressobj(-zlib.MAX_WBITS).decompress
        response = HttpResponse(b"".join((inflate(head_z), nav, middle, messages,
                                          zlib.decompressobj(-zlib.MAX_WBITS).decompress(tail_z))))
    else:
        reader = nav + middle + messages
        crc = _shifted(zlib.crc32(reader, head_crc), tail_shift) ^ tail_crc
        size = (head_len + len(reader) + tail_len) & 0xFFFFFFFF
        response = HttpResponse(b"".join((_GZIP_HEADER, head_z, _deflate(reader), tail_z, _FINAL_BLOCK,
                                          struct.pack("<II", crc, size))))
        response["Content-Encoding"] = "gzip"
    patch_vary_headers(response, ["Accept-Encoding"])
    return response


def page_for_reader(request: HttpRequest, kind: str, target: Any,
                    render_page: Callable[[bool], HttpResponse]) -> HttpResponse:
    """A leaderboard or model page for any reader, its body shared through the cache where it may be.

    The middleware above serves whole responses to readers without a session; this serves everyone
    else (signed in, or with a message to show) from a **body** cached under the same track version
    and data stamp as the middleware's entries, plus :func:`reader_scope`, rendered without the
    reader's header (``render_page(True)``: base.html leaves :data:`NAV_MARKER` and
    :data:`MESSAGES_MARKER`), which is rendered for the reader and filled in. So a signed-in reload
    of a 1,000-model leaderboard costs the stamps, a cache read and the header, not the board.
    ``render_page(False)`` builds the page whole, for readers who share it with nobody.
    """
    if cache_seconds() <= 0 or request.method != "GET" or shareable(request):
        return render_page(False)  # (shareable: the middleware keeps the whole response, for every such reader)
    found = lookup_submission(target) if kind == MODEL_PAGE else lookup(target)
    if found is None:  # no such public track, or a model page not to share: the view answers as it would
        return render_page(False)
    scope = reader_scope(kind, request, found)
    if scope is None:
        return render_page(False)
    try:
        key = f"{cache_key(kind, found, request, request.GET)}:body:{hashlib.sha256(scope.encode()).hexdigest()[:32]}"
        parts = cache.get(key)
    except Exception:
        logger.warning("leaderboard cache unavailable; building the page", exc_info=True)
        return render_page(False)
    how = "body-hit"
    if parts is None:
        how = "body-miss"
        response = render_page(True)
        if response.status_code != 200 or getattr(response, "streaming", False):
            return render_page(False)
        body = response.content.decode(response.charset)
        parts = None if _CSRF_FIELD in body else _split(body)
        if parts is None:  # belongs to one session, or not a layout with the markers
            return render_page(False)
        try:
            cache.set(key, parts, timeout=cache_seconds())
        except Exception:
            logger.warning("leaderboard cache unavailable; page body not stored", exc_info=True)
    response = _fill(request, parts)
    response[CACHE_HEADER] = how
    return response
