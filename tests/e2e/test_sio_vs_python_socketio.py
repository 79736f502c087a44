"""Differential: the same raw Engine.IO/Socket.IO traffic to realtime.socketio and to
python-socketio's own ``AsyncServer``, each with the same handlers
(``tests/e2e/siodiff_app.py``), answers compared.

``TABLE`` below IS the record of how realtime.socketio differs from python-socketio on
the wire. Both servers run once for the module as real processes on 127.0.0.1: realtime
under twistd, python-socketio's ``socketio.ASGIApp`` under Daphne (``python -m
daphne``: it serves the app's WebSockets too, upgrade included), each with its default
options at ``/socket.io/`` (and ``/fast.io/``: a 1 s heartbeat; ``/nocors.io/``:
``cors_allowed_origins=[]``; ``/grace.io/``: ``ping_interval=(1, 2)``; ``/ordered.io/``:
``async_handlers=False``; ``/always.io/``: ``always_connect=True``). Each row is a
script of raw HTTP requests (polling: ``http.client``, no ``Accept-Encoding``) and raw
WebSocket frames, run against both servers side by side; what the client sees becomes
lines:

- ``GET 200``, ``POST 400``, ``OPTIONS 204``, ``WS 101``, ``WS 403``: a status;
  ``GET held``: no answer within the wait (a long-poll with nothing to say);
  ``closed``: the server ended the WebSocket; ``waited``: fewer messages came than the
  script waited for.
- ``< PACKET``: an Engine.IO packet received (a polling payload's, split at ``\\x1e``, or
  a WebSocket text message); ``<b HEX``: a binary WebSocket message; ``close N``: the
  server's close code; ``= TEXT``: a body that is not a payload (``ok``, an error), or a
  CORS header (``= allow-origin ...``).
- ``seen [...]``: what the handlers recorded (``/seen/ROW``), read once every socket the
  row connected has had its ``disconnect`` and no connect handler of it runs. A row
  that acts while a GET waits asks the server (``/waiting/SID``) rather than sleeping.
  The heartbeat rows (``slow``) run in the background from the first row on.

Sids are named in the order they appear (``E1`` an Engine.IO sid, ``S1`` a socket's), as
are ack ids the server picks (``A1``); the open packet's keys are sorted. A row's
``ref`` says what is compared:

- ``SAME``: every line is equal.
- ``STATUS``: the statuses, the ``closed``/``waited`` lines and what the handlers saw are
  equal; bodies and close codes differ as noise (python-engineio's error bodies are
  JSON strings such as ``"Invalid session X"``, realtime's are Engine.IO's
  ``{"code","message"}`` objects, as Node's engine.io sends; Daphne refuses a WebSocket
  with 403 whatever the app said).
- ``CORS``: the CORS headers are equal (the preflight's status differs: realtime answers
  204, as Node's ``cors`` does, python-engineio 200 ``OK``).
- anything else: the words say what python-socketio does; it is not asked. Either
  realtime does it on purpose (README "Differences from python-socketio") or
  python-socketio misbehaves (a traceback in its log and the packet ignored, a POST
  answered ``OK`` whose packets were dropped), and the row checks realtime alone.

Every row also checks realtime's lines exactly (``want``). A new case is a row;
``SIODIFF_SHOW=1`` prints each row's lines, ``SIODIFF_SHOW=all`` asks python-socketio in
every row too (to see what it does where it is not compared).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.clients import client_frame, close_code, handshake, parse_frames
from tests.e2e.diffsupport import SAME, STATUS, beside, both, daphne, require
from tests.e2e.support import REPO, Server, twistd

APP = "tests.e2e.siodiff_app"
ENV = {"PYTHONPATH": str(REPO)}
CORS = "cors"
#: How long a read waits for an answer that should come (generous: a loaded machine);
#: how long "nothing" is watched.
WAIT = 5.0
QUIET = 0.3
#: How long a condition (the row's sockets gone, a GET waiting) may take to come true.
SETTLE = 10.0
#: The Host every request names: ``http://sio.test`` is the servers' own origin.
HOST = "sio.test"
OWN = f"http://{HOST}"
EVIL = "https://evil.example"
SIO = "/socket.io/"
#: The server with ``ping_interval=1, ping_timeout=1`` (the heartbeat rows).
FAST = "/fast.io/"
#: The server with ``cors_allowed_origins=[]`` (CORS handling off).
NO_CORS = "/nocors.io/"
#: The server with ``ping_interval=(1, 2), ping_timeout=1`` (a grace period).
GRACE = "/grace.io/"
#: The server with ``async_handlers=False`` (a connection's handlers in order).
ORDERED = "/ordered.io/"
#: The server with ``always_connect=True``.
ALWAYS = "/always.io/"
POLL = "EIO=4&transport=polling"
SESSION = POLL + "&sid=SID"
WS = "EIO=4&transport=websocket"


require("daphne", "python-socketio")


# -- the servers -------------------------------------------------------------------------------
#: The servers the module started (``realtime``: read by the last test).
SERVERS: dict[str, Server] = {}


@pytest.fixture(scope="module")
def ports() -> Any:
    """``{"realtime": PORT, "python-socketio": PORT}``: both servers, started side by side."""
    with beside(twistd("--app", f"{APP}:application", "--port", "0"), ENV,
                daphne(f"{APP}:reference", env=ENV)) as (ours, theirs):
        SERVERS["realtime"] = ours
        yield {"realtime": ours.port, "python-socketio": theirs.port}


# -- the client --------------------------------------------------------------------------------
class WebSocket:
    """A raw WebSocket client: frames written by hand, what comes back into the lines."""

    def __init__(self, client: Client, sock: socket.socket, rest: bytes) -> None:
        self.client = client
        self.sock = sock
        self.buffer = rest
        self.closed = False

    def send(self, text: str) -> None:
        self.sock.sendall(client_frame(0x1, text.encode("utf-8", "surrogatepass")))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(client_frame(0x2, data))

    def _frame(self, deadline: float) -> tuple[int, bytes] | None:
        """The next frame (a server ping answered, not returned); None at the deadline;
        (-1, b"") at EOF."""
        while True:
            frames = parse_frames(self.buffer)
            if frames:
                opcode, payload = frames[0]
                self.buffer = self.buffer[len(_frame_bytes(self.buffer)):]
                if opcode == 0x9:
                    self.sock.sendall(client_frame(0xA, payload))
                    continue
                return opcode, payload
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except ConnectionResetError:
                data = b""
            if not data:
                return (-1, b"")
            self.buffer += data

    def recv(self, count: int = 1, wait: float = WAIT, pong: bool = False) -> None:
        """Up to ``count`` messages (``pong``: Engine.IO pings answered, not counted), or
        the server's close."""
        lines = self.client.lines
        deadline = time.monotonic() + wait
        while count > 0 and not self.closed:
            frame = self._frame(deadline)
            if frame is None:
                lines.append("waited")
                return
            opcode, payload = frame
            if opcode in (-1, 0x8):
                self._closed_by_server(payload if opcode == 0x8 else None)
                return
            if pong and payload == b"2":
                self.send("3")
                continue
            lines.append("< " + payload.decode() if opcode == 0x1 else "<b " + payload.hex())
            count -= 1

    def _closed_by_server(self, payload: bytes | None) -> None:
        """The server's close frame (answered, as a client does) or its EOF."""
        if payload is not None:
            self.client.lines.append(f"close {close_code(payload)}")
            try:
                self.sock.sendall(client_frame(0x8, payload[:2]))
            except OSError:
                pass
        self.client.lines.append("closed")
        self.closed = True

    def quiet(self, wait: float = QUIET, pong: bool = False) -> None:
        """Whatever comes within ``wait`` (nothing, for most rows; ``pong``: Engine.IO
        pings answered, not recorded)."""
        deadline = time.monotonic() + wait
        while not self.closed and (frame := self._frame(deadline)) is not None:
            opcode, payload = frame
            if pong and payload == b"2":
                self.send("3")
            elif opcode in (-1, 0x8):
                self._closed_by_server(payload if opcode == 0x8 else None)
            else:
                self.client.lines.append(
                    "< " + payload.decode() if opcode == 0x1 else "<b " + payload.hex())

    def close(self) -> None:
        """The client's close (1000); the server's echo is not recorded."""
        if not self.closed:
            self.sock.sendall(client_frame(0x8, b"\x03\xe8"))
            deadline = time.monotonic() + WAIT
            while (frame := self._frame(deadline)) is not None and frame[0] not in (-1, 0x8):
                pass
            self.closed = True
        self.sock.close()


def _frame_bytes(data: bytes) -> bytes:
    """The first whole frame of ``data`` (``parse_frames`` found one)."""
    n = data[1] & 0x7F
    start = 2 + (2 if n == 126 else 8 if n == 127 else 0)
    if n == 126:
        n = int.from_bytes(data[2:4], "big")
    elif n == 127:
        n = int.from_bytes(data[2:10], "big")
    return data[:start + n]


