"""POST /v1/responses (OpenAI's Responses API) with the official SDK and LangChain: bridged to
a chat-only upstream, or passed to one that speaks it; metered and billed exactly like chat."""

import json
from decimal import Decimal

import httpx2
import openai
import pytest

from tests.factories import catalog_models
from tests.fake_upstream import Answer, Raw, RawStream
from tests.waiting import wait_for
from usage.budgets import budget_set
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

# deepseek-v4-flash: $0.18 in, $0.07 cached, $0.25 out per million; the fake upstream's chat
# answers report 12 prompt and 34 completion tokens.
CHAT_COST = (12 * Decimal("0.18") + 34 * Decimal("0.25")) / 10**6
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def serve_natively():
    """deepseek-v4-flash's upstream speaks the Responses API itself."""
    catalog_models(
        {
            "id": "deepseek-v4-flash",
            "provider": "global",
            "input_per_mtok": "0.18",
            "cached_input_per_mtok": "0.07",
            "output_per_mtok": "0.25",
            "endpoints": ["chat", "responses"],
        }
    )


def rows(team):
    return list(UsageRecord.objects.filter(team=team).order_by("id"))


def test_a_chat_only_upstream_serves_a_response_through_the_bridge(
    catalog, sdk, inference_key, team, upstream
):
    _, secret = inference_key

    raw = sdk(secret).responses.with_raw_response.create(
        model="deepseek-v4-flash",
        instructions="Answer briefly.",
        input="Say hello",
        max_output_tokens=100,
    )
    response = raw.parse()

    assert response.output_text == "Hello from the fake upstream"
    assert response.model == "deepseek-v4-flash" and response.status == "completed"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 34)
    sent = upstream.received[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Say hello"},
    ]
    assert sent.body["max_tokens"] == 100
    [row] = rows(team)
    assert (row.endpoint, row.status, row.prompt_tokens, row.completion_tokens) == (
        "responses",
        "ok",
        12,
        34,
    )
    assert row.cost_usd == CHAT_COST == Decimal(raw.headers["x-tollgate-cost"])


