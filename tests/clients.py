"""Real clients for tests against a live in-process server.

- ``raw_exchange``: write raw bytes over TCP, collect what comes back (hostile input,
  refusals, frames sent by hand).
- ``in_thread``: run a blocking ``websockets.sync`` client in a worker thread while the
  reactor serves (the reactor runs the test's thread).
- ``ws_open``: a raw WebSocket client (handshake written by hand, frames read as bytes).
- ``handshake``/``client_frame``/``parse_frames``/``parse_response``/``http_request``:
  wire-format helpers.
- ``Recorder``: events recorded by server-side code, with bounded waits on them;
  ``captured_log``: the Twisted log events emitted inside a ``with`` block.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

T = TypeVar("T")


def in_thread(fn: Callable[..., T], *args: Any) -> Deferred[T]:
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThreadPool

    return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)


class _Collector(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.done: Deferred[bytes] = Deferred()
        self.watch: tuple[Callable[[bytes], bool], Deferred[bytes]] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.watch is not None and self.watch[0](bytes(self.data)):
            _, d = self.watch
            self.watch = None
            d.callback(bytes(self.data))

    def connectionLost(self, reason: Failure) -> None:
        if self.watch is not None:
            _, d = self.watch
            self.watch = None
            d.callback(bytes(self.data))
        self.done.callback(bytes(self.data))


class RawConnection:
    """A TCP connection that writes bytes and waits for conditions on what it reads."""

    def __init__(self, proto: _Collector) -> None:
        self.proto = proto

    @property
    def data(self) -> bytes:
        return bytes(self.proto.data)

    def write(self, data: bytes) -> None:
        self.proto.transport.write(data)  # type: ignore[union-attr]

    def wait_for(self, condition: Callable[[bytes], bool], timeout: float = 5.0) -> Deferred[bytes]:
        """Fires with everything read once ``condition(data)`` holds, or the connection is
        lost, or ``timeout`` passes (then with what was read so far)."""
        from twisted.internet import reactor

        if condition(self.data) or self.proto.done.called:
            return Deferred.fromCoroutine(_value(self.data))
        d: Deferred[bytes] = Deferred()
        self.proto.watch = (condition, d)
        timer = reactor.callLater(timeout, self._expire, d)
        d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return d

    def _expire(self, d: Deferred[bytes]) -> None:
        if not d.called:
            self.proto.watch = None
            d.callback(self.data)

    def closed(self, timeout: float = 5.0) -> Deferred[bytes]:
        """Fires with everything read when the server closes, or after ``timeout`` (then the
        connection is aborted first)."""
        from twisted.internet import reactor

        d = self.proto.done
        if d.called:
            return Deferred.fromCoroutine(_value(self.data))
        timer = reactor.callLater(timeout, self.abort)
        result: Deferred[bytes] = Deferred()

        def fire(data: bytes) -> bytes:
            if timer.active():
                timer.cancel()
            result.callback(data)
            return data

        d.addCallback(fire)
        return result

    def abort(self) -> None:
        if self.proto.transport is not None:
            self.proto.transport.abortConnection()  # type: ignore[attr-defined]

    @property
    def is_closed(self) -> bool:
        return self.proto.done.called

    # -- as a WebSocket client (after ``ws_open``) ------------------------------------------
    def response(self) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        return parse_response(self.data)

    def frames(self) -> list[tuple[int, bytes]]:
        """The complete server frames read so far (after the 101 response)."""
        return parse_frames(after_headers(self.data))

    def stop_reading(self) -> None:
        """A client that stops reading, with a small receive buffer: what the server writes
        to it backs up soon (the slow-consumer policy's case)."""
        self.proto.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.proto.transport.pauseProducing()

    def resume_reading(self) -> None:
        """The client reads again, with a large receive buffer and window: what backed up
        comes at loopback speed (Linux keeps the 4 KiB window's clamp, far below loopback's
        64 KiB segment, and the rest trickles in 8 KiB a window probe, every 200 ms)."""
        sock = self.proto.transport.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, 1 << 20)
        self.proto.transport.resumeProducing()

    def send_frame(self, opcode: int, payload: bytes = b"", **kwargs: Any) -> None:
        self.write(client_frame(opcode, payload, **kwargs))

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode("utf-8"))

    def send_close(self, code: int = 1000) -> None:
        self.send_frame(0x8, struct.pack("!H", code))

    async def wait_frames(
        self, condition: Callable[[list[tuple[int, bytes]]], bool] | int, timeout: float = 5.0
    ) -> list[tuple[int, bytes]]:
        """Wait (bounded) until ``condition(frames)`` holds (an int: that many frames), or
        the connection is lost; returns the frames read."""
        if isinstance(condition, int):
            count = condition

            def condition(frames: list[tuple[int, bytes]]) -> bool:
                return len(frames) >= count

        check = condition
        data = await self.wait_for(lambda d: check(parse_frames(after_headers(d))), timeout)
        return parse_frames(after_headers(data))

    async def wait_close_frame(self, timeout: float = 5.0) -> tuple[int | None, bytes] | None:
        """(code, reason) of the server's close frame, or None if none came in time."""
        frames = await self.wait_frames(lambda fs: any(op == 0x8 for op, _ in fs), timeout)
        for opcode, payload in frames:
            if opcode == 0x8:
                return close_code(payload), payload[2:]
        return None


