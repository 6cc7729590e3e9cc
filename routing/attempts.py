"""Upstream failures and the attempt plan: what to retry, where, when, and until when."""

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import aiohttp
import httpx2

from routing.cooldowns import cooldown_note_failure
from routing.errors import ProxyError, sanitized, upstream_error
from routing.selectors import ModelInfo
from routing.upstream import UpstreamEventError, UpstreamStatusError
from usage.metering import Status

logger = logging.getLogger(__name__)

# Upstream statuses caused by the request itself: passed on, never retried.
CLIENT_FAULT_STATUSES = {400, 413, 422}


@dataclass
class AttemptFailure:
    status: str
    error: ProxyError
    # Whether another target may be tried: never for a fault in the request.
    retryable: bool
    # Seconds the upstream asked us to wait (429 Retry-After).
    retry_after: float | None = None


def classify_failure(exc: BaseException, model: ModelInfo) -> AttemptFailure:
    if isinstance(exc, ProxyError):
        return AttemptFailure(Status.UPSTREAM_ERROR, exc, retryable=True)
    if isinstance(exc, (TimeoutError, httpx2.TimeoutException)):
        return AttemptFailure(
            Status.TIMEOUT,
            ProxyError(
                504,
                f"The upstream for `{model.name}` did not answer in time.",
                code="upstream_timeout",
            ),
            retryable=True,
        )
    if isinstance(exc, UpstreamStatusError):
        status = exc.status
        error = upstream_error(exc.json(), fallback=f"The upstream answered HTTP {status}.")
        message, body = error["message"], {"error": error}
        if status in CLIENT_FAULT_STATUSES:
            return AttemptFailure(
                Status.UPSTREAM_ERROR, ProxyError(status, message, body=body), retryable=False
            )
        if status == 429:
            headers, retry_after = {}, None
            if exc.headers.get("retry-after"):
                headers["Retry-After"] = exc.headers["retry-after"]
                try:
                    retry_after = max(0.0, float(headers["Retry-After"]))
                except ValueError:
                    retry_after = None
            return AttemptFailure(
                Status.UPSTREAM_ERROR,
                ProxyError(
                    429,
                    message,
                    type="rate_limit_error",
                    code="upstream_rate_limited",
                    headers=headers,
                    body=body,
                ),
                retryable=True,
                retry_after=retry_after,
            )
        return AttemptFailure(
            Status.UPSTREAM_ERROR,
            ProxyError(
                502,
                f"The upstream for `{model.name}` failed: {message}",
                code="upstream_error",
                body=body,
            ),
            retryable=True,
        )
    if isinstance(exc, (aiohttp.ClientError, httpx2.TransportError)):
        return AttemptFailure(
            Status.UPSTREAM_ERROR,
            ProxyError(
                502,
                f"Could not reach the upstream for `{model.name}` ({type(exc).__name__}).",
                code="upstream_unreachable",
            ),
            retryable=True,
        )
    if isinstance(exc, UpstreamStreamError):
        return AttemptFailure(Status.UPSTREAM_ERROR, exc.error, retryable=True)
    if isinstance(exc, UpstreamEventError):
        # An error event inside an SSE stream.
        error = upstream_error(exc.body, fallback=sanitized(str(exc)))
        message = f"The upstream for `{model.name}` failed: {error['message']}"
        return AttemptFailure(
            Status.UPSTREAM_ERROR,
            ProxyError(
                502,
                message,
                code="upstream_error",
                body={"error": {**error, "message": message}},
            ),
            retryable=True,
        )
    logger.exception("unexpected upstream failure", exc_info=exc)
    return AttemptFailure(
        Status.UPSTREAM_ERROR,
        ProxyError(
            502, f"The upstream for `{model.name}` failed unexpectedly.", code="upstream_error"
        ),
        retryable=True,
    )


class UpstreamStreamError(Exception):
    """A stream that ended or failed before its first event."""

    def __init__(self, error: ProxyError):
        super().__init__(error.message)
        self.error = error


# --- Attempts -----------------------------------------------------------------

BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 4.0


class AttemptPlan:
    """The attempts of one call: each candidate in order, then up to `retries`
    more passes with exponential backoff and jitter, honouring Retry-After,
    all within the call's deadline. Iterate it for (model, timeout) pairs
    and report each failure with `failed`."""

    def __init__(self, call):
        self.call = call
        self.deadline = call.deadline_at
        self.retry_at: dict[str, float] = {}
        self.last_failure: AttemptFailure | None = None
        self.stopped = False

    async def failed(self, model: ModelInfo, failure: AttemptFailure) -> None:
        self.last_failure = failure
        if not failure.retryable:
            self.stopped = True
            return
        if failure.retry_after:
            self.retry_at[model.name] = time.monotonic() + failure.retry_after
        # Shared with every worker; a cache failure must not fail the call.
        try:
            await cooldown_note_failure(model.name, retry_after=failure.retry_after)
        except Exception:
            logger.exception("could not record a cooldown for %s", model.name)

    async def __aiter__(self):
        for attempt_pass in range(self.call.retries + 1):
            for model in self.call.candidates:
                if self.stopped:
                    return
                wait = 0.0
                if attempt_pass:
                    backoff = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt_pass - 1))
                    wait = random.uniform(backoff / 2, backoff)
                wait = max(wait, self.retry_at.get(model.name, 0) - time.monotonic())
                if time.monotonic() + wait >= self.deadline:
                    continue
                if wait > 0:
                    await asyncio.sleep(wait)
                remaining = self.deadline - time.monotonic()
                yield model, min(float(model.provider.timeout_s), remaining)

    def final_error(self) -> ProxyError:
        if self.last_failure is not None:
            return self.last_failure.error
        return ProxyError(
            504, "No upstream could be tried within the route's deadline.", code="deadline_exceeded"
        )
