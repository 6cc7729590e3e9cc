"""Reads for teams, members and keys. Every team read goes through the caller's access."""

from django.db.models import QuerySet

from accounts.models import ApiKey, Membership, Team
from accounts.services import KeyPrincipal


def team_access(*, actor, slug: str) -> tuple[Team, str] | None:
    """The team `slug` and the actor's role in it, or None if the actor is not in that team."""
    if isinstance(actor, KeyPrincipal):
        # A management key acts with its own role (admin or billing); any other
        # principal (an inference key, say) holds no role on the management side.
        if actor.team_slug != slug or actor.role not in ApiKey.ManagementRole.values:
            return None
        team = Team.objects.filter(id=actor.team_id).first()
        return (team, actor.role) if team else None
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
