"""``broadcast()`` reaches an HTTP consumer in the group (a server-sent-events stream, a long
poll) as a ``broadcast.message`` event, in order with the layer's other events, as
Centrifugo's publications reach its SSE clients. Before, such members were skipped in
silence. Real servers, a real HTTP client reading the stream, a real WebSocket member."""

from __future__ import annotations

import threading
import urllib.request
from typing import Any

import pytest
import pytest_twisted
from websockets.sync.client import connect

from realtime import AsyncHttpConsumer, AsyncWebsocketConsumer, URLRouter, path
from realtime.layers.base import frame_event, prepared_frame
from tests.clients import captured_log, in_thread, until, ws_open


class NoHandler(AsyncHttpConsumer):
    """An event stream of the news group without ``broadcast_message()``."""

    groups = ["news"]

    async def handle(self, body: bytes) -> None:
        await self.send_headers(headers=[(b"Content-Type", b"text/event-stream")])
        await self.send_body(b"data: open\n\n", more_body=True)

    async def news_end(self, event: dict[str, Any]) -> None:
        await self.send_body(b"data: end\n\n")


class Events(NoHandler):
    async def broadcast_message(self, event: dict[str, Any]) -> None:
        data = event["text"] if "text" in event else "bytes:" + event["bytes"].hex()
        await self.send_body(f"data: {data}\n\n".encode(), more_body=True)

    async def news_item(self, event: dict[str, Any]) -> None:
        await self.send_body(f"data: event {event['n']}\n\n".encode(), more_body=True)


class Publisher(AsyncWebsocketConsumer):
    """Its message publishes a burst within one read, so the broadcasts are held to the
    turn's end while the events are handled at once."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        layer = self.channel_layer
        await layer.broadcast("news", text="one")
        await layer.group_send("news", {"type": "news.item", "n": 2})
        await layer.broadcast("news", bytes=b"\x03")
        await layer.broadcast("news", text="four")
        await layer.group_send("news", {"type": "news.end"})


class Listener(AsyncWebsocketConsumer):
    """A WebSocket member of the group, for comparison."""

    async def connect(self) -> None:
        await self.channel_layer.group_add("news", self.channel_name)
        await self.accept()

    async def news_item(self, event: dict[str, Any]) -> None:
        await self.send(text_data=f"event {event['n']}")

    async def news_end(self, event: dict[str, Any]) -> None:
        await self.send(text_data="end")


APP = URLRouter([path("events", Events.as_asgi()), path("bare", NoHandler.as_asgi()),
                 path("ws", Publisher.as_asgi()), path("listen", Listener.as_asgi())])


def read_stream(url: str, opened: threading.Event) -> list[str]:
    lines = []
    with urllib.request.urlopen(url, timeout=10) as response:
        for raw in response:  # until the response ends
            line = raw.decode().strip()
            if line:
                lines.append(line)
                opened.set()
    return lines


def stream_in_thread(url: str) -> tuple[threading.Event, list[str], threading.Thread]:
    """Read the event stream at ``url`` on a thread of its own (started): ``opened`` is set
    at its first line, ``got`` has its lines once the thread ends."""
    opened = threading.Event()
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(read_stream(url, opened)))
    reader.start()
    return opened, got, reader


def test_a_frame_turns_back_into_its_event_at_every_length():
    for size in (0, 125, 126, 65535, 65536):
        text = "x" * size
        assert frame_event(prepared_frame(text, None)) == {"type": "broadcast.message",
                                                           "text": text}
    assert frame_event(prepared_frame(None, b"\x00\xff")) == {"type": "broadcast.message",
                                                              "bytes": b"\x00\xff"}


@pytest_twisted.ensureDeferred
async def test_broadcasts_reach_an_event_stream_in_order_with_group_events(live):
    server = await live(APP)
    opened, got, reader = stream_in_thread(server.http_url("/events"))

    def publish() -> list[Any]:
        assert opened.wait(5)
        with connect(server.ws_url("/listen"), proxy=None) as member:
            with connect(server.ws_url("/ws"), proxy=None) as ws:
                ws.send("go")
                return [member.recv(timeout=5) for _ in range(5)]

    # A WebSocket member gets the same, in the same order (its broadcasts are frames).
    assert await in_thread(publish) == ["one", "event 2", b"\x03", "four", "end"]
    await in_thread(reader.join, 10)
    assert got == ["data: open", "data: one", "data: event 2", "data: bytes:03",
                   "data: four", "data: end"]


@pytest_twisted.ensureDeferred
async def test_a_member_without_the_handler_is_skipped_with_one_warning(live):
    server = await live(APP)
    layer = server.site.layer
    with captured_log() as lines:
        opened, got, reader = stream_in_thread(server.http_url("/bare"))
        await in_thread(opened.wait, 5)
        for text in ("a", "b", "c"):
            await layer.broadcast("news", text=text)
        await layer.group_send("news", {"type": "news.end"})
        await in_thread(reader.join, 10)
    assert got == ["data: open", "data: end"]
    from twisted.logger import formatEvent

    texts = [formatEvent(event) for event in lines]
    warnings = [text for text in texts if "no broadcast_message() handler" in text]
    assert len(warnings) == 1 and warnings[0].startswith("NoHandler "), texts


CALLS: list[str] = []


class Recording(NoHandler):
    groups = ["late"]

    async def broadcast_message(self, event: dict[str, Any]) -> None:
        CALLS.append(f"finished={self._request.finished} gone={self._request._disconnected}")
        await self.send_body(b"data: x\n\n", more_body=True)


@pytest_twisted.ensureDeferred
async def test_a_broadcast_held_as_the_response_ends_is_not_handled_after_it(live):
    """With --broadcast-delay the frame waits; the client leaves meanwhile: its handler
    must not run on the dead request (it raised there)."""
    from tests.clients import later

    server = await live(URLRouter([path("late", Recording.as_asgi())]), broadcast_delay=0.3)
    layer = server.site.layer
    CALLS.clear()

    def open_stream():
        response = urllib.request.urlopen(server.http_url("/late"), timeout=5)
        assert response.readline().strip() == b"data: open"
        return response

    response = await in_thread(open_stream)
    await layer.broadcast("late", text="held")  # waits up to 0.3 s
    await in_thread(response.close)
    with captured_log() as events:
        await later(0.6)
    assert CALLS == []
    from twisted.logger import formatEvent

    assert not [formatEvent(e) for e in events if e.get("log_failure")]


#: ``OwnSlot``'s ``_slot`` for the next stream.
OWN_SLOT: list[Any] = [None]


class OwnSlot(Events):
    """An event stream whose consumer keeps an attribute ``_slot`` of its own (an app's
    booking slot, a time slot): a layer receiver, yet no socket of the fan-out's table."""

    async def handle(self, body: bytes) -> None:
        self._slot = OWN_SLOT[0]
        await super().handle(body)


