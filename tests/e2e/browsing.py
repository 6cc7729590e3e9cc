"""What a browser test does to a page: sign in through the form, follow the navigation,
download a CSV, capture the page at a desktop and a phone width, and find what sticks out
sideways on the phone. Steps run in the browser thread (conftest.py)."""

import csv
from pathlib import Path

from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.factories import PASSWORD

ROOT = Path(__file__).resolve().parent.parent.parent
# Left in place after the run (gitignored) for a person, or CI's log, to look at.
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
DESKTOP = 1280  # px
PHONE = 390  # px, an iPhone 12 to 15's CSS width
HEIGHT = 800  # px; full-page screenshots go below it


def signed_in(page: Page, user, password: str = PASSWORD) -> Page:
    """Sign in through the real sign-in form; the page is then where the site sent it."""
    page.goto("/login/")
    page.get_by_label("Email").fill(user.get_username())
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    try:
        page.wait_for_url(lambda url: "/login/" not in url)
    except PlaywrightTimeoutError:
        said = " ".join(page.locator("main .msg").all_inner_texts())
        raise AssertionError(f"signing in as {user.get_username()} failed: {said}") from None
    return page


def open_url(page: Page, url: str) -> None:
    page.goto(url)


def reload(page: Page) -> None:
    page.reload()


def go_to(page: Page, label: str) -> None:
    """Follow the team navigation's link to a page."""
    link = page.get_by_role("navigation").get_by_role("link", name=label, exact=True)
    link.click()
    expect(link).to_have_attribute("aria-current", "page")


def navigation(page: Page) -> list[str]:
    """The labels of the team navigation's links, in order."""
    return page.locator("header nav a").all_inner_texts()


def main_text(page: Page) -> str:
    return page.get_by_role("main").inner_text()


def download_csv(page: Page, link: str) -> list[dict[str, str]]:
    """Follow a link that downloads a CSV, as a person would, and read the file."""
    with page.expect_download() as download:
        page.get_by_role("link", name=link).click()
    with open(download.value.path(), newline="") as fh:
        return list(csv.DictReader(fh))


def screenshot(page: Page, name: str) -> list[Path]:
    """Full-page PNGs of the current page at the desktop and the phone width,
    `<name>-1280.png` and `<name>-390.png`; the viewport is put back afterwards."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    before = page.viewport_size or {"width": DESKTOP, "height": HEIGHT}
    paths = []
    for width in (DESKTOP, PHONE):
        page.set_viewport_size({"width": width, "height": before["height"]})
        path = SCREENSHOTS / f"{name}-{width}.png"
        page.screenshot(path=path, full_page=True)
        paths.append(path)
    page.set_viewport_size(before)
    return paths


# The outermost elements whose right edge passes the window's, outside a `.scroll` wrapper
# (a table may scroll inside one), each described as tag#id.class "text".
_WIDER_THAN_WINDOW = """() => {
  const limit = window.innerWidth;
  const wide = [];
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest(".scroll") && !el.matches(".scroll")) continue;
    if (el.getBoundingClientRect().right <= limit + 0.5) continue;
    if (wide.some(w => w.contains(el))) continue;
    wide.push(el);
  }
  return {
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: limit,
    wide: wide.map(el => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
      + (el.classList.length ? "." + [...el.classList].join(".") : "")
      + ' "' + (el.innerText || el.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 50) + '"'
      + " to " + Math.round(el.getBoundingClientRect().right) + "px"),
  };
}"""


def sideways_overflow(page: Page, width: int = PHONE) -> list[str]:
    """At `width`, what makes the page scroll sideways: empty when it fits
    (document.documentElement.scrollWidth <= window.innerWidth)."""
    before = page.viewport_size or {"width": DESKTOP, "height": HEIGHT}
    page.set_viewport_size({"width": width, "height": before["height"]})
    try:
        found = page.evaluate(_WIDER_THAN_WINDOW)
    finally:
        page.set_viewport_size(before)
    if found["scrollWidth"] <= found["innerWidth"]:
        return []
    return [f"page is {found['scrollWidth']}px wide in a {found['innerWidth']}px window"] + (
        found["wide"] or ["(no single element found)"]
    )
