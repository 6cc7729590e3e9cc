"""OpenAI-shaped errors for /v1: `{"error": {"message", "type", "param", "code"}}`.

Every error the proxy answers goes through `openai_error_response`, whether
it was raised by DRF (authentication, parsing), by the proxy, or passed on
from an upstream.
"""

import logging
import re

from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from rest_framework import exceptions as drf_exceptions

logger = logging.getLogger(__name__)
# The meter's logger: a call that never reached it gets its one line here (log_unmetered).
call_logger = logging.getLogger("tollgate.calls")

# OpenAI's `type` for each status we answer with.
_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ProxyError(Exception):
    """An error to answer a /v1 client with, in OpenAI's shape. `recorded` once the meter
    has written (and logged) the refusal."""

    recorded = False

    def __init__(
        self, status, message, *, type=None, param=None, code=None, headers=None, body=None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_FOR_STATUS.get(status, "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers or {}
        # An upstream's own OpenAI-shaped body, passed on unchanged.
        self.body = body

    def payload(self):
        if self.body is not None:
            return self.body
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def openai_error_response(error: ProxyError) -> JsonResponse:
    response = JsonResponse(error.payload(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


def proxy_exception_handler(exc, context):
    """DRF exception handler for the /v1 views."""
    if isinstance(exc, ProxyError):
        return openai_error_response(exc)
    if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
        message = str(exc.detail)
        if isinstance(exc, drf_exceptions.NotAuthenticated):
            message = "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        return openai_error_response(ProxyError(401, message, code="invalid_api_key"))
    if isinstance(exc, drf_exceptions.ParseError):
        return openai_error_response(
            ProxyError(400, f"We could not parse the JSON body of your request. ({exc.detail})")
        )
    if isinstance(exc, RequestDataTooBig):
        return openai_error_response(request_too_large())
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        return openai_error_response(ProxyError(405, str(exc.detail), code="method_not_allowed"))
    if isinstance(exc, drf_exceptions.APIException):
        return openai_error_response(ProxyError(exc.status_code, str(exc.detail)))
    from portal.unavailable import RETRY_AFTER_S, database_down

    if database_down(exc):
        return openai_error_response(
            ProxyError(
                503,
                "The gateway's database is unavailable for a moment; try again shortly.",
                code="database_unavailable",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        )
    logger.exception("unhandled error in the proxy", exc_info=exc)
    return openai_error_response(
        ProxyError(500, "The gateway had an internal error.", code="internal_error")
    )


def request_too_large():
    return ProxyError(413, "The request body is too large.", code="request_too_large")


def stream_unfinished() -> ProxyError:
    """An upstream stream that ended cleanly before its answer did (routing.streaming)."""
    return ProxyError(
        502, "The upstream's stream ended before its answer was complete.", code="upstream_error"
    )


def log_unmetered(
    *,
    request_id: str,
    http_status: int,
    path: str,
    payload: object = None,
    key_prefix: str = "",
    team_id: int | None = None,
) -> None:
    """The one line, and the count, for a /v1 request the meter did not see: a refusal
    before it (no key, a bad key, a body that does not parse, over a rate limit, too large,
    not HTTPS: tollgate_proxy_rejected_total) or a request that is not a call (the model
    list: tollgate_proxy_requests_total). The same logger and fields as a call's line, so
    every request has exactly one."""
    from usage.metrics import rejected, requests

    endpoint = _endpoint_of(path)
    refused = http_status >= 400
    error = payload.get("error") if isinstance(payload, dict) else None
    code = (error.get("code") or error.get("type")) if isinstance(error, dict) else None
    code = str(code or "")[:64]
    if refused:
        rejected.labels(endpoint, str(http_status), code).inc()
    else:
        requests.labels(endpoint, "", "", "ok").inc()
    if not call_logger.isEnabledFor(logging.INFO):
        return
    fields = {
        "request_id": request_id,
        "team_id": team_id,
        "key_prefix": key_prefix,
        "path": path[:200],
        "endpoint": endpoint,
        "status": "refused" if refused else "ok",
        "http_status": http_status,
        "code": code,
    }
    call_logger.info(
        "%(status)s %(request_id)s status=%(http_status)s code=%(code)s path=%(path)s "
        "key=%(key_prefix)s",
        fields,
        extra=fields,
    )


# The /v1 paths the metrics name, by their endpoint label; anything else is "other".
_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/embeddings": "embeddings",
    "/v1/models": "models",
}


def _endpoint_of(path: str) -> str:
    if path.startswith("/v1/models/"):
        return "models"
    return _ENDPOINTS.get(path.rstrip("/"), "other")


# What an upstream's error may carry that a tenant must never see: its provider key (OpenAI
# echoes part of a wrong one), bearer tokens, JWTs, credentials in URLs, and any long
# unbroken token that could be one.
_SECRETISH = re.compile(
    r"(?i:bearer|basic)\s+\S+"
    r"|\b(?:sk|pk|rk|tgk|ak|api[-_]?key|key|token|secret)[-_:=][^\s\"',;)]{4,}"
    r"|\bAIza[0-9A-Za-z_\-]{10,}"
    r"|\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"
    r"|(?<=://)[^/\s:@]+:[^/\s@]+@"
    r"|[A-Za-z0-9+/=_]{32,}"
    r"|\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
    r"|(?i:password|passwd|pwd)\s*[=:]\s*\S+"
)
# An error's type and code are identifiers (invalid_api_key, rate_limit_exceeded): lower
# case, no digits first, no hyphens, short. A param names a field (messages[0].content).
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
UPSTREAM_MESSAGE_MAX = 500


def provider_secrets() -> list[str]:
    """The provider secrets this gateway holds (the catalog's api_key_env variables): an
    upstream that echoes one, in any shape, has it removed by its exact value."""
    import os

    from routing.selectors import catalog_snapshot_held

    # Every variable that looks like a key, and every one the catalog this process holds
    # names: an error path must not depend on the database answering, nor block the loop.
    names = {name for name in os.environ if name.endswith(("_API_KEY", "_KEY", "_TOKEN"))}
    if (catalog := catalog_snapshot_held()) is not None:
        names |= {m.provider.api_key_env for m in catalog.models.values()}
    return sorted(
        (value for name in names if name and len(value := os.environ.get(name, "")) >= 6),
        key=len,
        reverse=True,
    )


def sanitized(text: str, secrets: list[str] | None = None) -> str:
    """An upstream's words made fit for a tenant, a log or the ledger: the gateway's own
    provider secrets and anything key-shaped replaced, control characters dropped, at most
    UPSTREAM_MESSAGE_MAX characters."""
    for secret in provider_secrets() if secrets is None else secrets:
        text = text.replace(secret, "[redacted]")
    text = _CONTROL.sub("", _SECRETISH.sub("[redacted]", text))
    return text[:UPSTREAM_MESSAGE_MAX]


def upstream_error(body: object, *, fallback: str) -> dict:
    """An upstream's OpenAI-shaped error reduced to its four fields: the message sanitized,
    type, code and param kept only when they are short plain words. Nothing else of the
    upstream's body is passed on."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = body if isinstance(body, dict) and "message" in body else {}
    secrets = provider_secrets()

    def kept(value, pattern):
        if (
            isinstance(value, str)
            and pattern.match(value)
            and not _SECRETISH.search(value)
            and not any(secret in value for secret in secrets)
        ):
            return value
        return None

    message = error.get("message")
    return {
        "message": sanitized(message, secrets)
        if isinstance(message, str) and message
        else fallback,
        "type": kept(error.get("type"), _IDENTIFIER) or "upstream_error",
        "param": kept(error.get("param"), _PARAM),
        "code": kept(error.get("code"), _IDENTIFIER),
    }
