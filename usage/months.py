"""Calendar months in UTC: the one place month boundaries are computed."""

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(moment: datetime) -> datetime:
    start = month_start(moment)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def month_projection(spent: Decimal, now: datetime) -> Decimal:
    """Month-end spend if the month goes on at its rate so far (at least one day's worth of
    elapsed time, so the first hours of a month do not project wildly), in USD to 6 places."""
    start = month_start(now)
    days_in_month = calendar.monthrange(start.year, start.month)[1]
    elapsed_days = max(Decimal(1), Decimal((now - start).total_seconds()) / Decimal(86400))
    return (spent / elapsed_days * days_in_month).quantize(Decimal("0.000001"))


@dataclass(frozen=True)
class Period:
    """A report's date range, [start, end) in UTC whole days, as chosen in a page's URL."""

    start: datetime
    end: datetime
    preset: str  # one of PRESETS' names, or "custom"

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(days=1)).date()

    @property
    def days(self) -> list[date]:
        return [self.start.date() + timedelta(days=n) for n in range((self.end - self.start).days)]


PRESETS = {
    "this_month": "This month",
    "last_month": "Last month",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "90d": "Last 90 days",
}
# The longest custom range a report draws, in days.
MAX_PERIOD_DAYS = 400


class PeriodError(ValueError):
    pass


def period_from_query(query, *, now: datetime, default: str = "this_month") -> Period:
    """The period a page's `?range=<preset>` or `?start=YYYY-MM-DD&end=YYYY-MM-DD` (both days
    included) names; PeriodError with a readable reason when those cannot be read."""
    start_text, end_text = query.get("start", ""), query.get("end", "")
    if start_text or end_text:
        try:
            first = date.fromisoformat(start_text)
            last = date.fromisoformat(end_text)
        except ValueError:
            raise PeriodError("Give both dates as YYYY-MM-DD, for example 2026-11-01.") from None
        if first > last:
            raise PeriodError("The start date is after the end date.")
        if (last - first).days >= MAX_PERIOD_DAYS:
            raise PeriodError(f"A range may span at most {MAX_PERIOD_DAYS} days.")
        if not date(1970, 1, 1) <= first <= last < date(9000, 1, 1):
            raise PeriodError("Give dates between 1970 and 9000.")
        start = datetime.combine(first, time.min, tzinfo=UTC)
        return Period(
            start, datetime.combine(last, time.min, tzinfo=UTC) + timedelta(days=1), "custom"
        )
    preset = query.get("range") or default
    this_month = month_start(now)
    tomorrow = datetime.combine(now.astimezone(UTC).date(), time.min, tzinfo=UTC) + timedelta(
        days=1
    )
    if preset == "this_month":
        return Period(this_month, next_month_start(now), preset)
    if preset == "last_month":
        return Period(month_start(this_month - timedelta(days=1)), this_month, preset)
    if preset in ("7d", "30d", "90d"):
        return Period(tomorrow - timedelta(days=int(preset[:-1])), tomorrow, preset)
    raise PeriodError(f"Unknown range {preset[:40]!r}; choose one of {', '.join(PRESETS)}.")
