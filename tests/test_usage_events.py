"""Usage events: every recorded ledger row reaches the team's usage webhook, signed, once per
idempotency key, in order; a failing or slow webhook pauses only its own team and loses
nothing; the signing secret rotates with an overlap; other teams' rows never."""

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import api_key_create, usage_webhook_secret_rotate, usage_webhook_set
from portal.celery import app
from tests.factories import spend
from usage import events
from usage.models import UsageEventMark

pytestmark = pytest.mark.django_db


class Receiver(BaseHTTPRequestHandler):
    """A webhook: records what it is sent, answers `status` after `delay` seconds."""

    got: list = []
    status = 200
    delay = 0.0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(type(self).delay)
        type(self).got.append((dict(self.headers), body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


def _receiver():
    handler = type("Receiver", (Receiver,), {"got": [], "status": 200, "delay": 0.0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/usage", handler


@pytest.fixture
def receivers(settings, monkeypatch):
    settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE = True  # receivers on loopback, over http
    monkeypatch.setitem(app.conf, "task_always_eager", True)  # deliveries run here
    servers = []

    def make():
        server, url, handler = _receiver()
        servers.append(server)
        return url, handler

    yield make
    for server in servers:
        server.shutdown()


@pytest.fixture
def dispatch(django_capture_on_commit_callbacks):
    """One beat of the dispatcher at `now`, its queued deliveries run here."""

    def run(now):
        with django_capture_on_commit_callbacks(execute=True):
            return events.usage_events_dispatch(now=now)

    return run


def _ids(handler):
    return [json.loads(body)["id"] for _, body in handler.got]


def _calls(team, key, prefix, count, now, *, at=None):
    when = at or now - timedelta(minutes=2)
    for n in range(count):
        spend(team, key, "0.01", when, f"{prefix}{n}", now=when)


def test_each_row_is_sent_once_in_order_signed_with_its_idempotency_key(
    team, other_team, receivers, dispatch
):
    url, got = receivers()
    now = timezone.now()
    team = usage_webhook_set(team=team, url=url, now=now - timedelta(minutes=10))
    key, _ = api_key_create(team=team, name="app")
    theirs, _ = api_key_create(team=other_team, name="theirs")
    spend(team, key, "0.01", now, "before", now=now - timedelta(minutes=11))  # before the webhook
    _calls(team, key, "evt", 3, now)
    _calls(other_team, theirs, "not-theirs", 1, now)

    assert dispatch(now) == 1  # one delivery task for the team
    assert dispatch(now + timedelta(minutes=1)) == 0  # nothing left: once

    assert _ids(got) == ["evt0:0", "evt1:0", "evt2:0"]
    bodies = [json.loads(body) for _, body in got.got]
    assert {b["team"] for b in bodies} == {"acme"}
    assert {b["data"]["cost_usd"] for b in bodies} == {"0.010000000000"}
    for headers, body in got.got:
        timestamp = int(headers["X-Tollgate-Timestamp"])
        expected = events.usage_event_signature(team.usage_webhook_secret, timestamp, body)
        assert headers["X-Tollgate-Signature"] == expected
        assert headers["Idempotency-Key"] == json.loads(body)["id"]
    mark = UsageEventMark.objects.get(team=team)
    assert mark.lease is None and mark.failures == 0 and mark.delivered_at is not None


def test_rows_recorded_in_the_same_instant_are_all_sent_across_chunks(
    team, receivers, dispatch, monkeypatch
):
    monkeypatch.setattr(events, "CHUNK", 2)
    url, got = receivers()
    now = timezone.now()
    usage_webhook_set(team=team, url=url, now=now - timedelta(minutes=10))
    key, _ = api_key_create(team=team, name="app")
    _calls(team, key, "same", 5, now)  # five rows, one recorded_at

    dispatch(now)
    assert sorted(_ids(got)) == [f"same{n}:0" for n in range(5)]


def test_a_failing_webhook_pauses_its_team_keeps_its_events_and_resends_the_same_ones(
    team, receivers, dispatch
):
    url, got = receivers()
    now = timezone.now()
    usage_webhook_set(team=team, url=url, now=now - timedelta(minutes=10))
    key, _ = api_key_create(team=team, name="app")
    _calls(team, key, "evt", 2, now)
    got.status = 503

    dispatch(now)
    mark = UsageEventMark.objects.get(team=team)
    assert mark.failures == 1 and "answered 503" in mark.last_error
    assert mark.retry_at > timezone.now() and mark.lease is None
    assert _ids(got) == ["evt0:0"]  # stopped at the first failure, nothing skipped

    assert dispatch(now) == 0  # paused: not tried again before retry_at
    got.status = 200
    assert dispatch(mark.retry_at + timedelta(seconds=1)) == 1
    assert _ids(got) == ["evt0:0", "evt0:0", "evt1:0"]  # the same event, then the next
    mark.refresh_from_db()
    assert mark.failures == 0 and mark.retry_at is None and mark.last_error == ""


def test_the_pause_grows_with_each_failure_up_to_an_hour(team, receivers, dispatch):
    url, got = receivers()
    now = timezone.now()
    usage_webhook_set(team=team, url=url, now=now - timedelta(minutes=10))
    key, _ = api_key_create(team=team, name="app")
    _calls(team, key, "evt", 1, now)
    got.status = 500
    pauses, at = [], now
    for _ in range(12):
        dispatch(at)
        mark = UsageEventMark.objects.get(team=team)
        pauses.append((mark.retry_at - timezone.now()).total_seconds())
        at = mark.retry_at + timedelta(seconds=1)
    assert 10 < pauses[0] < 20 and 20 < pauses[1] < 40  # 15 s doubling, jittered
    assert pauses == sorted(pauses[:8]) + pauses[8:]
    assert max(pauses) <= 3600 * 1.2 and pauses[-1] > 2800


def test_a_slow_webhook_costs_one_timeout_and_does_not_hold_up_another_team(
    team, other_team, receivers, dispatch, monkeypatch
):
    monkeypatch.setattr(events, "TIMEOUT", 0.3)
    slow_url, slow = receivers()
    fast_url, fast = receivers()
    slow.delay = 2.0
    now = timezone.now()
    usage_webhook_set(team=team, url=slow_url, now=now - timedelta(minutes=10))
    usage_webhook_set(team=other_team, url=fast_url, now=now - timedelta(minutes=10))
    mine, _ = api_key_create(team=team, name="app")
    theirs, _ = api_key_create(team=other_team, name="app")
    _calls(team, mine, "slow", 20, now)
    _calls(other_team, theirs, "fast", 3, now)

    started = time.monotonic()
    assert dispatch(now) == 2
    assert time.monotonic() - started < 1.5  # one timeout for the slow team, not twenty
    assert _ids(fast) == ["fast0:0", "fast1:0", "fast2:0"]
    mark = UsageEventMark.objects.get(team=team)
    assert "timed out" in mark.last_error and mark.through_id == 0


def test_a_team_being_delivered_is_not_leased_twice_and_a_dead_lease_lapses(
    team, receivers, dispatch
):
    url, got = receivers()
    now = timezone.now()
    usage_webhook_set(team=team, url=url, now=now - timedelta(minutes=10))
    key, _ = api_key_create(team=team, name="app")
    _calls(team, key, "evt", 1, now)
    # A task took the team and its worker died.
    UsageEventMark.objects.filter(team=team).update(
        lease="00000000-0000-0000-0000-000000000001", leased_until=now + events.LEASE
    )
    assert dispatch(now) == 0 and got.got == []
    # Its task, run late, finds its lease taken and sends nothing.
    assert dispatch(now + events.LEASE + timedelta(seconds=1)) == 1
    assert _ids(got) == ["evt0:0"]
    stale = events.usage_events_deliver(
        team_id=team.id, lease="00000000-0000-0000-0000-000000000001", until=now
    )
    assert stale == 0 and _ids(got) == ["evt0:0"]


def test_a_task_past_its_send_budget_queues_the_rest_behind_other_teams(
    team, receivers, dispatch, monkeypatch
):
    monkeypatch.setattr(events, "SEND_BUDGET_S", 0.0)
    url, got = receivers()
    now = timezone.now()
    usage_webhook_set(team=team, url=url, now=now - timedelta(minutes=10))
    key, _ = api_key_create(team=team, name="app")
    _calls(team, key, "evt", 3, now)
    queued = []
    original = app.tasks["usage.tasks.usage_events_deliver"].delay
    monkeypatch.setattr(
        app.tasks["usage.tasks.usage_events_deliver"],
        "delay",
        lambda *args: queued.append(args) or original(*args),
    )
    dispatch(now)
    assert _ids(got) == ["evt0:0", "evt1:0", "evt2:0"]
    assert len(queued) == 3  # one row a task: each handed the team on under a new lease
    assert len({lease for _, lease, _ in queued}) == 3


def test_deliveries_have_their_own_queue():
    route = app.amqp.router.route({}, "usage.tasks.usage_events_deliver")
    assert route["queue"].name == "usage-events"
    assert app.amqp.router.route({}, "usage.tasks.inflight_sweep")["queue"].name == "celery"


def test_a_changed_url_is_tried_at_once_and_carries_on_from_the_cursor(team, receivers, dispatch):
    dead_url, dead = receivers()
    url, got = receivers()
    dead.status = 500
    now = timezone.now()
    usage_webhook_set(team=team, url=dead_url, now=now - timedelta(minutes=10))
    key, _ = api_key_create(team=team, name="app")
    _calls(team, key, "evt", 2, now)
    dispatch(now)
    assert UsageEventMark.objects.get(team=team).retry_at is not None

    usage_webhook_set(team=team, url=url)
    dispatch(now)
    assert _ids(got) == ["evt0:0", "evt1:0"]


def test_a_rotated_secret_signs_beside_the_new_one_for_a_day(team, receivers, dispatch):
    url, got = receivers()
    now = timezone.now()
    team = usage_webhook_set(team=team, url=url, now=now - timedelta(minutes=10))
    old = team.usage_webhook_secret
    team = usage_webhook_secret_rotate(team=team)
    assert team.usage_webhook_secret != old
    key, _ = api_key_create(team=team, name="app")
    _calls(team, key, "evt", 1, now)
    dispatch(now)
    headers, body = got.got[0]
    timestamp = int(headers["X-Tollgate-Timestamp"])
    assert headers["X-Tollgate-Signature"].split(",") == [
        events.usage_event_signature(team.usage_webhook_secret, timestamp, body),
        events.usage_event_signature(old, timestamp, body),
    ]
    later = timezone.now() + timedelta(hours=25)
    assert events.usage_event_signatures(team, timestamp, body, later) == (
        events.usage_event_signature(team.usage_webhook_secret, timestamp, body)
    )


def test_the_usage_webhook_is_set_and_rotated_by_budget_managers_and_hidden_from_members(
    team, owner, member
):
    client = APIClient()
    client.force_login(owner)
    rotate = "/api/teams/acme/usage-webhook/rotate-secret/"
    assert client.post(rotate).status_code == 400  # no webhook yet
    url = "https://93.184.216.34/usage"
    answer = client.patch("/api/teams/acme/", {"usage_webhook_url": url}, format="json")
    assert answer.status_code == 200 and answer.data["usage_webhook_secret"]
    assert answer.data["usage_webhook_status"]["failures"] == 0
    first = answer.data["usage_webhook_secret"]
    rotated = client.post(rotate)
    assert rotated.status_code == 200 and rotated.data["usage_webhook_secret"] != first
    assert rotated.data["usage_webhook_status"]["previous_secret_valid_until"]
    refused = client.patch(
        "/api/teams/acme/", {"usage_webhook_url": "https://10.0.0.1/"}, format="json"
    )
    assert refused.status_code == 400
    client.force_login(member)
    seen = client.get("/api/teams/acme/").data
    assert seen["usage_webhook_url"] is None and seen["usage_webhook_secret"] is None
    assert seen["usage_webhook_status"] is None
    assert client.post(rotate).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_a_row_whose_write_is_still_open_holds_the_cursor_back_until_it_commits(
    settings, monkeypatch
):
    """A ledger write stamps recorded_at, then may wait (a locked budget counter) for any
    length of time before committing. While it is open, later rows are not delivered past
    it; once it commits, it goes first."""
    import psycopg
    from django.db import connection

    from accounts.models import Team

    settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE = True
    monkeypatch.setitem(app.conf, "task_always_eager", True)
    server, url, got = _receiver()
    team = Team.objects.create(slug="late", name="Late")
    try:
        key, _ = api_key_create(team=team, name="app")
        usage_webhook_set(team=team, url=url, now=timezone.now() - timedelta(minutes=10))
        db = connection.settings_dict
        blocked = psycopg.connect(
            host=db["HOST"] or "127.0.0.1",
            port=db["PORT"] or 5432,
            user=db["USER"],
            dbname=db["NAME"],
        )
        # A's statement: stamped now, its transaction open (waiting on a lock, say).
        stamped = timezone.now()
        with blocked.cursor() as cursor:
            cursor.execute("SELECT 1")  # the transaction has begun
        spend(team, key, "0.01", stamped, "B", now=stamped + timedelta(seconds=1))
        later = stamped + timedelta(minutes=5)  # LAG long past for both
        events.usage_events_dispatch(now=later)
        assert [json.loads(body)["id"] for _, body in got.got] == []  # B waits behind A
        blocked.rollback()
        blocked.close()
        # A commits (here: written now, with the stamp it took before waiting).
        spend(team, key, "0.01", stamped, "A", now=stamped)
        events.usage_events_dispatch(now=later)
        assert [json.loads(body)["id"] for _, body in got.got] == ["A:0", "B:0"]
    finally:
        server.shutdown()