class Client:
    """One row's client of one server: raw polling requests and WebSockets; what it sees
    goes to ``lines``. ``SID`` in a query is the last polling handshake's sid."""

    def __init__(self, port: int, row: str) -> None:
        self.port = port
        self.row = row
        self.lines: list[str] = []
        self.sid = ""
        self.path = SIO
        #: Polling sessions the script did not end (path, sid), and WebSockets it did
        #: not close.
        self.sessions: list[tuple[str, str]] = []
        self.sockets: list[WebSocket] = []

    def _query(self, query: str) -> str:
        return query.replace("SID", self.sid)

    def _send(self, method: str, target: str, body: bytes | None, headers: dict[str, str],
              wait: float) -> tuple[int, dict[str, str], bytes] | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=wait)
        try:
            conn.request(method, target, body=body, headers={"Host": HOST, **headers})
            response = conn.getresponse()
            return (response.status, {k.lower(): v for k, v in response.getheaders()},
                    response.read())
        except TimeoutError:
            return None
        finally:
            conn.close()

    def http(self, method: str, query: str = SESSION, body: bytes | None = None,
             path: str = SIO, wait: float = WAIT, **headers: str) -> bytes | None:
        """One request; its status and body (packets for a payload) in the lines."""
        headers = {key.replace("_", "-"): value for key, value in headers.items()}
        reply = self._send(method, path + "?" + self._query(query), body, headers, wait)
        if reply is None:
            self.lines.append(f"{method} held")
            return None
        status, got, payload = reply
        self.lines.append(f"{method} {status}")
        if status == 200 and got.get("content-type", "").startswith("text/plain; charset"):
            self.lines.extend("< " + packet for packet in payload.decode().split("\x1e"))
        elif payload.lower() == b"ok":
            self.lines.append("= ok")
        elif payload:
            self.lines.append("= " + payload.decode("utf-8", "replace"))
        if "Origin" in headers:  # the CORS headers (lists sorted)
            for name in ("origin", "credentials", "methods", "headers"):
                value = got.get("access-control-allow-" + name)
                if value is not None or name == "origin":
                    if name in ("methods", "headers") and value is not None:
                        value = ", ".join(sorted(v.strip().lower() for v in value.split(",")))
                    self.lines.append(f"= allow-{name} {value or '-'}")
        return payload

    def open(self, query: str = POLL, path: str = SIO, **headers: str) -> None:
        """A polling handshake (naming the row); its sid is ``SID`` from now on."""
        payload = self.http("GET", f"{query}&row={self.row}", path=path, **headers)
        if payload and payload.startswith(b"0{"):
            self.sid, self.path = json.loads(payload[1:])["sid"], path
            self.sessions.append((path, self.sid))

    def post(self, body: bytes | str, query: str = SESSION, path: str | None = None,
             **headers: str) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.http("POST", query, data, path=path or self.path, **headers)
        if body == "1":
            self.ended()

    def ended(self) -> None:
        """The script ended the session (nothing to close at the end)."""
        if (self.path, self.sid) in self.sessions:
            self.sessions.remove((self.path, self.sid))

    def get(self, count: int = 1, query: str = SESSION, path: str | None = None,
            wait: float = WAIT) -> None:
        """GETs until ``count`` packets came (one ``GET 200`` line for them all: how a
        server groups packets into responses is its own), or another answer."""
        got = 0
        while got < count:
            reply = self._send("GET", (path or self.path) + "?" + self._query(query), None,
                               {}, wait)
            if reply is None:
                self.lines.append("GET held")
                return
            status, _, payload = reply
            if status != 200:
                self.lines.append(f"GET {status}")
                if payload:
                    self.lines.append("= " + payload.decode("utf-8", "replace"))
                return
            if got == 0:
                self.lines.append("GET 200")
            packets = payload.decode().split("\x1e")
            self.lines.extend("< " + packet for packet in packets)
            got += len(packets)

    def connected(self, auth: str = "", path: str = SIO) -> None:
        """A polling session connected to "/": handshake, CONNECT, its answer."""
        self.open(path=path)
        self.post("40" + auth)
        self.get()

    def ws(self, query: str = WS, path: str = SIO, **headers: str) -> WebSocket | None:
        """A WebSocket (naming the row, unless it upgrades a session)."""
        if "sid=" not in query:
            query += f"&row={self.row}"
        extra = [(key.replace("_", "-").encode(), value.encode())
                 for key, value in headers.items()]
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        sock.sendall(handshake(path + "?" + self._query(query), host=HOST, extra=extra))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1]) if head else 0
        self.lines.append(f"WS {status}")
        if status != 101:
            sock.close()
            return None
        ws = WebSocket(self, sock, rest)
        self.sockets.append(ws)
        return ws

    def ws_connected(self, connect: str = "40", path: str = SIO) -> WebSocket:
        """A WebSocket, its open packet, a CONNECT and its answer."""
        ws = self.ws(path=path)
        assert ws is not None, self.lines
        ws.recv()
        ws.send(connect)
        ws.recv()
        return ws

    def finish(self) -> None:
        """What the script left open is closed, unrecorded (the disconnects then come)."""
        for ws in self.sockets:
            if not ws.closed:
                ws.sock.close()
        for path, sid in self.sessions:
            self._send("POST", f"{path}?{POLL}&sid={sid}", b"1", {}, WAIT)

    def _until(self, what: str, done: Callable[[Any], bool], wait: float) -> Any:
        """``GET /what`` until its answer is ``done`` or ``wait`` seconds passed: the last."""
        deadline = time.monotonic() + wait
        while True:
            reply = self._send("GET", what, None, {}, WAIT)
            assert reply is not None and reply[0] == 200, reply
            record = json.loads(reply[2])
            if done(record) or time.monotonic() > deadline:
                return record
            time.sleep(0.05)

    def gone(self, wait: float = SETTLE) -> None:
        """Until the row's sockets have all disconnected (and its connect handlers ended)."""
        self._until(f"/seen/{self.row}", lambda record: record["open"] == 0, wait)

    def get_waits(self) -> None:
        """Until a GET of the session waits in the server (its ``/waiting/``)."""
        record = self._until(f"/waiting/{self.sid}", lambda record: record["waiting"],
                             SETTLE)
        assert record["waiting"], "no GET waits in the server"

    def seen(self) -> list[str]:
        """What the handlers saw, once the row's sockets have all disconnected (bounded:
        a row whose socket stays connected fails on what it saw)."""
        record = self._until(f"/seen/{self.row}", lambda record: record["open"] == 0, SETTLE)
        return ["seen " + json.dumps(event) for event in record["events"]]


_OPEN = re.compile(r"^< 0(\{.*\})$")
_CONNECTED = re.compile(r'^< 40(?:/[^,]*,)?\{"sid":"([^"]+)"')
_ASKED = re.compile(r"^(< 4(?:2|5\d+-)(?:/[^,]*,)?)(\d+)(\[.*)$")


def normalised(lines: list[str]) -> list[str]:
    """Sids and the server's ack ids named in order of appearance; the open packet's keys
    sorted."""
    names: dict[str, str] = {}

    def name(value: str, kind: str) -> str:
        if value not in names:
            names[value] = f"{kind}{sum(n[0] == kind for n in names.values()) + 1}"
        return names[value]

    out = []
    for line in lines:
        if (match := _OPEN.match(line)) is not None:
            packet = json.loads(match.group(1))
            packet["sid"] = name(packet["sid"], "E")
            line = "< 0" + json.dumps(packet, sort_keys=True, separators=(",", ":"))
        elif (match := _CONNECTED.match(line)) is not None:
            name(match.group(1), "S")
        elif (match := _ASKED.match(line)) is not None:
            line = match.group(1) + name("ack " + match.group(2), "A") + match.group(3)
        elif line.startswith("seen "):
            event = json.loads(line[5:])
            if len(event) > 1 and isinstance(event[1], str):
                name(event[1], "S")
        out.append(line)
    for value, label in sorted(names.items(), key=lambda item: -len(item[0])):
        if not value.startswith("ack "):
            out = [line.replace(value, label) for line in out]
    # One connection's namespaces disconnect in an order of their own (python-socketio's:
    # the order its process first saw them): a run of disconnects is sorted.
    i = 0
    while i < len(out):
        j = i
        while j < len(out) and out[j].startswith('seen ["disconnect"'):
            j += 1
        out[i:j] = sorted(out[i:j])
        i = max(j, i + 1)
    return out


# -- the table ---------------------------------------------------------------------------------
Script = Callable[[Client], None]


@dataclass(frozen=True)
class Row:
    id: str
    what: str
    script: Script
    #: Realtime's lines (normalised), checked in every row.
    want: tuple[str, ...]
    #: SAME, STATUS, or what python-socketio does (then not asked).
    ref: str = SAME
    #: Seconds of waiting (the heartbeat's): run in the background from the start
    #: (``early``), beside the other rows.
    slow: bool = False


def row(id: str, what: str, script: Script, *want: str, ref: str = SAME,
        slow: bool = False) -> Row:
    return Row(id, what, script, want, ref, slow)


def posting(*bodies: str, gets: int = 1, auth: str = "") -> Script:
    """Connected over polling, then each body POSTed, then ``gets`` packets read (0: none)."""
    def script(c: Client) -> None:
        c.connected(auth)
        for body in bodies:
            c.post(body)
        if gets:
            c.get(gets)
    return script


def sending(*messages: str | bytes, reads: int = 1, connect: str = "40",
            path: str = SIO) -> Script:
    """Connected over a WebSocket, then each message sent (bytes: a binary frame), then
    ``reads`` messages read, then nothing more for a moment."""
    def script(c: Client) -> None:
        ws = c.ws_connected(connect, path)
        for message in messages:
            if isinstance(message, bytes):
                ws.send_bytes(message)
            else:
                ws.send(message)
        if reads:
            ws.recv(reads)
        ws.quiet()
        ws.close()
    return script


def ph(num: Any) -> str:
    return json.dumps({"_placeholder": True, "num": num}, separators=(",", ":"))


OPEN_POLLING = ('< 0{"maxPayload":1000000,"pingInterval":25000,"pingTimeout":20000,'
                '"sid":"E1","upgrades":["websocket"]}')
OPEN_WS = ('< 0{"maxPayload":1000000,"pingInterval":25000,"pingTimeout":20000,'
           '"sid":"E1","upgrades":[]}')
FAST_POLLING = OPEN_POLLING.replace("25000", "1000").replace("20000", "1000")
FAST_WS = OPEN_WS.replace("25000", "1000").replace("20000", "1000")
GRACE_WS = OPEN_WS.replace("25000", "3000").replace("20000", "1000")
#: The handshake, the CONNECT posted and the GET that brings its answer (which follows).
POSTED = ("GET 200", OPEN_POLLING, "POST 200", "= ok", "GET 200")
CONNECTED = (*POSTED, '< 40{"sid":"S1"}')
WS_CONNECTED = ("WS 101", OPEN_WS, '< 40{"sid":"S1"}')
SEEN_CONNECT = 'seen ["connect", "S1", "/", null]'
BYE_CLIENT = 'seen ["disconnect", "S1", "/", "client disconnect"]'
BYE_TRANSPORT = 'seen ["disconnect", "S1", "/", "transport close"]'


def _ask(c: Client) -> None:
    """``ask``: the server's question (with an ack id it picks), answered."""
    c.connected()
    c.post('421["ask","q?"]')
    c.get(2)
    asked = next(line for line in c.lines if line.startswith('< 42') and "question" in line)
    ack_id = re.match(r"< 42(\d+)", asked).group(1)  # type: ignore[union-attr]
    c.post(f'43{ack_id}["yes",2]\x1e422["echo","after"]')
    c.get()


