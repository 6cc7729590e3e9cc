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
import subprocess
import sys
import time

import httpx2
import psycopg
import pytest
from django.conf import settings

from tests.processes import ROOT, manage, start_portal, stop

pytestmark = pytest.mark.faults

CALL = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


def other_redis_db(url: str, offset: int) -> str:
    return re.sub(r"/(\d+)$", lambda m: f"/{(int(m.group(1)) + offset) % 16}", url)


def ok(env, *args) -> str:
    """A manage.py command that must succeed; its output."""
    done = manage(*args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def issued(env, *args) -> str:
    """The secret `issuekey acme …` printed (alone, on its last line)."""
    return ok(env, "issuekey", "acme", *args).strip().splitlines()[-1]


def gateway_on(server, database="tollgate", owner=None, **settings_env) -> dict:
    """The environment of a gateway on a database of the throwaway cluster, migrated, with
    the offline catalog and team acme (`owner` its owner's email, if given)."""
    env = {**os.environ, "DATABASE_URL": server.url(database), **settings_env}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    ok(env, "migrate", "--no-input", "-v0")
    ok(env, "loadcatalog", "catalog/default.toml", "catalog/offline.toml")
    ok(env, "createteam", "acme", "--name", "Acme", *(["--owner", owner] if owner else []))
    return env


@pytest.fixture
def portal_on_own_postgres(own_postgres, tmp_path):
    """A portal process on the throwaway cluster, with an inference key and a management
    key of team acme; the offline provider answers the calls."""
    env = gateway_on(
        own_postgres, REDIS_URL=other_redis_db(settings.REDIS_URL, 2), CELERY_BROKER_URL=""
    )
    inference, management = (
        issued(env, "--name", "app"),
        issued(env, "--name", "ops", "--management"),
    )
    process, url = start_portal(env, log=tmp_path / "portal.log")
    yield url, inference, management
    stop(process)


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


def fresh_minute():
    """Wait, if need be, so the next few seconds fall in one rate-limit window."""
    into = time.time() % 60
    if into > 45:
        time.sleep(60 - into + 0.5)


def test_redis_down_calls_are_served_limits_hold_per_process_one_warning_a_minute(
    own_postgres, own_redis, tmp_path
):
    env = gateway_on(
        own_postgres,
        REDIS_URL=own_redis.url(),
        CELERY_BROKER_URL="",
        DEBUG="false",
        SECRET_KEY="faults-" + "s3cr3t-" * 8,
        TOLLGATE_PLAIN_HTTP="1",
        LOG_FORMAT="json",
    )
    limited = issued(env, "--name", "app", "--rpm", "3")
    log = tmp_path / "portal.log"
    process, url = start_portal(env, log=log)
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
        stop(process)
    lines = [line for line in log.read_text().splitlines() if "Redis" in line or "redis" in line]
    warnings = [
        line for line in lines if '"level": "WARNING"' in line or '"level": "ERROR"' in line
    ]
    # 20 calls while Redis was away: a warning or two (rate limits, the cache), not 20+.
    assert 1 <= len(warnings) <= 4, "\n".join(warnings)


def test_broker_down_calls_do_not_wait_and_the_alert_is_sent_when_it_returns(
    own_postgres, own_redis, tmp_path
):
    env = gateway_on(
        own_postgres,
        owner="owner@acme.test",
        REDIS_URL=other_redis_db(settings.REDIS_URL, 3),
        CELERY_BROKER_URL=own_redis.url(),
        CELERY_RESULT_BACKEND="",
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        LOG_FORMAT="json",
    )
    ok(env, "setbudget", "acme", "0.000001", "--soft")
    secret = issued(env, "--name", "app")
    log = tmp_path / "portal.log"
    own_redis.stop()
    process, url = start_portal(env, log=log)
    try:
        timings = []
        for _ in range(5):
            started = time.monotonic()
            assert chat(url, secret).status_code == 200
            timings.append(time.monotonic() - started)
        assert max(timings) < 3, timings
    finally:
        stop(process)
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
        ok(
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
