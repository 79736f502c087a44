"""``realtime.socketio`` against Socket.IO's own clients: python-socketio's ``Client``
(websocket-client and requests, in worker threads), Node's ``socket.io-client`` (tests/.node,
pinned by tests/run.sh), each on WebSocket, on polling, and on polling then the upgrade;
raw ``websockets`` and ``http.client`` for what no client sends (malformed packets, an
unanswered ping, a second GET). Real servers on the in-memory layer; rooms across two
layers on a real redis-server at the end."""

from __future__ import annotations

import base64
import http.client
import json
import os
import queue
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
import socketio
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import formatEvent
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from realtime import socketio as rsio
from realtime.client import PublishError
from realtime.routing import URLRouter, path
from tests.clients import captured_log, in_thread, until

WAIT = 5.0
NODE_MODULES = Path(__file__).parent / ".node" / "node_modules"
NODE_SCRIPT = Path(__file__).parent / "node" / "socketio_client.js"


def app(sio: rsio.AsyncServer) -> URLRouter:
    return URLRouter([path("socket.io/", sio.as_asgi())])


async def stop_all(servers: list[Any], layers: list[Any]) -> None:
    """The servers of a several-process test stopped, then their layers closed."""
    for server in servers:
        await server.stop()
    for layer in layers:
        await layer.close()


async def start(live: Any, sio: rsio.AsyncServer, **config: Any) -> str:
    """``live`` serving ``sio``; its stop closes the polling sessions left open (python-
    engineio's client loses its close packet when ``disconnect()`` comes while its write
    loop is busy; such a session would last until the ping timeout)."""
    server = await live(app(sio), **config)
    return f"http://127.0.0.1:{server.port}"


def quick_server(**options: Any) -> rsio.AsyncServer:
    """An ``AsyncServer`` with a short ping interval: a GET waits a second at most,
    so python-engineio's ``disconnect()`` over polling (which waits for its GET) is quick
    even when its close packet was lost (above)."""
    return rsio.AsyncServer(**{"ping_interval": 1.0, "ping_timeout": 0.5, **options})


class PyClient:
    """python-socketio's sync client (its own threads), every event it gets queued."""

    def __init__(self, *events: str, namespace: str = "/", **options: Any) -> None:
        self.client = socketio.Client(reconnection=False, **options)
        self.got: queue.Queue[tuple[str, Any]] = queue.Queue()
        for event in events:
            self.client.on(event, self._recorder(event), namespace=namespace)
        self.client.on("disconnect", lambda *reason: self.got.put(("disconnect", reason)),
                       namespace=namespace)

    def _recorder(self, event: str) -> Any:
        return lambda *args: self.got.put((event, args[0] if len(args) == 1 else args))

    async def connect(self, url: str, transports: list[str] | None = ["websocket"],  # noqa: B006
                      **kwargs: Any) -> PyClient:
        """Connect on ``transports`` (None: the client's default, polling then the
        upgrade)."""
        await in_thread(lambda: self.client.connect(url, transports=transports,
                                                    wait_timeout=WAIT, **kwargs))
        return self

    async def next(self) -> tuple[str, Any]:
        return await in_thread(self.got.get, True, WAIT)

    async def nothing(self) -> bool:
        """Whether nothing more comes (within 0.3 s)."""
        try:
            await in_thread(self.got.get, True, 0.3)
        except queue.Empty:
            return True
        return False

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        return await in_thread(lambda: self.client.call(*args, timeout=WAIT, **kwargs))

    async def emit(self, *args: Any, **kwargs: Any) -> None:
        await in_thread(lambda: self.client.emit(*args, **kwargs))

    async def disconnect(self) -> None:
        await in_thread(self.client.disconnect)


def ws_url(url: str, query: str = "EIO=4&transport=websocket") -> str:
    return url.replace("http://", "ws://") + "/socket.io/?" + query


