"""Reads of the usage ledger; every one takes the team."""

from datetime import UTC, datetime, time
from decimal import Decimal

from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import TruncDate

from usage.models import UsageRecord

GROUPINGS = ("day", "model", "key")


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
    rows = UsageRecord.objects.filter(team_id=team_id).select_related("api_key")
    if start is not None:
        rows = rows.filter(created_at__gte=start)
    if end is not None:
        rows = rows.filter(created_at__lt=end)
    if key_prefix:
        rows = rows.filter(api_key__prefix=key_prefix)
    if model:
        rows = rows.filter(model=model)
    if status:
        rows = rows.filter(status=status)
    return rows.order_by("-created_at", "-id")


def _day_aligned(moment: datetime | None) -> bool:
    return moment is None or (moment.astimezone(UTC).time() == time.min)


def usage_summary(
    *, team_id: int, group_by: str, start: datetime | None = None, end: datetime | None = None
) -> list[dict]:
    """Requests, tokens and cost of a team in [start, end), grouped by day, model or key.

    Day-aligned ranges (the usual case: months, days) read the daily rollups
    plus the ledger rows recorded since the rollups' high-water mark, so a
    month with a million calls costs a few hundred rows to read; other
    ranges read the ledger. Refused calls count as requests with no tokens.
    """
    label = group_by
    if not (_day_aligned(start) and _day_aligned(end)):
        return _grouped(
            usage_rows(team_id=team_id, start=start, end=end).order_by(),
            LEDGER_GROUPS[group_by],
            label,
        )
    from usage.models import DailyUsage
    from usage.rollups import rollup_through

    through = rollup_through()
    rolled = DailyUsage.objects.filter(team_id=team_id)
    if start is not None:
        rolled = rolled.filter(day__gte=start.astimezone(UTC).date())
    if end is not None:
        rolled = rolled.filter(day__lt=end.astimezone(UTC).date())
    tail = (
        usage_rows(team_id=team_id, start=start, end=end).order_by().filter(recorded_at__gt=through)
    )
    merged: dict = {}
    for part in (
        _grouped(rolled, ROLLUP_GROUPS[group_by], label),
        _grouped(tail, LEDGER_GROUPS[group_by], label),
    ):
        for group in part:
            into = merged.setdefault(group[label], {label: group[label], **ZEROS})
            for k in SUMMED:
                if group[k] is not None:
                    into[k] += group[k]
    return [merged[key] for key in sorted(merged, key=lambda k: (k is None, str(k)))]


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
}
ROLLUP_GROUPS = {"day": F("day"), "model": F("model"), "key": F("api_key__prefix")}


def _grouped(rows, expression, label) -> list[dict]:
    requests = Count("id") if rows.model is UsageRecord else Sum("requests")
    grouped = (
        rows.annotate(group=expression)
        .values("group")
        .annotate(
            requests=requests,
            prompt_tokens=Sum("prompt_tokens"),
            cached_tokens=Sum("cached_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost_usd=Sum("cost_usd"),
        )
        .order_by("group")
    )
    return [{label: g.pop("group"), **g} for g in grouped]


def invoice_for_month(*, team, month):
    """The team's live invoice for a month (finalized, else draft); None if there is none."""
    from usage.models import Invoice

    live = Invoice.objects.filter(team=team, month=month).exclude(status=Invoice.Status.VOID)
    return live.prefetch_related("lines").select_related("replaces").first()


def team_budget_status(*, team, now):
    """The team-wide budget with this month's spend and reservations, or None."""
    from usage.models import Budget, BudgetCounter
    from usage.months import month_start

    budget = Budget.objects.filter(team=team, api_key__isnull=True).first()
    if budget is None:
        return None
    counter = BudgetCounter.objects.filter(budget=budget, month=month_start(now).date()).first()
    spent = counter.spent_usd if counter else 0
    return {
        "budget": budget,
        "spent": spent,
        "reserved": counter.reserved_usd if counter else 0,
        "percent": (spent / budget.amount_usd * 100) if budget.amount_usd else None,
    }


def recent_alerts(*, team, limit=10):
    from usage.models import AlertEvent

    return list(
        AlertEvent.objects.filter(budget__team=team)
        .select_related("budget__api_key")
        .prefetch_related("deliveries")[:limit]
    )
