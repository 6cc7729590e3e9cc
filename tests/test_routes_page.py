"""The Routes page: everyone reads routes and their audit trail; owners and admins change
the team's routes through a form that validates as the API does."""

import pytest
from rest_framework.test import APIClient

from routing.models import Route, RouteChange
from routing.services import route_fields, route_save
from tests.pages import row_of, sign_in, tables, text

pytestmark = pytest.mark.django_db

FORM = {
    "strategy": "fallback",
    "target_1": "glm-5",
    "target_2": "qwen3-32b",
    "deadline_s": "30",
    "retries": "1",
}


def team_route(team, name, targets, actor="setup", **extra):
    fields = route_fields({"name": name, "targets": targets, **extra})
    fields.pop("name")
    return route_save(team=team, name=name, fields=fields, actor=actor)


@pytest.fixture
def globex_route(other_team):
    return team_route(other_team, "globex_secret", ["kimi-k2.5"], actor="owner@globex.test")


@pytest.fixture
def acme_route(team):
    return team_route(team, "summaries", ["glm-5", "kimi-k2.5"], actor="owner@acme.test")


# --- Who may open what ------------------------------------------------------------------


@pytest.mark.parametrize(
    "who, status",
    [("owner", 200), ("admin", 200), ("billing", 200), ("member", 200), ("outsider", 404)],
)
def test_every_role_reads_routes_and_outsiders_get_404(
    catalog, client, request, who, status, acme_route
):
    page = sign_in(client, request, who).get("/t/acme/routes/")
    assert page.status_code == status


PAGES = [
    "/t/acme/routes/new/",
    "/t/acme/routes/summaries/edit/",
    "/t/acme/routes/summaries/delete/",
]


@pytest.mark.parametrize("url", PAGES)
@pytest.mark.parametrize(
    "who, status",
    [("owner", 200), ("admin", 200), ("billing", 404), ("member", 404), ("outsider", 404)],
)
def test_only_owners_and_admins_open_the_route_forms(
    catalog, client, request, who, status, url, acme_route
):
    assert sign_in(client, request, who).get(url).status_code == status


@pytest.mark.parametrize("url", ["/t/acme/routes/", *PAGES])
def test_anonymous_is_sent_to_sign_in(catalog, client, team, acme_route, url):
    response = client.get(url)
    assert response.status_code == 302 and response.url.startswith("/login/")


@pytest.mark.parametrize("who", ["member", "billing", "outsider"])
def test_no_one_else_can_change_routes_by_posting_either(catalog, client, request, who, acme_route):
    client = sign_in(client, request, who)

    created = client.post("/t/acme/routes/new/", {**FORM, "name": "mine"})
    edited = client.post("/t/acme/routes/summaries/edit/", {**FORM})
    deleted = client.post("/t/acme/routes/summaries/delete/")

    assert (created.status_code, edited.status_code, deleted.status_code) == (404, 404, 404)
    acme_route.refresh_from_db()
    assert acme_route.targets == ["glm-5", "kimi-k2.5"]
    assert not Route.objects.filter(name="mine").exists()
    assert RouteChange.objects.filter(team=acme_route.team).count() == 1  # the set-up only


def test_member_sees_routes_without_controls_to_change_them(catalog, client, member, acme_route):
    client.force_login(member)
    html = client.get("/t/acme/routes/").content.decode()
    assert "summaries" in html
    assert "New team route" not in html and "Edit summaries" not in html and "Override" not in html


# --- What the page shows ------------------------------------------------------------------


