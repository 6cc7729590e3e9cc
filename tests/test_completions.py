"""POST /v1/completions: OpenAI's legacy text completions, for models whose catalog entry
lists them, metered like chat (JSON and streamed), with the official SDK."""

from decimal import Decimal

import openai
import pytest

from tests.factories import catalog_models
from tests.fake_upstream import Answer
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

# deepseek-v4-flash: $0.18 in, $0.25 out per million tokens; the fake upstream reports
# 12 prompt and 34 completion tokens.
COST = (12 * Decimal("0.18") + 34 * Decimal("0.25")) / 10**6


@pytest.fixture
def legacy(catalog):
    catalog_models(
        {
            "id": "deepseek-v4-flash",
            "provider": "global",
            "input_per_mtok": "0.18",
            "output_per_mtok": "0.25",
            "endpoints": ["chat", "completions"],
        }
    )


def rows(team):
    return list(UsageRecord.objects.filter(team=team).order_by("id"))


def test_a_completion_is_served_and_billed_exactly(legacy, sdk, inference_key, team, upstream):
    _, secret = inference_key

    raw = sdk(secret).completions.with_raw_response.create(
        model="deepseek-v4-flash", prompt="Say hello", max_tokens=50
    )
    completion = raw.parse()

    assert completion.choices[0].text == "Hello from the fake upstream"
    assert completion.model == "deepseek-v4-flash"
    assert upstream.received[-1].path == "/v1/completions"
    assert upstream.received[-1].body["prompt"] == "Say hello"
    [row] = rows(team)
    assert (row.endpoint, row.status, row.prompt_tokens, row.completion_tokens) == (
        "completions",
        "ok",
        12,
        34,
    )
    assert row.cost_usd == COST == Decimal(raw.headers["x-tollgate-cost"])


def test_a_streamed_completion_is_relayed_and_billed_once(
    legacy, sdk, inference_key, team, upstream
):
    _, secret = inference_key

    stream = sdk(secret).completions.create(
        model="deepseek-v4-flash", prompt="Say hello", max_tokens=50, stream=True
    )
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)

    assert text == "Hello from the fake upstream"
    [row] = rows(team)
    assert (row.endpoint, row.streamed, row.cost_usd) == ("completions", True, COST)


def test_without_usage_the_completion_is_billed_on_the_gateways_count(
    legacy, sdk, inference_key, team, upstream
):
    _, secret = inference_key
    upstream.script("deepseek-v4-flash", Answer(content="word " * 40, usage=None))

    sdk(secret).completions.create(model="deepseek-v4-flash", prompt="Say hello", max_tokens=100)

    [row] = rows(team)
    assert row.tokens_estimated and row.completion_tokens == 50  # 200 characters / 4


def test_a_model_not_served_on_completions_is_a_400_naming_where_it_is(
    catalog, sdk, inference_key, team, upstream
):
    _, secret = inference_key

    with pytest.raises(openai.BadRequestError) as caught:
        sdk(secret).completions.create(model="gpt-4o", prompt="hi")

    assert caught.value.code == "model_not_supported"
    assert caught.value.body["message"] == (
        "The model `gpt-4o` is not served on /v1/completions; "
        "it is served on /v1/chat/completions, /v1/responses."
    )
    assert upstream.received == []
    assert [(r.endpoint, r.status) for r in rows(team)] == [("completions", "refused")]


@pytest.mark.parametrize(
    "prompt", ["", [], [""] * 0, [1, "a"], {"text": "hi"}, [[1, 2], "x"], True]
)
def test_a_prompt_of_the_wrong_shape_is_a_400(legacy, sdk, inference_key, upstream, prompt):
    _, secret = inference_key

    with pytest.raises(openai.BadRequestError) as caught:
        sdk(secret).completions.create(model="deepseek-v4-flash", prompt=prompt)

    assert caught.value.body["param"] == "prompt"
    assert upstream.received == []


def test_best_of_is_reserved_as_the_completions_the_upstream_makes(
    legacy, sdk, inference_key, team, upstream
):
    # best_of=20 completions of up to 100,000 tokens: $0.50 at $0.25 per million, past a
    # $0.10 hard budget even though only one comes back.
    from usage.budgets import budget_set

    budget_set(team=team, amount_usd=Decimal("0.10"), hard=True)
    _, secret = inference_key

    with pytest.raises(openai.RateLimitError) as caught:
        sdk(secret).completions.create(
            model="deepseek-v4-flash", prompt="hi", max_tokens=100_000, best_of=20
        )

    assert caught.value.code == "insufficient_quota"
    assert upstream.received == []


