"""A team admin's journey through the web UI in a real browser: sign in, read the
overview, find calls and take them away as CSV, issue a key; and every page of the
navigation captured at a desktop and a phone width, fitting the phone without sideways
scrolling. Each step is a small function of the page, run with `browse` (conftest.py);
each part of the journey is a test of its own."""

import re

import pytest
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Page, expect

from accounts.models import ApiKey
from accounts.navigation import TEAM_PAGES
from tests.e2e.browsing import (
    download_csv,
    go_to,
    main_text,
    open_url,
    reload,
    screenshot,
    sideways_overflow,
    signed_in,
)
from tests.page_data import last_month_close, team_in_use
from usage.selectors import usage_rows

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def acme(catalog, team, owner, other_team, outsider):
    """Acme in use, beside Globex in use (whose data must never show up)."""
    now = timezone.now()
    acme = team_in_use(team, tag="acme", now=now)
    globex = team_in_use(other_team, tag="globex", now=now)
    last_month_close([(team, acme), (other_team, globex)], now=now)
    return acme


# --- Steps: functions of the page, run in the browser thread ----------------------------


def see_overview(page: Page, team_name: str, *, showing: str, never: str) -> None:
    expect(page).to_have_url(re.compile(r"/t/[\w-]+/$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text(team_name)
    expect(page.get_by_role("main")).to_contain_text(showing)
    expect(page.get_by_role("main")).not_to_contain_text(never)


def set_field(page: Page, name: str, value: str) -> None:
    """Fill in a field of the page's form by its name, whether a text box or a picker."""
    field = page.locator(f"main form [name='{name}']")
    if field.evaluate("el => el.tagName") == "SELECT":
        field.select_option(value)
    else:
        field.fill(value)


def filter_calls(page: Page, **filters: str) -> None:
    for name, value in filters.items():
        set_field(page, name, value)
    page.get_by_role("button", name="Show calls").click()
    page.wait_for_load_state()


def calls_listed(page: Page) -> int:
    return page.locator("main table tbody tr").count()


def issue_key(page: Page, name: str) -> str:
    """Issue an inference key through its form; returns the secret the page shows."""
    issue = page.get_by_role("button", name="Issue inference key")
    page.locator("form", has=issue).get_by_label("Name", exact=True).fill(name)
    issue.click()
    secret = page.locator(".secret")
    expect(secret).to_be_visible()
    return secret.inner_text().strip()


# --- The journey --------------------------------------------------------------------------


def test_owner_signs_in_through_the_form_and_sees_the_overview(browse, owner, acme):
    browse(signed_in, owner)

    browse(see_overview, "Acme", showing="acme-ft-model", never="globex")


def test_explorer_filtered_by_key_and_model_downloads_exactly_those_calls(
    browse, owner, acme, team
):
    key = acme.keys[0]
    browse(signed_in, owner)
    browse(go_to, "Calls")

    browse(filter_calls, key=key.prefix, model="gpt-4o")
    rows = browse(download_csv, "Download these calls as CSV")

    expected = list(
        usage_rows(team_id=team.id, key_prefix=key.prefix, model="gpt-4o").values_list(
            "request_id", flat=True
        )
    )
    assert len(expected) == 5  # three last month, two this month (one through a route)
    assert [r["request_id"] for r in rows] == expected
    assert {(r["key"], r["model"]) for r in rows} == {(key.prefix, "gpt-4o")}
    assert browse(calls_listed) == len(expected)


def test_reloading_the_keys_page_after_issuing_a_key_issues_no_second_key(
    browse, owner, acme, team
):
    browse(signed_in, owner)
    browse(go_to, "Keys")

    secret = browse(issue_key, "reload-me")
    browse(reload)

    assert ApiKey.objects.filter(team=team, name="reload-me").count() == 1
    text = browse(main_text)
    assert "reload-me" in text
    assert secret not in text  # shown once, never again


# --- Every page, at both widths ------------------------------------------------------------


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name, _l, _r in TEAM_PAGES])
def test_team_page_fits_a_phone(browse, owner, acme, name):
    browse(signed_in, owner)
    browse(open_url, reverse(name, args=["acme"]))

    browse(screenshot, name)

    wide = browse(sideways_overflow)
    assert not wide, "\n".join(wide)


def test_call_page_fits_a_phone(browse, owner, acme):
    browse(signed_in, owner)
    browse(open_url, reverse("usage-call", args=["acme", acme.request_ids[-1]]))

    browse(screenshot, "usage-call")

    wide = browse(sideways_overflow)
    assert not wide, "\n".join(wide)


def test_sign_in_page_fits_a_phone(browse):
    browse(open_url, reverse("login"))

    browse(screenshot, "login")

    wide = browse(sideways_overflow)
    assert not wide, "\n".join(wide)
