"""The usage explorer pages: the filtered ledger a page at a time, and each call's attempts."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from accounts.services import api_key_create
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db
START = datetime(2026, 11, 10, 12, tzinfo=UTC)


def row(team, key, n, **fields):
    return UsageRecord.objects.create(
        **{
            "request_id": f"req_x{n}",
            "team": team,
            "api_key": key,
            "endpoint": "chat",
            "requested_model": "gpt-4o",
            "model": "gpt-4o",
            "status": "ok",
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "cost_usd": Decimal("0.000075"),
            "created_at": START - timedelta(minutes=n),
            **fields,
        }
    )


@pytest.fixture
def ledger(team, other_team, inference_key):
    key, _ = inference_key
    batch, _ = api_key_create(team=team, name="batch")
    for n in range(60):
        row(team, key if n % 2 else batch, n)
    row(
        team,
        key,
        100,
        request_id="req_fallback",
        model="glm-5",
        status="upstream_error",
        attempt=0,
        http_status=503,
        error_type="upstream_error",
        error_message="upstream failure",
        cost_usd=0,
        completion_tokens=0,
        route="resilient",
    )
    row(
        team,
        key,
        100,
        request_id="req_fallback",
        model="deepseek-v4-flash",
        attempt=1,
        route="resilient",
    )
    theirs, _ = api_key_create(team=other_team, name="theirs")
    row(other_team, theirs, 5, request_id="req_theirs", end_user="secret-customer")
    return key, batch


def signed_in(client, user):
    client.force_login(user)
    return client


def test_each_member_of_the_cast_sees_what_it_may(client, owner, member, outsider, ledger):
    assert client.get("/t/acme/usage/").status_code == 302  # anonymous: to the sign-in
    assert signed_in(client, owner).get("/t/acme/usage/").status_code == 200
    assert signed_in(client, member).get("/t/acme/usage/").status_code == 200
    assert signed_in(client, outsider).get("/t/acme/usage/").status_code == 404
    assert signed_in(client, outsider).get("/t/acme/usage/req_x1/").status_code == 404
    assert signed_in(client, owner).get("/t/acme/usage/req_theirs/").status_code == 404


def test_pages_go_by_keyset_through_every_row_once(client, member, ledger):
    client = signed_in(client, member)
    seen, url = [], "/t/acme/usage/"
    for _ in range(10):  # bounded: 62 rows are two pages
        if url is None:
            break
        page = client.get(url)
        seen += [r.request_id for r in page.context["rows"]]
        url = f"/t/acme/usage/?after={page.context['after']}" if page.context["more"] else None
    assert len(seen) == 62 and len({r for r in seen if r != "req_fallback"}) == 60
    assert "req_theirs" not in seen


@pytest.mark.parametrize(
    "sort, key",
    [
        ("newest", lambda r: (r.created_at, r.id)),
        ("oldest", lambda r: (-r.created_at.timestamp(), -r.id)),
        ("cost", lambda r: (r.cost_usd, r.id)),
        ("latency", lambda r: (-1 if r.latency_ms is None else r.latency_ms, r.id)),
    ],
)
def test_every_order_pages_by_keyset_through_every_row_once(client, member, ledger, sort, key):
    # Ties on the sorted value (many equal costs, missing latencies) page by id.
    for n, row_ in enumerate(UsageRecord.objects.filter(team__slug="acme").order_by("id")):
        UsageRecord.objects.filter(id=row_.id).update(
            cost_usd=Decimal(n % 7) / 1000, latency_ms=None if n % 5 == 0 else (n * 37) % 400
        )
    client = signed_in(client, member)
    seen, url = [], f"/t/acme/usage/?sort={sort}"
    for _ in range(10):
        if url is None:
            break
        page = client.get(url)
        seen += page.context["rows"]
        more = page.context["more"]
        url = f"/t/acme/usage/?sort={sort}&after={page.context['after']}" if more else None
    assert len(seen) == 62 == len({r.id for r in seen})
    assert [r.id for r in seen] == [r.id for r in sorted(seen, key=key, reverse=True)]


def test_an_unreadable_cursor_starts_from_the_top(client, member, ledger):
    client = signed_in(client, member)
    for after in ["garbage", "1e999999,5", "NaN,1", ",", "20260101T000000.000000Z,x"]:
        for sort in ["cost", "latency", "newest", "bogus"]:
            page = client.get(f"/t/acme/usage/?sort={sort}&after={after}")
            assert page.status_code == 200 and len(page.context["rows"]) == 50


def test_filters_show_exactly_the_matching_rows_and_the_csv_link_keeps_them(client, member, ledger):
    key, batch = ledger
    page = signed_in(client, member).get(f"/t/acme/usage/?key={batch.prefix}&status=ok")
    assert {r.api_key_id for r in page.context["rows"]} == {batch.id}
    assert (
        f"key={batch.prefix}&amp;status=ok".encode() in page.content
        or f"key={batch.prefix}" in page.context["query"]
    )
    assert page.context["query"] == f"key={batch.prefix}&status=ok"
    routed = client.get("/t/acme/usage/?route=resilient").context["rows"]
    assert [r.model for r in routed] == ["deepseek-v4-flash", "glm-5"] or len(routed) == 2


def test_unreadable_filters_are_explained_not_a_500(client, member, ledger):
    page = signed_in(client, member).get("/t/acme/usage/?start=2026-02-30&status=bogus")
    assert page.status_code == 200
    assert b"These filters cannot be read" in page.content and page.context["rows"] == []


def test_a_calls_page_shows_every_attempt_of_a_fallback(client, member, ledger):
    page = signed_in(client, member).get("/t/acme/usage/req_fallback/")
    assert page.status_code == 200
    assert [(a.attempt, a.model, a.status) for a in page.context["attempts"]] == [
        (0, "glm-5", "upstream_error"),
        (1, "deepseek-v4-flash", "ok"),
    ]
    assert b"upstream failure" in page.content and page.context["total"] == Decimal("0.000075")
