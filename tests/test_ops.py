"""/healthz and /readyz, over real HTTP to live portals."""

import socket
import time

import httpx2
import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Classify: the parcel arrived broken."}]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(url, **headers) -> dict[tuple, float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    response = httpx2.get(f"{url}/metrics", headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- /healthz and /readyz


def test_healthz_answers_while_the_process_runs(live_portal):
    response = httpx2.get(f"{live_portal.url}/healthz", headers={"Host": "10.1.2.3:8000"})

    # No session cookie, no CSRF, and any Host: a probe addresses the pod, not the site.
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "set-cookie" not in response.headers


def test_readyz_is_ready_when_database_redis_and_broker_answer(live_portal):
    response = httpx2.get(f"{live_portal.url}/readyz", timeout=5)

    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "broker": "ok"}
    assert response.json()["failing"] == []


def test_readyz_names_a_dead_redis_and_broker_quickly(live_portal, settings):
    dead = f"redis://127.0.0.1:{closed_port()}/0"
    settings.REDIS_URL = dead
    settings.CELERY_BROKER_URL = dead

    started = time.monotonic()
    response = httpx2.get(f"{live_portal.url}/readyz", timeout=10)

    assert time.monotonic() - started < 2.5
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker", "redis"]
    assert body["checks"]["database"] == "ok"
    assert "Error" in body["checks"]["redis"]


def test_readyz_names_the_database_while_a_migration_is_unapplied(live_portal):
    app, name = max(key for key in MigrationLoader(None).graph.leaf_nodes() if key[0] == "usage")
    recorder = MigrationRecorder(connection)
    recorder.record_unapplied(app, name)
    try:
        response = httpx2.get(f"{live_portal.url}/readyz", timeout=5)
    finally:
        recorder.record_applied(app, name)

    assert response.status_code == 503
    assert response.json()["failing"] == ["database"]
    assert f"1 unapplied migration(s): {app}.{name}" in response.json()["checks"]["database"]
    assert httpx2.get(f"{live_portal.url}/readyz", timeout=5).status_code == 200
