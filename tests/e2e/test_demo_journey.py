"""The issue's "done when", in a real browser, on `make run`'s demo: a new admin signs in,
sees ninety days charted, filters the calls to one key and model and downloads that CSV,
issues and revokes a key, sets a budget, finds what last month would have cost on another
model, invites a billing member and switches team. Every page met on the way is captured
at 1280 and 390 px.

The demo team (ninety days of traffic, through the meter) takes seconds to seed, so it is
seeded once for this module, committed, and flushed after its last test. The tests share
it: each changes only what it names (its own key, the team budget, one invitation), so
they pass alone, in any order or all together. They are marked `django_db` without
`transaction=True`: what a test's thread reads sits in a transaction rolled back after it,
while the seed (committed before) and what the portal writes (committed by its own
connections, and seen here under PostgreSQL's READ COMMITTED) stay for the next test; a
transactional test would flush the seed after the first.

Figures on the pages are checked against the ledger's reads (usage.selectors) in the
test's thread; steps, functions of the page, run in the browser's (conftest.py)."""

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from io import StringIO

import httpx2
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Page, expect

from accounts.models import ApiKey, Membership, Team
from accounts.navigation import TEAM_PAGES
from routing.selectors import catalog_changed, catalog_snapshot
from tests.e2e.browsing import (
    download_csv,
    go_to,
    main_text,
    navigation,
    open_url,
    reload,
    screenshot,
    sideways_overflow,
    signed_in,
)
from usage.months import month_start
from usage.pricing import Tokens, cost
from usage.selectors import budget_list, team_budget_status, usage_rows, usage_summary
from usage.templatetags.money import usd

pytestmark = [pytest.mark.browser, pytest.mark.django_db]

Role = Membership.Role
FOUR_PLACES = Decimal("0.0001")  # the overview's tables print USD to 4 places


@dataclass(frozen=True)
class Demo:
    user: object
    password: str  # as `manage.py demo` prints it
    team: Team
    labs: Team  # where the demo user is a billing member


@pytest.fixture(scope="module")
def demo(django_db_setup, django_db_blocker):
    """`make run`'s demo, seeded once and committed so the live portal sees it; the
    database is flushed after the module's last test, as a transactional test's is."""
    with django_db_blocker.unblock():
        # The demo refuses to run in production; the standing hasher of the tests is fast.
        with override_settings(
            DEBUG=True, PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]
        ):
            call_command(
                "loadcatalog", "catalog/default.toml", "catalog/offline.toml", stdout=StringIO()
            )
            out = StringIO()
            call_command("demo", stdout=out, stderr=StringIO())
        found = re.search(r"sign in as (\S+) / (\S+)", out.getvalue())
        assert found, out.getvalue()
        email, password = found.groups()
        yield Demo(
            user=get_user_model().objects.get(username=email),
            password=password,
            team=Team.objects.get(slug="demo"),
            labs=Team.objects.get(slug="demo-labs"),
        )
        call_command("flush", interactive=False, verbosity=0)
        catalog_changed()


def pages_of(role: str) -> list[str]:
    """The navigation's labels a role sees, in order (accounts.navigation)."""
    return [label for _name, label, roles in TEAM_PAGES if role in roles]


def utc_today() -> date:
    return timezone.now().astimezone(UTC).date()


# --- Steps: functions of the page, run in the browser thread ----------------------------


def open_team(page: Page, name: str) -> None:
    """From the list of the user's teams (where a member of two lands), open one."""
    page.get_by_role("main").get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"{name}: overview")


def choose(page: Page, group: str, label: str) -> None:
    """Follow a link of a group of presets (the overview's date ranges, the savings periods)."""
    link = page.get_by_role("navigation", name=group).get_by_role("link", name=label, exact=True)
    link.click()
    expect(link).to_have_attribute("aria-current", "true")


