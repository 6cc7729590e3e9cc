from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone

from accounts.models import Membership
from accounts.selectors import team_access, teams_for
from usage.months import month_start, next_month_start
from usage.selectors import recent_alerts, team_budget_status, usage_rows, usage_summary


def team_for_page(request, slug, roles=tuple(Membership.Role.values)):
    access = team_access(actor=request.user, slug=slug)
    if access is None or access[1] not in roles:
        raise Http404("No such team.")
    return access


@login_required
def home(request):
    teams = list(teams_for(actor=request.user))
    if len(teams) == 1:
        return redirect("dashboard", slug=teams[0].slug)
    return render(request, "usage/teams.html", {"teams": teams})


@login_required
def dashboard(request, slug):
    team, role = team_for_page(request, slug)
    now = timezone.now()
    start = month_start(now)
    by_model = usage_summary(team_id=team.id, group_by="model", start=start)
    thirty_days_ago = (now - timedelta(days=30)).replace(hour=0, minute=0, second=0, microsecond=0)
    by_day = usage_summary(team_id=team.id, group_by="day", start=thirty_days_ago)
    by_key = usage_summary(team_id=team.id, group_by="key", start=start)
    totals = {
        "requests": sum(g["requests"] for g in by_model),
        "tokens": sum(g["prompt_tokens"] + g["completion_tokens"] for g in by_model),
        "cost_usd": sum((g["cost_usd"] for g in by_model), start=0),
    }
    return render(request, "usage/dashboard.html", {
        "team": team,
        "role": role,
        "month": start,
        "totals": totals,
        "by_model": by_model,
        "by_day": by_day,
        "by_key": by_key,
        "recent": usage_rows(team_id=team.id)[:25],
        "budget": team_budget_status(team=team, now=now),
        "alerts": recent_alerts(team=team),
    })


@login_required
def invoices(request, slug):
    from accounts.permissions import BILLING_READERS
    from usage.models import Invoice

    team, role = team_for_page(request, slug, roles=BILLING_READERS)
    now = timezone.now()
    months = []
    start = month_start(now)
    for _ in range(6):
        end = next_month_start(start)
        live = Invoice.objects.filter(team=team, month=start.date()).exclude(status=Invoice.Status.VOID).first()
        months.append({
            "month": start,
            "invoice": live,
            "voided": list(Invoice.objects.filter(team=team, month=start.date(), status=Invoice.Status.VOID)),
            "over": now >= end,
            "had_usage": usage_rows(team_id=team.id, start=start, end=end).exists(),
        })
        start = month_start(start - timedelta(days=1))
    return render(request, "usage/invoices.html", {"team": team, "role": role, "months": months})
