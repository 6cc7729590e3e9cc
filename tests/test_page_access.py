"""Every team page of the web UI against the standing cast, another team's data, and a
reader of the HTML. The pages come from the navigation's own list (TEAM_PAGES), so a page
added there is covered here without touching this file."""

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey, Membership
from accounts.navigation import TEAM_PAGES
from tests.html_tree import Element, parse
from tests.page_data import last_month_close, team_in_use

pytestmark = pytest.mark.django_db

Role = Membership.Role
CAST = ["owner", "admin", "billing", "member", "outsider", "anonymous"]
ROLE_OF = {
    "owner": Role.OWNER,
    "admin": Role.ADMIN,
    "billing": Role.BILLING,
    "member": Role.MEMBER,
}
PAGES = [pytest.param(name, roles, id=name) for name, _label, roles in TEAM_PAGES]
PAGE_NAMES = [pytest.param(name, id=name) for name, _label, _roles in TEAM_PAGES]
# Who may not open each page: (page, member of the cast).
REFUSED = [
    pytest.param(name, who, id=f"{name}-{who}")
    for name, _label, roles in TEAM_PAGES
    for who in CAST
    if ROLE_OF.get(who) not in roles
]

# What only Django's debug pages say.
DEBUG_PAGE_MARKERS = [
    "DEBUG = True",
    "Django tried these URL patterns",
    "Traceback",
    "Request Method:",
    "technical_500",
]


def signed_in_as(client, request, who):
    if who != "anonymous":
        client.force_login(request.getfixturevalue(who))
    return client


# --- Who may open what ---------------------------------------------------------------


@pytest.mark.parametrize("who", CAST)
@pytest.mark.parametrize(("name", "roles"), PAGES)
def test_page_answers_each_member_of_the_cast_by_role(client, request, team, name, roles, who):
    url = reverse(name, args=[team.slug])
    signed_in_as(client, request, who)

    response = client.get(url)

    if who == "anonymous":
        assert response.status_code == 302
        assert response["Location"] == f"{reverse('login')}?next={url}"
    elif who in ROLE_OF and ROLE_OF[who] in roles:
        assert response.status_code == 200
    else:
        # Outsiders and roles without the page see no difference from a team that
        # does not exist.
        assert response.status_code == 404


@pytest.mark.parametrize("kind", [ApiKey.Kind.INFERENCE, ApiKey.Kind.MANAGEMENT])
@pytest.mark.parametrize("name", PAGE_NAMES)
def test_an_api_key_opens_no_page(client, team, name, kind):
    """Keys are for /v1 and /api: a page asked with one is asked by nobody signed in."""
    from accounts.services import api_key_create

    _, secret = api_key_create(team=team, name="app", kind=kind)
    url = reverse(name, args=[team.slug])

    response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {secret}")

    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


@pytest.mark.parametrize(("name", "who"), REFUSED)
def test_page_refuses_a_post_from_whoever_may_not_open_it(client, request, team, name, who):
    url = reverse(name, args=[team.slug])
    signed_in_as(client, request, who)
    keys_before = ApiKey.objects.count()

    response = client.post(url, {"name": "sneaky", "email": "sneaky@example.com"})

    assert response.status_code == (302 if who == "anonymous" else 404)
    assert ApiKey.objects.count() == keys_before


# --- Nothing of another team ---------------------------------------------------------


@pytest.fixture
def two_teams_in_use(catalog, team, other_team, owner, outsider):
    """Acme and Globex, both with keys, a route, calls, an invoice and a budget; Globex's
    budget is an amount ($7,777) that appears nowhere else."""
    now = timezone.now()
    acme = team_in_use(team, tag="acme", now=now)
    globex = team_in_use(other_team, tag="globex", now=now, budget_usd="7777")
    last_month_close([(team, acme), (other_team, globex)], now=now)
    return acme, globex


@pytest.mark.parametrize("name", PAGE_NAMES)
def test_page_shows_nothing_of_another_team(client, owner, two_teams_in_use, name):
    acme, globex = two_teams_in_use
    client.force_login(owner)

    response = client.get(reverse(name, args=["acme"]))

    assert response.status_code == 200
    html = response.content.decode()
    for leak in [*globex.strings(), "7,777", "7777"]:
        assert leak.lower() not in html.lower(), f"{name} shows Globex's {leak!r}"


def test_another_teams_call_and_key_are_not_found_under_this_team(client, owner, two_teams_in_use):
    acme, globex = two_teams_in_use
    client.force_login(owner)
    their_key = globex.keys[0]

    call = client.get(reverse("usage-call", args=["acme", globex.request_ids[0]]))
    filtered = client.get(reverse("usage-explorer", args=["acme"]), {"key": their_key.prefix})
    csv = client.get(reverse("api-usage-export", args=["acme"]), {"key": their_key.prefix})
    revoke = client.post(reverse("key-revoke", args=["acme", their_key.prefix]))

    assert call.status_code == 404
    assert "No calls match" in filtered.content.decode()
    assert b"".join(csv.streaming_content).decode().strip().count("\n") == 0  # the header only
    assert revoke.status_code == 404
    their_key.refresh_from_db()
    assert their_key.revoked_at is None


