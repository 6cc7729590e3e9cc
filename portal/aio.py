"""PostgreSQL and Redis for the /v1 hot path, native async: no thread hops.

Django's ORM is synchronous; under ASGI every query it makes costs two thread hops
and a connection from a pool shared with threads. The proxy's few statements on a
call's path (the reservation, the ledger write, a key read on a cache miss) run here
instead, on psycopg's async connection pool and redis-py's asyncio client, awaited
on the event loop that serves the request. Everything else (pages, /api, Celery)
keeps the ORM.

Both belong to the event loop they were made on (one per process under uvicorn; the
tests' live portal has its own), so each loop gets its own, made on first use from
settings.DATABASES["default"] and settings.REDIS_URL.

Errors keep the ORM's types: a connection that fails (refused, reset, the pool empty
past DB_POOL_TIMEOUT_S) raises django.db.OperationalError, so the 503 handling and the
retries written for the ORM apply unchanged.
"""

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg
import redis.asyncio
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError
from psycopg_pool import AsyncConnectionPool, PoolTimeout

logger = logging.getLogger(__name__)

_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool]" = (
    weakref.WeakKeyDictionary()
)
_redis: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis]" = (
    weakref.WeakKeyDictionary()
)


def _connect_kwargs() -> dict[str, Any]:
    db = settings.DATABASES["default"]
    options = {k: v for k, v in db.get("OPTIONS", {}).items() if k not in ("pool",)}
    kwargs: dict[str, Any] = {"dbname": db["NAME"], **options, "autocommit": True}
    for name, key in (("user", "USER"), ("password", "PASSWORD"), ("host", "HOST")):
        if db.get(key):
            kwargs[name] = db[key]
    if db.get("PORT"):
        kwargs["port"] = db["PORT"]
    return kwargs


async def _configure(conn: psycopg.AsyncConnection) -> None:
    # As Django's connections: times in UTC.
    await conn.execute("SET TIME ZONE 'UTC'")


def _pool() -> AsyncConnectionPool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        options = settings.DATABASES["default"].get("OPTIONS", {}).get("pool", {})
        pool = AsyncConnectionPool(
            kwargs=_connect_kwargs(),
            configure=_configure,
            min_size=1,
            max_size=settings.TOLLGATE_ASYNC_DB_POOL_MAX,
            timeout=options.get("timeout", 1.5),
            open=False,
            name="tollgate-hot-path",
        )
        _pools[loop] = pool
    return pool


# The event loops that serve requests for the life of the process (uvicorn's, registered at
# lifespan startup): they get the pool. Any other loop (asgiref's async_to_sync makes one
# per call from synchronous code) gets a connection of its own per statement, so nothing
# of it outlives the loop; a pool's background tasks would hold that loop's end forever.
_serving: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()


def serve_here() -> None:
    """Mark the running loop as one that serves for the life of the process."""
    _serving.add(asyncio.get_running_loop())


async def fetch(
    sql: str,
    params: Sequence[Any] = (),
    *,
    wait_s: float | None = None,
    tenant: int | None = None,
) -> list[tuple]:
    """Run one statement (autocommit: atomic on its own) and return its rows, if any.
    `wait_s`: how long to wait for a free connection (default DB_POOL_TIMEOUT_S). A
    `tenant`'s statements hold at most half the pool at once, so one team whose rows are
    locked (its budget counter held by a long transaction) cannot take every connection
    and stop the other teams' calls."""
    try:
        if asyncio.get_running_loop() not in _serving:
            conn = await psycopg.AsyncConnection.connect(**_connect_kwargs())
            async with conn:
                await _configure(conn)
                return await _run(conn, sql, params)
        pool = _pool()
        if pool.closed:
            await pool.open(wait=False)
        async with _tenant_share(tenant, pool.timeout if wait_s is None else wait_s):
            async with pool.connection(timeout=wait_s) as conn:
                return await _run(conn, sql, params)
    except psycopg.errors.IntegrityError as exc:
        raise IntegrityError(*exc.args) from exc
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise OperationalError(*exc.args) from exc
    except psycopg.InterfaceError as exc:
        raise InterfaceError(*exc.args) from exc


# Per loop, each tenant's share of the pool: {tenant: [semaphore, statements waiting or running]}.
_shares: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def _tenant_share(tenant: int | None, wait_s: float):
    if tenant is None:
        yield
        return
    shares = _shares.setdefault(asyncio.get_running_loop(), {})
    share = shares.get(tenant)
    if share is None:
        limit = max(1, settings.TOLLGATE_ASYNC_DB_POOL_MAX // 2)
        share = shares[tenant] = [asyncio.Semaphore(limit), 0]
    share[1] += 1
    try:
        try:
            await asyncio.wait_for(share[0].acquire(), wait_s)
        except TimeoutError:
            raise PoolTimeout(
                f"this team's statements hold their share of the pool for over {wait_s:g} s"
            ) from None
        try:
            yield
        finally:
            share[0].release()
    finally:
        share[1] -= 1
        if not share[1]:
            shares.pop(tenant, None)


async def _run(conn: psycopg.AsyncConnection, sql: str, params: Sequence[Any]) -> list[tuple]:
    async with conn.cursor() as cursor:
        await cursor.execute(sql, params)
        return await cursor.fetchall() if cursor.description else []


async def close_pools() -> None:
    """At shutdown: close this loop's connections."""
    loop = asyncio.get_running_loop()
    pool = _pools.pop(loop, None)
    if pool is not None:
        await pool.close()
    client = _redis.pop(loop, None)
    if client is not None:
        await client.aclose()


# After a Redis command fails, the hot path does without Redis for this long (per-process
# limits, keys from the database) instead of waiting on a Redis that may be frozen.
REDIS_BACKOFF_S = 5.0
_redis_down_until = 0.0


def redis_failed(exc: BaseException) -> None:
    """A Redis command failed: if Redis could not be reached or did not answer in time, skip
    it for REDIS_BACKOFF_S. An error Redis answered with (a command it refused) says Redis
    is up, and must not send every process's limits to per-process counts."""
    global _redis_down_until
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        _redis_down_until = time.monotonic() + REDIS_BACKOFF_S


def redis_client() -> redis.asyncio.Redis | None:
    """This loop's Redis client, or None without REDIS_URL or for REDIS_BACKOFF_S after a
    command failed. Its pool waits (up to TOLLGATE_REDIS_TIMEOUT_S) for a free connection
    rather than failing when all are busy."""
    if not settings.REDIS_URL or time.monotonic() < _redis_down_until:
        return None
    loop = asyncio.get_running_loop()
    client = _redis.get(loop)
    if client is None:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=settings.TOLLGATE_REDIS_POOL_MAX,
            timeout=settings.TOLLGATE_REDIS_TIMEOUT_S,
            socket_connect_timeout=1,
            socket_timeout=settings.TOLLGATE_REDIS_TIMEOUT_S,
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        _redis[loop] = client
    return client
