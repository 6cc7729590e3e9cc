"""The ledger at scale: reports, the ledger list and closemonth over ten million rows.

Fills its own database (BENCH_DATABASE_URL, default tollgate_ledger10m) once, through
COPY, with BENCH_ROWS ledger rows (default 10,000,000) across 100 teams and the 12 months
up to now (the monthly partitions of usage.partitions), folds them into the daily rollups,
then measures through the real views (Django's test client, signed in as the team's
admin): the overview page and the usage-summary API for one team, filtered keyset-paginated
pages of the ledger list (first and 20 pages deep) and of the usage explorer, `closemonth`
of last month for every team, how fast the rollup folds a minute of calls at 1,000
calls/s, and the ledger's size per million rows. Prints a table and writes
bench/results/ledger_scale.json. `make bench-ledger`.
"""

import io
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DB_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tollgate_ledger10m"
)
ROWS = int(os.environ.get("BENCH_ROWS", "10000000"))
TEAMS = 100
KEYS_PER_TEAM = 3
MONTHS = 12
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
# (model, input, cached input, output): USD per 1M tokens.
MODELS = [
    ("m0", 180000, 70000, 250000),
    ("m1", 500000, 250000, 1500000),
    ("m2", 150000, 75000, 600000),
    ("m3", 2500000, 1250000, 10000000),
    ("m4", 100000, 25000, 400000),
    ("m5", 800000, 200000, 3200000),
    ("m6", 300000, 150000, 1200000),
    ("m7", 50000, 10000, 200000),
]
COLUMNS = (
    "request_id, attempt, team_id, api_key_id, endpoint, requested_model, route, model, "
    "provider, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, "
    "tokens_estimated, input_per_mtok, cached_input_per_mtok, output_per_mtok, cost_usd, "
    "streamed, latency_ms, ttft_ms, status, http_status, error_type, error_message, "
    "end_user, created_at, recorded_at"
)
TARGETS_MS = {"overview": 200, "summary": 200, "ledger page": 100}


def ensure_database():
    base, name = DB_URL.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=os.environ, check=True
    )


def _micro_usd(micro_per_mtok: int, tokens: int) -> int:
    # micro-USD per 1M tokens × tokens = 10⁻¹² USD.
    return micro_per_mtok * tokens


def _usd(picos: int) -> str:
    return f"{picos // 10**12}.{picos % 10**12:012d}"


