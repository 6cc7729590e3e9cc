"""Process faults on a real server process: SIGTERM lets the calls in flight finish (streams
included, up to a grace period) and records them; a client that left before the signal has
its call finished and recorded too. (SIGKILL: tests/test_hostile_money.py, settled by the
sweeper.)"""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx2
import pytest
from django.db import connection

from accounts.services import api_key_create
from tests.conftest import ROOT
from tests.fake_upstream import Answer
from usage.models import MeteredCall, UsageRecord

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.faults]

MESSAGES = [{"role": "user", "content": "hello"}]


def start(settings, grace_s: int) -> tuple[subprocess.Popen, str]:
    db = connection.settings_dict
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "REDIS_URL": settings.REDIS_URL,
        "TOLLGATE_WEB_SWEEPS": "0",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "portal.asgi:application",
            "--port",
            str(port),
            "--timeout-graceful-shutdown",
            str(grace_s),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process, f"http://127.0.0.1:{port}"
        except httpx2.TransportError:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)


def test_sigterm_lets_streams_in_flight_finish_and_records_them(catalog, team, upstream, settings):
    _, secret = api_key_create(team=team, name="app")
    # 30 chunks, 0.1 s apart: about 3 s of stream.
    upstream.script("gpt-4o", Answer(content="w " * 30, chunk_delay=0.1))
    process, url = start(settings, grace_s=20)
    received = []
    try:
        with httpx2.stream(
            "POST",
            f"{url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
            json={"model": "gpt-4o", "messages": MESSAGES, "stream": True},
        ) as response:
            lines = response.iter_lines()
            received.append(next(lines))  # the stream has begun
            process.send_signal(signal.SIGTERM)
            received.extend(lines)
        # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
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
        with httpx2.stream(
            "POST",
            f"{url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
            json={"model": "gpt-4o", "messages": MESSAGES, "stream": True},
        ) as response:
            next(response.iter_lines())
        # The client is gone; the gateway drains the upstream for its usage. Then SIGTERM.
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
    [row] = UsageRecord.objects.filter(team=team)
    assert row.completion_tokens > 0, (row.status, row.error_message)
    assert not MeteredCall.objects.in_flight().exists()
