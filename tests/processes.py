"""Real processes the tests start: a portal under uvicorn, a manage.py command; and the test
database's URL and a free port, for handing to them."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def database_url_of_tests() -> str:
    """The test database, as a URL another process can use."""
    from django.db import connection

    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def start_portal(
    env: dict, *args: str, log: Path | None = None, port: int | None = None
) -> tuple[subprocess.Popen, str]:
    """`uvicorn portal.asgi:application` with `env` and extra uvicorn `args`, once it answers
    /healthz (30 s at most); its output to `log`, or the test's own."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "portal.asgi:application", "--port", str(port), *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb") if log else None,
        stderr=subprocess.STDOUT if log else None,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx2.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            said = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"the portal on port {port} did not start\n{said}")
        time.sleep(0.2)


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()


def manage(
    *args: str, env: dict | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """manage.py in a process of its own; `env` replaces the environment when given."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
