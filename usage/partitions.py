"""The ledger's monthly partitions (PostgreSQL declarative partitioning on `created_at`).

`usage_usagerecord` is partitioned by range of `created_at`, one partition per UTC month
(`usage_usagerecord_y2026m11`), plus a DEFAULT partition that takes any row no month
partition holds, so an insert never fails for want of a partition (a clock far off, a
test's odd date, a month not yet created). A beat task creates the months ahead every
day (`ledger_partitions_ensure`); a month that already has rows in the default partition
gets them moved out first, since PostgreSQL refuses to attach a partition whose range the
default partition still holds rows of.

An old month is archived by detaching its partition (`ledger_partition_detach`): the rows
are not rewritten, the table stays as it was under its own name, to be dumped and dropped.
Reports on whole days read the daily rollups, so they keep the month's figures.

Because the partition key must be part of every unique constraint, the database's primary
key is (id, created_at) and the ledger's uniqueness is (request_id, attempt, created_at);
every row of one call carries the call's created_at (usage.metering), so that still holds
each attempt once.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from django.db import OperationalError, connection, transaction

from usage.months import month_start, next_month_start

TABLE = "usage_usagerecord"
DEFAULT = f"{TABLE}_default"
# Months created ahead of the current one, so a missed day of the beat task changes nothing.
AHEAD = 3


def partition_name(month: date) -> str:
    return f"{TABLE}_y{month.year:04d}m{month.month:02d}"


@dataclass(frozen=True)
class Partition:
    name: str
    # [start, end) in UTC; None for the default partition.
    start: datetime | None
    end: datetime | None
    rows_estimate: int
    bytes: int


def ledger_partitions() -> list[Partition]:
    """The ledger's partitions, months in order, then the default one."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint,
                   pg_total_relation_size(c.oid)
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = %s::regclass
            """,
            [TABLE],
        )
        found = cursor.fetchall()
    partitions = []
    for name, _bound, rows, size in found:
        start = end = None
        if name != DEFAULT and name.startswith(f"{TABLE}_y"):
            year, month = int(name[-7:-3]), int(name[-2:])
            start = datetime(year, month, 1, tzinfo=UTC)
            end = next_month_start(start)
        partitions.append(Partition(name, start, end, max(rows, 0), size))
    return sorted(partitions, key=lambda p: (p.start is None, p.start or datetime.min))


def _exists(cursor, name: str) -> bool:
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
    return bool(cursor.fetchone()[0])


def _attached(cursor, name: str) -> bool:
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%s) "
        "AND inhparent = %s::regclass)",
        [name, TABLE],
    )
    return bool(cursor.fetchone()[0])


def partition_create(cursor, start: datetime) -> bool:
    """Create and attach the month partition starting at `start`, moving that month's rows
    out of the default partition first; False if it is attached already. Run in a
    transaction: the default partition is locked until it commits, so no row of that month
    lands there between the move and the attach."""
    start = month_start(start)
    end = next_month_start(start)
    name = partition_name(start.date())
    # Two runs at once (a beat task and an operator's command) take turns.
    cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [TABLE])
    if _attached(cursor, name):
        return False
    quote = connection.ops.quote_name
    if _exists(cursor, name):
        # Left detached by an archive: its rows are not the ledger's any more.
        raise PartitionError(f"{name} exists but is detached; drop or re-attach it by hand.")
    cursor.execute(
        f"CREATE TABLE {quote(name)} (LIKE {quote(TABLE)} INCLUDING DEFAULTS "
        "INCLUDING CONSTRAINTS INCLUDING STORAGE)"
    )
    if _exists(cursor, DEFAULT):
        cursor.execute(f"LOCK TABLE {quote(DEFAULT)} IN ACCESS EXCLUSIVE MODE")
        cursor.execute(
            f"WITH moved AS (DELETE FROM {quote(DEFAULT)} WHERE created_at >= %s "
            f"AND created_at < %s RETURNING *) INSERT INTO {quote(name)} SELECT * FROM moved",
            [start, end],
        )
    partition_statistics(cursor, name)
    # Attaching builds the partition's share of the ledger's indexes and checks its rows.
    cursor.execute(
        f"ALTER TABLE {quote(TABLE)} ATTACH PARTITION {quote(name)} FOR VALUES FROM (%s) TO (%s)",
        [start, end],
    )
    return True


def default_partition_create(cursor) -> None:
    quote = connection.ops.quote_name
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {quote(DEFAULT)} PARTITION OF {quote(TABLE)} DEFAULT"
    )
    partition_statistics(cursor, DEFAULT)


def partition_statistics(cursor, name: str) -> None:
    """Tell the planner that a key belongs to one team. Without it, it multiplies the two
    columns' selectivities (a team's key looks 100 times rarer than it is) and reads and sorts
    all of a key's rows instead of walking its index to the first page. PostgreSQL keeps
    these statistics per table, so each partition gets its own."""
    quote = connection.ops.quote_name
    cursor.execute(
        f"CREATE STATISTICS IF NOT EXISTS {quote(name + '_team_key')} (dependencies, ndistinct) "
        f"ON team_id, api_key_id FROM {quote(name)}"
    )


class PartitionError(Exception):
    pass


def ledger_partitions_ensure(*, now: datetime, ahead: int = AHEAD) -> list[str]:
    """Make sure the ledger has the partitions of `now`'s month and the `ahead` months after
    it (and its default partition); returns the names of those it created. Running it again
    creates nothing."""
    created = []
    start = month_start(now)
    with connection.cursor() as cursor:
        default_partition_create(cursor)
    for _ in range(ahead + 1):
        # One transaction per month: the default partition is locked only while one moves.
        with transaction.atomic(), connection.cursor() as cursor:
            if partition_create(cursor, start):
                created.append(partition_name(start.date()))
        start = next_month_start(start)
    return created


# How long a detach waits for each lock it needs before giving up, seconds.
DETACH_LOCK_TIMEOUT_S = 3.0


def ledger_partition_detach(*, month: date, now: datetime) -> str:
    """Detach a past month's partition from the ledger, for archiving; returns its name.

    The rows are not rewritten: the partition stays a table of its own (dump it, then drop
    it). Refused for the current or a future month, and for a month whose rows the daily
    rollups have not all folded, since whole-day reports read the rollups once the rows are
    gone. Reports over part of a day, the health figures and `reconcile` read the ledger
    and no longer see the month.
    """
    from usage.rollups import rollup_through

    start = datetime.combine(month, time.min, tzinfo=UTC)
    if start != month_start(start):
        raise PartitionError("Name a month by its first day.")
    end = next_month_start(start)
    if end > month_start(now):
        raise PartitionError(f"{start:%Y-%m} is not over yet.")
    name = partition_name(month)
    quote = connection.ops.quote_name
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            if not _attached(cursor, name):
                raise PartitionError(f"The ledger has no partition {name}.")
            # Every lock below is waited for DETACH_LOCK_TIMEOUT_S at most: a detach queued
            # behind a long reader would otherwise hold up every ledger write behind it.
            cursor.execute(f"SET LOCAL lock_timeout = '{int(DETACH_LOCK_TIMEOUT_S * 1000)}ms'")
            # No row may reach the month from here on, and a write still in progress must
            # commit (or not) before the check: a row committed between the check and the
            # detach would leave with the partition without ever being rolled up.
            cursor.execute(f"LOCK TABLE {quote(name)} IN SHARE ROW EXCLUSIVE MODE")
            through = rollup_through()
            cursor.execute(
                f"SELECT EXISTS (SELECT 1 FROM {quote(name)} WHERE recorded_at > %s)", [through]
            )
            if cursor.fetchone()[0]:
                raise PartitionError(
                    f"Rows of {start:%Y-%m} are not in the daily rollups yet; run the rollup first."
                )
            cursor.execute(f"ALTER TABLE {quote(TABLE)} DETACH PARTITION {quote(name)}")
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        raise PartitionError(
            f"The ledger was busy ({DETACH_LOCK_TIMEOUT_S:g} s waiting for a lock, held by a "
            f"write to {start:%Y-%m} or a long read): nothing was detached; try again."
        ) from None
    return name
