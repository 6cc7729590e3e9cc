"""Browser fixtures: Debian's chromium, driven by Playwright's sync API, against the live
portal (uvicorn in a thread of this process, on the test database).

Playwright runs in a thread of its own, the browser thread. Its sync API keeps an asyncio
loop in a greenlet and marks that loop as running in its thread between calls; in the
test's thread that would make Django's async-safety check refuse every query (fixtures,
assertions, the database flush and every later test). So the test's thread keeps the
database and the browser thread keeps the browser: a test passes its steps, functions of
a `Page`, to `browse(step, *args)`, which runs `step(page, *args)` there and hands back
its result or its exception. Steps must not query the database (pass them plain values
or objects already loaded). Django's check stays on everywhere, the portal included.

Data a test makes must be committed for the portal's connections to see it: browser tests
use `@pytest.mark.django_db(transaction=True)`.
"""

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.browsing import DESKTOP, HEIGHT

CHROMIUM = "/usr/bin/chromium"
# Milliseconds a Playwright action or expectation waits before failing.
TIMEOUT_MS = 10_000


class BrowserThread:
    """One thread that owns Playwright and the browser; `run` calls a function there."""

    def __init__(self) -> None:
        # One worker: every call lands on the same thread, the one Playwright started in.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="browser")
        self.browser: Browser = self.run(self._start)

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.executor.submit(function, *args, **kwargs).result()

    def _start(self) -> Browser:
        expect.set_options(timeout=TIMEOUT_MS)
        self.playwright = sync_playwright().start()
        # Chromium's sandbox cannot start as root (CI runs as root).
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        return self.playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)

    def close(self) -> None:
        def stop() -> None:
            self.browser.close()
            self.playwright.stop()

        self.run(stop)
        self.executor.shutdown()


@pytest.fixture(scope="session")
def browser_thread():
    """Headless chromium for the session. Missing, it fails every browser test: the browser
    is a required service like PostgreSQL (`make browser` installs it)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: run tests/e2e/chromium.sh (`make test` does).", pytrace=False
        )
    thread = BrowserThread()
    yield thread
    thread.close()


class Browsing:
    """`browse(step, *args)` for one page in a browser context of its own (no cookies shared
    with any other), collecting the JavaScript errors of every page it shows."""

    def __init__(self, browser_thread: BrowserThread, base_url: str) -> None:
        self.thread = browser_thread
        self.errors: list[str] = []
        self.page: Page = browser_thread.run(self._open, base_url)

    def _open(self, base_url: str) -> Page:
        context = self.thread.browser.new_context(
            base_url=base_url, viewport={"width": DESKTOP, "height": HEIGHT}
        )
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        return page

    def __call__(self, step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.thread.run(step, self.page, *args, **kwargs)

    def close(self) -> None:
        self.thread.run(lambda: self.page.context.close())
        assert not self.errors, f"JavaScript errors: {self.errors}"


@pytest.fixture
def browse(browser_thread, live_portal):
    """`browse(step, *args)` runs `step(page, *args)` in the browser thread and returns what
    it returns. The page is a fresh browser context (no cookies) at the desktop width, and
    relative URLs go to the live portal. A JavaScript error on any page fails the test."""
    browsing = Browsing(browser_thread, live_portal.url)
    yield browsing
    browsing.close()


@pytest.fixture
def browse_elsewhere(browser_thread, live_portal):
    """A second `browse`, in a browser context of its own: another person at another
    computer, who shares no cookies with the first."""
    browsing = Browsing(browser_thread, live_portal.url)
    yield browsing
    browsing.close()
