"""HTTP/2 on TLS listeners (``realtime/http2.py``), with real clients: httpx (``http2=True``),
a raw client on the ``h2`` package for what httpx will not send, and ``websockets`` for the
WebSockets that share the port over HTTP/1.1.

Each server is the real one (``realtime_server(..., tls=...)``: a ``RealtimeSite`` behind
Twisted's TLS, as an ``ssl:`` listener builds it) on a free loopback port. The twistd path
(``--port ssl:...``) is in tests/e2e/test_launch.py (``--no-http2``'s parsing in
tests/test_tap.py); a browser loading a
page over HTTP/2 and opening its WebSocket on the same port, in test_browser_chat.py."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from websockets.sync.client import connect

from realtime import AsyncHttpConsumer, ProtocolTypeRouter, URLRouter, WebsocketConsumer, path
from tests.clients import Recorder, captured_log, in_thread, until
from tests.e2e.support import self_signed, tls_options

TIMEOUT = 10


# -- the application --------------------------------------------------------------------------
class ScopeView(AsyncHttpConsumer):
    """Answers with what the scope says about the request, and the body's length."""

    async def handle(self, body: bytes) -> None:
        scope = self.scope
        answer = {"http_version": scope["http_version"], "scheme": scope["scheme"],
                  "method": scope["method"], "path": scope["path"], "body": len(body),
                  "host": dict(scope["headers"]).get(b"host", b"").decode(),
                  "client_port": scope["client"][1]}
        await self.send_response(200, json.dumps(answer).encode(),
                                 headers=[(b"Content-Type", b"application/json")])


class Waiter(AsyncHttpConsumer):
    """Waits for ``gate`` (fired by ``Opener``); with ``stream``, sends a first chunk before.
    Records its disconnect()."""

    gate: Any = None
    rec: Any = None
    stream = False

    async def handle(self, body: bytes) -> None:
        self.rec.add("waiting")
        if self.stream:
            await self.send_headers(headers=[(b"Content-Type", b"text/event-stream")])
            await self.send_body(b"data: 1\n\n", more_body=True)
        await self.gate
        if self.stream:
            await self.send_body(b"data: 2\n\n")
        else:
            await self.send_response(200, b"opened")

    async def disconnect(self) -> None:
        self.rec.add("disconnect")


class LongPoll(AsyncHttpConsumer):
    """Answers after ``seconds`` of silence."""

    seconds = 1.0

    async def handle(self, body: bytes) -> None:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, self.seconds, lambda: None)
        await self.send_response(200, b"event")


class Opener(AsyncHttpConsumer):
    gate: Any = None

    async def handle(self, body: bytes) -> None:
        if not self.gate.called:
            self.gate.callback(None)
        await self.send_response(200, b"open")


class FailsMidway(AsyncHttpConsumer):
    """Starts a response, then raises: the client must not see a complete body."""

    async def handle(self, body: bytes) -> None:
        await self.send_headers(headers=[(b"Content-Type", b"text/plain")])
        await self.send_body(b"part one", more_body=True)
        raise RuntimeError("the view broke halfway")


class WithConnectionFields(AsyncHttpConsumer):
    """Sets header fields HTTP/1.1 allows and HTTP/2 forbids."""

    async def handle(self, body: bytes) -> None:
        await self.send_response(200, b"fields", headers=[
            (b"Connection", b"keep-alive"), (b"Keep-Alive", b"timeout=5"),
            (b"X-Kept", b"yes")])