def test_page_lists_team_and_global_routes_and_marks_overridden_ones(catalog, client, member, team):
    team_route(team, "bulk_classify", ["qwen3-32b"], strategy="fallback")
    team_route(
        team,
        "split",
        ["glm-5", "deepseek-coder"],
        strategy="weighted",
        weights=[3, 1],
        require={"ceval": 90.0},
        capabilities=["json"],
    )
    client.force_login(member)

    own, global_, changes = tables(client.get("/t/acme/routes/").content)

    assert row_of(own, "split")[1:4] == [
        "weighted",
        "glm-5 (weight 3), deepseek-coder (weight 1) (unpriced: skipped)",
        "C-Eval ≥ 90.0; has json",
    ]
    assert row_of(own, "split")[4:6] == ["60 s", "1"]
    assert row_of(global_, "bulk_classify")[-1] == "overridden by the team's own route"
    assert row_of(global_, "code_review")[2] == "gpt-4o, claude-3.5-sonnet"
    assert len(changes) == 3  # a header and two creations


def test_no_other_teams_routes_or_changes_appear(catalog, client, owner, globex_route):
    client.force_login(owner)

    html = client.get("/t/acme/routes/").content.decode()

    assert "globex_secret" not in html and "owner@globex.test" not in html
    assert client.get("/t/acme/routes/globex_secret/edit/").status_code == 404
    assert client.get("/t/acme/routes/globex_secret/delete/").status_code == 404
    assert client.post("/t/acme/routes/globex_secret/delete/").status_code == 404
    assert client.get("/t/globex/routes/").status_code == 404
    assert Route.objects.filter(name="globex_secret").exists()


# --- Creating, editing, deleting --------------------------------------------------------


def test_owner_creates_a_route_and_the_trail_names_them(catalog, client, owner, team):
    client.force_login(owner)

    response = client.post("/t/acme/routes/new/", {**FORM, "name": "summaries"})

    assert response.status_code == 302 and response.url == "/t/acme/routes/"
    route = Route.objects.get(team=team, name="summaries")
    assert (route.strategy, route.targets, route.deadline_s, route.retries) == (
        "fallback",
        ["glm-5", "qwen3-32b"],
        30,
        1,
    )
    change = RouteChange.objects.get(team=team)
    assert (change.actor, change.before, change.after["targets"]) == (
        "owner@acme.test",
        None,
        ["glm-5", "qwen3-32b"],
    )
    page = client.get(response.url)
    assert "Route summaries created." in text(page)
    trail = tables(page.content)[-1]
    assert trail[1][1:4] == ["owner@acme.test", "summaries", "created"]


def test_admin_edit_is_recorded_with_before_and_after(catalog, client, admin, team, acme_route):
    client.force_login(admin)

    form = client.get("/t/acme/routes/summaries/edit/").context["form"]
    assert (form["target_1"].value(), form["target_2"].value()) == ("glm-5", "kimi-k2.5")
    response = client.post(
        "/t/acme/routes/summaries/edit/",
        {**FORM, "target_1": "qwen3-32b", "target_2": "glm-5", "deadline_s": "45"},
    )

    assert response.status_code == 302
    change = RouteChange.objects.filter(team=team).latest("id")
    assert change.actor == "admin@acme.test"
    assert (change.before["targets"], change.after["targets"]) == (
        ["glm-5", "kimi-k2.5"],
        ["qwen3-32b", "glm-5"],
    )
    trail = tables(client.get("/t/acme/routes/").content)[-1]
    assert trail[1][1:4] == ["admin@acme.test", "summaries", "changed"]
    assert trail[1][4] == "targets: glm-5, kimi-k2.5 → qwen3-32b, glm-5 deadline (s): 60 → 45"


def test_saving_an_unchanged_route_records_nothing(catalog, client, owner, team, acme_route):
    client.force_login(owner)
    client.post(
        "/t/acme/routes/summaries/edit/",
        {**FORM, "target_1": "glm-5", "target_2": "kimi-k2.5", "deadline_s": "60"},
    )
    assert RouteChange.objects.filter(team=team).count() == 1


def test_a_typod_target_is_refused_beside_its_field(catalog, client, owner, team):
    client.force_login(owner)

    page = client.post("/t/acme/routes/new/", {**FORM, "name": "x", "target_2": "qwen3-23b"})

    assert page.status_code == 200
    assert page.context["form"].errors["target_2"] == [
        "“qwen3-23b” is not a model in the catalog; pick one from the list."
    ]
    assert "“qwen3-23b” is not a model in the catalog" in text(page)
    assert not Route.objects.filter(name="x").exists()
    assert not RouteChange.objects.filter(team=team).exists()


