"""An upstream's error reaches the client, the ledger, the logs and the API reduced to
status, type, code and a sanitised message: never a key it echoed, never the rest of its
body."""

import json
import logging

import httpx2
import openai
import pytest
from rest_framework.test import APIClient

from routing.errors import sanitized, upstream_error
from tests.fake_upstream import Fail
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hello"}]
LEAKED = "sk-upstream-9f8e7d6c5b4a39281706f5e4d3c2b1a0"


@pytest.mark.parametrize(
    "text",
    [
        f"Incorrect API key provided: {LEAKED}.",
        "Incorrect API key provided: sk-proj-****************************abcd.",
        "auth header was Bearer abcdefghijklmnopqrstuvwx",
        "key=AIzaSyD-abcdefghijklmnopqrstuvwxyz012345 rejected",
        "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl expired",
        "called https://svc:hunter2@internal.example/v1 and failed",
        "secret: Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA== leaked",
        "tgk_ABCDEFGH_someothersecretpart is not valid",
    ],
)
def test_anything_key_shaped_is_redacted(text):
    clean = sanitized(text)
    assert "[redacted]" in clean
    for secret in (
        LEAKED,
        "abcd.",
        "abcdefghijklmnopqrstuvwx",
        "AIzaSy",
        "eyJhbG",
        "hunter2",
        "Zm9vYmFy",
        "someothersecretpart",
    ):
        assert secret not in clean, clean


def test_ordinary_messages_and_model_names_are_kept():
    text = "The model `deepseek-r1-distill-qwen-32b-instruct` does not support temperature 3."
    assert sanitized(text) == text
    assert sanitized("x" * 2000) != "x" * 2000 and len(sanitized("y " * 2000)) == 500


def test_only_the_four_fields_of_an_error_are_kept_as_plain_words():
    error = upstream_error(
        {
            "error": {
                "message": "bad",
                "type": "invalid_request_error",
                "code": "<script>" * 20,
                "param": "messages",
                "internal": {"key": LEAKED},
            },
            "debug": LEAKED,
        },
        fallback="fallback",
    )
    assert error == {
        "message": "bad",
        "type": "invalid_request_error",
        "param": "messages",
        "code": None,
    }
    assert upstream_error("not an object", fallback="fallback")["message"] == "fallback"


@pytest.mark.parametrize("status", [401, 400, 429, 500])
def test_an_upstream_that_echoes_its_key_leaks_it_nowhere(
    catalog, sdk, live_portal, inference_key, owner, team, upstream, caplog, status
):
    key, secret = inference_key
    upstream.script(
        "gpt-4o",
        Fail(
            status,
            body={
                "error": {
                    "message": f"Incorrect API key provided: {LEAKED}",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                    "param": None,
                    "upstream_account": {"key": LEAKED},
                },
                "trace": LEAKED,
            },
        ),
    )
    caplog.set_level(logging.DEBUG)
    response = httpx2.post(
        f"{live_portal.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "gpt-4o", "messages": MESSAGES},
        timeout=30,
    )
    assert response.status_code >= 400
    assert LEAKED not in response.text and "sk-upstream" not in response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert "[redacted]" in response.json()["error"]["message"]

    row = UsageRecord.objects.get(team=team)
    assert "sk-upstream" not in row.error_message and "[redacted]" in row.error_message
    client = APIClient()
    client.force_login(owner)
    listed = client.get("/api/teams/acme/usage/")
    assert "sk-upstream" not in json.dumps(listed.json())
    assert "sk-upstream" not in caplog.text


def test_an_error_event_in_a_stream_is_sanitised_too(catalog, sdk, inference_key, upstream):
    _, secret = inference_key
    upstream.script("gpt-4o", Fail(500, f"boom with {LEAKED}"))
    with pytest.raises(openai.APIStatusError) as caught:
        list(sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert "sk-upstream" not in str(caught.value.body) and "sk-upstream" not in caught.value.message


@pytest.mark.parametrize(
    "secret",
    ["3f2a9c1e-4b7d-4e2a-9f1c-8d7e6b5a4c3d", "gsk_short1", "ab12-cd34-ef56-gh78"],
    ids=["uuid", "short-prefixed", "hyphen-segmented"],
)
@pytest.mark.parametrize("where", ["code", "message", "type", "param"])
def test_the_gateways_own_provider_secret_is_removed_whatever_its_shape_and_place(
    catalog, live_portal, inference_key, team, upstream, monkeypatch, secret, where
):
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", secret)
    _, tenant_secret = inference_key
    error = {"message": "bad key", "type": "invalid_request_error", "code": None, "param": None}
    error[where] = secret if where != "message" else f"Incorrect API key provided: {secret}"
    upstream.script("gpt-4o", Fail(401, body={"error": error}))
    response = httpx2.post(
        f"{live_portal.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {tenant_secret}"},
        json={"model": "gpt-4o", "messages": MESSAGES},
        timeout=30,
    )
    assert response.status_code >= 400 and secret not in response.text
    assert secret not in UsageRecord.objects.get(team=team).error_message


def test_a_provider_secret_is_removed_even_when_the_catalog_cannot_be_read(monkeypatch):
    """No database here (as in an outage): the environment's keys are known all the same."""
    monkeypatch.setenv("LEAKY_API_KEY", "3f2a9c1e-4b7d-4e2a-9f1c-8d7e6b5a4c3d")
    monkeypatch.setenv("OTHER_PROVIDER_KEY", "plainsecretvalue")
    error = upstream_error(
        {
            "error": {
                "message": "keys 3f2a9c1e-4b7d-4e2a-9f1c-8d7e6b5a4c3d and plainsecretvalue",
                "type": "sk-upstreamSECRETabc123def456ghi789jkl",
                "code": "plainsecretvalue",
            }
        },
        fallback="fallback",
    )
    text = json.dumps(error)
    assert "3f2a9c1e" not in text and "plainsecretvalue" not in text and "sk-upstream" not in text
