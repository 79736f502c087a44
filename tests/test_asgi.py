"""Raw ASGI applications mounted beside consumers (``realtime.asgi``), on a live server with
real clients, under the default reactor: apps that await only ``receive``/``send`` and
Deferreds. Django and Starlette (asyncio) are in tests/asyncio_reactor/test_asgi_apps.py."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from websockets.exceptions import ConnectionClosed as ClientSawClose
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from realtime import (
    AsyncHttpConsumer,
    AsyncWebsocketConsumer,
    BaseMiddleware,
    ProtocolTypeRouter,
    URLRouter,
    path,
    re_path,
)
from realtime.asgi import AsgiApp
from realtime.config import ServerConfig
from realtime.exceptions import ConnectionClosed
from realtime.testing import HttpCommunicator, WebsocketCommunicator, serve
from tests.clients import (
    captured_log,
    http_get,
    in_thread,
    later,
    raw_connect,
    raw_exchange,
    until,
)


class Echo(AsyncWebsocketConsumer):
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        await self.send(text_data="consumer: " + str(text_data))


seen: list[Any] = []


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, answers what it saw."""
    chunks, flags = [], []
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        chunks.append(message["body"])
        flags.append(message["more_body"])
        if not message["more_body"]:
            break
    body = b"".join(chunks)
    seen.append(scope)
    answer = json.dumps({
        "method": scope["method"], "path": scope["path"], "query": scope["query_string"].decode(),
        "asgi": scope["asgi"], "chunks": len(chunks), "more": flags,
        "sha": hashlib.sha256(body).hexdigest(), "size": len(body),
        "client": scope["client"][0], "type": scope["type"],
        "header": dict(scope["headers"]).get(b"x-test", b"").decode(),
    }).encode()
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/json"),
                            (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]})
    await send({"type": "http.response.body", "body": answer})


@pytest_twisted.ensureDeferred
async def test_a_channels_project_routes_http_to_an_asgi_app_and_websockets_to_consumers():
    """``ProtocolTypeRouter({"http": get_asgi_application(), "websocket": ...})``, Channels
    4's project layout: both served by one server."""
    app = ProtocolTypeRouter({"http": hello,
                              "websocket": URLRouter([path("ws/", Echo.as_asgi())])})
    server = await serve(app)
    try:
        body = bytes(range(256)) * 1200  # 300 KiB: several http.request chunks

        def client() -> Any:
            request = urllib.request.Request(server.http_url("/a/b?x=1"), data=body,
                                             method="PUT", headers={"X-Test": "yes"})
            with urllib.request.urlopen(request, timeout=10) as response:
                out = (response.status, response.headers.get_all("set-cookie"),
                       json.loads(response.read()))
            with connect(server.ws_url("/ws/")) as ws:
                ws.send("hi")
                return (*out, ws.recv(timeout=5))

        status, cookies, answer, echoed = await in_thread(client)
    finally:
        await server.stop()
    assert status == 201 and cookies == ["a=1", "b=2"]
    assert answer["method"] == "PUT" and answer["path"] == "/a/b" and answer["query"] == "x=1"
    assert answer["asgi"]["version"] == "3.0" and answer["type"] == "http"
    assert answer["size"] == len(body)
    assert answer["sha"] == hashlib.sha256(body).hexdigest()
    assert answer["chunks"] == 5 and answer["more"] == [True] * 4 + [False]
    assert answer["client"] == "127.0.0.1" and answer["header"] == "yes"
    assert echoed == "consumer: hi"


@pytest_twisted.ensureDeferred
async def test_url_router_falls_back_to_the_asgi_app_as_in_channels_docs():
    """``URLRouter([path("ws/", ...), re_path(r"", django_asgi_app)])``: routes a consumer
    takes stay the consumer's, the rest goes to the ASGI app; also as ``--app`` itself
    and inside ``BaseMiddleware``."""
    app = URLRouter([path("ws/", Echo.as_asgi()), re_path(r"", BaseMiddleware(hello))])
    server = await serve(app)
    direct = await serve(AsgiApp(hello))
    try:
        status, _, body = await in_thread(http_get, server.http_url("/anything/else"))
        status2, _, body2 = await in_thread(http_get, direct.http_url("/x"))
    finally:
        await server.stop()
        await direct.stop()
    assert (status, json.loads(body)["path"]) == (201, "/anything/else")
    assert (status2, json.loads(body2)["path"]) == (201, "/x")


