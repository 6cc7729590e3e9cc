"""Routes: strategies, fallback, retries, deadlines, cooldowns, team overrides and access."""

import asyncio
import random
import time
from decimal import Decimal

import openai
import pytest
from django.test import override_settings

from accounts.services import api_key_create
from portal import aio
from routing.cooldowns import cooling
from routing.models import CatalogModel, Provider
from routing.selectors import catalog_changed, catalog_snapshot
from routing.services import catalog_load_data, route_fields, route_save
from routing.strategies import order_targets, request_needs
from tests.fake_upstream import Answer, Fail, Reset
from usage.models import UsageRecord

MESSAGES = [{"role": "user", "content": "Classify: the parcel arrived broken."}]


def rows(team):
    return list(UsageRecord.objects.filter(team=team).order_by("id"))


def set_route(name, team=None, **entry):
    fields = route_fields({"name": name, **entry})
    fields.pop("name")
    route = route_save(team=team, name=name, fields=fields, actor="test")
    catalog_changed()  # on-commit hooks do not run inside a rolled-back test transaction
    return route


def order(route_name, body=None, latencies=None, stream=False, rng=None):
    catalog = catalog_snapshot()
    route = catalog.global_routes[route_name]
    body = body or {"messages": MESSAGES}
    from routing.tokens import TokenBounds

    return [
        m.name
        for m in order_targets(
            route=route,
            targets=[catalog.models[t] for t in route.targets],
            bounds=TokenBounds.of_chat(body),
            needs=request_needs(body),
            latencies=latencies or {},
            stream=stream,
            rng=rng,
        )
    ]


# --- Strategies, decided without any network ------------------------------------------


@pytest.mark.django_db
class TestStrategies:
    def test_fallback_keeps_the_route_order(self, catalog):
        set_route("r", strategy="fallback", targets=["gpt-4o", "glm-5", "qwen3-32b"])
        assert order("r") == ["gpt-4o", "glm-5", "qwen3-32b"]

    def test_weighted_spreads_by_weight_then_falls_back_to_the_rest(self, catalog):
        set_route(
            "r", strategy="weighted", targets=["deepseek-v4-flash", "qwen3-32b"], weights=[3, 1]
        )
        rng = random.Random(7)
        firsts = [order("r", rng=rng) for _ in range(2000)]
        share = sum(1 for f in firsts if f[0] == "deepseek-v4-flash") / len(firsts)
        assert 0.70 < share < 0.80
        assert all(sorted(f) == ["deepseek-v4-flash", "qwen3-32b"] for f in firsts)

    def test_weight_zero_is_only_a_fallback(self, catalog):
        set_route(
            "r", strategy="weighted", targets=["deepseek-v4-flash", "qwen3-32b"], weights=[0, 1]
        )
        assert {tuple(order("r", rng=random.Random(i))) for i in range(50)} == {
            ("qwen3-32b", "deepseek-v4-flash")
        }

    def test_cheapest_orders_by_this_requests_expected_cost(self, catalog):
        set_route("r", strategy="cheapest", targets=["gpt-4o", "kimi-k2.5", "glm-5"])
        long_prompt = {"messages": [{"role": "user", "content": "x" * 40_000}], "max_tokens": 10}
        long_answer = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000}
        # kimi: 0.59 in / 3.00 out; glm: 0.73 in / 1.92 out; gpt-4o: 2.50 / 10.00
        assert order("r", long_prompt) == ["kimi-k2.5", "glm-5", "gpt-4o"]
        assert order("r", long_answer) == ["glm-5", "kimi-k2.5", "gpt-4o"]

    def test_cheapest_respects_the_quality_floor(self, catalog):
        set_route(
            "r",
            strategy="cheapest",
            targets=["gpt-4o", "deepseek-v4-flash", "qwen3-32b", "claude-3.5-sonnet"],
            require={"humaneval": 92.5},
        )
        # qwen3-32b has no HumanEval score; deepseek's 92.0 is under the floor.
        assert order("r") == ["gpt-4o", "claude-3.5-sonnet"]

    def test_fastest_uses_observed_latency_and_ttft_for_streams(self, catalog):
        set_route("r", strategy="fastest", targets=["gpt-4o", "glm-5", "qwen3-32b"])
        latencies = {
            "gpt-4o": {"latency_ms": 900, "ttft_ms": 100},
            "glm-5": {"latency_ms": 400, "ttft_ms": 300},
        }
        assert order("r", latencies=latencies) == ["glm-5", "gpt-4o", "qwen3-32b"]
        assert order("r", latencies=latencies, stream=True) == ["gpt-4o", "glm-5", "qwen3-32b"]

    def test_targets_without_vision_are_skipped_for_images(self, catalog):
        set_route("r", targets=["deepseek-v4-flash", "gpt-4o"])
        image = {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ]
        }
        assert order("r", image) == ["gpt-4o"]

    def test_targets_with_too_small_a_context_are_skipped(self, catalog):
        set_route("r", targets=["deepseek-v4-flash", "gpt-4o"])
        huge = {"messages": [{"role": "user", "content": "x" * 600_000}]}  # ~150K tokens > 128K
        assert order("r", huge) == ["gpt-4o"]

    def test_route_capabilities_filter_targets(self, catalog):
        set_route("r", targets=["deepseek-v4-flash", "gpt-4o"], capabilities=["vision"])
        assert order("r") == ["gpt-4o"]


