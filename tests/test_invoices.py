"""Monthly invoices: exact, idempotent, immutable, never losing or double-billing a call."""

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Membership
from accounts.services import api_key_create
from tests.factories import MembershipFactory, TeamFactory, UserFactory
from usage import invoices
from usage.exports import invoice_csv, invoice_json, invoice_pdf
from usage.invoices import (
    InvoiceError,
    adjustment_add,
    invoice_close,
    invoice_void,
    invoices_close_month,
)
from usage.models import DailyUsage, Invoice, InvoiceLine, InvoiceSequence, UsageRecord
from usage.months import month_start
from usage.reconcile import reconcile_month
from usage.rollups import rollup_advance
from usage.selectors import usage_summary
from usage.tasks import invoices_close_due

pytestmark = pytest.mark.django_db

OCT, NOV = date(2026, 10, 1), date(2026, 11, 1)
AFTER_OCT = datetime(2026, 11, 2, tzinfo=UTC)  # October is over, and past any rollup lag
AFTER_NOV = datetime(2026, 12, 2, tzinfo=UTC)
PRICES = {
    "gpt-4o": (Decimal("2.5"), Decimal("10")),
    "deepseek-v4-flash": (Decimal("0.18"), Decimal("0.25")),
}


def call(
    team,
    key,
    when,
    model="gpt-4o",
    prompt=1000,
    completion=500,
    recorded=None,
    endpoint="chat",
    n=[0],
):
    """A ledger row as the proxy writes it: cost = tokens × the unit prices on the row."""
    n[0] += 1
    input_price, output_price = PRICES[model]
    return UsageRecord.objects.create(
        request_id=f"req_inv{n[0]}",
        team=team,
        api_key=key,
        endpoint=endpoint,
        requested_model=model,
        model=model,
        provider="p",
        status="ok",
        prompt_tokens=prompt,
        completion_tokens=completion,
        input_per_mtok=input_price,
        cached_input_per_mtok=input_price,
        output_per_mtok=output_price,
        cost_usd=(prompt * input_price + completion * output_price) / 1_000_000,
        created_at=when,
        recorded_at=recorded or when,
    )


@pytest.fixture
def key(team):
    return api_key_create(team=team, name="app")[0]


def test_month_boundaries_put_each_call_in_its_own_month(team, key):
    call(team, key, datetime(2026, 10, 31, 23, 59, 59, 999000, tzinfo=UTC), prompt=1)
    call(team, key, datetime(2026, 11, 1, 0, 0, 0, tzinfo=UTC), prompt=2)

    october = invoice_close(team=team, month=OCT, now=AFTER_NOV)
    november = invoice_close(team=team, month=NOV, now=AFTER_NOV)

    assert [line.prompt_tokens for line in october.lines.filter(kind="usage")] == [1]
    assert [line.prompt_tokens for line in november.lines.filter(kind="usage")] == [2]
    assert (
        october.lines.filter(kind="late_usage").count()
        == november.lines.filter(kind="late_usage").count()
        == 0
    )


