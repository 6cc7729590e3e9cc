"""`reconcile` can fail: each kind of tampering with money is caught."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import F

from tests.factories import finish_call, open_call, spend
from usage.budgets import budget_set
from usage.invoices import invoice_close
from usage.metering import SWEPT_ATTEMPT, inflight_sweep
from usage.models import BudgetCounter, DailyUsage, MeteredCall, UsageRecord
from usage.reconcile import reconcile_month

pytestmark = pytest.mark.django_db

OCT = date(2026, 10, 1)
DURING = datetime(2026, 10, 10, 12, tzinfo=UTC)
AFTER = datetime(2026, 11, 2, tzinfo=UTC)


@pytest.fixture
def month(team, inference_key):
    """A month of metered calls under a hard team budget and a key budget, one call swept."""
    key, _ = inference_key
    budget_set(team=team, amount_usd=Decimal("5"), now=DURING)
    budget_set(team=team, api_key=key, amount_usd=Decimal("3"), now=DURING)
    for i in range(5):
        spend(
            team,
            key,
            "0.25",
            DURING + timedelta(hours=i),
            f"req_m{i}",
            now=DURING + timedelta(hours=i),
        )
    open_call(team, key, "req_lost", DURING)
    MeteredCall.objects.filter(request_id="req_lost").update(worker="dead-host:1:gone")
    inflight_sweep(now=DURING + timedelta(minutes=5))
    invoice_close(team=team, month=OCT, now=AFTER)
    return key


def problems(now=AFTER):
    return reconcile_month(month=OCT, now=now).problems


def test_an_untouched_month_reconciles(month):
    assert problems() == []
    call_command("reconcile", "2026-10")  # exits 0


def test_a_counter_that_disagrees_with_the_ledger_fails(month):
    BudgetCounter.objects.filter(budget__api_key__isnull=True).update(
        spent_usd=F("spent_usd") - Decimal("0.25")
    )
    assert any("counter spent" in p for p in problems())


def test_a_finished_call_without_its_rows_fails(month):
    UsageRecord.objects.filter(request_id="req_m3").delete()
    found = problems()
    assert any("req_m3" in p and "no row" in p for p in found)


def test_a_sweep_row_that_bills_fails(month):
    UsageRecord.objects.filter(attempt=SWEPT_ATTEMPT).update(
        prompt_tokens=1000,
        input_per_mtok=Decimal(1),
        cached_input_per_mtok=Decimal(1),
        cost_usd=Decimal("0.001"),
    )
    assert any("a sweep never bills" in p for p in problems())


def test_spend_past_a_hard_budget_beyond_the_recorded_overrun_fails(team, month):
    # A call the upstream overran (recorded after the close, as late usage): billed, and
    # recorded as overrun, so within the bound...
    later = AFTER + timedelta(hours=1)
    meter = open_call(team, month, "req_over", DURING, reserve="0.5")
    finish_call(meter, "4.0", now=later)
    counter = BudgetCounter.objects.get(budget__api_key__isnull=True)
    assert (
        counter.spent_usd > counter.limit_usd and problems(now=later + timedelta(minutes=5)) == []
    )
    # ...until the overrun is hidden.
    BudgetCounter.objects.filter(id=counter.id).update(overrun_usd=0)
    assert any("over the hard limit" in p for p in problems(now=later + timedelta(minutes=5)))


def test_a_budget_lowered_below_its_spend_is_not_an_overspend(team, month):
    budget_set(team=team, amount_usd=Decimal("0.5"), now=DURING)
    assert problems() == []


def test_rollups_that_disagree_with_the_ledger_fail(month):
    reconcile_month(month=OCT, now=AFTER)  # rolls the month up
    DailyUsage.objects.filter(cost_usd__gt=0).update(cost_usd=F("cost_usd") + Decimal("0.01"))
    assert any("rollups" in p for p in problems())


def test_a_call_stuck_open_past_its_deadline_fails(team, month):
    open_call(team, month, "req_stuck", DURING, deadline_s=60)
    assert any("still open past their deadline" in p for p in problems())


def test_a_finished_month_that_was_never_invoiced_fails(team, inference_key):
    key, _ = inference_key
    september = datetime(2026, 9, 10, tzinfo=UTC)
    spend(team, key, "0.25", september, "req_sep", now=september)
    found = reconcile_month(month=date(2026, 9, 1), now=AFTER).problems
    assert any("never closed" in p for p in found)


def test_a_ledger_row_whose_cost_does_not_match_its_tokens_fails(month):
    UsageRecord.objects.filter(request_id="req_m1").update(cost_usd=Decimal("0.01"))
    assert any("req_m1" in p for p in problems())


def test_the_command_exits_non_zero_on_a_mismatch(month):
    UsageRecord.objects.filter(request_id="req_m1").update(cost_usd=Decimal("0.01"))
    with pytest.raises(CommandError):
        call_command("reconcile", "2026-10")
