"""Money against hostile parties: an upstream that lies, a client that vanishes, requests
shaped to look cheap. Every call ends in exactly one billed outcome; hard budgets hold."""

import asyncio
from decimal import Decimal

import openai
import pytest
from django.db.models import Sum

from accounts.services import api_key_create
from routing import tokens
from tests.factories import global_route
from tests.fake_upstream import HONEST, Answer
from tests.waiting import wait_for
from usage.budgets import budget_set
from usage.metering import SWEPT_ATTEMPT
from usage.models import BudgetCounter, MeteredCall, UsageRecord

MESSAGES = [{"role": "user", "content": "Classify: the parcel arrived broken."}]
live = pytest.mark.django_db(transaction=True)
GPT4O = (Decimal("2.5"), Decimal("10"))


def outcomes(request_id):
    """The call's billed outcome: its rows, which must hold exactly one successful or final row."""
    return list(UsageRecord.objects.filter(request_id=request_id).order_by("attempt"))


# --- The lying upstream ---------------------------------------------------------------------


@live
@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": 10, "total_tokens": 5},
        {"prompt_tokens": "12", "completion_tokens": "34"},
        {"prompt_tokens": 12.5, "completion_tokens": 34.2},
        {"prompt_tokens": 12, "completion_tokens": -200_000_000_000},
        {"prompt_tokens": 10**15, "completion_tokens": 34},
        {
            "prompt_tokens": 12,
            "completion_tokens": 34,
            "prompt_tokens_details": {"cached_tokens": 99},
        },
        {"completion_tokens": 34},
        None,
    ],
    ids=[
        "negative",
        "strings",
        "floats",
        "huge-negative",
        "absurd",
        "cached>prompt",
        "no-prompt",
        "missing",
    ],
)
def test_nonsense_usage_is_replaced_by_the_gateways_count(catalog, team, sdk, upstream, usage):
    _, secret = api_key_create(team=team, name="app")
    upstream.script("gpt-4o", Answer(content="one two three four", usage=usage))

    raw = sdk(secret).chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)

    assert raw.http_request and raw.status_code == 200
    [row] = outcomes(raw.headers["x-request-id"])
    prompt = tokens.chat_prompt_estimate({"messages": MESSAGES})
    completion = tokens.text_tokens("one two three four")
    assert (row.status, row.tokens_estimated, row.prompt_tokens, row.completion_tokens) == (
        "ok",
        True,
        prompt,
        completion,
    )
    assert row.cost_usd == (prompt * GPT4O[0] + completion * GPT4O[1]) / 10**6
    assert Decimal(raw.headers["x-tollgate-cost"]) == row.cost_usd > 0
    assert not MeteredCall.objects.in_flight().exists()


@live
def test_nonsense_usage_in_a_stream_is_replaced_too(catalog, team, sdk, upstream):
    _, secret = api_key_create(team=team, name="app")
    upstream.script(
        "gpt-4o",
        Answer(content="one two three", usage={"prompt_tokens": -1, "completion_tokens": 3}),
    )

    stream = sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "one two three"

    [row] = UsageRecord.objects.filter(team=team)
    assert (row.status, row.tokens_estimated, row.completion_tokens) == (
        "ok",
        True,
        tokens.text_tokens("one two three"),
    )
    assert row.cost_usd > 0


@live
@pytest.mark.parametrize("honour_n", [True, False])
def test_n_is_billed_as_the_upstream_reports_it(catalog, team, sdk, upstream, honour_n):
    _, secret = api_key_create(team=team, name="app")
    upstream.script("gpt-4o", Answer(honour_n=honour_n))

    answer = sdk(secret).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, n=3, max_tokens=40
    )

    assert len(answer.choices) == (3 if honour_n else 1)
    [row] = UsageRecord.objects.filter(team=team)
    assert row.completion_tokens == (34 * 3 if honour_n else 34) and not row.tokens_estimated


