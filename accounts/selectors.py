"""Reads for teams, members and keys. Every team read goes through the caller's access."""

from django.db.models import QuerySet

from accounts.models import ApiKey, Membership, Team
from accounts.services import KeyPrincipal

# What a management key may do on its team: the same as an admin.
MANAGEMENT_KEY_ROLE = Membership.Role.ADMIN


def team_access(*, actor, slug: str) -> tuple[Team, str] | None:
    """The team `slug` and the actor's role in it, or None if the actor is not in that team."""
    if isinstance(actor, KeyPrincipal):
        if actor.team_slug != slug:
            return None
        team = Team.objects.filter(id=actor.team_id).first()
        return (team, MANAGEMENT_KEY_ROLE) if team else None
    membership = (
        Membership.objects.select_related("team").filter(user=actor, team__slug=slug).first()
    )
    if membership is None:
        return None
    return membership.team, membership.role


def teams_for(*, actor) -> QuerySet[Team]:
    if isinstance(actor, KeyPrincipal):
        return Team.objects.filter(id=actor.team_id)
    return Team.objects.filter(memberships__user=actor).order_by("slug")


def api_key_list(*, team: Team) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(team=team).order_by("-created_at")


def api_key_get(*, team: Team, prefix: str) -> ApiKey | None:
    return ApiKey.objects.filter(team=team, prefix=prefix).first()
