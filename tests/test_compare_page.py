"""The Compare page: one prompt on several models through compare_run, really billed."""

from decimal import Decimal

import httpx2
import pytest

from tests.fake_upstream import Fail
from tests.pages import row_of, sign_in, tables, text
from usage.models import UsageRecord

PROMPT = {"prompt": "Summarise: the gateway bills per token.", "max_tokens": "100"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "who, status",
    [("owner", 200), ("admin", 200), ("billing", 404), ("member", 404), ("outsider", 404)],
)
def test_only_owners_and_admins_open_compare(catalog, client, request, who, status):
    assert sign_in(client, request, who).get("/t/acme/compare/").status_code == status


@pytest.mark.django_db
def test_anonymous_is_sent_to_sign_in(catalog, client, team):
    response = client.get("/t/acme/compare/")
    assert response.status_code == 302 and response.url.startswith("/login/")


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["member", "billing", "outsider"])
def test_no_one_else_can_spend_the_teams_money_by_posting(
    catalog, client, request, upstream, team, who
):
    page = sign_in(client, request, who).post(
        "/t/acme/compare/", {**PROMPT, "models": ["gpt-4o", "glm-5"]}
    )
    assert page.status_code == 404
    assert upstream.received == [] and not UsageRecord.objects.exists()


@pytest.mark.django_db
def test_page_says_the_calls_are_real_and_offers_only_billable_chat_models(catalog, client, owner):
    client.force_login(owner)
    page = client.get("/t/acme/compare/")
    choices = dict(page.context["form"].fields["models"].choices)

    assert "These are real calls." in text(page) and "billed to Acme" in text(page)
    assert choices["gpt-4o"] == "GPT-4o (gpt-4o): $2.50 in, $10.00 out per 1M tokens"
    assert not {"deepseek-coder", "qwen3.5-397b", "text-embedding-3-small"} & set(choices)
    assert "Not offered, as calls to them cannot be billed" in text(page)


@pytest.mark.django_db(transaction=True)
def test_owner_compares_two_models_and_both_calls_are_billed(
    catalog, client, owner, team, upstream
):
    client.force_login(owner)

    sent = client.post("/t/acme/compare/", {**PROMPT, "models": ["gpt-4o", "deepseek-v4-flash"]})
    assert sent.status_code == 302  # post/redirect/get: a reload never sends it again
    page = client.get(sent.url)

    assert page.status_code == 200
    summary = tables(page.content)[0]
    # 12 in and 34 out at 2.50 / 10.00 and at 0.18 / 0.25 USD per 1M tokens.
    assert row_of(summary, "GPT-4o")[1:5] == ["answered", "12", "34", "$0.00037"]
    assert row_of(summary, "DeepSeek")[1:5] == ["answered", "12", "34", "$0.00001066"]
    assert text(page).count("Hello from the fake upstream") == 2
    assert "2 calls, $0.00038066 in all" in text(page)
    billed = UsageRecord.objects.filter(team=team, status="ok")
    assert sorted(billed.values_list("model", "cost_usd")) == [
        ("deepseek-v4-flash", Decimal("0.00001066")),
        ("gpt-4o", Decimal("0.00037")),
    ]
    assert {r.end_user for r in billed} == {"compare by owner@acme.test"}
    assert {r.body["max_tokens"] for r in upstream.received} == {100}
    reloaded = client.get(sent.url)
    assert "Hello from the fake upstream" not in text(reloaded) and len(upstream.received) == 2
    assert [r.body["messages"] for r in upstream.received] == [
        [{"role": "user", "content": PROMPT["prompt"]}]
    ] * 2


