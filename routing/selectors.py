"""Reads of the catalog, through an in-process snapshot.

Every proxied call needs the model, its provider and its current prices.
Reading them from the database each time would cost several queries, so
each process keeps a snapshot. At most once every CATALOG_CHECK_S seconds
it reads the shared catalog version (in the cache, bumped by any catalog
change) and rebuilds when it moved: a change reaches every worker within
about a second, and the process that made it at once. CATALOG_MAX_AGE_S
bounds staleness when there is no shared cache.
"""

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from routing.models import CatalogModel, ModelPrice, Provider, Route, RouteChange
from usage.pricing import Price

CATALOG_VERSION_KEY = "catalog:version"
CATALOG_CHECK_S = 1.0
CATALOG_MAX_AGE_S = 30
BENCHMARK_ORDER = ("mmlu", "humaneval", "ceval")


@dataclass(frozen=True)
class ProviderInfo:
    name: str
    base_url: str
    api_key_env: str
    timeout_s: int


@dataclass(frozen=True)
class ModelInfo:
    name: str
    display_name: str
    provider: ProviderInfo
    upstream_id: str
    context_window: int | None
    max_output_tokens: int | None
    capabilities: frozenset
    benchmarks: dict
    # The price charged now (usage.pricing.Price); None when the model has none.
    prices: Price | None
    created: int
    # The /v1 endpoints its upstream serves itself (the catalog's `endpoints`).
    endpoints: frozenset = frozenset()

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    @property
    def served(self) -> tuple[str, ...]:
        """The /v1 endpoints a call may use this model on: its upstream's own, and the
        Responses API bridged to chat for a model whose upstream speaks only chat."""
        bridged = {"responses"} if "chat" in self.endpoints else set()
        return tuple(e for e in ENDPOINTS if e in self.endpoints | bridged)

    def serves(self, endpoint: str) -> bool:
        return endpoint in self.served


# The /v1 endpoints, in the order they are listed.
ENDPOINTS = ("chat", "responses", "completions", "embeddings", "moderations")


@dataclass(frozen=True)
class RouteInfo:
    name: str
    team_id: int | None
    strategy: str
    targets: tuple[str, ...]
    weights: tuple[int, ...]
    require: dict
    capabilities: frozenset
    deadline_s: int = 60
    retries: int = 1


class Catalog:
    def __init__(
        self, *, models: dict[str, ModelInfo], routes: list[RouteInfo], built_at: datetime
    ):
        self.models = models
        self.global_routes = {r.name: r for r in routes if r.team_id is None}
        self.team_routes = {(r.team_id, r.name): r for r in routes if r.team_id is not None}
        self.built_at = built_at

    def route(self, *, team_id: int, name: str) -> RouteInfo | None:
        """The route a team means by `name`: its own if it has one, else the global one."""
        return self.team_routes.get((team_id, name)) or self.global_routes.get(name)

    def benchmark_names(self) -> list[str]:
        """Every benchmark some model has a score for: the well-known ones first, in
        BENCHMARK_ORDER, then the rest alphabetically."""
        names = {name for m in self.models.values() for name in m.benchmarks}
        known = [name for name in BENCHMARK_ORDER if name in names]
        return known + sorted(names - set(known))

    def routes_for(self, *, team_id: int) -> list[RouteInfo]:
        merged = dict(self.global_routes)
        merged.update({name: r for (tid, name), r in self.team_routes.items() if tid == team_id})
        return [merged[name] for name in sorted(merged)]


def endpoints_of(capabilities) -> list[str]:
    """The endpoints a model serves when its catalog entry names none: its capabilities'."""
    return [e for e in ("chat", "embeddings") if e in capabilities]


