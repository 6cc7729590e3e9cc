"""Streamed Responses API calls (`stream: true`): the typed server-sent events of OpenAI's
Responses API, `response.created` … `response.output_text.delta` … `response.completed`.

A native upstream's events are passed on as they came (the response's model renamed to
the gateway's where an event carries it); a chat-only upstream's chunks are turned into
those events by `BridgedEvents`. Either way the relay (routing.streaming) meters the call
from what `note` keeps: the usage (in chat's names) and the text produced. A stream the
upstream ends without finishing its answer (no final event, a failure event, no finish
reason) is recorded as the upstream's error, and the client told so once.
"""

import json

from routing import responses
from routing.calls import json_bytes
from routing.errors import ProxyError, stream_unfinished


def _sse(kind: str, data: bytes) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def _error_event(error: ProxyError, sequence: int) -> bytes:
    payload = error.payload()["error"]
    event = {
        "type": "error",
        "code": payload.get("code"),
        "message": payload.get("message"),
        "param": payload.get("param"),
        "sequence_number": sequence,
    }
    return _sse("error", json_bytes(event))


_DELTAS = (
    "response.output_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.reasoning_text.delta",
    "response.reasoning_summary_text.delta",
)
_FINAL = ("response.completed", "response.incomplete", "response.failed")


class NativeEvents:
    """A native Responses upstream's events, passed on."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.sequence = 0
        # The final event came; or the upstream's own failure (an `error` or
        # `response.failed` event), which the client has been sent as it came.
        self.finished = False
        self.failed: ProxyError | None = None

    def opening(self) -> bytes:
        return b""

    @property
    def done(self) -> bool:
        """The response has ended (its final or failure event): nothing after it is read."""
        return self.finished or self.failed is not None

    def event(self, chunk: dict, raw: bytes) -> bytes:
        kind = chunk.get("type")
        if not isinstance(kind, str):
            return b""
        number = chunk.get("sequence_number")
        if isinstance(number, int) and not isinstance(number, bool):
            self.sequence = max(self.sequence, number)
        response = chunk.get("response")
        if isinstance(response, dict) and "model" in response:
            response["model"] = self.model_name
            return _sse(kind, json_bytes(chunk))
        return _sse(kind, raw if b"\n" not in raw else json_bytes(chunk))

    def note(self, chunk: dict, relay) -> None:
        kind = chunk.get("type")
        if kind in _DELTAS and isinstance(chunk.get("delta"), str):
            relay.produced.append(chunk["delta"])
        elif kind in _FINAL and isinstance(chunk.get("response"), dict):
            relay.usage = responses.usage_as_chat(chunk["response"].get("usage"))
            self.finished = True
        if kind in ("error", "response.failed"):
            self.failed = _upstream_failure(chunk)

    def failure(self) -> ProxyError | None:
        if self.failed is not None:
            return self.failed
        return None if self.finished else stream_unfinished()

    def closing(self, relay) -> bytes:
        # The upstream's own final or failure event has been passed on; any other error
        # after the start is sent as an `error` event.
        if relay.error is None or relay.error is self.failed:
            return b""
        return _error_event(relay.error, self.sequence + 1)


def _upstream_failure(chunk: dict) -> ProxyError:
    """The upstream's `error` event, or its `response.failed` event's error, as the gateway's."""
    error = chunk if chunk.get("type") == "error" else (chunk.get("response") or {}).get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return ProxyError(
        502,
        f"The upstream failed: {message}" if isinstance(message, str) else "The upstream failed.",
        code="upstream_error",
    )