def test_a_million_tiny_calls_add_up_and_markup_is_its_own_line(team, key):
    team.markup_percent = Decimal("10")
    team.save()
    # One million calls of one token at USD 0.1 per 1M: USD 0.0000001 each.
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO usage_usagerecord (request_id, attempt, team_id, api_key_id, endpoint, requested_model, route,
                model, provider, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, tokens_estimated,
                input_per_mtok, cached_input_per_mtok, output_per_mtok, cost_usd, streamed, status, error_type,
                error_message, end_user, created_at, recorded_at)
            SELECT 'req_tiny' || g, 0, %s, %s, 'chat', 'tiny', '', 'tiny', 'p', 1, 0, 0, 0, false,
                0.1, 0.1, 0.1, 0.0000001, false, 'ok', '', '', '', %s, %s
            FROM generate_series(1, 1000000) g
        """,
            [
                team.id,
                key.id,
                datetime(2026, 10, 15, tzinfo=UTC),
                datetime(2026, 10, 15, tzinfo=UTC),
            ],
        )

    invoice = invoice_close(team=team, month=OCT, now=AFTER_OCT)

    usage, markup = invoice.lines.all()
    assert (usage.requests, usage.exact_usd, usage.amount_usd) == (
        1_000_000,
        Decimal("0.1"),
        Decimal("0.10"),
    )
    assert (markup.kind, markup.amount_usd) == ("markup", Decimal("0.01"))
    assert (invoice.subtotal_usd, invoice.total_usd) == (Decimal("0.10"), Decimal("0.11"))
    assert reconcile_month(month=OCT, now=AFTER_OCT).ok


def test_each_line_is_rounded_once_and_the_total_sums_the_rounded_lines(team, key):
    team.markup_percent = Decimal("7.5")
    team.save()
    call(
        team, key, datetime(2026, 10, 3, tzinfo=UTC), prompt=1002, completion=0
    )  # 1002 × 2.50 per 1M = 0.002505
    call(
        team,
        key,
        datetime(2026, 10, 4, tzinfo=UTC),
        model="deepseek-v4-flash",
        prompt=25_000,
        completion=0,
    )  # 0.0045

    invoice = invoice_close(team=team, month=OCT, now=AFTER_OCT)

    lines = {line.model or line.kind: line for line in invoice.lines.all()}
    assert (lines["deepseek-v4-flash"].exact_usd, lines["deepseek-v4-flash"].amount_usd) == (
        Decimal("0.0045"),
        Decimal("0.00"),
    )
    assert (lines["gpt-4o"].exact_usd, lines["gpt-4o"].amount_usd) == (
        Decimal("0.002505"),
        Decimal("0.00"),
    )
    # Markup on the exact usage (0.007005 × 7.5 % = 0.000525375), rounded on its own line.
    assert lines["markup"].amount_usd == Decimal("0.00")
    assert invoice.total_usd == sum(line.amount_usd for line in invoice.lines.all())
    assert invoices.to_cents(Decimal("0.005")) == Decimal("0.01")  # half-up, not banker's


def test_closemonth_twice_changes_nothing(team, key, other_team):
    call(team, key, datetime(2026, 10, 5, tzinfo=UTC))
    call(
        other_team, api_key_create(team=other_team, name="x")[0], datetime(2026, 10, 6, tzinfo=UTC)
    )

    first = invoices_close_month(month=OCT, now=AFTER_OCT)
    second = invoices_close_month(month=OCT, now=AFTER_OCT + timedelta(hours=1))

    assert (
        [i.number for i in first.invoices]
        == [i.number for i in second.invoices]
        == ["TG-2026-000001", "TG-2026-000002"]
    )
    assert [t.new for t in first.teams] == [True, True]
    assert [t.new for t in second.teams] == [False, False]
    assert first.ok and second.ok
    assert Invoice.objects.count() == 2 and InvoiceSequence.objects.get(year=2026).last_number == 2


def test_a_crash_half_way_leaves_nothing_and_the_rerun_has_no_gap(team, key, monkeypatch):
    call(team, key, datetime(2026, 10, 5, tzinfo=UTC))
    real_finalize = invoices._finalize

    def crash(invoice, now):
        real_finalize(invoice, now)
        raise RuntimeError("worker killed")

    monkeypatch.setattr(invoices, "_finalize", crash)
    with pytest.raises(RuntimeError):
        invoice_close(team=team, month=OCT, now=AFTER_OCT)
    assert (
        not Invoice.objects.exists()
        and not InvoiceSequence.objects.filter(last_number__gt=0).exists()
    )

    monkeypatch.setattr(invoices, "_finalize", real_finalize)
    assert invoice_close(team=team, month=OCT, now=AFTER_OCT).number == "TG-2026-000001"


def test_late_usage_goes_on_the_next_invoice_once(team, key):
    call(team, key, datetime(2026, 10, 5, tzinfo=UTC))
    october = invoice_close(team=team, month=OCT, now=AFTER_OCT)
    # A call made on Oct 31 but recorded after October was invoiced (a slow worker, a sweeper).
    late = call(
        team,
        key,
        datetime(2026, 10, 31, 23, 0, tzinfo=UTC),
        prompt=4000,
        recorded=AFTER_OCT + timedelta(hours=1),
    )
    call(team, key, datetime(2026, 11, 10, tzinfo=UTC))

    november = invoice_close(team=team, month=NOV, now=AFTER_NOV)

    october.refresh_from_db()
    assert october.lines.filter(kind="usage").get().requests == 1  # finalized: untouched
    [late_line] = november.lines.filter(kind="late_usage")
    assert late_line.description == "Late usage for 2026-10: gpt-4o · Chat completions"
    assert (late_line.usage_month, late_line.requests, late_line.exact_usd) == (
        OCT,
        1,
        late.cost_usd,
    )
    assert (
        invoice_close(team=team, month=NOV, now=AFTER_NOV).lines.filter(kind="late_usage").count()
        == 1
    )
    assert (
        reconcile_month(month=OCT, now=AFTER_NOV).ok
        and reconcile_month(month=NOV, now=AFTER_NOV).ok
    )


def test_a_voided_invoice_is_kept_and_its_correction_gets_a_new_number(team, key):
    call(team, key, datetime(2026, 10, 5, tzinfo=UTC))
    original = invoice_close(team=team, month=OCT, now=AFTER_OCT)
    adjustment_add(
        team=team,
        month=OCT,
        amount_usd=Decimal("-1.25"),
        reason="Credit: outage on Oct 5",
        created_by="finance@acme.test",
    )

    invoice_void(invoice=original, reason="Missing outage credit")
    corrected = invoice_close(team=team, month=OCT, now=AFTER_OCT)

    original.refresh_from_db()
    assert original.status == "void" and original.number == "TG-2026-000001"
    assert corrected.number == "TG-2026-000002" and corrected.replaces == original
    assert corrected.lines.get(kind="adjustment").amount_usd == Decimal("-1.25")
    assert corrected.total_usd == original.total_usd - Decimal("1.25")
    assert reconcile_month(month=OCT, now=AFTER_OCT).ok


def test_a_finalized_invoice_refuses_to_change(team, key):
    call(team, key, datetime(2026, 10, 5, tzinfo=UTC))
    invoice = invoice_close(team=team, month=OCT, now=AFTER_OCT)
    line = invoice.lines.first()

    for change in (
        lambda: Invoice.objects.filter(id=invoice.id).update(total_usd=Decimal("0.01")),
        lambda: InvoiceLine.objects.filter(id=line.id).update(amount_usd=Decimal("0")),
        lambda: InvoiceLine.objects.filter(id=line.id).delete(),
        lambda: Invoice.objects.filter(id=invoice.id).delete(),
        lambda: InvoiceLine.objects.create(
            invoice=invoice,
            position=99,
            kind="adjustment",
            description="sneaky",
            exact_usd=Decimal("5"),
            amount_usd=Decimal("5"),
        ),
        lambda: Invoice.objects.filter(id=invoice.id).update(status="draft"),
    ):
        with pytest.raises(DatabaseError), transaction.atomic():
            change()
    invoice.refresh_from_db()
    assert invoice.status == "finalized" and invoice.lines.count() == 1


def test_a_month_not_over_can_only_be_previewed(team, key):
    call(team, key, datetime(2026, 11, 5, tzinfo=UTC))
    with pytest.raises(InvoiceError, match="not over"):
        invoice_close(team=team, month=NOV, now=datetime(2026, 11, 20, tzinfo=UTC))
    draft = invoices.invoice_preview(team=team, month=NOV, now=datetime(2026, 11, 20, tzinfo=UTC))
    assert draft.status == "draft" and draft.number is None and draft.lines.count() == 1


def test_a_month_without_usage_gets_no_invoice(team, capsys):
    assert invoice_close(team=team, month=OCT, now=AFTER_OCT) is None
    call_command("closemonth", "2026-10")
    assert "No usage to invoice for 2026-10" in capsys.readouterr().out


def test_csv_json_and_pdf_agree_with_the_ledger(team, key, tmp_path):
    import pypdfium2

    for day in range(1, 20):
        call(
            team,
            key,
            datetime(2026, 10, day, tzinfo=UTC),
            model="gpt-4o" if day % 3 else "deepseek-v4-flash",
            prompt=1000 + day,
            completion=300 + day,
        )
    invoice = invoice_close(team=team, month=OCT, now=AFTER_OCT)
    ledger = {m: sum(r.cost_usd for r in UsageRecord.objects.filter(model=m)) for m in PRICES}

    rows = list(csv.DictReader(io.StringIO(invoice_csv(invoice))))
    data = invoice_json(invoice)

    assert (
        [r["model"] for r in rows]
        == [line["model"] for line in data["lines"]]
        == ["deepseek-v4-flash", "gpt-4o"]
    )
    for row, line in zip(rows, data["lines"]):
        assert (
            Decimal(row["amount_usd"])
            == Decimal(line["amount_usd"])
            == invoices.to_cents(ledger[row["model"]])
        )
    assert (
        Decimal(data["total_usd"])
        == sum(Decimal(r["amount_usd"]) for r in rows)
        == invoice.total_usd
    )

    pdf_path = tmp_path / "invoice.pdf"
    pdf_path.write_bytes(invoice_pdf(invoice))
    document = pypdfium2.PdfDocument(str(pdf_path))
    page = document[0]
    page.render(scale=1.5).to_pil().save(tmp_path / "page1.png")
    text = page.get_textpage().get_text_range()
    assert (tmp_path / "page1.png").stat().st_size > 10_000
    assert "Invoice TG-2026-000001" in text and "Acme" in text
    assert f"{invoice.total_usd:,.2f}" in text and "Total (USD)" in text


def test_reconcile_fails_when_a_ledger_row_is_tampered_with(team, key):
    row = call(team, key, datetime(2026, 10, 5, tzinfo=UTC))
    invoice_close(team=team, month=OCT, now=AFTER_OCT)
    assert reconcile_month(month=OCT, now=AFTER_OCT).ok

    UsageRecord.objects.filter(id=row.id).update(cost_usd=row.cost_usd - Decimal("0.001"))

    report = reconcile_month(month=OCT, now=AFTER_OCT)
    assert not report.ok
    assert any(row.request_id in p for p in report.problems)
    assert any("ledger" in p and "rollups" in p for p in report.problems)
    with pytest.raises(CommandError):
        call_command("reconcile", "2026-10")


def test_reconcile_fails_when_the_rollups_put_spend_on_the_wrong_endpoint(team, key):
    call(team, key, datetime(2026, 10, 5, tzinfo=UTC), endpoint="responses")
    invoice_close(team=team, month=OCT, now=AFTER_OCT)
    assert reconcile_month(month=OCT, now=AFTER_OCT).ok

    DailyUsage.objects.filter(team=team).update(endpoint="chat")

    problems = reconcile_month(month=OCT, now=AFTER_OCT).problems
    assert [p for p in problems if " chat: " in p or " responses: " in p] == [
        f"{team.slug} 2026-10 chat: ledger 0 != rollups 0.007500000000",
        f"{team.slug} 2026-10 responses: ledger 0.007500000000 != rollups 0",
    ]


def test_invoice_downloads_are_for_owner_and_billing_only(team, key, owner, member, outsider):
    call(team, key, datetime(2026, 10, 5, tzinfo=UTC))
    invoice_close(team=team, month=OCT, now=AFTER_OCT)
    billing = MembershipFactory(
        team=team, role=Membership.Role.BILLING, user=UserFactory(username="ap@acme.test")
    ).user
    admin = MembershipFactory(
        team=team, role=Membership.Role.ADMIN, user=UserFactory(username="ad@acme.test")
    ).user

    def get(user, url):
        client = APIClient()
        client.force_login(user)
        return client.get(url)

    assert get(owner, "/api/teams/acme/invoices/").data[0]["number"] == "TG-2026-000001"
    pdf = get(billing, "/api/teams/acme/invoices/2026-10/?format=pdf")
    assert (
        pdf.status_code == 200
        and pdf["Content-Type"] == "application/pdf"
        and pdf.content[:4] == b"%PDF"
    )
    assert 'filename="TG-2026-000001.pdf"' in pdf["Content-Disposition"]
    assert get(billing, "/api/teams/acme/invoices/2026-10/?format=csv").content.startswith(
        b"invoice,month"
    )
    assert get(owner, "/api/teams/acme/invoices/2026-10/").data["number"] == "TG-2026-000001"
    assert get(member, "/api/teams/acme/invoices/2026-10/").status_code == 403
    assert get(admin, "/api/teams/acme/invoices/").status_code == 403
    assert get(outsider, "/api/teams/acme/invoices/2026-10/").status_code == 404
    assert get(owner, "/api/teams/acme/invoices/2026-09/").status_code == 404


def test_done_when_a_month_of_mixed_traffic_closes_reconciles_and_exports_agree(
    team, key, tmp_path, capsys
):
    other = TeamFactory(slug="globex", name="Globex", markup_percent=Decimal("5"))
    other_key = api_key_create(team=other, name="y")[0]
    for day in range(1, 31):
        when = datetime(2026, 11, day, day % 24, tzinfo=UTC)
        call(team, key, when, model="gpt-4o", prompt=500 * day, completion=100 * day)
        call(
            other, other_key, when, model="deepseek-v4-flash", prompt=20_000 + day, completion=7_000
        )
        if day % 4 == 0:
            call(team, key, when, model="deepseek-v4-flash", prompt=123_457, completion=98_765)

    from unittest import mock

    with mock.patch("django.utils.timezone.now", return_value=AFTER_NOV):
        call_command("closemonth", "2026-11")
        first = list(Invoice.objects.order_by("id").values_list("number", "total_usd"))
        call_command("closemonth", "2026-11")
        call_command("reconcile", "2026-11")
    assert list(Invoice.objects.order_by("id").values_list("number", "total_usd")) == first
    assert len(first) == 2
    assert "agree" in capsys.readouterr().out

    for slug, invoice in (
        ("acme", Invoice.objects.get(team=team)),
        ("globex", Invoice.objects.get(team=other)),
    ):
        for kind in ("csv", "json", "pdf"):
            call_command(
                "exportinvoice",
                slug,
                "2026-11",
                "--format",
                kind,
                "--output",
                str(tmp_path / f"{slug}.{kind}"),
            )
        ledger = sum(r.cost_usd for r in UsageRecord.objects.filter(team=invoice.team))
        by_model = {}
        for r in UsageRecord.objects.filter(team=invoice.team):
            by_model[r.model] = by_model.get(r.model, 0) + r.cost_usd
        usage_cents = sum(invoices.to_cents(v) for v in by_model.values())
        rows = list(csv.DictReader((tmp_path / f"{slug}.csv").open()))
        data = json.loads((tmp_path / f"{slug}.json").read_text())
        csv_total = sum(Decimal(r["amount_usd"]) for r in rows)
        assert csv_total == Decimal(data["total_usd"]) == invoice.total_usd
        assert sum(Decimal(r["amount_usd"]) for r in rows if r["kind"] == "usage") == usage_cents
        markup = invoices.to_cents(ledger * invoice.team.markup_percent / 100)
        assert invoice.total_usd == usage_cents + markup
        import pypdfium2

        text = (
            pypdfium2.PdfDocument(str(tmp_path / f"{slug}.pdf"))[0].get_textpage().get_text_range()
        )
        assert f"{invoice.total_usd:,.2f}" in text


def test_voidinvoice_then_closemonth_issues_the_correction(team, key, capsys):
    call(team, key, datetime(2026, 10, 5, tzinfo=UTC))
    invoice_close(team=team, month=OCT, now=AFTER_OCT)

    call_command("voidinvoice", "TG-2026-000001", "--reason", "wrong customer address")
    with pytest.raises(CommandError, match="Only a finalized"):
        call_command("voidinvoice", "TG-2026-000001", "--reason", "again")
    corrected = invoice_close(team=team, month=OCT, now=AFTER_OCT)

    assert (
        corrected.number == "TG-2026-000002"
        and corrected.replaces.void_reason == "wrong customer address"
    )


def test_reports_read_rollups_plus_the_ledger_tail_and_equal_the_ledger(team, key):
    from usage.rollups import rollup_advance
    from usage.selectors import usage_summary

    for day in (3, 4, 4, 9):
        call(team, key, datetime(2026, 10, day, 12, tzinfo=UTC))
    rollup_advance(now=datetime(2026, 10, 20, tzinfo=UTC))
    late = call(
        team,
        key,
        datetime(2026, 10, 4, 13, tzinfo=UTC),
        model="deepseek-v4-flash",
        recorded=datetime(2026, 10, 25, tzinfo=UTC),
    )  # after the rollup mark: read from the ledger

    start, end = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    by_day = {
        str(g["day"]): g
        for g in usage_summary(team_id=team.id, group_by="day", start=start, end=end)
    }
    by_model = {
        g["model"]: g
        for g in usage_summary(team_id=team.id, group_by="model", start=start, end=end)
    }

    assert {d: g["requests"] for d, g in by_day.items()} == {
        "2026-10-03": 1,
        "2026-10-04": 3,
        "2026-10-09": 1,
    }
    assert by_model["deepseek-v4-flash"]["cost_usd"] == late.cost_usd
    ledger_total = sum(r.cost_usd for r in UsageRecord.objects.filter(team=team))
    assert sum(g["cost_usd"] for g in by_model.values()) == ledger_total
    # A range that is not day-aligned is read from the ledger alone, to the second.
    partial = usage_summary(
        team_id=team.id, group_by="model", start=datetime(2026, 10, 4, 12, 30, tzinfo=UTC), end=end
    )
    assert (
        sum(g["requests"] for g in partial) == 2
    )  # Oct 4 13:00 (the late one) and Oct 9; 12:00 calls are before


def refused(team, when, recorded=None, n=[0]):
    """A call to a model that does not exist: refused before routing, at $0, no model, no prices."""
    n[0] += 1
    return UsageRecord.objects.create(
        request_id=f"req_refused{n[0]}",
        team=team,
        endpoint="chat",
        requested_model="gpt-4o-mnii",
        status="refused",
        http_status=404,
        error_type="invalid_request_error",
        created_at=when,
        recorded_at=recorded or when,
    )


def test_a_month_with_one_refused_call_closes(team, key):
    refused(team, datetime(2026, 10, 5, tzinfo=UTC))
    call(team, key, datetime(2026, 10, 6, tzinfo=UTC))

    invoice = invoice_close(team=team, month=OCT, now=AFTER_OCT)

    lines = {line.description: line for line in invoice.lines.all()}
    refused_line = lines["Refused calls · Chat completions"]
    assert (refused_line.requests, refused_line.amount_usd) == (1, Decimal("0.00"))
    assert refused_line.input_per_mtok is None and refused_line.model == ""
    assert (
        invoice.total_usd
        == lines["gpt-4o · Chat completions"].amount_usd
        == invoices.to_cents(UsageRecord.objects.get(status="ok").cost_usd)
    )
    assert reconcile_month(month=OCT, now=AFTER_OCT).ok


def test_the_markup_line_is_rounded_from_the_exact_amount_it_stores(team):
    team.markup_percent = Decimal("10")
    team.save()
    # One token at USD 49,999.999999 per 1M: 0.049999999999; its 10 % markup, 0.0049999999999, has
    # 13 decimals. The line stores 12 (0.005000000000), so its cents must come from that: 0.01.
    UsageRecord.objects.create(
        request_id="req_markup_precision",
        team=team,
        endpoint="chat",
        requested_model="m",
        model="m",
        status="ok",
        prompt_tokens=1,
        input_per_mtok=Decimal("49999.999999"),
        cost_usd=Decimal("0.049999999999"),
        created_at=datetime(2026, 10, 5, tzinfo=UTC),
        recorded_at=datetime(2026, 10, 5, tzinfo=UTC),
    )

    invoice = invoice_close(team=team, month=OCT, now=AFTER_OCT)

    markup = invoice.lines.get(kind="markup")
    assert (markup.exact_usd, markup.amount_usd) == (Decimal("0.005"), Decimal("0.01"))
    assert reconcile_month(month=OCT, now=AFTER_OCT).ok


def test_two_adjustments_with_the_same_reason_land_on_two_lines(team, key):
    call(team, key, datetime(2026, 10, 5, tzinfo=UTC))
    for amount in ("-1.00", "-2.50"):
        adjustment_add(
            team=team,
            month=OCT,
            amount_usd=Decimal(amount),
            reason="Credit: outage",
            created_by="finance@acme.test",
        )

    invoice = invoice_close(team=team, month=OCT, now=AFTER_OCT)

    lines = list(invoice.lines.filter(kind="adjustment"))
    assert sorted(line.amount_usd for line in lines) == [Decimal("-2.50"), Decimal("-1.00")]
    linked = sorted(line.adjustment.amount_usd for line in lines)
    assert linked == [Decimal("-2.50"), Decimal("-1.00")]


def test_the_correction_of_a_voided_invoice_keeps_its_adjustments(team, key):
    call(team, key, datetime(2026, 10, 5, tzinfo=UTC))
    adjustment = adjustment_add(
        team=team,
        month=OCT,
        amount_usd=Decimal("-1.25"),
        reason="Credit: outage",
        created_by="finance@acme.test",
    )
    original = invoice_close(team=team, month=OCT, now=AFTER_OCT)

    invoice_void(invoice=original, reason="Wrong address")
    corrected = invoice_close(team=team, month=OCT, now=AFTER_OCT)

    adjustment.refresh_from_db()
    assert corrected.total_usd == original.total_usd
    assert adjustment.invoice_line.invoice == corrected
    # The void invoice keeps its line as issued.
    assert original.lines.get(kind="adjustment").amount_usd == Decimal("-1.25")


# The command and the beat task read the clock, so these tests use the month before the real one.


def last_month() -> datetime:
    return month_start(month_start(timezone.now()) - timedelta(days=1))


def test_closemonth_closes_a_month_with_a_refused_call_and_one_with_only_that(
    team, key, other_team, capsys
):
    month = last_month()
    refused(team, month + timedelta(days=2))
    served = call(team, key, month + timedelta(days=3))
    refused(other_team, month + timedelta(days=4))

    call_command("closemonth", f"{month:%Y-%m}")  # returns: the command exits 0

    out = capsys.readouterr().out
    acme, globex = Invoice.objects.get(team=team), Invoice.objects.get(team=other_team)
    assert acme.status == globex.status == "finalized"
    assert "[1/2] acme" in out and acme.number in out
    assert "[2/2] globex" in out and globex.number in out
    assert "2 teams, 2 invoices finalized" in out and "0 failed" in out
    assert [(line.description, line.requests, line.amount_usd) for line in acme.lines.all()] == [
        ("Refused calls · Chat completions", 1, Decimal("0.00")),
        ("gpt-4o · Chat completions", 1, invoices.to_cents(served.cost_usd)),
    ]
    assert acme.total_usd == invoices.to_cents(served.cost_usd)
    assert [(li.requests, li.amount_usd) for li in globex.lines.all()] == [(1, Decimal("0.00"))]
    assert globex.total_usd == Decimal("0.00")
    assert reconcile_month(month=month.date(), now=timezone.now()).ok


def overflowing_adjustments(team, month):
    """Two charges that each fit an adjustment but together overflow an invoice's total
    (under USD 10^12): the team's invoice cannot be saved, a real database error."""
    for _ in range(2):
        adjustment_add(
            team=team,
            month=month,
            amount_usd=Decimal("600000000000.00"),
            reason="Annual commitment (mistyped)",
            created_by="finance@acme.test",
        )


