"""The overview and budgets pages: figures traced to the ledger, ranges in the URL, banners."""

import json
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.utils import timezone

from accounts.services import api_key_create
from usage.budgets import budget_set
from usage.metering import CallFacts, Outcome, meter_open
from usage.models import Budget
from usage.months import PeriodError, month_projection, period_from_query
from usage.pricing import Price, Tokens
from usage.selectors import usage_health

pytestmark = pytest.mark.django_db
MTOK = Decimal(1_000_000)


def call(
    team,
    key,
    request_id,
    when,
    *,
    model="gpt-4o",
    usd="0",
    status="ok",
    latency=100,
    ttft=None,
    endpoint="chat",
):
    """One call through the meter: `usd` of input tokens at $1/Mtok on `model`."""
    facts = CallFacts(
        request_id=request_id,
        team_id=team.id,
        key_id=key.id,
        endpoint=endpoint,
        requested_model=model,
        created_at=when,
    )
    price = Price(input=Decimal(1), cached_input=Decimal(1), output=Decimal(1))
    tokens = Tokens(prompt=int(Decimal(usd) * MTOK))
    meter = meter_open(facts=facts, worst_case=[(price, tokens)], deadline_s=600, now=when)
    meter.attempt(
        Outcome(
            status=status,
            model=model,
            provider="p",
            price=price,
            tokens=tokens if status == "ok" else Tokens(),
            latency_ms=latency,
            ttft_ms=ttft,
        )
    )
    meter.close(now=when)


NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "query, start, end",
    [
        ({}, date(2026, 11, 1), date(2026, 12, 1)),
        ({"range": "last_month"}, date(2026, 10, 1), date(2026, 11, 1)),
        ({"range": "7d"}, date(2026, 11, 14), date(2026, 11, 21)),
        ({"range": "90d"}, date(2026, 8, 23), date(2026, 11, 21)),
        ({"start": "2026-02-27", "end": "2026-03-02"}, date(2026, 2, 27), date(2026, 3, 3)),
    ],
)
def test_periods_are_whole_utc_days_with_the_end_day_included(query, start, end):
    period = period_from_query(query, now=NOW)
    assert (period.start.date(), period.end.date()) == (start, end)
    assert period.start.tzinfo == UTC and len(period.days) == (end - start).days


@pytest.mark.parametrize(
    "query",
    [
        {"range": "forever"},
        {"start": "2026-02-30", "end": "2026-03-01"},
        {"start": "2026-03-02", "end": "2026-03-01"},
        {"start": "2020-01-01", "end": "2026-01-01"},
        {"start": "2026-01-01"},
        {"start": "\x00", "end": "T25:00"},
    ],
)
def test_unreadable_periods_are_refused_with_a_reason(query):
    with pytest.raises(PeriodError):
        period_from_query(query, now=NOW)


def test_the_forecast_runs_the_month_at_its_rate_so_far():
    # 10 USD in the first 10 days of a 30-day month projects 30 USD.
    assert month_projection(Decimal(10), datetime(2026, 11, 11, tzinfo=UTC)) == Decimal("30")
    # The first hours count as a whole day, not as a wild rate.
    assert month_projection(Decimal(1), datetime(2026, 11, 1, 1, tzinfo=UTC)) == Decimal("30")