# --- Through the live portal -------------------------------------------------------------

live = pytest.mark.django_db(transaction=True)


@pytest.fixture
def split_providers(catalog, upstream):
    """qwen3-32b moved to its own provider, so `global` can fail while it serves."""
    catalog_load_data(
        data={
            "provider": [
                {
                    "name": "backup",
                    "base_url": upstream.url,
                    "api_key_env": "FAKE_UPSTREAM_KEY",
                    "timeout_s": 5,
                }
            ],
            "model": [
                {
                    "id": "qwen3-32b",
                    "provider": "backup",
                    "input_per_mtok": "0.18",
                    "output_per_mtok": "0.28",
                }
            ],
        }
    )


@live
def test_done_when_bulk_classify_survives_its_first_provider_going_down(
    split_providers, inference_key, sdk, team
):
    Provider.objects.filter(name="global").update(
        base_url="http://127.0.0.1:9/v1"
    )  # nothing listens there
    _, secret = inference_key

    raw = sdk(secret).chat.completions.with_raw_response.create(
        model="bulk_classify", messages=MESSAGES
    )

    assert raw.parse().choices[0].message.content == "Hello from the fake upstream"
    assert (
        raw.headers["x-tollgate-model"] == "qwen3-32b"
        and raw.headers["x-tollgate-route"] == "bulk_classify"
    )
    failed, served = rows(team)
    assert failed.request_id == served.request_id == raw.headers["x-request-id"]
    assert (failed.model, failed.status, failed.cost_usd, failed.route) == (
        "deepseek-v4-flash",
        "upstream_error",
        0,
        "bulk_classify",
    )
    assert (served.model, served.status, served.route) == ("qwen3-32b", "ok", "bulk_classify")
    assert (
        served.cost_usd
        == Decimal(raw.headers["x-tollgate-cost"])
        == (12 * Decimal("0.18") + 34 * Decimal("0.28")) / 10**6
    )


@live
@pytest.mark.parametrize(
    "failure, status",
    [
        (Fail(500), "upstream_error"),
        (Fail(429), "upstream_error"),
        (Reset(), "upstream_error"),
    ],
)
def test_each_retryable_failure_falls_back(
    catalog, inference_key, sdk, team, upstream, failure, status
):
    _, secret = inference_key
    # A reset is tried once more on a new connection before it counts (fake_upstream.Reset).
    upstream.script("deepseek-v4-flash", *([failure] * (2 if isinstance(failure, Reset) else 1)))

    completion = sdk(secret).chat.completions.create(model="bulk_classify", messages=MESSAGES)

    assert completion.model == "qwen3-32b"
    assert [(r.model, r.status) for r in rows(team)] == [
        ("deepseek-v4-flash", status),
        ("qwen3-32b", "ok"),
    ]


