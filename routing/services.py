"""Writes for the catalog (providers, models, prices and routes), and compare runs."""

import asyncio
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.audit import audit, diff
from accounts.services import KeyPrincipal
from portal.logs import new_request_id
from routing.calls import CHAT, call_json, call_prepare
from routing.errors import ProxyError
from routing.models import CatalogModel, ModelPrice, Provider, Route, RouteChange
from routing.selectors import catalog_snapshot, endpoints_of
from usage.metering import Endpoint

CAPABILITIES = set(CatalogModel.Capability.values)
ENDPOINTS = set(Endpoint.values)
STRATEGIES = set(Route.Strategy.values)
PRICE_KEYS = ("input_per_mtok", "cached_input_per_mtok", "output_per_mtok")


class CatalogError(ValueError):
    """The catalog file, or a route sent to the API or the web UI, is not valid.

    The message says where and why. A route's errors also name the route
    `field` at fault and the `problem` without the where, so a form can show
    the sentence beside that field.
    """

    def __init__(self, message: str, *, field: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.field = field
        self.problem = problem or message


def _route_error(where: str, field: str, problem: str) -> CatalogError:
    return CatalogError(f"{where}: {problem}", field=field, problem=problem)


@dataclass
class CatalogLoadResult:
    providers: int = 0
    models: int = 0
    routes: int = 0
    new_prices: list[str] = field(default_factory=list)


# Told (table, done, total) after each entry is stored: "provider", "model" or "route".
CatalogProgress = Callable[[str, int, int], None]


def catalog_load(
    *, path: str | Path, now: datetime | None = None, progress: CatalogProgress | None = None
) -> CatalogLoadResult:
    """Upsert providers, models, prices and global routes from a TOML catalog.

    Idempotent: loading the same file twice changes nothing. A model whose
    prices differ from its current ones gets a new price row effective from
    `now`; earlier rows, and what past calls were charged, stay as they were.
    `progress`, when given, is told each entry stored (for a big file's progress line).
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    return catalog_load_data(data=data, now=now, progress=progress)


def catalog_load_data(
    *, data: dict, now: datetime | None = None, progress: CatalogProgress | None = None
) -> CatalogLoadResult:
    now = now or timezone.now()

    def stored(table: str, done: int, total: int) -> None:
        if progress is not None:
            progress(table, done, total)

    providers = [_provider_fields(p, i) for i, p in enumerate(data.get("provider", []))]
    models = [_model_fields(m, i) for i, m in enumerate(data.get("model", []))]
    routes = [_route_fields(r, i) for i, r in enumerate(data.get("route", []))]
    unknown = set(data) - {"provider", "model", "route"}
    if unknown:
        raise CatalogError(f"unknown top-level tables: {', '.join(sorted(unknown))}")

    result = CatalogLoadResult()
    with transaction.atomic():
        for fields in providers:
            Provider.objects.update_or_create(name=fields.pop("name"), defaults=fields)
            result.providers += 1
            stored("provider", result.providers, len(providers))
        provider_ids = dict(Provider.objects.values_list("name", "id"))
        for fields in models:
            prices = fields.pop("prices")
            provider = fields.pop("provider")
            if provider not in provider_ids:
                raise CatalogError(f"model {fields['name']!r}: unknown provider {provider!r}")
            if Route.objects.filter(name=fields["name"]).exists():
                raise CatalogError(
                    f"model {fields['name']!r}: a route has that name; rename the route first"
                )
            model, _ = CatalogModel.objects.update_or_create(
                name=fields.pop("name"), defaults={**fields, "provider_id": provider_ids[provider]}
            )
            new_price = ModelPrice(model=model, effective_from=now, **prices)
            current = (
                model.prices.filter(effective_from__lte=now).order_by("-effective_from").first()
            )
            if current is None or not current.same_prices(new_price):
                new_price.save()
                result.new_prices.append(model.name)
            result.models += 1
            stored("model", result.models, len(models))
        for fields in routes:
            route_save(
                team=None, name=fields.pop("name"), fields=fields, actor="loadcatalog", now=now
            )
            result.routes += 1
            stored("route", result.routes, len(routes))
    return result


def _require(entry, key, where, kind=str):
    value = entry.get(key)
    if not isinstance(value, kind) or value in ("", None):
        raise CatalogError(f"{where}: '{key}' is required and must be a {kind.__name__}")
    return value


def _optional_int(entry, key, where):
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CatalogError(f"{where}: '{key}' must be a positive integer")
    return value


def _check_keys(entry, allowed, where):
    unknown = set(entry) - set(allowed)
    if unknown:
        raise CatalogError(f"{where}: unknown keys {', '.join(sorted(unknown))}")


def _provider_fields(entry, index):
    where = f"provider #{index + 1}"
    _check_keys(entry, {"name", "base_url", "api_key_env", "timeout_s"}, where)
    name = _require(entry, "name", where)
    where = f"provider {name!r}"
    return {
        "name": name,
        "base_url": _require(entry, "base_url", where).rstrip("/"),
        "api_key_env": entry.get("api_key_env", ""),
        "timeout_s": _optional_int(entry, "timeout_s", where) or 60,
    }


def parse_price(value, where) -> Decimal | None:
    """A price in USD per 1M tokens, written as a decimal string; None when unpriced."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise CatalogError(f'{where}: write prices as decimal strings, e.g. "0.18", not {value!r}')
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise CatalogError(f"{where}: {value!r} is not a decimal number") from None
    if not price.is_finite() or price < 0:
        raise CatalogError(f"{where}: {value!r} must be a non-negative number")
    if price.as_tuple().exponent < -6:
        raise CatalogError(f"{where}: {value!r} has more than 6 decimal places")
    return price


def _model_fields(entry, index):
    where = f"model #{index + 1}"
    allowed = {
        "id",
        "provider",
        "upstream_id",
        "display_name",
        "origin",
        "context_window",
        "max_output_tokens",
        "output_tokens_per_s",
        "capabilities",
        "endpoints",
        "benchmarks",
        *PRICE_KEYS,
    }
    _check_keys(entry, allowed, where)
    name = _require(entry, "id", where)
    where = f"model {name!r}"
    capabilities = entry.get("capabilities", ["chat"])
    if not isinstance(capabilities, list) or not set(capabilities) <= CAPABILITIES:
        raise CatalogError(
            f"{where}: capabilities must be a list drawn from {', '.join(sorted(CAPABILITIES))}"
        )
    endpoints = entry.get("endpoints", endpoints_of(capabilities))
    if not isinstance(endpoints, list) or not endpoints or not set(endpoints) <= ENDPOINTS:
        raise CatalogError(
            f"{where}: endpoints must be a non-empty list drawn from {', '.join(sorted(ENDPOINTS))}"
        )
    benchmarks = entry.get("benchmarks", {})
    if not isinstance(benchmarks, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in benchmarks.values()
    ):
        raise CatalogError(f"{where}: benchmarks must map names to scores")
    return {
        "name": name,
        "provider": _require(entry, "provider", where),
        "upstream_id": entry.get("upstream_id") or name,
        "display_name": entry.get("display_name", ""),
        "origin": entry.get("origin", ""),
        "context_window": _optional_int(entry, "context_window", where),
        "max_output_tokens": _optional_int(entry, "max_output_tokens", where),
        "output_tokens_per_s": _optional_int(entry, "output_tokens_per_s", where),
        "capabilities": sorted(set(capabilities)),
        "endpoints": sorted(set(endpoints)),
        "benchmarks": benchmarks,
        "prices": {key: parse_price(entry.get(key), f"{where} {key}") for key in PRICE_KEYS},
    }


ROUTE_FIELDS = (
    "strategy",
    "targets",
    "weights",
    "require",
    "capabilities",
    "deadline_s",
    "retries",
)


def route_state(route: Route | None) -> dict | None:
    return None if route is None else {field: getattr(route, field) for field in ROUTE_FIELDS}


def route_save(*, team, name: str, fields: dict, actor: str, now: datetime | None = None) -> Route:
    """Create or update a route (team=None: global) from validated fields; record the change, if any."""
    if CatalogModel.objects.filter(name=name).exists():
        # A model's name always means the model (a key limited to it must never
        # be routed elsewhere), so no route may take it.
        raise _route_error(
            f"route {name!r}", "name", "a model has that id; give the route another name"
        )
    known = set(
        CatalogModel.objects.filter(name__in=fields["targets"]).values_list("name", flat=True)
    )
    missing = [t for t in fields["targets"] if t not in known]
    if missing:
        raise _route_error(f"route {name!r}", "targets", f"unknown targets {', '.join(missing)}")
    with transaction.atomic():
        route = Route.objects.select_for_update().filter(team=team, name=name).first()
        before = route_state(route)
        if route is None:
            route = Route(team=team, name=name)
        for field, value in fields.items():
            setattr(route, field, value)
        after = route_state(route)
        if before != after:
            route.save()
            route_change_record(
                team=team, name=name, actor=actor, before=before, after=after, now=now
            )
    return route


def route_delete(*, team, name: str, actor: str) -> bool:
    """Delete a team's own route (its global namesake, if any, applies again)."""
    with transaction.atomic():
        route = Route.objects.select_for_update().filter(team=team, name=name).first()
        if route is None:
            return False
        before = route_state(route)
        route.delete()
        route_change_record(team=team, name=name, actor=actor, before=before, after=None)
    return True


def route_change_record(*, team, name, actor, before, after, now=None) -> RouteChange:
    # The team's audit log too (a global route's change is staff's: team None).
    audit(
        team=team,
        action="route.delete" if after is None else "route.save",
        target=name,
        changes=diff(before or {}, after or {}),
    )
    return RouteChange.objects.create(
        team=team,
        route_name=name,
        actor=actor,
        before=before,
        after=after,
        at=now or timezone.now(),
    )


def route_fields(entry: dict, where: str = "route") -> dict:
    """Validate a route as written in a catalog or sent to the API; raises CatalogError."""
    return _route_fields(entry, where=where)


def _positive_int(entry, key, where, default):
    value = entry.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _route_error(where, key, f"'{key}' must be a non-negative integer")
    return value


# Segments separated by "/" (as in "support/tier-1"), each starting with a letter or digit, so
# no segment is "." or ".." (a browser would resolve those out of the page's URL).
ROUTE_NAME = re.compile(
    r"(?=.{1,100}$)[A-Za-z0-9][A-Za-z0-9_.:-]*(?:/[A-Za-z0-9][A-Za-z0-9_.:-]*)*"
)


def _route_fields(entry, index=None, where=None):
    where = where or f"route #{index + 1}"
    allowed = {
        "name",
        "strategy",
        "targets",
        "weights",
        "require",
        "capabilities",
        "deadline_s",
        "retries",
    }
    _check_keys(entry, allowed, where)
    name = _require(entry, "name", where)
    if not ROUTE_NAME.fullmatch(name):
        # A route's name is a URL path segment and what clients send as "model".
        raise _route_error(
            f"route {name[:100]!r}",
            "name",
            "a route name is up to 100 letters, digits, '_', '-', '.', ':' and '/', each part "
            "between slashes starting with a letter or digit",
        )
    where = f"route {name!r}"
    strategy = entry.get("strategy", "fallback")
    if strategy not in STRATEGIES:
        raise _route_error(
            where, "strategy", f"strategy must be one of {', '.join(sorted(STRATEGIES))}"
        )
    targets = entry.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise _route_error(where, "targets", "targets must be a non-empty list of model ids")
    weights = entry.get("weights", [])
    if strategy == "weighted" and (
        len(weights) != len(targets) or not all(isinstance(w, int) and w >= 0 for w in weights)
    ):
        raise _route_error(
            where, "weights", "a weighted route needs one non-negative integer weight per target"
        )
    require = entry.get("require", {})
    if not isinstance(require, dict):
        raise _route_error(where, "require", "require must map benchmark names to floors")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in require.values()):
        raise _route_error(where, "require", "require must map benchmark names to numeric floors")
    capabilities = entry.get("capabilities", [])
    if not isinstance(capabilities, list) or not set(capabilities) <= CAPABILITIES:
        raise _route_error(
            where,
            "capabilities",
            f"capabilities must be a list drawn from {', '.join(sorted(CAPABILITIES))}",
        )
    deadline_s = _positive_int(entry, "deadline_s", where, 60)
    longest = settings.TOLLGATE_CALL_DEADLINE_S
    if not 1 <= deadline_s <= longest:
        raise _route_error(
            where,
            "deadline_s",
            f"'deadline_s' must be between 1 and {longest} seconds "
            f"(TOLLGATE_CALL_DEADLINE_S, the longest any call may run)",
        )
    retries = _positive_int(entry, "retries", where, 1)
    if retries > 5:
        raise _route_error(where, "retries", "'retries' must be at most 5")
    return {
        "name": name,
        "strategy": strategy,
        "targets": targets,
        "weights": weights if strategy == "weighted" else [],
        "require": require,
        "capabilities": sorted(set(capabilities)),
        "deadline_s": deadline_s,
        "retries": retries,
    }


