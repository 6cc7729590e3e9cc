"""One client call through the proxy: resolve, check, attempt, record.

A call is prepared synchronously in one thread hop (catalog snapshot, access,
prices, in-flight record), then runs its upstream attempts asynchronously,
then writes its ledger rows (one per attempt) in one transaction.
"""

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import httpx2
from asgiref.sync import sync_to_async
from django.db import connection
from django.utils import timezone

from accounts.services import KeyPrincipal
from routing import tokens
from routing.attempts import AttemptPlan, UpstreamStreamError, classify_failure
from routing.cooldowns import cooling
from routing.errors import ProxyError
from routing.ratelimits import ratelimit_check
from routing.selectors import ModelInfo, catalog_snapshot
from routing.strategies import order_targets, request_needs
from routing.upstream import upstream_client
from usage.budgets import OverBudget, Reservation, worst_case_cost
from usage.models import UsageRecord
from usage.selectors import model_latencies
from usage.services import ChargedPrices, inflight_start, usage_cost, usage_record

logger = logging.getLogger(__name__)

Status = UsageRecord.Status
CHAT = UsageRecord.Endpoint.CHAT
EMBEDDINGS = UsageRecord.Endpoint.EMBEDDINGS
_CAPABILITY = {CHAT: "chat", EMBEDDINGS: "embeddings"}


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def format_usd(amount: Decimal) -> str:
    """A cost as a plain decimal string without trailing zeros, e.g. "0.00000525"."""
    return f"{amount.normalize():f}"


@dataclass
class Call:
    request_id: str
    principal: KeyPrincipal
    endpoint: str
    requested_model: str
    route: str
    candidates: list[ModelInfo]
    prompt_estimate: int
    end_user: str
    created_at: datetime
    # Seconds all attempts together may take, and extra passes over the candidates.
    deadline_s: float = 600
    retries: int = 0
    started: float = field(default_factory=time.perf_counter)
    rows: list[dict] = field(default_factory=list)
    reservation: Reservation | None = None
    # x-ratelimit-* headers for the response.
    ratelimit_headers: dict = field(default_factory=dict)

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def base_row(self) -> dict:
        return {
            "request_id": self.request_id,
            "team_id": self.principal.team_id,
            "api_key_id": self.principal.key_id,
            "endpoint": self.endpoint,
            "requested_model": self.requested_model,
            "route": self.route,
            "end_user": self.end_user,
            "created_at": self.created_at,
        }

    def add_row(self, model: ModelInfo | None, **fields) -> dict:
        row = {**self.base_row(), "attempt": len(self.rows), **fields}
        if model is not None:
            prices = ChargedPrices.from_catalog(model.prices)
            row.update(
                model=model.name,
                provider=model.provider.name,
                input_per_mtok=prices.input,
                cached_input_per_mtok=prices.cached_input,
                output_per_mtok=prices.output,
            )
        self.rows.append(row)
        return row

    def add_failure(self, model: ModelInfo, failure, started: float) -> dict:
        return self.add_row(
            model,
            status=failure.status,
            http_status=failure.error.status,
            error_type=failure.error.code or failure.error.type,
            error_message=failure.error.message[:500],
            latency_ms=int((time.perf_counter() - started) * 1000),
        )

    async def record(self) -> None:
        # Shielded: a client disconnect must not cancel the ledger write. Not
        # thread-sensitive: a cancelled stream may be finalized after its
        # request's context is gone, and must still be recorded.
        await asyncio.shield(sync_to_async(_record_and_release, thread_sensitive=False)(self.rows, self.reservation))


def _record_and_release(rows, reservation) -> None:
    try:
        usage_record(rows=rows, reservation=reservation)
    finally:
        connection.close()  # back to the pool; this thread serves other calls


def usage_fields(model: ModelInfo, usage: dict | None, *, estimate_completion: int = 0, prompt_estimate: int = 0) -> dict:
    """Token counts and cost from an upstream `usage` object, or from estimates when it sent none."""
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        prompt = usage["prompt_tokens"]
        completion = usage.get("completion_tokens") or 0
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        estimated = False
    else:
        prompt, completion, cached, reasoning, estimated = prompt_estimate, estimate_completion, 0, 0, True
    cost = usage_cost(
        prices=ChargedPrices.from_catalog(model.prices),
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
    )
    return {
        "prompt_tokens": prompt,
        "cached_tokens": min(cached, prompt),
        "completion_tokens": completion,
        "reasoning_tokens": reasoning,
        "tokens_estimated": estimated,
        "cost_usd": cost,
    }


