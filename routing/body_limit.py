"""An ASGI layer in front of Django that bounds /v1 request bodies.

Django's ASGI handler spools any body to disk before a view runs, and
treats a body sent without Content-Length (chunked) as empty. This layer
answers an oversized /v1 body with an OpenAI-shaped 413 before reading it,
and buffers a chunked one (up to the limit) so Django sees it whole.
"""

import json

from django.conf import settings

from routing.calls import new_request_id
from routing.errors import request_too_large


class RequestBodyLimit:
    def __init__(self, app, *, prefix: str = "/v1/"):
        self.app = app
        self.prefix = prefix

    @property
    def limit(self) -> int:
        return settings.TOLLGATE_MAX_BODY_BYTES

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                return await self._too_large(send)
            return await self.app(scope, receive, send)

        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await self._too_large(send)
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

    async def _too_large(self, send):
        payload = json.dumps(request_too_large().payload()).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", new_request_id().encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": payload})
