"""Demo usage for `make run`: ninety days of plausible traffic, written through the meter.

Every call goes through meter_open / attempt / close at today's catalog prices, exactly as
the proxy writes real calls, so the overview, explorer, budgets and invoices all show what
they would show for real traffic. Request ids start with `demo_`, keys are named
`[demo] …`, and a day already seeded is never seeded again, so `make run` can run it each
time and only the days since the last run are added.
"""

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.db import transaction

from usage.metering import CallFacts, Outcome, meter_open
from usage.models import UsageRecord
from usage.pricing import Price, Tokens, unpriced_direction

DEMO_PREFIX = "demo_"
DEMO_DAYS = 90


@dataclass(frozen=True)
class Traffic:
    """One app's calls: how many a weekday, what it asks for, how big its calls are."""

    key: str
    per_weekday: int
    asks: tuple[tuple[str, int], ...]  # (model or route name, weight)
    prompt: int  # typical prompt tokens
    completion: int  # typical completion tokens
    cached_share: float = 0.0  # share of the prompt served from the provider's cache
    streamed_share: float = 0.0
    endpoint: str = "chat"
    weekend_share: float = 0.4
    night_only: bool = False


TRAFFIC = (
    Traffic(
        "support-bot",
        per_weekday=14,
        asks=(("gpt-4o-mini", 5), ("cheap_chat", 3), ("claude-3.5-sonnet", 1)),
        prompt=1800,
        completion=350,
        cached_share=0.35,
        streamed_share=0.8,
    ),
    Traffic(
        "nightly-batch",
        per_weekday=9,
        asks=(("bulk_classify", 1),),
        prompt=6000,
        completion=120,
        weekend_share=1.0,
        night_only=True,
    ),
    Traffic(
        "code-review",
        per_weekday=5,
        asks=(("code_review", 3), ("qwen3-coder-30b", 1)),
        prompt=9000,
        completion=900,
        weekend_share=0.1,
    ),
    Traffic(
        "cn-summaries", per_weekday=4, asks=(("summarize_cn", 1),), prompt=4000, completion=600
    ),
    Traffic(
        "search-embeddings",
        per_weekday=10,
        asks=(("text-embedding-3-small", 1),),
        prompt=700,
        completion=0,
        endpoint="embeddings",
    ),
)
DEMO_KEYS = tuple(t.key for t in TRAFFIC)


def demo_key_name(app: str) -> str:
    return f"[demo] {app}"


def demo_days_seeded(*, team_id: int) -> set[date]:
    rows = UsageRecord.objects.filter(team_id=team_id, request_id__startswith=DEMO_PREFIX)
    return set(rows.dates("created_at", "day"))


def demo_last_call(*, key) -> datetime | None:
    """When a demo key's last demo call was made."""
    rows = UsageRecord.objects.filter(
        team_id=key.team_id, api_key=key, request_id__startswith=DEMO_PREFIX
    )
    return rows.order_by("-created_at").values_list("created_at", flat=True).first()


def demo_usage_seed(
    *, team, keys: dict, catalog, now: datetime, days: int = DEMO_DAYS, seed: int = 7
) -> int:
    """Seed the team's last `days` days (today up to `now`) that hold no demo calls yet;
    returns the number of calls written. `keys` maps each TRAFFIC app to its ApiKey;
    `catalog` is routing's snapshot (models with prices, routes)."""
    seeded = demo_days_seeded(team_id=team.id)
    today = now.astimezone(UTC).date()
    written = 0
    for back in range(days - 1, -1, -1):
        day = today - timedelta(days=back)
        if day in seeded:
            continue
        rng = random.Random(f"{seed}:{team.id}:{day.isoformat()}")
        # Traffic grows about 40% over the ninety days.
        growth = 1 + 0.4 * (days - back) / days
        # A day at a time in one transaction: the meter's statements are the same, only the
        # commits are fewer (about 4x faster here).
        with transaction.atomic():
            for app in TRAFFIC:
                written += _seed_app_day(
                    team, keys[app.key], app, day, growth, catalog, rng, until=now
                )
    return written


