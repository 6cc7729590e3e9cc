"""Targets that failed repeatedly sit out for a while, across all workers.

Failures are counted per model in Redis when REDIS_URL is set (on the event loop,
portal.aio), so every worker shares them; in process memory otherwise, and while
Redis does not answer. COOLDOWN_FAILURES failures within COOLDOWN_WINDOW_S seconds
put the model on cooldown for COOLDOWN_S seconds; an upstream's Retry-After puts it
on cooldown for that long at once. Routes skip cooling models unless nothing else
is left.
"""

import logging
import math
import time

from django.conf import settings

from portal import aio
from portal.logs import warn_at_most_every

logger = logging.getLogger(__name__)


def _until_key(model: str) -> str:
    return f"tollgate:cooldown:until:{model}"


def _failures_key(model: str) -> str:
    return f"tollgate:cooldown:failures:{model}"


class _MemoryCooldowns:
    """This process's cooldowns, without Redis: {model: until}, {model: (failures, since)}."""

    def __init__(self):
        self.until: dict[str, float] = {}
        self.failures: dict[str, tuple[int, float]] = {}

    def note(self, model: str, now: float) -> int:
        count, since = self.failures.get(model, (0, now))
        if now - since >= settings.TOLLGATE_COOLDOWN_WINDOW_S:
            count, since = 0, now
        self.failures[model] = (count + 1, since)
        return count + 1


_memory = _MemoryCooldowns()


def _redis_failed(exc: Exception) -> None:
    aio.redis_failed(exc)
    warn_at_most_every(
        60, logger, "cooldowns-redis", "cooldowns are kept per process while Redis fails: %s", exc
    )


async def cooling(models: list[str], *, now: float | None = None) -> set[str]:
    """The models among `models` that are cooling down (one Redis read)."""
    if not models:
        return set()
    now = now if now is not None else time.time()
    client = aio.redis_client()
    until: list = [_memory.until.get(m) for m in models]
    if client is not None:
        try:
            until = await client.mget([_until_key(m) for m in models])
        except Exception as exc:
            _redis_failed(exc)
    return {m for m, u in zip(models, until) if u is not None and float(u) > now}


async def cooldown_note_failure(
    model: str, *, retry_after: float | None = None, now: float | None = None
) -> bool:
    """Count a failure of `model`; return True if it is now cooling down."""
    now = now if now is not None else time.time()
    client = aio.redis_client()
    if retry_after and retry_after > 0:
        return await _cool(client, model, now + retry_after, retry_after)
    failures = None
    if client is not None:
        try:
            # The window starts with the first failure (SET NX EX: Redis 6 has no EXPIRE NX).
            pipe = client.pipeline(transaction=False)
            pipe.set(_failures_key(model), 0, ex=settings.TOLLGATE_COOLDOWN_WINDOW_S, nx=True)
            pipe.incr(_failures_key(model))
            _, failures = await pipe.execute()
        except Exception as exc:
            _redis_failed(exc)
    if failures is None:
        failures = _memory.note(model, now)
    if failures >= settings.TOLLGATE_COOLDOWN_FAILURES:
        return await _cool(client, model, now + settings.TOLLGATE_COOLDOWN_S, None)
    return False


async def _cool(client, model: str, until: float, seconds: float | None) -> bool:
    seconds = seconds if seconds is not None else settings.TOLLGATE_COOLDOWN_S
    _memory.until[model] = until
    _memory.failures.pop(model, None)
    if client is not None:
        try:
            pipe = client.pipeline(transaction=False)
            pipe.set(_until_key(model), repr(until), ex=math.ceil(seconds) + 1)
            pipe.delete(_failures_key(model))
            await pipe.execute()
        except Exception as exc:
            _redis_failed(exc)
    return True
