"""Tenant isolation of /api, as a matrix: every endpoint and method × every kind of caller
gets exactly the documented outcome (README, "Management API"): the roles allowed are let
through; a member without the role gets 403; anyone outside the team gets 404, as if it
did not exist; no credentials or an inference key gets 401.

A new endpoint fails `test_the_matrix_covers_every_api_endpoint` until it is added here."""

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import api_key_create
from routing.models import Route
from tests.factories import spend
from usage.budgets import budget_set

pytestmark = pytest.mark.django_db

EVERYONE = {"owner", "admin", "billing", "member"}
MANAGERS = {"owner", "admin"}  # keys, routes, compare
MONEY = {"owner", "admin", "billing"}  # budgets, alerts, webhooks
BILLING = {"owner", "billing"}  # invoices
OWNERS = {"owner"}  # the audit log

# (method, path under /api/teams/acme/, body, roles let through): the documented policy.
MATRIX = [
    ("get", "", None, EVERYONE),
    ("patch", "", {"alert_webhook_url": ""}, MONEY),
    ("post", "usage-webhook/rotate-secret/", None, MONEY),
    ("get", "keys/", None, MANAGERS),
    ("post", "keys/", {"name": "matrix"}, MANAGERS),
    ("post", "keys/{prefix}/revoke/", None, MANAGERS),
    ("get", "usage/", None, EVERYONE),
    ("get", "usage/export/", None, EVERYONE),
    ("get", "usage/summary/?group_by=day", None, EVERYONE),
    ("get", "routes/", None, EVERYONE),
    ("post", "routes/", {"name": "matrix-route", "targets": ["glm-5"]}, MANAGERS),
    ("put", "routes/team-route/", {"targets": ["glm-5"]}, MANAGERS),
    ("delete", "routes/team-route/", None, MANAGERS),
    ("get", "routes/changes/", None, MANAGERS),
    ("post", "compare/", {"models": []}, MANAGERS),
    ("get", "budget/", None, EVERYONE),
    ("put", "budget/", {"amount_usd": "10"}, MONEY),
    ("get", "alerts/", None, MONEY),
    ("get", "invoices/", None, BILLING),
    ("get", "invoices/2026-10/?preview=1", None, BILLING),
    ("get", "audit/", None, OWNERS),
]
CALLERS = [
    "owner",
    "admin",
    "billing",
    "member",
    "outsider",
    "anonymous",
    "inference-key",
    "management-admin",
    "management-billing",
    "outsider-management-key",
]


@pytest.fixture
def callers(catalog, team, owner, admin, billing, member, outsider, other_team):
    def session(user):
        client = APIClient()
        client.force_login(user)
        return client

    def bearer(secret):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    # Something behind every door: a budget, and a month with usage to invoice.
    budget_set(team=team, amount_usd=Decimal("50"))
    october = datetime(2026, 10, 5, tzinfo=UTC)
    key, _ = api_key_create(team=team, name="october")
    spend(team, key, "1.00", october, "october-call", now=october)
    management = ApiKey.Kind.MANAGEMENT
    return {
        "owner": (session(owner), "owner"),
        "admin": (session(admin), "admin"),
        "billing": (session(billing), "billing"),
        "member": (session(member), "member"),
        "outsider": (session(outsider), None),
        "anonymous": (APIClient(), None),
        "inference-key": (bearer(api_key_create(team=team, name="app")[1]), None),
        "management-admin": (
            bearer(api_key_create(team=team, name="ops", kind=management)[1]),
            "admin",
        ),
        "management-billing": (
            bearer(api_key_create(team=team, name="fin", kind=management, role="billing")[1]),
            "billing",
        ),
        "outsider-management-key": (
            bearer(api_key_create(team=other_team, name="theirs", kind=management)[1]),
            None,
        ),
    }


def expected(caller: str, role: str | None, allowed: set[str]) -> str:
    if caller in ("anonymous", "inference-key"):
        return "401"
    if role is None:
        return "404"
    return "through" if role in allowed else "403"


def outcome(status: int) -> str:
    if status in (401, 403, 404):
        return str(status)
    assert status < 500, status
    return "through"


@pytest.mark.parametrize("caller", CALLERS)
def test_each_caller_gets_exactly_the_documented_outcome_everywhere(callers, team, caller):
    client, role = callers[caller]
    wrong = []
    for method, path, body, allowed in MATRIX:
        Route.objects.update_or_create(
            team=team, name="team-route", defaults={"targets": ["qwen3-32b"]}
        )
        victim, _ = api_key_create(team=team, name="victim")
        url = "/api/teams/acme/" + path.format(prefix=victim.prefix)
        answer = (
            getattr(client, method)(url, body, format="json")
            if body
            else getattr(client, method)(url)
        )
        got, want = outcome(answer.status_code), expected(caller, role, allowed)
        if got != want:
            wrong.append(f"{method.upper()} {url}: {got} ({answer.status_code}), documented {want}")
        if want in ("403", "404", "401"):
            assert answer["content-type"].startswith("application/json"), url
            assert "detail" in answer.json(), url
    assert not wrong, "\n".join(wrong)


def test_another_teams_slug_and_an_unknown_one_answer_alike(callers):
    client, _ = callers["owner"]
    for path in ("", "keys/", "usage/", "invoices/", "audit/"):
        theirs = client.get(f"/api/teams/globex/{path}")
        nobody = client.get(f"/api/teams/no-such-team/{path}")
        assert (theirs.status_code, theirs.json()) == (nobody.status_code, nobody.json())


def _api_routes(patterns=None, prefix=""):
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _api_routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and route.startswith("api/teams/<slug:slug>/"):
            yield re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route[len("api/teams/<slug:slug>/") :])


def test_the_matrix_covers_every_api_endpoint():
    covered = {re.sub(r"\?.*", "", path) for _, path, _, _ in MATRIX}
    normalised = {
        p.replace("{prefix}", "{x}").replace("team-route", "{x}").replace("2026-10", "{x}")
        for p in covered
    }
    for route in _api_routes():
        shape = re.sub(r"\{\w+\}", "{x}", route)
        assert shape in normalised, f"/api/teams/<slug>/{route} is not in the access matrix"
