from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import BigIntegerField, F, Q, Value
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.safestring import mark_safe

from accounts.permissions import BILLING_READERS, BUDGET_MANAGERS, require_team_page
from accounts.selectors import api_key_list, teams_for
from accounts.services import team_settings_update
from portal.replica import report
from usage.alerts import DeliveryFailed, alert_webhook_test
from usage.budgets import budget_set
from usage.charts import spend_chart_svg, stacked_series
from usage.filters import UsageFilter
from usage.forms import BudgetForm, WebhookForm
from usage.invoices import ENDPOINT_LABELS, InvoiceError, invoice_preview, month_of
from usage.models import Invoice
from usage.months import (
    PRESETS,
    PeriodError,
    next_month_start,
    period_from_query,
)
from usage.selectors import (
    alert_history,
    budget_list,
    invoice_for_month,
    invoice_months,
    invoice_numbered,
    invoices_voided,
    recent_alerts,
    team_budget_status,
    usage_health,
    usage_models,
    usage_rows,
    usage_summary,
)
from usage.templatetags.money import usd


@login_required
def home(request):
    """The caller's team, or the one the team switcher asked for, or a list to pick from."""
    teams = list(teams_for(actor=request.user))
    wanted = request.GET.get("team")
    chosen = (
        [t for t in teams if t.slug == wanted] if wanted else teams[:1] if len(teams) == 1 else []
    )
    if chosen:
        return redirect("dashboard", slug=chosen[0].slug)
    return render(request, "usage/teams.html", {"teams": teams})


@login_required
@report
def dashboard(request, slug):
    """The overview: spend against budget this month, and for any range (kept in the URL)
    spend per day stacked by model or key, the top models and keys, and call health."""
    team = require_team_page(request, slug)
    now = timezone.now()
    try:
        period = period_from_query(request.GET, now=now)
        problem = None
    except PeriodError as exc:
        period, problem = period_from_query({}, now=now), str(exc)
    split = "key" if request.GET.get("by") == "key" else "model"
    key_names = {k.prefix: k.name for k in api_key_list(team=team)}

    def label(value):
        if split == "key":
            return f"{value} ({key_names[value]})" if value in key_names else value or "(no key)"
        return value or "(refused before routing)"

    ranged = {"team_id": team.id, "start": period.start, "end": period.end}
    by_model = _ranked(usage_summary(group_by="model", **ranged))
    by_key = _ranked(usage_summary(group_by="key", **ranged))
    by_endpoint = _ranked(usage_summary(group_by="endpoint", **ranged))
    for group in by_endpoint:
        group["label"] = ENDPOINT_LABELS.get(group["endpoint"], group["endpoint"])
    for group in by_key:
        group["name"] = key_names.get(group["key"], "")
    days = period.days
    series = stacked_series(
        usage_summary(group_by=("day", split), **ranged), days=days, split=split, label=label
    )
    total_cost = sum((g["cost_usd"] for g in by_model), start=Decimal(0))
    query = request.GET.copy()
    return render(
        request,
        "usage/dashboard.html",
        {
            "team": team,
            "period": period,
            "problem": problem,
            "presets": [
                {
                    "label": text,
                    "query": _with(query, range=name, start=None, end=None),
                    "current": period.preset == name,
                }
                for name, text in PRESETS.items()
            ],
            "splits": [
                {"label": f"By {name}", "query": _with(query, by=name), "current": split == name}
                for name in ("model", "key")
            ],
            "split": split,
            "totals": {
                "requests": sum(g["requests"] for g in by_model),
                "input_tokens": sum(g["prompt_tokens"] for g in by_model),
                "output_tokens": sum(g["completion_tokens"] for g in by_model),
                "cost_usd": total_cost,
            },
            "health": usage_health(**ranged),
            "by_model": by_model,
            "by_key": by_key,
            "by_endpoint": by_endpoint,
            "chart": mark_safe(
                spend_chart_svg(days=days, series=series, title=f"Spend per day by {split} (USD)")
            ),
            "series": series,
            "chart_rows": [
                (day, [values[n] for values in series.values()]) for n, day in enumerate(days)
            ],
            "budget": _budget_outlook(team=team, now=now),
            "alerts": recent_alerts(team=team, limit=5),
        },
    )


