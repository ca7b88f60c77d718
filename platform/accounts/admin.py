"""Admin: per-track quota limits (editable), the quota ledger and withdrawals (read-only)."""

from django.contrib import admin

from accounts.models import QuotaEntry, TrackQuota, Withdrawal


@admin.register(TrackQuota)
class TrackQuotaAdmin(admin.ModelAdmin):
    list_display = ["track", "daily_limit", "total_limit"]


@admin.register(QuotaEntry)
class QuotaEntryAdmin(admin.ModelAdmin):
    """The ledger is append-only: operators read it here, nobody edits or deletes a row."""

    list_display = ["created_at", "user", "track", "kind", "submission", "reason"]
    list_filter = ["kind", "track"]
    search_fields = ["user__username", "reason"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Withdrawal)
class WithdrawalAdmin(admin.ModelAdmin):
    list_display = ["submission", "withdrawn_by", "created_at"]
