"""/healthz, /readyz and /metrics, over real HTTP to live portals."""

import os
import socket
import time

import httpx2
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from prometheus_client.parser import text_string_to_metric_families

from ops.health import readiness_forget
from tests.fake_upstream import Fail
from tests.processes import database_url_of_tests, start_portal, stop
from tests.test_routing import set_route
from usage.models import UsageRecord
from usage.tasks import budget_alerts_check, inflight_sweep

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


@pytest.fixture(autouse=True)
def fresh_readiness():
    """Each test probes its own dependencies, not the answer a previous test left."""
    from ops.health import readiness_forget

    readiness_forget()
    yield
    readiness_forget()


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

    assert time.monotonic() - started < 2
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker", "redis"]
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] == "unreachable (ConnectionError)"
    assert body["checks"]["broker"].startswith("unreachable")
    assert "127.0.0.1" not in response.text  # where the services live is not public


def test_readyz_names_the_database_while_a_migration_is_unapplied(live_portal):
    app, name = max(key for key in MigrationLoader(None).graph.leaf_nodes() if key[0] == "usage")
    recorder = MigrationRecorder(connection)
    recorder.record_unapplied(app, name)
    try:
        response = httpx2.get(f"{live_portal.url}/readyz", timeout=5)
    finally:
        recorder.record_applied(app, name)
        readiness_forget()

    assert response.status_code == 503
    assert response.json()["failing"] == ["database"]
    assert (
        f"1 unapplied migration(s): {app}.{name}; run `manage.py migrate`"
        in (response.json()["checks"]["database"])
    )
    assert httpx2.get(f"{live_portal.url}/readyz", timeout=5).status_code == 200


# --- /metrics


def test_metrics_count_calls_tokens_spend_and_latency_by_model(
    catalog, inference_key, sdk, team, live_portal
):
    _, secret = inference_key
    labels = {"endpoint": "chat", "model": "deepseek-v4-flash", "provider": "global"}
    before = scrape(live_portal.url)

    for _ in range(3):
        sdk(secret).chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES)
    stream = sdk(secret).chat.completions.create(
        model="deepseek-v4-flash", messages=MESSAGES, stream=True
    )
    list(stream)
    after = scrape(live_portal.url)

    def delta(name, **extra):
        return sample(after, name, **labels, **extra) - sample(before, name, **labels, **extra)

    assert delta("tollgate_proxy_requests_total", status="ok") == 4
    assert delta("tollgate_proxy_request_duration_seconds_count", status="ok") == 4
    assert delta("tollgate_proxy_request_duration_seconds_bucket", status="ok", le="+Inf") == 4
    assert delta("tollgate_proxy_time_to_first_token_seconds_count") == 1
    billed = UsageRecord.objects.filter(team=team)
    assert delta("tollgate_tokens_total", kind="prompt") == sum(r.prompt_tokens for r in billed)
    assert delta("tollgate_tokens_total", kind="completion") == sum(
        r.completion_tokens for r in billed
    )
    assert delta("tollgate_spend_usd_total") == pytest.approx(
        float(sum(r.cost_usd for r in billed))
    )
    assert delta("tollgate_proxy_request_duration_seconds_sum", status="ok") > 0
    assert (
        sample(after, "tollgate_ledger_write_seconds_count")
        >= sample(before, "tollgate_ledger_write_seconds_count") + 4
    )
    # Every call opened was recorded (other tests may leave meters of their own open).
    assert sample(after, "tollgate_calls_in_flight") == sample(before, "tollgate_calls_in_flight")


