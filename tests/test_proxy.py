"""The proxy, played by the official openai SDK against a live portal and a fake upstream."""

import asyncio
from decimal import Decimal

import pytest

from routing import tokens
from routing.tokens import text_tokens
from tests.fake_upstream import Answer
from usage.models import MeteredCall, UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Classify: the parcel arrived broken."}]
# deepseek-v4-flash: USD 0.18 in, 0.25 out, 0.07 cached, per 1M tokens; fake usage is 12 in, 34 out.
FLASH_COST = Decimal("0.00001066")


def rows(team):
    return list(UsageRecord.objects.filter(team=team).order_by("id"))


def test_chat_completion_is_relayed_and_recorded_with_exact_cost(
    catalog, inference_key, sdk, team, upstream
):
    key, secret = inference_key

    raw = sdk(secret).chat.completions.with_raw_response.create(
        model="deepseek-v4-flash", messages=MESSAGES
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == "Hello from the fake upstream"
    assert completion.model == "deepseek-v4-flash"
    assert completion.system_fingerprint == "fp_fake"
    assert Decimal(raw.headers["x-tollgate-cost"]) == FLASH_COST
    assert raw.headers["x-tollgate-model"] == "deepseek-v4-flash"
    [row] = rows(team)
    assert row.request_id == raw.headers["x-request-id"]
    assert (row.status, row.model, row.provider, row.api_key_id) == (
        "ok",
        "deepseek-v4-flash",
        "global",
        key.id,
    )
    assert (row.prompt_tokens, row.completion_tokens, row.tokens_estimated) == (12, 34, False)
    assert (row.input_per_mtok, row.output_per_mtok) == (Decimal("0.18"), Decimal("0.25"))
    assert row.cost_usd == FLASH_COST
    assert row.streamed is False and row.latency_ms is not None
    assert upstream.received[0].headers["authorization"] == "Bearer sk-fake-upstream-secret"
    assert not MeteredCall.objects.in_flight().exists()


def test_request_fields_pass_through_to_the_upstream_unchanged(
    catalog, inference_key, sdk, team, upstream
):
    _, secret = inference_key
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]

    sdk(secret).chat.completions.create(
        model="deepseek-v4-flash",
        messages=MESSAGES,
        tools=tools,
        temperature=0.2,
        n=2,
        stop=["\n"],
        seed=7,
        response_format={"type": "json_object"},
        user="end-user-42",
        max_tokens=50,
        extra_body={"top_k": 5},
    )

    sent = upstream.received[0].body
    assert sent["model"] == "deepseek-v4-flash"
    assert sent["messages"] == MESSAGES
    assert sent["tools"] == tools
    assert (sent["temperature"], sent["n"], sent["stop"], sent["seed"]) == (0.2, 2, ["\n"], 7)
    assert sent["response_format"] == {"type": "json_object"}
    assert (sent["user"], sent["max_tokens"], sent["top_k"]) == ("end-user-42", 50, 5)
    assert rows(team)[0].end_user == "end-user-42"


def test_upstream_id_is_sent_upstream_and_catalog_id_returned(
    catalog, inference_key, sdk, upstream
):
    _, secret = inference_key

    completion = sdk(secret).chat.completions.create(model="claude-3.5-sonnet", messages=MESSAGES)

    assert upstream.received[0].body["model"] == "claude-3-5-sonnet-latest"
    assert completion.model == "claude-3.5-sonnet"


def test_cached_and_reasoning_tokens_are_priced_by_the_formula(
    catalog, inference_key, sdk, team, upstream
):
    _, secret = inference_key
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 400},
        "completion_tokens_details": {"reasoning_tokens": 200},
    }
    upstream.script("deepseek-v4-flash", Answer(usage=usage))
    long_prompt = [{"role": "user", "content": "lorem ipsum " * 400}]  # room for 1,000 tokens

    raw = sdk(secret).chat.completions.with_raw_response.create(
        model="deepseek-v4-flash", messages=long_prompt
    )

    # (1000 - 400) × 0.18 + 400 × 0.07 + 500 × 0.25 = 108 + 28 + 125 = 261 per 1M
    expected = Decimal("0.000261")
    assert Decimal(raw.headers["x-tollgate-cost"]) == expected
    [row] = rows(team)
    assert (row.cached_tokens, row.reasoning_tokens, row.cost_usd) == (400, 200, expected)
    assert row.cached_input_per_mtok == Decimal("0.07")


def test_model_without_cached_price_bills_cached_tokens_at_input_price(
    catalog, inference_key, sdk, team, upstream
):
    _, secret = inference_key
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 60},
    }
    upstream.script("gpt-4o", Answer(usage=usage))

    sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES)

    [row] = rows(team)
    # 100 × 2.50 + 10 × 10.00 = 350 per 1M
    assert row.cached_input_per_mtok == Decimal("2.5")
    assert row.cost_usd == Decimal("0.00035")


