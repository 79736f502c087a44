"""Channels' generic consumers (``AsyncConsumer``, ``SyncConsumer``) on WebSocket routes, as
Channels' own docs write them: ASGI messages in (``websocket_connect(event)``, ...), ASGI
messages out (``self.send({"type": "websocket.accept"})``), layer events in order with
them. Real servers and the ``websockets`` client, and the in-memory communicator."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from realtime import AsyncConsumer, SyncConsumer, URLRouter, async_to_sync, path
from realtime.exceptions import StopConsumer
from realtime.testing import WebsocketCommunicator
from tests.clients import captured_log, http_get, in_thread, until


class SyncEcho(SyncConsumer):
    """Channels' docs' first consumer, unchanged but for its import."""

    def websocket_connect(self, event):
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, event):
        if event.get("text") == "thread":
            self.send({"type": "websocket.send",
                       "text": str(threading.current_thread() is threading.main_thread())})
        elif event.get("text") == "bad":
            self.send({"type": "websocket.sned", "text": "typo"})  # raised in this thread
        elif event.get("text") == "close":
            self.send({"type": "websocket.close", "code": 4321, "reason": "bye"})
        elif "text" in event:
            self.send({"type": "websocket.send", "text": event["text"]})
        else:
            self.send({"type": "websocket.send", "bytes": event["bytes"][::-1]})


class AsyncRoom(AsyncConsumer):
    """A room over the layer: group events reach the client in order with its messages."""

    async def websocket_connect(self, event):
        await self.channel_layer.group_add("generic-room", self.channel_name)
        await self.send({"type": "websocket.accept", "subprotocol": None,
                         "headers": [(b"x-room", b"generic-room")]})

    async def websocket_receive(self, event):
        await self.channel_layer.group_send("generic-room",
                                            {"type": "room.message", "text": event["text"]})

    async def room_message(self, event):
        await self.send({"type": "websocket.send", "text": "room: " + event["text"]})

    async def websocket_disconnect(self, event):
        DISCONNECTS.append(event["code"])
        await self.channel_layer.group_discard("generic-room", self.channel_name)
        raise StopConsumer()


DISCONNECTS: list[int] = []


class Denies(AsyncConsumer):
    async def websocket_connect(self, event):
        await self.send({"type": "websocket.http.response.start", "status": 401,
                         "headers": [(b"content-type", b"text/plain")]})
        await self.send({"type": "websocket.http.response.body", "body": b"who are you?"})


class Closes(AsyncConsumer):
    async def websocket_connect(self, event):
        await self.send({"type": "websocket.close"})


class NoConnect(AsyncConsumer):
    async def websocket_receive(self, event):
        pass


class SyncThreadLayer(SyncConsumer):
    """A sync consumer calling the layer as Channels' tutorial does."""

    def websocket_connect(self, event):
        async_to_sync(self.channel_layer.group_add)("sync-room", self.channel_name)
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, event):
        async_to_sync(self.channel_layer.group_send)(
            "sync-room", {"type": "room.message", "text": event["text"]})

    def room_message(self, event):
        self.send({"type": "websocket.send", "text": "sync room: " + event["text"]})


APP = URLRouter([
    path("echo", SyncEcho.as_asgi()),
    path("room", AsyncRoom.as_asgi()),
    path("deny", Denies.as_asgi()),
    path("close", Closes.as_asgi()),
    path("noconnect", NoConnect.as_asgi()),
    path("syncroom", SyncThreadLayer.as_asgi()),
])


def status_of(url):
    try:
        with connect(url, open_timeout=5):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code, exc.response.body


@pytest_twisted.ensureDeferred
async def test_channels_docs_sync_echo_consumer_on_a_real_server(live):
    server = await live(APP)

    def client():
        with connect(server.ws_url("/echo")) as ws:
            ws.send("hello")
            text = ws.recv(timeout=5)
            ws.send(b"abc")
            data = ws.recv(timeout=5)
            ws.send("thread")
            main = ws.recv(timeout=5)
            ws.send("close")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
        return text, data, main, closed.value.rcvd

    text, data, main, rcvd = await in_thread(client)
    assert text == "hello" and data == b"cba"
    assert main == "False"  # a SyncConsumer's handlers run in the thread pool
    assert (rcvd.code, rcvd.reason) == (4321, "bye")


@pytest_twisted.ensureDeferred
async def test_a_bad_asgi_message_from_a_sync_handler_raises_there_and_closes_1011(live):
    server = await live(APP)

    def client():
        with connect(server.ws_url("/echo")) as ws:
            ws.send("bad")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
        return closed.value.rcvd

    with captured_log() as events:
        rcvd = await in_thread(client)
    assert rcvd.code == 1011
    assert any("websocket.sned" in str(e.get("log_failure", "")) for e in events), events


