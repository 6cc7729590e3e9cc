"""A fake OpenAI-compatible upstream: a real HTTP server the test session starts.

By default it answers every chat or embeddings request with fixed usage, so
tests know the exact cost. `script(upstream_model, *behaviours)` queues
behaviours for the next requests to one model: errors, delays, streams
without usage, streams cut half-way, connection resets.
"""

import json
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_USAGE = {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}


@dataclass
class Answer:
    content: str = "Hello from the fake upstream"
    # A usage object to report (anything, to play a liar), None for none, or HONEST.
    usage: dict | str | None = field(default_factory=lambda: dict(DEFAULT_USAGE))
    # Streams: seconds between chunks, and a cut (connection closed) after N chunks.
    chunk_delay: float = 0.0
    cut_after: int | None = None
    # Seconds to wait before answering at all, and before a stream's usage event.
    delay: float = 0.0
    usage_delay: float = 0.0
    extra: dict = field(default_factory=dict)
    # Answer `n` choices when asked (an honest upstream does; some ignore it),
    # reporting n times the completion tokens.
    honour_n: bool = True
    # Chat answers: the message's tool calls (then its content is None).
    tool_calls: list | None = None


@dataclass
class Fail:
    status: int
    message: str = "upstream failure"
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    # The whole error body to answer instead of the usual one (a provider's own shape).
    body: dict | None = None


@dataclass
class Reset:
    """Close the connection without answering. The gateway tries a request whose connection
    was closed this way once more, on a new connection (a kept-alive connection's idle
    timeout closes it so), so an upstream that resets every request takes two of these."""


@dataclass
class Raw:
    """Answer this JSON value as it is, whatever the path: an upstream's malformed answer."""

    body: object


@dataclass
class RawStream:
    """Answer a stream of exactly these server-sent events (each a whole event, its blank
    line included), then end the body cleanly: no [DONE] or final event unless given."""

    events: list[str]
    # Seconds between events, and to hold the connection open after the last.
    delay_s: float = 0.0
    hold_s: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict
    body: dict


class _Server(ThreadingHTTPServer):
    # The tests open 100 connections at once; the default backlog of 5 resets some.
    request_queue_size = 256


class FakeUpstream:
    def __init__(self):
        self.scripts: dict[str, deque] = defaultdict(deque)
        self.received: list[Received] = []
        self.closed_streams: list[str] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"upstream": self})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def reset(self):
        with self.lock:
            self.scripts.clear()
            self.received.clear()
            self.closed_streams.clear()

    def script(self, model: str, *behaviours):
        with self.lock:
            self.scripts[model].extend(behaviours)

    def next_behaviour(self, model: str):
        with self.lock:
            queue = self.scripts.get(model)
            return queue.popleft() if queue else Answer()


def _choices(body: dict, behaviour: Answer) -> int:
    # n for each prompt of a legacy request that sends several, as OpenAI does.
    n = body.get("n")
    n = n if behaviour.honour_n and isinstance(n, int) and n > 1 else 1
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        n *= len(prompt)
    return n


HONEST = "honest"


# What an honest provider bills for a document or a video the request only names.
REFERENCED_PART_TOKENS = 50_000


def _billing_honestly(body: dict, behaviour: Answer) -> Answer:
    """Answer(usage=HONEST) bills what a real provider would at most: a token per 4 bytes
    of everything the model reads, REFERENCED_PART_TOKENS for each file or video it only
    names, and every output token the request allowed (the larger of its two maxima,
    since providers differ in which they honour), per choice."""
    if behaviour.usage != HONEST:
        return behaviour
    read = sum(len(json.dumps(body[k])) for k in ("messages", "tools", "functions") if k in body)
    text = json.dumps(body.get("messages"))
    referenced = text.count('"file_id"') + text.count('"video_url"')
    prompt = read // 4 + referenced * REFERENCED_PART_TOKENS
    allowed = max(body.get("max_completion_tokens") or 0, body.get("max_tokens") or 0) or 16
    return replace(
        behaviour,
        usage={
            "prompt_tokens": prompt,
            "completion_tokens": allowed,
            "total_tokens": prompt + allowed,
        },
    )


