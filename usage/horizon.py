"""How far the ledger can be read and trusted to be complete.

A ledger row's `recorded_at` is stamped before its statement runs, and the statement can
wait (on a budget counter's lock, on a pooled connection) before it commits. A reader that
moves a mark forward over `recorded_at` (the rollups, the usage events) must never pass a
time at which a row may still commit, or that row is skipped for good. The horizon is the
earlier of:

- `now - lag`: longer than the time between stamping a row and its statement starting
  (a pooled connection is waited for at most 10 s; retries of a failed write take less
  than a second), and than the clock difference between machines (keep them on NTP);
- the start of the oldest transaction open in this database, less a margin: a ledger write
  blocked for any length of time is an open transaction, so the horizon stays behind it
  until it commits.
"""

from datetime import datetime, timedelta

from django.db import connection

# Between stamping recorded_at and the stamping statement's transaction starting.
MARGIN = timedelta(seconds=2)


def oldest_transaction_start() -> datetime | None:
    """When the oldest transaction open in this database (other than this session's) began."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT min(xact_start) FROM pg_stat_activity "
            "WHERE datname = current_database() AND backend_type = 'client backend' "
            "AND xact_start IS NOT NULL AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def ledger_horizon(*, now: datetime, lag: timedelta) -> datetime:
    """The latest `recorded_at` up to which every ledger row has committed."""
    oldest = oldest_transaction_start()
    horizon = now - lag
    if oldest is not None:
        horizon = min(horizon, oldest - MARGIN)
    return horizon
