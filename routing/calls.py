"""One client call through the proxy: resolve → attempt → relay.

`call_prepare` resolves the requested model or route to the models that
may serve it, checks access, limits and prices, and opens the call's meter
(usage.metering), all synchronously in one thread hop. `call_json` (here)
and `call_stream` (routing.streaming) run the upstream attempts and report
each one to the meter as a typed Outcome; the meter alone writes money.
"""

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.utils import timezone

from accounts.services import KeyPrincipal
from routing import responses, tokens
from routing.attempts import AttemptFailure, AttemptPlan, UpstreamStreamError, classify_failure
from routing.cooldowns import cooling
from routing.errors import ProxyError
from routing.ratelimits import RateCheck, ratelimit_check, ratelimit_settle
from routing.selectors import ENDPOINTS, ModelInfo, catalog_snapshot_async
from routing.strategies import order_targets, request_needs
from routing.tokens import TokenBounds
from routing.upstream import upstream_post
from usage.metering import (
    CallFacts,
    Endpoint,
    Meter,
    Outcome,
    OverBudget,
    Status,
    meter_open_async,
    meter_refuse_async,
    observed_latencies,
)
from usage.pricing import Tokens, unpriced_direction

logger = logging.getLogger(__name__)

CHAT = Endpoint.CHAT
COMPLETIONS = Endpoint.COMPLETIONS
RESPONSES = Endpoint.RESPONSES
EMBEDDINGS = Endpoint.EMBEDDINGS
MODERATIONS = Endpoint.MODERATIONS
# The endpoints whose calls produce output (billed, bounded by the request's limits).
GENERATING = {CHAT, COMPLETIONS, RESPONSES}


def json_bytes(value: object) -> bytes:
    """JSON as UTF-8, compact. An upstream's text may hold a lone surrogate, valid JSON
    but not encodable as UTF-8: then non-ASCII is escaped instead of failing the call."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def format_usd(amount: Decimal) -> str:
    """A cost as a plain decimal string without trailing zeros, e.g. "0.00000525"."""
    return f"{amount.normalize():f}"


@dataclass
class Call:
    facts: CallFacts
    principal: KeyPrincipal
    candidates: list[ModelInfo]
    bounds: TokenBounds
    # Seconds all attempts together may take, and extra passes over the candidates.
    deadline_s: float = 600
    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    meter: Meter | None = None
    rate: RateCheck | None = None
    # Set when the client disconnected; the call still finishes and is recorded.
    client_gone: bool = False

    @property
    def request_id(self) -> str:
        return self.facts.request_id

    @property
    def route(self) -> str:
        return self.facts.route

    @property
    def endpoint(self) -> str:
        return self.facts.endpoint

    @property
    def deadline_at(self) -> float:
        """When the call must end, in the event loop's clock (time.monotonic)."""
        return self.started + self.deadline_s

    @property
    def ratelimit_headers(self) -> dict:
        return self.rate.headers if self.rate else {}

    def outcome(self, model: ModelInfo, *, status: str, started: float, **fields) -> Outcome:
        return Outcome(
            status=status,
            model=model.name,
            provider=model.provider.name,
            price=model.prices,
            latency_ms=int((time.monotonic() - started) * 1000),
            **fields,
        )

    def fail(self, model: ModelInfo, failure: AttemptFailure, started: float) -> None:
        self.meter.attempt(
            self.outcome(
                model,
                status=failure.status,
                started=started,
                http_status=failure.error.status,
                error_type=failure.error.code or failure.error.type,
                error_message=failure.error.message,
            )
        )

    async def record(self) -> None:
        # Shielded: a client disconnect must not cancel the ledger write. Not
        # thread-sensitive: a cancelled stream may be finalized after its
        # request's context is gone, and must still be recorded. A write that
        # still fails (the database gone for good) leaves the call open for the
        # sweeper and is logged with what it would have written; the client,
        # whose work was done, still gets its answer.
        try:
            await asyncio.shield(_record(self))
        except Exception:
            outcomes = [(o.status, o.model, str(o.tokens), str(c)) for o, c in self.meter.outcomes]
            logger.exception("could not record %s: %s", self.request_id, outcomes)

    async def unless_client_gone(self) -> None:
        """Before the upstream is called: a client already gone gets no upstream call; the
        call is recorded as never sent, and the caller stops."""
        if self.client_gone:
            await call_abandon_unsent(self)
            raise asyncio.CancelledError


