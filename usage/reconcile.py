"""Check that the ledger, the calls, the budgets, the rollups, the reports and the invoices agree.

`reconcile_month` lists every disagreement it finds as a problem:

- a ledger row whose cost is not what its tokens and unit prices make;
- a finished call (MeteredCall) without its ledger rows, a sweep row that
  bills anything, a call still open past its deadline (no sweeper runs);
- a budget counter whose spend is not the ledger's spend for its budget and
  month, or a hard budget spent beyond its limit plus the recorded overrun;
- rollups, reports and invoices that do not add up to the ledger, and a
  month over (past the invoicing grace period) with usage but no invoice.
"""

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import DecimalField, Exists, ExpressionWrapper, F, Max, OuterRef, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import Team
from usage.invoices import BILLED_KINDS, month_bounds, to_cents
from usage.metering import SWEPT_ATTEMPT
from usage.models import (
    BudgetCounter,
    ClosedMonth,
    DailyUsage,
    Invoice,
    InvoiceLine,
    MeteredCall,
    UsageRecord,
)
from usage.rollups import rollup_advance, rollup_through
from usage.selectors import usage_summary

ZERO = Value(Decimal(0), output_field=DecimalField(max_digits=24, decimal_places=12))


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _expected_cost():
    # What each row's cost must be, from its own tokens and unit prices.
    return ExpressionWrapper(
        (
            (F("prompt_tokens") - F("cached_tokens")) * Coalesce("input_per_mtok", ZERO)
            + F("cached_tokens") * Coalesce("cached_input_per_mtok", ZERO)
            + F("completion_tokens") * Coalesce("output_per_mtok", ZERO)
        )
        / Value(Decimal(1_000_000)),
        output_field=DecimalField(max_digits=24, decimal_places=12),
    )


def reconcile_month(*, month: date, now: datetime | None = None) -> Report:
    report = Report()
    rollup_advance(now=now)
    through = rollup_through()
    first, after = month_bounds(month)
    start = datetime(first.year, first.month, 1, tzinfo=through.tzinfo)
    end = datetime(after.year, after.month, 1, tzinfo=through.tzinfo)
    ledger = UsageRecord.objects.filter(
        created_at__gte=start, created_at__lt=end, recorded_at__lte=through
    )

    for row in ledger.annotate(expected=_expected_cost()).exclude(cost_usd=F("expected"))[:50]:
        report.problems.append(
            f"ledger row {row.request_id}#{row.attempt}: cost {row.cost_usd} but its tokens "
            f"and prices make {row.expected}"
        )
    now = now or timezone.now()
    # Beat closes a month once its grace period is over, hourly.
    close_due = now >= end + timedelta(hours=settings.TOLLGATE_INVOICE_GRACE_HOURS + 1)
    _check_calls(report, ledger, start, end, now)
    _check_budgets(report, first, start, end)
    team_ids = set(ledger.values_list("team_id", flat=True).distinct())
    team_ids |= set(Invoice.objects.filter(month=month).values_list("team_id", flat=True))
    for team in Team.objects.filter(id__in=team_ids).order_by("slug"):
        ledger_total = ledger.filter(team=team).aggregate(t=Sum("cost_usd"))["t"] or Decimal(0)
        rollup_total = DailyUsage.objects.filter(
            team=team, day__gte=first, day__lt=after
        ).aggregate(t=Sum("cost_usd"))["t"] or Decimal(0)
        report_total = sum(
            (
                g["cost_usd"] or 0
                for g in usage_summary(team_id=team.id, group_by="model", start=start, end=end)
            ),
            Decimal(0),
        )
        # The report reads the ledger as it is now, including rows newer than the rollup mark.
        newer = (
            UsageRecord.objects.filter(
                team=team, created_at__gte=start, created_at__lt=end, recorded_at__gt=through
            ).aggregate(t=Sum("cost_usd"))["t"]
            or 0
        )
        if ledger_total != rollup_total:
            report.problems.append(
                f"{team.slug} {month:%Y-%m}: ledger {ledger_total} != rollups {rollup_total}"
            )
        else:
            _check_endpoints(report, team, month, ledger.filter(team=team), first, after)
        if report_total - newer != ledger_total:
            report.problems.append(
                f"{team.slug} {month:%Y-%m}: report {report_total} != ledger {ledger_total}"
            )
        billed = InvoiceLine.objects.filter(
            invoice__team=team,
            invoice__status=Invoice.Status.FINALIZED,
            usage_month=month,
            kind__in=BILLED_KINDS,
        )
        billed_total = billed.aggregate(t=Sum("exact_usd"))["t"] or Decimal(0)
        invoiced = Invoice.objects.filter(
            team=team, month=month, status=Invoice.Status.FINALIZED
        ).first()
        closed = invoiced is not None or ClosedMonth.objects.filter(team=team, month=month).exists()
        if not closed and not billed_total and ledger.filter(team=team).exists() and close_due:
            report.problems.append(
                f"{team.slug} {month:%Y-%m}: the month is over and has usage but was "
                f"never closed (run closemonth {month:%Y-%m})"
            )
        if closed or billed_total:
            if billed_total > ledger_total:
                # Legitimate only as a correction (a negative row) recorded after the month was billed,
                # which the next invoice credits.
                billed_through = billed.aggregate(t=Max("invoice__usage_through"))["t"]
                credits = ledger.filter(team=team, cost_usd__lt=0, recorded_at__gt=billed_through)
                credit = credits.aggregate(t=Sum("cost_usd"))["t"] or Decimal(0)
                if billed_total + credit <= ledger_total:
                    report.notes.append(
                        f"{team.slug} {month:%Y-%m}: a credit of {-credit} to carry on the next "
                        f"invoice"
                    )
                else:
                    report.problems.append(
                        f"{team.slug} {month:%Y-%m}: invoices billed {billed_total} but the "
                        f"ledger holds {ledger_total}"
                    )
            elif billed_total < ledger_total:
                late = ledger_total - billed_total
                report.notes.append(
                    f"{team.slug} {month:%Y-%m}: late usage {late} to bill on the next invoice"
                )
        for invoice in Invoice.objects.filter(team=team, month=month).exclude(
            status=Invoice.Status.VOID
        ):
            lines = list(invoice.lines.all())
            for line in lines:
                if line.amount_usd != to_cents(line.exact_usd):
                    report.problems.append(
                        f"{invoice}: line {line.position} amount {line.amount_usd} is not "
                        f"{line.exact_usd} rounded"
                    )
            total = sum((line.amount_usd for line in lines), Decimal(0))
            if total != invoice.total_usd:
                report.problems.append(
                    f"{invoice}: total {invoice.total_usd} != sum of lines {total}"
                )
    return report