def test_a_route_may_not_take_a_models_id(catalog, client, owner, team):
    client.force_login(owner)

    page = client.post("/t/acme/routes/new/", {**FORM, "name": "gpt-4o"})

    assert page.context["form"].errors["name"] == [
        "A model has that id; give the route another name."
    ]
    assert not Route.objects.filter(team=team).exists()


def test_a_weighted_route_needs_a_weight_beside_each_target(catalog, client, owner, team):
    client.force_login(owner)

    missing = client.post(
        "/t/acme/routes/new/", {**FORM, "name": "w", "strategy": "weighted", "weight_1": "3"}
    )
    saved = client.post(
        "/t/acme/routes/new/",
        {**FORM, "name": "w", "strategy": "weighted", "weight_1": "3", "weight_2": "1"},
    )

    assert missing.context["form"].errors == {
        "weight_2": ["A weighted route needs a weight for each target."]
    }
    assert saved.status_code == 302
    assert Route.objects.get(team=team, name="w").weights == [3, 1]


def test_floors_and_capabilities_are_saved(catalog, client, owner, team):
    client.force_login(owner)

    client.post(
        "/t/acme/routes/new/",
        {
            **FORM,
            "name": "careful",
            "strategy": "cheapest",
            "floor_humaneval": "91.5",
            "capabilities": ["vision", "json"],
        },
    )

    route = Route.objects.get(team=team, name="careful")
    assert (route.require, route.capabilities) == ({"humaneval": 91.5}, ["json", "vision"])


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"target_1": "", "target_2": ""}, "target_1", "Pick at least one target model."),
        ({"deadline_s": "0"}, "deadline_s", "greater than or equal to 1"),
        ({"deadline_s": "601"}, "deadline_s", "less than or equal to 600"),
        ({"retries": "6"}, "retries", "less than or equal to 5"),
        ({"strategy": "random"}, "strategy", "Select a valid choice"),
        ({"weight_1": "-1"}, "weight_1", "greater than or equal to 0"),
        ({"floor_mmlu": "nan"}, "floor_mmlu", "Enter a number."),
        ({"name": ""}, "name", "This field is required."),
        ({"name": "x" * 101}, "name", "at most 100 characters"),
    ],
)
def test_bad_input_is_a_sentence_beside_its_field_never_a_500(
    catalog, client, owner, team, change, field, message
):
    client.force_login(owner)

    page = client.post("/t/acme/routes/new/", {"name": "x", **FORM, **change})

    assert page.status_code == 200
    assert message in " ".join(page.context["form"].errors[field])
    assert not Route.objects.filter(team=team).exists()


def test_the_form_refuses_what_the_api_refuses_with_the_same_sentence(catalog, client, owner):
    api = APIClient()
    api.force_login(owner)
    client.force_login(owner)

    by_api = api.post(
        "/api/teams/acme/routes/", {"name": "gpt-4o", "targets": ["glm-5"]}, format="json"
    )
    by_form = client.post("/t/acme/routes/new/", {**FORM, "name": "gpt-4o"})

    assert by_api.status_code == 400
    sentence = by_form.context["form"].errors["name"][0].rstrip(".").lower()
    assert sentence in str(by_api.data["detail"]).lower()


def test_a_second_route_of_the_same_name_is_refused(catalog, client, owner, acme_route):
    client.force_login(owner)
    page = client.post("/t/acme/routes/new/", {**FORM, "name": "summaries"})
    assert page.context["form"].errors["name"] == [
        "This team already has a route of that name; edit it instead."
    ]
    acme_route.refresh_from_db()
    assert acme_route.targets == ["glm-5", "kimi-k2.5"]


