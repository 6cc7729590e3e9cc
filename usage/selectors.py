"""Reads of the usage ledger; every one takes the team."""

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import TruncDate

from portal.replica import reports_database
from usage.models import UsageRecord

GROUPINGS = ("day", "model", "key", "endpoint")


def usage_rows(
    *,
    team_id: int,
    start: datetime | None = None,
    end: datetime | None = None,
    key_prefix: str | None = None,
    model: str | None = None,
    status: str | None = None,
) -> QuerySet[UsageRecord]:
    """Ledger rows of a team, newest first, in [start, end)."""
    # A report: from the read replica when there is one (portal.replica).
    rows = (
        UsageRecord.objects.using(reports_database())
        .filter(team_id=team_id)
        .select_related("api_key")
    )
    if start is not None:
        rows = rows.filter(created_at__gte=start)
    if end is not None:
        rows = rows.filter(created_at__lt=end)
    if key_prefix:
        from usage.filters import key_id

        rows = rows.filter(api_key_id=key_id(key_prefix))
    if model:
        rows = rows.filter(model=model)
    if status:
        rows = rows.filter(status=status)
    return rows.order_by("-created_at", "-id")


def usage_models(*, team_id: int) -> list[str]:
    """The models that have served the team, from the daily rollups and the rows since."""
    from usage.models import DailyUsage
    from usage.rollups import rollup_through

    rolled = DailyUsage.objects.filter(team_id=team_id).values_list("model", flat=True)
    recent = UsageRecord.objects.filter(team_id=team_id, recorded_at__gt=rollup_through())
    names = set(rolled.distinct()) | set(recent.values_list("model", flat=True).distinct())
    return sorted(name for name in names if name)


def _day_aligned(moment: datetime | None) -> bool:
    return moment is None or (moment.astimezone(UTC).time() == time.min)


def usage_summary(
    *,
    team_id: int,
    group_by: str | tuple[str, ...],
    start: datetime | None = None,
    end: datetime | None = None,
    endpoint: str | None = None,
) -> list[dict]:
    """Requests, tokens and cost of a team in [start, end) (on one endpoint if given), grouped
    by day, model, key or endpoint, or by several of them (`group_by=("day", "model")`), one
    dict per group keyed by those names.

    Day-aligned ranges (the usual case: months, days) read the daily rollups
    plus the ledger rows recorded since the rollups' high-water mark, so a
    month with a million calls costs a few hundred rows to read; other
    ranges read the ledger. Refused calls count as requests with no tokens.
    """
    labels = (group_by,) if isinstance(group_by, str) else tuple(group_by)
    only = {"endpoint": endpoint} if endpoint is not None else {}
    rows = usage_rows(team_id=team_id, start=start, end=end).order_by().filter(**only)
    if not (_day_aligned(start) and _day_aligned(end)):
        return _grouped(rows, LEDGER_GROUPS, labels)
    from usage.models import DailyUsage
    from usage.rollups import rollup_through

    through = rollup_through()
    rolled = DailyUsage.objects.filter(team_id=team_id, **only)
    if start is not None:
        rolled = rolled.filter(day__gte=start.astimezone(UTC).date())
    if end is not None:
        rolled = rolled.filter(day__lt=end.astimezone(UTC).date())
    tail = rows.filter(recorded_at__gt=through)
    merged: dict = {}
    for part in (_grouped(rolled, ROLLUP_GROUPS, labels), _grouped(tail, LEDGER_GROUPS, labels)):
        for group in part:
            key = tuple(group[label] for label in labels)
            into = merged.setdefault(key, {**{label: group[label] for label in labels}, **ZEROS})
            for k in SUMMED:
                if group[k] is not None:
                    into[k] += group[k]
    return [
        merged[key]
        for key in sorted(merged, key=lambda k: tuple((part is None, str(part)) for part in k))
    ]


SUMMED = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_usd")
# USD stays Decimal even for a group of $0 refused calls.
ZEROS = {
    "requests": 0,
    "prompt_tokens": 0,
    "cached_tokens": 0,
    "completion_tokens": 0,
    "cost_usd": Decimal(0),
}
LEDGER_GROUPS = {
    "day": TruncDate("created_at", tzinfo=UTC),
    "model": F("model"),
    "key": F("api_key__prefix"),
    "endpoint": F("endpoint"),
}
ROLLUP_GROUPS = {
    "day": F("day"),
    "model": F("model"),
    "key": F("api_key__prefix"),
    "endpoint": F("endpoint"),
}


