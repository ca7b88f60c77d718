"""REST API for submissions: token-authenticated upload, and a status URL a script can poll."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, parsers, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.quota import QuotaExceeded
from submissions import services
from submissions.models import Submission
from submissions.serializers import SubmissionSerializer


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


@extend_schema_view(list=extend_schema(parameters=[SubmissionFilters]))
class SubmissionViewSet(
    mixins.CreateModelMixin, mixins.RetrieveModelMixin, mixins.ListModelMixin, viewsets.GenericViewSet
):
    """Submit a model (multipart upload), list visible submissions, poll one by id."""

    serializer_class = SubmissionSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    parser_classes = [parsers.MultiPartParser, parsers.FormParser, parsers.JSONParser]
    permission_classes = [permissions.IsAuthenticatedOrReadOnly, IsOwnerOrStaff]

    def get_queryset(self) -> QuerySet[Submission]:
        qs = Submission.objects.select_related("track", "owner").prefetch_related("results__evaluation_set")
        user = self.request.user
        if user.is_authenticated and user.is_staff:
            visible = qs
        elif user.is_authenticated:
            visible = qs.filter(Q(is_public=True) | Q(owner=user))
        else:
            visible = qs.filter(is_public=True)
        filters = SubmissionFilters(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        if filters.validated_data.get("track"):
            visible = visible.filter(track__slug=filters.validated_data["track"])
        if filters.validated_data["mine"] and user.is_authenticated:
            visible = visible.filter(owner=user)
        return visible

    @extend_schema(responses={201: SubmissionSerializer, 400: OpenApiResponse(description="Invalid upload."),
                              409: OpenApiResponse(description="The same file is already evaluated on this track "
                                                               "under its current suite (duplicate_of names it)."),
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
            body: dict[str, Any] = {"detail": exc.message, "code": "duplicate"}
            if exc.existing is not None:
                body["duplicate_of"] = str(exc.existing.public_id)
                body["status_url"] = request.build_absolute_uri(
                    reverse("api-submission-detail", args=[exc.existing.public_id]))
            return Response(body, status=status.HTTP_409_CONFLICT)
        out = self.get_serializer(submission)
        return Response(out.data, status=status.HTTP_201_CREATED, headers={"Location": out.data["status_url"]})

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, id: str | None = None, format: str | None = None) -> Response:
        # ``format``: the router also routes ``cancel.json``, whose suffix arrives as this argument.
        submission = self.get_object()
        if not services.cancel(submission):
            return Response({"detail": f"A {submission.state} submission cannot be cancelled."}, status=409)
        return Response(self.get_serializer(submission).data)
