"""The metering boundary: the only way a call's money enters the ledger.

Routing decides where a call goes and reports what happened as typed
outcomes; this module alone turns them into ledger rows, budget
reservations and settlements:

    meter = meter_open(...)       # reserve the worst case, write the call's MeteredCall record
    meter.attempt(Outcome(...))   # one per upstream attempt; returns its cost
    meter.close()                 # ledger rows + call closed + budgets settled, one statement
    meter_refuse(...)             # a call refused before it was opened: one $0 row

A call is in the ledger exactly once: its MeteredCall is open from
`meter_open` until the statement that writes its rows, and a call whose
worker died is swept (`inflight_sweep`) as an `interrupted` row at attempt
SWEPT_ATTEMPT, at no cost. If the call's real rows arrive after all (a
worker that was only slow), they are added beside the sweep row, so the
call is still billed once, at its real cost.
"""

import asyncio
import functools
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import Avg, Exists, OuterRef, Q
from django.utils import timezone

from usage import metrics
from usage.budgets import (
    OverBudget,
    Reservation,
    SettledRow,
    budget_alerts_enqueue,
    budget_release,
    budget_reserve,
    budget_reserve_async,
    crossed_counters,
)
from usage.models import MeteredCall, UsageRecord, WorkerLease
from usage.months import month_start
from usage.pricing import Price, Tokens, cost

__all__ = [
    "Meter",
    "Outcome",
    "OverBudget",
    "Status",
    "Endpoint",
    "inflight_sweep",
    "meter_open",
    "meter_open_async",
    "meter_refuse",
    "meter_refuse_async",
    "SWEPT_ATTEMPT",
    "journal_prune",
]

logger = logging.getLogger(__name__)

Status = UsageRecord.Status
Endpoint = UsageRecord.Endpoint
# The sweeper's row for a call takes this attempt number, which no real
# attempt reaches, so the call's real rows can still be added beside it.
SWEPT_ATTEMPT = 1000
# Past its deadline plus this margin a call is dead, whatever its worker says.
INFLIGHT_MARGIN = timedelta(minutes=2)
# A ledger row's values by attribute name, as the close statement writes them.
Row = dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """What one upstream attempt did, as routing saw it."""

    status: str
    model: str = ""
    provider: str = ""
    price: Price | None = None
    tokens: Tokens = field(default_factory=Tokens)
    # The tokens are the gateway's own count: the upstream sent none, or nonsense.
    estimated: bool = False
    streamed: bool = False
    http_status: int | None = None
    error_type: str = ""
    error_message: str = ""
    latency_ms: int | None = None
    ttft_ms: int | None = None

    def cost(self) -> Decimal:
        if self.price is None:
            if self.tokens.total:
                raise ValueError(f"an outcome of {self.model!r} has tokens but no price")
            return Decimal(0)
        return cost(self.price, self.tokens)


@dataclass
class CallFacts:
    """What every ledger row of a call shares."""

    request_id: str
    team_id: int
    key_id: int | None
    endpoint: str
    requested_model: str
    created_at: datetime
    route: str = ""
    end_user: str = ""
    # For the call's log line only (the ledger keeps the key's id).
    key_prefix: str = ""


