"""The team's routing pages: the model catalog, savings, routes and compare."""

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import IntegrityError
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone

from accounts.permissions import ROUTE_MANAGERS, USAGE_READERS, require_team_page
from routing.calls import ENDPOINT_PATHS
from routing.forms import CompareForm, RouteForm
from routing.models import Route
from routing.savings import PERIODS, savings_period, savings_report
from routing.selectors import (
    ModelInfo,
    catalog_snapshot,
    global_route_get,
    global_routes,
    route_changes,
    team_route_get,
    team_routes,
)
from routing.services import (
    ROUTE_FIELDS,
    CatalogError,
    CompareError,
    CompareResult,
    compare_run,
    route_delete,
    route_save,
)
from routing.templatetags.routing_format import benchmark_label
from usage.pricing import unpriced_direction
from usage.selectors import usage_summary

PRICE_DIRECTIONS = ("input", "cached_input", "output")


def _can_manage_routes(request) -> bool:
    return request.team_access[1] in ROUTE_MANAGERS


# --- Models ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    value: Callable[[ModelInfo], object]
    # Scores and sizes read best largest first; names and prices smallest first.
    descending_first: bool = False
    numeric: bool = False
    benchmark: bool = False


def _price(direction: str) -> Callable[[ModelInfo], Decimal | None]:
    return lambda m: getattr(m.prices, direction) if m.prices else None


def _model_columns(benchmarks: list[str]) -> list[Column]:
    columns = [
        Column("model", "Model", lambda m: m.name),
        Column("provider", "Provider", lambda m: m.provider.name),
        Column("input", "Input", _price("input"), numeric=True),
        Column("cached", "Cached input", _price("cached_input"), numeric=True),
        Column("output", "Output", _price("output"), numeric=True),
        Column(
            "context",
            "Context window",
            lambda m: m.context_window,
            descending_first=True,
            numeric=True,
        ),
        Column("capabilities", "Capabilities", lambda m: ", ".join(sorted(m.capabilities))),
        Column("endpoints", "Served on", lambda m: ", ".join(m.served)),
    ]
    taken = {c.key for c in columns}
    columns += [
        Column(
            name,
            benchmark_label(name),
            lambda m, name=name: m.benchmarks.get(name),
            descending_first=True,
            numeric=True,
            benchmark=True,
        )
        for name in benchmarks
        if name not in taken
    ]
    return columns


def _sorted_models(models, column: Column, descending: bool) -> list[ModelInfo]:
    """Models by `column`, ties by id; a missing value (unpriced, no score) last either way."""
    by_name = sorted(models, key=lambda m: m.name)
    present = [m for m in by_name if column.value(m) is not None]
    missing = [m for m in by_name if column.value(m) is None]
    return sorted(present, key=column.value, reverse=descending) + missing  # type: ignore[arg-type]


def most_used_model(*, team_id: int, known: dict, now: datetime) -> str | None:
    """The model of `known` (the catalog's) the team sent the most requests to in the last
    30 days, as the savings page counts them."""
    period = savings_period(key="30d", now=now)
    groups = usage_summary(team_id=team_id, group_by="model", start=period.start, end=period.end)
    used = [(g["requests"], g["model"]) for g in groups if g["model"] in known]
    # Most requests first; ties by id.
    return min(used, key=lambda u: (-u[0], u[1]))[1] if used else None


def _multiple(price: Decimal | None, baseline: Decimal | None) -> Decimal | None:
    if price is None or not baseline:
        return None
    return price / baseline


@login_required
def models(request, slug):
    """The catalog: prices (and each as a multiple of a baseline model's), benchmarks,
    context window and capabilities, sorted on the server by `?sort=<column>` (`-` first
    for descending) so it works without JavaScript."""
    team = require_team_page(request, slug, USAGE_READERS)
    catalog = catalog_snapshot()
    all_models = list(catalog.models.values())
    columns = _model_columns(catalog.benchmark_names())
    by_key = {c.key: c for c in columns}

    wanted = request.GET.get("sort", "model")
    descending = wanted.startswith("-")
    column = by_key.get(wanted.removeprefix("-"))
    if column is None:
        column, descending = by_key["model"], False

    baseline_name = request.GET.get("baseline", "")
    if baseline_name not in catalog.models:
        baseline_name = most_used_model(
            team_id=team.id, known=catalog.models, now=timezone.now()
        ) or min(catalog.models, default="")
    baseline = catalog.models.get(baseline_name)

    rows = []
    for model in _sorted_models(all_models, column, descending):
        prices = []
        for direction in PRICE_DIRECTIONS:
            price = getattr(model.prices, direction) if model.prices else None
            base = getattr(baseline.prices, direction) if baseline and baseline.prices else None
            prices.append({"price": price, "multiple": _multiple(price, base)})
        rows.append(
            {
                "model": model,
                "prices": prices,
                "capabilities": sorted(model.capabilities),
                "endpoints": [ENDPOINT_PATHS[e] for e in model.served],
                "benchmarks": [c.value(model) for c in columns if c.benchmark],
            }
        )

    headers = []
    for c in columns:
        current = c is column
        # A click on the sorted column turns it round; on another, sorts it its natural way.
        next_descending = not descending if current else c.descending_first
        headers.append(
            {
                "column": c,
                "sort": f"{'-' if next_descending else ''}{c.key}",
                "aria_sort": ("descending" if descending else "ascending") if current else None,
            }
        )
    return render(
        request,
        "routing/models.html",
        {
            "team": team,
            "headers": headers,
            "rows": rows,
            "sort": f"{'-' if descending else ''}{column.key}",
            "sorted_label": column.label,
            "sorted_direction": "descending" if descending else "ascending",
            "baseline": baseline,
            "choices": sorted(all_models, key=lambda m: m.name),
            "can_manage_routes": _can_manage_routes(request),
        },
    )


