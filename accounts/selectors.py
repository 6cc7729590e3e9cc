"""Reads for teams, members and keys. Every team read goes through the caller's access."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet

from accounts.models import ApiKey, AuditEvent, Invitation, Membership, Team
from accounts.services import KeyPrincipal, invitation_token_hash


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


def api_key_id_query(*, prefix: str) -> QuerySet:
    """The id of the key with this prefix (none if there is none), as a query to filter other
    rows by: it runs inside theirs as a scalar subquery, so the planner sees one key id."""
    return ApiKey.objects.filter(prefix=prefix).values("id")[:1]


def api_key_get(*, team: Team, prefix: str) -> ApiKey | None:
    return ApiKey.objects.filter(team=team, prefix=prefix).first()


def key_scope_choices(*, team: Team) -> tuple[list[str], list[str]]:
    """What a key of `team` may be limited to: the catalog's model ids and the routes the
    team's calls see (global ones and its own, never another team's), each sorted."""
    from routing.selectors import catalog_snapshot

    catalog = catalog_snapshot()
    return sorted(catalog.models), [r.name for r in catalog.routes_for(team_id=team.id)]


@dataclass(frozen=True)
class KeyRow:
    key: ApiKey
    status: str  # active, expired or revoked
    spend_usd: Decimal  # this UTC month, from the usage ledger
    budget_usd: Decimal | None  # the key's own monthly budget, if it has one
    budget_hard: bool | None


def api_key_rows(*, team: Team, now: datetime) -> list[KeyRow]:
    """The team's keys, newest first, each with its spend this month (UTC) and its budget."""
    from usage.months import month_start
    from usage.selectors import budget_list, usage_summary

    spend = {
        group["key"]: group["cost_usd"]
        for group in usage_summary(team_id=team.id, group_by="key", start=month_start(now))
    }
    budgets = {
        row["budget"].api_key_id: row["budget"]
        for row in budget_list(team=team, now=now)
        if row["budget"].api_key_id is not None
    }
    rows = []
    for key in api_key_list(team=team):
        status = "revoked" if key.revoked_at else "active" if key.is_active(now=now) else "expired"
        budget = budgets.get(key.id)
        rows.append(
            KeyRow(
                key=key,
                status=status,
                spend_usd=spend.get(key.prefix, Decimal(0)),
                budget_usd=budget.amount_usd if budget else None,
                budget_hard=budget.hard if budget else None,
            )
        )
    return rows


# The order people are listed in: owners first.
_ROLE_ORDER = [Membership.Role.OWNER, Membership.Role.ADMIN, Membership.Role.BILLING]


def membership_list(*, team: Team) -> list[Membership]:
    """The team's members, owners first, then admins, billing and members, by username."""
    members = Membership.objects.filter(team=team).select_related("user")
    rank = {role: i for i, role in enumerate(_ROLE_ORDER)}
    return sorted(
        members, key=lambda m: (rank.get(m.role, len(rank)), m.user.get_username().lower())
    )


def membership_get(*, team: Team, membership_id: int) -> Membership | None:
    return Membership.objects.filter(team=team, id=membership_id).first()


def invitation_list_open(*, team: Team) -> QuerySet[Invitation]:
    """Invitations neither accepted nor revoked, newest first (expired ones included)."""
    return (
        Invitation.objects.filter(team=team, accepted_at__isnull=True, revoked_at__isnull=True)
        .select_related("invited_by")
        .order_by("-created_at")
    )


def invitation_for_token(*, token: str) -> Invitation | None:
    return (
        Invitation.objects.select_related("team")
        .filter(token_hash=invitation_token_hash(token))
        .first()
    )


def user_by_email(*, email: str):
    """The account of an email address: usernames are addresses, some older ones differing
    only in case; failing that, an account whose email field is the address."""
    User = get_user_model()
    return (
        User.objects.filter(username__iexact=email).first()
        or User.objects.filter(email__iexact=email).order_by("id").first()
    )


def key_scope_unknown(*, team: Team, names: list[str]) -> list[str]:
    """Those of `names` that are neither a model in the catalog nor a route of `team`."""
    models, routes = key_scope_choices(team=team)
    known = set(models) | set(routes)
    return [name for name in names if name not in known]


def team_not_found_message(*, slug: str, shown: int = 10) -> str:
    """What a management command says for an unknown team slug: the teams there are (the
    first `shown` of them) and how to create one, so the operator can fix the command."""
    slugs = list(Team.objects.order_by("slug").values_list("slug", flat=True)[: shown + 1])
    create = "`manage.py createteam SLUG --name NAME` creates one"
    if not slugs:
        return f"No team '{slug}': there are no teams yet; {create}."
    listed = ", ".join(slugs[:shown])
    if len(slugs) > shown:
        listed += ", … (all in the admin, /admin/accounts/team/)"
    return f"No team '{slug}'. Teams: {listed}. Or {create}."


AUDIT_PAGE = 50


def audit_events(*, team: Team, before_id: int | None = None, limit: int = AUDIT_PAGE):
    """The team's audit log, newest first: its changes, and the sign-ins of its present
    members. Paged by id (`before_id`: the last id of the previous page)."""
    members = Membership.objects.filter(team=team).values("user__username")
    events = AuditEvent.objects.filter(
        Q(team=team) | Q(team__isnull=True, action__startswith="signin.", target__in=members)
    )
    if before_id is not None:
        events = events.filter(id__lt=before_id)
    return list(events.order_by("-id")[:limit])
