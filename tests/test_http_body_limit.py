"""``--http-body-limit``: a request body over it gets 413 and nothing of the application
runs, whichever kind of HTTP app the path leads to (an ``AsyncHttpConsumer``, a twisted.web
resource, a raw ASGI app); the publish API's paths keep ``--api-body-limit``.

Real servers on free loopback ports, real clients: raw HTTP/1.1 bytes over TCP (a head
without its body, a chunked body sent piece by piece), urllib, the ``h2`` package over TLS
(``RawH2`` from tests/e2e/test_http2.py), httpx and ``websockets``; the option's parsing
through ``tap.Options`` and the real command line. Limits here are 1000 bytes, not 10 MiB.
"""

from __future__ import annotations

import json
import time
from typing import Any

import h2.errors
import h2.events
import pytest
import pytest_twisted
from twisted.logger import formatEvent
from twisted.web.resource import Resource
from websockets.sync.client import connect

from realtime import AsyncHttpConsumer, ProtocolTypeRouter, URLRouter, WebsocketConsumer, path
from realtime.config import MiB, ServerConfig, StartupError
from realtime.tap import Options
from tests.clients import (
    Recorder,
    captured_log,
    closed_by_server,
    http_get,
    in_thread,
    parse_response,
    raw_connect,
    until,
)
from tests.e2e.support import BENCH_APP, run, self_signed, tls_options, twistd
from tests.e2e.test_http2 import RawH2, body_of, client, ended

LIMIT = 1000
KEY = "test-api-key-0123456789"
KINDS = ["consumer", "resource", "asgi"]


# -- the application: three kinds of HTTP app that say how much body they got --------------
class BodyView(AsyncHttpConsumer):
    rec: Any = None

    async def handle(self, body: bytes) -> None:
        self.rec.add(("consumer", len(body)))
        await self.send_response(200, b"%d" % len(body))


class BodyResource(Resource):
    isLeaf = True

    def __init__(self, rec: Recorder) -> None:
        super().__init__()
        self.rec = rec

    def render_POST(self, request: Any) -> bytes:
        size = len(request.content.read())
        self.rec.add(("resource", size))
        return b"%d" % size

    render_GET = render_POST


def body_asgi(rec: Recorder) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        rec.add(("asgi", len(body)))
        answer = b"%d" % len(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})

    return app


class Echo(WebsocketConsumer):
    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.send(text_data=text_data)


def make_app(rec: Recorder) -> ProtocolTypeRouter:
    return ProtocolTypeRouter({
        "http": URLRouter([path("consumer", BodyView.as_app(rec=rec)),
                           path("resource", BodyResource(rec)),
                           path("asgi", body_asgi(rec))]),
        "websocket": URLRouter([path("echo", Echo.as_app())]),
    })


async def serve(live: Any, rec: Recorder, **config: Any) -> Any:
    config.setdefault("http_body_limit", LIMIT)
    return await live(make_app(rec), lifespan="off", **config)  # the ASGI app speaks no lifespan