# --- Compare: one prompt on several models, through the proxy's own call path ---------


class CompareError(ValueError):
    """A comparison that cannot start (a model not in the catalog); nothing was called."""


@dataclass(frozen=True)
class CompareResult:
    model: str
    ok: bool
    answer: str | None
    # A sentence for the person comparing when the call failed or was refused.
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int | None
    # What the team was charged for this call (USD, list price); 0 when it failed.
    cost_usd: Decimal
    request_id: str


def compare_run(
    *,
    team,
    models: list[str],
    messages: list[dict],
    actor: str,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> list[CompareResult]:
    """Send one chat request to each model at once, through the proxy's call path.

    Each call is real: checked against the team's budgets and prices, billed
    to the team (with no key, and `compare by <actor>` as its end user) and
    written to the ledger like any other. A model that fails or is refused
    gets its sentence in its result; the others are unaffected. Raises
    CompareError, before calling anything, when a model is not in the catalog.
    """
    models = list(dict.fromkeys(models))
    unknown = [m for m in models if m not in catalog_snapshot().models]
    if unknown:
        raise CompareError(f"Unknown models: {', '.join(unknown)}")
    # Compare calls have no inference key, so the ledger's key is empty.
    principal = KeyPrincipal(
        key_id=None, prefix="", kind="compare", team_id=team.id, team_slug=team.slug
    )
    body: dict = {"messages": messages, "user": f"compare by {actor}"[:256]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature

    async def run():
        from portal import aio
        from routing.upstream import upstream_close

        try:
            return await asyncio.gather(*[_compare_one(principal, body, m) for m in models])
        finally:
            # This event loop ends here, and its connections with it.
            await aio.close_pools()
            await upstream_close()

    return list(async_to_sync(run)())


def _answer_text(payload: dict) -> str | None:
    # Whatever shape the upstream gave its answer: billed already, never a 500 here.
    choices = payload.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else message
    return content if isinstance(content, str) else None


async def _compare_one(principal: KeyPrincipal, body: dict, model_name: str) -> CompareResult:
    request_id = new_request_id()
    failed = dict(
        model=model_name,
        ok=False,
        answer=None,
        prompt_tokens=0,
        completion_tokens=0,
        latency_ms=None,
        cost_usd=Decimal(0),
        request_id=request_id,
    )
    try:
        call = await call_prepare(
            principal=principal,
            endpoint=CHAT,
            body={**body, "model": model_name},
            request_id=request_id,
            now=timezone.now(),
        )
        payload, _, cost = await call_json(call, {**body, "model": model_name})
    except ProxyError as exc:
        return CompareResult(**failed, error=exc.message)
    served, _ = call.meter.outcomes[-1]
    return CompareResult(
        model=model_name,
        ok=True,
        answer=_answer_text(payload),
        error=None,
        prompt_tokens=served.tokens.prompt,
        completion_tokens=served.tokens.completion,
        latency_ms=served.latency_ms,
        cost_usd=cost,
        request_id=request_id,
    )
