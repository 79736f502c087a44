"""The fan-out's C loop (``realtime._sendeach``, driven by ``realtime._fanout`` and
``BaseChannelLayer._send_each``) attacked with real servers and raw clients, each test
under both loops (the ``loop`` fixture: the C one, and ``send_each = None``, the Python
one), with the same expectations: a group's frames reach its members, whole, once and in
order with their own writes, never a socket that is not a member's (a closed one's
descriptor number taken again, a slot given back and handed out again), and the layer's
broadcast counters agree. Under ``CI=true`` a missing C extension fails the C runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from array import array
from typing import Any

import pytest
import pytest_twisted

from realtime import ProtocolTypeRouter, URLRouter, WebsocketConsumer, _fanout, path
from realtime.config import ServerConfig
from realtime.layers import InMemoryChannelLayer
from realtime.testing import serve
from tests.clients import RawConnection, client_frame, until, ws_open

OFFER = [(b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits")]


def _c_loop() -> Any:
    """The built extension's ``send_each``: under ``CI=true`` its absence fails."""
    if _fanout._send_each is None:
        if os.environ.get("CI") == "true":
            pytest.fail("realtime._sendeach is not built (python3 setup.py build_ext "
                        "--inplace): CI must test the C fan-out loop")
        pytest.skip("realtime._sendeach is not built")
    return _fanout._send_each


@pytest.fixture(params=["c", "python"])
def loop(request: Any) -> Any:
    """The fan-out loop for the test: ``c`` (``realtime._sendeach``) or ``python``."""
    saved = _fanout.send_each
    _fanout.send_each = _c_loop() if request.param == "c" else None
    yield request.param
    _fanout.send_each = saved


@pytest.fixture
def send_each() -> Any:
    return _c_loop()


def shout(frame: bytes) -> bytes:
    """A translation (``translate_broadcasts``) of small text frames: upper case."""
    return frame[:2] + frame[2:].upper()


class Fan(WebsocketConsumer):
    """``/fan/<group>`` joins ``group`` (``none``: no group). One command a message:
    ``to G X`` broadcasts X to group G; ``me X`` sends X to this socket only; ``join G``,
    ``leave G``."""

    def connect(self) -> None:
        group = self.scope["url_route"]["kwargs"]["group"]
        if group != "none":
            self.channel_layer.group_add(group, self.channel_name)
        self.accept()

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        assert text_data is not None
        command, _, arg = text_data.partition(" ")
        layer = self.channel_layer
        if command == "to":
            group, _, text = arg.partition(" ")
            layer.broadcast(group, text=text)
        elif command == "me":
            self.send(text_data=arg)
        elif command == "join":
            layer.group_add(arg, self.channel_name)
        elif command == "leave":
            layer.group_discard(arg, self.channel_name)


APP = ProtocolTypeRouter({"websocket": URLRouter([path("fan/<str:group>", Fan.as_app())])})


async def opened(server: Any, group: str, n: int,
                 extra: list[tuple[bytes, bytes]] | None = None) -> list[RawConnection]:
    conns = [await ws_open(server.port, f"/fan/{group}", extra=extra) for _ in range(n)]
    for conn in conns:
        assert conn.response()[0] == 101
    return conns


def server_side(server: Any, client: RawConnection) -> Any:
    port = client.proto.transport.getHost().port
    (conn,) = [c for c in server.site.connections if c.transport.getPeer().port == port]
    return conn


def stall(server: Any, client: RawConnection) -> Any:
    """``client`` stops reading, with small buffers both sides: writes to it back up soon.
    Its server side is returned."""
    client.stop_reading()
    ours = server_side(server, client)
    ours.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return ours


async def a_stalled_member(server: Any, layer: Any) -> tuple[RawConnection, RawConnection,
                                                               Any]:
    """Two members of "g" that both had "hello", the second then stalled (``stall``): the
    one reading, the stalled one, and the stalled one's server side."""
    fast, slow = await opened(server, "g", 2)
    await until(lambda: len(layer.local_members("g")) == 2)
    layer.broadcast("g", text="hello")
    for conn in (fast, slow):
        await conn.wait_frames(1)
    return fast, slow, stall(server, slow)