class Raw:
    """A raw WebSocket (websockets, in worker threads) for packets no client sends."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, url: str) -> Raw:
        # (entered as a context manager, as websockets wants; closed by close())
        raw = cls(await in_thread(lambda: connect(ws_url(url), open_timeout=WAIT).__enter__()))
        opened = await raw.recv()
        assert isinstance(opened, str) and opened.startswith("0{")
        raw.handshake = json.loads(opened[1:])
        return raw

    async def send(self, message: str | bytes) -> None:
        await in_thread(self.conn.send, message)

    async def recv(self) -> str | bytes:
        return await in_thread(self.conn.recv, WAIT)

    async def closed(self) -> tuple[int | None, str]:
        """The close code and reason the server sent (every message before it skipped)."""
        def wait() -> tuple[int | None, str]:
            try:
                while True:
                    self.conn.recv(WAIT)
            except ConnectionClosed as exc:
                return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
        return await in_thread(wait)

    async def close(self) -> None:
        await in_thread(self.conn.close)


# -- python-socketio's client -----------------------------------------------------------------

#: python-socketio's client on each transport: WebSocket only, its default (polling, then
#: the upgrade to WebSocket) and polling only; what ``sio.transport()`` says after connect.
TRANSPORTS = pytest.mark.parametrize("transports,transport", [
    (["websocket"], "websocket"), (None, "websocket"), (["polling"], "polling")],
    ids=["websocket", "upgrade", "polling"])


@TRANSPORTS
@pytest_twisted.ensureDeferred
async def test_connect_with_auth_then_events_acks_and_binary_both_ways(live, transports,
                                                                       transport):
    sio = quick_server()
    seen: dict[str, Any] = {}

    @sio.event
    async def connect(sid, environ, auth):
        seen["auth"], seen["path"], seen["sid"] = auth, environ["path"], sid

    @sio.event
    async def echo(sid, *args):
        return args  # a tuple: several ack arguments

    @sio.on("upload")
    def upload(sid, data):  # a plain handler works too
        return data["blob"][::-1]

    @sio.event
    async def ready(sid):
        seen["answer"] = await sio.call("ask", 21, to=sid, timeout=WAIT)
        await sio.emit("bin", {"name": "b", "blob": b"\x00\xff"}, to=sid)

    url = await start(live, sio)
    client = PyClient("bin")
    client.client.on("ask", lambda n: (n * 2, "py"))
    await client.connect(url, transports, auth={"token": "t"})
    assert seen["auth"] == {"token": "t"} and seen["path"] == "/socket.io/"
    assert client.client.get_sid() == seen["sid"]
    assert sio.transport(seen["sid"]) == client.client.transport() == transport
    assert await client.call("echo", ("hi", 3)) == ("hi", 3)
    assert await client.call("upload", {"blob": b"\x01\x02\x03"}) == b"\x03\x02\x01"
    await client.emit("ready")
    assert await client.next() == ("bin", {"name": "b", "blob": b"\x00\xff"})
    assert seen["answer"] == (42, "py")
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_refused_connect_is_connect_error_with_the_message_and_data(live):
    sio = quick_server()
    reasons: list[str] = []

    @sio.event
    async def connect(sid, environ, auth):
        if auth == {"token": "bad"}:
            raise rsio.ConnectionRefusedError("bad token", {"retry": False})
        return auth is not None  # False: refused with python-socketio's default message

    sio.on("disconnect", lambda sid, reason: reasons.append(reason))
    url = await start(live, sio)
    client = PyClient()
    client.client.on("connect_error", lambda data: client.got.put(("connect_error", data)))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(url, auth={"token": "bad"})
    assert await client.next() == ("connect_error",
                                   {"message": "bad token", "data": {"retry": False}})
    client = PyClient()
    client.client.on("connect_error", lambda data: client.got.put(("connect_error", data)))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(url)
    assert await client.next() == ("connect_error",
                                   {"message": "Connection rejected by server"})
    assert not sio._sockets and reasons == []  # never connected, so never disconnected
    ok = await PyClient().connect(url, auth={"token": "good"})
    assert ok.client.connected
    await ok.disconnect()


@pytest_twisted.ensureDeferred
async def test_namespaces_are_multiplexed_with_their_own_sids_and_handlers(live):
    sio = quick_server()
    sids: dict[str, str] = {}

    @sio.on("connect", namespace="/chat")
    async def chat_connect(sid, environ):  # the two-argument form: no auth
        sids["/chat"] = sid

    @sio.event
    async def connect(sid, environ, auth):
        sids["/"] = sid

    @sio.on("where", namespace="/chat")
    async def chat_where(sid):
        return "chat", sio.rooms(sid, namespace="/chat")

    @sio.on("*")
    async def anything(event, sid, *args):  # the catch-all of "/"
        return f"caught {event}"

    url = await start(live, sio)
    client = await PyClient().connect(url, namespaces=["/", "/chat"])
    assert client.client.get_sid("/") == sids["/"]
    assert client.client.get_sid("/chat") == sids["/chat"] != sids["/"]
    assert await client.call("where", namespace="/chat") == ("chat", [sids["/chat"]])
    assert await client.call("whatever") == "caught whatever"
    with pytest.raises(socketio.exceptions.TimeoutError):  # /chat has no catch-all
        await in_thread(lambda: client.client.call("whatever", namespace="/chat", timeout=0.5))
    await client.disconnect()

    refused = PyClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(url, namespaces=["/elsewhere"])


@pytest.mark.parametrize("transports,transport", [
    (["websocket"], "websocket"), (["polling"], "polling")], ids=["websocket", "polling"])
@pytest_twisted.ensureDeferred
async def test_rooms_with_skip_sid_leave_and_close_room(live, transports, transport):
    sio = quick_server()

    @sio.event
    async def join(sid, room):
        await sio.enter_room(sid, room)
        return sio.rooms(sid)

    @sio.event
    async def shout(sid, room, text):
        await sio.emit("said", text, room=room, skip_sid=sid)

    url = await start(live, sio)
    ada, bob, eve = [await PyClient("said").connect(url, transports) for _ in range(3)]
    assert await ada.call("join", "r") == [ada.client.get_sid(), "r"]
    await bob.call("join", "r")
    await ada.emit("shout", ("r", "hello"))
    assert await bob.next() == ("said", "hello")
    assert await ada.nothing() and await eve.nothing()  # the sender skipped; eve not in it

    # From outside any handler (a script in the same process): to a room and to a sid.
    await sio.leave_room(bob.client.get_sid(), "r")
    await sio.emit("said", "to r", to="r")
    assert await ada.next() == ("said", "to r")
    assert await bob.nothing()
    await sio.emit("said", "to eve", to=eve.client.get_sid())
    await sio.send("plain")  # the "message" event, to everyone in "/"
    assert await eve.next() == ("said", "to eve")
    await sio.close_room("r")
    assert await until(lambda: sio.rooms(ada.client.get_sid()) == [ada.client.get_sid()])
    await sio.emit("said", "nobody", room="r")
    assert await ada.nothing()
    assert sio.transport(eve.client.get_sid()) == transport
    await sio.disconnect(eve.client.get_sid())  # the server's disconnect, on this transport
    assert await eve.next() == ("disconnect", ("server disconnect",))
    for client in (ada, bob, eve):
        await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_sessions_and_the_disconnect_reasons(live):
    sio = rsio.AsyncServer()
    reasons: dict[str, str] = {}

    @sio.event
    async def connect(sid, environ, auth):
        await sio.save_session(sid, {"user": auth["user"]})

    @sio.event
    async def whoami(sid):
        async with sio.session(sid) as session:
            session["asked"] = True
        return (await sio.get_session(sid))["user"]

    @sio.event
    async def disconnect(sid, reason):  # the session is still there
        reasons[(await sio.get_session(sid))["user"]] = reason

    url = await start(live, sio)
    ada = await PyClient().connect(url, auth={"user": "ada"})
    assert await ada.call("whoami") == "ada"
    ada_sid = ada.client.get_sid()
    assert (await sio.get_session(ada_sid))["asked"] is True
    await sio.disconnect(ada_sid)
    assert await ada.next() == ("disconnect", ("server disconnect",))
    bob, eve = await Raw.open(url), await Raw.open(url)
    for raw, user in ((bob, "bob"), (eve, "eve")):
        await raw.send("40" + json.dumps({"user": user}))
        assert (await raw.recv()).startswith('40{"sid":')
    await bob.send("41")  # what socket.io-client sends on disconnect()
    await eve.close()  # gone without a word
    assert await until(lambda: len(reasons) == 3)
    assert reasons == {"ada": "server disconnect", "bob": "client disconnect",
                       "eve": "transport close"}
    assert not sio._sockets
    with pytest.raises(KeyError):
        await sio.get_session(ada_sid)
    for _ in range(150):  # a gone sid of this process: dropped, never queued in the layer
        await sio.emit("late", to=ada_sid)
        await sio.disconnect(ada_sid)
        await sio.enter_room(ada_sid, "r")
    await ada.disconnect()
    await bob.close()


@pytest_twisted.ensureDeferred
async def test_pings_keep_a_client_and_a_missing_pong_ends_one(live):
    sio = rsio.AsyncServer(ping_interval=0.1, ping_timeout=0.2)
    reasons: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))
    sio.on("echo", lambda sid, data: data)
    url = await start(live, sio)
    client = await PyClient().connect(url)
    raw = await Raw.open(url)
    assert raw.handshake["pingInterval"] == 100 and raw.handshake["pingTimeout"] == 200
    assert raw.handshake["upgrades"] == [] and raw.handshake["maxPayload"] == 1_000_000
    await raw.send("40")
    assert (await raw.recv()).startswith('40{"sid":')
    assert await raw.recv() == "2"  # a ping, left unanswered
    assert await raw.closed() == rsio.CLOSE_PING_TIMEOUT
    assert reasons == ["ping timeout"]
    assert client.client.connected  # python-socketio answered every ping meanwhile
    assert await client.call("echo", "alive") == "alive"
    await client.disconnect()


# -- hostile input ---------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_malformed_input_gets_a_specific_answer_and_the_server_stays_up(live):
    sio = rsio.AsyncServer(max_http_buffer_size=1000)
    sio.on("echo", lambda sid, data: data)
    url = await start(live, sio)
    for bad in ("4x", "42[1]", '42["connect"]', "43[]", "4{}", '40"a"', '45-["a"]', "9",
                '451-["a",{"_placeholder":true,"num":3}]'):
        raw = await Raw.open(url)
        await raw.send("40")
        await raw.recv()
        await raw.send(bad)
        if bad.startswith("451-"):  # announced one attachment: wait for it
            await raw.send(b"\x00")
        assert await raw.closed() == rsio.CLOSE_MALFORMED, bad

    raw = await Raw.open(url)
    await raw.send(b"\x00\x01")  # no packet waits for attachments
    assert await raw.closed() == rsio.CLOSE_UNEXPECTED_BINARY

    raw = await Raw.open(url)
    await raw.send("42" + json.dumps(["echo", "x" * 1000]))  # over maxPayload
    assert await raw.closed() == rsio.CLOSE_TOO_BIG

    raw = await Raw.open(url)  # attachments under maxPayload each, over it together
    await raw.send("40")
    await raw.recv()
    await raw.send('452-["echo",[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]]')
    await raw.send(b"x" * 600)
    await raw.send(b"y" * 600)
    assert await raw.closed() == rsio.CLOSE_TOO_BIG

    raw = await Raw.open(url)
    assert raw.handshake["maxPayload"] == 1000
    await raw.send("40/nope,")
    assert await raw.recv() == '44/nope,{"message":"Invalid namespace"}'
    await raw.send("40")  # the connection is still good
    assert (await raw.recv()).startswith('40{"sid":')
    await raw.send('421["echo",{"_placeholder":false}]')
    assert await raw.recv() == '431[{"_placeholder":false}]'
    await raw.close()

    client = await PyClient().connect(url)
    assert await client.call("echo", "still up") == "still up"
    await client.disconnect()


def _handshake_refusal(url: str) -> tuple[int, bytes]:
    """The HTTP status and body a WebSocket handshake to ``url`` is refused with."""
    try:
        with connect(url, open_timeout=WAIT):
            pass
    except InvalidStatus as exc:
        return exc.response.status_code, exc.response.body or b""
    raise AssertionError(f"{url} accepted the handshake")


@pytest_twisted.ensureDeferred
async def test_eio3_is_refused_with_engineios_error_on_both_transports(live):
    sio = quick_server()
    url = await start(live, sio)
    status, body = await in_thread(_handshake_refusal, ws_url(url, "EIO=3&transport=websocket"))
    assert (status, json.loads(body)) == (400, {"code": 5,
                                                "message": "Unsupported protocol version"})
    assert await Polling.request(url, "GET", "EIO=3&transport=polling") == (
        400, {"code": 5, "message": "Unsupported protocol version"})
    assert await Polling.request(url, "GET", "EIO=4&transport=flash") == (
        400, {"code": 0, "message": "Transport unknown"})


# -- HTTP long-polling -------------------------------------------------------------------------

def _http(url: str, method: str, body: bytes = b"",
          origin: str | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=WAIT)
    try:
        conn.request(method, f"{parts.path}?{parts.query}", body=body or None,
                     headers={"Origin": origin} if origin else {})
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        conn.close()


class Polling:
    """A raw Engine.IO polling session (http.client, in worker threads)."""

    def __init__(self, url: str, sid: str, handshake: dict[str, Any]) -> None:
        self.url, self.sid, self.handshake = url, sid, handshake
        self.base = f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}"

    @staticmethod
    async def request(url: str, method: str, query: str,
                      body: bytes = b"") -> tuple[int, Any]:
        """Status and JSON body of a request that gets an Engine.IO error."""
        status, _, answer = await in_thread(_http, f"{url}/socket.io/?{query}", method, body)
        return status, json.loads(answer)

    @classmethod
    async def open(cls, url: str, connect: bool = True, query: str = "") -> Polling:
        """A session (connected to "/" with ``connect``; ``query`` added to the
        handshake's)."""
        status, headers, body = await in_thread(
            _http, f"{url}/socket.io/?EIO=4&transport=polling{query}", "GET")
        assert status == 200 and headers["content-type"] == "text/plain; charset=UTF-8"
        assert body.startswith(b"0{")
        handshake = json.loads(body[1:])
        session = cls(url, handshake["sid"], handshake)
        if connect:
            assert await session.post("40") == (200, b"ok")
            (connected,) = await session.get()
            assert connected.startswith('40{"sid":')
            session.socket_sid = json.loads(connected[2:])["sid"]
        return session

    async def get(self) -> Any:
        """The packets of one GET; (status, JSON) for an error."""
        status, _, body = await in_thread(_http, self.base, "GET")
        if status != 200:
            return status, json.loads(body)
        return body.decode().split("\x1e")

    async def post(self, payload: str | bytes) -> tuple[int, Any]:
        data = payload.encode() if isinstance(payload, str) else payload
        status, headers, body = await in_thread(_http, self.base, "POST", data)
        if status == 200:
            assert headers["content-type"] == "text/html; charset=UTF-8"
            return status, body
        return status, json.loads(body)


UNKNOWN = (400, {"code": 1, "message": "Session ID unknown"})
BAD_REQUEST = (400, {"code": 3, "message": "Bad request"})


@pytest_twisted.ensureDeferred
async def test_a_session_keeps_its_sids_rooms_and_queue_across_the_upgrade(live):
    """Socket.IO over polling first (a room joined, an ack), then the probe (which answers
    the waiting GET with a noop) and the upgrade: what was queued meanwhile, the room and
    the acks go on over the WebSocket, with the same sid."""
    sio = quick_server()
    reasons: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))

    @sio.event
    async def join(sid, room):
        await sio.enter_room(sid, room)
        return "joined", sio.transport(sid)

    url = await start(live, sio)
    session = await Polling.open(url)
    assert session.handshake["upgrades"] == ["websocket"]
    sid = session.socket_sid
    assert await session.post('421["join","r"]') == (200, b"ok")
    assert await session.get() == ['431["joined","polling"]']
    waiting = Deferred.fromCoroutine(session.get())  # a GET waits for packets
    assert await until(lambda: sio._polling[session.sid]._waiter is not None)
    ws = await in_thread(lambda: connect(
        ws_url(url, f"EIO=4&transport=websocket&sid={session.sid}"),
        open_timeout=WAIT).__enter__())
    await in_thread(ws.send, "2probe")
    assert await in_thread(ws.recv, WAIT) == "3probe"
    assert await waiting == ["6"]  # the probe let the waiting GET go with a noop
    await sio.emit("said", "queued", to=sid)  # before the upgrade: on the polling side
    await in_thread(ws.send, "5")
    assert await in_thread(ws.recv, WAIT) == '42["said","queued"]'
    assert sio.transport(sid) == "websocket"
    await sio.emit("said", b"\x01", room="r")  # the room joined on polling
    assert await in_thread(ws.recv, WAIT) == '451-["said",{"_placeholder":true,"num":0}]'
    assert await in_thread(ws.recv, WAIT) == b"\x01"
    await in_thread(ws.send, '422["join","r2"]')
    assert await in_thread(ws.recv, WAIT) == '432["joined","websocket"]'
    assert sio.rooms(sid) == [sid, "r", "r2"]
    assert await session.get() == BAD_REQUEST  # polling is over for it; it lives on
    assert sio.rooms(sid) == [sid, "r", "r2"]
    await in_thread(ws.close)
    assert await until(lambda: reasons == ["transport close"])
    assert not sio._sockets and not sio._polling
    assert await session.get() == UNKNOWN


@pytest_twisted.ensureDeferred
async def test_a_failed_or_stalled_probe_leaves_the_session_on_polling(live, monkeypatch):
    monkeypatch.setattr(rsio, "UPGRADE_TIMEOUT", 0.2)
    sio = quick_server()
    sio.on("echo", lambda sid, data: data)
    url = await start(live, sio)
    session = await Polling.open(url)
    probe = ws_url(url, f"EIO=4&transport=websocket&sid={session.sid}")
    for first, then in (("2nope", None), ("2probe", "4x"), ("2probe", None)):
        ws = await in_thread(lambda: connect(probe, open_timeout=WAIT).__enter__())
        await in_thread(ws.send, first)
        if first == "2probe":
            assert await in_thread(ws.recv, WAIT) == "3probe"
        if then is not None:  # not the upgrade packet: closed; else the timeout closes it
            await in_thread(ws.send, then)
        assert await Raw(ws).closed() == (
            rsio.CLOSE_MALFORMED if first != "2probe" or then else (1000, "upgrade timeout"))
        assert await session.post('421["echo","polling"]') == (200, b"ok")
        assert await session.get() == ['431["polling"]']
    assert sio.transport(session.socket_sid) == "polling"


