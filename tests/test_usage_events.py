"""Usage events: every recorded ledger row reaches the team's usage webhook, signed, once per
idempotency key, retried when the webhook fails; other teams' rows never."""

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import api_key_create, usage_webhook_set
from portal.celery import app
from tests.factories import spend
from usage import events
from usage.alerts import DeliveryFailed
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db


class Receiver(BaseHTTPRequestHandler):
    got: list = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((dict(self.headers), body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver(settings, monkeypatch):
    settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE = True  # a receiver on loopback, over http
    monkeypatch.setitem(app.conf, "task_always_eager", True)  # deliveries run here
    Receiver.got, Receiver.status = [], 200
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/usage", Receiver
    server.shutdown()


def test_each_row_is_sent_once_signed_with_its_idempotency_key(
    team, other_team, receiver, django_capture_on_commit_callbacks
):
    url, got = receiver
    team = usage_webhook_set(team=team, url=url)
    key, _ = api_key_create(team=team, name="app")
    theirs, _ = api_key_create(team=other_team, name="theirs")
    now = timezone.now()
    for n in range(3):
        spend(
            team, key, "0.01", now - timedelta(minutes=5), f"evt{n}", now=now - timedelta(minutes=2)
        )
    spend(
        other_team,
        theirs,
        "0.5",
        now - timedelta(minutes=5),
        "not-theirs",
        now=now - timedelta(minutes=2),
    )

    with django_capture_on_commit_callbacks(execute=True):
        events.usage_events_dispatch(now=now - timedelta(minutes=3))  # marks the start
    with django_capture_on_commit_callbacks(execute=True):
        assert events.usage_events_dispatch(now=now) == 3
    with django_capture_on_commit_callbacks(execute=True):
        assert events.usage_events_dispatch(now=now + timedelta(minutes=1)) == 0  # once

    bodies = [json.loads(body) for _, body in got.got]
    assert sorted(b["id"] for b in bodies) == ["evt0:0", "evt1:0", "evt2:0"]
    assert {b["team"] for b in bodies} == {"acme"} and {b["data"]["cost_usd"] for b in bodies} == {
        "0.010000000000"
    }
    for headers, body in got.got:
        timestamp = int(headers["X-Tollgate-Timestamp"])
        expected = events.usage_event_signature(team.usage_webhook_secret, timestamp, body)
        assert headers["X-Tollgate-Signature"] == expected
        assert headers["Idempotency-Key"] == json.loads(body)["id"]


def test_a_failing_webhook_raises_for_a_retry_with_the_same_event(team, receiver):
    url, got = receiver
    usage_webhook_set(team=team, url=url)
    key, _ = api_key_create(team=team, name="app")
    spend(team, key, "0.01", timezone.now(), "evt-fail")
    row = UsageRecord.objects.get(request_id="evt-fail")
    got.status = 503
    with pytest.raises(DeliveryFailed):
        events.usage_event_deliver(row_id=row.id)
    got.status = 200
    assert events.usage_event_deliver(row_id=row.id) == 200
    assert [h["Idempotency-Key"] for h, _ in got.got] == ["evt-fail:0", "evt-fail:0"]


def test_the_usage_webhook_is_set_by_budget_managers_and_hidden_from_members(team, owner, member):
    client = APIClient()
    client.force_login(owner)
    url = "https://93.184.216.34/usage"
    answer = client.patch("/api/teams/acme/", {"usage_webhook_url": url}, format="json")
    assert answer.status_code == 200 and answer.data["usage_webhook_secret"]
    refused = client.patch(
        "/api/teams/acme/", {"usage_webhook_url": "https://10.0.0.1/"}, format="json"
    )
    assert refused.status_code == 400
    client.force_login(member)
    seen = client.get("/api/teams/acme/").data
    assert seen["usage_webhook_url"] is None and seen["usage_webhook_secret"] is None
