"""What the proxy adds to a call: the same requests sent straight to an upstream
and through Tollgate (key check, routing, in-flight record, ledger write),
both over keep-alive HTTP from one client. Run with `make bench`.

Uses its own database (BENCH_DATABASE_URL, default tollgate_bench on the
local PostgreSQL) and REDIS_URL. Prints latency percentiles and the
overhead, and writes bench/results/latest.json.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import psycopg

ROOT = Path(__file__).resolve().parent.parent
DB_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tollgate_bench")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "2000"))
WARMUP = 300
BODY = {
    "model": "deepseek-v4-flash",
    "messages": [{"role": "user", "content": "Classify: the parcel arrived broken."}],
}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_database():
    base, name = DB_URL.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def manage(env, *args):
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def wait_for(url):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx2.get(url, timeout=1)
            return
        except httpx2.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def measure(client, url, headers, body, n):
    timings = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.post(url, json=body, headers=headers)
        if body.get("stream"):
            response.read()
        timings.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text
    return timings


def summary(timings):
    ordered = sorted(timings)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "mean": statistics.fmean(ordered),
    }


def main():
    ensure_database()
    env = {
        **os.environ,
        "DATABASE_URL": DB_URL,
        "REDIS_URL": REDIS_URL,
        "DEBUG": "false",
        "SECRET_KEY": "bench-secret-key-0123456789abcdef0123456789",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "BENCH_UPSTREAM_KEY": "sk-bench",
    }
    up_port, portal_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    manage(env, "migrate", "--no-input")
    manage(env, "loadcatalog", "catalog/default.toml")
    catalog = ROOT / "bench" / "results" / "bench-catalog.toml"
    catalog.parent.mkdir(exist_ok=True)
    catalog.write_text(
        f'[[provider]]\nname = "global"\nbase_url = "{upstream}"\napi_key_env = "BENCH_UPSTREAM_KEY"\n'
    )
    manage(env, "loadcatalog", str(catalog))
    manage(
        env,
        "shell",
        "-c",
        "from accounts.models import Team; Team.objects.filter(slug='bench').exists() or "
        "__import__('accounts.services', fromlist=['x']).team_create(slug='bench', name='Bench')",
    )
    secret = (
        manage(env, "issuekey", "bench", "--name", f"bench-{int(time.time())}")
        .strip()
        .splitlines()[-1]
    )

    uvicorn = [sys.executable, "-m", "uvicorn", "--no-access-log", "--log-level", "warning"]
    procs = [
        subprocess.Popen(
            [*uvicorn, "bench.upstream:app", "--port", str(up_port)], cwd=ROOT, env=env
        ),
        subprocess.Popen(
            [*uvicorn, "portal.asgi:application", "--port", str(portal_port)], cwd=ROOT, env=env
        ),
    ]
    try:
        wait_for(f"http://127.0.0.1:{up_port}/")
        wait_for(f"http://127.0.0.1:{portal_port}/v1/models")
        results = {}
        with httpx2.Client(timeout=30) as client:
            portal = f"http://127.0.0.1:{portal_port}/v1/chat/completions"
            direct = f"{upstream}/chat/completions"
            auth = {"Authorization": f"Bearer {secret}"}
            for label, body in (("json", BODY), ("stream", {**BODY, "stream": True})):
                measure(client, portal, auth, body, WARMUP)
                measure(client, direct, {}, body, WARMUP)
                results[label] = {
                    "direct": summary(measure(client, direct, {}, body, REQUESTS)),
                    "proxied": summary(measure(client, portal, auth, body, REQUESTS)),
                }
                results[label]["overhead"] = {
                    k: results[label]["proxied"][k] - results[label]["direct"][k]
                    for k in ("p50", "p90", "mean")
                }
        ledger = manage(
            env,
            "shell",
            "-c",
            "from usage.models import UsageRecord as U; "
            "print(U.objects.filter(team__slug='bench').count())",
        ).strip()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)

    print(
        f"{REQUESTS} sequential requests per case, keep-alive, one uvicorn worker; ledger rows for team bench: {ledger}"
    )
    print(f"{'case':8} {'path':8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for label, case in results.items():
        for path in ("direct", "proxied"):
            s = case[path]
            print(
                f"{label:8} {path:8} {s['p50']:8.2f} {s['p90']:8.2f} {s['p99']:8.2f} {s['mean']:8.2f}"
            )
        o = case["overhead"]
        print(f"{label:8} {'overhead':8} {o['p50']:8.2f} {o['p90']:8.2f} {'':>8} {o['mean']:8.2f}")
    (ROOT / "bench" / "results" / "latest.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
