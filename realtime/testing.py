"""Testing toolkit: live servers on port 0 (and, below, in-memory communicators).

``serve(app)`` starts the real server (the same ``RealtimeSite`` twistd runs) on a free
loopback port and returns a ``LiveServer`` with its ``ws://`` and ``http://`` base URLs;
``await server.stop()`` closes every connection and the port, so nothing leaks into the
next test.
"""

from __future__ import annotations

import base64 as _base64
import json as _json
import os as _os
import struct as _struct
from collections import deque as _deque
from collections.abc import Iterable as _Iterable
from typing import Any

from twisted.internet.address import IPv4Address as _IPv4Address
from twisted.internet.defer import CancelledError as _CancelledError
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone as _ConnectionDone
from twisted.internet.error import ConnectionLost as _ConnectionLost
from twisted.internet.interfaces import IPushProducer as _IPushProducer
from twisted.internet.interfaces import ITCPTransport as _ITCPTransport
from twisted.python.failure import Failure as _Failure
from zope.interface import implementer as _implementer

from realtime.config import ServerConfig
from realtime.middleware import BaseMiddleware as _BaseMiddleware
from realtime.threads import as_deferred as _as_deferred


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class LiveServer:
    """A running server: ``host``, ``port``, ``site``, ``ws_url(path)``, ``http_url(path)``."""

    #: The process's broadcast delay and its reactor before this server set its own
    #: (restored by ``stop``).
    _delay_before: tuple[float, Any] | None = None
    #: The application's ASGI lifespans (``realtime.lifespan``): started by ``serve``, shut
    #: down by ``stop``.
    lifespan: Any = None

    def __init__(self, site: Any, port: Any, tls: bool = False) -> None:
        self.site = site
        self.listening_port = port
        address = port.getHost()
        self.host: str = address.host
        self.port: int = address.port
        #: Whether the listener speaks TLS (``wss://`` and ``https://`` URLs).
        self.tls = tls

    def ws_url(self, path: str = "/") -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}{path}"

    def http_url(self, path: str = "/") -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}{path}"

    #: Callers waiting for the stop in progress (a fixture's teardown and the test itself).
    _stopping: list[Deferred[None]] | None = None

    def stop(self) -> Deferred[None]:
        """Stop listening, drop every connection; fires when they are gone and the lifespan
        has shut down. A call while a stop runs waits for it and gets its outcome (its
        failure too); cancelling one caller's Deferred leaves the stop running for the
        others. A call after a failed stop does what is left; after a stop, nothing."""
        mine: Deferred[None] = Deferred()
        if self._stopping is not None:
            self._stopping.append(mine)
            return mine
        self._stopping = [mine]
        Deferred.fromCoroutine(self._stop()).addBoth(self._stopped)
        return mine

    def _stopped(self, result: Any) -> None:
        waiters, self._stopping = self._stopping or [], None
        for waiter in waiters:
            if waiter.called:  # cancelled by its caller
                continue
            if isinstance(result, _Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    async def _stop(self) -> None:
        try:
            await self._stop_site()
            if self.lifespan is not None:
                await self.lifespan.shutdown()  # once: it forgets the apps it shut down
        finally:
            if self._delay_before is not None:
                from realtime.layers.base import set_broadcast_delay

                set_broadcast_delay(*self._delay_before)
                self._delay_before = None

    async def _stop_site(self) -> None:
        """Each step again on a second call (nothing left to do after a complete stop; what
        a failed one left undone otherwise)."""
        site = self.site
        port, self.listening_port = self.listening_port, None
        if port is not None:
            await port.stopListening()
        site.draining = True
        # What outlives its requests (a Socket.IO polling session) ends too: a production
        # drain ends it (server_draining); here its ``server_stopping()`` does, and the
        # stop waits for it.
        ending = [stop() for listener in list(getattr(site, "drain_listeners", ()))
                  if (stop := getattr(listener, "server_stopping", None)) is not None]
        if site.connections:
            gone = site.websockets_gone()
            site.abort_all()
            await gone
        channels = list(site.open_channels)
        site.abort_http()
        waits = [ch.lost for ch in channels if not ch.lost.called]
        for wait in waits:
            await wait
        for end in ending:
            if end is not None:
                await end


async def serve(
    application: Any,
    config: ServerConfig | None = None,
    reactor: Any = None,
    interface: str = "127.0.0.1",
    layer: Any = None,
    tls: Any = None,
) -> LiveServer:
    """Start ``application`` on a free port of ``interface``; returns a ``LiveServer``.
    Its consumers use ``layer`` (default: ``get_channel_layer()``). With ``tls`` (a
    ``twisted.internet.ssl.CertificateOptions``, e.g. ``PrivateCertificate.options()``) the
    port speaks TLS and offers HTTP/2 as an ``ssl:`` listener does. The raw ASGI apps in
    ``application`` get their lifespan start-up before it listens (``config.lifespan``; a
    failed start-up raises ``realtime.lifespan.LifespanError``) and their shut-down in
    ``stop()``."""
    from realtime.lifespan import Lifespans
    from realtime.site import RealtimeSite

    reactor = reactor or _default_reactor()
    config = config or ServerConfig()
    lifespan = Lifespans(application, config.lifespan, reactor, config.shutdown_timeout)
    if lifespan:
        await lifespan.startup()
    site = RealtimeSite(application, config, reactor, layer)
    if tls is None:
        port = reactor.listenTCP(0, site, interface=interface)
    else:
        port = reactor.listenSSL(0, site, tls, interface=interface)
    server = LiveServer(site, port, tls=tls is not None)
    server.lifespan = lifespan if lifespan else None
    if site.config.broadcast_delay:  # process-wide (as under twistd), until stop()
        from realtime.layers.base import _Hold, set_broadcast_delay

        server._delay_before = (_Hold.delay, _Hold.delay_reactor)
        set_broadcast_delay(site.config.broadcast_delay, reactor)
    return server


class LifespanManager:
    """``async with LifespanManager(application):`` (asgi-lifespan's name) runs the ASGI
    lifespan start-up of the raw ASGI apps in ``application`` (``realtime.lifespan``) and,
    on the way out, their shut-down: for the in-memory communicators, which (as Channels'
    do) send none. ``serve`` runs it by itself. A failed start-up raises
    ``realtime.lifespan.LifespanError``."""

    def __init__(self, application: Any, mode: str = "auto", reactor: Any = None,
                 timeout: float = 10.0) -> None:
        from realtime.lifespan import Lifespans

        self.lifespans = Lifespans(application, mode, reactor or _default_reactor(), timeout)

    async def __aenter__(self) -> LifespanManager:
        await self.lifespans.startup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.lifespans.shutdown()


# -- in memory --------------------------------------------------------------------------------
#
# The communicators run the application through the server's own code path: a real
# ``RealtimeSite``, its ``RealtimeChannel`` and the ``WebSocketConnection`` bridge, over a pair
# of in-memory transports. Bytes are delivered synchronously but never re-entrantly: every
# in-memory connection shares one wire, so a write made while any delivery runs (a server's
# answer, or a test's send from a callback on a frame it just received) is queued and
# delivered right after, in order, and a test needs no reactor turns to see an answer. So a
# test's answer to a frame of a read's broadcasts is parsed after that read, as with sockets.
# A write the server makes outside any delivery (a timer's, a test's own ``broadcast()``)
# starts the delivering itself, so an answer sent from a callback on it is parsed before
# that write's fan-out has reached every member: every frame still arrives exactly once,
# but the other members may see the answer first. The server's timers run on ``clock``
# when one is given.



class _Wire:
    """Delivers queued writes between transports, one at a time, in order (``_WIRE``: one
    for the process)."""

    def __init__(self) -> None:
        self.queue: _deque[tuple[_MemoryTransport, bytes | None]] = _deque()
        self.flushing = False

    def push(self, target: _MemoryTransport, data: bytes | None) -> None:
        """Queue ``data`` for ``target``; the outermost push delivers the queue. A delivery
        that raises (a test's callback, a patched protocol) does not strand the others':
        the rest are delivered, then the first error is raised to that push's caller."""
        self.queue.append((target, data))
        if self.flushing:
            return
        self.flushing = True
        error: BaseException | None = None
        try:
            while self.queue:
                transport, chunk = self.queue.popleft()
                try:
                    transport._deliver(chunk)
                except Exception as exc:
                    if error is None:
                        error = exc
        finally:
            self.flushing = False
        if error is not None:
            raise error


@_implementer(_ITCPTransport, _IPushProducer)
class _MemoryTransport:
    """One end of an in-memory TCP connection (enough of ITCPTransport for the server)."""

    disconnecting = False
    #: Broadcasts held during a read leave when it ends, not at the reactor turn's end: the
    #: other communicators have them when ``send_to`` returns.
    holds_per_read = True

    def __init__(self, wire: _Wire, host: Any, peer: Any) -> None:
        self.wire = wire
        self.host = host
        self.peer_address = peer
        self.other: _MemoryTransport | None = None
        self.protocol: Any = None
        self.paused = False
        self.lost = False
        self._inbox: list[bytes] = []
        self.producer: Any = None

    # ITransport
    def write(self, data: bytes) -> None:
        if self.lost or self.disconnecting or self.other is None:
            return
        if data:
            self.wire.push(self.other, bytes(data))

    def writeSequence(self, seq: _Iterable[bytes]) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        if self.lost or self.disconnecting:
            return
        self.disconnecting = True
        self.wire.push(self, None)
        if self.other is not None:
            self.wire.push(self.other, None)

    def abortConnection(self) -> None:
        self.loseConnection()

    def getPeer(self) -> Any:
        return self.peer_address

    def getHost(self) -> Any:
        return self.host

    # ITCPTransport odds and ends
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpNoDelay(self) -> bool:
        return True

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def loseWriteConnection(self) -> None:
        self.loseConnection()

    # IConsumer / IPushProducer
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if not self.paused:
            return
        self.paused = False
        inbox, self._inbox = self._inbox, []
        for data in inbox:
            self.wire.push(self, data)

    def stopProducing(self) -> None:
        self.loseConnection()

    # delivery
    def _deliver(self, data: bytes | None) -> None:
        if self.lost:
            return
        if data is None:
            self.lost = True
            reason = _ConnectionDone() if self.disconnecting else _ConnectionLost()
            self.protocol.connectionLost(_Failure(reason))
            return
        if self.paused:
            self._inbox.append(data)
            return
        self.protocol.dataReceived(data)


_WIRE = _Wire()


def _memory_pair(server_protocol: Any, client_protocol: Any) -> tuple[Any, Any]:
    wire = _WIRE
    server_addr = _IPv4Address("TCP", "127.0.0.1", 8000)
    client_addr = _IPv4Address("TCP", "127.0.0.1", 50000)
    server_t = _MemoryTransport(wire, server_addr, client_addr)
    client_t = _MemoryTransport(wire, client_addr, server_addr)
    server_t.other, client_t.other = client_t, server_t
    server_t.protocol, client_t.protocol = server_protocol, client_protocol
    server_protocol.makeConnection(server_t)
    client_protocol.makeConnection(client_t)
    return server_t, client_t


def _mask(payload: bytes) -> bytes:
    key = _os.urandom(4)
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return key + masked


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A masked client frame (what a browser sends)."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        header = _struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        header = _struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = _struct.pack("!BBQ", first, 0x80 | 127, n)
    return header + _mask(payload)


def parse_response_head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return status, headers


def decode_chunked(body: bytes) -> bytes:
    # By offset: slicing off the rest at each chunk made a large body quadratic.
    out = bytearray()
    at, end = 0, len(body)
    while at < end:
        line_end = body.find(b"\r\n", at)
        data_at = end if line_end < 0 else line_end + 2
        line = body[at : end if line_end < 0 else line_end]
        digits = line.split(b";")[0].rstrip(b" \t")
        # Hex digits only: int() also takes a sign ("-6" would step back and loop for
        # ever), "_" and spaces, none of which a chunk size may hold.
        if not digits or digits.strip(b"0123456789abcdefABCDEF"):
            raise ValueError(f"bad chunk size line: {line!r}")
        size = int(digits, 16)
        if size == 0:
            break
        out += body[data_at : data_at + size]
        at = data_at + size + 2
    return bytes(out)


class _ClientProtocol:
    """The communicator's end: parses the response head, then server frames."""

    def __init__(self, owner: WebsocketCommunicator) -> None:
        self.owner = owner
        self.buffer = b""
        self.head_done = False
        self.transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.head_done:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.head_done = True
            self.buffer = rest
            status, headers = parse_response_head(head)
            self.owner._response(status, headers)
            if status != 101:
                return
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            n = buf[1] & 0x7F
            i = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n = _struct.unpack("!H", buf[2:4])[0]
                i = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n = _struct.unpack("!Q", buf[2:10])[0]
                i = 10
            if len(buf) < i + n:
                break
            payload = buf[i : i + n]
            buf = buf[i + n :]
            self.buffer = buf
            self.owner._frame(opcode, payload)
            buf = self.buffer
        self.buffer = buf

    def connectionLost(self, reason: Any) -> None:
        self.owner._lost()


def _real_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _with_timeout(d: Deferred[Any], timeout: float | None, what: str) -> Deferred[Any]:
    """Fail ``d`` with ``TimeoutError`` after ``timeout`` real seconds (None: no limit)."""
    if d.called or timeout is None:
        return d
    reactor = _real_reactor()
    result: Deferred[Any] = Deferred()

    def expire() -> None:
        if not result.called:
            result.errback(TimeoutError(f"{what}: nothing within {timeout} s"))

    timer = reactor.callLater(timeout, expire)

    def done(value: Any) -> Any:
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(value)
        return None

    d.addBoth(done)
    return result


async def _nothing_within(items: _deque[Any], waiters: list[Deferred[None]],
                          timeout: float) -> bool:
    """True when ``items`` (a communicator's received messages or outputs) stays empty
    for ``timeout`` real seconds; an arrival (which fires ``waiters``) ends the wait."""
    if not items:
        waiter: Deferred[None] = Deferred()
        waiters.append(waiter)
        try:
            await _with_timeout(waiter, timeout, "receive_nothing()")
        except TimeoutError:
            pass
    return not items


def _host(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The default ``Host`` line, unless the test gives its own (``AllowedHostsOriginValidator``
    tests do): one Host header, never two (a 400)."""
    return [] if any(name == b"host" for name, _ in headers) else [b"Host: testserver"]


def _headers(headers: Any) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in headers or ():
        out.append((name.encode("latin-1") if isinstance(name, str) else name,
                    value.encode("latin-1") if isinstance(value, str) else value))
    return out


class _ScopeOverrides(_BaseMiddleware):
    """The communicator's ``scope`` keys laid over the scope the server builds, before the
    application (its middleware included) sees it."""

    def __init__(self, inner: Any, overrides: dict[str, Any]) -> None:
        super().__init__(inner)
        self.overrides = overrides

    def populate_scope(self, scope: Any) -> None:
        scope.update(self.overrides)


class _Communicator:
    def __init__(self, application: Any, clock: Any, config: ServerConfig | None) -> None:
        from realtime.site import RealtimeSite

        self.clock = clock
        #: Keys to set in the connection's scope (Channels' ``comm.scope["user"] = user``);
        #: the rest of the scope is built by the server from the request, as in production.
        self.scope: dict[str, Any] = {}
        reactor = clock if clock is not None else _real_reactor()
        self.site = RealtimeSite(
            _ScopeOverrides(application, self.scope), config or ServerConfig(), reactor
        )

    def _connect_transport(self, client: Any) -> tuple[Any, Any]:
        channel = self.site.buildProtocol(None)
        return _memory_pair(channel, client)


class WebsocketCommunicator(_Communicator):
    """Drive one WebSocket of ``application`` in memory, as Channels' communicator does.

    ``connect()`` gives ``(True, subprotocol)`` or ``(False, status)``; every method
    returns a Deferred (awaitable). With ``clock=Clock()``, keepalive, lifetime and the
    connect deadline run when the test calls ``clock.advance``. Set ``answer_pings = False``
    to play a client that has gone silent.
    """

    def __init__(
        self,
        application: Any,
        path: str,
        headers: Any = None,
        subprotocols: list[str] | None = None,
        clock: Any = None,
        config: ServerConfig | None = None,
    ) -> None:
        super().__init__(application, clock, config)
        self.path = path
        self.headers = _headers(headers)
        self.subprotocols = list(subprotocols or ())
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.status: int | None = None
        self.subprotocol: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.answer_pings = True
        self.pings_received = 0
        self.connected = False
        self.closed = False
        self._messages: _deque[str | bytes] = _deque()
        self._waiters: list[Deferred[None]] = []
        self._opened: Deferred[tuple[bool, Any]] = Deferred()
        self._gone: Deferred[None] = Deferred()
        self._client = _ClientProtocol(self)
        self._transport: Any = None

    # events from the client protocol
    def _response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.response_headers = headers
        if status == 101:
            self.connected = True
            for name, value in headers:
                if name == b"sec-websocket-protocol":
                    self.subprotocol = value.decode("latin-1")
            self._opened.callback((True, self.subprotocol))
        else:
            self._opened.callback((False, status))

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x1:
            self._messages.append(payload.decode("utf-8"))
        elif opcode == 0x2:
            self._messages.append(payload)
        elif opcode == 0x9:
            self.pings_received += 1
            if self.answer_pings:
                self._transport.write(client_frame(0xA, payload))
            return
        elif opcode == 0x8:
            if self.close_code is None:
                self.close_code = (
                    _struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                )
                self.close_reason = payload[2:].decode("utf-8", "replace")
                if not self.closed:
                    self.closed = True
                    self._transport.write(client_frame(0x8, payload[:2]))
            self._wake()
            return
        else:
            return
        self._wake()

    def _lost(self) -> None:
        self.closed = True
        if not self._opened.called:
            self._opened.callback((False, self.status or 1006))
        if self.close_code is None:
            self.close_code = 1006
        if not self._gone.called:
            self._gone.callback(None)
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    # the API
    def connect(self, timeout: float | None = 1) -> Deferred[tuple[bool, Any]]:
        """Open the connection; fires with ``(True, subprotocol)`` or ``(False, status)``."""
        self._server_t, self._transport = self._connect_transport(self._client)
        key = _base64.b64encode(_os.urandom(16))
        lines = [
            f"GET {self.path} HTTP/1.1".encode("latin-1"),
            *_host(self.headers),
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Key: " + key,
            b"Sec-WebSocket-Version: 13",
        ]
        if self.subprotocols:
            lines.append(b"Sec-WebSocket-Protocol: " + ", ".join(self.subprotocols).encode())
        for name, value in self.headers:
            lines.append(name + b": " + value)
        self._transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
        return _with_timeout(self._opened, timeout, "connect()")

    def send_to(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> Deferred[None]:
        if not self.connected:
            raise AssertionError("send_to() before a successful connect()")
        if text_data is not None:
            self._transport.write(client_frame(0x1, text_data.encode("utf-8")))
        elif bytes_data is not None:
            self._transport.write(client_frame(0x2, bytes_data))
        else:
            raise ValueError("send_to() needs text_data or bytes_data")
        return _done()

    def send_json_to(self, data: Any) -> Deferred[None]:
        return self.send_to(text_data=_json.dumps(data))

    def receive_from(self, timeout: float = 1) -> Deferred[str | bytes]:
        """The next message the server sent; if the server closed instead, the exception a
        consumer handler raised (as Channels' communicator re-raises the application's),
        else ``AssertionError``; ``TimeoutError`` after ``timeout`` real seconds."""
        return Deferred.fromCoroutine(self._receive(timeout))

    async def _receive(self, timeout: float) -> str | bytes:
        while not self._messages:
            if self.closed or self.close_code is not None:
                error = getattr(self._connection(), "handler_error", None)
                if error is not None:
                    raise error
                raise AssertionError(
                    f"expected a message, but the server closed with {self.close_code}"
                )
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            await _with_timeout(waiter, timeout, "receive_from()")
        return self._messages.popleft()

    def receive_json_from(self, timeout: float = 1) -> Deferred[Any]:
        async def get() -> Any:
            message = await self._receive(timeout)
            if not isinstance(message, str):
                raise AssertionError(f"expected a JSON text frame, got {message!r}")
            return _json.loads(message)

        return Deferred.fromCoroutine(get())

    def receive_nothing(self, timeout: float = 0.1, interval: float = 0.01) -> Deferred[bool]:
        """True when no message arrives within ``timeout`` real seconds. ``interval`` is
        Channels' polling step, accepted and unused: an arrival ends the wait at once."""

        return Deferred.fromCoroutine(_nothing_within(self._messages, self._waiters, timeout))

    def disconnect(self, code: int = 1000, timeout: float = 1) -> Deferred[None]:
        """Close from the client side and wait until the server has let go and, as
        Channels' communicator does, until the consumer has finished (its ``disconnect()``
        ran and it left its groups), within ``timeout``; handlers still running then are
        cancelled, as ``--application-close-timeout`` does."""
        if self._transport is None:
            return _done()
        if not self._gone.called:
            if self.connected and not self.closed:
                self.closed = True
                self._transport.write(client_frame(0x8, _struct.pack("!H", code)))
            if not self._gone.called:
                self._transport.loseConnection()
        return Deferred.fromCoroutine(self._finished(timeout))

    async def _finished(self, timeout: float) -> None:
        from twisted.internet.task import deferLater

        await _with_timeout(self._gone, timeout, "disconnect()")
        # The consumer's disconnect() (and the bridge's detach from the layer) may wait
        # behind a handler still running, e.g. one whose send resumed this very test.
        conn = self._connection()
        reactor = _real_reactor()
        waited = 0.0
        while conn is not None and (not conn.finished or conn._busy) and waited < timeout:
            await deferLater(reactor, 0.002, lambda: None)
            waited += 0.002
        if conn is not None and conn._kill_call is not None:
            # Handlers still running after ``timeout``: cancel them now, as the server's
            # --application-close-timeout would (and as asgiref cancels the application),
            # so no timer outlives the test.
            conn._kill_handlers(after=timeout)

    def _connection(self) -> Any:
        """The server's WebSocket bridge for this connection, if it got that far."""
        protocol = self._server_t.protocol if self._transport is not None else None
        conn = (getattr(protocol, "upgrading", None) or getattr(protocol, "upgraded", None)
                or protocol)
        return conn if hasattr(conn, "finished") and hasattr(conn, "_busy") else None

    @property
    def consumer(self) -> Any:
        """The consumer instance serving this connection (for white-box assertions)."""
        protocol = self._server_t.protocol if self._transport is not None else None
        return getattr(protocol, "consumer", None) or getattr(
            getattr(protocol, "upgrading", None), "consumer", None
        )


class HttpCommunicator(_Communicator):
    """One HTTP request to ``application`` in memory; ``get_response()`` fires with
    ``{"status", "headers", "body"}`` once the whole response is in (chunks joined)."""

    def __init__(
        self,
        application: Any,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Any = None,
        clock: Any = None,
        config: ServerConfig | None = None,
    ) -> None:
        super().__init__(application, clock, config)
        # As Channels' HttpCommunicator: its scope's method is ``method.upper()``, and the
        # server passes a method as sent (a ported test's "post" is still a POST).
        self.method = method.upper()
        self.path = path
        self.body = body
        self.headers = _headers(headers)

    def get_response(self, timeout: float | None = 1) -> Deferred[dict[str, Any]]:
        done: Deferred[bytes] = Deferred()
        received = bytearray()

        class _Reader:
            transport: Any = None

            def makeConnection(self, transport: Any) -> None:
                self.transport = transport

            def dataReceived(self, data: bytes) -> None:
                received.extend(data)

            def connectionLost(self, reason: Any) -> None:
                if not done.called:
                    done.callback(bytes(received))

        reader = _Reader()
        _, transport = self._connect_transport(reader)
        self._transport = transport
        lines = [
            f"{self.method} {self.path} HTTP/1.1".encode("latin-1"),
            *_host(self.headers),
            b"Connection: close",
            b"Content-Length: " + str(len(self.body)).encode(),
        ]
        for name, value in self.headers:
            lines.append(name + b": " + value)
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + self.body)

        def parse(raw: bytes) -> dict[str, Any]:
            head, _, body = raw.partition(b"\r\n\r\n")
            status, headers = parse_response_head(head)
            if (b"transfer-encoding", b"chunked") in headers:
                body = decode_chunked(body)
            return {"status": status, "headers": headers, "body": body}

        return _with_timeout(done, timeout, "get_response()").addCallback(parse)


#: Scope keys the request itself makes (from the scope's path, query string, headers and
#: subprotocols); any other key of a scope given to ``ApplicationCommunicator`` (``user``,
#: ``session``, ``client``, ``scheme``...) is laid over the scope the server builds.
_REQUEST_KEYS = frozenset({"type", "path", "raw_path", "query_string", "headers",
                           "subprotocols", "http_version", "asgi", "method", "extensions",
                           "state"})
#: Handshake headers the server writes itself: not the application's accept headers.
_HANDSHAKE_HEADERS = frozenset({b"upgrade", b"connection", b"sec-websocket-accept",
                                b"sec-websocket-protocol", b"sec-websocket-extensions"})


def _request_path(scope: dict[str, Any]) -> str:
    path = str(scope.get("path", "/"))
    query = scope.get("query_string", b"")
    if query:
        path += "?" + (query.decode("latin-1") if isinstance(query, bytes) else str(query))
    return path


class _AsgiWebsocket(WebsocketCommunicator):
    """A ``WebsocketCommunicator`` that also tells what the server did as ASGI messages."""

    def __init__(self, out: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._out = out
        self.client_closed = False
        #: Called when the connection is gone (a waiting ``receive_output`` rechecks).
        self.on_lost: Any = None

    def _lost(self) -> None:
        super()._lost()
        if self.on_lost is not None:
            self.on_lost()

    def _response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        super()._response(status, headers)
        if status == 101:
            message: dict[str, Any] = {"type": "websocket.accept",
                                       "subprotocol": self.subprotocol}
            extra = [h for h in headers if h[0] not in _HANDSHAKE_HEADERS]
            if extra:
                message["headers"] = extra
            self._out(message)
        else:  # a refusal is an HTTP response (ASGI's denial response extension)
            self._out({"type": "websocket.http.response.start", "status": status,
                       "headers": headers})

    def _frame(self, opcode: int, payload: bytes) -> None:
        closed = self.close_code is not None
        super()._frame(opcode, payload)
        if opcode in (0x1, 0x2):
            key = "text" if opcode == 0x1 else "bytes"
            self._out({"type": "websocket.send", key: self._messages.pop()})
        elif opcode == 0x8 and not closed and not self.client_closed:
            # (the server's answer to the client's own close is not the application's)
            message = {"type": "websocket.close", "code": self.close_code}
            if self.close_reason:
                message["reason"] = self.close_reason
            self._out(message)

    def close_from_client(self, code: int) -> None:
        """The client's close frame, now (``websocket.disconnect``); ``disconnect()``
        waits for the consumer later."""
        if self.connected and not self.closed:
            self.closed = self.client_closed = True
            self._transport.write(client_frame(0x8, _struct.pack("!H", code)))


class ApplicationCommunicator:
    """asgiref's ``ApplicationCommunicator``, which Channels' tests use below the WebSocket
    and HTTP communicators: ``send_input(message)`` an ASGI message in,
    ``receive_output()`` the next one out (a handler's exception once nothing else is
    left), ``receive_nothing()``, ``wait()``, ``stop()``. Every method returns a Deferred
    (await it). By the scope's type:

    - ``channel`` (``{"type": "channel", "channel": NAME}``): a worker's consumer, as
      ``realtime-runworker`` runs it: each input is a layer message, handled by type one
      at a time, in order. ``wait()`` fires when every input is handled and re-raises the
      first handler exception. A worker answers through its layer, not as output.
    - ``websocket``: ``websocket.connect`` opens the connection (the scope's path, query
      string, headers and subprotocols make the request; other keys, e.g. ``user``, are laid
      over the consumer's scope); out come ``websocket.accept`` (``subprotocol``, and the
      application's ``headers`` if it gave any) or, for a refusal,
      ``websocket.http.response.start`` with the HTTP status (ASGI's denial response, where
      Channels gives ``websocket.close``); ``websocket.receive`` (``text``/``bytes``) is a
      client frame; ``websocket.send`` and ``websocket.close`` (``code``; ``reason`` when
      there is one) come out; ``websocket.disconnect`` (``code``) closes from the client
      and ``wait()`` fires once the consumer is done.
    - ``http``: ``http.request`` messages (``body``, ``more_body``) make one request; out
      come ``http.response.start`` (``status``, lower-case ``headers``, the server's own
      among them) and one ``http.response.body`` with the whole body (chunks joined);
      ``http.disconnect`` drops the connection.

    ``wait(timeout)`` and ``stop()`` re-raise a handler's exception (one raised in
    ``connect()`` too, which the client saw as a 500). A ``wait`` that times out ends the
    application first (cancels a worker's handler, closes the connection), as asgiref's
    does. ``layer``: the channel layer its consumers use (default ``get_channel_layer()``).
    """

    def __init__(self, application: Any, scope: dict[str, Any], layer: Any = None,
                 clock: Any = None, config: ServerConfig | None = None) -> None:
        kind = scope.get("type")
        if kind not in ("channel", "websocket", "http"):
            raise ValueError(f"ApplicationCommunicator serves channel, websocket and http "
                             f"scopes, not {kind!r}")
        from realtime.layers.base import unguarded

        self.application = application
        self.scope = dict(scope)
        #: The layer itself, also when given a guarded one (a module global's): its
        #: consumers run on the reactor thread, as ``serve(layer=)``'s.
        self.layer = unguarded(layer)
        self.clock = clock
        self.config = config
        self._outputs: _deque[dict[str, Any]] = _deque()
        self._waiters: list[Deferred[None]] = []
        self._error: BaseException | None = None
        self._busy = False  # channel: inputs are being handled
        self._idle: list[Deferred[None]] = []  # wait()s for the inputs to be handled
        self._handling: Deferred[None] | None = None  # channel: the handler running now
        self._inputs: _deque[dict[str, Any]] = _deque()
        self._consumer: Any = None
        self._websocket: _AsgiWebsocket | None = None
        self._http: HttpCommunicator | None = None
        self._body = bytearray()
        self._response: Deferred[None] | None = None  # http: the response coming

    # -- outputs -------------------------------------------------------------------------------
    def _out(self, message: dict[str, Any]) -> None:
        self._outputs.append(message)
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _raised(self) -> BaseException | None:
        """The first exception a handler raised, if one did."""
        if self._error is not None:
            return self._error
        if self._websocket is not None and self._websocket._transport is not None:
            return getattr(self._websocket._connection(), "handler_error", None)
        return None

    def _over(self) -> bool:
        """Nothing more can come out."""
        if self._websocket is not None:
            return self._websocket._gone.called
        return self._error is not None

    def receive_output(self, timeout: float = 1) -> Deferred[dict[str, Any]]:
        """The next ASGI message the application sent; once nothing is left and a
        handler raised, that exception; ``TimeoutError`` after ``timeout`` real seconds."""
        async def get() -> dict[str, Any]:
            while not self._outputs:
                error = self._raised()
                if error is not None and self._over():
                    raise error
                waiter: Deferred[None] = Deferred()
                self._waiters.append(waiter)
                await _with_timeout(waiter, timeout, "receive_output()")
            return self._outputs.popleft()

        return Deferred.fromCoroutine(get())

    def receive_nothing(self, timeout: float = 0.1, interval: float = 0.01) -> Deferred[bool]:
        """True when nothing comes out within ``timeout`` real seconds (``interval`` is
        accepted and unused: an output ends the wait at once)."""
        return Deferred.fromCoroutine(_nothing_within(self._outputs, self._waiters, timeout))

    # -- inputs --------------------------------------------------------------------------------
    def send_input(self, message: dict[str, Any]) -> Deferred[None]:
        kind = self.scope["type"]
        if kind == "channel":
            self._channel_input(message)
        elif kind == "websocket":
            self._websocket_input(message)
        else:
            self._http_input(message)
        return _done()

    def _channel_input(self, message: dict[str, Any]) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise TypeError("a channel message is a dict with a 'type' str")
        self._inputs.append(message)
        if not self._busy:
            self._busy = True
            _as_deferred(self._handle_inputs())

    async def _handle_inputs(self) -> None:
        from realtime.layers import process_layer
        from realtime.worker import channel_consumer, handle_message

        try:
            if self._consumer is None:
                layer = self.layer if self.layer is not None else process_layer()
                self._consumer = await channel_consumer(self.application, self.scope, layer)
            while self._inputs:
                message = self._inputs.popleft()
                self._handling = _as_deferred(
                    handle_message(self._consumer, message, _real_reactor()))
                try:
                    await self._handling
                except Exception as exc:  # CancelledError too: stop() ended it
                    if self._error is None:
                        self._error = exc
        except Exception as exc:  # the application gave no consumer for the scope
            self._error = self._error or exc
            self._inputs.clear()
        finally:
            self._handling = None
            self._busy = False
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            self._wake()

    def _websocket_input(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "websocket.connect":
            if self._websocket is not None:
                raise AssertionError("websocket.connect sent twice")
            self._websocket = _AsgiWebsocket(
                self._out, self.application, _request_path(self.scope),
                self.scope.get("headers"), self.scope.get("subprotocols"), self.clock,
                self.config)
            self._websocket.scope.update(
                {k: v for k, v in self.scope.items() if k not in _REQUEST_KEYS})
            if self.layer is not None:
                self._websocket.site.layer = self.layer
            self._websocket.on_lost = self._wake
            self._websocket.connect(timeout=None)  # what it gives comes out as output
            return
        websocket = self._websocket
        if websocket is None:
            raise AssertionError(f"{kind} before websocket.connect")
        if kind == "websocket.receive":
            websocket.send_to(text_data=message.get("text"), bytes_data=message.get("bytes"))
        elif kind == "websocket.disconnect":
            websocket.close_from_client(message.get("code", 1000))
        else:
            raise ValueError(f"a websocket scope takes websocket.connect, websocket.receive "
                             f"and websocket.disconnect, not {kind!r}")

    def _http_input(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "http.disconnect":
            if self._http is not None and not self._response_done():
                self._http._transport.loseConnection()
            return
        if kind != "http.request":
            raise ValueError(f"an http scope takes http.request and http.disconnect, "
                             f"not {kind!r}")
        if self._http is not None:
            raise AssertionError("the request is complete: one request per communicator")
        self._body += message.get("body", b"")
        if message.get("more_body", False):
            return
        self._http = HttpCommunicator(self.application, self.scope.get("method", "GET"),
                                      _request_path(self.scope), bytes(self._body),
                                      self.scope.get("headers"), self.clock, self.config)
        self._http.method = str(self.scope.get("method", "GET"))  # asgiref's: as given
        self._http.scope.update({k: v for k, v in self.scope.items() if k not in _REQUEST_KEYS})
        if self.layer is not None:
            self._http.site.layer = self.layer

        def answered(response: dict[str, Any]) -> None:
            self._out({"type": "http.response.start", "status": response["status"],
                       "headers": response["headers"]})
            self._out({"type": "http.response.body", "body": response["body"],
                       "more_body": False})

        self._response = self._http.get_response(timeout=None).addCallback(answered)

    def _response_done(self) -> bool:
        return self._response is None or self._response.called

    # -- the end -------------------------------------------------------------------------------
    def wait(self, timeout: float = 1) -> Deferred[None]:
        """Until the application is done with what it was sent (see the class docstring),
        re-raising a handler's exception; after ``timeout`` it is ended and
        ``TimeoutError`` raised."""
        async def wait() -> None:
            try:
                if self._busy:
                    idle: Deferred[None] = Deferred()
                    self._idle.append(idle)
                    await _with_timeout(idle, timeout, "wait()")
                if self._response is not None:
                    await _with_timeout(self._response, timeout, "wait()")
                websocket = self._websocket
                if websocket is not None:
                    if not websocket.client_closed:  # done when the server closed it
                        await _with_timeout(websocket._gone, timeout, "wait()")
                    await websocket.disconnect(timeout=timeout)
            except TimeoutError:
                await self.stop(exceptions=False)
                raise
            error = self._raised()
            if error is not None:
                raise error

        return Deferred.fromCoroutine(wait())

    def stop(self, exceptions: bool = True) -> Deferred[None]:
        """End the application: a worker's handler is cancelled and its queued inputs
        dropped, a WebSocket closed (1000; its consumer's handlers finished or cancelled),
        an HTTP connection dropped; with ``exceptions`` a handler's exception is raised."""
        async def stop() -> None:
            self._inputs.clear()
            if self._handling is not None:
                self._handling.cancel()
            if self._http is not None and not self._response_done():
                self._http._transport.loseConnection()
                if self._response is not None:
                    self._response.addErrback(lambda _: None)
            if self._websocket is not None and self._websocket._transport is not None:
                await self._websocket.disconnect(1000, timeout=0.1)
            if exceptions:
                error = self._raised()
                if error is not None and not isinstance(error, _CancelledError):
                    raise error

        return Deferred.fromCoroutine(stop())


def _done() -> Deferred[None]:
    d: Deferred[None] = Deferred()
    d.callback(None)
    return d


class LiveServerMixin:
    """For ``twisted.trial.unittest.TestCase``: ``server = await self.start_server(app)``
    starts the real server on a free port and stops it in cleanup; trial's own dirty-reactor
    check then fails a test that leaked a port, a connection or a delayed call."""

    def start_server(self, application: Any, **config: Any) -> Deferred[LiveServer]:
        async def start() -> LiveServer:
            server = await serve(application, ServerConfig(**config))
            self.addCleanup(server.stop)  # type: ignore[attr-defined]
            return server

        return Deferred.fromCoroutine(start())
