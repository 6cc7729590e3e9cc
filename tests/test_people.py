"""The people page: roles, removals and email invitations, for owners and admins only; the
team always keeps an owner; invitation links work once, for their team only."""

import re
import threading
import time
from datetime import timedelta

import pytest
from django.core import mail
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from accounts.models import Invitation, Membership
from accounts.services import (
    PeopleError,
    invitation_create,
    membership_role_change,
)
from tests.factories import MembershipFactory, UserFactory
from tests.pages import CAST, assert_accessible, expected_status, sign_in_as

pytestmark = pytest.mark.django_db

PEOPLE = "/t/acme/people/"
Role = Membership.Role


def membership(user, team_slug="acme"):
    return Membership.objects.get(user=user, team__slug=team_slug)


def role_of(user, team_slug="acme"):
    found = Membership.objects.filter(user=user, team__slug=team_slug).first()
    return found.role if found else None


def invite(client, email, role="member", **extra):
    return client.post(PEOPLE, {"email": email, "role": role}, **extra)


def accept_link(message) -> str:
    return re.search(r"https?://[^/\s]+(/invitations/[^/\s]+/)", message.body).group(1)


@pytest.fixture
def as_owner(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def as_admin(client, admin, owner):
    client.force_login(admin)
    return client


def invitation_token(team, actor, email, role="member", now=None):
    return invitation_create(team=team, actor=actor, email=email, role=role, now=now)[1]


# --- the standing cast ----------------------------------------------------------------


@pytest.mark.parametrize("who", CAST)
def test_people_page_answers_each_of_the_standing_cast(request, client, team, owner, who):
    sign_in_as(request, client, who)
    response = client.get(PEOPLE)
    assert response.status_code == expected_status(who)
    if who == "anonymous":
        assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("who", CAST)
def test_only_owners_and_admins_invite(request, client, team, owner, who):
    sign_in_as(request, client, who)
    response = invite(client, f"new-{who}@example.test")
    assert response.status_code in (302, 404)
    sent = Invitation.objects.filter(email=f"new-{who}@example.test").exists()
    assert sent == (who in ("owner", "admin"))
    assert len(mail.outbox) == (1 if who in ("owner", "admin") else 0)


@pytest.mark.parametrize("who", CAST)
def test_only_owners_and_admins_change_roles_remove_and_revoke(request, client, team, owner, who):
    target = MembershipFactory(team=team, role=Role.MEMBER, user=UserFactory()).user
    leaving = MembershipFactory(team=team, role=Role.MEMBER, user=UserFactory()).user
    invitation, _ = invitation_create(team=team, actor=owner, email="x@example.test", role="member")
    sign_in_as(request, client, who)

    client.post(f"/t/acme/people/{membership(target).id}/role/", {"role": "billing"})
    client.post(f"/t/acme/people/{membership(leaving).id}/remove/")
    client.post(f"/t/acme/people/invitations/{invitation.id}/revoke/")

    allowed = who in ("owner", "admin")
    assert role_of(target) == ("billing" if allowed else "member")
    assert (role_of(leaving) is None) == allowed
    invitation.refresh_from_db()
    assert (invitation.revoked_at is not None) == allowed


def test_the_people_link_is_in_the_navigation_of_owners_and_admins_only(
    client, owner, admin, member, billing
):
    for user, shown in ((owner, True), (admin, True), (member, False), (billing, False)):
        client.force_login(user)
        assert ('href="/t/acme/people/"' in client.get("/t/acme/").content.decode()) == shown


def test_another_teams_people_and_invitations_never_appear_or_change(
    as_owner, team, other_team, outsider
):
    theirs = MembershipFactory(
        team=other_team, role=Role.MEMBER, user=UserFactory(username="globex-person@x.test")
    )
    their_invitation, _ = invitation_create(
        team=other_team, actor=outsider, email="globex-invitee@x.test", role="member"
    )

    page = as_owner.get(PEOPLE).content.decode()
    role = as_owner.post(f"/t/acme/people/{theirs.id}/role/", {"role": "admin"})
    remove = as_owner.post(f"/t/acme/people/{theirs.id}/remove/")
    revoke = as_owner.post(f"/t/acme/people/invitations/{their_invitation.id}/revoke/")

    assert "globex" not in page.lower() and "owner@globex.test" not in page
    assert (role.status_code, remove.status_code, revoke.status_code) == (404, 404, 404)
    theirs.refresh_from_db()
    their_invitation.refresh_from_db()
    assert theirs.role == Role.MEMBER and their_invitation.revoked_at is None


def test_the_page_lists_members_with_roles_and_is_accessible(as_owner, team, admin, member):
    page = as_owner.get(PEOPLE).content.decode()
    for name, role in (("owner@acme.test", "owner"), ("admin@acme.test", "admin")):
        assert name in page
    assert "Change role of member@acme.test</button>" in page
    assert "Remove member@acme.test</button>" in page
    assert 'data-confirm="Remove member@acme.test from Acme?' in page
    assert_accessible(page)


# --- roles and removals: owners are protected, the team keeps one -----------------------


def test_an_admin_cannot_make_an_owner(as_admin, member):
    page = as_admin.post(
        f"/t/acme/people/{membership(member).id}/role/", {"role": "owner"}, follow=True
    )
    assert "Only an owner can make someone an owner." in page.content.decode()
    assert role_of(member) == Role.MEMBER
    assert '<option value="owner"' not in page.content.decode()  # and is not offered it


def test_an_admin_cannot_demote_or_remove_an_owner(as_admin, owner):
    demote = as_admin.post(
        f"/t/acme/people/{membership(owner).id}/role/", {"role": "member"}, follow=True
    )
    remove = as_admin.post(f"/t/acme/people/{membership(owner).id}/remove/", follow=True)

    assert "Only an owner can change the role of owner@acme.test" in demote.content.decode()
    assert "Only an owner can remove owner@acme.test" in remove.content.decode()
    assert role_of(owner) == Role.OWNER
    assert "Only an owner can change or remove an owner." in as_admin.get(PEOPLE).content.decode()


def test_an_admin_changes_and_removes_admins_billing_and_members(as_admin, team, billing, member):
    other_admin = MembershipFactory(team=team, role=Role.ADMIN, user=UserFactory()).user
    as_admin.post(f"/t/acme/people/{membership(member).id}/role/", {"role": "billing"})
    as_admin.post(f"/t/acme/people/{membership(other_admin).id}/role/", {"role": "member"})
    as_admin.post(f"/t/acme/people/{membership(billing).id}/remove/")
    assert (role_of(member), role_of(other_admin), role_of(billing)) == ("billing", "member", None)


def test_the_last_owner_can_be_neither_demoted_nor_removed(as_owner, owner):
    demote = as_owner.post(
        f"/t/acme/people/{membership(owner).id}/role/", {"role": "admin"}, follow=True
    )
    remove = as_owner.post(f"/t/acme/people/{membership(owner).id}/remove/", follow=True)

    assert "owner@acme.test is the team&#x27;s only owner" in demote.content.decode()
    assert "only owner and cannot be removed" in remove.content.decode()
    assert role_of(owner) == Role.OWNER
    assert "The only owner cannot be removed." in as_owner.get(PEOPLE).content.decode()


def test_an_owner_makes_another_owner_then_steps_down(as_owner, owner, admin):
    as_owner.post(f"/t/acme/people/{membership(admin).id}/role/", {"role": "owner"})
    stepped = as_owner.post(f"/t/acme/people/{membership(owner).id}/role/", {"role": "member"})

    assert (role_of(admin), role_of(owner)) == ("owner", "member")
    # A member may not open the people page any more: sent to the overview instead.
    assert stepped["Location"] == "/t/acme/"


def test_removing_oneself_leads_home(as_admin, admin):
    left = as_admin.post(f"/t/acme/people/{membership(admin).id}/remove/")
    assert left["Location"] == "/" and role_of(admin) is None


def test_an_unknown_role_is_refused(as_owner, member):
    page = as_owner.post(
        f"/t/acme/people/{membership(member).id}/role/", {"role": "god"}, follow=True
    )
    assert "&#x27;god&#x27; is not a role." in page.content.decode() and role_of(member) == "member"


@pytest.mark.django_db(transaction=True)
def test_two_owners_stepping_down_at_once_leave_the_team_an_owner(team, owner):
    second = MembershipFactory(
        team=team, role=Role.OWNER, user=UserFactory(username="owner2@acme.test")
    ).user
    first_id, second_id = membership(owner).id, membership(second).id
    first_done, release = threading.Event(), threading.Event()
    outcome = {}

    def first():
        # Steps down and holds its transaction open until told to commit.
        try:
            with transaction.atomic():
                membership_role_change(team=team, actor=owner, membership_id=first_id, role="admin")
                first_done.set()
                release.wait(10)
        finally:
            connection.close()

    def then_second():
        try:
            membership_role_change(team=team, actor=second, membership_id=second_id, role="admin")
            outcome["second"] = "stepped down"
        except PeopleError as exc:
            outcome["second"] = str(exc)
        finally:
            connection.close()

    one = threading.Thread(target=first)
    one.start()
    assert first_done.wait(10)
    two = threading.Thread(target=then_second)
    two.start()
    # Wait until the second change is blocked on the team's lock (or, without one, is done).
    deadline = time.monotonic() + 10
    while two.is_alive() and time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            )
            if cursor.fetchone()[0]:
                break
        time.sleep(0.01)
    release.set()
    one.join(10)
    two.join(10)
    close_old_connections()

    assert (
        outcome["second"]
        == "owner2@acme.test is the team's only owner: make someone else an owner first."
    )
    assert Membership.objects.filter(team=team, role=Role.OWNER).count() == 1