@live
def test_a_client_that_times_out_is_billed_for_what_the_upstream_produced(
    catalog, team, sdk, upstream
):
    """The call finishes in the background; its row appears once the upstream answers and
    its reservation is released then, not fifteen minutes later."""
    key, secret = api_key_create(team=team, name="app")
    budget = budget_set(team=team, amount_usd=Decimal("10"))
    upstream.script("gpt-4o", Answer(delay=1.0))

    with pytest.raises(openai.APITimeoutError):
        sdk(secret, timeout=0.3).chat.completions.create(model="gpt-4o", messages=MESSAGES)

    wait_for(lambda: UsageRecord.objects.filter(team=team).exists())
    [row] = UsageRecord.objects.filter(team=team)
    assert (row.status, row.prompt_tokens, row.completion_tokens) == ("client_closed", 12, 34)
    assert row.cost_usd == (12 * GPT4O[0] + 34 * GPT4O[1]) / 10**6
    counter = BudgetCounter.objects.get(budget=budget)
    assert (counter.spent_usd, counter.reserved_usd) == (row.cost_usd, 0)
    assert not MeteredCall.objects.in_flight().exists()


@live
def test_a_client_that_leaves_while_a_stream_opens_is_recorded(catalog, team, sdk, upstream):
    _, secret = api_key_create(team=team, name="app")
    upstream.script("gpt-4o", Answer(delay=1.0, content="a b c"))

    with pytest.raises(openai.APITimeoutError):
        sdk(secret, timeout=0.3).chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True
        )

    wait_for(lambda: UsageRecord.objects.filter(team=team).exists())
    [row] = UsageRecord.objects.filter(team=team)
    assert row.status == "client_closed" and row.streamed
    assert not MeteredCall.objects.in_flight().exists()


@live
def test_a_stream_left_whose_usage_never_comes_is_billed_for_what_was_produced(
    catalog, team, sdk, upstream, settings
):
    """The drain waits at most TOLLGATE_DRAIN_S for the upstream's usage; then the call is
    billed on the prompt estimate and what was produced, flagged as estimated."""
    settings.TOLLGATE_DRAIN_S = 0
    _, secret = api_key_create(team=team, name="app")
    upstream.script("gpt-4o", Answer(content="w " * 40, chunk_delay=0.05))

    stream = sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()

    wait_for(lambda: UsageRecord.objects.filter(team=team).exists())
    [row] = UsageRecord.objects.filter(team=team)
    assert (row.status, row.tokens_estimated) == ("client_closed", True)
    assert 0 < row.completion_tokens < 40 and row.cost_usd > 0


@live
def test_clients_that_leave_mid_stream_are_all_recorded_with_the_upstreams_usage(
    catalog, team, async_sdk, upstream
):
    """Many streams abandoned after two events, at once: each call is recorded once, billed on
    the usage the upstream sends at its end (the gateway drains it), nothing stays reserved."""
    _, secret = api_key_create(team=team, name="app")
    budget = budget_set(team=team, amount_usd=Decimal("10"))
    upstream.script(
        "gpt-4o",
        *[
            Answer(
                content="w " * 30,
                chunk_delay=0.01,
                usage={"prompt_tokens": 40, "completion_tokens": 30},
            )
        ]
        * 12,
    )

    async def leave_early(client):
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, n=3
        )
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 2:
                break
        await stream.close()

    async def run():
        client = async_sdk(secret, timeout=30)
        await asyncio.gather(*[leave_early(client) for _ in range(12)])
        await client.close()

    asyncio.run(run())

    wait_for(lambda: UsageRecord.objects.filter(team=team).count() == 12)
    rows = list(UsageRecord.objects.filter(team=team))
    assert {(r.status, r.tokens_estimated, r.prompt_tokens, r.completion_tokens) for r in rows} == {
        ("client_closed", False, 40, 90)
    }
    wait_for(lambda: not MeteredCall.objects.in_flight().exists())
    counter = BudgetCounter.objects.get(budget=budget)
    assert counter.reserved_usd == 0 and counter.spent_usd == sum(r.cost_usd for r in rows)


@live
def test_leaving_before_the_usage_chunk_does_not_dodge_it(catalog, team, sdk, upstream):
    """A client reads the whole answer and leaves before the usage event, which carries
    4,000 tokens, 3,950 of them hidden reasoning: it is billed on that usage, not on an estimate."""
    _, secret = api_key_create(team=team, name="app")
    usage = {
        "prompt_tokens": 20,
        "completion_tokens": 4_000,
        "completion_tokens_details": {"reasoning_tokens": 3_950},
    }
    upstream.script("gpt-4o", Answer(content="short answer", usage=usage, usage_delay=0.5))

    stream = sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].finish_reason:
            break
    stream.close()

    wait_for(lambda: UsageRecord.objects.filter(team=team).exists())
    [row] = UsageRecord.objects.filter(team=team)
    assert (row.status, row.tokens_estimated, row.completion_tokens, row.reasoning_tokens) == (
        "client_closed",
        False,
        4_000,
        3_950,
    )


