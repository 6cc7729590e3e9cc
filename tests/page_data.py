"""A team that has used the gateway, so the web UI's pages have something in every table.

Every name the team's data carries contains its `tag`: a page of another team that shows
the tag anywhere has leaked this team's data. Calls go in through the meter, as the proxy
records them. The routes need the catalog's models (the `catalog` fixture).
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from accounts.models import ApiKey, Team
from accounts.services import api_key_create
from routing.models import Route
from tests.factories import spend
from usage.months import month_start


@dataclass
class TeamInUse:
    tag: str
    keys: list[ApiKey]
    route: Route
    request_ids: list[str] = field(default_factory=list)
    invoice_number: str = ""

    def strings(self) -> list[str]:
        """What must never appear on another team's page: the tag, the key prefixes and
        last month's invoice number."""
        return [self.tag, self.invoice_number, *(key.prefix for key in self.keys)]


def team_in_use(team, *, tag: str, now: datetime, budget_usd: str = "50") -> TeamInUse:
    """Two keys, a team route, calls this month and last through two models, one of them
    only this team's (`<tag>-ft-model`), and a budget. Close last month with
    `last_month_close` once every team's calls are in, as the month-end job does."""
    from routing.selectors import catalog_changed
    from routing.services import route_fields, route_save
    from usage.budgets import budget_set

    keys = [
        api_key_create(team=team, name=f"{tag}-secret-key")[0],
        api_key_create(team=team, name=f"{tag}-batch", allowed_models=["gpt-4o-mini"])[0],
    ]
    fields = route_fields({"name": f"{tag}-route", "targets": ["gpt-4o-mini", "gpt-4o"]})
    route = route_save(team=team, name=fields.pop("name"), fields=fields, actor=f"{tag}-admin")
    # On-commit hooks do not run inside a test's transaction.
    catalog_changed()

    data = TeamInUse(tag=tag, keys=keys, route=route)
    last_month = month_start(month_start(now) - timedelta(days=1))
    for i in range(3):
        when = last_month + timedelta(days=2, hours=i)
        data.request_ids.append(f"req_{tag}_last_{i}")
        spend(team, keys[0], "0.0125", when, data.request_ids[-1], now=when)

    calls = [
        # (key, model, route, end user, USD)
        (keys[0], "gpt-4o", "", f"{tag}-end-user", "0.0031"),
        (keys[0], f"{tag}-ft-model", "", "", "0.0207"),
        (keys[1], "gpt-4o-mini", "", "", "0.0004"),
        (keys[1], "gpt-4o-mini", route.name, f"{tag}-end-user", "0.0005"),
        (keys[0], "gpt-4o", route.name, "", "0.0042"),
        (keys[1], f"{tag}-ft-model", "", "", "0.0150"),
    ]
    for i, (key, model, route_name, end_user, cost) in enumerate(calls):
        when = now - timedelta(minutes=5 * (len(calls) - i))
        data.request_ids.append(f"req_{tag}_{i}")
        spend(
            team,
            key,
            cost,
            when,
            data.request_ids[-1],
            now=when,
            model=model,
            route=route_name,
            end_user=end_user,
        )
    budget_set(team=team, amount_usd=Decimal(budget_usd), now=now)
    return data


def last_month_close(teams: list[tuple[Team, TeamInUse]], *, now: datetime) -> None:
    """Invoice last month for each team, as `closemonth` does after every call is recorded
    (the rollups move forward in time: a call recorded after a close would be late usage)."""
    from usage.invoices import invoice_close

    last_month = month_start(month_start(now) - timedelta(days=1))
    for team, data in teams:
        invoice = invoice_close(team=team, month=last_month.date(), now=now)
        assert invoice is not None and invoice.number, "last month's calls make an invoice"
        data.invoice_number = invoice.number
