"""A call whose worker dies mid-call still reaches the ledger, exactly once, within a minute."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from tests.factories import finish_call, open_call
from usage.budgets import budget_set
from usage.metering import SWEPT_ATTEMPT, inflight_sweep, lease_renew
from usage.models import BudgetCounter, MeteredCall, UsageRecord, WorkerLease
from usage.reconcile import reconcile_month
from usage.tasks import inflight_sweep as inflight_sweep_task

pytestmark = pytest.mark.django_db


def orphan(call_id: str):
    """Make a call's worker one that never renews its lease again."""
    MeteredCall.objects.filter(request_id=call_id).update(worker="dead-host:1:gone")


def test_a_dead_workers_call_is_swept_once_its_lease_lapses(team, inference_key, settings):
    key, _ = inference_key
    now = timezone.now()
    open_call(team, key, "req_dead", now)
    orphan("req_dead")
    lease = timedelta(seconds=settings.TOLLGATE_LEASE_S)

    # Within the lease the call is left alone; once it lapsed it is swept, once.
    assert inflight_sweep(now=now + lease - timedelta(seconds=1)) == 0
    assert inflight_sweep(now=now + lease) == 1
    assert inflight_sweep(now=now + lease) == 0

    [row] = UsageRecord.objects.filter(team=team)
    assert (row.request_id, row.attempt, row.status, row.cost_usd) == (
        "req_dead",
        SWEPT_ATTEMPT,
        "interrupted",
        0,
    )
    assert row.created_at == now and row.tokens_estimated
    call = MeteredCall.objects.get()
    assert call.swept and call.closed_at == now + lease


def test_a_live_workers_long_call_is_not_swept_before_its_deadline(team, inference_key, settings):
    key, _ = inference_key
    now = timezone.now()
    meter = open_call(team, key, "req_long", now, deadline_s=120)
    worker = MeteredCall.objects.get().worker
    later = now + timedelta(seconds=100)
    lease_renew(worker=worker, now=later)

    assert inflight_sweep(now=later) == 0
    # Past its deadline plus the margin, a call is dead whatever its worker says.
    lease_renew(worker=worker, now=now + timedelta(minutes=10))
    assert inflight_sweep(now=now + timedelta(minutes=5)) == 1
    assert UsageRecord.objects.get(request_id=meter.facts.request_id).status == "interrupted"


def test_sweeping_releases_the_reservation(team, inference_key):
    key, _ = inference_key
    budget = budget_set(team=team, amount_usd=Decimal("1"))
    now = timezone.now()
    open_call(team, key, "req_dead", now, reserve="0.4")
    orphan("req_dead")
    assert BudgetCounter.objects.get(budget=budget).reserved_usd == Decimal("0.4")

    inflight_sweep(now=now + timedelta(minutes=1))

    counter = BudgetCounter.objects.get(budget=budget)
    assert (counter.reserved_usd, counter.spent_usd) == (0, 0)


def test_a_real_row_after_a_sweep_is_billed_beside_it_once(team, inference_key):
    """A worker that was only slow comes back after the sweep: its real outcome is added,
    the sweep row stays at $0, and the budget counts the real cost once."""
    key, _ = inference_key
    budget = budget_set(team=team, amount_usd=Decimal("10"))
    now = timezone.now()
    meter = open_call(team, key, "req_slow", now, reserve="0.5")
    orphan("req_slow")
    inflight_sweep(now=now + timedelta(minutes=1))

    finish_call(meter, "0.3", now=now + timedelta(minutes=2))

    rows = UsageRecord.objects.filter(request_id="req_slow").order_by("attempt")
    assert [(r.attempt, r.status, r.cost_usd) for r in rows] == [
        (0, "ok", Decimal("0.3")),
        (SWEPT_ATTEMPT, "interrupted", 0),
    ]
    counter = BudgetCounter.objects.get(budget=budget)
    # The sweep released the reservation; the late cost was covered by none: an overrun.
    assert (counter.spent_usd, counter.reserved_usd, counter.overrun_usd) == (
        Decimal("0.3"),
        0,
        Decimal("0.3"),
    )
    assert reconcile_month(month=now.date().replace(day=1), now=now + timedelta(minutes=5)).ok


@pytest.mark.django_db(transaction=True)
def test_a_sweep_racing_a_finishing_call_leaves_one_billed_outcome(team, inference_key):
    """The sweeper and the ledger write meet on the call's row lock: whichever comes
    second sees the call closed, and the call ends with exactly one billed outcome."""
    import threading

    from django.db import connection

    key, _ = inference_key
    budget = budget_set(team=team, amount_usd=Decimal("10"))
    now = timezone.now()
    meters = [open_call(team, key, f"req_race_{i}", now, reserve="0.2") for i in range(20)]
    MeteredCall.objects.update(worker="dead-host:1:gone")
    go = threading.Barrier(2)

    def sweep():
        go.wait()
        try:
            inflight_sweep(now=now + timedelta(minutes=1))
        finally:
            connection.close()

    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    go.wait()
    for meter in meters:
        finish_call(meter, "0.1")
    sweeper.join()
    inflight_sweep(now=now + timedelta(minutes=1))

    for meter in meters:
        billed = UsageRecord.objects.filter(request_id=meter.facts.request_id).exclude(cost_usd=0)
        assert billed.count() == 1
    counter = BudgetCounter.objects.get(budget=budget)
    assert counter.spent_usd == Decimal("2.0") and counter.reserved_usd == 0
    assert not MeteredCall.objects.in_flight().exists()


@pytest.mark.django_db(transaction=True)
def test_a_celery_worker_runs_the_sweeper(celery_worker, team, inference_key):
    key, _ = inference_key
    open_call(team, key, "req_old", timezone.now() - timedelta(hours=2))

    assert inflight_sweep_task.delay().get(timeout=30) == 1
    assert UsageRecord.objects.get().status == "interrupted"


def test_a_finished_call_is_closed_and_never_swept(team, inference_key):
    key, _ = inference_key
    now = timezone.now()
    finish_call(open_call(team, key, "req_done", now))

    assert not MeteredCall.objects.in_flight().exists()
    assert inflight_sweep(now=now + timedelta(days=1)) == 0
    assert UsageRecord.objects.count() == 1


def test_closing_a_call_twice_is_refused(team, inference_key):
    key, _ = inference_key
    meter = open_call(team, key, "req_twice", timezone.now())
    finish_call(meter)
    with pytest.raises(RuntimeError):
        meter.close()
    assert UsageRecord.objects.count() == 1


def test_leases_are_renewed_in_place(settings):
    now = timezone.now()
    lease_renew(worker="w1", now=now)
    lease_renew(worker="w1", now=now + timedelta(seconds=10))
    assert WorkerLease.objects.get(worker="w1").expires_at == now + timedelta(
        seconds=10 + settings.TOLLGATE_LEASE_S
    )


@pytest.mark.django_db
def test_a_key_with_a_call_in_flight_cannot_be_deleted_and_the_call_is_still_billed(team):
    # Deleting a key (the admin allows it for a key with no ledger rows) while its first
    # call runs would take the call's record and reservation with it: refused instead.
    from django.db.models import ProtectedError

    from accounts.services import api_key_create
    from tests.factories import finish_call, open_call
    from usage.models import UsageRecord

    key, _ = api_key_create(team=team, name="app")
    meter = open_call(team, key, "req-delete", timezone.now(), reserve="0.01")

    with pytest.raises(ProtectedError):
        key.delete()
    finish_call(meter, cost="0.004")

    assert UsageRecord.objects.filter(api_key=key).count() == 1