def test_closemonth_goes_on_past_a_failing_team_names_it_exits_non_zero_and_a_rerun_closes_it(
    team, capsys
):
    month = last_month()
    teams = [team, *(TeamFactory(slug=slug) for slug in ("bravo", "charlie", "delta"))]
    for each in teams:
        call(each, None, month + timedelta(days=5))
    broken = teams[1]
    overflowing_adjustments(broken, month.date())

    with pytest.raises(CommandError) as failed:
        call_command("closemonth", f"{month:%Y-%m}")

    out = capsys.readouterr().out
    assert failed.value.returncode == 1
    assert "1 of 4 teams could not be closed" in str(failed.value) and "bravo" in str(failed.value)
    assert "[2/4] bravo" in out and "FAILED: DataError: numeric field overflow" in out
    assert "failed: bravo: DataError: numeric field overflow" in out and "[4/4] delta" in out
    year = timezone.now().year
    closed = dict(Invoice.objects.values_list("team__slug", "number"))
    assert closed == {
        "acme": f"TG-{year}-000001",
        "charlie": f"TG-{year}-000002",
        "delta": f"TG-{year}-000003",
    }

    adjustment_add(
        team=broken,
        month=month.date(),
        amount_usd=Decimal("-600000000000.00"),
        reason="Reverse the mistyped commitment",
        created_by="finance@acme.test",
    )
    call_command("closemonth", f"{month:%Y-%m}")

    out = capsys.readouterr().out
    fixed = Invoice.objects.get(team=broken)
    assert fixed.number == f"TG-{year}-000004" and fixed.status == "finalized"
    assert fixed.total_usd == Decimal("600000000000.01")  # usage 0.0075 -> 0.01, plus the two lines
    assert out.count("(already final)") == 3 and "1 invoice finalized" in out and "0 failed" in out
    assert dict(Invoice.objects.exclude(team=broken).values_list("team__slug", "number")) == closed
    assert reconcile_month(month=month.date(), now=timezone.now()).ok