class Page(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"a twisted.web resource"


class Echo(WebsocketConsumer):
    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.send(text_data=text_data)


def make_app(**http_routes: Any) -> ProtocolTypeRouter:
    routes = {"scope": ScopeView.as_app(), "page": Page(),
              "fields": WithConnectionFields.as_app(), "fails": FailsMidway.as_app()}
    routes.update(http_routes)
    return ProtocolTypeRouter({
        "http": URLRouter([path(name, app) for name, app in routes.items()]),
        "websocket": URLRouter([path("echo", Echo.as_app()), path("ws-only", Echo.as_app())]),
    })


# -- TLS and clients --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: Any) -> tuple[Path, Any]:
    """A self-signed certificate for 127.0.0.1: its file (clients trust it) and the server's
    ``CertificateOptions``."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    return cert, tls_options(cert, key)


def client(cert: Path, http2: bool = True, **kwargs: Any) -> httpx.Client:
    return httpx.Client(http2=http2, verify=ssl.create_default_context(cafile=str(cert)),
                        timeout=TIMEOUT, **kwargs)


def get(cert: Path, url: str, http2: bool = True) -> httpx.Response:
    with client(cert, http2) as c:
        return c.get(url)


class RawH2:
    """A minimal HTTP/2 client on the ``h2`` package over a TLS socket (blocking; run it in
    a thread): for frames httpx will not send."""

    def __init__(self, port: int, cert: Path, validate: bool = True) -> None:
        context = ssl.create_default_context(cafile=str(cert))
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=validate,
            normalize_outbound_headers=validate))
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, target: str, extra: list[tuple[str, str]] | None = None,
                end: bool = True, method: str = "GET") -> int:
        stream = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":path", target), (":scheme", "https"),
                   (":authority", "127.0.0.1")] + (extra or [])
        self.conn.send_headers(stream, headers, end_stream=end)
        return stream

    def events_until(self, done: Any, timeout: float = TIMEOUT) -> list[Any]:
        """Read until ``done(event)`` is true for one event (or the server closes)."""
        seen: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.flush()
            try:
                data = self.sock.recv(65536)
            except (ConnectionError, ssl.SSLError):
                return seen
            if not data:
                return seen
            events = self.conn.receive_data(data)
            for event in events:
                if isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
            seen += events
            if any(done(e) for e in events):
                self.flush()
                return seen
        raise TimeoutError(f"no awaited event in {timeout} s: {seen!r}")

    def close(self) -> None:
        self.sock.close()


def body_of(events: list[Any], stream: int) -> bytes:
    return b"".join(e.data for e in events
                    if isinstance(e, h2.events.DataReceived) and e.stream_id == stream)


def ended(stream: int) -> Any:
    return lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == stream


def terminated(e: Any) -> bool:
    return isinstance(e, h2.events.ConnectionTerminated)


# -- the tests --------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_http2_is_negotiated_and_serves_consumers_resources_and_builtins(
        live, certificate):
    cert, options = certificate
    server = await live(make_app(), tls=options)
    logged: list[dict[str, Any]] = []
    server.site.access_log = type("Log", (), {"emit": lambda self, **f: logged.append(f)})()
    big = b"x" * 300_000  # beyond HTTP/2's 64 KiB initial window: flow control must work

    def run() -> list[httpx.Response]:
        with client(cert) as c:
            return [c.get(server.http_url("/scope?q=1")), c.post(server.http_url("/scope"),
                                                                 content=big),
                    c.get(server.http_url("/page")), c.get(server.http_url("/healthz")),
                    c.get(server.http_url("/nosuch"))]

    scope, post, page, health, missing = await in_thread(run)
    assert {r.http_version for r in (scope, post, page, health, missing)} == {"HTTP/2"}
    assert scope.json() == {"http_version": "2", "scheme": "https", "method": "GET",
                            "path": "/scope", "body": 0, "host": f"127.0.0.1:{server.port}",
                            "client_port": post.json()["client_port"]}  # one connection
    assert post.json()["body"] == len(big)
    assert (page.status_code, page.text) == (200, "a twisted.web resource")
    assert (health.status_code, health.text) == (200, "ok\n")
    assert missing.status_code == 404
    assert {e["protocol"] for e in logged} == {"HTTP/2"}
    assert sorted(e["status"] for e in logged) == [200, 200, 200, 200, 404]


@pytest_twisted.ensureDeferred
async def test_requests_on_one_connection_run_side_by_side(live, certificate):
    """/wait answers only once /open has run: over one connection that needs streams
    (HTTP/1.1 would wait for /wait's answer before sending /open)."""
    cert, options = certificate
    rec, gate = Recorder(), Deferred()
    server = await live(make_app(wait=Waiter.as_app(gate=gate, rec=rec),
                                 open=Opener.as_app(gate=gate)), tls=options)
    with client(cert, limits=httpx.Limits(max_connections=1)) as c:
        waiting = in_thread(c.get, server.http_url("/wait"))
        assert await rec.wait(1) == ["waiting"]
        opened = await in_thread(c.get, server.http_url("/open"))
        first = await waiting
    assert (first.http_version, first.text, opened.text) == ("HTTP/2", "opened", "open")
    assert len(server.site.open_channels) == 1  # one TCP connection carried both


@pytest_twisted.ensureDeferred
async def test_connection_fields_are_left_out_of_http2_heads(live, certificate):
    """What HTTP/2 forbids in a head (RFC 9113 8.2.2) is dropped (h2 does it), and the rest
    of the response goes out. The same responses over HTTP/1.1 keep them."""
    cert, options = certificate
    server = await live(make_app(), tls=options, server_header="edge")

    def run(http2: bool) -> list[httpx.Response]:
        with client(cert, http2) as c:
            return [c.get(server.http_url("/fields")), c.get(server.http_url("/ws-only"))]

    fields, upgrade_needed = await in_thread(run, True)
    assert (fields.http_version, fields.status_code, fields.text) == ("HTTP/2", 200, "fields")
    assert fields.headers["x-kept"] == "yes" and fields.headers["server"] == "edge"
    assert "connection" not in fields.headers and "keep-alive" not in fields.headers
    assert upgrade_needed.status_code == 426
    assert "upgrade" not in upgrade_needed.headers
    fields1, upgrade_needed1 = await in_thread(run, False)
    assert fields1.http_version == "HTTP/1.1" and fields1.headers["keep-alive"] == "timeout=5"
    assert (upgrade_needed1.status_code, upgrade_needed1.headers["upgrade"]) == (426, "websocket")


@pytest_twisted.ensureDeferred
async def test_http_timeout_resets_the_stream_and_the_connection_goes_on(live, certificate):
    cert, options = certificate
    rec, gate = Recorder(), Deferred()
    server = await live(make_app(stream=Waiter.as_app(gate=gate, rec=rec, stream=True)),
                        tls=options, http_response_timeout=0.3)

    def run() -> tuple[bytes, str, httpx.Response, httpx.Response]:
        with client(cert, limits=httpx.Limits(max_connections=1)) as c:
            before = c.get(server.http_url("/scope"))
            got = b""
            with pytest.raises(httpx.RemoteProtocolError) as info:
                with c.stream("GET", server.http_url("/stream")) as response:
                    for chunk in response.iter_bytes():
                        got += chunk
            return got, str(info.value), before, c.get(server.http_url("/scope"))

    with captured_log() as events:
        got, error, before, after = await in_thread(run)
        assert await rec.wait(1) == ["waiting", "disconnect"]
    assert got == b"data: 1\n\n"  # what was sent arrived; the end never did
    assert "reset" in error.lower()
    assert (after.http_version, after.status_code) == ("HTTP/2", 200)
    # The same connection served the requests before and after the reset one.
    assert after.json()["client_port"] == before.json()["client_port"]
    assert any("cut off" in e.get("log_format", "") for e in events)
    gate.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_consumer_that_fails_halfway_resets_its_stream(live, certificate):
    cert, options = certificate
    server = await live(make_app(), tls=options)

    def run() -> tuple[bytes, httpx.Response, httpx.Response]:
        with client(cert, limits=httpx.Limits(max_connections=1)) as c:
            before = c.get(server.http_url("/scope"))
            got = b""
            with pytest.raises(httpx.RemoteProtocolError):
                with c.stream("GET", server.http_url("/fails")) as response:
                    for chunk in response.iter_bytes():
                        got += chunk
            return got, before, c.get(server.http_url("/scope"))

    with captured_log() as events:
        got, before, after = await in_thread(run)
    assert got in (b"", b"part one")  # never a complete-looking body
    assert after.status_code == 200
    assert after.json()["client_port"] == before.json()["client_port"]
    assert any("the view broke halfway" in repr(e.get("log_failure")) for e in events)


@pytest_twisted.ensureDeferred
async def test_a_stream_the_client_resets_runs_disconnect_and_spares_the_connection(
        live, certificate):
    cert, options = certificate
    rec, gate = Recorder(), Deferred()
    server = await live(make_app(stream=Waiter.as_app(gate=gate, rec=rec, stream=True)),
                        tls=options)

    def run() -> tuple[list[Any], list[Any]]:
        h2c = RawH2(server.port, cert)
        try:
            stream = h2c.request("/stream")
            first = h2c.events_until(lambda e: isinstance(e, h2.events.DataReceived))
            h2c.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
            again = h2c.request("/scope")
            return first, h2c.events_until(ended(again))
        finally:
            h2c.close()

    first, second = await in_thread(run)
    assert b"data: 1" in b"".join(e.data for e in first if hasattr(e, "data"))
    assert await rec.wait(1) == ["waiting", "disconnect"]
    scope = json.loads(body_of(second, 3))
    assert scope["http_version"] == "2"
    gate.callback(None)  # the late send goes nowhere and raises nothing


@pytest_twisted.ensureDeferred
async def test_websockets_share_the_tls_port_with_http2(live, certificate):
    """WebSocket clients offer no ALPN or only http/1.1, so they get HTTP/1.1 and their
    upgrade, while an HTTP/2 connection to the same port is open."""
    cert, options = certificate
    server = await live(make_app(), tls=options)

    def run() -> list[str]:
        answers = []
        with client(cert) as c:
            answers.append(c.get(server.http_url("/scope")).http_version)
            plain = ssl.create_default_context(cafile=str(cert))
            alpn = ssl.create_default_context(cafile=str(cert))
            alpn.set_alpn_protocols(["http/1.1"])
            for context in (plain, alpn):
                with connect(server.ws_url("/echo"), ssl=context, open_timeout=TIMEOUT) as ws:
                    ws.send("over TLS")
                    answers.append(str(ws.recv(timeout=TIMEOUT)))
            answers.append(c.get(server.http_url("/scope")).http_version)
        return answers

    assert await in_thread(run) == ["HTTP/2", "over TLS", "over TLS", "HTTP/2"]


@pytest_twisted.ensureDeferred
async def test_no_http2_offers_http11_only(live, certificate):
    cert, options = certificate
    server = await live(make_app(), tls=options, http2=False)
    response = await in_thread(get, cert, server.http_url("/scope"))
    assert (response.http_version, response.json()["http_version"]) == ("HTTP/1.1", "1.1")


@pytest_twisted.ensureDeferred
async def test_plain_tcp_listeners_do_not_speak_http2(live, certificate):
    """No h2c: HTTP/2's prior-knowledge preface on a plain port gets 505, as any other
    version this server does not speak."""
    server = await live(make_app())

    def run() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            return sock.recv(4096)

    assert (await in_thread(run)).startswith(b"HTTP/1.1 505 ")


@pytest_twisted.ensureDeferred
async def test_an_upgrade_header_over_http2_ends_that_connection_only(live, certificate):
    """HTTP/2 has no Upgrade (a WebSocket cannot start on a stream): a request that carries
    one is a protocol error, GOAWAY for its connection; other clients go on."""
    cert, options = certificate
    server = await live(make_app(), tls=options)

    def run() -> tuple[list[Any], httpx.Response]:
        bad = RawH2(server.port, cert, validate=False)
        try:
            bad.request("/echo", [("upgrade", "websocket"), ("connection", "upgrade")])
            events = bad.events_until(terminated)
        finally:
            bad.close()
        return events, get(cert, server.http_url("/scope"))

    events, after = await in_thread(run)
    goaway = [e for e in events if terminated(e)]
    assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert (after.http_version, after.status_code) == ("HTTP/2", 200)
    assert await until(lambda: not server.site.open_channels, TIMEOUT)


@pytest_twisted.ensureDeferred
async def test_a_rapid_reset_flood_is_cut_off_and_others_are_served(live, certificate):
    """Streams opened and reset at once, over and over (CVE-2023-44487): Twisted's HTTP/2
    server (>= 26.10, which setup.cfg requires) stops the connection with ENHANCE_YOUR_CALM
    after its burst of 1,000; a well-behaved client is served meanwhile."""
    cert, options = certificate
    server = await live(make_app(), tls=options)
    stop = threading.Event()

    def flood() -> list[Any]:
        h2c = RawH2(server.port, cert)
        try:
            for _ in range(1_500):
                stream = h2c.request("/healthz")
                h2c.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
                try:
                    h2c.flush()
                except (ConnectionError, ssl.SSLError):
                    break
            return h2c.events_until(terminated)
        finally:
            h2c.close()
            stop.set()

    flooding = in_thread(flood)
    answers = []
    while not stop.is_set() and len(answers) < 50:
        answers.append((await in_thread(get, cert, server.http_url("/healthz"))).status_code)
    events = await flooding
    goaway = [e for e in events if terminated(e)]
    assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert answers and set(answers) == {200}
    assert (await in_thread(get, cert, server.http_url("/healthz"))).status_code == 200


@pytest_twisted.ensureDeferred
async def test_idle_connections_close_and_long_polls_are_not_idle(live, certificate):
    """The idle timeout (60 s; here 0.5) closes an HTTP/2 connection with nothing in
    progress (GOAWAY), as HTTP/1.1's keep-alive; a request answered after longer than that
    is in progress, not idle, and is served."""
    cert, options = certificate
    server = await live(make_app(poll=LongPoll.as_app(seconds=1.2)), tls=options,
                        http_timeout=0.5)

    def run() -> tuple[bytes, list[Any], float]:
        h2c = RawH2(server.port, cert)
        try:
            stream = h2c.request("/poll")
            answer = body_of(h2c.events_until(ended(stream)), stream)
            idle_from = time.monotonic()
            return answer, h2c.events_until(terminated), time.monotonic() - idle_from
        finally:
            h2c.close()

    answer, events, idle = await in_thread(run)
    assert answer == b"event"
    assert [e.error_code for e in events if terminated(e)] == [h2.errors.ErrorCodes.NO_ERROR]
    assert 0.3 < idle < 5
    assert await until(lambda: not server.site.open_channels, TIMEOUT)


@pytest_twisted.ensureDeferred
async def test_a_stream_that_dribbles_its_body_is_reset_at_the_connect_deadline(
        live, certificate):
    """``--websocket-connect-timeout``'s deadline holds for each HTTP/2 stream from its
    opening to its request complete, as for an HTTP/1.1 head: a body that never ends gets
    RST_STREAM; the connection and its other streams go on."""
    cert, options = certificate
    server = await live(make_app(), tls=options, connect_timeout=0.5)

    def run() -> tuple[list[Any], float, dict[str, Any]]:
        h2c = RawH2(server.port, cert)
        try:
            slow = h2c.request("/scope", [("content-length", "100")], end=False,
                               method="POST")
            h2c.conn.send_data(slow, b"x" * 10)
            started = time.monotonic()
            events = h2c.events_until(
                lambda e: isinstance(e, h2.events.StreamReset) and e.stream_id == slow)
            waited = time.monotonic() - started
            fine = h2c.request("/scope")
            return events, waited, json.loads(body_of(h2c.events_until(ended(fine)), fine))
        finally:
            h2c.close()

    events, waited, scope = await in_thread(run)
    assert 0.3 < waited < 5
    assert not any(isinstance(e, h2.events.ResponseReceived) for e in events)
    assert scope["http_version"] == "2"


@pytest_twisted.ensureDeferred
async def test_host_beside_authority_is_one_host(live, certificate):
    """A client (or proxy) may send Host with :authority (RFC 9113 8.3.1): the same value
    is one Host for the scope and the checks; h2 refuses the two when they differ."""
    cert, options = certificate
    server = await live(make_app(), tls=options)

    def run() -> tuple[list[Any], int]:
        h2c = RawH2(server.port, cert)
        try:
            stream = h2c.request("/scope", [("host", "127.0.0.1")])
            return h2c.events_until(ended(stream)), stream
        finally:
            h2c.close()

    events, stream = await in_thread(run)
    statuses = [dict(e.headers)[b":status"] for e in events
                if isinstance(e, h2.events.ResponseReceived)]
    assert statuses == [b"200"]
    assert json.loads(body_of(events, stream))["host"] == "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_a_head_http11_refuses_gets_400_over_http2_too(live, certificate):
    """What h2 lets through (RFC 9113 8.2.1 checks NUL, CR, LF and upper case only) gets the
    400 it gets over HTTP/1.1 (tests/e2e/test_hostile.py), before the app runs: a method
    that is not a token, a raw non-ASCII byte or '#' in the path, a control character or
    NEL (a line break to str.splitlines(), as Django decodes META) in a header value, a
    header name that is not a token. The connection goes on."""
    cert, options = certificate
    server = await live(make_app(), tls=options)
    bad = [(b"G(T", b"/scope", []), (b"GET", b"/scope\xc3\xa9", []), (b"GET", b"/scope#x", []),
           (b"GET", b"/scope", [(b"x-a", b"a\x85b")]), (b"GET", b"/scope", [(b"x-a", b"a\x01b")]),
           (b"GET", b"/scope", [(b"x-a", b"a\x0bb")]),
           (b"GET", b"/scope", [(b"x(a", b"1")])]  # no token: twisted.web would raise

    def run() -> list[tuple[bytes, bytes]]:
        h2c = RawH2(server.port, cert, validate=False)
        try:
            answers = []
            for method, target, extra in [*bad, (b"GET", b"/scope", [(b"x-a", b"a\xe9b")])]:
                stream = h2c.conn.get_next_available_stream_id()
                h2c.conn.send_headers(stream, [(b":method", method), (b":path", target),
                                               (b":scheme", b"https"),
                                               (b":authority", b"127.0.0.1"), *extra],
                                      end_stream=True)
                events = h2c.events_until(ended(stream))
                status = [dict(e.headers)[b":status"] for e in events
                          if isinstance(e, h2.events.ResponseReceived)]
                answers.append((b"".join(status), body_of(events, stream)))
            return answers
        finally:
            h2c.close()

    *refused, fine = await in_thread(run)
    assert refused == [(b"400", b"Bad Request\n")] * len(bad)
    assert fine[0] == b"200" and json.loads(fine[1])["http_version"] == "2"  # obs-text passes


@pytest_twisted.ensureDeferred
async def test_an_asgi_app_that_reads_after_the_stream_reset_gets_the_body_first(
        live, certificate):
    """As over HTTP/1.1 (tests/e2e/test_http_vs_daphne.py, abort-before-read): a client that
    sends its request and resets the stream before the app reads gets the app the whole
    body, in order, then ``http.disconnect``."""
    cert, options = certificate
    seen: list[Any] = []
    reset = Deferred()

    async def late(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # no lifespan
        await reset  # the stream is gone before the first receive()
        while True:
            message = await receive()
            seen.append((message["type"], message.get("body", b""), message.get("more_body")))
            if message["type"] != "http.request" or not message["more_body"]:
                break
        seen.append((await receive())["type"])

    server = await live(make_app(late=late), tls=options)
    body = bytes(range(256)) * 200  # 51,200 bytes: within the stream's first window

    def send() -> RawH2:
        h2c = RawH2(server.port, cert)
        stream = h2c.request("/late", [("content-length", str(len(body)))], end=False,
                             method="POST")
        for start in range(0, len(body), 10_240):
            h2c.conn.send_data(stream, body[start:start + 10_240],
                               end_stream=start + 10_240 >= len(body))
        h2c.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        h2c.flush()
        return h2c

    # The connection stays: a socket closed with unread bytes sends RST, and a reset TCP
    # connection may lose what the server has not read yet.
    h2c = await in_thread(send)
    try:
        assert await until(lambda: server.site.asgi_running, TIMEOUT)  # the app waits
        # the stream's request is over (counted as 499): its client has gone
        assert await until(lambda: server.site.stats.http_in_progress == 0, TIMEOUT)
        reset.callback(None)
        assert await until(lambda: seen and seen[-1] == "http.disconnect", TIMEOUT)
    finally:
        await in_thread(h2c.close)
    assert b"".join(chunk for _, chunk, _ in seen[:-1]) == body
    assert {kind for kind, *_ in seen[:-1]} == {"http.request"}
