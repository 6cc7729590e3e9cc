"""The production process set, as `make prod` runs it (the Procfile under honcho: web ×2,
the Celery worker, events and beat), against the test's PostgreSQL and Redis: calls go
through it, land in the ledger once each, background tasks run on the workers (an alert, the
usage events), /metrics sums what every process of the set counted, and every line the set
logs is JSON."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import openai
import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from accounts.services import api_key_create, usage_webhook_set
from tests.factories import spend
from usage.budgets import budget_set
from usage.models import AlertDelivery, UsageEventMark, UsageRecord

ROOT = Path(__file__).resolve().parent.parent
HONCHO = re.compile(r"^\w+\.\d+ (started|stopped|exited|terminated|sending|killing)\b")
SECRET = "smoke-" + "s3cr3t-" * 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


AMQP_URL = os.environ.get("TOLLGATE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def broker_url(kind: str) -> str:
    """The broker for the set: the test's Redis, or RabbitMQ where the machine runs one (CI's
    does; `make test` needs only Python, so a machine without it runs the Redis case only)."""
    if kind == "redis":
        # Another database of the test's Redis: the suite's own in-process Celery worker
        # (tests/test_ops.py) listens on the test's, and would take the set's tasks.
        url = re.sub(r"/(\d+)$", lambda m: f"/{(int(m.group(1)) + 1) % 16}", settings.REDIS_URL)
        redis.Redis.from_url(url).flushdb()  # no task of an earlier run
        return url
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 here (CI's machine has one)")
    return AMQP_URL


@pytest.fixture(params=["redis", "rabbitmq"])
def production_set(request, tmp_path):
    db = connection.settings_dict
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DATABASE_URL": (
            f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        ),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": broker_url(request.param),
        "DEBUG": "false",
        "SECRET_KEY": SECRET,
        "TOLLGATE_PLAIN_HTTP": "1",
        "WEB_CONCURRENCY": "2",
        "CELERY_BEAT_SCHEDULE": str(tmp_path / "beat-schedule"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "EMAIL_BACKEND": "django.core.mail.backends.dummy.EmailBackend",
        "TOLLGATE_WEBHOOK_ALLOW_PRIVATE": "1",  # the usage webhook below is on loopback
    }
    log = tmp_path / "set.log"
    process = subprocess.Popen(
        [
            "honcho",
            "start",
            "--no-prefix",
            "-f",
            "Procfile",
            "-p",
            str(port),
            "web",
            "worker",
            "events",
            "beat",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx2.get(f"{url}/login/", timeout=1).status_code == 200:
                break
        except httpx2.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            os.killpg(process.pid, signal.SIGKILL)
            raise RuntimeError(log.read_text()[-3000:])
        time.sleep(0.3)
    yield url, log
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


class UsageWebhook(BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):
        type(self).got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def usage_webhook():
    UsageWebhook.got = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), UsageWebhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/usage", UsageWebhook.got
    server.shutdown()


def wait_for(condition, what, timeout=45):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(0.2)


@pytest.mark.django_db(transaction=True)
def test_the_production_set_serves_meters_and_runs_tasks(
    settings, catalog, team, other_team, owner, production_set, usage_webhook
):
    url, log = production_set
    settings.SECRET_KEY = SECRET  # the key's hash must be the one the production set checks
    key, secret = api_key_create(team=team, name="smoke")
    # A budget the calls cross, so the worker must deliver the alert that fires.
    budget_set(team=team, amount_usd=Decimal("0.0001"), hard=False, thresholds=[50])
    # Usage events: two calls of another team (whose budget this test leaves alone) recorded
    # a while ago, for the events process to deliver.
    hook_url, events_got = usage_webhook
    now, earlier = timezone.now(), timezone.now() - timedelta(minutes=2)
    usage_webhook_set(team=other_team, url=hook_url, now=now - timedelta(minutes=10))
    their_key, _ = api_key_create(team=other_team, name="theirs")
    for n in range(2):
        spend(other_team, their_key, "0.01", earlier, f"earlier-{n}", now=earlier)

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0)
    for n in range(20):
        answer = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"hello {n}"}]
        )
        assert answer.choices[0].message.content
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "stream"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    # Refused before the meter (a wrong key): logged once, with its request id.
    refused = httpx2.post(
        f"{url}/v1/chat/completions", headers={"Authorization": "Bearer sk-wrong"}, json={}
    )
    assert refused.status_code == 401

    rows = UsageRecord.objects.filter(team=team, status="ok")
    assert rows.count() == 21 and rows.values("request_id").distinct().count() == 21
    # The alert's email delivery runs on the worker process, through the broker; the usage
    # events on the events process, from its own queue.
    wait_for(
        lambda: AlertDelivery.objects.filter(status="sent").exists(),
        lambda: list(AlertDelivery.objects.values("status", "last_error")),
    )
    wait_for(
        lambda: len(events_got) >= 2,
        lambda: (events_got, list(UsageEventMark.objects.values())),
    )
    assert [event["id"] for event in events_got[:2]] == ["earlier-0:0", "earlier-1:0"]

    # Whichever web process serves the scrape, it sums every process's counts: the calls
    # (spread over both web processes by the kernel) and the workers' tasks (counted once a
    # task has returned, a moment after its work is visible: hence the wait).
    def scrape():
        text = httpx2.get(f"{url}/metrics").text
        return [s for family in text_string_to_metric_families(text) for s in family.samples]

    def tasks_done():
        return {
            s.labels["task"]
            for s in scrape()
            if s.name == "tollgate_celery_task_calls_total" and s.labels["outcome"] == "success"
        }

    wait_for(
        lambda: {"usage.tasks.alert_deliver", "usage.tasks.usage_events_deliver"} <= tasks_done(),
        tasks_done,
        timeout=15,
    )
    calls = {"endpoint": "chat", "model": "gpt-4o", "provider": "openai", "status": "ok"}
    assert [
        s.value for s in scrape() if s.name == "tollgate_proxy_requests_total" and s.labels == calls
    ] == [21]

    # Every line the set wrote is one JSON object: the servers' own, the workers', the calls'.
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            if not HONCHO.match(line):  # the process manager's own lines
                pytest.fail(f"not a JSON log line: {line!r}")
    calls_logged = [p for p in parsed if p.get("logger") == "tollgate.calls"]
    assert len(calls_logged) == 22  # 21 served, 1 refused: one line each
    refusal = refused.headers["x-request-id"]
    assert [p["code"] for p in calls_logged if p["request_id"] == refusal] == ["invalid_api_key"]
    assert not [p for p in parsed if p.get("logger") == "django.request"]
