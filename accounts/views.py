from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.permissions import KEY_MANAGERS, require_team_page
from accounts.selectors import api_key_get, api_key_list
from accounts.services import api_key_create, api_key_revoke


@login_required
def keys(request, slug):
    team = require_team_page(request, slug, KEY_MANAGERS)
    new_secret = None
    if request.method == "POST":
        name = request.POST.get("name", "").strip()
        models = [m.strip() for m in request.POST.get("models", "").split(",") if m.strip()]
        if not name or len(name) > 100:
            messages.error(request, "Give the key a name of up to 100 characters.")
        else:
            key, new_secret = api_key_create(
                team=team, name=name, allowed_models=models, created_by=request.user
            )
            messages.success(
                request,
                f"Key {key.prefix} created. Copy its secret now: it will not be shown again.",
            )
    return render(
        request,
        "accounts/keys.html",
        {"team": team, "keys": api_key_list(team=team), "new_secret": new_secret},
    )


@login_required
@require_POST
def key_revoke(request, slug, prefix):
    team = require_team_page(request, slug, KEY_MANAGERS)
    key = api_key_get(team=team, prefix=prefix)
    if key is None:
        raise Http404("No such key.")
    api_key_revoke(key=key)
    messages.success(
        request, f"Key {key.prefix} ({key.name}) is revoked; calls with it now get 401."
    )
    return redirect("keys", slug=team.slug)
