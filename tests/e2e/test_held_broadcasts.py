"""Held broadcasts against a real server and raw clients, on each layer kind: a burst of
messages in one read reaches every member in one write each, and whatever else the handlers
of that read write (direct sends, answers to events, close frames) keeps its place behind
the broadcasts made before it. The servers' sockets are wrapped to count send calls."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
import pytest_twisted

from realtime import ProtocolTypeRouter, URLRouter, WebsocketConsumer, path
from realtime.config import ServerConfig
from realtime.examples.bench import application as bench_app
from realtime.layers import InMemoryChannelLayer
from realtime.layers.base import _Hold
from realtime.testing import serve
from tests.clients import (
    RawConnection,
    after_headers,
    client_frame,
    handshake,
    later,
    parse_frames,
    raw_connect,
    ws_open,
)
from tests.e2e.test_cork import _count_c_sends, count_all_sends  # noqa: F401 (autouse)
from tests.test_layers import until


def exported(server: Any) -> dict[str, float]:
    """The server's /metrics exposition, parsed (sample name -> value)."""
    from prometheus_client.parser import text_string_to_metric_families

    from realtime.metrics import Collector, exposition

    _, body = exposition(Collector([server.site], server.site.layer))
    return {sample.name: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples}


async def members(server: Any, route: str, group: str, n: int) -> list[RawConnection]:
    conns = [await ws_open(server.port, route) for _ in range(n)]
    for conn in conns:
        assert conn.response()[0] == 101
    await until(lambda: len(server.site.layer.local_members(group)) == n)
    return conns


def one_burst(conns: list[RawConnection]) -> list[bytes]:
    """Five messages from one member in one write: one read."""
    burst = [f"message {i} é€😀".encode() for i in range(5)]
    conns[0].write(b"".join(client_frame(0x1, m) for m in burst))
    return burst


def two_publishers(conns: list[RawConnection]) -> list[bytes]:
    """One message from each of two members, both in the kernel before the server's next
    poll (straight to the socket, not Twisted's buffer): two reads in one reactor turn."""
    conns[0].proto.transport.socket.send(client_frame(0x1, b"from one"))
    conns[1].proto.transport.socket.send(client_frame(0x1, b"from two"))
    return [b"from one", b"from two"]


@pytest.mark.parametrize("send", [one_burst, two_publishers])
@pytest_twisted.ensureDeferred
async def test_messages_read_in_one_turn_are_one_send_per_member(layer, send):
    server = await serve(bench_app, layer=layer)
    try:
        conns = await members(server, "/room/turn", "turn", 3)
        counted = count_all_sends(server)
        stats = layer.stats
        frames0, writes0 = stats.broadcast_frames, stats.broadcast_writes
        messages = send(conns)
        n = len(messages)
        for conn in conns:
            assert await conn.wait_frames(n) == [(0x1, m) for m in messages]
        assert stats.broadcast_frames - frames0 == 3 * n
        if layer.__class__.__name__ == "InMemoryChannelLayer":
            # One write per member for all the turn's broadcasts. Through Redis the
            # PUBLISHes come back as Redis writes them, usually in one read of the
            # subscriber, so only the count is certain.
            assert stats.broadcast_writes - writes0 == 3
            assert sorted(c.sends for c in counted.values()) == [1, 1, 1]
        else:
            assert 3 <= stats.broadcast_writes - writes0 <= 3 * n
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


def server_side(server: Any, client: RawConnection) -> Any:
    port = client.proto.transport.getHost().port
    (conn,) = [c for c in server.site.connections if c.transport.getPeer().port == port]
    return conn