@live
@pytest.mark.parametrize(
    "answer",
    [
        {"choices": 5},
        {"choices": [{"message": "hello"}]},
        {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": None, "refusal": "no"}}
            ]
        },
    ],
    ids=["choices-int", "message-str", "refusal"],
)
def test_an_odd_answer_is_passed_on_and_billed_never_a_500(
    catalog, team, upstream, live_portal, answer
):
    import httpx2

    _, secret = api_key_create(team=team, name="app")
    upstream.script("gpt-4o", Answer(extra=answer, usage=None))

    response = httpx2.post(
        f"{live_portal.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "gpt-4o", "messages": MESSAGES},
        timeout=10,
    )

    assert response.status_code == 200 and response.json()["choices"] == answer["choices"]
    [row] = UsageRecord.objects.filter(team=team)
    assert (row.status, row.tokens_estimated) == ("ok", True) and row.cost_usd > 0


@live
def test_an_embeddings_upstream_reporting_output_is_billed_for_input_only(
    catalog, team, sdk, upstream
):
    _, secret = api_key_create(team=team, name="app")
    upstream.script(
        "text-embedding-3-small", Answer(usage={"prompt_tokens": 5, "completion_tokens": 7})
    )

    sdk(secret).embeddings.create(model="text-embedding-3-small", input="hello")

    [row] = UsageRecord.objects.filter(team=team)
    assert (row.status, row.prompt_tokens, row.completion_tokens) == ("ok", 5, 0)


# --- Deadlines ------------------------------------------------------------------------------------


@live
def test_a_stream_past_its_deadline_is_ended_and_billed(catalog, team, sdk, upstream):
    global_route("patient", ["gpt-4o"], deadline_s=1)
    _, secret = api_key_create(team=team, name="app")
    upstream.script("gpt-4o", Answer(content="w " * 50, chunk_delay=0.1))

    stream = sdk(secret).chat.completions.create(model="patient", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)

    assert "deadline" in str(caught.value.message)
    assert 3 <= len(received) < 50
    [row] = UsageRecord.objects.filter(team=team)
    assert (row.status, row.tokens_estimated, row.route) == ("timeout", True, "patient")
    assert row.completion_tokens > 0 and row.cost_usd > 0
    assert not MeteredCall.objects.in_flight().exists()


@live
def test_a_client_that_stops_reading_cannot_hold_a_call_past_its_deadline(
    catalog, team, upstream, live_portal
):
    """The relay waits at its yield while the client does not read; the watchdog ends the
    call at its deadline anyway, billed within what the request allowed."""
    import httpx2

    global_route("patient", ["gpt-4o"], deadline_s=1)
    _, secret = api_key_create(team=team, name="app")
    # Big events, so unread ones fill the sockets' buffers and the relay blocks sending.
    upstream.script("gpt-4o", Answer(content=" ".join(["x" * 200_000] * 40), usage=None))

    with httpx2.stream(
        "POST",
        f"{live_portal.url}/v1/chat/completions",
        timeout=30,
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "patient", "messages": MESSAGES, "stream": True, "max_tokens": 500},
    ) as response:
        unread = response.iter_raw(1024)
        next(unread)  # the stream started; now stop reading (holding the iterator open)
        wait_for(lambda: UsageRecord.objects.filter(team=team).exists(), timeout=10)
        unread.close()

    [row] = UsageRecord.objects.filter(team=team)
    assert (row.status, row.tokens_estimated) == ("timeout", True)
    assert row.completion_tokens <= 500
    assert not MeteredCall.objects.in_flight().exists()


