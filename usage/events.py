"""Usage events: each ledger row, once recorded, POSTed to the team's usage webhook as a
signed JSON event, so a team can feed its own billing or analytics.

Each team has a cursor (UsageEventMark) over its ledger in (recorded_at, id) order, moved
only up to the ledger's horizon (usage.horizon), so a row that commits late is never passed
over. The dispatcher (beat, every 15 s) leases every team with rows past its cursor to one delivery
task on the `usage-events` queue, which its own worker process serves, so a slow webhook
never delays sweeps or budget alerts. The task POSTs the rows in order, moving the cursor
after each, for at most SEND_BUDGET_S; a failure pauses that team (backoff up to an hour)
and leaves its cursor where it was, so no event is skipped however long a webhook is down,
and one team's dead webhook costs the others at most one timeout per pause.

Delivery is at least once: the event's id `<request_id>:<attempt>` is its idempotency key,
the same in every retry, so a consumer keeps each event once. The body is signed with the
team's secret: `X-Tollgate-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` and
`X-Tollgate-Timestamp: <unix seconds>` (reject old timestamps to stop replays). For a day
after a rotation the header carries a second signature, by the previous secret, after a
comma, so consumers can switch secrets without losing events.
"""

import hashlib
import hmac
import json
import logging
import random
import time as clock
import uuid
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Team
from usage.alerts import DeliveryFailed
from usage.exports import LEDGER_FIELDS, ledger_ndjson_lines
from usage.horizon import ledger_horizon
from usage.models import UsageEventMark, UsageRecord
from usage.outbound import OutboundFailed, OutboundRefused, webhook_post

logger = logging.getLogger(__name__)

# Rows are delivered once they are this old and no transaction older than them is open
# (usage.horizon), so a row committed late (its recorded_at is stamped before its statement
# runs) is never passed by the cursor.
LAG = timedelta(seconds=30)
# One delivery task sends for at most this long, then hands the team back to the dispatcher
# (queued again at once when more is waiting, behind the other teams' tasks).
SEND_BUDGET_S = 20.0
# Each POST, all of it: connect, send, the whole answer.
TIMEOUT = 5.0
# A lease outlives any task: the send budget, one more timeout, the database work.
LEASE = timedelta(seconds=60)
# Rows read from the ledger at a time.
CHUNK = 200
# The pause after the n-th consecutive failure: 15 s doubling, at most an hour, jittered.
BACKOFF_S, BACKOFF_MAX_S = 15, 3600
# An event's data: the ledger row as exports give it, less the team (named beside it).
EVENT_FIELDS = {name: source for name, source in LEDGER_FIELDS.items() if name != "team"}


def _pending(mark: UsageEventMark, until: datetime):
    """The team's ledger rows past its cursor and at most `until`, in cursor order."""
    past = Q(recorded_at__gt=mark.through) | Q(recorded_at=mark.through, id__gt=mark.through_id)
    return UsageRecord.objects.filter(past, team_id=mark.team_id, recorded_at__lte=until).order_by(
        "recorded_at", "id"
    )


def usage_events_dispatch(*, now: datetime | None = None) -> int:
    """Lease each webhook team with events waiting (not paused, not already being delivered)
    to a delivery task; returns how many were queued. Safe to run concurrently and often."""
    from usage.tasks import usage_events_deliver

    now = now or timezone.now()
    until = ledger_horizon(now=now, lag=LAG)
    queued = 0
    for team_id in Team.objects.exclude(usage_webhook_url="").values_list("id", flat=True):
        with transaction.atomic():
            mark, created = UsageEventMark.objects.select_for_update(
                skip_locked=True
            ).get_or_create(team_id=team_id, defaults={"through": until})
            busy = mark.leased_until is not None and mark.leased_until > now
            paused = mark.retry_at is not None and mark.retry_at > now
            if created or busy or paused or not _pending(mark, until).exists():
                continue
            mark.lease, mark.leased_until = uuid.uuid4(), now + LEASE
            mark.save(update_fields=["lease", "leased_until"])
            transaction.on_commit(
                lambda team=team_id, lease=str(mark.lease): usage_events_deliver.delay(
                    team, lease, until.isoformat()
                )
            )
            queued += 1
    return queued


def usage_events_start(*, team: Team, now: datetime, from_now: bool) -> None:
    """When a team's webhook is set: its events start now (`from_now`, the webhook was off),
    or carry on from the cursor to the new URL; either way a pause is lifted."""
    through = {"through": now, "through_id": 0} if from_now else {}
    mark, created = UsageEventMark.objects.get_or_create(
        team=team, defaults={"through": now, "through_id": 0}
    )
    if not created:
        UsageEventMark.objects.filter(id=mark.id).update(
            failures=0, retry_at=None, last_error="", **through
        )


