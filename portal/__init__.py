# Before anything that defines a metric: how metric values are stored across processes.
from portal import prometheus  # noqa: F401, I001
from portal.celery import app as celery_app

__all__ = ("celery_app",)
