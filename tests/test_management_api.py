"""The management API: every read and write scoped to the caller's team and role."""

from datetime import datetime
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import api_key_authenticate, api_key_create
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db


def as_user(user):
    client = APIClient()
    client.force_login(user)
    return client


def as_key(secret):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def record(
    team,
    key,
    *,
    when,
    model="gpt-4o",
    cost="0.001",
    status="ok",
    prompt=10,
    completion=5,
    rid=None,
    **fields,
):
    return UsageRecord.objects.create(
        **fields,
        request_id=rid or f"req_{UsageRecord.objects.count()}",
        team=team,
        api_key=key,
        endpoint="chat",
        requested_model=model,
        model=model,
        provider="openai",
        status=status,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=Decimal(cost),
        created_at=when,
    )


def day(d, hour=12):
    return datetime(2026, 11, d, hour, tzinfo=dt_timezone.utc)


# --- keys ------------------------------------------------------------------------


def test_a_key_for_a_model_the_catalog_does_not_have_is_refused(owner, team, other_team, catalog):
    from routing.services import route_fields, route_save

    fields = route_fields({"name": "globex_only", "targets": ["gpt-4o"]})
    route_save(team=other_team, name=fields.pop("name"), fields=fields, actor="test")
    client = as_user(owner)
    for names in (["gtp-4o"], ["gpt-4o", "nonsense"], ["globex_only"]):
        answer = client.post(
            "/api/teams/acme/keys/", {"name": "svc", "allowed_models": names}, format="json"
        )
        assert answer.status_code == 400, names
        assert "Not a model or route in the catalog" in str(answer.data["allowed_models"])
    assert not ApiKey.objects.filter(team=team).exists()


def test_owner_creates_a_key_and_sees_its_secret_once(owner, team, catalog):
    client = as_user(owner)

    created = client.post(
        "/api/teams/acme/keys/", {"name": "svc", "allowed_models": ["gpt-4o"]}, format="json"
    )
    listed = client.get("/api/teams/acme/keys/")

    assert created.status_code == 201
    secret = created.data["secret"]
    assert api_key_authenticate(secret=secret).team_slug == "acme"
    assert [k["prefix"] for k in listed.data] == [created.data["prefix"]]
    assert "secret" not in listed.data[0] and "secret_hash" not in listed.data[0]
    assert ApiKey.objects.get(prefix=created.data["prefix"]).created_by == owner


def test_member_cannot_manage_keys(member):
    assert as_user(member).get("/api/teams/acme/keys/").status_code == 403
    assert (
        as_user(member).post("/api/teams/acme/keys/", {"name": "x"}, format="json").status_code
        == 403
    )


def test_outsider_sees_no_trace_of_the_team(outsider, team, inference_key):
    client = as_user(outsider)
    key, _ = inference_key
    for url in (
        "/api/teams/acme/keys/",
        "/api/teams/acme/usage/",
        "/api/teams/acme/usage/summary/",
    ):
        assert client.get(url).status_code == 404
    assert client.post(f"/api/teams/acme/keys/{key.prefix}/revoke/").status_code == 404
    assert [t["slug"] for t in client.get("/api/teams/").data] == ["globex"]


def test_anonymous_is_401_or_403():
    assert APIClient().get("/api/teams/").status_code in (401, 403)


def test_owner_revokes_a_key(owner, inference_key):
    key, _ = inference_key
    response = as_user(owner).post(f"/api/teams/acme/keys/{key.prefix}/revoke/")
    assert response.status_code == 200 and response.data["revoked_at"] is not None


def test_cannot_revoke_another_teams_key_by_prefix(owner, other_team):
    foreign, _ = api_key_create(team=other_team, name="theirs")
    assert as_user(owner).post(f"/api/teams/acme/keys/{foreign.prefix}/revoke/").status_code == 404
    foreign.refresh_from_db()
    assert foreign.revoked_at is None


def test_management_key_manages_its_own_team_only(management_key, other_team):
    _, secret = management_key
    client = as_key(secret)

    assert client.get("/api/teams/acme/keys/").status_code == 200
    assert client.post("/api/teams/acme/keys/", {"name": "ci"}, format="json").status_code == 201
    assert client.get("/api/teams/globex/keys/").status_code == 404


def test_management_key_cannot_mint_management_keys(management_key):
    _, secret = management_key
    response = as_key(secret).post(
        "/api/teams/acme/keys/", {"name": "x", "kind": "management"}, format="json"
    )
    assert response.status_code == 403


def test_inference_key_cannot_call_the_management_api(inference_key):
    _, secret = inference_key
    response = as_key(secret).get("/api/teams/acme/keys/")
    assert response.status_code == 401
    assert "Inference keys cannot call the management API" in response.data["detail"]


def test_invalid_key_payload_is_400(owner):
    response = as_user(owner).post(
        "/api/teams/acme/keys/", {"name": "", "rpm_limit": 0}, format="json"
    )
    assert response.status_code == 400 and {"name", "rpm_limit"} <= set(response.data)


# --- ledger and summary -------------------------------------------------------------