def test_function_calling_round_trips_through_the_bridge(
    catalog, sdk, inference_key, team, upstream
):
    _, secret = inference_key
    client = sdk(secret)
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    upstream.script("deepseek-v4-flash", Answer(tool_calls=[call]), Answer(content="Sunny."))
    question = [{"role": "user", "content": "Weather in Paris?"}]

    first = client.responses.create(model="deepseek-v4-flash", input=question, tools=[WEATHER])
    [function_call] = [item for item in first.output if item.type == "function_call"]
    second = client.responses.create(
        model="deepseek-v4-flash",
        input=[
            *question,
            function_call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": function_call.call_id, "output": "18C"},
        ],
        tools=[WEATHER],
    )

    assert (function_call.name, json.loads(function_call.arguments)) == (
        "get_weather",
        {"city": "Paris"},
    )
    assert second.output_text == "Sunny."
    first_sent, second_sent = (r.body for r in upstream.received[-2:])
    assert first_sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["parameters"],
                "description": "The weather in a city.",
            },
        }
    ]
    assert second_sent["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    assert [(r.endpoint, r.cost_usd) for r in rows(team)] == [("responses", CHAT_COST)] * 2


def test_a_native_upstream_gets_the_call_as_is_and_its_usage_is_billed(
    catalog, sdk, inference_key, team, upstream
):
    serve_natively()
    _, secret = inference_key

    raw = sdk(secret).responses.with_raw_response.create(
        model="deepseek-v4-flash", input="Say hello", max_output_tokens=100
    )

    assert raw.parse().output_text == "Hello from the fake upstream"
    sent = upstream.received[-1]
    assert sent.path == "/v1/responses" and sent.body["input"] == "Say hello"
    [row] = rows(team)
    # 20 input tokens, 8 of them cached; 30 output tokens, 10 of them reasoning.
    assert (row.prompt_tokens, row.cached_tokens, row.completion_tokens, row.reasoning_tokens) == (
        20,
        8,
        30,
        10,
    )
    cost = (12 * Decimal("0.18") + 8 * Decimal("0.07") + 30 * Decimal("0.25")) / 10**6
    assert row.cost_usd == cost == Decimal(raw.headers["x-tollgate-cost"])


@pytest.mark.parametrize(
    "fields, param, code",
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0]", "unsupported_tool"),
        ({"previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
        ({"input": [{"type": "image_generation_call"}]}, None, "invalid_value"),
        ({"tools": ["x"]}, "tools[0]", "invalid_type"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice", "invalid_value"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls", "invalid_type"),
        ({"metadata": "x"}, "metadata", "invalid_type"),
        ({"text": {"format": {"type": "json_schema"}}}, "text", "invalid_value"),
        ({"prompt": {"id": "pmpt_1", "variables": {"x": "A"}}}, "prompt", "unsupported_parameter"),
        ({"conversation": "conv_1"}, "conversation", "unsupported_parameter"),
        ({"background": True}, "background", "unsupported_parameter"),
        ({"tools": [{"type": "function", "name": None}]}, "tools[0].name", "invalid_type"),
        (
            {"tools": [{"type": "function", "name": "f", "parameters": "x"}]},
            "tools[0].parameters",
            "invalid_type",
        ),
        ({"tool_choice": {"type": "function"}}, "tool_choice", "invalid_value"),
        ({"text": "json"}, "text", "invalid_type"),
        ({"text": {"format": "json"}}, "text.format", "invalid_value"),
        ({"text": {"format": {"type": ["json_object"]}}}, "text.format", "invalid_value"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input", "invalid_value"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0][0]",
            "invalid_type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": ["a"]}]}]},
            "input[0][0]",
            "invalid_type",
        ),
        (
            {
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [
                            {
                                "type": "input_image",
                                "image_url": "https://x.test/a.png",
                                "detail": "original",
                            }
                        ],
                    }
                ]
            },
            "input[0].output[0].detail",
            "invalid_value",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": None, "output": "x"}]},
            "input[0].call_id",
            "invalid_type",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
            "input[0].arguments",
            "invalid_type",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_image",
                                "image_url": "https://x.test/a.png",
                                "detail": [],
                            }
                        ],
                    }
                ]
            },
            "input[0][0].detail",
            "invalid_value",
        ),
        (
            {
                "input": [
                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_image", "image_url": "https://x.test/a.png"}],
                    },
                ]
            },
            "input[1].output",
            "invalid_type",
        ),
    ],
)
def test_what_cannot_be_bridged_or_billed_is_a_clear_400(
    catalog, sdk, inference_key, team, upstream, fields, param, code
):
    _, secret = inference_key

    with pytest.raises(openai.BadRequestError) as caught:
        sdk(secret).responses.create(model="deepseek-v4-flash", **{"input": "hi", **fields})

    assert caught.value.code == code and caught.value.body["param"] == param
    assert upstream.received == []


def test_stored_responses_are_not_kept_and_say_so(catalog, sdk, inference_key):
    _, secret = inference_key

    with pytest.raises(openai.NotFoundError) as caught:
        sdk(secret).responses.retrieve("resp_123")

    assert caught.value.code == "response_not_stored"


def test_an_over_budget_response_is_refused_like_chat(catalog, sdk, inference_key, team, upstream):
    budget_set(team=team, amount_usd=Decimal("0.001"), hard=True)
    _, secret = inference_key

    with pytest.raises(openai.RateLimitError) as caught:
        sdk(secret).responses.create(
            model="deepseek-v4-flash", input="hi", max_output_tokens=100_000
        )

    assert caught.value.code == "insufficient_quota"
    assert upstream.received == []
    assert [(r.endpoint, r.status) for r in rows(team)] == [("responses", "refused")]


def test_langchain_on_the_responses_api(catalog, inference_key, live_portal, team, upstream):
    from langchain_openai import ChatOpenAI

    _, secret = inference_key
    chat = ChatOpenAI(
        model="deepseek-v4-flash",
        base_url=f"{live_portal.url}/v1",
        api_key=secret,
        use_responses_api=True,
        max_retries=0,
    )

    answer = chat.invoke("Say hello")

    assert "Hello from the fake upstream" in str(answer.content)
    assert [r.endpoint for r in rows(team)] == ["responses"]


