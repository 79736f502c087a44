"""``realtime.socketio``'s parity with python-socketio's pub/sub managers and serializers:
acks (``emit(callback=)``, ``call()``) from a process that does not hold the sid, through
two Redis layers on a real redis-server (two processes' worth, as in test_socketio.py), and
``serializer="msgpack"`` against python-socketio's ``Client(serializer="msgpack")`` on
each transport, with raw WebSockets for what its frames look like and what no client
sends; python-engineio's and python-socketio's other options (``transports``,
``always_connect``, ``async_handlers``, ``json``, ``cookie``, ``http_compression``,
``cors_credentials``, ``client_manager``) with their clients, Node's and raw HTTP."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import formatEvent

from realtime import socketio as rsio
from realtime.config import ServerConfig
from tests.clients import captured_log, in_thread, until
from tests.test_socketio import (
    NODE_MODULES,
    TRANSPORTS,
    WAIT,
    Polling,
    PyClient,
    Raw,
    _handshake_refusal,
    _polling_handshake,
    app,
    quick_server,
    start,
    stop_all,
    ws_url,
)

NODE_MSGPACK = Path(__file__).parent / "node" / "socketio_msgpack.js"

# -- acks across processes ----------------------------------------------------------------------

async def _two_processes(redis_url: str, **options: Any,
                         ) -> tuple[list[Any], list[Any], list[Any]]:
    """Two layers on ``redis_url``, each with a server; ``options`` for the first's
    ``AsyncServer`` (the one the clients connect to)."""
    from realtime.testing import serve
    from tests.redis_support import started_layer

    layers = [await started_layer(redis_url) for _ in range(2)]
    sios = [rsio.AsyncServer(channel_layer=layer, **(options if n == 0 else {}))
            for n, layer in enumerate(layers)]
    servers = [await serve(app(sio), layer=layer)
               for sio, layer in zip(sios, layers, strict=True)]
    return layers, sios, servers


@pytest.mark.parametrize("recovery", [False, True], ids=["plain", "recovery"])
@pytest_twisted.ensureDeferred
async def test_acks_of_a_sid_in_another_process_come_back_to_the_caller(
        redis_url, realtime_leak_check, recovery):
    """``call()`` and ``emit(callback=)`` from the process that does not hold the sid: the
    answer (text, several arguments, bytes) reaches the caller that asked, among several
    calls in flight at once from both processes; then the reply channel is released. With
    connection state recovery on where the sid is (its own channel, ``_Kept``) too."""
    layers, sios, servers = await _two_processes(
        redis_url, connection_state_recovery=recovery or None)
    try:
        one = await PyClient().connect(f"http://127.0.0.1:{servers[0].port}")
        one.client.on("echo", lambda data: data)
        one.client.on("pair", lambda a, b: (b, a))
        one.client.on("blob", lambda: b"\x00\xffbinary")
        sid = one.client.get_sid()
        there = sios[1]  # not the process that holds ``sid``
        assert await there.call("echo", "hello", to=sid, timeout=WAIT) == "hello"
        assert await there.call("pair", ("a", 1), sid=sid, timeout=WAIT) == (1, "a")
        assert await there.call("blob", to=sid, timeout=WAIT) == b"\x00\xffbinary"

        got: Deferred[tuple[Any, ...]] = Deferred()
        await there.emit("pair", ("x", {"k": [1, 2]}), to=sid,
                         callback=lambda *args: got.callback(args))
        assert await got == ({"k": [1, 2]}, "x")

        async def call(sio: rsio.AsyncServer, n: int) -> Any:
            return await sio.call("echo", {"n": n}, to=sid, timeout=WAIT)

        calls = [Deferred.fromCoroutine(call(sios[n % 2], n)) for n in range(12)]
        answers = await DeferredList(calls, fireOnOneErrback=True, consumeErrors=True)
        assert [answer for _, answer in answers] == [{"n": n} for n in range(12)]
        assert there._replies is not None and there._replies.pending == {}

        channel = there._replies.channel
        assert channel in layers[1]._receivers
        await there.shutdown()  # the reply channel leaves the layer
        assert there._replies is None and channel not in layers[1]._receivers
        await one.disconnect()
    finally:
        await stop_all(servers, layers)


@pytest_twisted.ensureDeferred
async def test_a_remote_call_that_times_out_or_whose_target_goes_leaves_nothing(
        redis_url, realtime_leak_check):
    """A ``call()`` to a sid of another process that does not answer in time fails with
    ``CallTimeoutError`` and forgets its entry (the late answer finds nothing); one whose
    target disconnects before answering fails at once (not at its timeout), as does an
    ``emit(callback=)``'s entry go; a sid known gone here fails without waiting."""
    layers, sios, servers = await _two_processes(redis_url)
    release = threading.Event()
    try:
        one = await PyClient().connect(f"http://127.0.0.1:{servers[0].port}")
        late: list[Any] = []

        def slow(data: Any) -> Any:
            release.wait(WAIT)  # (python-socketio's client runs it in its read thread)
            late.append(data)
            return data

        one.client.on("slow", slow)
        sid = one.client.get_sid()
        there = sios[1]
        with pytest.raises(rsio.CallTimeoutError, match=r"in 0\.3 s"):
            await there.call("slow", "late", to=sid, timeout=0.3)
        assert there._replies is not None and there._replies.pending == {}
        release.set()
        assert await until(lambda: late == ["late"])
        assert await there.call("slow", "now", to=sid, timeout=WAIT) == "now"
        assert there._replies.pending == {}

        release.clear()
        called: list[Any] = []
        await there.emit("slow", "never", to=sid, callback=called.append)
        waiting = Deferred.fromCoroutine(there.call("slow", "gone", to=sid, timeout=60))
        here = Deferred.fromCoroutine(sios[0].call("slow", "here", to=sid, timeout=60))
        assert await until(lambda: len(there._replies.pending) == 2)
        assert await until(lambda: len(sios[0]._sockets[sid].acks) == 3)
        await sios[0].disconnect(sid)  # before the client answered
        with pytest.raises(rsio.CallTimeoutError, match="not connected"):
            await waiting
        with pytest.raises(rsio.CallTimeoutError, match="not connected"):
            await here  # a sid of its own process: the same
        assert there._replies.pending == {} and called == []
        release.set()

        # A sid of this process that is not connected: no wait at all.
        two = await PyClient().connect(f"http://127.0.0.1:{servers[1].port}")
        gone_sid = two.client.get_sid()
        await two.disconnect()
        assert await until(lambda: gone_sid not in there._sockets)
        with pytest.raises(rsio.CallTimeoutError, match="not connected"):
            await there.call("slow", "x", to=gone_sid, timeout=60)
        with pytest.raises(ValueError, match="one sid"):
            await there.call("slow", "x", to="lobby")
        with pytest.raises(ValueError, match="one sid"):
            await there.emit("slow", "x", room="lobby", callback=called.append)
        await there.shutdown()
    finally:
        release.set()
        await stop_all(servers, layers)


@pytest_twisted.ensureDeferred
async def test_past_max_remote_acks_the_oldest_is_forgotten_with_one_warning(
        redis_url, realtime_leak_check, monkeypatch):
    """Past ``MAX_REMOTE_ACKS`` awaited answers the oldest entry goes: a ``call()`` that
    waited for it fails saying why (its sid is connected: not "not connected"), an
    ``emit(callback=)``'s is never called; one warning for the overflow, not one per
    packet past it (a process that died would otherwise flood the log)."""
    monkeypatch.setattr(rsio, "MAX_REMOTE_ACKS", 2)
    layers, sios, servers = await _two_processes(redis_url)
    release = threading.Event()
    try:
        one = await PyClient().connect(f"http://127.0.0.1:{servers[0].port}")
        one.client.on("slow", lambda data: (release.wait(WAIT), data)[1])
        sid = one.client.get_sid()
        there = sios[1]
        with captured_log() as events:
            first = Deferred.fromCoroutine(there.call("slow", 0, to=sid, timeout=60))
            called: list[Any] = []
            for n in range(1, 6):
                await there.emit("slow", n, to=sid, callback=called.append)
            with pytest.raises(rsio.CallTimeoutError, match="MAX_REMOTE_ACKS") as caught:
                await first
            assert "not connected" not in str(caught.value)
            assert there._replies is not None and len(there._replies.pending) == 2
        warnings = [event for event in events
                    if "acks awaited" in event.get("log_format", "")]
        assert len(warnings) == 1, warnings
        release.set()
        # The two kept, 1..3 forgotten; in either order: python-socketio's client runs
        # each event's handler on a thread of its own, so the answers race.
        assert await until(lambda: sorted(called) == [4, 5])
        assert there._replies.pending == {}
        await there.shutdown()
    finally:
        release.set()
        await stop_all(servers, layers)


@pytest_twisted.ensureDeferred
async def test_a_server_dropped_without_shutdown_leaves_the_layer(redis_url,
                                                                  realtime_leak_check):
    """An ``AsyncServer`` that asked an ack of another process and is then dropped (no
    ``shutdown()``; several servers on one layer, as in tests) takes its reply channel
    off the layer, which lives on: nothing holds it or its forgotten callbacks."""
    layers, _, servers = await _two_processes(redis_url)
    try:
        one = await PyClient().connect(f"http://127.0.0.1:{servers[0].port}")
        one.client.on("echo", lambda data: data)
        extra = rsio.AsyncServer(channel_layer=layers[1])  # served nowhere: asks only
        assert await extra.call("echo", "hi", to=one.client.get_sid(), timeout=WAIT) == "hi"
        assert extra._replies is not None
        channel = extra._replies.channel
        assert channel in layers[1]._receivers
        del extra
        gc.collect()
        assert channel not in layers[1]._receivers
        await one.disconnect()
    finally:
        await stop_all(servers, layers)


@pytest_twisted.ensureDeferred
async def test_a_call_waiting_at_shutdown_fails_saying_so(redis_url, realtime_leak_check):
    """``shutdown()`` releases the reply channel: a ``call()`` still waiting for a sid of
    another process fails at once, and says it was the shutdown (not "not connected")."""
    layers, sios, servers = await _two_processes(redis_url)
    release = threading.Event()
    try:
        one = await PyClient().connect(f"http://127.0.0.1:{servers[0].port}")
        one.client.on("slow", lambda: (release.wait(WAIT), None)[1])
        there = sios[1]
        waiting = Deferred.fromCoroutine(
            there.call("slow", to=one.client.get_sid(), timeout=60))
        assert await until(lambda: there._replies is not None
                           and len(there._replies.pending) == 1)
        await there.shutdown()
        with pytest.raises(rsio.CallTimeoutError, match="shut down"):
            await waiting
    finally:
        release.set()
        await stop_all(servers, layers)