@live
def test_a_budget_set_or_lowered_while_a_call_is_in_flight_still_reconciles(
    catalog, team, sdk, upstream
):
    import threading

    from django.db import connection
    from django.utils import timezone

    from usage.reconcile import reconcile_month

    _, secret = api_key_create(team=team, name="app")
    upstream.script("gpt-4o", Answer(delay=0.8), Answer(delay=0.8))
    calls = []

    def call():
        calls.append(
            sdk(secret, timeout=10).chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=50
            )
        )
        connection.close()

    first = threading.Thread(target=call)
    first.start()
    wait_for(lambda: MeteredCall.objects.in_flight().exists())
    budget_set(team=team, amount_usd=Decimal("5"))  # a new budget, mid-call
    first.join()
    second = threading.Thread(target=call)
    second.start()
    wait_for(lambda: MeteredCall.objects.in_flight().exists())
    budget_set(team=team, amount_usd=Decimal("0.0001"))  # lowered below what is in flight
    second.join()

    assert len(calls) == 2
    counter = BudgetCounter.objects.get()
    assert counter.spent_usd == UsageRecord.objects.aggregate(total=Sum("cost_usd"))["total"]
    now = timezone.now()
    report = reconcile_month(month=now.date().replace(day=1), now=now)
    assert report.ok, report.problems


@pytest.mark.django_db
def test_a_route_may_not_outlive_the_global_deadline(catalog, settings):
    from routing.services import CatalogError, route_fields

    settings.TOLLGATE_CALL_DEADLINE_S = 120
    with pytest.raises(CatalogError, match="between 1 and 120"):
        route_fields({"name": "slow", "targets": ["gpt-4o"], "deadline_s": 3600})


# --- Requests shaped to look cheap, against a hard budget -------------------------------------------

AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGR" + "A" * 6_000, "format": "wav"}}
FILE = {
    "type": "file",
    "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64," + "J" * 6_000},
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "L" * 4_000,
            "parameters": {"type": "object", "properties": {}},
        },
    }
]
FUNCTIONS = [
    {
        "name": "legacy",
        "description": "F" * 4_000,
        "parameters": {"type": "object", "properties": {}},
    }
]
SHAPES = [
    {"n": 4, "max_tokens": 300},
    {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "listen"}, AUDIO]}],
        "max_tokens": 300,
    },
    {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "read"}, FILE]}],
        "max_tokens": 300,
    },
    {"tools": TOOLS, "max_tokens": 300},
    {"functions": FUNCTIONS, "max_tokens": 300},
    {
        "messages": [{"role": "user", "content": {"type": "text", "text": "O" * 5_000}}],
        "max_tokens": 300,
    },
    {"stream": True, "n": 2, "max_tokens": 300},
    {
        "messages": [
            {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]}
        ],
        "max_tokens": 300,
    },
    {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "video_url", "video_url": {"url": "https://v/x.mp4"}}],
            }
        ],
        "max_tokens": 300,
    },
    {"max_completion_tokens": 1, "max_tokens": 3000},
    {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "https://i/x.png", "detail": "low"}}
                ],
            }
        ],
        "max_tokens": 300,
    },
]


@live
def test_no_request_shape_overspends_a_hard_budget(catalog, team, async_sdk, upstream):
    """100 parallel calls of every shape (n, audio, files inline and by id, video, tools,
    legacy functions, object content, mismatched maxima, images by URL, streams) against a
    small hard budget and an upstream that bills honestly (the most it may): spend stays
    within the budget and nothing stays reserved."""
    key, secret = api_key_create(team=team, name="app")
    budget = budget_set(team=team, amount_usd=Decimal("0.05"))
    calls = [SHAPES[i % len(SHAPES)] for i in range(100)]
    upstream.script("deepseek-v4-flash", *[Answer(content="x " * 10, usage=HONEST)] * 100)

    async def one(client, shape):
        body = {"model": "deepseek-v4-flash", "messages": MESSAGES, **shape}
        if body.get("stream"):
            stream = await client.chat.completions.create(**body)
            async for _ in stream:
                pass
            return "streamed"
        return await client.chat.completions.create(**body)

    async def run():
        client = async_sdk(secret, timeout=60)
        results = await asyncio.gather(*[one(client, s) for s in calls], return_exceptions=True)
        await client.close()
        return results

    results = asyncio.run(run())

    refused = [r for r in results if isinstance(r, Exception)]
    odd = [
        r
        for r in refused
        if not (isinstance(r, openai.RateLimitError) and r.code == "insufficient_quota")
    ]
    assert not odd, [repr(r)[:300] for r in odd]
    assert 0 < len(refused) < 100
    spent = UsageRecord.objects.filter(team=team).aggregate(total=Sum("cost_usd"))["total"]
    counter = BudgetCounter.objects.get(budget=budget)
    assert spent <= Decimal("0.05")
    assert (counter.spent_usd, counter.reserved_usd, counter.overrun_usd) == (spent, 0, 0)
    assert not MeteredCall.objects.in_flight().exists()
    # Each of the 100 calls has exactly one outcome row (no fallback here).
    assert UsageRecord.objects.filter(team=team).count() == 100


