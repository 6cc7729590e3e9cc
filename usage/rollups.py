"""Daily rollups of the ledger, maintained incrementally.

The ledger is read by `recorded_at` up to a high-water mark (RollupMark).
Each run sums the rows recorded after the mark and up to the ledger's horizon
(`now - LAG`, or before the oldest open transaction: usage.horizon) into DailyUsage and
moves the mark, in one transaction: a crash half-way changes nothing, running twice adds
nothing twice, and no row commits behind the mark.
"""

from datetime import UTC, datetime, timedelta

from django.db import transaction
from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from usage.horizon import ledger_horizon
from usage.models import DailyUsage, RollupMark, UsageRecord

LAG = timedelta(seconds=60)
MARK = "daily"
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
GROUP = (
    "team_id",
    "api_key_id",
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
        groups = (
            UsageRecord.objects.filter(recorded_at__gt=mark.through, recorded_at__lte=until)
            .annotate(day=TruncDate("created_at", tzinfo=UTC))
            .values(*GROUP, "day")
            .annotate(requests=Count("id"), **{name: Sum(name) for name in SUMS})
            .order_by()
        )
        folded = 0
        for group in groups:
            key = {name: group[name] for name in (*GROUP, "day")}
            sums = {name: group[name] for name in ("requests", *SUMS)}
            row = DailyUsage.objects.select_for_update().filter(**key).first()
            if row is None:
                DailyUsage.objects.create(**key, **sums)
            else:
                DailyUsage.objects.filter(id=row.id).update(
                    **{name: F(name) + sums[name] for name in sums}
                )
            folded += sums["requests"]
        mark.through = until
        mark.save(update_fields=["through"])
    return folded