def read_overview(page: Page) -> dict:
    """The overview's chart and figures: each bar's day and height, the chart's per-day
    figures table (opened as a reader opens it), the top models table and the spend card."""
    page.get_by_text("The chart's figures (USD per day)").click()
    figures = page.locator("details table")
    expect(figures).to_be_visible()
    return page.evaluate(
        """() => {
      const cells = row => [...row.querySelectorAll("th, td")].map(c => c.innerText.trim());
      const bars = [...document.querySelectorAll("figure.chart svg g.bar")].map(bar => ({
        day: bar.querySelector("desc.x_label").textContent,
        height: parseFloat(bar.querySelector("rect").getAttribute("height")),
      }));
      const table = document.querySelector("details table");
      const models = [...document.querySelectorAll("main h2")]
        .find(h => h.textContent === "Top models").nextElementSibling.querySelector("table");
      return {
        bars,
        series: cells(table.querySelector("thead tr")).slice(1),
        days: [...table.querySelectorAll("tbody tr")].map(cells),
        models: [...models.querySelectorAll("tbody tr")].map(cells),
        spend: document.querySelector(".card .figure").innerText.trim(),
      };
    }"""
    )


def filter_calls(page: Page, *, key: str, model: str) -> None:
    """Pick a key and a model in the explorer's lists, by the names they show, and send."""
    form = page.get_by_role("form", name="Filter the calls")
    form.get_by_label("Key prefix").select_option(label=key)
    form.get_by_label("Serving model").select_option(label=model)
    form.get_by_role("button", name="Show calls").click()
    expect(page).to_have_url(re.compile(r"\?.*model="))


def calls_listed(page: Page) -> list[list[str]]:
    """The explorer's rows as (key, served by) pairs."""
    return page.evaluate(
        """() => [...document.querySelectorAll("main table tbody tr")].map(
          row => [row.cells[1].innerText.trim(), row.cells[3].innerText.trim()])"""
    )


def issue_inference_key(page: Page, *, name: str, model: str, budget_usd: str) -> dict:
    """Issue an inference key allowed one model, with a budget of its own, through the keys
    page's form; copy its secret with the page's button. Returns what the page showed."""
    form = page.locator("form", has=page.get_by_role("button", name="Issue inference key"))
    form.get_by_label("Name", exact=True).fill(name)
    form.get_by_role("group", name="Models").get_by_label(model, exact=True).check()
    form.get_by_label("Monthly budget (USD)").fill(budget_usd)
    form.get_by_label("Refuse calls (hard)").check()
    form.get_by_role("button", name="Issue inference key").click()
    secret = page.locator(".secret")
    expect(secret).to_be_visible()
    shown = secret.inner_text().strip()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    # Found by what it copies: once clicked, the button's name is "Copied".
    copy = page.locator("main button[data-copy]")
    expect(copy).to_have_text(re.compile(r"^Copy the secret of tgk_"))
    copy.click()
    expect(copy).to_have_text("Copied")
    return {
        "secret": shown,
        "copied": page.evaluate("navigator.clipboard.readText()"),
        "times_in_page": page.content().count(shown),
    }


def secrets_shown(page: Page) -> int:
    return page.locator(".secret").count()


