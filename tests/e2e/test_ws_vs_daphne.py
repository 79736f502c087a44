"""Differential: the same WebSocket scripts to realtime and to Daphne, each serving the same
Channels application (``tests/e2e/wsdiff_app.py``: Channels' consumers, a raw ASGI app,
groups and a channel layer, ``AuthMiddlewareStack`` and the origin validators; under
realtime the same classes with their imports taken from realtime), answers compared.

``TABLE`` below IS the record of how realtime's serving of a ported Channels app differs
from Daphne's. Both servers run once for the module as real processes on 127.0.0.1
(realtime under its default reactor, with ``--proxy-headers --trusted-proxies
127.0.0.2 --root-path-header Daphne-Root-Path``: a client bound to 127.0.0.2 is a trusted
proxy, one on 127.0.0.1 is not;
Daphne as ``python -m daphne``). Each row opens one or more WebSockets by writing raw bytes
over TCP (a fixed ``Sec-WebSocket-Key``, so the accept is compared too), sends frames,
and reads what comes back; ``Answer`` holds per socket the handshake's status and the
headers that matter (``Sec-WebSocket-Accept``/``-Protocol``, ``Upgrade``, ``Connection``
and the application's own), every frame received (text, bytes, pongs, the close frame's
code and reason), whether the server closed the TCP connection, and what the application
saw (``/seen/ROW.SOCKET``: its scope, its events in order, the disconnect code). A row's
``daphne`` column says what is compared:

- ``SAME``: every part of the answer is equal (the scope's server port, realtime's extra
  scope keys and the raw app's ``extensions`` aside: ``_normal``), and realtime's answer
  is also checked on its own.
- ``NO_REASON``: equal but for the close frames' reasons (Daphne sends none: its
  ``websocket.close`` takes no ``reason``); the check asserts realtime's reason.
- ``WIRE``: what the client sees is equal, reasons aside, and the application's record
  is checked on realtime alone: where a consumer raised, Channels' dies with its exception
  (its ``disconnect()`` never runs), and realtime's goes on to ``disconnect(code)``.
- ``STATUS``: the handshake statuses and the TCP closes are equal (the refusal bodies are
  noise: Autobahn's status line phrases against realtime's short plain text).
- anything else: the words say what Daphne does; Daphne is not asked. Either realtime
  is deliberately different (README "Differences from Daphne") or Daphne misbehaves (it
  hangs, drops a message, leaves a socket open), and the row checks realtime alone.

Daphne notices an application's exception in a once-a-second check, so rows where a
consumer raises take up to a second there; reads wait at most ``READ_TIMEOUT``.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.clients import client_frame
from tests.e2e.diffsupport import SAME, STATUS, beside, both, daphne, require
from tests.e2e.support import REPO, twistd

APP = "tests.e2e.wsdiff_app:application"
#: How long a read waits for the next byte; how long a seen record is waited for.
READ_TIMEOUT = 3.0
SEEN_TIMEOUT = 3.0
#: RFC 6455's example key, and its accept: the same on both servers.
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
TRUSTED = "127.0.0.2"
NO_REASON = "no reason"
WIRE = "wire"
COMPARED = (SAME, NO_REASON, WIRE, STATUS)
#: Daphne's answer to a protocol violation: Autobahn's default ``failByDrop``.
DROPS = "drops the TCP connection without a close frame (the consumer hears 1006)"
MiB = 1024 * 1024

require("daphne", "channels")


# -- the servers -------------------------------------------------------------------------------
def _env(flavour: str) -> dict[str, str]:
    return {"PYTHONPATH": str(REPO), "WSDIFF_FLAVOUR": flavour}


@pytest.fixture(scope="module")
def ports() -> Any:
    """``{"realtime": PORT, "daphne": PORT}``: both servers, started side by side."""
    command = twistd("--app", APP, "--port", "0", "-b", "127.0.0.1", "--proxy-headers",
                     "--trusted-proxies", TRUSTED, "--root-path-header", "Daphne-Root-Path")
    with beside(command, _env("realtime"), daphne(APP, env=_env("channels"))) as (ours, theirs):
        yield {"realtime": ours.port, "daphne": theirs.port}


# -- a raw WebSocket client --------------------------------------------------------------------
def frame(opcode: int, payload: bytes = b"", **kwargs: Any) -> bytes:
    return client_frame(opcode, payload, **kwargs)


def text(value: str, **kwargs: Any) -> bytes:
    return frame(0x1, value.encode("utf-8"), **kwargs)


def binary(value: bytes, **kwargs: Any) -> bytes:
    return frame(0x2, value, **kwargs)


def close(code: int | None = 1000, reason: bytes = b"") -> bytes:
    return frame(0x8, b"" if code is None else struct.pack("!H", code) + reason)


def _shown(data: bytes) -> str:
    """A payload as an answer holds it: short ones as latin-1, long ones by size and digest."""
    if len(data) <= 64:
        return data.decode("latin-1")
    return f"{len(data)} bytes, sha1 {hashlib.sha1(data).hexdigest()[:12]}"


@dataclass
class Side:
    """What one socket's client saw."""

    #: The handshake's status (None: no answer in time).
    status: int | None = None
    headers: dict[str, list[str]] = field(default_factory=dict)
    #: ``["text", str]``, ``["bytes", ...]``, ``["ping"|"pong", payload]``, ``["close", code,
    #: reason]`` (code None: an empty close frame), ``["frame", opcode, ...]`` for others.
    frames: list[list[Any]] = field(default_factory=list)
    #: The server closed the TCP connection.
    eof: bool = False


#: The 101's and the refusals' headers that are compared (the rest is noise: Server, Date,
#: Content-Type/-Length of a refusal body).
HEADERS = ("sec-websocket-accept", "sec-websocket-protocol", "sec-websocket-extensions",
           "upgrade", "connection", "x-extra", "set-cookie", "sec-websocket-version", "allow")


