"""Admin: operators inspect submissions, re-run or cancel them."""

from django.contrib import admin, messages

from submissions import services
from submissions.models import EvaluationRun, IllegalTransition, Result, Submission


class ResultInline(admin.TabularInline):
    model = Result
    extra = 0
    readonly_fields = ["evaluation_set", "metric", "value", "ci_low", "ci_high", "num_examples", "suite_version",
                       "seed"]
    can_delete = False


@admin.register(Submission)
class SubmissionAdmin(admin.ModelAdmin):
    list_display = ["name", "track", "owner", "state", "progress", "is_public", "is_baseline", "created_at"]
    list_filter = ["state", "track", "is_public", "is_baseline", "model_type"]
    search_fields = ["name", "owner__username", "artifact_sha256", "public_id"]
    readonly_fields = ["public_id", "artifact_sha256", "artifact_size", "state", "progress", "progress_stage",
                       "failure_code", "failure_reason", "attempts", "task_id", "created_at", "queued_at",
                       "started_at", "finished_at", "heartbeat_at"]
    inlines = [ResultInline]
    actions = ["rerun_selected", "cancel_selected"]

    @admin.action(description="Re-run the evaluation of the selected submissions (not charged to quotas)")
    def rerun_selected(self, request, queryset):
        count = 0
        for submission in queryset:
            try:
                services.rerun(submission)
                count += 1
            except services.ArtifactDeleted:
                self.message_user(request, f"{submission}: its file was deleted when it was cancelled.",
                                  messages.WARNING)
            except IllegalTransition:
                self.message_user(request, f"{submission} is still {submission.state}.", messages.WARNING)
        self.message_user(request, f"Queued {count} submission(s) again.")

    @admin.action(description="Cancel the selected submissions")
    def cancel_selected(self, request, queryset):
        count = sum(1 for submission in queryset if services.cancel(submission))
        self.message_user(request, f"Cancelled {count} submission(s).")


@admin.register(EvaluationRun)
class EvaluationRunAdmin(admin.ModelAdmin):
    list_display = ["submission", "suite_version", "seed", "ok", "error_code", "created_at"]
    list_filter = ["ok", "suite_version"]