@pytest_twisted.ensureDeferred
async def test_hostile_polling_requests_get_specific_answers(live):
    sio = quick_server(max_http_buffer_size=1000)
    reasons: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))
    sio.on("echo", lambda sid, data: data)
    url = await start(live, sio)
    bystander = await PyClient().connect(url, ["polling"])

    assert await Polling.request(url, "POST", "EIO=4&transport=polling", b"40") == (
        400, {"code": 2, "message": "Bad handshake method"})  # a POST opens nothing
    for method in ("GET", "POST"):
        assert await Polling.request(
            url, method, "EIO=4&transport=polling&sid=nope", b"40") == UNKNOWN
    assert list(sio._polling) == [bystander.client.eio.sid]  # nothing opened

    session = await Polling.open(url)  # a second GET while one waits: both sessions end
    first = Deferred.fromCoroutine(session.get())
    assert await until(lambda: sio._polling[session.sid]._waiter is not None)
    assert await session.get() == BAD_REQUEST
    assert await first == ["1"]  # the close packet
    assert await session.get() == UNKNOWN

    session = await Polling.open(url)
    assert await session.post("42" + json.dumps(["echo", "x" * 1000])) == (413, BAD_REQUEST[1])
    assert await session.get() == UNKNOWN

    for garbage in (b"4x", b"b!!", b"40\x1e\x1e", b"\xff", b"2probe", b"5"):
        session = await Polling.open(url)
        assert await session.post(garbage) == BAD_REQUEST, garbage
        assert await session.get() == UNKNOWN, garbage
    assert await until(lambda: len(reasons) == 8)
    assert reasons == ["transport error"] * 8
    assert list(sio._polling) == [bystander.client.eio.sid]
    assert await bystander.call("echo", "still up") == "still up"
    await bystander.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_slow_poller_is_closed_past_the_bound_and_pings_go_through_polls(live):
    """A session that does not GET: its packets past --max-send-buffer close it; a
    polling client that does is not touched, and answers the pings by POST; one that
    neither GETs nor answers is closed for the ping timeout."""
    sio = rsio.AsyncServer(ping_interval=1.0, ping_timeout=0.3)
    reasons: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))
    sio.on("echo", lambda sid, data: data)
    url = await start(live, sio, max_send_buffer=4096)
    bystander = await PyClient("said").connect(url, ["polling"])
    slow = await Polling.open(url)
    assert slow.handshake["pingInterval"] == 1000 and slow.handshake["pingTimeout"] == 300
    for n in range(30):  # 30 broadcasts of 200 bytes
        await sio.emit("said", f"{n:03}" + "x" * 197)
        assert await bystander.next() == ("said", f"{n:03}" + "x" * 197)
    assert reasons == ["transport close"]  # past 4096 bytes queued
    assert await slow.get() == UNKNOWN

    silent = await Polling.open(url)
    assert await until(lambda: len(reasons) == 2, timeout=3)
    assert reasons[1] == "ping timeout"
    assert await silent.get() == UNKNOWN
    assert await bystander.call("echo", "alive") == "alive"  # pinged all along
    await bystander.disconnect()


@pytest_twisted.ensureDeferred
async def test_cors_for_the_same_origin_and_cors_allowed_origins(live):
    sio = rsio.AsyncServer(cors_allowed_origins=["http://app.example"])
    url = await start(live, sio)
    handshake = f"{url}/socket.io/?EIO=4&transport=polling"
    status, headers, _ = await in_thread(_http, handshake, "OPTIONS", b"",
                                         "http://app.example")
    assert status == 204 and "POST" in headers["access-control-allow-methods"]
    status, headers, _ = await in_thread(_http, handshake, "GET", b"",
                                         "http://app.example")
    assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"
    assert headers["access-control-allow-credentials"] == "true"
    status, headers, body = await in_thread(_http, handshake, "GET", b"",
                                            "http://evil.example")
    assert (status, json.loads(body)) == (403, {"code": 4, "message": "Forbidden"})
    assert "access-control-allow-origin" not in headers  # no CORS for a refused origin

    default = rsio.AsyncServer()  # by default: the server's own origin only
    own = await start(live, default)
    handshake = f"{own}/socket.io/?EIO=4&transport=polling"
    status, headers, _ = await in_thread(_http, handshake, "GET", b"", own)
    assert status == 200 and headers["access-control-allow-origin"] == own
    status, _, _ = await in_thread(_http, handshake, "GET", b"",
                                   "http://app.example")
    assert status == 403
    assert len(sio._polling) == len(default._polling) == 1
    await sio.shutdown()
    await default.shutdown()
    assert not sio._polling and not default._polling



@pytest_twisted.ensureDeferred
async def test_a_callable_cors_allowed_origins_decides_as_python_engineios_does(live):
    """python-engineio's callable form: ``fn(origin, environ)`` (here the ASGI scope), or
    ``fn(origin)``; its answer lets an origin in or gives 403, on polling and the
    WebSocket; one that raises refuses (and is logged), the server goes on."""
    asked: list[tuple[str, str]] = []

    def two(origin, environ):
        asked.append((origin, environ["type"]))
        if origin == "http://boom.example":
            raise ValueError("boom")
        return origin.endswith(".good.example")

    servers = [rsio.AsyncServer(cors_allowed_origins=two),
               rsio.AsyncServer(cors_allowed_origins=lambda o: o == "http://a.good.example")]
    urls = [await start(live, sio) for sio in servers]
    for url in urls:
        handshake = f"{url}/socket.io/?EIO=4&transport=polling"
        status, headers, _ = await in_thread(_http, handshake, "GET", b"",
                                             "http://a.good.example")
        assert status == 200
        assert headers["access-control-allow-origin"] == "http://a.good.example"
        status, headers, body = await in_thread(_http, handshake, "GET", b"",
                                                "http://evil.example")
        assert (status, json.loads(body)) == (403, {"code": 4, "message": "Forbidden"})
        assert "access-control-allow-origin" not in headers
        assert await in_thread(_handshake_status, ws_url(url), "http://a.good.example") == 101
        assert await in_thread(_handshake_status, ws_url(url), "http://evil.example") == 403
    with captured_log() as events:
        status, _, _ = await in_thread(
            _http, f"{urls[0]}/socket.io/?EIO=4&transport=polling", "GET", b"",
            "http://boom.example")
    assert status == 403
    assert any("boom" in str(e["log_failure"].value) for e in events if e.get("log_failure"))
    assert ("http://a.good.example", "http") in asked
    assert ("http://evil.example", "websocket") in asked
    for sio in servers:
        await sio.shutdown()

# -- Node's socket.io-client ------------------------------------------------------------------

def _node(url: str, token: str, transports: str = "websocket") -> list[dict[str, Any]]:
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    done = subprocess.run(["node", str(NODE_SCRIPT), url, token, transports], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def socket_io_client() -> None:
    """Node and socket.io-client in tests/.node (tests/run.sh): skipped without them,
    failed under CI=true."""
    if shutil.which("node") is None or not (NODE_MODULES / "socket.io-client").is_dir():
        reason = "needs node and socket.io-client in tests/.node (bash tests/run.sh)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest.mark.parametrize("transports,transport", [
    ("websocket", "websocket"), ("polling,websocket", "websocket"), ("polling", "polling")],
    ids=["websocket", "upgrade", "polling"])
@pytest_twisted.ensureDeferred
async def test_socket_io_client_of_node(live, socket_io_client, transports, transport):
    sio = quick_server()
    seen: dict[str, Any] = {}

    @sio.event
    async def connect(sid, environ, auth):
        if auth.get("token") != "js":
            raise rsio.ConnectionRefusedError("who are you?", {"token": auth.get("token")})
        seen["sid"] = sid

    sio.on("echo", lambda sid, *args: args)
    sio.on("echo", lambda sid, text: f"{text}!", namespace="/chat")

    @sio.event
    async def upload(sid, data):
        return data["blob"][::-1]

    @sio.event
    async def ready(sid):
        seen["answer"] = await sio.call("ask", 21, to=sid, timeout=WAIT)
        await sio.emit("bin", {"name": "b", "blob": b"\x00\xff"}, to=sid)
        await sio.emit("bye", to=sid)

    url = await start(live, sio)
    lines = await in_thread(_node, url, "js", transports)
    assert lines[0] == {"connected": seen["sid"]}
    assert lines[1:] == [
        {"echoed": ["hi", 3]}, {"reversed": [3, 2, 1]},
        {"chat": lines[3]["chat"], "same_engine": True}, {"chat_echo": "in chat!"},
        {"bin": [0, 255], "name": "b"}, {"done": True, "transport": transport}]
    assert lines[3]["chat"] != seen["sid"]
    assert seen["answer"] == (42, "js")
    refused = await in_thread(_node, url, "nope", transports)
    assert refused == [{"connect_error": "who are you?", "data": {"token": "nope"}}]
    assert await until(lambda: not sio._polling)  # the client's close reached the server


# -- across processes ---------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_rooms_sids_and_disconnects_reach_another_process_through_redis(
        redis_url, realtime_leak_check):
    """Two servers on two Redis layers (two processes' worth): what one process's ``sio``
    does reaches the other's sockets."""
    from realtime.testing import serve
    from tests.redis_support import started_layer

    layers = [await started_layer(redis_url) for _ in range(2)]
    servers = []
    try:
        sios = [rsio.AsyncServer(channel_layer=layer) for layer in layers]
        reasons: list[str] = []
        sios[0].on("disconnect", lambda sid, reason: reasons.append(reason))
        for sio, layer in zip(sios, layers, strict=True):
            servers.append(await serve(app(sio), layer=layer))
        one = await PyClient("said").connect(f"http://127.0.0.1:{servers[0].port}")
        two = await PyClient("said").connect(f"http://127.0.0.1:{servers[1].port}")
        sid_one, sid_two = one.client.get_sid(), two.client.get_sid()
        other = sios[1]  # the process that does not hold sid_one
        await other.enter_room(sid_one, "lobby")
        assert await until(lambda: sios[0].rooms(sid_one) == [sid_one, "lobby"])
        await other.enter_room(sid_two, "lobby")
        await other.emit("said", "to the lobby", room="lobby", skip_sid=sid_two)
        assert await one.next() == ("said", "to the lobby")
        assert await two.nothing()
        await other.emit("said", b"\x01binary", room="lobby")  # attachments: group_send
        assert await one.next() == ("said", b"\x01binary")
        assert await two.next() == ("said", b"\x01binary")
        await other.emit("said", "just you", to=sid_one)
        assert await one.next() == ("said", "just you")
        await other.enter_room(sid_one, "den")  # in both rooms: the packet once
        assert await until(lambda: "den" in sios[0].rooms(sid_one))
        await other.emit("said", "once", to=["lobby", "den"])
        assert await one.next() == ("said", "once")
        assert await two.next() == ("said", "once")
        await other.emit("said", "wrong namespace", to=sid_one, namespace="/chat")
        await other.disconnect(sid_one, namespace="/chat")
        assert await one.nothing()
        await other.emit("said", "everyone")
        assert {await one.next(), await two.next()} == {("said", "everyone")}
        await other.disconnect(sid_one)
        assert await one.next() == ("disconnect", ("server disconnect",))
        assert await until(lambda: reasons == ["server disconnect"])
        await two.disconnect()
    finally:
        await stop_all(servers, layers)


