"""Daily rollups of the ledger, maintained incrementally.

The ledger is read by `recorded_at` up to a high-water mark (RollupMark).
Each run sums the rows recorded after the mark and up to the ledger's horizon
(`now - LAG`, or before the oldest open transaction: usage.horizon) into DailyUsage and
moves the mark, in one transaction: a crash half-way changes nothing, running twice adds
nothing twice, and no row commits behind the mark.
"""

from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from usage.horizon import ledger_horizon
from usage.models import DailyUsage, RollupMark, UsageRecord

# Behind now as the usage events are (usage.events), and run every 30 s (settings), so a
# row is in the rollups within about a minute of being recorded.
LAG = timedelta(seconds=30)
MARK = "daily"
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
GROUP = (
    "team_id",
    "api_key_id",
    "endpoint",
    "model",
    "input_per_mtok",
    "cached_input_per_mtok",
    "output_per_mtok",
)
SUMS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "cost_usd")


def rollup_through() -> datetime:
    mark = RollupMark.objects.filter(name=MARK).first()
    return mark.through if mark else EPOCH


def rollup_advance(*, now: datetime | None = None, lag: timedelta = LAG) -> int:
    """Fold newly recorded ledger rows into DailyUsage; returns how many rows were folded."""
    until = ledger_horizon(now=now or timezone.now(), lag=lag)
    with transaction.atomic():
        mark, _ = RollupMark.objects.select_for_update().get_or_create(
            name=MARK, defaults={"through": EPOCH}
        )
        if until <= mark.through:
            return 0
        # One statement whatever the number of groups: summed in the database and merged
        # into the existing day rows by the rollup's unique group (NULLs not distinct).
        with connection.cursor() as cursor:
            cursor.execute(FOLD, [mark.through, until])
            folded = cursor.fetchone()[0]
        mark.through = until
        mark.save(update_fields=["through"])
    return int(folded)


_COLUMNS = ", ".join(GROUP)
_SUMS = ", ".join(f"sum({name})" for name in SUMS)
FOLD = f"""
    WITH groups AS (
        SELECT {_COLUMNS}, (created_at AT TIME ZONE 'UTC')::date AS day,
               count(*) AS requests, {_SUMS}
        FROM {UsageRecord._meta.db_table}
        WHERE recorded_at > %s AND recorded_at <= %s
        GROUP BY {_COLUMNS}, day
    ), folded AS (
        INSERT INTO {DailyUsage._meta.db_table} ({_COLUMNS}, day, requests, {", ".join(SUMS)})
        SELECT * FROM groups
        ON CONFLICT ON CONSTRAINT dailyusage_unique_group DO UPDATE SET
            requests = {DailyUsage._meta.db_table}.requests + EXCLUDED.requests,
            {", ".join(f"{n} = {DailyUsage._meta.db_table}.{n} + EXCLUDED.{n}" for n in SUMS)}
    )
    SELECT COALESCE(sum(requests), 0) FROM groups
"""
