"""CORS for /v1, for browser apps that call the gateway directly with a key of their own.
Off unless TOLLGATE_CORS_ORIGINS names the origins (or "*"): the management API and the
web UI never answer other origins."""

from django.conf import settings

EXPOSED = (
    "x-request-id, x-tollgate-cost, x-tollgate-model, retry-after, x-should-retry, "
    "x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    "x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"
)


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return ""


class CorsForProxy:
    """ASGI middleware: answers preflights and marks responses of /v1 for allowed origins."""

    def __init__(self, app, *, prefix: str = "/v1/"):
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        allowed = settings.TOLLGATE_CORS_ORIGINS
        if scope["type"] != "http" or not allowed or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        origin = _header(scope, b"origin")
        if not origin or ("*" not in allowed and origin not in allowed):
            return await self.app(scope, receive, send)
        granted = [
            (b"access-control-allow-origin", ("*" if "*" in allowed else origin).encode()),
            (b"vary", b"Origin"),
        ]
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            asked = _header(scope, b"access-control-request-headers")
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": granted
                    + [
                        (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
                        (b"access-control-allow-headers", (asked or "authorization").encode()),
                        (b"access-control-max-age", b"600"),
                    ],
                }
            )
            return await send({"type": "http.response.body", "body": b""})

        async def marked(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + granted
                headers.append((b"access-control-expose-headers", EXPOSED.encode()))
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, marked)