def test_health_counts_calls_not_attempts_and_takes_the_answered_calls_latency(team):
    key, _ = api_key_create(team=team, name="app")
    when = timezone.now() - timedelta(minutes=5)
    for n, latency in enumerate([100, 200, 300, 400]):
        call(team, key, f"ok{n}", when, latency=latency, ttft=latency // 2)
    call(team, key, "bad", when, status="upstream_error", latency=9000)
    health = usage_health(team_id=team.id, start=when - timedelta(hours=1), end=timezone.now())
    assert (health["calls"], health["failed"]) == (5, 1)
    assert health["error_rate"] == Decimal(20)
    assert (health["latency_p50_ms"], health["latency_p95_ms"]) == (200, 400)
    assert (health["ttft_p50_ms"], health["ttft_p95_ms"]) == (100, 200)


@pytest.fixture
def traffic(team, other_team):
    """Two keys and two models over the last days, and another team's spend that must not show."""
    app, _ = api_key_create(team=team, name="support-bot")
    batch, _ = api_key_create(team=team, name="nightly-batch")
    theirs, _ = api_key_create(team=other_team, name="globex-app")
    today = timezone.now().replace(hour=1, minute=0, second=0, microsecond=0)
    call(team, app, "a1", today, model="gpt-4o", usd="2.5")
    call(team, batch, "b1", today - timedelta(days=2), model="deepseek-v4-flash", usd="0.75")
    call(team, app, "a2", today - timedelta(days=40), model="gpt-4o", usd="7")
    call(other_team, theirs, "g1", today, model="globex-only-model", usd="99")
    return app, batch


def test_overview_charts_the_range_in_the_url_and_totals_trace_to_the_ledger(
    client, owner, traffic
):
    client.force_login(owner)
    page = client.get("/t/acme/?range=7d").content.decode()
    assert "<svg" in page and "Spend per day by model" in page
    assert "$3.25" in page  # 2.5 + 0.75: the call 40 days ago is outside the range
    assert "globex" not in page.lower() and "$99" not in page
    assert 'aria-current="true">Last 7 days' in page
    wide = client.get("/t/acme/?range=90d").content.decode()
    assert "$10.25" in wide
    by_key = client.get("/t/acme/?range=7d&by=key").content.decode()
    app, batch = traffic
    assert f"{app.prefix} (support-bot)" in by_key and "Spend per day by key" in by_key
    # The chart's figures, per day and series, are in a table beside it.
    assert "2.5000" in by_key and "0.7500" in by_key


def test_overview_top_models_have_their_share(client, owner, traffic):
    client.force_login(owner)
    page = client.get("/t/acme/?range=7d").content.decode()
    gpt = page.index("gpt-4o")
    assert "76.9%" in page[gpt:]  # 2.5 of 3.25
    assert "23.1%" in page


def test_overview_breaks_spend_down_by_endpoint_and_links_to_its_calls(client, owner, traffic):
    app, _ = traffic
    call(team_of(app), app, "r1", timezone.now(), usd="1", endpoint="responses")
    client.force_login(owner)

    page = client.get("/t/acme/?range=7d")

    assert [(g["label"], g["cost_usd"]) for g in page.context["by_endpoint"]] == [
        ("Chat completions", Decimal("3.25")),
        ("Responses", Decimal("1")),
    ]
    html = page.content.decode()
    assert "76.5%" in html and "23.5%" in html
    assert "<h2>By endpoint</h2>" in html and "/t/acme/usage/?endpoint=responses&amp;" in html
    explorer = client.get("/t/acme/usage/?endpoint=responses")
    assert [r.request_id for r in explorer.context["rows"]] == ["r1"]
    assert "<td>Responses</td>" in explorer.content.decode()
    assert client.get("/t/acme/usage/?endpoint=bogus").context["problem"]


def team_of(key):
    return key.team


def test_overview_explains_a_bad_range_instead_of_failing(client, owner):
    client.force_login(owner)
    page = client.get("/t/acme/?start=2026-02-30&end=2026-03-01")
    assert page.status_code == 200
    assert "Give both dates as YYYY-MM-DD" in page.content.decode()


def test_budget_banner_warns_near_a_threshold_and_says_when_over(client, owner, team, traffic):
    client.force_login(owner)
    budget_set(team=team, amount_usd=Decimal("1000"), thresholds=[50, 80, 100])
    assert 'class="banner' not in client.get("/t/acme/").content.decode()
    spent = Budget.objects.get(team=team).counters.get().spent_usd
    assert spent >= Decimal("2.5")
    budget_set(team=team, amount_usd=spent / Decimal("0.9"))  # 90% spent
    near = client.get("/t/acme/").content.decode()
    assert 'class="banner warning"' in near and "spent 90% of its monthly budget" in near
    budget_set(team=team, amount_usd=Decimal("1"))
    over = client.get("/t/acme/").content.decode()
    assert 'class="banner error"' in over and "Calls that would pass the budget are refused" in over


def test_budgets_page_sets_the_team_budget_and_redirects(client, billing, team):
    client.force_login(billing)
    answer = client.post(
        "/t/acme/budgets/",
        {
            "action": "team-budget",
            "team-amount_usd": "120.50",
            "team-hard": "0",
            "team-thresholds": "90, 50%, 75",
        },
    )
    assert answer.status_code == 302
    budget = Budget.objects.get(team=team, api_key=None)
    assert (budget.amount_usd, budget.hard, budget.thresholds) == (
        Decimal("120.5"),
        False,
        [50, 75, 90],
    )
    page = client.get(answer.url).content.decode()
    assert "$120.50 a month (soft), with alerts at 50%, 75%, 90%" in page


@pytest.mark.parametrize(
    "thresholds, amount", [("lots", "10"), ("0, 50", "10"), ("50", "-1"), ("50", "1e400")]
)
def test_budgets_page_explains_bad_terms(client, owner, team, thresholds, amount):
    client.force_login(owner)
    answer = client.post(
        "/t/acme/budgets/",
        {
            "action": "team-budget",
            "team-amount_usd": amount,
            "team-hard": "1",
            "team-thresholds": thresholds,
        },
    )
    assert answer.status_code == 200 and 'class="errorlist' in answer.content.decode()
    assert not Budget.objects.filter(team=team).exists()


def test_a_key_budget_only_for_this_teams_keys(client, owner, team, other_team):
    mine, _ = api_key_create(team=team, name="mine")
    theirs, _ = api_key_create(team=other_team, name="theirs")
    client.force_login(owner)
    form = {"action": "key-budget", "key-amount_usd": "5", "key-hard": "1", "key-thresholds": "80"}
    refused = client.post("/t/acme/budgets/", {**form, "key-key": theirs.prefix})
    assert refused.status_code == 200 and not Budget.objects.filter(api_key=theirs).exists()
    assert client.post("/t/acme/budgets/", {**form, "key-key": mine.prefix}).status_code == 302
    assert Budget.objects.get(api_key=mine).amount_usd == Decimal(5)
    assert "theirs" not in client.get("/t/acme/budgets/").content.decode()


def test_member_cannot_see_or_set_budgets(client, member, team):
    client.force_login(member)
    assert client.get("/t/acme/budgets/").status_code == 404
    form = {
        "action": "team-budget",
        "team-amount_usd": "1",
        "team-hard": "1",
        "team-thresholds": "80",
    }
    assert client.post("/t/acme/budgets/", form).status_code == 404
    assert not Budget.objects.filter(team=team).exists()


class _Hook(BaseHTTPRequestHandler):
    received: list = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook(settings):
    settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE = True  # a receiver on loopback, over http
    _Hook.received, _Hook.status = [], 200
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Hook
    server.shutdown()


def test_webhook_is_saved_and_a_test_message_really_sent(client, owner, team, hook):
    url, handler = hook
    client.force_login(owner)
    assert (
        client.post("/t/acme/budgets/", {"action": "webhook", "alert_webhook_url": url}).status_code
        == 302
    )
    team.refresh_from_db()
    assert team.alert_webhook_url == url
    answer = client.post("/t/acme/budgets/", {"action": "webhook-test"}, follow=True)
    assert "Test message sent; the webhook answered HTTP 200" in answer.content.decode()
    assert len(handler.received) == 1 and "Test from Tollgate" in handler.received[0]["text"]
    handler.status = 500
    failed = client.post("/t/acme/budgets/", {"action": "webhook-test"}, follow=True)
    assert "was not delivered: the webhook answered HTTP 500" in failed.content.decode()


def test_a_bad_webhook_url_is_refused(client, owner, team):
    client.force_login(owner)
    answer = client.post("/t/acme/budgets/", {"action": "webhook", "alert_webhook_url": "ftp://x"})
    assert answer.status_code == 200 and "Enter a valid URL" in answer.content.decode()
    team.refresh_from_db()
    assert team.alert_webhook_url == ""


def test_alert_history_shows_deliveries(client, owner, team, traffic, settings):
    from usage.alerts import budget_alerts_check_all

    budget_set(team=team, amount_usd=Decimal("1"), thresholds=[50])
    budget_alerts_check_all()
    client.force_login(owner)
    page = client.get("/t/acme/budgets/").content.decode()
    assert "50% reached" in page and "email to owner@acme.test" in page


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/hook",  # public, but not https
        "https://127.0.0.1:5432/",
        "https://localhost/",
        "https://10.0.0.8/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/",
        "https://[fd00::1]/",
        "https://0.0.0.0/",
        "https://[::127.0.0.1]/",  # IPv4-compatible
        "https://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        "https://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
        "https://[fec0::1]/",  # site-local
        "https://[::ffff:10.0.0.1]/",  # IPv4-mapped
        "https://2130706433/",  # 127.0.0.1 as one number
        "https://no-such-host.invalid/",
    ],
)
def test_a_webhook_to_a_private_or_plain_address_is_refused(client, admin, team, url):
    client.force_login(admin)
    answer = client.post("/t/acme/budgets/", {"action": "webhook", "alert_webhook_url": url})
    assert answer.status_code == 200 and 'class="errorlist' in answer.content.decode()
    api = client.patch(
        "/api/teams/acme/", {"alert_webhook_url": url}, content_type="application/json"
    )
    assert api.status_code == 400 and "alert_webhook_url" in api.json()
    team.refresh_from_db()
    assert team.alert_webhook_url == ""