def _ranked(groups: list[dict]) -> list[dict]:
    """Groups costliest first, each with its share of the total cost in percent."""
    total = sum((g["cost_usd"] for g in groups), start=Decimal(0))
    for group in groups:
        group["share"] = group["cost_usd"] / total * 100 if total else None
    return sorted(groups, key=lambda g: (-g["cost_usd"], -g["requests"]))


def _with(query, **changes) -> str:
    """The page's query string with some parameters set (or removed, for None)."""
    query = query.copy()
    for name, value in changes.items():
        query.pop(name, None)
        if value is not None:
            query[name] = value
    return query.urlencode()


def _budget_outlook(*, team, now) -> dict | None:
    """This month's team budget: spend, the month-end forecast, and the banner it calls for."""
    status = team_budget_status(team=team, now=now)
    if status is None:
        return None
    budget, forecast, percent = status["budget"], status["forecast"], status["percent"]
    first_threshold = min(budget.thresholds, default=80)
    if not budget.amount_usd:
        level, text = "error", "The team's monthly budget is $0."
    elif percent is not None and percent >= 100:
        level, text = "error", f"The team has spent {percent:.0f}% of its monthly budget."
    elif percent is not None and percent >= first_threshold:
        level, text = "warning", f"The team has spent {percent:.0f}% of its monthly budget."
    elif forecast > budget.amount_usd:
        level, text = (
            "warning",
            (
                f"At this month's rate the team will spend ${forecast:,.2f}, over its "
                f"${budget.amount_usd:,.2f} budget."
            ),
        )
    else:
        level, text = None, ""
    if level and budget.hard:
        text += " Calls that would pass the budget are refused."
    return {
        **status,
        "bar": min(percent, Decimal(100)) if percent is not None else 100,
        "level": level,
        "banner": text,
    }


@login_required
def invoices(request, slug):
    """The team's invoices by month: finalized ones with downloads, voided ones beside the
    invoice that corrects them, the month in progress as a draft."""
    team = require_team_page(request, slug, BILLING_READERS)
    return render(
        request,
        "usage/invoices.html",
        {"team": team, "months": invoice_months(team=team, now=timezone.now())},
    )


@login_required
def invoice_detail(request, slug, month):
    """One month's invoice line by line; for a month not closed yet, its draft so far."""
    team = require_team_page(request, slug, BILLING_READERS)
    try:
        month_date = month_of(month)
    except InvoiceError:
        raise Http404("No such month.") from None
    now = timezone.now()
    if number := request.GET.get("number"):
        invoice = invoice_numbered(team=team, month=month_date, number=number)
    else:
        invoice = invoice_for_month(team=team, month=month_date)
        if invoice is None or invoice.status == Invoice.Status.DRAFT:
            invoice = invoice_preview(team=team, month=month_date, now=now)
    if invoice is None:
        raise Http404("No invoice for this month: it had no usage.")
    return render(
        request,
        "usage/invoice.html",
        {
            "team": team,
            "invoice": invoice,
            "lines": list(invoice.lines.order_by("position")),
            "month": month_date,
            "voided": invoices_voided(team=team, month=month_date),
            "in_progress": now
            < next_month_start(datetime.combine(month_date, time.min, tzinfo=UTC)),
        },
    )


EXPLORER_PAGE = 50


@dataclass(frozen=True)
class Sort:
    """One order of the explorer: a column, its direction, and how its keyset value is
    written in the `after=` cursor and read back."""

    label: str
    column: str
    descending: bool
    write: Callable[[Any], str]
    read: Callable[[str], Any]
    # What a missing value (a call with no latency) sorts as.
    missing: Any = None


def _moment_text(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):{KEYSET_FORMAT}}"


