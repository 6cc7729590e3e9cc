"""Shared fixtures: required services, the fake upstream, a live portal, the standing cast."""

import os
import socket
import threading
import time
from pathlib import Path

import openai
import pytest
import redis
import uvicorn
from django.conf import settings
from django.core.cache import cache

from accounts.models import ApiKey, Membership
from accounts.services import api_key_create
from routing.selectors import catalog_changed
from routing.services import catalog_load, catalog_load_data
from tests.factories import MembershipFactory, TeamFactory, UserFactory
from tests.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("FAKE_UPSTREAM_KEY", "sk-fake-upstream-secret")


@pytest.fixture(scope="session", autouse=True)
def _required_services():
    """PostgreSQL and Redis are part of the system under test: missing ones fail the run."""
    engine = settings.DATABASES["default"]["ENGINE"]
    if engine != "django.db.backends.postgresql":
        pytest.exit(f"The test suite needs PostgreSQL (DATABASE_URL); got {engine}.", returncode=3)
    if not settings.REDIS_URL:
        pytest.exit("The test suite needs Redis (REDIS_URL).", returncode=3)
    try:
        redis.Redis.from_url(settings.REDIS_URL).flushdb()
    except redis.RedisError as exc:
        pytest.exit(f"Redis at {settings.REDIS_URL} is not reachable: {exc}", returncode=3)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """The test database may empty its audit log between tests (its TRUNCATE is refused
    elsewhere: accounts migration 0008); connections made from now on carry the setting."""
    from django.db import connection

    with django_db_blocker.unblock():
        with connection.cursor() as cursor:
            name = connection.settings_dict["NAME"]
            cursor.execute(f"ALTER DATABASE \"{name}\" SET tollgate.audit_reset = 'allowed'")
        connection.close()
        connection.close_pool()
    yield
    # Connections the hot path's pools (portal.aio) left open on event loops that ended
    # with their test: closed here, so the test database can be dropped.
    with django_db_blocker.unblock():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        connection.close()
        connection.close_pool()


@pytest.fixture(scope="session", autouse=True)
def _no_background_sweeps():
    # Tests sweep explicitly, with the clock they choose; the portals they start
    # in this process must not sweep behind their back.
    settings.TOLLGATE_WEB_SWEEPS = False


@pytest.fixture(autouse=True)
def _no_keys_remembered_from_another_test():
    """Each process remembers the keys it met for 2 s (accounts.services); a test starts
    with none, as a fresh process would."""
    from accounts import services

    services._local_principals.clear()
    yield
    services._local_principals.clear()


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings):
    # The standing cast signs in with passwords; the default hasher is slow by design.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.clear()
    yield


@pytest.fixture(scope="session")
def fake_upstream():
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(fake_upstream):
    fake_upstream.reset()
    yield fake_upstream
    fake_upstream.reset()


class LivePortal:
    """The portal's ASGI app served by uvicorn in a thread, as in production."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        # As `make run` serves: a client's X-Forwarded-For is not its address.
        config = uvicorn.Config(
            "portal.asgi:application", log_level="warning", lifespan="on", proxy_headers=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live portal did not start")
            time.sleep(0.02)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_portal(django_db_setup):
    portal = LivePortal().start()
    yield portal
    portal.stop()


@pytest.fixture(scope="session")
def second_portal(django_db_setup, live_portal):
    """Another portal in its own OS process, on the same test database and Redis."""
    from tests.processes import database_url_of_tests, start_portal, stop

    env = {**os.environ, "DATABASE_URL": database_url_of_tests(), "REDIS_URL": settings.REDIS_URL}
    process, url = start_portal(env, "--log-level", "warning")
    yield url
    stop(process)


@pytest.fixture(scope="session")
def celery_worker(django_db_setup):
    """A real Celery worker on the Redis broker, in a thread of the test process."""
    from celery.contrib.testing.worker import start_worker

    from portal.celery import app

    with start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING"
    ) as worker:
        yield worker


@pytest.fixture
def catalog(upstream):
    """The default catalog, its providers pointed at the fake upstream."""
    catalog_load(path=ROOT / "catalog" / "default.toml")
    catalog_load_data(
        data={
            "provider": [
                {
                    "name": name,
                    "base_url": upstream.url,
                    "api_key_env": "FAKE_UPSTREAM_KEY",
                    "timeout_s": 5,
                }
                for name in ("openai", "anthropic", "google", "global")
            ]
        }
    )
    # On-commit hooks do not run inside a test's transaction: drop this process's snapshot.
    catalog_changed()


# --- The standing cast: an owner, admin, billing member and member of one team, an outsider
# (owner of another team), and anonymous (the test client signed in as nobody).


@pytest.fixture
def team(db):
    return TeamFactory(slug="acme", name="Acme")


@pytest.fixture
def owner(team):
    return MembershipFactory(
        team=team, role=Membership.Role.OWNER, user=UserFactory(username="owner@acme.test")
    ).user


@pytest.fixture
def admin(team):
    return MembershipFactory(
        team=team, role=Membership.Role.ADMIN, user=UserFactory(username="admin@acme.test")
    ).user


@pytest.fixture
def billing(team):
    return MembershipFactory(
        team=team, role=Membership.Role.BILLING, user=UserFactory(username="billing@acme.test")
    ).user


@pytest.fixture
def member(team):
    return MembershipFactory(
        team=team, role=Membership.Role.MEMBER, user=UserFactory(username="member@acme.test")
    ).user


@pytest.fixture
def other_team(db):
    return TeamFactory(slug="globex", name="Globex")


@pytest.fixture
def outsider(other_team):
    return MembershipFactory(
        team=other_team, role=Membership.Role.OWNER, user=UserFactory(username="owner@globex.test")
    ).user


@pytest.fixture
def inference_key(team):
    """(ApiKey, secret) of an inference key of the team."""
    return api_key_create(team=team, name="app")


@pytest.fixture
def management_key(team):
    return api_key_create(team=team, name="ops", kind=ApiKey.Kind.MANAGEMENT)


@pytest.fixture
def sdk(live_portal):
    """Make an official sync openai client for a key, pointed at the live portal."""

    def make(secret, **kwargs):
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=f"{live_portal.url}/v1", api_key=secret, **kwargs)

    return make


@pytest.fixture
def async_sdk(live_portal):
    def make(secret, **kwargs):
        kwargs.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(base_url=f"{live_portal.url}/v1", api_key=secret, **kwargs)

    return make


# --- Servers of a test's own, to stop and start at will (tests/test_dependencies_down.py)


@pytest.fixture
def own_postgres():
    """A PostgreSQL cluster of the test's own (devservices' embedded one), to stop at will."""
    import shutil

    from devservices import STATE_DIR, EmbeddedPostgres

    workdir = STATE_DIR / f"faults-{os.getpid()}"
    server = EmbeddedPostgres(workdir / "pgdata", durable=False)
    server.start()
    try:
        server.create_database("tollgate")
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def own_redis():
    import shutil

    from devservices import STATE_DIR, EmbeddedRedis

    workdir = STATE_DIR / f"faults-redis-{os.getpid()}"
    server = EmbeddedRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