def rows_text(first: int, last: int, *, start: datetime, span_s: float, keys: list[list[int]]):
    """Ledger rows first..last-1 as COPY text, in created_at order over [start, start+span)."""
    lines = []
    start_ts = start.timestamp()
    step = span_s / ROWS
    for n in range(first, last):
        team = n % TEAMS
        # A multiplicative hash spreads keys, models, statuses and end users evenly and
        # independently over every team.
        h = (n * 2654435761) % 2**32
        key = keys[team][(h >> 20) % KEYS_PER_TEAM]
        model, inp, cached_in, out = MODELS[(h >> 16) % len(MODELS)]
        created = start_ts + n * step
        latency = 200 + n % 1800
        created_text = datetime.fromtimestamp(created, UTC).isoformat()
        recorded_text = datetime.fromtimestamp(created + latency / 1000, UTC).isoformat()
        if h % 100 == 0:
            status, http, prompt, cached, completion, cost = "refused", 429, 0, 0, 0, 0
            latency_text = ttft = "\\N"
        else:
            status, http = ("upstream_error", 502) if h % 50 == 1 else ("ok", 200)
            prompt = 200 + n % 3001
            cached = prompt // 4 if n % 3 == 0 else 0
            completion = 0 if status != "ok" else 50 + n % 997
            cost = (
                _micro_usd(inp, prompt - cached)
                + _micro_usd(cached_in, cached)
                + _micro_usd(out, completion)
            )
            latency_text, ttft = str(latency), str(latency // 4) if n % 2 else "\\N"
        lines.append(
            f"lb{n:09d}\t0\t{team_ids[team]}\t{key}\tchat\t{model}\t\t{model}\tp\t{prompt}\t"
            f"{cached}\t{completion}\t0\tf\t{inp / 1e6:.6f}\t{cached_in / 1e6:.6f}\t"
            f"{out / 1e6:.6f}\t{_usd(cost)}\t{'t' if n % 2 else 'f'}\t{latency_text}\t{ttft}\t"
            f"{status}\t{http}\t\t\tuser-{(h >> 8) % 500}\t{created_text}\t{recorded_text}\n"
        )
    return "".join(lines)


team_ids: list[int] = []


def fill(keys: list[list[int]], start: datetime, span_s: float) -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_usagerecord WHERE request_id LIKE 'lb%%'")
        have = cursor.fetchone()[0]
    if have >= ROWS:
        return {"loaded_now": 0, "load_s": None}
    began = time.monotonic()
    chunk = 200_000
    raw = connection.connection  # psycopg's own connection under Django's
    with raw.cursor() as cursor:
        for first in range(have, ROWS, chunk):
            text = rows_text(first, min(first + chunk, ROWS), start=start, span_s=span_s, keys=keys)
            with cursor.copy(f"COPY usage_usagerecord ({COLUMNS}) FROM STDIN") as copy:
                copy.write(text)
            raw.commit()
            done = min(first + chunk, ROWS)
            rate = (done - have) / (time.monotonic() - began)
            print(f"\r  loaded {done:,} rows ({rate:,.0f} rows/s)", end="", flush=True)
        print()
        cursor.execute("ANALYZE usage_usagerecord")
        raw.commit()
    return {"loaded_now": ROWS - have, "load_s": round(time.monotonic() - began, 1)}


def timed(client, url, runs=RUNS):
    samples = []
    for _ in range(runs + 1):
        began = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, (url, response.status_code, response.content[:300])
    samples = samples[1:]  # the first run warms the caches
    return {"p50_ms": round(statistics.median(samples), 1), "max_ms": round(max(samples), 1)}


def main():
    os.environ["DATABASE_URL"] = DB_URL
    for name in ("REDIS_URL", "CELERY_BROKER_URL", "PROMETHEUS_MULTIPROC_DIR"):
        os.environ.pop(name, None)
    os.environ.update(
        DEBUG="false",
        TOLLGATE_PLAIN_HTTP="1",
        ALLOWED_HOSTS="testserver",
        SECRET_KEY="bench-secret-key-0123456789abcdef0123456789abcdef012345",
        TOLLGATE_KEY_PEPPER="bench-pepper-0123456789abcdef",
        DJANGO_SETTINGS_MODULE="portal.settings",
    )
    ensure_database()
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from accounts.models import ApiKey, Membership, Team
    from accounts.services import api_key_create
    from tests.factories import UserFactory
    from usage.models import DailyUsage
    from usage.months import month_start, next_month_start
    from usage.partitions import ledger_partitions, ledger_partitions_ensure, partition_create
    from usage.rollups import rollup_advance

    now = timezone.now()
    # 12 months: the 11 before this one and this one so far.
    start = month_start(now)
    for _ in range(MONTHS - 1):
        start = month_start(start - timedelta(days=1))
    span_s = (now - timedelta(minutes=5) - start).total_seconds()
    ledger_partitions_ensure(now=now)
    month = start
    while month < now:
        with transaction.atomic(), connection.cursor() as cursor:
            partition_create(cursor, month)
        month = next_month_start(month)

    teams = []
    for n in range(TEAMS):
        team, _ = Team.objects.get_or_create(slug=f"ledger-{n:02d}", defaults={"name": f"T{n}"})
        teams.append(team)
    team_ids[:] = [t.id for t in teams]
    keys = []
    for team in teams:
        have = list(ApiKey.objects.filter(team=team).order_by("id").values_list("id", flat=True))
        while len(have) < KEYS_PER_TEAM:
            have.append(api_key_create(team=team, name=f"k{len(have)}")[0].id)
        keys.append(have)
    team = teams[7]
    user = UserFactory(username="bench@ledger.test")
    Membership.objects.get_or_create(team=team, user=user, defaults={"role": "admin"})

    print(f"{ROWS:,} ledger rows across {TEAMS} teams and {MONTHS} months from {start:%Y-%m}")
    results: dict = {"rows": ROWS, "teams": TEAMS, "months": MONTHS, "machine": machine()}
    results["load"] = fill(keys, start, span_s)

    # The rollups: everything once (the backlog), then one minute of calls at 1,000 calls/s.
    began = time.monotonic()
    folded = rollup_advance(now=timezone.now())
    backlog_s = time.monotonic() - began
    results["rollup_backlog"] = {
        "rows": folded,
        "seconds": round(backlog_s, 1),
        "rows_per_s": round(folded / backlog_s) if folded else None,
        "daily_rows": DailyUsage.objects.count(),
    }
    results["rollup_minute"] = rollup_minute(keys, rollup_advance)

    client = Client()
    client.force_login(user)
    slug = team.slug
    key_prefix = ApiKey.objects.get(id=keys[7][1]).prefix
    this_month = f"start={month_start(now):%Y-%m-%d}&end={next_month_start(now):%Y-%m-%d}"
    year = f"start={start:%Y-%m-%d}&end={next_month_start(now):%Y-%m-%d}"
    cases = {
        "overview (this month)": ("overview", f"/t/{slug}/"),
        "overview (last 90 days, by key)": ("overview", f"/t/{slug}/?range=90d&by=key"),
        "usage summary API, by day, 12 months": (
            "summary",
            f"/api/teams/{slug}/usage/summary/?group_by=day&{year}",
        ),
        "usage summary API, by model, this month": (
            "summary",
            f"/api/teams/{slug}/usage/summary/?group_by=model&{this_month}",
        ),
    }
    page = f"/api/teams/{slug}/usage/?key={key_prefix}&model=m3&page_size=50"
    measured = {}
    for name, (kind, url) in cases.items():
        measured[name] = {"kind": kind, "url": url, **timed(client, url)}
    measured["ledger page, key + model filter"] = {
        "kind": "ledger page",
        "url": page,
        **timed(client, page),
    }
    deep = page
    for _ in range(20):
        following = client.get(deep).json()["next"]
        if following is None:  # a small BENCH_ROWS
            break
        deep = following.replace("http://testserver", "")
    measured["ledger page 21, key + model filter"] = {
        "kind": "ledger page",
        "url": deep,
        **timed(client, deep),
    }
    for name, query in (
        ("status filter (2% of rows)", "status=upstream_error"),
        ("end user filter (0.2% of rows)", "end_user=user-7"),
        ("end user filter, this month", f"end_user=user-7&{this_month}"),
    ):
        url = f"/api/teams/{slug}/usage/?{query}"
        measured[f"ledger page, {name}"] = {"kind": "ledger page", "url": url, **timed(client, url)}
    for name, query in (
        ("newest", ""),
        ("key + model filter", f"?key={key_prefix}&model=m3"),
        ("costliest first", "?sort=cost"),
    ):
        url = f"/t/{slug}/usage/{query}"
        measured[f"usage explorer page, {name}"] = {
            "kind": "ledger page",
            "url": url,
            **timed(client, url),
        }
    with CaptureQueriesContext(connection) as queries:
        client.get(deep)
    statements = [q["sql"] for q in queries.captured_queries]
    results["ledger_page_counts"] = any("COUNT(" in s.upper() for s in statements)
    ledger_sql = next(s for s in statements if "usage_usagerecord" in s)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + ledger_sql)
        results["ledger_page_plan"] = "\n".join(row[0] for row in cursor.fetchall())
    results["measured"] = measured

    # closemonth: last month, every team, from the rollups.
    last_month = month_start(month_start(now) - timedelta(days=1))
    from usage.models import Invoice

    fresh = not Invoice.objects.filter(month=last_month.date()).exists()
    began = time.monotonic()
    call_command("closemonth", f"{last_month:%Y-%m}", stdout=io.StringIO())
    results["closemonth"] = {
        "month": f"{last_month:%Y-%m}",
        "teams": TEAMS,
        "seconds": round(time.monotonic() - began, 2),
        "first_run": fresh,
    }

    partitions = ledger_partitions()
    total_bytes = sum(p.bytes for p in partitions)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_usagerecord")
        total_rows = cursor.fetchone()[0]
    results["size"] = {
        "partitions": len(partitions),
        "rows": total_rows,
        "bytes": total_bytes,
        "mb_per_million_rows": round(total_bytes / 1e6 / (total_rows / 1e6), 1),
        "bytes_per_row": round(total_bytes / total_rows),
    }
    report(results)
    out = ROOT / "bench" / "results" / "ledger_scale.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"written to {out.relative_to(ROOT)}")


