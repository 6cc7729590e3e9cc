"""A minimal OpenAI-compatible upstream for the benchmark: fixed answers, no work.

BENCH_UPSTREAM_FAIL_RATE (0..1) answers that share of requests with a 500, and
BENCH_UPSTREAM_DELAY_S waits before answering: the soak's unreliable upstream.
BENCH_UPSTREAM_CHUNKS and BENCH_UPSTREAM_CHUNK_DELAY_S shape a stream (the harness's)."""

import asyncio
import json
import os
import random

FAIL_RATE = float(os.environ.get("BENCH_UPSTREAM_FAIL_RATE", "0"))
CHUNK_DELAY_S = float(os.environ.get("BENCH_UPSTREAM_CHUNK_DELAY_S", "0"))
# Content chunks of a stream (then one with the usage), each one token.
STREAM_CHUNKS = int(os.environ.get("BENCH_UPSTREAM_CHUNKS", "3"))
DELAY_S = float(os.environ.get("BENCH_UPSTREAM_DELAY_S", "0"))
FAILURE = json.dumps(
    {"error": {"message": "upstream overloaded", "type": "server_error", "code": None}}
).encode()

CHAT = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1764000000,
        "model": "bench",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
).encode()

CHUNKS = [
    json.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "bench",
            # The last chunk finishes the answer, as OpenAI's do.
            "choices": [{"index": 0, "delta": {"content": " w"}, "finish_reason": finish}],
            "usage": None,
        }
    )
    for finish in [None] * (STREAM_CHUNKS - 1) + ["stop"]
] + [
    json.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "bench",
            "choices": [],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": STREAM_CHUNKS,
                "total_tokens": 12 + STREAM_CHUNKS,
            },
        }
    )
]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if DELAY_S:
        await asyncio.sleep(DELAY_S)
    if FAIL_RATE and random.random() < FAIL_RATE:
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": FAILURE})
        return
    if json.loads(body or b"{}").get("stream"):
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for index, chunk in enumerate(CHUNKS):
            if CHUNK_DELAY_S and index:  # the first at once, then CHUNK_DELAY_S apart
                await asyncio.sleep(CHUNK_DELAY_S)
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: {chunk}\n\n".encode(),
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(CHAT)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": CHAT})
