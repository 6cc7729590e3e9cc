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

Then, on one worker: BENCH_SLOW_STREAMS (1,000) concurrent streams whose 20 chunks come
500 ms apart, opened over 5 s and then all open together (time to first byte p50/p99,
errors, ledger rows, and every log line about an exhausted pool), and the same number
of concurrent calls on a key limited to 60% of them per minute, which must get exactly
that many (the rest: 429).

Knobs: BENCH_CASE_S (seconds measured per case, default 8), BENCH_WARMUP_S (2),
BENCH_CONCURRENCY ("1,32,64"), BENCH_WORKERS ("1,2"), BENCH_UPSTREAM_DELAY_S (0),
BENCH_UPSTREAM_CHUNKS (20), BENCH_UPSTREAM_CHUNK_DELAY_S (0), BENCH_SLOW_STREAMS (1000;
0 skips the slow case).
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

import aiohttp
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
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,32,64").split(",") if c]
WORKERS = [int(w) for w in os.environ.get("BENCH_WORKERS", "1,2").split(",") if w]
SLOW_STREAMS = int(os.environ.get("BENCH_SLOW_STREAMS", "1000"))
BODY = {
    "model": "deepseek-v4-flash",
    "messages": [{"role": "user", "content": "Classify: the parcel arrived broken."}],
}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