@live
def test_an_upstream_claiming_more_output_than_allowed_is_not_believed(
    catalog, team, sdk, upstream
):
    _, secret = api_key_create(team=team, name="app")
    upstream.script(
        "gpt-4o",
        Answer(content="one two", usage={"prompt_tokens": 12, "completion_tokens": 120_000}),
    )

    sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)

    [row] = UsageRecord.objects.filter(team=team)
    assert (row.tokens_estimated, row.completion_tokens) == (True, tokens.text_tokens("one two"))


@live
def test_an_upstream_billing_a_prompt_past_its_ceiling_is_not_believed(
    catalog, team, sdk, upstream
):
    """A prompt cannot cost more than its bytes plus the provider's framing: an upstream
    claiming 100,000 prompt tokens for one short message is billed the gateway's count,
    and the hard budget is not overrun."""
    _, secret = api_key_create(team=team, name="app")
    budget = budget_set(team=team, amount_usd=Decimal("0.05"))
    upstream.script("gpt-4o", Answer(usage={"prompt_tokens": 100_000, "completion_tokens": 10}))

    sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=100)

    [row] = UsageRecord.objects.filter(team=team)
    assert row.tokens_estimated and row.prompt_tokens == tokens.chat_prompt_estimate(
        {"messages": MESSAGES}
    )
    counter = BudgetCounter.objects.get(budget=budget)
    assert counter.overrun_usd == 0 and counter.spent_usd == row.cost_usd


@live
def test_a_budget_refusal_is_not_retried_by_the_sdk(catalog, team, sdk):
    _, secret = api_key_create(team=team, name="app")
    budget_set(team=team, amount_usd=Decimal("0"))

    with pytest.raises(openai.RateLimitError) as caught:
        sdk(secret, max_retries=2).chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert caught.value.response.headers["x-should-retry"] == "false"
    assert UsageRecord.objects.filter(team=team).count() == 1


# --- A worker killed mid-call ---------------------------------------------------------------------


@live
def test_a_sigkilled_worker_has_its_calls_settled_within_a_minute(
    catalog, team, upstream, settings
):
    """A real uvicorn process is killed with SIGKILL mid-stream: its lease stops being
    renewed, and a sweep once the lease has lapsed (30 s) records the call and releases
    its reservation."""
    import os
    import signal
    from datetime import timedelta

    import httpx2
    from django.utils import timezone

    from tests.processes import database_url_of_tests, start_portal
    from usage.metering import inflight_sweep
    from usage.models import WorkerLease

    _, secret = api_key_create(team=team, name="app")
    budget = budget_set(team=team, amount_usd=Decimal("10"))
    upstream.script("gpt-4o", Answer(content="w " * 100, chunk_delay=0.2))
    env = {
        **os.environ,
        "REDIS_URL": settings.REDIS_URL,
        "TOLLGATE_WEB_SWEEPS": "0",
        "DATABASE_URL": database_url_of_tests(),
    }
    worker, base = start_portal(env, "--log-level", "warning")
    try:
        url = f"{base}/v1/chat/completions"
        with httpx2.stream(
            "POST",
            url,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
            json={"model": "gpt-4o", "messages": MESSAGES, "stream": True},
        ) as response:
            lines = response.iter_lines()
            next(lines)  # the stream has started: the call is in flight
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()

    call = MeteredCall.objects.in_flight().get()
    assert WorkerLease.objects.filter(worker=call.worker).exists()  # its heartbeat had run
    assert BudgetCounter.objects.get(budget=budget).reserved_usd > 0
    now = timezone.now()
    assert inflight_sweep(now=now) == 0  # its lease has not lapsed yet
    assert inflight_sweep(now=now + timedelta(seconds=settings.TOLLGATE_LEASE_S + 1)) == 1

    [row] = UsageRecord.objects.filter(team=team)
    assert (row.status, row.attempt, row.cost_usd) == ("interrupted", SWEPT_ATTEMPT, 0)
    assert BudgetCounter.objects.get(budget=budget).reserved_usd == 0
    assert settings.TOLLGATE_LEASE_S + settings.TOLLGATE_HEARTBEAT_S < 60


