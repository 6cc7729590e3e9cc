"""Outbound requests a tenant points the server at (alert and usage webhooks).

A webhook is a request the server makes on a tenant's say-so, so it must be https and
every address its host resolves to must be public: never loopback, private, link-local
(cloud metadata), multicast or reserved. The rules are checked when the URL is saved
(`webhook_url_problem`) and again at each send (`webhook_post`), which resolves the host
once, checks the addresses, and connects to the checked address itself (the name goes in
the Host header and TLS SNI, and the certificate is verified against it), so a DNS answer
that changes between the check and the connection (rebinding) cannot reach inside.
TOLLGATE_WEBHOOK_ALLOW_PRIVATE lifts the address and https rules for local runs and tests.

Each send has one deadline for all of it (connect, send, the answer's headers and body): a
server that trickles its answer a byte at a time cannot hold a worker past it. The requests
run on one event loop in a background thread of the process, with one connection pool.
"""

import asyncio
import ipaddress
import os
import socket
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx2
from django.conf import settings


class OutboundFailed(Exception):
    """The request was not made or not answered; the message says why, for the tenant."""


class OutboundRefused(OutboundFailed):
    """The URL may not be called; the message says why (without mapping the network)."""


# One answer whether the host does not resolve or resolves inside: the message must not let
# anyone map the server's network.
REFUSED = "The webhook's host must resolve, and only to public internet addresses."

# IPv6 prefixes that carry an IPv4 address or reach a private network, which Python's
# is_global does not (all) rule out: NAT64 (64:ff9b::/96, 64:ff9b:1::/48), deprecated
# site-local (fec0::/10), and IPv4-compatible (::a.b.c.d).
IPV6_REFUSED = [
    ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "fec0::/10", "::/96")
]


def _public(text: str) -> bool:
    address = ipaddress.ip_address(text.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in IPV6_REFUSED):
            return False
        embedded = (
            address.ipv4_mapped
            or address.sixtofour
            or (address.teredo[1] if address.teredo else None)
        )
        if embedded is not None and not _public(str(embedded)):
            return False
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class Pinned:
    """A webhook URL bound to the address it was checked at."""

    url: str  # the URL with the checked address as its host
    host: str  # the Host header: the name and port as the tenant wrote them
    sni: str | None  # the name TLS asks for and verifies (https only)


def webhook_pin(url: str) -> Pinned:
    """Resolve the URL's host once and check it; OutboundRefused saying why not."""
    parts = urlsplit(url)
    allow_private = settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE
    if parts.scheme != "https" and not (allow_private and parts.scheme == "http"):
        raise OutboundRefused("The webhook must be an https:// URL.")
    if not parts.hostname:
        raise OutboundRefused("The webhook URL names no host.")
    if parts.username or parts.password:
        raise OutboundRefused("The webhook URL must not hold a user name or password.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError):
        raise OutboundRefused(REFUSED) from None
    addresses = [info[4][0] for info in infos]
    if not addresses or not (allow_private or all(_public(a) for a in addresses)):
        raise OutboundRefused(REFUSED)
    address = addresses[0].split("%")[0]
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    return Pinned(
        url=urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        host=parts.netloc,
        sni=parts.hostname if parts.scheme == "https" else None,
    )


def webhook_url_problem(url: str) -> str | None:
    """Why a webhook may not be set to (or sent to) `url`, or None."""
    try:
        webhook_pin(url)
    except OutboundRefused as refused:
        return str(refused)
    return None


def webhook_post(url: str, *, content: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST to a webhook at the address checked just now, never following redirects, all of
    it within `timeout` seconds; the status it answered. OutboundRefused when the URL breaks
    the rules, OutboundFailed when the send fails or runs out of time."""
    pinned = webhook_pin(url)
    future = asyncio.run_coroutine_threadsafe(
        _post(pinned, content, {**headers, "Host": pinned.host}, timeout), _loop()
    )
    try:
        return future.result(timeout + 1)
    except (TimeoutError, FutureTimeout, httpx2.TimeoutException):
        future.cancel()
        raise OutboundFailed("timed out") from None
    except httpx2.HTTPError:
        raise OutboundFailed("could not be reached") from None


async def _post(pinned: Pinned, content: bytes, headers: dict[str, str], timeout: float) -> int:
    extensions = {"sni_hostname": pinned.sni} if pinned.sni else {}
    async with asyncio.timeout(timeout):
        response = await _client().post(
            pinned.url, content=content, headers=headers, timeout=timeout, extensions=extensions
        )
    return response.status_code


_lock = threading.Lock()
# This process's loop for outbound requests (a forked child makes its own) and its client.
_running: tuple[int, asyncio.AbstractEventLoop] | None = None
_clients: dict[asyncio.AbstractEventLoop, httpx2.AsyncClient] = {}


def _loop() -> asyncio.AbstractEventLoop:
    global _running
    with _lock:
        if _running is None or _running[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="webhooks", daemon=True).start()
            _running = (os.getpid(), loop)
        return _running[1]


def _client() -> httpx2.AsyncClient:
    loop = asyncio.get_running_loop()
    if loop not in _clients:
        # trust_env off: no HTTPS_PROXY or .netrc may send a tenant's webhook elsewhere than
        # the address checked.
        _clients[loop] = httpx2.AsyncClient(
            follow_redirects=False, trust_env=False, headers={"User-Agent": "Tollgate-Webhooks/1"}
        )
    return _clients[loop]