@pytest.fixture
def traffic(team, other_team, inference_key):
    key, _ = inference_key
    other_key, _ = api_key_create(team=team, name="batch")
    foreign_key, _ = api_key_create(team=other_team, name="theirs")
    record(team, key, when=day(1), model="gpt-4o", cost="0.003")
    record(team, key, when=day(1, 23), model="deepseek-v4-flash", cost="0.0001")
    record(
        team,
        other_key,
        when=day(2),
        model="deepseek-v4-flash",
        cost="0.0002",
        route="bulk_classify",
        end_user="alice",
    )
    record(
        team,
        other_key,
        when=day(3),
        model="gpt-4o",
        cost="0",
        status="upstream_error",
        prompt=0,
        completion=0,
    )
    record(other_team, foreign_key, when=day(2), model="gpt-4o", cost="9")
    return key, other_key


def test_ledger_lists_only_the_callers_team_newest_first(member, traffic):
    response = as_user(member).get("/api/teams/acme/usage/")

    assert response.status_code == 200
    assert [r["created_at"][:10] for r in response.data["results"]] == [
        "2026-11-03",
        "2026-11-02",
        "2026-11-01",
        "2026-11-01",
    ]
    assert response.data["results"][0]["cost_usd"] == "0.000000000000"


def test_ledger_filters(member, traffic):
    key, other_key = traffic
    client = as_user(member)

    def count(query):
        return len(client.get(f"/api/teams/acme/usage/?{query}").data["results"])

    assert count("start=2026-11-02") == 2
    assert count("start=2026-11-01&end=2026-11-02") == 2
    assert count("end=2026-11-01T23:00:00Z") == 1
    assert count(f"key={other_key.prefix}") == 2
    assert count("model=gpt-4o") == 2
    assert count("status=upstream_error") == 1
    assert count("route=bulk_classify") == 1
    assert count("end_user=alice") == 1
    for bad in (
        "status=bogus",
        "start=yesterday",
        "start=2026-02-30",
        "end=2026-11-01T25:00",
        "key=%00",
    ):
        response = client.get(f"/api/teams/acme/usage/?{bad}")
        assert response.status_code == 400 and response["content-type"] == "application/json", bad


def test_ledger_pages_by_keyset_through_every_row_once(member, traffic):
    client = as_user(member)
    seen, url = [], "/api/teams/acme/usage/?page_size=1"
    while url:
        page = client.get(url).data
        seen += [r["request_id"] for r in page["results"]]
        url = page["next"]
    assert len(seen) == len(set(seen)) == 4


