"""Streaming (chat, legacy completions): open the upstream stream (falling back before the
first byte), relay it, record it.

The relay passes each upstream event on as the bytes that came, with only the model's
name changed to the gateway's (a byte replacement) and the usage dropped when the client
did not ask for it; each event is parsed once, for what metering needs (its usage and
the text produced), never encoded again.
"""

import asyncio
import json
import time

from django.conf import settings

from routing import tokens
from routing.attempts import AttemptPlan, UpstreamStreamError, classify_failure
from routing.calls import (
    _PATHS,
    RESPONSES,
    Call,
    counted_tokens,
    detached,
    json_bytes,
    upstream_request,
)
from routing.errors import ProxyError, stream_unfinished
from routing.responses_stream import events_for
from routing.selectors import ModelInfo
from routing.upstream import Answer, UpstreamEventError, sse_events, upstream_stream
from usage.metering import Status
from usage.pricing import Tokens

# The watchdog ends a stream this long after its deadline when the relay itself could
# not (a client that stopped reading holds the relay at its yield), seconds.
WATCHDOG_GRACE_S = 1.0


class StreamRelay:
    """Relays one upstream stream to the client chunk by chunk, and records it once.

    However the stream ends — finished, failed or cut by the upstream, ended at
    the call's deadline, abandoned by the client — exactly one of those paths
    claims it (`_end`) and records it, billed on the upstream's usage if it sent
    a sane one, else on the prompt estimate plus what the upstream produced,
    flagged as estimated. A client that leaves does not end the upstream at
    once: the rest of the stream is drained (at most TOLLGATE_DRAIN_S) for the
    usage the upstream reports at its end, so leaving early cannot dodge it.
    """

    def __init__(
        self,
        call: Call,
        model: ModelInfo,
        stream: Answer,
        chunks,
        first: "Event",
        started: float,
        client_wants_usage: bool,
        shape=None,
    ):
        self.call = call
        self.model = model
        self.stream = stream
        self.chunks = chunks
        self.first = first
        self.started = started
        self.client_wants_usage = client_wants_usage
        # The events' shape for the client when it is not chat's (routing.responses_stream).
        self.shape = shape
        self.ttft_ms = int((time.monotonic() - started) * 1000)
        # The upstream's model name, its field's spellings as bytes, the client's field.
        self._renamed: tuple[str, tuple[bytes, bytes], bytes] | None = None
        self.status, self.error, self.usage, self.produced = Status.OK, None, None, []
        # The tokens the call was billed, once recorded; whether an answer's end came.
        self.counted: Tokens | None = None
        self.finished = False
        self.ended = False
        self._pending: asyncio.Future | None = None
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_at(call.deadline_at + WATCHDOG_GRACE_S, self._deadline_passed)

    def _client_event(self, chunk: dict, raw: bytes) -> bytes:
        """The event for the client: the upstream's bytes with the gateway's model name, or
        (usage to drop, a model field not found as such) the chunk encoded afresh."""
        if self.shape is not None:
            return self.shape.event(chunk, raw)
        if not self.client_wants_usage and "usage" in chunk:
            if not chunk.get("choices"):
                return b""
            del chunk["usage"]
        elif (renamed := self._rename(chunk.get("model"), raw)) is not None:
            return b"data: " + renamed + b"\n\n"
        chunk["model"] = self.model.name
        return b"data: " + json_bytes(chunk) + b"\n\n"

    def _rename(self, upstream_model: object, raw: bytes) -> bytes | None:
        if not isinstance(upstream_model, str):
            return None
        if self._renamed is None or self._renamed[0] != upstream_model:
            quoted = json_bytes(upstream_model)
            self._renamed = (
                upstream_model,
                (b'"model":' + quoted, b'"model": ' + quoted),
                b'"model":' + json_bytes(self.model.name),
            )
        _, spellings, name = self._renamed
        # Only where the field is unambiguous (the one "model" of the event, as its key), and
        # the event is one line (an event sent over several data lines is encoded afresh).
        if raw.count(b'"model"') == 1 and b"\n" not in raw:
            for field in spellings:
                if field in raw:
                    return raw.replace(field, name)
        return None

    async def run(self):
        """The client's event stream; the call is recorded before the final event is sent."""
        status, error = Status.OK, None
        try:
            async for event in self._relay():
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            self.abandon()
            raise
        except TimeoutError:
            status, error = Status.TIMEOUT, self._deadline_error()
        except Exception as exc:
            failure = classify_failure(exc, self.model)
            status, error = failure.status, failure.error
        else:
            # A stream the upstream ended cleanly may still not have finished its answer.
            if (error := self._unfinished()) is not None:
                status = Status.UPSTREAM_ERROR
        await self._end(status, error)
        if self.shape is not None:
            if closing := self.shape.closing(self):
                yield closing
        elif self.error is not None:
            yield b"data: " + json.dumps(self.error.payload()).encode() + b"\n\n"
        else:
            yield b"data: [DONE]\n\n"

    def _over(self) -> bool:
        return self.shape is not None and self.shape.done

    def _unfinished(self) -> ProxyError | None:
        """Why a stream the upstream ended cleanly is not a finished answer, if it is not:
        chat ends an answer with a finish reason; the Responses API with a final event."""
        if self.shape is not None:
            return self.shape.failure()
        return None if self.finished else stream_unfinished()

    def _note(self, chunk: dict) -> None:
        """Keep what metering needs from an upstream event: its usage (in chat's names), and
        the text produced."""
        if self.shape is not None:
            self.shape.note(chunk, self)
        else:
            self.note_chat(chunk)

    def note_chat(self, chunk: dict) -> None:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if isinstance(choice, dict) and isinstance(choice.get("text"), str):
                self.produced.append(choice["text"])  # a legacy completion's chunk
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finished = True
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            # Content, reasoning (reasoning_content, reasoning), refusals: every text the model produced.
            self.produced.extend(v for k, v in delta.items() if k != "role" and isinstance(v, str))
            tool_calls = delta.get("tool_calls")
            for call in tool_calls if isinstance(tool_calls, list) else []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    self.produced.append(str(function.get("arguments") or ""))

    async def _relay(self):
        if self.shape is not None and (opening := self.shape.opening()):
            yield opening
        event = self.first
        while event is not None and not self.ended:
            chunk, raw = event
            self._note(chunk)
            if sent := self._client_event(chunk, raw):
                yield sent
            if self.ended:  # the watchdog ended the call while the client was not reading
                return
            if self._over():  # a Response's final event: whatever follows is not its answer
                return
            # The deadline bounds each wait for the upstream; the watchdog, the client's reads.
            async with asyncio.timeout_at(self.call.deadline_at):
                event = await self._read()

    async def _read(self):
        """The next upstream event, read in a task of its own: a client who leaves cancels the
        relay, and must not break the upstream stream mid-read, which the drain goes on with."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self.chunks, None))
            self._pending.add_done_callback(_retrieve)
        chunk = await asyncio.shield(self._pending)
        self._pending = None
        return chunk

    def _deadline_error(self) -> ProxyError:
        return ProxyError(
            504,
            f"This call reached its deadline of {self.call.deadline_s:g} s and was ended.",
            code="deadline_exceeded",
        )

    def _deadline_passed(self) -> None:
        if not self.ended:
            detached.spawn(self._end(Status.TIMEOUT, self._deadline_error()))

    def abandon(self) -> None:
        """The client left (or never came): drain the upstream for its usage, then record."""
        if not self.ended:
            self.ended = True
            detached.spawn(self._drain_and_record())

    async def _drain_and_record(self) -> None:
        self.status = Status.CLIENT_CLOSED
        # To the stream's end (or a Response's final event): usage that comes in every chunk
        # counts up, and only the last is the whole call's.
        loop = asyncio.get_running_loop()
        until = min(self.call.deadline_at, loop.time() + settings.TOLLGATE_DRAIN_S)
        try:
            async with asyncio.timeout_at(until):
                while not self._over() and (event := await self._read()) is not None:
                    self._note(event[0])
        except Exception:  # cut or timed out: bill on what was seen
            pass
        await self._record()

    async def _end(self, status: str, error: ProxyError | None) -> None:
        """Claim the call's end (once, whoever comes first) and record it."""
        if self.ended:
            return
        self.ended = True
        self.status, self.error = status, error
        # Recorded in a task of its own: a client leaving now cancels this one, not the record.
        await asyncio.shield(detached.spawn(self._record()))

    async def _record(self) -> None:
        self._watchdog.cancel()
        # Priced and added to the meter before anything is awaited.
        counted, estimated = counted_tokens(
            self.model,
            self.call,
            self.usage,
            completion_estimate=tokens.produced_estimate(
                self.call.bounds.body, "".join(self.produced)
            ),
        )
        self.counted = counted
        self.call.meter.attempt(
            self.call.outcome(
                self.model,
                status=self.status,
                started=self.started,
                http_status=200,
                error_type="" if self.status == Status.OK else self.status,
                error_message=self.error.message if self.error else "",
                streamed=True,
                ttft_ms=self.ttft_ms,
                tokens=counted,
                estimated=estimated,
            )
        )
        try:
            await self.stream.close()
        except Exception:  # closing a broken upstream connection may fail; nothing to do
            pass
        await self.call.record()