@pytest_twisted.ensureDeferred
async def test_the_example_chat_app(live):
    from realtime.examples import socketio_chat

    server = await live(socketio_chat.application)
    url = f"http://127.0.0.1:{server.port}"
    with pytest.raises(socketio.exceptions.ConnectionError):
        await PyClient().connect(url)  # no name
    ada = await PyClient("said").connect(url, auth={"name": "ada"})
    bob = await PyClient("said").connect(url, auth={"name": "bob"})
    assert await ada.call("join", "tea") == [ada.client.get_sid(), "tea"]
    await bob.call("join", "tea")
    assert await bob.call("who") == "bob"
    await bob.emit("say", {"room": "tea", "text": "hi"})
    assert await ada.next() == ("said", {"name": "bob", "text": "hi"})
    assert await bob.nothing()
    for bad in ({"text": "to everyone?"}, {"room": "elsewhere", "text": "x"}, "x",
                {"room": "tea", "text": 5}):
        assert "error" in await bob.call("say", bad)
    assert "error" in await bob.call("join", ["not", "a", "room"])
    assert await ada.nothing()
    await ada.disconnect()
    await bob.disconnect()


# -- review's reproductions ----------------------------------------------------------------------

async def _joined(url: str) -> Raw:
    raw = await Raw.open(url)
    await raw.send("40")
    assert (await raw.recv()).startswith('40{"sid":')
    return raw


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]], ids=["websocket", "polling"])
@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_relayed_to_a_sid_reaches_the_recipient(live, transports):
    """Legal JSON ("\\ud83d": JS's ``slice()`` through an emoji) that UTF-8 cannot carry
    goes out escaped, as python-socketio's does; a packet that still is not UTF-8 (a layer
    event no ``compact_json`` made) is dropped, its recipient stays."""
    sio = quick_server()
    reasons: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))

    @sio.event
    async def dm(sid, to, text):
        await sio.emit("dm", text, to=to)
        await sio.emit("dm", text, room="r")

    sio.on("join", lambda sid: sio.enter_room(sid, "r"))
    url = await start(live, sio)
    bob = await PyClient("dm").connect(url, transports)
    await bob.call("join")
    eve = await _joined(url)
    await eve.send(f'42["dm",{json.dumps(bob.client.get_sid())},"\\ud83d"]')
    assert await bob.next() == ("dm", "\ud83d")  # to the sid
    assert await bob.next() == ("dm", "\ud83d")  # to the room
    sid = bob.client.get_sid()
    await sio.channel_layer.send(rsio.channel_of(sid), {
        "type": "sio.packet", "sid": sid, "namespace": "/", "text": '42["dm","\ud83d"]'})
    await sio.emit("dm", "after", to=sid)
    assert await bob.next() == ("dm", "after")
    assert reasons == []
    await bob.disconnect()
    await eve.close()


@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_in_an_ack_is_sent(live):
    sio = rsio.AsyncServer()
    sio.on("echo", lambda sid, data: data)
    url = await start(live, sio)
    raw = await _joined(url)
    await raw.send('421["echo","\\ud83d"]')
    assert await raw.recv() == '431["\\ud83d"]'
    await raw.send('422["echo","é"]')  # the rest of non-ASCII still goes as is
    assert await raw.recv() == '432["é"]'
    await raw.close()


@pytest_twisted.ensureDeferred
async def test_every_kind_of_handler_is_acked(live):
    """An event's ack whatever its handler: plain, ``async def`` that waits for nothing
    (acked at once, no task) or that waits, one returning a Deferred, bytes in the value
    (a BINARY_ACK); one that raises or returns what JSON cannot carry is logged by name,
    no ack, and the connection goes on."""
    sio = rsio.AsyncServer()
    later: Deferred[str] = Deferred()

    async def instant(sid, x):
        return x, b"\x01"

    async def waits(sid, x):
        await sio.sleep(0.05)
        return x

    async def boom(sid):
        raise RuntimeError("boom")

    sio.on("plain", lambda sid, x: x)
    sio.on("instant", instant)
    sio.on("waits", waits)
    sio.on("deferred", lambda sid: later)
    sio.on("boom", boom)
    sio.on("unsendable", lambda sid: object())
    url = await start(live, sio)
    raw = await _joined(url)
    with captured_log() as events:
        await raw.send('421["plain","a"]')
        assert await raw.recv() == '431["a"]'
        await raw.send('422["instant","b"]')
        assert await raw.recv() == '461-2["b",{"_placeholder":true,"num":0}]'
        assert await raw.recv() == b"\x01"
        for text in ('423["waits","c"]', '424["deferred"]', '425["boom"]',
                     '426["unsendable"]', '427["plain","d"]'):
            await raw.send(text)
        assert await raw.recv() == '437["d"]'
        assert await raw.recv() == '433["c"]'
        later.callback("e")
        assert await raw.recv() == '434["e"]'
    failed = [text for text in map(formatEvent, events) if "handler failed" in text]
    assert failed == ["socketio: the 'boom' handler failed",
                      "socketio: the 'unsendable' handler failed"]
    await raw.close()


@pytest_twisted.ensureDeferred
async def test_asyncio_code_in_a_handler_under_the_default_reactor_says_what_to_do(live):
    """A handler that awaits asyncio code under the default reactor fails with the hint
    to run ``--reactor=asyncio`` (README), whether that is its first wait or a later one
    (driven directly, its first step's failure was logged without it); the connection
    goes on."""
    import asyncio

    sio = rsio.AsyncServer()

    async def at_once(sid):
        await asyncio.sleep(1)

    async def later(sid):
        await sio.sleep(0)
        await asyncio.sleep(1)

    sio.on("at_once", at_once)
    sio.on("later", later)
    sio.on("ping", lambda sid: None)
    url = await start(live, sio)
    raw = await _joined(url)
    with captured_log() as events:
        await raw.send('42["at_once"]')
        await raw.send('42["later"]')
        await raw.send('421["ping"]')
        assert await raw.recv() == "431[]"
        assert await until(lambda: len([e for e in events if "log_failure" in e]) == 2)
    hints = sorted((e["name"], "needs the asyncio reactor" in str(e["log_failure"].value))
                   for e in events if "log_failure" in e)
    assert hints == [("at_once", True), ("later", True)]
    await raw.close()


@pytest_twisted.ensureDeferred
async def test_a_catch_all_namespace_handler_does_not_open_every_namespace(live):
    sio = rsio.AsyncServer(namespaces=["/open"])
    seen: list[str] = []
    sio.on("connect", lambda namespace, sid, environ: seen.append(namespace), namespace="*")
    url = await start(live, sio)
    raw = await _joined(url)
    await raw.send("40/anything,")
    assert await raw.recv() == '44/anything,{"message":"Invalid namespace"}'
    await raw.send("40/open,")  # an open one: namespace "*"'s handler serves it
    assert (await raw.recv()).startswith('40/open,{"sid":')
    assert seen == ["/", "/open"]
    await raw.close()


@pytest_twisted.ensureDeferred
async def test_a_namespace_with_a_query_string(live):
    """The query is dropped, as python-socketio does."""
    sio = rsio.AsyncServer(namespaces=["/chat"])
    sio.on("echo", lambda sid, data: data, namespace="/chat")
    url = await start(live, sio)
    raw = await Raw.open(url)
    await raw.send("40/chat?x=1,")
    assert (await raw.recv()).startswith('40/chat,{"sid":')
    await raw.send('42/chat?x=1,1["echo","q"]')
    assert await raw.recv() == '43/chat,1["q"]'
    await raw.close()


@pytest.mark.parametrize("text,attachment", [
    ('451-["e",' + "[" * 600 + '{"_placeholder":true,"num":0}' + "]" * 600 + "]", b"x"),
    ('42["e",' + "[" * 100_000 + "]" * 100_000 + "]", None)], ids=["binary", "text"])
@pytest_twisted.ensureDeferred
async def test_deep_json_is_a_malformed_packet(live, text, attachment):
    """A RecursionError (``json.loads``, ``_reconstruct``) is a malformed packet: 1002 on a
    WebSocket, 400 code 3 on polling (the session closes), not 1011 and a traceback."""
    sio = rsio.AsyncServer()
    reasons: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))
    url = await start(live, sio, max_message_size=1_000_000)
    raw = await _joined(url)
    await raw.send(text)
    if attachment:
        await raw.send(attachment)
    assert await raw.closed() == rsio.CLOSE_MALFORMED
    session = await Polling.open(url)
    payload = text + ("\x1eb" + base64.b64encode(attachment).decode() if attachment else "")
    assert await session.post(payload) == BAD_REQUEST
    assert await session.get() == UNKNOWN
    assert await until(lambda: reasons == ["transport error"] * 2)


@pytest_twisted.ensureDeferred
async def test_data_nested_too_deeply_to_send_is_refused_by_emit(live):
    sio = rsio.AsyncServer()
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested too deeply"):
        await sio.emit("e", deep)


@pytest_twisted.ensureDeferred
async def test_one_handlers_packets_to_its_client_keep_their_order(live):
    """A sid of this process gets its packets at once, as its acks; the layer's (a binary
    group emit, a remote emit) are taken at once too: one ordered path per client, on
    both transports."""
    sio = quick_server()

    @sio.event
    async def hello(sid):
        await sio.emit("first", to=sid)
        await sio.emit("second")  # everyone in "/": a prepared frame
        await sio.emit("bin", b"\x01")  # attachments: one layer event per member
        await sio.emit("fourth", to=sid)
        return "fifth"

    want = ['42["first"]', '42["second"]', '451-["bin",{"_placeholder":true,"num":0}]',
            b"\x01", '42["fourth"]', '431["fifth"]']
    url = await start(live, sio)
    raw = await _joined(url)
    await raw.send('421["hello"]')
    assert [await raw.recv() for _ in range(6)] == want
    await raw.close()

    session = await Polling.open(url)
    assert await session.post('421["hello"]') == (200, b"ok")
    got: list[Any] = []
    while len(got) < 6:
        got += [base64.b64decode(item[1:]) if item.startswith("b") else item
                for item in await session.get()]
    assert got == want


