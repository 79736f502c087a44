"""The bridge end to end, WebSocket side: echo, refusals as real HTTP responses, accept
headers, subprotocols, close codes and reasons, the scope. Real server, real clients.

HTTP routes are in ``test_bridge_http.py``; ordering, threads, limits and drain in
``test_bridge_limits.py``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from realtime import (
    AcceptConnection,
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    BaseMiddleware,
    ConnectionClosed,
    DenyConnection,
    JsonWebsocketConsumer,
    ProtocolTypeRouter,
    Refuse,
    StopConsumer,
    URLRouter,
    WebsocketConsumer,
    path,
    re_path,
)
from realtime.examples.bench import application as bench_app
from tests.clients import (
    Recorder,
    captured_log,
    client_frame,
    closed_by_server,
    handshake,
    in_thread,
    parse_response,
    raw_connect,
    raw_exchange,
    ws_open,
)

# -- helpers ---------------------------------------------------------------------------------


def ws_app(consumer: Any, route: str = "t") -> ProtocolTypeRouter:
    """An application with one WebSocket route."""
    return ProtocolTypeRouter({"websocket": URLRouter([path(route, consumer)])})


async def refused(port: int, path: str = "/t", extra: Any = None) -> tuple[int, dict, bytes]:
    """Handshake by hand; the server must answer with a complete HTTP response and close."""
    raw = await raw_exchange(port, handshake(path, extra=extra), timeout=5)
    return parse_response(raw)


def client_close(url: str, *messages: str | bytes, **kwargs: Any) -> tuple[list[Any], Any]:
    """Connect with ``websockets``, send ``messages``, read until the server closes: returns
    (messages received, the server's close frame)."""
    got: list[Any] = []
    with connect(url, open_timeout=5, close_timeout=2, **kwargs) as ws:
        for message in messages:
            ws.send(message)
        try:
            while True:
                got.append(ws.recv(timeout=5))
        except ClientClosed as exc:
            return got, exc.rcvd
    raise AssertionError("unreachable")


def status_of(exc: InvalidStatus) -> int:
    return exc.response.status_code


# -- echo ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_echo_text_bytes_and_many_messages(live):
    server = await live(bench_app)

    def client():
        with connect(server.ws_url("/echo")) as ws:
            out = []
            for i in range(50):
                ws.send(f"m{i}" if i % 2 else f"m{i}".encode())
            for _ in range(50):
                out.append(ws.recv(timeout=5))
            big = "x" * 200_000
            ws.send(big)
            out.append(ws.recv(timeout=5) == big)
        return out

    out = await in_thread(client)
    assert out[:50] == [f"m{i}" if i % 2 else f"m{i}".encode() for i in range(50)]
    assert out[50] is True


# The Channels tutorial consumer (docs "Tutorial Part 2"), ported by changing imports only.
class TutorialChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        await self.accept()

    async def disconnect(self, close_code):
        pass

    async def receive(self, text_data):
        text_data_json = json.loads(text_data)
        message = text_data_json["message"]
        await self.send(text_data=json.dumps({"message": message, "room": self.room_name}))


@pytest_twisted.ensureDeferred
async def test_channels_tutorial_consumer_ports_by_changing_imports(live):
    websocket_urlpatterns = [
        re_path(r"ws/chat/(?P<room_name>\w+)/$", TutorialChatConsumer.as_asgi()),
    ]
    server = await live(ProtocolTypeRouter({"websocket": URLRouter(websocket_urlpatterns)}))

    def client():
        with connect(server.ws_url("/ws/chat/lobby/")) as ws:
            ws.send(json.dumps({"message": "hi"}))
            return json.loads(ws.recv(timeout=5))

    assert await in_thread(client) == {"message": "hi", "room": "lobby"}


class OneArgReceive(AsyncWebsocketConsumer):
    """Channels' documented signature: ``receive(self, text_data)``."""

    async def receive(self, text_data):
        await self.send(text_data=text_data.upper())


@pytest_twisted.ensureDeferred
async def test_receive_with_channels_one_argument_signature(live):
    server = await live(ws_app(OneArgReceive.as_asgi()))

    def client():
        with connect(server.ws_url("/t")) as ws:
            ws.send("hi")
            return ws.recv(timeout=5)

    assert await in_thread(client) == "HI"


class TutorialLikeConsumer(AsyncWebsocketConsumer):
    """The tutorial consumer with the keyword signature and without url_route."""

    async def connect(self):
        self.room = "lobby"
        await self.accept()

    async def disconnect(self, close_code):
        pass

    async def receive(self, text_data=None, bytes_data=None):
        message = json.loads(text_data)["message"]
        await self.send(text_data=json.dumps({"message": message, "room": self.room}))


@pytest_twisted.ensureDeferred
async def test_async_consumer_connect_receive_disconnect(live):
    server = await live(ProtocolTypeRouter({"websocket": URLRouter([
        re_path(r"ws/chat/(?P<room_name>\w+)/$", TutorialLikeConsumer.as_asgi()),
    ])}))

    def client():
        with connect(server.ws_url("/ws/chat/lobby/")) as ws:
            ws.send(json.dumps({"message": "hi"}))
            return json.loads(ws.recv(timeout=5))

    assert await in_thread(client) == {"message": "hi", "room": "lobby"}


# -- refusals --------------------------------------------------------------------------------


class RefusingMiddleware(BaseMiddleware):
    """Written with the hooks: refuses without the right token."""

    async def resolve_scope(self, scope):
        token = dict(scope["headers"]).get(b"x-token")
        if token != b"good":
            raise Refuse(401, [(b"X-Reason", b"no token")], b"who are you?\n")


class DocumentedMiddleware(BaseMiddleware):
    """Written as DESIGN.md documents it: ``return await self.inner(scope)``."""

    async def __call__(self, scope):
        token = dict(scope["headers"]).get(b"x-token")
        if token != b"good":
            raise Refuse(401, [(b"X-Reason", b"no token")], b"who are you?\n")
        scope = dict(scope, user="alice")
        return await self.inner(scope)


class Accepting(WebsocketConsumer):
    def receive(self, text_data=None, bytes_data=None):
        self.send(text_data=str(self.scope.get("user", "ok")))


class UserMiddleware(BaseMiddleware):
    def populate_scope(self, scope):
        scope["user"] = "bob"


@pytest_twisted.ensureDeferred
async def test_middleware_scope_changes_reach_the_consumer(live):
    server = await live(ProtocolTypeRouter({
        "websocket": UserMiddleware(URLRouter([path("t", Accepting.as_app())])),
    }))

    def client():
        with connect(server.ws_url("/t")) as ws:
            ws.send("x")
            return ws.recv(timeout=5)

    assert await in_thread(client) == "bob"


@pytest_twisted.ensureDeferred
async def test_middleware_written_as_documented(live):
    server = await live(ProtocolTypeRouter({
        "websocket": DocumentedMiddleware(URLRouter([path("t", Accepting.as_app())])),
    }))
    status, _, body = await refused(server.port)
    assert status == 401
    assert body == b"who are you?\n"

    def client():
        with connect(server.ws_url("/t"), additional_headers={"X-Token": "good"}) as ws:
            ws.send("x")
            return ws.recv(timeout=5)

    assert await in_thread(client) == "alice"


@pytest_twisted.ensureDeferred
async def test_refuse_from_middleware_is_a_real_response(live):
    server = await live(ProtocolTypeRouter({
        "websocket": RefusingMiddleware(URLRouter([path("t", Accepting.as_app())])),
    }))
    status, headers, body = await refused(server.port)
    assert status == 401
    assert headers[b"www-authenticate"] == [b'Bearer realm="realtime"']
    assert headers[b"x-reason"] == [b"no token"]
    assert headers[b"content-length"] == [str(len(body)).encode()]
    assert body == b"who are you?\n"
    assert b"upgrade" not in headers

    def client():
        with connect(server.ws_url("/t"), additional_headers={"X-Token": "good"}) as ws:
            ws.send("x")
            return ws.recv(timeout=5)

    assert await in_thread(client) == "ok"


class ConnectRefuses(WebsocketConsumer):
    refusal: Any = None
    rec: Any = None

    def connect(self):
        raise self.refusal

    def disconnect(self, code):
        self.rec.add(code)


@pytest.mark.parametrize(
    ("refusal", "status", "header"),
    [
        (Refuse(429, body=b"slow down"), 429, b"retry-after"),
        (Refuse(503), 503, b"retry-after"),
        (Refuse(401), 401, b"www-authenticate"),
        (DenyConnection(), 403, None),
        (Refuse(418, [(b"X-Teapot", b"yes")]), 418, b"x-teapot"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_refuse_from_connect(live, refusal, status, header):
    rec = Recorder()
    server = await live(ws_app(ConnectRefuses.as_app(refusal=refusal, rec=rec)))
    got_status, headers, body = await refused(server.port)
    assert got_status == status
    if header is not None:
        assert headers[header]
    assert body == (refusal.body or refusal.phrase + b"\n")
    assert headers[b"connection"] == [b"close"]
    # the consumer is told the socket never opened
    assert await rec.wait(1) == [1006]


@pytest_twisted.ensureDeferred
async def test_refusal_seen_by_a_real_client(live):
    server = await live(ws_app(ConnectRefuses.as_app(refusal=DenyConnection(), rec=Recorder())))

    def client():
        try:
            with connect(server.ws_url("/t"), open_timeout=5):
                return None
        except InvalidStatus as exc:
            return status_of(exc)

    assert await in_thread(client) == 403


class CloseBeforeAccept(AsyncWebsocketConsumer):
    async def connect(self):
        await self.close()


@pytest_twisted.ensureDeferred
async def test_close_before_accept_is_403(live):
    server = await live(ws_app(CloseBeforeAccept.as_app()))
    status, _, body = await refused(server.port)
    assert status == 403
    assert body == b"Forbidden\n"


class ConnectRaises(WebsocketConsumer):
    def connect(self):
        raise RuntimeError("secret database password in the message")


@pytest_twisted.ensureDeferred
async def test_exception_in_connect_is_500_without_its_text_and_logged(live):
    server = await live(ws_app(ConnectRaises.as_app()))
    with captured_log() as events:
        status, _, body = await refused(server.port)
    assert status == 500
    assert body == b"Internal Server Error\n"
    failures = [e for e in events if "log_failure" in e]
    assert any(isinstance(e["log_failure"].value, RuntimeError) for e in failures)


@pytest_twisted.ensureDeferred
async def test_exception_during_routing_is_500(live):
    def broken_app(scope):
        raise KeyError("secret routing detail")

    server = await live(broken_app)
    with captured_log() as events:
        status, _, body = await refused(server.port)
    assert status == 500
    assert b"secret" not in body
    assert any(isinstance(e.get("log_failure") and e["log_failure"].value, KeyError)
               for e in events)


@pytest_twisted.ensureDeferred
async def test_async_middleware_that_raises_is_500(live):
    class Broken(BaseMiddleware):
        async def resolve_scope(self, scope):
            raise ZeroDivisionError("oops")

    server = await live(ProtocolTypeRouter({"websocket": Broken(bench_app)}))
    status, _, body = await refused(server.port, "/echo")
    assert status == 500
    assert b"oops" not in body


@pytest_twisted.ensureDeferred
async def test_no_route_is_404(live):
    server = await live(bench_app)
    status, _, body = await refused(server.port, "/nowhere")
    assert status == 404
    assert body == b"Not Found\n"


@pytest_twisted.ensureDeferred
async def test_app_returning_no_consumer_is_500(live):
    server = await live(lambda scope: object())
    status, _, _ = await refused(server.port, "/x")
    assert status == 500


class HeaderInjector(AsyncWebsocketConsumer):
    rec: Any = None
    where = "accept"

    async def connect(self):
        try:
            if self.where == "accept":
                await self.accept(headers=[(b"x-a", b"1\r\nInjected: yes")])
            elif self.where == "accept-name":
                await self.accept(headers=[(b"x-a\r\nInjected", b"yes")])
            else:
                raise Refuse(403, [(b"x-a", b"1\nInjected: yes")])
        except ValueError as exc:
            self.rec.add(type(exc).__name__)
            raise


@pytest.mark.parametrize("where", ["accept", "accept-name", "refuse"])
@pytest_twisted.ensureDeferred
async def test_crlf_in_headers_is_impossible(live, where):
    rec = Recorder()
    server = await live(ws_app(HeaderInjector.as_app(rec=rec, where=where)))
    raw = await raw_exchange(server.port, handshake("/t"), timeout=5)
    assert await rec.wait(1) == ["ValueError"]
    status, _, _ = parse_response(raw)
    assert status == 500
    assert b"injected" not in raw.lower()


# -- accept: headers, subprotocols -----------------------------------------------------------


class WithCookie(WebsocketConsumer):
    def connect(self):
        self.accept(headers=[(b"set-cookie", b"a=b"), (b"X-Extra", b"1")])


@pytest_twisted.ensureDeferred
async def test_accept_headers_reach_the_client(live):
    server = await live(ws_app(WithCookie.as_app()))

    def client():
        with connect(server.ws_url("/t")) as ws:
            return ws.response.headers.get_all("Set-Cookie"), ws.response.headers["X-Extra"]

    assert await in_thread(client) == (["a=b"], "1")


class PicksSubprotocol(WebsocketConsumer):
    choice = "second"

    def connect(self):
        self.accept(subprotocol=self.choice)

    def receive(self, text_data=None, bytes_data=None):
        self.send(text_data=json.dumps(self.scope["subprotocols"]))


@pytest_twisted.ensureDeferred
async def test_subprotocol_choice(live):
    server = await live(ws_app(PicksSubprotocol.as_app()))

    def client():
        with connect(server.ws_url("/t"), subprotocols=["first", "second"]) as ws:
            ws.send("?")
            return ws.subprotocol, json.loads(ws.recv(timeout=5))

    assert await in_thread(client) == ("second", ["first", "second"])


@pytest_twisted.ensureDeferred
async def test_subprotocol_not_offered_is_500(live):
    server = await live(ws_app(PicksSubprotocol.as_app(choice="third")))
    with captured_log() as events:
        status, headers, _ = await refused(
            server.port, extra=[(b"Sec-WebSocket-Protocol", b"first, second")])
    assert status == 500
    assert b"sec-websocket-protocol" not in headers
    assert any(isinstance(e.get("log_failure") and e["log_failure"].value, ValueError)
               for e in events)


# -- closing ---------------------------------------------------------------------------------


class Closer(AsyncWebsocketConsumer):
    """Each text message is a command."""

    rec: Any = None

    async def receive(self, text_data=None, bytes_data=None):
        cmd, _, arg = text_data.partition(" ")
        if cmd == "close":
            await self.close(int(arg) if arg else None)
        elif cmd == "reason":
            await self.close(4001, arg * 100)
        elif cmd == "raise":
            raise RuntimeError("boom")
        elif cmd == "send-after-close":
            await self.close(4002)
            try:
                await self.send(text_data="too late")
            except ConnectionClosed:
                self.rec.add("ConnectionClosed")
        elif cmd == "send-and-close":
            await self.send(text_data="bye", close=4003)

    async def disconnect(self, code):
        if self.rec is not None:
            self.rec.add(("disconnect", code))
        try:
            await self.send(text_data="from disconnect")
        except ConnectionClosed:
            if self.rec is not None:
                self.rec.add("ConnectionClosed in disconnect")


@pytest.mark.parametrize(
    ("command", "code"),
    [("close 4000", 4000), ("close", 1000), ("close 3000", 3000), ("close 1001", 1011),
     ("close 1006", 1011), ("raise", 1011)],
)
@pytest_twisted.ensureDeferred
async def test_close_codes(live, command, code):
    rec = Recorder()
    server = await live(ws_app(Closer.as_app(rec=rec)))
    _, frame = await in_thread(client_close, server.ws_url("/t"), command)
    assert frame is not None
    assert frame.code == code
    assert (await rec.wait(1))[0] == ("disconnect", code)


@pytest_twisted.ensureDeferred
async def test_close_reason_reaches_the_client_cut_to_123_bytes(live):
    server = await live(ws_app(Closer.as_app()))
    _, frame = await in_thread(client_close, server.ws_url("/t"), "reason é")
    assert frame.code == 4001
    # "é" is two bytes: 61 whole characters fit in 123 bytes
    assert frame.reason == "é" * 61
    assert len(frame.reason.encode()) == 122


@pytest_twisted.ensureDeferred
async def test_send_after_close_raises_connection_closed(live):
    rec = Recorder()
    server = await live(ws_app(Closer.as_app(rec=rec)))
    got, frame = await in_thread(client_close, server.ws_url("/t"), "send-after-close")
    assert frame.code == 4002
    assert got == []
    events = await rec.wait(lambda ev: "ConnectionClosed in disconnect" in ev)
    assert events == ["ConnectionClosed", ("disconnect", 4002), "ConnectionClosed in disconnect"]


@pytest_twisted.ensureDeferred
async def test_send_with_close(live):
    rec = Recorder()
    server = await live(ws_app(Closer.as_app(rec=rec)))
    got, frame = await in_thread(client_close, server.ws_url("/t"), "send-and-close")
    assert got == ["bye"]
    assert frame.code == 4003
    assert (await rec.wait(1))[0] == ("disconnect", 4003)


@pytest_twisted.ensureDeferred
async def test_client_close_code_reaches_disconnect(live):
    rec = Recorder()
    server = await live(ws_app(Closer.as_app(rec=rec)))
    conn = await ws_open(server.port, "/t")
    assert conn.response()[0] == 101
    conn.send_close(4321)
    assert (await rec.wait(1))[0] == ("disconnect", 4321)
    reply = await conn.wait_close_frame()
    assert reply is not None  # the server answers the close handshake
    await conn.closed(timeout=3)
    assert not server.site.connections


@pytest_twisted.ensureDeferred
async def test_client_vanishing_gives_disconnect_1006(live):
    rec = Recorder()
    server = await live(ws_app(Closer.as_app(rec=rec)))
    conn = await ws_open(server.port, "/t")
    assert conn.response()[0] == 101
    conn.abort()
    assert (await rec.wait(1))[0] == ("disconnect", 1006)


class SendsBeforeAccept(WebsocketConsumer):
    def connect(self):
        self.send(text_data="hello before accept")


@pytest_twisted.ensureDeferred
async def test_send_before_accept_accepts(live):
    server = await live(ws_app(SendsBeforeAccept.as_app()))

    def client():
        with connect(server.ws_url("/t")) as ws:
            return ws.recv(timeout=5)

    assert await in_thread(client) == "hello before accept"


class SyncJson(JsonWebsocketConsumer):
    def receive_json(self, content, **kwargs):
        self.send_json({"got": content})


class AsyncJson(AsyncJsonWebsocketConsumer):
    async def receive_json(self, content, **kwargs):
        await self.send_json({"got": content})


@pytest.mark.parametrize("consumer", [SyncJson, AsyncJson])
@pytest.mark.parametrize(
    ("message", "code"), [(b"\x00binary", 1003), ("{not json", 1007)]
)
@pytest_twisted.ensureDeferred
async def test_json_consumer_bad_input(live, consumer, message, code):
    server = await live(ws_app(consumer.as_app()))
    got, frame = await in_thread(client_close, server.ws_url("/t"), '{"a": 1}', message)
    assert got == ['{"got": {"a": 1}}']
    assert frame.code == code


@pytest.mark.parametrize(
    ("config", "message"),
    [({"max_message_size": 1000}, "y" * 1001),
     ({"max_frame_size": 1000}, "y" * 1001)],
)
@pytest_twisted.ensureDeferred
async def test_too_big_is_1009_seen_by_the_client(live, config, message):
    server = await live(bench_app, **config)

    def client():
        return client_close(server.ws_url("/echo"), "y" * 1000, message,
                            max_size=None, compression=None)

    got, frame = await in_thread(client)
    assert got == ["y" * 1000]
    assert frame is not None
    assert frame.code == 1009


@pytest_twisted.ensureDeferred
async def test_too_big_across_fragments_is_1009(live):
    server = await live(bench_app, max_message_size=1000)
    conn = await ws_open(server.port)
    conn.send_frame(0x1, b"a" * 600, fin=False)
    conn.send_frame(0x0, b"a" * 600, fin=True)
    close = await conn.wait_close_frame()
    assert close is not None and close[0] == 1009
    assert not any(op == 0x1 for op, _ in conn.frames())


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_text_is_1007(live):
    server = await live(bench_app)
    conn = await ws_open(server.port)
    conn.send_text("fine")
    conn.send_frame(0x1, b"bad \xff\xfe")
    close = await conn.wait_close_frame()
    assert close is not None and close[0] == 1007
    assert [p for op, p in conn.frames() if op == 0x1] == [b"fine"]


@pytest_twisted.ensureDeferred
async def test_protocol_error_does_not_keep_a_silent_peer(live):
    server = await live(bench_app, close_timeout=0.2)
    conn = await ws_open(server.port)
    conn.send_frame(0x1, b"\xff")
    close = await conn.wait_close_frame()
    assert close is not None and close[0] == 1007
    # we never answer the close frame: the server drops us at its close deadline
    assert await closed_by_server(conn, 3)
    assert not server.site.connections


@pytest_twisted.ensureDeferred
async def test_app_close_drops_a_silent_peer_after_close_timeout(live):
    rec = Recorder()
    server = await live(ws_app(Closer.as_app(rec=rec)), close_timeout=0.2)
    conn = await ws_open(server.port, "/t")
    conn.send_text("close 4000")
    close = await conn.wait_close_frame()
    assert close is not None and close[0] == 4000
    assert await closed_by_server(conn, 3)  # we never answer: dropped at the deadline
    assert (await rec.wait(1))[0] == ("disconnect", 4000)
    assert not server.site.connections


# -- scope -----------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, uuid.UUID):
        return f"uuid:{value}"
    return value


class ScopeReporter(WebsocketConsumer):
    """Sends its scope (as JSON) once open, with its ``tag``."""

    tag = ""

    def connect(self):
        offered = self.scope["subprotocols"]
        self.accept(subprotocol=offered[0] if offered else None)
        keys = ("type", "path", "raw_path", "root_path", "query_string", "headers", "client",
                "server", "scheme", "subprotocols", "url_route", "path_remaining")
        report = {k: jsonable(self.scope.get(k)) for k in keys}
        report["tag"] = self.tag
        self.send(text_data=json.dumps(report))


async def scope_of(port: int, path: str, extra: Any = None) -> dict[str, Any]:
    conn = await ws_open(port, path, extra=extra)
    status = conn.response()[0]
    assert status == 101, conn.data
    frames = await conn.wait_frames(1)
    conn.send_close()
    return json.loads(frames[0][1])


@pytest_twisted.ensureDeferred
async def test_scope(live):
    server = await live(ws_app(ScopeReporter.as_app(), route="a b/é"))
    scope = await scope_of(
        server.port, "/a%20b/%C3%A9?x=1&y=%20",
        extra=[(b"X-Custom", b"Value"), (b"Sec-WebSocket-Protocol", b"chat, json")],
    )
    assert scope["type"] == "websocket"
    assert scope["path"] == "/a b/é"
    assert scope["raw_path"] == "/a%20b/%C3%A9"
    assert scope["root_path"] == ""
    assert scope["query_string"] == "x=1&y=%20"
    assert ["x-custom", "Value"] in scope["headers"]
    assert ["host", "127.0.0.1"] in scope["headers"]
    assert all(name == name.lower() for name, _ in scope["headers"])
    assert scope["client"][0] == "127.0.0.1" and scope["client"][1] > 0
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["scheme"] == "ws"
    assert scope["subprotocols"] == ["chat", "json"]


@pytest_twisted.ensureDeferred
async def test_root_path(live):
    server = await live(ws_app(ScopeReporter.as_app(), route="echo"), root_path="/ws")
    scope = await scope_of(server.port, "/ws/echo")
    assert scope["root_path"] == "/ws"
    assert scope["path"] == "/ws/echo"
    status, _, _ = await refused(server.port, "/echo")
    assert status == 404
    status, _, _ = await refused(server.port, "/other/echo")
    assert status == 404


class FourDigit:
    regex = "[0-9]{4}"

    def to_python(self, value):
        return int(value)

    def to_url(self, value):
        return f"{value:04d}"


@pytest.fixture
def nested_app(monkeypatch):
    """Nested URLRouters with every converter; each leaf reports its tag and scope."""
    from realtime import routing

    monkeypatch.setattr(routing, "_CONVERTERS", dict(routing._CONVERTERS))
    routing.register_converter(FourDigit, "yyyy")

    def leaf(tag):
        return ScopeReporter.as_app(tag=tag)

    inner = URLRouter([
        path("msg/<int:n>/<slug:s>/<uuid:u>", leaf("msg"), kwargs={"extra": True}),
        re_path(r"^re/(\d+)/(\w+)$", leaf("re")),
        path("files/<path:rest>", leaf("files")),
        path("year/<yyyy:year>", leaf("year")),
    ])
    return ProtocolTypeRouter({"websocket": URLRouter([
        path("rooms/<str:room>/", inner),
        re_path(r"^v(?P<version>[0-9])/", URLRouter([path("plain", leaf("plain"))])),
        path("rooms/<str:room>/fallback", leaf("fallback")),
    ])})


@pytest_twisted.ensureDeferred
async def test_nested_routers_and_converters_route(live, nested_app):
    server = await live(nested_app)
    u = uuid.uuid4()
    for url, tag in [(f"/rooms/lobby/msg/42/a-b_c/{u}", "msg"), ("/rooms/r1/re/7/abc", "re"),
                     ("/rooms/r1/files/a/b/c.txt", "files"), ("/rooms/r1/year/2024", "year"),
                     ("/v2/plain", "plain"), ("/rooms/r1/fallback", "fallback")]:
        scope = await scope_of(server.port, url)
        assert scope["tag"] == tag, url
        assert scope["path"] == url
    for bad in ("/rooms/lobby/msg/x/a/b", "/rooms/lobby/msg/1/a%20b/c", "/rooms/r1/year/24",
                f"/rooms/lobby/msg/42/s/{u}/more", "/rooms/lobby", "/v22/plain",
                f"/rooms/lobby/msg/42/s/{str(u).upper()}"):
        status, _, _ = await refused(server.port, bad)
        assert status == 404, bad


@pytest_twisted.ensureDeferred
async def test_url_route_reaches_the_consumer(live, nested_app):
    server = await live(nested_app)
    u = uuid.uuid4()
    scope = await scope_of(server.port, f"/rooms/lobby/msg/42/a-b_c/{u}")
    assert scope["url_route"] == {
        "args": [], "kwargs": {"room": "lobby", "n": 42, "s": "a-b_c", "u": f"uuid:{u}",
                               "extra": True}}
    assert scope["path_remaining"] == ""
    scope = await scope_of(server.port, "/rooms/r1/re/7/abc")
    assert scope["url_route"] == {"args": ["7", "abc"], "kwargs": {"room": "r1"}}
    scope = await scope_of(server.port, "/rooms/r1/files/a/b/c.txt")
    assert scope["url_route"]["kwargs"] == {"room": "r1", "rest": "a/b/c.txt"}
    scope = await scope_of(server.port, "/rooms/r1/year/2024")
    assert scope["url_route"]["kwargs"] == {"room": "r1", "year": 2024}
    scope = await scope_of(server.port, "/v2/plain")
    assert scope["url_route"]["kwargs"] == {"version": "2"}


# -- Channels' other hooks -------------------------------------------------------------------


class Hooks(WebsocketConsumer):
    rec: Any = None

    def connect(self):
        if self.scope["query_string"] == b"stop":
            raise StopConsumer()
        raise AcceptConnection()

    def receive(self, text_data=None, bytes_data=None):
        if text_data == "stop":
            raise StopConsumer()
        self.send(text_data="ok")

    def disconnect(self, code):
        self.rec.add(code)


@pytest_twisted.ensureDeferred
async def test_accept_connection_and_stop_consumer(live):
    rec = Recorder()
    server = await live(ws_app(Hooks.as_app(rec=rec)))
    got, frame = await in_thread(client_close, server.ws_url("/t"), "hi", "stop")
    assert got == ["ok"]
    assert frame.code == 1000
    status, _, _ = await refused(server.port, "/t?stop")
    assert status == 403
    assert await rec.wait(2) == [1000, 1006]


class RawHandlers(WebsocketConsumer):
    rec: Any = None

    def websocket_connect(self, message):
        self.rec.add(message)
        self.accept()

    def websocket_receive(self, message):
        self.rec.add(message)
        self.send(text_data="raw")

    def websocket_disconnect(self, message):
        self.rec.add(message)


@pytest_twisted.ensureDeferred
async def test_raw_websocket_handlers_get_event_dicts(live):
    rec = Recorder()
    server = await live(ws_app(RawHandlers.as_app(rec=rec)))

    def client():
        with connect(server.ws_url("/t")) as ws:
            ws.send("a")
            ws.send(b"b")
            return [ws.recv(timeout=5), ws.recv(timeout=5)]

    assert await in_thread(client) == ["raw", "raw"]
    events = await rec.wait(4)
    assert events == [{"type": "websocket.connect"},
                      {"type": "websocket.receive", "text": "a"},
                      {"type": "websocket.receive", "bytes": b"b"},
                      {"type": "websocket.disconnect", "code": 1000}]


class LateAccept(AsyncWebsocketConsumer):
    gate: Any = None
    rec: Any = None

    async def connect(self):
        if self.rec is not None:
            self.rec.add("connect")
        if self.gate is not None:
            await self.gate
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data="echo:" + (text_data or bytes_data.decode()))


@pytest_twisted.ensureDeferred
async def test_frames_sent_with_the_handshake_are_not_lost(live):
    server = await live(ws_app(LateAccept.as_app()))
    conn = await raw_connect(server.port)
    # the handshake and two frames in one write: the frames arrive before accept()
    conn.write(handshake("/t") + client_frame(0x1, b"one") + client_frame(0x2, b"two"))
    frames = await conn.wait_frames(2)
    assert conn.data.startswith(b"HTTP/1.1 101 ")
    assert frames == [(0x1, b"echo:one"), (0x1, b"echo:two")]


@pytest_twisted.ensureDeferred
async def test_frames_sent_while_connect_runs_are_not_lost(live):
    gate, rec = Deferred(), Recorder()
    server = await live(ws_app(LateAccept.as_app(gate=gate, rec=rec)))
    conn = await raw_connect(server.port)
    conn.write(handshake("/t"))
    assert await rec.wait(1) == ["connect"]  # the request is parsed, connect() waits
    conn.send_text("early")
    conn.send_text("early2")
    gate.callback(None)
    frames = await conn.wait_frames(2)
    assert frames == [(0x1, b"echo:early"), (0x1, b"echo:early2")]


class BigSender(WebsocketConsumer):
    def receive(self, text_data=None, bytes_data=None):
        self.send(bytes_data=bytearray(b"z" * 300_000))


@pytest_twisted.ensureDeferred
async def test_sends_are_not_limited_by_max_message_size(live):
    server = await live(ws_app(BigSender.as_app()), max_message_size=1000, max_frame_size=1000)

    def client():
        with connect(server.ws_url("/t"), max_size=None) as ws:
            ws.send("go")
            return ws.recv(timeout=5)

    assert await in_thread(client) == b"z" * 300_000


@pytest_twisted.ensureDeferred
async def test_fragmented_message_and_client_ping(live):
    server = await live(bench_app)
    conn = await ws_open(server.port)
    conn.send_frame(0x1, b"frag", fin=False)
    conn.send_frame(0x9, b"are you there")  # a control frame between fragments
    conn.send_frame(0x0, b"men", fin=False)
    conn.send_frame(0x0, b"ted", fin=True)
    frames = await conn.wait_frames(2)
    assert (0xA, b"are you there") in frames
    assert (0x1, b"fragmented") in frames


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (handshake("/echo", method=b"POST"), 405),
        (handshake("/echo", version=b"8"), 426),
        (handshake("/echo", key=b"short"), 400),
        (handshake("/echo").replace(b"HTTP/1.1", b"HTTP/1.0", 1), 400),
        (handshake("/echo").replace(b"Connection: Upgrade", b"Connection: keep-alive"), 400),
        (handshake("/%ff"), 400),
    ],
    ids=["post", "version-8", "short-key", "http-1.0", "no-upgrade", "bad-path"],
)
@pytest_twisted.ensureDeferred
async def test_bad_handshakes_are_refused_before_the_application(live, request_bytes, status):
    called = Recorder()

    def app(scope):
        called.add(scope["path"])
        return bench_app(scope)

    server = await live(app)
    raw = await raw_exchange(server.port, request_bytes)
    got, headers, _ = parse_response(raw)
    assert got == status
    assert called.events == []
    if status == 405:
        assert headers[b"allow"] == [b"GET"]
