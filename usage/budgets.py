"""Budgets: setting them, reserving against them on the hot path, alerting on them.

A call reserves its worst-case cost on every budget that applies to it
(its team's and its key's) before the upstream is called, and settles to
its actual cost when it is recorded (usage.metering). The reservation is one
INSERT … ON CONFLICT DO UPDATE … WHERE statement: the conditional update
re-checks the locked counter row, so parallel calls cannot both take the
last dollar. The same statement writes the call's in-flight record.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.db.models import F, Sum
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.audit import audit, diff
from portal.logs import warn_at_most_every
from usage.models import Budget, BudgetCounter, MeteredCall, UsageRecord
from usage.months import month_start, next_month_start

if TYPE_CHECKING:
    from accounts.models import ApiKey, Team

logger = logging.getLogger(__name__)
DEFAULT_THRESHOLDS = [50, 80, 100]


class OverBudget(Exception):
    """A call does not fit in a hard budget."""

    def __init__(self, *, amount_usd: Decimal, key_prefix: str | None, resets_at: datetime):
        self.resets_at = resets_at
        scope = f"the key {key_prefix}" if key_prefix else "the team"
        super().__init__(
            f"This call would exceed the monthly budget of ${amount_usd.normalize():f} for {scope} "
            f"(hard limit). The budget resets on {resets_at:%Y-%m-%d} 00:00 UTC."
        )


def budget_set(
    *,
    team: Team,
    amount_usd: Decimal,
    hard: bool = True,
    thresholds: list[int] | None = None,
    api_key: ApiKey | None = None,
    now: datetime | None = None,
) -> Budget:
    """Create or change a budget. It applies at once, to the whole current month:
    its counter for this month starts from what the ledger already holds."""
    if amount_usd < 0:
        raise ValueError("A budget cannot be negative.")
    thresholds = sorted(set(thresholds if thresholds is not None else DEFAULT_THRESHOLDS))
    if any(not isinstance(t, int) or not 1 <= t <= 1000 for t in thresholds):
        raise ValueError("Thresholds are whole percentages between 1 and 1000.")
    now = now or timezone.now()
    start = month_start(now)
    with transaction.atomic():
        existing = Budget.objects.select_for_update().filter(team=team, api_key=api_key).first()
        before = _budget_shown(existing)
        budget, _ = Budget.objects.update_or_create(
            team=team,
            api_key=api_key,
            defaults={"amount_usd": amount_usd, "hard": hard, "thresholds": thresholds},
        )
        if changed := diff(before, _budget_shown(budget)):
            audit(
                team=team,
                action="budget.set",
                target=f"key {api_key.prefix}" if api_key else "team",
                changes=changed,
            )
        # Counters copy the terms; refresh them so a new limit applies at once.
        # Spend already past a lowered limit, and calls in flight admitted under
        # the old one, are carried, not an overspend.
        BudgetCounter.objects.filter(budget=budget).update(
            limit_usd=amount_usd,
            hard=hard,
            thresholds=thresholds,
            carried_usd=Greatest(
                F("carried_usd"), F("spent_usd") + F("reserved_usd") - F("overrun_usd") - amount_usd
            ),
        )
        _, created = BudgetCounter.objects.get_or_create(
            budget=budget,
            month=start.date(),
            defaults={"limit_usd": amount_usd, "hard": hard, "thresholds": thresholds},
        )
    if created:
        # A new counter starts from the month's spend so far. Read in a transaction of
        # its own, after the counter is visible: a call closing meanwhile either lands
        # in the sum, or waits on the counter row's lock and adds itself after. (Left: a
        # ledger statement begun before the counter existed and committed after this sum,
        # a window of milliseconds; reconcile reports it.)
        _counter_resync(budget=budget, month=start, amount_usd=amount_usd)
    # New terms may put this month's spend past a threshold at once: check now, not at the
    # next call or the next scheduled check.
    counter_id = BudgetCounter.objects.get(budget=budget, month=start.date()).id
    transaction.on_commit(lambda: budget_alerts_enqueue(counter_id))
    return budget  # type: ignore[no-any-return]  # Django's ORM is untyped here


def _budget_shown(budget: Budget | None) -> dict[str, object]:
    if budget is None:
        return {}
    return {
        "amount_usd": str(Decimal(budget.amount_usd).normalize()),
        "hard": budget.hard,
        "thresholds": list(budget.thresholds),
    }


def _counter_resync(*, budget: Budget, month: datetime, amount_usd: Decimal) -> None:
    rows = UsageRecord.objects.filter(
        team_id=budget.team_id, created_at__gte=month, created_at__lt=next_month_start(month)
    )
    if budget.api_key_id is not None:
        rows = rows.filter(api_key_id=budget.api_key_id)
    with transaction.atomic():
        counter = BudgetCounter.objects.select_for_update().get(budget=budget, month=month.date())
        spent = rows.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)
        counter.spent_usd = spent
        counter.carried_usd = max(counter.carried_usd, spent - amount_usd)
        counter.save(update_fields=["spent_usd", "carried_usd"])


@dataclass(frozen=True)
class Reservation:
    amount: Decimal
    counter_ids: tuple[int, ...]


def _month(now: datetime) -> date:
    return month_start(now).date()


def budget_reserve(*, call: dict[str, Any], amount: Decimal, now: datetime) -> Reservation:
    """Write the call's metered-call record (its values by attribute) holding `amount` USD on each applicable budget.

    Raises OverBudget (and writes nothing) if a hard budget lacks room.
    """
    rows = _fetch(*_reserve_statement(call, amount, now))
    refused, reservation = _reserve_result(rows, amount)
    if refused is not None:
        raise OverBudget(**_refuse(_fetch, refused, call, reservation, now))
    return reservation


async def budget_reserve_async(
    *, call: dict[str, Any], amount: Decimal, now: datetime
) -> Reservation:
    """budget_reserve on the event loop (portal.aio): the /v1 hot path's."""
    from portal import aio

    rows = await aio.fetch(*_reserve_statement(call, amount, now), tenant=call["team_id"])
    refused, reservation = _reserve_result(rows, amount)
    if refused is not None:
        raise OverBudget(**await _refuse_async(refused, call, reservation, now))
    return reservation


