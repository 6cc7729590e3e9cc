"""The ledger's monthly partitions: created ahead, filled from the default partition, detached
for archiving without losing other months' figures, and built over an existing ledger."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.services import api_key_create
from tests.factories import TeamFactory
from usage import tasks
from usage.models import UsageRecord
from usage.months import month_start, next_month_start
from usage.partitions import (
    AHEAD,
    DEFAULT,
    PartitionError,
    ledger_partition_detach,
    ledger_partitions,
    ledger_partitions_ensure,
    partition_name,
)
from usage.rollups import rollup_advance
from usage.selectors import usage_rows, usage_summary

pytestmark = pytest.mark.django_db


def row(team, when, *, n=[0], cost="0.002", recorded=None):
    n[0] += 1
    return UsageRecord.objects.create(
        request_id=f"req_part{n[0]}",
        team=team,
        endpoint="chat",
        requested_model="gpt-4o",
        model="gpt-4o",
        provider="p",
        status="ok",
        prompt_tokens=1000,
        completion_tokens=500,
        input_per_mtok=Decimal("1"),
        cached_input_per_mtok=Decimal("1"),
        output_per_mtok=Decimal("2"),
        cost_usd=Decimal(cost),
        created_at=when,
        recorded_at=recorded or when,
    )


def partition_of(record) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM usage_usagerecord WHERE id = %s", [record.id]
        )
        return cursor.fetchone()[0]


def names() -> set[str]:
    return {p.name for p in ledger_partitions()}


def test_the_daily_task_creates_this_month_and_the_months_ahead():
    tasks.ledger_partitions_ensure()

    start = month_start(timezone.now())
    expected = set()
    for _ in range(AHEAD + 1):
        expected.add(partition_name(start.date()))
        start = next_month_start(start)
    assert expected <= names() and DEFAULT in names()


def test_a_second_run_creates_nothing():
    now = datetime(2041, 6, 15, tzinfo=UTC)
    first = ledger_partitions_ensure(now=now)
    before = names()

    assert first == [partition_name(date(2041, m, 1)) for m in (6, 7, 8, 9)]
    assert ledger_partitions_ensure(now=now) == []
    assert names() == before


def test_a_row_with_no_month_partition_lands_in_the_default_and_moves_when_its_month_is_made():
    team = TeamFactory()
    far = row(team, datetime(2045, 3, 15, 12, tzinfo=UTC))
    neighbour = row(team, datetime(2045, 7, 2, tzinfo=UTC))  # a month not created below
    assert partition_of(far) == DEFAULT

    created = ledger_partitions_ensure(now=datetime(2045, 3, 1, tzinfo=UTC), ahead=0)

    assert created == ["usage_usagerecord_y2045m03"]
    assert partition_of(far) == "usage_usagerecord_y2045m03"
    assert partition_of(neighbour) == DEFAULT
    assert UsageRecord.objects.get(id=far.id).cost_usd == Decimal("0.002")
    # Rows go on landing in their month once it exists, and the key still holds.
    later = row(team, datetime(2045, 3, 20, tzinfo=UTC))
    assert partition_of(later) == "usage_usagerecord_y2045m03"
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageRecord.objects.create(
            request_id=later.request_id,
            attempt=later.attempt,
            team=team,
            endpoint="chat",
            status="ok",
            created_at=later.created_at,
        )


def test_detaching_a_closed_month_keeps_every_months_report():
    team = TeamFactory()
    key, _ = api_key_create(team=team, name="k")
    ledger_partitions_ensure(now=datetime(2031, 1, 1, tzinfo=UTC), ahead=2)
    for day in (3, 9, 9, 28):
        row(team, datetime(2031, 1, day, 10, tzinfo=UTC), cost="0.5")
    for day in (1, 14):
        row(team, datetime(2031, 2, day, 10, tzinfo=UTC), cost="0.25")
    now = datetime(2031, 3, 10, tzinfo=UTC)
    rollup_advance(now=now)
    jan = {"start": datetime(2031, 1, 1, tzinfo=UTC), "end": datetime(2031, 2, 1, tzinfo=UTC)}
    feb = {"start": datetime(2031, 2, 1, tzinfo=UTC), "end": datetime(2031, 3, 1, tzinfo=UTC)}
    year = {"start": datetime(2031, 1, 1, tzinfo=UTC), "end": datetime(2032, 1, 1, tzinfo=UTC)}
    before = {
        name: usage_summary(team_id=team.id, group_by=("day", "model"), **period)
        for name, period in (("jan", jan), ("feb", feb), ("year", year))
    }
    feb_rows = list(usage_rows(team_id=team.id, **feb).values_list("id", flat=True))

    detached = ledger_partition_detach(month=date(2031, 1, 1), now=now)

    assert detached == "usage_usagerecord_y2031m01"
    assert detached not in names()
    assert not usage_rows(team_id=team.id, **jan).exists()
    assert list(usage_rows(team_id=team.id, **feb).values_list("id", flat=True)) == feb_rows
    for name, period in (("jan", jan), ("feb", feb), ("year", year)):
        assert usage_summary(team_id=team.id, group_by=("day", "model"), **period) == before[name]
    assert sum(g["cost_usd"] for g in before["year"]) == Decimal("2.5")
    # The rows are kept, untouched, in a table of their own for archiving.
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*), sum(cost_usd) FROM {detached}")
        assert cursor.fetchone() == (4, Decimal("2.000000000000"))


def test_a_month_is_not_detached_before_it_is_over_or_rolled_up():
    team = TeamFactory()
    ledger_partitions_ensure(now=datetime(2032, 1, 1, tzinfo=UTC), ahead=1)
    row(team, datetime(2032, 1, 5, tzinfo=UTC))
    rollup_advance(now=datetime(2032, 2, 10, tzinfo=UTC))
    row(team, datetime(2032, 1, 6, tzinfo=UTC), recorded=datetime(2032, 2, 20, tzinfo=UTC))

    with pytest.raises(PartitionError, match="not over"):
        ledger_partition_detach(month=date(2032, 1, 1), now=datetime(2032, 1, 20, tzinfo=UTC))
    with pytest.raises(PartitionError, match="rollups"):
        ledger_partition_detach(month=date(2032, 1, 1), now=datetime(2032, 3, 1, tzinfo=UTC))
    assert "usage_usagerecord_y2032m01" in names()


def test_the_command_lists_creates_and_refuses_with_a_sentence(capsys):
    call_command("ledgerpartitions", "ensure")
    call_command("ledgerpartitions", "ensure")
    call_command("ledgerpartitions", "list")
    out = capsys.readouterr().out
    assert "Every partition exists already." in out
    assert f"{partition_name(month_start(timezone.now()).date())}  " in out
    with pytest.raises(CommandError, match="not over yet"):
        call_command("ledgerpartitions", "detach", f"{timezone.now():%Y-%m}")
    with pytest.raises(CommandError, match="no partition"):
        call_command("ledgerpartitions", "detach", "1999-01")


@pytest.mark.django_db(transaction=True)
def test_the_migration_partitions_a_ledger_that_already_holds_rows_and_back():
    from django.db.migrations.executor import MigrationExecutor

    team = TeamFactory()
    before, after = ("usage", "0009_usage_event_delivery"), ("usage", "0010_ledger_partitions")
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    try:
        moments = [
            datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
            datetime(2024, 3, 1, tzinfo=UTC),
            timezone.now(),
            datetime(2199, 12, 31, tzinfo=UTC),
        ]
        with connection.cursor() as cursor:
            for n, moment in enumerate(moments):
                cursor.execute(
                    "INSERT INTO usage_usagerecord (request_id, attempt, team_id, endpoint, "
                    "requested_model, route, model, provider, prompt_tokens, cached_tokens, "
                    "completion_tokens, reasoning_tokens, tokens_estimated, cost_usd, streamed, "
                    "status, error_type, error_message, end_user, created_at, recorded_at) "
                    "VALUES (%s, 0, %s, 'chat', 'm', '', 'm', 'p', 1, 0, 1, 0, false, %s, false, "
                    "'ok', '', '', '', %s, %s)",
                    [f"req_mig{n}", team.id, Decimal(n) / 100, moment, moment],
                )
            cursor.execute("SELECT id, request_id, cost_usd FROM usage_usagerecord ORDER BY id")
            kept = cursor.fetchall()

        executor = MigrationExecutor(connection)
        executor.migrate([after])

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, request_id, cost_usd, tableoid::regclass::text "
                "FROM usage_usagerecord ORDER BY id"
            )
            moved = cursor.fetchall()
        assert [r[:3] for r in moved] == kept
        assert [r[3] for r in moved] == [
            "usage_usagerecord_y2024m02",
            "usage_usagerecord_y2024m03",
            partition_name(month_start(timezone.now()).date()),
            "usage_usagerecord_y2199m12",
        ]
        fresh = row(team, timezone.now())
        assert fresh.id > max(r[0] for r in kept)

        executor = MigrationExecutor(connection)
        executor.migrate([before])
        with connection.cursor() as cursor:
            cursor.execute("SELECT id, request_id, cost_usd FROM usage_usagerecord ORDER BY id")
            assert cursor.fetchall()[: len(kept)] == kept
            cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'usage_usagerecord'")
            assert cursor.fetchone()[0] == "r"
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())


def test_the_ledger_list_pages_by_keyset_across_partitions_without_counting():
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    from tests.factories import MembershipFactory, UserFactory

    team, other = TeamFactory(slug="keyset"), TeamFactory()
    key, _ = api_key_create(team=team, name="k")
    others_key, _ = api_key_create(team=other, name="k")
    ledger_partitions_ensure(now=datetime(2033, 1, 1, tzinfo=UTC), ahead=1)
    written = []
    for when in (
        datetime(2033, 1, 5, tzinfo=UTC),  # a month partition
        datetime(2033, 2, 5, tzinfo=UTC),  # the next one
        datetime(2034, 6, 5, tzinfo=UTC),  # the default partition
    ):
        for _ in range(2):
            record = row(team, when)
            UsageRecord.objects.filter(id=record.id).update(api_key=key)
            written.append(record.request_id)
    row(team, datetime(2033, 1, 6, tzinfo=UTC))  # no key
    user = UserFactory()
    MembershipFactory(team=team, user=user, role="admin")
    client = APIClient()
    client.force_login(user)

    seen, url = [], f"/api/teams/keyset/usage/?key={key.prefix}&page_size=2"
    with CaptureQueriesContext(connection) as queries:
        while url:
            page = client.get(url).json()
            seen += [r["request_id"] for r in page["results"]]
            url = page["next"]
    assert seen == written[::-1]
    assert not any("COUNT(" in q["sql"].upper() for q in queries.captured_queries)
    foreign = client.get(f"/api/teams/keyset/usage/?key={others_key.prefix}").json()
    assert foreign["results"] == []


def test_every_row_of_a_call_carries_its_created_at_even_across_a_month_end(team, inference_key):
    """The unique key includes created_at, so it holds each attempt once only if every row of
    one call has the same created_at: the sweep row and the real rows of a slow worker alike,
    even when the call opened in one month and was recorded in the next."""
    from datetime import timedelta

    from tests.factories import finish_call, open_call
    from usage.metering import inflight_sweep
    from usage.models import MeteredCall

    key, _ = inference_key
    opened = datetime(2035, 1, 31, 23, 59, 50, tzinfo=UTC)
    ledger_partitions_ensure(now=opened, ahead=1)
    meter = open_call(team, key, "req_month_end", opened)
    # The worker is slow: its lease lapses and the call is swept, then it records its rows.
    MeteredCall.objects.filter(request_id="req_month_end").update(worker="dead-host:1:gone")
    assert inflight_sweep(now=opened + timedelta(minutes=2)) == 1
    finish_call(meter, "0.01", now=opened + timedelta(minutes=3))

    rows = UsageRecord.objects.filter(request_id="req_month_end")
    assert {r.created_at for r in rows} == {opened} and rows.count() == 2
    assert {partition_of(r) for r in rows} == {"usage_usagerecord_y2035m01"}


@pytest.mark.django_db(transaction=True)
def test_a_write_to_the_month_still_in_progress_holds_the_detach_off(monkeypatch):
    # A call that started in the month may still be writing its row when the month is
    # detached. The detach waits for it (briefly) and gives up, detaching nothing: were it
    # to go ahead, the row would leave with the partition without ever being rolled up.
    import threading

    from django.db import connections

    from usage import partitions

    team = TeamFactory()
    ledger_partitions_ensure(now=datetime(2033, 1, 1, tzinfo=UTC), ahead=1)
    rollup_advance(now=datetime(2033, 2, 10, tzinfo=UTC))
    monkeypatch.setattr(partitions, "DETACH_LOCK_TIMEOUT_S", 0.3)
    written, done = threading.Event(), threading.Event()

    def late_writer():
        try:
            with transaction.atomic():
                row(
                    team,
                    datetime(2033, 1, 31, 23, 59, tzinfo=UTC),
                    recorded=datetime(2033, 2, 28, tzinfo=UTC),
                )
                written.set()
                done.wait(10)
        finally:
            connections.close_all()

    writer = threading.Thread(target=late_writer)
    writer.start()
    assert written.wait(10)
    try:
        with pytest.raises(PartitionError, match="busy"):
            ledger_partition_detach(month=date(2033, 1, 1), now=datetime(2033, 3, 1, tzinfo=UTC))
    finally:
        done.set()
        writer.join()

    assert "usage_usagerecord_y2033m01" in names()
    # Once it committed, the row is not rolled up yet: the detach says so.
    with pytest.raises(PartitionError, match="rollups"):
        ledger_partition_detach(month=date(2033, 1, 1), now=datetime(2033, 3, 1, tzinfo=UTC))