@live
def test_timeout_falls_back_within_the_providers_timeout(
    catalog, inference_key, sdk, team, upstream
):
    Provider.objects.filter(name="global").update(timeout_s=1)
    set_route("slow_then_fast", targets=["deepseek-v4-flash", "gpt-4o"])
    upstream.script("deepseek-v4-flash", Answer(delay=3))
    _, secret = inference_key

    start = time.monotonic()
    completion = sdk(secret).chat.completions.create(model="slow_then_fast", messages=MESSAGES)

    assert completion.model == "gpt-4o" and time.monotonic() - start < 2.5
    assert [(r.model, r.status) for r in rows(team)] == [
        ("deepseek-v4-flash", "timeout"),
        ("gpt-4o", "ok"),
    ]


@live
def test_retry_pass_after_backoff_serves_when_every_target_failed_once(
    catalog, inference_key, sdk, team, upstream
):
    set_route("flaky", targets=["deepseek-v4-flash", "qwen3-32b"], retries=1)
    upstream.script("deepseek-v4-flash", Fail(503))
    upstream.script("qwen3-32b", Fail(502))
    _, secret = inference_key

    completion = sdk(secret).chat.completions.create(model="flaky", messages=MESSAGES)

    assert completion.model == "deepseek-v4-flash"
    attempts = rows(team)
    assert [(r.attempt, r.model, r.status) for r in attempts] == [
        (0, "deepseek-v4-flash", "upstream_error"),
        (1, "qwen3-32b", "upstream_error"),
        (2, "deepseek-v4-flash", "ok"),
    ]
    assert [r.cost_usd for r in attempts][:2] == [0, 0] and attempts[2].cost_usd > 0


@live
def test_retry_after_is_honoured_before_calling_that_target_again(
    catalog, inference_key, sdk, team, upstream
):
    set_route("solo", targets=["deepseek-v4-flash"], retries=1, deadline_s=10)
    upstream.script("deepseek-v4-flash", Fail(429, headers={"Retry-After": "1"}))
    _, secret = inference_key

    start = time.monotonic()
    completion = sdk(secret).chat.completions.create(model="solo", messages=MESSAGES)

    assert completion.model == "deepseek-v4-flash"
    assert time.monotonic() - start >= 1.0
    assert [r.status for r in rows(team)] == ["upstream_error", "ok"]


@live
def test_deadline_stops_the_attempts(catalog, inference_key, sdk, team, upstream):
    set_route("tight", targets=["deepseek-v4-flash", "qwen3-32b"], retries=3, deadline_s=2)
    upstream.script("deepseek-v4-flash", *[Answer(delay=4)] * 4)
    upstream.script("qwen3-32b", *[Answer(delay=4)] * 4)
    _, secret = inference_key

    start = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(secret, timeout=20).chat.completions.create(model="tight", messages=MESSAGES)
    elapsed = time.monotonic() - start

    assert caught.value.status_code == 504
    assert elapsed < 3.5
    assert all(r.status == "timeout" and r.cost_usd == 0 for r in rows(team))


@live
def test_upstream_400_on_a_route_is_not_retried(catalog, inference_key, sdk, team, upstream):
    set_route("many", targets=["deepseek-v4-flash", "qwen3-32b"], retries=2)
    upstream.script("deepseek-v4-flash", Fail(400, "bad 'n'"))
    _, secret = inference_key

    with pytest.raises(openai.BadRequestError):
        sdk(secret).chat.completions.create(model="many", messages=MESSAGES)

    assert len(upstream.received) == 1 and len(rows(team)) == 1


