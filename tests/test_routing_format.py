"""How the routing pages write money and multiples: never $0.00 for real spend."""

from decimal import Decimal

import pytest

from routing.templatetags.routing_format import multiple, usd, usd_change, usd_exact


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
