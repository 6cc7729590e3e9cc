"""Production settings: refuse a development secret, and pass Django's deployment checks."""

import json
import os
from pathlib import Path

import pytest

from tests.processes import manage as run_manage

ROOT = Path(__file__).resolve().parent.parent
STRONG = "k" * 20 + "Z9-a_" * 8


def manage(*args, **env):
    """manage.py with DEBUG off and only the secrets and switches given here."""
    environment = {
        k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "TOLLGATE_PLAIN_HTTP")
    }
    environment.update(DEBUG="false", **env)
    return run_manage(*args, env=environment)


@pytest.mark.parametrize(
    "secret",
    [
        None,
        "dev-only-secret-key-do-not-use-in-production-0123456789abcdef",
        "short",
        "a" * 60,
        "django-insecure-abcdefghijklmnopqrstuvwxyz0123456789abcdefghij",
    ],
)
def test_production_refuses_to_start_without_a_real_secret(secret):
    done = manage("check", **({"SECRET_KEY": secret} if secret else {}))
    assert done.returncode != 0 and "SECRET_KEY must be set" in done.stderr


def test_deployment_checks_are_clean_behind_a_tls_proxy():
    done = manage(
        "check", "--deploy", "--tag", "security", "--fail-level", "WARNING", SECRET_KEY=STRONG
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_plain_http_turns_the_tls_parts_off_for_loopback_and_tests():
    script = (
        "from django.conf import settings as s; "
        "print(s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_SECURE, "
        "s.CSRF_COOKIE_SECURE)"
    )
    tls = manage("shell", "-c", script, SECRET_KEY=STRONG)
    plain = manage("shell", "-c", script, SECRET_KEY=STRONG, TOLLGATE_PLAIN_HTTP="1")
    assert tls.stdout.split()[-4:] == ["True", "31536000", "True", "True"], tls.stderr
    assert plain.stdout.split()[-4:] == ["False", "0", "False", "False"], plain.stderr


def test_secrets_are_taken_exactly_as_set_even_starting_with_a_dollar():
    """django-environ would read `$NAME` as "the value of NAME" (here: HOME, PATH)."""
    script = (
        "from django.conf import settings as s; "
        "print(repr((s.SECRET_KEY, s.SECRET_KEY_FALLBACKS, s.TOLLGATE_KEY_PEPPER, "
        "s.TOLLGATE_KEY_PEPPER_FALLBACKS, s.TOLLGATE_METRICS_TOKEN)))"
    )
    done = manage(
        "shell",
        "-c",
        script,
        SECRET_KEY="$" + STRONG,
        SECRET_KEY_FALLBACKS="$HOME",
        TOLLGATE_KEY_PEPPER="$PATH",
        TOLLGATE_KEY_PEPPER_FALLBACKS="$HOME, $PATH",
        TOLLGATE_METRICS_TOKEN="$HOME",
    )
    assert done.stdout.strip().splitlines()[-1] == repr(
        ("$" + STRONG, ["$HOME"], "$PATH", ["$HOME", "$PATH"], "$HOME")
    ), done.stderr


def test_help_needs_no_database_and_a_missing_one_is_named_without_a_traceback():
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}

    def run(*args):
        return run_manage(*args, env=environment)

    helped = run("closemonth", "--help")
    assert helped.returncode == 0 and "usage: manage.py closemonth" in helped.stdout
    # With DEBUG off and no SECRET_KEY either: help still signs nothing.
    bare = {k: v for k, v in environment.items() if k != "SECRET_KEY"}
    production_help = run_manage("closemonth", "--help", env={**bare, "DEBUG": "false"})
    assert production_help.returncode == 0, production_help.stderr
    assert "closemonth" in run("help").stdout
    refused = run("check")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("manage.py: DATABASE_URL is not set."), refused.stderr


@pytest.mark.parametrize(
    "old",
    [
        "Xq9,w7Rz8kLm2Np4Vb6Tc1Yh3Jd5Gf0Sa8Qe7Wr6Ty5Ui4Op3As2Df1Gh0Jk9Lz8Xc7Vb6",  # a comma
        "oldpepper ",  # an edge space
    ],
)
def test_a_secret_that_keyed_hashes_can_be_listed_exactly_as_a_fallback(old):
    """The README's rotation moves the current pepper (or SECRET_KEY) into the fallbacks: a
    JSON array keeps it exactly as it was, commas and spaces included."""
    script = (
        "from django.conf import settings as s; "
        "print(repr((s.TOLLGATE_KEY_PEPPER_FALLBACKS, s.SECRET_KEY_FALLBACKS)))"
    )
    listed = json.dumps([old, "another"])
    done = manage(
        "shell",
        "-c",
        script,
        SECRET_KEY=STRONG,
        TOLLGATE_KEY_PEPPER_FALLBACKS=listed,
        SECRET_KEY_FALLBACKS=listed,
    )
    assert done.stdout.strip().splitlines()[-1] == repr(([old, "another"], [old, "another"]))


def test_a_fallback_list_that_looks_like_json_but_is_not_is_refused_with_its_fix():
    done = manage("check", SECRET_KEY=STRONG, TOLLGATE_KEY_PEPPER_FALLBACKS='["unterminated')
    assert done.returncode != 0 and "not a JSON array of strings" in done.stderr
    assert "Traceback" not in done.stderr