class Terminal(io.StringIO):
    """Output that says it is a terminal, as a person running the command sees it."""

    def isatty(self):
        return True


def test_closemonth_on_a_terminal_counts_teams_on_one_line_and_keeps_failures(team):
    month = last_month()
    teams = [team, *(TeamFactory(slug=slug) for slug in ("bravo", "charlie", "delta"))]
    for each in teams:
        call(each, None, month + timedelta(days=5))
    overflowing_adjustments(teams[1], month.date())
    out = Terminal()

    with pytest.raises(CommandError):
        call_command("closemonth", f"{month:%Y-%m}", stdout=out)

    screen = out.getvalue()
    # What stays on screen: each line as the last redraw before its newline left it.
    kept = [line.rsplit("\x1b[K", 1)[-1] for line in screen.split("\n")]
    assert "[4/4] delta" in screen and "\r\x1b[K[3/4] charlie" in screen
    assert kept[0].startswith("[2/4] bravo") and "FAILED: DataError" in kept[0]
    assert kept[1].startswith(f"{month:%Y-%m}: 4 teams, 3 invoices finalized")
    assert not any("[1/4]" in line or "[4/4]" in line for line in kept)


def test_closemonth_in_a_log_writes_plain_lines(team, other_team):
    month = last_month()
    for each in (team, other_team):
        call(each, None, month + timedelta(days=5))
    out = io.StringIO()

    call_command("closemonth", f"{month:%Y-%m}", stdout=out)

    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines[0].startswith("[1/2] acme") and lines[1].startswith("[2/2] ")
    assert lines[2].startswith(f"{month:%Y-%m}: 2 teams, 2 invoices finalized")


