"""Read-only API: tracks and their leaderboards (the same tables, filters and numbers as the pages)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response

from benchmarks.models import EvaluationSet, Track
from evaluator.metrics.effective_robustness import TRANSFORMS
from leaderboards.cache import CACHE_HEADER, cached_data
from leaderboards.exports import as_json
from leaderboards.queries import MODEL_TYPES, Filters, build


class EvaluationSetSerializer(serializers.ModelSerializer):
    class Meta:
        model = EvaluationSet
        # metadata: what the set is (definition, images per cell), as the track page shows it.
        fields = ["name", "version", "role", "shift_kind", "num_examples", "source", "license", "sha256", "metadata"]


class TrackSerializer(serializers.ModelSerializer):
    benchmark = serializers.CharField(source="benchmark.slug")
    evaluation_sets = EvaluationSetSerializer(many=True, read_only=True)

    class Meta:
        model = Track
        fields = ["slug", "name", "benchmark", "task_kind", "input_channels", "input_height", "input_width",
                  "value_min", "value_max", "num_classes", "suite_version", "attack_suite", "threat_models",
                  "attack_points", "notes", "evaluation_sets"]


LEADERBOARD_PARAMETERS = [
    OpenApiParameter("view", str, description='"overview", "shift:<set>", "threat:<label>" or "set:<set>" '
                                              "(detectors): which table."),
    OpenApiParameter("sort", str, description="A column key to sort on (default: the ranking column)."),
    OpenApiParameter("order", str, enum=["asc", "desc"]),
    OpenApiParameter("model_type", str, enum=list(MODEL_TYPES)),
    OpenApiParameter("extra_data", str, enum=["yes", "no"]),
    OpenApiParameter("verified", OpenApiTypes.BOOL, description="Only models verified under the current suite."),
    OpenApiParameter("scale", str, enum=list(TRANSFORMS), description="Line used for effective robustness."),
]


class TrackPagination(LimitOffsetPagination):
    """The default paging with bounds: a ``limit`` or ``offset`` past 2**63 reached SQLite as a server error."""

    max_limit = 1000
    max_offset = 10**9

    def get_offset(self, request: Request) -> int:
        return min(super().get_offset(request), self.max_offset)


class TrackViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = TrackSerializer
    pagination_class = TrackPagination
    lookup_field = "slug"
    queryset = Track.objects.filter(is_public=True).select_related("benchmark").prefetch_related("evaluation_sets")

    @extend_schema(parameters=LEADERBOARD_PARAMETERS, responses={200: OpenApiTypes.OBJECT})
    @action(detail=True)
    def leaderboard(self, request: Request, slug: str | None = None, format: str | None = None) -> Response:
        """The track's leaderboard table: columns (with higher_is_better) and ranked rows with intervals."""
        # ``format``: the router also routes ``leaderboard.json``, whose suffix arrives as this argument.
        track = self.get_object()
        data, how = cached_data(request, "api", track, request.query_params,
                                lambda: as_json(build(track, request.user, Filters.from_params(request.query_params)),
                                                request))
        return Response(data, headers={CACHE_HEADER: how})
