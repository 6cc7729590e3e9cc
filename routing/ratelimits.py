"""Per-key requests and tokens per minute, in fixed one-minute windows.

Counted in Redis when REDIS_URL is set, so every worker shares the count
(one round trip per call, on the event loop: INCRBY for each limit, pipelined when there
are two, and EXPIRE when a window's key is made);
in process memory otherwise, and while Redis does not answer: then each process
enforces the limits on its own (a key may get up to the limit from each process
until Redis is back), with one warning a minute in the log. A request's tokens are the most it can use
(routing.tokens: its prompt ceiling plus n × its output allowance),
counted when it is admitted, so a request shaped to look small cannot slip
past the limit; when the call is recorded the window counts what it really
used (`ratelimit_settle`). A refused request gives its counts back.
Headers follow OpenAI's names.
"""

import logging
import math
import threading
import time
from dataclasses import dataclass, field

from portal.logs import warn_at_most_every

WINDOW_S = 60
logger = logging.getLogger(__name__)


@dataclass
class RateCheck:
    allowed: bool
    headers: dict = field(default_factory=dict)
    # Which limit refused the call ("requests" or "tokens"), its limit and use.
    exceeded: str | None = None
    limit: int = 0
    used: int = 0
    retry_after: int = 0
    # The window's token counter and what this request added to it, for ratelimit_settle.
    tokens_key: str = ""
    tokens_counted: int = 0
    window: int = 0
    # Counted in this process's memory (no Redis, or Redis did not answer).
    local: bool = False


class _MemoryCounter:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.window = None

    def incr(self, amounts: dict[str, int], window: int) -> list[int]:
        with self.lock:
            if self.window is not None and window < self.window:
                return [0] * len(amounts)  # a past window is gone; nothing to change
            if self.window != window:
                self.counts, self.window = {}, window
            results = []
            for key, amount in amounts.items():
                self.counts[key] = self.counts.get(key, 0) + amount
                results.append(self.counts[key])
            return results


_memory = _MemoryCounter()


async def _incr(
    amounts: dict[str, int], window: int, *, local: bool = False
) -> tuple[list[int], bool]:
    """The counts after adding `amounts`, and whether they were counted locally."""
    from portal import aio

    client = None if local else aio.redis_client()
    if client is None:
        return _memory.incr(amounts, window), True
    try:
        if len(amounts) == 1:
            # The usual case (one limit, or a settlement): one command. A window's key is
            # given its expiry by whoever made it (its count is then its amount).
            ((key, amount),) = amounts.items()
            count = await client.incrby(key, amount)
            if count == amount:
                await client.expire(key, WINDOW_S * 2)
            return [count], False
        pipe = client.pipeline(transaction=False)
        for key, amount in amounts.items():
            pipe.incrby(key, amount)
            pipe.expire(key, WINDOW_S * 2)
        return (await pipe.execute())[::2], False
    except Exception as exc:  # any failure of Redis: connection, timeout, no free connection
        aio.redis_failed(exc)
        warn_at_most_every(
            60,
            logger,
            "ratelimits-redis",
            "rate limits are counted per process while Redis does not answer: %s",
            exc,
        )
        return _memory.incr(amounts, window), True


def _duration(seconds: float) -> str:
    # OpenAI's style: "1s", "59s", "250ms".
    return f"{math.ceil(seconds)}s" if seconds >= 1 else f"{max(1, int(seconds * 1000))}ms"


async def ratelimit_check(
    *, key_id: int, rpm: int | None, tpm: int | None, tokens: int, now: float | None = None
) -> RateCheck:
    if not rpm and not tpm:
        return RateCheck(allowed=True)
    now = now if now is not None else time.time()
    window = int(now // WINDOW_S)
    reset_in = WINDOW_S - (now % WINDOW_S)
    limits = {}
    if rpm:
        limits["requests"] = (f"tollgate:rl:{key_id}:{window}:r", rpm, 1)
    if tpm:
        limits["tokens"] = (f"tollgate:rl:{key_id}:{window}:t", tpm, tokens)
    counts, local = await _incr({key: amount for key, _, amount in limits.values()}, window)
    check = RateCheck(allowed=True, window=window, local=local)
    if "tokens" in limits:
        check.tokens_key, check.tokens_counted = limits["tokens"][0], tokens
    for (kind, (_, limit, amount)), used in zip(limits.items(), counts):
        if used > limit and check.allowed:
            check.allowed, check.exceeded, check.limit, check.used = (
                False,
                kind,
                limit,
                used - amount,
            )
    if not check.allowed:
        # A refused request does not count: give its amounts back.
        await _incr({key: -amount for key, _, amount in limits.values()}, window, local=local)
        counts = [used - amount for (_, _, amount), used in zip(limits.values(), counts)]
        check.tokens_key, check.tokens_counted = "", 0
        check.retry_after = math.ceil(reset_in)
        check.headers["Retry-After"] = str(check.retry_after)
    for (kind, (_, limit, _)), used in zip(limits.items(), counts):
        check.headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        check.headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - used))
        check.headers[f"x-ratelimit-reset-{kind}"] = _duration(reset_in)
    return check


async def ratelimit_settle(check: RateCheck | None, *, tokens: int) -> None:
    """Count what an admitted call really used instead of what it was admitted at: unused
    tokens go back, and an upstream's overproduction is charged to the window."""
    if check is None or not check.tokens_key or tokens == check.tokens_counted:
        return
    delta, check.tokens_counted = tokens - check.tokens_counted, tokens
    # Where it was counted (Redis down meanwhile: this process's memory takes it).
    await _incr({check.tokens_key: delta}, check.window, local=check.local)
