"""Writes for teams, members and API keys."""

import hashlib
import hmac
import json
import logging
import secrets
import string
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.audit import audit, diff, webhook_shown
from accounts.models import ApiKey, Invitation, Membership, Team
from portal.logs import warn_at_most_every
from usage.budgets import budget_set

logger = logging.getLogger(__name__)

KEY_PREFIXES = {ApiKey.Kind.INFERENCE: "tgk_", ApiKey.Kind.MANAGEMENT: "tgm_"}
_PREFIX_ALPHABET = string.ascii_letters + string.digits
_PREFIX_RANDOM_LEN = 8
PREFIX_LEN = 4 + _PREFIX_RANDOM_LEN


class InvalidKey(Exception):
    """A bearer key was missing, malformed, unknown, revoked or expired."""


def key_peppers() -> list[str]:
    """The secrets that key API-key hashes: the current one first, then earlier ones.

    The current one is TOLLGATE_KEY_PEPPER, or SECRET_KEY while no pepper is set (the
    way keys were hashed before the pepper existed). Read on every call, not at import,
    so a settings change is seen at once.
    """
    current = settings.TOLLGATE_KEY_PEPPER or settings.SECRET_KEY
    fallbacks = [p for p in settings.TOLLGATE_KEY_PEPPER_FALLBACKS if p and p != current]
    return [current, *fallbacks]


def key_hash(secret: str, *, pepper: str | None = None) -> str:
    # Keyed, so a leaked database alone cannot be brute-forced offline.
    pepper = pepper if pepper is not None else key_peppers()[0]
    return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()


def _key_pepper_matched(*, stored: str, secret: str) -> int | None:
    """The position in key_peppers() of the pepper under which `stored` is the hash of
    `secret` (0: the current one), or None when there is none."""
    for position, pepper in enumerate(key_peppers()):
        if hmac.compare_digest(stored, key_hash(secret, pepper=pepper)):
            return position
    return None


def team_create(
    *, slug: str, name: str, markup_percent: Decimal = Decimal("0"), owner_email: str = ""
) -> Team:
    with transaction.atomic():
        team = Team.objects.create(slug=slug, name=name, markup_percent=markup_percent)
        audit(
            team=team,
            action="team.create",
            target=slug,
            changes={"name": name, "markup_percent": str(markup_percent), "owner": owner_email},
        )
        if owner_email:
            User = get_user_model()
            user, _ = User.objects.get_or_create(
                username=owner_email, defaults={"email": owner_email}
            )
            Membership.objects.create(user=user, team=team, role=Membership.Role.OWNER)
    return team