@pytest_twisted.ensureDeferred
async def test_the_namespace_argument_leaves_a_sid_of_another_namespace_alone(live):
    """``disconnect``, ``enter_room``, ``leave_room``, ``emit(to=sid)`` and ``skip_sid``
    with a namespace the sid is not in: no-ops, as in python-socketio."""
    sio = rsio.AsyncServer(namespaces=["/chat"])
    reasons: list[tuple[str, str]] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(("/", reason)))
    sio.on("echo", lambda sid, data: data)
    url = await start(live, sio)
    client = PyClient()
    client.client.on("said", lambda data: client.got.put(("said", data)), namespace="/chat")
    await client.connect(url, namespaces=["/", "/chat"])
    root, chat = client.client.get_sid("/"), client.client.get_sid("/chat")
    await sio.disconnect(root, namespace="/chat")  # root is not a /chat sid
    await sio.enter_room(root, "r", namespace="/chat")
    await sio.enter_room(chat, "r", namespace="/chat")
    await sio.leave_room(root, "r", namespace="/chat")
    assert sio.rooms(chat, namespace="/chat") == [chat, "r"]
    await sio.emit("said", "wrong namespace", to=root, namespace="/chat")
    await sio.emit("said", "to /chat", namespace="/chat", skip_sid=root)  # not a /chat sid
    assert await client.next() == ("said", "to /chat")
    assert await client.nothing()
    assert reasons == []
    assert await client.call("echo", 1) == 1
    with pytest.raises(ValueError, match="cannot enter a sid room"):
        await sio.enter_room(root, chat)
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_emit_to_a_list_of_rooms_reaches_each_member_once(live):
    """Each member takes the packet from the first target it is in (text and binary; a
    sid in the list counts as its own room)."""
    sio = rsio.AsyncServer()

    @sio.event
    async def join(sid, rooms):
        for room in rooms:
            await sio.enter_room(sid, room)

    url = await start(live, sio)
    ada = await PyClient("news").connect(url)
    bob = await PyClient("news").connect(url)
    await ada.call("join", ["a", "b"])
    await bob.call("join", ["b"])
    await sio.emit("news", "once", to=["a", "b"])
    await sio.emit("news", b"bin", to=["b", "a"])
    await sio.emit("news", "sid too", to=["a", ada.client.get_sid(), bob.client.get_sid()])
    for client in (ada, bob):
        assert [await client.next() for _ in range(3)] == [
            ("news", "once"), ("news", b"bin"), ("news", "sid too")]
        assert await client.nothing()
    await sio.emit("news", "skipped", to=["a", "b"], skip_sid=ada.client.get_sid())
    assert await bob.next() == ("news", "skipped")
    assert await ada.nothing()
    await ada.disconnect()
    await bob.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_slow_connect_handler_does_not_stall_the_connection(live):
    """The connect handler runs as a task: the connection's other namespaces, acks and
    pongs go on; the pending namespace's events are ignored until CONNECT is answered, a
    second CONNECT too."""
    sio = rsio.AsyncServer(ping_interval=0.1, ping_timeout=0.2, namespaces=["/slow"])
    reasons: list[str] = []
    seen: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))
    sio.on("echo", lambda sid, data: data)
    sio.on("echo", lambda sid, data: seen.append(data), namespace="/slow")

    @sio.on("connect", namespace="/slow")
    async def slow(sid, environ, auth):
        await sio.sleep(0.5)  # an auth lookup over HTTP, say: longer than 0.1 + 0.2

    url = await start(live, sio)
    client = await PyClient().connect(url)
    pkt = client.client.packet_class(0, data={}, namespace="/slow")  # CONNECT /slow
    await in_thread(client.client._send_packet, pkt)
    await in_thread(client.client._send_packet, pkt)  # a second one: ignored
    early = client.client.packet_class(2, data=["echo", "early"], namespace="/slow")
    await in_thread(client.client._send_packet, early)
    assert await client.call("echo", 1) == 1  # at once
    await sio.sleep(0.6)
    assert reasons == [] and seen == []
    assert len([s for s in sio._sockets.values() if s.namespace == "/slow"]) == 1
    assert await client.call("echo", 2) == 2
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_builtin_connection_refused_error_refuses(live):
    sio = rsio.AsyncServer()

    @sio.event
    async def connect(sid, environ, auth):
        raise ConnectionRefusedError  # the builtin one, as python-socketio takes it

    url = await start(live, sio)
    raw = await Raw.open(url)
    await raw.send("40")
    assert await raw.recv() == '44{"message":"Connection refused by server"}'
    await raw.close()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest_twisted.ensureDeferred
async def test_one_connections_concurrent_handlers_are_bounded(live, transport):
    """At ``--max-inflight`` handler tasks a connection's next message waits for one to
    end (the WebSocket is not read meanwhile; a POST is answered later); what still runs
    ``--application-close-timeout`` after the disconnect handler is cancelled."""
    sio = rsio.AsyncServer()
    state = {"now": 0, "most": 0, "cancelled": 0}

    @sio.event
    async def slow(sid, seconds):
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        try:
            await sio.sleep(seconds)
        except CancelledError:
            state["cancelled"] += 1
            raise
        finally:
            state["now"] -= 1

    url = await start(live, sio, max_inflight=8, application_close_timeout=0.3)
    if transport == "websocket":
        raw = await _joined(url)
        await in_thread(lambda: [raw.conn.send('42["slow",0.05]') for _ in range(100)])
        await raw.send('42["slow",60]')
        assert await until(lambda: state["now"] == 1, timeout=5)
        await raw.close()
    else:
        session = await Polling.open(url)
        assert await session.post("\x1e".join(['42["slow",0.05]'] * 40)) == (200, b"ok")
        assert state["now"] <= 8  # answered once the rest could start
        assert await session.post('42["slow",60]') == (200, b"ok")
        assert await session.post("1") == (200, b"ok")  # the client's close
    assert await until(lambda: state["now"] == 0, timeout=5)
    assert 1 < state["most"] <= 8
    assert state["cancelled"] == 1


@pytest_twisted.ensureDeferred
async def test_a_connection_that_connects_no_namespace_is_closed(live, monkeypatch):
    monkeypatch.setattr(rsio, "CONNECT_TIMEOUT", 0.2)
    sio = rsio.AsyncServer()
    url = await start(live, sio)
    raw = await Raw.open(url)
    assert await raw.closed() == rsio.CLOSE_CONNECT_TIMEOUT
    raw = await _joined(url)  # connected in time: kept
    await sio.sleep(0.3)
    await raw.send("2")
    assert await raw.recv() == "3"
    await raw.close()
    session = await Polling.open(url, connect=False)
    assert await session.get() == ["1"]  # the close packet


def _handshake_status(url: str, origin: str | None) -> int:
    try:
        with connect(url, origin=origin, open_timeout=WAIT):  # type: ignore[arg-type]
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest_twisted.ensureDeferred
async def test_websocket_handshakes_follow_the_origin_rule_of_polling(live):
    """``cors_allowed_origins`` (by default the server's own origin) on the WebSocket too,
    the upgrade's included: a page of another site opens none with the user's cookies;
    a client without ``Origin`` passes."""
    sio = rsio.AsyncServer(cors_allowed_origins=["https://good.example"])
    url = await start(live, sio)
    assert await in_thread(_handshake_status, ws_url(url), "https://good.example") == 101
    assert await in_thread(_handshake_status, ws_url(url), "https://evil.example") == 403
    assert await in_thread(_handshake_status, ws_url(url), None) == 101
    session = await Polling.open(url)  # (no Origin)
    probe = ws_url(url, f"EIO=4&transport=websocket&sid={session.sid}")
    assert await in_thread(_handshake_status, probe, "https://evil.example") == 403

    default = rsio.AsyncServer()
    own = await start(live, default)
    assert await in_thread(_handshake_status, ws_url(own), own) == 101
    assert await in_thread(_handshake_status, ws_url(own), "http://localhost:1") == 403
    client = await PyClient().connect(own)  # websocket-client sends the server's origin
    assert client.client.connected
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_the_test_servers_stop_ends_polling_sessions(realtime_leak_check):
    """``LiveServer.stop()`` ends the polling sessions (upgraded or not) as a drain does:
    their disconnect handlers run before it returns."""
    from realtime.testing import serve

    sio = quick_server()
    reasons: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))
    server = await serve(app(sio))
    url = f"http://127.0.0.1:{server.port}"
    await Polling.open(url)
    upgraded = await PyClient().connect(url, None)
    assert sio.transport(upgraded.client.get_sid()) == "websocket"
    assert len(sio._polling) == 2
    await server.stop()
    assert sorted(reasons) == ["transport close"] * 2
    assert not sio._polling and not sio._sockets
    await upgraded.disconnect()


# -- review's reproductions (polling) -------------------------------------------------------

def _polling_handshake(url: str) -> tuple[int, bytes]:
    status, _, body = _http(f"{url}/socket.io/?EIO=4&transport=polling", "GET")
    return status, body


@pytest_twisted.ensureDeferred
async def test_a_polling_handshake_during_a_drain_is_refused_as_an_upgrade_is(live):
    """After ``site.drain()`` a polling handshake gets 503 as a WebSocket's does (it was
    accepted, never told of the drain, and held the drain until its deadline)."""
    sio = quick_server()
    server = await live(app(sio))
    url = f"http://127.0.0.1:{server.port}"
    server.site.drain()
    assert await in_thread(_handshake_status, ws_url(url), None) == 503
    status, body = await in_thread(_polling_handshake, url)
    assert status == 503 and json.loads(body)["code"] == 3
    assert not sio._polling


@pytest_twisted.ensureDeferred
async def test_polling_sessions_count_toward_the_connection_limits(live):
    """--max-connections-per-ip (with the address's WebSockets) and --max-connections
    count polling sessions: past them 429 / 503; a closed session gives its place back."""
    sio = rsio.AsyncServer()
    url = await start(live, sio, max_connections_per_ip=2)
    first = await Polling.open(url)
    await Polling.open(url)
    status, body = await in_thread(_polling_handshake, url)
    assert status == 429 and json.loads(body)["code"] == 3
    assert await in_thread(_handshake_status, ws_url(url), None) == 429
    assert len(sio._polling) == 2
    await first.post("1")  # the client closes it
    assert await until(lambda: len(sio._polling) == 1)
    assert (await in_thread(_polling_handshake, url))[0] == 200

    other = rsio.AsyncServer()
    url = await start(live, other, max_connections=1)
    await Polling.open(url)
    assert (await in_thread(_polling_handshake, url))[0] == 503
    assert len(other._polling) == 1