def rollup_minute(keys, rollup_advance) -> dict:
    """One minute of calls at 1,000 calls/s (60,000 rows recorded in the minute after the
    rollups' mark), then the run that folds them; the rows are left in the ledger (rerunning
    the bench adds another minute)."""
    from django.db import connection

    from usage.rollups import LAG, rollup_through

    rows = 60_000
    through = rollup_through()
    lines = []
    base = int(time.time() * 1000) % 10**9
    for n in range(rows):
        team = n % TEAMS
        at = (through + timedelta(microseconds=(n + 1) * 1000)).isoformat()
        lines.append(
            f"lm{base}-{n}\t0\t{team_ids[team]}\t{keys[team][n % KEYS_PER_TEAM]}\tchat\tm0\t\tm0\t"
            f"p\t1000\t0\t100\t0\tf\t0.180000\t0.070000\t0.250000\t0.000205000000\tf\t300\t"
            f"\\N\tok\t200\t\t\tuser-1\t{at}\t{at}\n"
        )
    raw = connection.connection
    with raw.cursor() as cursor:
        with cursor.copy(f"COPY usage_usagerecord ({COLUMNS}) FROM STDIN") as copy:
            copy.write("".join(lines))
        raw.commit()
    began = time.monotonic()
    # The run once the minute is past the horizon.
    folded = rollup_advance(now=through + timedelta(seconds=61) + LAG)
    seconds = time.monotonic() - began
    return {"rows": folded, "seconds": round(seconds, 2), "rows_per_s": round(folded / seconds)}


