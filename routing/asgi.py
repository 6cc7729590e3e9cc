"""How /v1 is served: its own Django ASGI handler behind a body-size bound.

The proxy's calls need none of the browser middleware (sessions, CSRF,
messages, clickjacking headers): a bearer key is the whole identity. Each
synchronous middleware costs two thread hops per request under ASGI, a
large share of the proxy's own latency, so /v1 gets a handler without them.
"""

import asyncio
import gc
import json
import logging
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.urls import set_script_prefix, set_urlconf

from portal.logs import new_request_id
from routing.errors import ProxyError, log_unmetered, request_too_large

logger = logging.getLogger(__name__)


class ProxyHandler(ASGIHandler):
    """Django's ASGI handler without settings.MIDDLEWARE; URL routing and views as usual.

    A call's path makes no thread hop (portal.aio, routing.proxy). What still runs
    synchronously (the model list, a key's rare database read) would get a new thread
    per request from Django; here each request borrows a single-thread executor from a
    free list and gives it back, so threads are made once, not per call.
    """

    MAX_IDLE_EXECUTORS = 64

    def __init__(self):
        super().__init__()
        self._idle_executors: list[ThreadPoolExecutor] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        executor = (
            self._idle_executors.pop() if self._idle_executors else ThreadPoolExecutor(1, "proxy")
        )
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            if len(self._idle_executors) < self.MAX_IDLE_EXECUTORS:
                self._idle_executors.append(executor)
            else:
                executor.shutdown(wait=False)

    async def handle(self, scope, receive, send):
        """Django's ASGIHandler.handle without its two thread hops per request: the
        request_started / request_finished signals (their receivers tidy the ORM
        connections of the thread they run on; /v1 makes its queries on the event
        loop, portal.aio) and the response's close, called here directly."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return

        async def process_request(request, send):
            response = await self.get_response_async(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client left while it was sent
            return response

        # As Django does: a client that disconnects cancels the view (routing.proxy).
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            pass
        else:
            response.close()
        body_file.close()

    async def get_response_async(self, request):
        # Django's, without the hop to log a 4xx/5xx: /v1 logs each request itself, once.
        set_urlconf(settings.ROOT_URLCONF)
        response = await self._middleware_chain(request)
        response._resource_closers.append(request.close)
        return response

    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        get_response = self._get_response_async if is_async else self._get_response
        self._middleware_chain = convert_exception_to_response(get_response)


def with_proxy(application, *, prefix: str = "/v1/", bare_paths: tuple[str, ...] = ()):
    """Route /v1, and the exact `bare_paths` (health, metrics), to the proxy handler
    (bounded by RequestBodyLimit), the rest to `application`."""
    proxy = RequestBodyLimit(ProxyHandler())

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        if scope["type"] == "http" and scope["path"].startswith(prefix):
            if settings.TOLLGATE_PLAIN_HTTP:
                return await proxy(scope, receive, send)
            # This side skips SecurityMiddleware, so it enforces HTTPS itself: a key sent in
            # cleartext is refused (not redirected: clients do not re-send a POST), and
            # answers over HTTPS carry HSTS like the pages do.
            if not _over_https(scope):
                return await _https_required(scope, send)
            return await proxy(scope, receive, _with_hsts(send))
        if scope["type"] == "http" and scope["path"] in bare_paths:
            return await proxy(scope, receive, send)
        return await application(scope, receive, send)

    return app


async def _lifespan(receive, send):
    """The server's start and stop. At stop (SIGTERM: the server has stopped taking requests
    and waited for those in flight), calls still finishing for clients that left are given
    up to TOLLGATE_SHUTDOWN_GRACE_S to be recorded before the process exits."""
    from routing.calls import detached

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            from portal import aio

            aio.serve_here()
            # What the process holds once started (Django, the URL conf, the schema: some
            # 140,000 objects) stays for its life: frozen out of the garbage collector, so
            # a full collection no longer walks it (78 ms here, a pause for every call in
            # flight) and only the calls' own objects are collected.
            gc.collect()
            gc.freeze()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            left = await detached.finish(timeout=settings.TOLLGATE_SHUTDOWN_GRACE_S)
            if left:
                logger.warning(
                    "%d call(s) still running at shutdown; the sweeper records them", left
                )
            from portal import aio
            from routing.upstream import upstream_close

            await aio.close_pools()
            await upstream_close()
            await send({"type": "lifespan.shutdown.complete"})
            return


def _over_https(scope) -> bool:
    forwarded = next((v for k, v in scope["headers"] if k == b"x-forwarded-proto"), b"")
    return scope.get("scheme") == "https" or forwarded.split(b",")[0].strip() == b"https"


def _with_hsts(send):
    value = f"max-age={settings.SECURE_HSTS_SECONDS}; includeSubDomains; preload".encode()

    async def sending(message):
        if message["type"] == "http.response.start" and settings.SECURE_HSTS_SECONDS:
            message = {
                **message,
                "headers": [*message.get("headers", []), (b"strict-transport-security", value)],
            }
        await send(message)

    return sending


async def _https_required(scope, send):
    error = ProxyError(
        403,
        "This gateway takes API calls over HTTPS only; use an https:// base URL.",
        code="https_required",
    )
    await refuse_early(scope, send, error)


async def refuse_early(scope, send, error: ProxyError, *, close: bool = False):
    """Answer a /v1 request with `error` before Django sees it, logged like any refusal."""
    payload = error.payload()
    body = json.dumps(payload).encode()
    request_id = new_request_id()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    # Logged first: once the answer is out, the client may act on it at once.
    log_unmetered(
        request_id=request_id, http_status=error.status, path=scope["path"], payload=payload
    )
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestBodyLimit:
    """Bounds request bodies before Django reads them.

    Django's ASGI handler spools any body to disk before a view runs, and
    treats a body sent without Content-Length (chunked) as empty. This
    answers an oversized body with an OpenAI-shaped 413 before reading it,
    and buffers a chunked one (up to the limit) so Django sees it whole.
    """

    def __init__(self, app):
        self.app = app

    @property
    def limit(self) -> int:
        return settings.TOLLGATE_MAX_BODY_BYTES

    async def __call__(self, scope, receive, send):
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                return await self._too_large(scope, send)
            return await self.app(scope, receive, send)

        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await self._too_large(scope, send)
            if not message.get("more_body"):
                break
        headers = [*scope["headers"], (b"content-length", str(len(body)).encode())]
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app({**scope, "headers": headers}, replay, send)

    async def _too_large(self, scope, send):
        await refuse_early(scope, send, request_too_large(), close=True)
