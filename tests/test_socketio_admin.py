"""``AsyncServer.instrument()`` (the Socket.IO Admin UI, ``realtime.socketio_admin``)
against Node's ``socket.io-client`` acting as the UI (tests/node/socketio_admin.js: it
connects to the admin namespace with its login, prints every event, sends commands) and
python-socketio's ``Client`` as the application's clients. Real servers on the in-memory
layer; two processes' worth on a real redis-server at the end."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted

from realtime import socketio as rsio
from tests.clients import in_thread, until
from tests.test_socketio import (  # noqa: F401  (socket_io_client: the fixture)
    NODE_MODULES,
    PyClient,
    app,
    quick_server,
    socket_io_client,
    start,
    stop_all,
)

ADMIN_SCRIPT = Path(__file__).parent / "node" / "socketio_admin.js"
LOGIN = {"username": "admin", "password": "s3cret"}
pytestmark = pytest.mark.usefixtures("socket_io_client")


class Admin:
    """The Admin UI: a socket.io-client on ``/admin`` in a Node process."""

    def __init__(self, url: str, auth: Any, namespace: str = "/admin") -> None:
        env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
        self.proc = subprocess.Popen(
            ["node", str(ADMIN_SCRIPT), url + namespace, json.dumps(auth)], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.seen: list[dict[str, Any]] = []

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        text = await in_thread(self.proc.stdout.readline)
        assert text, f"the admin client exited; it saw {self.seen}"
        line = json.loads(text)
        self.seen.append(line)
        return line

    async def first(self, key: str) -> Any:
        """The value of the next line with ``key`` (``connected``, ``connect_error``)."""
        while True:
            line = await self.line()
            if key in line:
                return line[key]

    async def expect(self, event: str, match: Any = lambda args: True) -> list[Any]:
        """The arguments of the next ``event`` that ``match`` takes (others skipped)."""
        while True:
            line = await self.line()
            assert "timeout" not in line and "connect_error" not in line, line
            if line.get("event") == event and match(line["args"]):
                return line["args"]

    def events(self, name: str) -> list[list[Any]]:
        return [line["args"] for line in self.seen if line.get("event") == name]

    async def command(self, *args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"emit": list(args)}) + "\n")
        self.proc.stdin.flush()

    async def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        await in_thread(self.proc.wait, 10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def test_instrument_needs_auth_explicitly_and_checks_its_options() -> None:
    sio = rsio.AsyncServer()
    with pytest.raises(ValueError, match="auth=False"):
        sio.instrument()  # as python-socketio: no silent open admin namespace
    for bad in ({}, [], "s3cret"):
        with pytest.raises(ValueError, match="non-empty dict"):
            sio.instrument(auth=bad)
    with pytest.raises(ValueError, match="production"):
        sio.instrument(auth=False, mode="debug")
    with pytest.raises(ValueError, match="starts with '/'"):
        sio.instrument(auth=False, namespace="admin")
    with pytest.raises(ValueError, match="> 0"):
        sio.instrument(auth=False, server_stats_interval=0)
    assert sio._admin is None and "/admin" not in sio.handlers
    admin = sio.instrument(auth=False)
    assert sio._admin is admin and admin.server_id.endswith(f"#{os.getpid()}")
    assert "connect" in sio.handlers["/admin"] and "emit" in sio.handlers["/admin"]
    with pytest.raises(ValueError, match="instrumented already"):
        sio.instrument(auth=False)
    admin.uninstrument()
    assert sio._admin is None and "/admin" not in sio.handlers


@pytest_twisted.ensureDeferred
async def test_the_ui_gets_config_sockets_stats_and_every_event_in_development(live):
    sio = quick_server()
    admin_ui = sio.instrument(auth=LOGIN, server_stats_interval=0.2, server_id="here")

    @sio.event
    async def hello(sid, text):
        await sio.enter_room(sid, "lobby")
        await sio.emit("welcome", f"hi {text}", room="lobby")
        await sio.leave_room(sid, "lobby")
        return "ok"

    reasons: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))

    url = await start(live, sio)
    ada = await PyClient("welcome").connect(url, None, headers={  # polling, the upgrade
        "Cookie": "session=users-secret", "Authorization": "Bearer users-token",
        "X-Shown": "yes"})
    ui = Admin(url, LOGIN)
    try:
        admin_sid = await ui.first("connected")
        config = await ui.expect("config")
        assert config == [{"supportedFeatures": [
            "AGGREGATED_EVENTS", "EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE",
            "MDISCONNECT", "ALL_EVENTS"]}]
        [sockets] = await ui.expect("all_sockets")
        by_id = {one["id"]: one for one in sockets}
        mine = by_id[ada.client.get_sid()]
        assert mine["nsp"] == "/" and mine["rooms"] == [mine["id"]] and mine["data"] == {}
        assert mine["transport"] == sio.transport(mine["id"])
        assert mine["handshake"]["address"] == "127.0.0.1"
        headers = mine["handshake"]["headers"]  # the users' credentials stay here
        assert headers["x-shown"] == "yes"
        assert headers["cookie"] == headers["authorization"] == "(redacted)"
        assert mine["handshake"]["query"]["EIO"] == "4"
        assert mine["handshake"]["url"].startswith("/socket.io/?")
        assert by_id[admin_sid]["nsp"] == "/admin"  # the UI sees itself, as in Node
        [stats] = await ui.expect("server_stats")
        assert stats["serverId"] == "here" and stats["pid"] == os.getpid()
        assert stats["clientsCount"] == 2 and stats["uptime"] > 0
        assert {"name": "/", "socketsCount": 1} in stats["namespaces"]
        assert {"name": "/admin", "socketsCount": 1} in stats["namespaces"]
        kinds = {one["type"] for one in stats["aggregatedEvents"]}
        assert kinds <= {"rawConnection", "rawDisconnection", "packetsIn", "packetsOut",
                         "bytesIn", "bytesOut"}

        assert await ada.call("hello", "ada") == "ok"
        sid = ada.client.get_sid()
        received = await ui.expect("event_received")
        assert received[:3] == ["/", sid, ["hello", "ada"]] and received[3].endswith("Z")
        assert (await ui.expect("room_joined"))[:3] == ["/", "lobby", sid]
        assert (await ui.expect("event_sent"))[:3] == ["/", sid, ["welcome", "hi ada"]]
        assert (await ui.expect("room_left"))[:3] == ["/", "lobby", sid]
        assert await ada.next() == ("welcome", "hi ada")

        bob = await PyClient().connect(url)
        sid_bob = bob.client.get_sid()
        connected = await ui.expect("socket_connected", lambda args: args[0]["id"] == sid_bob)
        assert connected[0]["transport"] == "websocket" and connected[1].endswith("Z")
        await bob.disconnect()
        gone = await ui.expect("socket_disconnected", lambda args: args[1] != admin_sid)
        assert gone[:3] == ["/", sid_bob, reasons[-1]]  # what the disconnect handler got
        [stats] = await ui.expect("server_stats", lambda args: any(
            one["type"] == "rawDisconnection" for one in args[0]["aggregatedEvents"]))
        assert stats["clientsCount"] == 2
        await ada.disconnect()
    finally:
        await ui.close()
        await admin_ui.shutdown()
        await sio.shutdown()
    assert admin_ui._tick is None and admin_ui._channel is None


@pytest_twisted.ensureDeferred
async def test_the_uis_commands_act_and_read_only_refuses_them(live):
    sio = quick_server()
    sio.instrument(auth=[{"username": "x", "password": "y"}, LOGIN],  # a list: any of them
                   server_stats_interval=5)
    url = await start(live, sio)
    ada = await PyClient("news", "disconnect").connect(url)
    bob = await PyClient("news").connect(url)
    sid_ada, sid_bob = ada.client.get_sid(), bob.client.get_sid()
    ui = Admin(url, LOGIN)
    try:
        await ui.expect("all_sockets")
        await ui.command("join", "/", "team", sid_ada)  # the UI's filter: a sid, or a room
        assert await until(lambda: sio.rooms(sid_ada) == [sid_ada, "team"])
        assert sio.rooms(sid_bob) == [sid_bob]
        await ui.command("emit", "/", "team", "news", "for the team", 2)
        assert await ada.next() == ("news", ("for the team", 2))
        await ui.command("emit", "/", None, "news", "everyone")
        assert await ada.next() == await bob.next() == ("news", "everyone")
        await ui.command("join", "/", "all")  # no filter: every socket of the namespace
        assert await until(lambda: "all" in sio.rooms(sid_bob) and "all" in sio.rooms(sid_ada))
        await ui.command("leave", "/", "all", "team")
        assert await until(lambda: sio.rooms(sid_ada) == [sid_ada, "team"])
        assert sio.rooms(sid_bob) == [sid_bob, "all"]
        await ui.command("emit", 5, None, "news", "bad namespace: ignored")
        await ui.command("_disconnect", "/", False, "team")
        assert await ada.next() == ("disconnect", ("server disconnect",))
        assert await bob.nothing()
        await bob.disconnect()
    finally:
        await ui.close()
        await sio.shutdown()

    sio = quick_server()
    sio.instrument(auth=LOGIN, read_only=True, server_stats_interval=5)
    url = await start(live, sio)
    carl = await PyClient("news", "disconnect").connect(url)
    ui = Admin(url, LOGIN)
    try:
        assert await ui.expect("config") == [{"supportedFeatures": [
            "AGGREGATED_EVENTS", "ALL_EVENTS"]}]
        await ui.command("join", "/", "team")
        await ui.command("emit", "/", None, "news", "refused")
        await ui.command("_disconnect", "/", False)
        assert await carl.nothing()
        assert sio.rooms(carl.client.get_sid()) == [carl.client.get_sid()]
        await carl.disconnect()
    finally:
        await ui.close()
        await sio.shutdown()


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_are_refused_and_production_mode_sends_less(live):
    calls: list[Any] = []

    async def check(login):  # a callable (async here): True lets the UI in
        calls.append(login)
        return login == {"token": "t0k"}

    sio = quick_server()
    sio.instrument(auth=check, mode="production", server_stats_interval=0.2)
    url = await start(live, sio)
    for wrong in ({"token": "nope"}, {}, LOGIN):
        ui = Admin(url, wrong)
        assert await ui.first("connect_error") == "authentication failed"
        await ui.close()
    assert calls[0] == {"token": "nope"} and len(calls) == 3
    ui = Admin(url, {"token": "t0k"})
    try:
        await ui.first("connected")
        assert await ui.expect("config") == [{"supportedFeatures": [
            "AGGREGATED_EVENTS", "EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE",
            "MDISCONNECT"]}]
        ada = await PyClient().connect(url)
        await ui.expect("server_stats", lambda args: any(
            one == {"name": "/", "socketsCount": 1} for one in args[0]["namespaces"]))
        await ada.disconnect()
        await ui.expect("server_stats", lambda args: any(
            one == {"name": "/", "socketsCount": 0} for one in args[0]["namespaces"]))
        # production: stats only, none of the sockets' life
        assert {line.get("event") for line in ui.seen} - {None} == {"config", "server_stats"}
    finally:
        await ui.close()
        await sio.shutdown()

    # The hosted UI's origin, let in as the README says (polling and WebSocket alike).
    sio = quick_server(cors_allowed_origins=["https://admin.socket.io"])
    sio.instrument(auth={"username": "admin", "password": "s3cret"}, namespace="/ops")
    url = await start(live, sio)

    def handshake(origin: str) -> tuple[int, str | None]:
        conn = http.client.HTTPConnection(urlsplit(url).netloc, timeout=5)
        try:
            conn.request("GET", "/socket.io/?EIO=4&transport=polling",
                         headers={"Origin": origin})
            response = conn.getresponse()
            response.read()
            return response.status, response.getheader("Access-Control-Allow-Origin")
        finally:
            conn.close()

    assert await in_thread(handshake, "https://admin.socket.io") == (
        200, "https://admin.socket.io")
    assert (await in_thread(handshake, "https://elsewhere.example"))[0] == 403
    ui = Admin(url, {"username": "admin", "password": "s3cret!"}, namespace="/ops")
    assert await ui.first("connect_error") == "authentication failed"
    await ui.close()
    await sio.shutdown()


@pytest_twisted.ensureDeferred
async def test_a_ui_on_one_process_sees_and_commands_the_others_through_redis(
        redis_url, realtime_leak_check):
    """Two servers on two Redis layers (two processes' worth): the UI on the first gets
    the second's stats (its own serverId) and sockets, and its commands reach them."""
    from realtime.testing import serve
    from tests.redis_support import started_layer

    layers = [await started_layer(redis_url) for _ in range(2)]
    servers = []
    sios = [quick_server(channel_layer=layer) for layer in layers]
    for name, sio in zip(("one", "two"), sios, strict=True):
        sio.instrument(auth=LOGIN, server_id=name, server_stats_interval=0.2)
    ui = None
    try:
        for sio, layer in zip(sios, layers, strict=True):
            servers.append(await serve(app(sio), layer=layer))
        urls = [f"http://127.0.0.1:{server.port}" for server in servers]
        far = await PyClient("news", "disconnect").connect(urls[1])
        far_sid = far.client.get_sid()
        ui = Admin(urls[0], LOGIN)
        [sockets] = await ui.expect("all_sockets")
        assert far_sid not in {one["id"] for one in sockets}  # this process's only...
        told = await ui.expect("socket_connected", lambda args: args[0]["id"] == far_sid)
        assert told[0]["nsp"] == "/"  # ...and the other's, from the other
        await ui.expect("server_stats", lambda args: args[0]["serverId"] == "two")
        await ui.expect("server_stats", lambda args: args[0]["serverId"] == "one")
        await ui.command("join", "/", "far-room", far_sid)
        assert await until(lambda: sios[1].rooms(far_sid) == [far_sid, "far-room"])
        await ui.expect("room_joined", lambda args: args[:3] == ["/", "far-room", far_sid])
        await ui.command("emit", "/", "far-room", "news", "across")
        assert await far.next() == ("news", "across")
        await ui.command("_disconnect", "/", False, "far-room")
        assert await far.next() == ("disconnect", ("server disconnect",))
        await ui.expect("socket_disconnected", lambda args: args[1] == far_sid)
    finally:
        if ui is not None:
            await ui.close()
        for sio in sios:
            await sio.shutdown()
        await stop_all(servers, layers)


@pytest_twisted.ensureDeferred
async def test_a_login_being_checked_or_refused_gets_nothing_and_commands_nothing(live):
    """A client on /admin whose (slow) login is still being checked is not an admin: no
    admin event reaches it meanwhile (the sockets' handshakes, the events' data), and its
    commands, before CONNECT, while pending or after the refusal, do nothing."""
    from twisted.internet.defer import Deferred

    from tests.test_socketio import Raw

    gate: Deferred[bool] = Deferred()
    checked: list[Any] = []

    async def check(login):  # a login looked up elsewhere: slow
        checked.append(login)
        return True if login == LOGIN else await gate

    sio = quick_server(ping_interval=5)
    sio.instrument(auth=check, server_stats_interval=0.1)
    url = await start(live, sio)
    ada = await PyClient().connect(url)
    sid_ada = ada.client.get_sid()
    ui = Admin(url, LOGIN)
    intruder = await Raw.open(url)
    try:
        await ui.expect("all_sockets")
        await intruder.send('42/admin,["join","/","stolen"]')  # before any CONNECT
        await intruder.send('40/admin,{"username":"admin","password":"guess"}')
        assert await until(lambda: len(checked) == 2)
        await intruder.send('42/admin,["join","/","stolen"]')  # while its login is checked
        bob = await PyClient().connect(url)  # an admin event with bob's handshake...
        await ui.expect("socket_connected",
                        lambda args: args[0]["id"] == bob.client.get_sid())
        await ui.expect("server_stats")  # ...and the stats: sent to the admins
        gate.callback(False)
        assert await intruder.recv() == '44/admin,{"message":"authentication failed"}'
        await intruder.send('42/admin,["join","/","stolen"]')  # refused: still nothing
        await intruder.send('42/admin,["_disconnect","/",false]')
        await ui.command("join", "/", "mark", sid_ada)  # (after the intruder's, in order)
        assert await until(lambda: "mark" in sio.rooms(sid_ada))
        assert "stolen" not in sio.rooms(sid_ada) and sio.rooms(bob.client.get_sid()) == [
            bob.client.get_sid()]
        await bob.disconnect()
        await ada.disconnect()
    finally:
        await intruder.close()
        await ui.close()
        await sio.shutdown()


@pytest_twisted.ensureDeferred
async def test_a_server_dropped_without_shutdown_stops_its_stats_and_leaves_the_layer():
    """An instrumented ``AsyncServer`` dropped without ``shutdown()`` (several on one
    layer, as in tests) is garbage: its stats tick stops and its admin channel leaves the
    layer, which lives on (nothing of the server is held by either)."""
    import gc

    from twisted.internet.task import Clock

    from realtime.layers.memory import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    clock = Clock()
    sio = rsio.AsyncServer(channel_layer=layer)
    admin = sio.instrument(auth=False, server_stats_interval=1)
    admin._start(clock)  # as the first connection does
    assert admin._channel is not None
    channel = admin._channel.channel
    assert channel in layer._receivers and clock.getDelayedCalls()
    clock.advance(1)  # a tick with no admin client: nothing breaks
    del sio, admin
    gc.collect()
    assert channel not in layer._receivers
    assert clock.getDelayedCalls() == []
    await layer.close()
