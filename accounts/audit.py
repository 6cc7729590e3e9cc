"""The audit log: who changed what in a team, when, from which address.

Services call `audit()` as they make a change, inside the change's transaction, so the
record and the change commit together. The actor and address come from the request being
served (set by portal.middleware.request_id): the signed-in person, or the management key
that authenticated; a change made without a request (a command, a scheduled task) is
"system". Rows are append-only (accounts.models.AuditEvent).
"""

from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from django.http import HttpRequest

from accounts.models import AuditEvent, Team

current_request: ContextVar[HttpRequest | None] = ContextVar("current_request", default=None)
# Who acts when no request does (a management command names itself here).
current_system_actor: ContextVar[str] = ContextVar("current_system_actor", default="system")


def audit(
    *,
    team: Team | None,
    action: str,
    target: str = "",
    changes: dict[str, Any] | None = None,
    actor: str | None = None,
) -> AuditEvent:
    request = current_request.get()
    return AuditEvent.objects.create(
        team=team,
        action=action,
        target=str(target)[:200],
        changes=changes or {},
        actor=(actor or _actor(request))[:200],
        address=_address(request),
    )


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list]:
    """{field: [before, after]} for the fields that changed, as JSON-safe values."""
    return {
        name: [_plain(before.get(name)), _plain(after.get(name))]
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    }


def webhook_shown(url: str) -> str:
    """A webhook URL as the log keeps it: where it points, not its secret path or query
    (a Slack webhook's path is its credential)."""
    if not url:
        return ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}/…"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def _actor(request: HttpRequest | None) -> str:
    if request is None:
        return current_system_actor.get()
    user = getattr(request, "user", None)
    prefix = getattr(user, "prefix", None)
    if prefix:
        return f"key:{prefix}"
    if user is not None and getattr(user, "is_authenticated", False):
        return user.get_username()
    return "anonymous"


def _address(request: HttpRequest | None) -> str | None:
    if request is None:
        return None
    from axes.helpers import get_client_ip_address

    # The same address sign-in throttling counts (TOLLGATE_PROXY_COUNT decides whose).
    return get_client_ip_address(request) or None
