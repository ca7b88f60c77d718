"""Read-only API: tracks and their leaderboards."""

from __future__ import annotations

from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from benchmarks.models import EvaluationSet, Track
from leaderboards.queries import leaderboard


class EvaluationSetSerializer(serializers.ModelSerializer):
    class Meta:
        model = EvaluationSet
        fields = ["name", "version", "role", "shift_kind", "num_examples", "source", "license", "sha256"]


class TrackSerializer(serializers.ModelSerializer):
    benchmark = serializers.CharField(source="benchmark.slug")
    evaluation_sets = EvaluationSetSerializer(many=True, read_only=True)

    class Meta:
        model = Track
        fields = ["slug", "name", "benchmark", "task_kind", "input_channels", "input_height", "input_width",
                  "value_min", "value_max", "num_classes", "suite_version", "evaluation_sets"]


class TrackViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = TrackSerializer
    lookup_field = "slug"
    queryset = Track.objects.filter(is_public=True).select_related("benchmark").prefetch_related("evaluation_sets")

    @action(detail=True)
    def leaderboard(self, request: Request, slug: str | None = None) -> Response:
        track = self.get_object()
        columns, rows = leaderboard(track, request.user, sort=request.query_params.get("sort", ""))
        return Response({
            "track": track.slug,
            "suite_version": track.suite_version,
            "columns": [{"key": c.key, "evaluation_set": c.evaluation_set.name, "metric": c.metric,
                         "higher_is_better": c.higher_is_better} for c in columns],
            "rows": [
                {
                    "id": str(r.submission.public_id),
                    "name": r.submission.name,
                    "owner": r.submission.owner.username,
                    "rank": r.rank,
                    "is_baseline": r.submission.is_baseline,
                    "scores": {k: {"value": v.value, "ci_low": v.ci_low, "ci_high": v.ci_high,
                                   "num_examples": v.num_examples} for k, v in r.scores.items()},
                }
                for r in rows
            ],
        })
