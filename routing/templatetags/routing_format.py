"""How the routing pages write money, prices and multiples.

Display only: figures stay Decimal until here, and nothing computed from
these strings is ever added up.
"""

from decimal import ROUND_HALF_UP, Decimal

from django import template

register = template.Library()

CENT = Decimal("0.01")
MINUS = "\N{MINUS SIGN}"
BENCHMARK_LABELS = {"mmlu": "MMLU", "humaneval": "HumanEval", "ceval": "C-Eval"}


def _significant(value: Decimal, digits: int) -> Decimal:
    """`value` (positive) rounded half up to `digits` significant digits."""
    return value.quantize(Decimal(1).scaleb(value.adjusted() - digits + 1), ROUND_HALF_UP)


def _plain(value: Decimal) -> str:
    """Without trailing zeros after the point: 2.0 is "2", 0.00060 is "0.0006", 10 is "10"."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


@register.filter
def usd(amount: Decimal | None) -> str:
    """USD to the cent ("$1,234.57"); under a cent to at most two significant digits
    ("$0.00037", "$0.0006"), so small spend never reads as $0.00."""
    if amount is None:
        return "—"
    sign = MINUS if amount < 0 else ""
    amount = abs(amount)
    if amount == 0:
        return "$0.00"
    small = _significant(amount, 2)
    if small < CENT:
        return f"{sign}${_plain(small)}"
    return f"{sign}${amount.quantize(CENT, ROUND_HALF_UP):,.2f}"


@register.filter
def usd_change(amount: Decimal | None) -> str:
    """A difference in USD with its sign: "+$1.20", "−$0.00037", "$0.00"."""
    if amount is None or amount == 0:
        return usd(amount)
    return usd(amount) if amount < 0 else f"+{usd(amount)}"


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


@register.filter
def multiple(ratio: Decimal | None) -> str:
    """A ratio as a multiple, the way price lists publish them: whole numbers from 10
    ("40×", "14×"), two significant digits below ("2.4×", "1.1×", "0.11×")."""
    if ratio is None:
        return "—"
    if ratio == 0:
        return "0×"
    if ratio >= 10:
        return f"{ratio.quantize(Decimal(1), ROUND_HALF_UP):,f}×"
    return f"{_plain(_significant(ratio, 2))}×"


@register.filter
def benchmark_label(name: str) -> str:
    """A benchmark's name as it is usually written ("HumanEval"); unknown ones as given."""
    return BENCHMARK_LABELS.get(name, name)


@register.filter
def signed(value: Decimal | None) -> str:
    """A difference with its sign: "+0.3", "−3.2", "0"; "—" when there is none."""
    if value is None:
        return "—"
    text = _plain(abs(value))
    return f"{MINUS}{text}" if value < 0 else f"+{text}" if value > 0 else "0"


@register.filter
def ratio_words(ratio: Decimal | None) -> str:
    """would ÷ actual as words: "25× cheaper", "1.4× dearer", "same", "free"."""
    if ratio is None:
        return "—"
    if ratio == 0:
        return "free"
    if ratio == 1:
        return "same"
    return f"{multiple(1 / ratio)} cheaper" if ratio < 1 else f"{multiple(ratio)} dearer"
