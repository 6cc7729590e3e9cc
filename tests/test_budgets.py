"""Hard budgets hold under concurrency; reservations are settled or released, never left behind."""

import asyncio
from decimal import Decimal

import openai
import pytest
from django.core.management import call_command
from django.db.models import Sum
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import api_key_create
from routing.tokens import TokenBounds
from tests.fake_upstream import Answer
from usage.budgets import budget_set
from usage.models import Budget, BudgetCounter, MeteredCall, UsageRecord

# Reserved at its ceiling of 60 prompt tokens (its UTF-8 bytes plus framing).
MESSAGES = [{"role": "user", "content": "Classify: the parcel arrived broken!!!"}]
live = pytest.mark.django_db(transaction=True)


def hammer(async_sdk, secret, n, **kwargs):
    """n parallel calls through the official async SDK; returns the results and the errors."""

    async def run():
        client = async_sdk(secret, timeout=60)
        results = await asyncio.gather(
            *[client.chat.completions.create(messages=MESSAGES, **kwargs) for _ in range(n)],
            return_exceptions=True,
        )
        await client.close()
        return results

    results = asyncio.run(run())
    return [r for r in results if not isinstance(r, Exception)], [
        r for r in results if isinstance(r, Exception)
    ]


@live
def test_fifty_parallel_calls_never_spend_past_a_hard_budget(
    catalog, inference_key, async_sdk, team
):
    # Each call really costs 12 × 0.18 + 34 × 0.25 = 10.66 µ$; it reserves its ceiling,
    # (60 bytes + 64 framing) × 0.18 + 40 × 0.25 = 32.32 µ$.
    budget = budget_set(team=team, amount_usd=Decimal("0.00006"))  # 5 calls' real cost fit
    _, secret = inference_key

    served, errors = hammer(async_sdk, secret, 50, model="deepseek-v4-flash", max_tokens=40)

    spent = UsageRecord.objects.filter(team=team).aggregate(total=Sum("cost_usd"))["total"]
    assert 1 <= len(served) <= 5 and spent == len(served) * Decimal("0.00001066")
    assert spent <= budget.amount_usd
    assert len(errors) == 50 - len(served)
    for error in errors:
        assert isinstance(error, openai.RateLimitError) and error.code == "insufficient_quota"
        assert error.body["type"] == "insufficient_quota" and "budget" in error.message
    counter = BudgetCounter.objects.get(budget=budget)
    assert counter.reserved_usd == 0 and counter.spent_usd == spent
    assert not MeteredCall.objects.in_flight().exists()
    assert UsageRecord.objects.filter(team=team, status="refused", http_status=429).count() == len(
        errors
    )


@live
def test_done_when_a_one_dollar_budget_is_never_overcharged_and_alerts_fire_once_each(
    catalog, inference_key, async_sdk, team, owner, member, upstream, celery_worker, mailoutbox
):
    # Each call reserves its ceiling, (60 + 64 framing) × 2.50 + 24,969 × 10.00 per 1M =
    # exactly $0.25, and the upstream reports that ceiling, so exactly four calls fit and
    # spend the whole dollar.
    assert TokenBounds.of_chat({"messages": MESSAGES}).prompt_ceiling == 60
    upstream.script(
        "gpt-4o", *[Answer(usage={"prompt_tokens": 124, "completion_tokens": 24969})] * 50
    )
    owner.email = "owner@acme.test"
    owner.save()
    budget = budget_set(team=team, amount_usd=Decimal("1"))
    _, secret = inference_key

    served, errors = hammer(async_sdk, secret, 50, model="gpt-4o", max_tokens=24969)

    assert len(served) == 4 and len(errors) == 46
    assert UsageRecord.objects.filter(team=team).aggregate(total=Sum("cost_usd"))[
        "total"
    ] == Decimal("1")
    _wait_for(lambda: len(mailoutbox) == 3)
    events = sorted(budget.alerts.values_list("threshold", flat=True))
    assert events == [50, 80, 100]
    subjects = sorted(m.subject for m in mailoutbox)
    assert subjects == [f"[Tollgate] Acme has used {t}% of its $1 budget" for t in (100, 50, 80)]
    assert all(m.to == ["owner@acme.test"] for m in mailoutbox)  # a plain member is not alerted


def _wait_for(condition, timeout=20):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