def test_metrics_count_upstream_errors_and_fallbacks(
    catalog, inference_key, sdk, upstream, live_portal
):
    set_route("metered-fallback", targets=["deepseek-v4-flash", "qwen3-32b"])
    upstream.script("deepseek-v4-flash", Fail(503))
    _, secret = inference_key
    before = scrape(live_portal.url)

    sdk(secret).chat.completions.create(model="metered-fallback", messages=MESSAGES)
    after = scrape(live_portal.url)

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    flash = {"endpoint": "chat", "model": "deepseek-v4-flash", "provider": "global"}
    qwen = {"endpoint": "chat", "model": "qwen3-32b", "provider": "global"}
    assert delta("tollgate_upstream_errors_total", **flash, status="upstream_error") == 1
    assert delta("tollgate_upstream_fallbacks_total", **qwen) == 1
    assert delta("tollgate_proxy_requests_total", **qwen, status="ok") == 1
    assert delta("tollgate_proxy_requests_total", **flash, status="upstream_error") == 0


def test_refused_calls_are_counted_with_their_status(inference_key, sdk, catalog, live_portal):
    _, secret = inference_key
    before = scrape(live_portal.url)
    labels = {"endpoint": "chat", "model": "", "provider": "", "status": "refused"}

    with pytest.raises(Exception):
        sdk(secret).chat.completions.create(model="no-such-model", messages=MESSAGES)

    after = scrape(live_portal.url)
    assert sample(after, "tollgate_proxy_requests_total", **labels) == (
        sample(before, "tollgate_proxy_requests_total", **labels) + 1
    )


def test_every_refusal_is_counted_by_http_status_and_code(inference_key, sdk, catalog, live_portal):
    _, secret = inference_key
    url = live_portal.url
    before = scrape(url)
    httpx2.post(f"{url}/v1/chat/completions", headers={"Authorization": "Bearer sk-wrong"})
    httpx2.post(f"{url}/v1/chat/completions", headers={"Authorization": "Bearer sk-wrong"})
    httpx2.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        content=b"{not json",
    )
    httpx2.get(f"{url}/v1/no-such-thing")
    with pytest.raises(Exception):
        sdk(secret).chat.completions.create(model="no-such-model", messages=MESSAGES)
    after = scrape(url)

    def delta(endpoint, status, code):
        labels = {"endpoint": endpoint, "http_status": status, "code": code}
        return sample(after, "tollgate_proxy_rejected_total", **labels) - sample(
            before, "tollgate_proxy_rejected_total", **labels
        )

    assert delta("chat", "401", "invalid_api_key") == 2
    assert delta("chat", "400", "invalid_json") == 1
    assert delta("other", "404", "unknown_url") == 1
    assert delta("chat", "404", "model_not_found") == 1


def test_metrics_token_is_required_when_set(live_portal, settings):
    settings.TOLLGATE_METRICS_TOKEN = "s3cret-scrape"
    url = f"{live_portal.url}/metrics"

    assert httpx2.get(url).status_code == 401
    assert httpx2.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx2.get(url, headers={"Authorization": "s3cret-scrape"}).status_code == 401
    assert scrape(live_portal.url, Authorization="Bearer s3cret-scrape")
    assert scrape(live_portal.url, Authorization="bearer s3cret-scrape")  # any case, RFC 9110


def test_celery_task_outcomes_are_counted(celery_worker, live_portal):
    before = scrape(live_portal.url)

    inflight_sweep.delay().get(timeout=30)
    budget_alerts_check.delay("not-a-counter-id").get(timeout=30, propagate=False)

    after = scrape(live_portal.url)
    for task, outcome in ((inflight_sweep.name, "success"), (budget_alerts_check.name, "failure")):
        labels = {"task": task, "outcome": outcome}
        assert sample(after, "tollgate_celery_task_calls_total", **labels) == (
            sample(before, "tollgate_celery_task_calls_total", **labels) + 1
        )


