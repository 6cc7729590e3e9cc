"""Usage events: each ledger row, once recorded, POSTed to the team's usage webhook as a
signed JSON event, so a team can feed its own billing or analytics.

Delivery is at least once: the dispatcher hands every row recorded since the team's mark to
a Celery task (retried with backoff) and advances the mark; the event's id
`<request_id>:<attempt>` is its idempotency key, the same in every retry, so a consumer
keeps each event once. The body is signed with the team's secret:
`X-Tollgate-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` and
`X-Tollgate-Timestamp: <unix seconds>` (reject old timestamps to stop replays).
"""

import hashlib
import hmac
import json
import logging
import time as clock
from datetime import datetime, timedelta

import httpx2
from django.db import transaction
from django.utils import timezone

from accounts.models import Team
from usage.alerts import DeliveryFailed, webhook_url_problem
from usage.exports import ledger_ndjson_lines
from usage.models import UsageEventMark, UsageRecord

logger = logging.getLogger(__name__)

# Rows are dispatched once they are this old, so a row committed a little late (its
# recorded_at is stamped before its transaction commits) is never passed by the mark.
LAG = timedelta(seconds=30)
# At most this many rows a team per dispatch; the rest go on the next one.
BATCH = 5000
EVENT_FIELDS = {
    "request_id": "request_id",
    "attempt": "attempt",
    "created_at": "created_at",
    "recorded_at": "recorded_at",
    "key": "api_key__prefix",
    "endpoint": "endpoint",
    "requested_model": "requested_model",
    "route": "route",
    "model": "model",
    "provider": "provider",
    "status": "status",
    "prompt_tokens": "prompt_tokens",
    "cached_tokens": "cached_tokens",
    "completion_tokens": "completion_tokens",
    "reasoning_tokens": "reasoning_tokens",
    "tokens_estimated": "tokens_estimated",
    "input_per_mtok": "input_per_mtok",
    "cached_input_per_mtok": "cached_input_per_mtok",
    "output_per_mtok": "output_per_mtok",
    "cost_usd": "cost_usd",
    "latency_ms": "latency_ms",
    "end_user": "end_user",
}


def usage_events_dispatch(*, now: datetime | None = None) -> int:
    """Queue a delivery for every row recorded since each webhook team's mark; returns how
    many were queued. Safe to run concurrently and often (each team's mark is locked)."""
    from usage.tasks import usage_event_deliver

    now = now or timezone.now()
    until = now - LAG
    queued = 0
    for team in Team.objects.exclude(usage_webhook_url="").only("id"):
        with transaction.atomic():
            mark, _ = UsageEventMark.objects.select_for_update().get_or_create(
                team=team, defaults={"through": until}
            )
            rows = list(
                UsageRecord.objects.filter(
                    team=team, recorded_at__gt=mark.through, recorded_at__lte=until
                )
                .order_by("recorded_at", "id")
                .values_list("id", "recorded_at")[:BATCH]
            )
            if not rows:
                continue
            mark.through = rows[-1][1] if len(rows) == BATCH else until
            mark.save(update_fields=["through"])
            for row_id, _ in rows:
                transaction.on_commit(lambda r=row_id: usage_event_deliver.delay(r))
            queued += len(rows)
    return queued


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


def usage_event_deliver(*, row_id: int) -> int | None:
    """POST one row's event; the status the webhook answered, None when there is nothing to
    send (the row or the webhook is gone), DeliveryFailed to be retried."""
    event = usage_event_body(row_id)
    if event is None:
        return None
    team, event_id, body = event
    if not team.usage_webhook_url:
        return None
    if problem := webhook_url_problem(team.usage_webhook_url):
        raise DeliveryFailed(problem)
    timestamp = int(clock.time())
    try:
        response = httpx2.post(
            team.usage_webhook_url,
            content=body,
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": event_id,
                "X-Tollgate-Event": "usage.recorded",
                "X-Tollgate-Timestamp": str(timestamp),
                "X-Tollgate-Signature": usage_event_signature(
                    team.usage_webhook_secret, timestamp, body
                ),
            },
            timeout=10,
            follow_redirects=False,
        )
    except httpx2.HTTPError:
        raise DeliveryFailed(f"the usage webhook of {team.slug} could not be reached") from None
    if response.status_code >= 300:
        raise DeliveryFailed(f"the usage webhook of {team.slug} answered {response.status_code}")
    return response.status_code
