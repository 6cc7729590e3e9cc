"""Writes to the usage ledger, and the one cost formula."""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from usage.budgets import (
    Reservation,
    budget_release,
    budget_reserve,
    crossed_counters,
    settle_orm,
    settle_sql,
)
from usage.models import InFlightCall, UsageRecord

logger = logging.getLogger(__name__)

MTOK = Decimal(1_000_000)
# Margin past the call deadline before an in-flight call is presumed dead.
INFLIGHT_MARGIN = timedelta(minutes=5)


class Unpriced(Exception):
    """A call needs a price direction the model does not have."""

    def __init__(self, direction: str):
        super().__init__(direction)
        self.direction = direction


@dataclass(frozen=True)
class ChargedPrices:
    """Unit prices charged for one call, USD per 1M tokens."""

    input: Decimal | None
    cached_input: Decimal | None
    output: Decimal | None

    @classmethod
    def from_catalog(cls, prices) -> "ChargedPrices":
        # A model with no cached-input price bills cached tokens at its input
        # price: never cheaper than the provider's own list price.
        if prices is None:
            return cls(None, None, None)
        cached = prices.cached_input if prices.cached_input is not None else prices.input
        return cls(input=prices.input, cached_input=cached, output=prices.output)


def usage_cost(*, prices: ChargedPrices, prompt_tokens: int, cached_tokens: int = 0, completion_tokens: int = 0) -> Decimal:
    """USD for one call: (prompt − cached) × input + cached × cached-input + completion × output, per 1M.

    Exact in Decimal; raises Unpriced when tokens fall in a direction
    without a price, because unpriced traffic must never be billed as 0.
    """
    cached_tokens = min(cached_tokens, prompt_tokens)
    total = Decimal(0)
    for count, price, direction in (
        (prompt_tokens - cached_tokens, prices.input, "input"),
        (cached_tokens, prices.cached_input, "input"),
        (completion_tokens, prices.output, "output"),
    ):
        if count:
            if price is None:
                raise Unpriced(direction)
            total += count * price
    return total / MTOK


def inflight_start(
    *, request_id: str, team_id: int, api_key_id: int | None, endpoint: str, requested_model: str, now: datetime,
    reserve_usd: Decimal = Decimal(0),
) -> Reservation:
    """Record a call as in flight, reserving `reserve_usd` on its budgets; raises OverBudget."""
    deadline = timedelta(seconds=settings.TOLLGATE_CALL_DEADLINE_S) + INFLIGHT_MARGIN
    inflight = InFlightCall(
        request_id=request_id,
        team_id=team_id,
        api_key_id=api_key_id,
        endpoint=endpoint,
        requested_model=requested_model,
        started_at=now,
        expires_at=now + deadline,
    )
    return budget_reserve(inflight=inflight, amount=reserve_usd, now=now)


def usage_record(*, rows: list[dict], reservation: Reservation | None = None,
                 now: datetime | None = None) -> list[UsageRecord]:
    """Append one call's ledger rows (one per attempt), close its in-flight record
    and settle its budget reservation to the actual cost.

    All three happen atomically, so a call is in the ledger exactly once:
    either these rows are written, the in-flight record is gone and the
    spend counted, or the in-flight record survives for `inflight_expire`.
    """
    now = now or timezone.now()
    records = [UsageRecord(recorded_at=now, **row) for row in rows]
    request_ids = sorted({r.request_id for r in records})
    cost = sum((r.cost_usd for r in records), Decimal(0))
    try:
        if connection.vendor == "postgresql" and not connection.in_atomic_block:
            settled = _insert_closing_inflight(records, request_ids, reservation, cost)
        else:
            with transaction.atomic():
                UsageRecord.objects.bulk_create(records)
                InFlightCall.objects.filter(request_id__in=request_ids).delete()
                settled = settle_orm(reservation, cost)
    except IntegrityError:
        # Only possible if the sweeper settled this call first, i.e. the
        # call outlived its deadline by the margin; its row stands.
        logger.error("usage rows for %s were already recorded; dropped %s", request_ids, rows)
        return []
    for counter_id in crossed_counters(settled, cost):
        transaction.on_commit(lambda c=counter_id: _enqueue_alert_check(c))
    return records


def _enqueue_alert_check(counter_id: int) -> None:
    # The call is recorded already: a broker outage must not fail it. The
    # beat job budget_alerts_check_all catches up within minutes.
    from usage.tasks import budget_alerts_check

    try:
        budget_alerts_check.delay(counter_id)
    except Exception:
        logger.exception("could not enqueue the budget alert check for counter %s", counter_id)


def _insert_closing_inflight(records, request_ids, reservation, cost) -> list[tuple]:
    # One statement, so one round trip on the hot path: PostgreSQL runs the
    # data-modifying CTEs and the INSERT atomically. Other databases (and
    # callers already inside a transaction) take the transaction above.
    fields = [f for f in UsageRecord._meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name
    row_sql = "(" + ", ".join(["%s"] * len(fields)) + ")"
    settle, settle_params = settle_sql(reservation, cost)
    sql = (
        f"WITH closed AS (DELETE FROM {quote(InFlightCall._meta.db_table)} WHERE request_id = ANY(%s)), "
        f"{settle}, "
        f"inserted AS (INSERT INTO {quote(UsageRecord._meta.db_table)} "
        f"({', '.join(quote(f.column) for f in fields)}) VALUES {', '.join([row_sql] * len(records))}) "
        f"SELECT id, spent_usd, limit_usd, thresholds FROM settled"
    )
    params = [request_ids, *settle_params]
    params += [f.get_db_prep_save(f.pre_save(r, True), connection) for r in records for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def inflight_expire(*, now: datetime | None = None) -> int:
    """Record calls whose worker died mid-call as interrupted, at zero cost.

    Safe to run concurrently and repeatedly: rows are claimed with SKIP
    LOCKED and ledger inserts ignore a request id already present.
    """
    now = now or timezone.now()
    with transaction.atomic():
        stale = list(InFlightCall.objects.select_for_update(skip_locked=True).filter(expires_at__lte=now)[:1000])
        if not stale:
            return 0
        for call in stale:
            budget_release(counter_ids=call.counter_ids, amount=call.reserved_usd)
        UsageRecord.objects.bulk_create(
            [
                UsageRecord(
                    request_id=call.request_id,
                    team_id=call.team_id,
                    api_key_id=call.api_key_id,
                    endpoint=call.endpoint,
                    requested_model=call.requested_model,
                    status=UsageRecord.Status.INTERRUPTED,
                    error_message="The gateway worker stopped before the call finished.",
                    created_at=call.started_at,
                    recorded_at=now,
                )
                for call in stale
            ],
            ignore_conflicts=True,
        )
        InFlightCall.objects.filter(id__in=[c.id for c in stale]).delete()
    return len(stale)
