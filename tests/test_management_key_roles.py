"""Management keys act with a role: admin (the default) or billing, honoured by the real /api."""

from datetime import timedelta
from decimal import Decimal

import httpx2
import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import api_key_authenticate, api_key_create
from routing.models import Route
from usage.invoices import invoice_close
from usage.models import UsageRecord
from usage.months import month_start

pytestmark = pytest.mark.django_db


def as_key(secret):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def issue(capsys, *args):
    """Run `issuekey` as an operator would; the secret is the last line of its output."""
    call_command("issuekey", *args)
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.fixture
def last_month_invoice(team, inference_key):
    key, _ = inference_key
    last_month = month_start(month_start(timezone.now()) - timedelta(days=1))
    UsageRecord.objects.create(
        request_id="req_roles_lm",
        team=team,
        api_key=key,
        endpoint="chat",
        requested_model="m",
        model="m",
        status="ok",
        prompt_tokens=1,
        input_per_mtok=Decimal("1"),
        cost_usd=Decimal("0.000001"),
        created_at=last_month + timedelta(days=2),
        recorded_at=last_month + timedelta(days=2),
    )
    invoice = invoice_close(
        team=team, month=last_month.date(), now=timezone.now() + timedelta(minutes=2)
    )
    return invoice, f"{last_month:%Y-%m}"


def test_issuekey_gives_a_management_key_the_billing_role(team, capsys):
    secret = issue(capsys, "acme", "--name", "finance", "--management", "--role", "billing")

    principal = api_key_authenticate(secret=secret)
    key = ApiKey.objects.get(id=principal.key_id)
    assert (key.kind, key.role, principal.role) == ("management", "billing", "billing")


def test_issuekey_management_keys_are_admins_by_default(team, capsys):
    secret = issue(capsys, "acme", "--name", "ops", "--management")
    assert ApiKey.objects.get(id=api_key_authenticate(secret=secret).key_id).role == "admin"


def test_issuekey_refuses_a_role_without_management_and_an_unknown_role(team):
    with pytest.raises(CommandError, match="management keys only"):
        call_command("issuekey", "acme", "--name", "x", "--role", "billing")
    with pytest.raises(CommandError):
        call_command("issuekey", "acme", "--name", "x", "--management", "--role", "owner")
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize(
    "option", [["--models", "gpt-4o"], ["--budget", "5"], ["--rpm", "10"], ["--tpm", "10"]]
)
def test_issuekey_refuses_inference_options_on_a_management_key(team, option):
    with pytest.raises(CommandError, match="inference keys only"):
        call_command("issuekey", "acme", "--name", "ops", "--management", *option)
    assert not ApiKey.objects.exists()


def test_issuekey_with_a_budget_issues_the_key_and_its_hard_budget(team, capsys):
    from usage.models import Budget

    secret = issue(capsys, "acme", "--name", "batch", "--budget", "5")

    key = ApiKey.objects.get(id=api_key_authenticate(secret=secret).key_id)
    budget = Budget.objects.get(api_key=key)
    assert (budget.amount_usd, budget.hard) == (Decimal("5"), True)


def test_the_database_refuses_a_role_on_an_inference_key_or_a_management_key_without_one(team):
    app, _ = api_key_create(team=team, name="app")
    ops, _ = api_key_create(team=team, name="ops", kind=ApiKey.Kind.MANAGEMENT)
    for key, role in ((app, "admin"), (ops, ""), (ops, "owner")):
        with pytest.raises(IntegrityError), transaction.atomic():
            ApiKey.objects.filter(id=key.id).update(role=role)


def test_billing_key_reads_usage_and_invoices_and_sets_budgets(team, capsys, last_month_invoice):
    invoice, month = last_month_invoice
    client = as_key(issue(capsys, "acme", "--name", "finance", "--management", "--role", "billing"))

    usage = client.get("/api/teams/acme/usage/")
    summary = client.get("/api/teams/acme/usage/summary/", {"group_by": "model"})
    invoices = client.get("/api/teams/acme/invoices/")
    detail = client.get(f"/api/teams/acme/invoices/{month}/")

    assert usage.status_code == 200 and [r["request_id"] for r in usage.data["results"]] == [
        "req_roles_lm"
    ]
    assert summary.status_code == 200 and [g["group"] for g in summary.data] == ["m"]
    assert invoices.status_code == 200 and [i["number"] for i in invoices.data] == [invoice.number]
    assert detail.status_code == 200 and detail.data["number"] == invoice.number
    # Budgets are money: billing sets them as well (BUDGET_MANAGERS).
    budget = client.put("/api/teams/acme/budget/", {"amount_usd": "7"}, format="json")
    assert budget.status_code == 200 and Decimal(budget.data["amount_usd"]) == 7


