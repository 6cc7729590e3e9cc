"""The audit log: every change to a team, and its members' sign-ins, with who, when and from
which address; append-only in the database; read by the team's owners alone."""

from datetime import UTC, datetime
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import ApiKey, AuditEvent
from accounts.services import api_key_create
from tests.factories import spend

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"  # the factories' password
HOME = "203.0.113.7"  # where the owner works from


def actions(team):
    return [(e.action, e.target) for e in AuditEvent.objects.filter(team=team).order_by("id")]


def test_the_database_refuses_to_change_or_remove_an_entry(team):
    api_key_create(team=team, name="app")
    event = AuditEvent.objects.get(team=team, action="key.create")

    for attempt in (
        lambda: AuditEvent.objects.filter(id=event.id).update(action="nothing"),
        lambda: AuditEvent.objects.filter(id=event.id).delete(),
        lambda: connection.cursor().execute("DELETE FROM accounts_auditevent"),
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            attempt()
    assert AuditEvent.objects.get(id=event.id).action == "key.create"


@pytest.mark.django_db(transaction=True)
def test_the_database_refuses_to_truncate_the_log(team):
    api_key_create(team=team, name="app")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        with connection.cursor() as cursor:
            # As in production: this session has not been allowed to reset the log.
            cursor.execute("SET LOCAL tollgate.audit_reset = ''")
            cursor.execute("TRUNCATE accounts_auditevent")
    assert AuditEvent.objects.filter(team=team).exists()


def test_changes_through_the_pages_and_the_api_name_who_and_from_where(catalog, team, owner, admin):
    browser = Client(REMOTE_ADDR=HOME)
    assert (
        browser.post("/login/", {"username": owner.username, "password": PASSWORD}).status_code
        == 302
    )
    # A key issued and revoked on the Keys page.
    browser.post(
        "/t/acme/keys/", {"kind": "inference", "key-name": "billing-app", "key-budget_kind": "hard"}
    )
    key = ApiKey.objects.get(team=team, name="billing-app")
    browser.post(f"/t/acme/keys/{key.prefix}/revoke/")
    # A role changed on the People page.
    membership = admin.memberships.get(team=team)
    browser.post(f"/t/acme/people/{membership.id}/role/", {"role": "billing"})
    # A budget, a route and the team's settings through the API with a management key.
    _, secret = api_key_create(team=team, name="ops", kind=ApiKey.Kind.MANAGEMENT)
    api = APIClient(REMOTE_ADDR="198.51.100.9")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert (
        api.put("/api/teams/acme/budget/", {"amount_usd": "25"}, format="json").status_code == 200
    )
    assert (
        api.post(
            "/api/teams/acme/routes/", {"name": "cheap", "targets": ["glm-5"]}, format="json"
        ).status_code
        == 201
    )
    hook = "https://93.184.216.34/services/T000/B000/SECRETPATH"
    assert (
        api.patch(
            "/api/teams/acme/", {"name": "Acme Corp", "alert_webhook_url": hook}, format="json"
        ).status_code
        == 200
    )

    events = {e.action: e for e in AuditEvent.objects.filter(team=team)}
    for action in ("key.revoke", "member.role"):
        assert (events[action].actor, events[action].address) == (owner.username, HOME)
    assert events["member.role"].changes == {"role": ["admin", "billing"]}
    manager = ApiKey.objects.get(team=team, name="ops").prefix
    for action in ("budget.set", "route.save", "team.update"):
        assert (events[action].actor, events[action].address) == (f"key:{manager}", "198.51.100.9")
    assert events["budget.set"].changes["amount_usd"] == [None, "25"]
    assert events["route.save"].target == "cheap"
    assert events["team.update"].changes == {
        "alert_webhook_url": ["", "https://93.184.216.34/…"],
        "name": ["Acme", "Acme Corp"],
    }
    assert "SECRETPATH" not in str(AuditEvent.objects.filter(team=team).values_list("changes"))
    assert AuditEvent.objects.filter(
        team=None, action="signin.success", target=owner.username, address=HOME
    ).exists()


def test_people_webhooks_markup_and_invoices_are_recorded(team, owner, member, monkeypatch):
    from accounts.services import (
        invitation_create,
        invitation_revoke,
        membership_remove,
        usage_webhook_secret_rotate,
        usage_webhook_set,
    )

    invitation, _ = invitation_create(team=team, actor=owner, email="new@acme.test", role="member")
    invitation_revoke(team=team, actor=owner, invitation_id=invitation.id)
    membership_remove(team=team, actor=owner, membership_id=member.memberships.get(team=team).id)
    usage_webhook_set(team=team, url="https://93.184.216.34/usage?token=abc")
    usage_webhook_secret_rotate(team=team)
    # Staff change the markup in the admin.
    staff = get_user_model().objects.create_superuser("staff@tollgate.test", password=PASSWORD)
    admin_site = Client(REMOTE_ADDR="192.0.2.1")
    admin_site.force_login(staff)
    answer = admin_site.post(
        f"/admin/accounts/team/{team.id}/change/",
        {
            "slug": team.slug,
            "name": team.name,
            "markup_percent": "12.5",
            "alert_webhook_url": "",
            "usage_webhook_url": "https://93.184.216.34/usage?token=abc",
            "usage_webhook_secret": team.usage_webhook_secret,
            "usage_webhook_secret_previous": "",
            "created_at_0": "2026-01-01",
            "created_at_1": "00:00:00",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
        },
    )
    assert answer.status_code == 302, answer.content[:2000]
    # A month closed and its invoice voided, by commands.
    key, _ = api_key_create(team=team, name="app")
    october = datetime(2026, 10, 5, tzinfo=UTC)
    spend(team, key, "3.00", october, "oct-1", now=october)
    call_command("closemonth", "2026-10", "--team", "acme", stdout=StringIO())
    number = AuditEvent.objects.get(team=team, action="invoice.finalize").target
    call_command("voidinvoice", number, "--reason", "wrong address", stdout=StringIO())

    recorded = actions(team)
    for expected in (
        ("invitation.create", "new@acme.test"),
        ("invitation.revoke", "new@acme.test"),
        ("member.remove", member.username),
        ("webhook.usage", "acme"),
        ("webhook.usage_secret_rotate", "acme"),
        ("team.update", "acme"),
        ("invoice.finalize", number),
        ("invoice.void", number),
    ):
        assert expected in recorded, (expected, recorded)
    markup = AuditEvent.objects.get(team=team, action="team.update")
    assert markup.changes == {"markup_percent": ["0.000", "12.500"]}
    assert (markup.actor, markup.address) == (staff.username, "192.0.2.1")
    assert AuditEvent.objects.get(action="invoice.void").changes == {"reason": "wrong address"}
    assert AuditEvent.objects.get(action="invoice.finalize").actor.startswith("system")
    assert "token=abc" not in str(AuditEvent.objects.filter(team=team).values_list("changes"))


def test_a_failed_sign_in_is_recorded_without_the_password(team, owner):
    Client(REMOTE_ADDR=HOME).post("/login/", {"username": owner.username, "password": "hunter2!"})
    failure = AuditEvent.objects.get(action="signin.failure")
    assert (failure.target, failure.address, failure.team) == (owner.username, HOME, None)
    assert "hunter2" not in str(failure.changes) + failure.actor + failure.target


def test_owners_read_the_log_members_sign_ins_included_others_do_not(
    team, owner, admin, outsider, other_team
):
    Client(REMOTE_ADDR=HOME).post("/login/", {"username": admin.username, "password": PASSWORD})
    Client().post("/login/", {"username": outsider.username, "password": PASSWORD})
    api_key_create(team=team, name="app")
    api_key_create(team=other_team, name="theirs")

    page = Client()
    page.force_login(owner)
    html = page.get("/t/acme/audit/").content.decode()
    assert "key.create" in html and "signin.success" in html and admin.username in html
    assert outsider.username not in html and "theirs" not in html
    listed = APIClient()
    listed.force_login(owner)
    body = listed.get("/api/teams/acme/audit/").json()
    targets = {e["target"] for e in body["results"]}
    assert admin.username in targets and outsider.username not in targets
    assert body["next_before"] is None

    for who in (admin, outsider):
        page.force_login(who)
        assert page.get("/t/acme/audit/").status_code == 404
    listed.force_login(admin)
    assert listed.get("/api/teams/acme/audit/").status_code == 403
    listed.force_login(outsider)
    assert listed.get("/api/teams/acme/audit/").status_code == 404


def test_the_log_pages_by_id(team, owner):
    for n in range(60):
        api_key_create(team=team, name=f"k{n}")
    client = APIClient()
    client.force_login(owner)
    first = client.get("/api/teams/acme/audit/").json()
    assert len(first["results"]) == 50 and first["next_before"] == first["results"][-1]["id"]
    rest = client.get(f"/api/teams/acme/audit/?before={first['next_before']}").json()
    assert rest["next_before"] is None
    ids = [e["id"] for e in first["results"] + rest["results"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    assert client.get("/api/teams/acme/audit/?before=x").status_code == 400