def test_a_public_https_webhook_is_accepted(client, owner, team):
    client.force_login(owner)
    url = "https://93.184.216.34/hook"  # an address literal: no DNS needed
    assert (
        client.post("/t/acme/budgets/", {"action": "webhook", "alert_webhook_url": url}).status_code
        == 302
    )
    team.refresh_from_db()
    assert team.alert_webhook_url == url


def test_a_stored_private_webhook_is_checked_again_before_sending(client, owner, team, hook):
    url, handler = hook
    team.alert_webhook_url = url  # saved while private addresses were allowed
    team.save()
    from django.conf import settings

    settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE = False
    client.force_login(owner)
    answer = client.post("/t/acme/budgets/", {"action": "webhook-test"}, follow=True)
    assert (
        "The test message was not delivered: The webhook must be an https:// URL"
        in answer.content.decode()
    )
    assert handler.received == []


def test_a_zero_budget_reads_as_spent_not_as_a_forecast(client, owner, team, traffic):
    budget_set(team=team, amount_usd=Decimal(0))
    client.force_login(owner)
    page = client.get("/t/acme/").content.decode()
    assert 'class="banner error"' in page and "monthly budget is $0." in page
    assert "will spend" not in page and "(%)" not in page
    assert 'aria-valuenow="100"' in page


def test_a_lowered_budget_fires_the_alerts_it_passes_at_once(
    client, owner, team, traffic, django_capture_on_commit_callbacks, monkeypatch
):
    from portal.celery import app
    from usage.models import AlertEvent

    monkeypatch.setitem(app.conf, "task_always_eager", True)  # the check runs here, no worker

    client.force_login(owner)
    form = {
        "action": "team-budget",
        "team-amount_usd": "1",
        "team-hard": "0",
        "team-thresholds": "50, 100",
    }
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/t/acme/budgets/", form).status_code == 302
    fired = AlertEvent.objects.filter(budget__team=team).values_list("threshold", flat=True)
    assert sorted(fired) == [50, 100]
