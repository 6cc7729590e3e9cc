"""Team-scoped access for the management API and the web UI."""

from django.http import Http404
from rest_framework.exceptions import NotFound, PermissionDenied

from accounts.models import Membership
from accounts.selectors import team_access

Role = Membership.Role
# Who may use what, by role; the pages, the API and the navigation all read these.
KEY_MANAGERS = (Role.OWNER, Role.ADMIN)
USAGE_READERS = (Role.OWNER, Role.ADMIN, Role.BILLING, Role.MEMBER)
BILLING_READERS = (Role.OWNER, Role.BILLING)
# Budgets are money: finance sets them as well as the people who run the apps.
BUDGET_MANAGERS = (Role.OWNER, Role.ADMIN, Role.BILLING)
# Routes decide where traffic goes; compare spends the team's money on test prompts.
ROUTE_MANAGERS = (Role.OWNER, Role.ADMIN)
PEOPLE_MANAGERS = (Role.OWNER, Role.ADMIN)
# Who changed what, from where, and who signed in: for the team's owners.
AUDIT_READERS = (Role.OWNER,)
# Who may issue a management key of each role. Nobody mints a key that may do what they may
# not: an admin cannot read invoices, so only an owner issues a billing key.
MANAGEMENT_KEY_ISSUERS = {
    Role.ADMIN: (Role.OWNER, Role.ADMIN),
    Role.BILLING: (Role.OWNER,),
}


def management_key_roles(actor_role: str) -> list[str]:
    """The management key roles `actor_role` may issue."""
    return [
        key_role for key_role, issuers in MANAGEMENT_KEY_ISSUERS.items() if actor_role in issuers
    ]


def require_team(request, slug: str, roles=USAGE_READERS):
    """The team for `slug` if the caller holds one of `roles` in it.

    A caller outside the team gets 404, as if it did not exist, so team
    slugs cannot be probed; a member without the role gets 403.
    """
    access = team_access(actor=request.user, slug=slug)
    if access is None:
        raise NotFound("No such team.")
    team, role = access
    if role not in roles:
        raise PermissionDenied(f"Your role in this team ({role}) does not allow this.")
    request.team_access = access
    return team


def require_team_page(request, slug: str, roles=USAGE_READERS):
    """`require_team` for HTML pages: 404 whether the caller is outside the team or lacks the role.

    The caller's role is kept on the request for the navigation (accounts.navigation).
    """
    access = team_access(actor=request.user, slug=slug)
    if access is None or access[1] not in roles:
        raise Http404("No such team.")
    request.team_access = access
    return access[0]
