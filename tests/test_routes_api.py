"""Team routes through the management API and the admin, every change audited; compare runs."""

from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from routing.models import Route, RouteChange
from usage.models import UsageRecord


def as_user(user):
    client = APIClient()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_owner_overrides_a_global_route_and_the_change_is_recorded(catalog, owner, team):
    client = as_user(owner)

    created = client.post(
        "/api/teams/acme/routes/",
        {"name": "bulk_classify", "targets": ["glm-5", "qwen3-32b"]},
        format="json",
    )
    updated = client.put(
        "/api/teams/acme/routes/bulk_classify/",
        {"targets": ["qwen3-32b"], "strategy": "fallback"},
        format="json",
    )
    listed = {r["name"]: r for r in client.get("/api/teams/acme/routes/").data}

    assert created.status_code == 201 and updated.status_code == 200
    assert listed["bulk_classify"]["scope"] == "team" and listed["bulk_classify"]["targets"] == [
        "qwen3-32b"
    ]
    assert listed["code_review"]["scope"] == "global"
    first, second = RouteChange.objects.filter(team=team).order_by("id")
    assert (first.actor, first.before, first.after["targets"]) == (
        "owner@acme.test",
        None,
        ["glm-5", "qwen3-32b"],
    )
    assert (second.before["targets"], second.after["targets"]) == (
        ["glm-5", "qwen3-32b"],
        ["qwen3-32b"],
    )
    changes = client.get("/api/teams/acme/routes/changes/").data
    assert [c["after"]["targets"] if c["after"] else None for c in changes] == [
        ["qwen3-32b"],
        ["glm-5", "qwen3-32b"],
    ]
    # The global route is untouched.
    assert Route.objects.get(team=None, name="bulk_classify").targets == [
        "deepseek-v4-flash",
        "qwen3-32b",
    ]


@pytest.mark.django_db
def test_deleting_a_team_route_restores_the_global_one(catalog, owner, team):
    client = as_user(owner)
    client.post(
        "/api/teams/acme/routes/", {"name": "bulk_classify", "targets": ["glm-5"]}, format="json"
    )

    assert client.delete("/api/teams/acme/routes/bulk_classify/").status_code == 204
    assert (
        client.delete("/api/teams/acme/routes/code_review/").status_code == 404
    )  # global: catalog only

    listed = {r["name"]: r for r in client.get("/api/teams/acme/routes/").data}
    assert listed["bulk_classify"]["scope"] == "global"
    assert RouteChange.objects.filter(team=team).latest("id").after is None


@pytest.mark.django_db
def test_unchanged_save_records_nothing(catalog, owner, team):
    client = as_user(owner)
    body = {"name": "mine", "targets": ["glm-5"]}
    client.post("/api/teams/acme/routes/", body, format="json")
    client.put("/api/teams/acme/routes/mine/", body, format="json")
    assert RouteChange.objects.filter(team=team).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "x", "targets": ["gpt-9"]}, "unknown targets"),
        ({"name": "x", "targets": ["glm-5"], "strategy": "weighted", "weights": [1, 2]}, "weight"),
        ({"name": "x", "targets": []}, "targets"),
        ({"name": "x", "targets": ["glm-5"], "strategy": "random"}, "strategy"),
    ],
)
def test_invalid_routes_are_400(catalog, owner, body, field):
    response = as_user(owner).post("/api/teams/acme/routes/", body, format="json")
    assert response.status_code == 400 and field in str(response.data)
    assert not Route.objects.filter(name="x").exists()


@pytest.mark.django_db
def test_member_reads_routes_but_cannot_change_them_and_outsider_sees_nothing(
    catalog, member, outsider, team
):
    assert as_user(member).get("/api/teams/acme/routes/").status_code == 200
    assert (
        as_user(member)
        .post("/api/teams/acme/routes/", {"name": "x", "targets": ["glm-5"]}, format="json")
        .status_code
        == 403
    )
    assert as_user(outsider).get("/api/teams/acme/routes/").status_code == 404


@pytest.mark.django_db
def test_management_key_changes_are_attributed_to_the_key(catalog, management_key, team):
    key, secret = management_key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    client.post("/api/teams/acme/routes/", {"name": "mine", "targets": ["glm-5"]}, format="json")
    assert RouteChange.objects.get(team=team).actor == f"key {key.prefix}"


