"""The gateway's overhead and capacity, measured as production runs it (`make bench`).

Starts the fake upstream (bench/upstream.py: configurable delay, chunk count and chunk
delay) and the portal under uvicorn with every feature on (PostgreSQL, Redis, a team
budget, a rate-limited key, JSON call logs), warms up, then drives bounded load for each
case: JSON calls and 20-chunk streams, at concurrency 1, 32 and 64, with 1 and 2 worker
processes, and the fake upstream called directly at the same concurrency in the same run.

Reports per case: latency p50/p99 and what the gateway adds to the direct figures, time to
first token (streams) and what the gateway adds, calls/s, CPU ms per call (the portal
processes' own CPU counters), peak RSS per worker, errors, and ledger rows vs calls made.
Prints a table and writes bench/results/harness.json.

Knobs: BENCH_CASE_S (seconds measured per case, default 8), BENCH_WARMUP_S (2),
BENCH_CONCURRENCY ("1,32,64"), BENCH_WORKERS ("1,2"), BENCH_UPSTREAM_DELAY_S (0),
BENCH_UPSTREAM_CHUNKS (20), BENCH_UPSTREAM_CHUNK_DELAY_S (0).
"""

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
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

CASE_S = float(os.environ.get("BENCH_CASE_S", "8"))
WARMUP_S = float(os.environ.get("BENCH_WARMUP_S", "2"))
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,32,64").split(",")]
WORKERS = [int(w) for w in os.environ.get("BENCH_WORKERS", "1,2").split(",")]
BODY = {
    "model": "deepseek-v4-flash",
    "messages": [{"role": "user", "content": "Classify: the parcel arrived broken."}],
}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


async def drive(url: str, headers: dict, stream: bool, concurrency: int, seconds: float):
    """Calls from `concurrency` clients for `seconds`: (latencies, ttfts, errors, calls)."""
    latencies: list[float] = []
    ttfts: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    body = {**BODY, "stream": stream}
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as client:

        async def one_client():
            nonlocal errors
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    if stream:
                        async with client.stream("POST", url, headers=headers, json=body) as answer:
                            first = None
                            async for line in answer.aiter_lines():
                                if first is None and line.startswith("data:"):
                                    first = time.monotonic()
                            ok = answer.status_code == 200
                        if first is not None:
                            ttfts.append(first - started)
                    else:
                        answer = await client.post(url, headers=headers, json=body)
                        ok = answer.status_code == 200
                except httpx2.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.monotonic() - started)
                else:
                    errors += 1

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return latencies, ttfts, errors, len(latencies) + errors