@pytest_twisted.ensureDeferred
async def test_ignore_queue_is_accepted_and_changes_nothing(live):
    sio = quick_server()
    ns = rsio.AsyncNamespace("/")
    sio.register_namespace(ns)
    url = await start(live, sio)
    one = await PyClient("said", "message").connect(url)
    one.client.on("echo", lambda data: data)
    sid = one.client.get_sid()
    await sio.emit("said", "q", to=sid, ignore_queue=True)
    assert await one.next() == ("said", "q")
    await sio.send("m", to=sid, ignore_queue=True)
    assert await one.next() == ("message", "m")
    assert await sio.call("echo", 1, to=sid, ignore_queue=True) == 1
    await ns.emit("said", "ns", to=sid, ignore_queue=True)
    assert await one.next() == ("said", "ns")
    assert await ns.call("echo", 2, to=sid, ignore_queue=True) == 2
    await sio.disconnect(sid, ignore_queue=True)
    assert await one.next() == ("disconnect", ("server disconnect",))


# -- the msgpack serializer --------------------------------------------------------------------

@TRANSPORTS
@pytest_twisted.ensureDeferred
async def test_msgpack_with_python_socketios_client(live, transports, transport):
    """``serializer="msgpack"`` with python-socketio's msgpack client on WebSocket, on
    polling (binary messages as base64 in the payloads) and through the upgrade: auth,
    events and acks with bytes in them both ways, a room emit, ``call()``."""
    sio = quick_server(serializer="msgpack")
    seen: list[Any] = []

    @sio.event
    async def connect(sid: str, environ: Any, auth: Any) -> None:
        seen.append(auth)
        await sio.enter_room(sid, "lobby")

    @sio.event
    async def echo(sid: str, data: Any) -> Any:
        return data, b"\x00ok"

    url = await start(live, sio)
    one = await PyClient("said", serializer="msgpack").connect(
        url, transports, auth={"token": "t"})
    if transports is None:
        assert await until(lambda: one.client.transport() == "websocket", WAIT)
    sid = one.client.get_sid()
    assert seen == [{"token": "t"}] and sio.transport(sid) == transport
    data = {"blob": b"\x01\x02\xff", "list": [1, 2.5, None, "é"]}
    assert await one.call("echo", data) == (data, b"\x00ok")
    await sio.emit("said", {"b": b"\xfe"}, room="lobby")
    assert await one.next() == ("said", {"b": b"\xfe"})
    await sio.emit("said", "just you", to=sid)
    assert await one.next() == ("said", "just you")
    one.client.on("ask", lambda data: [data, b"\x07"])
    assert await sio.call("ask", b"\x03", to=sid, timeout=WAIT) == [b"\x03", b"\x07"]
    await sio.disconnect(sid)
    assert await one.next() == ("disconnect", ("server disconnect",))


def _node_msgpack(url: str, transport: str) -> list[dict[str, Any]]:
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    done = subprocess.run(["node", str(NODE_MSGPACK), url, transport], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def msgpack_parser_of_node() -> None:
    """Node, socket.io-client and socket.io-msgpack-parser in tests/.node (tests/run.sh):
    skipped without them, failed under CI=true."""
    if shutil.which("node") is None or not all(
            (NODE_MODULES / package).is_dir()
            for package in ("socket.io-client", "socket.io-msgpack-parser")):
        reason = ("needs node, socket.io-client and socket.io-msgpack-parser in tests/.node"
                  " (bash tests/run.sh)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest_twisted.ensureDeferred
async def test_msgpack_with_socket_io_client_and_msgpack_parser_of_node(
        live, msgpack_parser_of_node, transport):
    """``serializer="msgpack"`` with Node's socket.io-client and socket.io-msgpack-parser
    (the parser Socket.IO's own servers pair with it): auth, an event with bytes and its
    ack, a room emit, ``call()`` answered with bytes, and ``disconnect()``, which Node's
    parser accepts only without a ``data`` key (it checks ``data === undefined``)."""
    sio = quick_server(serializer="msgpack")
    seen: dict[str, Any] = {}

    @sio.event
    async def connect(sid: str, environ: Any, auth: Any) -> None:
        seen["auth"] = auth
        await sio.enter_room(sid, "lobby")

    @sio.event
    async def echo(sid: str, data: Any) -> Any:
        seen["echo"] = data
        return data, data["blob"][::-1]

    @sio.event
    async def ready(sid: str) -> None:
        await sio.emit("said", {"text": "lobby", "blob": b"\x00\xff"}, room="lobby")
        seen["answer"] = await sio.call("ask", b"\x03", to=sid, timeout=WAIT)
        seen["transport"] = sio.transport(sid)
        await sio.disconnect(sid)

    url = await start(live, sio)
    lines = await in_thread(_node_msgpack, url, transport)
    assert seen["auth"] == {"token": "js"} and seen["transport"] == transport
    assert seen["echo"] == {"blob": b"\x01\x02\xff", "n": 2.5}
    assert lines == [
        {"connected": lines[0]["connected"]},
        {"echoed": [{"blob": {"bytes": [1, 2, 255]}, "n": 2.5}, {"bytes": [255, 2, 1]}]},
        {"said": "lobby", "blob": {"bytes": [0, 255]}},
        {"disconnect": "io server disconnect"}]
    assert seen["answer"] == ({"bytes": [3]}, b"\x07")  # two arguments: a tuple
    assert await until(lambda: not sio._polling)


async def _next_packet(raw: Raw) -> Any:
    """The next Socket.IO packet, which must be a binary frame (pings answered)."""
    while True:
        frame = await raw.recv()
        if frame != "2":
            assert isinstance(frame, bytes), frame
            return msgpack.unpackb(frame)
        await raw.send("3")


async def _msgpack_raw(url: str) -> tuple[Raw, str]:
    raw = await Raw.open(url)
    await raw.send(msgpack.packb({"type": 0, "data": None, "nsp": "/"}))
    answer = await _next_packet(raw)
    assert answer["type"] == 0 and answer["nsp"] == "/"
    return raw, answer["data"]["sid"]


@pytest_twisted.ensureDeferred
async def test_msgpack_frames_are_binary_and_bad_ones_close_the_connection(live):
    """With msgpack every Socket.IO packet is one binary frame, a room emit's prepared
    frame too; a text packet, bytes that are not a msgpack packet and a packet a client
    may not send close the connection 1002 (the server goes on)."""
    sio = quick_server(serializer="msgpack")
    sio.on("connect", lambda sid, environ: sio.enter_room(sid, "room"))
    sio.on("nothing", lambda sid: None)
    url = await start(live, sio)
    raw, sid = await _msgpack_raw(url)
    await until(lambda: sio.rooms(sid) == [sid, "room"])
    await sio.emit("said", "to the room", room="room")
    assert await _next_packet(raw) == {"type": 2, "data": ["said", "to the room"], "nsp": "/"}
    await raw.send(msgpack.packb({"type": 2, "data": ["nothing"], "nsp": "/", "id": 7}))
    assert await _next_packet(raw) == {"type": 3, "data": [], "nsp": "/", "id": 7}
    await raw.close()
    for bad in ("42[\"e\"]", b"\xc1", msgpack.packb([2, "e"]),
                msgpack.packb({"type": 4, "data": {}, "nsp": "/"}),
                msgpack.packb({"type": 2, "data": ["connect"], "nsp": "/"}),
                msgpack.packb({"type": 2, "data": ["e"], "nsp": "/", "id": -1})):
        raw, _ = await _msgpack_raw(url)
        await raw.send(bad)
        assert (await raw.closed())[0] == 1002, bad
    raw, _ = await _msgpack_raw(url)  # still up
    await raw.close()


def test_the_serializer_option_is_checked():
    with pytest.raises(ValueError, match="msgpack"):
        rsio.AsyncServer(serializer="cbor")
    with pytest.raises(ValueError, match="msgpack"):
        rsio.Emitter("http://127.0.0.1:1", "k", serializer="json")


API_KEY = "test-api-key-0123456789"


@pytest_twisted.ensureDeferred
async def test_the_emitter_speaks_to_a_msgpack_server(live):
    """``Emitter(serializer="msgpack")``: its packets go as layer events, which each
    connection (WebSocket or polling) sends as msgpack; a room, a sid, the namespace."""
    sio = quick_server(serializer="msgpack")
    sio.on("connect", lambda sid, environ: sio.enter_room(sid, "lobby"))
    url = await start(live, sio, api_keys=(API_KEY,))
    emitter = rsio.Emitter(url, API_KEY, serializer="msgpack")
    ws = await PyClient("said", serializer="msgpack").connect(url, ["websocket"])
    poll = await PyClient("said", serializer="msgpack").connect(url, ["polling"])
    await until(lambda: all(len(sio.rooms(client.client.get_sid())) == 2
                            for client in (ws, poll)))
    await in_thread(lambda: emitter.emit("said", "lobby", room="lobby"))
    assert await ws.next() == ("said", "lobby")
    assert await poll.next() == ("said", "lobby")
    await in_thread(lambda: emitter.emit("said", "you", to=poll.client.get_sid()))
    assert await poll.next() == ("said", "you")
    await in_thread(lambda: emitter.emit("said", {"all": [1, "é"]}))
    assert await ws.next() == ("said", {"all": [1, "é"]})
    assert await poll.next() == ("said", {"all": [1, "é"]})
    await ws.disconnect()
    await poll.disconnect()


def test_a_msgpack_packets_type_is_read_without_decoding_it():
    """What ``--slow-consumer drop`` may drop from a poller's queue: EVENTs and ACKs."""
    kinds = [rsio._msgpack_kind(rsio.encode_msgpack_packet(kind, "/chat", data, ack_id))
             for kind, data, ack_id in [(rsio.EVENT, ["e", b"\x00"], None),
                                        (rsio.ACK, [], 12),
                                        (rsio.CONNECT, {"sid": "x"}, None),
                                        (rsio.DISCONNECT, None, None)]]
    assert kinds == [rsio.EVENT, rsio.ACK, rsio.CONNECT, rsio.DISCONNECT]
    # No "data" key when there is none: Node's socket.io-msgpack-parser refuses a nil there.
    assert msgpack.unpackb(rsio.encode_msgpack_packet(rsio.DISCONNECT, "/chat")) == {
        "type": rsio.DISCONNECT, "nsp": "/chat"}
    assert rsio._msgpack_kind(b"\x93\x01\x02\x03") is None


@pytest_twisted.ensureDeferred
async def test_transports_and_allow_upgrades_are_python_engineios(live):
    """``transports=`` refuses the other transport with Engine.IO's "Transport unknown";
    ``allow_upgrades=False`` (or polling only) offers no upgrade and refuses a probe, so
    python-socketio's client on its default transports stays on polling."""
    unknown = b'{"code":0,"message":"Transport unknown"}'
    url = await start(live, quick_server(transports=["websocket"]))
    assert await in_thread(_polling_handshake, url) == (400, unknown)
    one = await PyClient().connect(url, ["websocket"])
    await one.disconnect()

    url = await start(live, quick_server(transports="polling"))
    assert await in_thread(_handshake_refusal, ws_url(url)) == (400, unknown)
    status, body = await in_thread(_polling_handshake, url)
    assert status == 200 and b'"upgrades":[]' in body

    sio = quick_server(allow_upgrades=False)
    url = await start(live, sio)
    status, body = await in_thread(_polling_handshake, url)
    assert status == 200 and b'"upgrades":[]' in body
    sid = json.loads(body.decode()[1:])["sid"]
    assert (await in_thread(_handshake_refusal, ws_url(
        url, f"EIO=4&transport=websocket&sid={sid}")))[0] == 400
    two = await PyClient().connect(url, None)  # its default: polling, then the upgrade
    assert not await until(lambda: two.client.transport() == "websocket", 0.5)
    assert sio.transport(two.client.get_sid()) == "polling"
    await two.disconnect()
    with pytest.raises(ValueError, match="transports"):
        rsio.AsyncServer(transports=["carrier-pigeon"])
    with pytest.raises(ValueError, match="transports"):  # (python-engineio: no valid one)
        rsio.AsyncServer(transports=[])


# -- python-socketio's remaining options ---------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_always_connect_answers_first_and_a_refusal_is_a_disconnect(live):
    """``always_connect=True``: CONNECT goes out before the connect handler runs (what it
    emits comes after it), the client's packets wait for the handler (python-socketio runs
    it where the CONNECT is read), and a refusal is a plain DISCONNECT (no data: Node's
    parser refuses it there) with no disconnect handler; python-socketio's client on
    WebSocket and polling, a raw WebSocket for the packets."""
    sio = quick_server(always_connect=True)
    order: list[str] = []
    gate: Deferred[None] = Deferred()
    reasons: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))

    @sio.event
    async def connect(sid, environ, auth):
        order.append("connect")
        if (auth or {}).get("token") == "boom":
            raise RuntimeError("a bug in the handler")
        if (auth or {}).get("token") in ("nope", "later"):
            if auth["token"] == "later":  # (python-socketio's client ignores a DISCONNECT
                await gate                # before its connect() returned)
            raise rsio.ConnectionRefusedError("who are you?")
        await sio.emit("hello", "from connect", to=sid)
        if (auth or {}).get("token") == "wait":
            await gate
        order.append("accepted")

    sio.on("echo", lambda sid, data: order.append(f"echo {data}") or data)
    url = await start(live, sio)

    raw = await Raw.open(url)
    await raw.send('40{"token":"nope"}')
    assert (await raw.recv()).startswith('40{"sid":')
    assert await raw.recv() == "41"  # the refusal: no data, no CONNECT_ERROR
    with captured_log() as events:  # a handler that raises: the same, and logged
        await raw.send('40{"token":"boom"}')
        assert (await raw.recv()).startswith('40{"sid":')
        assert await raw.recv() == "41"
    assert [str(e["log_failure"].value) for e in events if "log_failure" in e] == [
        "a bug in the handler"]
    await raw.send("40")  # the namespace may connect again
    assert (await raw.recv()).startswith('40{"sid":')
    assert await raw.recv() == '42["hello","from connect"]'
    await raw.close()

    for transports in (["websocket"], ["polling"]):
        order.clear()
        client = PyClient("hello")
        await client.connect(url, transports, auth={"token": "wait"})
        assert await client.next() == ("hello", "from connect")
        await client.emit("echo", 1)  # waits for the connect handler
        assert not await until(lambda: "echo 1" in order, 0.3)
        gate.callback(None)
        gate = Deferred()
        assert await until(lambda: order == ["connect", "accepted", "echo 1"])
        assert await client.call("echo", 2) == 2
        await client.disconnect()

        refused = PyClient()
        await refused.connect(url, transports, auth={"token": "later"})
        gate.callback(None)
        gate = Deferred()
        assert await refused.next() == ("disconnect", ("server disconnect",))
    assert await until(lambda: not sio._sockets and not sio._polling)
    assert len(reasons) == 3  # the raw socket's and the two clients', none for the refused

    recovering = quick_server(always_connect=True, connection_state_recovery=True)
    recovering.on("connect", lambda sid, environ, auth: auth != {"token": "nope"})
    raw = await Raw.open(await start(live, recovering))
    await raw.send('40{"token":"nope"}')
    assert set(json.loads((await raw.recv())[2:])) == {"sid", "pid"}  # recovery's CONNECT
    assert await raw.recv() == "41"
    assert await until(lambda: recovering._recovery.kept_count() == 0
                       and not recovering._recovery._by_sid)  # refused: not kept
    await raw.close()
    with pytest.raises(TypeError, match="always_connect"):
        rsio.AsyncServer(always_connect="yes")