def test_a_global_route_is_overridden_from_a_form_filled_with_it(catalog, client, owner, team):
    client.force_login(owner)

    form = client.get("/t/acme/routes/new/?from=bulk_classify").context["form"]
    data = {name: form[name].value() for name in ("name", "strategy", "deadline_s", "retries")}
    assert (data["name"], form["target_1"].value(), form["target_2"].value()) == (
        "bulk_classify",
        "deepseek-v4-flash",
        "qwen3-32b",
    )
    client.post("/t/acme/routes/new/", {**FORM, "name": "bulk_classify", "target_2": ""})

    assert Route.objects.get(team=team, name="bulk_classify").targets == ["glm-5"]
    assert Route.objects.get(team=None, name="bulk_classify").targets == [
        "deepseek-v4-flash",
        "qwen3-32b",
    ]


def test_editing_a_long_route_keeps_every_target(catalog, client, owner, team):
    targets = ["glm-5", "kimi-k2.5", "qwen3-32b", "gpt-4o", "gpt-4o-mini", "gemini-1.5-pro"]
    targets += ["claude-3.5-sonnet", "deepseek-v4-flash"]
    team_route(team, "everything", targets)
    client.force_login(owner)

    form = client.get("/t/acme/routes/everything/edit/").context["form"]
    posted = {f"target_{i}": form[f"target_{i}"].value() or "" for i in range(1, form.slots + 1)}
    client.post(
        "/t/acme/routes/everything/edit/",
        {**posted, "strategy": "fallback", "deadline_s": "60", "retries": "1"},
    )

    assert form.slots == 10
    assert Route.objects.get(team=team, name="everything").targets == targets
    assert RouteChange.objects.filter(team=team).count() == 1


def test_delete_asks_first_then_deletes_and_records_it(catalog, client, admin, team):
    team_route(team, "bulk_classify", ["glm-5"])
    client.force_login(admin)

    confirm = client.get("/t/acme/routes/bulk_classify/delete/")
    assert "use the global route of that name again" in text(confirm)
    assert Route.objects.filter(team=team, name="bulk_classify").exists()

    response = client.post("/t/acme/routes/bulk_classify/delete/", follow=True)

    assert response.redirect_chain == [("/t/acme/routes/", 302)]
    assert not Route.objects.filter(team=team, name="bulk_classify").exists()
    change = RouteChange.objects.filter(team=team).latest("id")
    assert (change.actor, change.after) == ("admin@acme.test", None)
    assert "calls naming it now use the global route" in text(response)
    assert tables(response.content)[-1][1][1:4] == ["admin@acme.test", "bulk_classify", "deleted"]


def test_a_route_name_with_a_slash_can_be_edited_and_deleted(catalog, client, owner, team):
    team_route(team, "support/tier-1", ["glm-5"])
    client.force_login(owner)

    assert (
        'href="/t/acme/routes/support/tier-1/edit/"'
        in client.get("/t/acme/routes/").content.decode()
    )
    assert client.get("/t/acme/routes/support/tier-1/edit/").status_code == 200
    client.post("/t/acme/routes/support/tier-1/delete/")
    assert not Route.objects.filter(team=team).exists()


def test_a_flood_of_target_fields_is_bounded(catalog, client, owner, team):
    client.force_login(owner)
    # Under Django's own limit of 1,000 fields a request (past it: a 400).
    flood = {f"target_{i}": "glm-5" for i in range(1, 900)}

    page = client.post("/t/acme/routes/new/", {**FORM, **flood, "name": "flood"})

    assert page.status_code == 302
    assert len(Route.objects.get(team=team, name="flood").targets) == 50


@pytest.mark.parametrize("name", [".", "..", "a/../b", "a//b", "/lead", "trail/", "-x", "x" * 101])
def test_a_route_name_a_browser_would_rewrite_is_refused(catalog, client, owner, team, name):
    client.force_login(owner)
    page = client.post("/t/acme/routes/new/", {**FORM, "name": name})
    assert page.status_code == 200 and "id_name_error" in page.content.decode()
    assert not Route.objects.filter(team=team).exists()
