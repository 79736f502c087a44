"""Daphne's last command-line options, on real servers: ``-s/--server-name``,
``-t/--http-timeout``, ``--proxy-headers-host/-port``, ``--root-path-header`` and
``-v/--verbosity``.

The in-process tests run the real server (``live``) and real sockets; the ``--http-timeout``
deadline is also driven by a ``Clock`` through the in-memory communicators (the server's
own code path); ``-v`` runs real ``twistd`` processes."""

from __future__ import annotations

import http.client
import json
import re
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import (
    FilteringLogObserver,
    LogBeginner,
    LogLevel,
    LogPublisher,
)
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from websockets.sync.client import connect

from realtime import (
    AsyncHttpConsumer,
    ProtocolTypeRouter,
    URLRouter,
    WebsocketConsumer,
    path,
)
from realtime.config import ServerConfig
from realtime.testing import HttpCommunicator, WebsocketCommunicator
from realtime.verbosity import RELAY_NAMESPACE, Verbosity, filter_log
from tests.clients import (
    Recorder,
    captured_log,
    http_request,
    in_thread,
    parse_response,
    raw_connect,
    raw_exchange,
    ws_open,
)
from tests.e2e.support import REPO, ServerFailed, free_port, start, twistd

OPTIONS_APP = "tests.e2e.options_app:application"
ENV = {"PYTHONPATH": str(REPO)}
TIMEOUT = 15


class Hello(AsyncHttpConsumer):
    async def handle(self, body):
        await self.send_response(200, b"hello")


class OwnServer(AsyncHttpConsumer):
    async def handle(self, body):
        await self.send_response(200, b"mine", headers=[(b"Server", b"app/1.0")])


