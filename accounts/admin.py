from django.contrib import admin
from django.db import transaction

from accounts.audit import audit, diff
from accounts.models import ApiKey, AuditEvent, Invitation, Membership, Team
from accounts.services import team_shown


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "markup_percent", "created_at"]
    inlines = [MembershipInline]

    def save_model(self, request, obj, form, change):
        """Staff changes to a team (its markup above all) go in its audit log."""
        before = team_shown(Team.objects.get(id=obj.id)) if change else {}
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            if change and (changed := diff(before, team_shown(obj))):
                audit(team=obj, action="team.update", target=obj.slug, changes=changed)


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


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read only: the database refuses to change or delete an entry anyway."""

    list_display = ["at", "team", "actor", "address", "action", "target"]
    list_filter = ["action", "team"]
    search_fields = ["actor", "target"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
