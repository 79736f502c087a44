"""The fan-out's C loop (``realtime._sendeach``) and its socket table (``realtime._fanout``).

``send_each`` on real loopback sockets: whole frames, not-clean slots, a full socket, a
partial write, a peer gone, a descriptor closed, bad arguments. The table: slots handed out,
given back and recycled only in batches (``generation``), a group's slot array dropped on
every change of the group. Then a real server with real clients, under the C loop and the
Python loop: the same frames, the same counts, a slot that leaves with its connection, and
a new connection on a reused descriptor that a broadcast must not reach."""

from __future__ import annotations

import os
import socket
from array import array
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from realtime import _fanout
from realtime._fanout import Members, slots_of
from realtime.config import ServerConfig
from realtime.examples.bench import application as bench_app
from realtime.layers import InMemoryChannelLayer
from realtime.testing import serve
from tests.clients import client_frame, until, ws_open

try:
    from realtime._sendeach import send_each as c_send_each
except ImportError:  # no C compiler at install time
    c_send_each = None

needs_c = pytest.mark.skipif(c_send_each is None and os.environ.get("CI") != "true",
                             reason="realtime._sendeach was not built (no C compiler)")


def test_the_c_loop_is_built_under_ci():
    """tests/run.sh installs a C compiler: under CI the C loop must be there and chosen."""
    if os.environ.get("CI") != "true" and c_send_each is None:
        pytest.skip("realtime._sendeach was not built (no C compiler)")
    assert c_send_each is not None
    assert _fanout.send_each is c_send_each


@pytest.fixture
def pairs() -> Iterator[Any]:
    """``make(n)``: n connected loopback TCP pairs (server end non-blocking, client end)."""
    made: list[socket.socket] = []

    def make(n: int) -> list[tuple[socket.socket, socket.socket]]:
        listener = socket.create_server(("127.0.0.1", 0))
        made.append(listener)
        out = []
        for _ in range(n):
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
            server.setblocking(False)
            made.extend((client, server))
            out.append((server, client))
        return out

    yield make
    for sock in made:
        sock.close()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(5)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