def _ask_binary(c: Client) -> None:
    """``ask`` over a WebSocket, answered with a BINARY_ACK."""
    ws = c.ws_connected()
    ws.send('421["ask","q?"]')
    ws.recv(2)
    asked = next(line for line in c.lines if line.startswith('< 42') and "question" in line)
    ack_id = re.match(r"< 42(\d+)", asked).group(1)  # type: ignore[union-attr]
    ws.send(f'461-{ack_id}[{ph(0)},"b"]')
    ws.send_bytes(b"\x07")
    ws.send('422["echo","after"]')
    ws.recv()
    ws.close()


def _slow_connect_ws(c: Client) -> None:
    """A CONNECT whose handler takes a while; the WebSocket closes meanwhile."""
    ws = c.ws()
    assert ws is not None
    ws.recv()
    ws.send('40{"token":"slow"}')
    ws.close()


def _slow_connect_always(token: str) -> Script:
    """``always_connect``: a CONNECT answered at once whose handler takes a while; the
    WebSocket closes meanwhile."""
    def script(c: Client) -> None:
        ws = c.ws(path=ALWAYS)
        assert ws is not None
        ws.recv()
        ws.send(f'40{{"token":"{token}"}}')
        ws.recv()
        ws.close()
    return script


def _slow_connect_polling(c: Client) -> None:
    """A CONNECT whose handler takes a while; the session closes meanwhile."""
    c.open()
    c.post('40{"token":"slow"}')
    c.post("1")


def _two_in_a_room(c: Client) -> None:
    """Two sockets in room "r"; the first shouts to it (skip_sid: itself)."""
    a = c.ws_connected()
    b = c.ws_connected()
    a.send('421["join","r"]')
    a.recv()
    b.send('421["join","r"]')
    b.recv()
    a.send('42["shout","r",{"hi":1}]')
    b.recv()
    a.quiet()
    b.send('422["leave","r"]')
    b.recv()
    a.send('42["shout","r","again"]')
    b.quiet()
    a.close()
    b.close()


def _upgrade(c: Client) -> None:
    """A polling session's upgrade: probe, a GET ends with a noop, the upgrade packet;
    then the WebSocket carries it, and polling is over."""
    c.connected()
    ws = c.ws(WS + "&sid=SID")
    assert ws is not None
    ws.send("2probe")
    ws.recv()
    c.get()
    ws.send("5")
    ws.send('421["transport"]')
    ws.recv()
    c.get()
    c.post('422["echo"]')
    ws.quiet()
    ws.close()
    c.ended()


def _upgrade_with_a_post_between(c: Client) -> None:
    """A POST between the probe and the upgrade packet: its ack waits for the WebSocket."""
    c.connected()
    ws = c.ws(WS + "&sid=SID")
    assert ws is not None
    ws.send("2probe")
    ws.recv()
    c.get()
    c.post('421["echo","between"]')
    ws.send("5")
    ws.recv()
    ws.close()
    c.ended()


def _close_while_a_get_waits(c: Client) -> None:
    c.connected()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(c._send, "GET", SIO + "?" + c._query(SESSION), None, {}, WAIT)
        c.get_waits()
        c.post("1")
        reply = waiting.result()
    c.lines.append("waiting GET " + ("held" if reply is None else f"{reply[0]} {reply[2]!r}"))


def _upgrade_twice(c: Client) -> None:
    c.connected()
    ws = c.ws(WS + "&sid=SID")
    assert ws is not None
    ws.send("2probe")
    ws.recv()
    ws.send("5")
    c.ws(WS + "&sid=SID")
    ws.send('421["transport"]')
    ws.recv()
    ws.close()
    c.ended()


def _abandoned_get(c: Client) -> None:
    c.connected()
    c.get(wait=0.5)
    c.post('421["echo","after"]')
    c.get()


def _upgrade_without_probe(c: Client) -> None:
    c.connected()
    ws = c.ws(WS + "&sid=SID")
    assert ws is not None
    ws.send("2")
    ws.recv()
    ws.close()
    c.post('421["transport"]')
    c.get()


def _ping_over_polling(c: Client) -> None:
    c.connected(path=FAST)
    c.get()  # the ping, after ping_interval
    c.post("3")
    c.post('421["echo","alive"]')
    c.get()


def _ping_timeout_over_polling(c: Client) -> None:
    c.connected(path=FAST)
    c.get()  # the ping, not answered
    c.gone()  # (its ping timeout: the disconnect handler ran)
    c.get()
    c.ended()


def _ping_over_websocket(c: Client) -> None:
    ws = c.ws_connected(path=FAST)
    ws.quiet(2.5, pong=True)
    ws.send('421["echo","alive"]')
    ws.recv()
    ws.close()


def _ping_timeout_over_websocket(c: Client) -> None:
    ws = c.ws_connected(path=FAST)
    ws.recv()  # the ping, not answered
    ws.recv(wait=4)


def _second_get(c: Client) -> None:
    """A GET while another waits (answered at once; the waiting one reads what follows)."""
    c.connected()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(c._send, "GET", SIO + "?" + c._query(SESSION), None, {}, WAIT)
        c.get_waits()
        c.get(wait=1)
        reply = waiting.result()
    c.lines.append("first GET " + ("held" if reply is None else f"{reply[0]} {reply[2]!r}"))


def _ping_with_grace(c: Client) -> None:
    """``ping_interval=(1, 2)``: the client is told 3 s, the ping comes after 1."""
    ws = c.ws_connected(path=GRACE)
    ws.recv()
    ws.send("3")
    ws.send('421["echo","alive"]')
    ws.recv()
    ws.close()


def _in_order_then(*messages: str, reads: int = 0) -> Script:
    """``async_handlers=False`` over a WebSocket: a slow event ("nap"), then ``messages``
    at once (``reads`` answers read), then the WebSocket closed at once."""
    def script(c: Client) -> None:
        ws = c.ws_connected(path=ORDERED)
        ws.send('42["nap"]')
        for message in messages:
            ws.send(message)
        if reads:
            ws.recv(reads)
        ws.close()
    return script


def _in_order_over_polling(c: Client) -> None:
    """``async_handlers=False`` over polling: a slow event and another, then the close."""
    c.connected(path=ORDERED)
    c.post('42["nap"]\x1e421["echo","a"]')
    c.post("1")


def _kick_self(token: str, path: str = ALWAYS, reads: int = 2) -> Script:
    """A connect handler that disconnects its own sid (then accepts, or refuses)."""
    def script(c: Client) -> None:
        ws = c.ws(path=path)
        assert ws is not None
        ws.recv()
        ws.send(f'40{{"token":"{token}"}}')
        ws.recv(reads)
        ws.quiet()
        ws.close()
    return script


def _requests(*calls: tuple[Any, ...]) -> Script:
    """Raw requests: (method, query[, body[, headers]])."""
    def script(c: Client) -> None:
        for call in calls:
            method, query, *rest = call
            body = rest[0] if rest else None
            headers = rest[1] if len(rest) > 1 else {}
            c.http(method, query, body, **headers)
    return script


def _session_then(*calls: tuple[Any, ...], after: str = '421["echo","alive"]') -> Script:
    """Connected over polling, raw requests to the session, then whether it still echoes."""
    def script(c: Client) -> None:
        c.connected()
        _requests(*calls)(c)
        if after:
            c.post(after)
            c.get()
    return script


def _ws_refused(query: str, **headers: str) -> Script:
    def script(c: Client) -> None:
        c.ws(query, **headers)
    return script


