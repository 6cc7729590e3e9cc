"""Every way a /v1 call can fail answers in OpenAI's shape, and failed calls are in the ledger."""

from datetime import timedelta
from decimal import Decimal

import httpx2
import openai
import pytest
from django.test import override_settings
from django.utils import timezone

from accounts.services import api_key_create, api_key_revoke
from tests.fake_upstream import Answer, Fail, Reset
from usage.models import MeteredCall, UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hello"}]


def post(live_portal, path, secret=None, **kwargs):
    headers = kwargs.pop("headers", {})
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    return httpx2.post(f"{live_portal.url}/v1/{path}", headers=headers, timeout=20, **kwargs)


def assert_openai_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"].startswith("req_")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def rows(team):
    return list(UsageRecord.objects.filter(team=team).order_by("id"))


# --- 401 -----------------------------------------------------------------------


def test_missing_key_is_401(catalog, live_portal):
    response = post(live_portal, "chat/completions", json={"model": "gpt-4o", "messages": MESSAGES})
    assert_openai_error(response, 401, code="invalid_api_key")


@pytest.mark.parametrize("secret", ["not-a-key", "tgk_AAAAAAAA_wrongwrongwrong", "Basic abc"])
def test_unknown_or_malformed_key_is_401(catalog, live_portal, inference_key, secret):
    response = (
        post(live_portal, "models", secret=secret)
        if secret != "Basic abc"
        else httpx2.get(f"{live_portal.url}/v1/models", headers={"Authorization": "Basic abc"})
    )
    assert_openai_error(response, 401)


def test_right_prefix_with_wrong_secret_is_401(catalog, live_portal, inference_key):
    key, secret = inference_key
    response = httpx2.get(
        f"{live_portal.url}/v1/models", headers={"Authorization": f"Bearer {key.prefix}_forged"}
    )
    assert_openai_error(response, 401)


def test_revoked_key_is_rejected_at_once_even_when_cached(catalog, sdk, inference_key):
    key, secret = inference_key
    client = sdk(secret)
    client.models.list()  # authenticates and caches the key

    api_key_revoke(key=key)

    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert "revoked" in caught.value.message


def test_expired_key_is_401(catalog, sdk, team):
    _, secret = api_key_create(
        team=team, name="old", expires_at=timezone.now() + timedelta(seconds=1)
    )
    from accounts.models import ApiKey

    ApiKey.objects.filter(name="old").update(expires_at=timezone.now() - timedelta(seconds=1))

    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(secret).models.list()
    assert "expired" in caught.value.message


def test_management_key_cannot_call_v1(catalog, sdk, management_key):
    _, secret = management_key
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(secret).models.list()
    assert "Management keys cannot call /v1" in caught.value.message


# --- 403, 404 and refusals --------------------------------------------------------


def test_model_not_allowed_for_key_is_403_and_refused_in_ledger(catalog, sdk, team, upstream):
    key, secret = api_key_create(team=team, name="cheap only", allowed_models=["deepseek-v4-flash"])

    with pytest.raises(openai.PermissionDeniedError) as caught:
        sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert caught.value.code == "model_not_allowed"
    [row] = rows(team)
    assert (row.status, row.http_status, row.model, row.cost_usd) == ("refused", 403, "gpt-4o", 0)
    assert upstream.received == []


def test_route_with_a_disallowed_target_is_403(catalog, sdk, team):
    _, secret = api_key_create(team=team, name="one target", allowed_models=["deepseek-v4-flash"])
    with pytest.raises(openai.PermissionDeniedError):
        sdk(secret).chat.completions.create(model="bulk_classify", messages=MESSAGES)


def test_unknown_model_is_404(catalog, sdk, inference_key, team):
    _, secret = inference_key
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(secret).chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert rows(team)[0].status == "refused"


def test_unknown_endpoint_is_404_in_openai_shape(catalog, live_portal, inference_key):
    _, secret = inference_key
    assert_openai_error(
        post(live_portal, "images/generations", secret=secret, json={}), 404, code="unknown_url"
    )


def test_unpriced_model_is_refused_never_billed_as_zero(
    catalog, sdk, inference_key, team, upstream
):
    _, secret = inference_key

    with pytest.raises(openai.BadRequestError) as caught:
        sdk(secret).chat.completions.create(model="qwen3-coder-30b", messages=MESSAGES)

    assert caught.value.code == "model_unpriced"
    assert "qwen3-coder-30b" in caught.value.message and "input price" in caught.value.message
    assert upstream.received == []
    [row] = rows(team)
    assert (row.status, row.http_status, row.error_type) == ("refused", 400, "model_unpriced")


