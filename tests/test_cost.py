"""The one cost formula, exact; token estimates and the ceilings that bound a request's cost."""

import base64
import io
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing import tokens
from routing.tokens import TokenBounds, reported_tokens
from usage.pricing import MAX_TOKENS_PER_CALL, Price, Tokens, Unpriced, cost

FLASH = Price(input=Decimal("0.18"), cached_input=Decimal("0.07"), output=Decimal("0.25"))


def test_cost_is_per_million_tokens_and_exact():
    assert cost(FLASH, Tokens(prompt=1_000_000, completion=1_000_000)) == Decimal("0.43")
    assert cost(FLASH, Tokens(prompt=1)) == Decimal("0.00000018")


def test_cached_tokens_are_billed_at_the_cached_price():
    charged = cost(FLASH, Tokens(prompt=1000, cached=400))
    assert charged == (600 * Decimal("0.18") + 400 * Decimal("0.07")) / 10**6


def test_a_million_tiny_calls_add_up_exactly():
    one = cost(Price(Decimal("0.1"), Decimal("0.1"), None), Tokens(prompt=1))
    assert one == Decimal("0.0000001")
    assert sum([one] * 1_000_000) == Decimal("0.1")


def test_tokens_in_an_unpriced_direction_raise_instead_of_billing_zero():
    output_only = Price(input=None, cached_input=None, output=Decimal("0.35"))
    with pytest.raises(Unpriced) as caught:
        cost(output_only, Tokens(prompt=10, completion=5))
    assert caught.value.direction == "input"
    assert cost(output_only, Tokens(completion=10)) == Decimal("0.0000035")


def test_catalog_without_cached_price_bills_cached_tokens_at_input_price():
    price = Price.listed(input=Decimal("2.5"), cached_input=None, output=Decimal("10"))
    assert price.cached_input == Decimal("2.5")


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt": -1},
        {"prompt": 1.5},
        {"prompt": "12"},
        {"prompt": True},
        {"prompt": MAX_TOKENS_PER_CALL + 1},
        {"prompt": 1, "cached": 2},
        {"completion": 1, "reasoning": 2},
    ],
)
def test_token_counts_are_validated(bad):
    with pytest.raises(ValueError):
        Tokens(**bad)


prices_6dp = st.one_of(
    st.none(),
    st.decimals(
        min_value=0, max_value=Decimal("1000"), places=6, allow_nan=False, allow_infinity=False
    ),
)
counts = st.integers(min_value=0, max_value=MAX_TOKENS_PER_CALL)


@settings(max_examples=300, deadline=None)
@given(
    input=prices_6dp,
    cached_input=prices_6dp,
    output=prices_6dp,
    prompt=counts,
    completion=counts,
    cached_share=st.fractions(min_value=0, max_value=1),
)
def test_cost_matches_a_fraction_reference(
    input, cached_input, output, prompt, completion, cached_share
):
    cached = int(prompt * cached_share)
    price = Price.listed(input=input, cached_input=cached_input, output=output)
    used = Tokens(prompt=prompt, cached=cached, completion=completion)
    needed = [
        (prompt - cached, price.input),
        (cached, price.cached_input),
        (completion, price.output),
    ]
    if any(count and unit is None for count, unit in needed):
        with pytest.raises(Unpriced):
            cost(price, used)
        return
    reference = sum(
        (Fraction(count) * Fraction(unit) for count, unit in needed if count), Fraction(0)
    )
    reference /= 1_000_000
    charged = cost(price, used)
    assert Fraction(charged) == reference
    # And it fits the ledger's 12 decimal places exactly.
    assert charged == charged.quantize(Decimal("1e-12"))


# --- Estimates ----------------------------------------------------------------------


def test_token_estimate_method():
    assert tokens.text_tokens("") == 0
    assert tokens.text_tokens("abcd") == 1
    assert tokens.text_tokens("abcde") == 2
    assert tokens.text_tokens("你好") == 2
    assert (
        tokens.chat_prompt_estimate({"messages": [{"role": "user", "content": "abcd"}]})
        == 3 + 4 + 1
    )
    image = [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert (
        tokens.chat_prompt_estimate({"messages": [{"role": "user", "content": image}]})
        == 3 + 4 + 1 + 85
    )
    assert tokens.embedding_input_estimate([[1, 2, 3], "abcd"]) == 4
    assert tokens.embedding_input_estimate([1, 2, 3]) == 3


# --- Ceilings: a request shaped to look cheap still reserves what it can cost ---------------


def ceiling(body, model=None):
    return TokenBounds.of_chat(body).ceiling(model)


def user(content):
    return {"messages": [{"role": "user", "content": content}]}


def test_text_counts_its_bytes_so_no_tokenizer_can_exceed_it():
    short = ceiling(user("a b c d"))
    assert short.prompt >= len("a b c d") + 4 + 3
    assert ceiling(user("你好")).prompt >= 6


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio", "input_audio": {"data": "A" * 40_000, "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64," + "B" * 40_000}},
        {"type": "some_future_part", "payload": "C" * 40_000},
    ],
)
def test_audio_files_and_unknown_parts_count_their_byte_length(part):
    assert ceiling(user([part])).prompt > 40_000