async def call_abandon_unsent(call: Call) -> None:
    """The client left before its call was sent upstream: record it, at no cost, at once."""
    model = call.candidates[0]
    call.meter.attempt(
        Outcome(
            status=Status.CLIENT_CLOSED,
            model=model.name,
            provider=model.provider.name,
            price=model.prices,
            error_type="client_closed",
            error_message="The client disconnected before the call was sent upstream.",
        )
    )
    await call.meter.close_async()


async def _record(call: Call) -> None:
    await call.meter.close_async()
    counted = sum(o.tokens.total for o, _ in call.meter.outcomes)
    await ratelimit_settle(call.rate, tokens=counted)


def counted_tokens(
    model: ModelInfo, call: Call, usage: object, *, completion_estimate: int
) -> tuple[Tokens, bool]:
    """The tokens to bill: the upstream's `usage` when it is sane, else the gateway's own
    count (the prompt estimate plus what was produced), flagged as estimated. Neither may
    pass the request's ceiling: an upstream's overproduction is its own to bear."""
    chat = call.endpoint in GENERATING
    ceiling = call.bounds.ceiling(model)
    allowance = tokens.output_allowance(call.bounds.body, model) if chat else 0
    reported = tokens.reported_tokens(
        usage,
        max_prompt=ceiling.prompt,
        max_completion=allowance,
        min_prompt=call.bounds.prompt_estimate // UNDERCOUNT_FACTOR,
        min_completion=completion_estimate // UNDERCOUNT_FACTOR,
        chat=chat,
    )
    if reported is not None:
        return reported, False
    if usage is not None:
        logger.warning(
            "upstream %s sent unusable usage for %s: %.200r; counting it ourselves",
            model.provider.name,
            call.request_id,
            usage,
        )
    prompt = min(call.bounds.prompt_estimate, ceiling.prompt)
    return Tokens(prompt=prompt, completion=min(completion_estimate, allowance)), True


# Reported usage below an eighth of the gateway's own estimate is not believed.
UNDERCOUNT_FACTOR = 8


# --- Preparing a call -------------------------------------------------------


def route_allowed(principal: KeyPrincipal, route) -> bool:
    """A key limited to some models may use a route it names explicitly, or one
    whose every target it may use (so a route never widens what a key reaches)."""
    return principal.may_use(route.name) or all(principal.may_use(t) for t in route.targets)


class RecentLatencies:
    """Latencies observed by this gateway (from the ledger), refreshed every few seconds."""

    WINDOW = timedelta(minutes=15)
    REFRESH_S = 10

    def __init__(self):
        self._fetched_at, self._values = float("-inf"), {}

    async def get(self) -> dict[str, dict]:
        """The latencies as they are, while one task reads them afresh (in a thread, from
        the ledger) every REFRESH_S; only the first call of a process waits for them."""
        if time.monotonic() - self._fetched_at >= self.REFRESH_S:
            self._fetched_at = time.monotonic()
            refresh = asyncio.ensure_future(sync_to_async(self._read, thread_sensitive=False)())
            if not self._values:
                await asyncio.shield(refresh)
        return self._values

    def _read(self) -> None:
        try:
            self._values = observed_latencies(since=timezone.now() - self.WINDOW)
        finally:
            connection.close()


recent_latencies = RecentLatencies()


