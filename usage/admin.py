from django.contrib import admin

from usage.models import InFlightCall, UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """The ledger is append-only: visible here, never editable."""

    list_display = ["created_at", "request_id", "attempt", "team", "model", "status", "cost_usd"]
    list_filter = ["status", "endpoint", "team"]
    search_fields = ["request_id"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(InFlightCall)
class InFlightCallAdmin(admin.ModelAdmin):
    list_display = ["request_id", "team", "requested_model", "started_at", "expires_at"]

    def has_change_permission(self, request, obj=None):
        return False
