"""The usage explorer at millions of ledger rows: every page by keyset, whatever its depth.

Fills its own database (BENCH_DATABASE_URL, default tollgate_bench_explorer) once with
BENCH_ROWS ledger rows (default 2,000,000) over ninety days, 5% of them for the team
asked about, then times the explorer page as a signed-in admin gets it (view, query and
template) and the CSV export of a filtered range. Run with `python -m bench.explorer`.
"""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DB_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tollgate_bench_explorer"
)
ROWS = int(os.environ.get("BENCH_ROWS", "2000000"))
SHARE = 20  # one row in SHARE is the measured team's


def ensure_database():
    base, name = DB_URL.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    env = {**os.environ, "DATABASE_URL": DB_URL}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)


def fill(team_id, other_id, key_ids):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_usagerecord")
        have = cursor.fetchone()[0]
        if have >= ROWS:
            return have
        began = time.monotonic()
        cursor.execute(
            """
            INSERT INTO usage_usagerecord (request_id, attempt, team_id, api_key_id, endpoint,
                requested_model, route, model, provider, prompt_tokens, cached_tokens,
                completion_tokens, reasoning_tokens, tokens_estimated, input_per_mtok,
                cached_input_per_mtok, output_per_mtok, cost_usd, streamed, latency_ms, ttft_ms,
                status, http_status, error_type, error_message, end_user, created_at, recorded_at)
            SELECT 'bench_' || n, 0,
                   CASE WHEN n %% %(share)s = 0 THEN %(team)s ELSE %(other)s END,
                   CASE WHEN n %% %(share)s = 0 THEN (%(keys)s)[1 + (n / %(share)s) %% 5] END,
                   'chat', 'm' || (n %% 8), '', 'm' || (n %% 8), 'p', 1000 + n %% 997, 0,
                   100 + n %% 301, 0, false, 1, 1, 2,
                   (1000 + n %% 997 + 2 * (100 + n %% 301)) / 1000000.0, false,
                   100 + n %% 2000, NULL, CASE WHEN n %% 50 = 0 THEN 'upstream_error' ELSE 'ok' END,
                   200, '', '', 'user-' || (n %% 300),
                   now() - make_interval(secs => (n::float / %(rows)s) * 90 * 86400),
                   now()
            FROM generate_series(%(start)s, %(rows)s) AS n
            """,
            {
                "share": SHARE,
                "team": team_id,
                "other": other_id,
                "keys": key_ids,
                "start": have + 1,
                "rows": ROWS,
            },
        )
        cursor.execute("ANALYZE usage_usagerecord")
        print(f"filled {ROWS - have:,} rows in {time.monotonic() - began:.0f} s")
        return ROWS


def timed(client, url, runs=7):
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        response = client.get(url)
        body = b"".join(response) if response.streaming else response.content
        samples.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    return statistics.median(samples), response, body


def main():
    ensure_database()
    os.environ["DATABASE_URL"] = DB_URL
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.test import Client
    from django.test.utils import setup_test_environment

    from accounts.models import ApiKey, Membership, Team
    from accounts.services import api_key_create
    from tests.factories import UserFactory

    setup_test_environment()  # so a response carries its template context (the cursor)
    settings.ALLOWED_HOSTS = ["*"]
    team, _ = Team.objects.get_or_create(slug="bench-big", defaults={"name": "Big"})
    other, _ = Team.objects.get_or_create(slug="bench-noise", defaults={"name": "Noise"})
    keys = list(ApiKey.objects.filter(team=team).order_by("id"))
    while len(keys) < 5:
        keys.append(api_key_create(team=team, name=f"k{len(keys)}")[0])
    user = UserFactory(username="bench@big.test")
    Membership.objects.get_or_create(team=team, user=user, defaults={"role": "admin"})
    total = fill(team.id, other.id, [k.id for k in keys])
    client = Client()
    client.force_login(user)
    mine = total // SHARE
    print(f"{total:,} ledger rows, {mine:,} of them the measured team's; median of 7, ms")
    base = "/t/bench-big/usage/"
    cases = [
        ("first page, newest", base),
        ("first page, costliest", base + "?sort=cost"),
        ("first page, slowest", base + "?sort=latency"),
        ("key + model filter", f"{base}?key={keys[2].prefix}&model=m3"),
        ("status + end user filter", f"{base}?status=upstream_error&end_user=user-7"),
    ]
    for name, url in cases:
        ms, response, _ = timed(client, url)
        print(f"  {name:<34} {ms:7.1f}")
        # 400 pages deep (20,000 rows in) by following the cursor, then time that page.
        if name.startswith("first page"):
            page_url = url
            for _ in range(400):
                after = response.context["after"]
                joiner = "&" if "?" in url else "?"
                page_url = f"{url}{joiner}after={after}"
                response = client.get(page_url)
            ms, _, _ = timed(client, page_url)
            print(f"  {'  … page 401 (rows 20,001-20,050)':<34} {ms:7.1f}")
    export = f"/api/teams/bench-big/usage/export/?key={keys[1].prefix}"
    ms, _, body = timed(client, export, runs=3)
    lines = body.count(b"\n") - 1
    print(f"  {'CSV export, one key':<34} {ms:7.1f}  ({lines:,} rows)")


if __name__ == "__main__":
    main()