async def call_prepare(
    *, principal: KeyPrincipal, endpoint: str, body: dict, request_id: str, now: datetime
) -> Call:
    """Resolve the requested model or route to the models that may serve it, and open the call.

    Refusals (unknown, not allowed, unusable or unpriced model, over budget)
    are recorded as `refused` rows and raised as ProxyError. On success the
    call's meter is open (budgets reserved, in-flight record written) before
    any upstream is contacted.
    """
    catalog = await catalog_snapshot_async()
    name = body["model"]
    # Why a chat-only upstream cannot serve this Responses request, if it cannot.
    unbridgeable: ProxyError | None = None
    if endpoint == RESPONSES:
        # Reserved and limited on the chat request it is equivalent to (routing.responses).
        chat, unbridgeable = responses.to_chat(body)
        bounds = TokenBounds.of_responses(body, chat)
    else:
        bounds = {
            CHAT: TokenBounds.of_chat,
            COMPLETIONS: TokenBounds.of_completions,
            EMBEDDINGS: TokenBounds.of_embeddings,
            MODERATIONS: TokenBounds.of_moderations,
        }[endpoint](body)
    # A model's name always means the model: a route can never shadow it.
    model = catalog.models.get(name)
    route = catalog.route(team_id=principal.team_id, name=name) if model is None else None
    facts = CallFacts(
        request_id=request_id,
        team_id=principal.team_id,
        key_id=principal.key_id,
        key_prefix=principal.prefix,
        endpoint=endpoint,
        requested_model=name,
        route=route.name if route else "",
        end_user=str(body.get("user") or "")[:256],
        created_at=now,
    )
    call = Call(facts=facts, principal=principal, candidates=[], bounds=bounds)

    async def refuse(error: ProxyError, refused_model: ModelInfo | None = None):
        await meter_refuse_async(
            facts=facts,
            now=now,
            outcome=Outcome(
                status=Status.REFUSED,
                model=refused_model.name if refused_model else "",
                provider=refused_model.provider.name if refused_model else "",
                price=refused_model.prices if refused_model else None,
                http_status=error.status,
                error_type=error.code or error.type,
                error_message=error.message,
            ),
        )
        error.recorded = True
        raise error

    needs_output = endpoint in GENERATING
    global_deadline = settings.TOLLGATE_CALL_DEADLINE_S
    if route is not None:
        if not route_allowed(principal, route):
            await refuse(
                ProxyError(
                    403,
                    f"This API key is not allowed to use the route `{name}`.",
                    code="model_not_allowed",
                )
            )
        targets = [catalog.models[t] for t in route.targets if t in catalog.models]
        if not any(m.serves(endpoint) for m in targets):
            served = {e for m in targets for e in m.served}
            await refuse(
                ProxyError(
                    400,
                    f"No model of the route `{name}` is served on {ENDPOINT_PATHS[endpoint]}; "
                    "its models are served on "
                    f"{', '.join(ENDPOINT_PATHS[e] for e in ENDPOINTS if e in served) or 'nothing'}.",
                    param="model",
                    code="model_not_supported",
                )
            )
        targets = [
            m
            for m in targets
            if m.serves(endpoint)
            and unpriced_direction(m.prices, needs_output=needs_output) is None
        ]
        if unbridgeable is not None:
            # Parts only the Responses API reads: for the models whose upstream speaks it.
            targets = [m for m in targets if not bridged(call, m)]
            if not targets:
                await refuse(unbridgeable)
        ordered = order_targets(
            route=route,
            targets=targets,
            bounds=bounds,
            needs=request_needs(body) if endpoint == CHAT else set(),
            latencies=await recent_latencies.get() if route.strategy == "fastest" else {},
            stream=bool(body.get("stream")),
        )
        cold = await cooling([m.name for m in ordered])
        # Cooling targets sit out unless nothing else is left.
        call.candidates = [m for m in ordered if m.name not in cold] or ordered
        call.deadline_s, call.retries = min(route.deadline_s, global_deadline), route.retries
        if not call.candidates:
            await refuse(
                ProxyError(
                    400,
                    f"No model of the route `{name}` can serve this request (capabilities, context window, "
                    f"prices or quality floor).",
                    param="model",
                    code="no_usable_target",
                )
            )
    else:
        if model is None:
            await refuse(
                ProxyError(
                    404,
                    f"The model `{name}` does not exist or you do not have access to it.",
                    param="model",
                    code="model_not_found",
                )
            )
        if not principal.may_use(name):
            await refuse(
                ProxyError(
                    403,
                    f"This API key is not allowed to use the model `{name}`.",
                    param="model",
                    code="model_not_allowed",
                ),
                model,
            )
        if not model.serves(endpoint):
            await refuse(
                ProxyError(
                    400,
                    f"The model `{name}` is not served on {ENDPOINT_PATHS[endpoint]}; it is "
                    f"served on {', '.join(ENDPOINT_PATHS[e] for e in model.served)}.",
                    param="model",
                    code="model_not_supported",
                ),
                model,
            )
        if unbridgeable is not None and bridged(call, model):
            await refuse(unbridgeable, model)
        direction = unpriced_direction(model.prices, needs_output=needs_output)
        if direction is not None:
            await refuse(
                ProxyError(
                    400,
                    f"The model `{name}` has no {direction} price in this gateway's catalog, so its calls "
                    f"cannot be billed and are refused. Ask your Tollgate admin to set its price.",
                    param="model",
                    code="model_unpriced",
                ),
                model,
            )
        call.candidates = [model]
        call.deadline_s = global_deadline

    # TPM counts the most the call can use, as budgets do; what it did not use
    # is given back when it is recorded.
    ceilings = [(m.prices, bounds.ceiling(m)) for m in call.candidates]
    rate = await ratelimit_check(
        key_id=principal.key_id,
        rpm=principal.rpm_limit,
        tpm=principal.tpm_limit,
        tokens=max(t.total for _, t in ceilings),
    )
    if not rate.allowed:
        # Not written to the ledger: a client hammering past its limit must
        # not turn into database writes.
        raise ProxyError(
            429,
            f"Rate limit reached for this key on {rate.exceeded} per minute: limit {rate.limit}, "
            f"used {rate.used}. Please try again in {rate.retry_after}s.",
            type=rate.exceeded,
            code="rate_limit_exceeded",
            headers=rate.headers,
        )
    call.rate = rate
    try:
        call.meter = await meter_open_async(
            facts=facts, worst_case=ceilings, deadline_s=call.deadline_s, now=now
        )
    except OverBudget as exc:
        await ratelimit_settle(rate, tokens=0)
        await refuse(
            ProxyError(
                429,
                str(exc),
                type="insufficient_quota",
                code="insufficient_quota",
                headers={**rate.headers, "x-should-retry": "false"},
            )
        )
    return call