@pytest_twisted.ensureDeferred
async def test_always_connect_holds_only_the_namespace_behind_its_handler(live):
    """``always_connect=True``, a slow connect handler: the packets of its namespace wait
    for it (in order), and nothing else of the connection does: Engine.IO's pongs (it
    outlasts ping_interval + ping_timeout), another namespace's CONNECT and events."""
    sio = quick_server(always_connect=True, namespaces=["/chat"], ping_interval=0.2,
                       ping_timeout=0.3)
    gate: Deferred[None] = Deferred()

    @sio.event
    async def connect(sid, environ):
        await gate

    sio.on("echo", lambda sid, data: data)
    sio.on("echo", lambda sid, data: data, namespace="/chat")
    url = await start(live, sio)
    raw = await Raw.open(url)
    await raw.send("40")
    assert (await raw.recv()).startswith("40{")
    await raw.send('421["echo","first"]')
    await raw.send('422["echo","second"]')
    for _ in range(3):
        assert await raw.recv() == "2"
        await raw.send("3")
    await raw.send("40/chat,")
    assert (await raw.recv()).startswith("40/chat,{")
    await raw.send('42/chat,3["echo","there"]')
    assert await raw.recv() == '43/chat,3["there"]'
    gate.callback(None)
    assert [await raw.recv(), await raw.recv()] == ['431["first"]', '432["second"]']
    await raw.close()


@pytest.mark.parametrize("options", [{}, {"always_connect": True}, {"async_handlers": False}],
                         ids=["default", "always_connect", "async_handlers=False"])
@pytest_twisted.ensureDeferred
async def test_a_connect_accepted_after_its_client_went_gets_one_disconnect(live, options):
    """A slow connect handler that accepts after its WebSocket closed, or after the
    client's DISCONNECT, is followed by the disconnect handler, once, with that reason
    (python-socketio calls it: what the connect set up is undone); one that refuses is
    not (it never connected). The same with ``always_connect`` and in-order handlers."""
    sio = quick_server(**options)
    gates: dict[str, Deferred[None]] = {}
    calls: list[tuple[str, str]] = []

    @sio.event
    async def connect(sid, environ, auth):
        token = auth["token"]
        gates[token] = Deferred()
        await gates[token]
        calls.append(("connect", token))
        return token != "refuse"

    @sio.event
    async def disconnect(sid, reason):
        calls.append(("disconnect", reason))

    url = await start(live, sio)
    for token, reason in [("close", "transport close"), ("refuse", None)]:
        raw = await Raw.open(url)
        await raw.send('40' + json.dumps({"token": token}))
        assert await until(lambda token=token: token in gates)
        await raw.close()
        assert await until(lambda: not sio._sockets)  # (dropped when the connection went)
        calls.clear()
        gates[token].callback(None)
        want = [("connect", token)] + ([("disconnect", reason)] if reason else [])
        assert await until(lambda want=want: calls == want), calls
        assert not await until(lambda want=want: calls != want, 0.2), calls  # once

    raw = await Raw.open(url)
    await raw.send('40{"token":"leave"}')
    if options.get("always_connect"):
        assert (await raw.recv()).startswith('40{"sid"')
    assert await until(lambda: "leave" in gates)
    await raw.send("41")  # the client's DISCONNECT while the handler runs
    if not options.get("always_connect"):  # (there the DISCONNECT waits for the handler)
        assert await until(lambda: not sio._sockets)
    calls.clear()
    gates["leave"].callback(None)
    assert await until(lambda: calls == [("connect", "leave"),
                                         ("disconnect", "client disconnect")]), calls
    await raw.send('40{"token":"again"}')  # the connection goes on
    assert await until(lambda: "again" in gates)
    gates["again"].callback(None)
    assert (await raw.recv()).startswith('40{"sid"')
    assert await until(lambda: calls[2:] == [("connect", "again")]), calls
    await raw.close()
    assert await until(lambda: calls[3:] == [("disconnect", "transport close")]), calls
    assert len(calls) == 4


@pytest.fixture
def node_client() -> None:
    """Node and socket.io-client in tests/.node: skipped without them, failed under CI=true
    (tests/test_socketio.py's ``socket_io_client``)."""
    if shutil.which("node") is None or not (NODE_MODULES / "socket.io-client").is_dir():
        reason = "needs node and socket.io-client in tests/.node (bash tests/run.sh)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest_twisted.ensureDeferred