def _moment(text: str) -> datetime:
    return datetime.strptime(text, KEYSET_FORMAT).replace(tzinfo=UTC)


# The keyset cursor's time, in UTC and URL-safe (no "+").
KEYSET_FORMAT = "%Y%m%dT%H%M%S.%fZ"
SORTS = {
    "newest": Sort("Newest first", "created_at", True, _moment_text, _moment),
    "oldest": Sort("Oldest first", "created_at", False, _moment_text, _moment),
    "cost": Sort("Costliest first", "cost_usd", True, str, lambda text: _bounded(Decimal(text))),
    "latency": Sort(
        "Slowest first", "latency_ms", True, str, lambda text: int(_bounded(Decimal(text))), -1
    ),
}


@login_required
@report
def usage_explorer(request, slug):
    """The ledger, filtered as the API filters it and sorted, a page at a time by keyset:
    `after=<sort value>,<id>` continues past the last row shown, at any depth, without
    counting or skipping rows."""
    team = require_team_page(request, slug)
    filterset = UsageFilter(request.GET, queryset=usage_rows(team_id=team.id))
    _explorer_pickers(filterset.form, team=team)
    sort_name = request.GET.get("sort", "newest")
    sort = SORTS.get(sort_name) or SORTS["newest"]
    rows, more, after, problem = [], False, "", None
    if filterset.is_valid():
        # A missing value sorts as `missing`, below every real one (the column is unsigned:
        # the coalesced value must not be, or Django finds no row below zero).
        value = (
            F(sort.column)
            if sort.missing is None
            else Coalesce(sort.column, Value(sort.missing), output_field=BigIntegerField())
        )
        direction = "-" if sort.descending else ""
        page = filterset.qs.annotate(sort_value=value).order_by(
            f"{direction}sort_value", f"{direction}id"
        )
        position = _keyset_position(request.GET.get("after", ""), sort)
        if position is not None:
            past, row_id = position
            beyond = "lt" if sort.descending else "gt"
            page = page.filter(
                Q(**{f"sort_value__{beyond}": past})
                | Q(sort_value=past, **{f"id__{beyond}": row_id})
            )
        rows = list(page[: EXPLORER_PAGE + 1])
        more = len(rows) > EXPLORER_PAGE
        rows = rows[:EXPLORER_PAGE]
        if more:
            last = rows[-1]
            after = f"{sort.write(last.sort_value)},{last.id}"
    else:
        problem = "; ".join(
            f"{name}: {' '.join(errors)}" for name, errors in filterset.errors.items()
        )
    query = request.GET.copy()
    query.pop("after", None)
    return render(
        request,
        "usage/explorer.html",
        {
            "team": team,
            "form": filterset.form,
            "rows": rows,
            "more": more,
            "after": after,
            "query": query.urlencode(),
            "export_query": _with(query, sort=None),
            "sorts": [(name, s.label, name == sort_name) for name, s in SORTS.items()],
            "problem": problem,
        },
    )


def _bounded(amount: Decimal) -> Decimal:
    # A cursor is user input: only a value the cost column can hold is a position in it.
    if not amount.is_finite() or abs(amount) >= 10**10 or amount.as_tuple().exponent < -12:
        raise ValueError("not a cost")
    return amount


def _explorer_pickers(form, *, team) -> None:
    """The page picks keys and models from lists and dates from a calendar; the API's
    filters take the same values as text."""
    keys = [("", "Any key")] + [
        (k.prefix, f"{k.prefix} ({k.name})") for k in api_key_list(team=team)
    ]
    form.fields["key"].widget = forms.Select(choices=keys)
    models = usage_models(team_id=team.id)
    form.fields["model"].widget = forms.Select(
        choices=[("", "Any model")] + [(m, m) for m in models]
    )
    for name in ("start", "end"):
        form.fields[name].widget = forms.DateInput(attrs={"type": "date"})
    form.fields["start"].label = "From (UTC day)"
    form.fields["end"].label = "Until (UTC day, not included)"


