"""`make run`'s demo: ninety days of labelled traffic through the meter, and the months agree."""

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.models import ApiKey, Team
from usage.models import Budget, Invoice, UsageRecord
from usage.months import month_start
from usage.reconcile import reconcile_month

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(settings, monkeypatch):
    settings.DEBUG = True  # the demo refuses to run in production
    # As `make run PORT=8765` calls it: the URL printed must be the one served.
    monkeypatch.setenv("HOST", "127.0.0.1")
    monkeypatch.setenv("PORT", "8765")
    call_command("loadcatalog", "catalog/default.toml", "catalog/offline.toml", stdout=StringIO())
    out = StringIO()
    call_command("demo", stdout=out, stderr=StringIO())
    return Team.objects.get(slug="demo"), out.getvalue()


def test_demo_seeds_ninety_labelled_days_that_reconcile_and_only_once(demo):
    team, out = demo
    rows = UsageRecord.objects.filter(team=team)
    assert not rows.exclude(request_id__startswith="demo_").exists()
    days = set(rows.dates("created_at", "day"))
    assert len(days) == 90 and min(days) == (timezone.now() - timedelta(days=89)).date()
    assert rows.values("model").distinct().count() >= 5
    keys = ApiKey.objects.filter(team=team, name__startswith="[demo] ")
    assert keys.count() == 5 and rows.values("api_key").distinct().count() == 5
    assert rows.filter(status="upstream_error").exists() and rows.filter(attempt=1).exists()
    assert rows.filter(endpoint="embeddings").exists() and rows.filter(streamed=True).exists()
    assert "sign in as admin@demo.local" in out
    # `make run PORT=8765` serves there (Makefile passes HOST and PORT to demo and uvicorn).
    assert (
        "Web UI:    http://127.0.0.1:8765/ " in out and "API base:  http://127.0.0.1:8765/v1" in out
    )
    assert ":8000" not in out
    # (One test, not three: seeding takes seconds.) A budget near its threshold, last month
    # invoiced, and the months reconcile.
    now = timezone.now()
    budget = Budget.objects.get(team=team, api_key=None)
    counter = budget.counters.get(month=month_start(now).date())
    share = counter.spent_usd / budget.amount_usd
    assert Decimal("0.5") < share < Decimal(1) or budget.amount_usd == 1
    last = month_start(month_start(now) - timedelta(days=1)).date()
    invoice = Invoice.objects.get(team=team, month=last)
    assert invoice.status == Invoice.Status.FINALIZED and invoice.total_usd > 0
    # Every finished month of demo traffic is invoiced, numbered in month order.
    first = month_start(now - timedelta(days=89)).date()
    closed = list(Invoice.objects.filter(team=team).order_by("month"))
    assert [i.month for i in closed][0] == first and closed[-1].month == last
    assert [i.number for i in closed] == sorted(i.number for i in closed)
    # The demo keys were last used when their last call was made.
    assert all(k.last_used_at is not None for k in keys)
    for month in (last, month_start(now).date()):
        assert reconcile_month(month=month).ok, month
    # Run again: nothing is added twice.
    before = UsageRecord.objects.filter(team=team).count()
    out = StringIO()
    call_command("demo", stdout=out, stderr=StringIO())
    assert "0 new calls" in out.getvalue()
    assert UsageRecord.objects.filter(team=team).count() == before
    assert Invoice.objects.filter(team=team).count() == len(closed)
