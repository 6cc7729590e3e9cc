"""/api/docs/ in a real browser: Swagger UI draws both sides of the API from /api/schema/,
and the page asks nothing of any host but the portal (no CDN, no schema validator)."""

import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def requests_of_docs_page(page: Page) -> list[str]:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto("/api/docs/")
    for path in ("/v1/chat/completions", "/v1/models/{model_id}", "/api/teams/{slug}/keys/"):
        expect(page.locator(f'.opblock-summary-path[data-path="{path}"]').first).to_be_visible()
    expect(page.get_by_role("button", name="Authorize")).to_be_visible()
    return requested


def test_docs_page_draws_the_schema_from_the_portal_alone(browse, live_portal):
    requested = browse(requests_of_docs_page)
    assert any(url.endswith("/api/schema/") for url in requested)
    assert [url for url in requested if not url.startswith(live_portal.url + "/")] == []