def test_upstream_without_usage_is_estimated_and_flagged(
    catalog, inference_key, sdk, team, upstream
):
    _, secret = inference_key
    upstream.script("deepseek-v4-flash", Answer(content="four words right here", usage=None))

    raw = sdk(secret).chat.completions.with_raw_response.create(
        model="deepseek-v4-flash", messages=MESSAGES
    )

    [row] = rows(team)
    assert row.tokens_estimated is True
    # Prompt: 3 priming + 4 framing + ceil(36 chars / 4) = 16; answer: ceil(21 / 4) = 6.
    assert len(MESSAGES[0]["content"]) == 36
    assert (row.prompt_tokens, row.completion_tokens) == (16, 6)
    assert row.cost_usd == (16 * Decimal("0.18") + 6 * Decimal("0.25")) / 1_000_000
    assert Decimal(raw.headers["x-tollgate-cost"]) == row.cost_usd


def test_async_client_chat_and_embeddings(catalog, inference_key, async_sdk, team):
    _, secret = inference_key

    async def calls():
        client = async_sdk(secret)
        chat = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        embedding = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        await client.close()
        return chat, embedding

    chat, embedding = asyncio.run(calls())

    assert chat.model == "gpt-4o"
    assert [d.embedding for d in embedding.data] == [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]
    chat_row, embed_row = rows(team)
    assert chat_row.cost_usd == Decimal("0.00037")  # 12 × 2.50 + 34 × 10.00 per 1M
    assert (embed_row.endpoint, embed_row.prompt_tokens, embed_row.completion_tokens) == (
        "embeddings",
        12,
        0,
    )
    assert embed_row.cost_usd == Decimal("0.00000024")  # 12 × 0.02 per 1M


def test_embeddings_default_to_floats_for_raw_clients(
    catalog, inference_key, live_portal, upstream
):
    import httpx2 as httpx

    _, secret = inference_key
    response = httpx.post(
        f"{live_portal.url}/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "hello"},
        headers={"Authorization": f"Bearer {secret}"},
    )

    assert response.status_code == 200
    assert upstream.received[0].body["encoding_format"] == "float"
    assert response.json()["data"][0]["embedding"] == [0.1, 0.2, 0.3]
    assert response.headers["x-tollgate-cost"] == "0.00000024"


