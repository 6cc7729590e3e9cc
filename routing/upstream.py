"""How calls reach a provider: one pooled aiohttp session per provider (and event loop),
built on demand, with no SDK request building on the hot path. JSON calls go through
`upstream_post`, streams through `upstream_stream`, whose server-sent events `sse_events`
splits into their data, as bytes, for the relay to pass on as they came
(routing.streaming). The built-in offline provider answers through the same two
functions from its in-process transport (routing.offline), without a network.

Failures raise what routing.attempts classifies: UpstreamStatusError for an error status,
UpstreamEventError for an error event in a stream, aiohttp's ClientError for a connection
that failed, TimeoutError for one that took too long.
"""

import asyncio
import json
import os
import weakref
from collections.abc import AsyncIterator, Mapping

import aiohttp
import httpx2

from routing.errors import ProxyError
from routing.offline import OfflineTransport
from routing.selectors import ProviderInfo

OFFLINE_BASE_URL = "offline:"


class UpstreamStatusError(Exception):
    """The upstream answered an error status; its headers and body (bytes) as they came."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes):
        super().__init__(f"The upstream answered HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> object:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None


class UpstreamEventError(Exception):
    """An error event inside a stream; `body` is its `error` member."""

    def __init__(self, body: object):
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(message if isinstance(message, str) else "no message")
        self.body = body


class Answer:
    """An upstream's answer, whichever client carried it: status, headers, and the body as
    it comes."""

    status: int
    headers: Mapping[str, str]

    def chunks(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def close(self) -> None:
        raise NotImplementedError


class _HttpAnswer(Answer):
    def __init__(self, response: aiohttp.ClientResponse):
        self.response = response
        self.status = response.status
        self.headers = response.headers

    def chunks(self) -> AsyncIterator[bytes]:
        return self.response.content.iter_any()

    async def read(self) -> bytes:
        return await self.response.read()

    async def close(self) -> None:
        self.response.release()


class _OfflineAnswer(Answer):
    def __init__(self, response: httpx2.Response):
        self.response = response
        self.status = response.status_code
        self.headers = response.headers

    def chunks(self) -> AsyncIterator[bytes]:
        return self.response.aiter_bytes()

    async def close(self) -> None:
        await self.response.aclose()


class _Upstream:
    def __init__(self, provider: ProviderInfo):
        self.offline = provider.base_url.startswith(OFFLINE_BASE_URL)
        self.session: aiohttp.ClientSession | None = None
        self.fresh: aiohttp.ClientSession | None = None
        if self.offline:
            self.base_url, api_key = "http://offline.invalid/v1", "offline"
            self.transport = OfflineTransport()
        else:
            api_key = os.environ.get(provider.api_key_env, "") if provider.api_key_env else ""
            if provider.api_key_env and not api_key:
                raise ProxyError(
                    503,
                    f"The provider '{provider.name}' is not configured: its secret "
                    f"{provider.api_key_env} is not set.",
                    code="provider_not_configured",
                )
            self.base_url, api_key = provider.base_url.rstrip("/"), api_key or "none"
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0, ttl_dns_cache=300),
                # Proxies from the environment are not followed: the provider is called as set.
                trust_env=False,
                raise_for_status=False,
            )
        self.timeout_s = provider.timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def _fresh(self) -> aiohttp.ClientSession:
        """A session whose every request gets a new connection (closed after it)."""
        if self.fresh is None:
            self.fresh = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0), trust_env=False
            )
        return self.fresh

    async def post(self, path: str, content: bytes, *, timeout: float) -> Answer:
        """POST `content`; the answer with its body unread. An error status raises
        UpstreamStatusError (its body read, the answer closed)."""
        if self.session is None:
            request = httpx2.Request(
                "POST", self.base_url + path, content=content, headers=self.headers
            )
            answer: Answer = _OfflineAnswer(await self.transport.handle_async_request(request))
        else:
            # As httpx's timeouts: each connect and each read within `timeout` (the call's
            # deadline bounds the whole).
            limit = min(timeout, self.timeout_s)
            timeouts = aiohttp.ClientTimeout(
                total=None, sock_connect=min(10, limit), sock_read=limit
            )
            try:
                response = await self.session.post(
                    self.base_url + path, data=content, headers=self.headers, timeout=timeouts
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                # A kept-alive connection the server closed as the request went out (its
                # idle timeout: uvicorn's is 5 s) fails before any answer, as a disconnect
                # or a reset: tried once more, on a new connection. A server that is down
                # fails this second try too.
                response = await self._fresh().post(
                    self.base_url + path, data=content, headers=self.headers, timeout=timeouts
                )
            answer = _HttpAnswer(response)
        if answer.status >= 400:
            try:
                body = await answer.read()
            finally:
                await answer.close()
            raise UpstreamStatusError(answer.status, answer.headers, body)
        return answer


# A session belongs to the event loop it was made on.
_upstreams: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = (
    weakref.WeakKeyDictionary()
)


def _upstream(provider: ProviderInfo) -> _Upstream:
    per_loop = _upstreams.setdefault(asyncio.get_running_loop(), {})
    upstream = per_loop.get(provider)
    if upstream is None:
        upstream = per_loop[provider] = _Upstream(provider)
    return upstream


async def upstream_post(
    provider: ProviderInfo, path: str, content: bytes, *, timeout: float
) -> bytes:
    """POST a JSON body to the provider as is; the answer's body."""
    answer = await _upstream(provider).post(path, content, timeout=timeout)
    try:
        return await answer.read()
    finally:
        await answer.close()


async def upstream_stream(
    provider: ProviderInfo, path: str, content: bytes, *, timeout: float
) -> Answer:
    """POST a JSON body asking for a stream; the open answer, its body unread."""
    return await _upstream(provider).post(path, content, timeout=timeout)


async def upstream_close() -> None:
    """Close this event loop's sessions (at shutdown, or when a short-lived loop ends)."""
    for upstream in _upstreams.pop(asyncio.get_running_loop(), {}).values():
        for session in (upstream.session, upstream.fresh):
            if session is not None:
                await session.close()


async def sse_events(answer: Answer) -> AsyncIterator[bytes]:
    """The data of each server-sent event of `answer`, as the bytes that came (data lines
    joined by newlines), until `[DONE]` or the end of the body. Fields other than data
    (event, id, retry, comments) carry nothing the gateway uses."""
    buffer = b""
    data: list[bytes] = []
    async for piece in answer.chunks():
        if b"\r" in piece:  # CRLF or CR line ends, as SSE allows: read as LF
            piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = buffer + piece if buffer else piece
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = buffer[start:end]
            start = end + 1
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
