"""REST API serializers for submissions and their results."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files import File
from django.db.models import F, Prefetch
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from benchmarks.models import Track
from submissions.failures import failure_text
from submissions.models import Result, Submission
from submissions.rounding import round_released
from submissions.scheduling import Place, place
from submissions.uploads import check_artifact, check_zoo_architecture, repeated_field_errors


class ResultSerializer(serializers.ModelSerializer):
    evaluation_set = serializers.CharField(source="evaluation_set.name")

    class Meta:
        model = Result
        fields = ["evaluation_set", "metric", "value", "ci_low", "ci_high", "ci_method", "num_examples",
                  "suite_version", "seed"]

    #: Fields output as the model stores them (plain strings and numbers: DRF's fields would not change them).
    PLAIN_FIELDS = ("metric", "ci_method", "num_examples", "suite_version", "seed")

    def to_representation(self, instance: Result) -> dict:
        """Hidden-set scores leave the platform only at the precision their interval justifies.

        Built directly rather than field by field through DRF: a list page holds hundreds of
        results, and DRF's per-field machinery was a third of its time. The declared fields still
        define the schema; tests/web/test_api_pagination.py checks that both give the same output.
        """
        data = {"evaluation_set": instance.evaluation_set.name}
        for name in self.PLAIN_FIELDS:
            data[name] = getattr(instance, name)
        data["value"], data["ci_low"], data["ci_high"] = round_released(
            instance.metric, instance.value, instance.ci_low, instance.ci_high)
        return {name: data[name] for name in self.Meta.fields}


#: Attribute that :func:`current_results_prefetch` fills on each submission of a list.
CURRENT_RESULTS_ATTR = "current_results"


def current_results_prefetch() -> Prefetch:
    """Every listed submission's results under its track's current suite, with their sets: two queries per page.

    The suite filter runs in the database (through the track's ``suite_version``), so rows of earlier
    suites, which a re-evaluated track keeps, are neither fetched nor built into model instances.
    The evaluation sets come in a query of their own: a page's hundreds of results share a few sets.
    """
    rows = Result.objects.filter(suite_version=F("submission__track__suite_version")).prefetch_related("evaluation_set")
    return Prefetch("results", queryset=rows, to_attr=CURRENT_RESULTS_ATTR)


class CurrentResultsField(serializers.ListSerializer):
    """A submission's released scores under the current suite (empty until finished, or while withheld).

    A list serializer with one :class:`ResultSerializer` child, not a ``SerializerMethodField`` that
    builds a ``ResultSerializer`` per submission: building one re-creates all its fields, which at 100
    submissions a page was most of a list request's time. It also gives the schema the rows' shape.
    Rows come from :func:`current_results_prefetch` when the queryset used it, else from one query.
    """

    def get_attribute(self, instance: Submission) -> list[Result]:
        if instance.state != Submission.State.FINISHED:
            return []
        request = self.context.get("request")
        if instance.scores_withheld_from(request.user if request is not None else None):
            return []  # withheld by the track's Ladder: the owner learns only ladder_note
        rows = getattr(instance, CURRENT_RESULTS_ATTR, None)
        if rows is None:
            rows = list(instance.results.filter(suite_version=instance.track.suite_version)
                        .select_related("evaluation_set"))
        return rows


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
    results = CurrentResultsField(child=ResultSerializer(), read_only=True)
    queue_position = serializers.SerializerMethodField(
        help_text="1 = next to run (jobs_ahead + 1); only while queued, on the status URL (null otherwise)."
    )
    jobs_ahead = serializers.SerializerMethodField(
        help_text="Jobs that will start before this one under the queue's policy (first come, first served with "
                  "fair share between users); only while queued, on the status URL (null otherwise)."
    )
    estimated_start = serializers.SerializerMethodField(
        help_text="Estimated start time from the track's recent evaluation durations (null: no estimate yet)."
    )
    failure_reason = serializers.SerializerMethodField(
        help_text="Why the evaluation failed, in the platform's words (empty unless failed or cancelled)."
    )

    class Meta:
        model = Submission
        fields = [
            "id", "track", "owner", "name", "artifact", "artifact_format", "zoo_architecture", "architecture",
            "paper_url", "code_url", "training_data", "extra_data", "license", "is_public", "model_type",
            "is_baseline", "artifact_sha256", "artifact_size", "state", "failure_code", "failure_reason",
            "progress", "progress_stage", "queue_position", "jobs_ahead", "estimated_start", "created_at", "started_at",
            "finished_at", "status_url",
            "released", "ladder_note",
            "page_url", "results",
        ]
        read_only_fields = [
            "model_type", "is_baseline", "artifact_sha256", "artifact_size", "state", "failure_code",
            "failure_reason", "progress", "progress_stage", "created_at", "started_at", "finished_at",
            "released", "ladder_note",
        ]

    def get_failure_reason(self, obj: Submission) -> str:
        return failure_text(obj)

    def get_status_url(self, obj: Submission) -> str:
        request = self.context.get("request")
        path = f"/api/v1/submissions/{obj.public_id}/"
        return request.build_absolute_uri(path) if request else path

    def get_page_url(self, obj: Submission) -> str:
        request = self.context.get("request")
        path = obj.get_absolute_url()
        return request.build_absolute_uri(path) if request else path

    def _place(self, obj: Submission) -> Place | None:
        """The job's place in its queue, computed once per object and only on the status URL (not in lists)."""
        view = self.context.get("view")
        if obj.state != Submission.State.QUEUED or getattr(view, "action", None) != "retrieve":
            return None
        known = self.context.setdefault("places", {})
        if obj.pk not in known:
            known[obj.pk] = place(obj)
        return known[obj.pk]

    def get_queue_position(self, obj: Submission) -> int | None:
        where = self._place(obj)
        return where.ahead + 1 if where is not None else None

    def get_jobs_ahead(self, obj: Submission) -> int | None:
        where = self._place(obj)
        return where.ahead if where is not None else None

    @extend_schema_field(OpenApiTypes.DATETIME)
    def get_estimated_start(self, obj: Submission) -> str | None:
        where = self._place(obj)
        return where.estimated_start.isoformat() if where is not None and where.estimated_start else None

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        """Refuse a multipart body that repeats a field before reading any of them (uploads.repeated_field_errors)."""
        repeated = repeated_field_errors(data)
        if repeated:
            raise serializers.ValidationError({name: [message] for name, message in repeated.items()},
                                              code="repeated_field")
        return super().to_internal_value(data)

    def validate_artifact(self, value: File) -> File:
        if value.size > settings.ARENA_MAX_UPLOAD_BYTES:
            raise serializers.ValidationError(
                f"The file is larger than the limit of {settings.ARENA_MAX_UPLOAD_BYTES // 1024**2} MiB."
            )
        return value

    def validate_zoo_architecture(self, value: str) -> str:
        return check_zoo_architecture(value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """The format is the one the content shows (uploads.check_artifact); a contradicting declaration is refused."""
        attrs["artifact_format"] = check_artifact(attrs["artifact"], attrs.get("artifact_format", ""),
                                                  attrs.get("zoo_architecture", ""))
        return attrs