def table_agrees() -> None:
    """The socket table's rule: an entry is a descriptor only while its slot's owner is
    open, clean, and writes frames as they are, and it is that owner's socket's."""
    for slot, fd in enumerate(_fanout.FDS):
        if fd == -1:
            continue
        owner = _fanout.OWNERS[slot]
        assert owner is not None, f"slot {slot}: descriptor {fd} of a connection gone"
        assert owner._slot == slot and owner._clean
        assert owner._translate is None and owner._deflater is None
        transport = owner.transport
        assert transport.connected and not transport.disconnecting
        assert transport.socket.fileno() == fd


def texts(conn: RawConnection) -> list[bytes]:
    """The text frames read so far (a close frame or any other opcode fails)."""
    frames = conn.frames()
    assert all(opcode == 0x1 for opcode, _ in frames), frames
    return [payload for _, payload in frames]


def counters(layer: Any) -> tuple[int, int, int]:
    stats = layer.stats
    return stats.broadcast_frames, stats.broadcast_bytes, stats.broadcast_writes


def wire(payload: str | bytes) -> int:
    """An unmasked frame's size on the wire."""
    n = len(payload)
    return n + (2 if n < 126 else 4 if n < 65536 else 10)


def numbered(i: int, size: int) -> str:
    head = f"{i:06d} "
    return head + chr(ord("a") + i % 26) * (size - len(head))


