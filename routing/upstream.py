"""One pooled `openai` client per provider (and event loop), built on demand."""

import asyncio
import os
import weakref

import httpx2
import openai

from routing.errors import ProxyError
from routing.offline import OfflineTransport
from routing.selectors import ProviderInfo

OFFLINE_BASE_URL = "offline:"

# An httpx client belongs to the event loop it was made on.
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()


def upstream_client(provider: ProviderInfo) -> openai.AsyncOpenAI:
    loop = asyncio.get_running_loop()
    per_loop = _clients.setdefault(loop, {})
    client = per_loop.get(provider)
    if client is None:
        client = _make_client(provider)
        per_loop[provider] = client
    return client


def _make_client(provider: ProviderInfo) -> openai.AsyncOpenAI:
    timeout = httpx2.Timeout(provider.timeout_s, connect=min(10, provider.timeout_s))
    if provider.base_url.startswith(OFFLINE_BASE_URL):
        return openai.AsyncOpenAI(
            base_url="http://offline.invalid/v1",
            api_key="offline",
            max_retries=0,
            timeout=timeout,
            http_client=httpx2.AsyncClient(transport=OfflineTransport()),
        )
    api_key = os.environ.get(provider.api_key_env, "") if provider.api_key_env else ""
    if provider.api_key_env and not api_key:
        raise ProxyError(
            503,
            f"The provider '{provider.name}' is not configured: its secret {provider.api_key_env} is not set.",
            code="provider_not_configured",
        )
    # Retries are the proxy's own decision (fallbacks), never the SDK's.
    return openai.AsyncOpenAI(
        base_url=provider.base_url, api_key=api_key or "none", max_retries=0, timeout=timeout
    )