# --- Preparing a call -------------------------------------------------------


def _unpriced_direction(model: ModelInfo, endpoint: str) -> str | None:
    prices = model.prices
    if prices is None or prices.input is None:
        return "input"
    if endpoint == CHAT and prices.output is None:
        return "output"
    return None


def route_allowed(principal: KeyPrincipal, route) -> bool:
    """A key limited to some models may use a route it names explicitly, or one
    whose every target it may use (so a route never widens what a key reaches)."""
    return principal.may_use(route.name) or all(principal.may_use(t) for t in route.targets)


_latencies: tuple[float, dict] = (0.0, {})
LATENCY_WINDOW = timedelta(minutes=15)
LATENCY_REFRESH_S = 10


def recent_latencies() -> dict[str, dict]:
    """Latencies observed by this gateway (from the ledger), refreshed every few seconds per process."""
    global _latencies
    fetched_at, values = _latencies
    if time.monotonic() - fetched_at < LATENCY_REFRESH_S:
        return values
    # No lock, for the same reason as the catalog snapshot: never wait on a
    # lock while holding a pooled connection another lock holder may need.
    values = model_latencies(since=timezone.now() - LATENCY_WINDOW)
    _latencies = (time.monotonic(), values)
    return values


def call_prepare(*, principal: KeyPrincipal, endpoint: str, body: dict, request_id: str, now: datetime) -> Call:
    """Resolve the requested model or route to the models that may serve it.

    Refusals (unknown, not allowed, unusable or unpriced model) are written
    to the ledger as `refused` rows and raised as ProxyError. On success the
    call's in-flight record is written before any upstream is contacted.
    """
    catalog = catalog_snapshot()
    name = body["model"]
    if endpoint == CHAT:
        prompt_estimate = tokens.chat_prompt_tokens(body["messages"], body.get("tools"))
    else:
        prompt_estimate = tokens.embedding_input_tokens(body["input"])
    route = catalog.route(team_id=principal.team_id, name=name)
    call = Call(
        request_id=request_id,
        principal=principal,
        endpoint=endpoint,
        requested_model=name,
        route=route.name if route else "",
        candidates=[],
        prompt_estimate=prompt_estimate,
        end_user=str(body.get("user") or "")[:256],
        created_at=now,
    )

    def refuse(error: ProxyError, model: ModelInfo | None = None):
        call.add_row(
            model,
            status=Status.REFUSED,
            http_status=error.status,
            error_type=error.code or error.type,
            error_message=error.message[:500],
        )
        usage_record(rows=call.rows, now=now)
        raise error

    capability = _CAPABILITY[endpoint]
    if route is not None:
        if not route_allowed(principal, route):
            refuse(ProxyError(403, f"This API key is not allowed to use the route `{name}`.", code="model_not_allowed"))
        targets = [catalog.models[t] for t in route.targets if t in catalog.models]
        targets = [m for m in targets if m.can(capability) and _unpriced_direction(m, endpoint) is None]
        ordered = order_targets(
            route=route,
            targets=targets,
            body=body,
            prompt_tokens=prompt_estimate,
            needs=request_needs(body) if endpoint == CHAT else set(),
            latencies=recent_latencies() if route.strategy == "fastest" else {},
            stream=bool(body.get("stream")),
        )
        cold = cooling([m.name for m in ordered])
        # Cooling targets sit out unless nothing else is left.
        call.candidates = [m for m in ordered if m.name not in cold] or ordered
        call.deadline_s, call.retries = route.deadline_s, route.retries
        if not call.candidates:
            refuse(ProxyError(
                400,
                f"No model of the route `{name}` can serve this request (capabilities, context window, "
                f"prices or quality floor).",
                param="model", code="no_usable_target",
            ))
    else:
        model = catalog.models.get(name)
        if model is None:
            refuse(ProxyError(
                404, f"The model `{name}` does not exist or you do not have access to it.",
                param="model", code="model_not_found",
            ))
        if not principal.may_use(name):
            refuse(ProxyError(403, f"This API key is not allowed to use the model `{name}`.",
                              param="model", code="model_not_allowed"), model)
        if not model.can(capability):
            refuse(ProxyError(400, f"The model `{name}` does not support {capability}.",
                              param="model", code="model_not_supported"), model)
        direction = _unpriced_direction(model, endpoint)
        if direction is not None:
            refuse(ProxyError(
                400,
                f"The model `{name}` has no {direction} price in this gateway's catalog, so its calls "
                f"cannot be billed and are refused. Ask your Tollgate admin to set its price.",
                param="model", code="model_unpriced",
            ), model)
        call.candidates = [model]
        call.deadline_s = model.provider.timeout_s

    rate = ratelimit_check(key_id=principal.key_id, rpm=principal.rpm_limit, tpm=principal.tpm_limit,
                           tokens=prompt_estimate + (body.get("max_completion_tokens") or body.get("max_tokens") or 0))
    if not rate.allowed:
        # Not written to the ledger: a client hammering past its limit must
        # not turn into database writes.
        raise ProxyError(
            429,
            f"Rate limit reached for this key on {rate.exceeded} per minute: limit {rate.limit}, "
            f"used {rate.used}. Please try again in {rate.retry_after}s.",
            type=rate.exceeded, code="rate_limit_exceeded", headers=rate.headers,
        )
    call.ratelimit_headers = rate.headers

    # Reserved before the upstream call so parallel requests cannot overspend.
    reserve = worst_case_cost(
        prices_list=[ChargedPrices.from_catalog(m.prices) for m in call.candidates],
        prompt_tokens=prompt_estimate,
        output_tokens_list=[tokens.output_cap(body, m.max_output_tokens) if endpoint == CHAT else 0
                            for m in call.candidates],
    )
    try:
        call.reservation = inflight_start(
            request_id=request_id,
            team_id=principal.team_id,
            api_key_id=principal.key_id,
            endpoint=endpoint,
            requested_model=name,
            now=now,
            reserve_usd=reserve,
        )
    except OverBudget as exc:
        refuse(ProxyError(429, str(exc), type="insufficient_quota", code="insufficient_quota",
                          headers=rate.headers))
    return call


