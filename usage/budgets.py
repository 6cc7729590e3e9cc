"""Budgets: setting them, reserving against them on the hot path, alerting on them.

A call reserves its worst-case cost on every budget that applies to it
(its team's and its key's) before the upstream is called, and settles to
its actual cost when it is recorded. On PostgreSQL the reservation is one
INSERT … ON CONFLICT DO UPDATE … WHERE statement: the conditional update
re-checks the locked counter row, so parallel calls cannot both take the
last dollar. The same statement writes the call's in-flight record.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import F, Q

from usage.models import Budget, BudgetCounter, InFlightCall
from usage.months import month_start, next_month_start

DEFAULT_THRESHOLDS = [50, 80, 100]


class OverBudget(Exception):
    """A call does not fit in a hard budget."""

    def __init__(self, budget: Budget, resets_at: datetime):
        self.budget = budget
        self.resets_at = resets_at
        scope = f"the key {budget.api_key.prefix}" if budget.api_key_id else "the team"
        super().__init__(
            f"This call would exceed the monthly budget of ${budget.amount_usd.normalize():f} for {scope} "
            f"(hard limit). The budget resets on {resets_at:%Y-%m-%d} 00:00 UTC."
        )


def budget_set(*, team, amount_usd: Decimal, hard: bool = True, thresholds: list[int] | None = None,
               api_key=None) -> Budget:
    if amount_usd < 0:
        raise ValueError("A budget cannot be negative.")
    thresholds = sorted(set(thresholds if thresholds is not None else DEFAULT_THRESHOLDS))
    if any(not isinstance(t, int) or not 1 <= t <= 1000 for t in thresholds):
        raise ValueError("Thresholds are whole percentages between 1 and 1000.")
    budget, _ = Budget.objects.update_or_create(
        team=team, api_key=api_key, defaults={"amount_usd": amount_usd, "hard": hard, "thresholds": thresholds}
    )
    # Counters copy the terms; refresh this month's now so a new limit applies at once.
    BudgetCounter.objects.filter(budget=budget).update(limit_usd=amount_usd, hard=hard, thresholds=thresholds)
    return budget


@dataclass(frozen=True)
class Reservation:
    amount: Decimal
    counter_ids: tuple[int, ...]


def _month(now: datetime):
    return month_start(now).date()


def budget_reserve(*, inflight: InFlightCall, amount: Decimal, now: datetime) -> Reservation:
    """Write the call's in-flight record holding `amount` USD on each applicable budget.

    Raises OverBudget (and writes nothing) if a hard budget lacks room.
    """
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        rows = _reserve_postgres(inflight, amount, now)
    else:
        rows = _reserve_orm(inflight, amount, now)
    refused = [budget_id for budget_id, hard, counter_id in rows if counter_id is None and hard]
    counter_ids = tuple(counter_id for _, _, counter_id in rows if counter_id is not None)
    if refused:
        budget_release(counter_ids=counter_ids, amount=amount)
        InFlightCall.objects.filter(request_id=inflight.request_id).delete()
        budget = Budget.objects.select_related("api_key").get(id=refused[0])
        raise OverBudget(budget, next_month_start(now))
    return Reservation(amount=amount, counter_ids=counter_ids)


def _reserve_postgres(inflight: InFlightCall, amount: Decimal, now: datetime):
    fields = [f for f in InFlightCall._meta.concrete_fields if not f.primary_key and f.name != "counter_ids"]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    sql = f"""
        WITH b AS (
            SELECT id, amount_usd, hard, thresholds FROM usage_budget
            WHERE team_id = %s AND (api_key_id IS NULL OR api_key_id = %s)
        ), r AS (
            INSERT INTO usage_budgetcounter (budget_id, month, spent_usd, reserved_usd, limit_usd, hard, thresholds)
            SELECT id, %s, 0, %s, amount_usd, hard, thresholds FROM b
            WHERE NOT hard OR %s <= amount_usd
            ON CONFLICT (budget_id, month) DO UPDATE SET
                reserved_usd = usage_budgetcounter.reserved_usd + EXCLUDED.reserved_usd,
                limit_usd = EXCLUDED.limit_usd, hard = EXCLUDED.hard, thresholds = EXCLUDED.thresholds
            WHERE NOT EXCLUDED.hard OR usage_budgetcounter.spent_usd + usage_budgetcounter.reserved_usd
                + EXCLUDED.reserved_usd <= EXCLUDED.limit_usd
            RETURNING id, budget_id
        ), i AS (
            INSERT INTO {quote(InFlightCall._meta.db_table)} ({columns}, counter_ids)
            VALUES ({placeholders}, (SELECT COALESCE(jsonb_agg(id), '[]'::jsonb) FROM r))
        )
        SELECT b.id, b.hard, r.id FROM b LEFT JOIN r ON r.budget_id = b.id
    """
    inflight.reserved_usd = amount
    params = [inflight.team_id, inflight.api_key_id, _month(now), amount, amount]
    params += [f.get_db_prep_save(f.pre_save(inflight, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _reserve_orm(inflight: InFlightCall, amount: Decimal, now: datetime):
    # The same steps for other databases (the SQLite demo), in one transaction.
    rows = []
    with transaction.atomic():
        budgets = Budget.objects.filter(Q(api_key__isnull=True) | Q(api_key_id=inflight.api_key_id),
                                        team_id=inflight.team_id)
        for budget in budgets:
            counter, _ = BudgetCounter.objects.select_for_update().get_or_create(
                budget=budget, month=_month(now),
                defaults={"limit_usd": budget.amount_usd, "hard": budget.hard, "thresholds": budget.thresholds},
            )
            fits = counter.spent_usd + counter.reserved_usd + amount <= budget.amount_usd
            if fits or not budget.hard:
                BudgetCounter.objects.filter(id=counter.id).update(reserved_usd=F("reserved_usd") + amount)
                rows.append((budget.id, budget.hard, counter.id))
            else:
                rows.append((budget.id, budget.hard, None))
        inflight.reserved_usd = amount
        inflight.counter_ids = [c for _, _, c in rows if c is not None]
        inflight.save()
    return rows


def budget_release(*, counter_ids, amount: Decimal) -> None:
    if counter_ids and amount:
        BudgetCounter.objects.filter(id__in=list(counter_ids)).update(reserved_usd=F("reserved_usd") - amount)


def settle_sql(reservation: Reservation | None, cost: Decimal) -> tuple[str, list]:
    """A CTE that moves a call's reservation to spend, for the ledger's insert statement."""
    ids = list(reservation.counter_ids) if reservation else []
    amount = reservation.amount if reservation else Decimal(0)
    return (
        "settled AS (UPDATE usage_budgetcounter SET reserved_usd = reserved_usd - %s, spent_usd = spent_usd + %s "
        "WHERE id = ANY(%s) RETURNING id, spent_usd, limit_usd, thresholds)",
        [amount, cost, ids],
    )


def settle_orm(reservation: Reservation | None, cost: Decimal) -> list[tuple]:
    if not reservation or not reservation.counter_ids:
        return []
    ids = list(reservation.counter_ids)
    BudgetCounter.objects.filter(id__in=ids).update(
        reserved_usd=F("reserved_usd") - reservation.amount, spent_usd=F("spent_usd") + cost
    )
    return list(BudgetCounter.objects.filter(id__in=ids).values_list("id", "spent_usd", "limit_usd", "thresholds"))


def crossed_counters(settled: list[tuple], cost: Decimal) -> list[int]:
    """Counters whose spend just crossed one of their thresholds."""
    crossed = []
    for counter_id, spent, limit, thresholds in settled:
        if isinstance(thresholds, str):
            thresholds = json.loads(thresholds)
        before = spent - cost
        if limit and any(before < limit * t / 100 <= spent for t in thresholds):
            crossed.append(counter_id)
    return crossed


# Prompt estimates count ~4 characters a token; a real tokenizer can count
# up to twice that on code or unusual text, so reservations double them.
PROMPT_SAFETY_FACTOR = 2


def worst_case_cost(*, prices_list, prompt_tokens: int, output_tokens_list) -> Decimal:
    """The most a call may cost on any of its candidate models, USD."""
    worst = Decimal(0)
    for prices, output_tokens in zip(prices_list, output_tokens_list):
        cost = (prompt_tokens * PROMPT_SAFETY_FACTOR * (prices.input or 0)
                + output_tokens * (prices.output or 0)) / 1_000_000
        worst = max(worst, cost)
    return worst

