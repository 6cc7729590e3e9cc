"""Which targets of a route serve a request, and in which order.

`order_targets` filters out targets that cannot serve the request (missing
capability, too small a context window, unpriced, below the quality floor)
and orders the rest by the route's strategy. Cooling-down targets are
moved out by the caller (routing.cooldowns).
"""

import random
from decimal import Decimal

from routing.selectors import ModelInfo, RouteInfo
from routing.tokens import TokenBounds
from usage.pricing import cost


def request_needs(body: dict) -> set[str]:
    """Capabilities a chat request needs from the model that serves it."""
    needs = set()
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") == "image_url" for part in content
        ):
            needs.add("vision")
    return needs


def expected_cost(model: ModelInfo, bounds: TokenBounds) -> Decimal:
    """USD this request is expected to cost on `model` at its current prices (its usual
    prompt estimate and its full output allowance; targets are priced by the caller)."""
    return cost(model.prices, bounds.expected(model))


def meets_floor(model: ModelInfo, require: dict) -> bool:
    # A model without a published score for a required benchmark does not qualify.
    return all(
        model.benchmarks.get(name, float("-inf")) >= floor for name, floor in require.items()
    )


def order_targets(
    *,
    route: RouteInfo,
    targets: list[ModelInfo],
    bounds: TokenBounds,
    needs: set[str],
    latencies: dict[str, dict],
    stream: bool,
    rng: random.Random | None = None,
) -> list[ModelInfo]:
    needed = needs | set(route.capabilities)
    usable = []
    for model in targets:
        if not all(model.can(c) for c in needed):
            continue
        if (
            model.context_window
            and bounds.prompt_estimate + (bounds.body.get("max_tokens") or 0) > model.context_window
        ):
            continue
        if route.strategy in ("cheapest", "fastest") and not meets_floor(model, route.require):
            continue
        usable.append(model)

    if route.strategy == "weighted" and usable:
        weights = dict(zip(route.targets, route.weights))
        weighted = [m for m in usable if weights.get(m.name, 0) > 0]
        if weighted:
            first = (rng or random).choices(weighted, weights=[weights[m.name] for m in weighted])[
                0
            ]
            return [first] + [m for m in usable if m is not first]
        return usable
    if route.strategy == "cheapest":
        return sorted(usable, key=lambda m: expected_cost(m, bounds))
    if route.strategy == "fastest":
        metric = "ttft_ms" if stream else "latency_ms"

        def observed(model):
            value = (latencies.get(model.name) or {}).get(metric)
            # Targets never observed go after every observed one, in route order.
            return (value is None, value or 0)

        return sorted(usable, key=observed)
    return usable
