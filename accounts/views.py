from axes.utils import reset as axes_reset
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from accounts.forms import InferenceKeyForm, ManagementKeyForm
from accounts.models import ApiKey
from accounts.permissions import KEY_MANAGERS, require_team_page
from accounts.selectors import api_key_get, api_key_rows, key_scope_choices
from accounts.services import api_key_create, api_key_issue, api_key_revoke


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
    management_form = ManagementKeyForm(prefix="mgmt")
    new_key = None
    if request.method == "POST":
        if request.POST.get("kind") == ApiKey.Kind.MANAGEMENT:
            management_form = ManagementKeyForm(request.POST, prefix="mgmt")
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
        new_key = request.session.pop(_new_key_session_key(team), None)
    return render(
        request,
        "accounts/keys.html",
        {
            "team": team,
            "rows": api_key_rows(team=team, now=now),
            "new_key": new_key,
            "inference_form": inference_form,
            "management_form": management_form,
        },
    )


def _show_secret_once(request, team, key, secret):
    request.session[_new_key_session_key(team)] = {
        "prefix": key.prefix,
        "name": key.name,
        "kind": key.kind,
        "secret": secret,
    }
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