@pytest_twisted.ensureDeferred
async def test_an_upgraded_session_whose_receive_waits_is_ended_by_the_close(live):
    """After the upgrade, the WebSocket's ``receive`` awaits the session's step; one that
    waits (at --max-inflight) when the client closes used to hold the WebSocket's
    ``disconnect()``, which the --application-close-timeout kill then dropped: the session
    never ended. Its close ends it now."""
    sio = rsio.AsyncServer()
    reasons: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))
    forever: Deferred[None] = Deferred()

    @sio.event
    async def hang(sid):
        await forever

    url = await start(live, sio, max_inflight=1, application_close_timeout=0.3)
    session = await Polling.open(url)
    try:
        ws = await in_thread(lambda: connect(
            ws_url(url, f"EIO=4&transport=websocket&sid={session.sid}"),
            open_timeout=WAIT).__enter__())
        await in_thread(ws.send, "2probe")
        assert await in_thread(ws.recv, WAIT) == "3probe"
        await in_thread(ws.send, "5")
        assert await until(lambda: sio.transport(session.socket_sid) == "websocket")
        await in_thread(ws.send, '42["hang"]')  # its receive waits for a slot
        consumer = sio._polling[session.sid].consumer
        assert await until(lambda: consumer._slot is not None)
        await in_thread(ws.close)
        await sio.sleep(0.5)  # past --application-close-timeout
        forever.callback(None)
        assert await until(lambda: reasons == ["transport close"], timeout=2)
        assert not sio._polling and not sio._sockets
    finally:
        if not forever.called:
            forever.callback(None)
        left = sio._polling.get(session.sid)
        if left is not None:  # else the fixture's stop() hangs for ever
            left._finish(1006)


@pytest_twisted.ensureDeferred
async def test_a_polling_session_leaves_the_layer_when_it_closes(live):
    """A closed polling session leaves the layer (its channel, its groups) before its
    disconnect handler runs, as a WebSocket does; a handler that does not return is
    cancelled --application-close-timeout later (the session's steps end)."""
    sio = quick_server()
    forever: Deferred[None] = Deferred()

    @sio.event
    async def disconnect(sid, reason):
        await forever

    url = await start(live, sio, application_close_timeout=0.3)
    try:
        session = await Polling.open(url)
        polling = sio._polling[session.sid]
        channel, layer = polling.channel_name, sio.channel_layer
        assert channel in layer._receivers
        assert await until(lambda: not sio._polling, timeout=3)  # no GET: ping timeout
        assert channel not in layer._receivers, "closed session still attached"
        assert not any(channel in members for members in layer._groups.values())
        assert polling._running is not None  # its disconnect handler waits
        assert await until(lambda: polling._running is None, timeout=2)  # cancelled
        assert forever.called
    finally:
        if not forever.called:
            forever.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_websocket_that_never_probes_does_not_block_the_upgrade(live, monkeypatch):
    """UPGRADE_TIMEOUT runs from the WebSocket's open: one that opens with the sid and
    sends nothing is closed, and another may upgrade the session."""
    monkeypatch.setattr(rsio, "UPGRADE_TIMEOUT", 0.2)
    sio = quick_server()
    url = await start(live, sio)
    session = await Polling.open(url)
    probe = ws_url(url, f"EIO=4&transport=websocket&sid={session.sid}")
    stalled = await in_thread(lambda: connect(probe, open_timeout=WAIT).__enter__())
    await sio.sleep(0.5)
    ws = await in_thread(lambda: connect(probe, open_timeout=WAIT).__enter__())
    await in_thread(ws.send, "2probe")
    assert await in_thread(ws.recv, WAIT) == "3probe"
    await Raw(ws).close()
    await Raw(stalled).close()


# -- the Emitter (from outside the server, through the HTTP API) --------------------------------

API_KEY = "test-api-key-0123456789"


@pytest_twisted.ensureDeferred
async def test_the_emitter_reaches_rooms_sids_and_namespaces_on_every_transport(live):
    """``Emitter`` (sync, in a worker thread as a Django view's would be) against clients on
    WebSocket, polling, and polling upgraded to WebSocket: rooms (one broadcast frame, which
    each transport carries), skip_sid, a sid, a list of targets, a namespace, the room
    changes, close_room and disconnect, all seen by the clients."""
    sio = quick_server()
    sio.on("connect", lambda sid, environ: None, namespace="/chat")
    url = await start(live, sio, api_keys=(API_KEY,))
    emitter = rsio.Emitter(url, API_KEY)
    ada = await PyClient("said", "message").connect(url, ["websocket"],
                                                    namespaces=["/", "/chat"])
    ada.client.on("said", lambda data: ada.got.put(("chat", data)), namespace="/chat")
    bob = await PyClient("said", "message").connect(url, ["polling"])
    cat = await PyClient("said", "message").connect(url, None)  # the upgrade
    assert await until(lambda: cat.client.transport() == "websocket", WAIT)
    clients = (ada, bob, cat)
    a, b, c = (client.client.get_sid() for client in clients)
    assert [sio.transport(sid) for sid in (a, b, c)] == ["websocket", "polling", "websocket"]

    async def run(call: Any) -> Any:
        return await in_thread(call)

    async def each() -> list[Any]:
        return [await client.next() for client in clients]

    async def quiet(*some: PyClient) -> bool:
        return all([await client.nothing() for client in some])

    for sid in (a, b, c):
        await run(lambda sid=sid: emitter.enter_room(sid, "r"))
    assert await until(lambda: all("r" in sio.rooms(sid) for sid in (a, b, c)))
    await run(lambda: emitter.emit("said", "to r", room="r"))
    assert await each() == [("said", "to r")] * 3
    await run(lambda: emitter.emit("said", "not bob", to="r", skip_sid=b))
    assert await ada.next() == await cat.next() == ("said", "not bob")
    await run(lambda: emitter.emit("said", {"just": "bob"}, to=b))
    assert await bob.next() == ("said", {"just": "bob"})
    assert await quiet(ada, cat)
    await run(lambda: emitter.emit("said", ("two", 2)))  # "/": everyone; two arguments
    assert await each() == [("said", ("two", 2))] * 3
    await run(lambda: emitter.send("plain", skip_sid=[a, c]))
    assert await bob.next() == ("message", "plain")
    assert await quiet(ada, cat)

    await run(lambda: emitter.leave_room(b, "r"))
    await run(lambda: emitter.enter_room(a, "den"))
    assert await until(lambda: "r" not in sio.rooms(b) and "den" in sio.rooms(a))
    await run(lambda: emitter.emit("said", "once", to=["r", "den", b]))
    assert await each() == [("said", "once")] * 3  # ada in r and den: once

    chat = ada.client.get_sid("/chat")
    await run(lambda: emitter.emit("said", "in /chat", namespace="/chat"))
    assert await ada.next() == ("chat", "in /chat")
    await run(lambda: emitter.emit("said", "a '/' sid", to=a, namespace="/chat"))
    await run(lambda: emitter.emit("said", "to /chat", to=chat, namespace="/chat"))
    assert await ada.next() == ("chat", "to /chat")  # not the "/" sid's
    await run(lambda: emitter.enter_room(chat, "r"))  # no namespace: "/", not chat's
    await run(lambda: emitter.disconnect(chat))
    assert await quiet(*clients)
    assert sio.rooms(chat, namespace="/chat") == [chat]

    await run(lambda: emitter.close_room("r"))
    assert await until(lambda: not any("r" in sio.rooms(sid) for sid in (a, b, c)))
    assert sio.rooms(a) == [a, "den"]
    await run(lambda: emitter.emit("said", "nobody", room="r"))
    assert await quiet(*clients)
    await run(lambda: emitter.disconnect(b))
    await run(lambda: emitter.disconnect(chat, namespace="/chat"))
    assert await bob.next() == ("disconnect", ("server disconnect",))
    assert await until(lambda: ada.client.get_sid("/chat") is None)
    with pytest.raises(PublishError) as refused:
        await run(lambda: rsio.Emitter(url, "wrong-key-000000000").emit("said", "x"))
    assert refused.value.status == 401
    for client in (ada, cat):
        await client.disconnect()


def test_the_emitter_refuses_what_it_cannot_send_before_any_request():
    """Bad input is a ``ValueError`` (``TypeError`` for a non-str event name) that says
    what is wrong, raised before any request: the URL here has no server."""
    emitter = rsio.Emitter("http://127.0.0.1:9", API_KEY, timeout=0.5)
    sid = "abcdefgh.proc.chan"  # the form of a sid (channel_of finds its channel)
    assert rsio.channel_of(sid) == "specific.proc!chan"
    cases = [
        (lambda: emitter.emit("e", 1, namespace="chat"), "a namespace is a str"),
        (lambda: emitter.emit("e", 1, namespace="/a,b"), "a namespace is a str"),
        (lambda: emitter.close_room("r", namespace="/q?x=1"), "a namespace is a str"),
        (lambda: emitter.emit("e", {1, 2}), "data must be JSON values"),
        (lambda: emitter.emit("e", float("nan")), "data must be JSON values"),
        (lambda: emitter.emit("e", {"blob": b"\x00"}), "bytes in data"),
        (lambda: emitter.enter_room("not a sid", "r"), "not a realtime.socketio sid"),
        (lambda: emitter.disconnect(42), "not a realtime.socketio sid"),
        (lambda: emitter.enter_room(sid, "zyxwvuts.proc.other"), "cannot enter a sid room"),
    ]
    for call, error in cases:
        with pytest.raises(ValueError, match=error.replace("?", r"\?")):
            call()
    with pytest.raises(TypeError, match="the event name is a str"):
        emitter.emit(b"e")  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # python-socketio's manager order: not taken silently
        emitter.enter_room(sid, "/chat", "r")  # type: ignore[misc]


@pytest_twisted.ensureDeferred
async def test_the_emitter_reaches_a_socket_of_another_process_through_redis(
        redis_url, realtime_leak_check):
    """Two servers on two Redis layers: the Emitter asks one of them, the sockets are on
    the other (one polling, one on WebSocket)."""
    from realtime.config import ServerConfig
    from realtime.testing import serve
    from tests.redis_support import started_layer

    layers = [await started_layer(redis_url) for _ in range(2)]
    servers = []
    try:
        sios = [quick_server(channel_layer=layer) for layer in layers]
        for sio, layer in zip(sios, layers, strict=True):
            servers.append(await serve(app(sio), ServerConfig(api_keys=(API_KEY,)),
                                       layer=layer))
        emitter = rsio.Emitter(f"http://127.0.0.1:{servers[0].port}", API_KEY)
        there = f"http://127.0.0.1:{servers[1].port}"
        one = await PyClient("said").connect(there, ["polling"])
        two = await PyClient("said").connect(there, ["websocket"])
        sid_one, sid_two = one.client.get_sid(), two.client.get_sid()
        for sid in (sid_one, sid_two):
            await in_thread(lambda sid=sid: emitter.enter_room(sid, "lobby"))
        assert await until(lambda: all("lobby" in sios[1].rooms(sid)
                                       for sid in (sid_one, sid_two)))
        await in_thread(lambda: emitter.emit("said", "lobby", room="lobby", skip_sid=sid_two))
        assert await one.next() == ("said", "lobby")
        await in_thread(lambda: emitter.emit("said", "you", to=sid_two))
        assert await two.next() == ("said", "you")
        assert await one.nothing()
        await in_thread(lambda: emitter.disconnect(sid_one))
        assert await one.next() == ("disconnect", ("server disconnect",))
        await two.disconnect()
    finally:
        await stop_all(servers, layers)


# -- class-based namespaces (AsyncNamespace) ---------------------------------------------------

