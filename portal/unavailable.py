"""The database unreachable: a quick 503 that says so, in each surface's own shape (/v1:
OpenAI's, /api: DRF's, pages: a readable page), never a 500; one warning a minute in the log.

A connection that fails (refused, reset, timed out, the pool empty past its wait) is an
OperationalError or InterfaceError; other database errors stay bugs (500s).
"""

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.template.loader import render_to_string
from rest_framework.response import Response
from rest_framework.views import exception_handler

from portal.logs import warn_at_most_every

logger = logging.getLogger("tollgate.database")

DATABASE_DOWN = (OperationalError, InterfaceError)
MESSAGE = "The service's database is unavailable for a moment; try again shortly."
RETRY_AFTER_S = "2"


def database_down(exc: BaseException) -> bool:
    if isinstance(exc, DATABASE_DOWN):
        warn_at_most_every(60, logger, "database-down", "the database is unavailable: %s", exc)
        return True
    return False


def api_exception_handler(exc, context):
    """DRF's handler, with a 503 for a database that does not answer."""
    if database_down(exc):
        return Response({"detail": MESSAGE}, status=503, headers={"Retry-After": RETRY_AFTER_S})
    return exception_handler(exc, context)


class DatabaseUnavailableMiddleware:
    """The pages' (and /api's, outside DRF) 503 when the database does not answer."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exc) -> HttpResponse | None:
        if not database_down(exc):
            return None
        if request.path.startswith("/api/"):
            response: HttpResponse = JsonResponse({"detail": MESSAGE}, status=503)
        else:
            # Rendered without the request: its context processors would ask the database.
            response = HttpResponse(render_to_string("503.html", {"message": MESSAGE}), status=503)
        response["Retry-After"] = RETRY_AFTER_S
        return response