async def test_always_connect_with_socket_io_client_of_node(live, node_client):
    """Node's client with ``always_connect``: the whole exchange when the handler accepts
    (polling, then the upgrade), "io server disconnect" when it refuses after CONNECT."""
    from tests.test_socketio import _node

    sio = quick_server(always_connect=True)

    @sio.event
    async def connect(sid, environ, auth):
        if auth.get("token") != "js":
            return False

    sio.on("echo", lambda sid, *args: args)
    sio.on("echo", lambda sid, text: f"{text}!", namespace="/chat")
    sio.on("upload", lambda sid, data: data["blob"][::-1])

    @sio.event
    async def ready(sid):
        await sio.emit("bye", to=sid)

    url = await start(live, sio)
    lines = await in_thread(_node, url, "js", "polling,websocket")
    assert lines[1:3] == [{"echoed": ["hi", 3]}, {"reversed": [3, 2, 1]}]
    assert lines[-1] == {"done": True, "transport": "websocket"}
    refused = await in_thread(_node, url, "nope", "polling,websocket")
    assert refused == [{"connected": refused[0]["connected"]},
                       {"disconnected": "io server disconnect"}]
    assert await until(lambda: not sio._polling and not sio._sockets)


@pytest.mark.parametrize("inline", [True, False], ids=["async_handlers=False", "default"])
@pytest_twisted.ensureDeferred
async def test_async_handlers_false_runs_a_connections_events_in_order(live, inline):
    """``async_handlers=False``: an event's handler is awaited before the connection's next
    packet is handled (python-socketio's in-order handlers), with its ack; by default the
    next one runs meanwhile; ``call()`` is python-socketio's ``RuntimeError``."""
    sio = quick_server(async_handlers=not inline)
    order: list[str] = []
    acks: list[str] = []
    gates: list[Deferred[None]] = []

    @sio.event
    async def slow(sid):
        order.append("slow")
        gates.append(Deferred())
        await gates[-1]
        order.append("slow done")
        return "slow"

    @sio.event
    async def fast(sid):
        order.append("fast")

    url = await start(live, sio)
    expected = ["slow", "slow done", "fast"] if inline else ["slow", "fast", "slow done"]
    for transports in (["websocket"], ["polling"]):
        order.clear()
        acks.clear()
        client = PyClient()
        await client.connect(url, transports)
        await client.emit("slow", callback=acks.append)
        await client.emit("fast")
        assert await until(lambda: "slow" in order)
        assert await until(lambda: "fast" in order, 0.3) is not inline
        gates[-1].callback(None)
        assert await until(lambda: len(order) == 3 and acks == ["slow"])
        assert order == expected
        if inline:
            with pytest.raises(RuntimeError, match="async_handlers is False"):
                await sio.call("ask", to=client.client.get_sid())
        await client.disconnect()
    with pytest.raises(TypeError, match="async_handlers"):
        rsio.AsyncServer(async_handlers=None)


@pytest_twisted.ensureDeferred
async def test_async_handlers_false_holds_events_not_pings_acks_or_the_close(live):
    """``async_handlers=False`` holds a connection's later events behind a slow handler,
    and nothing else of it: Engine.IO's pongs (on a WebSocket, and a polling POST is
    answered at once), the client's ACKs (a handler may wait for its own client's answer
    to an ``emit(callback=)``); a handler that raises does not stop the ones behind it.
    Its close is noticed at once (the WebSocket is closed), and its disconnect handler
    runs after the handler, as python-socketio's does."""
    sio = quick_server(async_handlers=False, ping_interval=0.2, ping_timeout=0.3)
    gates: list[Deferred[None]] = []
    reasons: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))

    @sio.event
    async def slow(sid):
        gates.append(Deferred())
        await gates[-1]
        return "slow"

    @sio.event
    async def boom(sid):
        raise RuntimeError("boom")

    @sio.event
    async def asks(sid):
        answer: Deferred[tuple[Any, ...]] = Deferred()
        await sio.emit("question", to=sid, callback=lambda *args: answer.callback(args))
        return await answer

    sio.on("echo", lambda sid, data: data)
    url = await start(live, sio)

    async def pings(raw: Raw, rounds: int = 3) -> None:  # (each answered: the pong counts)
        for _ in range(rounds):
            assert await raw.recv() == "2"
            await raw.send("3")

    raw = await Raw.open(url)
    await raw.send("40")
    assert (await raw.recv()).startswith("40{")
    await raw.send('421["slow"]')
    await raw.send('422["echo","after"]')
    await pings(raw)  # (past ping_interval + ping_timeout: alive)
    gates[-1].callback(None)
    assert [await raw.recv(), await raw.recv()] == ['431["slow"]', '432["after"]']
    with captured_log() as events:
        await raw.send('423["boom"]')
        await raw.send('424["echo","still"]')
        assert await raw.recv() == '434["still"]'
    assert [e["name"] for e in events if "log_failure" in e] == ["boom"]
    await raw.send('425["asks"]')
    question = await raw.recv()
    assert isinstance(question, str) and question.endswith('["question"]')
    await raw.send(f"43{question[2:].partition('[')[0]}[\"yes\"]")  # the ACK
    assert await raw.recv() == '435["yes"]'
    await raw.send('426["slow"]')
    assert await until(lambda: len(gates) == 2)
    await raw.close()
    assert not await until(lambda: reasons, 0.3)  # after the handler
    gates[-1].callback(None)
    assert await until(lambda: reasons == ["transport close"])

    session = await Polling.open(url)
    posting = Deferred.fromCoroutine(session.post('421["slow"]'))
    assert await until(lambda: posting.called)  # answered while the handler waits
    for _ in range(3):
        assert await session.get() == ["2"]
        assert await session.post("3") == (200, b"ok")
    gates[-1].callback(None)
    assert await session.get() == ['431["slow"]']
    assert await session.post("1") == (200, b"ok")
    assert await until(lambda: not sio._sockets and not sio._polling)


@pytest_twisted.ensureDeferred
async def test_async_handlers_false_with_always_connect_keeps_the_order(live):
    """``async_handlers=False`` and ``always_connect=True``: a packet of a namespace whose
    connect handler runs holds the ones behind it (python-socketio's one order for the
    connection), so a namespace's events are handled in the order they came even when
    another namespace's slow handler was between them."""
    sio = quick_server(async_handlers=False, always_connect=True, namespaces=["/a", "/b"])
    connecting: Deferred[None] = Deferred()
    slow_gate: Deferred[None] = Deferred()
    handled: list[int] = []

    @sio.on("connect", namespace="/a")
    async def connect_a(sid, environ):
        await connecting

    @sio.on("e", namespace="/a")
    async def event_a(sid, n):
        handled.append(n)

    @sio.on("slow", namespace="/b")
    async def slow_b(sid, n):
        await slow_gate
        handled.append(n)

    url = await start(live, sio)
    raw = await Raw.open(url)
    await raw.send("40/b,")
    assert (await raw.recv()).startswith("40/b,{")
    await raw.send("40/a,")
    assert (await raw.recv()).startswith("40/a,{")
    await raw.send('42/a,["e",1]')
    await raw.send('42/b,["slow",2]')
    await raw.send('42/a,["e",3]')
    connecting.callback(None)
    assert await until(lambda: handled == [1])
    slow_gate.callback(None)
    assert await until(lambda: len(handled) == 3)
    assert handled == [1, 2, 3]
    await raw.close()


@pytest_twisted.ensureDeferred
async def test_async_handlers_false_waits_past_max_inflight_packets(live):
    """``async_handlers=False`` with ``--max-inflight 3``: behind a slow handler, three
    packets wait, then the connection is not read (nothing more is held for it); released,
    every event is handled and acked in order."""
    sio = quick_server(async_handlers=False)
    gate: Deferred[None] = Deferred()
    seen: list[int] = []

    @sio.event
    async def slow(sid):
        await gate

    @sio.event
    async def count(sid, n):
        seen.append(n)
        return n

    url = await start(live, sio, max_inflight=3)
    raw = await Raw.open(url)
    await raw.send("40")
    sid = json.loads((await raw.recv())[2:])["sid"]
    consumer = sio._sockets[sid].consumer
    await raw.send('42["slow"]')
    for n in range(8):
        await raw.send(f'42{n}["count",{n}]')
    assert await until(lambda: len(consumer._turns or ()) == 3)
    assert not await until(lambda: len(consumer._turns or ()) > 3, 0.3)
    gate.callback(None)
    assert [await raw.recv() for _ in range(8)] == [f"43{n}[{n}]" for n in range(8)]
    assert seen == list(range(8))
    await raw.close()


