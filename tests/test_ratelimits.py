"""Per-key RPM and TPM limits, shared by every server process through Redis, in OpenAI's style."""

import asyncio

import openai
import pytest
from django.test import override_settings

from accounts.services import api_key_create
from routing.ratelimits import ratelimit_check

MESSAGES = [{"role": "user", "content": "hi"}]
live = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def away_from_the_window_edge():
    """Counts reset each minute: start a test well inside one window, so its calls share it."""
    import time

    if time.time() % 60 > 55:
        time.sleep(60 - time.time() % 60 + 0.1)


@live
def test_rpm_is_shared_by_two_server_processes(catalog, team, live_portal, second_portal):
    _, secret = api_key_create(team=team, name="limited", rpm_limit=3)
    clients = [
        openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0)
        for url in (live_portal.url, second_portal)
    ]

    for i in range(3):
        clients[i % 2].chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        clients[1].chat.completions.with_raw_response.create(
            model="deepseek-v4-flash", messages=MESSAGES
        )

    error = caught.value
    assert error.code == "rate_limit_exceeded" and error.body["type"] == "requests"
    headers = error.response.headers
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert 1 <= int(headers["retry-after"]) <= 60


@live
def test_a_burst_of_concurrent_calls_gets_exactly_the_limit(
    catalog, team, live_portal, second_portal
):
    # Admitted on the event loop of two processes at once: the shared count must still
    # let exactly rpm through, and refused calls never reach the ledger.
    from usage.models import UsageRecord

    _, secret = api_key_create(team=team, name="burst", rpm_limit=30)

    async def burst():
        clients = [
            openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0)
            for url in (live_portal.url, second_portal)
        ]

        async def one(i):
            try:
                await clients[i % 2].chat.completions.create(
                    model="deepseek-v4-flash", messages=MESSAGES
                )
                return 200
            except openai.RateLimitError:
                return 429

        return await asyncio.gather(*(one(i) for i in range(50)))

    statuses = asyncio.run(burst())

    assert statuses.count(200) == 30 and statuses.count(429) == 20
    assert UsageRecord.objects.filter(team=team).values("request_id").distinct().count() == 30


@live
def test_successful_responses_carry_the_ratelimit_headers(catalog, team, sdk):
    _, secret = api_key_create(team=team, name="limited", rpm_limit=10, tpm_limit=1000)

    raw = sdk(secret).chat.completions.with_raw_response.create(
        model="deepseek-v4-flash", messages=MESSAGES, max_tokens=50
    )

    assert raw.headers["x-ratelimit-limit-requests"] == "10"
    assert raw.headers["x-ratelimit-remaining-requests"] == "9"
    assert raw.headers["x-ratelimit-limit-tokens"] == "1000"
    # Counted at admission: the prompt's ceiling (24 bytes for "hi", 64 of provider
    # framing) plus max_tokens 50.
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(1000 - 24 - 64 - 50)


@live
def test_tpm_counts_the_ceiling_and_gives_back_what_was_not_used(catalog, team, sdk):
    # Each call is admitted at 24 + 64 + 80 = 168 tokens; the fake upstream then reports 46.
    _, secret = api_key_create(team=team, name="limited", tpm_limit=188)
    client = sdk(secret)
    client.chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES, max_tokens=80)

    # 46 used + 168 asked > 188: refused, though it would have been sooner without the give-back.
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES, max_tokens=80)

    assert caught.value.body["type"] == "tokens"
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == str(188 - 46)
    client.chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES, max_tokens=30)


@live
def test_tpm_refuses_a_call_shaped_to_look_small(catalog, team, sdk):
    """n = 50 multiplies the output a call may produce; the TPM limit counts it."""
    _, secret = api_key_create(team=team, name="limited", tpm_limit=1000)
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(secret).chat.completions.create(
            model="deepseek-v4-flash", messages=MESSAGES, max_tokens=100, n=50
        )
    assert caught.value.body["type"] == "tokens"


@live
def test_the_openai_sdk_waits_for_retry_after_and_succeeds(catalog, team, sdk, monkeypatch):
    import time

    import routing.ratelimits

    # A two-second window stands in for a minute so the SDK's own retry can be watched.
    monkeypatch.setattr(routing.ratelimits, "WINDOW_S", 2)
    _, secret = api_key_create(team=team, name="limited", rpm_limit=1)
    client = sdk(secret, max_retries=3)
    time.sleep(2 - time.time() % 2 + 0.05)  # both calls start early in the same window
    client.chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES)

    start = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model="deepseek-v4-flash", messages=MESSAGES
    )

    assert raw.parse().choices[0].message.content
    assert raw.retries_taken >= 1  # it was refused with 429 and Retry-After first
    assert time.monotonic() - start < 6


@override_settings(REDIS_URL="")
def test_local_memory_counts_without_redis(monkeypatch):
    from routing import ratelimits

    monkeypatch.setattr(ratelimits, "_memory", ratelimits._MemoryCounter())  # a fresh process

    def check(now):
        return asyncio.run(
            ratelimit_check(key_id=999_999, rpm=2, tpm=None, tokens=1, now=now)
        ).allowed

    assert [check(120.0) for _ in range(3)] == [True, True, False]
    assert check(180.0)  # next window


def test_keys_without_limits_skip_counting():
    check = asyncio.run(ratelimit_check(key_id=1, rpm=None, tpm=None, tokens=10))
    assert check.allowed and check.headers == {}


@live
def test_a_redis_outage_lets_calls_through_and_keys_still_work(
    catalog, team, sdk, settings, monkeypatch
):
    from routing import ratelimits

    monkeypatch.setattr(ratelimits, "_memory", ratelimits._MemoryCounter())
    _, secret = api_key_create(team=team, name="limited", rpm_limit=5)
    # Nothing listens on port 9; changing CACHES makes Django rebuild its cache connections.
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:9/0"}
    }
    settings.REDIS_URL = "redis://127.0.0.1:9/0"

    completion = sdk(secret).chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES)

    assert completion.choices[0].message.content


def test_only_a_redis_that_cannot_be_reached_is_skipped_for_a_while(monkeypatch):
    # A Redis that refuses or times out is skipped for REDIS_BACKOFF_S (not waited on by
    # every call); one that answers with an error is up, and the limits keep counting in it.
    import redis

    from portal import aio

    async def client_after(exc):
        monkeypatch.setattr(aio, "_redis_down_until", 0.0)
        aio.redis_failed(exc)
        client = aio.redis_client()
        await aio.close_pools()
        return client

    assert asyncio.run(client_after(redis.exceptions.ResponseError("unknown command")))
    assert asyncio.run(client_after(redis.exceptions.ConnectionError("refused"))) is None
    assert asyncio.run(client_after(redis.exceptions.TimeoutError("timed out"))) is None
