"""REST API serializers for submissions and their results."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from benchmarks.models import Track
from leaderboards.precision import round_released
from submissions.models import Result, Submission


class ResultSerializer(serializers.ModelSerializer):
    evaluation_set = serializers.CharField(source="evaluation_set.name")

    class Meta:
        model = Result
        fields = ["evaluation_set", "metric", "value", "ci_low", "ci_high", "ci_method", "num_examples",
                  "suite_version", "seed"]

    def to_representation(self, instance: Result) -> dict:
        """Hidden-set scores leave the platform only at the precision their interval justifies."""
        data = super().to_representation(instance)
        data["value"], data["ci_low"], data["ci_high"] = round_released(
            instance.metric, instance.value, instance.ci_low, instance.ci_high)
        return data


class OmittableBooleanField(serializers.BooleanField):
    """A boolean that keeps its default when a multipart form omits it.

    DRF reads a missing boolean in form data as an unticked checkbox (False); a training script
    that leaves ``is_public`` out of its upload means "the default", not "private".
    """

    default_empty_html = serializers.empty


class SubmissionSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id", read_only=True)
    track = serializers.SlugRelatedField(slug_field="slug", queryset=Track.objects.filter(is_public=True))
    owner = serializers.CharField(source="owner.username", read_only=True)
    artifact = serializers.FileField(write_only=True)
    artifact_format = serializers.ChoiceField(choices=Submission.Format.choices, required=False, allow_blank=True)
    is_public = OmittableBooleanField(default=True)
    extra_data = OmittableBooleanField(default=False)
    status_url = serializers.SerializerMethodField()
    page_url = serializers.SerializerMethodField()
    results = serializers.SerializerMethodField()
    queue_position = serializers.SerializerMethodField(
        help_text="1 = next to run; only while queued, on the status URL (null otherwise)."
    )

    class Meta:
        model = Submission
        fields = [
            "id", "track", "owner", "name", "artifact", "artifact_format", "zoo_architecture", "architecture",
            "paper_url", "code_url", "training_data", "extra_data", "license", "is_public", "model_type",
            "is_baseline", "artifact_sha256", "artifact_size", "state", "failure_code", "failure_reason",
            "progress", "progress_stage", "queue_position", "created_at", "started_at", "finished_at", "status_url",
            "released", "ladder_note",
            "page_url", "results",
        ]
        read_only_fields = [
            "model_type", "is_baseline", "artifact_sha256", "artifact_size", "state", "failure_code",
            "failure_reason", "progress", "progress_stage", "created_at", "started_at", "finished_at",
            "released", "ladder_note",
        ]

    def get_status_url(self, obj: Submission) -> str:
        request = self.context.get("request")
        path = f"/api/v1/submissions/{obj.public_id}/"
        return request.build_absolute_uri(path) if request else path

    def get_page_url(self, obj: Submission) -> str:
        request = self.context.get("request")
        path = obj.get_absolute_url()
        return request.build_absolute_uri(path) if request else path

    def get_queue_position(self, obj: Submission) -> int | None:
        view = self.context.get("view")
        if obj.state != Submission.State.QUEUED or getattr(view, "action", None) != "retrieve":
            return None  # one count query per object: only on the status URL, not in lists
        return Submission.objects.filter(state=Submission.State.QUEUED, queued_at__lt=obj.queued_at).count() + 1

    def get_results(self, obj: Submission) -> list[dict]:
        if obj.state != Submission.State.FINISHED:
            return []
        request = self.context.get("request")
        if not obj.released and not (request is not None and request.user.is_staff):
            return []  # withheld by the track's Ladder: the owner learns only ladder_note
        rows = [r for r in obj.results.all() if r.suite_version == obj.track.suite_version]
        return ResultSerializer(rows, many=True).data

    def validate_artifact(self, value):
        if value.size > settings.ARENA_MAX_UPLOAD_BYTES:
            raise serializers.ValidationError(
                f"The file is larger than the limit of {settings.ARENA_MAX_UPLOAD_BYTES // 1024**2} MiB."
            )
        return value

    def validate(self, attrs):
        if attrs.get("artifact_format") == Submission.Format.SAFETENSORS and not attrs.get("zoo_architecture"):
            raise serializers.ValidationError({"zoo_architecture": "Safetensors weights need a zoo architecture."})
        return attrs
