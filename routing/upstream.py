"""One pooled HTTP client per provider (and event loop), built on demand. Calls go through
it directly, with no SDK request building on the hot path: JSON calls by `upstream_post`,
streams by `upstream_stream`, whose server-sent events `sse_events` splits into their
data, as bytes, for the relay to pass on as they came (routing.streaming). The `openai`
SDK built on the same client serves the rest (e.g. the compare page's calls)."""

import asyncio
import os
import weakref
from dataclasses import dataclass

import httpx2
import openai

from routing.errors import ProxyError
from routing.offline import OfflineTransport
from routing.selectors import ProviderInfo

OFFLINE_BASE_URL = "offline:"


@dataclass(frozen=True)
class Upstream:
    http: httpx2.AsyncClient
    sdk: openai.AsyncOpenAI
    base_url: str
    headers: dict[str, str]


# An httpx client belongs to the event loop it was made on.
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()


def _upstream(provider: ProviderInfo) -> Upstream:
    loop = asyncio.get_running_loop()
    per_loop = _clients.setdefault(loop, {})
    upstream = per_loop.get(provider)
    if upstream is None:
        upstream = _make_upstream(provider)
        per_loop[provider] = upstream
    return upstream


def upstream_client(provider: ProviderInfo) -> openai.AsyncOpenAI:
    return _upstream(provider).sdk


async def upstream_post(
    provider: ProviderInfo, path: str, content: bytes, *, timeout: float
) -> httpx2.Response:
    """POST a JSON body to the provider as is (no SDK request building or re-validation);
    an error status raises openai.APIStatusError, as the SDK would, for classify_failure."""
    upstream = _upstream(provider)
    response = await upstream.http.post(
        upstream.base_url + path, content=content, headers=upstream.headers, timeout=timeout
    )
    if response.status_code >= 400:
        await response.aread()
        raise openai.APIStatusError(
            f"The upstream answered HTTP {response.status_code}", response=response, body=None
        )
    return response


async def upstream_stream(
    provider: ProviderInfo, path: str, content: bytes, *, timeout: float
) -> httpx2.Response:
    """POST a JSON body asking for a stream; the open response, its body unread. An error
    status raises openai.APIStatusError (its body read, the response closed)."""
    upstream = _upstream(provider)
    request = upstream.http.build_request(
        "POST", upstream.base_url + path, content=content, headers=upstream.headers, timeout=timeout
    )
    response = await upstream.http.send(request, stream=True)
    if response.status_code >= 400:
        try:
            await response.aread()
        finally:
            await response.aclose()
        raise openai.APIStatusError(
            f"The upstream answered HTTP {response.status_code}", response=response, body=None
        )
    return response


async def sse_events(response: httpx2.Response):
    """The data of each server-sent event of `response`, as the bytes that came (data lines
    joined by newlines), until `[DONE]` or the end of the body. Fields other than data
    (event, id, retry, comments) carry nothing the gateway uses."""
    buffer = b""
    data: list[bytes] = []
    async for piece in response.aiter_bytes():
        buffer = buffer + piece if buffer else piece
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    event = data[0] if len(data) == 1 else b"\n".join(data)
                    data = []
                    if event == b"[DONE]":
                        return
                    yield event
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
        buffer = buffer[start:]
    if buffer.startswith(b"data:"):
        data.append(buffer[6:] if buffer[5:6] == b" " else buffer[5:])
    if data and (event := b"\n".join(data)) != b"[DONE]":
        yield event


def _make_upstream(provider: ProviderInfo) -> Upstream:
    timeout = httpx2.Timeout(provider.timeout_s, connect=min(10, provider.timeout_s))
    if provider.base_url.startswith(OFFLINE_BASE_URL):
        base_url, api_key = "http://offline.invalid/v1", "offline"
        http = httpx2.AsyncClient(transport=OfflineTransport(), timeout=timeout)
    else:
        api_key = os.environ.get(provider.api_key_env, "") if provider.api_key_env else ""
        if provider.api_key_env and not api_key:
            raise ProxyError(
                503,
                f"The provider '{provider.name}' is not configured: its secret {provider.api_key_env} is not set.",
                code="provider_not_configured",
            )
        base_url, api_key = provider.base_url.rstrip("/"), api_key or "none"
        http = httpx2.AsyncClient(
            timeout=timeout,
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100),
        )
    # Retries are the proxy's own decision (fallbacks), never the SDK's.
    sdk = openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout, http_client=http
    )
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    return Upstream(http=http, sdk=sdk, base_url=base_url, headers=headers)
