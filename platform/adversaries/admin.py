from django.contrib import admin

from adversaries.models import Attack, AttackRun


@admin.register(Attack)
class AttackAdmin(admin.ModelAdmin):
    list_display = ("name", "track", "owner", "state", "passes_per_point", "created_at")
    list_filter = ("state", "track")
    search_fields = ("name", "source_sha256", "owner__username")
    readonly_fields = ("public_id", "source_sha256", "source_size", "created_at")


@admin.register(AttackRun)
class AttackRunAdmin(admin.ModelAdmin):
    list_display = ("attack", "submission", "suite_version", "state", "failure_code", "finished_at")
    list_filter = ("state", "suite_version")
    readonly_fields = ("robust", "provenance", "created_at", "started_at", "finished_at")
