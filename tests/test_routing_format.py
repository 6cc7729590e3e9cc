"""How the routing pages write money and multiples: never $0.00 for real spend."""

from decimal import Decimal

import pytest

from routing.templatetags.routing_format import (
    multiple,
    ratio_words,
    signed,
    usd,
    usd_change,
    usd_exact,
)


@pytest.mark.parametrize(
    "amount, text",
    [
        ("0", "$0.00"),
        ("12.345", "$12.35"),  # half up, to the cent
        ("1234567.891", "$1,234,567.89"),
        ("0.01", "$0.01"),
        ("0.0099999", "$0.01"),  # rounds up to a cent: written as one
        ("0.00037", "$0.00037"),
        ("0.00001066", "$0.000011"),  # under a cent: two significant digits
        ("0.0006", "$0.0006"),
        ("-3.4", "−$3.40"),
        (None, "—"),
    ],
)
def test_usd_is_to_the_cent_and_sub_cent_when_small(amount, text):
    assert usd(None if amount is None else Decimal(amount)) == text


def test_usd_change_carries_its_sign():
    assert usd_change(Decimal("1.2")) == "+$1.20"
    assert usd_change(Decimal("-0.00012345")) == "−$0.00012"
    assert usd_change(Decimal("0")) == "$0.00"


@pytest.mark.parametrize(
    "amount, text",
    [("2.5", "$2.50"), ("0.07", "$0.07"), ("0.075", "$0.075"), ("0.00001066", "$0.00001066")],
)
def test_usd_exact_keeps_every_digit(amount, text):
    assert usd_exact(Decimal(amount)) == text


@pytest.mark.parametrize(
    "ratio, text",
    [
        ("40", "40×"),
        ("13.888", "14×"),
        ("7.68", "7.7×"),
        ("1.12", "1.1×"),
        ("2.0", "2×"),
        ("9.96", "10×"),
        ("0.1111", "0.11×"),
        ("0", "0×"),
        (None, "—"),
    ],
)
def test_multiples_read_like_published_ones(ratio, text):
    assert multiple(None if ratio is None else Decimal(ratio)) == text


def test_ratios_read_as_cheaper_or_dearer():
    assert ratio_words(Decimal("0.04")) == "25× cheaper"
    assert ratio_words(Decimal("13.2") / Decimal("9.5")) == "1.4× dearer"
    assert [ratio_words(Decimal(r)) for r in ("1", "0")] == ["same", "free"]
    assert ratio_words(None) == "—"


def test_score_differences_carry_their_sign():
    assert [signed(Decimal(d)) for d in ("-3.2", "0.30", "0")] == ["−3.2", "+0.3", "0"]