class BridgedEvents:
    """A chat-only upstream's stream chunks, as the Responses API's events."""

    def __init__(self, body: dict, model_name: str):
        self.body = body
        self.model_name = model_name
        self.sequence = -1
        self.response = responses.response_object(
            body, model_name, output=[], status="in_progress", usage=None
        )
        # Output items in order; the text message's index, and each tool call's by chat index.
        self.items: list[dict] = []
        self.text_index: int | None = None
        self.tool_index: dict[int, int] = {}
        self.finish_reason: str | None = None

    def _emit(self, kind: str, **fields) -> bytes:
        self.sequence += 1
        return _sse(kind, json_bytes({"type": kind, "sequence_number": self.sequence, **fields}))

    def opening(self) -> bytes:
        return self._emit("response.created", response=self.response) + self._emit(
            "response.in_progress", response=self.response
        )

    # A chat stream ends when its body does ([DONE]): its usage comes after the finish.
    done = False

    def event(self, chunk: dict, raw: bytes) -> bytes:
        # Whatever the shape of a chunk, what cannot be read is skipped: the stream goes on,
        # for the usage at its end.
        out = b""
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._text(text)
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                if isinstance(call, dict):
                    out += self._tool(call)
        return out

    def _text(self, text: str) -> bytes:
        out = b""
        if self.text_index is None:
            self.text_index = len(self.items)
            item = {
                "type": "message",
                "id": responses._id("msg"),
                "status": "in_progress",
                "role": "assistant",
                "content": [],
                "text": "",
            }
            self.items.append(item)
            shown = {k: v for k, v in item.items() if k != "text"}
            out += self._emit(
                "response.output_item.added", output_index=self.text_index, item=shown
            )
            out += self._emit(
                "response.content_part.added",
                item_id=item["id"],
                output_index=self.text_index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            )
        item = self.items[self.text_index]
        item["text"] += text
        return out + self._emit(
            "response.output_text.delta",
            item_id=item["id"],
            output_index=self.text_index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _tool(self, call: dict) -> bytes:
        out = b""
        index = call.get("index", 0)
        if not isinstance(index, int):
            return out
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        name = function.get("name") if isinstance(function.get("name"), str) else ""
        if index not in self.tool_index:
            self.tool_index[index] = len(self.items)
            call_id = call.get("id")
            item = {
                "type": "function_call",
                "id": responses._id("fc"),
                "call_id": call_id if isinstance(call_id, str) else responses._id("call"),
                "name": name,
                "arguments": "",
                "status": "in_progress",
            }
            self.items.append(item)
            out += self._emit(
                "response.output_item.added", output_index=self.tool_index[index], item=dict(item)
            )
        output_index = self.tool_index[index]
        item = self.items[output_index]
        if name and not item["name"]:  # some upstreams name the function after its id
            item["name"] = name
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # the arguments as an object, not their JSON text
            arguments = json.dumps(arguments)
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            out += self._emit(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=output_index,
                delta=arguments,
            )
        return out

    def note(self, chunk: dict, relay) -> None:
        relay.note_chat(chunk)

    def closing(self, relay) -> bytes:
        out = b""
        output = []
        for index, item in enumerate(self.items):
            if item["type"] == "message":
                part = {"type": "output_text", "text": item["text"], "annotations": []}
                out += self._emit(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=item["text"],
                    logprobs=[],
                )
                out += self._emit(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
                done = {
                    "type": "message",
                    "id": item["id"],
                    "status": "completed",
                    "role": "assistant",
                    "content": [part],
                }
            else:
                out += self._emit(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
                done = {**item, "status": "completed"}
            out += self._emit("response.output_item.done", output_index=index, item=done)
            output.append(done)
        if relay.error is not None:
            return out + _error_event(relay.error, self.sequence + 1)
        status, incomplete = responses.ending(self.finish_reason)
        final = {
            **self.response,
            "status": status,
            "incomplete_details": incomplete,
            "output": output,
            "usage": responses.usage_of_tokens(relay.counted),
        }
        return out + self._emit(f"response.{status}", response=final)

    def failure(self) -> ProxyError | None:
        # Chat ends an answer with a finish reason; a stream without one was cut short.
        if not self.finish_reason:
            return stream_unfinished()
        if any(item["type"] == "function_call" and not item["name"] for item in self.items):
            return responses.unreadable("a tool call without a function's name")
        return None


def events_for(call, body: dict, model) -> "NativeEvents | BridgedEvents":
    from routing.calls import bridged

    if bridged(call, model):
        return BridgedEvents(body, model.name)
    return NativeEvents(model.name)
