"""REST API for submissions: token-authenticated upload, and a status URL a script can poll."""

from __future__ import annotations

from django.db.models import Q, QuerySet
from rest_framework import mixins, parsers, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from submissions import services
from submissions.models import Submission
from submissions.serializers import SubmissionSerializer


class IsOwnerOrStaff(permissions.BasePermission):
    def has_object_permission(self, request: Request, view, obj: Submission) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return obj.visible_to(request.user)
        return request.user.is_authenticated and (request.user.is_staff or obj.owner_id == request.user.pk)


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
        track = self.request.query_params.get("track")
        if track:
            visible = visible.filter(track__slug=track)
        if self.request.query_params.get("mine") and user.is_authenticated:
            visible = visible.filter(owner=user)
        return visible

    def create(self, request: Request, *args, **kwargs) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        track = data.pop("track")
        upload = data.pop("artifact")
        submission = services.create_submission(request.user, track, upload, **data)
        out = self.get_serializer(submission)
        return Response(out.data, status=status.HTTP_201_CREATED, headers={"Location": out.data["status_url"]})

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, id: str | None = None) -> Response:
        submission = self.get_object()
        if not services.cancel(submission):
            return Response({"detail": f"A {submission.state} submission cannot be cancelled."}, status=409)
        return Response(self.get_serializer(submission).data)
