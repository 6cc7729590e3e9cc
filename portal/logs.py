"""The request id in every log line a request causes.

Each request gets an id (`x-request-id` on its response: the pages and /api through
`request_id` below, /v1 through its views); log lines written while it is served carry it
as `request_id`, whichever logger writes them (Django's request logger, a warning deep in a
library), so an operator can find every line of one request.
"""

import logging
import uuid
from contextvars import ContextVar


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Adds the current request's id to a record that does not name one itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = current_request_id.get()
            if request_id is not None:
                record.request_id = request_id
        return True


_last_said: dict[str, float] = {}


def warn_at_most_every(
    seconds: float, logger: logging.Logger, key: str, message: str, *args
) -> None:
    """A warning about a lasting condition (a dependency down), said once per `seconds` per
    process, not once per request that meets it."""
    import time

    now = time.monotonic()
    if now - _last_said.get(key, -seconds) >= seconds:
        _last_said[key] = now
        logger.warning(message, *args)


class AtMostEveryMinute(logging.Filter):
    """Lets one record a minute through per logger and message template: for a library that
    logs each failure of a dependency that is down (django-redis, once per cache call)."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        import time

        key, now = (record.name, str(record.msg)), time.monotonic()
        if now - self.last.get(key, -60.0) < 60:
            return False
        self.last[key] = now
        return True