class ChatNamespace(rsio.AsyncNamespace):
    """Every kind of method: async and plain, the server's calls through ``self``."""

    def __init__(self, namespace: str) -> None:
        super().__init__(namespace)
        self.reasons: list[str] = []

    async def on_connect(self, sid, environ, auth):
        if auth == {"token": "bad"}:
            raise rsio.ConnectionRefusedError("bad token", {"retry": False})
        if auth == {"token": "no"}:
            return False
        await self.save_session(sid, {"user": auth["user"]})
        await self.enter_room(sid, "lobby")
        return None

    async def on_whoami(self, sid):
        async with self.session(sid) as session:
            session["asked"] = True
        return (await self.get_session(sid))["user"], self.rooms(sid)

    def on_shout(self, sid, text):  # a plain method
        return text.upper(), self.rooms(sid)[1:]

    async def on_say(self, sid, text):
        await self.emit("said", text, room="lobby", skip_sid=sid)
        await self.send(f"sent {text}", to=sid)  # the "message" event
        return "ok"

    async def on_ask(self, sid):  # timeout=None: no timeout, as python-socketio's
        return await self.call("question", 20, to=sid, timeout=None)

    async def on_part(self, sid):
        await self.leave_room(sid, "lobby")
        return self.rooms(sid)

    async def on_kick(self, sid):
        await self.disconnect(sid)

    def on_disconnect(self, sid, reason):
        self.reasons.append(reason)


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]],
                         ids=["websocket", "polling"])
@pytest_twisted.ensureDeferred
async def test_a_namespace_class_serves_its_namespace(live, transports):
    """``register_namespace`` opens the namespace; its methods are the handlers (acks from
    their return values), and ``self.emit``/rooms/sessions/``disconnect`` act in it."""
    sio = quick_server()
    chat = ChatNamespace("/chat")
    sio.register_namespace(chat)
    assert chat.server is sio
    url = await start(live, sio)
    ada = PyClient("said", "message", namespace="/chat")
    bob = PyClient("said", namespace="/chat")
    ada.client.on("question", lambda n: n + 1, namespace="/chat")
    await ada.connect(url, transports, namespaces=["/chat"], auth={"user": "ada"})
    await bob.connect(url, transports, namespaces=["/chat"], auth={"user": "bob"})
    ada_sid = ada.client.get_sid("/chat")
    assert await ada.call("whoami", namespace="/chat") == ("ada", [ada_sid, "lobby"])
    assert (await sio.get_session(ada_sid, namespace="/chat"))["asked"] is True
    assert await ada.call("shout", "hi", namespace="/chat") == ("HI", ["lobby"])
    assert await ada.call("say", "hello", namespace="/chat") == "ok"
    assert await bob.next() == ("said", "hello")
    assert await ada.next() == ("message", "sent hello")
    assert await ada.call("ask", namespace="/chat") == 21
    assert await ada.call("part", namespace="/chat") == [ada_sid]
    await bob.emit("say", "again", namespace="/chat")
    assert await ada.nothing()  # ada left the lobby
    await bob.emit("kick", namespace="/chat")
    assert await bob.next() == ("disconnect", ("server disconnect",))
    await ada.disconnect()  # (its DISCONNECT packet may be lost in python-engineio's close)
    assert await until(lambda: len(chat.reasons) == 2)
    assert chat.reasons[0] == "server disconnect"
    assert chat.reasons[1] in ("client disconnect", "transport close")
    await bob.disconnect()
    raw = await Raw.open(url)
    await raw.send('40/chat,{"user":"eve"}')
    assert (await raw.recv()).startswith('40/chat,{"sid":')
    await raw.send("41/chat,")
    assert await until(lambda: len(chat.reasons) == 3)
    assert chat.reasons[2] == "client disconnect"
    await raw.close()

    for auth, message in (({"token": "bad"}, "bad token"),
                          ({"token": "no"}, "Connection rejected by server")):
        refused = PyClient()
        refused.client.on("connect_error", lambda data, r=refused: r.got.put(("error", data)),
                          namespace="/chat")
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect(url, transports, namespaces=["/chat"], auth=auth)
        assert (await refused.next())[1]["message"] == message
    assert not sio._sockets


@pytest_twisted.ensureDeferred
async def test_namespace_classes_the_catch_all_class_and_event_names_no_method_has(live):
    """Legacy ``on_connect(sid, environ)``/``on_disconnect(sid)``; the "*" class serves
    the open namespaces without a class (given the namespace) and opens none; an event
    named "my-event" or "two words" finds no ``on_`` method (acked empty) unless one is
    set under that name or ``trigger_event`` routes it."""
    sio = quick_server(namespaces=["/a", "/b"])
    seen: list[Any] = []

    class Legacy(rsio.AsyncNamespace):
        def on_connect(self, sid, environ):
            seen.append(("connect", environ["path"]))

        async def on_disconnect(self, sid):
            seen.append(("disconnect", sid))

        async def trigger_event(self, event, *args):
            if event == "my-event":  # routed by hand: no method can be named on_my-event
                return "routed"
            return await super().trigger_event(event, *args)

    class Anywhere(rsio.AsyncNamespace):
        async def on_connect(self, namespace, sid, environ, auth):
            seen.append(("any", namespace))

        async def on_echo(self, namespace, sid, data):
            try:
                await self.emit("x", to=sid)
            except ValueError as exc:  # the "*" class names the namespace
                assert "namespace=" in str(exc)
            await self.emit("where", namespace, to=sid, namespace=namespace)
            return namespace, data

        def on_disconnect(self, namespace, sid, reason):
            seen.append(("gone", namespace, reason))

    legacy, anywhere = Legacy("/legacy"), Anywhere("*")
    setattr(legacy, "on_two words", lambda sid: "spaced")  # (no identifier)
    sio.register_namespace(legacy)
    sio.register_namespace(anywhere)
    url = await start(live, sio)
    client = PyClient("where", namespace="/a")
    await client.connect(url, namespaces=["/legacy", "/a", "/b"])
    assert ("connect", "/socket.io/") in seen
    assert {("any", "/a"), ("any", "/b")} <= set(seen)
    assert await client.call("my-event", namespace="/legacy") == "routed"
    assert await client.call("two words", namespace="/legacy") == "spaced"
    assert await client.call("other-event", namespace="/legacy") is None  # acked, empty
    assert await client.call("echo", 1, namespace="/a") == ("/a", 1)
    assert await client.next() == ("where", "/a")
    assert await client.call("echo", 2, namespace="/b") == ("/b", 2)
    legacy_sid = client.client.get_sid("/legacy")
    await sio.disconnect(client.client.get_sid("/b"), namespace="/b")
    assert await until(lambda: ("gone", "/b", "server disconnect") in seen)
    await client.disconnect()
    assert await until(lambda: ("disconnect", legacy_sid) in seen)
    assert await until(lambda: any(item[:2] == ("gone", "/a") for item in seen))

    raw = await Raw.open(url)  # the "*" class opens no namespace
    await raw.send("40/c,")
    assert await raw.recv() == '44/c,{"message":"Invalid namespace"}'
    await raw.close()


@pytest_twisted.ensureDeferred
async def test_decorators_come_before_the_namespace_class(live):
    """python-socketio's order: the namespace's decorator handlers (its catch-all too),
    then namespace "*"'s, then the class; what they do not handle, the class does."""
    sio = quick_server()
    seen: list[str] = []

    class Mixed(rsio.AsyncNamespace):
        def on_connect(self, sid, environ, auth):
            seen.append("class connect")

        def on_echo(self, sid, data):
            return "class", data

        def on_wild(self, sid):
            return "class wild"

        def on_other(self, sid):
            return "class other"

    sio.register_namespace(Mixed("/mix"))

    @sio.on("connect", namespace="/mix")
    def decorated_connect(sid, environ):
        seen.append("decorator connect")

    sio.on("echo", lambda sid, data: ("decorator", data), namespace="/mix")
    sio.on("wild", lambda namespace, sid: f"* decorator in {namespace}", namespace="*")
    url = await start(live, sio)
    client = await PyClient().connect(url, namespaces=["/mix"])
    assert seen == ["decorator connect"]
    assert await client.call("echo", 1, namespace="/mix") == ("decorator", 1)
    assert await client.call("wild", namespace="/mix") == "* decorator in /mix"
    assert await client.call("other", namespace="/mix") == "class other"

    @sio.on("*", namespace="/mix")  # the namespace's catch-all: the class gets no events
    def caught(event, sid, *args):
        return f"caught {event}"

    assert await client.call("other", namespace="/mix") == "caught other"
    await client.disconnect()


def test_an_event_named_star_is_routed_as_any_event():
    """A client's event named "*" reaches a namespace's catch-all, namespace "*"'s
    catch-all or a class as any other event does, never as the handler of the event "*"
    (which would take the sid for the event name and the client's first argument for the
    sid), the order as python-socketio's."""
    sio = rsio.AsyncServer()

    def own(event, sid, *args):
        return "own"

    def anywhere(event, namespace, sid, *args):
        return "anywhere"

    sio.on("*", own, namespace="/a")
    sio.on("*", anywhere, namespace="*")
    space = rsio.AsyncNamespace("/c")
    sio.register_namespace(space)
    assert sio._handler("*", "/a", ("SID", "x")) == (own, ("*", "SID", "x"))
    assert sio._handler("*", "/b", ("SID", "x")) == (anywhere, ("*", "/b", "SID", "x"))
    del sio.handlers["*"]
    assert sio._handler("*", "/c", ("SID", "x")) == (space.trigger_event, ("*", "SID", "x"))
    assert sio._handler("*", "/b", ("SID", "x")) == (None, ("SID", "x"))
    for reserved in ("connect", "disconnect"):  # the catch-alls never get those
        assert sio._handler(reserved, "/a", ("SID",)) == (None, ("SID",))


