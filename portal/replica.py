"""Reports from a read replica, when there is one (DATABASE_REPLICA_URL).

The pages and API answers that only read the ledger (the overview, the calls explorer, the
usage list, summary and exports) run inside `reading_reports`; their reads go to the
replica, everything else (the hot path, budgets, invoices, anything that writes or must
see its own writes) to the primary. A replica lags a little: a report may miss the last
seconds of calls; the money paths never read it.
"""

import functools
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.conf import settings

REPLICA = "replica"
_reading_reports: ContextVar[bool] = ContextVar("reading_reports", default=False)


def reports_database() -> str:
    """The alias report reads go to: the replica when one is configured."""
    return REPLICA if REPLICA in settings.DATABASES else "default"


@contextmanager
def reading_reports():
    token = _reading_reports.set(True)
    try:
        yield
    finally:
        _reading_reports.reset(token)


def report(view: Callable[..., Any]) -> Callable[..., Any]:
    """A view whose reads are reports (see the module's doc)."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with reading_reports():
            return view(*args, **kwargs)

    return wrapped


class ReportsRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        if _reading_reports.get() and REPLICA in settings.DATABASES:
            return REPLICA
        return None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return None

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True  # the same data, whichever copy it was read from

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db == "default"  # the replica follows the primary