def _usage_for(usage, n: int):
    if n == 1 or not isinstance(usage, dict) or not isinstance(usage.get("completion_tokens"), int):
        return usage
    completion = usage["completion_tokens"] * n
    return {
        **usage,
        "completion_tokens": completion,
        "total_tokens": usage.get("prompt_tokens", 0) + completion,
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: FakeUpstream

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        up = self.upstream
        with up.lock:
            up.received.append(
                Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
        behaviour = up.next_behaviour(body.get("model", ""))
        time.sleep(getattr(behaviour, "delay", 0) or 0)
        if isinstance(behaviour, Reset):
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if isinstance(behaviour, Raw):
            self._json(200, behaviour.body)
            return
        if isinstance(behaviour, RawStream):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            try:
                for event in behaviour.events:
                    self._chunk(event.encode())
                    time.sleep(behaviour.delay_s)
                time.sleep(behaviour.hold_s)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the gateway stopped reading
                self.close_connection = True
            return
        if isinstance(behaviour, Fail):
            payload = behaviour.body or {
                "error": {
                    "message": behaviour.message,
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
            self._json(behaviour.status, payload, behaviour.headers)
            return
        if self.path.endswith("/responses"):
            # A native Responses API upstream: usage in its own names.
            if body.get("stream"):
                self._responses_stream(body, behaviour)
                return
            self._json(
                200,
                {
                    "id": "resp_fake",
                    "object": "response",
                    "created_at": 1764000000,
                    "status": "completed",
                    "model": body["model"],
                    "output": [
                        {
                            "type": "message",
                            "id": "msg_fake",
                            "status": "completed",
                            "role": "assistant",
                            "content": [
                                {
                                    "type": "output_text",
                                    "text": behaviour.content,
                                    "annotations": [],
                                }
                            ],
                        }
                    ],
                    "usage": {
                        "input_tokens": 20,
                        "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
                        "output_tokens": 30,
                        "output_tokens_details": {"reasoning_tokens": 10},
                        "total_tokens": 50,
                    },
                    **behaviour.extra,  # e.g. a lying usage
                },
            )
            return
        if self.path.endswith("/moderations"):
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            self._json(
                200,
                {
                    "id": "modr-fake",
                    "model": body.get("model"),
                    "results": [
                        {"flagged": False, "categories": {}, "category_scores": {}} for _ in inputs
                    ],
                },
            )
            return
        if self.path.endswith("/embeddings"):
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            usage = behaviour.usage or {}
            self._json(
                200,
                {
                    "object": "list",
                    "model": body["model"],
                    "data": [
                        {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                        for i in range(len(inputs))
                    ],
                    **(
                        {"usage": {**usage, "total_tokens": usage.get("prompt_tokens", 0)}}
                        if behaviour.usage
                        else {}
                    ),
                },
            )
            return
        legacy = self.path.endswith("/completions") and not self.path.endswith("/chat/completions")
        if body.get("stream"):
            self._stream(body, behaviour, legacy=legacy)
            return
        n = _choices(body, behaviour)
        behaviour = _billing_honestly(body, behaviour)
        payload = {
            "id": "cmpl-fake" if legacy else "chatcmpl-fake",
            "object": "text_completion" if legacy else "chat.completion",
            "created": 1764000000,
            "model": body["model"],
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": i,
                    **(
                        {"text": behaviour.content}
                        if legacy
                        else {
                            "message": {
                                "role": "assistant",
                                "content": None if behaviour.tool_calls else behaviour.content,
                                **(
                                    {"tool_calls": behaviour.tool_calls}
                                    if behaviour.tool_calls
                                    else {}
                                ),
                            }
                        }
                    ),
                    "finish_reason": "stop",
                    "logprobs": None,
                }
                for i in range(n)
            ],
            **behaviour.extra,
        }
        if behaviour.usage is not None:
            payload["usage"] = _usage_for(behaviour.usage, n)
        self._json(200, payload)

    def _responses_stream(self, body, behaviour: Answer):
        """A native Responses API stream: typed events, the usage in the last."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        response = {
            "id": "resp_fake",
            "object": "response",
            "created_at": 1764000000,
            "status": "in_progress",
            "model": body["model"],
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
        text = behaviour.content
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant"}
        usage = {
            "input_tokens": 20,
            "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
            "output_tokens": 30,
            "output_tokens_details": {"reasoning_tokens": 10},
            "total_tokens": 50,
        }
        where = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
        events = [
            ("response.created", {"response": response}),
            ("response.output_item.added", {"output_index": 0, "item": {**item, "content": []}}),
            ("response.content_part.added", {**where, "part": {**part, "text": ""}}),
            *(
                ("response.output_text.delta", {**where, "delta": word, "logprobs": []})
                for word in [w + " " for w in text.split(" ")[:-1]] + [text.split(" ")[-1]]
            ),
            ("response.output_text.done", {**where, "text": text, "logprobs": []}),
            ("response.content_part.done", {**where, "part": part}),
            ("response.output_item.done", {"output_index": 0, "item": {**item, "content": [part]}}),
            (
                "response.completed",
                {
                    "response": {
                        **response,
                        "status": "completed",
                        "output": [{**item, "content": [part]}],
                        "usage": usage,
                    }
                },
            ),
        ]
        for number, (kind, fields) in enumerate(events):
            data = json.dumps({"type": kind, "sequence_number": number, **fields})
            self._chunk(f"event: {kind}\ndata: {data}\n\n".encode())
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _json(self, status, payload, headers=None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the gateway gave up on this answer
            self.close_connection = True

    def _chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(self, body, behaviour: Answer, *, legacy: bool = False):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        base = {
            "id": "cmpl-fake" if legacy else "chatcmpl-fake",
            "object": "text_completion" if legacy else "chat.completion.chunk",
            "created": 1764000000,
            "model": body["model"],
            "system_fingerprint": "fp_fake",
        }
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        words = behaviour.content.split(" ")
        n = _choices(body, behaviour)
        behaviour = _billing_honestly(body, behaviour)
        events = []
        for number, call in enumerate(behaviour.tool_calls or []):
            # A tool call streamed as chat does: its id and name, then its arguments in pieces.
            function = call["function"]
            head = {"index": number, "id": call["id"], "type": "function"}
            pieces = [
                {**head, "function": {"name": function["name"], "arguments": ""}},
                *(
                    {"index": number, "function": {"arguments": function["arguments"][i : i + 5]}}
                    for i in range(0, len(function["arguments"]), 5)
                ),
            ]
            for piece in pieces:
                events.append(
                    {
                        **base,
                        "choices": [
                            {"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}
                        ],
                    }
                )
        if behaviour.tool_calls:
            words = []
        for i, word in enumerate(words):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
            for index in range(n):
                piece = (
                    {"text": delta["content"]} if legacy else {"delta": delta}
                )  # a legacy chunk carries its text, a chat chunk a delta
                events.append(
                    {
                        **base,
                        "choices": [{"index": index, **piece, "finish_reason": None}],
                        **({"usage": None} if include_usage else {}),
                    }
                )
        end = {"text": ""} if legacy else {"delta": {}}
        events.append(
            {
                **base,
                "choices": [{"index": i, **end, "finish_reason": "stop"} for i in range(n)],
                **({"usage": None} if include_usage else {}),
            }
        )
        if include_usage and behaviour.usage is not None:
            events.append({**base, "choices": [], "usage": _usage_for(behaviour.usage, n)})
        try:
            for sent, event in enumerate(events):
                if behaviour.cut_after is not None and sent >= behaviour.cut_after:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if "usage" in event and not event["choices"] and behaviour.usage_delay:
                    time.sleep(behaviour.usage_delay)
                self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
                if behaviour.chunk_delay:
                    time.sleep(behaviour.chunk_delay)
            self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            with self.upstream.lock:
                self.upstream.closed_streams.append(body["model"])
            self.close_connection = True