def _keyset_position(value: str, sort: Sort) -> tuple[Any, int] | None:
    past, _, row_id = value.rpartition(",")
    try:
        return sort.read(past), int(row_id)
    except (ValueError, ArithmeticError):
        return None


@login_required
def usage_call(request, slug, request_id):
    """One call: every attempt of it, with tokens, prices charged, timings and errors."""
    team = require_team_page(request, slug)
    attempts = list(usage_rows(team_id=team.id).filter(request_id=request_id).order_by("attempt"))
    if not attempts:
        raise Http404("No such call.")
    total = sum((a.cost_usd for a in attempts), Decimal(0))
    return render(
        request,
        "usage/call.html",
        {"team": team, "attempts": attempts, "total": total, "request_id": request_id},
    )


ALERTS_PAGE = 25


@login_required
def budgets(request, slug):
    """Team and key budgets, the alert webhook (with a test send), and the alerts sent."""
    team = require_team_page(request, slug, BUDGET_MANAGERS)
    keys = [k for k in api_key_list(team=team) if k.revoked_at is None]
    current = team_budget_status(team=team, now=timezone.now())
    team_form = BudgetForm(
        prefix="team",
        initial={
            "amount_usd": current["budget"].amount_usd.normalize(),
            "hard": "1" if current["budget"].hard else "0",
            "thresholds": ", ".join(map(str, current["budget"].thresholds)),
        }
        if current
        else None,
    )
    key_form = BudgetForm(prefix="key", keys=keys)
    webhook_form = WebhookForm(initial={"alert_webhook_url": team.alert_webhook_url})
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "team-budget":
            team_form = BudgetForm(request.POST, prefix="team")
            if team_form.is_valid():
                budget_set(team=team, **team_form.cleaned_data)
                messages.success(request, f"The team's budget is now {_terms(team_form)}.")
                return redirect("budgets", slug=team.slug)
        elif action == "key-budget":
            key_form = BudgetForm(request.POST, prefix="key", keys=keys)
            if key_form.is_valid():
                fields = dict(key_form.cleaned_data)
                key = next(k for k in keys if k.prefix == fields.pop("key"))
                budget_set(team=team, api_key=key, **fields)
                messages.success(request, f"Key {key.prefix}'s budget is now {_terms(key_form)}.")
                return redirect("budgets", slug=team.slug)
        elif action == "webhook":
            webhook_form = WebhookForm(request.POST)
            if webhook_form.is_valid():
                team_settings_update(team=team, **webhook_form.cleaned_data)
                url = webhook_form.cleaned_data["alert_webhook_url"]
                messages.success(
                    request,
                    "Alerts now also go to the webhook." if url else "The webhook is removed.",
                )
                return redirect("budgets", slug=team.slug)
        elif action == "webhook-test":
            try:
                status = alert_webhook_test(team=team)
            except DeliveryFailed as exc:
                messages.error(request, f"The test message was not delivered: {exc}.")
            else:
                messages.success(request, f"Test message sent; the webhook answered HTTP {status}.")
            return redirect("budgets", slug=team.slug)
        else:
            return HttpResponseBadRequest("Unknown action.")
    now = timezone.now()
    listed = budget_list(team=team, now=now)
    page = Paginator(alert_history(team=team), ALERTS_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "usage/budgets.html",
        {
            "team": team,
            "team_budget": next((b for b in listed if b["budget"].api_key_id is None), None),
            "key_budgets": [b for b in listed if b["budget"].api_key_id is not None],
            "team_form": team_form,
            "key_form": key_form,
            "webhook_form": webhook_form,
            "alerts": page,
            "keys": keys,
        },
    )


def _terms(form) -> str:
    data = form.cleaned_data
    kind = "hard" if data["hard"] else "soft"
    alerts = ", ".join(f"{t}%" for t in data["thresholds"])
    return f"{usd(data['amount_usd'])} a month ({kind}), with alerts at {alerts}"