@pytest_twisted.ensureDeferred
async def test_every_member_gets_each_broadcast_once_in_order(loop):
    """Plain members (slots: the C loop), compressing ones (no slot: ``others``), a member
    of another group; broadcasts one at a time (one frame) and a burst held for a read
    (frames joined): every member of the group gets each once, in order; the other group
    nothing; the counters count one write per member per broadcast (the burst: one)."""
    layer = InMemoryChannelLayer()
    server = await serve(APP, ServerConfig(compression=True), layer=layer)
    try:
        plain = await opened(server, "g", 10)
        deflating = await opened(server, "g", 2, extra=OFFER)
        outsider, = await opened(server, "other", 1)
        await until(lambda: len(layer.local_members("g")) == 12)
        before = counters(layer)
        sent = []
        for i in range(4):  # outside any read: each its own fan-out of one frame
            sent.append(f"one {i}".encode())
            layer.broadcast("g", text=sent[-1].decode())
        burst = [f"burst {i}".encode() for i in range(3)]
        plain[0].write(b"".join(client_frame(0x1, b"to g " + b) for b in burst))
        sent += burst
        for conn in plain + deflating:
            await conn.wait_frames(len(sent))
            assert texts(conn) == sent
        layer.broadcast("other", text="end")
        await outsider.wait_frames(1)
        assert texts(outsider) == [b"end"]
        frames, size, writes = (a - b for a, b in zip(counters(layer), before, strict=True))
        assert frames == 12 * len(sent) + 1
        assert size == 12 * sum(map(wire, sent)) + wire("end")
        assert writes == 12 * 5 + 1  # four broadcasts, the burst in one write, "end"
        members = layer._groups["g"]
        if loop == "c":
            # The group's slot array names the plain members' slots, whose entries are
            # their sockets; the compressing members go the Python way.
            _, slots, others = _fanout.slots_of(members)
            mine = {server_side(server, conn)._slot for conn in plain}
            assert sorted(slots) == sorted(mine) and -1 not in mine
            assert sorted(id(r) for r in others) == sorted(
                id(server_side(server, conn)) for conn in deflating)
            for conn in plain:
                ours = server_side(server, conn)
                assert _fanout.FDS[ours._slot] == ours.transport.socket.fileno()
                assert _fanout.OWNERS[ours._slot] is ours
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_descriptor_or_slot_taken_again_never_gets_a_groups_frames(loop):
    """Seventy members of ``a`` get a frame (each takes a slot), sixty-six leave by
    closing (their slots given back: more than a batch, so they are handed out again);
    seventy new sockets in ``b`` take the descriptor numbers and the slots the closed
    ones had. Broadcasts to ``a`` reach its four members and none of ``b``'s."""
    layer = InMemoryChannelLayer()
    server = await serve(APP, layer=layer)
    try:
        a = await opened(server, "a", 70)
        await until(lambda: len(layer.local_members("a")) == 70)
        layer.broadcast("a", text="first")
        for conn in a:
            await conn.wait_frames(1)
        old = [server_side(server, conn) for conn in a]
        old_fds = {conn.transport.socket.fileno() for conn in old}
        old_slots = {conn._slot for conn in old}
        if loop == "c":
            assert -1 not in old_slots
        generation = _fanout.generation()
        for i, conn in enumerate(a[4:]):
            if i % 2:
                conn.abort()
            else:
                conn.send_close()
        assert await until(lambda: len(layer.local_members("a")) == 4, 5.0)
        assert await until(lambda: all(conn._slot == -1 for conn in old[4:]), 5.0)
        table_agrees()
        b = await opened(server, "b", 70)
        await until(lambda: len(layer.local_members("b")) == 70)
        layer.broadcast("b", text="b first")  # each takes a slot: given-back ones too
        for conn in b:
            await conn.wait_frames(1)
        new = [server_side(server, conn) for conn in b]
        table_agrees()
        # The attack is real: numbers and slots of closed members belong to b's now.
        assert old_fds & {conn.transport.socket.fileno() for conn in new}
        if loop == "c" or old_slots != {-1}:
            assert old_slots & {conn._slot for conn in new}
            assert _fanout.generation() > generation
        for i in range(3):
            layer.broadcast("a", text=f"a {i}")
        layer.broadcast("b", text="b last")
        for conn in a[:4]:
            await conn.wait_frames(4)
            assert texts(conn) == [b"first", b"a 0", b"a 1", b"a 2"]
        for conn in b:
            await conn.wait_frames(2)
            assert texts(conn) == [b"b first", b"b last"]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_partial_write_is_finished_before_the_members_own_writes(loop):
    """A member that stops reading: the fan-out's sends to it come up short, and the rest
    of each frame goes to Twisted's buffer, then to the queue; its own message sent in
    between and the frames after it wait behind. Once it reads again it has every frame
    whole, in order, with its own message in its place; the others have every frame."""
    layer = InMemoryChannelLayer()
    config = ServerConfig(max_send_buffer=16 << 20, max_message_size=1 << 20)
    server = await serve(APP, config, layer=layer)
    try:
        fast1, fast2, slow = await opened(server, "g", 3)
        await until(lambda: len(layer.local_members("g")) == 3)
        layer.broadcast("g", text="hello")  # all clean, with slots
        for conn in (fast1, fast2, slow):
            await conn.wait_frames(1)
        ours = stall(server, slow)
        before = counters(layer)
        frames = [numbered(i, 64 << 10) for i in range(40)]
        for frame in frames[:20]:
            layer.broadcast("g", text=frame)
        assert not ours._clean and ours._slot >= 0 and _fanout.FDS[ours._slot] == -1
        assert ours._write_paused or ours._outq  # it backed up: partial writes happened
        messages_in = server.site.stats.messages_in
        slow.write(client_frame(0x1, b"me mine"))
        assert await until(lambda: server.site.stats.messages_in > messages_in, 5.0)
        for frame in frames[20:]:
            layer.broadcast("g", text=frame)
        expected = [b"hello"] + [f.encode() for f in frames]
        for conn in (fast1, fast2):
            await conn.wait_frames(41, timeout=10.0)
            assert texts(conn) == expected
        slow.resume_reading()
        await slow.wait_frames(42, timeout=15.0)
        assert texts(slow) == [*expected[:21], b"mine", *expected[21:]]
        done = counters(layer)
        assert done[0] - before[0] == 3 * 40
        assert done[1] - before[1] == 3 * sum(map(wire, frames))
        assert done[2] - before[2] == 3 * 40
        assert ours.dropped == 0 and not ours._slow_closing
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_the_drop_policy_drops_whole_frames_and_the_counters_agree(loop):
    """``--slow-consumer drop`` with a small buffer: the member that stops reading later
    has whole frames, in order, with gaps (the dropped ones, counted); the others have
    all; the layer counted exactly the frames that reached sockets."""
    layer = InMemoryChannelLayer()
    config = ServerConfig(slow_consumer="drop", max_send_buffer=64 << 10)
    server = await serve(APP, config, layer=layer)
    try:
        fast, slow, ours = await a_stalled_member(server, layer)
        before = counters(layer)
        frames = [numbered(i, 16 << 10) for i in range(120)]
        for frame in frames:
            layer.broadcast("g", text=frame)
        await fast.wait_frames(121, timeout=10.0)
        assert texts(fast) == [b"hello"] + [f.encode() for f in frames]
        assert ours.dropped > 0
        slow.resume_reading()
        kept = 120 - ours.dropped
        await slow.wait_frames(1 + kept, timeout=15.0)
        got = texts(slow)[1:]
        assert len(got) == kept
        wanted = {f.encode() for f in frames}
        assert all(frame in wanted for frame in got)  # whole frames only
        assert got == sorted(got)  # in order, none twice
        assert server.site.dropped_messages == ours.dropped
        done = counters(layer)
        assert done[0] - before[0] == 120 + kept
        assert done[1] - before[1] == sum(map(wire, frames)) + sum(map(wire, got))
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_slow_consumer_closed_4008_gets_nothing_after_its_close_frame(loop):
    """The default policy: the member that stops reading is closed with 4008 after whole
    frames, in order; nothing follows the close frame, later broadcasts skip it, and the
    others have everything."""
    layer = InMemoryChannelLayer()
    server = await serve(APP, ServerConfig(max_send_buffer=64 << 10), layer=layer)
    try:
        fast, slow, ours = await a_stalled_member(server, layer)
        frames = [numbered(i, 16 << 10) for i in range(120)]
        for frame in frames:
            layer.broadcast("g", text=frame)
        assert ours._slow_closing
        assert _fanout.FDS[ours._slot] == -1 if ours._slot >= 0 else True
        for i in range(3):
            layer.broadcast("g", text=f"after {i}")
        expected = [b"hello"] + [f.encode() for f in frames] + [
            f"after {i}".encode() for i in range(3)]
        await fast.wait_frames(len(expected), timeout=10.0)
        assert texts(fast) == expected
        slow.resume_reading()
        got = await slow.wait_frames(lambda fs: any(op == 0x8 for op, _ in fs), 15.0)
        assert got[-1][0] == 0x8 and got[-1][1][:2] == (4008).to_bytes(2, "big")
        payloads = [payload for _, payload in got[1:-1]]
        assert payloads == [f.encode() for f in frames[:len(payloads)]]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_member_gets_only_what_is_broadcast_while_it_is_one(loop):
    """Leaving and joining between broadcasts (the group's slot array, built and kept by
    then, must be built again), and in the same read as a broadcast (held: one that joins
    after it in its read does not get it; one that leaves after it does); a member of two
    groups gets both in order."""
    layer = InMemoryChannelLayer()
    server = await serve(APP, layer=layer)
    try:
        stay, mover = await opened(server, "g", 2)
        late, = await opened(server, "none", 1)
        both, = await opened(server, "h", 1)
        await until(lambda: len(layer.local_members("g")) == 2)

        async def command(conn: RawConnection, text: str, members: int) -> None:
            conn.write(client_frame(0x1, text.encode()))
            assert await until(lambda: len(layer.local_members("g")) == members)

        layer.broadcast("g", text="0")  # each takes a slot
        layer.broadcast("g", text="1")  # the array is built, and kept
        table_agrees()
        await command(mover, "leave g", 1)
        layer.broadcast("g", text="2")
        await command(mover, "join g", 2)
        await command(both, "join g", 3)
        layer.broadcast("g", text="3")
        layer.broadcast("h", text="h3")
        layer.broadcast("g", text="4")
        # In one read: a broadcast, then the join (or the leave) it must not (must) reach.
        late.write(client_frame(0x1, b"to g 5") + client_frame(0x1, b"join g"))
        assert await until(lambda: len(layer.local_members("g")) == 4)
        mover.write(client_frame(0x1, b"to g 6") + client_frame(0x1, b"leave g"))
        assert await until(lambda: len(layer.local_members("g")) == 3)
        layer.broadcast("g", text="7")
        table_agrees()
        await stay.wait_frames(8)
        assert texts(stay) == [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"]
        await mover.wait_frames(6)
        assert texts(mover) == [b"0", b"1", b"3", b"4", b"5", b"6"]
        await late.wait_frames(2)
        assert texts(late) == [b"6", b"7"]
        await both.wait_frames(6)
        assert texts(both) == [b"3", b"h3", b"4", b"5", b"6", b"7"]
        layer.broadcast("h", text="end")  # nothing else came to mover meanwhile
        await both.wait_frames(7)
        assert texts(mover) == [b"0", b"1", b"3", b"4", b"5", b"6"]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_translated_member_never_gets_a_frame_as_it_is(loop):
    """A member that took a slot (its socket written as it is, by the C loop) and then
    has its broadcasts translated (outside a read: no cork made it unclean first): every
    later frame reaches it translated, in order with the others, until the translation
    is taken away again."""
    layer = InMemoryChannelLayer()
    server = await serve(APP, layer=layer)
    try:
        plain, changing = await opened(server, "g", 2)
        await until(lambda: len(layer.local_members("g")) == 2)
        for text in ("a", "b"):  # clean, slots taken, the array kept
            layer.broadcast("g", text=text)
        await changing.wait_frames(2)
        ours = server_side(server, changing)
        # Outside a read (a timer's, an event's): nothing else made the socket unclean.
        ours.translate_broadcasts(shout)
        for text in ("c", "d", "e"):
            layer.broadcast("g", text=text)
            table_agrees()
        ours.translate_broadcasts(None)
        for text in ("f", "g"):
            layer.broadcast("g", text=text)
        table_agrees()
        await plain.wait_frames(7)
        assert texts(plain) == [b"a", b"b", b"c", b"d", b"e", b"f", b"g"]
        await changing.wait_frames(7)
        assert texts(changing) == [b"a", b"b", b"C", b"D", b"E", b"f", b"g"]
        if loop == "c":
            assert _fanout.FDS[ours._slot] == ours.transport.socket.fileno()
    finally:
        await server.stop()


# -- the C function itself, on real sockets ----------------------------------------------------
def test_send_each_writes_whole_frames_and_reports_the_rest(send_each):
    """One frame to each slot's socket; back: the slots whose entry is -1 (None), out of
    range or negative (None), whose socket took part of it (the count; its entry -1),
    and whose descriptor is no socket (-1; its entry -1). Nothing for the others."""
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for ours, _ in pairs:
            ours.setblocking(False)
        full = pairs[2][0]
        full.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        while True:  # fill it up
            try:
                full.send(b"x" * 4096)
            except BlockingIOError:
                break
        with open(os.devnull, "rb") as not_a_socket:
            table = array("i", [pairs[0][0].fileno(), pairs[1][0].fileno(), -1,
                                full.fileno(), not_a_socket.fileno()])
            assert send_each(table, array("i", [0, 1]), b"frame") is None
            assert pairs[0][1].recv(100) == b"frame" and pairs[1][1].recv(100) == b"frame"
            missed = send_each(table, array("i", [0, 2, 3, 4, 5, -1, 1]), b"frame")
        assert missed == [(2, None), (3, 0), (4, -1), (5, None), (-1, None)]
        assert list(table) == [pairs[0][0].fileno(), pairs[1][0].fileno(), -1, -1, -1]
        assert pairs[0][1].recv(100) == b"frame" and pairs[1][1].recv(100) == b"frame"
        # A large frame to a socket with room for some of it: the count sent.
        big = b"y" * (1 << 22)
        table[0] = pairs[0][0].fileno()
        (slot, took), = send_each(table, array("i", [0]), big)
        assert slot == 0 and 0 < took < len(big) and table[0] == -1
    finally:
        for one, two in pairs:
            one.close()
            two.close()


def test_send_each_refuses_bad_arguments_and_lets_go_of_its_buffers(send_each):
    table = array("i", [-1, -1])
    slots = array("i", [0, 1])
    frame = bytearray(b"frame")
    bad: list[tuple[Any, ...]] = [
        (), (table, slots), (table, slots, frame, 1),
        (b"\xff\xff\xff\xff", slots, frame),  # read-only table
        (array("q", [-1]), slots, frame), (table, array("q", [0]), frame),
        (array("I", [1]), slots, frame), (table, array("f", [0.0]), frame),
        (table, slots, "frame"), (table, [0, 1], frame), (None, slots, frame),
    ]
    for args in bad:
        with pytest.raises((TypeError, BufferError)):
            send_each(*args)
    assert send_each(table, slots, frame) == [(0, None), (1, None)]
    # Every buffer was released, on every path: each may grow again.
    table.append(-1)
    slots.append(2)
    frame.extend(b"!")
    refs = sys.getrefcount(frame), sys.getrefcount(table), sys.getrefcount(None)
    for _ in range(1000):
        send_each(table, slots, frame)
    assert (sys.getrefcount(frame), sys.getrefcount(table)) == refs[:2]
    assert abs(sys.getrefcount(None) - refs[2]) < 100


def test_send_each_to_a_closed_peer_raises_no_sigpipe(send_each):
    """A peer that is gone: -1 back, and no SIGPIPE (``MSG_NOSIGNAL``), even in a process
    that does not ignore it as Python does."""
    script = textwrap.dedent("""
        import signal, socket
        from array import array
        from realtime._sendeach import send_each
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        ours, peer = socket.socketpair()
        peer.close()
        table = array("i", [ours.fileno()])
        print(send_each(table, array("i", [0]), b"frame"), list(table))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done
    assert done.stdout.strip() == "[(0, -1)] [-1]"


def test_out_of_memory_after_the_sends_cuts_a_socket_left_in_mid_frame(send_each):
    """Memory runs out after the sends, while the answer is built: the caller never learns
    which sockets took part of the frame, and its rest would never follow (the next frame
    written after half of this one: a stream the client misreads). Those sockets are shut
    down instead: the client sees the connection end, and the server cleans up as after
    any lost connection. (CPython's own allocation-failure hook, ``_testcapi``.)"""
    testcapi = pytest.importorskip("_testcapi")
    big = b"y" * (1 << 22)
    cut = 0
    for start in range(1, 16):
        ours, peer = socket.socketpair()
        try:
            ours.setblocking(False)
            peer.setblocking(False)
            table = array("i", [ours.fileno()])
            slots = array("i", [0])
            failed = False
            testcapi.set_nomemory(start)
            try:
                send_each(table, slots, big)
            except MemoryError:
                failed = True
            finally:
                testcapi.remove_mem_hooks()
            if not failed or table[0] != -1:
                continue  # it failed before the send (nothing half done), or did not
            cut += 1
            got = 0
            while True:
                try:
                    data = peer.recv(1 << 20)
                except BlockingIOError:
                    pytest.fail(f"allocation {start} failed: {got} bytes of a frame sent "
                                "and the socket left open")
                if not data:
                    break  # the end: the socket was shut down
                got += len(data)
            assert 0 < got < len(big)
        finally:
            ours.close()
            peer.close()
    assert cut, "no allocation after the sends was made to fail"