def test_usage_csv_is_exactly_the_filtered_rows(member, outsider, traffic):
    import csv
    import io

    key, other_key = traffic
    response = as_user(member).get(f"/api/teams/acme/usage/export/?key={other_key.prefix}")

    assert response.status_code == 200 and response["content-type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    listed = as_user(member).get(f"/api/teams/acme/usage/?key={other_key.prefix}").data["results"]
    assert [r["request_id"] for r in rows] == [r["request_id"] for r in listed]
    assert {r["key"] for r in rows} == {other_key.prefix}
    assert [r["cost_usd"] for r in rows] == [r["cost_usd"] for r in listed]
    assert as_user(outsider).get("/api/teams/acme/usage/export/").status_code == 404
    assert as_user(member).get("/api/teams/acme/usage/export/?start=2026-13-01").status_code == 400


def test_summary_by_model_day_and_key(member, traffic):
    key, other_key = traffic
    client = as_user(member)

    by_model = {
        g["group"]: g for g in client.get("/api/teams/acme/usage/summary/?group_by=model").data
    }
    by_day = {g["group"]: g for g in client.get("/api/teams/acme/usage/summary/?group_by=day").data}
    by_key = {g["group"]: g for g in client.get("/api/teams/acme/usage/summary/?group_by=key").data}

    assert Decimal(by_model["gpt-4o"]["cost_usd"]) == Decimal("0.003")
    assert by_model["gpt-4o"]["requests"] == 2
    assert Decimal(by_model["deepseek-v4-flash"]["cost_usd"]) == Decimal("0.0003")
    assert {d: Decimal(g["cost_usd"]) for d, g in by_day.items()} == {
        "2026-11-01": Decimal("0.0031"),
        "2026-11-02": Decimal("0.0002"),
        "2026-11-03": Decimal("0"),
    }
    assert by_key[key.prefix]["requests"] == 2 and by_key[other_key.prefix]["prompt_tokens"] == 10
    assert client.get("/api/teams/acme/usage/summary/?group_by=week").status_code == 400


def test_summary_totals_equal_the_ledger(member, team, traffic):
    summary = as_user(member).get("/api/teams/acme/usage/summary/?group_by=model").data
    ledger = sum(r.cost_usd for r in UsageRecord.objects.filter(team=team))
    assert sum(Decimal(g["cost_usd"]) for g in summary) == ledger


def test_openapi_schema_is_served(owner):
    response = as_user(owner).get("/api/schema/")
    assert response.status_code == 200
    assert b"/api/teams/{slug}/usage/summary/" in response.content


# --- What the second hostile pass found ---------------------------------------------------


def test_a_member_cannot_read_the_webhook_or_where_alerts_went(owner, member, team):
    team.alert_webhook_url = "https://93.184.216.34/services/T0/B0/SECRETTOKEN"
    team.save()
    seen = as_user(member).get("/api/teams/acme/")
    assert seen.status_code == 200 and seen.data["alert_webhook_url"] is None
    assert as_user(member).get("/api/teams/acme/alerts/").status_code == 403
    assert "SECRETTOKEN" in as_user(owner).get("/api/teams/acme/").data["alert_webhook_url"]


def test_billing_sets_the_webhook_but_not_the_name(billing, team):
    client = as_user(billing)
    url = "https://93.184.216.34/hook"
    assert (
        client.patch("/api/teams/acme/", {"alert_webhook_url": url}, format="json").status_code
        == 200
    )
    assert client.patch("/api/teams/acme/", {"name": "Mine"}, format="json").status_code == 403
    team.refresh_from_db()
    assert (team.alert_webhook_url, team.name) == (url, "Acme")


@pytest.mark.parametrize("thresholds", [list(range(1, 12)), []])
def test_a_budget_takes_one_to_ten_thresholds(owner, team, thresholds):
    answer = as_user(owner).put(
        "/api/teams/acme/budget/", {"amount_usd": "10", "thresholds": thresholds}, format="json"
    )
    assert answer.status_code == 400 and "thresholds" in answer.data


def test_a_key_limit_beyond_the_column_is_refused(owner, team):
    answer = as_user(owner).post(
        "/api/teams/acme/keys/", {"name": "x", "rpm_limit": 2**31}, format="json"
    )
    assert answer.status_code == 400 and "rpm_limit" in answer.data


@pytest.mark.parametrize(
    "url, status",
    [
        ("/api/teams/acme/usage/?start=2026-11-01T00:00:00-20:00", 200),
        ("/api/teams/acme/usage/summary/?start=2026-11-01T00:00:00%2B23:59", 200),
        ("/api/teams/acme/usage/?cursor=cD0yMDI2", 404),
        ("/api/teams/acme/invoices/9999-12/?preview=1", 400),
        ("/api/teams/acme/invoices/2026-11%0A/?preview=1&format=csv", 400),
        ("/api/teams/acme/invoices/+2026-11/", 400),
        ("/api/teams/acme/invoices/２０２６-１１/", 400),
    ],
)
def test_forged_cursors_months_and_offsets_get_a_clear_answer(owner, team, url, status):
    answer = as_user(owner).get(url)
    assert answer.status_code == status, answer.content[:300]


def test_summary_by_endpoint_from_the_rollups_and_the_recent_rows(member, team):
    # Usage and invoices break down by the /v1 endpoint each call was made on: the rolled-up
    # days and the rows recorded since are summed per endpoint, agreeing with the ledger.
    from usage.rollups import rollup_advance

    def call(n, endpoint, cost, when):
        UsageRecord.objects.create(
            request_id=f"req_ep{n}",
            team=team,
            endpoint=endpoint,
            requested_model="m",
            model="m",
            provider="p",
            status="ok",
            prompt_tokens=10,
            input_per_mtok=Decimal("1"),
            cached_input_per_mtok=Decimal("1"),
            output_per_mtok=Decimal("1"),
            cost_usd=Decimal(cost),
            created_at=when,
            recorded_at=when,
        )

    day = datetime(2026, 11, 2, 12, tzinfo=dt_timezone.utc)
    call(1, "chat", "0.001", day)
    call(2, "responses", "0.002", day)
    call(3, "responses", "0.004", day)
    rollup_advance(now=datetime(2026, 11, 3, tzinfo=dt_timezone.utc))
    later = datetime(2026, 11, 3, 12, tzinfo=dt_timezone.utc)
    call(4, "responses", "0.008", later)  # not rolled up yet
    call(5, "moderations", "0", later)

    summary = as_user(member).get(
        "/api/teams/acme/usage/summary/?group_by=endpoint&start=2026-11-01&end=2026-11-04"
    )

    assert summary.status_code == 200
    by_endpoint = {g["group"]: (g["requests"], Decimal(g["cost_usd"])) for g in summary.data}
    assert by_endpoint == {
        "chat": (1, Decimal("0.001")),
        "responses": (3, Decimal("0.014")),
        "moderations": (1, Decimal("0")),
    }
    # One endpoint's calls only, by day, from the rollups and the recent rows alike.
    responses = as_user(member).get(
        "/api/teams/acme/usage/summary/?group_by=day&endpoint=responses"
        "&start=2026-11-01&end=2026-11-04"
    )
    assert [(g["group"], g["requests"], Decimal(g["cost_usd"])) for g in responses.data] == [
        ("2026-11-02", 2, Decimal("0.006")),
        ("2026-11-03", 1, Decimal("0.008")),
    ]
    bogus = as_user(member).get("/api/teams/acme/usage/summary/?endpoint=images")
    assert bogus.status_code == 400 and "endpoint" in bogus.data