def test_object_valued_content_and_legacy_functions_count():
    assert ceiling(user({"type": "text", "text": "D" * 10_000})).prompt > 10_000
    functions = [{"name": "f", "parameters": {"description": "E" * 10_000}}]
    assert ceiling({**user("hi"), "functions": functions}).prompt > 10_000
    tools = [{"type": "function", "function": {"name": "g", "description": "F" * 10_000}}]
    assert ceiling({**user("hi"), "tools": tools}).prompt > 10_000


def _png(width, height):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_images_count_by_detail_and_size():
    low = {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}
    remote = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    small = {"type": "image_url", "image_url": {"url": _png(512, 512)}}
    big = {"type": "image_url", "image_url": {"url": _png(4000, 3000)}}
    # `detail: low` is not trusted (some providers bill by size whatever it says).
    assert tokens.image_ceiling(low["image_url"]) == tokens.IMAGE_UNKNOWN_SIZE_TOKENS
    assert tokens.image_ceiling(remote["image_url"]) == tokens.IMAGE_UNKNOWN_SIZE_TOKENS
    # The largest of the providers' rules: OpenAI's tiles (255) or Anthropic's area (350).
    assert tokens.image_ceiling(small["image_url"]) == 512 * 512 // 750 + 1
    assert tokens.image_ceiling(big["image_url"]) == 4000 * 3000 // 750


@pytest.mark.django_db
def test_output_is_multiplied_by_n_and_capped_at_the_models_limit(catalog):
    from routing.selectors import catalog_snapshot

    model = catalog_snapshot().models["deepseek-v4-flash"]
    one = TokenBounds.of_chat({**user("hi"), "max_tokens": 100}).ceiling(model)
    four = TokenBounds.of_chat({**user("hi"), "max_tokens": 100, "n": 4}).ceiling(model)
    assert (one.completion, four.completion) == (100, 400)
    huge = TokenBounds.of_chat({**user("hi"), "max_tokens": 10**9}).ceiling(model)
    assert huge.completion == min(model.max_output_tokens or 10**9, MAX_TOKENS_PER_CALL)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": 10},
        {"prompt_tokens": "12", "completion_tokens": 10},
        {"prompt_tokens": 12.5, "completion_tokens": 10},
        {"prompt_tokens": 12, "completion_tokens": -1},
        {"prompt_tokens": 10**12, "completion_tokens": 1},
        {"prompt_tokens": 12, "prompt_tokens_details": {"cached_tokens": 13}},
        {"prompt_tokens": 12, "prompt_tokens_details": "lots"},
        {"completion_tokens": 3},
        {"prompt_tokens": 17, "total_tokens": 27},
        "usage",
        None,
    ],
)
def test_nonsense_usage_is_not_believed(usage):
    assert reported_tokens(usage) is None


def test_sane_usage_is_read_with_its_details():
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "prompt_tokens_details": {"cached_tokens": 40},
        "completion_tokens_details": {"reasoning_tokens": 20},
    }
    assert reported_tokens(usage) == Tokens(prompt=100, cached=40, completion=50, reasoning=20)
    # A chat answer must say what it produced; an embedding produces nothing.
    assert reported_tokens({"prompt_tokens": 100, "completion_tokens": None}) is None
    assert reported_tokens({"prompt_tokens": 100, "completion_tokens": 9}, chat=False) == Tokens(
        prompt=100
    )
    assert (
        reported_tokens({"prompt_tokens": 200_000, "completion_tokens": 1}, max_prompt=128_000)
        is None
    )
    assert (
        reported_tokens({"prompt_tokens": 10, "completion_tokens": 120_000}, max_completion=10)
        is None
    )


@pytest.mark.django_db
def test_parts_whose_size_the_request_does_not_carry_may_fill_the_context_window(catalog):
    from routing.selectors import catalog_snapshot

    flash, gpt4o = (
        catalog_snapshot().models["deepseek-v4-flash"],
        catalog_snapshot().models["gpt-4o"],
    )
    assert (flash.context_window, gpt4o.context_window) == (128_000, None)
    by_id = user([{"type": "file", "file": {"file_id": "file-abc"}}])
    video = user([{"type": "video_url", "video_url": {"url": "https://x/v.mp4"}}])
    for body in (by_id, video):
        assert ceiling(body, flash).prompt == 128_000
        assert ceiling(body, gpt4o).prompt == tokens.UNKNOWN_CONTEXT_WINDOW


def test_the_larger_of_max_tokens_and_max_completion_tokens_bounds_output():
    bounds = TokenBounds.of_chat({**user("hi"), "max_completion_tokens": 1, "max_tokens": 3000})
    assert bounds.ceiling(None).completion == 3000