def _grouped(rows, expressions: dict, labels: tuple[str, ...]) -> list[dict]:
    requests = Count("id") if rows.model is UsageRecord else Sum("requests")
    names = {label: f"group_{label}" for label in labels}
    grouped = (
        rows.annotate(**{names[label]: expressions[label] for label in labels})
        .values(*names.values())
        .annotate(
            requests=requests,
            prompt_tokens=Sum("prompt_tokens"),
            cached_tokens=Sum("cached_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost_usd=Sum("cost_usd"),
        )
        .order_by(*names.values())
    )
    return [{label: g.pop(names[label]) for label in labels} | g for g in grouped]


# Statuses of calls that reached no answer through the gateway's fault or the upstream's.
FAILED = (
    UsageRecord.Status.UPSTREAM_ERROR,
    UsageRecord.Status.TIMEOUT,
    UsageRecord.Status.INTERRUPTED,
)


def usage_health(*, team_id: int, start: datetime, end: datetime) -> dict:
    """Calls, failures and timings of a team in [start, end), from the ledger.

    A call is one request id (its fallback attempts are one call); it failed when its last
    attempt did, and a call whose worker died (swept) failed unless its real rows came after.
    Latency and time to first token are the answered calls' p50 and p95, in ms.
    """
    sql = """
        WITH calls AS (
            SELECT DISTINCT ON (request_id) status, latency_ms, ttft_ms
            FROM usage_usagerecord
            WHERE team_id = %s AND created_at >= %s AND created_at < %s
            -- a sweep row stands for the call only when no real attempt arrived after it
            ORDER BY request_id, attempt >= %s, attempt DESC
        )
        SELECT count(*),
               count(*) FILTER (WHERE status = ANY(%s)),
               count(*) FILTER (WHERE status = 'refused'),
               percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_ms)
                   FILTER (WHERE status = 'ok'),
               percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms)
                   FILTER (WHERE status = 'ok'),
               percentile_disc(0.5) WITHIN GROUP (ORDER BY ttft_ms) FILTER (WHERE status = 'ok'),
               percentile_disc(0.95) WITHIN GROUP (ORDER BY ttft_ms) FILTER (WHERE status = 'ok')
        FROM calls
    """
    from django.db import connection

    from usage.metering import SWEPT_ATTEMPT

    with connection.cursor() as cursor:
        cursor.execute(sql, [team_id, start, end, SWEPT_ATTEMPT, list(FAILED)])
        calls, failed, refused, p50, p95, ttft50, ttft95 = cursor.fetchone()
    return {
        "calls": calls,
        "failed": failed,
        "refused": refused,
        "error_rate": (Decimal(failed) / calls * 100) if calls else None,
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "ttft_p50_ms": ttft50,
        "ttft_p95_ms": ttft95,
    }


def invoice_for_month(*, team, month):
    """The team's live invoice for a month (finalized, else draft); None if there is none."""
    from usage.models import Invoice

    live = Invoice.objects.filter(team=team, month=month).exclude(status=Invoice.Status.VOID)
    return live.prefetch_related("lines").select_related("replaces").first()


def invoice_numbered(*, team, month, number: str):
    """One of the team's invoices for a month by its number, voided ones included."""
    from usage.models import Invoice

    invoice = Invoice.objects.filter(team=team, month=month, number=number[:32])
    return invoice.prefetch_related("lines").select_related("replaces").first()


def invoices_voided(*, team, month) -> list:
    from usage.models import Invoice

    return list(
        Invoice.objects.filter(team=team, month=month, status=Invoice.Status.VOID).order_by("id")
    )


def invoice_months(*, team, now, months: int = 12) -> list[dict]:
    """The team's invoicing by month, newest first: the last `months` months and any older
    month with an invoice; each with its live invoice, voided ones, and whether it is over
    and had usage."""
    from usage.models import Invoice
    from usage.months import month_start, next_month_start

    invoices: dict = {}
    for invoice in Invoice.objects.filter(team=team).select_related("replaces").order_by("id"):
        invoices.setdefault(invoice.month, []).append(invoice)
    starts, start = [], month_start(now)
    for _ in range(months):
        starts.append(start)
        start = month_start(start - timedelta(days=1))
    known = {s.date() for s in starts}
    starts += [
        datetime.combine(month, time.min, tzinfo=UTC) for month in invoices if month not in known
    ]
    listed = []
    for start in sorted(starts, reverse=True):
        month_invoices = invoices.get(start.date(), [])
        end = next_month_start(start)
        listed.append(
            {
                "month": start,
                "invoice": next(
                    (i for i in month_invoices if i.status != Invoice.Status.VOID), None
                ),
                "voided": [i for i in month_invoices if i.status == Invoice.Status.VOID],
                "over": now >= end,
                "had_usage": bool(month_invoices)
                or usage_rows(team_id=team.id, start=start, end=end).exists(),
            }
        )
    return listed


def team_budget_status(*, team, now):
    """The team-wide budget with this month's figures (as budget_list gives them), or None."""
    from usage.models import Budget, BudgetCounter
    from usage.months import month_start

    budget = Budget.objects.filter(team=team, api_key__isnull=True).first()
    if budget is None:
        return None
    counter = BudgetCounter.objects.filter(budget=budget, month=month_start(now).date()).first()
    return _budget_figures(budget, counter, now)


def _budget_figures(budget, counter, now) -> dict:
    """A budget with this month's spend, reservations, share used (None for a $0 budget) and
    month-end forecast, from its counter (no counter yet: nothing spent)."""
    from usage.months import month_projection

    spent = counter.spent_usd if counter else Decimal(0)
    return {
        "budget": budget,
        "spent": spent,
        "reserved": counter.reserved_usd if counter else Decimal(0),
        "percent": spent / budget.amount_usd * 100 if budget.amount_usd else None,
        "forecast": month_projection(spent, now),
    }


def recent_alerts(*, team, limit=10):
    from usage.models import AlertEvent

    return list(
        AlertEvent.objects.filter(budget__team=team)
        .select_related("budget__api_key")
        .prefetch_related("deliveries")[:limit]
    )


def budget_list(*, team, now) -> list[dict]:
    """The team's budgets (the team's first, then its keys'), each with this month's figures."""
    from usage.models import Budget, BudgetCounter
    from usage.months import month_start

    month = month_start(now).date()
    budgets = list(
        Budget.objects.filter(team=team).select_related("api_key").order_by("api_key", "id")
    )
    counters = {
        c.budget_id: c for c in BudgetCounter.objects.filter(budget__in=budgets, month=month)
    }
    return [_budget_figures(budget, counters.get(budget.id), now) for budget in budgets]


def alert_history(*, team) -> QuerySet:
    """The team's budget alerts, newest first, with their deliveries."""
    from usage.models import AlertEvent

    return (
        AlertEvent.objects.filter(budget__team=team)
        .select_related("budget__api_key")
        .prefetch_related("deliveries")
        .order_by("-created_at", "-id")
    )