@live
def test_a_keys_budget_applies_with_its_teams(catalog, team, async_sdk):
    key, secret = api_key_create(team=team, name="capped")
    budget_set(team=team, amount_usd=Decimal("100"))
    budget_set(team=team, api_key=key, amount_usd=Decimal("0.00005"))  # two calls' worth

    served, errors = hammer(async_sdk, secret, 6, model="deepseek-v4-flash", max_tokens=40)

    assert 1 <= len(served) <= 2 and all(e.code == "insufficient_quota" for e in errors)
    assert "key" in errors[0].message
    team_counter = BudgetCounter.objects.get(budget__api_key__isnull=True)
    key_counter = BudgetCounter.objects.get(budget__api_key=key)
    assert team_counter.spent_usd == key_counter.spent_usd == len(served) * Decimal("0.00001066")
    assert team_counter.reserved_usd == key_counter.reserved_usd == 0


@live
def test_soft_budget_never_refuses(catalog, inference_key, sdk, team):
    budget_set(team=team, amount_usd=Decimal("0.00001"), hard=False)
    _, secret = inference_key
    client = sdk(secret)
    for _ in range(3):
        client.chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES)
    assert BudgetCounter.objects.get().spent_usd == 3 * Decimal("0.00001066")


@live
def test_refusal_names_the_budget_and_when_it_resets(catalog, inference_key, sdk, team):
    budget_set(team=team, amount_usd=Decimal("0"))
    _, secret = inference_key
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(secret).chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES)
    assert "monthly budget of $0 for the team" in caught.value.message
    assert "resets on" in caught.value.message and "00:00 UTC" in caught.value.message


@pytest.mark.django_db
def test_reservation_that_does_not_fit_writes_nothing(team, inference_key):
    from django.utils import timezone

    from tests.factories import open_call
    from usage.budgets import OverBudget

    key, _ = inference_key
    budget_set(team=team, amount_usd=Decimal("1"))
    with pytest.raises(OverBudget):
        open_call(team, key, "req_big", timezone.now(), reserve="1.01")
    assert not MeteredCall.objects.exists()
    assert BudgetCounter.objects.filter(reserved_usd__gt=0).count() == 0


@pytest.mark.django_db
def test_setbudget_and_issuekey_budget_commands(team, capsys):
    call_command("setbudget", "acme", "25.50", "--soft", "--thresholds", "90,50")
    call_command("issuekey", "acme", "--name", "batch", "--budget", "5")

    team_budget = Budget.objects.get(team=team, api_key__isnull=True)
    assert (team_budget.amount_usd, team_budget.hard, team_budget.thresholds) == (
        Decimal("25.5"),
        False,
        [50, 90],
    )
    key_budget = Budget.objects.get(api_key__name="batch")
    assert (key_budget.amount_usd, key_budget.hard) == (Decimal("5"), True)
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith(ApiKey.objects.get(name="batch").prefix)


@pytest.mark.django_db
def test_budget_api_for_owner_member_and_outsider(team, owner, member, outsider):
    def client_for(user):
        client = APIClient()
        client.force_login(user)
        return client

    put = client_for(owner).put(
        "/api/teams/acme/budget/", {"amount_usd": "12.5", "hard": True}, format="json"
    )
    assert put.status_code == 200 and put.data["thresholds"] == [50, 80, 100]
    got = client_for(member).get("/api/teams/acme/budget/")
    assert got.status_code == 200 and Decimal(got.data["amount_usd"]) == Decimal("12.5")
    assert (
        client_for(member)
        .put("/api/teams/acme/budget/", {"amount_usd": "1"}, format="json")
        .status_code
        == 403
    )
    assert client_for(outsider).get("/api/teams/acme/budget/").status_code == 404
    assert (
        client_for(owner)
        .put("/api/teams/acme/budget/", {"amount_usd": "-1"}, format="json")
        .status_code
        == 400
    )


@pytest.mark.django_db
def test_a_broken_broker_does_not_fail_a_recorded_call(
    team, inference_key, monkeypatch, django_capture_on_commit_callbacks
):
    from datetime import UTC, datetime

    from tests.factories import finish_call, open_call
    from usage import tasks

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(tasks.budget_alerts_check, "delay", broker_down)
    key, _ = inference_key
    budget_set(team=team, amount_usd=Decimal("1"), thresholds=[50], hard=False)
    now = datetime.now(UTC)
    meter = open_call(team, key, "req_b", now, reserve="0.6")

    with django_capture_on_commit_callbacks(execute=True):
        written = finish_call(meter, "0.6")

    assert len(written) == 1 and BudgetCounter.objects.get().spent_usd == Decimal("0.6")