class Plain(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"resource"


class Never(Resource):
    """A twisted.web resource that never answers (after setting headers of its own)."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-encoding", b"gzip")
        request.addCookie(b"half", b"made")
        return NOT_DONE_YET


class Client(AsyncHttpConsumer):
    """Answers with the scope's client, as JSON."""

    async def handle(self, body):
        await self.send_response(200, json.dumps(self.scope["client"]).encode())


class RootPath(AsyncHttpConsumer):
    """Answers with the scope's root_path and its header names, as JSON."""

    async def handle(self, body):
        names = [name.decode() for name, _ in self.scope["headers"]]
        await self.send_response(200, json.dumps([self.scope["root_path"], names]).encode())


class Gated(AsyncHttpConsumer):
    """Waits for ``gate``; with ``stream``, sends its headers and a first chunk before.
    Records its disconnect() and whether its late send raised."""

    gate: Any = None
    rec: Any = None
    stream = False

    async def handle(self, body):
        if self.stream:
            await self.send_headers(headers=[(b"Content-Type", b"text/event-stream")])
            await self.send_body(b"data: 1\n\n", more_body=True)
        await self.gate
        try:
            if self.stream:
                await self.send_body(b"data: 2\n\n")
            else:
                await self.send_response(200, b"late")
        except Exception as exc:  # pragma: no cover - what the test rules out
            self.rec.add(f"late send raised {exc!r}")
            raise
        self.rec.add("late send")

    async def disconnect(self):
        self.rec.add("disconnect")


class Echo(WebsocketConsumer):
    def receive(self, text_data=None, bytes_data=None):
        self.send(text_data=text_data)


class ClientSocket(WebsocketConsumer):
    def connect(self):
        self.accept()
        self.send(text_data=json.dumps(self.scope["client"]))


class Refused(WebsocketConsumer):
    def connect(self):
        self.close()


class AcceptWithServer(WebsocketConsumer):
    def connect(self):
        self.accept(headers=[(b"Server", b"app-ws")])


def make_app(**http_routes: Any) -> ProtocolTypeRouter:
    return ProtocolTypeRouter({
        "http": URLRouter([path(name, app) for name, app in http_routes.items()]),
        "websocket": URLRouter([
            path("echo", Echo.as_app()), path("client", ClientSocket.as_app()),
            path("refused", Refused.as_app()), path("own", AcceptWithServer.as_app()),
        ]),
    })


async def get(port: int, target: str, headers: list[tuple[bytes, bytes]] | None = None
              ) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    return parse_response(await raw_exchange(port, http_request(target, headers=headers)))


def head_of(raw: bytes) -> tuple[int, dict[bytes, list[bytes]]]:
    status, headers, _ = parse_response(raw.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")
    return status, headers


# -- -s/--server-name -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_server_name_on_every_kind_of_response(live):
    server = await live(make_app(hello=Hello.as_app(), own=OwnServer.as_app(), res=Plain()),
                        server_header="edge/2")
    port = server.port
    for target in ("/hello", "/res", "/healthz", "/readyz", "/nowhere"):
        status, headers, _ = await get(port, target)
        assert headers[b"server"] == [b"edge/2"], (target, status)
    # The application's own Server header wins (and is the only one).
    status, headers, body = await get(port, "/own")
    assert (status, headers[b"server"], body) == (200, [b"app/1.0"], b"mine")
    # A refused handshake, and a malformed request the channel answers before any request.
    conn = await ws_open(port, "/refused")
    status, headers, _ = conn.response()
    assert (status, headers[b"server"]) == (403, [b"edge/2"])
    raw = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n bad fold\r\n\r\n")
    status, headers = head_of(raw)
    assert (status, headers[b"server"]) == (400, [b"edge/2"])
    # The 101 response, to a raw client and to the websockets client.
    conn = await ws_open(port, "/echo")
    status, headers = head_of(conn.data)
    assert (status, headers[b"server"]) == (101, [b"edge/2"])
    conn.abort()
    conn = await ws_open(port, "/own")
    status, headers = head_of(conn.data)
    assert (status, headers[b"server"]) == (101, [b"app-ws"])
    conn.abort()

    def client() -> str | None:
        with connect(server.ws_url("/echo"), open_timeout=5, proxy=None) as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
            return ws.response.headers.get("Server")

    assert await in_thread(client) == "edge/2"


@pytest_twisted.ensureDeferred
async def test_no_server_header_by_default(live):
    server = await live(make_app(hello=Hello.as_app(), res=Plain()))
    for target in ("/hello", "/res", "/healthz", "/nowhere"):
        _, headers, _ = await get(server.port, target)
        assert b"server" not in headers, target
    conn = await ws_open(server.port, "/refused")
    assert b"server" not in conn.response()[1]
    conn = await ws_open(server.port, "/echo")
    status, headers = head_of(conn.data)
    assert status == 101 and b"server" not in headers
    conn.abort()
    raw = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n bad fold\r\n\r\n")
    assert b"server" not in head_of(raw)[1]


@pytest.mark.parametrize("name", ["a\r\nX-Injected: 1", "a\nb", "名前"])
def test_config_refuses_a_server_name_that_could_split_the_head(name):
    with pytest.raises(ValueError, match="server_header"):
        ServerConfig(server_header=name)


# -- -t/--http-timeout ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_http_timeout_answers_503_to_a_consumer_that_never_answers(live):
    rec, gate = Recorder(), Deferred()
    server = await live(make_app(hang=Gated.as_app(gate=gate, rec=rec)),
                        http_response_timeout=0.2)
    with captured_log() as events:
        status, headers, body = await get(server.port, "/hang?token=secret")
        assert (status, body) == (503, b"Service Unavailable\n")
        assert headers[b"retry-after"]
        assert await rec.wait(1) == ["disconnect"]  # at once: handle() is still waiting
    warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
    assert len(warnings) == 1
    assert (warnings[0]["method"], warnings[0]["path"]) == ("GET", "/hang")
    assert "secret" not in repr(warnings[0])
    gate.callback(None)  # the handler's late send_response goes nowhere and raises nothing
    assert await rec.wait(2) == ["disconnect", "late send"]


@pytest_twisted.ensureDeferred
async def test_http_timeout_cuts_off_a_response_that_does_not_finish(live):
    rec, gate = Recorder(), Deferred()
    server = await live(make_app(stream=Gated.as_app(gate=gate, rec=rec, stream=True)),
                        http_response_timeout=0.2)
    conn = await raw_connect(server.port)
    with captured_log() as events:
        conn.write(http_request("/stream"))
        raw = await conn.closed(TIMEOUT)
        assert await rec.wait(1) == ["disconnect"]
    status, headers = head_of(raw)
    assert (status, headers[b"content-type"]) == (200, [b"text/event-stream"])
    body = raw.partition(b"\r\n\r\n")[2]
    assert b"data: 1" in body
    assert not body.endswith(b"0\r\n\r\n")  # cut off: no last chunk, the client can tell
    assert any("cut off" in e.get("log_format", "") and e.get("path") == "/stream"
               for e in events)
    gate.callback(None)
    assert await rec.wait(2) == ["disconnect", "late send"]


@pytest_twisted.ensureDeferred
async def test_http_timeout_applies_to_resources_and_not_to_builtins_or_sockets(live):
    server = await live(make_app(never=Never(), hello=Hello.as_app()),
                        http_response_timeout=0.2)
    with captured_log():
        status, headers, body = await get(server.port, "/never")
    assert (status, body) == (503, b"Service Unavailable\n")
    assert b"content-encoding" not in headers and b"set-cookie" not in headers
    status, _, body = await get(server.port, "/hello")
    assert (status, body) == (200, b"hello")
    status, _, _ = await get(server.port, "/healthz")
    assert status == 200


def test_http_timeout_on_a_clock():
    """On the site's clock: nothing at 4.9 s of 5, 503 at 5; an answer in time is
    untouched and leaves no timer behind; a WebSocket outlives the HTTP deadline."""
    clock = Clock()
    config = ServerConfig(http_response_timeout=5, connect_timeout=0)
    rec, gate = Recorder(), Deferred()
    comm = HttpCommunicator(make_app(hang=Gated.as_app(gate=gate, rec=rec)), "GET", "/hang",
                            clock=clock, config=config)
    response = comm.get_response(timeout=None)
    clock.advance(4.9)
    assert not response.called and rec.events == []
    with captured_log():
        clock.advance(0.1)
    assert response.result["status"] == 503
    assert rec.events == ["disconnect"]
    gate.callback(None)
    assert rec.events == ["disconnect", "late send"]
    assert clock.getDelayedCalls() == []

    comm = HttpCommunicator(make_app(hello=Hello.as_app()), "GET", "/hello", clock=clock,
                            config=config)
    response = comm.get_response(timeout=None)
    assert response.result["status"] == 200
    assert clock.getDelayedCalls() == []  # cancelled when the response finished

    ws = WebsocketCommunicator(make_app(), "/echo", clock=clock, config=config)
    connected = ws.connect(timeout=None)
    assert connected.result == (True, None)
    clock.advance(10)
    ws.send_to(text_data="still here")
    assert ws.receive_from().result == "still here"


# -- --proxy-headers-host/-port -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_real_ip_header_from_a_trusted_peer(live):
    server = await live(make_app(client=Client.as_app()), proxy_headers=True,
                        proxy_headers_host="X-Real-IP", proxy_headers_port="X-Real-Port")
    port = server.port

    async def client_of(*headers: tuple[bytes, bytes]) -> list[Any]:
        status, _, body = await get(port, "/client", list(headers))
        assert status == 200
        return list(json.loads(body))

    assert await client_of((b"X-Real-IP", b"203.0.113.7")) == ["203.0.113.7", 0]
    assert await client_of((b"X-Real-IP", b" 2001:db8::7 "), (b"X-Real-Port", b"4444")) == [
        "2001:db8::7", 4444]
    # A comma list is walked from the right, past trusted addresses, as X-Forwarded-For is.
    assert await client_of((b"X-Real-IP", b"198.51.100.1, 203.0.113.9, 127.0.0.1")) == [
        "203.0.113.9", 0]
    # X-Forwarded-For is not the address header any more.
    peer = await client_of((b"X-Forwarded-For", b"203.0.113.7"))
    assert peer[0] == "127.0.0.1"
    # Garbage is ignored: the client stays the peer; a bad port is no port.
    for value in (b"not-an-ip", b"", b"203.0.113.7:80", b"\xb2", b"999.1.1.1"):
        assert (await client_of((b"X-Real-IP", value)))[0] == "127.0.0.1", value
    assert await client_of((b"X-Real-IP", b"203.0.113.7"), (b"X-Real-Port", b"\xb2")) == [
        "203.0.113.7", 0]

    # The WebSocket scope, and --max-connections-per-ip counting the result.
    def socket_client(value: str) -> list[Any]:
        with connect(server.ws_url("/client"), open_timeout=5, proxy=None,
                     additional_headers={"X-Real-IP": value}) as ws:
            return list(json.loads(ws.recv(timeout=5)))

    assert await in_thread(socket_client, "192.0.2.44") == ["192.0.2.44", 0]


@pytest_twisted.ensureDeferred
async def test_per_ip_limit_uses_the_real_ip_header(live):
    server = await live(make_app(), proxy_headers=True, proxy_headers_host="X-Real-IP",
                        max_connections_per_ip=1)
    first = await ws_open(server.port, extra=[(b"X-Real-IP", b"192.0.2.1")])
    other = await ws_open(server.port, extra=[(b"X-Real-IP", b"192.0.2.2")])
    again = await ws_open(server.port, extra=[(b"X-Real-IP", b"192.0.2.1")])
    assert head_of(first.data)[0] == 101
    assert head_of(other.data)[0] == 101
    assert head_of(again.data)[0] == 429
    for conn in (first, other, again):
        conn.abort()


@pytest_twisted.ensureDeferred
async def test_real_ip_header_from_an_untrusted_peer_is_ignored(live):
    server = await live(make_app(client=Client.as_app()), proxy_headers=True,
                        proxy_headers_host="X-Real-IP", trusted_proxies=("10.0.0.0/8",))
    _, _, body = await get(server.port, "/client", [(b"X-Real-IP", b"203.0.113.7")])
    assert json.loads(body)[0] == "127.0.0.1"


# -- --root-path-header ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_proxys_root_path_header_counts_only_when_named(live):
    """A proxy passes its client's headers on unless told otherwise: with --proxy-headers
    alone a trusted peer's Daphne-Root-Path stays an ordinary header (a client behind the
    proxy would set root_path: routes under another prefix than the proxy's rules see);
    --root-path-header names the header the proxy sets."""
    app = make_app(root=RootPath.as_app())
    plain = await live(app, proxy_headers=True)
    status, _, body = await get(plain.port, "/root", [(b"Daphne-Root-Path", b"/app")])
    assert status == 200
    assert json.loads(body) == ["", ["host", "connection", "daphne-root-path"]]
    conn = await ws_open(plain.port, "/app/client", extra=[(b"Daphne-Root-Path", b"/app")])
    assert head_of(conn.data)[0] == 404  # no root_path taken: no route for /app/client
    conn.abort()

    named = await live(app, proxy_headers=True, root_path_header="Daphne-Root-Path")
    status, _, body = await get(named.port, "/app/root", [(b"Daphne-Root-Path", b"/app/")])
    assert (status, json.loads(body)) == (200, ["/app", ["host", "connection"]])
    conn = await ws_open(named.port, "/app/client", extra=[(b"Daphne-Root-Path", b"/app")])
    assert head_of(conn.data)[0] == 101
    conn.abort()
    status, _, _ = await get(named.port, "/root", [(b"Daphne-Root-Path", b"/%2F%2Fevil")])
    assert status == 400
    # Another name (X-Script-Name): Daphne-Root-Path is then an ordinary header.
    other = await live(app, proxy_headers=True, root_path_header="X-Script-Name")
    _, _, body = await get(other.port, "/p/root", [(b"X-Script-Name", b"/p"),
                                                   (b"Daphne-Root-Path", b"/app")])
    assert json.loads(body) == ["/p", ["host", "connection", "daphne-root-path"]]


# -- -v/--verbosity -------------------------------------------------------------------------


def _events(verbosity: int) -> list[str]:
    """What a twistd-like start of logging writes at ``verbosity``: lines logged before it
    began (replayed) and after, a print, and a relayed worker line."""
    from twisted.logger import Logger

    publisher = LogPublisher()
    beginner = LogBeginner(publisher, errorStream=_Sink(), stdio=_Stdio(),
                           warningsModule=_Warnings())
    filter_log(verbosity, beginner)
    seen: list[str] = []
    log = Logger(namespace="realtime.service", observer=publisher)
    log.debug("before debug")
    log.info("before info")
    beginner.beginLoggingTo([lambda event: seen.append(event["log_format"])],
                            redirectStandardIO=False)
    log.debug("debug")
    log.info("info")
    log.warn("warn")
    log.error("error")
    Logger(namespace="stdout", observer=publisher).info("a print")
    Logger(namespace=RELAY_NAMESPACE, observer=publisher).info("worker 1: relayed")
    return seen


class _Sink:
    def write(self, data: str) -> None:
        pass

    def flush(self) -> None:
        pass


class _Stdio:
    stdout = stderr = _Sink()


class _Warnings:
    showwarning = staticmethod(lambda *a, **k: None)


@pytest.mark.parametrize(("verbosity", "expected"), [
    (0, ["warn", "error", "a print", "worker 1: relayed"]),
    (1, ["before info", "info", "warn", "error", "a print", "worker 1: relayed"]),
    (2, ["before debug", "before info", "debug", "info", "warn", "error", "a print",
         "worker 1: relayed"]),
    (3, ["before debug", "before info", "debug", "info", "warn", "error", "a print",
         "worker 1: relayed"]),
])
def test_verbosity_filters_what_logging_begins_to(verbosity, expected):
    assert _events(verbosity) == expected


def test_verbosity_keeps_events_without_a_level():
    kept: list[Any] = []
    observer = FilteringLogObserver(kept.append, [Verbosity(0)])
    observer({"log_format": "no level"})
    observer({"log_format": "info", "log_level": LogLevel.info, "log_namespace": "a"})
    assert [e["log_format"] for e in kept] == ["no level"]
    with pytest.raises(ValueError):
        Verbosity(4)


def _wait_http(port: int, target: str) -> tuple[int, bytes]:
    """GET ``target`` once the server answers (it logs no ``listening on`` at -v 0)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            conn.request("GET", target)
            response = conn.getresponse()
            return response.status, response.read()
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            conn.close()


def _run_logging(*args: str, env: dict[str, str] | None = None,
                 line: str = "options-app warn line") -> str:
    """Start twistd with ``args`` on a free port (``--port 0`` cannot be used: ``-v 0``
    hides the line that says which), GET /log, wait for ``line``, stop; the output once it
    has exited."""
    for _attempt in range(3):
        port = free_port()
        server = start(twistd("--app", OPTIONS_APP, "--port", str(port), *args),
                       env={**ENV, **(env or {})}, listeners=0)
        try:
            assert _wait_http(port, "/log") == (200, b"logged")
            server.wait_for(line)
        except ServerFailed:
            if "Address already in use" in server.output():
                continue
            raise
        finally:
            result = server.stop()
        assert result.returncode == 0, result.output
        return result.output
    raise AssertionError("no free port")


def test_verbosity_0_keeps_warnings_only_under_twistd():
    output = _run_logging("-v", "0")
    assert "options-app warn line" in output
    for hidden in ("options-app info line", "options-app debug line", "listening on",
                   "starting up"):
        assert hidden not in output


def test_verbosity_2_from_the_environment_shows_debug_and_1_does_not():
    output = _run_logging(env={"REALTIME_VERBOSITY": "2"})
    for shown in ("options-app debug line", "options-app info line", "options-app warn line",
                  "listening on"):
        assert shown in output
    output = _run_logging()
    assert "options-app info line" in output and "listening on" in output
    assert "options-app debug line" not in output


def test_verbosity_3_turns_on_asyncio_debug_mode():
    with start(twistd("--app", OPTIONS_APP, "--port", "0", "-v", "3", reactor="asyncio"),
               env=ENV) as server:
        assert _wait_http(server.port, "/block") == (200, b"blocked")
        server.wait_for(re.compile(r"Executing .* took 0\.\d+ seconds"))


def test_verbosity_0_under_workers_relays_the_workers_warnings(redis_server):
    """Workers get -v 0 with the rest of the options; the supervisor relays their lines
    whatever its own level, and hides its own info lines."""
    if not redis_server.ping():  # another test killed the shared server
        redis_server.kill()
        redis_server.start()
    output = _run_logging("-v", "0", "--workers", "2", "--layer", redis_server.url,
                          "--shutdown-timeout", "5",
                          line=r"worker [12]: .*options-app warn line")
    for hidden in ("options-app info line", "workers ready", "started (pid",
                   "listening on", "serving"):
        assert hidden not in output, hidden
