"""``broadcast()`` reaches an HTTP consumer in the group (a server-sent-events stream, a long
poll) as a ``broadcast.message`` event, in order with the layer's other events, as
Centrifugo's publications reach its SSE clients. Before, such members were skipped in
silence. Real servers, a real HTTP client reading the stream, a real WebSocket member."""

from __future__ import annotations

import threading
import urllib.request
from typing import Any

import pytest_twisted
from websockets.sync.client import connect

from realtime import AsyncHttpConsumer, AsyncWebsocketConsumer, URLRouter, path
from realtime.layers.base import frame_event, prepared_frame
from tests.clients import captured_log, in_thread


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
    opened = threading.Event()
    got: list[str] = []
    reader = threading.Thread(
        target=lambda: got.extend(read_stream(server.http_url("/events"), opened)))
    reader.start()

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
        opened = threading.Event()
        got: list[str] = []
        reader = threading.Thread(
            target=lambda: got.extend(read_stream(server.http_url("/bare"), opened)))
        reader.start()
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
