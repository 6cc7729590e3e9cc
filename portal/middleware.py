"""Site-wide request hygiene for the pages and /api (the /v1 proxy has its own ASGI entry)."""

from django.http import JsonResponse
from django.shortcuts import render


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
