"""A bounded soak: moderate mixed load for BENCH_SOAK_S seconds (default 600) against one
portal worker with every feature on (PostgreSQL, Redis, a team budget, a rate-limited key,
a fallback route) and an upstream that fails BENCH_UPSTREAM_FAIL_RATE of its requests
(default 10%). Not part of CI: `make soak`.

Checks, and writes bench/results/soak.json:
- the worker's memory (RSS) after warm-up stays within 10% (sampled every 10 s);
- no 5xx of the gateway's making (a call whose every attempt the upstream failed is a 502,
  about one in a million calls here: counted apart, from the ledger);
- ledger == calls: one distinct request id in the ledger for every call made.
"""

import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time

import httpx2
import psutil

from bench.proxy_overhead import (
    ROOT,
    free_port,
    manage,
    wait_for,
)
from bench.setup import bench_team, catalog_at, production_env

DURATION_S = float(os.environ.get("BENCH_SOAK_S", "600"))
WARMUP_S = min(60.0, DURATION_S / 5)
CLIENTS = int(os.environ.get("BENCH_SOAK_CLIENTS", "4"))
MESSAGES = [{"role": "user", "content": "Classify: the parcel arrived broken."}]


def main() -> int:
    env = production_env(
        LOG_LEVEL="WARNING",
        BENCH_UPSTREAM_FAIL_RATE=os.environ.get("BENCH_UPSTREAM_FAIL_RATE", "0.1"),
        BENCH_UPSTREAM_DELAY_S=os.environ.get("BENCH_UPSTREAM_DELAY_S", "0.02"),
    )
    up_port, portal_port = free_port(), free_port()
    catalog_at(
        env,
        f"http://127.0.0.1:{up_port}/v1",
        "soak",
        '\n[[route]]\nname = "soak"\ntargets = ["deepseek-v4-flash", "qwen3-32b"]\nretries = 2\n',
    )
    slug, secret = bench_team(env, "soak", budget="100000", rpm="1000000")

    uvicorn = [sys.executable, "-m", "uvicorn", "--no-access-log", "--log-level", "warning"]
    upstream_proc = subprocess.Popen(
        [*uvicorn, "bench.upstream:app", "--port", str(up_port)], cwd=ROOT, env=env
    )
    portal_proc = subprocess.Popen(
        [*uvicorn, "portal.asgi:application", "--port", str(portal_port)], cwd=ROOT, env=env
    )
    statuses: dict[int, int] = {}
    calls, latencies, rss = [0], [], []
    lock = threading.Lock()
    stop = time.monotonic() + DURATION_S
    try:
        wait_for(f"http://127.0.0.1:{up_port}/")
        wait_for(f"http://127.0.0.1:{portal_port}/v1/models")
        url = f"http://127.0.0.1:{portal_port}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {secret}"}

        def client_loop(seed: int) -> None:
            rng = random.Random(seed)
            with httpx2.Client(timeout=60) as client:
                while time.monotonic() < stop:
                    stream = rng.random() < 0.3
                    body = {"model": "soak", "messages": MESSAGES, "stream": stream}
                    started = time.monotonic()
                    if stream:
                        with client.stream("POST", url, headers=headers, json=body) as answer:
                            for _ in answer.iter_lines():
                                pass
                    else:
                        answer = client.post(url, headers=headers, json=body)
                    with lock:
                        calls[0] += 1
                        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
                        latencies.append(time.monotonic() - started)

        threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        worker = psutil.Process(portal_proc.pid)
        began = time.monotonic()
        while any(t.is_alive() for t in threads):
            rss.append((round(time.monotonic() - began), worker.memory_info().rss))
            time.sleep(10)
        time.sleep(2)  # the last calls' ledger writes
        rows = (
            manage(
                env,
                "shell",
                "-c",
                "from usage.models import UsageRecord as U; "
                f"q = U.objects.filter(team__slug='{slug}'); "
                "from django.db.models import Q, Count; "
                "failed = q.values('request_id').annotate(n=Count('id'), "
                "bad=Count('id', filter=Q(status__in=['upstream_error', 'timeout']))); "
                "print(q.values('request_id').distinct().count(), q.count(), "
                "sum(1 for r in failed if r['n'] == r['bad']))",
            )
            .strip()
            .splitlines()[-1]
            .split()
        )
    finally:
        for proc in (portal_proc, upstream_proc):
            proc.terminate()
            proc.wait(timeout=20)

    distinct, total_rows, upstream_failed = int(rows[0]), int(rows[1]), int(rows[2])
    after_warmup = [r for t, r in rss if t >= WARMUP_S]
    growth = (after_warmup[-1] - after_warmup[0]) / after_warmup[0] if len(after_warmup) > 1 else 0
    five_xx = sum(n for s, n in statuses.items() if s >= 500)
    # A call whose every attempt the upstream failed is a 502 of the upstream's making.
    gateway_5xx = five_xx - upstream_failed
    latencies.sort()
    result = {
        "duration_s": DURATION_S,
        "clients": CLIENTS,
        "calls": calls[0],
        "calls_per_s": round(calls[0] / DURATION_S, 1),
        "statuses": statuses,
        "five_xx": five_xx,
        "calls_every_attempt_failed_upstream": upstream_failed,
        "gateway_5xx": gateway_5xx,
        "latency_ms": {
            "p50": round(statistics.median(latencies) * 1000, 1),
            "p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        },
        "ledger_distinct_request_ids": distinct,
        "ledger_rows_with_attempts": total_rows,
        "rss_mb": [(t, round(r / 2**20, 1)) for t, r in rss],
        "rss_growth_after_warmup": round(growth, 4),
    }
    (ROOT / "bench" / "results" / "soak.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rss_mb"}, indent=2))
    print("rss MB:", " ".join(f"{t}s:{m}" for t, m in result["rss_mb"]))
    ok = gateway_5xx == 0 and distinct == calls[0] and abs(growth) <= 0.10
    print("soak:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
