"""Readiness: can this process serve calls? Each dependency is asked on its own short
timeout, all at once, so a dead one costs about READY_TIMEOUT_S, never a pool's wait. Probes
arriving together share one round of checks, and a round's answer serves for FRESH_S, so
a burst of probes (several load balancers, a retry storm) costs one round, not one each."""

import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import psycopg
import redis
from django.conf import settings
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from kombu import Connection

from portal.logs import warn_at_most_every

logger = logging.getLogger(__name__)

# Each check's own bound, seconds: connect, ask, answer.
CHECK_TIMEOUT_S = 1.0
# The checks' common bound: a check that overran its own is reported as failed.
READY_TIMEOUT_S = 1.5
# How long one round's answer is given to later probes, seconds.
FRESH_S = 1.0


class NotReady(Exception):
    """A dependency answered but is not ready; the message is the public reason."""


@functools.cache
def _migrations_on_disk() -> frozenset[tuple[str, str]]:
    # The code does not change under a running process: read it once.
    return frozenset(MigrationLoader(None, ignore_no_migrations=True).graph.nodes)


def database_params() -> dict:
    return connection.get_connection_params()


def database_check() -> None:
    """PostgreSQL answers on a fresh connection (not the pool, whose wait is long), and
    every migration of the code is applied."""
    params = database_params()
    with psycopg.connect(
        dbname=params.get("dbname"),
        user=params.get("user"),
        password=params.get("password"),
        host=params.get("host"),
        port=params.get("port"),
        connect_timeout=max(1, int(CHECK_TIMEOUT_S)),
        options=f"-c statement_timeout={int(CHECK_TIMEOUT_S * 1000)}",
        autocommit=True,
    ) as conn:
        try:
            applied = set(conn.execute("SELECT app, name FROM django_migrations").fetchall())
        except psycopg.errors.UndefinedTable:
            raise NotReady("no migrations applied: run `manage.py migrate`") from None
    missing = sorted(_migrations_on_disk() - applied)
    if missing:
        names = ", ".join(f"{app}.{name}" for app, name in missing[:5])
        raise NotReady(f"{len(missing)} unapplied migration(s): {names}; run `manage.py migrate`")


def redis_check() -> None:
    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=CHECK_TIMEOUT_S, socket_timeout=CHECK_TIMEOUT_S
    )
    try:
        client.ping()
    finally:
        client.close()


def broker_check() -> None:
    with Connection(
        settings.CELERY_BROKER_URL,
        connect_timeout=CHECK_TIMEOUT_S,
        transport_options={"socket_timeout": CHECK_TIMEOUT_S, "max_retries": 0},
    ) as conn:
        # One try: a retry would wait out its interval past the check's bound.
        conn.ensure_connection(max_retries=0, timeout=CHECK_TIMEOUT_S)


_round = threading.Lock()
_last: tuple[float, dict[str, str]] | None = None


def readiness() -> dict[str, str]:
    """Each configured dependency by name: "ok", or why it is not (one round shared by the
    probes that arrive while it runs, and by those within FRESH_S after)."""
    global _last
    with _round:
        if _last is not None and time.monotonic() - _last[0] < FRESH_S:
            return dict(_last[1])
        results = _check_all()
        _last = (time.monotonic(), results)
        return dict(results)


def readiness_forget() -> None:
    """Drop the last round's answer (tests that change a dependency between probes)."""
    global _last
    with _round:
        _last = None


def _check_all() -> dict[str, str]:
    checks = {"database": database_check}
    if settings.REDIS_URL:
        checks["redis"] = redis_check
    if settings.CELERY_BROKER_URL:
        checks["broker"] = broker_check
    pool = ThreadPoolExecutor(len(checks), "readyz")
    futures = {name: pool.submit(check) for name, check in checks.items()}
    wait(futures.values(), timeout=READY_TIMEOUT_S)
    # Not joined: a check stuck past its timeout must not hold the answer.
    pool.shutdown(wait=False, cancel_futures=True)
    results = {}
    for name, future in futures.items():
        if not future.done():
            results[name] = f"no answer within {READY_TIMEOUT_S:g} s"
        elif isinstance(exc := future.exception(), NotReady):
            results[name] = str(exc)
        elif exc is not None:
            # /readyz is public: the reason names the kind of failure; the log says where
            # (hosts, users, ports), for the operator.
            results[name] = f"unreachable ({type(exc).__name__})"
            warn_at_most_every(
                60, logger, f"readiness-{name}", "readiness: %s is not ready: %r", name, exc
            )
        else:
            results[name] = "ok"
    return results
