"""API: where the caller stands with their submission quota on each public track."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.quota import usage_for
from benchmarks.models import Track

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
