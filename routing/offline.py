"""The built-in offline provider: an OpenAI-compatible upstream with no network.

It is an httpx transport under the provider's ordinary `openai` client, so
a call to an offline provider goes through exactly the same proxy code as
a real one. Answers are deterministic; token counts follow routing.tokens,
and usage is reported like OpenAI does.
"""

import asyncio
import base64
import hashlib
import json
import struct
import time
import uuid

import httpx2

from routing import tokens

EMBEDDING_DIMENSIONS = 1536


def _last_user_text(messages) -> str:
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _answer(model: str, messages) -> str:
    said = " ".join(_last_user_text(messages).split())
    if len(said) > 160:
        said = said[:157] + "..."
    return (
        f"Offline answer from {model}. You said: {said}"
        if said
        else f"Offline answer from {model}."
    )


def _json(status: int, payload: dict) -> httpx2.Response:
    return httpx2.Response(status, json=payload, headers={"x-request-id": uuid.uuid4().hex})


def _error(status: int, message: str) -> httpx2.Response:
    return _json(
        status,
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
    )


class OfflineTransport(httpx2.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path.rstrip("/")
        if request.method == "POST" and path.endswith("/chat/completions"):
            body = json.loads(await request.aread())
            return self._chat(body)
        if request.method == "POST" and path.endswith("/embeddings"):
            body = json.loads(await request.aread())
            # Thousands of vectors are seconds of work: off the event loop, which serves
            # every other request of the process meanwhile.
            return await asyncio.to_thread(self._embeddings, body)
        return _error(404, f"Unknown request URL: {request.method} {path}")

    def _chat(self, body: dict) -> httpx2.Response:
        model = body.get("model", "offline")
        messages = body.get("messages") or []
        text = _answer(model, messages)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        words = text.split(" ")
        if isinstance(max_tokens, int) and max_tokens > 0:
            words = words[:max_tokens]
            text = " ".join(words)
        prompt = tokens.chat_prompt_estimate({**body, "messages": messages})
        completion = tokens.text_tokens(text)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not body.get("stream"):
            return _json(
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                },
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            base = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            }
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
            for i, piece in enumerate(pieces):
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                await asyncio.sleep(0)
            done = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            yield f"data: {json.dumps(done)}\n\n".encode()
            if include_usage:
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=events())

    def _embeddings(self, body: dict) -> httpx2.Response:
        value = body.get("input")
        inputs = (
            value
            if isinstance(value, list) and not all(isinstance(v, int) for v in value)
            else [value]
        )
        dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS
        data = []
        for index, item in enumerate(inputs):
            vector = _vector(json.dumps(item), dimensions)
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            else:
                embedding = vector
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        prompt = tokens.embedding_input_estimate(value)
        return _json(
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "offline"),
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            },
        )


def _vector(text: str, dimensions: int) -> list[float]:
    # A unit vector derived from the text's hash: equal texts embed equally.
    raw = b""
    counter = 0
    while len(raw) < dimensions * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [(v / 2**31) - 1.0 for v in struct.unpack(f"<{dimensions}I", raw[: dimensions * 4])]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in values]