def test_stream_relays_chunks_and_records_once(catalog, inference_key, sdk, team, upstream):
    _, secret = inference_key

    with sdk(secret).chat.completions.with_streaming_response.create(
        model="deepseek-v4-flash", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        assert response.headers["x-tollgate-model"] == "deepseek-v4-flash"
        chunks = list(response.parse())

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake upstream"
    assert all(c.model == "deepseek-v4-flash" for c in chunks)
    # The client did not ask for usage, so no usage chunk reaches it...
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    # ...but the gateway asked the upstream for it, and billed it.
    assert upstream.received[0].body["stream_options"] == {"include_usage": True}
    [row] = rows(team)
    assert (row.request_id, row.status, row.streamed) == (request_id, "ok", True)
    assert (row.prompt_tokens, row.completion_tokens, row.cost_usd) == (12, 34, FLASH_COST)
    assert row.ttft_ms is not None and row.tokens_estimated is False


def test_stream_forwards_usage_chunk_when_the_client_asks(catalog, inference_key, sdk, team):
    _, secret = inference_key

    stream = sdk(secret).chat.completions.create(
        model="deepseek-v4-flash",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (12, 34)
    assert rows(team)[0].cost_usd == FLASH_COST


def test_async_stream(catalog, inference_key, async_sdk, team):
    _, secret = inference_key

    async def consume():
        client = async_sdk(secret)
        stream = await client.chat.completions.create(model="glm-5", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        return text

    assert asyncio.run(consume()) == "Hello from the fake upstream"
    [row] = rows(team)
    assert row.cost_usd == (12 * Decimal("0.73") + 34 * Decimal("1.92")) / 1_000_000


def test_stream_without_upstream_usage_is_estimated(catalog, inference_key, sdk, team, upstream):
    _, secret = inference_key
    upstream.script("deepseek-v4-flash", Answer(content="one two three", usage=None))

    list(
        sdk(secret).chat.completions.create(
            model="deepseek-v4-flash", messages=MESSAGES, stream=True
        )
    )

    [row] = rows(team)
    assert row.tokens_estimated is True
    assert (row.prompt_tokens, row.completion_tokens) == (16, 4)  # ceil(13 / 4) = 4


def test_stream_is_relayed_as_it_arrives(catalog, inference_key, sdk, upstream):
    import time

    _, secret = inference_key
    upstream.script("deepseek-v4-flash", Answer(content="a b c d", chunk_delay=0.3))

    start = time.monotonic()
    stream = sdk(secret).chat.completions.create(
        model="deepseek-v4-flash", messages=MESSAGES, stream=True
    )
    first = next(iter(stream))
    first_at = time.monotonic() - start
    list(stream)
    total = time.monotonic() - start

    assert first.choices[0].delta.content == "a"
    # Five events 0.3 s apart: the first must arrive long before the last.
    assert first_at < total - 0.8


def test_client_disconnect_past_the_drain_time_cancels_upstream_and_records_what_was_delivered(
    catalog, inference_key, sdk, team, upstream, settings
):
    import time

    settings.TOLLGATE_DRAIN_S = 0  # no waiting for the upstream's usage once the client left
    _, secret = inference_key
    words = " ".join(f"w{i}" for i in range(40))
    upstream.script("deepseek-v4-flash", Answer(content=words, chunk_delay=0.1))

    stream = sdk(secret).chat.completions.create(
        model="deepseek-v4-flash", messages=MESSAGES, stream=True
    )
    received = []
    for chunk in stream:
        received.append(chunk.choices[0].delta.content)
        if len(received) == 3:
            break
    stream.close()

    deadline = time.monotonic() + 10
    while not rows(team) and time.monotonic() < deadline:
        time.sleep(0.05)
    [row] = rows(team)
    assert row.status == "client_closed" and row.streamed is True
    assert row.tokens_estimated is True
    # Billed: what was relayed before the disconnect, at least what the client read.
    assert text_tokens("".join(received)) <= row.completion_tokens < text_tokens(words)
    assert (
        row.cost_usd
        == (row.prompt_tokens * Decimal("0.18") + row.completion_tokens * Decimal("0.25"))
        / 1_000_000
    )
    while not upstream.closed_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.closed_streams == ["deepseek-v4-flash"]
    assert not MeteredCall.objects.in_flight().exists()


def test_stream_cut_by_upstream_ends_with_an_error_event_and_bills_what_was_delivered(
    catalog, inference_key, sdk, team, upstream
):
    import openai

    _, secret = inference_key
    upstream.script("gpt-4o", Answer(content="a b c d e f", cut_after=3))

    stream = sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)

    assert received == ["a", " b", " c"]
    [row] = rows(team)
    # No usage arrived: the prompt estimate and the delivered "a b c", at gpt-4o's prices, estimated.
    prompt = tokens.chat_prompt_estimate({"messages": MESSAGES})
    assert (row.status, row.tokens_estimated, row.prompt_tokens, row.completion_tokens) == (
        "upstream_error",
        True,
        prompt,
        tokens.text_tokens("a b c"),
    )
    assert row.cost_usd == (prompt * Decimal("2.5") + 2 * Decimal("10")) / 10**6


def test_a_stream_the_upstream_ends_cleanly_before_its_answer_is_done_is_an_error(
    catalog, inference_key, sdk, team, upstream
):
    # The body ends as if all was well (even with [DONE]), but no choice ever finished.
    import json

    import openai

    from tests.fake_upstream import RawStream

    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o", "created": 1}
    piece = {**chunk, "choices": [{"index": 0, "delta": {"content": "Hal"}}]}
    upstream.script("gpt-4o", RawStream([f"data: {json.dumps(piece)}\n\n", "data: [DONE]\n\n"]))
    _, secret = inference_key

    stream = sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for event in stream:
            received.append(event.choices[0].delta.content)

    assert received == ["Hal"] and "ended before its answer was complete" in caught.value.message
    [row] = rows(team)
    assert (row.status, row.completion_tokens) == ("upstream_error", tokens.text_tokens("Hal"))


def test_models_lists_what_the_key_may_use(catalog, team, sdk):
    from accounts.services import api_key_create

    _, everything = api_key_create(team=team, name="all")
    _, limited = api_key_create(
        team=team, name="some", allowed_models=["gpt-4o", "deepseek-v4-flash", "qwen3-32b"]
    )

    all_ids = {m.id for m in sdk(everything).models.list()}
    some_ids = {m.id for m in sdk(limited).models.list()}

    assert {
        "gpt-4o",
        "deepseek-v4-flash",
        "text-embedding-3-small",
        "bulk_classify",
        "code_review",
    } <= all_ids
    # bulk_classify and cheap_chat have only allowed targets; code_review does not.
    assert some_ids == {"gpt-4o", "deepseek-v4-flash", "qwen3-32b", "bulk_classify", "cheap_chat"}
    assert sdk(limited).models.retrieve("gpt-4o").owned_by == "openai"


def test_route_name_is_served_by_its_first_target(catalog, inference_key, sdk, team):
    _, secret = inference_key

    raw = sdk(secret).chat.completions.with_raw_response.create(
        model="bulk_classify", messages=MESSAGES
    )

    assert raw.headers["x-tollgate-model"] == "deepseek-v4-flash"
    assert raw.headers["x-tollgate-route"] == "bulk_classify"
    [row] = rows(team)
    assert (row.requested_model, row.route, row.model) == (
        "bulk_classify",
        "bulk_classify",
        "deepseek-v4-flash",
    )