def _check_endpoints(report: Report, team: Team, month: date, ledger, first, after) -> None:
    """The rollups split a month's spend across endpoints as the ledger does (invoices and
    reports break it down by them)."""

    def by_endpoint(rows) -> dict:
        totals = rows.values("endpoint").annotate(t=Sum("cost_usd")).order_by()
        return {r["endpoint"]: r["t"] for r in totals if r["t"]}

    recorded = by_endpoint(ledger)
    rolled = by_endpoint(DailyUsage.objects.filter(team=team, day__gte=first, day__lt=after))
    for endpoint in sorted(set(recorded) | set(rolled)):
        if recorded.get(endpoint, 0) != rolled.get(endpoint, 0):
            report.problems.append(
                f"{team.slug} {month:%Y-%m} {endpoint}: ledger {recorded.get(endpoint, 0)} "
                f"!= rollups {rolled.get(endpoint, 0)}"
            )


def _check_calls(report: Report, ledger, start: datetime, end: datetime, now: datetime) -> None:
    """Every finished call has its ledger rows; a sweep never bills; no call is stuck open."""
    calls = MeteredCall.objects.filter(started_at__gte=start, started_at__lt=end)
    rows = UsageRecord.objects.filter(request_id=OuterRef("request_id"))
    for call in calls.filter(closed_at__isnull=False).exclude(Exists(rows))[:50]:
        report.problems.append(
            f"call {call.request_id} finished at {call.closed_at:%Y-%m-%d %H:%M:%S} but the "
            f"ledger has no row for it"
        )
    for row in ledger.filter(attempt=SWEPT_ATTEMPT).exclude(cost_usd=0)[:50]:
        report.problems.append(
            f"sweep row {row.request_id} bills {row.cost_usd}; a sweep never bills"
        )
    stuck = calls.in_flight().filter(expires_at__lt=now).count()
    if stuck:
        report.problems.append(
            f"{stuck} calls are still open past their deadline: is the sweeper running "
            f"(usage.tasks.inflight_sweep)?"
        )


def _check_budgets(report: Report, month: date, start: datetime, end: datetime) -> None:
    """Budget counters hold the ledger's spend; hard budgets stay within limit plus overrun."""
    for counter in BudgetCounter.objects.filter(month=month).select_related(
        "budget__team", "budget__api_key"
    ):
        budget = counter.budget
        scope = (
            f"{budget.team.slug} key {budget.api_key.prefix}"
            if budget.api_key_id
            else budget.team.slug
        )
        spent = UsageRecord.objects.filter(
            team_id=budget.team_id,
            created_at__gte=start,
            created_at__lt=end,
            **({"api_key_id": budget.api_key_id} if budget.api_key_id else {}),
        ).aggregate(t=Sum("cost_usd"))["t"] or Decimal(0)
        if spent != counter.spent_usd:
            report.problems.append(
                f"{scope} budget {month:%Y-%m}: counter spent {counter.spent_usd} but the "
                f"ledger holds {spent}"
            )
        bound = counter.limit_usd + counter.carried_usd + counter.overrun_usd
        if counter.hard and counter.spent_usd > bound:
            report.problems.append(
                f"{scope} budget {month:%Y-%m}: spent {counter.spent_usd} over the hard limit "
                f"{counter.limit_usd} by more than the recorded overrun "
                f"{counter.overrun_usd} (and carried {counter.carried_usd})"
            )
        if counter.reserved_usd < 0:
            report.problems.append(
                f"{scope} budget {month:%Y-%m}: negative reservation {counter.reserved_usd}"
            )
