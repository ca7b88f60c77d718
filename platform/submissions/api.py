"""REST API for submissions: token-authenticated upload, and a status URL a script can poll."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from django.db.models import Q, QuerySet
from django.http import QueryDict
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view, inline_serializer
from rest_framework import mixins, parsers, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from benchmarks import cache_versions as lb_cache
from benchmarks.models import Track
from submissions import list_cache, services
from submissions.models import Submission
from submissions.quota import QuotaExceeded, usage_for
from submissions.serializers import SubmissionSerializer, current_results_prefetch

#: Most submissions one list page holds; also the page size when ``limit`` is not given.
MAX_PAGE_SIZE = 100


class SubmissionPagination(LimitOffsetPagination):
    """``limit``/``offset`` pages of at most :data:`MAX_PAGE_SIZE` submissions; a larger ``limit`` is clamped.

    Unbounded, ``?limit=100000`` had one request serialize every visible submission with its
    scores (about a second at 1,000 models, longer under load). A larger ``limit`` is served as
    the maximum rather than refused, so that a script asking for "everything" still gets a correct
    first page and follows ``next`` (whose URL carries the limit actually used).

    Limit/offset rather than cursor paging: it is the v1 contract that scripts already use (and the
    ``count`` it reports costs one query); rows are ordered on (``created_at``, ``id``), so pages
    do not overlap or skip while nothing is inserted.
    """

    default_limit = MAX_PAGE_SIZE
    max_limit = MAX_PAGE_SIZE

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        """The same parameters, with the bound and the clamping stated where client authors read them."""
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                parameter["description"] = (
                    f"Number of submissions per page: {self.default_limit} when omitted, at most {self.max_limit}. "
                    f"A larger value is served as {self.max_limit} (the `next` link shows the limit used)."
                )
                parameter["schema"] = {**parameter.get("schema", {}), "minimum": 1, "default": self.default_limit}
            elif parameter["name"] == self.offset_query_param:
                parameter["schema"] = {**parameter.get("schema", {}), "minimum": 0}
        return parameters


class IsOwnerOrStaff(permissions.BasePermission):
    def has_object_permission(self, request: Request, view, obj: Submission) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return obj.visible_to(request.user)
        return request.user.is_authenticated and (request.user.is_staff or obj.owner_id == request.user.pk)


class SubmissionFilters(serializers.Serializer):
    """The list's query parameters, validated and documented.

    Read raw, a NUL byte in ``track`` reached PostgreSQL, which refuses it: a server error instead
    of a 400. Being in the schema also lets schemathesis exercise them.
    """

    track = serializers.SlugField(required=False, help_text="Only submissions to this track (its slug).")
    mine = serializers.BooleanField(required=False, default=False, help_text="Only the caller's own submissions.")


def _reader(user: Any) -> tuple[int | None, bool]:
    """Who reads, as far as the list's rows depend on it: their id (None when anonymous) and whether they are staff."""
    if not user.is_authenticated:
        return None, False
    return user.pk, bool(user.is_staff)


def _filters(query: Any) -> tuple[str, bool]:
    """The list's validated filters (track slug or "", mine) from the query string; a bad value is a 400."""
    return _validated_filters(tuple((name, tuple(query.getlist(name))) for name in ("track", "mine")
                                    if name in query))