def test_billing_key_cannot_touch_keys_routes_or_team_settings(
    team, capsys, catalog, inference_key
):
    key, _ = inference_key
    client = as_key(issue(capsys, "acme", "--name", "finance", "--management", "--role", "billing"))

    assert client.get("/api/teams/acme/keys/").status_code == 403
    assert client.post("/api/teams/acme/keys/", {"name": "ci"}, format="json").status_code == 403
    assert client.post(f"/api/teams/acme/keys/{key.prefix}/revoke/").status_code == 403
    route = {"name": "finance_route", "targets": ["glm-5"]}
    assert client.post("/api/teams/acme/routes/", route, format="json").status_code == 403
    assert client.put("/api/teams/acme/routes/cheap_chat/", route, format="json").status_code == 403
    assert client.patch("/api/teams/acme/", {"name": "Hacked"}, format="json").status_code == 403

    key.refresh_from_db()
    team.refresh_from_db()
    assert key.revoked_at is None and team.name == "Acme"
    assert ApiKey.objects.filter(team=team).count() == 2  # the app and the billing key
    assert not Route.objects.filter(team=team).exists()


def test_admin_key_does_what_the_billing_key_may_not(team, capsys, catalog):
    # The control for the test above: the same requests succeed with the admin role.
    client = as_key(issue(capsys, "acme", "--name", "ops", "--management"))

    assert client.post("/api/teams/acme/keys/", {"name": "ci"}, format="json").status_code == 201
    route = {"name": "ops_route", "targets": ["glm-5"]}
    assert client.post("/api/teams/acme/routes/", route, format="json").status_code == 201


def test_admin_key_does_not_read_invoices(team, management_key):
    # Invoices are for owners and billing: an admin key is refused, a billing key is not.
    _, secret = management_key
    assert as_key(secret).get("/api/teams/acme/invoices/").status_code == 403


def test_billing_key_sees_nothing_of_another_team(team, other_team, capsys):
    client = as_key(issue(capsys, "acme", "--name", "finance", "--management", "--role", "billing"))
    for url in ("/api/teams/globex/usage/", "/api/teams/globex/invoices/"):
        assert client.get(url).status_code == 404
    assert [t["slug"] for t in client.get("/api/teams/").data] == ["acme"]


def test_api_creates_a_billing_management_key_and_lists_its_role(owner):
    client = APIClient()
    client.force_login(owner)

    created = client.post(
        "/api/teams/acme/keys/", {"name": "fin", "kind": "management", "role": "billing"}, "json"
    )
    inference = client.post("/api/teams/acme/keys/", {"name": "app"}, format="json")

    assert created.status_code == 201 and created.data["role"] == "billing"
    assert api_key_authenticate(secret=created.data["secret"]).role == "billing"
    assert inference.status_code == 201 and inference.data["role"] == ""
    listed = {k["name"]: k["role"] for k in client.get("/api/teams/acme/keys/").data}
    assert listed == {"fin": "billing", "app": ""}


def test_api_lets_an_admin_issue_admin_keys_but_not_billing_keys(admin):
    client = APIClient()
    client.force_login(admin)

    billing = client.post(
        "/api/teams/acme/keys/", {"name": "fin", "kind": "management", "role": "billing"}, "json"
    )
    plain = client.post("/api/teams/acme/keys/", {"name": "ops", "kind": "management"}, "json")

    assert (
        billing.status_code == 403 and "only an owner issues billing keys" in billing.data["detail"]
    )
    assert plain.status_code == 201 and plain.data["role"] == "admin"
    assert list(ApiKey.objects.values_list("name", flat=True)) == ["ops"]


def test_api_refuses_a_role_on_an_inference_key_and_an_unknown_role(owner):
    client = APIClient()
    client.force_login(owner)

    inference = client.post("/api/teams/acme/keys/", {"name": "a", "role": "billing"}, "json")
    owner_role = client.post(
        "/api/teams/acme/keys/", {"name": "b", "kind": "management", "role": "owner"}, "json"
    )

    assert inference.status_code == 400 and "role" in inference.data
    assert owner_role.status_code == 400 and "role" in owner_role.data
    assert not ApiKey.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_billing_key_over_http_against_the_live_portal(team, capsys, live_portal):
    secret = issue(capsys, "acme", "--name", "finance", "--management", "--role", "billing")
    headers = {"Authorization": f"Bearer {secret}"}

    invoices = httpx2.get(f"{live_portal.url}/api/teams/acme/invoices/", headers=headers)
    create = httpx2.post(
        f"{live_portal.url}/api/teams/acme/keys/", json={"name": "ci"}, headers=headers
    )

    assert invoices.status_code == 200 and invoices.json() == []
    assert create.status_code == 403 and "billing" in create.json()["detail"]
    assert not ApiKey.objects.filter(name="ci").exists()


@pytest.mark.django_db(transaction=True)
def test_migration_makes_existing_management_keys_admins():
    executor = MigrationExecutor(connection)
    executor.migrate([("accounts", "0002_team_alert_webhook")])
    old = executor.loader.project_state([("accounts", "0002_team_alert_webhook")]).apps
    team = old.get_model("accounts", "Team").objects.create(slug="old", name="Old")
    OldKey = old.get_model("accounts", "ApiKey")
    OldKey.objects.create(
        team=team, name="ops", kind="management", prefix="tgm_old1", secret_hash="x"
    )
    OldKey.objects.create(
        team=team, name="app", kind="inference", prefix="tgk_old1", secret_hash="y"
    )

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    roles = dict(ApiKey.objects.filter(team__slug="old").values_list("kind", "role"))
    assert roles == {"management": "admin", "inference": ""}
