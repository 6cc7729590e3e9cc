"""How the pages print USD: cents for a cent or more, six places below a cent so small spends
never read as $0.00; thousands separated. Exact figures stay in the ledger and the CSV."""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django import template

register = template.Library()


@register.filter
def usd(value) -> str:
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return ""
    places = (
        Decimal("0.01") if abs(amount) >= Decimal("0.01") or not amount else Decimal("0.000001")
    )
    rounded = amount.quantize(places, rounding=ROUND_HALF_UP)
    return f"{'-' if rounded < 0 else ''}${abs(rounded):,}"
