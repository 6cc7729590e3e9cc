from django.contrib import admin

from usage.models import MeteredCall, UsageRecord


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


@admin.register(MeteredCall)
class MeteredCallAdmin(admin.ModelAdmin):
    list_display = [
        "request_id",
        "team",
        "requested_model",
        "started_at",
        "worker",
        "closed_at",
        "swept",
    ]

    def has_change_permission(self, request, obj=None):
        return False


from usage.models import AlertDelivery, AlertEvent, Budget, Invoice, InvoiceAdjustment, InvoiceLine  # noqa: E402


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ["team", "api_key", "amount_usd", "hard", "thresholds"]


@admin.register(AlertEvent)
class AlertEventAdmin(admin.ModelAdmin):
    list_display = ["budget", "month", "kind", "threshold", "spent_usd", "created_at"]
    readonly_fields = [f.name for f in AlertEvent._meta.fields]


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(admin.ModelAdmin):
    list_display = ["event", "channel", "target", "status", "attempts", "last_error", "sent_at"]
    list_filter = ["status", "channel"]


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    readonly_fields = [f.name for f in InvoiceLine._meta.fields if f.name != "id"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    """Invoices are made by closemonth and voided by voidinvoice; here they are read."""

    list_display = ["number", "team", "month", "status", "total_usd", "finalized_at"]
    list_filter = ["status", "month"]
    inlines = [InvoiceLineInline]
    readonly_fields = [f.name for f in Invoice._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(InvoiceAdjustment)
class InvoiceAdjustmentAdmin(admin.ModelAdmin):
    """Staff add charges or credits (negative) for a team's month; the next invoice for that month carries them."""

    list_display = ["team", "month", "amount_usd", "reason", "created_by", "invoice_line"]
    readonly_fields = ["created_by", "created_at", "invoice_line"]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user.get_username()
        super().save_model(request, obj, form, change)

    def has_change_permission(self, request, obj=None):
        return obj is None or obj.invoice_line_id is None
