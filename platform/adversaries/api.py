"""The attack API: list and read attacks (public), submit one (signed in, multipart)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Prefetch, QuerySet
from rest_framework import mixins, parsers, permissions, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from adversaries import services
from adversaries.checks import PACKAGE_LIMITS
from adversaries.models import Attack, AttackRun
from adversaries.scores import released
from adversaries.targets import lowered_metric
from benchmarks.models import Track


class AttackRunSerializer(serializers.ModelSerializer):
    model = serializers.UUIDField(source="submission.public_id", read_only=True)
    model_name = serializers.CharField(source="submission.name", read_only=True)
    failure_code = serializers.SerializerMethodField()
    metric = serializers.SerializerMethodField()
    robust = serializers.SerializerMethodField()

    class Meta:
        model = AttackRun
        fields = ["model", "model_name", "suite_version", "state", "metric", "robust", "failure_code", "finished_at"]

    def get_failure_code(self, run: AttackRun) -> str:
        return run.failure_code

    def get_metric(self, run: AttackRun) -> str:
        """What ``robust`` holds: ``robust_accuracy`` (classifier tracks) or ``auc`` (detector tracks)."""
        return lowered_metric(run.submission.track)

    def get_robust(self, run: AttackRun) -> dict[str, dict]:
        """Per threat model, the number the attack reached (``metric``), rounded to what its interval justifies
        (adversaries.scores)."""
        metric = lowered_metric(run.submission.track)
        return {label: released(number, metric) for label, number in (run.robust or {}).items()
                if isinstance(number, dict)}


class AttackSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id", read_only=True)
    track = serializers.SlugRelatedField(slug_field="slug", queryset=Track.objects.filter(is_public=True))
    owner = serializers.CharField(source="owner.username", read_only=True)
    source = serializers.FileField(write_only=True)
    runs = AttackRunSerializer(many=True, read_only=True)

    class Meta:
        model = Attack
        fields = ["id", "track", "name", "owner", "description", "paper_url", "code_url", "source", "source_sha256",
                  "source_size", "passes_per_point", "state", "created_at", "runs"]
        read_only_fields = ["source_sha256", "source_size", "passes_per_point", "state", "created_at"]


class AttackViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                    viewsets.GenericViewSet):
    """Attacks on the public tracks, with their runs against public models; POST submits one (multipart)."""

    serializer_class = AttackSerializer
    lookup_field = "public_id"
    permission_classes = [permissions.IsAuthenticatedOrReadOnly]
    parser_classes = [parsers.MultiPartParser, parsers.FormParser]

    def get_queryset(self) -> QuerySet[Attack]:
        runs = AttackRun.objects.filter(submission__is_public=True).select_related("submission__track")
        return (Attack.objects.filter(track__is_public=True).select_related("track", "owner")
                .prefetch_related(Prefetch("runs", queryset=runs)))

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        incoming = self.get_serializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        limit = max(settings.ARENA_ATTACK_MAX_SOURCE_BYTES, PACKAGE_LIMITS.max_total_bytes)
        if data["source"].size > limit:  # refused before it is read into memory
            return Response({"detail": f"The attack's source is {data['source'].size:,} bytes; at most {limit:,} are "
                                       "accepted."}, status=status.HTTP_400_BAD_REQUEST)
        try:
            attack = services.create_attack(request.user, data["track"], data["source"].read(), name=data["name"],
                                            description=data.get("description", ""),
                                            paper_url=data.get("paper_url", ""), code_url=data.get("code_url", ""))
        except services.DuplicateAttack as exc:
            return Response({"detail": str(exc), "existing": str(exc.existing.public_id)},
                            status=status.HTTP_409_CONFLICT)
        except services.AttackRefused as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(self.get_serializer(attack).data, status=status.HTTP_201_CREATED)