def _events(stream):
    """The stream's events, each validated against OpenAI's published shapes (the SDK's
    types are generated from OpenAI's OpenAPI specification)."""
    import typing

    from openai.types.responses import ResponseStreamEvent

    (union, *_) = typing.get_args(ResponseStreamEvent)
    shapes = {
        typing.get_args(cls.model_fields["type"].annotation)[0]: cls
        for cls in typing.get_args(union)
    }
    events = []
    for event in stream:
        shapes[event.type].model_validate(event.model_dump(exclude_unset=True))
        events.append(event)
    return events


@pytest.mark.parametrize("native", [False, True], ids=["bridged", "native"])
def test_a_streamed_response_sends_the_typed_events_and_is_billed_once(
    catalog, sdk, inference_key, team, upstream, native
):
    if native:
        serve_natively()
    _, secret = inference_key

    events = _events(
        sdk(secret).responses.create(
            model="deepseek-v4-flash", input="Say hello", max_output_tokens=100, stream=True
        )
    )

    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.output_item.done" in kinds
    assert [e.sequence_number for e in events] == sorted(e.sequence_number for e in events)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello from the fake upstream"
    final = events[-1].response
    assert final.output_text == text and final.model == "deepseek-v4-flash"
    assert upstream.received[-1].path == ("/v1/responses" if native else "/v1/chat/completions")
    [row] = rows(team)
    assert (row.endpoint, row.streamed, row.status) == ("responses", True, "ok")
    if native:
        assert (final.usage.input_tokens, final.usage.output_tokens) == (20, 30)
        cost = (12 * Decimal("0.18") + 8 * Decimal("0.07") + 30 * Decimal("0.25")) / 10**6
    else:
        assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 34)
        cost = CHAT_COST
    assert row.cost_usd == cost


def test_a_bridged_stream_carries_a_function_call_as_its_events(
    catalog, sdk, inference_key, team, upstream
):
    _, secret = inference_key
    call = {
        "id": "call_7",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    upstream.script("deepseek-v4-flash", Answer(tool_calls=[call]))

    events = _events(
        sdk(secret).responses.create(
            model="deepseek-v4-flash", input="Weather in Paris?", tools=[WEATHER], stream=True
        )
    )

    arguments = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert json.loads(arguments) == {"city": "Paris"}
    [item] = [e.item for e in events if e.type == "response.output_item.done"]
    assert (item.type, item.call_id, item.name, item.arguments) == (
        "function_call",
        "call_7",
        "get_weather",
        '{"city": "Paris"}',
    )
    assert events[-1].type == "response.completed"
    assert events[-1].response.output[0].call_id == "call_7"
    [row] = rows(team)
    assert (row.endpoint, row.streamed, row.cost_usd) == ("responses", True, CHAT_COST)


@pytest.mark.parametrize("native", [False, True], ids=["bridged", "native"])
def test_everything_a_response_request_carries_is_reserved(
    catalog, sdk, inference_key, team, upstream, native
):
    # A reasoning item (which a native upstream reads, and the bridge drops) carries 240 KB:
    # its bytes bound what it may cost, so a $0.01 hard budget refuses the call up front.
    if native:
        serve_natively()
    budget_set(team=team, amount_usd=Decimal("0.01"), hard=True)
    _, secret = inference_key
    reasoning = {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "A" * 240_000}],
    }

    with pytest.raises(openai.RateLimitError) as caught:
        sdk(secret).responses.create(
            model="deepseek-v4-flash",
            input=[reasoning, {"role": "user", "content": "hi"}],
            max_output_tokens=10,
        )

    assert caught.value.code == "insufficient_quota"
    assert upstream.received == []


