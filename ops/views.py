"""/healthz, /readyz and /metrics: served without the browser middleware (portal.asgi
mounts them on the bare handler) and without a session, CSRF or a user."""

import hmac

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from ops import metrics
from ops.health import readiness


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    # The process answers: nothing else is asked.
    return JsonResponse({"status": "ok"})


@require_GET
async def readyz(request: HttpRequest) -> HttpResponse:
    checks = await sync_to_async(readiness, thread_sensitive=False)()
    failing = sorted(name for name, result in checks.items() if result != "ok")
    body = {"status": "unavailable" if failing else "ok", "failing": failing, "checks": checks}
    response = JsonResponse(body, status=503 if failing else 200)
    # Not one error line per probe: readiness logs what fails, once a minute.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.TOLLGATE_METRICS_TOKEN
    if token:
        # The scheme's name is case-insensitive (RFC 9110); the token is compared in
        # constant time.
        scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            sent.strip().encode(), token.encode()
        ):
            response = HttpResponse("A valid metrics token is required.\n", status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    payload, content_type = metrics.exposition()
    return HttpResponse(payload, content_type=content_type)