def test_exportinvoice_says_what_it_writes_on_a_terminal_only(team, tmp_path):
    month = last_month()
    call(team, None, month + timedelta(days=5))
    call_command("closemonth", f"{month:%Y-%m}", stdout=io.StringIO())
    number = Invoice.objects.get(team=team).number
    terminal, log = Terminal(), io.StringIO()

    for out in (terminal, log):
        call_command(
            "exportinvoice", "acme", f"{month:%Y-%m}", "--format", "pdf",
            "--output", str(tmp_path / "acme.pdf"), stdout=out,
        )  # fmt: skip

    assert terminal.getvalue().startswith(
        f"\r\x1b[KWriting {number} (pdf) to {tmp_path / 'acme.pdf'}…\r\x1b[K"
    )
    assert log.getvalue() == f"Wrote {number} (pdf) to {tmp_path / 'acme.pdf'}\n"


def test_the_beat_task_closes_the_other_teams_and_logs_the_failing_one(
    team, other_team, settings, caplog
):
    settings.TOLLGATE_INVOICE_GRACE_HOURS = 0
    month = last_month()
    call(team, None, month + timedelta(days=5))
    call(other_team, None, month + timedelta(days=6))
    overflowing_adjustments(team, month.date())

    done = invoices_close_due()

    assert done["invoices"] == [Invoice.objects.get(team=other_team).number]
    assert list(done["failed"]) == ["acme"] and "numeric field overflow" in done["failed"]["acme"]
    assert any(
        r.levelname == "ERROR" and "acme" in r.getMessage() and "overflow" in r.getMessage()
        for r in caplog.records
        if r.name == "usage.tasks"
    )


