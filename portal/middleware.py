"""Site-wide request hygiene for the pages and /api (the /v1 proxy has its own ASGI entry)."""

from django.http import JsonResponse
from django.shortcuts import render

from accounts.audit import current_request
from portal.logs import current_request_id, new_request_id


def request_id(get_response):
    """An id for each request: on its response as `x-request-id`, and on every log line it
    causes (portal.logs), Django's own 4xx/5xx line included."""

    def middleware(request):
        request.request_id = new_request_id()
        current_request_id.set(request.request_id)
        acting = current_request.set(request)  # who acts, for the audit log (accounts.audit)
        try:
            response = get_response(request)
        finally:
            current_request.reset(acting)
        response["x-request-id"] = request.request_id
        return response

    return middleware


def refuse_nul_bytes(get_response):
    """A NUL byte in a path or query value can reach no page or record (PostgreSQL text
    cannot hold one), so the request is refused with a 400 up front, in the API's shape
    under /api, instead of failing deep in a query with a 500."""

    def middleware(request):
        query = [text for name, values in request.GET.lists() for text in (name, *values)]
        if "\x00" in request.path or any("\x00" in text for text in query):
            message = "The request contains a NUL byte (%00), which no field may hold."
            if request.path.startswith("/api/"):
                return JsonResponse({"detail": message}, status=400)
            return render(request, "400.html", {"message": message}, status=400)
        return get_response(request)

    return middleware