def _retrieve(read: asyncio.Future) -> None:
    # A read the relay stopped waiting for (deadline, stream closed) may fail unobserved.
    if not read.cancelled():
        read.exception()


class RelayBody:
    """A stream's response body: the relay's events, and the `close()` Django calls when
    it is done with the response, however it ended. A client that disconnects while the
    relay waits at a yield leaves the relay's generator suspended forever; `close` is the
    one signal that always comes, so the call is always recorded."""

    def __init__(self, relay: StreamRelay):
        self.relay = relay
        self.loop = asyncio.get_running_loop()

    def __aiter__(self):
        return self.relay.run()

    def close(self) -> None:
        # Django calls this from a worker thread.
        self.loop.call_soon_threadsafe(self.relay.abandon)


# An upstream event: its JSON object, and its data as the bytes that came.
Event = tuple[dict, bytes]


async def _events(response: Answer):
    """The upstream's events, each parsed once; an error event raises as the SDK would."""
    async for data in sse_events(response):
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamStreamError(
                ProxyError(
                    502, "The upstream sent a malformed stream event.", code="upstream_error"
                )
            ) from None
        if not isinstance(chunk, dict):
            continue
        if chunk.get("error") and "choices" not in chunk:
            raise UpstreamEventError(chunk["error"])
        yield chunk, data