class Meter:
    """One open call: its reservation and the outcomes of its attempts, until it is closed."""

    def __init__(self, facts: CallFacts, reservation: Reservation):
        self.facts = facts
        self.reservation = reservation
        self.outcomes: list[tuple[Outcome, Decimal]] = []
        self.closed = False
        self.opened = time.monotonic()

    def attempt(self, outcome: Outcome) -> Decimal:
        """Add an attempt's outcome; returns what it costs (USD)."""
        if self.closed:
            raise RuntimeError(f"{self.facts.request_id} is already recorded")
        charge = outcome.cost()
        self.outcomes.append((outcome, charge))
        return charge

    @property
    def total(self) -> Decimal:
        return sum((charge for _, charge in self.outcomes), Decimal(0))

    def close(self, *, now: datetime | None = None) -> list[UsageRecord]:
        """Write the call's rows, close its in-flight record and settle its budgets, in one
        statement. Safe to call once; a second call is a programming error."""
        rows, now = self._closing(now)
        writing = time.monotonic()
        settled = _close_with_retries(self.facts, rows, self.reservation, self.total, now)
        for counter_id in self._closed(rows, settled, writing):
            transaction.on_commit(lambda c=counter_id: budget_alerts_enqueue(c))
        return [UsageRecord(**row) for row in rows]

    async def close_async(self, *, now: datetime | None = None) -> None:
        """`close` on the event loop (portal.aio): the /v1 hot path's."""
        rows, now = self._closing(now)
        writing = time.monotonic()
        settled = await _close_with_retries_async(
            self.facts, rows, self.reservation, self.total, now
        )
        for counter_id in self._closed(rows, settled, writing):
            # Rare (a threshold crossed), and the broker client is synchronous.
            from asgiref.sync import sync_to_async

            from routing.calls import detached

            detached.spawn(sync_to_async(budget_alerts_enqueue, thread_sensitive=False)(counter_id))

    def _closing(self, now: datetime | None) -> tuple[list[Row], datetime]:
        if self.closed:
            raise RuntimeError(f"{self.facts.request_id} is already recorded")
        self.closed = True
        now = now or timezone.now()
        rows = [
            _row(self.facts, outcome, charge, attempt, now)
            for attempt, (outcome, charge) in enumerate(self.outcomes)
        ]
        return rows, now

    def _closed(self, rows: list[Row], settled: list[SettledRow], writing: float) -> list[int]:
        """Once the ledger holds the call: count and log it; the counters whose alert
        thresholds it crossed."""
        written = time.monotonic()
        metrics.call_observe(
            self.facts, self.outcomes, duration_s=written - self.opened, ledger_s=written - writing
        )
        _log_call(self.facts, rows, self.total)
        return crossed_counters(settled, self.total)


call_logger = logging.getLogger("tollgate.calls")


def _log_call(facts: CallFacts, records: list[Row], total: Decimal) -> None:
    """One line per call, once it is in the ledger: who, what, how it went, what it cost.
    Never a secret and never prompt text: only ids, names and numbers."""
    if not call_logger.isEnabledFor(logging.INFO) or not records:
        return
    last = records[-1]
    fields = {
        "request_id": facts.request_id,
        "team_id": facts.team_id,
        "key_prefix": facts.key_prefix,
        "endpoint": facts.endpoint,
        "requested_model": facts.requested_model[:100],
        "model": last["model"],
        "status": last["status"],
        "http_status": last["http_status"],
        "attempts": len(records),
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "cost_usd": str(total),
        "latency_ms": sum(r["latency_ms"] or 0 for r in records),
    }
    call_logger.info(
        "call %(request_id)s team=%(team_id)s key=%(key_prefix)s model=%(model)s "
        "status=%(status)s tokens=%(prompt_tokens)s/%(completion_tokens)s cost=%(cost_usd)s "
        "latency=%(latency_ms)sms",
        fields,
        extra=fields,
    )


# Tries of the ledger write, and the first pause between them (doubling), seconds.
CLOSE_TRIES = 4
CLOSE_BACKOFF_S = 0.05


