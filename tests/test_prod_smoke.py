"""The production process set, as `make prod` runs it (the Procfile under honcho: web ×2,
a Celery worker and beat), against the test's PostgreSQL and Redis: calls go through it,
land in the ledger once each, a background task runs on the worker, and /metrics sums
what every process of the set counted."""

import os
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx2
import openai
import pytest
from django.conf import settings
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from accounts.services import api_key_create
from usage.budgets import budget_set
from usage.models import AlertDelivery, UsageRecord

ROOT = Path(__file__).resolve().parent.parent
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
        return settings.REDIS_URL
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
    }
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
            "beat",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
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
            raise RuntimeError(process.stdout.read().decode()[-3000:])
        time.sleep(0.3)
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.django_db(transaction=True)
def test_the_production_set_serves_meters_and_runs_tasks(
    settings, catalog, team, owner, production_set
):
    settings.SECRET_KEY = SECRET  # the key's hash must be the one the production set checks
    key, secret = api_key_create(team=team, name="smoke")
    # A budget the calls cross, so the worker must deliver the alert that fires.
    budget_set(team=team, amount_usd=Decimal("0.0001"), hard=False, thresholds=[50])
    client = openai.OpenAI(base_url=f"{production_set}/v1", api_key=secret, max_retries=0)
    for n in range(20):
        answer = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"hello {n}"}]
        )
        assert answer.choices[0].message.content
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "stream"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    rows = UsageRecord.objects.filter(team=team, status="ok")
    assert rows.count() == 21 and rows.values("request_id").distinct().count() == 21
    # The alert's email delivery runs on the worker process, through the broker.
    deadline = time.monotonic() + 30
    while not AlertDelivery.objects.filter(status="sent").exists():
        assert time.monotonic() < deadline, list(
            AlertDelivery.objects.values("status", "last_error")
        )
        time.sleep(0.2)

    # Whichever web process serves the scrape, it sums every process's counts: the calls
    # (spread over both web processes by the kernel) and the worker's tasks.
    samples = [
        sample
        for family in text_string_to_metric_families(httpx2.get(f"{production_set}/metrics").text)
        for sample in family.samples
    ]
    calls = {"endpoint": "chat", "model": "gpt-4o", "provider": "openai", "status": "ok"}
    assert [
        s.value for s in samples if s.name == "tollgate_proxy_requests_total" and s.labels == calls
    ] == [21]
    assert any(
        s.name == "tollgate_celery_task_calls_total"
        and s.labels["outcome"] == "success"
        and s.value >= 1
        for s in samples
    )
