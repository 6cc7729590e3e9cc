from django.contrib import admin

from accounts.models import ApiKey, Invitation, Membership, Team


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "markup_percent", "created_at"]
    inlines = [MembershipInline]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "prefix",
        "name",
        "team",
        "kind",
        "role",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["kind", "team"]
    # The hash is not a secret but has no use to a human; keys are issued by command, API or UI.
    exclude = ["secret_hash"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]

    def has_add_permission(self, request):
        return False


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["email", "team", "role", "invited_by", "created_at", "expires_at"]
    list_filter = ["role", "team"]
    # Invitations are sent from the People page, which emails the only copy of the token.
    exclude = ["token_hash"]
    readonly_fields = ["accepted_at", "accepted_by"]

    def has_add_permission(self, request):
        return False
