"""A call whose worker dies mid-call still reaches the ledger, exactly once."""

from datetime import timedelta

import pytest
from django.utils import timezone

from usage.models import InFlightCall, UsageRecord
from usage.services import inflight_expire, inflight_start, usage_record
from usage.tasks import inflight_expire as inflight_expire_task

pytestmark = pytest.mark.django_db


def start(team, key, request_id, now):
    return inflight_start(request_id=request_id, team_id=team.id, api_key_id=key.id, endpoint="chat",
                          requested_model="gpt-4o", now=now)


def test_crashed_call_is_recorded_as_interrupted_once(team, inference_key):
    key, _ = inference_key
    long_ago = timezone.now() - timedelta(hours=2)
    start(team, key, "req_crashed", long_ago)
    start(team, key, "req_running", timezone.now())

    assert inflight_expire() == 1
    assert inflight_expire() == 0

    [row] = UsageRecord.objects.filter(team=team)
    assert (row.request_id, row.status, row.cost_usd, row.created_at) == ("req_crashed", "interrupted", 0, long_ago)
    assert list(InFlightCall.objects.values_list("request_id", flat=True)) == ["req_running"]


@pytest.mark.django_db(transaction=True)
def test_a_celery_worker_runs_the_sweeper(celery_worker, team, inference_key):
    key, _ = inference_key
    start(team, key, "req_old", timezone.now() - timedelta(hours=2))

    assert inflight_expire_task.delay().get(timeout=30) == 1
    assert UsageRecord.objects.get().status == "interrupted"


def test_a_finished_call_closes_its_inflight_record(team, inference_key):
    key, _ = inference_key
    now = timezone.now()
    start(team, key, "req_done", now)

    usage_record(rows=[{"request_id": "req_done", "attempt": 0, "team_id": team.id, "api_key_id": key.id,
                        "endpoint": "chat", "requested_model": "gpt-4o", "status": "ok", "created_at": now}])

    assert not InFlightCall.objects.exists()
    assert inflight_expire(now=now + timedelta(days=1)) == 0
    assert UsageRecord.objects.count() == 1


def test_a_late_writer_after_the_sweeper_does_not_double_record(team, inference_key):
    key, _ = inference_key
    long_ago = timezone.now() - timedelta(hours=2)
    start(team, key, "req_slow", long_ago)
    inflight_expire()

    written = usage_record(rows=[{"request_id": "req_slow", "attempt": 0, "team_id": team.id, "api_key_id": key.id,
                                  "endpoint": "chat", "requested_model": "gpt-4o", "status": "ok",
                                  "created_at": long_ago}])

    assert written == []
    assert UsageRecord.objects.filter(request_id="req_slow").count() == 1