def membership_add(*, team: Team, user, role: str) -> Membership:
    with transaction.atomic():
        membership, created = Membership.objects.update_or_create(
            team=team, user=user, defaults={"role": role}
        )
        audit(
            team=team,
            action="member.add" if created else "member.role",
            target=user.get_username(),
            changes={"role": role},
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
    with transaction.atomic():
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
        audit(
            team=team,
            action="key.create",
            target=prefix,
            changes={
                "name": name,
                "kind": kind,
                "role": role,
                "allowed_models": key.allowed_models,
                "rpm_limit": rpm_limit,
                "tpm_limit": tpm_limit,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
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
        with transaction.atomic():
            key.revoked_at = now or timezone.now()
            key.save(update_fields=["revoked_at"])
            audit(team=key.team, action="key.revoke", target=key.prefix, changes={"name": key.name})
    return key  # every process forgets it (accounts.signals)


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


_last_used_written: dict[int, datetime] = {}

# How a key is checked, fastest first:
#   1. each process keeps the principals it met in the last TOLLGATE_KEY_LOCAL_CACHE_S
#      seconds: most calls need no round trip at all. The price is bounded staleness: a key
#      revoked in another process stops working here within that many seconds (at once in
#      the process that revoked it);
#   2. Redis keeps them TOLLGATE_KEY_CACHE_S seconds for every process (one GET);
#   3. the database.
# /v1 checks keys on the event loop (`api_key_authenticate_async`, portal.aio), the rest of
# the site synchronously (`api_key_authenticate`); both read and write the same entries.
_local_principals: dict[str, tuple[float, "KeyPrincipal"]] = {}
_LOCAL_PRINCIPALS_MAX = 10_000


def _shared_key(prefix: str) -> str:
    return f"tollgate:apikey:v3:{prefix}"


def _local_principal(prefix: str) -> "KeyPrincipal | None":
    held = _local_principals.get(prefix)
    if held is None:
        return None
    if held[0] <= time.monotonic():
        _local_principals.pop(prefix, None)
        return None
    return held[1]


def _local_principal_keep(principal: "KeyPrincipal") -> None:
    ttl = settings.TOLLGATE_KEY_LOCAL_CACHE_S
    if ttl <= 0:
        return
    if len(_local_principals) >= _LOCAL_PRINCIPALS_MAX:
        _local_principals.clear()  # bounded memory; refilled from the shared cache
    _local_principals[principal.prefix] = (time.monotonic() + ttl, principal)


def _principal_dumps(principal: "KeyPrincipal") -> str:
    fields = asdict(principal)
    fields["allowed_models"] = list(principal.allowed_models)
    fields["expires_at"] = principal.expires_at.isoformat() if principal.expires_at else None
    return json.dumps(fields)


def _principal_loads(raw: bytes | str | None) -> "KeyPrincipal | None":
    if raw is None or raw in (_STALE, _STALE.decode()):
        return None
    try:
        fields = json.loads(raw)
        fields["allowed_models"] = tuple(fields["allowed_models"])
        if fields["expires_at"]:
            fields["expires_at"] = datetime.fromisoformat(fields["expires_at"])
        return KeyPrincipal(**fields)
    except (ValueError, TypeError, KeyError):
        return None  # an entry from another version: read the database


def _redis_failed(exc: Exception) -> None:
    from portal import aio

    aio.redis_failed(exc)  # an unreachable Redis is skipped for a while on the hot path
    warn_at_most_every(
        60, logger, "keys-redis", "API keys are checked against the database: Redis fails: %s", exc
    )


def _sync_redis():
    if not settings.REDIS_URL:
        return None
    from django_redis import get_redis_connection

    return get_redis_connection("default")


# What a key's Redis entry holds once its key changed (revoked, re-hashed, edited): "read
# the database". A reader that met the key before the change writes its principal only
# where no entry is (SET NX), so it can never put back what the change cleared.
_STALE = b"-"
_FORGET_TRIES = 3


def _principal_forget(prefix: str) -> None:
    """Drop a key's cached principal here and, for every process, in Redis (revoked,
    re-hashed, edited). If Redis does not take it, the change is still in the database,
    but other processes may use their entry until it expires: that is logged as an error."""
    _local_principals.pop(prefix, None)
    client = _sync_redis()
    if client is None:
        return
    for attempt in range(_FORGET_TRIES):
        try:
            client.set(_shared_key(prefix), _STALE, ex=settings.TOLLGATE_KEY_CACHE_S)
            return
        except Exception as exc:
            if attempt == _FORGET_TRIES - 1:
                logger.error(
                    "the change to key %s is saved, but Redis did not take it (%s): other "
                    "processes may accept the key as it was for up to %s s",
                    prefix,
                    exc,
                    settings.TOLLGATE_KEY_CACHE_S,
                )
            time.sleep(0.2 * (attempt + 1))


async def _principal_forget_async(prefix: str) -> None:
    from portal import aio

    _local_principals.pop(prefix, None)
    client = aio.redis_client()
    if client is not None:
        try:
            await client.set(_shared_key(prefix), _STALE, ex=settings.TOLLGATE_KEY_CACHE_S)
        except Exception as exc:
            _redis_failed(exc)


def _key_prefix(secret: str) -> str:
    prefix = secret[:PREFIX_LEN]
    if (
        len(secret) < PREFIX_LEN + 2
        or secret[PREFIX_LEN] != "_"
        or prefix[:4] not in KEY_PREFIXES.values()
    ):
        raise InvalidKey("Incorrect API key provided.")
    return prefix


_PRINCIPAL_COLUMNS = (
    "id",
    "prefix",
    "kind",
    "role",
    "team_id",
    "team__slug",
    "allowed_models",
    "rpm_limit",
    "tpm_limit",
    "expires_at",
    "secret_hash",
    "revoked_at",
)


def _principal_of_row(row: tuple | None) -> "KeyPrincipal":
    if row is None:
        raise InvalidKey("Incorrect API key provided.")
    (key_id, prefix, kind, role, team_id, slug, allowed, rpm, tpm, expires, hashed, revoked) = row
    if revoked is not None:
        raise InvalidKey("This API key has been revoked.")
    if isinstance(allowed, str):  # the ORM hands jsonb over as text
        allowed = json.loads(allowed)
    return KeyPrincipal(
        key_id=key_id,
        prefix=prefix,
        kind=kind,
        role=role,
        team_id=team_id,
        team_slug=slug,
        allowed_models=tuple(allowed or ()),
        rpm_limit=rpm,
        tpm_limit=tpm,
        expires_at=expires,
        secret_hash=hashed,
    )


def _principal_query(prefix: str):
    return ApiKey.objects.filter(prefix=prefix).values_list(*_PRINCIPAL_COLUMNS)


def api_key_authenticate(*, secret: str, now: datetime | None = None) -> KeyPrincipal:
    """Return the principal for a bearer secret, or raise InvalidKey saying why not."""
    now = now or timezone.now()
    prefix = _key_prefix(secret)
    principal = _local_principal(prefix)
    client = _sync_redis() if principal is None else None
    if principal is None and client is not None:
        try:
            principal = _principal_loads(client.get(_shared_key(prefix)))
        except Exception as exc:
            _redis_failed(exc)
    if principal is None:
        principal = _principal_of_row(_principal_query(prefix).first())
        if client is not None:
            try:
                client.set(
                    _shared_key(prefix),
                    _principal_dumps(principal),
                    ex=settings.TOLLGATE_KEY_CACHE_S,
                    nx=True,
                )
            except Exception as exc:
                _redis_failed(exc)
    matched = _principal_matched(principal, secret, now)
    if matched > 0 and settings.TOLLGATE_KEY_PEPPER_REHASH:
        ApiKey.objects.filter(id=principal.key_id, secret_hash=principal.secret_hash).update(
            secret_hash=key_hash(secret)
        )
        _principal_forget(principal.prefix)
    if _last_used_due(principal.key_id, now):
        ApiKey.objects.filter(id=principal.key_id).update(last_used_at=now)
    return principal


# The keys' table, for the two writes the async key check makes itself.
KEYS = ApiKey._meta.db_table


async def api_key_authenticate_async(*, secret: str, now: datetime | None = None) -> KeyPrincipal:
    """`api_key_authenticate` on the event loop (portal.aio), for /v1: from this process's
    memory on most calls, else one Redis GET, else one query."""
    from portal import aio

    now = now or timezone.now()
    prefix = _key_prefix(secret)
    principal = _local_principal(prefix)
    client = aio.redis_client() if principal is None else None
    if principal is None and client is not None:
        try:
            principal = _principal_loads(await client.get(_shared_key(prefix)))
        except Exception as exc:
            client = None
            _redis_failed(exc)
    if principal is None:
        query = _principal_query(prefix)[:1].query
        sql, params = query.get_compiler("default").as_sql()
        rows = await aio.fetch(sql, params)
        principal = _principal_of_row(rows[0] if rows else None)
        if client is not None:
            try:
                await client.set(
                    _shared_key(prefix),
                    _principal_dumps(principal),
                    ex=settings.TOLLGATE_KEY_CACHE_S,
                    nx=True,
                )
            except Exception as exc:
                _redis_failed(exc)
    matched = _principal_matched(principal, secret, now)
    if matched > 0 and settings.TOLLGATE_KEY_PEPPER_REHASH:
        await aio.fetch(
            f"UPDATE {KEYS} SET secret_hash = %s WHERE id = %s AND secret_hash = %s",
            [key_hash(secret), principal.key_id, principal.secret_hash],
        )
        await _principal_forget_async(principal.prefix)
    if _last_used_due(principal.key_id, now):
        await aio.fetch(
            f"UPDATE {KEYS} SET last_used_at = %s WHERE id = %s", [now, principal.key_id]
        )
    return principal


def _principal_matched(principal: "KeyPrincipal", secret: str, now: datetime) -> int:
    """Which pepper the secret matched (0: the current one), else InvalidKey. A key that
    matched an earlier pepper is re-hashed under the current one by the caller, only if
    its stored hash is still the one that matched (another process may have done it first);
    its cached entries are then dropped, not rewritten, so a revocation that cleared them
    meanwhile is not undone."""
    matched = _key_pepper_matched(stored=principal.secret_hash, secret=secret)
    if matched is None:
        raise InvalidKey("Incorrect API key provided.")
    if principal.prefix not in _local_principals:
        _local_principal_keep(principal)
    if principal.expires_at is not None and principal.expires_at <= now:
        raise InvalidKey("This API key has expired.")
    return matched


def _last_used_due(key_id: int, now: datetime) -> bool:
    # At most one write a minute per key and process: last_used_at is for
    # humans spotting idle keys, not worth a query on every call.
    last = _last_used_written.get(key_id)
    if last is not None and now - last < timedelta(seconds=60):
        return False
    _last_used_written[key_id] = now
    return True


def team_settings_update(*, team: Team, **fields) -> Team:
    """Change a team's name or alert webhook (the fields a team's admins may edit)."""
    allowed = {"name", "alert_webhook_url"}
    if unknown := set(fields) - allowed:
        raise ValueError(f"not a team setting: {', '.join(sorted(unknown))}")
    before = team_shown(team)
    with transaction.atomic():
        for name, value in fields.items():
            setattr(team, name, value)
        team.save(update_fields=list(fields) or None)
        if changed := diff(before, team_shown(team)):
            audit(team=team, action="team.update", target=team.slug, changes=changed)
    return team


def team_shown(team: Team) -> dict:
    """A team's settings as the audit log keeps them (webhooks by where they point)."""
    return {
        "name": team.name,
        "markup_percent": f"{Decimal(team.markup_percent):.3f}",
        "alert_webhook_url": webhook_shown(team.alert_webhook_url),
        "usage_webhook_url": webhook_shown(team.usage_webhook_url),
    }


# --- People: roles, removals and invitations -------------------------------------------
#
# Every change below runs with the team's row locked, so two changes made at once are
# applied one after the other and the rules are checked against what is really there.
# The rules: owners and admins manage people; only an owner makes, changes or removes an
# owner or invites one; the team always keeps at least one owner, so nobody can lock it out.

INVITATION_VALID_FOR = timedelta(days=7)
PEOPLE_MANAGER_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN)


class PeopleError(Exception):
    """A change to a team's people that its rules refuse; the message says why, for the UI."""


class InvitationError(Exception):
    """An invitation link that cannot be used; `reason` is unknown, accepted, revoked,
    expired, wrong_account or existing_account."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def invitation_token_hash(token: str) -> str:
    # The token is 256 random bits, so an unkeyed hash is enough to make the table useless
    # for joining a team.
    return hashlib.sha256(token.encode()).hexdigest()


def _people_change_begin(*, team: Team, actor) -> str:
    """Lock the team's row and return the actor's role, refusing anyone not managing people."""
    Team.objects.select_for_update().filter(id=team.id).first()
    membership = Membership.objects.filter(team=team, user=actor).first()
    if membership is None or membership.role not in PEOPLE_MANAGER_ROLES:
        raise PeopleError("Only owners and admins manage the people of a team.")
    return membership.role


def _owner_count(team: Team) -> int:
    return Membership.objects.filter(team=team, role=Membership.Role.OWNER).count()


def _target(team: Team, membership_id: int) -> Membership:
    membership = (
        Membership.objects.select_related("user").filter(team=team, id=membership_id).first()
    )
    if membership is None:
        raise PeopleError("That person is not a member of this team.")
    return membership


def membership_role_change(*, team: Team, actor, membership_id: int, role: str) -> Membership:
    if role not in Membership.Role.values:
        raise PeopleError(f"'{role}' is not a role.")
    with transaction.atomic():
        actor_role = _people_change_begin(team=team, actor=actor)
        membership = _target(team, membership_id)
        name = membership.user.get_username()
        if actor_role != Membership.Role.OWNER and Membership.Role.OWNER in (role, membership.role):
            raise PeopleError(
                "Only an owner can make someone an owner."
                if role == Membership.Role.OWNER
                else f"Only an owner can change the role of {name}, an owner."
            )
        if (
            membership.role == Membership.Role.OWNER
            and role != Membership.Role.OWNER
            and _owner_count(team) == 1
        ):
            raise PeopleError(f"{name} is the team's only owner: make someone else an owner first.")
        before, membership.role = membership.role, role
        membership.save(update_fields=["role"])
        if before != role:
            audit(team=team, action="member.role", target=name, changes={"role": [before, role]})
    return membership


def membership_remove(*, team: Team, actor, membership_id: int) -> Membership:
    with transaction.atomic():
        actor_role = _people_change_begin(team=team, actor=actor)
        membership = _target(team, membership_id)
        name = membership.user.get_username()
        if membership.role == Membership.Role.OWNER:
            if actor_role != Membership.Role.OWNER:
                raise PeopleError(f"Only an owner can remove {name}, an owner.")
            if _owner_count(team) == 1:
                raise PeopleError(
                    f"{name} is the team's only owner and cannot be removed: "
                    "make someone else an owner first."
                )
        membership.delete()
        audit(team=team, action="member.remove", target=name, changes={"role": membership.role})
    return membership


def _user_by_email(email: str):
    # Imported here: accounts.selectors imports this module.
    from accounts.selectors import user_by_email

    return user_by_email(email=email)


def invitation_create(
    *, team: Team, actor, email: str, role: str, now: datetime | None = None
) -> tuple[Invitation, str]:
    """Invite `email` to `team` with `role`; return the invitation and its token, which is
    put in the emailed link and never stored. A pending invitation to the same address is
    revoked: only the newest link works."""
    now = now or timezone.now()
    email = email.strip().lower()
    if role not in Membership.Role.values:
        raise PeopleError(f"'{role}' is not a role.")
    with transaction.atomic():
        actor_role = _people_change_begin(team=team, actor=actor)
        if role == Membership.Role.OWNER and actor_role != Membership.Role.OWNER:
            raise PeopleError("Only an owner can invite an owner.")
        user = _user_by_email(email)
        if user is not None and Membership.objects.filter(team=team, user=user).exists():
            raise PeopleError(f"{email} is already a member of {team.name}; change their role.")
        Invitation.objects.filter(
            team=team, email=email, accepted_at__isnull=True, revoked_at__isnull=True
        ).update(revoked_at=now)
        token = secrets.token_urlsafe(32)
        invitation = Invitation.objects.create(
            team=team,
            email=email,
            role=role,
            token_hash=invitation_token_hash(token),
            invited_by=actor,
            created_at=now,
            expires_at=now + INVITATION_VALID_FOR,
        )
        audit(team=team, action="invitation.create", target=email, changes={"role": role})
    return invitation, token


def invitation_revoke(
    *, team: Team, actor, invitation_id: int, now: datetime | None = None
) -> Invitation:
    with transaction.atomic():
        _people_change_begin(team=team, actor=actor)
        invitation = Invitation.objects.filter(team=team, id=invitation_id).first()
        if invitation is None:
            raise PeopleError("There is no such invitation in this team.")
        if invitation.accepted_at is None and invitation.revoked_at is None:
            invitation.revoked_at = now or timezone.now()
            invitation.save(update_fields=["revoked_at"])
            audit(team=team, action="invitation.revoke", target=invitation.email)
    return invitation


def invitation_send(*, invitation: Invitation, accept_url: str) -> None:
    """Email the invitation's link (text and HTML). `accept_url` holds the token."""
    context = {
        "invitation": invitation,
        "team": invitation.team,
        "inviter": invitation.invited_by.get_username() if invitation.invited_by else "",
        "accept_url": accept_url,
    }
    message = EmailMultiAlternatives(
        " ".join(render_to_string("accounts/email/invitation_subject.txt", context).split()),
        render_to_string("accounts/email/invitation_body.txt", context),
        to=[invitation.email],
    )
    message.attach_alternative(
        render_to_string("accounts/email/invitation_body.html", context), "text/html"
    )
    message.send()


INVITATION_REFUSALS = {
    "unknown": "This invitation link is not valid. Check that it was copied whole.",
    "accepted": "This invitation has already been used. Sign in to open the team.",
    "revoked": "This invitation was withdrawn. Ask the team's owner or admin for a new one.",
    "expired": "This invitation has expired. Ask the team's owner or admin to send a new one.",
}


def _open_invitation(token: str, now: datetime) -> Invitation:
    """The pending invitation for `token`, locked for update, or InvitationError saying why not."""
    invitation = (
        Invitation.objects.select_for_update()
        .select_related("team")
        .filter(token_hash=invitation_token_hash(token))
        .first()
    )
    if invitation is None:
        raise InvitationError("unknown", INVITATION_REFUSALS["unknown"])
    state = invitation.state(now=now)
    if state != "pending":
        raise InvitationError(state, INVITATION_REFUSALS[state])
    return invitation


def _invitation_close(invitation: Invitation, user, now: datetime) -> Membership:
    # Someone already in the team keeps the role they have: an invitation never demotes.
    membership, _ = Membership.objects.get_or_create(
        team=invitation.team, user=user, defaults={"role": invitation.role}
    )
    invitation.accepted_at = now
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit(
        team=invitation.team,
        action="invitation.accept",
        target=user.get_username(),
        changes={"role": membership.role},
        actor=user.get_username(),
    )
    return membership


def invitation_accept(*, token: str, user, now: datetime | None = None) -> Membership:
    """A signed-in user joins the invitation's team. The invitation must be pending and sent
    to the user's own address."""
    now = now or timezone.now()
    with transaction.atomic():
        invitation = _open_invitation(token, now)
        addresses = {user.get_username().lower(), (user.email or "").lower()}
        if invitation.email not in addresses:
            raise InvitationError(
                "wrong_account",
                f"This invitation is for {invitation.email}, and you are signed in as "
                f"{user.get_username()}. Sign out, then open the link again.",
            )
        return _invitation_close(invitation, user, now)


def invitation_accept_new_user(
    *, token: str, password: str, now: datetime | None = None
) -> Membership:
    """Create the account of the invitation's address, with `password` (already validated),
    and join the team. Refused if the address already has an account: its owner signs in."""
    now = now or timezone.now()
    with transaction.atomic():
        invitation = _open_invitation(token, now)
        if _user_by_email(invitation.email) is not None:
            raise InvitationError(
                "existing_account",
                f"{invitation.email} already has an account: sign in to accept the invitation.",
            )
        user = get_user_model().objects.create_user(
            username=invitation.email, email=invitation.email, password=password
        )
        return _invitation_close(invitation, user, now)


def usage_webhook_set(*, team: Team, url: str, now: datetime | None = None) -> Team:
    """Turn the team's usage event webhook on (a new signing secret when first set; events
    from now on), change it (a paused delivery is tried again at once), or turn it off (an
    empty URL). The URL must pass the same outbound checks as the alert webhook."""
    from usage.events import usage_events_start

    now = now or timezone.now()
    with transaction.atomic():
        team = Team.objects.select_for_update().get(id=team.id)
        was_on, before = bool(team.usage_webhook_url), webhook_shown(team.usage_webhook_url)
        team.usage_webhook_url = url
        if url and not team.usage_webhook_secret:
            team.usage_webhook_secret = secrets.token_urlsafe(32)
        team.save(update_fields=["usage_webhook_url", "usage_webhook_secret"])
        if url:
            usage_events_start(team=team, now=now, from_now=not was_on)
        audit(
            team=team,
            action="webhook.usage",
            target=team.slug,
            changes={"usage_webhook_url": [before, webhook_shown(url)]},
        )
    return team


# How long the previous usage-webhook secret still signs after a rotation.
USAGE_WEBHOOK_SECRET_OVERLAP = timedelta(hours=24)


def usage_webhook_secret_rotate(*, team: Team, now: datetime | None = None) -> Team:
    """A new signing secret for the team's usage events. The previous one keeps signing too
    (a second signature in the header) for USAGE_WEBHOOK_SECRET_OVERLAP, so the consumer can
    switch without refusing an event; rotating again within it drops the oldest at once."""
    now = now or timezone.now()
    with transaction.atomic():
        team = Team.objects.select_for_update().get(id=team.id)
        team.usage_webhook_secret_previous = team.usage_webhook_secret
        team.usage_webhook_secret_previous_until = (
            now + USAGE_WEBHOOK_SECRET_OVERLAP if team.usage_webhook_secret else None
        )
        team.usage_webhook_secret = secrets.token_urlsafe(32)
        team.save(
            update_fields=[
                "usage_webhook_secret",
                "usage_webhook_secret_previous",
                "usage_webhook_secret_previous_until",
            ]
        )
        audit(team=team, action="webhook.usage_secret_rotate", target=team.slug)
    return team