def test_refused_calls_preview_and_download_for_the_owner_not_for_others(
    team, owner, member, outsider
):
    month = last_month()
    refused(team, month + timedelta(days=2))
    refused(team, month_start(timezone.now()) + timedelta(seconds=1))  # this month, in progress
    label, now_label = f"{month:%Y-%m}", f"{timezone.now():%Y-%m}"

    def get(user, url):
        client = Client()
        client.force_login(user)
        return client.get(url)

    page = get(owner, "/t/acme/invoices/")
    assert page.status_code == 200 and "Not closed yet" in page.content.decode()
    assert (
        f"/api/teams/acme/invoices/{now_label}/?preview=1&amp;format=pdf" in page.content.decode()
    )
    for month_label in (label, now_label):
        draft = get(owner, f"/api/teams/acme/invoices/{month_label}/?preview=1")
        assert draft.status_code == 200 and draft.json()["status"] == "draft"
        lines = [
            (li["description"], li["requests"], li["amount_usd"]) for li in draft.json()["lines"]
        ]
        assert lines == [("Refused calls · Chat completions", 1, "0.00")]
        pdf = get(owner, f"/api/teams/acme/invoices/{month_label}/?preview=1&format=pdf")
        assert pdf.status_code == 200 and pdf.content[:4] == b"%PDF"
    assert get(member, f"/api/teams/acme/invoices/{label}/?preview=1").status_code == 403
    assert get(member, "/t/acme/invoices/").status_code == 404
    assert get(outsider, f"/api/teams/acme/invoices/{label}/?preview=1").status_code == 404
    assert get(outsider, "/t/acme/invoices/").status_code == 404

    call_command("closemonth", label)
    closed = get(owner, f"/api/teams/acme/invoices/{label}/")
    assert closed.status_code == 200 and closed.json()["total_usd"] == "0.00"
    assert get(owner, f"/api/teams/acme/invoices/{label}/?format=csv").status_code == 200
    assert get(outsider, f"/api/teams/acme/invoices/{label}/").status_code == 404


