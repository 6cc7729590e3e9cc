from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone

from accounts.models import Membership
from accounts.selectors import team_access, teams_for
from usage.months import month_start
from usage.selectors import usage_rows, usage_summary


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
    by_day = usage_summary(team_id=team.id, group_by="day", start=now - timedelta(days=30))
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
    })