def ask_to_revoke(page: Page, prefix: str) -> None:
    page.get_by_role("link", name=f"Revoke {prefix}", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Revoke key {prefix}")


def confirm_revoke(page: Page, prefix: str, name: str) -> str:
    page.get_by_role("button", name=f"Revoke {prefix} ({name})").click()
    said = page.get_by_role("status")
    expect(said).to_contain_text("is revoked")
    return said.inner_text()


def set_team_budget(page: Page, *, amount_usd: str, when_reached: str, alerts_at: str) -> str:
    form = page.get_by_role("form", name="Set the team budget")
    form.get_by_label("Monthly budget (USD)").fill(amount_usd)
    form.get_by_label("When it is reached").select_option(label=when_reached)
    form.get_by_label("Alert at (% of budget)").fill(alerts_at)
    form.get_by_role("button", name=re.compile(r"the team budget$")).click()
    said = page.get_by_role("status")
    expect(said).to_contain_text("The team's budget is now")
    return said.inner_text()


def budget_banner(page: Page) -> dict:
    banner = page.get_by_role("alert")
    expect(banner).to_be_visible()
    return {"classes": banner.get_attribute("class"), "text": banner.inner_text().strip()}


def savings_row(page: Page, *, used: str, other: str) -> dict[str, str]:
    """The cells of `other`'s row in the table of what `used`'s tokens would cost elsewhere,
    by column heading."""
    table = page.get_by_role("table", name=f"From {used} to other models")
    expect(table).to_be_visible()
    headings = table.locator("thead th").all_inner_texts()
    row = table.locator("tbody tr").filter(
        has=page.get_by_role("rowheader", name=re.compile(rf"^{re.escape(other)}\b"))
    )
    cells = row.locator("th, td").all_inner_texts()
    return dict(zip(headings, (c.strip() for c in cells), strict=True))


def invite(page: Page, *, email: str, role_label: str) -> str:
    form = page.locator("form", has=page.get_by_role("button", name="Send invitation"))
    form.get_by_label("Email address").fill(email)
    form.get_by_role("group", name="Role").get_by_label(role_label).check()
    form.get_by_role("button", name="Send invitation").click()
    said = page.get_by_role("status")
    expect(said).to_contain_text(f"Invitation sent to {email}")
    return said.inner_text()


def create_account(page: Page, *, password: str, team_name: str) -> str:
    """On an invitation's page, choose a password and join; returns the welcome."""
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("The same password again").fill(password)
    page.get_by_role("button", name=f"Create my account and join {team_name}").click()
    said = page.get_by_role("status")
    expect(said).to_contain_text(f"Welcome to {team_name}")
    return said.inner_text()


def switch_team(page: Page, name: str) -> None:
    """Pick another team in the header's switcher."""
    page.get_by_role("banner").get_by_label("Team", exact=True).select_option(label=name)
    page.get_by_role("button", name="Switch team").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"{name}: overview")


def who(page: Page) -> str:
    return page.locator("header .who > span").inner_text()


# --- The journey --------------------------------------------------------------------------


def test_overview_charts_ninety_days_with_the_ledgers_figures(browse, demo):
    browse(signed_in, demo.user, demo.password)
    browse(open_team, "Demo team")
    browse(choose, "Date range", "Last 90 days")

    shown = browse(read_overview)
    browse(screenshot, "journey-overview-90-days")

    today = utc_today()
    days = [today - timedelta(days=back) for back in range(89, -1, -1)]
    start = datetime.combine(days[0], time.min, tzinfo=UTC)
    end = datetime.combine(today + timedelta(days=1), time.min, tzinfo=UTC)
    # A bar a day for each series; the demo spends every day (today's calls may not have
    # started yet, in the small hours UTC).
    labels = [d.strftime("%b %-d") for d in days]
    assert list(dict.fromkeys(b["day"] for b in shown["bars"])) == labels
    assert set(labels[:-1]) <= {b["day"] for b in shown["bars"] if b["height"] > 0}
    # The figures table: one row a day, each series' spend as the ledger has it.
    by_day_model: dict[tuple[str, str], Decimal] = {}
    for g in usage_summary(team_id=demo.team.id, group_by=("day", "model"), start=start, end=end):
        by_day_model[(g["day"].isoformat(), g["model"])] = g["cost_usd"]
    charted = [name for name in shown["series"] if name != "Other"]
    assert [row[0] for row in shown["days"]] == [d.isoformat() for d in days]
    for day, *values in shown["days"]:
        expected = [by_day_model.get((day, name), Decimal(0)) for name in charted]
        if "Other" in shown["series"]:
            expected.append(
                sum((v for (d, m), v in by_day_model.items() if d == day and m not in charted), 0)
            )
        assert [Decimal(v) for v in values] == [
            Decimal(e).quantize(FOUR_PLACES, ROUND_HALF_UP) for e in expected
        ], day
    # The top models and the spend card, from the same read.
    models = usage_summary(team_id=demo.team.id, group_by="model", start=start, end=end)
    assert {
        row[0]: [int(row[1].replace(",", "")), Decimal(row[4].replace(",", ""))]
        for row in shown["models"]
    } == {
        g["model"]: [g["requests"], g["cost_usd"].quantize(FOUR_PLACES, ROUND_HALF_UP)]
        for g in models
    }
    assert shown["spend"] == usd(sum((g["cost_usd"] for g in models), Decimal(0)))