# --- Detached from the client ------------------------------------------------------


class DetachedCalls:
    """Upstream work that outlives its client: a client that disconnects does not cancel
    the call, which finishes (within its deadline) and is recorded with what the upstream
    produced. Holds the running tasks so they are not garbage-collected."""

    def __init__(self):
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def finish(self, *, timeout: float) -> int:
        """At shutdown: wait (up to `timeout` seconds) for the calls still running to finish
        and be recorded; returns how many were left unfinished (the sweeper records those,
        as interrupted, once this process's lease lapses)."""
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return len(pending)

    async def run(self, call: Call, coroutine, *, on_abandon=None):
        task = self.spawn(coroutine)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            call.client_gone = True
            if on_abandon is not None:
                task.add_done_callback(on_abandon)
            raise


detached = DetachedCalls()


# --- JSON calls (chat without stream, embeddings) -------------------------


_PATHS = {
    CHAT: "/chat/completions",
    COMPLETIONS: "/completions",
    EMBEDDINGS: "/embeddings",
    MODERATIONS: "/moderations",
    RESPONSES: "/responses",
}
# The same as clients call them on the gateway (named in errors and on the models page).
ENDPOINT_PATHS = {endpoint: f"/v1{path}" for endpoint, path in _PATHS.items()}


def upstream_body(body: dict, model: ModelInfo, endpoint: str) -> dict:
    """The client's body for the upstream: every field passed through, the model renamed.
    A chat request that names no output limit gets the one its reservation assumed, so
    that no honest upstream can produce more than was reserved."""
    sent = {**body, "model": model.upstream_id}
    if endpoint in GENERATING and tokens.output_unbounded(body):
        sent["max_tokens"] = tokens.output_cap(body, model.max_output_tokens)
    if endpoint == EMBEDDINGS:
        # The SDK asks for base64 unless told otherwise; a raw client expects floats.
        sent.setdefault("encoding_format", "float")
    return sent


def bridged(call: Call, model: ModelInfo) -> bool:
    """A Responses API call to a model whose upstream speaks only chat (routing.responses)."""
    return call.endpoint == RESPONSES and "responses" not in model.endpoints


