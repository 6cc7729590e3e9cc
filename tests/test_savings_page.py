"""Savings: the team's own tokens priced at other models' current prices, exactly.

Every expected figure below is worked by hand from the default catalog's
prices (USD per 1M tokens), so a wrong formula, a lost cached-token count or
a float cannot pass.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from routing.savings import TokenTotals, cost_of_totals, savings_period, savings_report
from routing.selectors import catalog_changed, catalog_snapshot
from routing.services import catalog_load_data
from tests.pages import row_of, sign_in, tables, text
from usage.models import UsageRecord
from usage.pricing import MAX_TOKENS_PER_CALL, Price, Tokens, cost

pytestmark = pytest.mark.django_db
D = Decimal


def call(team, model, *, prompt, cached=0, completion=0, charged, when=None, endpoint="chat"):
    """One served call in the ledger, charged `charged` USD."""
    when = when or timezone.now() - timedelta(hours=1)
    return UsageRecord.objects.create(
        request_id=f"req_{UsageRecord.objects.count()}_{team.slug}",
        team=team,
        endpoint=endpoint,
        requested_model=model,
        model=model,
        status="ok",
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
        cost_usd=D(charged),
        created_at=when,
        recorded_at=when,
    )


@pytest.fixture
def chat_usage(team):
    # gpt-4o at 2.50 in (cached billed at input: none listed) / 10.00 out:
    # 0.8M × 2.50 + 0.2M × 2.50 + 0.5M × 10 = 7.50, and 0.4M × 2.50 + 0.1M × 10 = 2.00.
    call(team, "gpt-4o", prompt=1_000_000, cached=200_000, completion=500_000, charged="7.50")
    call(team, "gpt-4o", prompt=400_000, completion=100_000, charged="2.00")
    # deepseek-v4-flash at 0.18 / cached 0.07 / 0.25: 1M × 0.18 + 1M × 0.07 + 1M × 0.25.
    call(
        team,
        "deepseek-v4-flash",
        prompt=2_000_000,
        cached=1_000_000,
        completion=1_000_000,
        charged="0.50",
    )


@pytest.fixture
def other_team_usage(other_team):
    # Enough to change every figure below if it leaked into Acme's.
    call(other_team, "gpt-4o", prompt=9_000_000, completion=9_000_000, charged="112.50")
    call(other_team, "kimi-k2.5", prompt=1_000_000, charged="0.59")


def report(team, key="30d"):
    return savings_report(
        team_id=team.id,
        period=savings_period(key=key, now=timezone.now()),
        catalog=catalog_snapshot(),
    )


def test_each_used_models_tokens_are_priced_on_every_other_chat_model(
    catalog, team, chat_usage, other_team_usage
):
    result = report(team)

    gpt4o, flash = result.used
    assert (gpt4o.name, flash.name) == ("gpt-4o", "deepseek-v4-flash")  # dearest first
    assert gpt4o.tokens == TokenTotals(prompt=1_400_000, cached=200_000, completion=600_000)
    assert (gpt4o.requests, gpt4o.actual_usd, gpt4o.current_price_usd) == (2, D("9.5"), D("9.5"))
    # Uncached 1.2M, cached 0.2M, output 0.6M at each model's price now:
    assert {s.model.name: s.would_usd for s in gpt4o.substitutes} == {
        "deepseek-v4-flash": D("0.380"),  # 1.2 × 0.18 + 0.2 × 0.07 + 0.6 × 0.25
        "qwen3-32b": D("0.420"),  # 1.4 × 0.18 + 0.6 × 0.28
        "gpt-4o-mini": D("0.570"),  # 1.4 × 0.15 + 0.6 × 0.60
        "glm-5": D("2.174"),  # 1.4 × 0.73 + 0.6 × 1.92
        "kimi-k2.5": D("2.626"),  # 1.4 × 0.59 + 0.6 × 3.00
        "gemini-1.5-pro": D("4.75"),  # 1.4 × 1.25 + 0.6 × 5.00
        "claude-3.5-sonnet": D("13.20"),  # 1.4 × 3.00 + 0.6 × 15.00
    }
    # Cheapest first, with the difference and the ratio to what was charged.
    to_flash = gpt4o.substitutes[0]
    assert to_flash.model.name == "deepseek-v4-flash"
    assert to_flash.difference_usd == D("-9.12")
    assert to_flash.ratio == D("0.38") / D("9.5") == D("0.04")
    assert gpt4o.substitutes[-1].difference_usd == D("3.70")
    # deepseek-v4-flash's tokens (uncached 1M, cached 1M, output 1M) the other way round:
    assert {s.model.name: s.would_usd for s in flash.substitutes}["gpt-4o"] == D("15.00")
    assert {s.model.name: s.would_usd for s in flash.substitutes}["qwen3-32b"] == D("0.64")
    assert result.actual_usd == D("10.00")


def test_benchmark_differences_and_missing_capabilities_sit_beside_each_pair(
    catalog, team, chat_usage
):
    gpt4o = report(team).used[0]
    by_name = {s.model.name: s for s in gpt4o.substitutes}

    assert report(team).benchmarks == ["mmlu", "humaneval", "ceval"]
    assert by_name["deepseek-v4-flash"].benchmark_deltas == [D("-3.2"), D("-0.5"), D("-0.5")]
    assert by_name["claude-3.5-sonnet"].benchmark_deltas == [D("0.3"), D("0.5"), None]
    assert by_name["gpt-4o-mini"].benchmark_deltas == [None, None, None]
    assert by_name["deepseek-v4-flash"].lacks == ["json", "tools", "vision"]


def test_unpriced_models_are_skipped_with_a_note_and_other_kinds_are_not_offered(
    catalog, team, chat_usage
):
    gpt4o = report(team).used[0]

    offered = {s.model.name for s in gpt4o.substitutes}
    assert {(p.model, p.reason) for p in gpt4o.unpriced} == {
        ("deepseek-coder", "no input price listed"),
        ("qwen3-coder-30b", "no input price listed"),
        ("qwen3.5-397b", "no input price listed"),
    }
    assert [(p.model, p.reason) for p in gpt4o.not_offered] == [
        ("text-embedding-3-small", "chat not served")
    ]
    assert offered.isdisjoint({"deepseek-coder", "text-embedding-3-small", "gpt-4o"})


def test_embeddings_are_only_priced_on_models_that_serve_embeddings(catalog, team):
    call(team, "text-embedding-3-small", prompt=5_000_000, charged="0.10", endpoint="embeddings")
    catalog_load_data(
        data={
            "model": [
                {
                    "id": "embed-cheap",
                    "provider": "openai",
                    "input_per_mtok": "0.013",
                    "capabilities": ["embeddings"],
                }
            ]
        }
    )
    catalog_changed()

    (embeddings,) = report(team).used

    assert [(s.model.name, s.would_usd) for s in embeddings.substitutes] == [
        ("embed-cheap", D("0.065"))  # 5M × 0.013
    ]
    assert "gpt-4o" in {p.model for p in embeddings.not_offered}


def test_all_traffic_on_one_model_keeps_its_own_traffic_as_charged(catalog, team, chat_usage):
    result = report(team)

    totals = {a.model.name: a.would_usd for a in result.all_on}
    assert result.cheapest.model.name == "deepseek-v4-flash"
    assert totals["deepseek-v4-flash"] == D("0.88")  # 0.38 moved + 0.50 as charged
    assert totals["gpt-4o"] == D("24.50")  # 9.50 as charged + 15.00 moved
    assert totals["qwen3-32b"] == D("1.06")  # 0.42 + 0.64
    assert result.cheapest.difference_usd == D("-9.12")
    # Neither the embeddings model nor an unpriced one can take the chat traffic.
    assert not {"text-embedding-3-small", "deepseek-coder"} & set(totals)


def test_traffic_a_model_does_not_serve_stays_as_it_was_in_its_total(catalog, team, chat_usage):
    call(team, "text-embedding-3-small", prompt=5_000_000, charged="0.10", endpoint="embeddings")

    result = report(team)

    cheapest = result.cheapest
    assert (cheapest.model.name, cheapest.would_usd) == ("deepseek-v4-flash", D("0.98"))
    assert cheapest.kept == ["text-embedding-3-small"]  # its $0.10, as charged
    assert cheapest.difference_usd == D("-9.12")
    # The embeddings model takes no chat traffic: on it, nothing would move.
    assert "text-embedding-3-small" not in {a.model.name for a in result.all_on}


def test_a_model_that_left_the_catalog_keeps_its_traffic(catalog, team, chat_usage):
    call(team, "retired-model", prompt=1_000_000, charged="1.00")

    result = report(team)

    retired = next(u for u in result.used if u.name == "retired-model")
    assert retired.info is None and retired.substitutes == []
    assert result.cheapest.kept == ["retired-model"]
    assert result.cheapest.would_usd == D("1.88")  # 0.88 + 1.00 as charged


def test_sums_past_one_calls_ceiling_are_priced_exactly(catalog, team):
    for _ in range(3):
        call(team, "gpt-4o", prompt=90_000_000, cached=40_000_000, charged="225")

    gpt4o = report(team).used[0]
    to_flash = {s.model.name: s for s in gpt4o.substitutes}["deepseek-v4-flash"]

    assert gpt4o.tokens.prompt == 270_000_000 > MAX_TOKENS_PER_CALL
    # 150M uncached × 0.18 + 120M cached × 0.07
    assert to_flash.would_usd == D("27.00") + D("8.40")


def test_cost_of_totals_is_the_one_formula_summed_over_calls():
    price = Price(input=D("0.73"), cached_input=D("0.11"), output=D("1.92"))
    calls = [Tokens(prompt=99_999_999, cached=12_345, completion=77), Tokens(prompt=3, cached=3)]
    calls += [Tokens(prompt=55_555_555, cached=55_555_555, completion=99_999_999)]
    totals = TokenTotals(
        prompt=sum(t.prompt for t in calls),
        cached=sum(t.cached for t in calls),
        completion=sum(t.completion for t in calls),
    )
    assert cost_of_totals(price, totals) == sum(cost(price, t) for t in calls)


def test_a_price_changed_during_the_period_is_shown_beside_what_was_charged(catalog, team):
    # Charged at an earlier deepseek price of 0.20 in: 1M × 0.20 + 1M × 0.25.
    call(team, "deepseek-v4-flash", prompt=1_000_000, completion=1_000_000, charged="0.45")

    result = report(team)
    (flash,) = result.used

    assert (flash.actual_usd, flash.current_price_usd) == (D("0.45"), D("0.43"))
    # Staying on the model it used means paying what it paid: no saving is invented.
    staying = {a.model.name: a for a in result.all_on}["deepseek-v4-flash"]
    assert (staying.would_usd, staying.difference_usd) == (D("0.45"), D("0"))


def test_periods_are_whole_utc_days_and_last_month_is_the_calendar_month():
    now = datetime(2026, 3, 1, 0, 30, tzinfo=UTC)

    thirty = savings_period(key="30d", now=now)
    month = savings_period(key="last-month", now=now)
    ninety = savings_period(key="90d", now=now)

    assert (thirty.start, thirty.end) == (
        datetime(2026, 1, 31, tzinfo=UTC),
        datetime(2026, 3, 2, tzinfo=UTC),
    )
    assert (month.start, month.end) == (
        datetime(2026, 2, 1, tzinfo=UTC),
        datetime(2026, 3, 1, tzinfo=UTC),
    )
    assert ninety.start == datetime(2025, 12, 2, tzinfo=UTC)
    assert savings_period(key="nonsense", now=now) == thirty


def test_only_calls_inside_the_period_count(catalog, team):
    today = timezone.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    call(team, "gpt-4o", prompt=1_000_000, charged="2.50", when=today - timedelta(days=29))
    call(team, "gpt-4o", prompt=2_000_000, charged="5.00", when=today - timedelta(days=30))
    call(team, "gpt-4o", prompt=4_000_000, charged="10.00", when=today - timedelta(days=89))

    assert report(team, "30d").actual_usd == D("2.50")
    assert report(team, "90d").actual_usd == D("17.50")


def test_figures_are_the_same_once_the_ledger_is_rolled_up(catalog, team, chat_usage):
    from usage.rollups import rollup_advance

    before = report(team)
    rollup_advance(now=timezone.now() + timedelta(minutes=5))
    after = report(team)

    assert [(u.name, u.tokens, u.actual_usd) for u in after.used] == [
        (u.name, u.tokens, u.actual_usd) for u in before.used
    ]
    assert [(a.model.name, a.would_usd) for a in after.all_on] == [
        (a.model.name, a.would_usd) for a in before.all_on
    ]


# --- The page ---------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["owner", "admin", "billing", "member"])
def test_every_role_of_the_team_sees_savings(catalog, client, request, who, chat_usage):
    page = sign_in(client, request, who).get("/t/acme/savings/")
    assert page.status_code == 200


def test_outsider_gets_404_and_anonymous_is_sent_to_sign_in(catalog, client, outsider, team):
    assert client.get("/t/acme/savings/").url.startswith("/login/")
    client.force_login(outsider)
    assert client.get("/t/acme/savings/").status_code == 404


def test_page_says_what_the_period_would_have_cost_on_the_cheapest_model(
    catalog, client, member, chat_usage, other_team_usage
):
    client.force_login(member)

    page = client.get("/t/acme/savings/")
    html = text(page)

    assert "Your last 30 days cost $10.00" in html
    assert "would have cost $0.88 on DeepSeek V4 Flash" in html
    pairs = tables(page.content)[1]
    assert row_of(pairs, "DeepSeek")[1:5] == ["$9.50", "$0.38", "−$9.12", "25× cheaper"]
    assert row_of(pairs, "DeepSeek")[5:8] == ["−3.2", "−0.5", "−0.5"]
    assert row_of(pairs, "Claude")[1:5] == ["$9.50", "$13.20", "+$3.70", "1.4× dearer"]
    assert "Skipped, no input price listed: deepseek-coder, qwen3-coder-30b, qwen3.5-397b." in html
    assert "Not offered, chat not served: text-embedding-3-small." in html
    # Globex's $113.09, mostly on gpt-4o, and its kimi-k2.5 traffic are not Acme's.
    assert "$113.09" not in html and "$112.50" not in html and "From Kimi K2.5" not in html


def test_small_figures_are_shown_below_a_cent(catalog, client, member, team):
    call(team, "gpt-4o", prompt=120, completion=30, charged="0.0006")  # 120 × 2.5 + 30 × 10
    client.force_login(member)

    html = text(client.get("/t/acme/savings/"))

    # 120 × 0.18 + 30 × 0.25 = 0.0000291 USD on deepseek-v4-flash.
    assert "Your last 30 days cost $0.0006" in html
    assert "would have cost $0.000029 on DeepSeek V4 Flash" in html


def test_period_presets_are_links_and_the_chosen_one_is_marked(catalog, client, member):
    client.force_login(member)

    html = client.get("/t/acme/savings/?period=last-month").content.decode()

    assert 'href="?period=30d"' in html and 'href="?period=90d"' in html
    assert 'aria-current="true" href="?period=last-month"' in html
    assert "No calls with tokens in this period" in html


def test_linked_from_the_models_page(catalog, client, member):
    client.force_login(member)
    assert 'href="/t/acme/savings/"' in client.get("/t/acme/models/").content.decode()


def test_page_names_the_traffic_left_where_it_was(catalog, client, member, team, chat_usage):
    call(team, "text-embedding-3-small", prompt=5_000_000, charged="0.10", endpoint="embeddings")
    client.force_login(member)

    html = text(client.get("/t/acme/savings/"))

    assert "Your last 30 days cost $10.10" in html
    assert (
        "would have cost $0.98 on DeepSeek V4 Flash (10× cheaper, −$9.12), with the calls it "
        "does not serve (text-embedding-3-small) left as they were." in html
    )
