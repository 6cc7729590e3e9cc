"""Prometheus metrics of metered calls, fed once per call by the metering boundary.

The meter sees every call's outcomes (one per upstream attempt) when it closes it, refused
and failed calls included, so the counters here agree with the ledger by construction.
Spend is a float counter of USD for dashboards; the ledger stays the source of truth.

Labels are the catalog's model and provider names and small fixed vocabularies (endpoint,
status), so the series stay bounded: a refused unknown model is counted with model "".
"""

from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

if TYPE_CHECKING:
    from usage.metering import CallFacts, Outcome

# Seconds; a gateway call spans a few milliseconds (refused) to minutes (long streams).
CALL_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
LEDGER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

CALL_LABELS = ("endpoint", "model", "provider", "status")
MODEL_LABELS = ("endpoint", "model", "provider")

requests = Counter(
    "tollgate_proxy_requests",
    "/v1 calls by endpoint, serving model, provider and final status",
    CALL_LABELS,
)
latency = Histogram(
    "tollgate_proxy_request_duration_seconds",
    "/v1 call duration, opened to recorded (a stream: to its last event)",
    CALL_LABELS,
    buckets=CALL_BUCKETS,
)
ttft = Histogram(
    "tollgate_proxy_time_to_first_token_seconds",
    "Streamed calls: time from the upstream request to its first event",
    MODEL_LABELS,
    buckets=TTFT_BUCKETS,
)
upstream_errors = Counter(
    "tollgate_upstream_errors",
    "Upstream attempts that failed, by model, provider and status (upstream_error, timeout)",
    MODEL_LABELS + ("status",),
)
retries = Counter(
    "tollgate_upstream_retries",
    "Attempts that tried the same model again after a failure",
    MODEL_LABELS,
)
fallbacks = Counter(
    "tollgate_upstream_fallbacks",
    "Attempts that moved to another model after a failure, labelled with the model moved to",
    MODEL_LABELS,
)
rejected = Counter(
    "tollgate_proxy_rejected",
    "/v1 requests the gateway refused itself (no or bad key, bad body, unknown or disallowed "
    "model, over budget, rate limited, too large, not HTTPS), by HTTP status and error code",
    ("endpoint", "http_status", "code"),
)
tokens = Counter(
    "tollgate_tokens",
    "Billed tokens by kind: prompt, completion; cached is part of prompt, reasoning of completion",
    MODEL_LABELS + ("kind",),
)
spend = Counter(
    "tollgate_spend_usd",
    "Charged spend in USD (float; the ledger is exact)",
    MODEL_LABELS,
)
ledger_write = Histogram(
    "tollgate_ledger_write_seconds",
    "Time to write a call's ledger rows and settle its budgets, retries included",
    buckets=LEDGER_BUCKETS,
)
# Statuses of an attempt that the upstream failed, as opposed to the client or the gateway.
_UPSTREAM_FAILURES = frozenset({"upstream_error", "timeout"})


def call_observe(
    facts: "CallFacts",
    outcomes: Sequence[tuple["Outcome", Decimal]],
    *,
    duration_s: float,
    ledger_s: float | None,
) -> None:
    """Count one recorded call: its final outcome, each attempt's tokens, spend and failure.
    `ledger_s` is None for a call the sweeper recorded (its worker died): no ledger write of
    its own to time."""
    endpoint = facts.endpoint
    if ledger_s is not None:
        ledger_write.observe(ledger_s)
    if not outcomes:
        return
    previous = None
    for outcome, charge in outcomes:
        model, provider = outcome.model, outcome.provider
        if outcome.tokens.prompt:
            tokens.labels(endpoint, model, provider, "prompt").inc(outcome.tokens.prompt)
        if outcome.tokens.completion:
            tokens.labels(endpoint, model, provider, "completion").inc(outcome.tokens.completion)
        if outcome.tokens.cached:
            tokens.labels(endpoint, model, provider, "cached").inc(outcome.tokens.cached)
        if outcome.tokens.reasoning:
            tokens.labels(endpoint, model, provider, "reasoning").inc(outcome.tokens.reasoning)
        if charge:
            spend.labels(endpoint, model, provider).inc(float(charge))
        if outcome.status in _UPSTREAM_FAILURES:
            upstream_errors.labels(endpoint, model, provider, outcome.status).inc()
        if previous is not None:
            moved = fallbacks if previous.model != model else retries
            moved.labels(endpoint, model, provider).inc()
        previous = outcome
    final = outcomes[-1][0]
    if final.status == "refused":
        rejected.labels(endpoint, str(final.http_status or ""), final.error_type[:64]).inc()
    labels = (endpoint, final.model, final.provider, final.status)
    requests.labels(*labels).inc()
    latency.labels(*labels).observe(duration_s)
    if final.ttft_ms is not None:
        ttft.labels(endpoint, final.model, final.provider).observe(final.ttft_ms / 1000)
