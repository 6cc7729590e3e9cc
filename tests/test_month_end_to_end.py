"""A month of real traffic through the official SDK — refused, failed, timed-out,
client-closed and fallen-back calls among the served ones — closes into an invoice that
matches the ledger, and reconciles."""

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import openai
import pytest
from django.db.models import Sum

from accounts.services import api_key_create
from tests.factories import global_route
from tests.fake_upstream import Answer, Fail
from usage.budgets import budget_set
from usage.invoices import invoice_close, to_cents
from usage.models import BudgetCounter, MeteredCall, UsageRecord
from usage.months import month_start, next_month_start
from usage.reconcile import reconcile_month

MESSAGES = [{"role": "user", "content": "Summarise the parcel report."}]


@pytest.mark.django_db(transaction=True)
def test_a_month_of_mixed_traffic_closes_into_an_invoice_that_matches_the_ledger(
    catalog, team, sdk, upstream
):
    team.markup_percent = Decimal("7.5")
    team.save()
    global_route("resilient", ["glm-5", "deepseek-v4-flash"])
    global_route("hurried", ["kimi-k2.5"], deadline_s=1)
    _, secret = api_key_create(team=team, name="app")
    budget_set(team=team, amount_usd=Decimal("50"))
    client = sdk(secret)

    # Served, streamed, and an embedding.
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="qwen3-32b", messages=MESSAGES, stream=True)
        if c.choices
    )
    client.embeddings.create(model="text-embedding-3-small", input="parcel")
    # Refused: a typo'd model name.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o-typo", messages=MESSAGES)
    # Failed: the upstream errs.
    upstream.script("claude-3-5-sonnet-latest", Fail(500))
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="claude-3.5-sonnet", messages=MESSAGES)
    # Fallen back: the first target errs, the second serves.
    upstream.script("glm-5", Fail(503))
    served = client.chat.completions.with_raw_response.create(model="resilient", messages=MESSAGES)
    assert served.headers["x-tollgate-model"] == "deepseek-v4-flash"
    # Timed out: the route's deadline passes before the upstream answers.
    upstream.script("kimi-k2.5", Answer(delay=2.0))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="hurried", messages=MESSAGES)
    assert caught.value.status_code == 504
    # Client-closed: the app gives up first; the upstream still answers and is billed.
    upstream.script("gemini-1.5-pro", Answer(delay=1.0))
    with pytest.raises(openai.APITimeoutError):
        sdk(secret, timeout=0.3).chat.completions.create(model="gemini-1.5-pro", messages=MESSAGES)
    deadline = time.monotonic() + 15
    while MeteredCall.objects.in_flight().exists():
        assert time.monotonic() < deadline, "the abandoned call was never recorded"
        time.sleep(0.05)

    ledger = UsageRecord.objects.filter(team=team)
    statuses = set(ledger.values_list("status", flat=True))
    assert statuses == {"ok", "refused", "upstream_error", "timeout", "client_closed"}
    now = datetime.now(UTC)
    month = month_start(now).date()
    after = next_month_start(now) + timedelta(days=1)

    invoice = invoice_close(team=team, month=month, now=after)

    exact = ledger.aggregate(total=Sum("cost_usd"))["total"]
    usage_lines = invoice.lines.filter(kind="usage")
    assert sum(line.exact_usd for line in usage_lines) == exact
    assert sum(line.requests for line in usage_lines) == ledger.count()
    for line in invoice.lines.all():
        assert line.amount_usd == to_cents(line.exact_usd)
    assert invoice.lines.get(kind="markup").exact_usd == exact * Decimal("7.5") / 100
    assert invoice.total_usd == sum(line.amount_usd for line in invoice.lines.all())
    assert BudgetCounter.objects.get().spent_usd == exact
    report = reconcile_month(month=month, now=after)
    assert report.ok, report.problems