# -- raw HTTP/1.1 ---------------------------------------------------------------------------
def head(target: str, *fields: str, method: str = "POST") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def responses(data: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of the complete responses (Content-Length bodies) ``data`` starts with."""
    out = []
    while b"\r\n\r\n" in data:
        status, headers, rest = parse_response(data)
        size = int(headers[b"content-length"][0])
        if len(rest) < size:
            break
        out.append((status, rest[:size]))
        data = rest[size:]
    return out


def refusal_logged(events: list[dict[str, Any]], target: str,
                   option: str = "--http-body-limit", limit: int = LIMIT) -> bool:
    """Whether the one info line of a refusal is among ``events``."""
    line = f"POST {target}: request body over {option} ({limit} bytes): 413"
    return any(formatEvent(e) == line for e in events)


# -- HTTP/1.1 -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.ensureDeferred
async def test_a_content_length_over_the_limit_gets_413_before_the_body(live, kind):
    """Only the head is sent: the answer comes without the body, the connection closes, and
    the application never runs. One info line names the path and the limit."""
    rec = Recorder()
    server = await serve(live, rec)
    conn = await raw_connect(server.port)
    with captured_log() as events:
        conn.write(head(f"/{kind}", f"Content-Length: {LIMIT + 1}"))
        closed = await closed_by_server(conn, 5)
    status, headers, body = parse_response(conn.data)
    assert (status, body) == (413, b"Request Entity Too Large\n")
    assert headers[b"connection"] == [b"close"]
    assert closed
    assert refusal_logged(events, f"/{kind}")
    assert await rec.wait(1, timeout=0.3) == []


@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.ensureDeferred
async def test_a_body_at_the_limit_reaches_the_application_whole(live, kind):
    rec = Recorder()
    server = await serve(live, rec)
    status, _, body = await in_thread(http_get, server.http_url(f"/{kind}"), b"x" * LIMIT)
    assert (status, body) == (200, b"%d" % LIMIT)
    assert await rec.wait(1) == [(kind, LIMIT)]


@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.ensureDeferred
async def test_a_chunked_body_over_the_limit_is_refused_midway(live, kind):
    """Counted as it arrives: past the limit, 413 and the connection closes; the body's
    temporary file is closed, and the application never runs, even when the client
    finishes the body."""
    rec = Recorder()
    server = await serve(live, rec)
    conn = await raw_connect(server.port)
    conn.write(head(f"/{kind}", "Transfer-Encoding: chunked") + chunk(b"x" * 600))
    [channel] = server.site.open_channels
    assert await until(lambda: channel.requests and channel.requests[-1].body_received)
    request = channel.requests[-1]
    spool = request.content
    assert request.body_received == 600 and not spool.closed
    with captured_log() as events:
        conn.write(chunk(b"x" * 600))
        await conn.wait_for(responses)
        conn.write(chunk(b"x" * 100) + b"0\r\n\r\n")  # the rest: read and discarded
        closed = await closed_by_server(conn, 5)
    status, headers, _ = parse_response(conn.data)
    assert status == 413 and headers[b"connection"] == [b"close"]
    assert closed and spool.closed
    assert refusal_logged(events, f"/{kind}")
    assert await rec.wait(1, timeout=0.3) == []
    assert not server.site.open_channels


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_over_the_limit_in_one_write_and_what_follows_it(live):
    """The whole chunked body, its end and a pipelined request in one write: one 413, and
    neither request reaches the application."""
    rec = Recorder()
    server = await serve(live, rec)
    conn = await raw_connect(server.port)
    conn.write(head("/consumer", "Transfer-Encoding: chunked")
               + chunk(b"x" * 800) + chunk(b"x" * 800) + b"0\r\n\r\n"
               + head("/consumer", "Content-Length: 2") + b"ok")
    assert await closed_by_server(conn, 5)
    assert responses(conn.data) == [(413, b"Request Entity Too Large\n")]
    assert await rec.wait(1, timeout=0.3) == []


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_over_the_limit_gets_413_instead(live):
    rec = Recorder()
    server = await serve(live, rec)
    conn = await raw_connect(server.port)
    conn.write(head("/resource", f"Content-Length: {LIMIT + 1}", "Expect: 100-continue"))
    assert await closed_by_server(conn, 5)
    assert conn.data.startswith(b"HTTP/1.1 413 ")


@pytest_twisted.ensureDeferred
async def test_chunked_bodies_under_the_limit_are_served_each_counted_alone(live):
    """Two chunked bodies of 900 bytes on one keep-alive connection: 1800 in all, but the
    limit is per request."""
    rec = Recorder()
    server = await serve(live, rec)
    conn = await raw_connect(server.port)
    body = chunk(b"x" * 450) + chunk(b"y" * 450) + b"0\r\n\r\n"
    conn.write(head("/consumer", "Transfer-Encoding: chunked") + body)
    await conn.wait_for(responses)
    conn.write(head("/asgi", "Transfer-Encoding: chunked") + body)
    await conn.wait_for(lambda d: len(responses(d)) == 2)
    assert responses(conn.data) == [(200, b"900"), (200, b"900")]
    assert await rec.wait(2) == [("consumer", 900), ("asgi", 900)]
    assert not conn.is_closed
    conn.abort()
    await conn.closed()


@pytest_twisted.ensureDeferred
async def test_keep_alive_requests_each_get_the_whole_limit(live):
    """After a normal request, the same connection carries one at the limit (the bytes
    of the first do not count), then one over it: 413 and the connection closes."""
    rec = Recorder()
    server = await serve(live, rec)
    conn = await raw_connect(server.port)
    conn.write(head("/consumer", "Content-Length: 600") + b"x" * 600)
    await conn.wait_for(lambda d: len(responses(d)) == 1)
    conn.write(head("/resource", f"Content-Length: {LIMIT}") + b"y" * LIMIT)
    await conn.wait_for(lambda d: len(responses(d)) == 2)
    conn.write(head("/asgi", f"Content-Length: {LIMIT + 1}"))
    assert await closed_by_server(conn, 5)
    assert responses(conn.data) == [(200, b"600"), (200, b"%d" % LIMIT),
                                    (413, b"Request Entity Too Large\n")]
    assert await rec.wait(3, timeout=0.3) == [("consumer", 600), ("resource", LIMIT)]


@pytest_twisted.ensureDeferred
async def test_api_paths_keep_the_api_body_limit(live):
    """With the API on, its paths answer to ``--api-body-limit`` (here above the HTTP
    limit), and over it get 413 from the head too; every other path to
    ``--http-body-limit``."""
    rec = Recorder()
    server = await serve(live, rec, api_keys=(KEY,), api_body_limit=2 * LIMIT)
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    document = json.dumps({"group": "g", "text": "x" * 1400}).encode()
    assert LIMIT < len(document) <= 2 * LIMIT
    status, _, body = await in_thread(http_get, server.http_url("/api/publish"), document,
                                      None, auth)
    assert (status, json.loads(body)["ok"]) == (200, True)
    status, _, _ = await in_thread(http_get, server.http_url("/consumer"), document)
    assert status == 413
    conn = await raw_connect(server.port)
    with captured_log() as events:
        conn.write(head("/api/publish?x=1", f"Authorization: Bearer {KEY}",
                        f"Content-Length: {2 * LIMIT + 1}"))
        assert await closed_by_server(conn, 5)
    assert parse_response(conn.data)[0] == 413
    assert refusal_logged(events, "/api/publish", "--api-body-limit", 2 * LIMIT)
    assert await rec.wait(1, timeout=0.3) == []


@pytest_twisted.ensureDeferred
async def test_websocket_upgrades_and_bodiless_requests_pass_a_tiny_limit(live):
    rec = Recorder()
    server = await serve(live, rec, http_body_limit=1)

    def run_clients() -> tuple[str, tuple[int, bytes]]:
        with connect(server.ws_url("/echo"), open_timeout=5) as ws:
            ws.send("hello")
            echoed = str(ws.recv(timeout=5))
        status, _, body = http_get(server.http_url("/resource"))
        return echoed, (status, body)

    assert await in_thread(run_clients) == ("hello", (200, b"0"))


@pytest_twisted.ensureDeferred
async def test_zero_means_no_limit(live):
    rec = Recorder()
    server = await serve(live, rec, http_body_limit=0)
    big = b"x" * (64 * LIMIT)
    status, _, body = await in_thread(http_get, server.http_url("/consumer"), big)
    assert (status, body) == (200, b"%d" % len(big))
    conn = await raw_connect(server.port)
    conn.write(head("/asgi", "Transfer-Encoding: chunked", "Connection: close")
               + chunk(big) + chunk(big) + b"0\r\n\r\n")
    await closed_by_server(conn, 5)
    assert responses(conn.data) == [(200, b"%d" % (2 * len(big)))]


# -- HTTP/2 ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: Any) -> Any:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    return cert, tls_options(cert, key)


def reset(stream: int) -> Any:
    return lambda e: isinstance(e, h2.events.StreamReset) and e.stream_id == stream


def status_of(events: list[Any], stream: int) -> int:
    [headers] = [dict(e.headers) for e in events
                 if isinstance(e, h2.events.ResponseReceived) and e.stream_id == stream]
    return int(headers[b":status"])


@pytest_twisted.ensureDeferred
async def test_http2_streams_over_the_limit_get_413_and_the_others_go_on(live, certificate):
    """On one HTTP/2 connection: a stream whose content-length is over the limit, and one
    without a content-length whose DATA goes over it, each get a complete 413 then
    RST_STREAM(NO_ERROR) (RFC 9113 8.1: stop sending); DATA the client sent before it saw
    the reset is dropped. Streams at the limit, before and after, are served on the same
    connection; the application sees only those."""
    cert, options = certificate
    rec = Recorder()
    server = await serve(live, rec, tls=options)
    logged: list[dict[str, Any]] = []
    server.site.access_log = type("Log", (), {"emit": lambda self, **f: logged.append(f)})()

    def run_client() -> dict[str, Any]:
        out: dict[str, Any] = {}
        h2c = RawH2(server.port, cert)
        try:
            ok = h2c.request("/consumer", [("content-length", str(LIMIT))], end=False,
                             method="POST")
            h2c.conn.send_data(ok, b"x" * LIMIT, end_stream=True)
            events = h2c.events_until(ended(ok))
            out["before"] = status_of(events, ok), body_of(events, ok)

            declared = h2c.request("/resource?token=secret",
                                   [("content-length", str(LIMIT + 1))], end=False,
                                   method="POST")
            h2c.conn.send_data(declared, b"x" * 500)  # on its way as the 413 comes
            events = h2c.events_until(reset(declared))
            out["declared"] = (status_of(events, declared), body_of(events, declared),
                               [e.error_code for e in events if reset(declared)(e)])

            counted = h2c.request("/asgi", end=False, method="POST")
            h2c.conn.send_data(counted, b"x" * 600)
            h2c.flush()
            h2c.conn.send_data(counted, b"x" * 600)
            h2c.flush()
            time.sleep(0.3)  # the server has sent its 413 and reset; not read yet:
            h2c.conn.send_data(counted, b"x" * 600)  # DATA after the server's reset
            events = h2c.events_until(reset(counted))
            out["counted"] = (status_of(events, counted), body_of(events, counted),
                              [e.error_code for e in events if reset(counted)(e)])

            after = h2c.request("/consumer", [("content-length", "3")], end=False,
                                method="POST")
            h2c.conn.send_data(after, b"abc", end_stream=True)
            events = h2c.events_until(ended(after))
            out["after"] = status_of(events, after), body_of(events, after)
        finally:
            h2c.close()
        return out

    with captured_log() as events:
        out = await in_thread(run_client)
    refusal = (413, b"Request Entity Too Large\n", [h2.errors.ErrorCodes.NO_ERROR])
    assert out == {"before": (200, b"%d" % LIMIT), "declared": refusal, "counted": refusal,
                   "after": (200, b"3")}
    assert await rec.wait(3, timeout=0.3) == [("consumer", LIMIT), ("consumer", 3)]
    assert refusal_logged(events, "/resource") and refusal_logged(events, "/asgi")
    # httpx reads the 413 too (a body within the stream's first window: past it, httpcore
    # waits for a window update that a refused stream never gets, until its timeout).
    def post() -> Any:
        with client(cert) as c:
            return c.post(server.http_url("/consumer"), content=b"x" * 5000)

    answer = await in_thread(post)
    assert (answer.http_version, answer.status_code) == ("HTTP/2", 413)
    assert rec.events == [("consumer", LIMIT), ("consumer", 3)]
    assert [(e["status"], e["method"], e["target"], e["protocol"]) for e in logged] == [
        (200, "POST", "/consumer", "HTTP/2"), (413, "POST", "/resource?token=[redacted]",
                                               "HTTP/2"),
        (413, "POST", "/asgi", "HTTP/2"), (200, "POST", "/consumer", "HTTP/2"),
        (413, "POST", "/consumer", "HTTP/2")]


@pytest_twisted.ensureDeferred
async def test_http2_expect_100_continue_over_the_limit_gets_413_without_a_100(live,
                                                                              certificate):
    """``expect: 100-continue`` on an HTTP/2 stream whose content-length is over the limit:
    the 413 without a 100 before it (a 100 asks the client to send the body that is
    refused; Twisted sends it right after the head); a stream within the limit still gets
    its 100, then its answer."""
    cert, options = certificate
    rec = Recorder()
    server = await serve(live, rec, tls=options)

    def informational(events: list[Any], stream: int) -> list[bytes]:
        return [dict(e.headers)[b":status"] for e in events
                if isinstance(e, h2.events.InformationalResponseReceived)
                and e.stream_id == stream]

    def run_client() -> dict[str, Any]:
        h2c = RawH2(server.port, cert)
        try:
            over = h2c.request("/consumer", [("content-length", str(LIMIT + 1)),
                                             ("expect", "100-continue")],
                               end=False, method="POST")
            events = h2c.events_until(reset(over))
            out = {"over": (informational(events, over), status_of(events, over))}
            within = h2c.request("/consumer", [("content-length", "3"),
                                               ("expect", "100-continue")],
                                 end=False, method="POST")
            events = h2c.events_until(lambda e: isinstance(
                e, h2.events.InformationalResponseReceived) and e.stream_id == within)
            h2c.conn.send_data(within, b"abc", end_stream=True)
            events += h2c.events_until(ended(within))
            out["within"] = (informational(events, within), status_of(events, within),
                             body_of(events, within))
        finally:
            h2c.close()
        return out

    out = await in_thread(run_client)
    assert out == {"over": ([], 413), "within": ([b"100"], 200, b"3")}


@pytest_twisted.ensureDeferred
async def test_http2_refused_streams_leave_no_mark_on_the_connection(live, certificate,
                                                                     monkeypatch):
    """A stream refused from its head is marked so that it gets no 100 Continue; the mark
    goes once its head is read, whether it asked for a 100 or not (stream ids are never
    reused: a long connection refusing many streams without ``expect`` would pile them
    up)."""
    from realtime.http2 import RealtimeH2Connection

    cert, options = certificate
    server = await serve(live, Recorder(), tls=options)
    connections: list[Any] = []
    init = RealtimeH2Connection.__init__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        connections.append(self)

    monkeypatch.setattr(RealtimeH2Connection, "__init__", recording)

    def run_client() -> list[int]:
        h2c = RawH2(server.port, cert)
        try:
            statuses = []
            for expect in ([], [("expect", "100-continue")], []):
                over = h2c.request("/consumer", [("content-length", str(LIMIT + 1)),
                                                 *expect], end=False, method="POST")
                statuses.append(status_of(h2c.events_until(reset(over)), over))
            within = h2c.request("/consumer", [("content-length", "3")], end=False,
                                 method="POST")
            h2c.conn.send_data(within, b"abc", end_stream=True)
            statuses.append(status_of(h2c.events_until(ended(within)), within))
            return statuses
        finally:
            h2c.close()

    assert await in_thread(run_client) == [413, 413, 413, 200]
    [conn] = connections
    assert conn._no_continue == set()


# -- the option -----------------------------------------------------------------------------
def parse_limit(*args: str) -> int:
    options = Options()
    options.parseOptions(["--app", BENCH_APP, *args])
    return int(options.config.http_body_limit)


def test_the_default_is_10_mib():
    assert ServerConfig().http_body_limit == 10 * MiB
    assert parse_limit() == 10 * MiB


@pytest.mark.parametrize(("value", "expected"), [
    ("1000", 1000), ("64KiB", 64 * 1024), ("25M", 25 * MiB), ("0", 0), ("none", 0),
    (" None ", 0),
])
def test_values(value, expected):
    assert parse_limit("--http-body-limit", value) == expected


def test_the_environment_sets_it(monkeypatch):
    monkeypatch.setenv("REALTIME_HTTP_BODY_LIMIT", "2MiB")
    assert parse_limit() == 2 * MiB


@pytest.mark.parametrize("value", ["-1", "big", "1.5M", "", "unlimited"])
def test_a_bad_value_is_a_one_line_error_naming_the_option(value):
    options = Options()
    with pytest.raises(StartupError) as info:
        options.parseOptions(["--app", BENCH_APP, "--http-body-limit", value])
    assert str(info.value) == (
        "realtime: error: --http-body-limit: expected a size in bytes (e.g. 1048576, 64KiB, "
        f"10MiB) or 0/none for no limit, got {value!r}")


def test_a_negative_limit_is_refused_by_the_config():
    with pytest.raises(ValueError, match="http_body_limit must not be negative"):
        ServerConfig(http_body_limit=-1)


def test_the_command_line_stops_on_a_bad_value():
    result = run(twistd("--app", BENCH_APP, "--port", "0", "--http-body-limit", "lots"))
    assert result.returncode == 1
    assert result.stderr == (
        "realtime: error: --http-body-limit: expected a size in bytes (e.g. 1048576, 64KiB, "
        "10MiB) or 0/none for no limit, got 'lots'\n")
