"""Real ASGI frameworks served by realtime under ``--reactor=asyncio``: a Channels 4
project's ``ProtocolTypeRouter({"http": get_asgi_application(), "websocket": ...})`` with
Django's own views (sync, async, streamed, a form POST, the ORM), and a Starlette app's
HTTP and WebSocket routes. Real clients against a live server.

Collected only under ``--reactor=asyncio`` (tests/conftest.py); the main run drives it in
a subprocess (tests/test_asyncio_reactor.py)."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest
import pytest_twisted
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from realtime import AsyncWebsocketConsumer, ProtocolTypeRouter, URLRouter, path
from realtime.asgi import AsgiApp
from tests.asyncio_reactor.django_project import django_database
from tests.clients import http_get, in_thread


class Shout(AsyncWebsocketConsumer):
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        await self.send(text_data=str(text_data).upper())


@pytest_twisted.ensureDeferred
async def test_a_channels_project_serves_djangos_views_and_its_consumers(
        live: Any, tmp_path_factory: Any) -> None:
    """What Daphne does for a Channels 4 project: Django's views over HTTP, consumers over
    WebSocket, one server, one port."""
    await django_database(tmp_path_factory)
    from django.core.handlers.asgi import ASGIHandler  # what get_asgi_application() returns

    application = ProtocolTypeRouter({
        "http": ASGIHandler(),
        "websocket": URLRouter([path("ws/", Shout.as_asgi())]),
    })
    server = await live(application)

    def client() -> list[Any]:
        out: list[Any] = []
        status, headers, body = http_get(server.http_url("/sync/?q=x"))
        out.append((status, json.loads(body), sorted(headers["set-cookie"])))
        for name in ("view-ada", "view-grace"):
            form = urllib.parse.urlencode({"name": name}).encode()
            out.append(http_get(server.http_url("/async/"), form)[::2])
        status, headers, body = http_get(server.http_url("/stream/"))
        out.append((status, headers.get("transfer-encoding"), body))
        out.append(http_get(server.http_url("/missing/"))[0])
        with connect(server.ws_url("/ws/")) as ws:
            ws.send("hi")
            out.append(ws.recv(timeout=10))
        return out

    def forget() -> None:  # the other Django tests count users from none
        from django.contrib.auth.models import User

        User.objects.filter(username__startswith="view-").delete()

    try:
        got = await in_thread(client)
    finally:
        await in_thread(forget)
    status, view, cookies = got[0]
    assert status == 200
    assert view["method"] == "GET" and view["path"] == "/sync/" and view["q"] == "x"
    assert view["main"] is False  # a sync view runs in asgiref's thread, not the reactor's
    assert view["host"].startswith("127.0.0.1:") and view["remote"] == "127.0.0.1"
    assert [c.split(";")[0] for c in cookies] == ["a=1", "b=2"]
    assert got[1] == (200, b"users=1") and got[2] == (200, b"users=2")
    assert got[3] == (200, ["chunked"], b"chunk0;chunk1;chunk2;chunk3;chunk4;")
    assert got[4] == 404
    assert got[5] == "HI"



class Notes(AsyncWebsocketConsumer):
    groups = ["notes"]

    async def note(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


@pytest.mark.filterwarnings("ignore:async_to_sync was passed a non-async-marked callable")
@pytest_twisted.ensureDeferred
async def test_a_django_views_asgiref_async_to_sync_reaches_a_group(
        live: Any, tmp_path_factory: Any) -> None:
    """Channels' way to tell a group from a plain view: asgiref's ``async_to_sync`` in the
    view's thread (asgiref's, whose loop is the reactor's) of the layer
    ``get_channel_layer()`` gives it; the call runs on the reactor thread."""
    await django_database(tmp_path_factory)
    from django.core.handlers.asgi import ASGIHandler

    server = await live(ProtocolTypeRouter({
        "http": ASGIHandler(), "websocket": URLRouter([path("notes/", Notes.as_asgi())])}))

    def client() -> list[Any]:
        with connect(server.ws_url("/notes/")) as ws:
            answer = http_get(server.http_url("/notify/?text=hello"))[::2]
            return [answer, ws.recv(timeout=10)]

    assert await in_thread(client) == [(200, b"sent"), "hello"]

async def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    async def hello(request: Any) -> Any:
        body = await request.body()
        return JSONResponse({"path": request.url.path, "size": len(body),
                             "q": request.query_params.get("q")})

    async def numbers(request: Any) -> Any:
        async def gen() -> Any:
            for i in range(3):
                yield f"{i}\n"

        return StreamingResponse(gen(), media_type="text/plain")

    async def echo(websocket: WebSocket) -> None:
        if websocket.query_params.get("deny"):
            await websocket.close(code=1008)  # before accept: refused
            return
        await websocket.accept(subprotocol="v1")
        async for text in websocket.iter_text():
            if text == "quit":
                await websocket.close(code=4000, reason="asked to")
                return
            await websocket.send_json({"echo": text})

    return Starlette(routes=[Route("/hello", hello, methods=["GET", "POST"]),
                             Route("/numbers", numbers), WebSocketRoute("/ws", echo)])


@pytest_twisted.ensureDeferred
async def test_a_starlette_app_over_http_and_websocket(live: Any) -> None:
    server = await live(AsgiApp(await starlette_app()))

    def client() -> list[Any]:
        out: list[Any] = []
        status, _, body = http_get(server.http_url("/hello?q=1"), b"x" * 100_000)
        out.append((status, json.loads(body)))
        out.append(http_get(server.http_url("/numbers"))[::2])
        with connect(server.ws_url("/ws"), subprotocols=["v1"]) as ws:
            ws.send("a")
            out.append((ws.subprotocol, json.loads(ws.recv(timeout=10))))
            ws.send("quit")
            try:
                ws.recv(timeout=10)
            except ConnectionClosed:
                pass
            out.append((ws.close_code, ws.close_reason))
        try:
            with connect(server.ws_url("/ws?deny=1")):
                out.append("opened")
        except InvalidStatus as exc:
            out.append(exc.response.status_code)
        return out

    assert await in_thread(client) == [
        (200, {"path": "/hello", "size": 100_000, "q": "1"}),
        (200, b"0\n1\n2\n"),
        ("v1", {"echo": "a"}),
        (4000, "asked to"),
        403,
    ]


@pytest_twisted.ensureDeferred
async def test_a_starlette_lifespan_runs_on_asyncio_and_its_state_reaches_requests(
        live: Any) -> None:
    """FastAPI's and Starlette's ``lifespan=``: start-up awaits asyncio code, the dict it
    yields is every request's ``request.state`` (ASGI's lifespan state, which Starlette
    refuses to use without), and shut-down runs on stop. Mounted inside a Channels-style
    router, where uvicorn would not start it."""
    import asyncio
    import contextlib

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await asyncio.sleep(0.05)  # needs asyncio's running loop
        events.append("startup")
        yield {"pool": "pool-1"}
        await asyncio.sleep(0.01)
        events.append("shutdown")

    async def home(request: Any) -> Any:
        return JSONResponse({"pool": request.state.pool})

    api = Starlette(routes=[Route("/api/", home)], lifespan=lifespan)
    server = await live(ProtocolTypeRouter({
        "http": URLRouter([path("api/", api)]),
        "websocket": URLRouter([path("ws/", Shout.as_asgi())]),
    }))
    assert events == ["startup"]
    status, _, body = await in_thread(http_get, server.http_url("/api/"))
    assert (status, json.loads(body)) == (200, {"pool": "pool-1"})
    await server.stop()
    assert events == ["startup", "shutdown"]


async def half_then_raise(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A raw ASGI app that starts a streamed response and fails halfway."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"half", "more_body": True})
    raise RuntimeError("the app broke halfway")


@pytest_twisted.ensureDeferred
async def test_djangos_views_over_http2(live: Any, tmp_path_factory: Any) -> None:
    """A TLS listener offers HTTP/2 (ALPN): Django's views over it, a streamed one too
    (DATA frames, no chunked coding); an app that fails halfway has its stream reset, and the
    connection serves the next request."""
    import ssl

    import httpx
    from django.core.handlers.asgi import ASGIHandler

    from realtime import re_path
    from tests.e2e.support import self_signed, tls_options

    await django_database(tmp_path_factory)
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    application = URLRouter([path("broken/", AsgiApp(half_then_raise)),
                             re_path(r"", ASGIHandler())])
    server = await live(application, tls=tls_options(cert, key))

    def client() -> list[Any]:
        out: list[Any] = []
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(http2=True, verify=context, timeout=10,
                          limits=httpx.Limits(max_connections=1)) as c:
            sync = c.get(server.http_url("/sync/?q=h2"))
            out.append((sync.http_version, sync.status_code, sync.json()["q"]))
            streamed = c.get(server.http_url("/stream/"))
            out.append((streamed.http_version, streamed.headers.get("transfer-encoding"),
                        streamed.content))
            try:
                c.get(server.http_url("/broken/"))
                out.append("complete")
            except httpx.RemoteProtocolError as exc:
                out.append("reset" in str(exc).lower())
            out.append(c.get(server.http_url("/missing/")).status_code)
        return out

    assert await in_thread(client) == [
        ("HTTP/2", 200, "h2"),
        ("HTTP/2", None, b"chunk0;chunk1;chunk2;chunk3;chunk4;"),
        True,
        404,
    ]


race: list[Any] = []


async def cancels_a_receive(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``asyncio.wait({receive, other}, FIRST_COMPLETED)``, the other wins, the pending
    receive is cancelled: a frame read in that same loop turn stays for the next one."""
    import asyncio

    await receive()
    await send({"type": "websocket.accept"})
    conn = receive.__self__._conn  # the bridge: to read a frame in exactly that turn
    loop = asyncio.get_running_loop()

    async def recv() -> Any:
        return await receive()

    pending = asyncio.ensure_future(recv())
    await asyncio.sleep(0.01)  # it waits in receive() now
    loop.call_soon(pending.cancel)
    loop.call_soon(conn.onMessage, b"first", False)
    await asyncio.sleep(0.05)
    try:
        race.append(await asyncio.wait_for(recv(), 2))
    except TimeoutError:
        race.append("lost")
    await send({"type": "websocket.close"})


@pytest_twisted.ensureDeferred
async def test_a_cancelled_receive_loses_no_message(live: Any) -> None:
    race.clear()
    server = await live(AsgiApp(cancels_a_receive))

    def client() -> None:
        with connect(server.ws_url("/")) as ws:
            try:
                ws.recv(timeout=5)
            except ConnectionClosed:
                pass

    await in_thread(client)
    assert race == [{"type": "websocket.receive", "text": "first"}]