def test_a_suffix_is_reserved_as_prompt(legacy, sdk, inference_key, team, upstream):
    # 400 KB of suffix is read by the upstream like the prompt: it cannot slip past a budget.
    from usage.budgets import budget_set

    budget_set(team=team, amount_usd=Decimal("0.01"), hard=True)
    _, secret = inference_key

    with pytest.raises(openai.RateLimitError) as caught:
        sdk(secret).completions.create(
            model="deepseek-v4-flash", prompt="hi", suffix="word " * 80_000, max_tokens=10
        )

    assert caught.value.code == "insufficient_quota"
    assert upstream.received == []


def test_each_prompt_of_a_batch_is_billed_and_reserved_as_its_own_completions(
    legacy, sdk, inference_key, team, upstream
):
    # OpenAI answers n completions for each prompt of a list: 50 prompts make 50 answers,
    # and the upstream's usage for all of them is honest, not a lie to replace.
    # The fake reports 34 completion tokens per answer, 1,700 in all.
    upstream.script(
        "deepseek-v4-flash", Answer(usage={"prompt_tokens": 250, "completion_tokens": 34})
    )
    _, secret = inference_key

    answer = sdk(secret).completions.create(
        model="deepseek-v4-flash", prompt=["Write a long essay"] * 50, max_tokens=1000
    )

    assert len(answer.choices) == 50
    [row] = rows(team)
    assert (row.prompt_tokens, row.completion_tokens, row.tokens_estimated) == (250, 1700, False)


def test_a_batch_of_prompts_cannot_slip_past_a_hard_budget(
    legacy, sdk, inference_key, team, upstream
):
    # 20 prompts of up to 100,000 tokens each: $0.50 at $0.25 per million, past $0.10.
    from usage.budgets import budget_set

    budget_set(team=team, amount_usd=Decimal("0.10"), hard=True)
    _, secret = inference_key

    with pytest.raises(openai.RateLimitError) as caught:
        sdk(secret).completions.create(
            model="deepseek-v4-flash", prompt=["hi"] * 20, max_tokens=100_000
        )

    assert caught.value.code == "insufficient_quota"
    assert upstream.received == []


@pytest.mark.parametrize("options", ["x", ["include_usage"], 1])
@pytest.mark.parametrize(
    "path, body",
    [
        ("completions", {"model": "deepseek-v4-flash", "prompt": "hi"}),
        ("responses", {"model": "deepseek-v4-flash", "input": "hi"}),
        ("chat/completions", {"model": "deepseek-v4-flash", "messages": [{"role": "user"}]}),
    ],
)
def test_stream_options_that_are_not_an_object_are_a_400_on_every_endpoint(
    legacy, live_portal, inference_key, team, upstream, path, body, options
):
    import httpx2

    from usage.models import MeteredCall

    _, secret = inference_key
    answer = httpx2.post(
        f"{live_portal.url}/v1/{path}",
        headers={"Authorization": f"Bearer {secret}"},
        json={**body, "stream": True, "stream_options": options},
    )

    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "stream_options"
    assert upstream.received == [] and not MeteredCall.objects.in_flight().exists()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_echoed_prompt_is_not_taken_for_output_and_honest_usage_is_billed(
    legacy, sdk, inference_key, team, upstream, stream
):
    # With echo the answer's text starts with the prompt: 8,000 tokens the model read, not
    # wrote. The upstream's usage (8,000 in, 5 out) is honest and billed as it is.
    prompt = "word " * 8000
    upstream.script(
        "deepseek-v4-flash",
        Answer(content=prompt + "done", usage={"prompt_tokens": 8000, "completion_tokens": 5}),
    )
    _, secret = inference_key

    answer = sdk(secret).completions.create(
        model="deepseek-v4-flash",
        prompt=prompt,
        echo=True,
        max_tokens=5,
        stream=stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    )
    if stream:
        list(answer)

    [row] = rows(team)
    assert (row.prompt_tokens, row.completion_tokens, row.tokens_estimated) == (8000, 5, False)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    "usage", [None, {"prompt_tokens": 8000, "completion_tokens": 1}], ids=["none", "lie"]
)
def test_asking_for_echo_does_not_switch_off_the_output_count_when_nothing_is_echoed(
    legacy, sdk, inference_key, team, upstream, stream, usage
):
    # An upstream that ignores echo writes 4,000 tokens of its own: counted, and a report of
    # 1 output token not believed.
    upstream.script("deepseek-v4-flash", Answer(content="out " * 4000, usage=usage))
    _, secret = inference_key

    answer = sdk(secret).completions.create(
        model="deepseek-v4-flash",
        prompt="word " * 8000,
        echo=True,
        max_tokens=8000,
        stream=stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    )
    if stream:
        list(answer)

    [row] = rows(team)
    assert row.tokens_estimated and row.completion_tokens >= 3900
