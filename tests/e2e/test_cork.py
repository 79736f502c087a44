"""Write paths. Corked sends: what a connection's handlers send while one read of its
input is parsed leaves in one write, in order with broadcasts to it, close frames and large
messages. The fan-out fast path never overtakes bytes waiting in Twisted's buffer. Real
server, raw client; the server's socket is wrapped to count its send calls."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from realtime import (
    AsyncWebsocketConsumer,
    ProtocolTypeRouter,
    URLRouter,
    WebsocketConsumer,
    _fanout,
    path,
)
from realtime.examples.bench import application as bench_app
from tests.clients import client_frame, until, ws_open


class CountingSocket:
    """A real socket whose send/sendmsg calls are counted (everything else passes through)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.sends = 0

    def send(self, data: Any, *args: Any) -> int:
        self.sends += 1
        return self._sock.send(data, *args)

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        self.sends += 1
        return self._sock.sendmsg(buffers, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@pytest.fixture(autouse=True)
def _count_c_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fan-out's C loop (``realtime._fanout``) writes to the descriptor, not through
    the socket object: each of its sends to a wrapped socket is counted here."""
    real = _fanout.send_each
    if real is None:
        return

    def send_each(table: Any, slots: Any, frame: bytes) -> Any:
        missed = real(table, slots, frame)
        skipped = {slot for slot, took in missed or () if took is None}
        for slot in slots:
            owner = _fanout.OWNERS[slot] if slot not in skipped else None
            sock = getattr(getattr(owner, "transport", None), "socket", None)
            if isinstance(sock, CountingSocket):
                sock.sends += 1
        return missed

    monkeypatch.setattr(_fanout, "send_each", send_each)


def count_all_sends(server: Any) -> dict[Any, CountingSocket]:
    """Wrap every open connection's socket (by connection)."""
    counted = {}
    for conn in server.site.connections:
        counting = CountingSocket(conn.transport.socket)
        conn.transport.socket = counting
        conn._unclean()  # the fan-out fast path caches the socket: take it again
        conn._sock = None
        counted[conn] = counting
    return counted


def count_sends(server: Any) -> CountingSocket:
    """The one open connection's socket, wrapped."""
    (counting,) = count_all_sends(server).values()
    return counting


@pytest_twisted.ensureDeferred
async def test_sixteen_echoes_of_one_read_leave_in_one_send(live):
    server = await live(bench_app)
    conn = await ws_open(server.port, "/echo")
    counting = count_sends(server)
    messages = [f"message {i} é€😀".encode() for i in range(16)]
    conn.write(b"".join(client_frame(0x1, m) for m in messages))
    frames = await conn.wait_frames(16)
    assert frames == [(0x1, m) for m in messages]
    assert counting.sends == 1



@pytest_twisted.ensureDeferred
async def test_short_cut_and_autobahn_frames_of_one_read_answer_in_order_in_one_send(live):
    """Small whole frames skip Autobahn's parser (``_parse_frames``) until the first other
    one: a ping, a 3 KiB frame, a fragmented message. All of it in one read still answers
    in order, in one write."""
    server = await live(bench_app)
    conn = await ws_open(server.port, "/echo")
    counting = count_sends(server)
    big = bytes(range(256)) * 12
    conn.write(client_frame(0x1, b"one") + client_frame(0x2, b"two")
               + client_frame(0x9, b"ping") + client_frame(0x1, b"three")
               + client_frame(0x2, big) + client_frame(0x1, b"fo", fin=False)
               + client_frame(0x0, b"ur") + client_frame(0x1, b"five"))
    frames = await conn.wait_frames(7)
    assert frames == [(0x1, b"one"), (0x2, b"two"), (0xA, b"ping"), (0x1, b"three"),
                      (0x2, big), (0x1, b"four"), (0x1, b"five")]
    assert counting.sends == 1
    conn.write(client_frame(0x1, b"six"))  # the next read takes the short cut again
    frames = await conn.wait_frames(8)
    assert frames[7] == (0x1, b"six")

class Mixed(WebsocketConsumer):
    """Each message: a send, a broadcast to its own group (itself), a send; "bye" closes."""

    def connect(self) -> None:
        self.channel_layer.group_add("g", self.channel_name)
        self.accept()

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data == "bye":
            self.send(text_data="last")
            self.close(4000)
            return
        if text_data == "big":
            self.send(bytes_data=bytes(range(256)) * 400)  # 100 KiB: past the cork's limit
            return
        self.send(text_data=f"{text_data}:1")
        self.channel_layer.broadcast("g", text=f"{text_data}:2")
        self.send(text_data=f"{text_data}:3")


MIXED = ProtocolTypeRouter({"websocket": URLRouter([path("m", Mixed.as_app())])})


@pytest_twisted.ensureDeferred
async def test_broadcasts_to_a_corked_connection_keep_their_place(live):
    server = await live(MIXED)
    conn = await ws_open(server.port, "/m")
    counting = count_sends(server)
    conn.write(client_frame(0x1, b"a") + client_frame(0x1, b"b"))
    frames = await conn.wait_frames(6)
    assert [payload for _, payload in frames] == [
        b"a:1", b"a:2", b"a:3", b"b:1", b"b:2", b"b:3"]
    assert counting.sends == 1


@pytest_twisted.ensureDeferred
async def test_corked_sends_go_before_the_close_frame(live):
    server = await live(MIXED)
    conn = await ws_open(server.port, "/m")
    conn.write(client_frame(0x1, b"x") + client_frame(0x1, b"bye"))
    frames = await conn.wait_frames(5)
    assert frames[:4] == [(0x1, b"x:1"), (0x1, b"x:2"), (0x1, b"x:3"), (0x1, b"last")]
    assert frames[4][0] == 0x8 and frames[4][1][:2] == (4000).to_bytes(2, "big")


@pytest_twisted.ensureDeferred
async def test_corked_sends_go_before_a_protocol_error_close(live):
    server = await live(bench_app)
    conn = await ws_open(server.port, "/echo")
    # An echo, then a frame with a reserved opcode (0x3): the echo, then close 1002.
    conn.write(client_frame(0x1, b"first") + client_frame(0x3, b"?"))
    frames = await conn.wait_frames(2)
    assert frames[0] == (0x1, b"first")
    assert frames[1][0] == 0x8 and frames[1][1][:2] == (1002).to_bytes(2, "big")


@pytest_twisted.ensureDeferred
async def test_large_answers_in_one_read_arrive_whole_and_in_order(live):
    server = await live(MIXED)
    conn = await ws_open(server.port, "/m")
    big = bytes(range(256)) * 400
    conn.write(client_frame(0x1, b"big") + client_frame(0x1, b"s") + client_frame(0x1, b"big")
               + client_frame(0x1, b"big"))
    frames = await conn.wait_frames(6)
    assert frames == [(0x2, big), (0x1, b"s:1"), (0x1, b"s:2"), (0x1, b"s:3"), (0x2, big),
                      (0x2, big)]


@pytest_twisted.ensureDeferred
async def test_a_broadcast_never_overtakes_bytes_waiting_in_twisteds_buffer(live):
    """The fan-out fast path sends straight to the socket; a keepalive ping written into
    Twisted's buffer in the same reactor turn must still reach the client first."""
    server = await live(bench_app)
    conn = await ws_open(server.port, "/room/r")
    (ws,) = server.site.connections
    layer = server.site.layer
    layer.broadcast("r", text="one")  # the fast path, now known clean
    ws._ping_call.cancel()  # its keepalive, now rather than in 20 s:
    ws._keepalive()  # a ping into Twisted's buffer, written on the next reactor turn
    layer.broadcast("r", text="two")
    frames = await conn.wait_frames(3)
    assert frames[:3] == [(0x1, b"one"), (0x9, b"realtime"), (0x1, b"two")]


class Room(AsyncWebsocketConsumer):
    """Daphne's benchmark room, as a Channels app writes it: ``group_send`` to a handler per
    member. ``b:`` messages go out with ``broadcast()`` instead, ``late:`` ones after a wait
    (the handler sends once the read is long done)."""

    async def connect(self) -> None:
        await self.channel_layer.group_add("room", self.channel_name)
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        if text_data and text_data.startswith("b:"):
            await self.channel_layer.broadcast("room", text=text_data)
        else:
            await self.channel_layer.group_send("room", {"type": "room.message",
                                                         "text": text_data})

    async def room_message(self, event: dict[str, Any]) -> None:
        if event["text"].startswith("late:"):
            from twisted.internet import reactor

            await deferLater(reactor, 0.01, lambda: None)
        await self.send(text_data=event["text"])


ROOM = ProtocolTypeRouter({"websocket": URLRouter([path("room", Room.as_app())])})


async def _room(live: Any, members: int) -> tuple[Any, list[Any], dict[Any, Any]]:
    """A server with a publisher and ``members`` other members of the room, every socket's
    sends counted: (publisher, members, counters by server-side connection)."""
    server = await live(ROOM)
    publisher = await ws_open(server.port, "/room")
    others = [await ws_open(server.port, "/room") for _ in range(members)]
    await until(lambda: len(server.site.layer._groups.get("room", ())) == members + 1)
    return publisher, others, count_all_sends(server)


@pytest_twisted.ensureDeferred
async def test_the_group_send_events_of_one_read_reach_each_member_in_one_send(live):
    """Eight messages in one read, each a ``group_send`` to a handler per member: each
    member's handler sends eight times, and the member gets them in order in one write (a
    burst, or a server that fell behind and reads several messages at once)."""
    publisher, others, counted = await _room(live, 3)
    messages = [f"message {i}".encode() for i in range(8)]
    publisher.write(b"".join(client_frame(0x1, m) for m in messages))
    for conn in [publisher, *others]:
        frames = await conn.wait_frames(8)
        assert frames == [(0x1, m) for m in messages]
    assert sorted(c.sends for c in counted.values()) == [1, 1, 1, 1]


@pytest_twisted.ensureDeferred
async def test_group_send_events_and_broadcasts_of_one_read_keep_their_order(live):
    publisher, others, counted = await _room(live, 2)
    messages = [b"g:1", b"b:2", b"g:3", b"g:4", b"b:5", b"b:6", b"g:7"]
    publisher.write(b"".join(client_frame(0x1, m) for m in messages))
    for conn in [publisher, *others]:
        frames = await conn.wait_frames(len(messages))
        assert [payload for _, payload in frames] == messages
    # Per member: the corked handler sends and the broadcasts let out into the cork (one
    # write), then the broadcasts still held at the read's end (one more).
    assert max(c.sends for c in counted.values()) <= 2


@pytest_twisted.ensureDeferred
async def test_a_handler_that_sends_after_the_read_is_not_held_back(live):
    publisher, others, _ = await _room(live, 2)
    publisher.write(client_frame(0x1, b"late:1") + client_frame(0x1, b"now"))
    for conn in [publisher, *others]:
        frames = await conn.wait_frames(2)
        # Each member's handlers run in order: ``now`` waits for ``late:1``'s handler.
        assert [payload for _, payload in frames] == [b"late:1", b"now"]
