"""Admin: per-track quota limits (editable), the quota ledger and withdrawals (read-only), and
approving new accounts (``ARENA_SIGNUP_MODE=approval``)."""

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import QueuePriority, QuotaEntry, TrackQuota, Withdrawal

User = get_user_model()


class QueuePriorityInline(admin.StackedInline):
    """A user's place in the evaluation queue, set on the user's own admin page."""

    model = QueuePriority
    can_delete = True
    extra = 0


class ApprovingUserAdmin(UserAdmin):
    """Django's user admin, with the accounts awaiting approval one filter and one action away.

    Under ``ARENA_SIGNUP_MODE=approval`` a sign-up creates an inactive account; a staff member
    filters on *Active: No*, checks who they are, and approves them (or ticks *Active* on one user).
    """

    list_display = ["username", "email", "is_active", "is_staff", "date_joined", "last_login"]
    ordering = ["-date_joined"]
    actions = ["approve_selected"]
    inlines = [*UserAdmin.inlines, QueuePriorityInline]

    @admin.action(description="Approve the selected accounts (make them active)")
    def approve_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = queryset.filter(is_active=False).update(is_active=True)
        self.message_user(request, f"Approved {count} account(s).", messages.SUCCESS)


admin.site.unregister(User)
admin.site.register(User, ApprovingUserAdmin)


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
