"""Dependencies going down under a running portal, each a real server the test starts and
stops: PostgreSQL (its own throwaway cluster), Redis and the broker.

- PostgreSQL down: /v1 answers 503 in OpenAI's shape within 2 s, /api 503 in DRF's, /readyz
  names the database; nothing is half-written; service resumes by itself when it returns.
- Redis down: calls are served, rate limits hold per process, the log warns once a minute
  rather than once a call; shared counting resumes when it returns.
- The broker down: calls that cross a budget threshold are served without waiting on it;
  the alert is not lost: it is sent once the broker is back and the scheduled check runs.
"""

import os
import re
import socket
import subprocess
import sys
import time

import httpx2
import psycopg
import pytest
from django.conf import settings

from tests.conftest import ROOT

pytestmark = pytest.mark.faults

CALL = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def other_redis_db(url: str, offset: int) -> str:
    return re.sub(r"/(\d+)$", lambda m: f"/{(int(m.group(1)) + offset) % 16}", url)


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


def manage(env, *args) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def portal_on_own_postgres(own_postgres, tmp_path):
    """A portal process on the throwaway cluster, with a team, an inference key and a
    management key; the offline provider answers the calls."""
    redis_url = other_redis_db(settings.REDIS_URL, 2)
    env = {
        **os.environ,
        "DATABASE_URL": own_postgres.url("tollgate"),
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": "",
        "PROMETHEUS_MULTIPROC_DIR": "",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    manage(env, "migrate", "--no-input", "-v0")
    manage(env, "loadcatalog", "catalog/default.toml", "catalog/offline.toml")
    manage(env, "createteam", "acme", "--name", "Acme")
    inference = manage(env, "issuekey", "acme", "--name", "app").strip().splitlines()[-1]
    management = (
        manage(env, "issuekey", "acme", "--name", "ops", "--management").strip().splitlines()[-1]
    )
    port = free_port()
    log = (tmp_path / "portal.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "portal.asgi:application", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx2.TransportError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, "the portal did not start"
        time.sleep(0.2)
    yield url, inference, management
    process.terminate()
    process.wait(timeout=15)


def chat(url, secret):
    return httpx2.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json=CALL,
        timeout=30,
    )


def ledger_rows(server) -> tuple[int, int]:
    with psycopg.connect(server.url("tollgate"), autocommit=True) as conn:
        rows = conn.execute("SELECT count(*) FROM usage_usagerecord").fetchone()[0]
        open_calls = conn.execute(
            "SELECT count(*) FROM usage_meteredcall WHERE closed_at IS NULL"
        ).fetchone()[0]
    return rows, open_calls


def test_postgresql_down_is_a_quick_503_and_service_resumes_by_itself(
    own_postgres, portal_on_own_postgres
):
    url, inference, management = portal_on_own_postgres
    assert chat(url, inference).status_code == 200

    own_postgres.stop()
    started = time.monotonic()
    refused = chat(url, inference)
    assert time.monotonic() - started < 2
    assert refused.status_code == 503, refused.text
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    assert refused.json()["error"]["code"] == "database_unavailable"
    api = httpx2.get(
        f"{url}/api/teams/acme/", headers={"Authorization": f"Bearer {management}"}, timeout=10
    )
    assert api.status_code == 503 and "detail" in api.json(), api.text
    ready = httpx2.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 503 and "database" in ready.json()["failing"]

    own_postgres.start(port=own_postgres.port)
    deadline = time.monotonic() + 20
    while (answer := chat(url, inference)).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.5)
    while (ready := httpx2.get(f"{url}/readyz", timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, ready.text  # a probe's answer serves for 1 s
        time.sleep(0.5)
    # The call refused while the database was away left nothing behind.
    assert ledger_rows(own_postgres) == (2, 0)


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


def start_portal(env, log_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "portal.asgi:application", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx2.TransportError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
        time.sleep(0.2)


def fresh_minute():
    """Wait, if need be, so the next few seconds fall in one rate-limit window."""
    into = time.time() % 60
    if into > 45:
        time.sleep(60 - into + 0.5)


def test_redis_down_calls_are_served_limits_hold_per_process_one_warning_a_minute(
    own_postgres, own_redis, tmp_path
):
    env = {
        **os.environ,
        "DATABASE_URL": own_postgres.url("tollgate"),
        "REDIS_URL": own_redis.url(),
        "CELERY_BROKER_URL": "",
        "DEBUG": "false",
        "SECRET_KEY": "faults-" + "s3cr3t-" * 8,
        "TOLLGATE_PLAIN_HTTP": "1",
        "LOG_FORMAT": "json",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    manage(env, "migrate", "--no-input", "-v0")
    manage(env, "loadcatalog", "catalog/default.toml", "catalog/offline.toml")
    manage(env, "createteam", "acme", "--name", "Acme")
    limited = (
        manage(env, "issuekey", "acme", "--name", "app", "--rpm", "3").strip().splitlines()[-1]
    )
    log = tmp_path / "portal.log"
    process, url = start_portal(env, log)
    try:
        fresh_minute()
        assert [chat(url, limited).status_code for _ in range(4)] == [200, 200, 200, 429]

        own_redis.stop()
        fresh_minute()
        statuses = [chat(url, limited).status_code for _ in range(20)]
        # Still served, and still limited: this process counts the window by itself.
        assert statuses[:3] == [200, 200, 200] and set(statuses[3:]) == {429}, statuses

        own_redis.start(port=own_redis.port)
        deadline = time.monotonic() + 20
        fresh_minute()
        while (answer := chat(url, limited)).status_code not in (200, 429):
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=15)
    lines = [line for line in log.read_text().splitlines() if "Redis" in line or "redis" in line]
    warnings = [
        line for line in lines if '"level": "WARNING"' in line or '"level": "ERROR"' in line
    ]
    # 20 calls while Redis was away: a warning or two (rate limits, the cache), not 20+.
    assert 1 <= len(warnings) <= 4, "\n".join(warnings)


def test_broker_down_calls_do_not_wait_and_the_alert_is_sent_when_it_returns(
    own_postgres, own_redis, tmp_path
):
    env = {
        **os.environ,
        "DATABASE_URL": own_postgres.url("tollgate"),
        "REDIS_URL": other_redis_db(settings.REDIS_URL, 3),
        "CELERY_BROKER_URL": own_redis.url(),
        "CELERY_RESULT_BACKEND": "",
        "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
        "LOG_FORMAT": "json",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    manage(env, "migrate", "--no-input", "-v0")
    manage(env, "loadcatalog", "catalog/default.toml", "catalog/offline.toml")
    manage(env, "createteam", "acme", "--name", "Acme", "--owner", "owner@acme.test")
    manage(env, "setbudget", "acme", "0.000001", "--soft")
    secret = manage(env, "issuekey", "acme", "--name", "app").strip().splitlines()[-1]
    log = tmp_path / "portal.log"
    own_redis.stop()
    process, url = start_portal(env, log)
    try:
        timings = []
        for _ in range(5):
            started = time.monotonic()
            assert chat(url, secret).status_code == 200
            timings.append(time.monotonic() - started)
        assert max(timings) < 3, timings
    finally:
        process.terminate()
        process.wait(timeout=15)
    warnings = [line for line in log.read_text().splitlines() if "broker" in line]
    assert 1 <= len(warnings) <= 2, "\n".join(warnings)

    # The broker is back: the scheduled safety net (run here by hand, as beat would) finds
    # the threshold crossed and a worker sends the alert.
    own_redis.start(port=own_redis.port)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "portal", "--quiet", "worker", "--pool", "solo"],
        cwd=ROOT,
        env=env,
        stdout=(tmp_path / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        manage(
            env,
            "shell",
            "-c",
            "from usage.tasks import budget_alerts_check_all; budget_alerts_check_all.delay()",
        )
        deadline = time.monotonic() + 60
        while True:
            with psycopg.connect(own_postgres.url("tollgate"), autocommit=True) as conn:
                sent = conn.execute(
                    "SELECT count(*) FROM usage_alertdelivery WHERE status = 'sent'"
                ).fetchone()[0]
            if sent:
                break
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