def test_chat_call_to_an_embeddings_model_is_400(catalog, sdk, inference_key):
    _, secret = inference_key
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(secret).chat.completions.create(model="text-embedding-3-small", messages=MESSAGES)
    assert caught.value.code == "model_not_supported"
    assert caught.value.body["message"] == (
        "The model `text-embedding-3-small` is not served on /v1/chat/completions; "
        "it is served on /v1/embeddings."
    )


def test_the_model_list_says_where_each_model_is_served(catalog, sdk, inference_key):
    _, secret = inference_key
    models = {m.id: m for m in sdk(secret).models.list()}

    assert models["gpt-4o"].endpoints == ["chat", "responses"]
    assert models["text-embedding-3-small"].endpoints == ["embeddings"]


def test_a_route_on_an_endpoint_none_of_its_models_serves_says_where_they_are_served(
    catalog, sdk, inference_key, upstream
):
    from tests.factories import global_route

    global_route("mixed", ["gpt-4o", "text-embedding-3-small"])
    _, secret = inference_key

    with pytest.raises(openai.BadRequestError) as caught:
        sdk(secret).completions.create(model="mixed", prompt="hi")

    assert caught.value.code == "model_not_supported"
    assert caught.value.body["message"] == (
        "No model of the route `mixed` is served on /v1/completions; its models are served "
        "on /v1/chat/completions, /v1/responses, /v1/embeddings."
    )
    assert upstream.received == []


def test_a_route_is_listed_where_any_of_its_targets_is_served(catalog, sdk, inference_key):
    from tests.factories import global_route

    global_route("mixed", ["gpt-4o", "text-embedding-3-small"])
    _, secret = inference_key

    route = sdk(secret).models.retrieve("mixed")

    assert route.owned_by == "tollgate-route"
    assert route.endpoints == ["chat", "responses", "embeddings"]


# --- 400 and 413 ---------------------------------------------------------------------


def test_malformed_json_is_400(catalog, live_portal, inference_key):
    _, secret = inference_key
    response = post(
        live_portal,
        "chat/completions",
        secret,
        content=b'{"model": "gpt-4o", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    assert_openai_error(response, 400, code="invalid_json")


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": "gpt-4o"}, "messages"),
        ({"model": 42, "messages": MESSAGES}, "model"),
        ({"model": "gpt-4o", "messages": "hello"}, "messages"),
        ({"model": "gpt-4o", "messages": [{"content": "no role"}]}, "messages[0]"),
        ({"model": "gpt-4o", "messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"model": "gpt-4o", "messages": MESSAGES, "max_tokens": -1}, "max_tokens"),
        ({"model": "gpt-4o", "messages": MESSAGES, "user": 7}, "user"),
    ],
)
def test_missing_or_mistyped_chat_fields_are_400(catalog, live_portal, inference_key, body, param):
    _, secret = inference_key
    assert_openai_error(post(live_portal, "chat/completions", secret, json=body), 400, param=param)


def test_body_that_is_not_an_object_is_400(catalog, live_portal, inference_key):
    _, secret = inference_key
    assert_openai_error(post(live_portal, "chat/completions", secret, json=[1, 2]), 400)


@pytest.mark.parametrize("value", [None, "", [], 5, [["a"]], [True]])
def test_bad_embeddings_input_is_400(catalog, live_portal, inference_key, value):
    _, secret = inference_key
    body = {"model": "text-embedding-3-small"}
    if value is not None:
        body["input"] = value
    assert_openai_error(post(live_portal, "embeddings", secret, json=body), 400, param="input")


@override_settings(TOLLGATE_MAX_BODY_BYTES=2000)
def test_body_over_the_limit_is_413(catalog, live_portal, inference_key):
    _, secret = inference_key
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_openai_error(
        post(live_portal, "chat/completions", secret, json=big), 413, code="request_too_large"
    )


@override_settings(TOLLGATE_MAX_BODY_BYTES=2000)
def test_chunked_body_over_the_limit_is_413(catalog, live_portal, inference_key):
    _, secret = inference_key

    def chunks():
        yield b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}]}'

    response = post(live_portal, "chat/completions", secret, content=chunks())
    assert_openai_error(response, 413)


# --- Upstream failures -------------------------------------------------------------------


def test_upstream_500_is_502_passing_on_its_error_and_recorded_at_zero_cost(
    catalog, sdk, inference_key, team, upstream
):
    _, secret = inference_key
    upstream.script("gpt-4o", Fail(500, "the model is overloaded"))

    with pytest.raises(openai.APIStatusError) as caught:
        sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert caught.value.status_code == 502
    assert caught.value.body["message"] == "the model is overloaded"
    [row] = rows(team)
    assert (row.status, row.http_status, row.cost_usd, row.prompt_tokens) == (
        "upstream_error",
        502,
        0,
        0,
    )
    assert "overloaded" in row.error_message
    assert not MeteredCall.objects.in_flight().exists()


