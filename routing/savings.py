"""Reads: what a team's own usage would have cost on other models of the catalog.

The team's tokens per model over a period (input, cached input, output,
from the ledger through usage.selectors) are priced at each other model's
current price with the one cost formula, usage.pricing.cost. "Actual" is
what the ledger charged. Nothing here is stored or billed.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from routing.selectors import Catalog, ModelInfo
from usage.months import month_start
from usage.pricing import MAX_TOKENS_PER_CALL, Price, Tokens, Unpriced, cost
from usage.selectors import usage_summary

# The kinds of call a model serves. A substitute must serve every kind the
# used model serves (the ledger's rollups do not say which kind each call
# was, so a model serving both counts as used for both); the other
# capabilities (vision, tools, json) it lacks are named as a warning.
CALL_KINDS = frozenset({"chat", "embeddings"})


@dataclass(frozen=True)
class Period:
    key: str
    label: str
    # [start, end), whole UTC days, so the ledger is read through its daily rollups.
    start: datetime
    end: datetime

    @property
    def last_day(self) -> datetime:
        return self.end - timedelta(days=1)


PERIODS = {"30d": "Last 30 days", "last-month": "Last month", "90d": "Last 90 days"}
DEFAULT_PERIOD = "30d"


def savings_period(*, key: str, now: datetime) -> Period:
    """A preset period ending today (UTC, today included), or the previous calendar month;
    an unknown key means the default, the last 30 days."""
    if key not in PERIODS:
        key = DEFAULT_PERIOD
    tomorrow = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    tomorrow += timedelta(days=1)
    if key == "last-month":
        this_month = month_start(now)
        start, end = month_start(this_month - timedelta(days=1)), this_month
    else:
        days = 90 if key == "90d" else 30
        start, end = tomorrow - timedelta(days=days), tomorrow
    return Period(key=key, label=PERIODS[key], start=start, end=end)


@dataclass(frozen=True)
class TokenTotals:
    """A period's token counts for one model; `cached` is part of `prompt`."""

    prompt: int
    cached: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def cost_of_totals(price: Price, totals: TokenTotals) -> Decimal:
    """usage.pricing.cost over a period's summed tokens, exact.

    Tokens holds one call's counts (each at most MAX_TOKENS_PER_CALL), and a
    period's sums pass that, so they are priced in call-sized slices of one
    direction at a time. The formula is linear in the counts, so the slices
    add up to exactly the cost of the whole. Raises Unpriced like cost().
    """
    total = Decimal(0)
    for count, slice_of in (
        (totals.prompt - totals.cached, lambda n: Tokens(prompt=n)),
        (totals.cached, lambda n: Tokens(prompt=n, cached=n)),
        (totals.completion, lambda n: Tokens(completion=n)),
    ):
        full, rest = divmod(count, MAX_TOKENS_PER_CALL)
        if full:
            total += full * cost(price, slice_of(MAX_TOKENS_PER_CALL))
        if rest:
            total += cost(price, slice_of(rest))
    return total


@dataclass(frozen=True)
class Substitute:
    """The used model's tokens on another model, at that model's current price."""

    model: ModelInfo
    would_usd: Decimal
    # would − actual: negative is a saving.
    difference_usd: Decimal
    # would ÷ actual; None when nothing was spent.
    ratio: Decimal | None
    # Score differences (substitute − used), in the order asked for; None where either lacks it.
    benchmark_deltas: list[Decimal | None]
    # Capabilities of the used model that the substitute lacks (vision, tools, json).
    lacks: list[str]
    # The substitute's context window is listed and smaller than the used model's.
    smaller_context: bool


@dataclass(frozen=True)
class Passed:
    """A model not priced as a substitute, and why, as a sentence fragment."""

    model: str
    reason: str


@dataclass(frozen=True)
class UsedModel:
    name: str
    # None when the model has left the catalog: then nothing is offered in its place.
    info: ModelInfo | None
    requests: int
    tokens: TokenTotals
    # What the ledger charged, USD, at the prices of the day.
    actual_usd: Decimal
    # The same tokens at this model's price now; differs from actual_usd when its price
    # changed during the period. None when it cannot be priced now.
    current_price_usd: Decimal | None
    substitutes: list[Substitute] = field(default_factory=list)
    # Serves the same kinds of call but cannot be priced (an unpriced direction).
    unpriced: list[Passed] = field(default_factory=list)
    # Does not serve the kinds of call this model served.
    not_offered: list[Passed] = field(default_factory=list)


@dataclass(frozen=True)
class AllOn:
    """The period's traffic moved to one model wherever that model serves its kind of call:
    moved traffic at the model's current price, its own traffic as charged, and traffic of
    a kind it does not serve (embeddings, for a chat model) kept as charged, by name."""

    model: ModelInfo
    would_usd: Decimal
    difference_usd: Decimal
    ratio: Decimal | None
    # Used models whose traffic stays where it was, because this model does not serve it.
    kept: list[str]