class Sampler:
    """The portal's processes (the uvicorn parent and its workers): CPU and peak RSS."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def processes(self) -> list[psutil.Process]:
        return [self.root, *self.root.children(recursive=True)]

    def cpu_s(self) -> float:
        total = 0.0
        for process in self.processes():
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            for process in self.processes():
                try:
                    rss = process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                self.peak[process.pid] = max(self.peak.get(process.pid, 0), rss)
            self._stop.wait(0.25)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peak_worker_rss_mb(self) -> float:
        workers = self.root.children(recursive=True) or [self.root]
        peaks = [self.peak.get(w.pid, 0) for w in workers]
        return round(max(peaks or [0]) / 2**20, 1)


def ledger_calls(env: dict, slug: str) -> int:
    out = manage(
        env,
        "shell",
        "-c",
        "from usage.models import UsageRecord as U; "
        f"print(U.objects.filter(team__slug='{slug}').values('request_id').distinct().count())",
    )
    return int(out.strip().splitlines()[-1])


def start(command: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def main() -> int:
    env = production_env(
        PROMETHEUS_MULTIPROC_DIR=tempfile.mkdtemp(prefix="tollgate-bench-metrics-"),
        BENCH_UPSTREAM_CHUNKS=os.environ.get("BENCH_UPSTREAM_CHUNKS", "20"),
    )
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    catalog_at(env, upstream, "harness")
    slug, secret = bench_team(env, "bench", budget="1000000", rpm="10000000")
    uvicorn = [sys.executable, "-m", "uvicorn", "--no-access-log", "--log-level", "warning"]
    upstream_proc = start([*uvicorn, "bench.upstream:app", "--port", str(up_port)], env)
    results = []
    try:
        wait_for(f"http://127.0.0.1:{up_port}/")
        direct: dict[tuple[str, int], tuple] = {}
        for kind in ("json", "stream"):
            for concurrency in CONCURRENCY:
                url = f"{upstream}/chat/completions"
                asyncio.run(drive(url, {}, kind == "stream", concurrency, WARMUP_S))
                direct[kind, concurrency] = asyncio.run(
                    drive(url, {}, kind == "stream", concurrency, CASE_S)
                )
        for workers in WORKERS:
            port = free_port()
            portal = start(
                [
                    *uvicorn,
                    "portal.asgi:application",
                    "--port",
                    str(port),
                    "--workers",
                    str(workers),
                ],
                env,
            )
            try:
                wait_for(f"http://127.0.0.1:{port}/v1/models")
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                headers = {"Authorization": f"Bearer {secret}"}
                for kind in ("json", "stream"):
                    for concurrency in CONCURRENCY:
                        asyncio.run(drive(url, headers, kind == "stream", concurrency, WARMUP_S))
                        before_rows = ledger_calls(env, slug)
                        with Sampler(portal.pid) as sampler:
                            cpu_before = sampler.cpu_s()
                            latencies, ttfts, errors, calls = asyncio.run(
                                drive(url, headers, kind == "stream", concurrency, CASE_S)
                            )
                            cpu_used = sampler.cpu_s() - cpu_before
                        time.sleep(0.5)  # the last ledger writes
                        rows = ledger_calls(env, slug) - before_rows
                        base_lat, base_ttft = direct[kind, concurrency][:2]
                        results.append(
                            {
                                "workers": workers,
                                "kind": kind,
                                "concurrency": concurrency,
                                "calls": calls,
                                "per_s": round(calls / CASE_S, 1),
                                "p50_ms": round(statistics.median(latencies) * 1000, 2),
                                "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
                                "added_p50_ms": round(
                                    (statistics.median(latencies) - statistics.median(base_lat))
                                    * 1000,
                                    2,
                                ),
                                "added_p99_ms": round(
                                    (percentile(latencies, 0.99) - percentile(base_lat, 0.99))
                                    * 1000,
                                    2,
                                ),
                                "ttft_p50_ms": round(statistics.median(ttfts) * 1000, 2)
                                if ttfts
                                else None,
                                "added_ttft_p50_ms": round(
                                    (statistics.median(ttfts) - statistics.median(base_ttft))
                                    * 1000,
                                    2,
                                )
                                if ttfts and base_ttft
                                else None,
                                "cpu_ms_per_call": round(cpu_used * 1000 / max(calls, 1), 2),
                                "peak_rss_mb_per_worker": sampler.peak_worker_rss_mb(),
                                "errors": errors,
                                "ledger_calls": rows,
                            }
                        )
            finally:
                portal.terminate()
                portal.wait(timeout=30)
    finally:
        upstream_proc.terminate()
        upstream_proc.wait(timeout=10)

    columns = [
        ("workers", "w"),
        ("kind", "kind"),
        ("concurrency", "conc"),
        ("per_s", "calls/s"),
        ("p50_ms", "p50"),
        ("p99_ms", "p99"),
        ("added_p50_ms", "+p50"),
        ("added_p99_ms", "+p99"),
        ("added_ttft_p50_ms", "+ttft"),
        ("cpu_ms_per_call", "cpu ms"),
        ("peak_rss_mb_per_worker", "rss MB"),
        ("errors", "errors"),
        ("calls", "calls"),
        ("ledger_calls", "ledger"),
    ]
    print(" ".join(f"{label:>8}" for _, label in columns))
    for row in results:
        print(" ".join(f"{'-' if row[key] is None else row[key]!s:>8}" for key, _ in columns))
    (ROOT / "bench" / "results" / "harness.json").write_text(json.dumps(results, indent=2))
    lost = [r for r in results if r["ledger_calls"] != r["calls"]]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
