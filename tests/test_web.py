"""The team admin pages, seen by the standing cast."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from usage.models import UsageRecord

pytestmark = pytest.mark.django_db


@pytest.fixture
def spend(team, inference_key):
    key, _ = inference_key
    now = timezone.now()
    for i, (model, cost) in enumerate([("gpt-4o", "0.00037"), ("deepseek-v4-flash", "0.00001066")]):
        UsageRecord.objects.create(
            request_id=f"req_web{i}",
            team=team,
            api_key=key,
            endpoint="chat",
            requested_model=model,
            model=model,
            status="ok",
            prompt_tokens=12,
            completion_tokens=34,
            cost_usd=Decimal(cost),
            created_at=now - timedelta(seconds=i),
        )


def test_sign_in_page_and_redirect_for_anonymous(client):
    assert client.get("/").status_code == 302
    page = client.get("/login/")
    assert page.status_code == 200 and b"Sign in" in page.content


def test_owner_signs_in_and_sees_the_month_spend(client, owner, spend):
    assert (
        client.post(
            "/login/", {"username": "owner@acme.test", "password": "correct horse battery"}
        ).status_code
        == 302
    )

    page = client.get("/", follow=True)

    assert page.status_code == 200
    text = page.content.decode()
    assert "$0.00038" in text  # 0.00037 + 0.00001066, month to date
    assert "gpt-4o" in text and "deepseek-v4-flash" in text
    assert "req_web0" in client.get("/t/acme/usage/").content.decode()


def test_wrong_password_is_explained(client, owner):
    page = client.post("/login/", {"username": "owner@acme.test", "password": "nope"})
    assert b"do not match" in page.content


def test_outsider_gets_404_for_another_teams_pages(client, outsider, team):
    client.force_login(outsider)
    assert client.get("/t/acme/").status_code == 404
    assert client.get("/t/acme/keys/").status_code == 404


def test_member_sees_usage_but_not_keys(client, member, spend):
    client.force_login(member)
    assert client.get("/t/acme/").status_code == 200
    assert client.get("/t/acme/keys/").status_code == 404


def test_invoices_page_lists_invoices_and_says_when_a_month_had_no_usage(
    client, owner, team, inference_key
):
    from datetime import timedelta

    from usage.invoices import invoice_close
    from usage.months import month_start

    key, _ = inference_key
    last_month = month_start(month_start(timezone.now()) - timedelta(days=1))
    UsageRecord.objects.create(
        request_id="req_lm",
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
    client.force_login(owner)

    page = client.get("/t/acme/invoices/").content.decode()

    assert invoice.number in page and "?format=pdf" in page
    assert "No usage this month, so no invoice." in page
    assert "Month in progress" in page


def test_member_cannot_open_invoices(client, member):
    client.force_login(member)
    assert client.get("/t/acme/invoices/").status_code == 404


def test_dashboard_shows_the_budget(client, owner, team):
    from usage.budgets import budget_set

    budget_set(team=team, amount_usd=Decimal("25"))
    client.force_login(owner)
    page = client.get("/t/acme/").content.decode()
    assert "Budget, hard" in page and "of $25.00 spent" in page
