"""`exportusage`: a month's ledger for other systems, CSV or NDJSON, one team or all."""

import csv
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.services import api_key_create
from tests.factories import spend
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db
OCT = datetime(2026, 10, 1, tzinfo=UTC)


@pytest.fixture
def ledger(team, other_team):
    mine, _ = api_key_create(team=team, name="app")
    theirs, _ = api_key_create(team=other_team, name="theirs")
    spend(team, mine, "0.25", OCT + timedelta(days=3), "oct-1")
    spend(team, mine, "0.5", OCT + timedelta(days=30, hours=23), "oct-2")
    spend(team, mine, "9", OCT - timedelta(seconds=1), "sep-last")
    spend(team, mine, "9", OCT + timedelta(days=31), "nov-first")
    spend(other_team, theirs, "1.75", OCT + timedelta(days=10), "globex-oct")


def export(*args) -> str:
    out = StringIO()
    call_command("exportusage", *args, stdout=out)
    return out.getvalue()


def test_one_teams_month_as_csv_is_exactly_its_rows(ledger):
    rows = list(csv.DictReader(StringIO(export("2026-10", "--team", "acme"))))
    assert [r["request_id"] for r in rows] == ["oct-1", "oct-2"]
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal("0.75")
    assert {r["team"] for r in rows} == {"acme"}


def test_every_team_as_ndjson_with_money_as_decimal_strings(ledger):
    lines = [json.loads(line) for line in export("2026-10", "--format", "ndjson").splitlines()]
    assert {(r["team"], r["request_id"]) for r in lines} == {
        ("acme", "oct-1"),
        ("acme", "oct-2"),
        ("globex", "globex-oct"),
    }
    total = sum(Decimal(r["cost_usd"]) for r in lines)
    ledger_total = sum(
        r.cost_usd for r in UsageRecord.objects.filter(created_at__month=10, created_at__year=2026)
    )
    assert total == ledger_total == Decimal("2.5")
    assert all(isinstance(r["cost_usd"], str) for r in lines)


@pytest.mark.parametrize(
    "args",
    [("2026-13",), ("2026-10", "--team", "nope"), ("2026-10", "--output", "/nonexistent/dir/x")],
)
def test_bad_months_and_teams_are_named(args):
    with pytest.raises(CommandError):
        export(*args)


class Terminal(StringIO):
    def isatty(self):
        return True


def test_a_file_export_counts_rows_on_a_terminal_only(ledger, tmp_path, monkeypatch):
    from usage.management.commands import exportusage

    monkeypatch.setattr(exportusage, "ROWS_PER_UPDATE", 1)
    path = tmp_path / "oct.csv"
    terminal, log = Terminal(), StringIO()

    for err in (terminal, log):
        call_command("exportusage", "2026-10", "--output", str(path), stderr=err)

    wrote = f"Wrote 2026-10's usage (csv) to {path}\n"
    assert terminal.getvalue().endswith("\r\x1b[K" + wrote)
    assert "\r\x1b[K2026-10: 2 of 3 rows" in terminal.getvalue()
    assert log.getvalue() == wrote
    assert len(list(csv.DictReader(path.open()))) == 3
