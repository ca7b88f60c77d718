from django.contrib import admin

from adversaries.models import Attack, AttackRun
from adversaries.services import withdraw_attack


@admin.register(Attack)
class AttackAdmin(admin.ModelAdmin):
    list_display = ("name", "track", "owner", "state", "passes_per_point", "created_at")
    list_filter = ("state", "track")
    search_fields = ("name", "source_sha256", "owner__username")
    readonly_fields = ("public_id", "source_sha256", "source_size", "state", "created_at")
    actions = ["withdraw"]

    @admin.action(description="Withdraw the selected attacks (their numbers leave every score)")
    def withdraw(self, request, queryset) -> None:  # noqa: ANN001
        for attack in queryset:
            withdraw_attack(attack)
        self.message_user(request, f"{queryset.count()} attack(s) withdrawn.")


@admin.register(AttackRun)
class AttackRunAdmin(admin.ModelAdmin):
    list_display = ("attack", "submission", "suite_version", "state", "failure_code", "finished_at")
    list_filter = ("state", "suite_version")
    readonly_fields = ("robust", "provenance", "created_at", "started_at", "finished_at")
