import smtplib
from urllib.parse import urlencode

from axes.utils import reset as axes_reset
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounts.forms import (
    InferenceKeyForm,
    InvitationForm,
    ManagementKeyForm,
    NewAccountForm,
    grantable_roles,
)
from accounts.models import ApiKey, Membership
from accounts.permissions import AUDIT_READERS, KEY_MANAGERS, PEOPLE_MANAGERS, require_team_page
from accounts.selectors import (
    AUDIT_PAGE,
    api_key_get,
    api_key_rows,
    audit_events,
    invitation_for_token,
    invitation_list_open,
    key_scope_choices,
    membership_get,
    membership_list,
    team_access,
    user_by_email,
)
from accounts.services import (
    INVITATION_REFUSALS,
    InvitationError,
    PeopleError,
    api_key_create,
    api_key_issue,
    api_key_revoke,
    invitation_accept,
    invitation_accept_new_user,
    invitation_create,
    invitation_revoke,
    invitation_send,
    membership_remove,
    membership_role_change,
)


def _new_key_session_key(team) -> str:
    # One slot per team, so a secret issued in one team is never shown on another's page.
    return f"tollgate.new_key.{team.id}"


@login_required
@require_http_methods(["GET", "POST"])
@never_cache
def keys(request, slug):
    """The team's keys and the forms that issue them. A new key's secret is put in the
    session and shown by the GET the POST redirects to, once: a reload shows it no more
    and issues nothing."""
    team = require_team_page(request, slug, KEY_MANAGERS)
    now = timezone.now()
    models, routes = key_scope_choices(team=team)
    inference_form = InferenceKeyForm(prefix="key", models=models, routes=routes, now=now)
    actor_role = request.team_access[1]
    management_form = ManagementKeyForm(prefix="mgmt", actor_role=actor_role)
    new_keys = []
    if request.method == "POST":
        if request.POST.get("kind") == ApiKey.Kind.MANAGEMENT:
            management_form = ManagementKeyForm(request.POST, prefix="mgmt", actor_role=actor_role)
            if management_form.is_valid():
                key, secret = api_key_create(
                    team=team,
                    name=management_form.cleaned_data["name"],
                    kind=ApiKey.Kind.MANAGEMENT,
                    role=management_form.cleaned_data["role"],
                    created_by=request.user,
                )
                return _show_secret_once(request, team, key, secret)
        else:
            inference_form = InferenceKeyForm(
                request.POST, prefix="key", models=models, routes=routes, now=now
            )
            if inference_form.is_valid():
                data = inference_form.cleaned_data
                key, secret = api_key_issue(
                    team=team,
                    name=data["name"],
                    allowed_models=inference_form.allowed_models,
                    rpm_limit=data["rpm_limit"],
                    tpm_limit=data["tpm_limit"],
                    expires_at=inference_form.expires_at,
                    budget_usd=data["budget_usd"],
                    budget_hard=inference_form.budget_hard,
                    created_by=request.user,
                )
                return _show_secret_once(request, team, key, secret)
        messages.error(request, "The key was not issued: correct the fields marked below.")
    else:
        new_keys = request.session.pop(_new_key_session_key(team), [])
    return render(
        request,
        "accounts/keys.html",
        {
            "team": team,
            "rows": api_key_rows(team=team, now=now),
            "new_keys": new_keys,
            "inference_form": inference_form,
            "management_form": management_form,
        },
    )


def _show_secret_once(request, team, key, secret):
    # A list: two tabs (or a double click) issuing keys before the page is shown again must
    # each see their secret once, not have the first one overwritten unseen.
    slot = _new_key_session_key(team)
    pending = request.session.get(slot, [])
    pending.append({"prefix": key.prefix, "name": key.name, "kind": key.kind, "secret": secret})
    request.session[slot] = pending
    return redirect("keys", slug=team.slug)


