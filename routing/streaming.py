"""Streaming chat: open the upstream stream (falling back before the first byte), relay it, record it."""

import asyncio
import json
import time

import openai

from routing import tokens
from routing.attempts import AttemptPlan, UpstreamStreamError, classify_failure
from routing.calls import _PATHS, CHAT, Call, counted_tokens, detached, upstream_body
from routing.errors import ProxyError
from routing.selectors import ModelInfo
from routing.upstream import upstream_client
from usage.metering import Status


class StreamRelay:
    """Relays one upstream stream to the client chunk by chunk, then records it.

    However the stream ends — finished, cut by the upstream, ended at the
    call's deadline, abandoned by the client — the call is recorded once,
    billed on the upstream's usage if it sent a sane one, else on the prompt
    estimate plus what was delivered, flagged as estimated.
    """

    def __init__(self, call: Call, model: ModelInfo, stream: openai.AsyncStream, chunks, first: dict,
                 started: float, client_wants_usage: bool):
        self.call = call
        self.model = model
        self.stream = stream
        self.chunks = chunks
        self.first = first
        self.started = started
        self.client_wants_usage = client_wants_usage
        self.ttft_ms = int((time.monotonic() - started) * 1000)
        self.status, self.error, self.usage, self.delivered = Status.OK, None, None, []
        self.recorded = False

    def _client_event(self, chunk: dict) -> bytes | None:
        chunk["model"] = self.model.name
        if not self.client_wants_usage and "usage" in chunk:
            if not chunk.get("choices"):
                return None
            del chunk["usage"]
        return b"data: " + json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"

    async def run(self):
        """The client's event stream; the call is recorded before the final event is sent."""
        tail = b"data: [DONE]\n\n"
        try:
            try:
                async for event in self._relay():
                    yield event
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except TimeoutError:
                error = ProxyError(504, f"This call reached its deadline of {self.call.deadline_s:g} s and "
                                        f"was ended.", code="deadline_exceeded")
                self.status, self.error = Status.TIMEOUT, error.message
                tail = b"data: " + json.dumps(error.payload()).encode() + b"\n\n"
            except Exception as exc:
                failure = classify_failure(exc, self.model)
                self.status, self.error = failure.status, failure.error.message
                tail = b"data: " + json.dumps(failure.error.payload()).encode() + b"\n\n"
            await self._finish()
            yield tail
        except (asyncio.CancelledError, GeneratorExit):
            self.status = Status.CLIENT_CLOSED
            raise
        finally:
            if not self.recorded:
                await self._finish()

    async def _relay(self):
        chunk = self.first
        while chunk is not None:
            if isinstance(chunk, dict):
                if isinstance(chunk.get("usage"), dict):
                    self.usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    delta = (choice.get("delta") or {}) if isinstance(choice, dict) else {}
                    self.delivered.append(str(delta.get("content") or ""))
                    for tool_call in delta.get("tool_calls") or []:
                        self.delivered.append(str((tool_call.get("function") or {}).get("arguments") or ""))
                event = self._client_event(chunk)
                if event is not None:
                    yield event
            # The deadline bounds each wait for the upstream, never the client's reads.
            async with asyncio.timeout_at(self.call.deadline_at):
                chunk = await anext(self.chunks, None)

    async def abandon(self) -> None:
        """The client left before the stream started: end it and record what was produced."""
        self.status = Status.CLIENT_CLOSED
        await self._finish()

    async def _finish(self):
        # Set first: the shielded write below completes even if this task is cancelled.
        self.recorded = True
        try:
            await asyncio.shield(self.stream.close())
        except Exception:  # closing a broken upstream connection may fail; nothing to do
            pass
        counted, estimated = counted_tokens(self.model, self.call, self.usage,
                                            completion_estimate=tokens.text_tokens("".join(self.delivered)))
        self.call.meter.attempt(self.call.outcome(
            self.model, status=self.status, started=self.started, http_status=200,
            error_type="" if self.status == Status.OK else self.status, error_message=self.error or "",
            streamed=True, ttft_ms=self.ttft_ms, tokens=counted, estimated=estimated,
        ))
        await self.call.record()


async def call_stream(call: Call, body: dict) -> StreamRelay:
    """Open the upstream stream, falling back until one yields its first chunk.

    A target may be replaced only before anything reached the client, so
    the first chunk is read here, before the response starts.
    """
    client_options = body.get("stream_options") or {}
    client_wants_usage = bool(client_options.get("include_usage"))
    plan = AttemptPlan(call)
    async for model, timeout in plan:
        started = time.monotonic()
        stream = None
        try:
            client = upstream_client(model.provider)
            sent = {**upstream_body(body, model, CHAT), "stream": True,
                    "stream_options": {**client_options, "include_usage": True}}
            async with asyncio.timeout_at(call.deadline_at):
                # AsyncStream[object] decodes each SSE event to a plain dict and raises on error events.
                stream = await client.post(_PATHS[CHAT], body=sent, cast_to=object, stream=True,
                                           stream_cls=openai.AsyncStream[object], options={"timeout": timeout})
                chunks = aiter(stream)
                first = await asyncio.wait_for(anext(chunks, None), timeout)
            if first is None:
                raise UpstreamStreamError(ProxyError(502, "The upstream stream ended before any data.",
                                                     code="upstream_error"))
        except Exception as exc:
            if stream is not None:
                try:
                    await stream.close()
                except Exception:
                    pass
            failure = classify_failure(exc, model)
            call.fail(model, failure, started)
            await plan.failed(model, failure)
            continue
        return StreamRelay(call, model, stream, chunks, first, started, client_wants_usage)
    await call.record()
    raise plan.final_error()


def abandon_relay(task: "asyncio.Task[StreamRelay]") -> None:
    """Done-callback for a stream whose client left while it was being opened."""
    if task.cancelled() or task.exception() is not None:
        return
    relay = task.result()
    detached.spawn(relay.abandon())