def upstream_request(call: Call, body: dict, model: ModelInfo) -> tuple[str, dict]:
    """The path and body an attempt sends `model`'s upstream."""
    if bridged(call, model):
        return _PATHS[CHAT], upstream_body(call.bounds.body, model, CHAT)
    if call.endpoint == RESPONSES:
        sent = {**body, "model": model.upstream_id}
        if tokens.output_unbounded(call.bounds.body):
            sent["max_output_tokens"] = tokens.output_cap(call.bounds.body, model.max_output_tokens)
        return _PATHS[RESPONSES], sent
    return _PATHS[call.endpoint], upstream_body(body, model, call.endpoint)


def _metered(call: Call, model: ModelInfo, payload: dict) -> tuple[object, int]:
    """What an upstream's answer tells the meter: the usage it reported (in chat's names)
    and the output it holds (estimated tokens), read whatever its shape."""
    if call.endpoint == RESPONSES and not bridged(call, model):
        usage = responses.usage_as_chat(payload.get("usage"))
        return usage, tokens.text_tokens(responses.produced_text(payload))
    if call.endpoint not in GENERATING:
        return payload.get("usage"), 0
    return payload.get("usage"), tokens.produced_estimate(call.bounds.body, _produced_text(payload))


def _client_payload(
    call: Call, body: dict, model: ModelInfo, payload: dict, counted: Tokens
) -> dict:
    """The answer for the client: the upstream's, the model renamed, or (bridged) the
    Response made from it, reporting the tokens billed."""
    if bridged(call, model):
        usage = responses.usage_of_tokens(counted)
        return responses.from_chat(payload, body, model.name, usage)
    payload["model"] = model.name
    return payload


def _produced_text(payload: dict) -> str:
    """The text an answer holds (content, reasoning, refusals, tool arguments), for estimating:
    whatever shape the upstream gave it, never an error after the work was done."""
    choices = payload.get("choices")
    produced = []
    for choice in choices if isinstance(choices, list) else []:
        if isinstance(choice, dict) and isinstance(choice.get("text"), str):
            produced.append(choice["text"])  # a legacy completion
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            produced.extend(v for k, v in message.items() if k != "role" and isinstance(v, str))
            parts = message.get("content")
            if isinstance(parts, list):  # content as text parts
                produced.extend(
                    p["text"]
                    for p in parts
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
            calls = message.get("tool_calls")
            if isinstance(calls, list):
                produced.extend(str(c.get("function")) for c in calls if isinstance(c, dict))
        elif isinstance(message, str):
            produced.append(message)
    return "".join(produced)


async def call_json(call: Call, body: dict) -> tuple[dict, ModelInfo, Decimal]:
    """Run a non-streaming call; return the client payload, the serving model and the call's cost."""
    await call.unless_client_gone()
    plan = AttemptPlan(call)
    async for model, timeout in plan:
        started = time.monotonic()
        try:
            # Straight through the provider's pooled HTTP client: the body as sent (the
            # model renamed), no SDK request building on the hot path.
            path, sent = upstream_request(call, body, model)
            async with asyncio.timeout_at(call.deadline_at):
                raw = await upstream_post(model.provider, path, json_bytes(sent), timeout=timeout)
                payload = json.loads(raw)
            if not isinstance(payload, dict):
                raise UpstreamStreamError(
                    ProxyError(502, "The upstream sent a malformed answer.", code="upstream_error")
                )
            usage, produced = _metered(call, model, payload)
            counted, estimated = counted_tokens(model, call, usage, completion_estimate=produced)
            # An answer the gateway cannot pass on is this attempt's failure, like any other.
            payload = _client_payload(call, body, model, payload, counted)
        except Exception as exc:
            failure = classify_failure(exc, model)
            call.fail(model, failure, started)
            await plan.failed(model, failure)
            continue
        call.meter.attempt(
            call.outcome(
                model,
                status=Status.CLIENT_CLOSED if call.client_gone else Status.OK,
                started=started,
                http_status=200,
                tokens=counted,
                estimated=estimated,
            )
        )
        await call.record()
        return payload, model, call.meter.total
    await call.record()
    raise plan.final_error()