TABLE = [
    # -- the polling handshake --------------------------------------------------------------------
    row("handshake", "a polling handshake: the open packet",
        lambda c: c.open(),
        "GET 200", OPEN_POLLING),
    row("handshake-t", "t= cache busters on every request (and v3's b64=1)",
        lambda c: (c.open(POLL + "&t=Pa1&b64=1"), c.post("40", SESSION + "&t=Pa2"),
                   c.get(query=SESSION + "&t=Pa3")),
        *CONNECTED, SEEN_CONNECT, BYE_CLIENT),
    row("eio-3", "a handshake with EIO=3 (Socket.IO v2's clients)",
        _requests(("GET", "EIO=3&transport=polling")),
        "GET 400", '= {"code":5,"message":"Unsupported protocol version"}',
        ref=STATUS),
    row("eio-missing", "a handshake without EIO", _requests(("GET", "transport=polling")),
        "GET 400", '= {"code":5,"message":"Unsupported protocol version"}',
        ref=STATUS),
    row("eio-3-with-sid", "EIO=3 on a session's GET",
        _session_then(("GET", "EIO=3&transport=polling&sid=SID")),
        *CONNECTED, "GET 400", '= {"code":5,"message":"Unsupported protocol version"}', "POST 200",
        "= ok", "GET 200", '< 431["alive"]', SEEN_CONNECT, 'seen ["echo", "S1", "alive"]',
        BYE_CLIENT,
        ref="serves it (python-engineio checks EIO on the handshake only)"),
    row("query-percent-encoded", "EIO and transport percent-encoded (%34, %67)",
        lambda c: c.open("EIO=%34&transport=pollin%67"),
        "GET 200", OPEN_POLLING),
    row("query-eio-twice", "EIO given twice: 3 and 4, then 4 and 4",
        _requests(("GET", "EIO=3&EIO=4&transport=polling"),
                  ("GET", "EIO=4&EIO=4&transport=polling")),
        "GET 400", '= {"code":5,"message":"Unsupported protocol version"}', "GET 400",
        '= {"code":5,"message":"Unsupported protocol version"}',
        ref=STATUS),
    row("query-sid-twice", "a POST naming its session's sid, then another (the first counts)",
        _session_then(("POST", SESSION + "&sid=nope", b'421["echo","first"]')),
        *CONNECTED, "POST 200", "= ok", "POST 200", "= ok", "GET 200", '< 431["first"]',
        '< 431["alive"]', SEEN_CONNECT, 'seen ["echo", "S1", "first"]',
        'seen ["echo", "S1", "alive"]', BYE_CLIENT),
    row("transport-missing", "a handshake without transport",
        _requests(("GET", "EIO=4")),
        "GET 400", '= {"code":0,"message":"Transport unknown"}',
        ref="opens a polling session (its default transport)"),
    row("transport-unknown", "transport=flashsocket",
        _requests(("GET", "EIO=4&transport=flashsocket")),
        "GET 400", '= {"code":0,"message":"Transport unknown"}',
        ref=STATUS),
    row("transport-websocket-plain-get", "transport=websocket on a GET without Upgrade",
        _requests(("GET", "EIO=4&transport=websocket")),
        "GET 400", '= {"code":0,"message":"Transport unknown"}',
        ref=STATUS),
    row("jsonp", "JSONP: j=0, then j=x",
        _requests(("GET", POLL + "&j=0"), ("GET", POLL + "&j=x")),
        "GET 200", OPEN_POLLING, "GET 200", OPEN_POLLING.replace("E1", "E2"),
        ref='answers ___eio[0]("0{...}"); and 400 "Invalid JSONP index number"'),
    row("handshake-post", "a POST without a sid", _requests(("POST", POLL, b"40")),
        "POST 400", '= {"code":2,"message":"Bad handshake method"}',
        ref=STATUS),
    row("handshake-put", "a PUT without a sid", _requests(("PUT", POLL, b"40")),
        "PUT 400", '= {"code":2,"message":"Bad handshake method"}',
        ref='405 "Method Not Found"'),
    row("sid-unknown", "a GET and a POST with a sid no session has",
        _requests(("GET", POLL + "&sid=nope"), ("POST", POLL + "&sid=nope", b"40")),
        "GET 400", '= {"code":1,"message":"Session ID unknown"}', "POST 400",
        '= {"code":1,"message":"Session ID unknown"}',
        ref=STATUS),
    row("sid-empty", "an empty sid= (a handshake)", lambda c: c.open(POLL + "&sid="),
        "GET 200", OPEN_POLLING),
    row("session-transport-websocket", "a session's GET with transport=websocket and no "
        "Upgrade", _session_then(("GET", WS + "&sid=SID")),
        *CONNECTED, "GET 400", '= {"code":0,"message":"Transport unknown"}', "POST 200", "= ok",
        "GET 200", '< 431["alive"]', SEEN_CONNECT, 'seen ["echo", "S1", "alive"]', BYE_CLIENT,
        ref=STATUS),
    row("get-abandoned", "a GET its client gave up on, then an event",
        _abandoned_get,
        *CONNECTED, "GET held", "POST 200", "= ok", "GET 200", '< 431["after"]', SEEN_CONNECT,
        'seen ["echo", "S1", "after"]', BYE_CLIENT,
        ref="the abandoned GET still waits in python-engineio and takes "
        "the next packets: the ack is lost, the next GET waits"),
    row("sid-after-close", "the sid of a session the client closed",
        lambda c: (c.connected(), c.post("1"), c.get(), c.post("40")),
        *CONNECTED, "POST 200", "= ok", "GET 400", '= {"code":1,"message":"Session ID unknown"}',
        "POST 400", '= {"code":1,"message":"Session ID unknown"}', SEEN_CONNECT, BYE_CLIENT,
        ref=STATUS),
    row("delete-session", "DELETE with the session's sid",
        _session_then(("DELETE", SESSION)),
        *CONNECTED, "DELETE 400", '= {"code":3,"message":"Bad request"}', "POST 200", "= ok",
        "GET 200", '< 431["alive"]', SEEN_CONNECT, 'seen ["echo", "S1", "alive"]', BYE_CLIENT,
        ref='405 "Method Not Found"'),
    # -- CORS -------------------------------------------------------------------------------------
    row("cors-get-own", "a handshake from the server's own origin",
        lambda c: c.open(Origin=OWN),
        "GET 200", OPEN_POLLING, "= allow-origin http://sio.test", "= allow-credentials true"),
    row("cors-preflight-own", "an OPTIONS preflight from the server's own origin",
        _requests(("OPTIONS", POLL, None, {"Origin": OWN,
                                            "Access-Control-Request-Method": "POST"})),
        "OPTIONS 204", "= allow-origin http://sio.test", "= allow-credentials true",
        "= allow-methods get, options, post",
        ref=CORS),
    row("cors-preflight-headers", "a preflight for a POST with headers of the page's "
        "(socket.io-client's extraHeaders): allowed as asked",
        _requests(("OPTIONS", POLL, None, {
            "Origin": OWN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, X-Token"})),
        "OPTIONS 204", "= allow-origin http://sio.test", "= allow-credentials true",
        "= allow-methods get, options, post", "= allow-headers authorization, x-token",
        ref=CORS),
    row("cors-get-evil", "a handshake from another origin",
        _requests(("GET", POLL, None, {"Origin": EVIL})),
        "GET 403", '= {"code":4,"message":"Forbidden"}', "= allow-origin -",
        ref='400 "https://evil.example is not an accepted origin."'),
    row("cors-preflight-evil", "an OPTIONS preflight from another origin",
        _requests(("OPTIONS", POLL, None, {"Origin": EVIL,
                                            "Access-Control-Request-Method": "POST"})),
        "OPTIONS 403", '= {"code":4,"message":"Forbidden"}', "= allow-origin -",
        ref='400 "https://evil.example is not an accepted origin."'),
    row("cors-post-evil", "a POST to a session from another origin",
        _session_then(("POST", SESSION, b'421["echo"]', {"Origin": EVIL})),
        *CONNECTED, "POST 403", '= {"code":4,"message":"Forbidden"}', "= allow-origin -",
        "POST 200", "= ok", "GET 200", '< 431["alive"]', SEEN_CONNECT,
        'seen ["echo", "S1", "alive"]', BYE_CLIENT,
        ref="400 (the session lives too)"),
    row("cors-ws-own", "a WebSocket from the server's own origin",
        lambda c: (ws := c.ws(Origin=OWN)) and (ws.recv(), ws.close()),
        "WS 101", OPEN_WS),
    row("cors-ws-evil", "a WebSocket from another origin", _ws_refused(WS, Origin=EVIL),
        "WS 403"),
    row("cors-off-get-own", "cors_allowed_origins=[]: a handshake from the server's own "
        "origin, without CORS headers", lambda c: c.open(path=NO_CORS, Origin=OWN),
        "GET 200", OPEN_POLLING, "= allow-origin -"),
    row("cors-off-preflight", "cors_allowed_origins=[]: a preflight, without CORS headers",
        lambda c: c.http("OPTIONS", POLL, path=NO_CORS, Origin=OWN,
                         Access_Control_Request_Method="POST",
                         Access_Control_Request_Headers="X-Token"),
        "OPTIONS 204", "= allow-origin -",
        ref=CORS),
    row("cors-off-get-evil", "cors_allowed_origins=[]: a handshake from another origin",
        lambda c: c.open(path=NO_CORS, Origin=EVIL),
        "GET 403", '= {"code":4,"message":"Forbidden"}', "= allow-origin -",
        ref="opens a session (it checks no Origin then)"),
    row("cors-off-ws-own", "cors_allowed_origins=[]: a WebSocket from the server's own origin",
        lambda c: (ws := c.ws(path=NO_CORS, Origin=OWN)) and (ws.recv(), ws.close()),
        "WS 101", OPEN_WS),
    row("cors-off-ws-evil", "cors_allowed_origins=[]: a WebSocket from another origin",
        lambda c: c.ws(path=NO_CORS, Origin=EVIL),
        "WS 403",
        ref="accepts it: a page of any site opens a WebSocket with its user's cookies"),
    # -- CONNECT ----------------------------------------------------------------------------------
    row("connect", "CONNECT without auth", posting(gets=0),
        *CONNECTED, SEEN_CONNECT, BYE_CLIENT),
    row("connect-auth", "CONNECT with auth", posting(gets=0, auth='{"token":"ok"}'),
        *CONNECTED, 'seen ["connect", "S1", "/", {"token": "ok"}]', BYE_CLIENT),
    row("connect-auth-empty", "CONNECT with an empty auth (None to the handler)",
        posting(gets=0, auth="{}"),
        *CONNECTED, SEEN_CONNECT, BYE_CLIENT),
    row("connect-refused", "ConnectionRefusedError(message, data)",
        posting(gets=0, auth='{"token":"refuse"}'),
        *POSTED,
        '< 44{"message":"unauthorized","data":{"code":4001}}',
        'seen ["connect", "S1", "/", {"token": "refuse"}]'),
    row("connect-refused-bare", "ConnectionRefusedError()",
        posting(gets=0, auth='{"token":"refuse-bare"}'),
        *POSTED,
        '< 44{"message":"Connection rejected by server"}',
        'seen ["connect", "S1", "/", {"token": "refuse-bare"}]'),
    row("connect-refused-three", "ConnectionRefusedError with three arguments",
        posting(gets=0, auth='{"token":"refuse-three"}'),
        *POSTED,
        '< 44{"message":"three","data":[1,2]}',
        'seen ["connect", "S1", "/", {"token": "refuse-three"}]'),
    row("connect-false", "a connect handler that returns False",
        posting(gets=0, auth='{"token":"false"}'),
        *POSTED,
        '< 44{"message":"Connection rejected by server"}',
        'seen ["connect", "S1", "/", {"token": "false"}]'),
    row("connect-builtin-refused", "the builtin ConnectionRefusedError",
        posting(gets=0, auth='{"token":"builtin"}'),
        *POSTED,
        '< 44{"message":"Connection refused by server"}',
        'seen ["connect", "S1", "/", {"token": "builtin"}]'),
    row("connect-crash", "a connect handler that raises",
        posting(gets=0, auth='{"token":"crash"}'),
        *POSTED,
        '< 44{"message":"Internal server error"}',
        'seen ["connect", "S1", "/", {"token": "crash"}]',
        ref="sends nothing (a traceback in its log; the client waits for ever)"),
    row("connect-unknown-namespace", "CONNECT to a namespace not served",
        posting("40/nope,"),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 44/nope,{"message":"Invalid namespace"}',
        SEEN_CONNECT, BYE_CLIENT,
        ref='44/nope,"Unable to connect" (a string, where Node sends {"message"})'),
    row("connect-namespace-query", "CONNECT to /chat?x=1 (the query dropped)",
        posting("40/chat?x=1,"),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 40/chat,{"sid":"S2"}', SEEN_CONNECT,
        'seen ["connect", "S2", "/chat"]', BYE_CLIENT,
        'seen ["disconnect", "S2", "/chat", "client disconnect"]'),
    row("connect-chat", "CONNECT to a second namespace, an event there",
        posting("40/chat,", '42/chat,1["echo","x"]', gets=2),
        *CONNECTED, "POST 200", "= ok", "POST 200", "= ok", "GET 200", '< 40/chat,{"sid":"S2"}',
        '< 43/chat,1["x"]', SEEN_CONNECT, 'seen ["connect", "S2", "/chat"]',
        'seen ["echo /chat", "S2", "x"]', BYE_CLIENT,
        'seen ["disconnect", "S2", "/chat", "client disconnect"]'),
    row("connect-listed-namespace", "a namespace listed, without handlers: an event there "
        "gets no ack", posting("40/open,", '42/open,1["echo"]\x1e422["echo","after"]',
                               gets=2),
        *CONNECTED, "POST 200", "= ok", "POST 200", "= ok", "GET 200", '< 40/open,{"sid":"S2"}',
        '< 432["after"]', SEEN_CONNECT, 'seen ["echo", "S1", "after"]', BYE_CLIENT),
    row("connect-namespace-no-comma", "CONNECT to '/chat' without the comma",
        posting("40/chat"),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 40/chat,{"sid":"S2"}', SEEN_CONNECT,
        'seen ["connect", "S2", "/chat"]', BYE_CLIENT,
        'seen ["disconnect", "S2", "/chat", "client disconnect"]'),
    row("connect-auth-string", "CONNECT with a string as auth",
        lambda c: (c.open(), c.post('40"token"'), c.get()),
        "GET 200", OPEN_POLLING, "POST 400", '= {"code":3,"message":"Bad request"}', "GET 400",
        '= {"code":1,"message":"Session ID unknown"}',
        ref="passes the string to the connect handler"),
    row("connect-legacy-handler-auth", "CONNECT with auth to a namespace whose connect "
        "handler takes no auth argument", posting('40/chat,{"token":"ok"}'),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 40/chat,{"sid":"S2"}', SEEN_CONNECT,
        'seen ["connect", "S2", "/chat"]', BYE_CLIENT,
        'seen ["disconnect", "S2", "/chat", "client disconnect"]',
        ref="calls it with the auth: a TypeError, no answer (the client waits for ever)"),
    row("connect-and-event", "CONNECT and an event in one POST",
        lambda c: (c.open(), c.post('40\x1e421["echo",1]'), c.get(2)),
        *CONNECTED, "< 431[1]", SEEN_CONNECT, 'seen ["echo", "S1", 1]', BYE_CLIENT),
    row("connect-after-refusal", "a CONNECT refused, then one accepted",
        lambda c: (c.open(), c.post('40{"token":"refuse-bare"}'), c.get(),
                   c.post('40{"token":"ok"}'), c.get()),
        *POSTED,
        '< 44{"message":"Connection rejected by server"}', "POST 200", "= ok", "GET 200",
        '< 40{"sid":"S1"}', 'seen ["connect", "S2", "/", {"token": "refuse-bare"}]',
        'seen ["connect", "S1", "/", {"token": "ok"}]', BYE_CLIENT),
    row("connect-slow-ws-closed", "a connect handler that accepts after its WebSocket "
        "closed: its disconnect handler runs", _slow_connect_ws,
        "WS 101", OPEN_WS, 'seen ["connect", "S1", "/", {"token": "slow"}]',
        'seen ["accepted", "S1"]', BYE_TRANSPORT, ref=SAME),
    row("connect-slow-polling-closed", "a connect handler that accepts after its polling "
        "session closed: its disconnect handler runs", _slow_connect_polling,
        "GET 200", OPEN_POLLING, "POST 200", "= ok", "POST 200", "= ok",
        'seen ["connect", "S1", "/", {"token": "slow"}]', 'seen ["accepted", "S1"]',
        BYE_CLIENT, ref=SAME),
    row("event-before-connect", "an event before any CONNECT (ignored)",
        lambda c: (c.open(), c.post('421["echo"]\x1e40'), c.get()),
        *CONNECTED, SEEN_CONNECT, BYE_CLIENT),
    row("connect-chat-only", "a connection to '/chat' alone",
        lambda c: (c.open(), c.post("40/chat,"), c.get(), c.post('42/chat,1["echo"]'),
                   c.get()),
        *POSTED, '< 40/chat,{"sid":"S1"}',
        "POST 200", "= ok", "GET 200", "< 43/chat,1[]", 'seen ["connect", "S1", "/chat"]',
        'seen ["echo /chat", "S1"]', 'seen ["disconnect", "S1", "/chat", "client disconnect"]'),
    row("connect-twice", "a second CONNECT to '/'", posting("40", '421["echo"]', gets=1),
        *CONNECTED, "POST 200", "= ok", "POST 200", "= ok", "GET 200", "< 431[]", SEEN_CONNECT,
        'seen ["echo", "S1"]', BYE_CLIENT,
        ref='44"Unable to connect" (the socket stays connected)'),
    # -- events and acks --------------------------------------------------------------------------
    row("events", "three events in one POST: acks with a tuple, one value, None",
        posting('421["echo",1]\x1e422["echo","two",{"x":null}]\x1e423["nothing"]', gets=3),
        *CONNECTED, "POST 200", "= ok", "GET 200", "< 431[1]", '< 432["two",{"x":null}]', "< 433[]",
        SEEN_CONNECT, 'seen ["echo", "S1", 1]', 'seen ["echo", "S1", "two", {"x": null}]',
        'seen ["nothing", "S1"]', BYE_CLIENT),
    row("ack-binary", "an ack with bytes: BINARY_ACK, attachments base64",
        posting('421["binary"]', gets=3),
        *CONNECTED, "POST 200", "= ok", "GET 200",
        '< 462-1[{"_placeholder":true,"num":0},{"nested":{"_placeholder":true,"num":1}}]',
        "< bAAE=", "< b/w==", SEEN_CONNECT, 'seen ["binary", "S1"]', BYE_CLIENT),
    row("catch-all", "an event without a handler of its own: the catch-all",
        posting('421["zzz",5]'),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 431["caught","zzz"]', SEEN_CONNECT,
        'seen ["*", "S1", "zzz", 5]', BYE_CLIENT),
    row("binary-event", "BINARY_EVENT with its attachment in the same POST",
        posting(f'451-1["echo",{ph(0)}]\x1ebAQI=', gets=2),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 461-1[{"_placeholder":true,"num":0}]',
        "< bAQI=", SEEN_CONNECT, 'seen ["echo", "S1", {"bytes": "0102"}]', BYE_CLIENT),
    row("binary-event-split", "BINARY_EVENT, its attachment in the next POST",
        posting(f'451-1["echo",{ph(0)}]', "bAQI=", gets=2),
        *CONNECTED, "POST 200", "= ok", "POST 200", "= ok", "GET 200",
        '< 461-1[{"_placeholder":true,"num":0}]', "< bAQI=", SEEN_CONNECT,
        'seen ["echo", "S1", {"bytes": "0102"}]', BYE_CLIENT),
    row("emit-binary", "an emit with bytes (nested): BINARY_EVENT, base64 attachments",
        posting('42["emit_binary"]', gets=3),
        *CONNECTED, "POST 200", "= ok", "GET 200",
        '< 452-["bin",{"a":{"_placeholder":true,"num":0},"b":[{"_placeholder":true,"num":1}]}]',
        "< bAQ==", "< bAgM=", SEEN_CONNECT, 'seen ["emit_binary", "S1"]', BYE_CLIENT),
    row("session", "save_session and get_session",
        posting('421["remember",{"k":[1]}]\x1e422["recall"]', gets=1,
                auth='{"token":"ok"}'),
        *CONNECTED, "POST 200", "= ok", "GET 200", "< 431[]", '< 432[{"k":[1]},{"token":"ok"}]',
        'seen ["connect", "S1", "/", {"token": "ok"}]', 'seen ["remember", "S1", {"k": [1]}]',
        'seen ["recall", "S1"]', BYE_CLIENT),
    row("rooms", "enter_room, leave_room, rooms()",
        posting('421["join","r1"]\x1e422["leave","lobby"]', gets=2),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 431[["SELF","lobby","r1"]]',
        '< 432[["SELF","r1"]]', SEEN_CONNECT, 'seen ["join", "S1", "r1"]',
        'seen ["leave", "S1", "lobby"]', BYE_CLIENT),
    row("kick", "disconnect(sid) from the server, then a new CONNECT",
        posting('42["kick"]', "40", gets=2),
        *CONNECTED, "POST 200", "= ok", "POST 200", "= ok", "GET 200", "< 41", '< 40{"sid":"S2"}',
        SEEN_CONNECT, 'seen ["kick", "S1"]', 'seen ["disconnect", "S1", "/", "server disconnect"]',
        'seen ["connect", "S2", "/", null]', 'seen ["disconnect", "S2", "/", "client disconnect"]'),
    row("client-disconnect", "DISCONNECT from the client, an event, a new CONNECT",
        posting("41", '421["echo"]', "40", gets=1),
        *CONNECTED, "POST 200", "= ok", "POST 200", "= ok", "POST 200", "= ok", "GET 200",
        '< 40{"sid":"S2"}', SEEN_CONNECT, BYE_CLIENT, 'seen ["connect", "S2", "/", null]',
        'seen ["disconnect", "S2", "/", "client disconnect"]'),
    row("ask", "emit with a callback: the client's ack", _ask,
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 42A1["question","q?"]', "< 431[]", "POST 200",
        "= ok", "GET 200", '< 432["after"]', SEEN_CONNECT, 'seen ["ask", "S1", "q?"]',
        'seen ["answered", "S1", "yes", 2]', 'seen ["echo", "S1", "after"]', BYE_CLIENT),
    row("event-root-namespace-explicit", "an EVENT naming '/' (b'42/,1[...]')",
        posting('42/,1["echo",1]'),
        *CONNECTED, "POST 200", "= ok", "GET 200", "< 431[1]", SEEN_CONNECT,
        'seen ["echo", "S1", 1]', BYE_CLIENT),
    row("placeholder-in-a-text-event", "a placeholder object in a plain EVENT (data)",
        posting(f'421["echo",{ph(0)}]'),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 431[{"_placeholder":true,"num":0}]',
        SEEN_CONNECT, 'seen ["echo", "S1", {"_placeholder": true, "num": 0}]', BYE_CLIENT),
    row("handler-raises", "an event whose handler raises: no ack",
        posting('421["fail"]\x1e422["echo","after"]'),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 432["after"]', SEEN_CONNECT,
        'seen ["fail", "S1"]', 'seen ["echo", "S1", "after"]', BYE_CLIENT),
    row("handler-plain", "a handler that is a plain function",
        posting('421["plain",1,"a"]'),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 431[[1,"a"]]', SEEN_CONNECT,
        'seen ["plain", "S1", 1, "a"]', BYE_CLIENT),
    row("event-named-star", "an event named '*': the catch-all's, as any event it serves",
        posting('421["*",1]'),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 431["caught","*"]', SEEN_CONNECT,
        'seen ["*", "S1", "*", 1]', BYE_CLIENT,
        ref="calls the catch-all as the handler of the event '*': the sid comes as its "
        "event argument, the client's first argument as its sid (a client passes for "
        "another sid)"),
    row("ack-unknown", "an ACK for an id the server never asked",
        posting('4399[1]\x1e421["echo","after"]'),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 431["after"]', SEEN_CONNECT,
        'seen ["echo", "S1", "after"]', BYE_CLIENT),
    row("ack-id-15-digits", "an ack id of 15 digits",
        posting('42999999999999999["echo",1]'),
        *CONNECTED, "POST 200", "= ok", "GET 200", "< 43999999999999999[1]", SEEN_CONNECT,
        'seen ["echo", "S1", 1]', BYE_CLIENT),
    row("ack-id-16-digits", "an ack id of 16 digits (past JavaScript's safe integers)",
        posting('429999999999999999["echo",1]', gets=1),
        *CONNECTED, "POST 400", '= {"code":3,"message":"Bad request"}', "GET 400",
        '= {"code":1,"message":"Session ID unknown"}', SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="acks it (ids up to 100 digits)"),
    row("ack-id-leading-zeros", "ack id 007", posting('42007["echo"]'),
        *CONNECTED, "POST 200", "= ok", "GET 200", "< 437[]", SEEN_CONNECT, 'seen ["echo", "S1"]',
        BYE_CLIENT),
    row("event-namespace-not-connected", "an EVENT to a namespace not connected (ignored)",
        posting('42/chat,1["echo"]\x1e422["echo","after"]'),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 432["after"]', SEEN_CONNECT,
        'seen ["echo", "S1", "after"]', BYE_CLIENT),
    row("event-no-handler", "an event with no handler in a namespace without a catch-all",
        posting("40/chat,", '42/chat,1["zzz"]\x1e422["echo","after"]', gets=2),
        *CONNECTED, "POST 200", "= ok", "POST 200", "= ok", "GET 200", '< 40/chat,{"sid":"S2"}',
        '< 432["after"]', SEEN_CONNECT, 'seen ["connect", "S2", "/chat"]',
        'seen ["echo", "S1", "after"]', BYE_CLIENT,
        'seen ["disconnect", "S2", "/chat", "client disconnect"]'),
    row("disconnect-namespace-not-connected", "a DISCONNECT to a namespace not connected",
        posting('41/chat,\x1e421["echo","after"]'),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 431["after"]', SEEN_CONNECT,
        'seen ["echo", "S1", "after"]', BYE_CLIENT),
    row("unicode", "text JSON escapes or not: é, U+2028, an emoji, an escaped lone surrogate",
        posting('421["echo","\u00e9\u2028\U0001f600","\\ud800"]'),
        *CONNECTED, "POST 200", "= ok", "GET 200",
        '< 431["\\u00e9\\u2028\\ud83d\\ude00","\\ud800"]', SEEN_CONNECT,
        'seen ["echo", "S1", "\\u00e9\\u2028\\ud83d\\ude00", "\\ud800"]', BYE_CLIENT),
    row("numbers", "numbers through JSON and back",
        posting('421["echo",1.5,-0,1e3,12345678901234567890,-1.0E-2]'),
        *CONNECTED, "POST 200", "= ok", "GET 200", "< 431[1.5,0,1000.0,12345678901234567890,-0.01]",
        SEEN_CONNECT, 'seen ["echo", "S1", 1.5, 0, 1000.0, 12345678901234567890, -0.01]',
        BYE_CLIENT),
    row("pong-unasked", "a pong nobody asked for (ignored)",
        posting('3\x1e421["echo","after"]'),
        *CONNECTED, "POST 200", "= ok", "GET 200", '< 431["after"]', SEEN_CONNECT,
        'seen ["echo", "S1", "after"]', BYE_CLIENT),
    # -- malformed POSTs --------------------------------------------------------------------------
    row("post-empty", "an empty POST body", _session_then(("POST", SESSION, b"")),
        *CONNECTED, "POST 400", '= {"code":3,"message":"Bad request"}', "POST 400",
        '= {"code":1,"message":"Session ID unknown"}', "GET 400",
        '= {"code":1,"message":"Session ID unknown"}', SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="200 OK (nothing happens)"),
    row("post-trailing-separator", "a separator at the end",
        _session_then(("POST", SESSION, b'421["echo"]\x1e')),
        *CONNECTED, "POST 400", '= {"code":3,"message":"Bad request"}', "POST 400",
        '= {"code":1,"message":"Session ID unknown"}', "GET 400",
        '= {"code":1,"message":"Session ID unknown"}', SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="200 OK, and none of its packets is handled (a traceback)"),
    row("post-17-packets", "17 packets in one POST",
        posting("\x1e".join(f'42{i}["echo",{i}]' for i in range(17)), gets=17),
        *CONNECTED, "POST 200", "= ok", "GET 200", "< 430[0]", "< 431[1]", "< 432[2]", "< 433[3]",
        "< 434[4]", "< 435[5]", "< 436[6]", "< 437[7]", "< 438[8]", "< 439[9]", "< 4310[10]",
        "< 4311[11]", "< 4312[12]", "< 4313[13]", "< 4314[14]", "< 4315[15]", "< 4316[16]",
        SEEN_CONNECT, 'seen ["echo", "S1", 0]', 'seen ["echo", "S1", 1]', 'seen ["echo", "S1", 2]',
        'seen ["echo", "S1", 3]', 'seen ["echo", "S1", 4]', 'seen ["echo", "S1", 5]',
        'seen ["echo", "S1", 6]', 'seen ["echo", "S1", 7]', 'seen ["echo", "S1", 8]',
        'seen ["echo", "S1", 9]', 'seen ["echo", "S1", 10]', 'seen ["echo", "S1", 11]',
        'seen ["echo", "S1", 12]', 'seen ["echo", "S1", 13]', 'seen ["echo", "S1", 14]',
        'seen ["echo", "S1", 15]', 'seen ["echo", "S1", 16]', BYE_CLIENT,
        ref="200 OK, and none of its packets is handled (max_decode_packets: 16)"),
    row("post-json-invalid", "invalid JSON in an EVENT",
        _session_then(("POST", SESSION, b'421["echo",')),
        *CONNECTED, "POST 400", '= {"code":3,"message":"Bad request"}', "POST 400",
        '= {"code":1,"message":"Session ID unknown"}', "GET 400",
        '= {"code":1,"message":"Session ID unknown"}', SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="200 OK; the packet ignored (a traceback)"),
    row("post-sio-garbage", "b'4x' (not a Socket.IO packet)",
        _session_then(("POST", SESSION, b"4x")),
        *CONNECTED, "POST 400", '= {"code":3,"message":"Bad request"}', "POST 400",
        '= {"code":1,"message":"Session ID unknown"}', "GET 400",
        '= {"code":1,"message":"Session ID unknown"}', SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="200 OK; ignored (a traceback)"),
    row("post-not-utf8", "a body that is not UTF-8",
        _session_then(("POST", SESSION, b'42["\xff"]')),
        *CONNECTED, "POST 400", '= {"code":3,"message":"Bad request"}', "POST 400",
        '= {"code":1,"message":"Session ID unknown"}', "GET 400",
        '= {"code":1,"message":"Session ID unknown"}', SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="200 OK; nothing handled (a traceback)"),
    row("post-noop", "a noop", _session_then(("POST", SESSION, b"6")),
        *CONNECTED, "POST 200", "= ok", "POST 200", "= ok", "GET 200", '< 431["alive"]',
        SEEN_CONNECT, 'seen ["echo", "S1", "alive"]', BYE_CLIENT,
        ref="closes the session (\"server disconnect\"); the POST waits until a GET takes "
        "its queue, a later POST gets Daphne's 500"),
    row("post-ping", "a ping from the client (answered on the next GET)",
        posting("2"),
        *CONNECTED, "POST 200", "= ok", "GET 200", "< 3", SEEN_CONNECT, BYE_CLIENT,
        ref="closes the session (\"server disconnect\"); the POST waits "
        "until a GET takes its queue (Node's engine.io closes it too: \"invalid heartbeat "
        "direction\")"),
    row("post-upgrade", "an upgrade packet over polling",
        _session_then(("POST", SESSION, b"5")),
        *CONNECTED, "POST 400", '= {"code":3,"message":"Bad request"}', "POST 400",
        '= {"code":1,"message":"Session ID unknown"}', "GET 400",
        '= {"code":1,"message":"Session ID unknown"}', SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="200 OK; a noop to the next GET"),
    row("post-over-max-payload", "a POST over maxPayload (1,000,000 bytes)",
        _session_then(("POST", SESSION, b'42["echo","' + b"x" * 1_000_000 + b'"]')),
        *CONNECTED, "POST 413", '= {"code":3,"message":"Bad request"}', "POST 400",
        '= {"code":1,"message":"Session ID unknown"}', "GET 400",
        '= {"code":1,"message":"Session ID unknown"}', SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="closes the session (\"server disconnect\"); the POST waits until a GET takes "
        "its queue, a later POST gets Daphne's 500"),
    row("close-while-get-waits", "Engine.IO's close POSTed while a GET waits",
        _close_while_a_get_waits,
        *CONNECTED, "POST 200", "= ok", "waiting GET 200 b'1'", SEEN_CONNECT, BYE_CLIENT,
        ref="leaves the waiting GET unanswered (until "
        "ping_interval + ping_timeout)"),
    row("second-get", "a GET while another waits", _second_get,
        *CONNECTED, "GET 400", '= {"code":3,"message":"Bad request"}', "first GET 200 b'1'",
        SEEN_CONNECT, 'seen ["disconnect", "S1", "/", "transport error"]',
        ref="both wait (the first may take what the second was for)"),
    # -- WebSocket ---------------------------------------------------------------------------------
    row("ws-open", "a WebSocket: the open packet, no upgrades",
        lambda c: (ws := c.ws()) and (ws.recv(), ws.close()),
        "WS 101", OPEN_WS),
    row("ws-echo", "CONNECT, an event acked", sending('421["echo",{"x":[1,2]}]'),
        *WS_CONNECTED, '< 431[{"x":[1,2]}]', SEEN_CONNECT, 'seen ["echo", "S1", {"x": [1, 2]}]',
        BYE_TRANSPORT),
    row("ws-binary-event", "BINARY_EVENT and its binary frame; the BINARY_ACK",
        sending(f'451-1["echo",{ph(0)}]', b"\x01\x02", reads=2),
        *WS_CONNECTED, '< 461-1[{"_placeholder":true,"num":0}]', "<b 0102", SEEN_CONNECT,
        'seen ["echo", "S1", {"bytes": "0102"}]', BYE_TRANSPORT),
    row("ws-binary-event-two", "BINARY_EVENT with two attachments",
        sending(f'452-1["echo",{ph(1)},{ph(0)}]', b"\x01", b"\x02", reads=3),
        *WS_CONNECTED, '< 462-1[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]',
        "<b 02", "<b 01", SEEN_CONNECT, 'seen ["echo", "S1", {"bytes": "02"}, {"bytes": "01"}]',
        BYE_TRANSPORT),
    row("ws-ack-binary", "an ack with bytes", sending('421["binary"]', reads=3),
        *WS_CONNECTED,
        '< 462-1[{"_placeholder":true,"num":0},{"nested":{"_placeholder":true,"num":1}}]',
        "<b 0001", "<b ff", SEEN_CONNECT, 'seen ["binary", "S1"]', BYE_TRANSPORT),
    row("ws-emit-binary", "an emit with bytes", sending('42["emit_binary"]', reads=3),
        *WS_CONNECTED,
        '< 452-["bin",{"a":{"_placeholder":true,"num":0},"b":[{"_placeholder":true,"num":1}]}]',
        "<b 01", "<b 0203", SEEN_CONNECT, 'seen ["emit_binary", "S1"]', BYE_TRANSPORT),
    row("ws-rooms", "two sockets in a room: emit with skip_sid, leave_room", _two_in_a_room,
        *WS_CONNECTED, "WS 101", OPEN_WS.replace("E1", "E2"), '< 40{"sid":"S2"}',
        '< 431[["SELF","lobby","r"]]', '< 431[["SELF","lobby","r"]]', '< 42["shout",{"hi":1}]',
        '< 432[["SELF","lobby"]]', SEEN_CONNECT, 'seen ["connect", "S2", "/", null]',
        'seen ["join", "S1", "r"]', 'seen ["join", "S2", "r"]',
        'seen ["shout", "S1", "r", {"hi": 1}]', 'seen ["leave", "S2", "r"]',
        'seen ["shout", "S1", "r", "again"]', BYE_TRANSPORT,
        'seen ["disconnect", "S2", "/", "transport close"]'),
    row("ws-kick", "disconnect(sid) from the server: the connection stays",
        sending('42["kick"]', "40", reads=2),
        *WS_CONNECTED, "< 41", '< 40{"sid":"S2"}', SEEN_CONNECT, 'seen ["kick", "S1"]',
        'seen ["disconnect", "S1", "/", "server disconnect"]', 'seen ["connect", "S2", "/", null]',
        'seen ["disconnect", "S2", "/", "transport close"]'),
    row("ws-disconnect", "DISCONNECT from the client: the connection stays",
        sending("41", '421["echo"]', "40", reads=1),
        *WS_CONNECTED, '< 40{"sid":"S2"}', SEEN_CONNECT, BYE_CLIENT,
        'seen ["connect", "S2", "/", null]', 'seen ["disconnect", "S2", "/", "transport close"]'),
    row("ws-chat", "two namespaces on one connection",
        sending("40/chat,", '42/chat,1["echo",1]', '422["echo",2]', reads=3),
        *WS_CONNECTED, '< 40/chat,{"sid":"S2"}', "< 43/chat,1[1]", "< 432[2]", SEEN_CONNECT,
        'seen ["connect", "S2", "/chat"]', 'seen ["echo /chat", "S2", 1]', 'seen ["echo", "S1", 2]',
        BYE_TRANSPORT, 'seen ["disconnect", "S2", "/chat", "transport close"]'),
    row("ws-binary-event-namespace", "BINARY_EVENT in a namespace",
        sending("40/chat,", f'451-/chat,1["echo",{ph(0)}]', b"\x09", reads=3),
        *WS_CONNECTED, '< 40/chat,{"sid":"S2"}', '< 461-/chat,1[{"_placeholder":true,"num":0}]',
        "<b 09", SEEN_CONNECT, 'seen ["connect", "S2", "/chat"]',
        'seen ["echo /chat", "S2", {"bytes": "09"}]', BYE_TRANSPORT,
        'seen ["disconnect", "S2", "/chat", "transport close"]'),
    row("ws-ask-binary-answer", "the client's ack with bytes (BINARY_ACK)", _ask_binary,
        *WS_CONNECTED, '< 42A1["question","q?"]', "< 431[]", '< 432["after"]', SEEN_CONNECT,
        'seen ["ask", "S1", "q?"]', 'seen ["answered", "S1", {"bytes": "07"}, "b"]',
        'seen ["echo", "S1", "after"]', BYE_TRANSPORT),
    row("ws-namespace-without-comma", "an EVENT whose namespace has no comma",
        sending('42/chat["echo"]'),
        *WS_CONNECTED, "close 1002", "closed", SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="ignores it (a namespace named '/chat[\"echo\"]')"),
    row("ws-connect-error", "CONNECT_ERROR from the client", sending('44{"message":"x"}'),
        *WS_CONNECTED, "close 1002", "closed", SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="ignores it (a traceback)"),
    row("ws-pong-unasked", "a pong nobody asked for", sending("3", reads=0),
        *WS_CONNECTED, SEEN_CONNECT, BYE_TRANSPORT),
    row("ws-noop", "a noop", sending("6", reads=0),
        *WS_CONNECTED, SEEN_CONNECT, BYE_TRANSPORT),
    row("ws-close-packet", "Engine.IO's close packet", sending("1", reads=1),
        *WS_CONNECTED, "close 1000", "closed", SEEN_CONNECT, BYE_CLIENT,
        ref="ignores it: the socket is closed inside, the WebSocket stays open"),
    row("ws-client-ping", "a ping from the client", sending("2"),
        *WS_CONNECTED, "< 3", SEEN_CONNECT, BYE_TRANSPORT,
        ref="ignores it"),
    row("ws-upgrade-packet", "an upgrade packet on a plain WebSocket", sending("5"),
        *WS_CONNECTED, "close 1002", "closed", SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="answers a noop"),
    row("ws-garbage", "b'x' (not an Engine.IO packet)", sending("x"),
        *WS_CONNECTED, "close 1002", "closed", SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="its handler fails (a traceback): Daphne closes 1011, and no disconnect "
        "handler runs"),
    row("ws-json-invalid", "invalid JSON", sending('421["echo",'),
        *WS_CONNECTED, "close 1002", "closed", SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="ignores it (a traceback)"),
    row("ws-reserved-event", "an EVENT named 'connect'", sending('421["connect"]'),
        *WS_CONNECTED, "close 1002", "closed", SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="calls the connect handler without its arguments (a TypeError in its log)"),
    row("ws-binary-unexpected", "a binary frame with no packet awaiting attachments",
        sending(b"\x00"),
        *WS_CONNECTED, "close 1003", "closed", SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="ignores it (a traceback)"),
    row("ws-binary-count-zero", "BINARY_EVENT announcing 0 attachments",
        sending(f'450-["echo",{ph(0)}]'),
        *WS_CONNECTED, "close 1002", "closed", SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="answers nothing"),
    row("ws-binary-text-while-awaited", "a text message while an attachment is awaited",
        sending(f'451-1["echo",{ph(0)}]', '422["echo"]'),
        *WS_CONNECTED, "close 1002", "closed", SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="takes the text message as the attachment"),
    row("ws-binary-one-frame-more", "one binary frame more than announced",
        sending(f'451-1["echo",{ph(0)}]', b"\x01", b"\x02", reads=2),
        *WS_CONNECTED, '< 461-1[{"_placeholder":true,"num":0}]', "<b 01", "close 1003", "closed",
        SEEN_CONNECT, 'seen ["echo", "S1", {"bytes": "01"}]',
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="acks the packet and ignores the frame (a traceback)"),
    row("ws-placeholder-out-of-range", "a placeholder past the attachments",
        sending(f'451-1["echo",{ph(1)}]', b"\x01"),
        *WS_CONNECTED, "close 1002", "closed", SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "transport error"]',
        ref="ignores it (a traceback)"),
    row("ws-transport-polling", "a WebSocket handshake with transport=polling",
        _ws_refused(POLL),
        "WS 400",
        ref="accepts it and says nothing (a polling session, "
        "opened on a WebSocket scope)"),
    row("ws-eio-3", "a WebSocket with EIO=3", _ws_refused("EIO=3&transport=websocket"),
        "WS 400",
        ref="refuses it: 403 (Daphne's answer to any refusal)"),
    # -- the upgrade -------------------------------------------------------------------------------
    row("upgrade", "the upgrade of a polling session", _upgrade,
        *CONNECTED, "WS 101", "< 3probe", "GET 200", "< 6", '< 431["websocket"]', "GET 400",
        '= {"code":3,"message":"Bad request"}', "POST 400", '= {"code":3,"message":"Bad request"}',
        SEEN_CONNECT, 'seen ["transport", "S1"]', BYE_TRANSPORT,
        ref="the same, and one more noop on the WebSocket after the upgrade (the one its "
        "probe queued to end a waiting GET)"),
    row("upgrade-without-probe", "a WebSocket with the session's sid that sends no probe",
        _upgrade_without_probe,
        *CONNECTED, "WS 101", "close 1002", "closed", "POST 200", "= ok", "GET 200",
        '< 431["polling"]', SEEN_CONNECT, 'seen ["transport", "S1"]', BYE_CLIENT,
        ref="leaves that WebSocket open and silent"),
    row("upgrade-post-between", "a POST between the probe and the upgrade packet: its "
        "ack on the WebSocket", _upgrade_with_a_post_between,
        *CONNECTED, "WS 101", "< 3probe", "GET 200", "< 6", "POST 200", "= ok", '< 431["between"]',
        SEEN_CONNECT, 'seen ["echo", "S1", "between"]', BYE_TRANSPORT,
        ref="the same, after one more noop on the WebSocket (as in \"upgrade\")"),
    row("upgrade-twice", "a second WebSocket with the sid of an upgraded session",
        _upgrade_twice,
        *CONNECTED, "WS 101", "< 3probe", "WS 400", '< 431["websocket"]', SEEN_CONNECT,
        'seen ["transport", "S1"]', BYE_TRANSPORT,
        ref="refuses it: 403 (Daphne's answer to any refusal)"),
    row("upgrade-unknown-sid", "a WebSocket with a sid no session has",
        _ws_refused(WS + "&sid=nope"),
        "WS 400",
        ref="refuses it: 403 (Daphne's answer to any refusal)"),
    # -- async_handlers=False -------------------------------------------------------------------
    row("in-order-close-websocket", "async_handlers=False: events behind a slow one, then "
        "the WebSocket closed at once: each handled, in order, then the disconnect",
        _in_order_then('421["echo","a"]', '42["echo","b"]'),
        *WS_CONNECTED, SEEN_CONNECT, 'seen ["nap", "S1"]', 'seen ["woke", "S1"]',
        'seen ["echo", "S1", "a"]', 'seen ["echo", "S1", "b"]', BYE_TRANSPORT),
    row("in-order-engine-close", "async_handlers=False: an event behind a slow one, then "
        "Engine.IO's close packet",
        _in_order_then('421["echo","a"]', "1"),
        *WS_CONNECTED, SEEN_CONNECT, 'seen ["nap", "S1"]', 'seen ["woke", "S1"]',
        'seen ["echo", "S1", "a"]', BYE_CLIENT),
    row("in-order-disconnect-packet", "async_handlers=False: an event, a DISCONNECT and an "
        "event behind a slow one: the DISCONNECT in its turn, the last event ignored",
        _in_order_then('421["echo","a"]', "41", '422["echo","b"]', reads=1),
        *WS_CONNECTED, '< 431["a"]', SEEN_CONNECT, 'seen ["nap", "S1"]', 'seen ["woke", "S1"]',
        'seen ["echo", "S1", "a"]', BYE_CLIENT),
    row("in-order-close-polling", "async_handlers=False over polling: a POST of a slow "
        "event and another, then a POST of the close",
        _in_order_over_polling,
        *CONNECTED, "POST 200", "= ok", "POST 200", "= ok", SEEN_CONNECT, 'seen ["nap", "S1"]',
        'seen ["woke", "S1"]', 'seen ["echo", "S1", "a"]', BYE_CLIENT),
    # -- always_connect=True ---------------------------------------------------------------------
    row("always-kick-self", "always_connect: the connect handler disconnects its own sid: "
        "its disconnect handler runs inside that call (the session still there)",
        _kick_self("kick-self"),
        "WS 101", OPEN_WS, '< 40{"sid":"S1"}', "< 41",
        'seen ["connect", "S1", "/", {"token": "kick-self"}]',
        'seen ["disconnect", "S1", "/", "server disconnect", {"kick": "kick-self"}]',
        'seen ["kicked", "S1"]'),
    row("always-slow-closed", "always_connect: the WebSocket closes while the connect "
        "handler runs, which then accepts: the disconnect handler follows it (python-socketio "
        "reads the close once the handler returned)",
        _slow_connect_always("slow"),
        "WS 101", OPEN_WS, '< 40{"sid":"S1"}',
        'seen ["connect", "S1", "/", {"token": "slow"}]', 'seen ["accepted", "S1"]',
        BYE_TRANSPORT),
    row("always-slow-refuse-closed", "always_connect: the WebSocket closes while the "
        "connect handler runs, which then refuses: no disconnect handler",
        _slow_connect_always("slow-refuse"),
        "WS 101", OPEN_WS, '< 40{"sid":"S1"}',
        'seen ["connect", "S1", "/", {"token": "slow-refuse"}]', 'seen ["refused", "S1"]'),
    row("always-kick-self-refuse", "always_connect: the connect handler disconnects its own "
        "sid, then refuses: nothing more (its disconnect handler ran)",
        _kick_self("kick-self-refuse"),
        "WS 101", OPEN_WS, '< 40{"sid":"S1"}', "< 41",
        'seen ["connect", "S1", "/", {"token": "kick-self-refuse"}]',
        'seen ["disconnect", "S1", "/", "server disconnect", {"kick": "kick-self-refuse"}]',
        'seen ["kicked", "S1"]'),
    row("kick-self", "without always_connect, the connect handler disconnects its own sid, "
        "then accepts: disconnected (the disconnect handler after the connect handler)",
        _kick_self("kick-self", SIO, reads=1),
        "WS 101", OPEN_WS, "< 41", 'seen ["connect", "S1", "/", {"token": "kick-self"}]',
        'seen ["kicked", "S1"]', 'seen ["disconnect", "S1", "/", "server disconnect"]',
        ref="ignores the disconnect (the sid is not connected yet) and connects it: "
        "< 40{\"sid\":\"S1\"}, no disconnect handler"),
    # -- the heartbeat (ping_interval=1, ping_timeout=1) ----------------------------------------
    row("ping-polling", "a ping over polling, answered", _ping_over_polling,
        "GET 200", FAST_POLLING, "POST 200", "= ok", "GET 200", '< 40{"sid":"S1"}', "GET 200",
        "< 2", "POST 200", "= ok", "POST 200", "= ok", "GET 200", '< 431["alive"]', SEEN_CONNECT,
        'seen ["echo", "S1", "alive"]', BYE_CLIENT,
        slow=True),
    row("ping-timeout-polling", "a ping over polling, not answered",
        _ping_timeout_over_polling,
        "GET 200", FAST_POLLING, "POST 200", "= ok", "GET 200", '< 40{"sid":"S1"}', "GET 200",
        "< 2", "GET 400", '= {"code":1,"message":"Session ID unknown"}', SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "ping timeout"]',
        ref=STATUS, slow=True),
    row("ping-websocket", "pings over a WebSocket, answered", _ping_over_websocket,
        "WS 101", FAST_WS, '< 40{"sid":"S1"}', '< 431["alive"]', SEEN_CONNECT,
        'seen ["echo", "S1", "alive"]', BYE_TRANSPORT,
        slow=True),
    row("ping-timeout-websocket", "a ping over a WebSocket, not answered",
        _ping_timeout_over_websocket,
        "WS 101", FAST_WS, '< 40{"sid":"S1"}', "< 2", "close 1008", "closed", SEEN_CONNECT,
        'seen ["disconnect", "S1", "/", "ping timeout"]',
        ref="closes 1000; its disconnect handler gets "
        "\"transport close\" or \"ping timeout\", whichever of its two timers fires first",
        slow=True),
    row("ping-grace", "ping_interval=(1, 2): the client is told 3000 ms, pinged after 1 s",
        _ping_with_grace,
        "WS 101", GRACE_WS, '< 40{"sid":"S1"}', "< 2", '< 431["alive"]', SEEN_CONNECT,
        'seen ["echo", "S1", "alive"]', BYE_TRANSPORT,
        slow=True),
]


def answer_of(port: int, row: Row) -> list[str]:
    client = Client(port, row.id)
    try:
        row.script(client)
    finally:
        client.finish()
    return normalised(client.lines + client.seen())


def _compared(lines: list[str], how: str) -> list[str]:
    if how == CORS:
        return [line for line in lines if line.startswith("= allow-")]
    if how == STATUS:
        return [line for line in lines if not line.startswith(("<", "=", "close "))]
    return lines


#: ``SIODIFF_SHOW``: "1" prints each row's lines, "all" asks python-socketio in every row.
SHOW = os.environ.get("SIODIFF_SHOW", "")


def answers(ports: dict[str, int], row: Row) -> tuple[list[str], list[str] | None]:
    """Realtime's lines, and python-socketio's where the row compares them (both servers
    side by side), else None."""
    if row.ref in (SAME, STATUS, CORS) or SHOW == "all":
        return both(lambda: answer_of(ports["realtime"], row),
                    lambda: answer_of(ports["python-socketio"], row))
    return answer_of(ports["realtime"], row), None


@pytest.fixture(scope="module")
def early(ports: dict[str, int], request: Any) -> Any:
    """The selected ``slow`` rows, started in the background at the first row (each
    waits seconds for a heartbeat, on sockets of its own): their tests take the
    answers, so those seconds pass beside the other rows."""
    rows = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        row = callspec.params.get("row") if callspec is not None else None
        if isinstance(row, Row) and row.slow:
            rows[row.id] = row
    pool = ThreadPoolExecutor(max(1, len(rows)))
    try:
        yield {id: pool.submit(answers, ports, row) for id, row in rows.items()}
    finally:
        pool.shutdown(wait=True)


@pytest.mark.parametrize("row", TABLE, ids=[row.id for row in TABLE])
def test_row(ports: dict[str, int], early: dict[str, Any], row: Row) -> None:
    started = early.get(row.id)
    ours, theirs = started.result() if started is not None else answers(ports, row)
    if SHOW:
        print(f"\n{row.id} ({row.ref[:20]})\n  realtime:\n    " + "\n    ".join(ours))
        if theirs is not None:
            print("  python-socketio:\n    " + "\n    ".join(theirs))
    if row.ref in (SAME, STATUS, CORS):
        assert theirs is not None
        assert _compared(ours, row.ref) == _compared(theirs, row.ref), row.what
    assert ours == list(row.want), row.what


def test_the_table_names_each_row_once() -> None:
    names = [row.id for row in TABLE]
    assert len(names) == len(set(names))


def test_zz_realtime_logged_no_traceback_but_the_handlers_own(ports: dict[str, int]) -> None:
    """Last: every traceback realtime logged over the table is one a handler raised on
    purpose (``connect-crash``, ``handler-raises``), and it warned of nothing (no close
    handshake left to time out): no input made realtime itself fail."""
    output = SERVERS["realtime"].output()
    failures = re.findall(r"#(?:critical|error)\] (.*)", output)
    assert set(failures) <= {"socketio: the 'fail' handler failed",
                             "socketio: the connect handler failed"}, failures
    raised = re.findall(r"^\s*(\w+\.\w+: .*)$", output, re.M)
    assert output.count("Traceback (most recent call last)") == len(raised), raised
    assert set(raised) <= {"builtins.RuntimeError: the connect handler fails",
                           "builtins.RuntimeError: the fail handler fails"}, raised
    assert [line for line in output.splitlines() if "#warn]" in line] == []