def usage_events_deliver(*, team_id: int, lease: str, until: datetime) -> int:
    """Deliver the team's events recorded up to `until` (the dispatcher's horizon) in order
    while this task holds its lease; returns how many were sent. Stops at the first failure
    (the team is paused, the cursor stays), when the send budget is spent (the team is
    queued again), or when the lease is lost."""
    from usage.tasks import usage_events_deliver as task

    started = clock.monotonic()
    mark = UsageEventMark.objects.filter(team_id=team_id, lease=lease).first()
    if mark is None:
        return 0  # another task holds the team now
    sent = 0
    while True:
        rows = list(_pending(mark, until).values_list("id", "recorded_at")[:CHUNK])
        for row_id, recorded_at in rows:
            if sent and clock.monotonic() - started > SEND_BUDGET_S:
                # Queued again behind the other teams' deliveries, under a new lease.
                renewed = uuid.uuid4()
                if UsageEventMark.objects.filter(team_id=team_id, lease=lease).update(
                    lease=renewed, leased_until=timezone.now() + LEASE
                ):
                    task.delay(team_id, str(renewed), until.isoformat())
                return sent
            try:
                usage_event_deliver(row_id=row_id)
            except DeliveryFailed as failure:
                _pause(mark, lease, str(failure))
                return sent
            sent += 1
            moved = UsageEventMark.objects.filter(team_id=team_id, lease=lease).update(
                through=recorded_at,
                through_id=row_id,
                failures=0,
                retry_at=None,
                last_error="",
                delivered_at=timezone.now(),
                leased_until=timezone.now() + LEASE,
            )
            if not moved:
                return sent  # the lease lapsed and another task took the team
            mark.through, mark.through_id, mark.failures = recorded_at, row_id, 0
        if len(rows) < CHUNK:
            break
    UsageEventMark.objects.filter(team_id=team_id, lease=lease).update(
        lease=None, leased_until=None
    )
    return sent


def _pause(mark: UsageEventMark, lease: str, error: str) -> None:
    failures = mark.failures + 1
    pause = min(BACKOFF_S * 2 ** (failures - 1), BACKOFF_MAX_S) * random.uniform(0.8, 1.2)
    retry_at = timezone.now() + timedelta(seconds=pause)
    UsageEventMark.objects.filter(team_id=mark.team_id, lease=lease).update(
        failures=failures,
        retry_at=retry_at,
        last_error=error[:300],
        lease=None,
        leased_until=None,
    )
    logger.warning(
        "usage events of team %s paused until %s after %d failure(s): %s",
        mark.team_id,
        f"{retry_at:%Y-%m-%dT%H:%M:%SZ}",
        failures,
        error,
    )


def usage_event_body(row_id: int) -> tuple[Team, str, bytes] | None:
    """The event for a ledger row: its team, id, and JSON body (money as decimal strings)."""
    found = (
        UsageRecord.objects.filter(id=row_id).values_list("team_id", *EVENT_FIELDS.values()).first()
    )
    if found is None:
        return None
    team = Team.objects.get(id=found[0])
    data = json.loads("".join(ledger_ndjson_lines([found[1:]], list(EVENT_FIELDS))))
    event_id = f"{data['request_id']}:{data['attempt']}"
    body = {"id": event_id, "type": "usage.recorded", "team": team.slug, "data": data}
    return team, event_id, json.dumps(body, separators=(",", ":")).encode()


def usage_event_signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def usage_event_signatures(team: Team, timestamp: int, body: bytes, now: datetime) -> str:
    """The signature header: by the team's secret, then (for a while after a rotation) by
    the previous one, comma-separated. A consumer accepts the event if either matches."""
    signatures = [usage_event_signature(team.usage_webhook_secret, timestamp, body)]
    until = team.usage_webhook_secret_previous_until
    if team.usage_webhook_secret_previous and until is not None and now < until:
        signatures.append(
            usage_event_signature(team.usage_webhook_secret_previous, timestamp, body)
        )
    return ",".join(signatures)


def usage_event_deliver(*, row_id: int) -> int | None:
    """POST one row's event; the status the webhook answered, None when there is nothing to
    send (the row or the webhook is gone), DeliveryFailed when it must be tried again."""
    event = usage_event_body(row_id)
    if event is None:
        return None
    team, event_id, body = event
    if not team.usage_webhook_url:
        return None
    timestamp = int(clock.time())
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": event_id,
        "X-Tollgate-Event": "usage.recorded",
        "X-Tollgate-Timestamp": str(timestamp),
        "X-Tollgate-Signature": usage_event_signatures(team, timestamp, body, timezone.now()),
    }
    try:
        status = webhook_post(
            team.usage_webhook_url, content=body, headers=headers, timeout=TIMEOUT
        )
    except OutboundRefused as refused:
        raise DeliveryFailed(str(refused)) from None
    except OutboundFailed as failed:
        raise DeliveryFailed(f"the usage webhook of {team.slug} {failed}") from None
    if status >= 300:
        raise DeliveryFailed(f"the usage webhook of {team.slug} answered {status}")
    return status
