"""CORS on /v1, for browser apps: off by default, for the named origins when set; and /v1
over HTTPS only when TLS is enforced."""

import httpx2
import pytest

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = "https://app.example.com"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def test_no_origin_is_allowed_by_default(settings, live_portal, inference_key):
    settings.TOLLGATE_CORS_ORIGINS = []
    _, secret = inference_key
    answer = httpx2.get(
        f"{live_portal.url}/v1/models",
        headers={"Origin": ORIGIN, "Authorization": f"Bearer {secret}"},
    )
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_a_named_origin_gets_preflights_and_readable_headers(
    settings, live_portal, inference_key, catalog
):
    settings.TOLLGATE_CORS_ORIGINS = [ORIGIN]
    _, secret = inference_key
    preflight = httpx2.options(f"{live_portal.url}/v1/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    answer = httpx2.get(
        f"{live_portal.url}/v1/models",
        headers={"Origin": ORIGIN, "Authorization": f"Bearer {secret}"},
    )
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in answer.headers["access-control-expose-headers"]
    other = httpx2.options(
        f"{live_portal.url}/v1/chat/completions",
        headers={**PREFLIGHT, "Origin": "https://evil.test"},
    )
    assert "access-control-allow-origin" not in other.headers
    # The management API and the pages never answer other origins.
    api = httpx2.get(f"{live_portal.url}/api/teams/", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in api.headers


def test_with_tls_enforced_v1_refuses_cleartext_and_sends_hsts(
    settings, live_portal, inference_key
):
    settings.TOLLGATE_PLAIN_HTTP = False
    settings.SECURE_HSTS_SECONDS = 31536000
    _, secret = inference_key
    auth = {"Authorization": f"Bearer {secret}"}
    cleartext = httpx2.get(f"{live_portal.url}/v1/models", headers=auth)
    assert cleartext.status_code == 403 and cleartext.json()["error"]["code"] == "https_required"
    proxied = httpx2.get(
        f"{live_portal.url}/v1/models", headers={**auth, "X-Forwarded-Proto": "https"}
    )
    assert proxied.status_code == 200
    assert proxied.headers["strict-transport-security"].startswith("max-age=31536000")