async def call_stream(call: Call, body: dict) -> StreamRelay:
    """Open the upstream stream, falling back until one yields its first chunk.

    A target may be replaced only before anything reached the client, so
    the first chunk is read here, before the response starts.
    """
    await call.unless_client_gone()
    # A Response's stream_options are the Responses API's own, not chat's.
    client_options = (body.get("stream_options") or {}) if call.endpoint != RESPONSES else {}
    client_wants_usage = bool(client_options.get("include_usage"))
    plan = AttemptPlan(call)
    async for model, timeout in plan:
        started = time.monotonic()
        stream = None
        try:
            path, sent = upstream_request(call, body, model)
            sent["stream"] = True
            if path != _PATHS[RESPONSES]:  # a Response's usage comes in its final event
                sent["stream_options"] = {**client_options, "include_usage": True}
            async with asyncio.timeout_at(call.deadline_at):
                stream = await upstream_stream(
                    model.provider, path, json_bytes(sent), timeout=timeout
                )
                chunks = _events(stream)
                first = await asyncio.wait_for(anext(chunks, None), timeout)
            if first is None:
                raise UpstreamStreamError(
                    ProxyError(
                        502, "The upstream stream ended before any data.", code="upstream_error"
                    )
                )
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
        shape = events_for(call, body, model) if call.endpoint == RESPONSES else None
        return StreamRelay(
            call, model, stream, chunks, first, started, client_wants_usage, shape=shape
        )
    await call.record()
    raise plan.final_error()


def abandon_relay(task: "asyncio.Task[StreamRelay]") -> None:
    """Done-callback for a stream whose client left while it was being opened."""
    if not task.cancelled() and task.exception() is None:
        task.result().abandon()