def test_calls_filtered_to_one_key_and_model_download_exactly_those_calls(browse, demo):
    key = ApiKey.objects.get(team=demo.team, name="[demo] support-bot")
    browse(signed_in, demo.user, demo.password)
    browse(open_team, "Demo team")
    browse(go_to, "Calls")

    browse(filter_calls, key=f"{key.prefix} ({key.name})", model="gpt-4o-mini")
    listed = browse(calls_listed)
    browse(screenshot, "journey-calls-filtered")
    rows = browse(download_csv, "Download these calls as CSV")

    ledger = usage_rows(team_id=demo.team.id, key_prefix=key.prefix, model="gpt-4o-mini")
    expected = [
        (r.request_id, str(r.attempt), key.prefix, r.model, f"{r.cost_usd:f}") for r in ledger
    ]
    assert len(expected) > 100  # ninety days of a support bot, more than one page
    assert [
        (r["request_id"], r["attempt"], r["key"], r["model"], r["cost_usd"]) for r in rows
    ] == expected
    assert listed == [[key.prefix, "gpt-4o-mini"]] * 50  # the first page of them


def test_a_new_key_shows_its_secret_once_and_stops_working_when_revoked(browse, demo, live_portal):
    browse(signed_in, demo.user, demo.password)
    browse(open_team, "Demo team")
    browse(go_to, "Keys")

    shown = browse(issue_inference_key, name="journey", model="gpt-4o-mini", budget_usd="5")
    browse(screenshot, "journey-key-issued")

    key = ApiKey.objects.get(team=demo.team, name="journey")
    secret = shown["secret"]
    assert secret.startswith(key.prefix)
    assert shown["copied"] == secret
    assert shown["times_in_page"] == 1
    assert key.allowed_models == ["gpt-4o-mini"]
    [budget] = [
        b["budget"]
        for b in budget_list(team=demo.team, now=timezone.now())
        if b["budget"].api_key_id == key.id
    ]
    assert (budget.amount_usd, budget.hard) == (Decimal(5), True)
    v1_models = f"{live_portal.url}/v1/models"
    bearer = {"Authorization": f"Bearer {secret}"}
    answer = httpx2.get(v1_models, headers=bearer, timeout=10)
    assert answer.status_code == 200
    assert [m["id"] for m in answer.json()["data"]] == ["gpt-4o-mini"]

    browse(reload)
    assert browse(secrets_shown) == 0
    assert secret not in browse(main_text)
    assert ApiKey.objects.filter(team=demo.team, name="journey").count() == 1

    browse(ask_to_revoke, key.prefix)
    browse(screenshot, "journey-key-revoke")
    said = browse(confirm_revoke, key.prefix, "journey")
    browse(screenshot, "journey-key-revoked")

    assert said == f"Key {key.prefix} (journey) is revoked; calls with it now get 401."
    key.refresh_from_db()
    assert key.revoked_at is not None
    answer = httpx2.get(v1_models, headers=bearer, timeout=10)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"


def test_a_team_budget_below_this_months_spend_raises_the_overviews_banner(browse, demo):
    spent = Decimal(team_budget_status(team=demo.team, now=timezone.now())["spent"])
    if spent < Decimal("0.02"):
        pytest.skip("the demo has no spend this month yet (the first hour of a month, UTC)")
    # Half this month's spend: the team is well past it (the demo's budget is ~85% spent).
    amount = (spent / 2).quantize(Decimal("0.01"), ROUND_DOWN)
    browse(signed_in, demo.user, demo.password)
    browse(open_team, "Demo team")
    browse(go_to, "Budgets")

    said = browse(
        set_team_budget,
        amount_usd=str(amount),
        when_reached="Only alert (soft)",
        alerts_at="50, 80, 100",
    )
    browse(screenshot, "journey-budget-set")
    browse(go_to, "Overview")
    banner = browse(budget_banner)
    browse(screenshot, "journey-overview-over-budget")

    assert said == (
        f"The team's budget is now {usd(amount)} a month (soft), with alerts at 50%, 80%, 100%."
    )
    status = team_budget_status(team=demo.team, now=timezone.now())
    assert (status["budget"].amount_usd, status["budget"].hard) == (amount, False)
    assert status["percent"] >= 100
    assert "error" in banner["classes"].split()
    assert banner["text"] == f"The team has spent {status['percent']:.0f}% of its monthly budget."


