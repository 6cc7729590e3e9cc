"""Prometheus exposition, and the metrics of the process set itself (Celery task outcomes).

The calls' own metrics (requests, tokens, spend, latency) are defined where their outcome
is known once: usage.metrics, fed by the metering boundary.

With several worker processes each one writes its values to files under
PROMETHEUS_MULTIPROC_DIR (set before start, emptied at each deploy), and /metrics sums
the files of all of them; without it, this process's registry is the whole answer.
"""

import atexit
import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
    multiprocess,
)

# Every Celery task run by its outcome: success, failure, retry.
celery_tasks = Counter(
    "tollgate_celery_task_calls",
    "Celery task runs by task name and outcome (success, failure, retry)",
    ["task", "outcome"],
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> tuple[bytes, str]:
    """The metrics of every process sharing PROMETHEUS_MULTIPROC_DIR, or of this one."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


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
    if multiprocess_dir():
        # A live gauge (calls in flight) must not count a worker that has exited.
        atexit.register(multiprocess.mark_process_dead, os.getpid())