# --- What a reader of the HTML (and a screen reader) needs ------------------------------


def structure_problems(page: Element, *, navigation: bool = True) -> list[str]:
    """What keeps a page from being read well: headings, landmarks, table headers, labels."""
    problems = []
    headings = list(page.iter("h1"))
    if len(headings) != 1:
        problems.append(f"{len(headings)} <h1> elements, not one")
    if navigation and not any(True for _ in page.iter("nav")):
        problems.append("no <nav>")
    for table in page.iter("table"):
        cells = list(table.iter("th"))
        headers = ", ".join(th.text() for th in cells[:4])
        if any(th.inside("thead") and th.attrs.get("scope") != "col" for th in cells):
            problems.append(f'table ({headers}, …): a <th> in <thead> without scope="col"')
        if any(not th.inside("thead") and not th.attrs.get("scope") for th in cells):
            # A header row outside <thead> would escape the check above; a row's
            # header says so with scope="row".
            problems.append(f"table ({headers}, …): header cells outside <thead> without a scope")
    labelled = {label.attrs.get("for") for label in page.iter("label") if label.attrs.get("for")}
    for field in page.iter("input", "select", "textarea"):
        kind = (field.attrs.get("type") or "").lower()
        if kind in {"hidden", "submit", "button", "reset", "image"}:
            continue  # not shown, or named by its own value
        named = (
            field.inside("label")
            or (field.attrs.get("id") and field.attrs["id"] in labelled)
            or (field.attrs.get("aria-label") or "").strip()
            or field.attrs.get("aria-labelledby")
        )
        if not named:
            problems.append(f"{field.describe()} has no label")
    return problems


@pytest.mark.parametrize("name", PAGE_NAMES)
def test_page_has_one_heading_a_nav_table_headers_and_labels(client, owner, two_teams_in_use, name):
    client.force_login(owner)

    response = client.get(reverse(name, args=["acme"]))

    assert response.status_code == 200
    problems = structure_problems(parse(response.content.decode()))
    assert not problems, "\n".join(problems)


def test_call_page_has_one_heading_a_nav_table_headers_and_labels(client, owner, two_teams_in_use):
    acme, _ = two_teams_in_use
    client.force_login(owner)

    response = client.get(reverse("usage-call", args=["acme", acme.request_ids[-1]]))

    assert response.status_code == 200
    problems = structure_problems(parse(response.content.decode()))
    assert not problems, "\n".join(problems)


def test_sign_in_page_has_one_heading_and_labels(client):
    response = client.get(reverse("login"))

    problems = structure_problems(parse(response.content.decode()), navigation=False)
    assert not problems, "\n".join(problems)


# --- Error pages with DEBUG off ------------------------------------------------------


def test_a_missing_page_never_shows_the_debug_page(client, settings, owner):
    settings.DEBUG = False
    client.force_login(owner)

    for url in ["/t/acme/no-such-page/", "/t/no-such-team/", "/no/such/path/"]:
        response = client.get(url)

        assert response.status_code == 404
        html = response.content.decode()
        assert not [m for m in DEBUG_PAGE_MARKERS if m in html], url
        assert "Not found" in html and "Go to your team's overview" in html


@pytest.mark.urls("tests.urls_failing")
def test_an_error_never_shows_the_debug_page_or_the_error(settings, owner):
    settings.DEBUG = False
    client = Client(raise_request_exception=False)
    client.force_login(owner)

    response = client.get("/t/acme/fail/")

    assert response.status_code == 500
    html = response.content.decode()
    assert not [m for m in DEBUG_PAGE_MARKERS if m in html]
    assert "a bug in a view" not in html
    assert "Something went wrong" in html


@pytest.mark.parametrize(
    "url",
    [
        "/t/acme/usage/a%00b/",
        "/t/acme/keys/%00/revoke/",
        "/t/acme/routes/%00/edit/",
        "/t/acme/routes/new/?from=%00",
        "/t/acme/invoices/2026-10/?number=%00",
        "/api/teams/acme/invoices/2026-10/?number=%00",
        "/api/teams/acme/budget/?key=%00",
        "/t/acme/usage/?model=%00",
        "/t/acme/?start=9999-12-30&end=9999-12-31",
        "/api/teams/acme/usage/summary/?start=0001-01-01T00:00:00%2B05:00",
        "/api/teams/acme/usage/summary/?end=9999-12-31T23:59:59-05:00",
        "/api/teams/acme/usage/?start=0001-01-01T00:00:00%2B05:00",
    ],
)
def test_hostile_paths_and_parameters_get_a_clear_answer_not_a_500(client, owner, url):
    client.force_login(owner)
    answer = client.get(url)
    assert answer.status_code in (200, 400, 404), answer.status_code
    if url.startswith("/api/") and answer.status_code == 400:
        assert answer.json()
