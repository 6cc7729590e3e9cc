"""Prometheus multiprocess mode, chosen before any metric exists.

With PROMETHEUS_MULTIPROC_DIR set, every process writes its metric values to files there
and /metrics sums them all (ops.metrics). The files are named by process; prometheus_client
names them by pid alone, which is only unique on one machine. Processes in several
containers that share the directory (compose.yaml's `metrics` volume: the web processes and
the Celery workers) can have the same pid, so the name here is `<hostname>-<pid>`.
"""

import os
import socket

from prometheus_client import values


def process_identity() -> str:
    # No "_": prometheus_client splits the file names on it.
    return f"{socket.gethostname().replace('_', '-')}-{os.getpid()}"


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    values.ValueClass = values.MultiProcessValue(process_identifier=process_identity)
