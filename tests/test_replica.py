"""Reports from a read replica (DATABASE_REPLICA_URL): the usage list and summary read it;
keys, budgets and the ledger write stay on the primary. Here the "replica" is a database of
its own holding a ledger row the primary does not, so where each read went shows."""

import httpx2
import psycopg
import pytest

from tests.processes import start_portal, stop
from tests.test_dependencies_down import chat, gateway_on, issued, ok

pytestmark = pytest.mark.faults

INSERT_ROW = (
    "from django.utils import timezone; from decimal import Decimal; "
    "from accounts.models import Team; from usage.models import UsageRecord; "
    "now = timezone.now(); "
    "UsageRecord.objects.create(request_id='only-on-the-replica', team=Team.objects.get(slug='acme'), "
    "endpoint='chat', requested_model='gpt-4o', model='gpt-4o', provider='openai', "
    "created_at=now, recorded_at=now, status='ok', cost_usd=Decimal('7.77'))"
)


def test_reports_read_the_replica_and_calls_write_the_primary(own_postgres, tmp_path):
    own_postgres.create_database("replica")
    # The same team in both, as replication would have it.
    primary = gateway_on(own_postgres, CELERY_BROKER_URL="", REDIS_URL="")
    replica = gateway_on(own_postgres, "replica", CELERY_BROKER_URL="", REDIS_URL="")
    ok(replica, "shell", "-c", INSERT_ROW)
    inference = issued(primary, "--name", "app")
    management = issued(primary, "--name", "ops", "--management")
    process, url = start_portal(
        {**primary, "DATABASE_REPLICA_URL": own_postgres.url("replica")},
        log=tmp_path / "portal.log",
    )
    try:
        assert chat(url, inference).status_code == 200  # written to the primary
        headers = {"Authorization": f"Bearer {management}"}
        listed = httpx2.get(f"{url}/api/teams/acme/usage/", headers=headers, timeout=10).json()
        summary = httpx2.get(
            f"{url}/api/teams/acme/usage/summary/?group_by=model", headers=headers, timeout=10
        ).json()
    finally:
        stop(process)
    assert [row["request_id"] for row in listed["results"]] == ["only-on-the-replica"]
    assert [group["cost_usd"] for group in summary] == ["7.770000000000"]
    with psycopg.connect(own_postgres.url("tollgate"), autocommit=True) as conn:
        written = conn.execute("SELECT request_id FROM usage_usagerecord").fetchall()
    assert len(written) == 1 and written[0][0] != "only-on-the-replica"