# --- invitations: sending ------------------------------------------------------------------


def test_an_invitation_is_emailed_with_a_link_on_the_requests_host(as_owner, team, settings):
    settings.ALLOWED_HOSTS = ["tollgate.example", "testserver"]

    sent = invite(as_owner, "New.Person@Example.test", "billing", HTTP_HOST="tollgate.example")

    assert sent.status_code == 302 and sent["Location"] == PEOPLE
    (message,) = mail.outbox
    assert message.to == ["new.person@example.test"]
    assert message.subject == "[Tollgate] owner@acme.test invites you to join Acme"
    assert "http://tollgate.example/invitations/" in message.body and "as billing" in message.body
    html, kind = message.alternatives[0]
    assert kind == "text/html" and accept_link(message) in html
    invitation = Invitation.objects.get()
    assert (invitation.email, invitation.role, invitation.invited_by.username) == (
        "new.person@example.test",
        "billing",
        "owner@acme.test",
    )
    assert invitation.expires_at - invitation.created_at == timedelta(days=7)
    page = as_owner.get(PEOPLE).content.decode()
    assert "Revoke invitation for new.person@example.test</button>" in page
    assert "Invitation sent to new.person@example.test as billing." in page


def test_only_a_hash_of_the_token_is_stored(as_owner):
    invite(as_owner, "x@example.test")
    token = accept_link(mail.outbox[0]).split("/")[2]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_invitation")
        stored = " ".join(str(v) for row in cursor.fetchall() for v in row)
    assert len(token) >= 40 and token not in stored