@pytest_twisted.ensureDeferred
async def test_a_publishers_own_send_does_not_split_the_other_members_write():
    """Two publishers in one turn, the first also answering itself (``me``): its answer
    follows its copy of the broadcast, and every other member still gets both messages in
    one send (a write of one socket's own lets out only what is held for that socket)."""
    layer = InMemoryChannelLayer()
    server = await serve(RELAY, layer=layer)
    try:
        first, second, listener = await members(server, "/relay", "relay", 3)
        counted = count_all_sends(server)
        first.proto.transport.socket.send(
            client_frame(0x1, b"b one") + client_frame(0x1, b"me ack"))
        second.proto.transport.socket.send(client_frame(0x1, b"b two"))
        both = [(0x1, b"one"), (0x1, b"two")]
        got = await listener.wait_frames(2)
        assert sorted(got) == both
        assert counted[server_side(server, listener)].sends == 1
        assert sorted(await second.wait_frames(2)) == both
        mine = await first.wait_frames(3)
        assert sorted(mine) == sorted([*both, (0x1, b"ack")])
        assert mine.index((0x1, b"one")) < mine.index((0x1, b"ack"))
        assert [m for m in mine if m != (0x1, b"ack")] == got  # one order for everyone
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_with_a_broadcast_delay_messages_of_separate_reads_share_one_send(layer):
    """``--broadcast-delay 0.3``: two messages 50 ms apart (two reactor turns; through
    Redis, two subscriber reads) reach each member in one send, no earlier than the
    delay."""
    server = await serve(bench_app, ServerConfig(broadcast_delay=0.3), layer=layer)
    try:
        conns = await members(server, "/room/slow", "slow", 3)
        counted = count_all_sends(server)
        started = time.monotonic()
        conns[0].write(client_frame(0x1, b"first"))
        await later(0.05)
        conns[1].write(client_frame(0x1, b"second"))
        for conn in conns:
            assert await conn.wait_frames(2) == [(0x1, b"first"), (0x1, b"second")]
        assert time.monotonic() - started >= 0.25
        assert sorted(c.sends for c in counted.values()) == [1, 1, 1]
        assert layer.stats.broadcast_writes == 3 and layer.stats.broadcast_frames == 6
        # Outside a read too (a timer's, this test's); through Redis the publisher's
        # Deferred fires once the broadcast is written, after the wait.
        started = time.monotonic()
        sent = layer.broadcast("slow", text="third")
        if layer.__class__.__name__ != "InMemoryChannelLayer":
            assert not sent.called
        await sent
        for conn in conns:
            assert (await conn.wait_frames(3))[2] == (0x1, b"third")
        assert time.monotonic() - started >= 0.25
    finally:
        await server.stop()
    assert _Hold.delay == 0  # stop() puts the process's delay back


# -- held bursts and the slow-consumer policy --------------------------------------------------

class Burst(WebsocketConsumer):
    """``"N SIZE"``: N broadcasts of SIZE bytes to the group, in one handler (one read)."""

    groups = ["b"]

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        assert text_data is not None
        count, size = map(int, text_data.split())
        for i in range(count):
            self.channel_layer.broadcast("b", bytes=bytes([i % 256]) * size)


BURST = ProtocolTypeRouter({"websocket": URLRouter([path("b", Burst.as_app())])})


async def stalled_and_sender(server: Any) -> tuple[RawConnection, RawConnection, Any]:
    """A member that stopped reading (small buffers both sides) and one that reads."""
    stalled = await ws_open(server.port, "/b")
    stalled.stop_reading()
    sender = await ws_open(server.port, "/b")
    await until(lambda: len(server.site.layer.local_members("b")) == 2)
    port = stalled.proto.transport.getHost().port
    (conn,) = [c for c in server.site.connections if c.transport.getPeer().port == port]
    conn.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return stalled, sender, conn


def waiting_bytes(conn: Any) -> int:
    t = conn.transport
    return t._tempDataLen + len(t.dataBuffer) - t.offset + conn._outq_bytes


@pytest_twisted.ensureDeferred
async def test_a_large_burst_still_meets_the_slow_consumer_policy(live):
    """64 frames of 64 KiB broadcast in one read: a member that does not read is closed 4008 with
    its buffer bounded, as without holding (a burst past JOIN_LIMIT is not joined)."""
    limit = 256 * 1024
    server = await live(BURST, max_send_buffer=limit, slow_consumer="close")
    stalled, sender, conn = await stalled_and_sender(server)
    count, size = 64, 64 * 1024
    sender.write(client_frame(0x1, f"{count} {size}".encode()))
    await sender.wait_frames(count, timeout=20)
    peak = waiting_bytes(conn)
    stalled.abort()
    sender.abort()
    assert server.site.slow_consumer_closes == 1, f"not closed; {peak} bytes waiting"
    assert peak <= limit + 65536 + size + 16