# --- Savings --------------------------------------------------------------------------


@login_required
def savings(request, slug):
    """What the team's own tokens of a period would have cost on other models, at their
    current prices (`?period=30d|last-month|90d`)."""
    team = require_team_page(request, slug, USAGE_READERS)
    period = savings_period(key=request.GET.get("period", ""), now=timezone.now())
    return render(
        request,
        "routing/savings.html",
        {
            "team": team,
            "period": period,
            "periods": PERIODS,
            "report": savings_report(team_id=team.id, period=period, catalog=catalog_snapshot()),
        },
    )


# --- Routes ---------------------------------------------------------------------------

ROUTE_FIELD_LABELS = {
    "strategy": "strategy",
    "targets": "targets",
    "weights": "weights",
    "require": "benchmark floors",
    "capabilities": "capabilities",
    "deadline_s": "deadline (s)",
    "retries": "retries",
}


def _describe(field: str, value) -> str:
    """A stored route field as a reader writes it."""
    if value in (None, [], {}):
        return "none"
    if field == "require" and isinstance(value, dict):
        return ", ".join(f"{benchmark_label(k)} ≥ {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _route_row(route: Route, models: dict) -> dict:
    weights = route.weights if route.strategy == Route.Strategy.WEIGHTED else []
    return {
        "route": route,
        "targets": [
            {
                "name": target,
                "weight": weights[i] if i < len(weights) else None,
                "missing": target not in models,
                "unpriced": target in models
                and unpriced_direction(models[target].prices, needs_output=True) is not None,
            }
            for i, target in enumerate(route.targets)
        ],
        "requirements": [
            *(f"{benchmark_label(k)} ≥ {v}" for k, v in route.require.items()),
            *(f"has {c}" for c in route.capabilities),
        ],
    }


def _change_row(change) -> dict:
    before, after = change.before, change.after
    if before is None:
        action, fields = "created", [f for f in ROUTE_FIELDS if (after or {}).get(f)]
    elif after is None:
        action, fields = "deleted", []
    else:
        action = "changed"
        fields = [f for f in ROUTE_FIELDS if before.get(f) != after.get(f)]
    return {
        "change": change,
        "action": action,
        "fields": [
            {
                "label": ROUTE_FIELD_LABELS[f],
                "before": _describe(f, before.get(f)) if before is not None else None,
                "after": _describe(f, after.get(f)) if after is not None else None,
            }
            for f in fields
        ],
    }


@login_required
def routes(request, slug):
    """The team's routes, the global ones, and who changed the team's routes when."""
    team = require_team_page(request, slug, USAGE_READERS)
    models = catalog_snapshot().models
    own = list(team_routes(team=team))
    overridden = {r.name for r in own}
    return render(
        request,
        "routing/routes.html",
        {
            "team": team,
            "own": [_route_row(r, models) for r in own],
            "global": [
                {**_route_row(r, models), "overridden": r.name in overridden}
                for r in global_routes()
            ],
            "changes": [_change_row(c) for c in route_changes(team=team, limit=100)],
            "can_manage_routes": _can_manage_routes(request),
        },
    )


def _route_form(data=None, *, route=None, named=True) -> RouteForm:
    catalog = catalog_snapshot()
    return RouteForm(
        data,
        models=sorted(catalog.models.values(), key=lambda m: m.name),
        benchmarks=catalog.benchmark_names(),
        route=route,
        named=named,
    )


def _route_save(request, team, form: RouteForm, name: str) -> bool:
    """Save a valid form's route; False, with the reason on the form, if route_save refuses."""
    try:
        route_save(
            team=team,
            name=name,
            fields=form.cleaned_data["route"],
            actor=request.user.get_username(),
        )
    except CatalogError as exc:
        form.add_catalog_error(exc)
        return False
    except IntegrityError:
        # Someone created the same route between this form's check and its save.
        form.add_error("name", "This team already has a route of that name; edit it instead.")
        return False
    return True


@login_required
def route_create(request, slug):
    """A new team route; `?from=<global route>` starts from a global route to override it."""
    team = require_team_page(request, slug, ROUTE_MANAGERS)
    if request.method == "POST":
        form = _route_form(request.POST)
        if form.is_valid():
            name = form.cleaned_data["name"]
            if team_route_get(team=team, name=name) is not None:
                form.add_error(
                    "name", "This team already has a route of that name; edit it instead."
                )
            elif _route_save(request, team, form, name):
                messages.success(request, f"Route {name} created.")
                return redirect("routes", slug=team.slug)
    else:
        start = global_route_get(name=request.GET.get("from", ""))
        form = _route_form(route=start)
    return render(request, "routing/route_form.html", {"team": team, "form": form, "route": None})


@login_required
def route_edit(request, slug, name):
    team = require_team_page(request, slug, ROUTE_MANAGERS)
    route = team_route_get(team=team, name=name)
    if route is None:
        raise Http404("This team has no route of that name.")
    form = _route_form(request.POST or None, route=route, named=False)
    if request.method == "POST" and form.is_valid() and _route_save(request, team, form, name):
        messages.success(request, f"Route {name} saved.")
        return redirect("routes", slug=team.slug)
    return render(request, "routing/route_form.html", {"team": team, "form": form, "route": route})


@login_required
def route_remove(request, slug, name):
    """Asks first (GET), deletes on POST; the global route of that name, if any, applies again."""
    team = require_team_page(request, slug, ROUTE_MANAGERS)
    route = team_route_get(team=team, name=name)
    if route is None:
        raise Http404("This team has no route of that name.")
    namesake = global_route_get(name=name)
    if request.method == "POST":
        route_delete(team=team, name=name, actor=request.user.get_username())
        messages.success(
            request,
            f"Route {name} deleted; calls naming it now use the global route of that name."
            if namesake
            else f"Route {name} deleted; calls naming it are now refused as an unknown model.",
        )
        return redirect("routes", slug=team.slug)
    return render(
        request,
        "routing/route_delete.html",
        {"team": team, "row": _route_row(route, catalog_snapshot().models), "namesake": namesake},
    )


# --- Compare --------------------------------------------------------------------------


@login_required
def compare(request, slug):
    """One prompt on several models side by side, through compare_run (as the API): real
    calls, billed to the team and in its ledger."""
    team = require_team_page(request, slug, ROUTE_MANAGERS)
    chat = sorted(
        (m for m in catalog_snapshot().models.values() if m.can("chat")), key=lambda m: m.name
    )
    billable = [m for m in chat if unpriced_direction(m.prices, needs_output=True) is None]
    form = CompareForm(request.POST or None, models=billable)
    slot = f"compare-results:{team.id}"
    if request.method == "POST" and form.is_valid():
        try:
            ran = compare_run(
                team=team,
                models=form.cleaned_data["models"],
                messages=[{"role": "user", "content": form.cleaned_data["prompt"]}],
                max_tokens=form.cleaned_data["max_tokens"],
                actor=request.user.get_username(),
            )
        except CompareError as exc:
            # A model left the catalog between the form's check and the run.
            form.add_error("models", str(exc))
        else:
            # Post/redirect/get: the answers are shown once after a redirect, so reloading
            # the page never sends (and bills) the prompt again.
            request.session[slot] = {
                "prompt": form.cleaned_data["prompt"],
                "results": [{**asdict(r), "cost_usd": str(r.cost_usd)} for r in ran],
            }
            return redirect("compare", slug=team.slug)
    shown = request.session.pop(slot, None) if request.method == "GET" else None
    results = (
        [CompareResult(**{**r, "cost_usd": Decimal(r["cost_usd"])}) for r in shown["results"]]
        if shown
        else None
    )
    if shown:
        form = CompareForm(initial={"prompt": shown["prompt"]}, models=billable)
    names = {m.name: m.display_name for m in chat}
    return render(
        request,
        "routing/compare.html",
        {
            "team": team,
            "form": form,
            "results": [{"result": r, "display_name": names.get(r.model, r.model)} for r in results]
            if results is not None
            else None,
            "total": sum((r.cost_usd for r in results), Decimal(0)) if results else None,
            "not_offered": [m for m in chat if m not in billable],
        },
    )