def test_in_flight_counts_open_calls_of_every_process_and_swept_calls_are_counted(
    team, live_portal
):
    """A call whose worker was killed stays in flight (its budget is still reserved) until
    the sweeper records it, then counts as an interrupted request."""
    from datetime import timedelta

    from django.utils import timezone

    from accounts.services import api_key_create
    from tests.factories import open_call

    key, _ = api_key_create(team=team, name="app")
    labels = {"endpoint": "chat", "model": "", "provider": "", "status": "interrupted"}
    before = scrape(live_portal.url)
    long_ago = timezone.now() - timedelta(hours=1)
    # Opened by a process that died: no lease of its own, long past its deadline.
    open_call(team, key, "killed-1", long_ago, deadline_s=60)
    open_call(team, key, "killed-2", long_ago, deadline_s=60)

    during = scrape(live_portal.url)
    assert sample(during, "tollgate_calls_in_flight") == (
        sample(before, "tollgate_calls_in_flight") + 2
    )
    assert inflight_sweep() >= 2
    after = scrape(live_portal.url)
    assert sample(after, "tollgate_calls_in_flight") == sample(before, "tollgate_calls_in_flight")
    assert sample(after, "tollgate_proxy_requests_total", **labels) == (
        sample(before, "tollgate_proxy_requests_total", **labels) + 2
    )


def test_readyz_says_to_migrate_a_database_with_no_tables(live_portal, monkeypatch):
    import psycopg

    from ops import health

    params = dict(connection.get_connection_params())
    admin = {k: params[k] for k in ("host", "port", "user") if params.get(k)}
    empty = f"tollgate_empty_{os.getpid()}"
    with psycopg.connect(dbname="postgres", autocommit=True, **admin) as conn:
        conn.execute(f"CREATE DATABASE {empty}")
    try:
        monkeypatch.setattr(health, "database_params", lambda: {**admin, "dbname": empty})
        response = httpx2.get(f"{live_portal.url}/readyz", timeout=5)
    finally:
        readiness_forget()
        with psycopg.connect(dbname="postgres", autocommit=True, **admin) as conn:
            conn.execute(f"DROP DATABASE {empty}")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == (
        "no migrations applied: run `manage.py migrate`"
    )


def test_a_burst_of_probes_against_a_silent_database_costs_one_round(live_portal, monkeypatch):
    """A database that accepts connections and never answers: twenty probes at once all
    answer 503 within about one round's bound, not one bound each, queued."""
    import threading

    from ops import health

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    port = silent.getsockname()[1]
    monkeypatch.setattr(
        health, "database_params", lambda: {"host": "127.0.0.1", "port": port, "dbname": "x"}
    )
    answers = []

    def probe():
        started = time.monotonic()
        response = httpx2.get(f"{live_portal.url}/readyz", timeout=15)
        answers.append((response.status_code, time.monotonic() - started))

    try:
        threads = [threading.Thread(target=probe) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        silent.close()
    assert {status for status, _ in answers} == {503}
    assert max(elapsed for _, elapsed in answers) < 3.5, answers


# --- Several worker processes


def start_metered_portal(metrics_dir):
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_tests(),
        "REDIS_URL": django_settings.REDIS_URL,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "TOLLGATE_WEB_SWEEPS": "0",
    }
    return start_portal(env, "--log-level", "warning")


def test_metrics_sum_calls_across_worker_processes(catalog, inference_key, sdk, tmp_path):
    _, secret = inference_key
    started = [start_metered_portal(tmp_path) for _ in range(2)]
    processes, urls = [p for p, _ in started], [u for _, u in started]
    try:
        for url, calls in zip(urls, (2, 3)):
            client = sdk(secret).with_options(base_url=f"{url}/v1")
            for _ in range(calls):
                client.chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES)

        labels = {"endpoint": "chat", "model": "deepseek-v4-flash", "provider": "global"}
        for url in urls:
            samples = scrape(url)
            assert sample(samples, "tollgate_proxy_requests_total", **labels, status="ok") == 5
            assert sample(samples, "tollgate_tokens_total", **labels, kind="prompt") == 5 * 12
            assert sample(samples, "tollgate_calls_in_flight") == 0
    finally:
        for process in processes:
            stop(process)
    # One file per process, named by host and pid: unique across containers sharing the
    # directory (compose.yaml), where two processes can have the same pid.
    files = sorted(path.name for path in tmp_path.glob("counter_*.db"))
    host = socket.gethostname().replace("_", "-")
    assert files == sorted(f"counter_{host}-{process.pid}.db" for process in processes)