@pytest_twisted.ensureDeferred
async def test_every_frame_of_a_burst_is_counted_written_or_dropped(live):
    """With ``drop``, a member that cannot take a joined write gets the burst frame by
    frame: each frame is counted once, as written or as dropped."""
    server = await live(BURST, max_send_buffer=256 * 1024, slow_consumer="drop")
    stalled, sender, conn = await stalled_and_sender(server)
    site, stats = server.site, server.site.layer.stats
    for _ in range(60):  # fill the stalled member's buffers, one broadcast per read
        sender.write(client_frame(0x1, b"1 65536"))
        await later(0.01)
        if conn._outq_bytes:
            break
    assert conn._write_paused and 0 < conn._outq_bytes <= 256 * 1024
    frames0, dropped0 = stats.broadcast_frames, site.dropped_messages
    count = 20
    sender.write(client_frame(0x1, f"{count} 20000".encode()))
    await until(lambda: stats.broadcast_frames > frames0, timeout=10)
    written, dropped = stats.broadcast_frames - frames0, site.dropped_messages - dropped0
    stalled.abort()
    sender.abort()
    assert written + dropped == 2 * count and dropped > 0


STALLED: list[Any] = []


class BurstThenClose(WebsocketConsumer):
    """Like ``Burst``; ``"N SIZE close"`` then closes (1000) the first member that said
    ``"me"``, in the same read: its close frame lets the held burst out first; ``"N SIZE
    ack"`` then answers the sender, whose own send lets its share out first."""

    groups = ["b"]

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        assert text_data is not None
        if text_data == "me":
            STALLED.append(self)
            return
        count, size, *then = text_data.split()
        for i in range(int(count)):
            self.channel_layer.broadcast("b", bytes=bytes([i % 256]) * int(size))
        if then == ["close"]:
            STALLED.pop().close(1000)
        elif then == ["ack"]:
            self.send(text_data="ack")


BURST_CLOSE = ProtocolTypeRouter({"websocket": URLRouter([path("b", BurstThenClose.as_app())])})


@pytest.mark.parametrize("then", ["close", "ack"])
@pytest_twisted.ensureDeferred
async def test_a_write_whose_held_broadcasts_overflow_the_member_follows_no_4008(live, then):
    """A member that is behind, with more held for it than --max-send-buffer, and then a
    write of its own: ``close``, the server closes it (1000) in another member's read;
    ``ack``, it broadcasts the burst itself and its handler answers it. Either way the held
    frames go first and make the slow-consumer policy close it 4008, and the write asked
    for (the 1000, the answer) does not follow that close frame."""
    limit = 32 * 1024  # under what may be held (JOIN_LIMIT)
    server = await live(BURST_CLOSE, max_send_buffer=limit, slow_consumer="close",
                        close_timeout=2.0)  # time to read what was written before the close
    stalled, sender, conn = await stalled_and_sender(server)
    if then == "close":
        stalled.send_text("me")
        await until(lambda: bool(STALLED))
    for _ in range(100):  # fill the stalled member's buffers, one broadcast per read
        sender.write(client_frame(0x1, b"1 16384"))
        await later(0.01)
        if conn._outq_bytes:
            break
    assert conn._write_paused and server.site.slow_consumer_closes == 0
    # 60 KB held for it (under JOIN_LIMIT), let out by its own write: past the limit.
    (sender if then == "close" else stalled).write(client_frame(0x1, f"60 1000 {then}".encode()))
    await until(lambda: server.site.slow_consumer_closes == 1, timeout=10)
    stalled.resume_reading()
    # Everything, up to the close frame; the client's reply then ends the connection (the
    # server would wait close_timeout for it), so what the server wrote after that frame,
    # if anything, has been read by the time it is gone.
    await stalled.wait_close_frame(timeout=15)
    stalled.send_close(1000)
    frames = parse_frames(after_headers(await stalled.closed(15)))
    sender.abort()
    closes = [i for i, (op, _) in enumerate(frames) if op == 0x8]
    assert len(closes) == 1 and frames[closes[0]][1][:2] == (4008).to_bytes(2, "big")
    assert (0x1, b"ack") not in frames[closes[0]:]


# -- a read inside another read's hold -----------------------------------------------------------

WAITING: list[Any] = []


class Wait(WebsocketConsumer):
    """Accepted later, by /go; each message: a send, then a broadcast to its group."""

    groups = ["w"]

    def connect(self) -> None:
        WAITING.append(self)

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.send(text_data="a")
        self.channel_layer.broadcast("w", text="X")


class Go(WebsocketConsumer):
    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        WAITING.pop().accept()


NESTED = ProtocolTypeRouter({"websocket": URLRouter([path("wait", Wait.as_app()),
                                                     path("go", Go.as_app())])})