def test_register_namespace_refuses_what_is_not_a_namespace_class():
    sio = rsio.AsyncServer()
    with pytest.raises(TypeError, match=r"AsyncNamespace instance, not object"):
        sio.register_namespace(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="python-socketio's"):
        sio.register_namespace(socketio.AsyncNamespace("/chat"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sio.register_namespace(rsio.AsyncNamespace)  # type: ignore[arg-type]  # the class
    for bad in ("chat", "", 3):
        space = rsio.AsyncNamespace()
        space.namespace = bad  # type: ignore[assignment]
        with pytest.raises(ValueError, match="starts with '/'"):
            sio.register_namespace(space)
    assert sio.namespace_handlers == {}
    assert rsio.AsyncNamespace().namespace == "/"
    with pytest.raises(RuntimeError, match="not registered"):
        rsio.AsyncNamespace("/x").rooms("sid")


@pytest_twisted.ensureDeferred
async def test_socket_io_client_of_node_with_namespace_classes(live, socket_io_client):
    """Node's client through the same flow as with decorators (its default transports:
    polling, then the upgrade), served by two classes."""
    sio = quick_server()
    seen: dict[str, Any] = {}

    class Main(rsio.AsyncNamespace):
        def on_connect(self, sid, environ, auth):
            if auth.get("token") != "js":
                raise rsio.ConnectionRefusedError("who are you?", {"token": auth.get("token")})
            seen["sid"] = sid

        def on_echo(self, sid, *args):
            return args

        async def on_upload(self, sid, data):
            return data["blob"][::-1]

        async def on_ready(self, sid):
            seen["answer"] = await self.call("ask", 21, to=sid, timeout=WAIT)
            await self.emit("bin", {"name": "b", "blob": b"\x00\xff"}, to=sid)
            await self.emit("bye", to=sid)

    class Chat(rsio.AsyncNamespace):
        def on_echo(self, sid, text):
            return f"{text}!"

    sio.register_namespace(Main())
    sio.register_namespace(Chat("/chat"))
    url = await start(live, sio)
    lines = await in_thread(_node, url, "js", "polling,websocket")
    assert lines[0] == {"connected": seen["sid"]}
    assert lines[1:] == [
        {"echoed": ["hi", 3]}, {"reversed": [3, 2, 1]},
        {"chat": lines[3]["chat"], "same_engine": True}, {"chat_echo": "in chat!"},
        {"bin": [0, 255], "name": "b"}, {"done": True, "transport": "websocket"}]
    assert seen["answer"] == (42, "js")
    refused = await in_thread(_node, url, "nope", "websocket")
    assert refused == [{"connect_error": "who are you?", "data": {"token": "nope"}}]
    assert await until(lambda: not sio._polling)


# -- polling and --max-connections-per-user ----------------------------------------------------

JWT_SECRET = "s" * 40


def _token(sub: str) -> str:
    import time

    import jwt

    return jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, JWT_SECRET,
                      algorithm="HS256")


@pytest_twisted.ensureDeferred
async def test_polling_sessions_count_toward_the_per_user_limit(live):
    """A signed-in user's polling sessions count with their WebSockets until they close or
    upgrade (during the probe both count: at the limit the upgrade is refused and the
    session stays on polling); past the limit a polling handshake gets 429 with
    Engine.IO's error body, as --max-connections-per-ip's; anonymous users are not
    counted."""
    from realtime.tokens import TokenAuthMiddleware, key_from_text

    # The raw sessions and the raw WebSocket never answer a ping: with quick_server's
    # (1 s + 0.5 s) a loaded machine would see them close for "ping timeout" mid-test.
    sio = rsio.AsyncServer(ping_interval=WAIT, ping_timeout=WAIT)
    sio.on("echo", lambda sid, data: data)
    server = await live(URLRouter([path("socket.io/", TokenAuthMiddleware(
        sio.as_asgi(), keys=[key_from_text(JWT_SECRET)]))]), max_connections_per_user=2)
    url = f"http://127.0.0.1:{server.port}"
    ada = f"&token={_token('ada')}"
    first = await Polling.open(url, query=ada)
    assert server.site.per_user == {"str:ada": 1}
    ws = Raw(await in_thread(lambda: connect(
        ws_url(url, "EIO=4&transport=websocket" + ada), open_timeout=WAIT).__enter__()))
    assert (await ws.recv()).startswith("0{")  # type: ignore[union-attr]
    assert server.site.per_user == {"str:ada": 2}
    status, _, body = await in_thread(
        _http, f"{url}/socket.io/?EIO=4&transport=polling{ada}", "GET")
    assert (status, json.loads(body)) == (429, {"code": 3, "message": "Too many connections"})
    assert await in_thread(_handshake_status, ws_url(url, "EIO=4" + ada), None) == 429
    bob = await Polling.open(url, query=f"&token={_token('bob')}")
    anonymous = [await Polling.open(url) for _ in range(3)]
    assert server.site.per_user == {"str:ada": 2, "str:bob": 1}
    assert len(sio._polling) == 5  # the refused handshake opened nothing

    assert await first.post("1") == (200, b"ok")  # closed: its place is free
    assert await until(lambda: server.site.per_user == {"str:ada": 1, "str:bob": 1})
    second = await Polling.open(url, query=ada)
    probe = ws_url(url, f"EIO=4&transport=websocket&sid={second.sid}{ada}")
    assert await in_thread(_handshake_status, probe, None) == 429  # ada has 2 open
    assert await until(lambda: sio._polling[second.sid].upgrading is None)
    assert await second.post('421["echo","still polling"]') == (200, b"ok")
    assert await second.get() == ['431["still polling"]']

    # Through python-socketio's client (polling, then the upgrade): at the limit it
    # stays on polling.
    client = PyClient()
    await client.connect(url, None, headers={"Authorization": f"Bearer {_token('bob')}"})
    assert server.site.per_user == {"str:ada": 2, "str:bob": 2}
    assert await client.call("echo", "hi") == "hi"
    assert client.client.transport() == sio.transport(client.client.get_sid()) == "polling"
    await client.disconnect()  # (its close packet may be lost: then the ping timeout)
    assert await until(lambda: server.site.per_user == {"str:ada": 2, "str:bob": 1},
                       timeout=3 * WAIT)

    await bob.post("1")  # bob's client upgrades now: the session's place goes to the WebSocket
    client = PyClient()
    await client.connect(url, None, headers={"Authorization": f"Bearer {_token('bob')}"})
    assert await until(lambda: client.client.transport() == "websocket")
    assert await until(lambda: server.site.per_user == {"str:ada": 2, "str:bob": 1})
    await client.disconnect()
    for session in (second, *anonymous):
        await session.post("1")
    assert await until(lambda: server.site.per_user == {"str:ada": 1}, timeout=WAIT)
    await ws.close()
    assert await until(lambda: server.site.per_user == {})


# -- --slow-consumer drop on polling -------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_slow_consumer_drop_keeps_a_slow_poller_and_drops_whole_packets(live):
    """Under ``--slow-consumer drop`` a session that does not GET keeps its place: the
    EVENT packets past --max-send-buffer are dropped whole (a packet with its attachments,
    never a part: the client's decoder would take the next packet for an attachment) and
    counted in ``dropped_messages``; a CONNECT answer is not dropped; the next GET gets
    what was kept, in order, and the session goes on."""
    sio = rsio.AsyncServer(namespaces=["/other"])
    reasons: list[str] = []
    sio.on("disconnect", lambda sid, reason: reasons.append(reason))
    server = await live(app(sio), max_send_buffer=4096, slow_consumer="drop")
    url = f"http://127.0.0.1:{server.port}"
    slow = await Polling.open(url)
    for n in range(10):  # about 870 bytes each as polling sends them (base64)
        await sio.emit("bin", (n, b"\x00" * 300, b"\x01" * 300), to=slow.socket_sid)
    for n in range(30):  # broadcasts (one prepared frame each) of about 215 bytes
        await sio.emit("said", f"{n:03}" + "x" * 197)
    assert await slow.post("40/other,") == (200, b"ok")  # its answer is queued all the same
    items = await slow.get()
    assert items[-1].startswith('40/other,{"sid":')
    binary, said, rest = [], [], items[:-1]
    while rest:
        text, rest = rest[0], rest[1:]
        if text.startswith("452-"):  # each binary packet with both its attachments
            assert [item[:1] for item in rest[:2]] == ["b", "b"], rest[:2]
            binary.append(json.loads(text[4:])[1])
            rest = rest[2:]
        else:
            said.append(json.loads(text[2:])[1][:3])
    assert binary == list(range(len(binary))) and 0 < len(binary) < 10
    assert said == [f"{n:03}" for n in range(len(said))] and len(said) < 30
    assert server.site.dropped_messages == 40 - len(binary) - len(said)
    assert server.site.slow_consumer_closes == 0 and reasons == []
    await sio.emit("said", "after")  # it goes on
    assert await slow.get() == ['42["said","after"]']
    assert await slow.post("1") == (200, b"ok")
    assert await until(lambda: reasons == ["client disconnect"])  # (the handler of "/")


async def _slow_reader(live: Any, sio: rsio.AsyncServer) -> tuple[Any, Raw, str]:
    """A server with a 64 KiB send buffer and ``--slow-consumer drop``, and a raw WebSocket
    client that reads one message at a time (``max_queue=1``), connected to "/"."""
    server = await live(app(sio), max_send_buffer=64 * 1024, slow_consumer="drop")
    url = f"http://127.0.0.1:{server.port}"
    raw = Raw(await in_thread(lambda: connect(ws_url(url), open_timeout=WAIT, max_queue=1,
                                              max_size=None).__enter__()))
    assert (await raw.recv()).startswith("0{")  # type: ignore[union-attr]
    await raw.send("40")
    return server, raw, json.loads((await raw.recv())[2:])["sid"]


@pytest_twisted.ensureDeferred
async def test_slow_consumer_drop_on_a_websocket_drops_a_packet_with_its_attachments(live):
    """On a WebSocket too, ``--slow-consumer drop`` never cuts a packet from its binary
    attachments: a packet whose frames would not all fit in the send queue is dropped
    whole (one dropped message); what the client gets is whole packets, in order."""
    sio = rsio.AsyncServer()
    server, raw, sid = await _slow_reader(live, sio)
    blob = b"\x07" * 16384
    for n in range(300):  # about 10 MB in one reactor turn, to a client that reads slowly
        await sio.emit("bin", (n, blob, blob), to=sid)
    conn = sio._sockets[sid].consumer._conn
    assert server.site.dropped_messages > 0 and conn.dropped == server.site.dropped_messages
    got: list[int] = []
    while len(got) + server.site.dropped_messages < 300:
        text = await raw.recv()
        assert isinstance(text, str) and text.startswith("452-"), text[:20]
        assert [await raw.recv(), await raw.recv()] == [blob, blob]
        got.append(json.loads(text[4:])[1])
    assert got == sorted(got) and len(got) + server.site.dropped_messages == 300
    await raw.close()


@pytest_twisted.ensureDeferred
async def test_slow_consumer_drop_on_a_websocket_never_cuts_a_large_packet(live):
    """A binary packet larger than --max-send-buffer to a client whose queue is empty
    goes out whole (one large send to an idle client does), even when the transport's
    buffer fills in the middle of it: none of its attachments is dropped alone; what
    follows it is queued or dropped as a whole packet."""
    sio = rsio.AsyncServer()
    server, raw, sid = await _slow_reader(live, sio)
    blobs = [bytes([n]) * (4 << 20) for n in range(4)]  # 16 MiB: past the kernel's buffers
    await sio.emit("big", (0, *blobs), to=sid)
    for n in range(1, 4):
        await sio.emit("small", (n, b"\x09" * 100), to=sid)
    assert await raw.recv() == '454-["big",0,{"_placeholder":true,"num":0},' \
        '{"_placeholder":true,"num":1},{"_placeholder":true,"num":2},' \
        '{"_placeholder":true,"num":3}]'
    for blob in blobs:
        assert await raw.recv() == blob
    got = []
    while len(got) + server.site.dropped_messages < 3:
        text = await raw.recv()
        assert isinstance(text, str) and text.startswith('451-["small",'), text[:40]
        assert await raw.recv() == b"\x09" * 100
        got.append(json.loads(text[4:])[1])
    assert got == list(range(1, 4))[:len(got)]
    await raw.close()