@pytest.mark.django_db
def test_admin_edit_of_a_route_is_recorded(catalog, admin_client):
    route = Route.objects.get(team=None, name="cheap_chat")
    response = admin_client.post(
        f"/admin/routing/route/{route.pk}/change/",
        {
            "name": "cheap_chat",
            "strategy": "cheapest",
            "targets": '["qwen3-32b", "deepseek-v4-flash"]',
            "weights": "[]",
            "require": "{}",
            "capabilities": "[]",
            "deadline_s": 30,
            "retries": 1,
        },
    )
    assert response.status_code == 302, response.content[:2000]
    change = RouteChange.objects.get(route_name="cheap_chat", actor="admin")
    assert (change.before["strategy"], change.after["strategy"]) == ("fallback", "cheapest")


@pytest.mark.django_db(transaction=True)
def test_compare_runs_one_prompt_on_several_models_and_bills_the_team(
    catalog, owner, team, upstream
):
    response = as_user(owner).post(
        "/api/teams/acme/compare/",
        {
            "models": ["gpt-4o", "deepseek-v4-flash"],
            "messages": [{"role": "user", "content": "Summarise: ..."}],
            "max_tokens": 100,
        },
        format="json",
    )

    assert response.status_code == 200
    results = {r["model"]: r for r in response.data}
    assert results["gpt-4o"]["answer"] == "Hello from the fake upstream"
    assert Decimal(results["gpt-4o"]["cost_usd"]) == Decimal("0.00037")
    assert Decimal(results["deepseek-v4-flash"]["cost_usd"]) == Decimal("0.00001066")
    assert (
        results["deepseek-v4-flash"]["prompt_tokens"] == 12
        and results["gpt-4o"]["latency_ms"] is not None
    )
    billed = UsageRecord.objects.filter(team=team, status="ok")
    assert sorted(billed.values_list("model", flat=True)) == ["deepseek-v4-flash", "gpt-4o"]
    assert all(r.api_key_id is None and r.end_user == "compare by owner@acme.test" for r in billed)
    assert {r.body["max_tokens"] for r in upstream.received} == {100}


@pytest.mark.django_db(transaction=True)
def test_compare_reports_a_failing_model_without_failing_the_others(catalog, owner, upstream):
    from tests.fake_upstream import Fail

    upstream.script("gpt-4o", Fail(500, "overloaded"))
    response = as_user(owner).post(
        "/api/teams/acme/compare/",
        {
            "models": ["gpt-4o", "deepseek-v4-flash", "deepseek-coder"],
            "messages": [{"role": "user", "content": "hi"}],
        },
        format="json",
    )

    results = {r["model"]: r for r in response.data}
    assert results["deepseek-v4-flash"]["ok"] is True
    assert results["gpt-4o"]["ok"] is False and "overloaded" in results["gpt-4o"]["error"]
    assert (
        results["deepseek-coder"]["ok"] is False
        and "no input price" in results["deepseek-coder"]["error"]
    )


@pytest.mark.django_db
def test_compare_refuses_unknown_models_and_members(catalog, owner, member):
    body = {"models": ["gpt-9"], "messages": [{"role": "user", "content": "hi"}]}
    assert as_user(owner).post("/api/teams/acme/compare/", body, format="json").status_code == 400
    assert as_user(member).post("/api/teams/acme/compare/", body, format="json").status_code == 403


@pytest.mark.django_db
def test_a_route_named_with_a_slash_is_changed_and_deleted_through_the_api(catalog, owner, team):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(owner)
    body = {"name": "support/tier-1", "strategy": "fallback", "targets": ["glm-5"]}
    assert client.post("/api/teams/acme/routes/", body, format="json").status_code == 201
    changed = {"strategy": "fallback", "targets": ["glm-5", "kimi-k2.5"]}
    answer = client.put("/api/teams/acme/routes/support/tier-1/", changed, format="json")
    assert answer.status_code == 200 and answer.data["targets"] == ["glm-5", "kimi-k2.5"]
    assert client.delete("/api/teams/acme/routes/support/tier-1/").status_code in (200, 204)
    assert client.delete("/api/teams/acme/routes/support/tier-1/").status_code == 404
