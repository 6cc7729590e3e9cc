"""The one cost formula, over one price type.

A call costs ((prompt − cached) × input + cached × cached_input +
completion × output) / 10⁶ USD, prices in USD per 1M tokens. The same
formula gives the three figures the gateway needs; only the token counts
differ:

- the **exact** cost of a call, from the tokens the upstream reported (or
  the gateway counted), written on its ledger row;
- the **worst case**, from the most tokens a request can use
  (`routing.tokens.TokenBounds.ceiling`), reserved on budgets before the upstream
  is called;
- the **expected** cost, from the usual estimate, for `cheapest` routing.

Decimal throughout: prices carry at most 6 decimal places, so every cost
is exact at 12, which is what the ledger stores.
"""

from dataclasses import dataclass
from decimal import Decimal
from typing import TypeGuard

MTOK = Decimal(1_000_000)
# More tokens than any one call can use (context windows are ~10⁶); a
# count above this is an upstream's nonsense, not usage.
MAX_TOKENS_PER_CALL = 100_000_000


class Unpriced(Exception):
    """Tokens fall in a direction without a price: the call cannot be billed."""

    def __init__(self, direction: str):
        super().__init__(direction)
        self.direction = direction


@dataclass(frozen=True)
class Price:
    """Unit prices charged, USD per 1M tokens; None means that direction is unpriced."""

    input: Decimal | None
    cached_input: Decimal | None
    output: Decimal | None

    @classmethod
    def listed(
        cls, *, input: Decimal | None, cached_input: Decimal | None, output: Decimal | None
    ) -> "Price":
        """The price charged for a catalog entry: cached tokens without a price of
        their own are billed at the input price, never cheaper than the list."""
        return cls(
            input=input,
            cached_input=cached_input if cached_input is not None else input,
            output=output,
        )


@dataclass(frozen=True)
class Tokens:
    """Token counts of one call. `cached` is part of `prompt`, `reasoning` part of `completion`."""

    prompt: int = 0
    cached: int = 0
    completion: int = 0
    reasoning: int = 0

    def __post_init__(self) -> None:
        for name in ("prompt", "cached", "completion", "reasoning"):
            value = getattr(self, name)
            if not is_token_count(value):
                raise ValueError(
                    f"{name} tokens must be an integer in 0..{MAX_TOKENS_PER_CALL}, not {value!r}"
                )
        if self.cached > self.prompt or self.reasoning > self.completion:
            raise ValueError(
                "cached tokens are part of prompt tokens, reasoning part of completion"
            )

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def is_token_count(value: object) -> TypeGuard[int]:
    return (
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS_PER_CALL
    )


def cost(price: Price, tokens: Tokens) -> Decimal:
    """USD for `tokens` at `price`, exact. Raises Unpriced when tokens fall in a
    direction without a price, because unpriced traffic is never billed as 0."""
    total = Decimal(0)
    for count, unit, direction in (
        (tokens.prompt - tokens.cached, price.input, "input"),
        (tokens.cached, price.cached_input, "input"),
        (tokens.completion, price.output, "output"),
    ):
        if count:
            if unit is None:
                raise Unpriced(direction)
            total += count * unit
    return total / MTOK


def unpriced_direction(price: Price | None, *, needs_output: bool) -> str | None:
    """The direction a call would need but the price lacks, if any."""
    if price is None or price.input is None:
        return "input"
    if needs_output and price.output is None:
        return "output"
    return None