@pytest.mark.parametrize("own", ["none", "text", "a member's slot"])
@pytest_twisted.ensureDeferred
async def test_a_consumers_own_slot_attribute_is_not_taken_for_a_socket_slot(live, own):
    """The fan-out's C loop writes to the sockets of the members that hold a slot in its
    table; a receiver's attribute of the same name means nothing there: the broadcast
    neither fails (None, text) nor goes to the socket that holds that slot (an int) instead
    of the stream."""
    from realtime import _fanout

    server = await live(URLRouter([path("own", OwnSlot.as_asgi()),
                                   path("listen", Listener.as_asgi())]))
    layer = server.site.layer

    ws = await ws_open(server.port, "/listen")
    await until(lambda: len(layer.local_members("news")) == 1)
    await layer.broadcast("news", text="warm")  # clean now: it holds a slot
    assert await ws.wait_frames(1) == [(0x1, b"warm")]
    (conn,) = [c for c in server.site.connections if c.channel_name is not None]
    OWN_SLOT[0] = {"none": None, "text": "10:30", "a member's slot": conn._slot}[own]
    opened, got, reader = stream_in_thread(server.http_url("/own"))
    await in_thread(opened.wait, 5)
    for text in ("one", "two"):
        await layer.broadcast("news", text=text)
    await layer.group_send("news", {"type": "news.end"})
    await in_thread(reader.join, 10)
    assert got == ["data: open", "data: one", "data: two", "data: end"]
    assert await ws.wait_frames(4) == [(0x1, b"warm"), (0x1, b"one"), (0x1, b"two"),
                                       (0x1, b"end")]
    if _fanout.send_each is not None:
        assert conn._slot >= 0 and _fanout.OWNERS[conn._slot] is conn
    ws.abort()