def test_late_usage_of_a_month_closed_with_nothing_to_bill_goes_on_the_next_invoice(team, key):
    assert invoice_close(team=team, month=OCT, now=AFTER_OCT) is None
    late = call(
        team,
        key,
        datetime(2026, 10, 31, 23, 59, tzinfo=UTC),
        recorded=AFTER_OCT + timedelta(hours=1),
    )
    call(team, key, datetime(2026, 11, 10, tzinfo=UTC))

    november = invoice_close(team=team, month=NOV, now=AFTER_NOV)

    assert november.lines.get(kind="late_usage").exact_usd == late.cost_usd


def test_reports_of_a_month_of_refused_calls_cost_decimal_zero(team, owner):
    refused(team, datetime(2026, 10, 3, tzinfo=UTC))
    rollup_advance(now=datetime(2026, 10, 10, tzinfo=UTC))
    refused(team, datetime(2026, 10, 4, tzinfo=UTC), recorded=datetime(2026, 10, 20, tzinfo=UTC))

    start, end = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    for group_by in ("model", "day", "key"):
        for group in usage_summary(team_id=team.id, group_by=group_by, start=start, end=end):
            assert isinstance(group["cost_usd"], Decimal) and group["cost_usd"] == 0
    [by_model] = usage_summary(team_id=team.id, group_by="model", start=start, end=end)
    assert by_model["requests"] == 2


