"""Where one worker's time goes under load (`make profile`): py-spy samples the portal's
worker while the harness's clients drive JSON calls (or streams) at concurrency 32, then
the top frames are printed, by the share of samples they appear in (inclusive) and by
the share in which they are the innermost frame (self), and the flame graph's raw
collapsed stacks are written to bench/results/profile-<kind>.txt.

Knobs: BENCH_PROFILE_KIND (json or stream), BENCH_PROFILE_S (15), BENCH_CONCURRENCY (32).
"""

import asyncio
import collections
import os
import subprocess
import sys
import tempfile

import psutil

from bench.harness import drive, start
from bench.proxy_overhead import ROOT, free_port, wait_for
from bench.setup import bench_team, catalog_at, production_env

KIND = os.environ.get("BENCH_PROFILE_KIND", "json")
SECONDS = float(os.environ.get("BENCH_PROFILE_S", "15"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32").split(",")[0])


def frame_name(frame: str) -> str:
    # py-spy's raw frames: "function (path/to/module.py:line)"; kept: module and function.
    function, _, where = frame.partition(" (")
    path = where.split(":")[0]
    for marker in ("site-packages/", "/work/main/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path.removesuffix('.py').replace('/', '.')}:{function}"


def top_frames(raw: str, count: int = 25) -> tuple[list, list, int]:
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = [frame_name(f) for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n
    return inclusive.most_common(count), own.most_common(count), total


def main() -> int:
    env = production_env(PROMETHEUS_MULTIPROC_DIR=tempfile.mkdtemp(prefix="tollgate-profile-"))
    env["BENCH_UPSTREAM_CHUNKS"] = "20"
    up_port, port = free_port(), free_port()
    catalog_at(env, f"http://127.0.0.1:{up_port}/v1", "profile")
    _, secret = bench_team(env, "profile", budget="1000000", rpm="10000000")
    uvicorn = [sys.executable, "-m", "uvicorn", "--no-access-log", "--log-level", "warning"]
    upstream = start([*uvicorn, "bench.upstream:app", "--port", str(up_port)], env)
    portal = start([*uvicorn, "portal.asgi:application", "--port", str(port)], env)
    out = ROOT / "bench" / "results" / f"profile-{KIND}.txt"
    try:
        wait_for(f"http://127.0.0.1:{up_port}/")
        wait_for(f"http://127.0.0.1:{port}/v1/models")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {secret}"}
        stream = KIND == "stream"
        asyncio.run(drive(url, headers, stream, CONCURRENCY, 3))
        spy = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "py-spy"),
                "record",
                "-p",
                str(psutil.Process(portal.pid).pid),
                "-d",
                str(int(SECONDS)),
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        latencies, _, errors, calls = asyncio.run(
            drive(url, headers, stream, CONCURRENCY, SECONDS + 1)
        )
        spy.wait(timeout=60)
    finally:
        portal.terminate()
        upstream.terminate()
        portal.wait(timeout=30)
        upstream.wait(timeout=10)
    inclusive, own, total = top_frames(out.read_text())
    print(
        f"{KIND} calls at concurrency {CONCURRENCY}: {calls} calls, {errors} errors, "
        f"{total} samples in {out.relative_to(ROOT)}"
    )
    print("\nInclusive (share of samples a frame is on the stack):")
    for name, n in inclusive:
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("\nSelf (share of samples a frame is innermost):")
    for name, n in own[:15]:
        print(f"  {100 * n / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
