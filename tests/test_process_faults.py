"""Process faults on a real server process: SIGTERM lets the calls in flight finish (streams
included, up to a grace period) and records them; a client that left before the signal has
its call finished and recorded too. (SIGKILL: tests/test_hostile_money.py, settled by the
sweeper.)"""

import os
import signal
import time

import httpx2
import pytest

from accounts.services import api_key_create
from tests.fake_upstream import Answer
from tests.processes import database_url_of_tests, start_portal, stop
from usage.models import MeteredCall, UsageRecord

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.faults]

MESSAGES = [{"role": "user", "content": "hello"}]


def start(settings, grace_s: int):
    env = {
        **os.environ,
        "REDIS_URL": settings.REDIS_URL,
        "TOLLGATE_WEB_SWEEPS": "0",
        "DATABASE_URL": database_url_of_tests(),
    }
    return start_portal(env, "--timeout-graceful-shutdown", str(grace_s), "--log-level", "warning")


def stream(url, secret):
    return httpx2.stream(
        "POST",
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
        json={"model": "gpt-4o", "messages": MESSAGES, "stream": True},
    )


def exited_gracefully(process) -> bool:
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM.
    return process.wait(timeout=30) in (0, -signal.SIGTERM)


def test_sigterm_lets_streams_in_flight_finish_and_records_them(catalog, team, upstream, settings):
    _, secret = api_key_create(team=team, name="app")
    # 30 chunks, 0.1 s apart: about 3 s of stream.
    upstream.script("gpt-4o", Answer(content="w " * 30, chunk_delay=0.1))
    process, url = start(settings, grace_s=20)
    received = []
    try:
        with stream(url, secret) as response:
            lines = response.iter_lines()
            received.append(next(lines))  # the stream has begun
            process.send_signal(signal.SIGTERM)
            received.extend(lines)
        assert exited_gracefully(process)
    finally:
        stop(process)
    assert [line for line in received if line][-1] == "data: [DONE]"
    [row] = UsageRecord.objects.filter(team=team)
    assert row.status == "ok" and row.completion_tokens > 0 and row.cost_usd > 0
    assert not MeteredCall.objects.in_flight().exists()


def test_a_call_whose_client_left_is_finished_and_recorded_before_the_process_exits(
    catalog, team, upstream, settings
):
    _, secret = api_key_create(team=team, name="app")
    upstream.script("gpt-4o", Answer(content="w " * 30, chunk_delay=0.1))
    process, url = start(settings, grace_s=20)
    try:
        with stream(url, secret) as response:
            next(response.iter_lines())
        # The client is gone; the gateway drains the upstream for its usage. Then SIGTERM.
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert exited_gracefully(process)
    finally:
        stop(process)
    [row] = UsageRecord.objects.filter(team=team)
    assert row.completion_tokens > 0, (row.status, row.error_message)
    assert not MeteredCall.objects.in_flight().exists()