def _seed_app_day(team, key, app: Traffic, day: date, growth, catalog, rng, *, until) -> int:
    weekend = day.weekday() >= 5
    expected = app.per_weekday * growth * (app.weekend_share if weekend else 1)
    count = max(0, round(rng.gauss(expected, expected * 0.2)))
    written = 0
    for n in range(count):
        hour = rng.uniform(1, 5) if app.night_only else min(23.9, max(0, rng.gauss(14, 3.5)))
        when = datetime.combine(day, time.min, tzinfo=UTC) + timedelta(hours=hour)
        if when >= until:
            continue
        asked = rng.choices([a for a, _ in app.asks], [w for _, w in app.asks])[0]
        route = catalog.route(team_id=team.id, name=asked)
        tokens = _tokens(app, rng)
        # Only models the catalog prices for this call serve it, as the proxy requires.
        targets = [
            t
            for t in (route.targets if route else [asked])
            if t in catalog.models
            and unpriced_direction(catalog.models[t].prices, needs_output=tokens.completion > 0)
            is None
        ]
        if not targets:
            continue
        facts = CallFacts(
            request_id=f"{DEMO_PREFIX}{day:%Y%m%d}_{app.key}_{n}",
            team_id=team.id,
            key_id=key.id,
            endpoint=app.endpoint,
            requested_model=asked,
            created_at=when,
            route=asked if route else "",
            end_user=f"demo-user-{rng.randint(1, 40)}",
        )
        meter = meter_open(
            facts=facts,
            worst_case=[(catalog.models[t].prices, tokens) for t in targets],
            deadline_s=600,
            now=when,
        )
        # About 3% of first attempts fail; a route falls back to its next target.
        attempts = targets[:2] if len(targets) > 1 and rng.random() < 0.03 else targets[:1]
        if len(attempts) == 1 and rng.random() < 0.01:
            attempts = attempts + attempts  # a retry on the same model
        for number, target in enumerate(attempts):
            model = catalog.models.get(target)
            failed = number < len(attempts) - 1
            meter.attempt(_outcome(model, target, tokens, app, rng, failed=failed))
        meter.close()
        written += 1
    return written


def _tokens(app: Traffic, rng) -> Tokens:
    prompt = max(20, int(rng.lognormvariate(0, 0.5) * app.prompt))
    completion = max(1, int(rng.lognormvariate(0, 0.6) * app.completion)) if app.completion else 0
    cached = int(prompt * app.cached_share * rng.random() * 2) if app.cached_share else 0
    return Tokens(prompt=prompt, cached=min(cached, prompt), completion=completion)


def _outcome(model, name: str, tokens: Tokens, app: Traffic, rng, *, failed: bool) -> Outcome:
    price: Price | None = model.prices if model else None
    provider = model.provider.name if model else ""
    if failed:
        return Outcome(
            status="upstream_error",
            model=name,
            provider=provider,
            price=price,
            http_status=rng.choice([429, 500, 503]),
            error_type="upstream_error",
            error_message="The demo upstream was busy.",
            latency_ms=int(rng.uniform(80, 900)),
        )
    streamed = rng.random() < app.streamed_share
    latency = int(rng.lognormvariate(0, 0.45) * (400 + tokens.completion * 12))
    return Outcome(
        status="ok",
        model=name,
        provider=provider,
        price=price,
        tokens=tokens if price is not None else Tokens(),
        streamed=streamed,
        http_status=200,
        latency_ms=latency,
        ttft_ms=int(latency * rng.uniform(0.08, 0.25)) if streamed else None,
    )


def demo_budget_amount(spent: Decimal) -> Decimal:
    """A monthly budget this month's spend is about 85% of (so the overview shows a budget
    near its 80% threshold), in whole dollars, at least $1."""
    return max(Decimal(1), (spent / Decimal("0.85")).quantize(Decimal(1)))