def test_a_native_upstream_that_lies_about_its_usage_is_billed_on_the_gateways_count(
    catalog, sdk, inference_key, team, upstream
):
    # Zero tokens reported for 200 characters of answer: not believed.
    serve_natively()
    upstream.script(
        "deepseek-v4-flash",
        Answer(content="word " * 40, extra={"usage": {"input_tokens": 0, "output_tokens": 0}}),
    )
    _, secret = inference_key

    sdk(secret).responses.create(
        model="deepseek-v4-flash", input="Say hello", max_output_tokens=100
    )

    [row] = rows(team)
    assert row.tokens_estimated and row.completion_tokens == 50  # 200 characters / 4
    assert row.prompt_tokens > 0 and row.cost_usd > 0


def test_a_client_that_leaves_a_bridged_stream_is_billed_once_for_what_was_produced(
    catalog, sdk, inference_key, team, upstream
):
    # The client reads the first events and goes; the gateway drains the upstream for its
    # usage, records the call once and releases its reservation.

    from usage.models import BudgetCounter, MeteredCall

    budget = budget_set(team=team, amount_usd=Decimal("10"))
    upstream.script("deepseek-v4-flash", Answer(chunk_delay=0.05))
    _, secret = inference_key

    stream = sdk(secret).responses.create(model="deepseek-v4-flash", input="hi", stream=True)
    assert next(iter(stream)).type == "response.created"
    stream.close()

    wait_for(UsageRecord.objects.filter(team=team).exists)
    [row] = rows(team)
    assert (row.endpoint, row.status, row.prompt_tokens, row.completion_tokens) == (
        "responses",
        "client_closed",
        12,
        34,
    )
    counter = BudgetCounter.objects.get(budget=budget)
    assert (counter.spent_usd, counter.reserved_usd) == (row.cost_usd, 0)
    assert not MeteredCall.objects.in_flight().exists()


# --- Upstreams that misbehave -----------------------------------------------------------


def chat_answer(**fields):
    """A chat completion as an upstream sends it, with `fields` changed."""
    return {
        "id": "chatcmpl-raw",
        "object": "chat.completion",
        "created": 1764000000,
        "model": "deepseek-v4-flash",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi there"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 34},
        **fields,
    }


def sse(kind: str | None, data: dict) -> str:
    return (f"event: {kind}\n" if kind else "") + f"data: {json.dumps(data)}\n\n"


def chunk(*choices: dict, **fields) -> str:
    """A chat stream chunk as an upstream sends it, with these choices."""
    head = {"id": "c", "object": "chat.completion.chunk", "model": "deepseek-v4-flash"}
    return sse(None, {**head, "choices": list(choices), **fields})


def choice(delta: object = None, finish: str | None = None, **more) -> dict:
    return {"index": 0, "delta": {} if delta is None else delta, "finish_reason": finish, **more}


DONE = "data: [DONE]\n\n"


def post_responses(live_portal, secret, body: dict) -> httpx2.Response:
    """A raw POST /v1/responses, for what the SDK would not send or not show."""
    return httpx2.post(
        f"{live_portal.url}/v1/responses",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "deepseek-v4-flash", "input": "hi", **body},
        timeout=30,
    )