def test_savings_prices_last_months_tokens_on_another_model(browse, demo):
    this_month = month_start(timezone.now())
    last_month = month_start(this_month - timedelta(days=1))
    used = {
        g["model"]: g
        for g in usage_summary(
            team_id=demo.team.id, group_by="model", start=last_month, end=this_month
        )
    }["gpt-4o-mini"]
    models = catalog_snapshot().models
    other = models["claude-3.5-sonnet"]
    tokens = Tokens(
        prompt=used["prompt_tokens"],
        cached=used["cached_tokens"],
        completion=used["completion_tokens"],
    )
    assert other.prices is not None
    would = cost(other.prices, tokens)
    browse(signed_in, demo.user, demo.password)
    browse(open_team, "Demo team")
    browse(go_to, "Savings")

    browse(choose, "Period", "Last month")
    row = browse(savings_row, used=models["gpt-4o-mini"].display_name, other=other.display_name)
    browse(screenshot, "journey-savings-last-month")

    assert row["Actual"] == usd(used["cost_usd"])
    assert row["Would cost"] == usd(would)
    assert would > used["cost_usd"]  # Claude 3.5 Sonnet lists at 20-25x GPT-4o-mini's prices


def test_an_invited_billing_member_joins_and_sees_invoices_but_not_keys(
    browse, browse_elsewhere, demo, mailoutbox
):
    browse(signed_in, demo.user, demo.password)
    browse(open_team, "Demo team")
    browse(go_to, "People")

    browse(invite, email="finance@demo.local", role_label="Billing: usage, budgets and invoices")
    browse(screenshot, "journey-people-invited")
    [email] = [m for m in mailoutbox if m.to == ["finance@demo.local"]]
    found = re.search(r"^(http://\S+/invitations/\S+/)$", email.body, re.MULTILINE)
    assert found, email.body

    browse_elsewhere(open_url, found.group(1))
    browse_elsewhere(screenshot, "journey-invitation")
    browse_elsewhere(create_account, password="quarterly-ledger-lantern", team_name="Demo team")
    browse_elsewhere(screenshot, "journey-billing-member-overview")

    finance = get_user_model().objects.get(username="finance@demo.local")
    assert finance.memberships.get().team == demo.team
    assert finance.memberships.get().role == Role.BILLING
    seen = browse_elsewhere(navigation)
    assert "Invoices" in seen and "Keys" not in seen
    assert seen == pages_of(Role.BILLING)
    assert browse_elsewhere(who) == "finance@demo.local (billing)"


def test_the_team_switcher_moves_to_demo_labs_where_the_user_is_billing(browse, demo):
    browse(signed_in, demo.user, demo.password)
    browse(open_team, "Demo team")
    assert browse(navigation) == pages_of(Role.OWNER)

    browse(switch_team, "Demo labs")
    browse(screenshot, "journey-switched-to-demo-labs")

    seen = browse(navigation)
    assert "Invoices" in seen and "Keys" not in seen
    assert seen == pages_of(Role.BILLING)
    assert browse(who) == f"{demo.user.get_username()} (billing)"


def test_demo_team_pages_fit_a_phone(browse, demo):
    """Every page with ninety days of the demo's traffic, signed in as `make run` says."""
    browse(signed_in, demo.user, demo.password)

    wide = {}
    for name, _label, _roles in TEAM_PAGES:
        browse(open_url, reverse(name, args=["demo"]))
        browse(screenshot, f"demo-{name}")
        wide[name] = browse(sideways_overflow)

    assert {name: found for name, found in wide.items() if found} == {}
