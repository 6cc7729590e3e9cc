from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone

from accounts.permissions import BILLING_READERS, require_team_page
from accounts.selectors import teams_for
from usage.filters import UsageFilter
from usage.models import Invoice
from usage.months import month_start, next_month_start
from usage.selectors import recent_alerts, team_budget_status, usage_rows, usage_summary


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
def dashboard(request, slug):
    team = require_team_page(request, slug)
    now = timezone.now()
    start = month_start(now)
    by_model = usage_summary(team_id=team.id, group_by="model", start=start)
    thirty_days_ago = (now - timedelta(days=30)).replace(hour=0, minute=0, second=0, microsecond=0)
    by_day = usage_summary(team_id=team.id, group_by="day", start=thirty_days_ago)
    by_key = usage_summary(team_id=team.id, group_by="key", start=start)
    totals = {
        "requests": sum(g["requests"] for g in by_model),
        "tokens": sum(g["prompt_tokens"] + g["completion_tokens"] for g in by_model),
        "cost_usd": sum((g["cost_usd"] for g in by_model), start=Decimal(0)),
    }
    return render(
        request,
        "usage/dashboard.html",
        {
            "team": team,
            "month": start,
            "totals": totals,
            "by_model": by_model,
            "by_day": by_day,
            "by_key": by_key,
            "recent": usage_rows(team_id=team.id)[:25],
            "budget": team_budget_status(team=team, now=now),
            "alerts": recent_alerts(team=team),
        },
    )


@login_required
def invoices(request, slug):
    team = require_team_page(request, slug, BILLING_READERS)
    now = timezone.now()
    months = []
    start = month_start(now)
    for _ in range(6):
        end = next_month_start(start)
        live = (
            Invoice.objects.filter(team=team, month=start.date())
            .exclude(status=Invoice.Status.VOID)
            .first()
        )
        months.append(
            {
                "month": start,
                "invoice": live,
                "voided": list(
                    Invoice.objects.filter(
                        team=team, month=start.date(), status=Invoice.Status.VOID
                    )
                ),
                "over": now >= end,
                "had_usage": usage_rows(team_id=team.id, start=start, end=end).exists(),
            }
        )
        start = month_start(start - timedelta(days=1))
    return render(request, "usage/invoices.html", {"team": team, "months": months})


EXPLORER_PAGE = 50


@login_required
def usage_explorer(request, slug):
    """The ledger, filtered as the API filters it, newest first, a page at a time by keyset:
    `after=<created_at>,<id>` continues below the last row shown, at any depth."""
    team = require_team_page(request, slug)
    filterset = UsageFilter(request.GET, queryset=usage_rows(team_id=team.id))
    rows, more, after, problem = [], False, "", None
    if filterset.is_valid():
        page = filterset.qs
        position = _keyset_position(request.GET.get("after", ""))
        if position is not None:
            moment, row_id = position
            page = page.filter(Q(created_at__lt=moment) | Q(created_at=moment, id__lt=row_id))
        rows = list(page[: EXPLORER_PAGE + 1])
        more = len(rows) > EXPLORER_PAGE
        rows = rows[:EXPLORER_PAGE]
        if more:
            last = rows[-1]
            after = f"{last.created_at.astimezone(UTC):{KEYSET_FORMAT}},{last.id}"
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
            "problem": problem,
        },
    )


# The keyset cursor's time, in UTC and URL-safe (no "+").
KEYSET_FORMAT = "%Y%m%dT%H%M%S.%fZ"


def _keyset_position(value: str) -> tuple[datetime, int] | None:
    moment, _, row_id = value.rpartition(",")
    try:
        return datetime.strptime(moment, KEYSET_FORMAT).replace(tzinfo=UTC), int(row_id)
    except ValueError:
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