def nothing_to_read(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def fill(sock: socket.socket) -> None:
    """Write until the kernel takes no more (the peer reads nothing)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    while True:
        try:
            sock.send(b"x" * 65536)
        except BlockingIOError:
            return


@needs_c
def test_every_clean_slot_gets_the_whole_frame(pairs):
    (s1, c1), (s2, c2), (s3, c3) = pairs(3)
    table = array("i", [s1.fileno(), -1, s2.fileno(), s3.fileno()])
    frame = b"\x81\x05hello"
    assert c_send_each(table, array("i", [0, 2, 3]), frame) is None
    assert [read_exactly(c, len(frame)) for c in (c1, c2, c3)] == [frame] * 3
    assert list(table) == [s1.fileno(), -1, s2.fileno(), s3.fileno()]


@needs_c
def test_slots_that_are_not_clean_are_handed_back_untouched(pairs):
    (s1, c1), (s2, c2) = pairs(2)
    table = array("i", [s1.fileno(), -1, s2.fileno()])
    missed = c_send_each(table, array("i", [1, 0, 7, -3, 2]), b"\x81\x01a")
    # Not clean (-1), past the table's end, negative: each once, in order, nothing sent.
    assert missed == [(1, None), (7, None), (-3, None)]
    assert read_exactly(c1, 3) == b"\x81\x01a"
    assert read_exactly(c2, 3) == b"\x81\x01a"
    assert list(table) == [s1.fileno(), -1, s2.fileno()]


@needs_c
def test_a_full_socket_is_reported_with_nothing_taken_and_leaves_the_table(pairs):
    (full, _), (ok, c_ok) = pairs(2)
    fill(full)
    table = array("i", [full.fileno(), ok.fileno()])
    assert c_send_each(table, array("i", [0, 1]), b"\x81\x02hi") == [(0, 0)]
    assert table[0] == -1  # not clean any more: the caller buffers the frame
    assert table[1] == ok.fileno()
    assert read_exactly(c_ok, 4) == b"\x81\x02hi"


@needs_c
def test_a_partial_write_reports_what_the_kernel_took(pairs):
    ((server, client),) = pairs(1)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    frame = b"\x82\x7f" + (8 << 20).to_bytes(8, "big") + os.urandom(8 << 20)
    table = array("i", [server.fileno()])
    ((slot, took),) = c_send_each(table, array("i", [0]), frame)
    assert slot == 0 and 0 < took < len(frame)
    assert table[0] == -1
    assert read_exactly(client, took) == frame[:took]  # exactly the head it said it took


@needs_c
def test_a_peer_gone_or_a_closed_descriptor_is_an_error_not_a_signal(pairs):
    (s1, c1), (s2, _), (s3, c3) = pairs(3)
    c1.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c1.close()  # a reset: a send fails with EPIPE/ECONNRESET (and no SIGPIPE kills us)
    closed = s2.fileno()
    s2.close()
    table = array("i", [s1.fileno(), closed, s3.fileno()])
    missed = c_send_each(table, array("i", [0, 1, 2]), b"\x81\x01z")
    assert (1, -1) in missed  # EBADF
    assert table[1] == -1
    for _ in range(5):  # the reset is seen by the first send, or the next
        if (0, -1) in missed:
            break
        missed = c_send_each(table, array("i", [0]), b"\x81\x01z")
    assert (0, -1) in missed and table[0] == -1
    assert read_exactly(c3, 3) == b"\x81\x01z"


@needs_c
def test_bad_arguments_are_refused_by_type():
    with pytest.raises(TypeError, match="send_each"):
        c_send_each(array("i"), array("i"))
    with pytest.raises(TypeError, match="array\\('i'\\)"):
        c_send_each(array("l", [1]), array("i", [0]), b"x")
    with pytest.raises(TypeError, match="array\\('i'\\)"):
        c_send_each(array("i", [1]), array("q", [0]), b"x")
    with pytest.raises(BufferError):  # not writable
        c_send_each(b"\x00\x00\x00\x00", array("i", [0]), b"x")
    with pytest.raises(TypeError):
        c_send_each(array("i", [1]), array("i", [0]), "text")


# -- the table ------------------------------------------------------------------------------


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A table of this test's own (the module's globals put back after)."""
    monkeypatch.setattr(_fanout, "FDS", array("i"))
    monkeypatch.setattr(_fanout, "OWNERS", [])
    monkeypatch.setattr(_fanout, "_free", [])
    monkeypatch.setattr(_fanout, "_given_back", [])
    monkeypatch.setattr(_fanout._Generation, "value", 0)


def test_a_given_back_slot_is_not_handed_out_before_the_next_generation(table):
    owners = [object() for _ in range(_fanout.BATCH + 1)]
    slots = [_fanout.take(owner) for owner in owners]
    assert slots == list(range(len(owners)))
    _fanout.FDS[0] = 99
    _fanout.give_back(0)
    assert _fanout.FDS[0] == -1 and _fanout.OWNERS[0] is None
    # Fewer than a batch given back: a new slot, not slot 0 (a group may still name it).
    assert _fanout.take(object()) == len(owners)
    assert _fanout.generation() == 0
    for slot in range(1, _fanout.BATCH):
        _fanout.give_back(slot)
    newcomer = object()
    slot = _fanout.take(newcomer)  # a batch: recycled, and every slot array is stale
    assert slot < _fanout.BATCH
    assert _fanout.generation() == 1
    assert _fanout.OWNERS[slot] is newcomer and _fanout.FDS[slot] == -1


class Receiver:
    """A layer receiver; ``slotted``: one that took a slot in the table (a connection)."""

    def __init__(self, slotted: bool = False) -> None:
        self._slot = _fanout.take(self) if slotted else -1


def test_every_change_of_a_group_drops_its_slot_array(table):
    members = Members()
    changes = [
        lambda m: m.__setitem__("c", Receiver()),
        lambda m: m.__delitem__("a"),
        lambda m: m.pop("a"),
        lambda m: m.pop("zz", None),
        lambda m: m.popitem(),
        lambda m: m.clear(),
        lambda m: m.setdefault("d", Receiver()),
        lambda m: m.update(e=Receiver()),
        lambda m: m.__ior__({"f": Receiver()}),
    ]
    for change in changes:
        members.clear()
        members["a"] = Receiver(slotted=True)
        members["b"] = None  # a channel with no receiver here: skipped
        first = slots_of(members)
        assert slots_of(members) is first  # kept while nothing changes
        change(members)
        assert members.fast is None, change


def test_the_slot_array_holds_slots_and_the_rest_apart_and_follows_the_generation(table):
    slotted = Receiver(slotted=True)
    plain = Receiver()
    # An app's receiver whose own ``_slot`` means something else: no slot of the table.
    own = [Receiver() for _ in range(3)]
    for receiver, value in zip(own, (slotted._slot, None, "10:30"), strict=True):
        receiver._slot = value  # type: ignore[assignment]
    members = Members()
    members.update(a=slotted, b=plain, c=None, d=own[0], e=own[1], f=own[2])
    generation, slots, others = slots_of(members)
    assert list(slots) == [slotted._slot] and others == [plain, *own]
    _fanout._Generation.value += 1
    assert slots_of(members)[0] == generation + 1  # built again


# -- a real server, both loops ----------------------------------------------------------------


@pytest.fixture(params=["c", "python"])
def loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "c":
        if c_send_each is None:
            if os.environ.get("CI") == "true":
                pytest.fail("realtime._sendeach was not built")
            pytest.skip("realtime._sendeach was not built (no C compiler)")
        monkeypatch.setattr(_fanout, "send_each", c_send_each)
    else:
        monkeypatch.setattr(_fanout, "send_each", None)
    return request.param


def server_end(server: Any, client: Any) -> Any:
    """The server's connection of a raw client (matched by the client's port)."""
    port = client.proto.transport.getHost().port
    (conn,) = [c for c in server.site.connections if c.channel_name is not None
               and c.transport.getPeer().port == port]
    return conn


async def first_broadcast(conns: list[Any], text: bytes) -> list[Any]:
    """The first member sends ``text`` (the bench app broadcasts it to the room); once
    every member has a frame (each clean now, with a slot), the frames each has."""
    conns[0].send_frame(0x1, text)
    return [await conn.wait_frames(1) for conn in conns]


async def room(server: Any, n: int, name: str = "r") -> list[Any]:
    conns = [await ws_open(server.port, f"/room/{name}") for _ in range(n)]
    assert all(conn.response()[0] == 101 for conn in conns)
    await until(lambda: len(server.site.layer.local_members(name)) == n)
    return conns


@pytest_twisted.ensureDeferred
async def test_every_member_gets_every_broadcast_in_order_with_the_same_counts(loop):
    layer = InMemoryChannelLayer()
    server = await serve(bench_app, layer=layer)
    try:
        conns = await room(server, 20)
        messages = [f"m{i} é€😀".encode() for i in range(6)]
        for i, message in enumerate(messages):  # one message per read: one broadcast each
            conns[i % 3].send_frame(0x1, message)
            for conn in conns:
                await conn.wait_frames(i + 1)
        for conn in conns:
            assert conn.frames() == [(0x1, m) for m in messages]
        stats = layer.stats
        assert stats.broadcast_frames == 20 * len(messages)
        assert stats.broadcast_writes == 20 * len(messages)
        assert stats.broadcast_bytes == 20 * sum(len(client_frame(0x1, m)) - 4
                                                 for m in messages)
        # After the first broadcast every member is clean, its descriptor in the table.
        assert all(c._slot >= 0 and _fanout.FDS[c._slot] == c.transport.socket.fileno()
                   for c in server.site.connections)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_lost_connection_gives_its_slot_back():
    server = await serve(bench_app, layer=InMemoryChannelLayer())
    try:
        conns = await room(server, 2)
        await first_broadcast(conns, b"hi")
        gone = server_end(server, conns[1])
        slot = gone._slot
        assert slot >= 0 and _fanout.OWNERS[slot] is gone
        conns[1].abort()
        await until(lambda: gone._slot == -1)
        assert _fanout.FDS[slot] == -1 and _fanout.OWNERS[slot] is None
        conns[0].send_frame(0x1, b"again")  # the group still names the slot: skipped
        assert await conns[0].wait_frames(2) == [(0x1, b"hi"), (0x1, b"again")]
    finally:
        await server.stop()


def table_names_only_live_sockets() -> None:
    """Every descriptor in the table is its slot's owner's socket's, the owner open: a
    closed socket's number (which the kernel hands out again) is in no entry."""
    for slot, fd in enumerate(_fanout.FDS):
        if fd != -1:
            owner = _fanout.OWNERS[slot]
            assert owner is not None and owner._slot == slot, f"slot {slot}: a gone fd {fd}"
            assert owner.transport.connected and owner.transport.socket.fileno() == fd


@pytest_twisted.ensureDeferred
async def test_a_new_connection_on_a_reused_descriptor_gets_nothing_of_the_group(loop):
    """Members leave; new sockets get their descriptor numbers (the kernel hands out the
    lowest free ones) and slots of their own, in another group: no table entry names a
    closed socket's number, and broadcasts to either group reach only its members. (Which
    numbers come back is the kernel's: other threads of the test process open files too,
    so the premise is that some are taken again, not which.)"""
    server = await serve(bench_app, layer=InMemoryChannelLayer())
    try:
        conns = await room(server, 8)
        await first_broadcast(conns, b"one")
        ours = {c.transport.getPeer().port: c for c in server.site.connections}
        leaving = conns[3:]
        freed = {ours[c.proto.transport.getHost().port].transport.fileno() for c in leaving}
        gone = [ours[c.proto.transport.getHost().port] for c in leaving]
        for conn in leaving:
            conn.abort()
        await until(lambda: not any(c in server.site.connections for c in gone))
        table_names_only_live_sockets()
        strangers = await room(server, 5, "other")
        # Each takes a slot of its own.
        assert await first_broadcast(strangers, b"theirs") == [[(0x1, b"theirs")]] * 5
        new = {c.transport.fileno() for c in server.site.connections
               if c.transport.getPeer().port in
               {s.proto.transport.getHost().port for s in strangers}}
        assert freed & new  # the premise: numbers of closed members were taken again
        table_names_only_live_sockets()
        stayed = conns[:3]
        stayed[0].send_frame(0x1, b"two")
        for conn in stayed:
            assert await conn.wait_frames(2) == [(0x1, b"one"), (0x1, b"two")]
        strangers[1].send_frame(0x1, b"last")
        for conn in strangers:
            assert await conn.wait_frames(2) == [(0x1, b"theirs"), (0x1, b"last")]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_member_that_stops_reading_does_not_cost_the_others_a_frame(loop):
    layer = InMemoryChannelLayer()
    server = await serve(bench_app, ServerConfig(max_send_buffer=65536), layer=layer)
    try:
        conns = await room(server, 4)
        slow = conns[3]
        slow.stop_reading()
        # Small kernel buffers on both ends: Twisted's buffer and the queue fill soon.
        slow.proto.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow_end = server_end(server, slow)
        slow_end.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = os.urandom(60000)
        for i in range(30):  # 1.8 MB: far more than the slow socket's buffers take
            conns[0].send_frame(0x2, big[:-1] + bytes([i]))
            for conn in conns[:3]:
                await conn.wait_frames(i + 1, timeout=10)
        for conn in conns[:3]:
            assert [p[-1] for _, p in conn.frames()] == list(range(30))
        # The slow one was closed for it (4008, the default policy), never the others.
        assert server.site.slow_consumer_closes == 1
        assert slow_end.transport.disconnecting or slow_end.state != slow_end.STATE_OPEN
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_broadcast_off_the_reactor_thread_takes_the_python_loop(monkeypatch):
    """The C loop reads the socket table with the GIL released: only the reactor's thread,
    which alone changes the table, may run it. A broadcast on the raw layer from another
    thread (outside the contract) is still delivered, by the Python loop."""
    if c_send_each is None:
        pytest.skip("realtime._sendeach was not built (no C compiler)")
    import threading

    from twisted.internet import threads

    threads_seen = []

    def recording(table: Any, slots: Any, frame: bytes) -> Any:
        threads_seen.append(threading.get_ident())
        return c_send_each(table, slots, frame)

    monkeypatch.setattr(_fanout, "send_each", recording)
    layer = InMemoryChannelLayer()
    server = await serve(bench_app, layer=layer)
    try:
        conns = await room(server, 3)
        await first_broadcast(conns, b"first")  # on the reactor: each takes a slot
        conns[0].send_frame(0x1, b"second")  # the C loop, on the reactor's thread
        for conn in conns:
            await conn.wait_frames(2)
        assert threads_seen == [threading.get_ident()]
        await threads.deferToThread(layer._send_frames, "r", [b"\x81\x05third"])
        for conn in conns:
            assert await conn.wait_frames(3) == [(0x1, b"first"), (0x1, b"second"),
                                                 (0x1, b"third")]
        assert threads_seen == [threading.get_ident()]  # not called from the thread
    finally:
        await server.stop()
