"""The web UI's navigation: each role sees only the pages it may open."""

from django.urls import reverse

from accounts.permissions import (
    AUDIT_READERS,
    BILLING_READERS,
    BUDGET_MANAGERS,
    KEY_MANAGERS,
    PEOPLE_MANAGERS,
    USAGE_READERS,
)
from accounts.selectors import teams_for

# (url name, label, roles that may open it); every page takes the team's slug.
TEAM_PAGES = [
    ("dashboard", "Overview", USAGE_READERS),
    ("usage-explorer", "Calls", USAGE_READERS),
    ("keys", "Keys", KEY_MANAGERS),
    ("budgets", "Budgets", BUDGET_MANAGERS),
    ("models", "Models", USAGE_READERS),
    ("savings", "Savings", USAGE_READERS),
    ("routes", "Routes", USAGE_READERS),
    ("people", "People", PEOPLE_MANAGERS),
    ("invoices", "Invoices", BILLING_READERS),
    ("audit-log", "Audit log", AUDIT_READERS),
]


def team_navigation(request) -> dict:
    """Template context: the current team's pages the caller's role allows, and the caller's
    other teams for the switcher. Only team pages (which record the caller's role) get it."""
    access = getattr(request, "team_access", None)
    if access is None:
        return {}
    team, role = access
    current = request.resolver_match.url_name if request.resolver_match else None
    pages = [
        {"label": label, "url": reverse(name, args=[team.slug]), "current": current == name}
        for name, label, roles in TEAM_PAGES
        if role in roles
    ]
    return {
        "nav_pages": pages,
        "nav_role": role,
        "nav_teams": list(teams_for(actor=request.user).only("slug", "name")),
    }