@live
@override_settings(
    TOLLGATE_COOLDOWN_FAILURES=2, TOLLGATE_COOLDOWN_WINDOW_S=60, TOLLGATE_COOLDOWN_S=3
)
def test_cooldown_skips_a_failing_target_then_restores_it(
    catalog, inference_key, sdk, team, upstream
):
    set_route("cool", targets=["deepseek-v4-flash", "qwen3-32b"], retries=0)
    upstream.script("deepseek-v4-flash", Fail(500), Fail(500))
    _, secret = inference_key
    client = sdk(secret)

    client.chat.completions.create(model="cool", messages=MESSAGES)
    client.chat.completions.create(model="cool", messages=MESSAGES)
    upstream.received.clear()
    cooled = client.chat.completions.create(model="cool", messages=MESSAGES)
    skipped_models = [r.body["model"] for r in upstream.received]

    assert cooled.model == "qwen3-32b" and skipped_models == ["qwen3-32b"]
    # The cooldown ends after TOLLGATE_COOLDOWN_S, on the clock the routes read.
    now = time.time()

    async def cooling_at(moment):
        try:
            return await cooling(["deepseek-v4-flash"], now=moment)
        finally:
            await aio.close_pools()

    assert asyncio.run(cooling_at(now)) == {"deepseek-v4-flash"}
    assert asyncio.run(cooling_at(now + 3.01)) == set()


@live
def test_cheapest_route_is_served_by_the_cheapest_target(catalog, inference_key, sdk, team):
    set_route("thrifty", strategy="cheapest", targets=["gpt-4o", "glm-5", "deepseek-v4-flash"])
    _, secret = inference_key

    raw = sdk(secret).chat.completions.with_raw_response.create(model="thrifty", messages=MESSAGES)

    assert raw.headers["x-tollgate-model"] == "deepseek-v4-flash"


@live
def test_team_route_overrides_the_global_one_for_that_team_only(catalog, team, other_team, sdk):
    set_route("bulk_classify", team=team, targets=["glm-5"])
    _, ours = api_key_create(team=team, name="ours")
    _, theirs = api_key_create(team=other_team, name="theirs")

    assert (
        sdk(ours).chat.completions.create(model="bulk_classify", messages=MESSAGES).model == "glm-5"
    )
    assert (
        sdk(theirs).chat.completions.create(model="bulk_classify", messages=MESSAGES).model
        == "deepseek-v4-flash"
    )


@live
def test_key_may_use_a_route_it_names_even_if_its_targets_are_not_listed(catalog, team, sdk):
    _, named = api_key_create(team=team, name="named", allowed_models=["bulk_classify"])
    _, partial = api_key_create(team=team, name="partial", allowed_models=["deepseek-v4-flash"])

    assert (
        sdk(named).chat.completions.create(model="bulk_classify", messages=MESSAGES).model
        == "deepseek-v4-flash"
    )
    with pytest.raises(openai.PermissionDeniedError):
        sdk(named).chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES)
    with pytest.raises(openai.PermissionDeniedError):
        sdk(partial).chat.completions.create(model="bulk_classify", messages=MESSAGES)


@live
def test_streamed_route_records_the_route(catalog, inference_key, sdk, team):
    _, secret = inference_key
    with sdk(secret).chat.completions.with_streaming_response.create(
        model="cheap_chat", messages=MESSAGES, stream=True
    ) as response:
        assert response.headers["x-tollgate-route"] == "cheap_chat"
        list(response.iter_lines())
    [row] = rows(team)
    assert (row.route, row.model, row.streamed) == ("cheap_chat", "qwen3-32b", True)


@live
def test_fastest_route_prefers_the_model_observed_fastest(
    catalog, inference_key, sdk, team, upstream
):
    import routing.calls

    set_route("quick", strategy="fastest", targets=["gpt-4o", "deepseek-v4-flash"])
    _, secret = inference_key
    client = sdk(secret)
    upstream.script("gpt-4o", Answer(delay=0.3))
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    client.chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES)
    routing.calls._latencies = (0.0, {})  # read the ledger again now

    assert (
        client.chat.completions.create(model="quick", messages=MESSAGES).model
        == "deepseek-v4-flash"
    )


@pytest.mark.django_db
def test_route_targets_must_exist(catalog):
    from routing.services import CatalogError

    with pytest.raises(CatalogError, match="unknown targets"):
        set_route("broken", targets=["gpt-9"])
    assert not CatalogModel.objects.filter(name="gpt-9").exists()