@pytest.mark.django_db(transaction=True)
def test_a_failing_model_is_a_readable_message_beside_the_others(catalog, client, admin, upstream):
    upstream.script("gpt-4o", Fail(500, "overloaded"))
    client.force_login(admin)

    page = client.post("/t/acme/compare/", {**PROMPT, "models": ["gpt-4o", "glm-5"]}, follow=True)

    assert page.status_code == 200
    assert row_of(tables(page.content)[0], "GPT-4o")[1] == "failed"
    assert row_of(tables(page.content)[0], "GLM-5")[1] == "answered"
    failure = [r for r in page.context["results"] if r["result"].model == "gpt-4o"][0]["result"]
    assert "overloaded" in failure.error
    assert f"This model did not answer: {failure.error}" in text(page)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "models, message",
    [
        (["gpt-4o"], "Pick between 2 and 6 models to compare; you picked 1."),
        (["gpt-4o", "gpt-4o"], "Pick between 2 and 6 models to compare; you picked 1."),
        (["gpt-4o", "gpt-9"], "“gpt-9” cannot be compared here"),
        (["gpt-4o", "deepseek-coder"], "“deepseek-coder” cannot be compared here"),
        (["gpt-4o", "text-embedding-3-small"], "“text-embedding-3-small” cannot be compared"),
    ],
)
def test_bad_picks_are_refused_before_anything_is_called(
    catalog, client, owner, upstream, models, message
):
    client.force_login(owner)

    page = client.post("/t/acme/compare/", {**PROMPT, "models": models})

    assert page.status_code == 200 and page.context["results"] is None
    assert message in " ".join(page.context["form"].errors["models"])
    assert upstream.received == [] and not UsageRecord.objects.exists()


@pytest.mark.django_db
def test_seven_models_are_too_many(catalog, client, owner, upstream):
    client.force_login(owner)
    seven = ["gpt-4o", "glm-5", "kimi-k2.5", "qwen3-32b", "gpt-4o-mini", "gemini-1.5-pro"]
    seven.append("claude-3.5-sonnet")

    page = client.post("/t/acme/compare/", {**PROMPT, "models": seven})

    assert page.context["form"].errors["models"] == [
        "Pick between 2 and 6 models to compare; you picked 7."
    ]
    assert upstream.received == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change, field",
    [
        ({"prompt": ""}, "prompt"),
        ({"max_tokens": "0"}, "max_tokens"),
        ({"max_tokens": "x"}, "max_tokens"),
    ],
)
def test_prompt_and_token_cap_are_checked(catalog, client, owner, upstream, change, field):
    client.force_login(owner)
    page = client.post("/t/acme/compare/", {**PROMPT, "models": ["gpt-4o", "glm-5"], **change})
    assert page.status_code == 200 and field in page.context["form"].errors
    assert upstream.received == []


@pytest.mark.django_db
def test_linked_from_models_and_routes_for_those_who_may_use_it(catalog, client, owner, member):
    client.force_login(owner)
    assert 'href="/t/acme/compare/"' in client.get("/t/acme/models/").content.decode()
    assert 'href="/t/acme/compare/"' in client.get("/t/acme/routes/").content.decode()
    client.force_login(member)
    assert 'href="/t/acme/compare/"' not in client.get("/t/acme/models/").content.decode()
    assert 'href="/t/acme/compare/"' not in client.get("/t/acme/routes/").content.decode()


@pytest.mark.django_db(transaction=True)
def test_compare_works_through_the_production_asgi_server(
    catalog, client, owner, team, upstream, live_portal
):
    # The page's sync view runs compare_run's event loop from a worker thread of the
    # ASGI server, as in production; the Django test client alone would not show that.
    client.force_login(owner)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    with httpx2.Client(
        base_url=live_portal.url, cookies=cookies, timeout=20, follow_redirects=True
    ) as browser:
        form = browser.get("/t/acme/compare/")
        token = form.text.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
        page = browser.post(
            "/t/acme/compare/",
            data={**PROMPT, "models": ["gpt-4o", "glm-5"], "csrfmiddlewaretoken": token},
        )

    assert page.status_code == 200, page.text[:500]
    assert text(page.text).count("Hello from the fake upstream") == 2
    assert UsageRecord.objects.filter(team=team, status="ok").count() == 2