# --- JSON calls (chat without stream, embeddings) -------------------------


_PATHS = {CHAT: "/chat/completions", EMBEDDINGS: "/embeddings"}


def upstream_body(body: dict, model: ModelInfo, endpoint: str) -> dict:
    """The client's body for the upstream: every field passed through, the model renamed."""
    sent = {**body, "model": model.upstream_id}
    if endpoint == EMBEDDINGS:
        # The SDK asks for base64 unless told otherwise; a raw client expects floats.
        sent.setdefault("encoding_format", "float")
    return sent


async def call_json(call: Call, body: dict) -> tuple[dict, ModelInfo, dict]:
    """Run a non-streaming call; return the client payload, serving model and its ledger row."""
    plan = AttemptPlan(call)
    async for model, timeout in plan:
        started = time.perf_counter()
        try:
            client = upstream_client(model.provider)
            # The SDK's generic post: its pooled client, auth and error mapping,
            # without re-validating a body that is passed through as sent.
            raw = await client.post(_PATHS[call.endpoint], body=upstream_body(body, model, call.endpoint),
                                    cast_to=httpx2.Response, options={"timeout": timeout})
            payload = raw.json()
            if not isinstance(payload, dict):
                raise UpstreamStreamError(ProxyError(502, "The upstream sent a malformed answer.", code="upstream_error"))
        except Exception as exc:
            failure = classify_failure(exc, model)
            call.add_failure(model, failure, started)
            await plan.failed(model, failure)
            continue
        completion_estimate = 0
        if call.endpoint == CHAT and not isinstance(payload.get("usage"), dict):
            completion_estimate = sum(
                tokens.text_tokens(str((c.get("message") or {}).get("content") or ""))
                for c in payload.get("choices") or [] if isinstance(c, dict)
            )
        row = call.add_row(
            model,
            status=Status.OK,
            http_status=200,
            latency_ms=int((time.perf_counter() - started) * 1000),
            **usage_fields(model, payload.get("usage"), estimate_completion=completion_estimate,
                           prompt_estimate=call.prompt_estimate),
        )
        payload["model"] = model.name
        await call.record()
        return payload, model, row
    await call.record()
    raise plan.final_error()