@dataclass(frozen=True)
class SavingsReport:
    period: Period
    actual_usd: Decimal
    used: list[UsedModel]
    # Each model that can take some of the traffic, with everything it can take; cheapest first.
    all_on: list[AllOn]
    benchmarks: list[str]

    @property
    def cheapest(self) -> AllOn | None:
        return self.all_on[0] if self.all_on else None


def _ratio(would: Decimal, actual: Decimal) -> Decimal | None:
    return would / actual if actual else None


def _delta(a: object, b: object) -> Decimal | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return None
    # Through str: 85.5 − 88.7 is −3.2, not −3.200000000000003.
    return Decimal(str(b)) - Decimal(str(a))


def _priced_or_none(price: Price | None, tokens: TokenTotals) -> Decimal | None:
    if price is None:
        return None
    try:
        return cost_of_totals(price, tokens)
    except Unpriced:
        return None


def _used_model(name: str, group: dict, catalog: Catalog, benchmarks: list[str]) -> UsedModel:
    tokens = TokenTotals(
        prompt=group["prompt_tokens"],
        cached=group["cached_tokens"],
        completion=group["completion_tokens"],
    )
    actual = group["cost_usd"]
    info = catalog.models.get(name)
    used = UsedModel(
        name=name,
        info=info,
        requests=group["requests"],
        tokens=tokens,
        actual_usd=actual,
        current_price_usd=_priced_or_none(info.prices, tokens) if info else None,
    )
    if info is None:
        return used
    kinds = info.capabilities & CALL_KINDS
    for other in sorted(catalog.models.values(), key=lambda m: m.name):
        if other.name == name:
            continue
        missing = kinds - other.capabilities
        if missing:
            used.not_offered.append(
                Passed(other.name, f"{' and '.join(sorted(missing))} not served")
            )
            continue
        if other.prices is None:
            used.unpriced.append(Passed(other.name, "no price listed"))
            continue
        try:
            would = cost_of_totals(other.prices, tokens)
        except Unpriced as exc:
            used.unpriced.append(Passed(other.name, f"no {exc.direction} price listed"))
            continue
        used.substitutes.append(
            Substitute(
                model=other,
                would_usd=would,
                difference_usd=would - actual,
                ratio=_ratio(would, actual),
                benchmark_deltas=[
                    _delta(info.benchmarks.get(b), other.benchmarks.get(b)) for b in benchmarks
                ],
                lacks=sorted(info.capabilities - CALL_KINDS - other.capabilities),
                smaller_context=bool(
                    info.context_window
                    and other.context_window
                    and other.context_window < info.context_window
                ),
            )
        )
    used.substitutes.sort(key=lambda s: (s.would_usd, s.model.name))
    # Grouped by reason on the page.
    used.unpriced.sort(key=lambda p: (p.reason, p.model))
    used.not_offered.sort(key=lambda p: (p.reason, p.model))
    return used


def savings_report(*, team_id: int, period: Period, catalog: Catalog) -> SavingsReport:
    """What the team's traffic in `period` cost, and would have cost on each other model
    that serves the same kinds of call, per model used and all on one model."""
    benchmarks = catalog.benchmark_names()
    groups = usage_summary(team_id=team_id, group_by="model", start=period.start, end=period.end)
    used = [
        _used_model(g["model"], g, catalog, benchmarks)
        for g in groups
        # Refused before routing (no model), or only calls that used no tokens: nothing to move.
        if g["model"] and (g["prompt_tokens"] or g["completion_tokens"])
    ]
    used.sort(key=lambda u: (-u.actual_usd, u.name))
    actual = sum((u.actual_usd for u in used), Decimal(0))

    all_on = []
    for candidate in sorted(catalog.models.values(), key=lambda m: m.name):
        would, kept, moves_some = Decimal(0), [], False
        for u in used:
            moved = next((s for s in u.substitutes if s.model.name == candidate.name), None)
            if u.name == candidate.name:
                would += u.actual_usd
            elif moved is not None:
                would += moved.would_usd
                moves_some = True
            elif u.info is None or any(p.model == candidate.name for p in u.not_offered):
                # A kind of call the candidate does not serve, or a model that left the
                # catalog (what could replace it is unknown): stays as it was.
                would += u.actual_usd
                kept.append(u.name)
            else:
                # It serves these calls but cannot be priced for them: no honest total.
                break
        else:
            # A candidate that moves nothing and keeps something is just the status quo.
            if moves_some or not kept:
                all_on.append(AllOn(candidate, would, would - actual, _ratio(would, actual), kept))
    all_on.sort(key=lambda a: (a.would_usd, a.model.name))
    return SavingsReport(
        period=period, actual_usd=actual, used=used, all_on=all_on, benchmarks=benchmarks
    )