@login_required
@require_http_methods(["GET", "POST"])
def key_revoke(request, slug, prefix):
    """GET asks, naming the key; POST revokes it."""
    team = require_team_page(request, slug, KEY_MANAGERS)
    key = api_key_get(team=team, prefix=prefix)
    if key is None:
        raise Http404("No such key.")
    if request.method == "POST":
        already = key.revoked_at is not None
        api_key_revoke(key=key)
        if already:
            messages.info(request, f"Key {key.prefix} ({key.name}) was already revoked.")
        else:
            messages.success(
                request, f"Key {key.prefix} ({key.name}) is revoked; calls with it now get 401."
            )
        return redirect("keys", slug=team.slug)
    return render(request, "accounts/key_revoke.html", {"team": team, "key": key})


# --- People ---------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def people(request, slug):
    """Members and their roles, open invitations, and the form that invites someone."""
    team = require_team_page(request, slug, PEOPLE_MANAGERS)
    actor_role = request.team_access[1]
    form = InvitationForm(actor_role=actor_role)
    if request.method == "POST":
        form = InvitationForm(request.POST, actor_role=actor_role)
        if form.is_valid():
            try:
                invitation, token = invitation_create(
                    team=team,
                    actor=request.user,
                    email=form.cleaned_data["email"],
                    role=form.cleaned_data["role"],
                )
            except PeopleError as exc:
                form.add_error("email", str(exc))
            else:
                return _invitation_deliver(request, team, invitation, token)
        messages.error(request, "No invitation was sent: correct the fields marked below.")
    members = membership_list(team=team)
    owners = sum(1 for m in members if m.role == Membership.Role.OWNER)
    rows = [
        {
            "membership": m,
            "is_me": m.user_id == request.user.id,
            # What the page offers; the services check the same rules again.
            "editable": actor_role == Membership.Role.OWNER or m.role != Membership.Role.OWNER,
            "last_owner": m.role == Membership.Role.OWNER and owners == 1,
        }
        for m in members
    ]
    now = timezone.now()
    return render(
        request,
        "accounts/people.html",
        {
            "team": team,
            "rows": rows,
            "roles": grantable_roles(actor_role),
            "invitations": [(i, i.state(now=now)) for i in invitation_list_open(team=team)],
            "form": form,
        },
    )


def _invitation_deliver(request, team, invitation, token):
    accept_url = request.build_absolute_uri(reverse("invitation-accept", args=[token]))
    try:
        invitation_send(invitation=invitation, accept_url=accept_url)
    except (OSError, smtplib.SMTPException) as exc:
        # Nobody has the link, so the invitation is withdrawn rather than left dangling.
        invitation_revoke(team=team, actor=request.user, invitation_id=invitation.id)
        messages.error(
            request, f"The email to {invitation.email} could not be sent ({exc}); try again."
        )
    else:
        messages.success(
            request,
            f"Invitation sent to {invitation.email} as {invitation.role}. "
            f"The link works once, until {invitation.expires_at:%Y-%m-%d %H:%M} UTC.",
        )
    return redirect("people", slug=team.slug)


def _after_people_change(request, team):
    # Someone who just removed or demoted themselves may no longer open this page.
    access = team_access(actor=request.user, slug=team.slug)
    if access is None:
        return redirect("home")
    if access[1] not in PEOPLE_MANAGERS:
        return redirect("dashboard", slug=team.slug)
    return redirect("people", slug=team.slug)


@login_required
@require_POST
def member_role(request, slug, membership_id):
    team = require_team_page(request, slug, PEOPLE_MANAGERS)
    if membership_get(team=team, membership_id=membership_id) is None:
        raise Http404("No such member.")
    try:
        membership = membership_role_change(
            team=team,
            actor=request.user,
            membership_id=membership_id,
            role=request.POST.get("role", ""),
        )
    except PeopleError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request, f"{membership.user.get_username()} is now {membership.role} of {team.name}."
        )
    return _after_people_change(request, team)


@login_required
@require_POST
def member_remove(request, slug, membership_id):
    team = require_team_page(request, slug, PEOPLE_MANAGERS)
    if membership_get(team=team, membership_id=membership_id) is None:
        raise Http404("No such member.")
    try:
        membership = membership_remove(team=team, actor=request.user, membership_id=membership_id)
    except PeopleError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{membership.user.get_username()} was removed from {team.name}.")
    return _after_people_change(request, team)