async def streamer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Streams ``?n`` chunks of 1 MiB, counting sends in ``progress``."""
    await receive()
    count = int(scope["query_string"] or b"3")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for i in range(count):
        await send({"type": "http.response.body", "body": bytes([65 + i % 26]) * 2 ** 20,
                    "more_body": True})
        progress.append(i)
    await send({"type": "http.response.body"})
    progress.append("done")


progress: list[Any] = []


@pytest_twisted.ensureDeferred
async def test_a_streamed_response_waits_while_the_client_reads_slowly():
    """twisted.web's buffer for a client that does not read fills up: the app's ``send``
    waits (no 64 MiB in memory), then everything arrives, chunked, in order."""
    progress.clear()
    server = await serve(AsgiApp(streamer))
    conn = await raw_connect(server.port)
    try:
        conn.proto.transport.pauseProducing()  # this client reads nothing for now
        conn.write(b"GET /?64 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for _ in range(50):
            await later(0.02)
        stalled = len(progress)
        conn.proto.transport.resumeProducing()
        raw = await conn.closed(30)
    finally:
        await server.stop()
    assert stalled < 40, stalled  # the sends waited for the client
    assert progress[-1] == "done"
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    from tests.clients import dechunk

    data = dechunk(body)
    assert len(data) == 64 * 2 ** 20
    assert data[:1] == b"A" and data[-1:] == bytes([65 + 63 % 26])


disconnects: list[Any] = []


async def long_poll(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Waits for something to say, as a long-poll view: hears the client leave."""
    await receive()
    message = await receive()
    disconnects.append(message)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"too late"})
        disconnects.append("sends after the disconnect are no-ops")
    except Exception as exc:
        disconnects.append(exc)


@pytest_twisted.ensureDeferred
async def test_the_app_hears_the_client_go_away():
    disconnects.clear()
    server = await serve(AsgiApp(long_poll))
    try:
        conn = await raw_connect(server.port)
        conn.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await later(0.1)
        assert disconnects == []
        conn.proto.transport.loseConnection()
        await until(lambda: len(disconnects) == 2, 2)
    finally:
        await server.stop()
    assert disconnects == [{"type": "http.disconnect"}, "sends after the disconnect are no-ops"]


def failing(where: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        if where == "before":
            raise RuntimeError("boom before")
        if where == "nothing":
            return
        if where == "str header":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [("content-type", "text/plain")]})
        if where == "body first":
            await send({"type": "http.response.body", "body": b"x"})
        if where == "bad status":
            await send({"type": "http.response.start", "status": "200"})
        if where == "unknown":
            await send({"type": "http.response.pathsend", "path": "/etc/passwd"})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        if where == "after":
            raise RuntimeError("boom after")
        if where == "unfinished":
            return
    return app


@pytest.mark.parametrize(("where", "logged"), [
    ("before", "ASGI application raised"),
    ("nothing", "returned without completing its response"),
    ("str header", "header names and values must be bytes"),
    ("body first", "'http.response.body' sent before 'http.response.start'"),
    ("bad status", "bad status '200'"),
    ("unknown", "'http.response.pathsend' is not one an HTTP response can send"),
])
@pytest_twisted.ensureDeferred
async def test_an_app_that_fails_before_its_response_gets_500(where, logged):
    server = await serve(AsgiApp(failing(where)))
    try:
        with captured_log() as events:
            raw = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n"
                                                  b"Connection: close\r\n\r\n")
            # the server is fine afterwards
            status, _, _ = await in_thread(http_get, server.http_url("/"))
    finally:
        await server.stop()
    assert raw.startswith(b"HTTP/1.1 500 ")
    text = " ".join(str(e.get("log_failure", "")) + str(e.get("log_format", "")) for e in events)
    assert logged in text, text
    assert status == 500