@pytest_twisted.ensureDeferred
async def test_async_consumer_room_gets_layer_events_in_order(live):
    DISCONNECTS.clear()
    server = await live(APP)

    def client():
        with connect(server.ws_url("/room")) as a, connect(server.ws_url("/room")) as b:
            header = a.response.headers["x-room"]
            a.send("one")
            a.send("two")
            got = [a.recv(timeout=5), a.recv(timeout=5), b.recv(timeout=5), b.recv(timeout=5)]
        return header, got

    header, got = await in_thread(client)
    assert header == "generic-room"
    assert got == ["room: one", "room: two"] * 2
    assert await until(lambda: len(DISCONNECTS) == 2, timeout=5)
    assert DISCONNECTS == [1000, 1000]


@pytest_twisted.ensureDeferred
async def test_sync_consumer_uses_the_layer_through_async_to_sync(live):
    server = await live(APP)

    def client():
        with connect(server.ws_url("/syncroom")) as a:
            a.send("hi")
            return a.recv(timeout=5)

    assert await in_thread(client) == "sync room: hi"


@pytest_twisted.ensureDeferred
async def test_refusals_denials_and_a_consumer_that_cannot_serve_a_websocket(live):
    server = await live(APP)
    denied = await in_thread(status_of, server.ws_url("/deny"))
    closed = await in_thread(status_of, server.ws_url("/close"))
    with captured_log() as events:
        broken = await in_thread(status_of, server.ws_url("/noconnect"))
    assert denied == (401, b"who are you?")
    assert closed[0] == 403  # a close before accept is a refusal, as for every consumer
    assert broken[0] == 500
    assert any("no websocket_connect(message) handler" in str(e.get("log_failure", ""))
               for e in events), events


@pytest_twisted.ensureDeferred
async def test_a_generic_consumer_on_an_http_route_is_a_500_that_says_why(live):
    server = await live(URLRouter([path("echo", SyncEcho.as_asgi())]))
    with captured_log() as events:
        status, _, _ = await in_thread(http_get, server.http_url("/echo"))
    assert status == 500
    assert any("use AsyncHttpConsumer" in str(e.get("hint", "")) for e in events), events


@pytest_twisted.ensureDeferred
async def test_the_communicator_drives_a_generic_consumer():
    communicator = WebsocketCommunicator(APP, "/echo")
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_to(text_data="ping")
    assert await communicator.receive_from() == "ping"
    await communicator.disconnect()


@pytest_twisted.ensureDeferred
async def test_send_outside_a_websocket_names_the_layer():
    consumer = AsyncRoom()
    with pytest.raises(RuntimeError, match="no client connection"):
        await consumer.send({"type": "websocket.send", "text": "x"})


class LeavesEarly(AsyncConsumer):
    async def websocket_connect(self, event):
        from tests.clients import later

        await later(0.3)  # the client has gone by now
        await self.send({"type": "websocket.accept"})


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_during_a_slow_connect_is_not_an_error(live):
    from tests.clients import later, raw_connect

    server = await live(URLRouter([path("late", LeavesEarly.as_asgi())]))
    with captured_log() as events:
        conn = await raw_connect(server.port)
        conn.write(b"GET /late HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   b"Sec-WebSocket-Version: 13\r\n\r\n")
        await later(0.05)
        conn.abort()
        await later(0.5)
    assert not [e for e in events if "raised" in str(e.get("log_format", ""))], events


def test_a_sync_consumer_refuses_async_handlers_at_class_creation():
    with pytest.raises(TypeError, match=r"websocket_receive\(\) is async def: use AsyncConsumer"):
        class Wrong(SyncConsumer):
            async def websocket_receive(self, event):
                pass


@pytest.mark.parametrize("route", ["slow", "slowlayer"])
def test_a_server_stopping_while_a_sync_handler_waits_on_the_reactor_still_exits(route):
    """A SyncConsumer's send, and an ``async_to_sync`` call, wait for the reactor thread; a
    reactor that stops (and joins the thread pool) meanwhile must not leave both waiting
    for ever. The call raises ConnectionClosed in the handler's thread instead."""
    from tests.e2e.support import REPO, start, twistd

    with start(twistd("--app", "tests.e2e.generic_app:application", "--port", "0",
                      "--shutdown-timeout", "0.5"), env={"PYTHONPATH": str(REPO)},
               cwd=REPO) as server:
        with connect(server.ws_url("/" + route)) as ws:
            ws.send("go")
            assert ws.recv(timeout=5) == "working"
            result = server.stop(timeout=15)
    assert result.returncode == 0, result.output
    if route == "slowlayer":
        assert "async_to_sync raised ConnectionClosed" in result.output, result.output