class Socket:
    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT,
                                             source_address=(source, 0))
        self.buffer = b""
        self.side = Side()

    def more(self) -> bool:
        if self.side.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False  # nothing in time: still open
        except OSError:
            data = b""
        if not data:
            self.side.eof = True
            return False
        self.buffer += data
        return True

    def head(self) -> None:
        while b"\r\n\r\n" not in self.buffer:
            if not self.more():
                return
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.side.status = int(lines[0].split(b" ")[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower().decode("latin-1")
            if key in HEADERS:
                shown = value.strip().decode("latin-1")
                if key in ("upgrade", "connection"):
                    shown = shown.lower()
                self.side.headers.setdefault(key, []).append(shown)
        if self.side.status != 101:  # a refusal: its body is noise; wait for the close
            while self.more():
                pass
            self.buffer = b""

    def frames(self, count: int) -> None:
        """Read until ``count`` more frames are in, a close frame came, or the server closed
        (each bounded by READ_TIMEOUT)."""
        got = 0
        while got < count:
            parsed = self._one()
            if parsed is None:
                if not self.more():
                    return
                continue
            got += 1
            self.side.frames.append(parsed)
            if parsed[0] == "close":
                return

    def _one(self) -> list[Any] | None:
        data = self.buffer
        if len(data) < 2:
            return None
        opcode = data[0] & 0x0F
        size = data[1] & 0x7F
        at = 2
        if size == 126:
            if len(data) < 4:
                return None
            size, at = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127:
            if len(data) < 10:
                return None
            size, at = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < at + size:
            return None
        payload, self.buffer = data[at:at + size], data[at + size:]
        if opcode == 0x1:
            return ["text", _shown(payload) if len(payload) > 64 else payload.decode()]
        if opcode == 0x2:
            return ["bytes", _shown(payload)]
        if opcode == 0x9:
            return ["ping", _shown(payload)]
        if opcode == 0xA:
            return ["pong", _shown(payload)]
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            return ["close", code, payload[2:].decode("utf-8", "replace")]
        return ["frame", opcode, _shown(payload)]

    def until_closed(self, reply: bool) -> None:
        """Read every frame until the server closes the TCP connection; ``reply``: answer
        its close frame with the same code, as clients do."""
        while True:
            before = len(self.side.frames)
            self.frames(1)
            if len(self.side.frames) == before:
                return  # the server closed (or nothing came in time)
            last = self.side.frames[-1]
            if last[0] == "close":
                if reply:
                    try:
                        self.sock.sendall(close(last[1]))
                    except OSError:
                        pass
                while self.more():
                    pass
                return

    def write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass


# The steps of a row's script, each on one named socket.
@dataclass(frozen=True)
class Open:
    """Connect (from ``source``) and send a handshake for ``target`` (``data`` right behind
    it, in the same write); read its answer."""

    name: str
    target: str
    headers: tuple[str, ...] = ()
    source: str = "127.0.0.1"
    data: bytes = b""


@dataclass(frozen=True)
class Raw:
    """Connect and send ``data`` as it is (a malformed handshake); read the answer."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Get:
    """An HTTP GET of ``target`` (``Connection: close``); ``/http/...`` records its scope."""

    name: str
    target: str
    headers: tuple[str, ...] = ()
    source: str = "127.0.0.1"


@dataclass(frozen=True)
class Send:
    name: str
    data: bytes


@dataclass(frozen=True)
class Read:
    """Read ``count`` frames (fewer if the server closes)."""

    name: str
    count: int = 1


@dataclass(frozen=True)
class Closed:
    """Read until the server closes: ``reply`` answers its close frame (the code echoed)."""

    name: str
    reply: bool = True


@dataclass(frozen=True)
class Leave:
    """The client closes: ``frame`` (a close frame, then read until the server closes) or
    nothing (the TCP connection closed without a close frame)."""

    name: str
    frame: bytes | None = close(1000)


Step = Open | Raw | Get | Send | Read | Closed | Leave


@dataclass
class Answer:
    sides: dict[str, Side] = field(default_factory=dict)
    #: What the application saw, by socket (normalised; None: no record).
    seen: dict[str, Any] = field(default_factory=dict)


def handshake(step: Open, row: str) -> bytes:
    lines = [f"GET {step.target} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY.decode()}",
             "Sec-WebSocket-Version: 13", *step.headers, f"X-Row: {row}.{step.name}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def play(port: int, row: Row, with_seen: bool = True) -> Answer:
    answer = Answer()
    sockets: dict[str, Socket] = {}
    try:
        for step in row.steps:
            if isinstance(step, Open | Raw | Get):
                sock = sockets[step.name] = Socket(port, getattr(step, "source", "127.0.0.1"))
                answer.sides[step.name] = sock.side
                if isinstance(step, Open):
                    sock.write(handshake(step, row.id) + step.data)
                elif isinstance(step, Get):
                    lines = [f"GET {step.target} HTTP/1.1", "Host: 127.0.0.1", *step.headers,
                             f"X-Row: {row.id}.{step.name}", "Connection: close"]
                    sock.write(("\r\n".join(lines) + "\r\n\r\n").encode())
                else:
                    sock.write(step.data)
                sock.head()
                continue
            sock = sockets[step.name]
            if isinstance(step, Send):
                sock.write(step.data)
            elif isinstance(step, Read):
                sock.frames(step.count)
            elif isinstance(step, Closed):
                sock.until_closed(step.reply)
            elif isinstance(step, Leave):
                if step.frame is None:
                    sock.sock.close()
                else:
                    sock.write(step.frame)
                    sock.until_closed(reply=False)
    finally:
        for sock in sockets.values():
            sock.sock.close()
    if row.seen and with_seen:
        for name in sockets:
            answer.seen[name] = seen(port, f"{row.id}.{name}", row.seen)
    return answer


def _get(port: int, target: str) -> tuple[int, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def _ended(record: dict[str, Any]) -> bool:
    return any(event[0] == "disconnect" or event[:2] == ["message", "websocket.disconnect"]
               for event in record["events"])


def seen(port: int, name: str, how: str) -> dict[str, Any] | None:
    """What the application saw on socket ``name``: once it heard of the disconnect
    (``how`` "end", bounded), or as it is once the script is over ("now"). None: the
    application never ran for it (its record is made before any answer goes out)."""
    deadline = time.monotonic() + SEEN_TIMEOUT
    while True:
        _, record = _get(port, f"/seen/{name}")
        if how != "end" or record is None or _ended(record):
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(0.03)
    if record is None:
        return None
    scope = record["scope"]
    scope["server"] = [scope["server"][0], scope["server"][1] == port]
    return record


#: Scope keys realtime adds, left out of the comparison (the ``scope`` row checks
#: realtime's keys): ``scheme`` (ASGI's optional key, "ws"; Daphne gives none to a
#: WebSocket), a raw app's ``extensions`` (the denial response, which Daphne lacks) and
#: the session middleware's ``realtime.response_hooks`` (its cookie on the 101).
EXTRA_KEYS = ("scheme", "extensions", "realtime.response_hooks")


def _normal(answer: Answer, how: str) -> Any:
    """The part of an answer that ``how`` compares."""
    if how == STATUS:
        return {name: (side.status, side.eof) for name, side in answer.sides.items()}
    sides = {}
    for name, side in answer.sides.items():
        frames = side.frames
        if how in (NO_REASON, WIRE):
            frames = [[*f[:2], ""] if f[0] == "close" else f for f in frames]
        sides[name] = (side.status, side.headers, frames, side.eof)
    if how == WIRE:
        return sides
    seen = {}
    for name, record in answer.seen.items():
        if record is not None:
            record = json.loads(json.dumps(record))
            scope = record["scope"]
            scope["keys"] = [key for key in scope["keys"] if key not in EXTRA_KEYS]
            scope.pop("scheme", None)
        seen[name] = record
    return sides, seen


def _differences(ours: Any, theirs: Any, where: str = "") -> list[str]:
    """Where two normal answers differ, for the failure message (realtime first)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [line for key in sorted(set(ours) | set(theirs), key=str)
                for line in _differences(ours.get(key), theirs.get(key), f"{where}/{key}")]
    if (isinstance(ours, list | tuple) and isinstance(theirs, list | tuple)
            and len(ours) == len(theirs)):
        return [line for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
                for line in _differences(a, b, f"{where}[{i}]")]
    return [] if ours == theirs else [f"{where}: realtime {ours!r}, daphne {theirs!r}"]


# -- the table ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    id: str
    what: str
    steps: tuple[Step, ...]
    #: Realtime's answer, checked in every row.
    check: Callable[[Answer], None]
    #: SAME, NO_REASON, WIRE, STATUS, or what Daphne does (then not asked).
    daphne: str = SAME
    #: Fetch what the application saw: "end" (once it heard of the disconnect), "now",
    #: or "" (not fetched).
    seen: str = "end"


def expect(status: int | None = 101, *, name: str = "a", frames: list[list[Any]] | None = None,
           eof: bool | None = True, headers: dict[str, list[str]] | None = None,
           events: list[list[Any]] | None = None, scope: dict[str, Any] | None = None,
           ) -> Callable[[Answer], None]:
    """A check of realtime's answer for socket ``name``: its status, and whichever of the
    rest is given (``headers``: those names' values, ``[]`` for absent; ``events``: the
    application's, in order; ``scope``: keys of the scope it saw)."""

    def check(answer: Answer) -> None:
        side = answer.sides[name]
        assert side.status == status, (name, side)
        if frames is not None:
            assert len(side.frames) == len(frames) and all(
                got == want or (want[0] == "close" and want[2] is ... and got[:2] == want[:2])
                for got, want in zip(side.frames, frames, strict=False)), (name, side)
        if eof is not None:
            assert side.eof is eof, (name, side)
        for key, values in (headers or {}).items():
            assert side.headers.get(key, []) == values, (key, side)
        record = answer.seen.get(name)
        if events is not None or scope is not None:
            assert record is not None, (name, answer)
            if events is not None:
                assert record["events"] == events, (name, record)
            for key, value in (scope or {}).items():
                assert record["scope"][key] == value, (key, record["scope"])

    return check


def not_seen(name: str = "a") -> Callable[[Answer], None]:
    """A check that the application never ran for socket ``name`` (no record)."""

    def check(answer: Answer) -> None:
        assert answer.seen.get(name) is None, (name, answer.seen.get(name))

    return check


def every(*checks: Callable[[Answer], None]) -> Callable[[Answer], None]:
    def check(answer: Answer) -> None:
        for one in checks:
            one(answer)

    return check


def script(target: str, *steps: Step, headers: tuple[str, ...] = ()) -> tuple[Step, ...]:
    """One socket ``a`` to ``target``, then ``steps``."""
    return (Open("a", target, headers), *steps)


def echo_then_leave(target: str, *sends: bytes, reads: int | None = None,
                    headers: tuple[str, ...] = ()) -> tuple[Step, ...]:
    """Open, send each of ``sends`` and read one frame for each, then close with 1000."""
    return script(target, *(Send("a", data) for data in sends),
                  Read("a", len(sends) if reads is None else reads), Leave("a"),
                  headers=headers)


def upgrade(*, method: bytes = b"GET", target: bytes = b"/ws/async/accept/",
            version_line: bytes = b"HTTP/1.1", key: bytes | None = KEY,
            version: bytes = b"13") -> bytes:
    """A handshake written by hand, for the malformed ones."""
    lines = [method + b" " + target + b" " + version_line, b"Host: 127.0.0.1",
             b"Upgrade: websocket", b"Connection: Upgrade",
             b"Sec-WebSocket-Version: " + version]
    if key is not None:
        lines.append(b"Sec-WebSocket-Key: " + key)
    return b"\r\n".join(lines) + b"\r\n\r\n"


A = "/ws/async/accept/"
OK_CLOSE = ["close", 1000, ""]
CONNECT = ["connect"]
BYE = ["disconnect", 1000]
TRUSTED_PROXY = "takes root_path from it, from any client"

TABLE: list[Row] = [
    # -- the handshake and the scope ------------------------------------------------------------
    Row("scope", "an echo: the scope (path, raw_path, query string, headers in order, "
        "subprotocols, client, server, url_route, asgi), text and bytes both ways",
        echo_then_leave("/ws/async/hello/?q=%C3%A9+1&x=%20&=", text("h\u00e9"),
                        binary(b"\x00\xff"), reads=4,
                        headers=("X-MiXeD: v", "X-Pad:   a b  ", "X-Empty:", "X_Dropped: 1",
                                 "Cookie: c=1")),
        expect(frames=[["text", "hello"], ["bytes", "\x00\x01"], ["text", "h\u00e9"],
                       ["bytes", "\x00\xff"], OK_CLOSE],
               headers={"sec-websocket-accept": [ACCEPT], "upgrade": ["websocket"],
                        "connection": ["upgrade"], "sec-websocket-protocol": []},
               events=[CONNECT, ["receive", "text", "h\u00e9"],
                       ["receive", "bytes", "\x00\xff"], BYE],
               scope={"type": "websocket", "asgi": "3.0", "scheme": "ws",
                      "path": "/ws/async/hello/", "raw_path": "/ws/async/hello/",
                      "query_string": "q=%C3%A9+1&x=%20&=", "root_path": "",
                      "subprotocols": [], "client": "127.0.0.1",
                      "server": ["127.0.0.1", True],
                      "url_route": {"args": [], "kwargs": {"mode": "hello"}},
                      "keys": ["asgi", "client", "headers", "path", "path_remaining",
                               "query_string", "raw_path", "root_path", "scheme", "server",
                               "subprotocols", "type", "url_route"],
                      "headers": [["host", "127.0.0.1"], ["upgrade", "websocket"],
                                  ["connection", "Upgrade"], ["sec-websocket-key", KEY.decode()],
                                  ["sec-websocket-version", "13"], ["x-mixed", "v"],
                                  ["x-pad", "a b"], ["x-empty", ""], ["cookie", "c=1"],
                                  ["x-row", "scope.a"]]})),
    Row("headers-repeated", "a header sent twice: two entries in the scope (next to each "
        "other: twisted.web keeps a request's headers by name)",
        echo_then_leave(A, text("x"), headers=("X-Dup: 1", "X-Other: o", "X-Dup: 2")),
        expect(events=[CONNECT, ["receive", "text", "x"], BYE], scope={"headers": [
            ["host", "127.0.0.1"], ["upgrade", "websocket"], ["connection", "Upgrade"],
            ["sec-websocket-key", KEY.decode()], ["sec-websocket-version", "13"],
            ["x-dup", "1"], ["x-dup", "2"], ["x-other", "o"], ["x-row", "headers-repeated.a"]]}),
        daphne="joins them with ',' into one entry, where the first was"),
    Row("path-encoded", "percent-encoded path segments: decoded path, raw raw_path, url_route "
        "captures of the decoded path (an encoded '%' decoded once)",
        echo_then_leave("/ws/route/7/a%20b/%C3%A9/%2541/x%2Fy?q=%C3%A9", text("x")),
        expect(scope={"path": "/ws/route/7/a b/\u00e9/%41/x/y",
                      "raw_path": "/ws/route/7/a%20b/%C3%A9/%2541/x%2Fy",
                      "url_route": {"args": [], "kwargs": {"n": 7,
                                                           "rest": "a b/\u00e9/%41/x/y"}}})),
    Row("re-path", "re_path's named group", echo_then_leave("/ws/re/w%C3%B6rd/", text("x")),
        expect(scope={"url_route": {"args": [], "kwargs": {"word": "w\u00f6rd"}}})),
    Row("re-path-positional", "re_path's unnamed groups: args",
        echo_then_leave("/ws/positional/12/ab/", text("x")),
        expect(scope={"url_route": {"args": ["12", "ab"], "kwargs": {}}})),
    Row("uuid-converter", "path's uuid converter: a UUID",
        echo_then_leave("/ws/uuid/12345678-1234-5678-1234-567812345678/", text("x")),
        expect(scope={"url_route": {"args": [], "kwargs": {
            "u": "UUID(12345678-1234-5678-1234-567812345678)"}}})),
    Row("header-utf8-value", "a header value with UTF-8 bytes: passed as they came",
        (Raw("a", upgrade().replace(b"\r\n\r\n", b"\r\nX-Name: caf\xc3\xa9\r\n"
                                    b"X-Row: header-utf8-value.a\r\n\r\n")),
         Send("a", text("x")), Read("a"), Leave("a")),
        expect(frames=[["text", "x"], OK_CLOSE])),
    Row("no-route", "no route for the path",
        script("/ws/nowhere/"), expect(404), daphne="500: Channels' URLRouter raises "
        "ValueError", seen=""),
    Row("subprotocol-chosen", "three subprotocols offered; the consumer picks the last",
        echo_then_leave("/ws/async/proto/", text("x"),
                        headers=("Sec-WebSocket-Protocol: chat, v2.json,last",)),
        expect(headers={"sec-websocket-protocol": ["last"]},
               scope={"subprotocols": ["chat", "v2.json", "last"]})),
    Row("subprotocol-one", "one subprotocol offered, picked",
        echo_then_leave("/ws/async/proto/", text("x"), headers=("Sec-WebSocket-Protocol: chat",)),
        expect(headers={"sec-websocket-protocol": ["chat"]}, scope={"subprotocols": ["chat"]})),
    Row("subprotocol-none", "subprotocols offered, the consumer picks none: no header",
        echo_then_leave(A, text("x"), headers=("Sec-WebSocket-Protocol: chat",)),
        expect(headers={"sec-websocket-protocol": []}, scope={"subprotocols": ["chat"]})),
    Row("subprotocol-not-offered", "the consumer picks a subprotocol the client did not offer",
        script("/ws/async/badproto/", headers=("Sec-WebSocket-Protocol: chat",)),
        expect(500, events=[CONNECT, ["disconnect", 1006]]),
        daphne="never answers the handshake (Autobahn raises in its callback)"),
    Row("accept-headers", "accept(headers=...): sent with the 101",
        echo_then_leave("/ws/async/headers/", text("x")),
        expect(headers={"x-extra": ["one"], "set-cookie": ["a=1; Path=/"]}),
        daphne="drops them"),
    Row("close-before-accept", "close() before accept: 403",
        script("/ws/async/close/"), every(expect(403, events=[CONNECT, ["disconnect", 1006]])),
        daphne=STATUS),
    Row("close-code-before-accept", "close(code=4000, reason=...) before accept: 403",
        script("/ws/async/close4000/"), expect(403, events=[CONNECT, ["disconnect", 1006]]),
        daphne=STATUS),
    Row("deny", "raise DenyConnection in connect(): 403",
        script("/ws/async/deny/"), expect(403, events=[CONNECT, ["disconnect", 1006]]),
        daphne=STATUS),
    Row("accept-exception", "raise AcceptConnection in connect(): accepted",
        echo_then_leave("/ws/async/acceptexc/", text("x")),
        expect(frames=[["text", "x"], OK_CLOSE], events=[CONNECT, ["receive", "text", "x"], BYE])),
    Row("connect-raises", "connect() raises: 500",
        script("/ws/async/raise/"), expect(500, events=[CONNECT, ["disconnect", 1006]]),
        daphne=STATUS),
    Row("send-before-accept", "send() before accept()",
        script("/ws/async/sendfirst/", Read("a"), Leave("a")),
        expect(frames=[["text", "before accept"], OK_CLOSE]),
        daphne="500: 'Socket has not been accepted, so cannot send over it'"),
    Row("accept-twice", "accept() twice",
        script("/ws/async/twice/", Closed("a")),
        expect(frames=[["close", 1011, "internal error"]],
               events=[CONNECT, ["disconnect", 1011]]), daphne=WIRE),
    Row("sync-echo", "WebsocketConsumer: an echo of text and bytes",
        echo_then_leave("/ws/sync/accept/", text("x"), binary(b"y")),
        expect(frames=[["text", "x"], ["bytes", "y"], OK_CLOSE],
               events=[CONNECT, ["receive", "text", "x"], ["receive", "bytes", "y"], BYE])),
    Row("sync-close-before-accept", "WebsocketConsumer: close() before accept: 403",
        script("/ws/sync/close/"), expect(403, events=[CONNECT, ["disconnect", 1006]]),
        daphne=STATUS),
    Row("sync-deny", "WebsocketConsumer: DenyConnection: 403",
        script("/ws/sync/deny/"), expect(403, events=[CONNECT, ["disconnect", 1006]]),
        daphne=STATUS),
    Row("sync-connect-raises", "WebsocketConsumer: connect() raises: 500",
        script("/ws/sync/raise/"), expect(500, events=[CONNECT, ["disconnect", 1006]]),
        daphne=STATUS),
    Row("sync-subprotocol", "WebsocketConsumer: accept(subprotocol=...)",
        echo_then_leave("/ws/sync/proto/", text("x"), headers=("Sec-WebSocket-Protocol: a, b",)),
        expect(headers={"sec-websocket-protocol": ["b"]})),
    Row("subprotocols-empty-items", "empty items in Sec-WebSocket-Protocol: left out",
        echo_then_leave(A, text("x"), headers=("Sec-WebSocket-Protocol: a,, b ,",)),
        expect(scope={"subprotocols": ["a", "b"]}), daphne="400 (Autobahn refuses the list)"),
    Row("deflate-offer", "a permessage-deflate offer (realtime without --compression): "
        "not taken", echo_then_leave(A, text("x"), headers=(
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",)),
        expect(frames=[["text", "x"], OK_CLOSE], headers={"sec-websocket-extensions": []})),
    # -- messages -------------------------------------------------------------------------------
    Row("burst", "20 messages in one write: received and echoed in order",
        echo_then_leave(A, b"".join(text(f"m{i}") for i in range(20)), reads=20),
        expect(frames=[*(["text", f"m{i}"] for i in range(20)), OK_CLOSE],
               events=[CONNECT, *(["receive", "text", f"m{i}"] for i in range(20)), BYE])),
    Row("unicode", "non-ASCII text out", echo_then_leave(A, text("!unicode")),
        expect(frames=[["text", "h\u00e9llo \u2603 \U0001f600"], OK_CLOSE])),
    Row("empty-messages", "an empty text and an empty binary message, both ways",
        echo_then_leave(A, text(""), binary(b""), text("!empty"), reads=5),
        expect(frames=[["text", ""], ["bytes", ""], ["text", ""], ["bytes", ""],
                       ["text", "after empty"], OK_CLOSE]),
        daphne="sends no frame for an empty message"),
    Row("fragmented", "a text message in three fragments, a ping between them",
        echo_then_leave(A, frame(0x1, b"one ", fin=False), frame(0x9, b"p"),
                        frame(0x0, b"two ", fin=False), frame(0x0, b"three"), reads=2),
        expect(frames=[["pong", "p"], ["text", "one two three"], OK_CLOSE],
               events=[CONNECT, ["receive", "text", "one two three"], BYE])),
    Row("fragmented-binary", "a binary message in two fragments",
        echo_then_leave(A, frame(0x2, b"ab", fin=False), frame(0x0, b"cd"), reads=1),
        expect(frames=[["bytes", "abcd"], OK_CLOSE])),
    Row("ping", "a ping with a payload: a pong with it",
        echo_then_leave(A, frame(0x9, b"hello")), expect(frames=[["pong", "hello"], OK_CLOSE])),
    Row("pong-unsolicited", "an unsolicited pong: ignored",
        echo_then_leave(A, frame(0xA, b"x"), text("after"), reads=1),
        expect(frames=[["text", "after"], OK_CLOSE])),
    Row("max-message", "a 1 MiB message (the default limit): echoed",
        echo_then_leave(A, binary(b"m" * MiB)),
        expect(frames=[["bytes", _shown(b"m" * MiB)], OK_CLOSE])),
    Row("over-max-message", "a 1 MiB + 1 message: 1009",
        script(A, Send("a", binary(b"m" * (MiB + 1))), Closed("a")),
        expect(frames=[["close", 1009, ...]], events=[CONNECT, ["disconnect", 1009]]),
        daphne=DROPS),
    Row("over-max-fragmented", "fragments adding up to over 1 MiB: 1009",
        script(A, Send("a", frame(0x2, b"m" * (MiB // 2), fin=False)),
               Send("a", frame(0x0, b"m" * (MiB // 2), fin=False)),
               Send("a", frame(0x0, b"m")), Closed("a")),
        expect(frames=[["close", 1009, ...]], events=[CONNECT, ["disconnect", 1009]]),
        daphne=DROPS),
    Row("invalid-utf8", "invalid UTF-8 in a text message: 1007",
        script(A, Send("a", frame(0x1, b"\xff\xfe")), Closed("a")),
        expect(frames=[["close", 1007, ...]], events=[CONNECT, ["disconnect", 1007]]),
        daphne=DROPS),
    Row("invalid-utf8-fragments", "invalid UTF-8 across fragments: 1007",
        script(A, Send("a", frame(0x1, b"ok \xe2\x82", fin=False)),
               Send("a", frame(0x0, b"(")), Closed("a")),
        expect(frames=[["close", 1007, ...]], events=[CONNECT, ["disconnect", 1007]]),
        daphne=DROPS),
    Row("unknown-opcode", "an unknown opcode (3): 1002",
        script(A, Send("a", frame(0x3, b"x")), Closed("a")),
        expect(frames=[["close", 1002, ...]], events=[CONNECT, ["disconnect", 1002]]),
        daphne=DROPS),
    Row("unmasked", "an unmasked client frame: 1002",
        script(A, Send("a", frame(0x1, b"x", mask=False)), Closed("a")),
        expect(frames=[["close", 1002, ...]], events=[CONNECT, ["disconnect", 1002]]),
        daphne=DROPS),
    Row("rsv-bit", "RSV1 set without an extension: 1002",
        script(A, Send("a", frame(0x1, b"x", rsv=4)), Closed("a")),
        expect(frames=[["close", 1002, ...]], events=[CONNECT, ["disconnect", 1002]]),
        daphne=DROPS),
    Row("fragmented-ping", "a fragmented control frame: 1002",
        script(A, Send("a", frame(0x9, b"x", fin=False)), Closed("a")),
        expect(frames=[["close", 1002, ...]]),
        daphne=DROPS),
    Row("long-ping", "a 126-byte ping (control frames carry at most 125): 1002",
        script(A, Send("a", frame(0x9, b"p" * 126)), Closed("a")),
        expect(frames=[["close", 1002, ...]]),
        daphne=DROPS),
    Row("lone-continuation", "a continuation frame with no message begun: 1002",
        script(A, Send("a", frame(0x0, b"x")), Closed("a")),
        expect(frames=[["close", 1002, ...]]),
        daphne=DROPS),
    Row("interleaved-message", "a new text frame inside a fragmented message: 1002",
        script(A, Send("a", frame(0x1, b"a", fin=False)), Send("a", text("b")), Closed("a")),
        expect(frames=[["close", 1002, ...]]),
        daphne=DROPS),
    Row("frames-with-handshake", "frames sent right behind the handshake, before the 101",
        (Open("a", A, data=text("early")), Read("a"), Leave("a")),
        expect(frames=[["text", "early"], OK_CLOSE],
               events=[CONNECT, ["receive", "text", "early"], BYE]),
        daphne="loses them: the consumer never receives them"),
    # -- the client closes ----------------------------------------------------------------------
    Row("client-close-reason", "the client closes with 1000 and a reason: the reply, the "
        "disconnect code", script(A, Leave("a", close(1000, b"done"))),
        expect(frames=[OK_CLOSE], events=[CONNECT, BYE])),
    Row("client-close-4000", "the client closes with 4000: the reply says 1000",
        script(A, Leave("a", close(4000))),
        expect(frames=[OK_CLOSE], events=[CONNECT, ["disconnect", 4000]])),
    Row("client-close-empty", "an empty close frame: disconnect 1005",
        script(A, Leave("a", close(None))),
        expect(frames=[OK_CLOSE], events=[CONNECT, ["disconnect", 1005]]),
        daphne="the same, but disconnect(code=None)"),
    Row("client-close-reserved", "a close frame with a reserved code (1005): 1002",
        script(A, Leave("a", close(1005))),
        expect(frames=[["close", 1002, ...]], events=[CONNECT, ["disconnect", 1002]]),
        daphne=DROPS),
    Row("client-close-999", "a close frame with code 999: 1002",
        script(A, Leave("a", close(999))),
        expect(frames=[["close", 1002, ...]], events=[CONNECT, ["disconnect", 1002]]),
        daphne=DROPS),
    Row("client-close-one-byte", "a close frame with a 1-byte payload: 1002",
        script(A, Leave("a", frame(0x8, b"x"))),
        expect(frames=[["close", 1002, ...]], events=[CONNECT, ["disconnect", 1002]]),
        daphne=DROPS),
    Row("client-close-bad-reason", "a close reason that is not UTF-8: 1007",
        script(A, Leave("a", close(1000, b"\xff"))),
        expect(frames=[["close", 1007, ...]], events=[CONNECT, ["disconnect", 1007]]),
        daphne=DROPS),
    Row("client-drops", "the client goes without a close frame: disconnect 1006",
        script(A, Send("a", text("x")), Read("a"), Leave("a", None)),
        expect(frames=[["text", "x"]], eof=False, events=[CONNECT, ["receive", "text", "x"],
                                                           ["disconnect", 1006]])),
    Row("data-after-close", "a text frame after the client's close frame: ignored",
        script(A, Leave("a", close(1000) + text("late"))),
        expect(frames=[OK_CLOSE], events=[CONNECT, BYE])),
    # -- the consumer closes --------------------------------------------------------------------
    Row("server-close", "close(): 1000", script(A, Send("a", text("!close")), Closed("a")),
        expect(frames=[OK_CLOSE], events=[CONNECT, ["receive", "text", "!close"], BYE])),
    Row("server-close-code-reason", "close(code=4000, reason=...): the code and the reason",
        script(A, Send("a", text("!close 4000 going away")), Closed("a")),
        expect(frames=[["close", 4000, "going away"]],
               events=[CONNECT, ["receive", "text", "!close 4000 going away"],
                       ["disconnect", 4000]]),
        daphne=NO_REASON),
    Row("server-close-client-answers-1000", "close(code=4000), the client answers 1000: "
        "the disconnect code",
        script(A, Send("a", text("!close 4000")), Read("a"), Leave("a", close(1000))),
        expect(frames=[["close", 4000, ""]],
               events=[CONNECT, ["receive", "text", "!close 4000"], ["disconnect", 4000]]),
        daphne="the same, but disconnect(1000): the client's answer"),
    Row("server-close-1001", "close(code=1001): not a code an application sends",
        script(A, Send("a", text("!close 1001")), Closed("a")),
        expect(frames=[["close", 1011, "internal error"]],
               events=[CONNECT, ["receive", "text", "!close 1001"], ["disconnect", 1011]]),
        daphne=WIRE),
    Row("server-close-3000", "close(code=3000)",
        script(A, Send("a", text("!close 3000")), Closed("a")),
        expect(frames=[["close", 3000, ""]])),
    Row("send-and-close", "send(..., close=True)",
        script(A, Send("a", text("!sendclose")), Closed("a")),
        expect(frames=[["text", "bye"], OK_CLOSE])),
    Row("send-and-close-code", "send(..., close=4001)",
        script(A, Send("a", text("!sendclose 4001")), Closed("a")),
        expect(frames=[["text", "bye"], ["close", 4001, ""]])),
    Row("send-after-close", "send() after close(): raises ConnectionClosed",
        script(A, Send("a", text("!closesend")), Closed("a")),
        expect(frames=[OK_CLOSE], events=[CONNECT, ["receive", "text", "!closesend"],
                                          ["send raised", "ConnectionClosed"], BYE]),
        daphne="raises Autobahn's Disconnected"),
    Row("receive-raises", "receive() raises: 1011",
        script(A, Send("a", text("!raise")), Closed("a")),
        expect(frames=[["close", 1011, "internal error"]],
               events=[CONNECT, ["receive", "text", "!raise"], ["disconnect", 1011]]),
        daphne=WIRE),
    Row("receive-stops", "StopConsumer from receive(): closed with 1000",
        script(A, Send("a", text("!stop")), Closed("a")),
        expect(frames=[OK_CLOSE], events=[CONNECT, ["receive", "text", "!stop"], BYE]),
        daphne="leaves the socket open (the consumer is gone)"),
    Row("sync-close-reason", "WebsocketConsumer: close(code=4000, reason=...)",
        script("/ws/sync/accept/", Send("a", text("!close 4000 bye")), Closed("a")),
        expect(frames=[["close", 4000, "bye"]]), daphne=NO_REASON),
    Row("sync-receive-raises", "WebsocketConsumer: receive() raises: 1011",
        script("/ws/sync/accept/", Send("a", text("!raise")), Closed("a")),
        expect(frames=[["close", 1011, "internal error"]],
               events=[CONNECT, ["receive", "text", "!raise"], ["disconnect", 1011]]),
        daphne=WIRE),
    Row("big-out", "a 2 MiB message from the consumer (the limit is on what comes in)",
        echo_then_leave(A, text(f"!big {2 * MiB}")),
        expect(frames=[["text", _shown(b"x" * 2 * MiB)], OK_CLOSE]),
        daphne="1011: Autobahn holds what it sends to the 1 MiB limit too"),
    Row("lone-surrogate-out", "the consumer sends text with a lone surrogate: no UTF-8 for "
        "it, 1011", script(A, Send("a", text("!surrogate")), Closed("a")),
        expect(frames=[["close", 1011, "internal error"]],
               events=[CONNECT, ["receive", "text", "!surrogate"], ["disconnect", 1011]]),
        daphne=WIRE),
    Row("server-close-unanswered", "close(code=4000), the client never answers: the "
        "connection dropped after the close timeout (1 s); disconnect with the code sent",
        script(A, Send("a", text("!close 4000")), Closed("a", reply=False)),
        expect(frames=[["close", 4000, ""]],
               events=[CONNECT, ["receive", "text", "!close 4000"], ["disconnect", 4000]]),
        daphne="the same, but disconnect(1006)"),
    # -- the JSON consumers ---------------------------------------------------------------------
    Row("json", "JsonWebsocketConsumer: decoded and encoded (json.dumps: ASCII escapes)",
        echo_then_leave("/ws/json/", text('{"a": [1, "\u00e9", null]}')),
        expect(frames=[["text", '{"got": {"a": [1, "\\u00e9", null]}}'], OK_CLOSE],
               events=[CONNECT, ["json", {"a": [1, "\u00e9", None]}], BYE])),
    Row("ajson", "AsyncJsonWebsocketConsumer: decoded and encoded",
        echo_then_leave("/ws/ajson/", text("[1, 2.5, true]")),
        expect(frames=[["text", '{"got": [1, 2.5, true]}'], OK_CLOSE],
               events=[CONNECT, ["json", [1, 2.5, True]], BYE])),
    Row("json-invalid", "JsonWebsocketConsumer: text that is not JSON: 1007",
        script("/ws/json/", Send("a", text("{nope")), Closed("a")),
        expect(frames=[["close", 1007, "invalid JSON"]], events=[CONNECT, ["disconnect", 1007]]),
        daphne="1011: the consumer dies on json.loads's error"),
    Row("json-binary", "JsonWebsocketConsumer: a binary message: 1003",
        script("/ws/ajson/", Send("a", binary(b"{}")), Closed("a")),
        expect(frames=[["close", 1003, "expected a JSON text frame"]],
               events=[CONNECT, ["disconnect", 1003]]),
        daphne="1011: the consumer dies on 'No text section for incoming WebSocket frame!'"),
    Row("json-empty", "JsonWebsocketConsumer: an empty text message: 1007",
        script("/ws/json/", Send("a", text("")), Closed("a")),
        expect(frames=[["close", 1007, "invalid JSON"]], events=[CONNECT, ["disconnect", 1007]]),
        daphne="1011: the consumer dies on 'No text section for incoming WebSocket frame!'"),
    # -- a raw ASGI application -----------------------------------------------------------------
    Row("raw", "a raw ASGI app: its messages in order, accept headers, an echo",
        echo_then_leave("/ws/raw/accept/", text("t"), binary(b"b")),
        expect(frames=[["text", "t"], ["bytes", "b"], OK_CLOSE],
               events=[["message", "websocket.connect"],
                       ["message", "websocket.receive", "t", None],
                       ["message", "websocket.receive", None, "b"],
                       ["message", "websocket.disconnect", 1000]])),
    Row("raw-subprotocol", "a raw ASGI app picks a subprotocol",
        echo_then_leave("/ws/raw/proto/", text("t"), headers=("Sec-WebSocket-Protocol: x, y",)),
        expect(headers={"sec-websocket-protocol": ["x"]})),
    Row("raw-close-before-accept", "a raw ASGI app's websocket.close before accept: 403",
        script("/ws/raw/close/"),
        expect(403, events=[["message", "websocket.connect"],
                            ["message", "websocket.disconnect", 1006]]), daphne=STATUS),
    Row("raw-close-reason", "a raw ASGI app's websocket.close with a code and a reason",
        script("/ws/raw/accept/", Send("a", text("!close 4003 no more")), Closed("a")),
        expect(frames=[["close", 4003, "no more"]]), daphne=NO_REASON),
    Row("raw-raises", "a raw ASGI app raises: 1011",
        script("/ws/raw/accept/", Send("a", text("!raise")), Closed("a")),
        expect(frames=[["close", 1011, "internal error"]],
               events=[["message", "websocket.connect"],
                       ["message", "websocket.receive", "!raise", None]]),
        daphne=WIRE, seen="now"),
    Row("raw-returns", "a raw ASGI app returns after accepting: closed with 1000",
        script("/ws/raw/return/", Closed("a")),
        expect(frames=[OK_CLOSE], events=[["message", "websocket.connect"]]),
        daphne="leaves the socket open", seen="now"),
    Row("raw-denial-response", "the denial-response extension: the app's status and body",
        script("/ws/raw/deny-response/"), expect(418),
        daphne="no extension: never answers the handshake"),
    # -- groups and the channel layer -----------------------------------------------------------
    Row("groups", "group_add (groups and connect()), group_send to several members, a "
        "handler per type with dots made underscores, group_discard",
        (Open("a", "/ws/room/r1/"), Open("b", "/ws/room/r1/"), Open("c", "/ws/room/r1/"),
         Send("a", text("!gs room.r1 room.message hi")),
         Read("a"), Read("b"), Read("c"),
         Send("c", text("!gs lobby room.big.news n")),
         Read("a"), Read("b"), Read("c"),
         Send("b", text("!leave room.r1")), Read("b"),
         Send("a", text("!gs room.r1 room.message two")), Read("a"), Read("c"),
         Send("b", text("!ping")), Read("b"),
         Leave("a"), Leave("b"), Leave("c")),
        every(expect(name="a", frames=[["text", "room: hi"], ["text", "news: n"],
                                  ["text", "room: two"], OK_CLOSE]),
              expect(name="b", frames=[["text", "room: hi"], ["text", "news: n"],
                                  ["text", "left room.r1"], ["text", "pong"], OK_CLOSE],
                     events=[CONNECT, ["event", "room.message", "hi"],
                             ["event", "room.big.news", "n"],
                             ["receive", "text", "!leave room.r1"],
                             ["receive", "text", "!ping"], BYE]),
              expect(name="c", frames=[["text", "room: hi"], ["text", "news: n"],
                                  ["text", "room: two"], OK_CLOSE]))),
    Row("channel-send", "channel_layer.send to another consumer's channel_name",
        (Open("a", A), Open("b", A), Send("a", text("!register chan-a")), Read("a"),
         Send("b", text("!to chan-a direct.message yo")), Read("a"), Leave("a"), Leave("b")),
        expect(name="a", frames=[["text", "registered chan-a"], ["text", "direct: yo"], OK_CLOSE],
               events=[CONNECT, ["receive", "text", "!register chan-a"],
                       ["event", "direct.message", "yo"], BYE])),
    Row("group-send-from-outside", "get_channel_layer().group_send from an HTTP app (as a "
        "view does) to the consumers of a group",
        (Open("a", "/ws/room/r3/"), Open("b", "/ws/room/r3/"),
         Get("p", "/gs/room.r3/room.message/from%20a%20view"), Read("a"), Read("b"),
         Leave("a"), Leave("b")),
        every(expect(name="a", frames=[["text", "room: from a view"], OK_CLOSE]),
              expect(name="b", frames=[["text", "room: from a view"], OK_CLOSE]),
              expect(200, name="p"))),
    Row("no-handler", "a layer event with no handler: dropped, with a log line",
        (Open("a", "/ws/room/r2/"), Send("a", text("!gs room.r2 no.such x")),
         Send("a", text("!ping")), Read("a"), Leave("a")),
        expect(frames=[["text", "pong"], OK_CLOSE]),
        daphne="1011: the consumer dies on 'No handler for message type no.such'"),
    Row("tutorial", "Channels' tutorial consumer as it is: a sync consumer calling "
        "async_to_sync(self.channel_layer.group_add) in connect(), so its handlers run in "
        "the thread pool by themselves (README \"Porting from Channels\"): two members "
        "chat through group_send",
        (Open("a", "/ws/tutorial/t1/"), Open("b", "/ws/tutorial/t1/"),
         Send("a", text('{"message": "hi"}')), Read("a"), Read("b"), Leave("a"), Leave("b")),
        every(expect(name="a", frames=[["text", '{"message": "hi"}'], OK_CLOSE]),
              expect(name="b", frames=[["text", '{"message": "hi"}'], OK_CLOSE],
                     events=[CONNECT, ["event", "chat.message", "hi"], BYE]))),
    Row("tutorial-threaded", "Channels' tutorial consumer with thread_handlers = True: "
        "two members chat through group_send",
        (Open("a", "/ws/threaded/t2/"), Open("b", "/ws/threaded/t2/"),
         Send("a", text('{"message": "hi"}')), Read("a"), Read("b"), Leave("a"), Leave("b")),
        every(expect(name="a", frames=[["text", '{"message": "hi"}'], OK_CLOSE]),
              expect(name="b", frames=[["text", '{"message": "hi"}'], OK_CLOSE],
                     events=[CONNECT, ["event", "chat.message", "hi"], BYE]))),
    # -- who is on the socket -------------------------------------------------------------------
    Row("auth-anonymous", "AuthMiddlewareStack without a session: an anonymous user",
        echo_then_leave("/ws/auth/", text("x")),
        expect(scope={"user": {"authenticated": False, "anonymous": True}, "session": []})),
    Row("auth-bad-cookie", "AuthMiddlewareStack with a forged session cookie: anonymous",
        echo_then_leave("/ws/auth/", text("x"), headers=("Cookie: sessionid=forged",)),
        expect(scope={"user": {"authenticated": False, "anonymous": True}, "session": []},
               headers={"set-cookie": ["sessionid=; Max-Age=0; Expires=Thu, 01 Jan 1970 "
                                       "00:00:00 GMT; Path=/; SameSite=Lax"]}),
        daphne="the same, without the 101's Set-Cookie that deletes the bad cookie (Daphne "
        "drops the handshake's headers)"),
    Row("allowed-hosts-origin", "AllowedHostsOriginValidator: an Origin in ALLOWED_HOSTS",
        echo_then_leave("/ws/hosts/", text("x"), headers=("Origin: http://allowed.example",)),
        expect(frames=[["text", "x"], OK_CLOSE])),
    Row("allowed-hosts-other", "AllowedHostsOriginValidator: another Origin: 403",
        script("/ws/hosts/", headers=("Origin: http://evil.example",)), expect(403),
        daphne=STATUS, seen=""),
    Row("allowed-hosts-none", "AllowedHostsOriginValidator: no Origin: 403",
        script("/ws/hosts/"), expect(403), daphne=STATUS, seen=""),
    Row("origin-exact", "OriginValidator: an allowed origin",
        echo_then_leave("/ws/origin/", text("x"), headers=("Origin: http://good.example",)),
        expect(frames=[["text", "x"], OK_CLOSE])),
    Row("origin-subdomain", "OriginValidator: a subdomain of '.trusted.example'",
        echo_then_leave("/ws/origin/", text("x"), headers=("Origin: https://a.trusted.example",)),
        expect(frames=[["text", "x"], OK_CLOSE])),
    Row("origin-scheme", "OriginValidator: the allowed host with another scheme: 403",
        script("/ws/origin/", headers=("Origin: https://good.example",)), expect(403),
        daphne=STATUS, seen=""),
    Row("origin-null", "OriginValidator: Origin null: 403",
        script("/ws/origin/", headers=("Origin: null",)), expect(403), daphne=STATUS, seen=""),
    # -- sends after the socket is gone --------------------------------------------------------
    Row("send-after-client-left", "send() in disconnect(), the client gone: raises "
        "ConnectionClosed", script("/ws/async/lastword/", Leave("a")),
        expect(frames=[OK_CLOSE], events=[CONNECT, BYE, ["send raised", "ConnectionClosed"]]),
        daphne="drops it without a word"),
    # -- malformed handshakes -------------------------------------------------------------------
    Row("version-8", "Sec-WebSocket-Version: 8 (a draft's): 426 naming 13",
        (Raw("a", upgrade(version=b"8")),),
        expect(426, headers={"sec-websocket-version": ["13"], "connection": ["close"]}),
        daphne="accepts it (Autobahn speaks the drafts' version 8 too)", seen=""),
    Row("http10-upgrade", "an upgrade over HTTP/1.0 (RFC 6455 4.1: 1.1 at least): 400",
        (Raw("a", upgrade(version_line=b"HTTP/1.0")),), expect(400),
        daphne="accepts it, answering HTTP/1.1", seen=""),
    Row("post-upgrade", "an upgrade with POST: 405", (Raw("a", upgrade(method=b"POST")),),
        expect(405, headers={"allow": ["GET"], "connection": ["close"]}), daphne=STATUS,
        seen=""),
    Row("no-key", "no Sec-WebSocket-Key: 400", (Raw("a", upgrade(key=None)),), expect(400),
        daphne=STATUS, seen=""),
    Row("short-key", "a Sec-WebSocket-Key that is not 16 bytes in base64: 400",
        (Raw("a", upgrade(key=b"abc")),), expect(400), daphne=STATUS, seen=""),
    Row("raw-utf8-query", "raw UTF-8 bytes in the query string (not ASCII): 400",
        (Raw("a", upgrade(target=b"/ws/async/accept/?q=\xc3\xa9")),), expect(400),
        daphne=STATUS, seen=""),
    Row("no-host", "an upgrade without Host: 400",
        (Raw("a", upgrade().replace(b"Host: 127.0.0.1\r\n", b"")),), expect(400),
        daphne=STATUS, seen=""),
    Row("connection-tokens", "Connection: keep-alive, Upgrade: an upgrade",
        (Raw("a", upgrade().replace(b"Connection: Upgrade", b"Connection: keep-alive, Upgrade")),
         Leave("a")),
        expect(frames=[OK_CLOSE]), seen=""),
    Row("upgrade-tokens", "Upgrade: websocket, foo: an upgrade (the header's tokens)",
        (Raw("a", upgrade().replace(b"Upgrade: websocket", b"Upgrade: websocket, foo")),
         Leave("a")),
        expect(frames=[OK_CLOSE]), seen="",
        daphne="serves it as plain HTTP (it wants the header to be 'websocket' alone)"),
    # -- Daphne-Root-Path ------------------------------------------------------------------------
    Row("root-path-trusted", "Daphne-Root-Path from a trusted proxy (--proxy-headers, "
        "--trusted-proxies, --root-path-header): the root_path, routing under it, the header "
        "left out",
        (Open("a", "/app/ws/async/accept/", ("Daphne-Root-Path: /app",), source=TRUSTED),
         Send("a", text("x")), Read("a"), Leave("a")),
        expect(frames=[["text", "x"], OK_CLOSE],
               scope={"root_path": "/app", "path": "/app/ws/async/accept/",
                      "client": TRUSTED, "url_route": {"args": [], "kwargs": {"mode": "accept"}},
                      "headers": [["host", "127.0.0.1"], ["upgrade", "websocket"],
                                  ["connection", "Upgrade"], ["sec-websocket-key", KEY.decode()],
                                  ["sec-websocket-version", "13"],
                                  ["x-row", "root-path-trusted.a"]]})),
    Row("root-path-untrusted", "Daphne-Root-Path from any other client: an ordinary header",
        echo_then_leave(A, text("x"), headers=("Daphne-Root-Path: /app",)),
        expect(frames=[["text", "x"], OK_CLOSE],
               scope={"root_path": "", "path": A, "headers": [
                   ["host", "127.0.0.1"], ["upgrade", "websocket"], ["connection", "Upgrade"],
                   ["sec-websocket-key", KEY.decode()], ["sec-websocket-version", "13"],
                   ["daphne-root-path", "/app"], ["x-row", "root-path-untrusted.a"]]}),
        daphne=TRUSTED_PROXY + " (here: 500, the path is not under it)"),
    Row("http-root-path-trusted", "HTTP: Daphne-Root-Path from a trusted proxy, "
        "percent-encoded", (Get("a", "/a%20b/http/x", ("Daphne-Root-Path: /a%20b",),
                                source=TRUSTED),),
        expect(200, eof=True, scope={"root_path": "/a b", "path": "/a b/http/x",
                                     "client": TRUSTED}), seen="now"),
    Row("http-root-path-untrusted", "HTTP: Daphne-Root-Path from any other client: an "
        "ordinary header", (Get("a", "/http/x", ("Daphne-Root-Path: /app",)),),
        expect(200, eof=True, scope={"root_path": "", "headers": [
            ["host", "127.0.0.1"], ["daphne-root-path", "/app"],
            ["x-row", "http-root-path-untrusted.a"], ["connection", "close"]]}),
        daphne=TRUSTED_PROXY, seen="now"),
    Row("root-path-not-a-path", "Daphne-Root-Path that is not a path, from a trusted proxy: "
        "400", (Open("a", A, ("Daphne-Root-Path: app",), source=TRUSTED),), expect(400),
        daphne="takes it as it is (and Channels' URLRouter then finds no route: 500)",
        seen=""),
    Row("root-path-outside", "Daphne-Root-Path from a trusted proxy that the path is not "
        "under: no route, 404 (the application never runs)",
        (Open("a", A, ("Daphne-Root-Path: /app",), source=TRUSTED),),
        every(expect(404), not_seen()), seen="now",
        daphne="500: Channels' URLRouter raises ValueError (the path must start with it)"),
    *(Row(f"root-path-{name}", f"Daphne-Root-Path from a trusted proxy, {what}: 400 (the "
          "application never runs)",
          (Open("a", "/x" + A, (f"Daphne-Root-Path: {value}",), source=TRUSTED),),
          every(expect(400), not_seen()), seen="now", daphne="takes it, decoded, as it is")
      for name, what, value in [
          ("nul", "a NUL once decoded", "/x%00"),
          ("crlf", "CR LF once decoded", "/x%0D%0AX-Injected:%201"),
          ("protocol-relative", "'//host' once decoded (Django's reverse() would write "
           "links to another site)", "/%2F%2Fevil.example"),
          ("backslash", "'/\\host' (a browser's '//host')", "/%5Cevil.example"),
          ("dot-segment", "a '..' segment", "/x/%2E%2E"),
      ]),
    Row("http-root-path-protocol-relative", "HTTP: Daphne-Root-Path from a trusted proxy, "
        "'//host': 400 (the application never runs)",
        (Get("a", "//evil.example/http/x", ("Daphne-Root-Path: //evil.example",),
             source=TRUSTED),),
        every(expect(400, eof=True), not_seen()), seen="now",
        daphne="takes it as it is"),
]


def _served(answer: Answer, row: Row, server: str) -> None:
    """Every socket the server upgraded left a record of the application that served it:
    two answers without one (an application that never ran) compare equal, and must not
    pass a row."""
    for step in row.steps:
        if isinstance(step, Open | Raw) and answer.sides[step.name].status == 101:
            assert answer.seen.get(step.name) is not None, (
                f"{server}: {row.id}.{step.name} was upgraded, but no application saw it")


@pytest.mark.parametrize("row", TABLE, ids=[row.id for row in TABLE])
def test_row(ports: dict[str, int], row: Row) -> None:
    if row.daphne in COMPARED:
        # (Not what Daphne's application saw when it is not compared: where it died with
        # an exception, no disconnect ever comes to wait for.)
        theirs_seen = row.daphne not in (STATUS, WIRE)
        ours, theirs = both(lambda: play(ports["realtime"], row),  # Daphne's slow rows wait once
                            lambda: play(ports["daphne"], row, theirs_seen))
        if row.seen and theirs_seen:
            _served(theirs, row, "daphne")
        mine, yours = _normal(ours, row.daphne), _normal(theirs, row.daphne)
        if mine != yours:
            pytest.fail("\n".join([row.what, *_differences(mine, yours)]), pytrace=False)
    else:
        ours = play(ports["realtime"], row)
    if row.seen:
        _served(ours, row, "realtime")
    row.check(ours)


def test_the_table_names_each_row_once() -> None:
    names = [row.id for row in TABLE]
    assert len(names) == len(set(names))
    assert all("." not in name and "/" not in name for name in names)
    # A row not compared says in words what Daphne does (not a mode's name mistyped).
    assert all(row.daphne in COMPARED or " " in row.daphne for row in TABLE)
