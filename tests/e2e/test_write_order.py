"""What reaches the wire, in what order, when writes wait: nothing after a close frame
(Autobahn's own 1007 included), whole frames only when the slow-consumer policy drops what
waits, and a broadcast to a group that holds a connection whose handshake was abandoned.
Real server, raw client that stops and resumes reading."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from realtime import AsyncWebsocketConsumer, ProtocolTypeRouter, URLRouter, WebsocketConsumer, path
from tests.clients import (
    client_frame,
    handshake,
    later,
    raw_connect,
    ws_open,
)
from tests.test_layers import until


class Quiet(WebsocketConsumer):
    groups = ["g"]

    def connect(self) -> None:
        self.accept()


class SlowJoin(AsyncWebsocketConsumer):
    """Joins group "g" (``groups``) and then accepts when the test fires ``release``;
    ``done`` fires once that accept has returned."""

    groups = ["g"]
    release: Deferred[None] = Deferred()
    done: Deferred[None] = Deferred()

    async def connect(self) -> None:
        try:
            await type(self).release
            await self.accept()
        finally:
            type(self).done.callback(None)


APP = ProtocolTypeRouter({"websocket": URLRouter([
    path("q", Quiet.as_app()), path("slow", SlowJoin.as_app())])})


async def fill_until(ws: Any, condition: Any, chunk: int) -> int:
    """Send ``chunk``-byte messages to a client that does not read until ``condition()``."""
    sent = 0
    while not condition() and sent < 4000:
        ws.send_bytes(b"x" * chunk)
        sent += 1
        if sent % 32 == 0:
            await later(0.01)
    assert condition(), "the transport never pushed back"
    return sent


@pytest_twisted.ensureDeferred
async def test_nothing_follows_autobahns_own_close_frame(live):
    server = await live(APP, max_send_buffer=256 * 1024 * 1024, close_timeout=10.0)
    conn = await ws_open(server.port, "/q")
    (ws,) = server.site.connections
    conn.proto.transport.pauseProducing()  # the client stops reading
    sent = await fill_until(ws, lambda: bool(ws._outq), 65536)
    ws.send_bytes(b"queued-last")
    conn.write(client_frame(0x1, b"\xff\xfe"))  # invalid UTF-8: Autobahn closes 1007
    await later(0.2)
    conn.proto.transport.resumeProducing()
    frames = await conn.wait_frames(sent + 2, timeout=10)
    assert frames[-2] == (0x2, b"queued-last")
    assert frames[-1][0] == 0x8 and frames[-1][1][:2] == (1007).to_bytes(2, "big")
    assert [op for op, _ in frames].count(0x8) == 1


@pytest_twisted.ensureDeferred
async def test_a_large_frame_waits_as_one_item(live):
    """Header and payload queue together: the slow-consumer policy drops whole frames, so
    a header can never go out without its payload."""
    server = await live(APP, max_send_buffer=1024 * 1024, close_timeout=5.0)
    conn = await ws_open(server.port, "/q")
    (ws,) = server.site.connections
    conn.proto.transport.pauseProducing()
    await fill_until(ws, lambda: ws._write_paused, 60000)
    ws.send_bytes(b"b" * 100000)
    assert [len(item) for item in ws._outq] == [10 + 100000]
    conn.abort()


@pytest_twisted.ensureDeferred
async def test_the_slow_consumer_close_follows_whole_frames(live):
    server = await live(APP, max_send_buffer=100000, close_timeout=2.0)
    conn = await ws_open(server.port, "/q")
    (ws,) = server.site.connections
    conn.proto.transport.pauseProducing()
    sent = await fill_until(ws, lambda: ws._write_paused, 60000)
    for size in (40000, 40000, 100000):  # the last waits behind 80,008 bytes: still < 100,000
        ws.send_bytes(b"q" * size)
    assert [len(item) for item in ws._outq] == [40004, 40004, 100010]
    original = ws.resumeProducing
    dropped = []

    def resume() -> None:
        original()
        if ws._outq and not dropped:  # the transport filled again with a frame still queued
            dropped.append(len(ws._outq))
            ws.send_text("z")  # over --max-send-buffer: 4008, the queue dropped

    ws.resumeProducing = resume
    conn.proto.transport.resumeProducing()
    # Up to the close frame; the client's reply then ends the connection (the server would
    # wait close_timeout for it): what the server wrote after that frame is read by then.
    await conn.wait_close_frame(timeout=8)
    conn.send_close(1000)
    await conn.closed(timeout=8)
    frames = conn.frames()
    assert dropped == [1]
    assert frames[-1][0] == 0x8 and frames[-1][1][:2] == (4008).to_bytes(2, "big")
    assert [len(p) for _, p in frames[:-1]] == [60000] * sent + [40000, 40000]


@pytest_twisted.ensureDeferred
async def test_a_broadcast_skips_a_member_whose_handshake_was_abandoned(live):
    SlowJoin.release, SlowJoin.done = Deferred(), Deferred()
    server = await live(APP)
    slow = await raw_connect(server.port)
    slow.write(handshake("/slow"))
    layer = server.site.layer
    await until(lambda: len(layer.local_members("g")) == 1)  # connect() is running
    slow.abort()  # the client gives up before the accept
    await until(lambda: layer.local_members("g") == [])  # a closed socket leaves at once
    member = await ws_open(server.port, "/q")
    sent = server.site.layer.broadcast("g", text="hello")
    frames = await member.wait_frames(1, timeout=2)
    assert frames == [(0x1, b"hello")]
    await sent
    SlowJoin.release.callback(None)  # connect() goes on: its accept finds the socket gone
    await SlowJoin.done