def test_an_adjustment_added_after_its_month_closed_goes_on_the_next_invoice(team, key):
    call(team, key, datetime(2026, 10, 5, tzinfo=UTC))
    invoice_close(team=team, month=OCT, now=AFTER_OCT)
    credit = adjustment_add(
        team=team,
        month=OCT,
        amount_usd=Decimal("-0.40"),
        reason="Credit: October outage",
        created_by="finance@acme.test",
    )
    call(team, key, datetime(2026, 11, 5, tzinfo=UTC))

    november = invoice_close(team=team, month=NOV, now=AFTER_NOV)

    credit.refresh_from_db()
    assert credit.invoice_line.invoice == november and credit.invoice_line.amount_usd == Decimal(
        "-0.40"
    )


def test_each_endpoint_of_a_model_is_its_own_line_and_the_exports_carry_it(team, key):
    chat = [call(team, key, datetime(2026, 10, d, tzinfo=UTC)) for d in (3, 4)]
    responses = call(team, key, datetime(2026, 10, 5, tzinfo=UTC), prompt=7, endpoint="responses")
    completions = call(team, key, datetime(2026, 10, 6, tzinfo=UTC), endpoint="completions")

    invoice = invoice_close(team=team, month=OCT, now=AFTER_OCT)

    usage = [
        (line.model, line.endpoint, line.description, line.requests, line.exact_usd)
        for line in invoice.lines.filter(kind="usage")
    ]
    assert usage == [
        ("gpt-4o", "chat", "gpt-4o · Chat completions", 2, sum(r.cost_usd for r in chat)),
        ("gpt-4o", "completions", "gpt-4o · Completions", 1, completions.cost_usd),
        ("gpt-4o", "responses", "gpt-4o · Responses", 1, responses.cost_usd),
    ]
    by_endpoint = {
        g["endpoint"]: g["cost_usd"]
        for g in usage_summary(
            team_id=team.id,
            group_by="endpoint",
            start=datetime(2026, 10, 1, tzinfo=UTC),
            end=AFTER_OCT,
        )
    }
    assert {line.endpoint: line.exact_usd for line in invoice.lines.all()} == by_endpoint
    rows = list(csv.DictReader(io.StringIO(invoice_csv(invoice))))
    assert [(r["endpoint"], r["requests"]) for r in rows] == [
        ("chat", "2"),
        ("completions", "1"),
        ("responses", "1"),
    ]
    assert [li["endpoint"] for li in invoice_json(invoice)["lines"]] == [
        "chat",
        "completions",
        "responses",
    ]
    assert reconcile_month(month=OCT, now=AFTER_OCT).ok


def test_late_usage_on_another_endpoint_bills_only_that_endpoint(team, key):
    call(team, key, datetime(2026, 10, 5, tzinfo=UTC))
    invoice_close(team=team, month=OCT, now=AFTER_OCT)
    # The same model at the same prices, through the Responses API, recorded after the close.
    late = call(
        team,
        key,
        datetime(2026, 10, 31, 23, tzinfo=UTC),
        endpoint="responses",
        recorded=AFTER_OCT + timedelta(hours=1),
    )

    november = invoice_close(team=team, month=NOV, now=AFTER_NOV)

    assert [
        (line.kind, line.endpoint, line.description, line.requests, line.exact_usd)
        for line in november.lines.all()
    ] == [
        (
            "late_usage",
            "responses",
            "Late usage for 2026-10: gpt-4o · Responses",
            1,
            late.cost_usd,
        )
    ]
    assert reconcile_month(month=OCT, now=AFTER_NOV).ok
