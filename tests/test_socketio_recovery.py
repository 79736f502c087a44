"""``realtime.socketio``'s connection state recovery (``realtime.socketio_recovery``) against
Node's ``socket.io-client`` (tests/node/socketio_recover.js, told by stdin when to cut and
come back), on WebSocket, polling and the upgrade; python-socketio's client (which sends no
pid) and raw packets for what it must not do; a second process over a real redis-server."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from websockets.exceptions import ConnectionClosed

from realtime import socketio as rsio
from realtime import socketio_recovery as rsio_recovery
from tests.clients import in_thread, until
from tests.test_socketio import WAIT, PyClient, Raw, app, quick_server, start, stop_all

NODE_MODULES = Path(__file__).parent / ".node" / "node_modules"
NODE_SCRIPT = Path(__file__).parent / "node" / "socketio_recover.js"


@pytest.fixture
def node_client() -> Any:
    """``await node_client(url, transports)``: a running socketio_recover.js (killed after
    the test); skipped without Node and socket.io-client, failed so under CI=true."""
    if shutil.which("node") is None or not (NODE_MODULES / "socket.io-client").is_dir():
        reason = "needs node and socket.io-client in tests/.node (bash tests/run.sh)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    started: list[NodeClient] = []

    def make(url: str, transports: str = "websocket", auth: Any = None) -> NodeClient:
        client = NodeClient(url, transports, {"token": "js"} if auth is None else auth)
        started.append(client)
        return client

    yield make
    for client in started:
        client.stop()


class NodeClient:
    """socketio_recover.js in a subprocess: ``next()`` is its next printed line."""

    def __init__(self, url: str, transports: str, auth: Any) -> None:
        env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
        self.proc = subprocess.Popen(
            ["node", str(Path(NODE_SCRIPT)), url, transports, json.dumps(auth)], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []  # every line, for a failure's message
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.seen.append(json.loads(line))
            self.lines.put(self.seen[-1])

    async def next(self) -> dict[str, Any]:
        try:
            return await in_thread(self.lines.get, True, WAIT)
        except queue.Empty:
            raise AssertionError(f"socket.io-client printed nothing in time; it printed "
                                 f"{self.seen}") from None

    async def until(self, key: str) -> dict[str, Any]:
        """The next line with ``key`` (the lines before it skipped)."""
        while True:
            line = await self.next()
            if key in line:
                return line

    async def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _events(lines: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """The events among ``lines``, each without its offset (checked to be a string)."""
    events = []
    for line in lines:
        if "event" in line:
            *args, offset = line["args"]
            assert isinstance(offset, str) and offset, line
            events.append((line["event"], args))
    return events


def _holds(layer: Any, channel: str) -> bool:
    """Whether the layer still knows ``channel``: attached, or a member of any group."""
    return channel in layer._receivers or any(
        channel in members for members in layer._groups.values())


def recovering_server(**recovery: Any) -> rsio.AsyncServer:
    sio = quick_server(connection_state_recovery={"max_disconnection_duration": 5,
                                                  **recovery})
    sio.seen = []  # type: ignore[attr-defined]
    sio.reasons = []  # type: ignore[attr-defined]

    @sio.event
    async def connect(sid, environ, auth):
        sio.seen.append({"sid": sid, "auth": auth,  # type: ignore[attr-defined]
                         "recovered": sio.recovered(sid)})
        if not sio.recovered(sid):
            await sio.enter_room(sid, "room")
            await sio.save_session(sid, {"user": "ada"})

    @sio.event
    async def disconnect(sid, reason):
        sio.reasons.append(reason)  # type: ignore[attr-defined]

    @sio.event
    async def hi(sid):
        await sio.emit("hello", "first", room="room")

    return sio


async def _connected_then_cut(sio: rsio.AsyncServer, client: NodeClient,
                              command: str = "cut", upgrade: bool = False) -> str:
    """The client connects (and upgrades), has one room packet (its offset), and loses
    its connection; its sid, once the server keeps it."""
    first = await client.until("connected")
    assert first["recovered"] is False
    if upgrade and first["transport"] != "websocket":  # (not upgraded before the connect)
        await client.until("upgraded")
    await client.tell("emit hi")
    hello = await client.until("event")
    assert _events([hello]) == [("hello", ["first"])]
    await client.tell(command)
    assert (await client.until("disconnect"))["disconnect"] in (
        "forced close", "transport close")
    assert await until(lambda: sio._recovery.kept_count() == 1)
    return str(first["connected"])


@pytest.mark.parametrize("transports", ["websocket", "polling,websocket", "polling"],
                         ids=["websocket", "upgrade", "polling"])
@pytest_twisted.ensureDeferred
async def test_a_lost_connection_comes_back_with_its_sid_rooms_session_and_missed_packets(
        live, node_client, transports):
    sio = recovering_server()
    url = await start(live, sio)
    client = node_client(url, transports)
    sid = await _connected_then_cut(sio, client, upgrade=transports == "polling,websocket")
    assert sio.reasons == ["client disconnect" if transports == "polling"  # Engine.IO's close
                           else "transport close"]
    assert sio.rooms(sid) == [] and not sio.recovered(sid)  # not connected here
    with pytest.raises(KeyError):
        await sio.get_session(sid)
    # Meanwhile: to its room, to its sid, to everyone, with attachments; not to it.
    await sio.emit("missed", 1, room="room")
    await sio.emit("missed", 2, to=sid)
    await sio.emit("missed", (3, b"\x01\x02"))
    await sio.emit("missed", 4, room="another room")
    await sio.emit("missed", 5, room="room", skip_sid=sid)
    await sio.enter_room(sid, "joined while away")
    await sio.emit("missed", 6, room="joined while away")
    await sio.emit("missed", 7, to=["room", "joined while away"])  # once
    await client.tell("reconnect")
    back = await client.until("connected")
    assert back["connected"] == sid and back["recovered"] is True
    lines = [await client.next() for _ in range(5)]
    assert _events(lines) == [("missed", [1]), ("missed", [2]),
                              ("missed", [3, {"bytes": [1, 2]}]), ("missed", [6]),
                              ("missed", [7])]
    assert sio.seen[-1] == {"sid": sid, "auth": {"token": "js"}, "recovered": True}
    assert sorted(map(str, sio.rooms(sid))) == sorted([sid, "room", "joined while away"])
    assert await sio.get_session(sid) == {"user": "ada"}
    assert sio._recovery.kept_count() == 0
    await sio.emit("live", 8, room="room")  # and on it goes
    assert _events([await client.until("event")]) == [("live", [8])]
    # socket.disconnect(): not recoverable; everything of the socket goes.
    channel = sio._sockets[sid].channel
    await client.tell("leave")
    assert await until(lambda: len(sio.reasons) == 2)
    assert sio.reasons[1] == "client disconnect"
    assert sio._recovery.kept_count() == 0 and not _holds(sio.channel_layer, channel)
    assert not sio._recovery._by_pid and not sio._recovery._by_sid


@pytest_twisted.ensureDeferred
async def test_a_dropped_tcp_connection_is_recovered_too(live, node_client):
    """No close frame (the network went): the server learns it from the TCP close; what
    it sent into the lost connection before it knew comes again (nothing confirmed it)."""
    sio = recovering_server()
    url = await start(live, sio)
    client = node_client(url)
    sid = await _connected_then_cut(sio, client, "drop")
    await sio.emit("missed", 1, to=sid)
    await client.tell("reconnect")
    back = await client.until("connected")
    assert (back["connected"], back["recovered"]) == (sid, True)
    assert _events([await client.next()]) == [("missed", [1])]


@pytest_twisted.ensureDeferred
async def test_an_expired_session_leaves_the_layer_and_the_reconnect_is_a_fresh_one(
        live, node_client):
    sio = recovering_server(max_disconnection_duration=0.3)
    url = await start(live, sio)
    client = node_client(url)
    sid = await _connected_then_cut(sio, client)
    channel, layer = channel_of(sid), sio.channel_layer
    assert _holds(layer, channel)  # in its groups while kept
    await sio.emit("missed", 1, room="room")
    assert await until(lambda: sio._recovery.kept_count() == 0)
    assert not _holds(layer, channel), "an expired socket is still in the layer"
    assert not sio._recovery._by_pid and not sio._recovery._by_sid
    await sio.emit("missed", 2, to=sid)  # nobody's now: nothing kept, nothing fails
    await client.tell("reconnect")
    back = await client.until("connected")
    assert back["recovered"] is False and back["connected"] != sid
    assert sio.seen[-1]["recovered"] is False and sio.seen[-1]["auth"] == {"token": "js"}


def channel_of(sid: str) -> str:
    channel = rsio.channel_of(sid)
    assert channel is not None
    return channel


@pytest_twisted.ensureDeferred
async def test_past_its_bound_a_lost_socket_is_let_go(live, node_client):
    sio = recovering_server(max_packets=3)
    url = await start(live, sio)
    client = node_client(url)
    sid = await _connected_then_cut(sio, client)
    kept = sio._recovery._by_sid[sid]
    n = 0
    for n in range(4):  # bounded: three kept (with "hello", unless a pong came after it)
        if len(kept.packets) >= 3:
            break
        await sio.emit("missed", n, room="room")
    assert len(kept.packets) == 3, kept.packets
    assert sio._recovery.kept_count() == 1  # three: still kept
    await sio.emit("missed", n, room="room")
    assert sio._recovery.kept_count() == 0
    assert not _holds(sio.channel_layer, channel_of(sid))
    await client.tell("reconnect")
    back = await client.until("connected")
    assert back["recovered"] is False and back["connected"] != sid


@pytest_twisted.ensureDeferred
async def test_bytes_past_max_send_buffer_let_a_lost_socket_go(live, node_client):
    sio = recovering_server()
    url = await start(live, sio, max_send_buffer=4096)
    client = node_client(url)
    sid = await _connected_then_cut(sio, client)
    await sio.emit("missed", "x" * 3000, to=sid)
    assert sio._recovery.kept_count() == 1
    await sio.emit("missed", "y" * 3000, to=sid)
    assert sio._recovery.kept_count() == 0
    assert not _holds(sio.channel_layer, channel_of(sid))


@pytest_twisted.ensureDeferred
async def test_a_forged_pid_or_offset_gets_a_fresh_socket(live, node_client):
    sio = recovering_server()
    url = await start(live, sio)
    client = node_client(url)
    sid = await _connected_then_cut(sio, client)
    kept = sio._recovery._by_sid[sid]
    raw = await Raw.open(url)
    await raw.send('40{"pid":"forged","offset":"x","token":"raw"}')
    answer = json.loads(str(await raw.recv())[2:])
    assert answer["sid"] != sid and answer["pid"] not in ("forged", kept.pid)
    assert sio.seen[-1] == {"sid": answer["sid"], "auth": {"token": "raw"},
                            "recovered": False}
    assert sio._recovery.kept_count() == 1  # somebody else's pid: left alone
    # The right pid with an offset it never had: a fresh socket; the kept one goes.
    raw2 = await Raw.open(url)
    await raw2.send('40{"pid":"' + kept.pid + '","offset":"nope"}')
    again = json.loads(str(await raw2.recv())[2:])
    assert again["sid"] != sid
    assert await until(lambda: sio._recovery.kept_count() == 0)
    assert not _holds(sio.channel_layer, channel_of(sid))
    await client.tell("reconnect")  # too late now
    assert (await client.until("connected"))["recovered"] is False
    await raw.close()
    await raw2.close()


@pytest_twisted.ensureDeferred
async def test_python_socketios_client_sends_no_pid_and_what_it_leaves_expires(live):
    """python-socketio's client ignores the pid and gets the offset as one more argument;
    its ``disconnect()`` often loses its DISCONNECT packet (python-engineio closes first):
    a lost connection then, kept for nothing until it expires."""
    sio = recovering_server(max_disconnection_duration=0.3)
    url = await start(live, sio)
    client = PyClient("hello")
    await client.connect(url)
    sid = client.client.get_sid()
    assert sio.recovered(sid) is False and sio.seen[-1]["auth"] is None
    await client.emit("hi")
    event, args = await client.next()
    assert event == "hello" and args[0] == "first" and isinstance(args[1], str)
    await client.disconnect()
    assert await until(lambda: sio.reasons), "no disconnect"
    assert sio.reasons[0] in ("client disconnect", "transport close")
    assert await until(lambda: not sio._recovery._by_sid)
    assert not _holds(sio.channel_layer, channel_of(sid))


@pytest_twisted.ensureDeferred
async def test_recovery_is_off_by_default_and_its_options_are_checked(live):
    raw_server = quick_server()
    url = await start(live, raw_server)
    raw = await Raw.open(url)
    await raw.send('40{"pid":"p","offset":"o"}')
    answer = json.loads(str(await raw.recv())[2:])
    assert list(answer) == ["sid"]  # no pid: socket.io-client does not try
    await raw.close()
    with pytest.raises(TypeError, match="unknown options"):
        rsio.AsyncServer(connection_state_recovery={"maxDisconnectionDuration": 1})
    with pytest.raises(ValueError, match="max_disconnection_duration"):
        rsio.AsyncServer(connection_state_recovery={"max_disconnection_duration": 0})
    with pytest.raises(ValueError, match="max_packets"):
        rsio.AsyncServer(connection_state_recovery={"max_packets": -1})


@pytest_twisted.ensureDeferred
async def test_packets_from_another_process_reach_a_lost_socket_through_redis(
        redis_url, node_client, realtime_leak_check):
    """Two servers on two Redis layers: the other process's room, namespace and sid
    packets (and its room change) reach the socket this one keeps, in order; the server's
    stop lets the kept sockets go."""
    from realtime.testing import serve
    from tests.redis_support import started_layer

    layers = [await started_layer(redis_url) for _ in range(2)]
    servers = []
    try:
        sios = [recovering_server(), recovering_server()]
        for sio, layer in zip(sios, layers, strict=True):
            sio._channel_layer = layer
            servers.append(await serve(app(sio), layer=layer))
        here, other = sios
        client = node_client(f"http://127.0.0.1:{servers[0].port}")
        sid = await _connected_then_cut(here, client)
        await other.emit("missed", 1, room="room")
        await other.emit("missed", 2, to=sid)
        await other.enter_room(sid, "elsewhere")
        await other.emit("missed", 3)
        kept = here._recovery._by_sid[sid]
        assert await until(lambda: len(kept.packets) >= 3)
        assert await until(lambda: "elsewhere" in kept.socket.rooms.values())
        await other.emit("missed", 4, room="elsewhere")
        assert await until(lambda: len(kept.packets) >= 4)
        await client.tell("reconnect")
        back = await client.until("connected")
        assert (back["connected"], back["recovered"]) == (sid, True)
        lines = [await client.next() for _ in range(4)]
        assert _events(lines) == [("missed", [n]) for n in (1, 2, 3, 4)]
        await client.tell("cut")  # kept again, then the server stops
        assert await until(lambda: here._recovery.kept_count() == 1)
    finally:
        await stop_all(servers, layers)
    assert here._recovery.kept_count() == 0


async def _packet(raw: Raw, pong: bool = False) -> str:
    """The next message that is not a ping (answered with ``pong``: no pong, nothing
    confirmed)."""
    while True:
        message = str(await raw.recv())
        if message != "2":
            return message
        if pong:
            await raw.send("3")


@pytest_twisted.ensureDeferred
async def test_a_pong_confirms_what_went_before_its_ping_and_no_offset_replays_all(live):
    """Raw packets: the CONNECT answer is ``{sid, pid}``; a pong drops the packets sent
    before its ping (the client has them) and the offset of the last still recovers;
    a reconnect without an offset (the client had no packet) gets every kept one; the
    missed packets follow the CONNECT answer, in order."""
    sio = quick_server(ping_interval=0.2, connection_state_recovery={
        "max_disconnection_duration": 5})
    url = await start(live, sio)
    raw = await Raw.open(url)
    await raw.send("40")
    answer = json.loads(str(await raw.recv())[2:])
    sid, pid = answer["sid"], answer["pid"]
    kept = sio._recovery._by_sid[sid]
    await sio.emit("one", to=sid)
    one = await _packet(raw, pong=True)  # (a ping before it: answered, confirms nothing)
    offset = json.loads(one[2:])[-1]
    assert one == f'42["one","{offset}"]' and len(kept.packets) == 1
    assert await raw.recv() == "2"
    await raw.send("3")
    assert await until(lambda: not kept.packets)  # confirmed
    assert kept.confirmed is not None and kept.confirmed[0] == offset
    await raw.close()
    assert await until(lambda: sio._recovery.kept_count() == 1)
    await sio.emit("two", to=sid)
    await sio.emit("three", to=sid)
    again = await Raw.open(url)
    await again.send("40" + json.dumps({"pid": pid, "offset": offset, "user": "u"}))
    assert json.loads((await _packet(again))[2:]) == {"sid": sid, "pid": pid}
    assert [json.loads((await _packet(again))[2:])[0] for _ in range(2)] == ["two", "three"]
    assert sio.recovered(sid)
    await again.close()  # no pong: "two" and "three" still kept
    assert await until(lambda: sio._recovery.kept_count() == 1)
    third = await Raw.open(url)
    await third.send("40" + json.dumps({"pid": pid}))  # no offset: all it keeps
    assert json.loads((await _packet(third))[2:]) == {"sid": sid, "pid": pid}
    assert [json.loads((await _packet(third))[2:])[0] for _ in range(2)] == ["two", "three"]
    await third.close()


@pytest_twisted.ensureDeferred
async def test_close_room_and_disconnect_reach_a_kept_socket(live):
    sio = recovering_server()
    url = await start(live, sio)
    raw = await Raw.open(url)
    await raw.send("40")
    sid = json.loads((await _packet(raw))[2:])["sid"]
    await raw.close()
    assert await until(lambda: sio._recovery.kept_count() == 1)
    kept = sio._recovery._by_sid[sid]
    await sio.close_room("room")
    assert await until(lambda: not kept.socket.rooms)
    assert sio.channel_layer.local_members(rsio.room_group("/", "room")) == []
    await sio.disconnect(sid)  # a server disconnect: not coming back
    assert sio._recovery.kept_count() == 0 and not sio._recovery._by_pid
    assert not _holds(sio.channel_layer, channel_of(sid))


@pytest_twisted.ensureDeferred
async def test_a_disconnect_handler_that_never_returns_does_not_leak_the_socket(live):
    """Cancelled --application-close-timeout after the close, it still lets the socket be
    kept (and then let go): its own channel is not the connection's, which the bridge
    detaches by itself."""
    sio = quick_server(connection_state_recovery={"max_disconnection_duration": 0.5})
    forever: Deferred[None] = Deferred()

    @sio.event
    async def disconnect(sid, reason):
        await forever

    url = await start(live, sio, application_close_timeout=0.3)
    raw = await Raw.open(url)
    await raw.send("40")
    sid = json.loads((await _packet(raw))[2:])["sid"]
    await raw.close()
    assert await until(lambda: sio._recovery.kept_count() == 1, timeout=3)
    assert forever.called  # cancelled
    assert await until(lambda: not sio._recovery._by_sid, timeout=3)  # expired
    assert not _holds(sio.channel_layer, channel_of(sid))


@pytest_twisted.ensureDeferred
async def test_a_group_close_lets_the_socket_go(live):
    """``group_close`` (README: how to disconnect a user's sockets) closes the connection
    with its code; the socket is not kept for a reconnect (Node's ``disconnectSockets``
    is not recoverable either): its pid restores nothing."""
    sio = recovering_server()
    url = await start(live, sio)
    raw = await Raw.open(url)
    await raw.send("40")
    answer = json.loads((await _packet(raw))[2:])
    sid, pid = answer["sid"], answer["pid"]
    await sio.channel_layer.group_close(rsio.room_group("/", "room"), 4000, "banned")
    assert (await raw.closed())[0] == 4000
    assert await until(lambda: sio.reasons), "no disconnect handler"
    assert await until(lambda: not sio._recovery._by_sid), "a closed socket is kept"
    assert sio._recovery.kept_count() == 0 and not sio._recovery._by_pid
    assert not _holds(sio.channel_layer, channel_of(sid))
    again = await Raw.open(url)
    await again.send("40" + json.dumps({"pid": pid}))
    assert json.loads((await _packet(again))[2:])["sid"] != sid
    await again.close()


@pytest_twisted.ensureDeferred
async def test_packets_past_the_bound_while_a_restore_waits_never_leave_a_gap(live):
    """Restored, its missed packets wait for the connect handler: one more packet past
    ``max_packets`` must not drop a missed one the client never had (a recovered socket
    with a gap); the socket is let go instead, and its connection closes."""
    sio = quick_server(connection_state_recovery={"max_disconnection_duration": 5,
                                                  "max_packets": 3})
    gate: Deferred[None] = Deferred()

    @sio.event
    async def connect(sid, environ, auth):
        if sio.recovered(sid):
            await gate
        else:
            await sio.enter_room(sid, "room")

    url = await start(live, sio)
    raw = await Raw.open(url)
    await raw.send("40")
    answer = json.loads((await _packet(raw))[2:])
    sid, pid = answer["sid"], answer["pid"]
    await raw.close()
    assert await until(lambda: sio._recovery.kept_count() == 1)
    for n in range(3):  # kept: the bound is not passed
        await sio.emit("missed", n, room="room")
    again = await Raw.open(url)
    await again.send("40" + json.dumps({"pid": pid}))
    assert await until(lambda: sio._recovery._by_sid[sid].holding)
    await sio.emit("missed", 3, room="room")  # past the bound
    assert await until(lambda: not sio._recovery._by_sid)  # let go at once
    assert not _holds(sio.channel_layer, channel_of(sid))
    gate.callback(None)

    def rest() -> tuple[list[Any], Any]:
        got = []
        try:
            while True:
                message = again.conn.recv(WAIT)
                if message != "2":
                    got.append(message)
        except ConnectionClosed as exc:
            return got, exc.rcvd and (exc.rcvd.code, exc.rcvd.reason)

    assert await in_thread(rest) == ([], rsio_recovery.CLOSE_MISSED_TOO_MANY)
    assert sio._sockets == {}


@pytest_twisted.ensureDeferred
async def test_packets_without_an_offset_held_for_a_restore_are_bounded_too(live):
    """Packets with an ack id (no offset) that come while a restored socket's connect
    handler runs wait behind its missed ones: they count against ``max_packets``."""
    sio = quick_server(connection_state_recovery={"max_disconnection_duration": 5,
                                                  "max_packets": 3})
    gate: Deferred[None] = Deferred()

    @sio.event
    async def connect(sid, environ, auth):
        if sio.recovered(sid):
            await gate

    url = await start(live, sio)
    raw = await Raw.open(url)
    await raw.send("40")
    answer = json.loads((await _packet(raw))[2:])
    sid, pid = answer["sid"], answer["pid"]
    await raw.close()
    assert await until(lambda: sio._recovery.kept_count() == 1)
    again = await Raw.open(url)
    await again.send("40" + json.dumps({"pid": pid}))
    assert await until(lambda: sio._recovery._by_sid[sid].holding)
    for n in range(3):
        await sio.emit("ask", n, to=sid, callback=lambda *args: None)
    assert len(sio._recovery._by_sid[sid].later) == 3  # within the bound: held
    await sio.emit("ask", 3, to=sid, callback=lambda *args: None)
    assert not sio._recovery._by_sid, "held past the bound"
    gate.callback(None)
    assert (await again.closed()) == rsio_recovery.CLOSE_MISSED_TOO_MANY
    assert await until(lambda: not sio._sockets)
    assert not _holds(sio.channel_layer, channel_of(sid))


@pytest_twisted.ensureDeferred
async def test_a_held_broadcast_to_its_room_goes_before_a_later_packet(live):
    """A room broadcast held for the end of the read (or ``--broadcast-delay``; the
    ``Emitter``'s are such frames) reaches the socket before a packet sent to it after,
    as it does without recovery (its own channel, not its connection's, is the member)."""
    from realtime.layers.base import hold, release

    sio = recovering_server()
    url = await start(live, sio)
    raw = await Raw.open(url)
    await raw.send("40")
    sid = json.loads((await _packet(raw))[2:])["sid"]
    hold()
    try:
        await sio.channel_layer.broadcast(rsio.room_group("/", "room"), text='42["frame"]')
        await sio.emit("after", to=sid)
    finally:
        release()
    assert json.loads((await _packet(raw))[2:])[0] == "frame"
    assert json.loads((await _packet(raw))[2:])[0] == "after"
    await raw.close()


@pytest_twisted.ensureDeferred
async def test_disconnect_sid_while_its_disconnect_handler_runs_is_not_lost(live):
    """The connection is lost and its ``disconnect`` handler runs (the socket is not
    kept yet): a server ``disconnect(sid)`` then still means it is not coming back."""
    sio = quick_server(connection_state_recovery={"max_disconnection_duration": 5})
    gate: Deferred[None] = Deferred()
    running: list[str] = []

    @sio.event
    async def disconnect(sid, reason):
        running.append(sid)
        await gate

    url = await start(live, sio)
    raw = await Raw.open(url)
    await raw.send("40")
    sid = json.loads((await _packet(raw))[2:])["sid"]
    await raw.close()
    assert await until(lambda: running)
    await sio.disconnect(sid)
    gate.callback(None)
    assert await until(lambda: not sio._recovery._by_sid), "kept after disconnect(sid)"
    assert sio._recovery.kept_count() == 0
    assert not _holds(sio.channel_layer, channel_of(sid))