async def drive(url: str, headers: dict, stream: bool, concurrency: int, seconds: float):
    """Calls from `concurrency` clients for `seconds`: (latencies, ttfts, errors, calls).
    The clients use aiohttp, the lightest of the usual async clients, since they share
    the machine's two cores with what they measure."""
    latencies: list[float] = []
    ttfts: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    body = json.dumps({**BODY, "stream": stream}).encode()
    headers = {**headers, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as client:

        async def one_client():
            nonlocal errors
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    async with client.post(url, data=body, headers=headers) as answer:
                        first = None
                        if stream:
                            async for _ in answer.content.iter_any():
                                first = first or time.monotonic()
                        else:
                            await answer.read()
                        ok = answer.status == 200
                    if first is not None:
                        ttfts.append(first - started)
                except (aiohttp.ClientError, TimeoutError):
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


async def burst(url: str, headers: dict, stream: bool, calls: int, ramp_s: float = 0) -> dict:
    """`calls` calls, each on its own connection, all at once or started evenly over
    `ramp_s` seconds: the status of each, and the time to the first byte of its body."""
    body = json.dumps({**BODY, "stream": stream}).encode()
    headers = {**headers, "Content-Type": "application/json"}
    statuses: list[int] = []
    ttfbs: list[float] = []
    failures: list[str] = []
    # Time to first byte by the second it started in (of the ramp): where the tail is.
    by_second: dict[int, list[float]] = {}
    gate = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as client:

        async def one(index: int):
            await gate.wait()
            if ramp_s:
                await asyncio.sleep(ramp_s * index / calls)
            started = time.monotonic()
            try:
                async with client.post(url, data=body, headers=headers) as answer:
                    first = None
                    async for _ in answer.content.iter_any():
                        first = first or time.monotonic()
                    statuses.append(answer.status)
                    if answer.status == 200 and first is not None:
                        ttfbs.append(first - started)
                        second = int(ramp_s * index / calls) if ramp_s else 0
                        by_second.setdefault(second, []).append(first - started)
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses.append(0)
                failures.append(type(exc).__name__)

        tasks = [asyncio.ensure_future(one(i)) for i in range(calls)]
        await asyncio.sleep(0.2)
        gate.set()
        await asyncio.gather(*tasks)
    return {
        "ok": statuses.count(200),
        "refused_429": statuses.count(429),
        "errors": len(statuses) - statuses.count(200) - statuses.count(429),
        "error_statuses": sorted({s for s in statuses if s not in (200, 429)}),
        "client_failures": sorted(set(failures)),
        "ttfb_p50_ms": round(statistics.median(ttfbs) * 1000, 1) if ttfbs else None,
        "ttfb_p99_ms": round(percentile(ttfbs, 0.99) * 1000, 1) if ttfbs else None,
        "ttfb_p99_ms_by_second_started": {
            second: round(percentile(values, 0.99) * 1000, 1)
            for second, values in sorted(by_second.items())
        },
    }


def slow_streams(env: dict, slow_upstream: str) -> dict:
    """One worker under SLOW_STREAMS concurrent slow streams, then a burst against a key
    limited to 60% of it per minute."""
    catalog_at(env, slow_upstream, "harness-slow")
    slug, secret = bench_team(env, "slow", budget="1000000", rpm="10000000")
    allowed = SLOW_STREAMS * 6 // 10
    limited_slug, limited = bench_team(env, "limited", budget="1000000", rpm=str(allowed))
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="tollgate-bench-slow-", suffix=".log")
    uvicorn = [sys.executable, "-m", "uvicorn", "--no-access-log", "--log-level", "warning"]
    portal = subprocess.Popen(
        [*uvicorn, "portal.asgi:application", "--port", str(port), "--backlog", "4096"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        wait_for(f"http://127.0.0.1:{port}/v1/models")
        asyncio.run(drive(url, {"Authorization": f"Bearer {secret}"}, True, 8, WARMUP_S))
        before = ledger_calls(env, slug)
        with Sampler(portal.pid) as sampler:
            # Started over 5 s; each lasts about 10 s, so all are open at once from then on.
            streams = asyncio.run(
                burst(url, {"Authorization": f"Bearer {secret}"}, True, SLOW_STREAMS, ramp_s=5)
            )
        time.sleep(1)
        streams["ledger_calls"] = ledger_calls(env, slug) - before
        streams["peak_rss_mb"] = sampler.peak_worker_rss_mb()
        # The limited burst, early in a minute's window so that it falls in one.
        if time.time() % 60 > 45:
            time.sleep(60 - time.time() % 60 + 0.5)
        limited_result = asyncio.run(
            burst(url, {"Authorization": f"Bearer {limited}"}, False, SLOW_STREAMS)
        )
        limited_result["limit_rpm"] = allowed
        limited_result["ledger_calls"] = ledger_calls(env, limited_slug)
    finally:
        portal.terminate()
        portal.wait(timeout=60)
    log.seek(0)
    lines = log.read().splitlines()
    exhausted = [line for line in lines if "pool" in line.lower() or '"ERROR"' in line]
    warnings = sorted({line[:300] for line in lines if '"WARNING"' in line})
    return {
        "streams": SLOW_STREAMS,
        **streams,
        "pool_exhaustion_or_error_lines": len(exhausted),
        "first_such_line": exhausted[0][:300] if exhausted else None,
        "warnings": warnings[:10],
        "rate_limited_burst": limited_result,
    }


def _busy_s(times) -> float:
    """CPU seconds the machine spent busy (all cores), from psutil.cpu_times()."""
    return (
        times.user
        + times.system
        + getattr(times, "nice", 0)
        + getattr(times, "irq", 0)
        + (getattr(times, "softirq", 0))
    )


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
    slow: dict | None = None
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
                            machine_before = psutil.cpu_times()
                            cpu_before = sampler.cpu_s()
                            latencies, ttfts, errors, calls = asyncio.run(
                                drive(url, headers, kind == "stream", concurrency, CASE_S)
                            )
                            cpu_used = sampler.cpu_s() - cpu_before
                            machine = _busy_s(psutil.cpu_times()) - _busy_s(machine_before)
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
                                # The whole machine: the portal, and the clients, upstream,
                                # PostgreSQL and Redis it shares the cores with.
                                "machine_cpu_pct": round(100 * machine / CASE_S),
                                "others_cpu_ms_per_call": round(
                                    (machine - cpu_used) * 1000 / max(calls, 1), 2
                                ),
                                "peak_rss_mb_per_worker": sampler.peak_worker_rss_mb(),
                                "errors": errors,
                                "ledger_calls": rows,
                            }
                        )
            finally:
                portal.terminate()
                portal.wait(timeout=30)
        if SLOW_STREAMS:
            slow_port = free_port()
            slow_env = {**env, "BENCH_UPSTREAM_CHUNK_DELAY_S": "0.5"}
            slow_proc = start([*uvicorn, "bench.upstream:app", "--port", str(slow_port)], slow_env)
            try:
                wait_for(f"http://127.0.0.1:{slow_port}/")
                slow = slow_streams(env, f"http://127.0.0.1:{slow_port}/v1")
            finally:
                slow_proc.terminate()
                slow_proc.wait(timeout=10)
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
        ("others_cpu_ms_per_call", "others"),
        ("machine_cpu_pct", "box %"),
        ("peak_rss_mb_per_worker", "rss MB"),
        ("errors", "errors"),
        ("calls", "calls"),
        ("ledger_calls", "ledger"),
    ]
    print(" ".join(f"{label:>8}" for _, label in columns))
    for row in results:
        print(" ".join(f"{'-' if row[key] is None else row[key]!s:>8}" for key, _ in columns))
    for kind in ("json", "stream"):
        best = {
            w: max(
                (r["per_s"] for r in results if r["workers"] == w and r["kind"] == kind), default=0
            )
            for w in (1, 2)
        }
        if best[1] and best[2]:
            print(f"{kind}: two workers {best[2] / best[1]:.2f}x one worker's best calls/s")
    if slow is not None:
        limited = slow["rate_limited_burst"]
        print(
            f"\n{slow['streams']} concurrent slow streams, 1 worker: "
            f"first byte p50 {slow['ttfb_p50_ms']} ms, p99 {slow['ttfb_p99_ms']} ms; "
            f"{slow['ok']} served, {slow['errors']} errors, {slow['ledger_calls']} in the ledger; "
            f"{slow['pool_exhaustion_or_error_lines']} pool-exhaustion or error log lines; "
            f"peak RSS {slow['peak_rss_mb']} MB"
        )
        print(
            f"{slow['streams']} concurrent calls on a key limited to {limited['limit_rpm']} RPM: "
            f"{limited['ok']} served, {limited['refused_429']} refused (429), "
            f"{limited['errors']} errors, {limited['ledger_calls']} in the ledger"
        )
    (ROOT / "bench" / "results" / "harness.json").write_text(
        json.dumps({"cases": results, "slow_streams": slow}, indent=2)
    )
    lost = [r for r in results if r["ledger_calls"] != r["calls"]]
    if slow is not None:
        limited = slow["rate_limited_burst"]
        if slow["ledger_calls"] != slow["streams"] or limited["ok"] != limited["limit_rpm"]:
            lost.append(slow)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