def machine() -> dict:
    import platform

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def report(results: dict) -> None:
    print(f"\n{'case':<44} {'p50 ms':>8} {'max ms':>8} {'target':>8}")
    for name, row in results["measured"].items():
        target = TARGETS_MS[row["kind"]]
        mark = "ok" if row["p50_ms"] <= target else "MISSED"
        print(f"{name:<44} {row['p50_ms']:>8.1f} {row['max_ms']:>8.1f} {target:>6} {mark}")
    close = results["closemonth"]
    print(
        f"{'closemonth ' + close['month'] + ', ' + str(close['teams']) + ' teams':<44} "
        f"{close['seconds'] * 1000:>8.0f} {'':>8} {60000:>6} "
        f"{'ok' if close['seconds'] <= 60 else 'MISSED'}"
        + ("" if close["first_run"] else "  (already closed: rerun)")
    )
    backlog, minute = results["rollup_backlog"], results["rollup_minute"]
    print(
        f"rollup: backlog of {backlog['rows']:,} rows in {backlog['seconds']} s "
        f"({backlog['rows_per_s'] or 0:,} rows/s); one minute at 1,000 calls/s "
        f"({minute['rows']:,} rows) in {minute['seconds']} s ({minute['rows_per_s']:,} rows/s)"
    )
    size = results["size"]
    print(
        f"ledger: {size['rows']:,} rows in {size['partitions']} partitions, "
        f"{size['bytes'] / 1e9:.2f} GB, {size['mb_per_million_rows']} MB per million rows "
        f"({size['bytes_per_row']} bytes a row with its indexes)"
    )
    print(f"ledger list issues a COUNT: {results['ledger_page_counts']}")
    print("ledger page plan (20 pages deep):\n" + results["ledger_page_plan"])


if __name__ == "__main__":
    main()
