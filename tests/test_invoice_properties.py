"""Invoices over random ledgers: whatever mix of calls, prices, months, late rows, corrections,
markups and adjustments, every line is rounded once, every total is the sum of its lines, the
invoices bill the ledger exactly per group and line, and reconcile agrees.

Each example runs in its own savepoint, rolled back at its end: pytest's function-scoped
database is not reset between hypothesis examples, and the rollup mark, invoice numbers and
immutable invoices of one example must not leak into the next.
"""

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.db import transaction
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from accounts.services import api_key_create
from tests.factories import TeamFactory
from usage.invoices import (
    BILLED_KINDS,
    PRICE_KEYS,
    adjustment_add,
    invoice_preview,
    invoices_close_month,
)
from usage.models import Invoice, InvoiceAdjustment, InvoiceLine, UsageRecord
from usage.reconcile import reconcile_month

pytestmark = pytest.mark.django_db

# The months that get usage, and when each month is closed (the 2nd of the next, past any
# rollup lag). December gets no usage; its close bills November's late rows.
MONTHS = [date(2026, 9, 1), date(2026, 10, 1), date(2026, 11, 1)]
CLOSES = [
    (date(2026, 9, 1), datetime(2026, 10, 2, tzinfo=UTC)),
    (date(2026, 10, 1), datetime(2026, 11, 2, tzinfo=UTC)),
    (date(2026, 11, 1), datetime(2026, 12, 2, tzinfo=UTC)),
    (date(2026, 12, 1), datetime(2027, 1, 2, tzinfo=UTC)),
]
EXACT, CENT = Decimal("1e-12"), Decimal("0.01")
MILLION = Decimal(1_000_000)

# Model ids with their unit prices (USD per 1M tokens: input, cached input, output). Shared
# entries make rows fall into the same invoice line; a second price for one model is its own.
CATALOG = [
    ("gpt-4o", (Decimal("2.5"), Decimal("1.25"), Decimal("10"))),
    ("gpt-4o", (Decimal("2.75"), None, Decimal("11"))),
    ("deepseek-v4-flash", (Decimal("0.18"), Decimal("0.07"), Decimal("0.25"))),
    ("tiny", (Decimal("0.000001"), Decimal("0"), Decimal("99999.999999"))),
    ("unpriced", (None, None, None)),
    # Half a cent per token: odd totals end in exactly .005, where half-up and half-even differ.
    ("half-cent", (Decimal("5000"), None, Decimal("5000"))),
]
price = st.one_of(st.none(), st.decimals(min_value=0, max_value=1000, places=6))
prices = st.one_of(
    st.sampled_from(CATALOG),
    st.tuples(st.sampled_from(["gpt-4o", "odd-model"]), st.tuples(price, price, price)),
)