# --- Names: a model is always the model ---------------------------------------------------------------


@pytest.mark.django_db
def test_a_route_named_like_a_model_is_refused(catalog, team, owner):
    from rest_framework.test import APIClient

    from routing.services import CatalogError, catalog_load_data

    client = APIClient()
    client.force_login(owner)
    response = client.post(
        "/api/teams/acme/routes/", {"name": "qwen3-32b", "targets": ["gpt-4o"]}, format="json"
    )
    assert response.status_code == 400 and "model" in str(response.data)
    with pytest.raises(CatalogError, match="a model has that id"):
        catalog_load_data(data={"route": [{"name": "gpt-4o-mini", "targets": ["gpt-4o"]}]})
    with pytest.raises(CatalogError, match="a route has that name"):
        catalog_load_data(
            data={
                "model": [
                    {
                        "id": "bulk_classify",
                        "provider": "global",
                        "input_per_mtok": "1",
                        "output_per_mtok": "1",
                    }
                ]
            }
        )


@live
def test_a_key_limited_to_a_model_is_never_routed_elsewhere(catalog, team, sdk):
    """Even a route stored under a model's name (written before this rule, or by hand) does
    not shadow the model."""
    from routing.models import Route
    from routing.selectors import catalog_changed

    Route.objects.create(team=team, name="qwen3-32b", strategy="fallback", targets=["gpt-4o"])
    catalog_changed()
    _, secret = api_key_create(team=team, name="cheap-only", allowed_models=["qwen3-32b"])

    raw = sdk(secret).chat.completions.with_raw_response.create(
        model="qwen3-32b", messages=MESSAGES
    )

    assert raw.headers["x-tollgate-model"] == "qwen3-32b"
    assert list(UsageRecord.objects.values_list("model", "route")) == [("qwen3-32b", "")]


@live
def test_a_client_that_leaves_right_after_sending_frees_its_reservation_at_once(
    catalog, team, upstream, live_portal
):
    """The call was opened while the client left: it is recorded as never sent upstream,
    at no cost, and its reservation released, not held until a sweep."""
    import json as jsonlib
    import socket

    _, secret = api_key_create(team=team, name="app")
    budget = budget_set(team=team, amount_usd=Decimal("5"))
    body = jsonlib.dumps({"model": "gpt-4o", "messages": MESSAGES}).encode()
    host, port = live_portal.url.removeprefix("http://").split(":")
    for _ in range(5):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {secret}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
    wait_for(lambda: not MeteredCall.objects.in_flight().exists())
    counter = BudgetCounter.objects.get(budget=budget)
    assert counter.reserved_usd == 0
    assert counter.spent_usd == (UsageRecord.objects.aggregate(t=Sum("cost_usd"))["t"] or 0)
    assert set(UsageRecord.objects.values_list("status", flat=True)) <= {"ok", "client_closed"}


@live
def test_a_lone_surrogate_in_an_answer_is_passed_on_never_a_500(
    catalog, team, upstream, live_portal
):
    import httpx2

    _, secret = api_key_create(team=team, name="app")
    upstream.script("gpt-4o", Answer(content="ok \ud800"))

    response = httpx2.post(
        f"{live_portal.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "gpt-4o", "messages": MESSAGES},
        timeout=10,
    )

    assert response.status_code == 200 and "\\ud800" in response.text
    assert UsageRecord.objects.get().status == "ok"


@live
def test_an_overlong_model_name_is_a_400(catalog, team, sdk):
    _, secret = api_key_create(team=team, name="app")
    with pytest.raises(openai.BadRequestError):
        sdk(secret).chat.completions.create(model="m" * 300, messages=MESSAGES)


@pytest.mark.django_db(transaction=True)
def test_compare_passes_an_odd_answer_on_without_a_500(catalog, team, owner, upstream):
    from rest_framework.test import APIClient

    upstream.script("gpt-4o", Answer(extra={"choices": 5}, usage=None))
    client = APIClient()
    client.force_login(owner)
    response = client.post(
        "/api/teams/acme/compare/",
        {"models": ["gpt-4o"], "messages": MESSAGES},
        format="json",
    )
    assert response.status_code == 200 and response.data[0]["answer"] is None