def data_events(answer: httpx2.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: ")]


def stream_events(live_portal, secret, body: dict) -> list[dict]:
    return data_events(post_responses(live_portal, secret, {"stream": True, **body}))


def test_an_answer_in_text_parts_is_bridged_as_its_text(
    catalog, sdk, inference_key, team, upstream
):
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    message = {"role": "assistant", "content": parts}
    upstream.script(
        "deepseek-v4-flash",
        Raw(chat_answer(choices=[{"index": 0, "message": message, "finish_reason": "stop"}])),
    )
    _, secret = inference_key

    response = sdk(secret).responses.create(model="deepseek-v4-flash", input="hi")

    assert response.output_text == "Hello there"


def test_an_answer_in_text_parts_without_usage_is_billed_for_its_text(
    catalog, sdk, inference_key, team, upstream
):
    # No usage, and the answer's 400 characters in parts: counted, not taken for nothing.
    parts = [{"type": "text", "text": "word " * 80}]
    message = {"role": "assistant", "content": parts}
    upstream.script(
        "deepseek-v4-flash",
        Raw(
            chat_answer(
                choices=[{"index": 0, "message": message, "finish_reason": "stop"}], usage=None
            )
        ),
    )
    _, secret = inference_key

    sdk(secret).responses.create(model="deepseek-v4-flash", input="hi")

    [row] = rows(team)
    assert row.tokens_estimated and row.completion_tokens == 100


@pytest.mark.parametrize(
    "choices",
    [
        [None],
        [{"message": "hello"}],
        [{"message": {"role": "assistant", "content": [{"type": "image_url"}]}}],
        [{"message": {"role": "assistant", "content": 7}}],
        {"0": 1},
        [{"message": {"role": "assistant", "tool_calls": ["x"]}}],
        [{"message": {"role": "assistant", "tool_calls": [{"id": "a", "function": "f"}]}}],
    ],
    ids=[
        "null",
        "string-message",
        "image-part",
        "number-content",
        "object",
        "string-call",
        "string-function",
    ],
)
def test_a_chat_answer_the_bridge_cannot_read_is_a_502_in_the_ledger_not_a_500(
    catalog, sdk, inference_key, team, upstream, choices
):
    from usage.models import MeteredCall

    upstream.script("deepseek-v4-flash", Raw(chat_answer(choices=choices)))
    _, secret = inference_key

    with pytest.raises(openai.APIStatusError) as caught:
        sdk(secret).with_options(max_retries=0).responses.create(
            model="deepseek-v4-flash", input="hi"
        )

    assert caught.value.status_code == 502 and caught.value.code == "upstream_error"
    [row] = rows(team)
    assert (row.endpoint, row.status, row.cost_usd) == ("responses", "upstream_error", 0)
    assert not MeteredCall.objects.in_flight().exists()


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 12, "completion_tokens": 34},  # no total, as many upstreams send
        {"prompt_tokens": 12, "completion_tokens": 34, "prompt_tokens_details": [1]},
        {"prompt_tokens": 12, "completion_tokens": 34, "completion_tokens_details": "x"},
        {"prompt_tokens": 12, "completion_tokens": 99_999_999},
    ],
    ids=["no-total", "list-details", "string-details", "absurd"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_bridged_response_reports_the_usage_it_was_billed(
    catalog, sdk, live_portal, inference_key, team, upstream, usage, stream
):
    # Whatever the upstream's usage looks like, the client's Response is valid and its usage
    # is what the ledger billed: the upstream's when sane, else the gateway's own count.
    from openai.types.responses import Response

    if stream:
        upstream.script(
            "deepseek-v4-flash",
            RawStream(
                [
                    chunk(choice({"content": "Hi"})),
                    chunk(choice(finish="stop")),
                    chunk(usage=usage),
                    DONE,
                ]
            ),
        )
    else:
        upstream.script("deepseek-v4-flash", Raw(chat_answer(usage=usage)))
    _, secret = inference_key

    answer = post_responses(live_portal, secret, {"stream": stream})

    assert answer.status_code == 200
    if stream:
        events = data_events(answer)
        assert events[-1]["type"] == "response.completed"
        body = events[-1]["response"]
    else:
        body = answer.json()
    response = Response.model_validate(body)
    [row] = rows(team)
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        row.prompt_tokens,
        row.completion_tokens,
    )
    assert response.usage.total_tokens == row.prompt_tokens + row.completion_tokens
    assert row.tokens_estimated == (usage != {"prompt_tokens": 12, "completion_tokens": 34})
    assert row.status == "ok"
    if not stream:  # a stream's cost is known only after its headers went
        assert row.cost_usd == Decimal(answer.headers["x-tollgate-cost"])


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": 20, "output_tokens": 30, "input_tokens_details": [1]},
        {"input_tokens": 20, "output_tokens": 30, "output_tokens_details": "x"},
    ],
)
def test_a_native_response_with_usage_details_of_the_wrong_shape_is_billed_on_the_count(
    catalog, sdk, inference_key, team, upstream, usage
):
    serve_natively()
    upstream.script("deepseek-v4-flash", Answer(content="word " * 40, extra={"usage": usage}))
    _, secret = inference_key

    raw = sdk(secret).responses.with_raw_response.create(model="deepseek-v4-flash", input="hi")

    assert raw.http_response.status_code == 200
    [row] = rows(team)
    assert row.status == "ok" and row.tokens_estimated and row.completion_tokens == 50