@lru_cache(maxsize=1024)
def _validated_filters(given: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[str, bool]:
    """:class:`SubmissionFilters` on the given values, kept per distinct query (a refused one raises, not kept)."""
    data = QueryDict(mutable=True)
    for name, values in given:
        data.setlist(name, list(values))
    filters = SubmissionFilters(data=data)
    filters.is_valid(raise_exception=True)
    return filters.validated_data.get("track") or "", bool(filters.validated_data["mine"])


def visible_submissions(reader: int | None, staff: bool, track: str, mine: bool) -> QuerySet[Submission]:
    """The submissions a reader may list, newest first: staff see all, a signed-in user the public ones and
    their own, anyone else the public ones; ``track`` and ``mine`` narrow it. Nothing is prefetched (a
    cached page's count and digest need no more)."""
    qs = Submission.objects.order_by("-created_at", "-id")
    if staff:
        visible = qs
    elif reader is not None:
        visible = qs.filter(Q(is_public=True) | Q(owner_id=reader))
    else:
        visible = qs.filter(is_public=True)
    if track:
        visible = visible.filter(track__slug=track)
    if mine and reader is not None:
        visible = visible.filter(owner_id=reader)
    return visible


@lru_cache(maxsize=4096)
def _stamp(reader: int | None, staff: bool, track: str, mine: bool, offset: int,
           limit: int) -> tuple[str, tuple[Any, ...]]:
    """The query keying one list page (list_cache.stamp_query), compiled once per reader, filters and page.

    The SQL and its parameters are a function of these arguments alone (not of the data), and
    compiling the ORM's querysets cost a cached request more than a millisecond, over half its time.
    """
    return list_cache.stamp_query(visible_submissions(reader, staff, track, mine), offset, limit)


@lru_cache(maxsize=4096)
def _page_queries(reader: int | None, staff: bool, track: str, mine: bool, offset: int,
                  limit: int) -> tuple[tuple[str, tuple[Any, ...]], tuple[str, tuple[Any, ...]]]:
    """The queries a miss runs to find the page's rows (list_cache.page_queries), compiled once like ``_stamp``."""
    return list_cache.page_queries(visible_submissions(reader, staff, track, mine), offset, limit)


@extend_schema_view(list=extend_schema(parameters=[SubmissionFilters]))
class SubmissionViewSet(
    mixins.CreateModelMixin, mixins.RetrieveModelMixin, mixins.ListModelMixin, viewsets.GenericViewSet
):
    """Submit a model (multipart upload), list visible submissions, poll one by id."""

    serializer_class = SubmissionSerializer
    pagination_class = SubmissionPagination
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    parser_classes = [parsers.MultiPartParser, parsers.FormParser, parsers.JSONParser]
    permission_classes = [permissions.IsAuthenticatedOrReadOnly, IsOwnerOrStaff]

    def get_queryset(self) -> QuerySet[Submission]:
        """Visible submissions, newest first, in a fixed number of queries whatever the page size.

        A page costs six queries: its count, its submissions, their tracks, their owners, the
        current-suite results of all of them and those results' evaluation sets (see
        ``current_results_prefetch``); tests/web/test_api_pagination.py holds it to that. Tracks,
        owners and sets are prefetched rather than joined: a page holds a few distinct ones, and
        a join builds one instance per row (a track's JSON fields decoded a hundred times), which
        made a 100-row page about 15% slower than the three extra queries do.
        """
        return self._with_rows(self._visible())

    @staticmethod
    def _with_rows(queryset: QuerySet[Submission]) -> QuerySet[Submission]:
        """What serializing a page needs beside the rows: their tracks, owners and current results."""
        return queryset.prefetch_related("track", "owner", current_results_prefetch())

    def _visible(self) -> QuerySet[Submission]:
        """The reader's visible submissions under the query's filters, newest first, with nothing prefetched."""
        return visible_submissions(*_reader(self.request.user), *_filters(self.request.query_params))

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        """A page of visible submissions, as JSON from the cache when its rows have not changed (list_cache).

        A cached page costs one query (the count and the page's rows' digest, list_cache.stamp_query),
        whose SQL is compiled once per reader and query (``_stamp``); building the page (results,
        serialization, JSON) is what the cache spares. Other formats (the browsable API) are built every
        time.
        """
        renderer = request.accepted_renderer
        if lb_cache.cache_seconds() <= 0 or renderer.format != "json" or self.filter_backends:
            return super().list(request, *args, **kwargs)
        paginator = self.paginator
        limit, offset = paginator.get_limit(request), paginator.get_offset(request)
        reader, filters = _reader(request.user), _filters(request.query_params)
        count, key = list_cache.page_key(request, _stamp(*reader, *filters, offset, limit), offset, limit)

        context = self.get_renderer_context()

        def render(data: Any) -> bytes:
            body = renderer.render(data, request.accepted_media_type, context)
            return body.encode() if isinstance(body, str) else body

        def envelope() -> bytes:
            paginator.request, paginator.limit, paginator.offset, paginator.count = request, limit, offset, count
            return render(paginator.get_paginated_response([]).data)

        def build() -> tuple[bytes, str]:
            queryset = self._with_rows(visible_submissions(*reader, *filters))
            body = None
            compact = getattr(renderer, "compact", False) and renderer.get_indent(request.accepted_media_type,
                                                                                  context) is None
            if compact and offset < count:
                body = list_cache.assemble(request, queryset, _page_queries(*reader, *filters, offset, limit), envelope,
                                           lambda submission: render(self.get_serializer(submission).data), render)
            if body is None:
                page = self.paginate_queryset(queryset)
                body = render(self.get_paginated_response(self.get_serializer(page, many=True).data).data)
            return body, request.accepted_media_type

        return list_cache.cached_page(request, key, build)

    @extend_schema(responses={201: SubmissionSerializer,
                              400: OpenApiResponse(description="Invalid upload, refused before anything is stored "
                                                               "or charged: a field sent twice, a file in a format "
                                                               "the platform does not accept or not the declared "
                                                               "one, safetensors without a known zoo architecture."),
                              409: OpenApiResponse(description="You already submitted the same file to this track "
                                                               "and its evaluation under the current suite stands "
                                                               "(duplicate_of names your earlier submission)."),
                              429: OpenApiResponse(description="Submission quota used up on this track; "
                                                               "Retry-After says when the daily limit resets.")})
    def create(self, request: Request, *args, **kwargs) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        track = data.pop("track")
        upload = data.pop("artifact")
        try:
            submission = services.create_submission(request.user, track, upload, **data)
        except QuotaExceeded as exc:
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
            return Response({"detail": exc.message, "code": "quota_exceeded"},
                            status=status.HTTP_429_TOO_MANY_REQUESTS, headers=headers)
        except services.DuplicateSubmission as exc:
            return Response({"detail": exc.message, "code": "duplicate", "duplicate_of": str(exc.existing.public_id),
                             "status_url": request.build_absolute_uri(
                                 reverse("api-submission-detail", args=[exc.existing.public_id]))},
                            status=status.HTTP_409_CONFLICT)
        out = self.get_serializer(submission)
        return Response(out.data, status=status.HTTP_201_CREATED, headers={"Location": out.data["status_url"]})

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, id: str | None = None, format: str | None = None) -> Response:
        """Cancel a queued or running evaluation; its uploaded file is deleted (the record keeps its sha256)."""
        # ``format``: the router also routes ``cancel.json``, whose suffix arrives as this argument.
        submission = self.get_object()
        if not services.cancel(submission):
            return Response({"detail": f"A {submission.state} submission cannot be cancelled."}, status=409)
        return Response(self.get_serializer(submission).data)

    @action(detail=True, methods=["post"])
    def resume(self, request: Request, id: str | None = None, format: str | None = None) -> Response:
        """Resume an incomplete evaluation (it ran out of its time budget): only its unfinished stages run,
        with a new budget, and it is not charged to the quota."""
        submission = self.get_object()
        try:
            services.resume(submission)
        except services.NotIncomplete:
            return Response({"detail": f"A {submission.state} submission cannot be resumed."}, status=409)
        except services.ArtifactDeleted:
            return Response({"detail": "This submission's file was deleted; it cannot be resumed."}, status=409)
        submission.refresh_from_db()
        return Response(self.get_serializer(submission).data)


QuotaSerializer = inline_serializer("TrackQuotaUsage", {
    "track": serializers.CharField(),
    "used_today": serializers.IntegerField(),
    "used_total": serializers.IntegerField(),
    "daily_limit": serializers.IntegerField(allow_null=True),
    "total_limit": serializers.IntegerField(allow_null=True),
    "left_today": serializers.IntegerField(allow_null=True, help_text="null: exempt (unlimited)"),
    "exempt": serializers.BooleanField(),
}, many=True)


class QuotaView(APIView):
    """Submissions used and left per track (daily limits reset at midnight UTC)."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(responses={200: QuotaSerializer})
    def get(self, request: Request) -> Response:
        tracks = list(Track.objects.filter(is_public=True).order_by("slug"))
        usage = usage_for(request.user, tracks)
        return Response([{"track": t.slug, **usage[t.pk].as_dict()} for t in tracks])