def _node_burst(url: str, transport: str, count: int) -> list[dict[str, Any]]:
    """tests/node/socketio_burst.js: Node's client sends "slow", ``count`` notes, and
    disconnects at once."""
    from tests.test_socketio import NODE_MODULES

    script = Path(__file__).parent / "node" / "socketio_burst.js"
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    done = subprocess.run(["node", str(script), url, transport, str(count)], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest_twisted.ensureDeferred
async def test_async_handlers_false_handles_what_came_before_the_close_then_disconnects(
        live, node_client):
    """``async_handlers=False``, a client that sends events behind a slow one and closes at
    once: each is still handled, in order (its acks go nowhere), and the disconnect handler
    runs last, as python-socketio reads what came before the close: Node's
    ``socket.io-client`` on each transport (its DISCONNECT goes last: "client
    disconnect"), a raw WebSocket closed ("transport close") and a polling close packet. A
    room entered after the close is the sid's (``rooms()`` in the disconnect handler) but
    joins no layer group."""
    sio = quick_server(async_handlers=False)
    gates: list[Deferred[None]] = []
    log: list[Any] = []

    @sio.event
    async def slow(sid):
        log.append("slow")
        gates.append(Deferred())
        await gates[-1]
        log.append("slow done")
        return "late"

    @sio.event
    async def note(sid, n):
        log.append(n)
        await sio.enter_room(sid, f"r{n}")
        return n

    @sio.event
    async def disconnect(sid, reason):
        log.append((reason, [room for room in sio.rooms(sid) if room != sid]))

    url = await start(live, sio)

    async def closed_behind_a_slow_handler(reason: str, numbers: list[int]) -> None:
        assert await until(lambda: len(gates) == 1)
        assert not await until(lambda: len(log) > 1, 0.3)  # (held behind the handler)
        gates.pop().callback(None)
        want = ["slow", "slow done", *numbers, (reason, [f"r{n}" for n in numbers])]
        assert await until(lambda: log == want), log
        groups = sio.channel_layer._groups
        assert not [n for n in numbers if rsio.room_group("/", f"r{n}") in groups]
        log.clear()

    for transport in ("websocket", "polling"):
        lines = await in_thread(_node_burst, url, transport, 3)
        assert lines[1:] == [{"closed": "forced close"}], lines
        await closed_behind_a_slow_handler("client disconnect", [1, 2, 3])

    raw = await Raw.open(url)
    await raw.send("40")
    assert (await raw.recv()).startswith("40{")
    await raw.send('421["slow"]')
    await raw.send('42["note",4]')
    await raw.send('423["note",5]')
    await raw.close()
    await closed_behind_a_slow_handler("transport close", [4, 5])

    session = await Polling.open(url)
    assert await session.post('421["slow"]\x1e42["note",6]') == (200, b"ok")
    closing = Deferred.fromCoroutine(session.post("1"))
    await closed_behind_a_slow_handler("client disconnect", [6])
    assert await closing == (200, b"ok")  # (once what came before it was handled)
    assert await until(lambda: not sio._sockets and not sio._polling)


@pytest_twisted.ensureDeferred
async def test_async_handlers_false_an_upgraded_session_handles_what_came_before_its_close(
        live):
    """``async_handlers=False`` on a polling session upgraded to a WebSocket (the default
    of socket.io-client): events behind a slow one, more than ``--max-inflight`` (8 in
    turn, 4 still in the WebSocket's queue behind the session's step: fewer than 8, so
    it reads the close), then the WebSocket closed: each is handled, in order, then the
    disconnect handler; nothing stays."""
    from websockets.sync.client import connect

    sio = rsio.AsyncServer(async_handlers=False)  # (no ping meanwhile: none is answered)
    gates: list[Deferred[None]] = []
    log: list[Any] = []

    @sio.event
    async def slow(sid):
        gates.append(Deferred())
        await gates[-1]
        log.append("slow")

    sio.on("note", lambda sid, n: log.append(n))
    sio.on("disconnect", lambda sid, reason: log.append(reason))
    url = await start(live, sio, max_inflight=8)
    session = await Polling.open(url)
    ws = await in_thread(lambda: connect(
        ws_url(url, f"EIO=4&transport=websocket&sid={session.sid}"),
        open_timeout=WAIT).__enter__())
    await in_thread(ws.send, "2probe")
    assert await in_thread(ws.recv, WAIT) == "3probe"
    await in_thread(ws.send, "5")
    assert await until(lambda: sio.transport(session.socket_sid) == "websocket")
    await in_thread(ws.send, '42["slow"]')
    assert await until(lambda: len(gates) == 1)

    def burst() -> None:
        for n in range(12):
            ws.send(f'42["note",{n}]')
        ws.close()

    polled = sio._polling[session.sid]
    await in_thread(burst)
    assert await until(lambda: polled.closed)
    gates[0].callback(None)
    assert await until(lambda: len(log) == 14), log
    assert log == ["slow", *range(12), "transport close"]
    assert await until(lambda: not sio._sockets and not sio._polling)

@pytest_twisted.ensureDeferred
async def test_async_handlers_false_close_waits_application_close_timeout_at_most(live):
    """``async_handlers=False``: a handler that never returns, packets behind it, and the
    connection closes: past ``--application-close-timeout`` the handler is cancelled, the
    packets behind it are not handled, and the disconnect handler still runs."""
    sio = quick_server(async_handlers=False)
    log: list[Any] = []

    @sio.event
    async def stuck(sid):
        log.append("stuck")
        await Deferred()

    sio.on("note", lambda sid, n: log.append(n))
    sio.on("disconnect", lambda sid, reason: log.append(reason))
    url = await start(live, sio, application_close_timeout=0.3)
    raw = await Raw.open(url)
    await raw.send("40")
    assert (await raw.recv()).startswith("40{")
    with captured_log() as events:
        await raw.send('42["stuck"]')
        await raw.send('42["note",1]')
        assert await until(lambda: log == ["stuck"])
        await raw.close()
        assert await until(lambda: log == ["stuck", "transport close"]), log
        assert not await until(lambda: len(log) > 2, 0.3), log
    assert any("still running" in formatEvent(e) for e in events if e.get("log_level")
               and e["log_level"].name == "warn")
    assert await until(lambda: not sio._sockets)


@pytest.fixture(params=["memory", "redis"])
def memory_or_redis(request: Any) -> Any:
    """A fresh in-memory layer, or one on the session's redis-server."""
    from realtime.layers import InMemoryChannelLayer

    if request.param == "memory":
        return InMemoryChannelLayer()
    return request.getfixturevalue("redis_layer")


@pytest_twisted.ensureDeferred
async def test_async_handlers_false_a_handler_that_goes_on_after_its_cancel_holds_no_close(
        memory_or_redis, realtime_leak_check):
    """``async_handlers=False``: a handler that catches its cancel (Twisted's
    ``CancelledError`` is an ``Exception``) and waits on does not hold the close past
    ``--application-close-timeout``: the disconnect handler runs then all the same, and
    the socket is freed. That disconnect handler, past the bridge's own kill (the
    connection's channel left the layer), enters a room: the sid's in it, no layer group
    is (on the memory and the Redis layer)."""
    from realtime.testing import serve

    layer = memory_or_redis
    sio = quick_server(async_handlers=False, channel_layer=layer)
    log: list[Any] = []
    later: Deferred[None] = Deferred()

    @sio.event
    async def stuck(sid):
        log.append("stuck")
        try:
            await Deferred()
        except Exception:  # (its cancel)
            log.append("cancelled")
            await later

    @sio.event
    async def disconnect(sid, reason):
        await sio.sleep(0.1)  # (past the bridge's own kill, due when this handler starts)
        await sio.enter_room(sid, "late")
        log.append((reason, sio.rooms(sid)))

    server = await serve(app(sio), ServerConfig(application_close_timeout=0.3), layer=layer)
    try:
        raw = await Raw.open(f"http://127.0.0.1:{server.port}")
        await raw.send("40")
        sid = json.loads((await raw.recv())[2:])["sid"]
        await raw.send('42["stuck"]')
        assert await until(lambda: log == ["stuck"])
        await raw.close()
        assert await until(lambda: len(log) == 3), log
        assert log == ["stuck", "cancelled", ("transport close", [sid, "late"])]
        assert not sio._sockets and sio.manager.rooms == {}
        assert rsio.room_group("/", "late") not in layer._groups
    finally:
        later.callback(None)
        await server.stop()


@pytest.mark.parametrize("async_handlers", [True, False], ids=["async", "in-order"])
@pytest_twisted.ensureDeferred
async def test_a_disconnect_handler_cancelled_at_the_close_timeout_frees_every_socket(
        live, async_handlers):
    """Two namespaces whose disconnect handlers never return: past
    ``--application-close-timeout`` the running one is cancelled (its own handler sees
    the cancel; not logged as its failure) and the connection's other socket goes without
    its handler: both freed (before, the cancel was swallowed, the next handler ran with
    no time limit and its socket stayed for ever)."""
    sio = quick_server(async_handlers=async_handlers, namespaces=["/b"])
    log: list[Any] = []

    async def disconnect(sid, reason):
        log.append(reason)
        try:
            await Deferred()
        except BaseException as exc:
            log.append(type(exc).__name__)
            raise

    sio.on("disconnect", disconnect)
    sio.on("disconnect", disconnect, namespace="/b")
    url = await start(live, sio, application_close_timeout=0.3)
    raw = await Raw.open(url)
    await raw.send("40")
    assert (await raw.recv()).startswith("40{")
    await raw.send("40/b,")
    assert (await raw.recv()).startswith("40/b,{")
    assert len(sio._sockets) == 2
    with captured_log() as events:
        await raw.close()
        assert await until(lambda: not sio._sockets, 3), log
        assert not await until(lambda: len(log) > 2, 0.5), log
    assert log == ["transport close", "CancelledError"]
    assert sio.manager.rooms == {}
    assert [formatEvent(e) for e in events if "log_failure" in e] == []
    assert any("1 other sockets of its connection go without theirs" in formatEvent(e)
               for e in events)

@pytest.mark.parametrize("refuse", [False, True], ids=["accepts", "refuses"])
@pytest_twisted.ensureDeferred
async def test_always_connect_disconnect_in_the_connect_handler(live, refuse):
    """``always_connect=True``: a connect handler that calls ``disconnect(sid)`` on its own
    sid (connected for its client: CONNECT went out) gets its disconnect handler inside
    that call, with "server disconnect" and the session and rooms still there, as in
    python-socketio; whether it then accepts or refuses, nothing more follows (no second
    disconnect handler, no packet). ``sio.manager.is_connected`` is True in it before."""
    sio = quick_server(always_connect=True)
    log: list[Any] = []

    @sio.event
    async def connect(sid, environ, auth):
        log.append(("connected?", sio.manager.is_connected(sid, "/")))
        await sio.save_session(sid, {"who": auth["who"]})
        await sio.enter_room(sid, "lobby")
        await sio.disconnect(sid)
        log.append(("after", sio.manager.is_connected(sid, "/")))
        return not refuse

    @sio.event
    async def disconnect(sid, reason):
        session = await sio.get_session(sid)
        log.append((reason, session["who"], [room for room in sio.rooms(sid) if room != sid]))

    url = await start(live, sio)
    raw = await Raw.open(url)
    await raw.send('40{"who":"me"}')
    assert (await raw.recv()).startswith('40{"sid":')
    assert await raw.recv() == "41"
    assert await until(lambda: len(log) == 3)
    assert log == [("connected?", True), ("server disconnect", "me", ["lobby"]),
                   ("after", False)]
    assert not await until(lambda: len(log) > 3, 0.3), log
    assert not sio._sockets
    await raw.send("42[\"x\"]")  # (not connected: ignored) then a new CONNECT
    await raw.send('40{"who":"again"}')
    assert (await raw.recv()).startswith('40{"sid":')  # nothing came between
    assert await raw.recv() == "41"
    await raw.close()


class _RecordingJson:
    """A json module (the standard library's, wrapped) that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def dumps(self, data: Any, **kwargs: Any) -> str:
        self.calls.append(("dumps", data))
        return json.dumps(data, **kwargs)

    def loads(self, text: str) -> Any:
        self.calls.append(("loads", text))
        return json.loads(text)  # (NaN and all: the server refuses it after)


@pytest_twisted.ensureDeferred
async def test_a_json_module_writes_and_reads_the_packets(live):
    """``json=`` (python-socketio's): its ``dumps`` writes the events and acks (bytes
    still attachments), its ``loads`` reads the client's, for this server only; NaN it
    takes, nesting it cannot read and garbage it raises on close the connection with 1002
    as with the built-in codec; the standard library's module is the built-in path."""
    module = _RecordingJson()
    sio = quick_server(json=module)
    sio.on("echo", lambda sid, *args: args)
    url = await start(live, sio)
    client = PyClient("said")
    await client.connect(url, None)
    assert await client.call("echo", ({"a": [1, "é"]}, b"\x01")) == ({"a": [1, "é"]}, b"\x01")
    await sio.emit("said", {"x": 1.5})
    assert await client.next() == ("said", {"x": 1.5})
    await client.disconnect()
    assert ("loads", '["echo",{"a":[1,"\\u00e9"]},{"_placeholder":true,"num":0}]'
            ) in module.calls
    assert ("dumps", [{"a": [1, "é"]}, {"_placeholder": True, "num": 0}]) in module.calls
    assert ("dumps", ["said", {"x": 1.5}]) in module.calls
    for bad in ('42["echo",NaN]', '42["echo",[-Infinity]]', "42" + "[" * 100_000,
                '42["echo",}'):
        raw = await Raw.open(url)
        await raw.send("40")
        assert (await raw.recv()).startswith("40{")
        await raw.send(bad)
        assert (await raw.closed())[0] == 1002, bad[:20]
    assert rsio.AsyncServer(json=json).json is None  # the standard library's: built in
    assert rsio.AsyncServer(json=module, serializer="msgpack").json is None  # (unused there)
    with pytest.raises(TypeError, match="dumps"):
        rsio.AsyncServer(json=gc)  # (a module, but no dumps/loads)


def _request(url: str, method: str = "GET", body: bytes = b"",
             headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """A raw HTTP request: status, headers (an ``HTTPMessage``: ``get_all``), body as sent."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=WAIT)
    try:
        conn.request(method, f"{parts.path}?{parts.query}", body=body or None,
                     headers=headers or {})
        response = conn.getresponse()
        return response.status, response.msg, response.read()
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_the_cookie_is_set_on_the_polling_handshake(live):
    """``cookie=`` (python-engineio's, for cookie-based sticky sessions): a name gets
    ``path=/; SameSite=Lax``; a dict its attributes (True: a flag, False: left out, a
    callable called at each handshake); only the polling handshake sets it, as in
    python-engineio (not a GET with a sid, not a WebSocket's handshake; the upgrade with
    the cookie works); python-socketio's client (which sends it back) on its default
    transports."""
    url = await start(live, quick_server(cookie="io"))
    status, headers, body = await in_thread(_request, f"{url}/socket.io/?EIO=4&transport=polling")
    sid = json.loads(body[1:])["sid"]
    assert status == 200 and headers.get_all("Set-Cookie") == [f"io={sid}; path=/; SameSite=Lax"]
    status, headers, _ = await in_thread(_request, f"{url}/socket.io/?EIO=4&transport=polling"
                                                   f"&sid={sid}", "POST", b"40")
    assert status == 200 and headers.get_all("Set-Cookie") is None

    ages = iter(["60", "61"])
    sio = quick_server(cookie={"name": "sticky", "path": "/socket.io", "Secure": True,
                               "HttpOnly": True, "SameSite": "None", "Domain": False,
                               "Max-Age": lambda: next(ages)})
    url = await start(live, sio)
    for age in ("60", "61"):
        _, headers, body = await in_thread(_request, f"{url}/socket.io/?EIO=4&transport=polling")
        sid = json.loads(body[1:])["sid"]
        assert headers.get_all("Set-Cookie") == [
            f"sticky={sid}; path=/socket.io; Secure; HttpOnly; SameSite=None; Max-Age={age}"]
    # The upgrade, carrying the cookie back as a browser does: no new one.
    from websockets.sync.client import connect

    def upgrade() -> Any:
        with connect(ws_url(url, f"EIO=4&transport=websocket&sid={sid}"), open_timeout=WAIT,
                     additional_headers={"Cookie": f"sticky={sid}"}) as ws:
            ws.send("2probe")
            assert ws.recv(WAIT) == "3probe"
            return ws.response.headers.get_all("Set-Cookie")

    assert await in_thread(upgrade) == []

    def websocket_only() -> Any:
        with connect(ws_url(url), open_timeout=WAIT) as ws:
            assert ws.recv(WAIT).startswith("0{")
            return ws.response.headers.get_all("Set-Cookie")

    assert await in_thread(websocket_only) == []
    client = PyClient("said")
    await client.connect(url, None)
    assert await until(lambda: client.client.transport() == "websocket")
    await client.disconnect()

    with captured_log() as events:  # a callable that gives what cannot go in a header
        sio.cookie["Max-Age"] = lambda: "1; evil=yes"
        _, headers, _ = await in_thread(_request, f"{url}/socket.io/?EIO=4&transport=polling")
    assert headers.get_all("Set-Cookie") is None
    assert any("cookie left out" in str(event.get("log_format")) for event in events)
    _, headers, _ = await in_thread(_request, f"{(await start(live, quick_server()))}"
                                              "/socket.io/?EIO=4&transport=polling")
    assert headers.get_all("Set-Cookie") is None  # none by default
    for off in ("", {}):  # (python-engineio: ``if self.cookie``)
        _, headers, _ = await in_thread(_request, f"{(await start(live, quick_server(cookie=off)))}"
                                                  "/socket.io/?EIO=4&transport=polling")
        assert headers.get_all("Set-Cookie") is None, off
    for bad, error in [(True, TypeError), ({"name": "a b"}, ValueError),
                       ({"path": "/;x"}, ValueError), ({"Max-Age": 60}, TypeError),
                       ({"Path": "/\r\nX: y"}, ValueError), ({"bad attr": "x"}, ValueError)]:
        with pytest.raises(error, match="cookie"):
            rsio.AsyncServer(cookie=bad)


@pytest_twisted.ensureDeferred
async def test_polling_responses_are_compressed_as_python_engineio_does(live):
    """``http_compression`` (on by default) and ``compression_threshold`` (1024): a GET's
    packets of that many bytes go gzipped or deflated, the first of the two the client
    accepts (not one with ``q=0``); smaller ones, a client that accepts neither, or the
    option off: as they are. ``--max-send-buffer`` still counts the packets as queued
    (``--slow-consumer drop`` drops the third of three 2 KB packets past 5000 bytes, and
    the GET brings the two others compressed). A POST is never inflated (gzip sent to it
    is no Engine.IO payload: 400). python-socketio's client (requests: it accepts both)
    on polling gets big and small packets."""
    import gzip
    import zlib

    from tests.test_socketio import Polling

    sio = quick_server()
    url = await start(live, sio, max_send_buffer=5000, slow_consumer="drop")

    async def get(session: Any, accept: str | None) -> tuple[str | None, bytes]:
        headers = {"Accept-Encoding": accept} if accept is not None else {}
        status, answer, body = await in_thread(_request, session.base, "GET", b"", headers)
        assert status == 200
        return answer.get("Content-Encoding"), body

    big = "x" * 2000
    session = await Polling.open(url)
    for accept, encoding in [("gzip, deflate", "gzip"), ("deflate, gzip", "deflate"),
                             ("gzip;q=0, deflate;q=0.5", "deflate"), ("br", None), (None, None),
                             ("identity", None)]:
        for _ in range(3):
            await sio.emit("big", big, to=session.socket_sid)
        coding, body = await get(session, accept)
        assert coding == encoding, accept
        if coding == "gzip":
            body = gzip.decompress(body)
        elif coding == "deflate":
            body = zlib.decompress(body)
        packet = f'42["big","{big}"]'
        assert body.decode() == f"{packet}\x1e{packet}", accept  # the third was dropped
    await sio.emit("small", "y" * 900, to=session.socket_sid)  # under the threshold
    assert await get(session, "gzip") == (None, f'42["small","{"y" * 900}"]'.encode())
    status, _, _ = await in_thread(_request, session.base, "POST",
                                   gzip.compress(b'42["big","x"]'), {"Content-Encoding": "gzip"})
    assert status == 400

    plain = quick_server(http_compression=False)
    url = await start(live, plain)
    session = await Polling.open(url)
    await plain.emit("big", big, to=session.socket_sid)
    assert (await get(session, "gzip"))[0] is None
    low = quick_server(compression_threshold=10)
    url = await start(live, low)
    session = await Polling.open(url)
    await low.emit("e", "z" * 200, to=session.socket_sid)
    assert (await get(session, "gzip"))[0] == "gzip"
    await low.emit("e", "z", to=session.socket_sid)  # gzip would make it longer: as it is
    assert await get(session, "gzip") == (None, b'42["e","z"]')
    low.on("echo", lambda sid, data: data)
    client = PyClient()
    await client.connect(url, ["polling"])
    for data in ("small", "é" * 50_000, {"list": list(range(5000))}):
        assert await client.call("echo", data) == data
    await client.disconnect()
    for bad, error in [("yes", TypeError), (-1, ValueError), (1.5, TypeError)]:
        with pytest.raises(error, match="compression_threshold"):
            rsio.AsyncServer(compression_threshold=bad)
    with pytest.raises(TypeError, match="http_compression"):
        rsio.AsyncServer(http_compression="gzip")


@pytest_twisted.ensureDeferred
async def test_a_compressed_poll_varies_on_accept_encoding_with_its_own_length(live):
    """A polling answer whose coding depended on ``Accept-Encoding`` (one of
    ``compression_threshold`` bytes or more, compressed or not) says ``Vary:
    Accept-Encoding`` (beside CORS's ``Vary: Origin``); a smaller one does not; the
    ``Content-Length`` is the compressed body's."""
    import gzip

    from tests.test_socketio import Polling

    sio = quick_server(cors_allowed_origins="*")
    url = await start(live, sio)
    session = await Polling.open(url)
    for accept, coding in [("gzip", "gzip"), ("br", None)]:
        await sio.emit("big", "x" * 3000, to=session.socket_sid)
        status, headers, body = await in_thread(_request, session.base, "GET", b"", {
            "Accept-Encoding": accept, "Origin": "https://app.example"})
        assert status == 200 and headers.get("Content-Encoding") == coding
        assert int(headers["Content-Length"]) == len(body)
        assert sorted(headers.get_all("Vary")) == ["Accept-Encoding", "Origin"]
        if coding == "gzip":
            assert len(body) < 3000 and gzip.decompress(body).startswith(b'42["big"')
    await sio.emit("small", "y", to=session.socket_sid)
    _, headers, _ = await in_thread(_request, session.base, "GET", b"",
                                    {"Accept-Encoding": "gzip"})
    assert headers.get_all("Vary") is None


@pytest_twisted.ensureDeferred
async def test_cors_credentials_follows_the_option(live):
    """``cors_credentials`` (True by default, as python-engineio's): an allowed origin's
    polling answers (the preflight too) carry ``Access-Control-Allow-Credentials: true``;
    with False they carry the origin only; a refused origin gets neither."""
    origin = {"Origin": "https://app.example"}
    for credentials in (True, False):
        sio = quick_server(cors_allowed_origins=["https://app.example"],
                           cors_credentials=credentials)
        url = await start(live, sio)
        base = f"{url}/socket.io/?EIO=4&transport=polling"
        for method in ("GET", "OPTIONS"):
            status, headers, _ = await in_thread(_request, base, method, b"", origin)
            assert status in (200, 204)
            assert headers.get("Access-Control-Allow-Origin") == "https://app.example"
            assert headers.get("Access-Control-Allow-Credentials") == (
                "true" if credentials else None), (method, credentials)
        status, headers, _ = await in_thread(_request, base, "GET", b"",
                                             {"Origin": "https://evil.example"})
        assert status == 403 and headers.get("Access-Control-Allow-Credentials") is None
    with pytest.raises(TypeError, match="cors_credentials"):
        rsio.AsyncServer(cors_credentials="true")


@pytest_twisted.ensureDeferred
async def test_cors_allowed_origins_empty_turns_the_cors_headers_off(live, monkeypatch):
    """``cors_allowed_origins=[]`` (python-engineio's "CORS handling off", for a CORS
    layer in front): no ``Access-Control-*`` header on any answer, the preflight's too;
    the origins are still checked, by the default rule (python-engineio then checks none:
    any site's page would open a WebSocket with its user's cookies): the server's own and
    ``--allowed-origins``' pass, another gets 403 on both transports."""
    from realtime.settings import settings
    from tests.test_socketio import _handshake_status

    sio = quick_server(cors_allowed_origins=[])
    url = await start(live, sio)
    base = f"{url}/socket.io/?EIO=4&transport=polling"
    app_origin = "https://app.example"
    for origin in (url, None):
        for method in ("GET", "OPTIONS"):
            headers = {"Access-Control-Request-Headers": "x-token"}
            if origin:
                headers["Origin"] = origin
            status, got, _ = await in_thread(_request, base, method, b"", headers)
            assert status == (200 if method == "GET" else 204), (origin, method)
            assert [name for name in got if name.lower().startswith("access-control-")] == []
            assert got.get_all("Vary") is None
    assert await in_thread(_handshake_status, ws_url(url), url) == 101
    for status_of in (await in_thread(_request, base, "GET", b"", {"Origin": app_origin}),
                      await in_thread(_request, base, "OPTIONS", b"", {"Origin": app_origin})):
        assert status_of[0] == 403 and status_of[1].get("Access-Control-Allow-Origin") is None
    assert await in_thread(_handshake_status, ws_url(url), app_origin) == 403
    monkeypatch.setattr(settings, "allowed_origins", [app_origin])
    status, got, _ = await in_thread(_request, base, "GET", b"", {"Origin": app_origin})
    assert status == 200 and got.get("Access-Control-Allow-Origin") is None
    assert await in_thread(_handshake_status, ws_url(url), app_origin) == 101
    assert await in_thread(_handshake_status, ws_url(url), "https://evil.example") == 403


@pytest_twisted.ensureDeferred
async def test_client_manager_is_accepted_only_where_it_is_the_layer(live, redis_url):
    """``client_manager=``: realtime's ``AsyncManager()`` changes nothing;
    ``AsyncRedisManager(url)`` is checked against the server's layer, at construction
    when it is known (``channel_layer=``) and else at its first use (a connection: 500,
    one error logged; an ``emit``: ``ValueError``): the same Redis (password aside) and,
    for a ``channel`` other than python-socketio's default, the layer's ``prefix``.
    python-socketio's own managers, a write-only one, ``redis_options`` and anything else
    are refused naming ``--layer`` or ``Emitter``."""
    import socketio

    from realtime.layers.redis import RedisChannelLayer

    url = await start(live, quick_server(client_manager=rsio.AsyncManager()))
    one = await PyClient().connect(url, None)
    await one.disconnect()

    layer = RedisChannelLayer.from_url(redis_url)  # (not started: only its address counts)
    sio = rsio.AsyncServer(client_manager=rsio.AsyncRedisManager(redis_url),
                           channel_layer=layer)
    assert sio.channel_layer is layer
    assert isinstance(sio.manager, rsio.AsyncRedisManager) and sio.manager.server is sio
    other_db = redis_url.rstrip("/0123456789") + "/5"
    with pytest.raises(ValueError, match=r"--layer redis://.*/5"):
        rsio.AsyncServer(client_manager=rsio.AsyncRedisManager(other_db), channel_layer=layer)
    with pytest.raises(ValueError, match=r"prefix=app1"):
        rsio.AsyncServer(client_manager=rsio.AsyncRedisManager(redis_url, channel="app1"),
                         channel_layer=layer)
    prefixed = RedisChannelLayer.from_url(redis_url + "?prefix=app1")
    rsio.AsyncServer(client_manager=rsio.AsyncRedisManager(redis_url, channel="app1"),
                     channel_layer=prefixed)

    sio = quick_server(client_manager=rsio.AsyncRedisManager(redis_url))
    url = await start(live, sio)  # on the in-memory layer: refused at the first use
    with captured_log() as events:
        assert (await in_thread(_request, f"{url}/socket.io/?EIO=4&transport=polling"))[0] == 500
        assert (await in_thread(_handshake_refusal, ws_url(url)))[0] == 500
    errors = [event for event in events if event.get("log_level") is not None
              and event["log_level"].name == "error"]
    assert len(errors) == 1 and "--layer memory" in errors[0]["problem"]
    assert not sio._polling
    with pytest.raises(ValueError, match=re.escape(f"run with --layer {redis_url}")):
        await sio.emit("e")

    with pytest.raises(TypeError, match="--layer"):
        rsio.AsyncServer(client_manager=socketio.AsyncManager())
    with pytest.raises(ValueError, match="Emitter"):
        rsio.AsyncServer(client_manager=rsio.AsyncRedisManager(redis_url, write_only=True))
    with pytest.raises(NotImplementedError, match="Emitter"):
        await rsio.AsyncRedisManager(redis_url, write_only=True).emit("e", 1)
    with pytest.raises(TypeError, match="--layer"):
        rsio.AsyncRedisManager(redis_url, redis_options={"socket_timeout": 5})
    with pytest.raises(ValueError, match="AsyncRedisManager"):
        rsio.AsyncRedisManager("memcached://localhost")
    with pytest.raises(TypeError, match="client_manager"):
        rsio.AsyncServer(client_manager=object())


@pytest_twisted.ensureDeferred
async def test_the_manager_reads_this_processs_rooms(live):
    """``sio.manager`` (python-socketio's ``AsyncManager``), from real clients' sockets:
    ``rooms``, ``get_namespaces``, ``get_participants`` (a room, several, None: all),
    ``get_rooms``, ``is_connected`` (not while the connect handler runs, nor in the
    disconnect handler, as python-socketio's), the Engine.IO sids (the clients', polling
    and then upgraded too), ``is_sid_room``; what it gives is a snapshot."""
    sio = quick_server(namespaces=["/chat"])
    during: list[Any] = []

    @sio.event
    async def connect(sid, environ, auth):
        during.append(("connect", sio.manager.is_connected(sid, "/")))
        await sio.enter_room(sid, "lobby")

    @sio.event
    async def disconnect(sid, reason):
        during.append(("disconnect", sio.manager.is_connected(sid, "/"),
                       sio.manager.get_rooms(sid, "/")))

    @sio.event
    async def join(sid, room):
        await sio.enter_room(sid, room)

    url = await start(live, sio)
    manager = sio.manager
    assert isinstance(manager, rsio.AsyncManager) and manager.server is sio
    assert manager.rooms == {} and manager.get_namespaces() == []
    a = await PyClient().connect(url, ["websocket"])
    b = await PyClient().connect(url, None, namespaces=["/", "/chat"])  # polling, upgraded
    a_sid, b_sid = a.client.get_sid(), b.client.get_sid()
    b_chat = b.client.get_sid("/chat")
    a_eio, b_eio = a.client.eio.sid, b.client.eio.sid
    await a.emit("join", "x")
    assert await until(lambda: manager.get_rooms(a_sid, "/") == [a_sid, "lobby", "x"])
    assert during == [("connect", False), ("connect", False)]

    assert sorted(manager.get_namespaces()) == ["/", "/chat"]
    assert sorted(manager.get_participants("/", "lobby")) == sorted([(a_sid, a_eio),
                                                                     (b_sid, b_eio)])
    assert list(manager.get_participants("/", "x")) == [(a_sid, a_eio)]
    assert sorted(manager.get_participants("/", ["x", "lobby"])) == sorted(
        [(a_sid, a_eio), (b_sid, b_eio)])  # (each once)
    assert sorted(manager.get_participants("/", None)) == sorted([(a_sid, a_eio),
                                                                  (b_sid, b_eio)])
    assert list(manager.get_participants("/chat", None)) == [(b_chat, b_eio)]
    assert list(manager.get_participants("/", "nowhere")) == []
    assert list(manager.get_participants("/", b_sid)) == [(b_sid, b_eio)]
    rooms = manager.rooms
    assert rooms["/"]["lobby"] == {a_sid: a_eio, b_sid: b_eio}
    assert rooms["/"][None] == {a_sid: a_eio, b_sid: b_eio}
    assert rooms["/"][a_sid] == {a_sid: a_eio} and rooms["/"]["x"] == {a_sid: a_eio}
    assert rooms["/chat"] == {None: {b_chat: b_eio}, b_chat: {b_chat: b_eio}}
    rooms["/"].clear()  # a snapshot: the manager's own state is the server's
    assert manager.rooms["/"]["lobby"] == {a_sid: a_eio, b_sid: b_eio}
    assert manager.is_connected(a_sid, "/") and manager.is_connected(b_chat, "/chat")
    assert not manager.is_connected(a_sid, "/chat") and not manager.is_connected("x", "/")
    assert await manager.can_disconnect(b_sid, "/")
    assert manager.get_rooms(b_chat, "/chat") == [b_chat]
    assert manager.get_rooms("nope", "/") == []
    assert manager.sid_from_eio_sid(b_eio, "/chat") == b_chat
    assert manager.eio_sid_from_sid(a_sid, "/") == a_eio
    assert manager.sid_from_eio_sid("nope", "/") is None
    assert manager.eio_sid_from_sid("nope", "/") is None
    assert manager.is_sid_room("/", a_sid) and not manager.is_sid_room("/", "lobby")
    assert sio.transport(b_sid) == "websocket"  # (its Engine.IO sid the same after it)

    await b.disconnect()
    assert await until(lambda: len(during) == 3)
    assert during[2] == ("disconnect", False, [b_sid, "lobby"])
    assert list(manager.get_participants("/", "lobby")) == [(a_sid, a_eio)]
    assert manager.get_namespaces() == ["/"]
    await a.disconnect()
    assert await until(lambda: manager.rooms == {})


def test_the_constructor_takes_python_socketios_positional_arguments():
    """``AsyncServer(client_manager, logger, json, async_handlers, namespaces)`` as
    python-socketio's; the rest by name. A first argument that looks like namespaces (the
    old order) is refused, naming ``namespaces=``; a manager serves one server."""
    manager, codec = rsio.AsyncManager(), _RecordingJson()
    sio = rsio.AsyncServer(manager, False, codec, False, ["/chat"])
    assert sio.manager is manager and manager.server is sio
    assert sio.json is codec and not sio.async_handlers and "/chat" in sio.namespaces
    assert isinstance(rsio.AsyncServer().manager, rsio.AsyncManager)
    assert rsio.AsyncServer(logger=True, namespaces="*").namespaces == "*"
    for namespaces in (["/chat"], "*", ("/a", "/b"), {"/a"}):
        with pytest.raises(TypeError, match=r"first argument is client_manager.*namespaces="):
            rsio.AsyncServer(namespaces)
    with pytest.raises(TypeError):
        rsio.AsyncServer(None, False, None, True, None, 25)  # ping_interval: by name
    with pytest.raises(ValueError, match="another AsyncServer's manager"):
        rsio.AsyncServer(manager)
    spare = rsio.AsyncManager()  # a construction refused for another option keeps it free
    with pytest.raises(ValueError, match="ping_interval"):
        rsio.AsyncServer(spare, ping_timeout=0)
    with pytest.raises(ValueError, match="transports"):
        rsio.AsyncServer(spare, transports=["pigeon"])
    assert spare.server is None and rsio.AsyncServer(spare).manager is spare


def test_ping_interval_takes_python_engineios_grace_period():
    """``ping_interval=(interval, grace)``: kept apart (the server pings every interval);
    a tuple that is not two numbers of seconds, interval > 0, grace >= 0, is a
    ``ValueError``, anything but a number or a tuple a ``TypeError``."""
    sio = rsio.AsyncServer(ping_interval=(10, 5))
    assert (sio.ping_interval, sio.ping_interval_grace_period) == (10.0, 5.0)
    assert rsio.AsyncServer(ping_interval=7).ping_interval_grace_period == 0
    for bad in [(1,), (1, 2, 3), (0, 1), (1, -1), ("1", 2), (True, 1), (1, float("nan")),
                (float("inf"), 0), ()]:
        with pytest.raises(ValueError, match=r"\(interval, grace period\)"):
            rsio.AsyncServer(ping_interval=bad)
    for bad in ["25", [25, 5], None]:
        with pytest.raises(TypeError, match="ping_interval"):
            rsio.AsyncServer(ping_interval=bad)
    with pytest.raises(ValueError, match="> 0"):
        rsio.AsyncServer(ping_interval=0)


@pytest_twisted.ensureDeferred
async def test_a_grace_period_is_told_to_clients_and_not_waited_for(live):
    """``ping_interval=(0.2, 30)``: the open packet says 30200 ms (python-engineio's
    interval + grace, so a client waits that much longer for a late ping), the server pings
    every 0.2 s all the same, and an unanswered ping still times out after
    ``ping_timeout``; python-socketio's client connects and stays."""
    sio = rsio.AsyncServer(ping_interval=(0.2, 30), ping_timeout=0.5)
    reasons: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))
    sio.on("echo", lambda sid, data: data)
    url = await start(live, sio)
    raw = await Raw.open(url)
    assert (raw.handshake["pingInterval"], raw.handshake["pingTimeout"]) == (30200, 500)
    await raw.send("40")
    assert (await raw.recv()).startswith("40{")
    for _ in range(2):  # (each within WAIT, far under the 30 s the client was told)
        assert await raw.recv() == "2"
        await raw.send("3")
    assert await raw.recv() == "2"  # not answered
    assert await raw.closed() == (1008, "ping timeout")
    assert await until(lambda: reasons == ["ping timeout"])

    client = PyClient()
    await client.connect(url, None)
    assert client.client.eio.ping_interval == 30.2
    assert await client.call("echo", "alive") == "alive"
    await client.disconnect()


#: (python-socketio's ``AsyncRedisManager`` URL, the server's ``--layer``): the same Redis.
SAME_REDIS = [
    ("redis://localhost:6379/0", "redis://127.0.0.1:6379/0"),  # python-socketio's default
    ("redis://", "redis://127.0.0.1:6379"),  # (its docs: "for a default Redis store")
    ("redis://127.0.0.1", "redis://localhost:6379/0"),
    ("redis://[::1]:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://Cache.Example:6380/2", "redis://cache.example:6380/2"),
    ("redis://:secret@cache.example:6380/2", "redis://user:other@cache.example:6380/2"),
    ("redis://cache.example:6380?db=2", "redis://cache.example:6380/2"),  # (redis-py's)
    ("redis://cache.example:6380/0?db=2&socket_timeout=5", "redis://cache.example:6380/2"),
    ("valkey://cache.example:6380/2", "redis://cache.example:6380/2"),
    ("valkeys://cache.example/1", "rediss://cache.example:6379/1"),
    ("unix:///run/redis.sock?db=3", "unix:///run/redis.sock?db=3"),
    # python-socketio's sentinel form (db, then the master; without it the channel)
    ("redis+sentinel://s1:26379,s2:26380/0/mymaster", "redis+sentinel://s2:26380,s1/mymaster"),
    ("redis+sentinel://s1:26379/4", "redis+sentinel://s1:26379/socketio/4"),
    ("valkey+sentinel://s1:26379/0/mymaster", "redis+sentinel://s1:26379,s3:26379/mymaster/0"),
    # one of the servers a sharded layer spreads its groups over, a node of a cluster's
    ("redis://b.example:6379", "redis://a.example:6379 redis://b.example:6379"),
    ("redis://n2.example:7001", "redis+cluster://n1.example:7000,n2.example:7001"),
]
#: ... and not the same one.
OTHER_REDIS = [
    ("redis://localhost:6379/0", "redis://127.0.0.1:6379/1"),
    ("redis://localhost:6379/0", "redis://127.0.0.1:6380/0"),
    ("redis://cache.example:6379/0", "redis://other.example:6379/0"),
    ("rediss://cache.example:6379/0", "redis://cache.example:6379/0"),
    ("redis://cache.example:6379/0?db=3", "redis://cache.example:6379/0"),
    ("unix:///run/redis.sock", "unix:///run/other.sock"),
    ("unix:///run/redis.sock", "redis://localhost:6379/0"),
    ("redis+sentinel://s1:26379/0/mymaster", "redis+sentinel://s1:26379/other/0"),
    ("redis+sentinel://s1:26379/0/mymaster", "redis+sentinel://s1:26379/mymaster/1"),
    ("redis+sentinel://s1:26379/0/mymaster", "redis+sentinel://s9:26379/mymaster/0"),
    ("redis://c.example:6379", "redis://a.example:6379 redis://b.example:6379"),
    ("redis://n3.example:7002", "redis+cluster://n1.example:7000,n2.example:7001"),
    ("redis://n1.example:7000/1", "redis+cluster://n1.example:7000,n2.example:7001"),
]


@pytest.mark.parametrize("url,layer_url", SAME_REDIS)
def test_async_redis_manager_takes_python_socketios_urls_for_the_layers_redis(url, layer_url):
    """``AsyncRedisManager(url)`` reads its URL as python-socketio (and redis-py, valkey)
    do, and compares where it leads with the layer's Redis: spelt otherwise (loopback
    names, a host's case, no db, the db in the query, python-socketio's sentinel path),
    it is accepted; so is one of a sharded layer's servers or of a cluster's nodes."""
    from realtime.layers import layer_from_url

    layer = layer_from_url(layer_url)  # (connects nothing: only its address counts)
    sio = rsio.AsyncServer(client_manager=rsio.AsyncRedisManager(url), channel_layer=layer)
    assert sio.channel_layer is layer


@pytest.mark.parametrize("url,layer_url", OTHER_REDIS)
def test_async_redis_manager_refuses_another_redis_naming_both(url, layer_url):
    from realtime.layers import layer_from_url

    layer = layer_from_url(layer_url)
    with pytest.raises(ValueError, match=r"client_manager=AsyncRedisManager.* run with --layer"):
        rsio.AsyncServer(client_manager=rsio.AsyncRedisManager(url), channel_layer=layer)


def test_async_redis_manager_refuses_what_python_socketio_would_not_take():
    """A scheme python-socketio does not know, a sentinel URL in realtime's order (the
    master before the db: python-socketio reads ``int(master)``), realtime's own
    ``--layer`` options: a ``ValueError`` saying so."""
    for url, words in [("http://localhost", "scheme"), ("memcached://x", "scheme"),
                       ("redis+sentinel://s1:26379/mymaster/0", "/db/service"),
                       ("redis://localhost/0?prefix=app", "--layer option"),
                       ("redis://localhost/x", "db"), ("redis://localhost:99999", "port")]:
        with pytest.raises(ValueError, match=re.escape(words)):
            rsio.AsyncRedisManager(url)


def test_the_options_left_ignored_are_accepted():
    """python-socketio's ``async_mode``, ``logger``, ``engineio_logger`` and
    ``monitor_clients`` change nothing here; anything else unknown is a TypeError."""
    sio = rsio.AsyncServer(async_mode="asgi", logger=True, engineio_logger=False,
                           monitor_clients=False)
    assert sio.async_handlers and not sio.always_connect and sio.cookie is None
    with pytest.raises(TypeError, match="unknown options: \\['ping_grace'\\]"):
        rsio.AsyncServer(ping_grace=1)
