"""Kept-alive upstream connections: one the server closes as a request goes out (its idle
timeout) is tried once more on a new connection, never billed twice, never a 502."""

import json
import socket
import threading

import pytest

from accounts.services import api_key_create
from routing.selectors import catalog_changed
from routing.services import catalog_load_data
from usage.models import UsageRecord

MESSAGES = [{"role": "user", "content": "hi"}]
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "deepseek-v4-flash",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}


class ClosingServer:
    """Answers the first request on each connection (kept alive), and closes a connection
    without answering when a second request arrives on it: a server whose idle timeout
    fires as the gateway reuses the connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.answered = 0
        self.dropped = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _read_request(self, conn) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += conn.recv(65536)
        return True

    def _connection(self, conn):
        with conn:
            if not self._read_request(conn):
                return
            payload = json.dumps(ANSWER).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            self.answered += 1
            if self._read_request(conn):
                self.dropped += 1  # closed without an answer

    def stop(self):
        self.sock.close()


@pytest.fixture
def closing_upstream(catalog):
    server = ClosingServer()
    catalog_load_data(
        data={
            "provider": [
                {
                    "name": "global",
                    "base_url": server.url,
                    "api_key_env": "FAKE_UPSTREAM_KEY",
                    "timeout_s": 5,
                }
            ]
        }
    )
    catalog_changed()
    yield server
    server.stop()


@pytest.mark.django_db(transaction=True)
def test_a_connection_closed_as_the_request_goes_out_is_retried_once_on_a_new_one(
    closing_upstream, team, sdk
):
    _, secret = api_key_create(team=team, name="app")
    client = sdk(secret)

    answers = [
        client.chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES)
        for _ in range(3)
    ]

    assert [a.choices[0].message.content for a in answers] == ["ok", "ok", "ok"]
    # Call 2 met the kept-alive connection of call 1, which the server then dropped, and
    # was answered on a new one (closed after it, so call 3 opened its own): three answers,
    # one drop, one ledger row each, each billed once.
    assert closing_upstream.answered == 3 and closing_upstream.dropped == 1
    rows = UsageRecord.objects.filter(team=team)
    assert rows.count() == 3 and {r.status for r in rows} == {"ok"}


class RawStreamServer(ClosingServer):
    """Answers every request with the same server-sent events, written as given."""

    def __init__(self, events: bytes):
        self.events = events
        super().__init__()

    def _connection(self, conn):
        with conn:
            if not self._read_request(conn):
                return
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                + f"Content-Length: {len(self.events)}\r\nConnection: close\r\n\r\n".encode()
                + self.events
            )


def _chunk(text, finish=None, **more):
    return json.dumps(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "upstream-name",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
            **more,
        }
    )


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
SPLIT_OVER_LINES = (
    # One event's JSON over two data lines (valid SSE: joined by a newline).
    b'data: {"id": "c1", "object": "chat.completion.chunk", "created": 0,\n'
    b'data:  "model": "upstream-name", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'
    + f"data: {_chunk('lo', 'stop', usage=USAGE)}\n\ndata: [DONE]\n\n".encode()
)
CR_LINE_ENDS = f"data: {_chunk('Hel')}\r\rdata: {_chunk('lo', 'stop', usage=USAGE)}\r\rdata: [DONE]\r\r".encode()


@pytest.mark.parametrize("events", [SPLIT_OVER_LINES, CR_LINE_ENDS], ids=["multiline", "cr"])
@pytest.mark.django_db(transaction=True)
def test_valid_but_unusual_event_framing_is_relayed_as_sse_the_sdk_reads(
    catalog, team, sdk, events
):
    server = RawStreamServer(events)
    catalog_load_data(
        data={
            "provider": [
                {"name": "global", "base_url": server.url, "api_key_env": "FAKE_UPSTREAM_KEY"}
            ]
        }
    )
    catalog_changed()
    _, secret = api_key_create(team=team, name="app")
    try:
        chunks = list(
            sdk(secret).chat.completions.create(
                model="deepseek-v4-flash", messages=MESSAGES, stream=True
            )
        )
    finally:
        server.stop()

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert {c.model for c in chunks} == {"deepseek-v4-flash"}
    [row] = UsageRecord.objects.filter(team=team)
    assert (row.status, row.prompt_tokens, row.completion_tokens) == ("ok", 5, 2)
