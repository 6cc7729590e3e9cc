"""The one cost formula, in exact Decimal arithmetic."""

from decimal import Decimal

import pytest

from routing import tokens
from usage.services import ChargedPrices, Unpriced, usage_cost

FLASH = ChargedPrices(input=Decimal("0.18"), cached_input=Decimal("0.07"), output=Decimal("0.25"))


def test_cost_is_per_million_tokens_and_exact():
    assert usage_cost(prices=FLASH, prompt_tokens=1_000_000, completion_tokens=1_000_000) == Decimal("0.43")
    assert usage_cost(prices=FLASH, prompt_tokens=1) == Decimal("0.00000018")


def test_cached_tokens_are_billed_at_the_cached_price():
    cost = usage_cost(prices=FLASH, prompt_tokens=1000, cached_tokens=400, completion_tokens=0)
    assert cost == (600 * Decimal("0.18") + 400 * Decimal("0.07")) / 10**6


def test_a_million_tiny_calls_add_up_exactly():
    one = usage_cost(prices=ChargedPrices(Decimal("0.1"), Decimal("0.1"), None), prompt_tokens=1)
    assert one == Decimal("0.0000001")
    assert sum([one] * 1_000_000) == Decimal("0.1")


def test_tokens_in_an_unpriced_direction_raise_instead_of_billing_zero():
    output_only = ChargedPrices(input=None, cached_input=None, output=Decimal("0.35"))
    with pytest.raises(Unpriced) as caught:
        usage_cost(prices=output_only, prompt_tokens=10, completion_tokens=5)
    assert caught.value.direction == "input"
    assert usage_cost(prices=output_only, prompt_tokens=0, completion_tokens=10) == Decimal("0.0000035")


def test_catalog_without_cached_price_bills_cached_tokens_at_input_price():
    from routing.selectors import Prices

    prices = ChargedPrices.from_catalog(Prices(input=Decimal("2.5"), cached_input=None, output=Decimal("10")))
    assert prices.cached_input == Decimal("2.5")


def test_token_estimate_method():
    assert tokens.text_tokens("") == 0
    assert tokens.text_tokens("abcd") == 1
    assert tokens.text_tokens("abcde") == 2
    assert tokens.text_tokens("你好") == 2
    assert tokens.chat_prompt_tokens([{"role": "user", "content": "abcd"}]) == 3 + 4 + 1
    image = [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert tokens.chat_prompt_tokens([{"role": "user", "content": image}]) == 3 + 4 + 1 + 85
    assert tokens.embedding_input_tokens([[1, 2, 3], "abcd"]) == 4
    assert tokens.embedding_input_tokens([1, 2, 3]) == 3