async def closed_by_server(conn: RawConnection, timeout: float) -> bool:
    """Wait (bounded) for the server to close; True if it did (the client aborts if not)."""
    from twisted.internet import reactor

    if conn.is_closed:
        return True
    waiter: Deferred[bool] = Deferred()

    def fire(result: Any) -> Any:
        if not waiter.called:
            waiter.callback(True)
        return result

    conn.proto.done.addBoth(fire)
    timer = reactor.callLater(timeout, lambda: waiter.called or waiter.callback(False))
    by_server = await waiter
    if timer.active():
        timer.cancel()
    if not by_server:
        conn.abort()
        await conn.closed(1)
    return by_server


def later(delay: float) -> Deferred[None]:
    """A Deferred that fires after ``delay`` seconds on the reactor."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, delay, lambda: None)


async def until(condition: Callable[[], Any], timeout: float = 2.0) -> bool:
    """Wait (bounded: polls every 20 ms on the reactor) until ``condition()`` is true;
    whether it became true."""
    for _ in range(max(1, round(timeout / 0.02))):
        if condition():
            return True
        await later(0.02)
    return bool(condition())


def http_get(url: str, data: bytes | None = None, method: str | None = None,
             headers: dict[str, str] | None = None,
             ) -> tuple[int, dict[str, list[str]], bytes]:
    """A blocking request with urllib (run it with ``in_thread``): the status, the headers
    (lower-case names, every value) and the body; an error status is an answer too."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, message, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, message, body = exc.code, exc.headers, exc.read()
    out: dict[str, list[str]] = {}
    for name, value in message.items():
        out.setdefault(name.lower(), []).append(value)
    return status, out, body


async def _value(v: T) -> T:
    return v


async def raw_connect(port: int, host: str = "127.0.0.1") -> RawConnection:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    proto = _Collector()
    await connectProtocol(TCP4ClientEndpoint(reactor, host, port), proto)
    return RawConnection(proto)


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``, return everything read until the server closes (or ``timeout``)."""
    conn = await raw_connect(port)
    conn.write(data)
    return await conn.closed(timeout)


async def ws_open(
    port: int, path: str = "/echo", *, extra: list[tuple[bytes, bytes]] | None = None,
    timeout: float = 5.0,
) -> RawConnection:
    """Connect, write a handshake for ``path`` and wait (bounded) for the response's head.
    Check ``conn.response()`` for the status."""
    conn = await raw_connect(port)
    conn.write(handshake(path, extra=extra))
    await conn.wait_for(lambda d: b"\r\n\r\n" in d, timeout)
    return conn


def http_request(
    path: str = "/", *, method: bytes = b"GET", host: str = "127.0.0.1",
    headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"", close: bool = True,
) -> bytes:
    """A plain HTTP/1.1 request as bytes (``Connection: close`` unless ``close=False``)."""
    lines = [method + b" " + path.encode() + b" HTTP/1.1", b"Host: " + host.encode()]
    if close:
        lines.append(b"Connection: close")
    if body:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    for name, value in headers or ():
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def dechunk(body: bytes) -> bytes:
    """The payload of a complete ``Transfer-Encoding: chunked`` body."""
    from realtime.testing import decode_chunked

    return decode_chunked(body)


class Recorder:
    """Events recorded by server-side code (from any thread), with bounded waits."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._watch: list[tuple[Callable[[list[Any]], bool], Deferred[list[Any]]]] = []

    def add(self, event: Any) -> None:
        from twisted.python import threadable

        if threadable.isInIOThread():
            self._add(event)
        else:
            from twisted.internet import reactor

            reactor.callFromThread(self._add, event)

    def _add(self, event: Any) -> None:
        self.events.append(event)
        for watch in list(self._watch):
            condition, d = watch
            if condition(self.events) and not d.called:
                self._watch.remove(watch)
                d.callback(list(self.events))

    def wait(
        self, condition: Callable[[list[Any]], bool] | int = 1, timeout: float = 5.0
    ) -> Deferred[list[Any]]:
        """Fires with the events once ``condition(events)`` holds (an int: that many events),
        or after ``timeout`` with the events so far."""
        from twisted.internet import reactor

        if isinstance(condition, int):
            count = condition

            def condition(events: list[Any]) -> bool:
                return len(events) >= count

        if condition(self.events):
            return Deferred.fromCoroutine(_value(list(self.events)))
        d: Deferred[list[Any]] = Deferred()
        watch = (condition, d)
        self._watch.append(watch)

        def expire() -> None:
            if not d.called:
                self._watch.remove(watch)
                d.callback(list(self.events))

        timer = reactor.callLater(timeout, expire)
        d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return d


