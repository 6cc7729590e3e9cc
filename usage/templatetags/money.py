"""How the pages write USD: to the cent ("$1,234.57"); under a cent to at most two
significant digits ("$0.00037"), so small spend never reads as $0.00. Display only: the
exact figures stay in the ledger, the CSV and the invoices."""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django import template

register = template.Library()

CENT = Decimal("0.01")
MINUS = "\N{MINUS SIGN}"


def significant(value: Decimal, digits: int) -> Decimal:
    """`value` (positive) rounded half up to `digits` significant digits."""
    return value.quantize(Decimal(1).scaleb(value.adjusted() - digits + 1), ROUND_HALF_UP)


def plain_decimal(value: Decimal) -> str:
    """Without trailing zeros after the point: 2.0 is "2", 0.00060 is "0.0006", 10 is "10"."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


@register.filter
def usd(amount) -> str:
    if amount is None or amount == "":
        return "—"
    try:
        amount = Decimal(amount)
    except (InvalidOperation, TypeError, ValueError):
        return ""
    sign = MINUS if amount < 0 else ""
    amount = abs(amount)
    if amount == 0:
        return "$0.00"
    small = significant(amount, 2)
    if small < CENT:
        return f"{sign}${plain_decimal(small)}"
    return f"{sign}${amount.quantize(CENT, ROUND_HALF_UP):,.2f}"


@register.filter
def usd_exact(amount: Decimal | None) -> str:
    """USD exactly, at least to the cent: a price ("$2.50", "$0.075") or one call's cost
    ("$0.00001066")."""
    if amount is None:
        return "—"
    sign = MINUS if amount < 0 else ""
    amount = abs(amount).normalize()
    if amount.as_tuple().exponent > -2:
        amount = amount.quantize(CENT)
    return f"{sign}${amount:,f}"