def native_events(*tail):
    head = {"id": "resp_x", "object": "response", "status": "in_progress", "model": "m"}
    return [
        sse(
            "response.created", {"type": "response.created", "sequence_number": 0, "response": head}
        ),
        sse(
            "response.output_text.delta",
            {"type": "response.output_text.delta", "sequence_number": 1, "delta": "Hel"},
        ),
        *tail,
    ]


@pytest.mark.parametrize(
    "tail, passed_on",
    [
        (
            [
                sse(
                    "error",
                    {
                        "type": "error",
                        "sequence_number": 2,
                        "code": "server_error",
                        "message": "boom",
                    },
                )
            ],
            True,
        ),
        (
            [
                sse(
                    "response.failed",
                    {
                        "type": "response.failed",
                        "sequence_number": 2,
                        "response": {
                            "id": "resp_x",
                            "object": "response",
                            "status": "failed",
                            "error": {"code": "server_error", "message": "boom"},
                        },
                    },
                )
            ],
            True,
        ),
        ([], False),  # the body ends with no final event
    ],
    ids=["error-event", "response-failed", "no-final-event"],
)
def test_a_native_stream_that_fails_is_recorded_as_failed_and_the_client_told_once(
    catalog, live_portal, inference_key, team, upstream, tail, passed_on
):
    serve_natively()
    upstream.script("deepseek-v4-flash", RawStream(native_events(*tail)))
    _, secret = inference_key

    answer = post_responses(live_portal, secret, {"stream": True})

    kinds = [event["type"] for event in data_events(answer)]
    failures = [k for k in kinds if k in ("error", "response.failed")]
    assert len(failures) == 1 and kinds[-1] == failures[0]
    # The upstream's own failure reaches the client as it came; else the gateway's.
    assert ("boom" in answer.text) == passed_on
    [row] = rows(team)
    assert (row.status, row.streamed) == ("upstream_error", True)
    assert row.completion_tokens > 0  # what it produced is still billed


def test_a_bridged_stream_that_ends_before_its_answer_is_done_is_an_error_not_completed(
    catalog, live_portal, inference_key, team, upstream
):
    upstream.script("deepseek-v4-flash", RawStream([chunk(choice({"content": "Hal"}))]))
    _, secret = inference_key

    kinds = [event["type"] for event in stream_events(live_portal, secret, {})]

    assert kinds[-1] == "error" and "response.completed" not in kinds
    [row] = rows(team)
    assert row.status == "upstream_error" and row.completion_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_filtered_answer_is_an_incomplete_response(
    catalog, sdk, inference_key, team, upstream, stream
):
    if stream:
        upstream.script(
            "deepseek-v4-flash",
            RawStream(
                [chunk(choice({"content": "Hi"})), chunk(choice(finish="content_filter")), DONE]
            ),
        )
    else:
        upstream.script(
            "deepseek-v4-flash",
            Raw(
                chat_answer(
                    choices=[
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "Hi"},
                            "finish_reason": "content_filter",
                        }
                    ]
                )
            ),
        )
    _, secret = inference_key

    created = sdk(secret).responses.create(model="deepseek-v4-flash", input="hi", stream=stream)
    response = _events(created)[-1].response if stream else created

    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "content_filter"


def final(kind, output_tokens, number):
    usage = {"input_tokens": 20, "output_tokens": output_tokens, "total_tokens": 20 + output_tokens}
    response = {"id": "resp_x", "object": "response", "status": "completed", "usage": usage}
    return sse(kind, {"type": kind, "sequence_number": number, "response": response})


