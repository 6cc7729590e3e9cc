"""Writes for teams, members and API keys."""

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, Membership, Team
from usage.budgets import budget_set

KEY_PREFIXES = {ApiKey.Kind.INFERENCE: "tgk_", ApiKey.Kind.MANAGEMENT: "tgm_"}
_PREFIX_ALPHABET = string.ascii_letters + string.digits
_PREFIX_RANDOM_LEN = 8
PREFIX_LEN = 4 + _PREFIX_RANDOM_LEN


class InvalidKey(Exception):
    """A bearer key was missing, malformed, unknown, revoked or expired."""


def key_hash(secret: str) -> str:
    # Keyed with SECRET_KEY so a leaked database alone cannot be brute-forced offline.
    return hmac.new(settings.SECRET_KEY.encode(), secret.encode(), hashlib.sha256).hexdigest()


def team_create(
    *, slug: str, name: str, markup_percent: Decimal = Decimal("0"), owner_email: str = ""
) -> Team:
    with transaction.atomic():
        team = Team.objects.create(slug=slug, name=name, markup_percent=markup_percent)
        if owner_email:
            User = get_user_model()
            user, _ = User.objects.get_or_create(
                username=owner_email, defaults={"email": owner_email}
            )
            Membership.objects.create(user=user, team=team, role=Membership.Role.OWNER)
    return team


def membership_add(*, team: Team, user, role: str) -> Membership:
    membership, _ = Membership.objects.update_or_create(
        team=team, user=user, defaults={"role": role}
    )
    return membership


def api_key_create(
    *,
    team: Team,
    name: str,
    kind: str = ApiKey.Kind.INFERENCE,
    role: str = "",
    allowed_models: list[str] | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    expires_at: datetime | None = None,
    created_by=None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never stored or shown again.

    A management key acts on its team with `role` (admin, the default, or billing);
    an inference key has no role.
    """
    if kind == ApiKey.Kind.MANAGEMENT:
        role = role or ApiKey.ManagementRole.ADMIN
        if role not in ApiKey.ManagementRole.values:
            raise ValueError(f"A management key's role is admin or billing, not '{role}'.")
    elif role:
        raise ValueError("Only management keys have a role.")
    prefix = KEY_PREFIXES[kind] + "".join(
        secrets.choice(_PREFIX_ALPHABET) for _ in range(_PREFIX_RANDOM_LEN)
    )
    secret = f"{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        team=team,
        name=name,
        kind=kind,
        role=role,
        prefix=prefix,
        secret_hash=key_hash(secret),
        allowed_models=sorted(set(allowed_models or [])),
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        expires_at=expires_at,
        created_by=created_by,
    )
    return key, secret


def api_key_issue(
    *,
    team: Team,
    name: str,
    allowed_models: list[str] | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    expires_at: datetime | None = None,
    budget_usd: Decimal | None = None,
    budget_hard: bool = True,
    created_by=None,
) -> tuple[ApiKey, str]:
    """Create an inference key and, when `budget_usd` is given, its monthly budget (USD):
    both or neither, so a failed budget never leaves a key without the limit it was given.
    (budget_set's counter read then runs inside this transaction: harmless, as a key not yet
    committed has no calls to count.)"""
    with transaction.atomic():
        key, secret = api_key_create(
            team=team,
            name=name,
            allowed_models=allowed_models,
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
            expires_at=expires_at,
            created_by=created_by,
        )
        if budget_usd is not None:
            budget_set(team=team, api_key=key, amount_usd=budget_usd, hard=budget_hard)
    return key, secret


def api_key_revoke(*, key: ApiKey, now: datetime | None = None) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = now or timezone.now()
        key.save(update_fields=["revoked_at"])
    cache.delete(_principal_cache_key(key.prefix))
    return key


@dataclass(frozen=True)
class KeyPrincipal:
    """What a request authenticated by an API key may do, cached between calls."""

    key_id: int
    prefix: str
    kind: str
    team_id: int
    team_slug: str
    # A management key's team role (admin or billing); "" for other kinds.
    role: str = ""
    allowed_models: tuple[str, ...] = ()
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    expires_at: datetime | None = None
    secret_hash: str = field(default="", repr=False)

    # DRF treats the principal as the request's user.
    is_authenticated = True
    is_anonymous = False

    def may_use(self, model_name: str) -> bool:
        return not self.allowed_models or model_name in self.allowed_models


def _principal_cache_key(prefix: str) -> str:
    # v2: principals carry the key's role; entries cached before it existed are not read.
    return f"apikey:v2:{prefix}"


_last_used_written: dict[int, datetime] = {}


def api_key_authenticate(*, secret: str, now: datetime | None = None) -> KeyPrincipal:
    """Return the principal for a bearer secret, or raise InvalidKey saying why not.

    Active keys are cached for TOLLGATE_KEY_CACHE_S seconds so a call costs
    one cache read, not a query; revoking a key clears its cache entry.
    """
    now = now or timezone.now()
    prefix = secret[:PREFIX_LEN]
    if (
        len(secret) < PREFIX_LEN + 2
        or secret[PREFIX_LEN] != "_"
        or prefix[:4] not in KEY_PREFIXES.values()
    ):
        raise InvalidKey("Incorrect API key provided.")
    principal = cache.get(_principal_cache_key(prefix))
    if principal is None:
        key = ApiKey.objects.select_related("team").filter(prefix=prefix).first()
        if key is None:
            raise InvalidKey("Incorrect API key provided.")
        if key.revoked_at is not None:
            raise InvalidKey("This API key has been revoked.")
        principal = KeyPrincipal(
            key_id=key.id,
            prefix=key.prefix,
            kind=key.kind,
            role=key.role,
            team_id=key.team_id,
            team_slug=key.team.slug,
            allowed_models=tuple(key.allowed_models),
            rpm_limit=key.rpm_limit,
            tpm_limit=key.tpm_limit,
            expires_at=key.expires_at,
            secret_hash=key.secret_hash,
        )
        cache.set(_principal_cache_key(prefix), principal, settings.TOLLGATE_KEY_CACHE_S)
    if not hmac.compare_digest(principal.secret_hash, key_hash(secret)):
        raise InvalidKey("Incorrect API key provided.")
    if principal.expires_at is not None and principal.expires_at <= now:
        raise InvalidKey("This API key has expired.")
    _touch_last_used(principal.key_id, now)
    return principal


def _touch_last_used(key_id: int, now: datetime) -> None:
    # At most one write a minute per key and process: last_used_at is for
    # humans spotting idle keys, not worth a query on every call.
    last = _last_used_written.get(key_id)
    if last is not None and now - last < timedelta(seconds=60):
        return
    _last_used_written[key_id] = now
    ApiKey.objects.filter(id=key_id).update(last_used_at=now)


def team_settings_update(*, team: Team, **fields) -> Team:
    """Change a team's name or alert webhook (the fields a team's admins may edit)."""
    allowed = {"name", "alert_webhook_url"}
    if unknown := set(fields) - allowed:
        raise ValueError(f"not a team setting: {', '.join(sorted(unknown))}")
    for name, value in fields.items():
        setattr(team, name, value)
    team.save(update_fields=list(fields) or None)
    return team
