"""One twisted.web ``Site`` per listener: HTTP/1.1 and WebSocket share the port.

Each request goes to ``RealtimeSite.dispatch``: the built-in paths first, then either the
WebSocket bridge (an ``Upgrade: websocket`` request, validated here) or the application's
``http`` routes (a twisted.web resource, or an ``AsyncHttpConsumer``). The channel keeps
an absolute deadline from TCP accept to the end of ``connect()``: twisted.web's idle timeout
restarts on every byte and cannot stop a client that dribbles its request.
"""

from __future__ import annotations

import binascii
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from realtime.config import ServerConfig
from realtime.exceptions import NoRoute, Refuse
from realtime.http import AsyncHttpConsumer
from realtime.routing import Ready, route_matches
from realtime.scope import BadRequest, build_scope
from realtime.websocket import WebSocketConnection, make_factory

log = Logger()


class RealtimeChannel(http.HTTPChannel):
    """HTTPChannel with the connect deadline, and a clean hand-over of its transport."""

    site: RealtimeSite
    _deadline: Any = None
    upgrading: WebSocketConnection | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.lost: Deferred[None] = Deferred()
        self.site.open_channels.add(self)
        timeout = self.site.config.connect_timeout
        if timeout > 0:
            reactor: Any = self.site.reactor
            self._deadline = reactor.callLater(timeout, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.upgrading is not None:
            self.upgrading.connect_overrun()
        elif self.transport is not None:
            self.transport.abortConnection()

    def handshake_done(self) -> None:
        """The request's head is in and it is not (or no longer) a pending upgrade."""
        self.upgrading = None
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def release_transport(self) -> bytes:
        """Give the transport up to a WebSocket: stop timers, producers and return any
        bytes read past the request."""
        self.handshake_done()
        self.setTimeout(None)
        transport = self.transport
        leftover = b"".join(self._dataBuffer)
        self._dataBuffer = []
        if getattr(self, "_buffer", b""):
            leftover = self._buffer + leftover
            self._buffer = b""
        if transport is not None:
            transport.unregisterProducer()
        self.transport = None
        self._gone()
        return leftover

    def _gone(self) -> None:
        self.site.open_channels.discard(self)
        if not self.lost.called:
            self.lost.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.handshake_done()
        super().connectionLost(reason)
        self._gone()


class RealtimeRequest(server.Request):
    """A request dispatched by the site, skipping twisted.web's resource traversal and its
    default ``Server`` header."""

    site: RealtimeSite
    channel: RealtimeChannel
    scope: dict[str, Any]

    def process(self) -> None:
        self.site = self.channel.site
        self.prepath = []
        self.postpath = [http.unquote(seg) for seg in self.path[1:].split(b"/")]
        try:
            self.site.dispatch(self)
        except Exception:
            log.failure("dispatching {uri!r} failed", uri=self.uri)
            if not self.finished and not self._disconnected and self.channel is not None:
                self.site.write_refusal(self, Refuse(500), upgrade=False)


def _header(request: server.Request, name: bytes) -> list[bytes]:
    return list(request.requestHeaders.getRawHeaders(name, []))


def _tokens(values: list[bytes]) -> set[bytes]:
    return {t.strip().lower() for v in values for t in v.split(b",")}


class RealtimeSite(server.Site):
    """The listener's factory: routes requests to the application and tracks sockets."""

    protocol = RealtimeChannel  # type: ignore[assignment]
    requestFactory = RealtimeRequest
    displayTracebacks = False
    noisy = False

    def __init__(
        self, application: Any, config: ServerConfig, reactor: Any, layer: Any = None
    ) -> None:
        super().__init__(resource.Resource(), reactor=reactor, timeout=config.http_timeout)
        self.application = application
        self.config = config
        if layer is None:
            from realtime.layers import get_channel_layer

            layer = get_channel_layer()
        #: The channel layer every consumer of this site gets (``self.channel_layer``).
        self.layer = layer
        #: Messages the slow-consumer policy skipped, and sockets it closed.
        self.dropped_messages = 0
        self.slow_consumer_closes = 0
        self.ws_factory = make_factory(config, reactor)
        #: Every WebSocket, from the start of its handshake to the end of its close.
        self.connections: set[WebSocketConnection] = set()
        #: HTTP connections twisted.web still owns (for a clean stop in tests).
        self.open_channels: set[RealtimeChannel] = set()
        self.draining = False
        self._drained: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        channel: Any = RealtimeChannel()
        channel.factory = self
        channel.site = self
        channel.requestFactory = self.requestFactory
        channel.timeOut = self.timeOut
        channel.callLater = self.reactor.callLater
        return channel

    def log(self, request: Any) -> None:
        """No per-request line from twisted.web; the access log is ours (off by default)."""

    # -- dispatch ------------------------------------------------------------------------------
    def dispatch(self, request: RealtimeRequest) -> None:
        path = request.path
        cfg = self.config
        if path == cfg.health_path.encode() and cfg.health_path:
            request.channel.handshake_done()
            self._plain(request, 200, b"ok\n")
            return
        if path == cfg.ready_path.encode() and cfg.ready_path:
            request.channel.handshake_done()
            if self.draining:
                self._plain(request, 503, b"draining\n")
            elif not self.layer.ready:
                self._plain(request, 503, b"channel layer unavailable\n")
            else:
                self._plain(request, 200, b"ready\n")
            return
        if b"websocket" in _tokens(_header(request, b"upgrade")):
            self._websocket(request)
        else:
            request.channel.handshake_done()
            self._http(request)

    def _scope(self, request: RealtimeRequest, kind: str) -> dict[str, Any]:
        return build_scope(
            kind,
            request.method,
            request.uri,
            [(k, list(v)) for k, v in request.requestHeaders.getAllRawHeaders()],
            request.getClientAddress(),
            request.getHost(),
            request.isSecure(),
            self.config.root_path,
            request.clientproto,
        )

    def _websocket(self, request: RealtimeRequest) -> None:
        refusal = self._check_handshake(request)
        if refusal is not None:
            request.channel.handshake_done()
            self.write_refusal(request, refusal, upgrade=True)
            return
        try:
            scope = self._scope(request, "websocket")
        except BadRequest:
            request.channel.handshake_done()
            self.write_refusal(request, Refuse(400), upgrade=True)
            return
        conn = WebSocketConnection(self, request, scope)
        request.channel.upgrading = conn
        self.connections.add(conn)
        conn.start()

    def _check_handshake(self, request: RealtimeRequest) -> Refuse | None:
        """RFC 6455 4.2.1, checked before anything of the application runs."""
        if request.method != b"GET":
            return Refuse(405, [(b"Allow", b"GET")])
        if request.clientproto != b"HTTP/1.1":
            return Refuse(400)
        versions = _header(request, b"sec-websocket-version")
        if len(versions) != 1 or versions[0].strip() != b"13":
            return Refuse(426, [(b"Sec-WebSocket-Version", b"13")])
        keys = _header(request, b"sec-websocket-key")
        if len(keys) != 1:
            return Refuse(400)
        try:
            raw = binascii.a2b_base64(keys[0].strip(), strict_mode=True)
        except (binascii.Error, ValueError):
            return Refuse(400)
        if len(raw) != 16:
            return Refuse(400)
        if b"upgrade" not in _tokens(_header(request, b"connection")):
            return Refuse(400)
        if len(_header(request, b"host")) != 1 or len(_header(request, b"upgrade")) != 1:
            return Refuse(400)
        if self.draining:
            return Refuse(503)
        limit = self.config.max_connections
        if limit and len(self.connections) >= limit:
            return Refuse(503)
        return None

    def _http(self, request: RealtimeRequest) -> None:
        try:
            scope = self._scope(request, "http")
        except BadRequest:
            self.write_refusal(request, Refuse(400), upgrade=False)
            return
        request.scope = scope
        try:
            result = self.application(scope)
        except BaseException as exc:
            self._http_failed(Failure(exc), request, scope)
            return
        if type(result) is Ready:
            result = result.value
        if isinstance(result, Deferred) or hasattr(result, "__await__"):
            from realtime.middleware import resolve

            d = Deferred.fromCoroutine(resolve(result))
            d.addCallbacks(self._http_serve, self._http_failed,
                           callbackArgs=(request, scope), errbackArgs=(request, scope))
        else:
            self._http_serve(result, request, scope)

    def _http_serve(self, result: Any, request: RealtimeRequest, scope: dict[str, Any]) -> None:
        if request.finished or request._disconnected:
            return
        if isinstance(result, AsyncHttpConsumer):
            result._serve(request, scope, self.layer)
        elif resource.IResource.providedBy(result):
            request.render(resource.getChildForRequest(result, request))
        else:
            log.error("application returned {obj!r} for an HTTP scope", obj=result)
            self.write_refusal(request, Refuse(500), upgrade=False)

    def _http_failed(
        self, failure: Failure, request: RealtimeRequest, scope: dict[str, Any]
    ) -> None:
        if request.finished or request._disconnected:
            return
        exc = failure.value
        if isinstance(exc, NoRoute):
            ws_scope = dict(scope, type="websocket")
            if route_matches(self.application, ws_scope):
                refusal = Refuse(426, [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")])
            else:
                refusal = exc
        elif isinstance(exc, Refuse):
            refusal = exc
        else:
            log.failure("application failed on {method} {path}", failure,
                        method=scope.get("method"), path=scope.get("path"))
            refusal = Refuse(500)
        self.write_refusal(request, refusal, upgrade=False)

    # -- responses ----------------------------------------------------------------------------
    def _plain(self, request: server.Request, status: int, body: bytes) -> None:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", str(len(body)).encode())
        request.setHeader(b"cache-control", b"no-store")
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def write_refusal(self, request: server.Request, refusal: Refuse, upgrade: bool) -> None:
        """A refusal as a complete HTTP response: status, headers, a short body."""
        if request.finished or request._disconnected:
            return
        request.setResponseCode(refusal.status, refusal.phrase)
        body = refusal.body or refusal.phrase + b"\n"
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self.config.server_header:
            request.setHeader(b"server", self.config.server_header.encode("latin-1"))
        for name, value in refusal.headers:
            request.responseHeaders.addRawHeader(name, value)
        request.setHeader(b"content-length", str(len(body)).encode())
        if upgrade:
            # A refused upgrade ends the connection (RFC 6455 4.2.2); twisted.web only closes
            # on the request's own Connection header, so say it to the channel too.
            request.setHeader(b"connection", b"close")
            if request.channel is not None:
                request.channel.persistent = False
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    # -- connection tracking and drain --------------------------------------------------------
    def opened(self, conn: WebSocketConnection) -> None:
        """A WebSocket's handshake completed (hook for metrics)."""

    def closed(self, conn: WebSocketConnection) -> None:
        self.connections.discard(conn)
        if self.draining and not self.connections:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def drain(self) -> Deferred[None]:
        """Refuse new upgrades with 503, close every socket with 1001; fires when all are
        gone. The caller enforces the deadline with ``abort_all``."""
        self.draining = True
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        for conn in list(self.connections):
            conn.go_away()
        return d

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()
