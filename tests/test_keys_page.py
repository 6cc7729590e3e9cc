"""The keys page: issued from the catalog, secret shown once (post/redirect/get), revoked after
a confirmation, for owners and admins only, never showing another team's keys."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import InvalidKey, api_key_authenticate, api_key_create
from tests.factories import MembershipFactory
from tests.factories import global_route as make_global_route
from tests.pages import CAST, assert_accessible, expected_status, outline, sign_in_as
from usage.models import Budget, UsageRecord

pytestmark = pytest.mark.django_db

KEYS = "/t/acme/keys/"


def issue(client, **fields):
    """POST the inference key form with `fields` (without the form prefix)."""
    data = {"kind": "inference", "key-budget_kind": "hard"}
    for name, value in fields.items():
        data[f"key-{name}"] = value
    return client.post(KEYS, data)


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


# --- the standing cast ----------------------------------------------------------------


@pytest.mark.parametrize("who", CAST)
def test_keys_page_answers_each_of_the_standing_cast(request, client, team, who):
    sign_in_as(request, client, who)
    response = client.get(KEYS)
    assert response.status_code == expected_status(who)
    if who == "anonymous":
        assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("who", CAST)
def test_only_owners_and_admins_issue_keys(request, client, team, who):
    sign_in_as(request, client, who)
    response = issue(client, name="by-" + who)
    assert response.status_code == (302 if who in ("owner", "admin", "anonymous") else 404)
    created = ApiKey.objects.filter(name="by-" + who).exists()
    assert created == (who in ("owner", "admin"))


@pytest.mark.parametrize("who", CAST)
def test_only_owners_and_admins_revoke_keys(request, client, team, inference_key, who):
    key, _ = inference_key
    sign_in_as(request, client, who)
    url = f"/t/acme/keys/{key.prefix}/revoke/"

    assert client.get(url).status_code == expected_status(who)
    client.post(url)

    key.refresh_from_db()
    assert (key.revoked_at is not None) == (who in ("owner", "admin"))


def test_another_teams_keys_never_appear_and_cannot_be_revoked_by_prefix(owner_client, other_team):
    theirs, _ = api_key_create(team=other_team, name="globex-secret-bot")
    url = f"/t/acme/keys/{theirs.prefix}/revoke/"

    page = owner_client.get(KEYS).content.decode()

    assert theirs.prefix not in page and "globex-secret-bot" not in page
    assert owner_client.get(url).status_code == 404
    assert owner_client.post(url).status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


# --- issuing: post/redirect/get, the secret once ----------------------------------------


def test_the_secret_is_shown_once_after_the_redirect_and_a_reload_issues_nothing(
    owner_client, catalog
):
    posted = issue(owner_client, name="support-bot")

    assert posted.status_code == 302 and posted["Location"] == KEYS
    key = ApiKey.objects.get()
    first = owner_client.get(KEYS)
    secret = outline(first.content.decode()).texts["new-key-secret-1"].strip()
    assert secret.startswith(key.prefix + "_")
    assert api_key_authenticate(secret=secret).key_id == key.id
    text = first.content.decode()
    assert 'data-copy="new-key-secret-1"' in text and "it will not be shown again" in text
    assert "no-store" in first["Cache-Control"]

    reload = owner_client.get(KEYS)

    assert secret not in reload.content.decode() and "new-key-secret" not in reload.content.decode()
    assert ApiKey.objects.count() == 1


def test_two_keys_issued_before_the_page_shows_each_show_their_secret_once(owner_client, catalog):
    # Two tabs, or a double click: both POSTs land before either redirect is followed.
    issue(owner_client, name="tab-one")
    issue(owner_client, name="tab-two")

    page = outline(owner_client.get(KEYS).content.decode())
    secrets = {page.texts["new-key-secret-1"].strip(), page.texts["new-key-secret-2"].strip()}

    assert {api_key_authenticate(secret=s).key_id for s in secrets} == set(
        ApiKey.objects.values_list("id", flat=True)
    )
    assert "new-key-secret" not in owner_client.get(KEYS).content.decode()


def test_a_secret_issued_in_one_team_is_not_shown_on_another_teams_page(client, owner, other_team):
    MembershipFactory(team=other_team, user=owner, role="owner")
    client.force_login(owner)
    issue(client, name="acme-bot")

    elsewhere = client.get("/t/globex/keys/").content.decode()
    here = client.get(KEYS).content.decode()

    assert "new-key-secret" not in elsewhere
    assert "new-key-secret" in here


def test_models_and_routes_are_offered_from_the_catalog_and_stored(owner_client, catalog, team):
    page = owner_client.get(KEYS).content.decode()
    for name in ("gpt-4o", "deepseek-v4-flash", "bulk_classify", "cheap_chat"):
        assert f'value="{name}"' in page
    assert "<legend>Models</legend>" in page and "<legend>Routes</legend>" in page

    issue(
        owner_client, name="picker", models=["gpt-4o", "deepseek-v4-flash"], routes=["cheap_chat"]
    )

    key = ApiKey.objects.get(name="picker")
    assert key.allowed_models == ["cheap_chat", "deepseek-v4-flash", "gpt-4o"]


def test_an_unknown_model_is_refused_with_a_readable_message(owner_client, catalog):
    page = issue(owner_client, name="typo", models=["gpt-4o", "gpt-99"])

    assert page.status_code == 200
    text = page.content.decode()
    assert "“gpt-99” is not a model in the catalog." in text
    assert "The key was not issued" in text
    assert 'value="typo"' in text  # what was typed is kept
    assert not ApiKey.objects.exists()


def test_a_route_of_another_team_is_neither_offered_nor_accepted(owner_client, catalog, other_team):
    from routing.services import route_fields, route_save

    fields = route_fields({"name": "globex_only", "targets": ["gpt-4o"]})
    route_save(team=other_team, name=fields.pop("name"), fields=fields, actor="test")
    make_global_route("everyone_route", ["gpt-4o"])

    page = owner_client.get(KEYS).content.decode()
    refused = issue(owner_client, name="sneaky", routes=["globex_only"])

    assert "globex_only" not in page and 'value="everyone_route"' in page
    assert "“globex_only” is not a route this team can use." in refused.content.decode()
    assert not ApiKey.objects.filter(name="sneaky").exists()


def test_a_model_name_is_not_accepted_as_a_route(owner_client, catalog):
    # Each list is checked against its own part of the catalog.
    page = issue(owner_client, name="mixed", routes=["gpt-4o"])
    assert "“gpt-4o” is not a route this team can use." in page.content.decode()


def test_a_budget_creates_the_keys_monthly_budget_and_the_list_shows_it(owner_client, team):
    issue(owner_client, name="capped", budget_usd="25", budget_kind="soft", rpm_limit="60")

    key = ApiKey.objects.get(name="capped")
    budget = Budget.objects.get(team=team, api_key=key)
    assert (budget.amount_usd, budget.hard, key.rpm_limit) == (Decimal("25"), False, 60)
    page = owner_client.get(KEYS).content.decode()
    assert "$25.00 soft" in page and "60 RPM" in page


def test_no_budget_means_no_key_budget(owner_client, team):
    issue(owner_client, name="free")
    assert not Budget.objects.filter(team=team).exists()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"name": ""}, "Give the key a name of up to 100 characters."),
        ({"name": "x" * 101}, "Ensure this value has at most 100 characters"),
        ({"name": "x", "budget_usd": "-1"}, "greater than or equal to 0"),
        ({"name": "x", "budget_usd": "ten"}, "Enter a number."),
        ({"name": "x", "rpm_limit": "0"}, "greater than or equal to 1"),
        ({"name": "x", "tpm_limit": "99999999999"}, "less than or equal to 2147483647"),
        ({"name": "x", "budget_kind": "maybe"}, "Select a valid choice"),
        ({"name": "x", "expires_on": "2026-02-30"}, "Enter a valid date."),
    ],
)
def test_bad_fields_are_explained_beside_the_field_and_issue_nothing(owner_client, fields, message):
    page = issue(owner_client, **fields)

    assert page.status_code == 200
    assert message in page.content.decode()
    assert 'class="errorlist' in page.content.decode()
    assert not ApiKey.objects.exists()


def test_the_expiry_must_be_after_today(owner_client):
    today = timezone.now().astimezone(UTC).date()

    refused = issue(owner_client, name="today", expires_on=today.isoformat())
    issue(owner_client, name="tomorrow", expires_on=(today + timedelta(days=1)).isoformat())

    assert "Pick a day after today" in refused.content.decode()
    assert not ApiKey.objects.filter(name="today").exists()
    key = ApiKey.objects.get(name="tomorrow")
    assert key.expires_at == datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)


def test_a_billing_management_key_is_issued_from_the_page(owner_client):
    posted = owner_client.post(
        KEYS, {"kind": "management", "mgmt-name": "finance", "mgmt-role": "billing"}
    )

    key = ApiKey.objects.get()
    assert posted.status_code == 302 and (key.kind, key.role) == ("management", "billing")
    page = owner_client.get(KEYS).content.decode()
    secret = outline(page).texts["new-key-secret-1"].strip()
    assert api_key_authenticate(secret=secret).role == "billing"


def test_a_management_key_with_an_unknown_role_is_refused(owner_client):
    page = owner_client.post(KEYS, {"kind": "management", "mgmt-name": "x", "mgmt-role": "owner"})
    assert "Pick one of the roles offered" in page.content.decode()
    assert not ApiKey.objects.exists()


def test_an_admin_issues_admin_keys_but_not_billing_keys(client, admin):
    # An admin may not read invoices, so may not mint a key that does.
    client.force_login(admin)
    offered = client.get(KEYS).content.decode()

    refused = client.post(KEYS, {"kind": "management", "mgmt-name": "fin", "mgmt-role": "billing"})
    issued = client.post(KEYS, {"kind": "management", "mgmt-name": "ops", "mgmt-role": "admin"})

    assert 'name="mgmt-role" value="billing"' not in offered
    assert 'name="mgmt-role" value="admin"' in offered
    assert "only an owner issues billing keys" in refused.content.decode()
    assert issued.status_code == 302
    assert list(ApiKey.objects.values_list("name", "role")) == [("ops", "admin")]


# --- the list ---------------------------------------------------------------------------


def test_the_list_shows_this_months_spend_last_use_limits_and_status(owner_client, team):
    key, secret = api_key_create(
        team=team, name="worker", allowed_models=["gpt-4o"], tpm_limit=5000
    )
    old, _ = api_key_create(team=team, name="old")
    old.revoked_at = timezone.now()
    old.save()
    now = timezone.now()
    month_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for rid, when, cost in (
        ("req_this1", now, "1.25"),
        ("req_this2", month_start, "0.10"),
        ("req_last", month_start - timedelta(seconds=1), "9"),  # last month: not counted
    ):
        UsageRecord.objects.create(
            request_id=rid,
            team=team,
            api_key=key,
            endpoint="chat",
            requested_model="gpt-4o",
            model="gpt-4o",
            status="ok",
            cost_usd=Decimal(cost),
            created_at=when,
        )
    api_key_authenticate(secret=secret)  # marks it used

    page = owner_client.get(KEYS).content.decode()

    row = page[page.index(key.prefix) : page.index("</tr>", page.index(key.prefix))]
    assert "$1.35" in row and "5,000 TPM" in row and "gpt-4o" in row and "active" in row
    assert f"{now:%Y-%m-%d}" in row  # last used: the only date in the row
    old_row = page[page.index(old.prefix) : page.index("</tr>", page.index(old.prefix))]
    assert "revoked" in old_row and "Revoke" not in old_row


def test_the_list_scrolls_inside_its_box_and_every_field_has_a_label(owner_client, catalog, team):
    api_key_create(team=team, name="a" * 100, allowed_models=["gpt-4o"])
    assert_accessible(owner_client.get(KEYS).content.decode())


def test_an_expired_key_says_so(owner_client, team):
    key, _ = api_key_create(team=team, name="gone", expires_at=timezone.now() + timedelta(days=1))
    ApiKey.objects.filter(id=key.id).update(expires_at=timezone.now() - timedelta(minutes=1))
    page = owner_client.get(KEYS).content.decode()
    row = page[page.index(key.prefix) : page.index("</tr>", page.index(key.prefix))]
    assert "expired" in row


# --- revoking, after a confirmation ----------------------------------------------------------


def test_revoke_asks_first_naming_the_key_then_revokes(owner_client, team):
    key, secret = api_key_create(team=team, name="support-bot")
    url = f"/t/acme/keys/{key.prefix}/revoke/"

    asked = owner_client.get(url).content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None
    assert f"Revoke key {key.prefix} (support-bot)?" in asked
    assert "Apps using it will get 401 at once." in asked
    assert f"Revoke {key.prefix} (support-bot)</button>" in asked
    listed = owner_client.get(KEYS).content.decode()
    assert f'href="{url}"' in listed and f"Revoke {key.prefix}</a>" in listed

    done = owner_client.post(url)

    assert done.status_code == 302 and done["Location"] == KEYS
    with pytest.raises(InvalidKey, match="revoked"):
        api_key_authenticate(secret=secret)
    assert "calls with it now get 401" in owner_client.get(KEYS).content.decode()


def test_revoking_twice_is_harmless_and_says_so(owner_client, team):
    key, _ = api_key_create(team=team, name="bot")
    url = f"/t/acme/keys/{key.prefix}/revoke/"
    owner_client.post(url)
    first = ApiKey.objects.get(id=key.id).revoked_at

    assert "was revoked on" in owner_client.get(url).content.decode()
    owner_client.post(url)

    assert ApiKey.objects.get(id=key.id).revoked_at == first
    assert "was already revoked" in owner_client.get(KEYS).content.decode()


def test_an_unknown_prefix_is_404(owner_client):
    assert owner_client.get("/t/acme/keys/tgk_nothere/revoke/").status_code == 404


def test_the_revoke_confirmation_has_its_own_form_and_a_way_back(owner_client, team):
    key, _ = api_key_create(team=team, name="bot")
    page = owner_client.get(f"/t/acme/keys/{key.prefix}/revoke/").content.decode()
    assert_accessible(page)
    assert 'href="/t/acme/keys/">Keep it</a>' in page