def test_a_native_streams_first_final_event_ends_it_and_is_what_is_billed(
    catalog, live_portal, inference_key, team, upstream
):
    # A second response.completed reporting less, or an error after the end, changes nothing;
    # and the stream ends at the final event though the upstream holds the connection open
    # for 60 s: were it relayed to the end, the client's 30 s read timeout would fail this.
    serve_natively()
    after = [
        final("response.completed", 1, 3),
        sse("error", {"type": "error", "sequence_number": 4, "message": "late"}),
    ]
    upstream.script(
        "deepseek-v4-flash",
        RawStream(native_events(final("response.completed", 30, 2), *after), hold_s=60),
    )
    _, secret = inference_key

    events = stream_events(live_portal, secret, {})

    assert [e["type"] for e in events][-1] == "response.completed"
    assert [e["type"] for e in events].count("response.completed") == 1
    [row] = rows(team)
    assert (row.status, row.prompt_tokens, row.completion_tokens) == ("ok", 20, 30)


def test_a_native_event_numbered_with_a_string_is_passed_on(
    catalog, live_portal, inference_key, team, upstream
):
    serve_natively()
    odd = sse(
        "response.output_text.delta",
        {"type": "response.output_text.delta", "sequence_number": "2", "delta": "lo"},
    )
    upstream.script(
        "deepseek-v4-flash", RawStream(native_events(odd, final("response.completed", 30, 3)))
    )
    _, secret = inference_key

    events = stream_events(live_portal, secret, {})

    assert events[-1]["type"] == "response.completed"
    assert rows(team)[0].status == "ok"


def test_a_client_that_leaves_is_billed_on_the_last_usage_not_the_first(
    catalog, sdk, inference_key, team, upstream
):
    # Usage that counts up in every chunk: the drain reads to the stream's end.

    running = [
        chunk(
            choice({"content": "w "}, finish),
            usage={"prompt_tokens": 12, "completion_tokens": n},
        )
        for n, finish in [(1, None), (2, None), (3, None), (4, None), (40, "stop")]
    ]
    upstream.script("deepseek-v4-flash", RawStream([*running, DONE], delay_s=0.2))
    _, secret = inference_key

    stream = sdk(secret).responses.create(model="deepseek-v4-flash", input="hi", stream=True)
    assert next(iter(stream)).type == "response.created"
    stream.close()

    wait_for(UsageRecord.objects.filter(team=team).exists)
    [row] = rows(team)
    assert (row.status, row.completion_tokens, row.tokens_estimated) == ("client_closed", 40, False)


@pytest.mark.parametrize(
    "odd",
    [
        {"index": 0, "delta": "oops"},
        {"index": [0], "delta": {"content": "x"}},
        {"index": 0, "delta": {"tool_calls": "x"}},
        {"index": 0, "delta": {"tool_calls": ["x"]}},
    ],
    ids=["string-delta", "list-index", "string-calls", "string-call"],
)
def test_a_malformed_chunk_mid_stream_is_skipped_and_the_usage_after_it_billed(
    catalog, live_portal, inference_key, team, upstream, odd
):
    upstream.script(
        "deepseek-v4-flash",
        RawStream(
            [
                chunk(choice({"content": "Hi"})),
                chunk(odd),
                chunk(choice(finish="stop")),
                chunk(usage={"prompt_tokens": 10, "completion_tokens": 20}),
                DONE,
            ]
        ),
    )
    _, secret = inference_key

    events = stream_events(live_portal, secret, {})

    assert events[-1]["type"] == "response.completed"
    [row] = rows(team)
    assert (row.status, row.prompt_tokens, row.completion_tokens) == ("ok", 10, 20)


def test_a_streamed_tool_call_is_bridged_whatever_order_and_shape_its_parts_come_in(
    catalog, sdk, inference_key, team, upstream
):
    def call(part, finish=None):
        return chunk(choice({"tool_calls": [{"index": 0, **part}]}, finish))

    upstream.script(
        "deepseek-v4-flash",
        RawStream(
            [
                call({"id": "call_1", "function": {"arguments": ""}}),
                call({"function": {"name": "get_weather"}}),  # the name after the id
                call({"function": {"arguments": {"city": "Paris"}}}, finish="tool_calls"),
                DONE,
            ]
        ),
    )
    _, secret = inference_key

    events = _events(
        sdk(secret).responses.create(
            model="deepseek-v4-flash", input="Weather?", tools=[WEATHER], stream=True
        )
    )

    [item] = events[-1].response.output
    assert (item.type, item.call_id, item.name) == ("function_call", "call_1", "get_weather")
    assert json.loads(item.arguments) == {"city": "Paris"}