@contextmanager
def captured_log() -> Iterator[list[dict[str, Any]]]:
    """The Twisted log events emitted inside the block (``log_failure`` for failures)."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def handshake(
    path: str = "/echo",
    *,
    host: str = "127.0.0.1",
    key: bytes | None = None,
    version: bytes = b"13",
    extra: list[tuple[bytes, bytes]] | None = None,
    method: bytes = b"GET",
) -> bytes:
    """A WebSocket opening handshake request as bytes."""
    key = key if key is not None else base64.b64encode(os.urandom(16))
    lines = [
        method + b" " + path.encode() + b" HTTP/1.1",
        b"Host: " + host.encode(),
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + key,
        b"Sec-WebSocket-Version: " + version,
    ]
    for name, value in extra or ():
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def parse_response(raw: bytes) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    """(status, lower-cased headers, body) of the first HTTP response in ``raw``."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, body


def client_frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One client frame (masked unless ``mask=False``); ``length`` overrides the length
    field (for lying frames)."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + masked


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Server frames in ``data`` as (opcode, payload); stops at an incomplete frame."""
    return [(opcode, payload) for _, opcode, payload in parse_frames_rsv(data)]


def parse_frames_rsv(data: bytes) -> list[tuple[int, int, bytes]]:
    """Server frames in ``data`` as (RSV bits, opcode, payload): RSV 4 is a compressed
    message's first frame (permessage-deflate)."""
    frames: list[tuple[int, int, bytes]] = []
    i = 0
    while i + 2 <= len(data):
        rsv = (data[i] >> 4) & 0x7
        opcode = data[i] & 0x0F
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            if i + 2 > len(data):
                break
            n = struct.unpack("!H", data[i : i + 2])[0]
            i += 2
        elif n == 127:
            if i + 8 > len(data):
                break
            n = struct.unpack("!Q", data[i : i + 8])[0]
            i += 8
        if i + n > len(data):
            break
        frames.append((rsv, opcode, data[i : i + n]))
        i += n
    return frames


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def after_headers(raw: bytes) -> bytes:
    """What follows the 101 response's blank line (the frames)."""
    return raw.partition(b"\r\n\r\n")[2]


class _Marker:
    """A local of the frame that fires a Deferred: alive only while that frame is kept."""


def fire_from_a_frame(d: Any) -> Any:
    """``d.callback(None)`` from a frame with a local of its own; a weak reference to that
    local, dead once nothing keeps the frame (a traceback of what the callback resumed)."""
    import weakref

    marker = _Marker()
    d.callback(None)  # the waiting coroutine steps (and raises) inside this call
    return weakref.ref(marker)


def traceback_names(exc: BaseException) -> list[str]:
    """The names of the functions in ``exc``'s traceback, outermost first."""
    names = []
    tb = exc.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


def rss_kb() -> int:
    """This process's resident memory (``VmRSS``), in KiB: the hostile suites' bound on
    what a module's floods leave behind."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def dribbling(clients: list[Any], data: bytes, every: float = 0.05) -> Any:
    """Slowloris: each of ``clients`` is sent ``data`` a byte every ``every`` seconds, all
    but its last byte (the request never completes); the started ``LoopingCall`` (stop it
    in a ``finally``)."""
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    position = [0]

    def dribble() -> None:
        i = position[0]
        position[0] += 1
        for client in clients:
            if not client.is_closed and i < len(data) - 1:
                client.write(data[i : i + 1])

    loop = LoopingCall(dribble)
    loop.clock = reactor
    loop.start(every)
    return loop


def split_response(data: bytes) -> tuple[int, dict[bytes, list[bytes]], bytes] | None:
    """(status, headers, body) once a whole response is in ``data`` (by Content-Length; a
    101 has no body), else None."""
    if b"\r\n\r\n" not in data:
        return None
    status, headers, rest = parse_response(data)
    if status == 101:
        return status, headers, b""
    length = int(headers.get(b"content-length", [b"0"])[0])
    if len(rest) < length:
        return None
    return status, headers, rest[:length]


async def wait_close_handshake(conn: Any) -> int | None:
    """The code of the server's close frame (None: none within 5 s); answers it, like a
    well-behaved client."""
    got = await conn.wait_close_frame(timeout=5)
    if got is None:
        return None
    if not conn.is_closed:
        conn.send_close(1000)
    return got[0]