@login_required
@require_POST
def invitation_withdraw(request, slug, invitation_id):
    team = require_team_page(request, slug, PEOPLE_MANAGERS)
    try:
        invitation = invitation_revoke(team=team, actor=request.user, invitation_id=invitation_id)
    except PeopleError:
        raise Http404("No such invitation.") from None
    messages.success(request, f"The invitation for {invitation.email} is revoked.")
    return redirect("people", slug=team.slug)


# The backend a new account made from an invitation is signed in with.
PASSWORD_BACKEND = "django.contrib.auth.backends.ModelBackend"


@require_http_methods(["GET", "POST"])
@never_cache
def invitation_accept_page(request, token):
    """Where an invitation's link leads. A signed-in user whose address it was sent to joins
    on POST; a person without an account sets a password and gets one; anything else gets
    a page saying why not, never an error."""
    invitation = invitation_for_token(token=token)
    now = timezone.now()
    state = invitation.state(now=now) if invitation else "unknown"
    if state != "pending":
        return _invitation_refused(request, state, invitation)
    user = request.user
    has_account = user.is_authenticated or user_by_email(email=invitation.email) is not None
    form = None if has_account else NewAccountForm(email=invitation.email)
    if request.method == "POST":
        try:
            if user.is_authenticated:
                membership = invitation_accept(token=token, user=user)
            elif has_account:
                raise InvitationError(
                    "existing_account",
                    f"{invitation.email} already has an account: sign in to accept.",
                )
            else:
                form = NewAccountForm(request.POST, email=invitation.email)
                if not form.is_valid():
                    return _invitation_page(request, invitation, form, status=200)
                membership = invitation_accept_new_user(
                    token=token, password=form.cleaned_data["password1"]
                )
                login(request, membership.user, backend=PASSWORD_BACKEND)
        except InvitationError as exc:
            return _invitation_refused(request, exc.reason, invitation, message=str(exc))
        messages.success(
            request, f"Welcome to {membership.team.name}: you are {membership.role} of it."
        )
        return redirect("dashboard", slug=membership.team.slug)
    return _invitation_page(request, invitation, form, status=200)


def _invitation_page(request, invitation, form, *, status):
    user = request.user
    matches = user.is_authenticated and invitation.email in {
        user.get_username().lower(),
        (user.email or "").lower(),
    }
    return render(
        request,
        "accounts/invitation.html",
        {
            "invitation": invitation,
            "invited_team": invitation.team,
            "form": form,
            "matches": matches,
            "login_url": f"{reverse('login')}?{urlencode({'next': request.path})}",
        },
        status=status,
    )


# Unknown links are 404s; used, withdrawn and expired ones are gone (410).
_REFUSAL_STATUS = {"unknown": 404, "accepted": 410, "revoked": 410, "expired": 410}


def _invitation_refused(request, reason, invitation, *, message=""):
    if reason in ("wrong_account", "existing_account"):
        messages.error(request, message)
        return _invitation_page(request, invitation, None, status=403)
    return render(
        request,
        "accounts/invitation_refused.html",
        {"reason": reason, "message": message or INVITATION_REFUSALS[reason]},
        status=_REFUSAL_STATUS[reason],
    )


# --- Password reset -------------------------------------------------------------------------


class PasswordResetConfirm(auth_views.PasswordResetConfirmView):
    """Django's reset confirmation; a new password set through the emailed link also ends a
    sign-in pause on the account, since whoever set it proved they hold its mailbox."""

    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("password-reset-complete")

    def form_valid(self, form):
        response = super().form_valid(form)
        axes_reset(username=form.user.get_username())
        return response


@login_required
def audit_log(request, slug):
    """The team's audit log, newest first, fifty entries a page. Read only."""
    team = require_team_page(request, slug, AUDIT_READERS)
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    before = request.GET.get("before", "")
    if before and not before.isdigit():
        raise Http404("No such page of the audit log.")
    events = audit_events(team=team, before_id=int(before) if before else None)
    for event in events:
        event.shown = [
            (
                name,
                " → ".join(str(v) for v in value)
                if isinstance(value, list) and len(value) == 2
                else value,
            )
            for name, value in event.changes.items()
        ]
    return render(
        request,
        "accounts/audit.html",
        {
            "team": team,
            "events": events,
            "older": events[-1].id if len(events) == AUDIT_PAGE else None,
        },
    )