def test_a_streamed_tool_call_that_never_names_its_function_is_the_upstreams_error(
    catalog, live_portal, inference_key, team, upstream
):
    delta = {"tool_calls": [{"index": 0, "id": 5, "function": {"name": 7, "arguments": "{}"}}]}
    upstream.script("deepseek-v4-flash", RawStream([chunk(choice(delta, "tool_calls")), DONE]))
    _, secret = inference_key

    events = stream_events(live_portal, secret, {"tools": [WEATHER]})

    assert events[-1]["type"] == "error" and "name" in events[-1]["message"]
    assert rows(team)[0].status == "upstream_error"


def test_a_bridged_stream_sends_chat_only_chats_stream_options(
    catalog, sdk, inference_key, upstream
):
    _, secret = inference_key

    stream = sdk(secret).responses.create(
        model="deepseek-v4-flash",
        input="hi",
        stream=True,
        stream_options={"include_obfuscation": False},
    )
    list(stream)

    assert upstream.received[-1].body["stream_options"] == {"include_usage": True}


FILE_INPUT = [
    {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "Summarise this."},
            {"type": "input_file", "file_id": "file-abc"},
            {"type": "input_image", "file_id": "file-img"},
        ],
    }
]


def test_files_go_to_a_native_upstream_as_they_are_and_are_reserved(
    catalog, sdk, inference_key, team, upstream
):
    # A file the request only names is reserved at a full window's worth of tokens: past a
    # $0.001 hard budget at $0.18 per million input tokens.
    serve_natively()
    _, secret = inference_key

    sdk(secret).responses.create(model="deepseek-v4-flash", input=FILE_INPUT)

    sent = upstream.received[-1]
    assert sent.path == "/v1/responses" and sent.body["input"] == FILE_INPUT
    assert rows(team)[0].status == "ok"
    budget_set(team=team, amount_usd=Decimal("0.001"), hard=True)
    with pytest.raises(openai.RateLimitError):
        sdk(secret).responses.create(model="deepseek-v4-flash", input=FILE_INPUT)


def test_files_to_a_chat_only_upstream_are_a_400_saying_where_they_can_go(
    catalog, sdk, inference_key, team, upstream
):
    _, secret = inference_key

    with pytest.raises(openai.BadRequestError) as caught:
        sdk(secret).responses.create(model="deepseek-v4-flash", input=FILE_INPUT)

    assert caught.value.body["param"] == "input[0][1]"
    assert "served natively on /v1/responses" in caught.value.body["message"]
    assert upstream.received == []
    assert [(r.status, r.http_status) for r in rows(team)] == [("refused", 400)]


def test_a_route_sends_files_only_to_its_native_models(catalog, sdk, inference_key, upstream):
    from tests.factories import global_route

    serve_natively()  # deepseek-v4-flash natively; gpt-4o through the bridge
    global_route("readers", ["gpt-4o", "deepseek-v4-flash"])
    _, secret = inference_key

    response = sdk(secret).responses.create(model="readers", input=FILE_INPUT)

    assert response.model == "deepseek-v4-flash"
    assert [r.path for r in upstream.received] == ["/v1/responses"]


def test_files_go_to_a_routes_native_model_even_while_it_cools_down(
    catalog, sdk, inference_key, upstream
):
    # Cooling targets sit out only while others can serve: here no other one can.
    from asgiref.sync import async_to_sync

    from routing.cooldowns import cooldown_note_failure
    from tests.factories import global_route

    serve_natively()
    global_route("readers", ["deepseek-v4-flash", "gpt-4o"])
    async_to_sync(cooldown_note_failure)("deepseek-v4-flash", retry_after=60)
    _, secret = inference_key

    response = sdk(secret).responses.create(model="readers", input=FILE_INPUT)

    assert response.model == "deepseek-v4-flash"