def test_reinviting_an_address_replaces_its_pending_invitation(client, as_owner):
    invite(as_owner, "x@example.test", "member")
    invite(as_owner, "X@example.test", "admin")
    first, second = (accept_link(m) for m in mail.outbox)
    client.logout()

    assert Invitation.objects.filter(revoked_at__isnull=True).count() == 1
    old = client.get(first)
    new = client.get(second)
    assert old.status_code == 410 and "withdrawn" in old.content.decode()
    assert new.status_code == 200 and "as <strong>admin</strong>" in new.content.decode()


def test_an_admin_cannot_invite_an_owner(as_admin, team, admin):
    page = invite(as_admin, "boss@example.test", "owner")

    assert "Pick one of the roles offered." in page.content.decode()
    assert not Invitation.objects.exists() and mail.outbox == []
    with pytest.raises(PeopleError, match="Only an owner can invite an owner."):
        invitation_create(team=team, actor=admin, email="boss@example.test", role="owner")


def test_an_owner_can_invite_an_owner(as_owner):
    invite(as_owner, "coowner@example.test", "owner")
    assert Invitation.objects.get().role == "owner"


def test_a_member_is_not_invited_again(as_owner, member):
    page = invite(as_owner, "Member@Acme.test")
    assert "member@acme.test is already a member of Acme" in page.content.decode()
    assert not Invitation.objects.exists()