def test_upstream_400_is_passed_on_and_not_retried(catalog, sdk, inference_key, team, upstream):
    _, secret = inference_key
    upstream.script("deepseek-v4-flash", Fail(400, "temperature must be at most 2"))

    with pytest.raises(openai.BadRequestError) as caught:
        sdk(secret).chat.completions.create(
            model="bulk_classify", messages=MESSAGES, temperature=1.9
        )

    assert caught.value.body["message"] == "temperature must be at most 2"
    assert len(upstream.received) == 1  # the route's second target was not tried
    [row] = rows(team)
    assert (row.status, row.http_status, row.model) == ("upstream_error", 400, "deepseek-v4-flash")


def test_upstream_timeout_is_504(catalog, sdk, inference_key, team, upstream):
    from routing.models import Provider

    Provider.objects.filter(name="openai").update(timeout_s=1)
    _, secret = inference_key
    upstream.script("gpt-4o", Answer(delay=2.5))

    with pytest.raises(openai.APIStatusError) as caught:
        sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert caught.value.status_code == 504
    [row] = rows(team)
    assert (row.status, row.http_status, row.cost_usd) == ("timeout", 504, 0)


def test_connection_reset_is_502(catalog, sdk, inference_key, team, upstream):
    _, secret = inference_key
    upstream.script("gpt-4o", Reset(), Reset())

    with pytest.raises(openai.APIStatusError) as caught:
        sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert caught.value.status_code == 502
    assert rows(team)[0].status == "upstream_error"
    # Tried once more on a new connection, then given up: one attempt in the ledger.
    assert len(upstream.received) == 2 and len(rows(team)) == 1


def test_one_reset_is_tried_again_on_a_new_connection(catalog, sdk, inference_key, team, upstream):
    _, secret = inference_key
    upstream.script("gpt-4o", Reset())

    completion = sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert completion.choices[0].message.content
    assert len(upstream.received) == 2
    assert [(r.status, r.attempt) for r in rows(team)] == [("ok", 0)]


def test_route_falls_back_to_next_target_when_first_fails(
    catalog, sdk, inference_key, team, upstream
):
    _, secret = inference_key
    upstream.script("deepseek-v4-flash", Fail(503, "down"))

    raw = sdk(secret).chat.completions.with_raw_response.create(
        model="bulk_classify", messages=MESSAGES
    )

    assert raw.headers["x-tollgate-model"] == "qwen3-32b"
    failed, served = rows(team)
    assert failed.request_id == served.request_id == raw.headers["x-request-id"]
    assert (failed.attempt, failed.model, failed.status, failed.cost_usd) == (
        0,
        "deepseek-v4-flash",
        "upstream_error",
        0,
    )
    assert (served.attempt, served.model, served.status) == (1, "qwen3-32b", "ok")
    assert (
        served.cost_usd
        == Decimal(raw.headers["x-tollgate-cost"])
        == (12 * Decimal("0.18") + 34 * Decimal("0.28")) / 10**6
    )


def test_stream_that_fails_before_its_first_chunk_falls_back(
    catalog, sdk, inference_key, team, upstream
):
    _, secret = inference_key
    upstream.script("deepseek-v4-flash", Answer(cut_after=0))

    chunks = list(
        sdk(secret).chat.completions.create(model="bulk_classify", messages=MESSAGES, stream=True)
    )

    assert chunks[0].model == "qwen3-32b"
    failed, served = rows(team)
    assert (failed.status, failed.cost_usd, served.status, served.model) == (
        "upstream_error",
        0,
        "ok",
        "qwen3-32b",
    )


def test_provider_without_its_secret_is_503(catalog, sdk, inference_key, monkeypatch, team):
    from routing.models import Provider

    Provider.objects.filter(name="openai").update(api_key_env="MISSING_OPENAI_KEY")
    monkeypatch.delenv("MISSING_OPENAI_KEY", raising=False)
    _, secret = inference_key

    with pytest.raises(openai.InternalServerError) as caught:
        sdk(secret).chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert caught.value.status_code == 503
    assert "MISSING_OPENAI_KEY" in caught.value.message
    assert rows(team)[0].error_type == "provider_not_configured"


def test_key_under_a_dropped_pepper_is_401_in_openais_shape(
    catalog, live_portal, sdk, team, settings
):
    settings.TOLLGATE_KEY_PEPPER = "pepper-a-0123456789abcdef0123456789abcdef"
    _, secret = api_key_create(team=team, name="app")
    sdk(secret).models.list()  # cached: the cache must not outlive the pepper
    settings.TOLLGATE_KEY_PEPPER = "pepper-b-0123456789abcdef0123456789abcdef"

    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(secret).models.list()
    assert "Incorrect API key provided." in caught.value.message
    response = post(live_portal, "chat/completions", secret, json={"model": "gpt-4o"})
    assert_openai_error(response, 401)
    assert response.json()["error"]["message"] == "Incorrect API key provided."
