"""The models and the migrations agree: no change is left without its migration."""

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_every_model_change_has_its_migration():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.parametrize("refused_priced", [False, True], ids=["unpriced", "priced"])
@pytest.mark.django_db(transaction=True)
def test_upgrading_splits_rollups_by_endpoint_from_the_ledger_and_tags_issued_lines(
    refused_priced,
):
    """A database from before endpoints (usage 0013): a month of chat on gpt-4o, closed and
    invoiced, beside an embeddings call to gpt-4o that was refused. The upgrade splits the
    rollups by the ledger's endpoints (not "any embeddings row makes the model embeddings"),
    gives the issued lines their endpoint, leaves them immutable, and bills nothing again.

    Older code priced some refused calls: then the refused call shares the chat call's model
    and prices, and one issued line billed both endpoints' requests."""
    from datetime import UTC, date, datetime
    from decimal import Decimal

    from django.db import DatabaseError, connection, transaction
    from django.db.migrations.executor import MigrationExecutor

    from accounts.models import Team
    from usage.invoices import invoice_close, invoice_preview
    from usage.models import DailyUsage, InvoiceLine
    from usage.reconcile import reconcile_month

    october, after = date(2026, 10, 1), datetime(2026, 11, 2, tzinfo=UTC)
    before = [("usage", "0013_metered_calls_protect_keys")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    team = old.get_model("accounts", "Team").objects.create(slug="legacy", name="Legacy")
    when = datetime(2026, 10, 5, tzinfo=UTC)
    prices = {
        "input_per_mtok": Decimal("2.5"),
        "cached_input_per_mtok": Decimal("2.5"),
        "output_per_mtok": Decimal("10"),
    }
    ledger = old.get_model("usage", "UsageRecord").objects
    common = {"team": team, "requested_model": "gpt-4o", "model": "gpt-4o", "created_at": when}
    ledger.create(
        request_id="req_chat",
        endpoint="chat",
        status="ok",
        prompt_tokens=200_000,
        completion_tokens=50_000,
        cost_usd=Decimal("1"),
        recorded_at=when,
        **common,
        **prices,
    )
    ledger.create(
        request_id="req_embed",
        endpoint="embeddings",
        status="refused",
        cost_usd=0,
        recorded_at=when,
        **common,
        **(prices if refused_priced else {}),
    )
    old.get_model("usage", "RollupMark").objects.create(name="daily", through=after)
    daily = old.get_model("usage", "DailyUsage").objects
    invoice = old.get_model("usage", "Invoice").objects.create(
        team=team, month=october, seller={}, customer={}, subtotal_usd=1, total_usd=1
    )
    lines = old.get_model("usage", "InvoiceLine").objects
    line = {"invoice": invoice, "kind": "usage", "usage_month": october, "model": "gpt-4o"}
    tokens = {"prompt_tokens": 200_000, "completion_tokens": 50_000}
    both = 2 if refused_priced else 1
    daily.create(
        team=team, day=when.date(), model="gpt-4o", requests=both, cost_usd=1, **tokens, **prices
    )
    lines.create(
        position=1,
        description="gpt-4o",
        requests=both,
        exact_usd=1,
        amount_usd=1,
        **tokens,
        **line,
        **prices,
    )
    if not refused_priced:
        daily.create(team=team, day=when.date(), model="gpt-4o", requests=1, cost_usd=0)
        lines.create(
            position=2, description="gpt-4o", requests=1, exact_usd=0, amount_usd=0, **line
        )
    old.get_model("usage", "Invoice").objects.filter(id=invoice.id).update(
        status="finalized", number="TG-2026-000001", finalized_at=after
    )
    old.get_model("usage", "InvoiceSequence").objects.create(year=2026, last_number=1)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    split = DailyUsage.objects.filter(team_id=team.id).values_list(
        "endpoint", "requests", "cost_usd"
    )
    assert sorted(split) == [("chat", 1, Decimal(1)), ("embeddings", 1, Decimal(0))]
    issued = InvoiceLine.objects.filter(invoice_id=invoice.id).order_by("position")
    expected = ["chat"] if refused_priced else ["chat", "embeddings"]
    assert [line.endpoint for line in issued] == expected
    with pytest.raises(DatabaseError), transaction.atomic():
        issued.update(endpoint="responses")
    legacy = Team.objects.get(slug="legacy")
    # Nothing billed again: November has nothing to bill.
    assert invoice_preview(team=legacy, month=date(2026, 11, 1), now=after) is None
    # An October call through the Responses API, recorded after October was invoiced: billed
    # once, as late usage under its own endpoint, whatever the old line billed beside it.
    from usage.models import UsageRecord

    late = datetime(2026, 11, 10, tzinfo=UTC)
    UsageRecord.objects.create(
        request_id="req_late",
        endpoint="responses",
        status="ok",
        prompt_tokens=1000,
        cost_usd=Decimal("0.0025"),
        recorded_at=late,
        **{**common, "team": legacy, "created_at": datetime(2026, 10, 31, 23, tzinfo=UTC)},
        **prices,
    )
    november = invoice_close(
        team=legacy, month=date(2026, 11, 1), now=datetime(2026, 12, 2, tzinfo=UTC)
    )
    assert [(x.kind, x.endpoint, x.requests, x.exact_usd) for x in november.lines.all()] == [
        ("late_usage", "responses", 1, Decimal("0.0025"))
    ]
    assert reconcile_month(month=october, now=datetime(2026, 12, 2, tzinfo=UTC)).ok
