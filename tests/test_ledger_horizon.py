"""Readers that move a mark over the ledger (rollups, usage events) never pass a row that
may still commit: while any transaction is open, the horizon stays before it began."""

from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from usage.horizon import MARGIN, ledger_horizon
from usage.rollups import LAG, rollup_advance, rollup_through

pytestmark = pytest.mark.django_db(transaction=True)


def open_transaction() -> psycopg.Connection:
    db = connection.settings_dict
    other = psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"]
    )
    with other.cursor() as cursor:
        cursor.execute("SELECT 1")  # begins the transaction
    return other


def test_the_horizon_is_now_less_the_lag_when_nothing_is_open():
    now = timezone.now()
    assert ledger_horizon(now=now, lag=timedelta(seconds=30)) == now - timedelta(seconds=30)


def test_an_open_transaction_holds_the_horizon_and_the_rollups_back_until_it_ends():
    began = timezone.now()
    other = open_transaction()
    try:
        far = began + timedelta(hours=1)
        held = ledger_horizon(now=far, lag=timedelta(seconds=30))
        assert (
            began - MARGIN - timedelta(seconds=1) <= held <= began - MARGIN + timedelta(seconds=1)
        )
        rollup_advance(now=far)
        assert rollup_through() <= began - MARGIN + timedelta(seconds=1)
    finally:
        other.rollback()
        other.close()
    assert ledger_horizon(now=far, lag=timedelta(seconds=30)) == far - timedelta(seconds=30)
    rollup_advance(now=far)
    assert rollup_through() == far - LAG


def test_metrics_show_how_long_the_oldest_transaction_has_been_open():
    from ops.metrics import InFlightCollector

    def oldest() -> float:
        families = {f.name: f for f in InFlightCollector().collect()}
        return families["tollgate_database_oldest_transaction_seconds"].samples[0].value

    other = open_transaction()
    try:
        import time

        time.sleep(1.1)
        assert oldest() >= 1.0
    finally:
        other.rollback()
        other.close()
    assert oldest() < 1.0