# A reservation's result per applicable budget: (budget id, hard, counter id or None if refused).
ReserveRow = tuple[int, bool, int | None]


def _fetch(sql: str, params: list[Any]) -> list[Any]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def _reserve_result(rows: list[ReserveRow], amount: Decimal) -> tuple[int | None, Reservation]:
    """The first hard budget that refused (or None), and what was reserved."""
    refused = [budget_id for budget_id, hard, counter_id in rows if counter_id is None and hard]
    counter_ids = tuple(counter_id for _, _, counter_id in rows if counter_id is not None)
    return (refused[0] if refused else None), Reservation(amount=amount, counter_ids=counter_ids)


def _refuse_statement(
    budget_id: int, call: dict[str, Any], reservation: Reservation
) -> tuple[str, list[Any]]:
    # Undo what the reservation took on the budgets that had room, and drop the call's
    # record (refused calls are recorded as refused ledger rows, not as metered calls),
    # reading what the refusal says about the budget that lacked it: one statement.
    sql = """
        WITH released AS (
            UPDATE usage_budgetcounter SET reserved_usd = reserved_usd - %s WHERE id = ANY(%s)
        ), dropped AS (
            DELETE FROM usage_meteredcall WHERE request_id = %s
        )
        SELECT b.amount_usd, k.prefix FROM usage_budget b
        LEFT JOIN accounts_apikey k ON k.id = b.api_key_id WHERE b.id = %s
    """
    return sql, [reservation.amount, list(reservation.counter_ids), call["request_id"], budget_id]


def _refuse(
    fetch: Callable[..., list[Any]],
    budget_id: int,
    call: dict[str, Any],
    reservation: Reservation,
    now: datetime,
) -> dict[str, Any]:
    ((amount_usd, prefix),) = fetch(*_refuse_statement(budget_id, call, reservation))
    return {"amount_usd": amount_usd, "key_prefix": prefix, "resets_at": next_month_start(now)}