@pytest_twisted.ensureDeferred
async def test_a_read_parsed_inside_another_reads_hold_keeps_its_order(live):
    """/wait's frame, pipelined behind its handshake, is parsed when /go's handler accepts
    it: inside /go's read. Its send and its broadcast still reach it in order."""
    server = await live(NESTED)
    waiter = await raw_connect(server.port)
    waiter.write(handshake("/wait") + client_frame(0x1, b"hi"))
    await until(lambda: bool(WAITING))
    go = await ws_open(server.port, "/go")
    go.send_text("go")
    assert await waiter.wait_frames(2) == [(0x1, b"a"), (0x1, b"X")]


class Rooms(WebsocketConsumer):
    """A member of the rooms its path names (``/rooms/a+b``); each message ``R1+R2 X``
    broadcasts X to each named room, in that order."""

    def connect(self) -> None:
        for room in self.scope["url_route"]["kwargs"]["rooms"].split("+"):
            self.channel_layer.group_add(room, self.channel_name)
        self.accept()

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        assert text_data is not None
        rooms, _, arg = text_data.partition(" ")
        for room in rooms.split("+"):
            self.channel_layer.broadcast(room, text=f"{room}: {arg}")


ROOMS = ProtocolTypeRouter({"websocket": URLRouter([path("rooms/<str:rooms>", Rooms.as_app())])})


@pytest_twisted.ensureDeferred
async def test_a_member_of_several_rooms_gets_one_turns_broadcasts_in_one_send(layer):
    """One read broadcasts to rooms a, b, then a again: the member of both gets its three
    frames in broadcast order, the member of a alone its two, of b its one; through the
    memory layer each in one send."""
    server = await serve(ROOMS, layer=layer)
    try:
        publisher = await ws_open(server.port, "/rooms/p")
        both = await ws_open(server.port, "/rooms/a+b")
        only_a = await ws_open(server.port, "/rooms/a")
        only_b = await ws_open(server.port, "/rooms/b")
        for conn in (publisher, both, only_a, only_b):
            assert conn.response()[0] == 101
        await until(lambda: (len(server.site.layer.local_members("a")),
                             len(server.site.layer.local_members("b"))) == (2, 2))
        # On Redis a broadcast to a group whose SUBSCRIBE is still on its way waits for it
        # (so this process's members hear it): the order across groups holds once subscribed.
        # (On several servers or a cluster each group's SUBSCRIBE is its shard's: without
        # looking there this waited for nothing, and b's late SUBSCRIBE let "a: two" overtake
        # "b: one" in about one run in four.)
        shard_of = getattr(layer, "shard", lambda group: layer)
        await until(lambda: all(g in getattr(shard_of(g), "_subscribed", {g}) for g in "ab"))
        counted = count_all_sends(server)
        writes0 = layer.stats.broadcast_writes
        publisher.write(client_frame(0x1, b"a+b one") + client_frame(0x1, b"a two"))
        got = await both.wait_frames(3)
        if getattr(layer, "shard", lambda g: None)("a") is getattr(
                layer, "shard", lambda g: None)("b"):
            assert got == [(0x1, b"a: one"), (0x1, b"b: one"), (0x1, b"a: two")]
        else:
            # Groups on two Redis servers (or cluster partitions) come over two
            # connections: each group's order holds, not the order between them.
            assert [f for f in got if f[1].startswith(b"a")] == [
                (0x1, b"a: one"), (0x1, b"a: two")]
            assert [f for f in got if f[1].startswith(b"b")] == [(0x1, b"b: one")]
        assert await only_a.wait_frames(2) == [(0x1, b"a: one"), (0x1, b"a: two")]
        assert await only_b.wait_frames(1) == [(0x1, b"b: one")]
        if layer.__class__.__name__ == "InMemoryChannelLayer":
            sends = {name: counted[server_side(server, conn)].sends
                     for name, conn in (("both", both), ("a", only_a), ("b", only_b))}
            assert sends == {"both": 1, "a": 1, "b": 1}
            assert layer.stats.broadcast_writes - writes0 == 3
        else:
            # Through Redis the three PUBLISHes come back as Redis writes them: in one
            # read of the subscriber or several; the frames and their order are certain.
            assert 3 <= layer.stats.broadcast_writes - writes0 <= 6
    finally:
        await server.stop()