def month_start(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def month_end(month: date) -> datetime:
    return CLOSES[MONTHS.index(month)][1].replace(day=1)


def instants(month: date):
    """The first microsecond of the month, its last one, or any second in between."""
    start, end = month_start(month), month_end(month)
    return st.one_of(
        st.just(start),
        st.just(end - timedelta(microseconds=1)),
        st.integers(0, int((end - start).total_seconds()) - 1).map(
            lambda seconds: start + timedelta(seconds=seconds)
        ),
    )


EDGES = {e for m in MONTHS for e in (month_start(m), month_end(m) - timedelta(microseconds=1))}


@dataclass(frozen=True)
class Row:
    team: int
    keyed: bool
    status: str
    model: str
    endpoint: str
    prices: tuple
    prompt: int
    cached: int
    completion: int
    estimated: bool
    month: int
    created_at: datetime
    # None: recorded as it happened; k: recorded an hour after month `month + k` was closed.
    late_by: int | None

    @property
    def cost(self) -> Decimal:
        # As usage/reconcile.py::_expected_cost checks it; a missing price counts as 0.
        inp, cached_inp, out = (p if p is not None else Decimal(0) for p in self.prices)
        return (
            (self.prompt - self.cached) * inp + self.cached * cached_inp + self.completion * out
        ) / MILLION

    @property
    def recorded_at(self) -> datetime:
        if self.late_by is None:
            return self.created_at
        return CLOSES[self.month + self.late_by][1] + timedelta(hours=1)

    @property
    def group(self) -> tuple:
        return (self.model, self.endpoint, *self.prices)


@st.composite
def rows(draw, where, late: bool):
    """A ledger row for a (team, month index) drawn from `where`, recorded on time or late."""
    team, month = draw(where)
    status = draw(st.sampled_from(UsageRecord.Status.values))
    if status == UsageRecord.Status.REFUSED:
        # Refused before routing: no model, no prices, no tokens, $0.
        model, unit, prompt, cached, completion = "", (None, None, None), 0, 0, 0
    else:
        model, unit = draw(prices)
        prompt = draw(st.integers(0, 2_000_000))
        cached = draw(st.integers(0, prompt))
        completion = draw(st.integers(0, 200_000))
        if draw(st.integers(0, 1 if late else 5)) == 0:
            # An appended correction: negative prices, so its cost is negative and still the
            # tokens times its prices (the only shape reconcile accepts).
            unit = tuple(None if p is None else -p for p in unit)
    return Row(
        team=team,
        keyed=draw(st.booleans()),
        status=status,
        model=model,
        # The same model and prices billed through several endpoints: one line each.
        endpoint=draw(st.sampled_from(["chat", "responses", "completions"])),
        prices=unit,
        prompt=prompt,
        cached=cached,
        completion=completion,
        estimated=draw(st.booleans()),
        month=month,
        created_at=draw(instants(MONTHS[month])),
        late_by=draw(st.integers(0, len(MONTHS) - 1 - month)) if late else None,
    )


@dataclass(frozen=True)
class Adjustment:
    team: int
    month: int
    cents: int
    reason: str


@st.composite
def scenarios(draw):
    teams = draw(st.integers(1, 3))
    markups = draw(
        st.lists(
            st.sampled_from(["0", "5", "7.5", "12.345", "100"]), min_size=teams, max_size=teams
        )
    )
    anywhere = st.tuples(st.integers(0, teams - 1), st.integers(0, len(MONTHS) - 1))
    on_time = draw(st.lists(rows(anywhere, late=False), min_size=1, max_size=16))
    adjustments = draw(
        st.lists(
            st.builds(
                Adjustment,
                team=st.integers(0, teams - 1),
                month=st.integers(0, len(MONTHS) - 1),
                cents=st.integers(-50_000, 50_000),
                reason=st.sampled_from(["Credit: outage", "Support plan", "Credit: outage"]),
            ),
            max_size=4,
        )
    )
    # Late rows only for months that got an invoice when they closed (an on-time row or an
    # adjustment): a month closed with nothing to bill leaves no mark, so rows recorded for it
    # later are not picked up (a known gap: test_late_usage_of_a_month_closed_with_nothing_to_
    # bill_goes_on_the_next_invoice in test_invoices.py, marked xfail).
    invoiced = sorted(
        {(r.team, r.month) for r in on_time} | {(a.team, a.month) for a in adjustments}
    )
    late = draw(st.lists(rows(st.sampled_from(invoiced), late=True), max_size=8))
    return [Decimal(m) for m in markups], on_time + late, adjustments


@contextmanager
def rolled_back():
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def insert(rows_, teams, keys, serial):
    UsageRecord.objects.bulk_create(
        [
            UsageRecord(
                request_id=f"req_prop{next(serial)}",
                team=teams[r.team],
                api_key=keys[r.team] if r.keyed else None,
                endpoint=r.endpoint,
                requested_model=r.model or "no-such-model",
                model=r.model,
                provider="p" if r.model else "",
                status=r.status,
                prompt_tokens=r.prompt,
                cached_tokens=r.cached,
                completion_tokens=r.completion,
                tokens_estimated=r.estimated,
                input_per_mtok=r.prices[0],
                cached_input_per_mtok=r.prices[1],
                output_per_mtok=r.prices[2],
                cost_usd=r.cost,
                created_at=r.created_at,
                recorded_at=r.recorded_at,
            )
            for r in rows_
        ]
    )


def line_group(line: InvoiceLine) -> tuple:
    return (line.model, line.endpoint, *(getattr(line, k) for k in PRICE_KEYS))


def describe(line: InvoiceLine) -> tuple:
    return (
        line.kind,
        line.description,
        line.usage_month,
        line.requests,
        line.exact_usd,
        line.amount_usd,
    )


def close_month_by_month(teams, keys, ledger, adjustments):
    """Record each row when it happened and each adjustment before its month closes; close every
    month on the 2nd of the next, checking first that the team's draft is what gets finalized."""
    serial = iter(range(1_000_000))
    waiting = sorted(ledger, key=lambda r: r.recorded_at)
    for step, (month, now) in enumerate(CLOSES):
        insert([r for r in waiting if r.recorded_at < now], teams, keys, serial)
        waiting = [r for r in waiting if r.recorded_at >= now]
        for a in adjustments:
            if a.month == step:
                adjustment_add(
                    team=teams[a.team],
                    month=month,
                    amount_usd=Decimal(a.cents) / 100,
                    reason=a.reason,
                    created_by="finance@example.test",
                )
        previews = {}
        for team in teams:
            draft = invoice_preview(team=team, month=month, now=now)
            previews[team.id] = [describe(x) for x in draft.lines.all()] if draft else []

        result = invoices_close_month(month=month, now=now)

        assert result.ok, [(f.team.slug, f.error) for f in result.failures]
        for team in teams:
            closed = Invoice.objects.filter(team=team, month=month, status="finalized").first()
            finalized = [describe(x) for x in closed.lines.all()] if closed else []
            assert finalized == previews[team.id]
    assert not waiting


def assert_each_invoice_adds_up(invoice: Invoice) -> None:
    lines = list(invoice.lines.all())
    for line in lines:
        # Rounded half-up (away from zero at .5) to cents, once.
        assert line.amount_usd == line.exact_usd.quantize(CENT, ROUND_HALF_UP)
    assert invoice.total_usd == sum((x.amount_usd for x in lines), Decimal(0))
    billed = [x for x in lines if x.kind in BILLED_KINDS]
    assert invoice.subtotal_usd == sum((x.amount_usd for x in billed), Decimal(0))
    markup = [x.exact_usd for x in lines if x.kind == InvoiceLine.Kind.MARKUP]
    if invoice.team.markup_percent:
        usage = sum((x.exact_usd for x in billed), Decimal(0))
        exact = usage * invoice.team.markup_percent / 100
        assert markup == [exact.quantize(EXACT, ROUND_HALF_UP)]
    else:
        assert markup == []


def assert_invoices_bill_the_ledger(t: int, team, invoices, ledger) -> None:
    """After each of the team's invoices, what its invoices billed per month and group (USD,
    requests, tokens) is exactly the ledger recorded up to that invoice's usage_through: so each
    line is the exact ledger sum of its group over its window, and in the end every row is billed
    once, in its own month."""
    billed = defaultdict(lambda: [Decimal(0), 0, 0, 0, 0])
    for invoice in (i for i in invoices if i.team_id == team.id):
        for line in invoice.lines.filter(kind__in=BILLED_KINDS):
            sums = billed[line.usage_month, line_group(line)]
            for i, value in enumerate(
                (
                    line.exact_usd,
                    line.requests,
                    line.prompt_tokens,
                    line.cached_tokens,
                    line.completion_tokens,
                )
            ):
                sums[i] += value
        recorded = defaultdict(lambda: [Decimal(0), 0, 0, 0, 0])
        for r in ledger:
            if (
                r.team == t
                and MONTHS[r.month] <= invoice.month
                and r.recorded_at <= invoice.usage_through
            ):
                sums = recorded[MONTHS[r.month], r.group]
                for i, value in enumerate((r.cost, 1, r.prompt, r.cached, r.completion)):
                    sums[i] += value
        so_far = {key: sums for key, sums in billed.items() if key[0] <= invoice.month}
        assert so_far == dict(recorded), invoice

    owed = defaultdict(Decimal)
    for r in ledger:
        if r.team == t:
            owed[MONTHS[r.month], r.group] += r.cost
    assert {key: sums[0] for key, sums in billed.items()} == dict(owed)


@settings(
    max_examples=40,
    deadline=None,
    # rolled_back() resets the database for each example.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_invoices_bill_the_ledger_exactly_whatever_it_holds(scenario):
    markups, ledger, adjustments = scenario
    late = sum(r.late_by is not None for r in ledger)
    event(f"late rows: {late if late < 3 else '3 or more'}")
    event(f"at a month's edge: {any(r.created_at in EDGES for r in ledger)}")
    event(f"negative rows: {any(r.cost < 0 for r in ledger)}")
    event(f"refused rows: {any(r.status == 'refused' for r in ledger)}")
    event(f"markup: {any(markups)}")
    event(f"adjustments: {bool(adjustments)}")
    with rolled_back():
        teams = [TeamFactory(markup_percent=m) for m in markups]
        keys = [api_key_create(team=t, name="app")[0] for t in teams]

        close_month_by_month(teams, keys, ledger, adjustments)

        invoices = list(Invoice.objects.filter(status="finalized").order_by("finalized_at", "id"))
        for invoice in invoices:
            assert_each_invoice_adds_up(invoice)
        for t, team in enumerate(teams):
            assert_invoices_bill_the_ledger(t, team, invoices, ledger)
        for adjustment in InvoiceAdjustment.objects.select_related("invoice_line__invoice"):
            line = adjustment.invoice_line
            assert line.invoice.status == "finalized" and line.invoice.month == adjustment.month
            assert line.amount_usd == adjustment.amount_usd
        assert InvoiceLine.objects.filter(kind="adjustment").count() == len(adjustments)
        for year in (2026, 2027):
            numbers = sorted(i.number for i in invoices if i.finalized_at.year == year)
            assert numbers == [f"TG-{year}-{n:06d}" for n in range(1, len(numbers) + 1)]
        final = CLOSES[-1][1]
        for month in MONTHS:
            report = reconcile_month(month=month, now=final)
            assert report.ok, report.problems

        # Closing again changes nothing.
        for month, _ in CLOSES:
            again = invoices_close_month(month=month, now=final)
            assert again.ok and not any(t.new for t in again.teams)
        assert list(Invoice.objects.order_by("id").values_list("number", "total_usd")) == [
            (i.number, i.total_usd) for i in sorted(invoices, key=lambda i: i.id)
        ]