async def _refuse_async(
    budget_id: int, call: dict[str, Any], reservation: Reservation, now: datetime
) -> dict[str, Any]:
    from portal import aio

    ((amount_usd, prefix),) = await aio.fetch(*_refuse_statement(budget_id, call, reservation))
    return {"amount_usd": amount_usd, "key_prefix": prefix, "resets_at": next_month_start(now)}


def _reserve_statement(
    call: dict[str, Any], amount: Decimal, now: datetime
) -> tuple[str, list[Any]]:
    call["reserved_usd"] = amount
    params = [call["team_id"], call["api_key_id"], _month(now), amount, amount]
    names, sql = _reserve_sql()
    return sql, params + [call[name] for name in names]


@functools.cache
def _reserve_sql() -> tuple[tuple[str, ...], str]:
    # One statement, atomic on its own: the conditional upsert re-checks each
    # locked counter row, so parallel calls cannot both take the last dollar.
    fields = [
        f
        for f in MeteredCall._meta.concrete_fields
        if not f.primary_key and f.name != "counter_ids"
    ]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    sql = f"""
        WITH b AS (
            SELECT id, amount_usd, hard, thresholds FROM usage_budget
            WHERE team_id = %s AND (api_key_id IS NULL OR api_key_id = %s)
        ), r AS (
            INSERT INTO usage_budgetcounter
                (budget_id, month, spent_usd, reserved_usd, overrun_usd, carried_usd, limit_usd, hard, thresholds)
            SELECT id, %s, 0, %s, 0, 0, amount_usd, hard, thresholds FROM b
            WHERE NOT hard OR %s <= amount_usd
            ON CONFLICT (budget_id, month) DO UPDATE SET
                reserved_usd = usage_budgetcounter.reserved_usd + EXCLUDED.reserved_usd,
                limit_usd = EXCLUDED.limit_usd, hard = EXCLUDED.hard, thresholds = EXCLUDED.thresholds
            WHERE NOT EXCLUDED.hard OR usage_budgetcounter.spent_usd + usage_budgetcounter.reserved_usd
                + EXCLUDED.reserved_usd <= EXCLUDED.limit_usd
            RETURNING id, budget_id
        ), i AS (
            INSERT INTO {quote(MeteredCall._meta.db_table)} ({columns}, counter_ids)
            VALUES ({placeholders}, (SELECT COALESCE(jsonb_agg(id), '[]'::jsonb) FROM r))
        )
        SELECT b.id, b.hard, r.id FROM b LEFT JOIN r ON r.budget_id = b.id
    """
    return tuple(f.attname for f in fields), sql


def budget_release(*, counter_ids: Iterable[int], amount: Decimal) -> None:
    if counter_ids and amount:
        BudgetCounter.objects.filter(id__in=list(counter_ids)).update(
            reserved_usd=F("reserved_usd") - amount
        )


# A settled counter: (id, spent, limit, thresholds as a list or its JSON text).
SettledRow = tuple[int, Decimal, Decimal, list[int] | str]


def crossed_counters(settled: list[SettledRow], cost: Decimal) -> list[int]:
    """Counters whose spend just crossed one of their thresholds."""
    crossed = []
    for counter_id, spent, limit, raw in settled:
        thresholds: list[int] = json.loads(raw) if isinstance(raw, str) else raw
        before = spent - cost
        if limit and any(before < limit * t / 100 <= spent for t in thresholds):
            crossed.append(counter_id)
    return crossed


def budget_alerts_enqueue(counter_id: int) -> None:
    """Ask a worker to fire the alerts this counter's spend has reached. Whatever asked has
    already happened (a call recorded, a budget set): a broker outage must not fail it, and
    the beat job budget_alerts_check_all catches up within minutes."""
    from usage.tasks import budget_alerts_check

    try:
        # One try, no retries: this runs as a call is recorded, which must not wait on a
        # broker that is down (its connection attempt is bounded by the broker settings).
        budget_alerts_check.apply_async((counter_id,), retry=False)
    except Exception as exc:
        warn_at_most_every(
            60,
            logger,
            "alerts-broker",
            "budget alert checks are not being queued (the broker does not answer: %s); "
            "the scheduled check sends them once it is back",
            exc,
        )