def _close_with_retries(
    facts: CallFacts,
    rows: list[Row],
    reservation: Reservation,
    total: Decimal,
    now: datetime,
) -> list[SettledRow]:
    # A pooled connection the database dropped (a restart, a failover) fails the first
    # try; the statement is atomic, so it is tried again on a fresh connection. If a try
    # committed but its answer was lost, the next one meets its rows by their key.
    statement = _close_statement(facts, rows, reservation, total, now)
    for attempt in range(CLOSE_TRIES):
        try:
            with connection.cursor() as cursor:
                cursor.execute(*statement)
                settled: list[SettledRow] = cursor.fetchall()
                return settled
        except IntegrityError:
            if attempt and UsageRecord.objects.filter(request_id=facts.request_id).exists():
                return []
            raise
        except (OperationalError, InterfaceError):
            if attempt == CLOSE_TRIES - 1:
                raise
            logger.warning("ledger write for %s failed; retrying", facts.request_id, exc_info=True)
            connection.close()
            time.sleep(CLOSE_BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


async def _close_with_retries_async(
    facts: CallFacts,
    rows: list[Row],
    reservation: Reservation,
    total: Decimal,
    now: datetime,
) -> list[SettledRow]:
    # As _close_with_retries, on portal.aio's pool (which replaces a broken connection).
    from portal import aio

    statement = _close_statement(facts, rows, reservation, total, now)
    for attempt in range(CLOSE_TRIES):
        try:
            # A call whose upstream answered is written however busy the pool is: it waits
            # for a connection as long as TOLLGATE_LEDGER_WAIT_S, not the 1.5 s a new call
            # waits before it is refused with a 503.
            return await aio.fetch(
                *statement, wait_s=settings.TOLLGATE_LEDGER_WAIT_S, tenant=facts.team_id
            )
        except IntegrityError:
            already = f"SELECT 1 FROM {UsageRecord._meta.db_table} WHERE request_id = %s LIMIT 1"
            if attempt and await aio.fetch(already, [facts.request_id]):
                return []
            raise
        except (OperationalError, InterfaceError):
            if attempt == CLOSE_TRIES - 1:
                raise
            logger.warning("ledger write for %s failed; retrying", facts.request_id, exc_info=True)
            await asyncio.sleep(CLOSE_BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


def _row(facts: CallFacts, outcome: Outcome, charge: Decimal, attempt: int, now: datetime) -> Row:
    price = outcome.price or Price(None, None, None)
    return {
        "request_id": facts.request_id,
        "attempt": attempt,
        "team_id": facts.team_id,
        "api_key_id": facts.key_id,
        "endpoint": facts.endpoint,
        "requested_model": facts.requested_model,
        "route": facts.route,
        "end_user": facts.end_user,
        "created_at": facts.created_at,
        "recorded_at": now,
        "model": outcome.model,
        "provider": outcome.provider,
        "input_per_mtok": price.input,
        "cached_input_per_mtok": price.cached_input,
        "output_per_mtok": price.output,
        "cost_usd": charge,
        "prompt_tokens": outcome.tokens.prompt,
        "cached_tokens": outcome.tokens.cached,
        "completion_tokens": outcome.tokens.completion,
        "reasoning_tokens": outcome.tokens.reasoning,
        "tokens_estimated": outcome.estimated,
        "streamed": outcome.streamed,
        "status": outcome.status,
        "http_status": outcome.http_status,
        "error_type": outcome.error_type[:64],
        "error_message": outcome.error_message[:500],
        "latency_ms": outcome.latency_ms,
        "ttft_ms": outcome.ttft_ms,
    }


def _record(
    facts: CallFacts, outcome: Outcome, charge: Decimal, attempt: int, now: datetime
) -> UsageRecord:
    return UsageRecord(**_row(facts, outcome, charge, attempt, now))


@functools.cache
def _ledger_columns() -> tuple[tuple[str, ...], str]:
    """The ledger's written attributes (every field but the id, checked against `_row`) and
    their quoted column list."""
    fields = [f for f in UsageRecord._meta.concrete_fields if not f.primary_key]
    names = tuple(f.attname for f in fields)
    assert set(names) == set(_row(SWEPT_FACTS, SWEPT, Decimal(0), 0, SWEPT_FACTS.created_at))
    return names, ", ".join(connection.ops.quote_name(f.column) for f in fields)


@functools.cache
def _close_sql(rows: int) -> str:
    # One statement, so one round trip on the hot path, atomic on its own. The
    # spend goes on every budget of the call's team and key for the month it
    # started in — also one set while it was in flight — and the reservation
    # comes off the counters it was held on. If the sweeper closed the call
    # first (`closed` is then empty) it already released the reservation: only
    # the spend is added, as overrun, being covered by no reservation any more.
    names, columns = _ledger_columns()
    row_sql = "(" + ", ".join(["%s"] * len(names)) + ")"
    inserted = ""
    if rows:
        inserted = (
            f", inserted AS (INSERT INTO {UsageRecord._meta.db_table} ({columns}) "
            f"VALUES {', '.join([row_sql] * rows)})"
        )
    return f"""
        WITH closed AS (
            UPDATE {MeteredCall._meta.db_table} SET closed_at = %s
            WHERE request_id = %s AND closed_at IS NULL RETURNING reserved_usd
        ), held AS (
            SELECT COALESCE((SELECT reserved_usd FROM closed), 0) AS amount
        ), settled AS (
            UPDATE usage_budgetcounter c SET
                reserved_usd = c.reserved_usd - CASE WHEN c.id = ANY(%s) THEN held.amount ELSE 0 END,
                spent_usd = c.spent_usd + %s,
                overrun_usd = c.overrun_usd
                    + GREATEST(%s - CASE WHEN c.id = ANY(%s) THEN held.amount ELSE 0 END, 0)
            FROM held, usage_budget b
            WHERE b.id = c.budget_id AND c.month = %s AND b.team_id = %s
                AND (b.api_key_id IS NULL OR b.api_key_id = %s)
            RETURNING c.id, c.spent_usd, c.limit_usd, c.thresholds
        ){inserted}
        SELECT id, spent_usd, limit_usd, thresholds FROM settled
    """


def _close_statement(
    facts: CallFacts,
    rows: list[Row],
    reservation: Reservation,
    total: Decimal,
    now: datetime,
) -> tuple[str, list[Any]]:
    reserved_on = list(reservation.counter_ids)
    params = [
        now,
        facts.request_id,
        reserved_on,
        total,
        total,
        reserved_on,
        month_start(facts.created_at).date(),
        facts.team_id,
        facts.key_id,
    ]
    names, _ = _ledger_columns()
    params += [row[name] for row in rows for name in names]
    return _close_sql(len(rows)), params


def meter_open(
    *, facts: CallFacts, worst_case: list[tuple[Price, Tokens]], deadline_s: float, now: datetime
) -> Meter:
    """Open a call: reserve the most it can cost on any of its candidate models (each
    (price, ceiling tokens) pair) on every budget that applies, and write its in-flight
    record. Raises OverBudget, having written nothing, if a hard budget lacks room."""
    call, reserve = _opening(facts, worst_case, deadline_s, now)
    return Meter(facts, budget_reserve(call=call, amount=reserve, now=now))


async def meter_open_async(
    *, facts: CallFacts, worst_case: list[tuple[Price, Tokens]], deadline_s: float, now: datetime
) -> Meter:
    """`meter_open` on the event loop (portal.aio): the /v1 hot path's."""
    call, reserve = _opening(facts, worst_case, deadline_s, now)
    return Meter(facts, await budget_reserve_async(call=call, amount=reserve, now=now))


def _opening(
    facts: CallFacts, worst_case: list[tuple[Price, Tokens]], deadline_s: float, now: datetime
) -> tuple[dict[str, Any], Decimal]:
    """The call's MeteredCall values (by attribute) and the amount it reserves."""
    reserve = max((cost(price, tokens) for price, tokens in worst_case), default=Decimal(0))
    call = {
        "request_id": facts.request_id,
        "team_id": facts.team_id,
        "api_key_id": facts.key_id,
        "endpoint": facts.endpoint,
        "requested_model": facts.requested_model,
        "route": facts.route,
        "end_user": facts.end_user,
        "started_at": now,
        "worker": heartbeat.worker(),
        "expires_at": now + timedelta(seconds=deadline_s) + INFLIGHT_MARGIN,
        "reserved_usd": reserve,
        "closed_at": None,
        "swept": False,
    }
    return call, reserve


def meter_refuse(*, facts: CallFacts, outcome: Outcome, now: datetime | None = None) -> None:
    """Record a call refused before it was opened (unknown model, not allowed, over budget)."""
    meter = Meter(facts, Reservation(amount=Decimal(0), counter_ids=()))
    meter.attempt(outcome)
    meter.close(now=now)


async def meter_refuse_async(
    *, facts: CallFacts, outcome: Outcome, now: datetime | None = None
) -> None:
    """`meter_refuse` on the event loop (portal.aio): the /v1 hot path's."""
    meter = Meter(facts, Reservation(amount=Decimal(0), counter_ids=()))
    meter.attempt(outcome)
    await meter.close_async(now=now)


def observed_latencies(*, since: datetime) -> dict[str, dict[str, float | None]]:
    """Mean latency and time to first token (ms) of successful calls per serving model
    since `since`, across all teams: what `fastest` routes read back from the meter."""
    rows = (
        UsageRecord.objects.filter(recorded_at__gte=since, status=Status.OK)
        .exclude(model="")
        .values("model")
        .annotate(latency_ms=Avg("latency_ms"), ttft_ms=Avg("ttft_ms"))
    )
    return {r["model"]: {"latency_ms": r["latency_ms"], "ttft_ms": r["ttft_ms"]} for r in rows}


# --- Sweeping the calls of dead workers ---------------------------------------------


def inflight_sweep(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Record the calls of dead workers as interrupted, at no cost, and release their
    reservations. A worker is dead when its lease lapsed (or it never took one) or the
    call outlived its deadline by INFLIGHT_MARGIN. Safe to run concurrently and often:
    records are claimed with SKIP LOCKED."""
    now = now or timezone.now()
    lease = timedelta(seconds=settings.TOLLGATE_LEASE_S)
    live = WorkerLease.objects.filter(worker=OuterRef("worker"), expires_at__gt=now)
    with transaction.atomic():
        stale = list(
            MeteredCall.objects.in_flight()
            .select_for_update(skip_locked=True)
            .filter(Q(expires_at__lte=now) | (Q(started_at__lte=now - lease) & ~Exists(live)))
            .order_by("id")[:limit]
        )
        if not stale:
            return 0
        for call in stale:
            budget_release(counter_ids=call.counter_ids, amount=call.reserved_usd)
        UsageRecord.objects.bulk_create(
            [_record(_facts_of(call), SWEPT, Decimal(0), SWEPT_ATTEMPT, now) for call in stale]
        )
        MeteredCall.objects.filter(id__in=[c.id for c in stale]).update(closed_at=now, swept=True)
    from accounts.models import ApiKey

    prefixes = dict(
        ApiKey.objects.filter(id__in={c.api_key_id for c in stale}).values_list("id", "prefix")
    )
    for call in stale:
        # Counted and logged like any recorded call: status "interrupted", no tokens.
        facts = replace(_facts_of(call), key_prefix=prefixes.get(call.api_key_id, ""))
        metrics.call_observe(
            facts,
            [(SWEPT, Decimal(0))],
            duration_s=(now - call.started_at).total_seconds(),
            ledger_s=None,
        )
        _log_call(facts, [_row(facts, SWEPT, Decimal(0), SWEPT_ATTEMPT, now)], Decimal(0))
    return len(stale)


# The sweeper's outcome for a call whose worker died: nothing known, nothing billed.
SWEPT = Outcome(
    status=Status.INTERRUPTED,
    estimated=True,
    error_type="interrupted",
    error_message="The gateway worker serving this call stopped before it finished.",
)


# Facts of no call: what `_ledger_columns` checks `_row`'s names with.
SWEPT_FACTS = CallFacts(
    request_id="",
    team_id=0,
    key_id=None,
    endpoint="",
    requested_model="",
    created_at=datetime(2000, 1, 1, tzinfo=UTC),
)


def _facts_of(call: MeteredCall) -> CallFacts:
    return CallFacts(
        request_id=call.request_id,
        team_id=call.team_id,
        key_id=call.api_key_id,
        endpoint=call.endpoint,
        requested_model=call.requested_model,
        created_at=call.started_at,
        route=call.route,
        end_user=call.end_user,
    )


def journal_prune(*, now: datetime | None = None, batch: int = 10_000) -> int:
    """Forget closed calls older than TOLLGATE_CALL_JOURNAL_DAYS, and long-dead leases."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.TOLLGATE_CALL_JOURNAL_DAYS)
    ids = list(
        MeteredCall.objects.filter(closed_at__lt=cutoff).values_list("id", flat=True)[:batch]
    )
    MeteredCall.objects.filter(id__in=ids).delete()
    WorkerLease.objects.filter(expires_at__lt=now - timedelta(days=1)).delete()
    return len(ids)


class WorkerHeartbeat:
    """This process's lease: renewed every TOLLGATE_HEARTBEAT_S seconds by a daemon thread,
    which also sweeps dead workers' calls (TOLLGATE_WEB_SWEEPS), so a killed worker's calls
    are recorded within a minute even without Celery beat.

    The worker id names host and pid; it is made anew after a fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._worker = ""

    def worker(self) -> str:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._worker = (
                        f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"
                    )
                    self._pid = os.getpid()
                    threading.Thread(
                        target=self._run,
                        args=(self._worker,),
                        name="tollgate-heartbeat",
                        daemon=True,
                    ).start()
        return self._worker

    def _run(self, worker: str) -> None:
        stop = threading.Event()
        while self._worker == worker:
            try:
                lease_renew(worker=worker)
                if settings.TOLLGATE_WEB_SWEEPS:
                    inflight_sweep()
            except Exception:
                logger.exception("worker heartbeat failed; calls may be swept if this persists")
            finally:
                close_old_connections()
                connection.close()
            stop.wait(settings.TOLLGATE_HEARTBEAT_S)


def lease_renew(*, worker: str, now: datetime | None = None) -> None:
    now = now or timezone.now()
    WorkerLease.objects.update_or_create(
        worker=worker, defaults={"expires_at": now + timedelta(seconds=settings.TOLLGATE_LEASE_S)}
    )


heartbeat = WorkerHeartbeat()
