"""Prometheus exposition, and the metrics of the process set itself (Celery task outcomes).

The calls' own metrics (requests, tokens, spend, latency) are defined where their outcome
is known once: usage.metrics, fed by the metering boundary.

With several worker processes each one writes its values to files under
PROMETHEUS_MULTIPROC_DIR (set before start, emptied at each deploy; portal.prometheus names
the files), and /metrics sums the files of all of them; without it, this process's registry
is the whole answer. Counters only: what is in flight is read from the database at each
scrape, where the calls of every process (a killed one's too, until swept) are open.
"""

import os
from collections.abc import Iterator
from typing import Any

from django.db import DatabaseError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Every Celery task run by its outcome: success, failure, retry.
celery_tasks = Counter(
    "tollgate_celery_task_calls",
    "Celery task runs by task name and outcome (success, failure, retry)",
    ["task", "outcome"],
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class InFlightCollector(Collector):
    """Calls opened (budget reserved) and not yet recorded, across every gateway process:
    the open entries of the calls journal. Left out while the database does not answer
    (/readyz says so)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.utils import timezone

        from usage.horizon import oldest_transaction_start
        from usage.models import MeteredCall

        try:
            count = MeteredCall.objects.in_flight().count()
            began = oldest_transaction_start()
        except DatabaseError:
            return
        oldest = (timezone.now() - began).total_seconds() if began else 0.0
        yield GaugeMetricFamily(
            "tollgate_calls_in_flight",
            "Calls opened (budget reserved) and not yet recorded, in every gateway process",
            value=count,
        )
        yield GaugeMetricFamily(
            "tollgate_database_oldest_transaction_seconds",
            "Age of the oldest open transaction in the database: the rollups and usage events "
            "wait behind it (usage.horizon); alert when it stays over a minute",
            value=oldest,
        )


def exposition() -> tuple[bytes, str]:
    """The metrics of every process sharing PROMETHEUS_MULTIPROC_DIR (or of this one), and
    the calls in flight."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    in_flight = CollectorRegistry()
    in_flight.register(InFlightCollector())
    return generate_latest(registry) + generate_latest(in_flight), CONTENT_TYPE_LATEST


def _task_name(sender: Any) -> str:
    return str(getattr(sender, "name", None) or sender or "unknown")


def _on_success(sender: Any = None, **kwargs: Any) -> None:
    celery_tasks.labels(_task_name(sender), "success").inc()


def _on_failure(sender: Any = None, **kwargs: Any) -> None:
    celery_tasks.labels(_task_name(sender), "failure").inc()


def _on_retry(sender: Any = None, **kwargs: Any) -> None:
    celery_tasks.labels(_task_name(sender), "retry").inc()


def celery_signals_connect() -> None:
    """Count task outcomes in whichever process runs them (a worker, or this one when eager)."""
    from celery.signals import task_failure, task_retry, task_success

    task_success.connect(_on_success, weak=False, dispatch_uid="tollgate-metrics-success")
    task_failure.connect(_on_failure, weak=False, dispatch_uid="tollgate-metrics-failure")
    task_retry.connect(_on_retry, weak=False, dispatch_uid="tollgate-metrics-retry")