def _build_catalog(now: datetime) -> Catalog:
    providers = {
        p.id: ProviderInfo(
            name=p.name, base_url=p.base_url, api_key_env=p.api_key_env, timeout_s=p.timeout_s
        )
        for p in Provider.objects.all()
    }
    current_prices: dict[int, Price] = {}
    for price in ModelPrice.objects.filter(effective_from__lte=now).order_by(
        "model_id", "-effective_from"
    ):
        current_prices.setdefault(
            price.model_id,
            Price.listed(
                input=price.input_per_mtok,
                cached_input=price.cached_input_per_mtok,
                output=price.output_per_mtok,
            ),
        )
    models = {
        m.name: ModelInfo(
            name=m.name,
            display_name=m.display_name or m.name,
            provider=providers[m.provider_id],
            upstream_id=m.upstream_id,
            context_window=m.context_window,
            max_output_tokens=m.max_output_tokens,
            capabilities=frozenset(m.capabilities),
            benchmarks=dict(m.benchmarks),
            prices=current_prices.get(m.id),
            created=int(m.created_at.timestamp()),
            endpoints=frozenset(m.endpoints or endpoints_of(m.capabilities)),
        )
        for m in CatalogModel.objects.all()
    }
    routes = [
        RouteInfo(
            name=r.name,
            team_id=r.team_id,
            strategy=r.strategy,
            targets=tuple(r.targets),
            weights=tuple(r.weights),
            require=dict(r.require),
            capabilities=frozenset(r.capabilities),
            deadline_s=r.deadline_s,
            retries=r.retries,
        )
        for r in Route.objects.all()
    ]
    return Catalog(models=models, routes=routes, built_at=now)


_snapshot: Catalog | None = None
_snapshot_version: str | None = None
_snapshot_monotonic = 0.0
_checked_monotonic = 0.0


def catalog_snapshot() -> Catalog:
    """The current catalog; free on most calls, one cache read a second otherwise."""
    global _snapshot, _snapshot_version, _snapshot_monotonic, _checked_monotonic
    snapshot, moment = _snapshot, time.monotonic()
    if snapshot is not None and moment - _checked_monotonic < CATALOG_CHECK_S:
        return snapshot
    version = cache.get(CATALOG_VERSION_KEY)
    _checked_monotonic = moment
    if (
        snapshot is not None
        and version == _snapshot_version
        and moment - _snapshot_monotonic < CATALOG_MAX_AGE_S
    ):
        return snapshot
    # No lock: a caller may hold a pooled connection while another, holding
    # the lock, waits for one. Two threads rebuilding at once is harmless.
    catalog = _build_catalog(timezone.now())
    _snapshot, _snapshot_version, _snapshot_monotonic = catalog, version, time.monotonic()
    return catalog


_refreshing: "asyncio.Task | None" = None


def catalog_snapshot_held() -> Catalog | None:
    """The catalog this process holds, as it is (None before its first call): no I/O."""
    return _snapshot


async def catalog_snapshot_async() -> Catalog:
    """The catalog for the /v1 hot path, without blocking the event loop: the snapshot as
    it is while one task (per process) checks it in a thread once a second; only a
    process with no snapshot yet waits for it."""
    global _refreshing
    snapshot = _snapshot
    if snapshot is not None and time.monotonic() - _checked_monotonic < CATALOG_CHECK_S:
        return snapshot
    if _refreshing is None or _refreshing.done():
        _refreshing = asyncio.ensure_future(
            sync_to_async(_snapshot_checked, thread_sensitive=False)()
        )
    if snapshot is None:
        return await asyncio.shield(_refreshing)
    return snapshot


def _snapshot_checked() -> Catalog:
    try:
        return catalog_snapshot()
    finally:
        connection.close()  # back to the pool: this thread serves other work


def catalog_changed() -> None:
    """Tell every process to rebuild its snapshot on its next call."""
    global _snapshot
    cache.set(CATALOG_VERSION_KEY, uuid.uuid4().hex, None)
    _snapshot = None


# --- Routes as stored: what the management API and the routes page show --------


def global_routes() -> QuerySet[Route]:
    return Route.objects.filter(team__isnull=True).order_by("name")


def global_route_get(*, name: str) -> Route | None:
    return Route.objects.filter(team__isnull=True, name=name).first()


def team_routes(*, team) -> QuerySet[Route]:
    """A team's own routes; each overrides a global route of the same name for that team."""
    return Route.objects.filter(team=team).order_by("name")


def team_route_get(*, team, name: str) -> Route | None:
    return Route.objects.filter(team=team, name=name).first()


def route_changes(*, team, limit: int = 200) -> list[RouteChange]:
    """The audit trail of a team's routes, newest first."""
    return list(RouteChange.objects.filter(team=team)[:limit])
