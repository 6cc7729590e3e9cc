"""Webhooks are called at the address that was checked: the host is resolved once per send,
the connection goes to that address, and the name travels in the Host header and SNI, so a
DNS answer that changes after the check (rebinding) cannot reach inside."""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from usage.outbound import (
    OutboundFailed,
    OutboundRefused,
    webhook_pin,
    webhook_post,
    webhook_url_problem,
)

REAL_GETADDRINFO = socket.getaddrinfo


class Hook(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(self.headers["Host"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    Hook.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()


@pytest.fixture
def dns(monkeypatch):
    """Names this test answers for, each with a list of answers served in turn (the last
    one repeats); numeric hosts resolve as usual. Counts the lookups of each name."""
    answers: dict[str, list[str]] = {}
    lookups: dict[str, int] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            lookups[host] = lookups.get(host, 0) + 1
            queue = answers[host]
            address = queue.pop(0) if len(queue) > 1 else queue[0]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, lookups


def test_the_request_goes_to_the_checked_address_with_the_name_as_host(settings, hook, dns):
    settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE = True
    answers, lookups = dns
    answers["hook.test"] = ["127.0.0.1"]
    status = webhook_post(f"http://hook.test:{hook}/in", content=b"{}", headers={}, timeout=5)
    assert status == 204
    assert Hook.seen == [f"hook.test:{hook}"] and lookups == {"hook.test": 1}


def test_a_name_that_rebinds_to_loopback_after_the_check_never_reaches_it(settings, hook, dns):
    settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE = False
    answers, lookups = dns
    # Public when checked, loopback for anyone who asks again.
    answers["rebind.test"] = ["93.184.216.34", "127.0.0.1"]
    url = f"https://rebind.test:{hook}/in"
    started = time.monotonic()
    with pytest.raises(OutboundFailed):
        webhook_post(url, content=b"{}", headers={}, timeout=1.0)
    assert time.monotonic() - started < 5
    assert lookups == {"rebind.test": 1}  # resolved once: the connection used that answer
    assert Hook.seen == []
    # Asked again, the name now points inside and is refused before any connection.
    assert webhook_url_problem(url) is not None


def test_a_pinned_https_url_keeps_the_name_for_tls(settings, dns):
    settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE = False
    answers, _ = dns
    answers["hooks.example"] = ["93.184.216.34"]
    pinned = webhook_pin("https://hooks.example/a/b?c=1")
    assert pinned.url == "https://93.184.216.34/a/b?c=1"
    assert (pinned.host, pinned.sni) == ("hooks.example", "hooks.example")
    answers["v6.example"] = ["2606:2800:220:1:248:1893:25c8:1946"]
    assert (
        webhook_pin("https://v6.example:8443/").url
        == "https://[2606:2800:220:1:248:1893:25c8:1946]:8443/"
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example/",
        "https://user:pass@hooks.example/",
        "https://10.0.0.1/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:127.0.0.1]/",
        "https://localhost/",
    ],
)
def test_refused_urls_are_refused_at_send_too(settings, url):
    settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(OutboundRefused):
        webhook_post(url, content=b"{}", headers={}, timeout=1)


class Trickle(BaseHTTPRequestHandler):
    """Answers a byte at a time, each well inside any per-read timeout."""

    in_headers = False

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).in_headers:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 50:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
            return
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.2)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("in_headers", [False, True], ids=["body", "headers"])
def test_an_answer_trickled_a_byte_at_a_time_runs_out_of_time(settings, in_headers):
    settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE = True
    handler = type("T", (Trickle,), {"in_headers": in_headers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        with pytest.raises(OutboundFailed, match="timed out"):
            webhook_post(
                f"http://127.0.0.1:{server.server_port}/", content=b"{}", headers={}, timeout=1.0
            )
        assert time.monotonic() - started < 2
    finally:
        server.shutdown()
