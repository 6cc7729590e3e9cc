"""Hostile input never reaches a 500: /v1 bodies are bounded and typed (nesting, numbers
beyond any provider's range, JSON that is not JSON), /api filters are validated, and what a
tenant names things is escaped in every medium (here: the invoice PDF)."""

import json

import httpx2
import pytest
from rest_framework.test import APIClient

from tests.test_proxy_errors import assert_openai_error

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(live_portal, secret, raw: bytes):
    return httpx2.post(
        f"{live_portal.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        content=raw,
        timeout=20,
    )


def body_with(**fields) -> bytes:
    return json.dumps({"model": "gpt-4o", "messages": MESSAGES, **fields}).encode()


def test_deeply_nested_json_is_400_not_a_crash(catalog, live_portal, inference_key):
    _, secret = inference_key
    deep = b'{"model":"gpt-4o","messages":[],"metadata":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    error = assert_openai_error(chat(live_portal, secret, deep), 400, code="invalid_json")
    assert "nested too deeply" in error["message"]


@pytest.mark.parametrize(
    "raw, name",
    [
        (
            b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":NaN}',
            "NaN",
        ),
        (
            b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"top_p":-Infinity}',
            "-Infinity",
        ),
        (
            b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":1e400}',
            "1e400",
        ),
        (b'{"model":"gpt-4o","messages":[],"max_tokens":' + b"9" * 5000 + b"}", "5000 digits"),
    ],
)
def test_numbers_json_cannot_hold_are_400(catalog, live_portal, inference_key, raw, name):
    _, secret = inference_key
    assert_openai_error(chat(live_portal, secret, raw), 400, code="invalid_json")


@pytest.mark.parametrize(
    "field, value, code",
    [
        ("max_tokens", 2**63, "invalid_value"),
        ("max_tokens", 2**31, "invalid_value"),
        ("max_tokens", 0, "invalid_value"),
        ("max_tokens", 1e30, "invalid_type"),
        ("max_completion_tokens", 2**40, "invalid_value"),
        ("n", 2**40, "invalid_value"),
        ("n", 129, "invalid_value"),
        ("seed", 2**63, "invalid_value"),
        ("top_logprobs", 21, "invalid_value"),
        ("temperature", 2.5, "invalid_value"),
        ("temperature", "hot", "invalid_type"),
        ("top_p", 1.5, "invalid_value"),
        ("presence_penalty", -3, "invalid_value"),
        ("frequency_penalty", True, "invalid_type"),
    ],
)
def test_numbers_beyond_what_providers_take_are_400_naming_the_field(
    catalog, live_portal, inference_key, field, value, code
):
    _, secret = inference_key
    response = chat(live_portal, secret, body_with(**{field: value}))
    assert_openai_error(response, 400, code=code, param=field)


def test_numbers_at_the_edges_of_their_ranges_are_served(catalog, sdk, inference_key, upstream):
    _, secret = inference_key
    answer = sdk(secret).chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        max_tokens=2**31 - 1,
        n=1,
        seed=-(2**63),
        temperature=2,
        top_p=0,
        presence_penalty=-2,
        frequency_penalty=2,
    )
    assert answer.choices


def test_embedding_dimensions_are_bounded(catalog, live_portal, inference_key):
    _, secret = inference_key
    response = httpx2.post(
        f"{live_portal.url}/v1/embeddings",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "text-embedding-3-small", "input": "x", "dimensions": 2**40},
    )
    assert_openai_error(response, 400, code="invalid_value", param="dimensions")


@pytest.mark.parametrize(
    "query, field",
    [
        ("start=2026-02-30", "start"),
        ("start=2026-02-01T25:00", "start"),
        ("end=abc", "end"),
        ("key=%00", "detail"),
        ("model=%00", "detail"),
        ("cursor=%00zz", "detail"),
    ],
)
def test_api_filters_that_are_not_dates_or_ids_are_400_in_drfs_shape(team, owner, query, field):
    client = APIClient()
    client.force_login(owner)
    for path in ("/api/teams/acme/usage/?", "/api/teams/acme/usage/summary/?group_by=day&"):
        answer = client.get(path + query)
        assert answer.status_code == 400, answer.content
        assert answer["content-type"] == "application/json"
        assert field in answer.json()


def test_a_team_name_made_of_markup_prints_as_text_on_its_invoice(catalog, team, owner):
    from datetime import timedelta

    from django.utils import timezone

    from accounts.services import api_key_create
    from tests.factories import spend
    from usage.months import month_start

    team.name = '<img src="x" onerror="alert(1)"> & <b>Ünïcödé</b> <para>'
    team.save()
    key, _ = api_key_create(team=team, name="app")
    when = month_start(timezone.now()) + timedelta(seconds=1)
    spend(team, key, "1.25", when, "markup-1", now=when)
    client = APIClient()
    client.force_login(owner)
    month = f"{timezone.now():%Y-%m}"
    pdf = client.get(f"/api/teams/acme/invoices/{month}/?preview=1&format=pdf")
    assert pdf.status_code == 200, pdf.content[:300]
    assert pdf.content.startswith(b"%PDF")


@pytest.mark.parametrize("field", ["user", "model"])
def test_a_nul_in_what_the_ledger_keeps_is_400_before_any_upstream_call(
    catalog, live_portal, inference_key, upstream, field
):
    _, secret = inference_key
    body = {"model": "gpt-4o", "messages": MESSAGES, "user": "x", field: "bad\x00value"}
    response = chat(live_portal, secret, json.dumps(body).encode())
    assert_openai_error(response, 400, code="invalid_value", param=field)
    assert upstream.received == []


def test_a_lone_surrogate_is_400_not_an_upstream_failure(
    catalog, live_portal, inference_key, upstream
):
    _, secret = inference_key
    raw = b'{"model":"gpt-4o","messages":[{"role":"user","content":"\\ud800"}]}'
    assert_openai_error(chat(live_portal, secret, raw), 400, code="invalid_json")
    # A proper pair, escaped, is a character like any other.
    paired = b'{"model":"gpt-4o","messages":[{"role":"user","content":"\\ud83d\\ude00"}]}'
    assert chat(live_portal, secret, paired).status_code == 200


def test_an_embeddings_request_holds_at_most_2048_inputs(catalog, live_portal, inference_key):
    _, secret = inference_key
    response = httpx2.post(
        f"{live_portal.url}/v1/embeddings",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "text-embedding-3-small", "input": ["x"] * 2049},
    )
    assert_openai_error(response, 400, code="invalid_value", param="input")


def test_api_json_nested_too_deeply_is_400_in_drfs_shape(team, owner):
    client = APIClient()
    client.force_login(owner)
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    for body in (deep, "[" * 100_000 + "]" * 100_000):
        answer = client.post("/api/teams/acme/keys/", body, content_type="application/json")
        assert answer.status_code == 400 and "nested too deeply" in answer.json()["detail"]
