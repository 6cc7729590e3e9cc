"""How the routing pages write money, prices and multiples.

Display only: figures stay Decimal until here, and nothing computed from
these strings is ever added up.
"""

from decimal import ROUND_HALF_UP, Decimal

from django import template

from usage.templatetags.money import MINUS, plain_decimal, significant, usd, usd_exact

register = template.Library()

BENCHMARK_LABELS = {"mmlu": "MMLU", "humaneval": "HumanEval", "ceval": "C-Eval"}


# One rule for writing USD across the site: usage's.
register.filter("usd", usd)
register.filter("usd_exact", usd_exact)


@register.filter
def usd_change(amount: Decimal | None) -> str:
    """A difference in USD with its sign: "+$1.20", "−$0.00037", "$0.00"."""
    if amount is None or amount == 0:
        return usd(amount)
    return usd(amount) if amount < 0 else f"+{usd(amount)}"


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
    return f"{plain_decimal(significant(ratio, 2))}×"


@register.filter
def benchmark_label(name: str) -> str:
    """A benchmark's name as it is usually written ("HumanEval"); unknown ones as given."""
    return BENCHMARK_LABELS.get(name, name)


@register.filter
def signed(value: Decimal | None) -> str:
    """A difference with its sign: "+0.3", "−3.2", "0"; "—" when there is none."""
    if value is None:
        return "—"
    text = plain_decimal(abs(value))
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
