"""Targets that failed repeatedly sit out for a while, across all workers.

Failures are counted per model in the cache (Redis when REDIS_URL is set,
so every worker shares them; local memory otherwise). COOLDOWN_FAILURES
failures within COOLDOWN_WINDOW_S seconds put the model on cooldown for
COOLDOWN_S seconds; an upstream's Retry-After puts it on cooldown for that
long at once. Routes skip cooling models unless nothing else is left.
"""

import time

from django.conf import settings
from django.core.cache import cache


def _until_key(model: str) -> str:
    return f"cooldown:until:{model}"


def _failures_key(model: str) -> str:
    return f"cooldown:failures:{model}"


def cooling(models: list[str], *, now: float | None = None) -> set[str]:
    """The models among `models` that are cooling down (one cache read)."""
    if not models:
        return set()
    now = now if now is not None else time.time()
    until = cache.get_many([_until_key(m) for m in models])
    return {m for m in models if until.get(_until_key(m), 0) > now}


def cooldown_note_failure(
    model: str, *, retry_after: float | None = None, now: float | None = None
) -> bool:
    """Count a failure of `model`; return True if it is now cooling down."""
    now = now if now is not None else time.time()
    if retry_after and retry_after > 0:
        cache.set(_until_key(model), now + retry_after, int(retry_after) + 1)
        return True
    key = _failures_key(model)
    cache.add(key, 0, settings.TOLLGATE_COOLDOWN_WINDOW_S)
    try:
        failures = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, settings.TOLLGATE_COOLDOWN_WINDOW_S)
        failures = 1
    if failures >= settings.TOLLGATE_COOLDOWN_FAILURES:
        cache.set(
            _until_key(model), now + settings.TOLLGATE_COOLDOWN_S, settings.TOLLGATE_COOLDOWN_S + 1
        )
        cache.delete(key)
        return True
    return False
