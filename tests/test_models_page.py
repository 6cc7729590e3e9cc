"""The Models page: the catalog with prices, multiples of a baseline, benchmarks, sorting."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from tests.pages import row_of, sign_in, tables
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db


def used(team, model, requests):
    """`requests` served calls of `model` by `team`, today."""
    now = timezone.now()
    for n in range(requests):
        UsageRecord.objects.create(
            request_id=f"req_{team.slug}_{model}_{n}",
            team=team,
            endpoint="chat",
            requested_model=model,
            model=model,
            status="ok",
            prompt_tokens=10,
            completion_tokens=10,
            cost_usd=Decimal("0.0001"),
            created_at=now - timedelta(minutes=n),
        )


def model_table(page):
    (table,) = tables(page.content)
    return table


def order(page):
    """Model ids, top to bottom."""
    return [row[0].removesuffix(" (baseline)").split()[-1] for row in model_table(page)[1:]]


@pytest.mark.parametrize(
    "who, status", [("owner", 200), ("admin", 200), ("billing", 200), ("member", 200)]
)
def test_every_role_of_the_team_sees_the_models(catalog, client, request, who, status):
    page = sign_in(client, request, who).get("/t/acme/models/")
    assert page.status_code == status
    assert "GPT-4o" in page.content.decode()


def test_outsider_gets_404_and_anonymous_is_sent_to_sign_in(catalog, client, outsider, team):
    assert client.get("/t/acme/models/").url.startswith("/login/")
    client.force_login(outsider)
    assert client.get("/t/acme/models/").status_code == 404


def test_prices_are_listed_per_million_tokens_and_unpriced_is_never_zero(catalog, client, member):
    client.force_login(member)
    table = model_table(client.get("/t/acme/models/?baseline=deepseek-v4-flash"))

    header = [h.rstrip(" ▲▼") for h in table[0]]
    assert header[:5] == ["Model", "Provider", "Input", "Cached input", "Output"]
    flash = row_of(table, "deepseek-v4-flash")
    assert flash[1:5] == ["global", "$0.18 1×", "$0.07 1×", "$0.25 1×"]
    assert flash[5] == "128,000" and flash[6] == "chat"
    # Cached input without a price of its own is billed, and shown, at the input price.
    assert row_of(table, "gpt-4o-mini")[2:5] == ["$0.15 0.83×", "$0.15 2.1×", "$0.60 2.4×"]
    # Only an output price is published: input is unpriced, not $0.
    assert row_of(table, "deepseek-coder")[2:5] == ["unpriced", "unpriced", "$0.25 1×"]
    assert row_of(table, "text-embedding-3-small")[4] == "unpriced"
    assert "$0.00" not in client.get("/t/acme/models/").content.decode()


def test_output_multiples_match_the_published_ones(catalog, client, member):
    client.force_login(member)
    table = model_table(client.get("/t/acme/models/?baseline=deepseek-v4-flash"))

    published = {
        "gpt-4o": "40×",
        "claude-3.5-sonnet": "60×",
        "gemini-1.5-pro": "20×",
        "gpt-4o-mini": "2.4×",
        "qwen3-32b": "1.1×",
        "glm-5": "7.7×",
        "kimi-k2.5": "12×",
    }
    output = header_index(table, "Output")
    assert {m: row_of(table, m)[output].split()[-1] for m in published} == published


def header_index(table, label):
    return [h.rstrip(" ▲▼") for h in table[0]].index(label)


def test_benchmarks_are_shown_with_a_dash_where_none_is_published(catalog, client, member):
    client.force_login(member)
    table = model_table(client.get("/t/acme/models/"))

    assert table[0][8:] == ["MMLU", "HumanEval", "C-Eval"]
    assert row_of(table, "gpt-4o-mini")[8:] == ["—", "—", "—"]
    assert row_of(table, "Claude")[8:] == ["89.0", "93.0", "—"]


def test_each_model_shows_the_endpoints_it_is_served_on(catalog, client, member):
    client.force_login(member)
    table = model_table(client.get("/t/acme/models/"))

    assert table[0][7] == "Served on"
    # A chat model serves the Responses API too (bridged to chat when its upstream has none).
    assert row_of(table, "gpt-4o-mini")[7] == "/v1/chat/completions /v1/responses"
    assert row_of(table, "text-embedding-3-small")[7] == "/v1/embeddings"


def test_default_baseline_is_the_teams_most_used_model(catalog, client, member, team, other_team):
    used(team, "glm-5", 3)
    used(team, "gpt-4o", 2)
    used(other_team, "kimi-k2.5", 9)  # another team's habits are not ours
    client.force_login(member)

    page = client.get("/t/acme/models/")

    assert page.context["baseline"].name == "glm-5"
    assert row_of(model_table(page), "glm-5")[0].endswith("(baseline)")
    assert row_of(model_table(page), "kimi-k2.5")[4] == "$3.00 1.6×"  # 3.00 / 1.92


def test_without_usage_the_baseline_is_the_first_model_and_a_bad_one_is_ignored(
    catalog, client, member
):
    client.force_login(member)
    assert client.get("/t/acme/models/").context["baseline"].name == "claude-3.5-sonnet"
    page = client.get("/t/acme/models/?baseline=gpt-9&sort=nonsense")
    assert page.status_code == 200 and page.context["baseline"].name == "claude-3.5-sonnet"
    assert order(page)[0] == "claude-3.5-sonnet"


def test_sorting_by_a_price_puts_unpriced_models_last_either_way(catalog, client, member):
    client.force_login(member)

    cheapest_output = order(client.get("/t/acme/models/?sort=output"))
    dearest_output = order(client.get("/t/acme/models/?sort=-output"))

    assert cheapest_output[:3] == ["deepseek-coder", "deepseek-v4-flash", "qwen3-32b"]
    assert dearest_output[:3] == ["claude-3.5-sonnet", "gpt-4o", "gemini-1.5-pro"]
    assert cheapest_output[-1] == dearest_output[-1] == "text-embedding-3-small"
    by_input = order(client.get("/t/acme/models/?sort=-input"))
    assert set(by_input[-3:]) == {"deepseek-coder", "qwen3-coder-30b", "qwen3.5-397b"}


def test_sorted_column_is_marked_for_assistive_technology_and_its_link_turns_it_round(
    catalog, client, member
):
    client.force_login(member)
    html = client.get("/t/acme/models/?sort=-mmlu&baseline=glm-5").content.decode()

    assert html.count("aria-sort=") == 1
    assert 'aria-sort="descending"><a href="?sort=mmlu&amp;baseline=glm-5">MMLU' in html
    # Scores sort best first on a first click, prices cheapest first.
    assert 'href="?sort=-humaneval&amp;baseline=glm-5"' in html
    assert 'href="?sort=input&amp;baseline=glm-5"' in html
    assert order(client.get("/t/acme/models/?sort=-mmlu"))[:2] == ["claude-3.5-sonnet", "gpt-4o"]


@pytest.mark.parametrize("who", ["owner", "admin", "billing", "member"])
def test_navigation_offers_models_savings_and_routes_to_every_role(catalog, client, request, who):
    html = sign_in(client, request, who).get("/t/acme/models/").content.decode()

    assert '<a href="/t/acme/models/" aria-current="page">Models</a>' in html
    assert '<a href="/t/acme/savings/">Savings</a>' in html
    assert '<a href="/t/acme/routes/">Routes</a>' in html
    # Compare spends money: linked from the pages for those who may, not in everyone's nav.
    assert '<a href="/t/acme/compare/">' not in html.split("</nav>")[0]
