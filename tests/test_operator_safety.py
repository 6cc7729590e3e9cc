"""What an operator's routine must never do: a restart that puts back catalog prices, mail
that prints reset links into the log, an image that carries .env, a failed export that
destroys the last good one, /metrics that hangs with the database."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import manage as run_manage

ROOT = Path(__file__).resolve().parent.parent
STRONG = "k" * 20 + "Z9-a_" * 8
# A port nothing listens on: a database that does not answer.
DEAD_DATABASE = "postgres://postgres@127.0.0.1:8698/nothing"


def manage(*args, timeout=120, **env):
    environment = {k: v for k, v in os.environ.items() if k != "TOLLGATE_PLAIN_HTTP"}
    environment.update(env)
    return run_manage(*args, env=environment, timeout=timeout)


def test_a_failed_export_does_not_destroy_the_previous_export_file(tmp_path):
    """Issue 10 §7: errors name the fix. An export that cannot read the database must not
    truncate the file a previous run wrote (a cron job would ship an empty export)."""
    target = tmp_path / "usage.ndjson"
    target.write_text('{"previous": "export"}\n')

    done = manage(
        "exportusage",
        "2026-11",
        "--format",
        "ndjson",
        "--output",
        str(target),
        DATABASE_URL=DEAD_DATABASE,
    )

    assert done.returncode != 0
    assert target.read_text() == '{"previous": "export"}\n', "the old export was truncated"
    assert "Traceback" not in done.stderr, done.stderr[-500:]


def test_production_settings_do_not_mail_secrets_into_the_log():
    """Issue 10 §3: logs never carry a secret. With DEBUG off and EMAIL_BACKEND unset, the
    console backend writes password-reset links (account takeover tokens) and invitation
    links to stdout, i.e. the production log, as raw non-JSON lines."""
    done = manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.EMAIL_BACKEND)",
        DEBUG="false",
        SECRET_KEY=STRONG,
        TOLLGATE_PLAIN_HTTP="1",
    )
    assert done.returncode == 0, done.stderr
    backend = done.stdout.strip().splitlines()[-1]
    assert backend != "django.core.mail.backends.console.EmailBackend"


def test_the_image_build_context_leaves_out_the_env_file():
    """compose.yaml says to put SECRET_KEY (and TOLLGATE_KEY_PEPPER) in .env next to it; the
    Dockerfile's `COPY . .` then bakes that file into the image unless .dockerignore names it
    (.gitignore does; .dockerignore does not)."""
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored or "*.env" in ignored or ".env*" in ignored


@pytest.mark.django_db(transaction=False)
def test_metrics_answer_promptly_while_the_database_does_not():
    """/metrics is what an operator looks at during an outage; with the database unreachable
    it blocks on the pool for 10 s (Prometheus' default scrape timeout), so the scrape fails."""
    port = 8697
    environment = {**os.environ, "DATABASE_URL": DEAD_DATABASE}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "portal.asgi:application", "--port", str(port)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import httpx

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        started = time.monotonic()
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
        took = time.monotonic() - started
        metrics_took = took
        started = time.monotonic()
        call = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": "Bearer tgk_AAAAAAAA_" + "x" * 40},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
            timeout=30,
        )
        took = time.monotonic() - started
        # CONTRACT.md: "Database unreachable: 503 within 2 s."
        assert call.status_code == 503 and took < 2, (call.status_code, took, call.text)
        assert answer.status_code == 200 and metrics_took < 3, f"/metrics took {metrics_took:.1f}s"
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.django_db
def test_a_restart_does_not_put_back_the_prices_an_operator_changed(tmp_path):
    """make prod and compose load the catalog at every start, with --if-empty."""
    from django.core.management import call_command

    from routing.models import CatalogModel

    call_command(
        "loadcatalog", str(ROOT / "catalog" / "default.toml"), stdout=open(os.devnull, "w")
    )
    changed = tmp_path / "prices.toml"
    changed.write_text(
        '[[model]]\nid = "gpt-4o-mini"\nprovider = "openai"\n'
        'input_per_mtok = "0.30"\noutput_per_mtok = "1.20"\n'
    )
    call_command("loadcatalog", str(changed), stdout=open(os.devnull, "w"))
    call_command(
        "loadcatalog",
        "--if-empty",
        str(ROOT / "catalog" / "default.toml"),
        stdout=open(os.devnull, "w"),
    )
    price = CatalogModel.objects.get(name="gpt-4o-mini").prices.order_by("-effective_from")[0]
    assert str(price.input_per_mtok.normalize()) == "0.3"
    for startup in ((ROOT / "Makefile").read_text(), (ROOT / "compose.yaml").read_text()):
        assert "loadcatalog --if-empty" in startup
