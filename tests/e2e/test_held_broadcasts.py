"""Held broadcasts against a real server and raw clients, on each layer kind: a burst of
messages in one read reaches every member in one write each, and whatever else the handlers
of that read write (direct sends, answers to events, close frames) keeps its place behind
the broadcasts made before it. The servers' sockets are wrapped to count send calls."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from realtime import ProtocolTypeRouter, URLRouter, WebsocketConsumer, path
from realtime.examples.bench import application as bench_app
from realtime.testing import serve
from tests.clients import RawConnection, client_frame, ws_open
from tests.e2e.test_cork import CountingSocket
from tests.test_layers import until


def exported(server: Any) -> dict[str, float]:
    """The server's /metrics exposition, parsed (sample name -> value)."""
    from prometheus_client.parser import text_string_to_metric_families

    from realtime.metrics import Collector, exposition

    _, body = exposition(Collector([server.site], server.site.layer))
    return {sample.name: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples}


def count_all_sends(server: Any) -> dict[Any, CountingSocket]:
    """Wrap every open connection's socket; the fan-out fast path takes the wrapper."""
    counted = {}
    for conn in server.site.connections:
        counting = CountingSocket(conn.transport.socket)
        conn.transport.socket = counting
        conn._clean = False
        conn._sock = None
        counted[conn] = counting
    return counted


async def members(server: Any, route: str, group: str, n: int) -> list[RawConnection]:
    conns = [await ws_open(server.port, route) for _ in range(n)]
    for conn in conns:
        assert conn.response()[0] == 101
    await until(lambda: len(server.site.layer.local_members(group)) == n)
    return conns


@pytest_twisted.ensureDeferred
async def test_a_burst_in_one_read_is_one_send_per_member(layer):
    server = await serve(bench_app, layer=layer)
    try:
        conns = await members(server, "/room/burst", "burst", 3)
        counted = count_all_sends(server)
        stats = layer.stats
        frames0, writes0 = stats.broadcast_frames, stats.broadcast_writes
        burst = [f"message {i} é€😀".encode() for i in range(5)]
        conns[0].write(b"".join(client_frame(0x1, m) for m in burst))
        for conn in conns:
            assert await conn.wait_frames(5) == [(0x1, m) for m in burst]
        assert stats.broadcast_frames - frames0 == 15
        if layer.__class__.__name__ == "InMemoryChannelLayer":
            # One read, five broadcasts: one write per member (the publisher's own copy
            # joined its cork). Through Redis the five PUBLISHes come back as Redis writes
            # them, usually in one read of the subscriber, so only the count is certain.
            assert stats.broadcast_writes - writes0 == 3
            assert sorted(c.sends for c in counted.values()) == [1, 1, 1]
        else:
            assert 3 <= stats.broadcast_writes - writes0 <= 15
        assert exported(server)["realtime_layer_broadcast_writes_total"] == \
            stats.broadcast_writes
    finally:
        await server.stop()


class Relay(WebsocketConsumer):
    """Commands, one per message: ``b X`` broadcasts X to the group; ``me X`` sends X to
    this socket only; ``tell X`` makes every member answer ``said X`` itself (an event);
    ``kick`` makes every other member close with 4001."""

    groups = ["relay"]

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        assert text_data is not None
        command, _, arg = text_data.partition(" ")
        layer = self.channel_layer
        if command == "b":
            layer.broadcast("relay", text=arg)
        elif command == "me":
            self.send(text_data=arg)
        elif command == "tell":
            layer.group_send("relay", {"type": "say", "text": arg})
        elif command == "kick":
            layer.group_send("relay", {"type": "kick", "by": self.channel_name})

    def say(self, event: dict[str, Any]) -> None:
        self.send(text_data="said " + event["text"])

    def kick(self, event: dict[str, Any]) -> None:
        if event["by"] != self.channel_name:
            self.close(4001)


RELAY = ProtocolTypeRouter({"websocket": URLRouter([path("relay", Relay.as_app())])})


@pytest_twisted.ensureDeferred
async def test_other_writes_in_the_same_read_keep_their_place(layer):
    server = await serve(RELAY, layer=layer)
    try:
        publisher, other = await members(server, "/relay", "relay", 2)
        publisher.write(b"".join(client_frame(0x1, c.encode()) for c in (
            "b one", "me two", "tell three", "b four", "kick")))
        got = await other.wait_frames(lambda fs: any(op == 0x8 for op, _ in fs))
        assert got[:3] == [(0x1, b"one"), (0x1, b"said three"), (0x1, b"four")]
        assert got[3][0] == 0x8 and got[3][1][:2] == (4001).to_bytes(2, "big")
        mine = await publisher.wait_frames(4)
        if layer.__class__.__name__ == "InMemoryChannelLayer":
            assert mine == [(0x1, b"one"), (0x1, b"two"), (0x1, b"said three"),
                            (0x1, b"four")]
        else:
            # Through Redis, group traffic comes back after a round trip, in order; the
            # direct send does not wait for it.
            assert sorted(mine) == sorted([(0x1, b"one"), (0x1, b"two"),
                                           (0x1, b"said three"), (0x1, b"four")])
            assert [m for m in mine if m != (0x1, b"two")] == [
                (0x1, b"one"), (0x1, b"said three"), (0x1, b"four")]
    finally:
        await server.stop()