@pytest.mark.parametrize("where", ["after", "unfinished"])
@pytest_twisted.ensureDeferred
async def test_an_app_that_fails_mid_response_cuts_the_connection(where):
    """A started response cannot become a 500: the connection is cut, so the client sees
    a truncated chunked body (no last chunk), never a complete-looking one."""
    server = await serve(AsgiApp(failing(where)))
    try:
        with captured_log():
            raw = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        await server.stop()
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b"partial" in raw
    assert not raw.endswith(b"0\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_head_gets_the_headers_only():
    server = await serve(AsgiApp(hello))
    try:
        raw = await raw_exchange(server.port,
                                 b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        await server.stop()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201 ") and body == b""


kept: list[Any] = []


async def keeps_its_callables(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Keeps ``receive``/``send`` after it returns, as Django's failed disconnect listener
    does (its frame lives on in a traceback, in a cycle, until the collector runs)."""
    kept.append((receive, send))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest_twisted.ensureDeferred
async def test_an_app_that_keeps_send_does_not_keep_the_request():
    import gc

    from realtime.site import RealtimeRequest

    def requests_alive() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, RealtimeRequest))

    server = await serve(AsgiApp(keeps_its_callables))
    kept.clear()  # what the lifespan start-up's call kept
    try:
        before = requests_alive()
        for _ in range(20):
            status, _, body = await in_thread(http_get, f"http://127.0.0.1:{server.port}/")
            assert (status, body) == (200, b"ok")
        await later(0.05)  # the last connection's close
        after = requests_alive()
    finally:
        await server.stop()
    assert len(kept) == 20
    kept.clear()
    assert after - before < 5  # the app holds 20 sends; none holds its request


hung: list[Any] = []


async def hangs(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Ignores the disconnect: only --application-close-timeout ends it."""
    try:
        await Deferred()
    except BaseException as exc:
        hung.append(type(exc).__name__)
        raise


@pytest_twisted.ensureDeferred
async def test_an_app_still_running_after_the_client_left_is_cancelled():
    server = await serve(AsgiApp(hangs), ServerConfig(application_close_timeout=0.2))
    hung.clear()  # the lifespan start-up's call, cancelled: it took no lifespan.startup
    try:
        with captured_log() as events:
            conn = await raw_connect(server.port)
            conn.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await later(0.05)
            conn.proto.transport.loseConnection()
            await until(lambda: hung, 2)
    finally:
        await server.stop()
    assert hung == ["CancelledError"]
    assert any("still running" in str(e.get("log_format", "")) for e in events)


async def uses_asyncio(scope: dict[str, Any], receive: Any, send: Any) -> None:
    import asyncio

    await asyncio.sleep(0.01)  # asyncio code, as Django's handler is


class AsgiMiddleware:
    """ASGI-3 middleware (Sentry's kind) put around a realtime router by mistake."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@pytest.mark.parametrize(("app", "logged"), [
    (uses_asyncio, "run twistd --reactor=asyncio"),
    (AsgiMiddleware(URLRouter([path("", Echo.as_asgi())])), "ASGI-3 middleware cannot wrap them"),
])
@pytest_twisted.ensureDeferred
async def test_a_misplaced_app_gets_500_and_a_log_line_saying_what_to_do(app, logged):
    """An asyncio app under the default reactor; ASGI-3 middleware around a router."""
    server = await serve(AsgiApp(app))
    try:
        with captured_log() as events:
            status, _, _ = await in_thread(http_get, server.http_url("/"))
    finally:
        await server.stop()
    assert status == 500
    assert any(logged in str(e.get("log_failure", "")) for e in events)


@pytest_twisted.ensureDeferred
async def test_the_http_communicator_runs_an_asgi_app():
    comm = HttpCommunicator(AsgiApp(hello), "POST", "/c", body=b"abc")
    response = await comm.get_response()
    assert response["status"] == 201
    assert json.loads(response["body"])["size"] == 3


# -- WebSocket ------------------------------------------------------------------------------

ws_log: list[Any] = []


async def ws_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A raw ASGI WebSocket app, as Starlette's or python-socketio's are underneath."""
    assert (await receive())["type"] == "websocket.connect"
    ws_log.append(("scope", scope["asgi"], scope["extensions"], scope["subprotocols"]))
    await send({"type": "websocket.accept", "subprotocol": "chat",
                "headers": [(b"x-accepted", b"yes")]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            ws_log.append(("disconnect", message["code"]))
            try:
                await send({"type": "websocket.send", "text": "after"})
            except ConnectionClosed as exc:
                ws_log.append(("send after close", isinstance(exc, OSError)))
            return
        if message.get("text") == "bye":
            await send({"type": "websocket.close", "code": 1008, "reason": "policy"})
            continue
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"].upper()})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})


@pytest_twisted.ensureDeferred
async def test_a_raw_asgi_websocket_app_accepts_echoes_and_closes():
    ws_log.clear()
    server = await serve(URLRouter([path("raw/", ws_echo)]))
    try:
        def client() -> Any:
            with connect(server.ws_url("/raw/"), subprotocols=["chat"]) as ws:
                header = ws.response.headers.get("x-accepted")
                ws.send("hello")
                ws.send(b"\x01\x02\x03")
                out = [ws.subprotocol, header, ws.recv(timeout=5), ws.recv(timeout=5)]
                ws.send("bye")
                try:
                    ws.recv(timeout=5)
                except ClientSawClose:
                    pass
                return [*out, ws.close_code, ws.close_reason]

        out = await in_thread(client)
        await until(lambda: len(ws_log) == 3, 2)
    finally:
        await server.stop()
    assert out == ["chat", "yes", "HELLO", b"\x03\x02\x01", 1008, "policy"]
    assert ws_log[0] == ("scope", {"version": "3.0", "spec_version": "2.4"},
                         {"websocket.http.response": {}}, ["chat"])
    assert ws_log[1:] == [("disconnect", 1008), ("send after close", True)]


@pytest_twisted.ensureDeferred
async def test_the_app_hears_the_client_close_and_cannot_send_after():
    ws_log.clear()
    server = await serve(AsgiApp(ws_echo))
    try:
        def client() -> str:
            with connect(server.ws_url("/"), subprotocols=["chat"]) as ws:
                ws.send("x")
                return ws.recv(timeout=5)

        assert await in_thread(client) == "X"
        await until(lambda: len(ws_log) == 3, 2)
    finally:
        await server.stop()
    assert ws_log[1:] == [("disconnect", 1000), ("send after close", True)]


def handshake_answer(url: str) -> Any:
    """A blocking handshake (run it in a thread): "opened", or the refusal's response."""
    try:
        with connect(url):
            return "opened"
    except InvalidStatus as exc:
        return exc.response


def refusing(how: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        if how == "close":
            await send({"type": "websocket.close"})
        elif how == "denial":
            await send({"type": "websocket.http.response.start", "status": 401,
                        "headers": [(b"www-authenticate", b"Bearer")]})
            await send({"type": "websocket.http.response.body", "body": b"sign in",
                        "more_body": True})
            await send({"type": "websocket.http.response.body", "body": b" first"})
        elif how == "raise":
            raise RuntimeError("boom")
        elif how == "bad accept":
            await send({"type": "websocket.accept", "subprotocol": "not offered"})
    return app


@pytest.mark.parametrize(("how", "status", "body"), [
    ("close", 403, None), ("denial", 401, b"sign in first"), ("raise", 500, None),
    ("return", 500, None), ("bad accept", 500, None),
])
@pytest_twisted.ensureDeferred
async def test_an_asgi_app_refuses_the_handshake(how, status, body):
    server = await serve(AsgiApp(refusing(how)))
    try:
        with captured_log():
            response = await in_thread(handshake_answer, server.ws_url("/"))
    finally:
        await server.stop()
    assert response != "opened"
    assert response.status_code == status
    if body is not None:
        assert response.body == body
        assert response.headers["www-authenticate"] == "Bearer"


async def crashes_later(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    await receive()
    raise RuntimeError("boom after accept")


slow_log: list[Any] = []


async def slow_reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Takes 10 ms per message: the messages wait in order, none lost."""
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await later(0.01)
        slow_log.append(message["text"])
        if message["text"] == "19":
            await send({"type": "websocket.send", "text": ",".join(slow_log)})


@pytest_twisted.ensureDeferred
async def test_an_app_error_after_accept_closes_1011_and_slow_apps_keep_order():
    slow_log.clear()
    server = await serve(URLRouter([path("crash/", crashes_later),
                                    path("slow/", slow_reader)]))
    try:
        def client() -> Any:
            with connect(server.ws_url("/crash/")) as ws:
                ws.send("x")
                try:
                    ws.recv(timeout=5)
                except ClientSawClose:
                    pass
                code = ws.close_code
            with connect(server.ws_url("/slow/")) as ws:
                for i in range(20):
                    ws.send(str(i))
                return code, ws.recv(timeout=10)

        with captured_log():
            code, joined = await in_thread(client)
    finally:
        await server.stop()
    assert code == 1011
    assert joined == ",".join(str(i) for i in range(20))


@pytest_twisted.ensureDeferred
async def test_an_app_that_ignores_the_close_is_cancelled():
    hung.clear()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await hangs(scope, receive, send)

    server = await serve(AsgiApp(app), ServerConfig(application_close_timeout=0.2))
    try:
        def client() -> None:
            with connect(server.ws_url("/")):
                pass

        with captured_log() as events:
            await in_thread(client)
            await until(lambda: hung, 2)
    finally:
        await server.stop()
    assert hung == ["CancelledError"]
    assert any("still running" in str(e.get("log_format", "")) for e in events)


@pytest_twisted.ensureDeferred
async def test_the_websocket_communicator_runs_an_asgi_app():
    ws_log.clear()
    comm = WebsocketCommunicator(AsgiApp(ws_echo), "/", subprotocols=["chat"])
    assert await comm.connect() == (True, "chat")
    await comm.send_to(text_data="abc")
    assert await comm.receive_from() == "ABC"
    await comm.disconnect()


def test_a_raw_asgi_app_is_wrapped_where_it_is_mounted():
    router = ProtocolTypeRouter({"http": hello})
    assert isinstance(router.application_mapping["http"], AsgiApp)
    assert isinstance(path("x/", hello).app, AsgiApp)
    assert isinstance(BaseMiddleware(hello).inner, AsgiApp)
    consumer_app = Echo.as_asgi()
    assert path("y/", consumer_app).app is consumer_app  # realtime apps stay as they are
    with pytest.raises(TypeError, match="ASGI-3 middleware cannot wrap them"):
        router({"type": "http"}, None, None)


# -- regressions (a review of realtime/asgi.py) ------------------------------------------------

gone_progress: list[Any] = []


async def long_stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for i in range(200):
        await send({"type": "http.response.body", "body": b"A" * 2 ** 20, "more_body": True})
        gone_progress.append(i)
    await send({"type": "http.response.body"})
    gone_progress.append("done")
    gone_progress.append(await receive())


@pytest_twisted.ensureDeferred
async def test_a_client_gone_while_a_send_waits_ends_the_stream_there():
    """The transport stops its producer before the request hears of the loss: the waiting
    send resumes into a response that is over, so the rest are no-ops (not 200 MiB
    written to a dead socket and a response logged as complete)."""
    gone_progress.clear()
    server = await serve(AsgiApp(long_stream))
    logged: list[Any] = []
    real_log = server.site.log
    server.site.log = lambda request: (logged.append(request.code), real_log(request))
    try:
        conn = await raw_connect(server.port)
        conn.proto.transport.pauseProducing()
        conn.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(30):
            await later(0.02)
        stalled = len(gone_progress)
        conn.abort()
        await until(lambda: gone_progress and gone_progress[-1] == {"type": "http.disconnect"}, 2)
    finally:
        await server.stop()
    assert stalled < 20
    assert gone_progress[-2:] == ["done", {"type": "http.disconnect"}]
    # The app ran on with no-op sends, but nothing was written or logged as a response.
    assert logged == []


async def head_first(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Server-sent events: the head goes out with an empty first body, data later."""
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": b"", "more_body": True})
    await later(0.3)
    await send({"type": "http.response.body", "body": b"data: hi\n\n"})


@pytest_twisted.ensureDeferred
async def test_an_empty_first_body_sends_the_head_at_once():
    server = await serve(AsgiApp(head_first))
    try:
        conn = await raw_connect(server.port)
        conn.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = await conn.wait_for(lambda d: b"\r\n\r\n" in d, 0.25)
        raw = await conn.closed(5)
    finally:
        await server.stop()
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head
    assert b"data: hi" not in head  # before the data came
    assert b"data: hi\n\n" in raw and raw.endswith(b"0\r\n\r\n")


accept_first_log: list[Any] = []


async def accepts_before_reading(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accepts before reading websocket.connect, then loads something first: the first
    message queues behind the unread connect, and none is lost."""
    await send({"type": "websocket.accept"})
    await later(0.3)
    while True:
        message = await receive()
        accept_first_log.append(message["type"])
        if message["type"] == "websocket.disconnect":
            return
        if message["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": "echo " + message["text"]})


@pytest_twisted.ensureDeferred
async def test_messages_behind_an_unread_connect_all_arrive():
    accept_first_log.clear()
    server = await serve(AsgiApp(accepts_before_reading),
                         ServerConfig(application_close_timeout=1.0))
    try:
        def client() -> list[str]:
            with connect(server.ws_url("/")) as ws:
                ws.send("a")  # arrives while the app is still loading
                out = [ws.recv(timeout=3)]
                ws.send("b")
                out.append(ws.recv(timeout=3))
                return out

        with captured_log() as events:
            out = await in_thread(client)
            await until(lambda: accept_first_log[-1:] == ["websocket.disconnect"], 1)
    finally:
        await server.stop()
    assert out == ["echo a", "echo b"]
    assert accept_first_log == ["websocket.connect", "websocket.receive", "websocket.receive",
                                "websocket.disconnect"]
    assert not [e for e in events if "still running" in str(e.get("log_format", ""))]


accept_late: list[Any] = []


async def accepts_late(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await later(0.3)  # an async auth lookup: the client leaves meanwhile
    try:
        await send({"type": "websocket.accept"})
    except OSError as exc:  # what Starlette turns into WebSocketDisconnect
        accept_late.append(type(exc).__name__)


@pytest_twisted.ensureDeferred
async def test_accept_after_the_client_left_raises_connection_closed():
    accept_late.clear()
    server = await serve(AsgiApp(accepts_late))
    try:
        with captured_log() as events:
            conn = await ws_open_quietly(server.port)
            conn.abort()
            await until(lambda: accept_late, 1)
    finally:
        await server.stop()
    assert accept_late == ["ConnectionClosed"]
    assert not [e for e in events if e.get("log_failure") is not None]


async def ws_open_quietly(port: int) -> Any:
    """A handshake written, its answer not waited for."""
    from tests.clients import handshake

    conn = await raw_connect(port)
    conn.write(handshake("/"))
    await later(0.05)
    return conn


def denial(status: int, headers: list[tuple[bytes, bytes]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": headers})
        await send({"type": "websocket.http.response.body", "body": b'{"login": "/login"}'})
    return app


@pytest.mark.parametrize(("status", "answer", "types"), [
    (401, 401, ["application/json"]),  # the app's content type, not ours beside it
    (302, 500, ["text/plain; charset=utf-8"]),  # no redirect on a WebSocket: the app's error
])
@pytest_twisted.ensureDeferred
async def test_a_denial_keeps_the_apps_headers_and_is_an_error_status(status, answer, types):
    server = await serve(AsgiApp(denial(status, [(b"content-type", b"application/json")])))
    try:
        with captured_log() as events:
            response = await in_thread(handshake_answer, server.ws_url("/"))
        got = response.status_code, response.headers.get_all("content-type")
    finally:
        await server.stop()
    assert got == (answer, types)
    if status == 302:
        assert any("a denial's status is 400 to 599" in str(e.get("log_failure", ""))
                   for e in events)


async def untyped(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers JSON without saying so: the server must not call it HTML."""
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b'{"a": "<b>"}'})


class Untyped(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        await self.send_response(200, b"<b>plain</b>")


@pytest_twisted.ensureDeferred
async def test_a_response_without_a_content_type_gets_none_invented():
    """twisted.web labels an unlabelled body ``text/html`` (a JSON answer carrying user
    text would then render as HTML); an ASGI server passes on what the app says, as
    uvicorn and twisted.web's own WSGI container do."""
    app = URLRouter([path("consumer", Untyped.as_asgi()), re_path(r"", AsgiApp(untyped))])
    server = await serve(app)
    try:
        heads = []
        for where in (b"/app", b"/consumer"):
            raw = await raw_exchange(server.port, b"GET " + where + b" HTTP/1.1\r\nHost: x\r\n"
                                     b"Connection: close\r\n\r\n")
            heads.append(raw.partition(b"\r\n\r\n"))
    finally:
        await server.stop()
    for (head, _, body), expected in zip(heads, (b'{"a": "<b>"}', b"<b>plain</b>"), strict=True):
        assert head.startswith(b"HTTP/1.1 200 ") and expected in body
        assert b"content-type" not in head.lower()
