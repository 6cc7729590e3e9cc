"""What every bench run sets up: the portal's production environment on the bench database,
the catalog pointed at the fake upstream, and a team with a budget and a rate-limited key."""

import os
import time

from bench.proxy_overhead import DB_URL, REDIS_URL, ROOT, ensure_database, manage


def production_env(**extra: str) -> dict:
    """DEBUG off, plain HTTP on loopback, the bench database and Redis, tasks in-process."""
    ensure_database()
    env = {
        **os.environ,
        "DATABASE_URL": DB_URL,
        "REDIS_URL": REDIS_URL,
        "CELERY_BROKER_URL": "",
        "DEBUG": "false",
        "TOLLGATE_PLAIN_HTTP": "1",
        "SECRET_KEY": "bench-secret-key-0123456789abcdef0123456789abcdef012345",
        "TOLLGATE_KEY_PEPPER": "bench-pepper-0123456789abcdef",
        "ALLOWED_HOSTS": "127.0.0.1",
        "BENCH_UPSTREAM_KEY": "sk-bench",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


def catalog_at(env: dict, upstream: str, name: str, extra_toml: str = "") -> None:
    """Migrate, load the default catalog, and point its `global` provider at `upstream`."""
    manage(env, "migrate", "--no-input")
    manage(env, "loadcatalog", "catalog/default.toml")
    catalog = ROOT / "bench" / "results" / f"{name}-catalog.toml"
    catalog.parent.mkdir(exist_ok=True)
    catalog.write_text(
        f'[[provider]]\nname = "global"\nbase_url = "{upstream}"\n'
        f'api_key_env = "BENCH_UPSTREAM_KEY"\n{extra_toml}'
    )
    manage(env, "loadcatalog", str(catalog))


def bench_team(env: dict, name: str, *, budget: str, rpm: str) -> tuple[str, str]:
    """A new team (its slug) with a monthly budget, and an inference key limited to `rpm`."""
    slug = f"{name}-{int(time.time())}"
    manage(env, "createteam", slug, "--name", name.title())
    manage(env, "setbudget", slug, budget)
    secret = manage(env, "issuekey", slug, "--name", name, "--rpm", rpm)
    return slug, secret.strip().splitlines()[-1]