@pytest.mark.parametrize("email", ["", "not-an-address", "a@b@c"])
def test_a_bad_address_is_explained_beside_the_field(as_owner, email):
    page = invite(as_owner, email).content.decode()
    assert 'id="id_email_error"' in page and not Invitation.objects.exists()


def test_an_email_that_cannot_be_sent_leaves_no_working_invitation(as_owner, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9  # nothing listens there

    page = invite(as_owner, "x@example.test", follow=True).content.decode()

    assert "The email to x@example.test could not be sent" in page
    assert Invitation.objects.get().revoked_at is not None


def test_revoking_an_invitation_kills_its_link(client, as_owner, team, owner):
    token = invitation_token(team, owner, "x@example.test")
    invitation = Invitation.objects.get()

    as_owner.post(f"/t/acme/people/invitations/{invitation.id}/revoke/")
    client.logout()

    page = client.get(f"/invitations/{token}/")
    assert page.status_code == 410 and "This invitation was withdrawn." in page.content.decode()


# --- invitations: accepting --------------------------------------------------------------


def test_a_new_person_sets_a_password_and_joins_with_the_invited_role(client, team, owner):
    token = invitation_token(team, owner, "new@example.test", "billing")
    url = f"/invitations/{token}/"

    form = client.get(url)
    weak = client.post(url, {"password1": "new@example.test", "password2": "new@example.test"})
    joined = client.post(
        url, {"password1": "a long fresh phrase", "password2": "a long fresh phrase"}
    )

    assert form.status_code == 200 and "Create my account and join Acme" in form.content.decode()
    assert weak.status_code == 200 and "too similar" in weak.content.decode()
    assert joined.status_code == 302 and joined["Location"] == "/t/acme/"
    user = Membership.objects.get(team=team, role="billing").user
    assert user.username == user.email == "new@example.test"
    assert user.check_password("a long fresh phrase")
    assert client.get("/t/acme/").status_code == 200  # signed in
    invitation = Invitation.objects.get()
    assert invitation.accepted_at is not None and invitation.accepted_by == user
    # And the new account signs in by email like any other.
    client.logout()
    signed = client.post(
        "/login/", {"username": "new@example.test", "password": "a long fresh phrase"}
    )
    assert signed.status_code == 302


def test_mismatched_passwords_are_explained(client, team, owner):
    token = invitation_token(team, owner, "new@example.test")
    page = client.post(
        f"/invitations/{token}/", {"password1": "a long fresh phrase", "password2": "other"}
    )
    assert "The two passwords differ." in page.content.decode()
    assert not Membership.objects.filter(user__username="new@example.test").exists()


def test_a_used_link_cannot_be_used_again(client, team, owner):
    token = invitation_token(team, owner, "new@example.test")
    url = f"/invitations/{token}/"
    client.post(url, {"password1": "a long fresh phrase", "password2": "a long fresh phrase"})
    client.logout()

    again = client.get(url)
    replay = client.post(
        url, {"password1": "another long phrase", "password2": "another long phrase"}
    )

    for page in (again, replay):
        assert page.status_code == 410 and "already been used" in page.content.decode()
    assert Membership.objects.get(user__username="new@example.test").user.check_password(
        "a long fresh phrase"
    )


def test_an_expired_link_gets_a_readable_page(client, team, owner):
    token = invitation_token(
        team, owner, "new@example.test", now=timezone.now() - timedelta(days=7, seconds=1)
    )
    for page in (client.get(f"/invitations/{token}/"), client.post(f"/invitations/{token}/", {})):
        assert page.status_code == 410 and "This invitation has expired." in page.content.decode()
    assert not Membership.objects.filter(user__username="new@example.test").exists()


@pytest.mark.parametrize("token", ["nope", "x" * 500, "%00", "..", "ünïcode"])
def test_a_wrong_token_gets_a_readable_page(client, team, owner, token):
    invitation_token(team, owner, "new@example.test")
    page = client.get(f"/invitations/{token}/")
    if token == "%00":  # refused before any view, as every path with a NUL byte is
        assert page.status_code == 400 and "NUL byte" in page.content.decode()
        return
    assert page.status_code == 404 and "This invitation link is not valid." in page.content.decode()


def test_a_signed_in_user_with_the_invited_address_joins(client, team, owner, outsider):
    token = invitation_token(team, owner, "Owner@Globex.test", "member")
    client.force_login(outsider)

    asked = client.get(f"/invitations/{token}/")
    assert role_of(outsider) is None  # a GET changes nothing: mail scanners open links
    assert "Join Acme as member</button>" in asked.content.decode()

    joined = client.post(f"/invitations/{token}/", {"team": "globex", "role": "owner"})

    assert joined.status_code == 302 and joined["Location"] == "/t/acme/"
    # The token's team and role, whatever else was posted; the other team is untouched.
    assert role_of(outsider, "acme") == "member" and role_of(outsider, "globex") == "owner"
    assert Membership.objects.filter(user=outsider).count() == 2


def test_a_signed_in_user_with_another_address_cannot_accept(client, team, owner, member):
    token = invitation_token(team, owner, "someone.else@example.test", "admin")
    client.force_login(member)

    asked = client.get(f"/invitations/{token}/").content.decode()
    refused = client.post(f"/invitations/{token}/")

    assert "You are signed in as member@acme.test" in asked and "Join Acme as admin" not in asked
    assert refused.status_code == 403 and role_of(member) == "member"
    assert Invitation.objects.get().accepted_at is None


def test_an_existing_account_is_asked_to_sign_in_and_its_password_is_never_set(
    client, team, owner, outsider
):
    token = invitation_token(team, owner, "owner@globex.test")
    url = f"/invitations/{token}/"

    asked = client.get(url).content.decode()
    hijack = client.post(
        url, {"password1": "attacker long phrase", "password2": "attacker long phrase"}
    )

    assert "already has an account" in asked and "/login/?next=%2Finvitations%2F" in asked
    assert hijack.status_code == 403
    outsider.refresh_from_db()
    assert outsider.check_password("correct horse battery")
    assert role_of(outsider) is None


def test_an_invitation_never_demotes_someone_already_in_the_team(client, team, owner, outsider):
    token = invitation_token(team, owner, "owner@globex.test", "member")
    MembershipFactory(team=team, user=outsider, role=Role.ADMIN)  # joined another way meanwhile
    client.force_login(outsider)

    client.post(f"/invitations/{token}/")

    assert role_of(outsider) == "admin"


def test_the_invitation_pages_have_labels_and_name_their_buttons(client, team, owner):
    token = invitation_token(team, owner, "new@example.test", "billing")
    page = client.get(f"/invitations/{token}/").content.decode()
    assert_accessible(page)
    assert "Create my account and join Acme</button>" in page
