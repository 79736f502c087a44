"""One twisted.web ``Site`` per listener: HTTP/1.1 and WebSocket share the port.

Each request goes to ``RealtimeSite.dispatch``: the built-in paths first, then either the
WebSocket bridge (an ``Upgrade: websocket`` request, validated here) or the application's
``http`` routes (a twisted.web resource, or an ``AsyncHttpConsumer``). The channel keeps
an absolute deadline from TCP accept to the end of ``connect()`` (and from the first byte of
each later request on a keep-alive connection): twisted.web's idle timeout restarts on every
byte and cannot stop a client that dribbles its request.

The channel also checks every request's head before twisted.web parses it, so that each
kind of malformed input gets its own RFC 9110/9112 answer (twisted.web would answer a bare
400 to most of them and close without a word on a too-long line): 400 for a malformed line,
414 for a too-long request-target, 431 for a head past ``MAX_HEAD`` bytes or
``MAX_HEADERS`` fields, 501 for an unknown transfer coding, 505 for another HTTP version;
and 413 for a body over ``--http-body-limit`` (``--api-body-limit`` on the API's paths),
from its ``Content-Length`` or, chunked, once what arrived is over (twisted.web would spool
any size to a temporary file before the application runs). Such a refusal is a complete
response with ``Connection: close``; then the channel half-closes and discards input for up
to ``LINGER`` seconds, so that a client still sending reads the answer instead of a reset.
tests/e2e/test_hostile.py has the table of answers (tests/test_http_body_limit.py the 413s).

Every HTTP request (not a WebSocket upgrade) is counted for /metrics and access-logged in
one place as it ends, ``RealtimeSite.http_done``: its response finished, refused by the
channel, or its connection or stream gone first (499 when no response had started).
"""

from __future__ import annotations

import re
import weakref
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.http_headers import Headers

from realtime.accesslog import target as redacted_target
from realtime.admin import serve as serve_admin
from realtime.api import PATHS as API_PATHS
from realtime.api import handle as handle_api
from realtime.asgi import AsgiHttp
from realtime.config import ServerConfig
from realtime.deflate import Deflater
from realtime.exceptions import NoRoute, Refuse
from realtime.http import AsyncHttpConsumer
from realtime.http2 import become_h2, cut_off, negotiated_h2, on_h2_stream, protocols
from realtime.metrics import NO_RESPONSE, SiteStats, exposition
from realtime.proxy import apply as apply_proxy_headers
from realtime.proxy import parse_networks
from realtime.ratelimit import TokenBucket
from realtime.routing import Ready, RoutedResource, route_matches
from realtime.scope import (
    BadRequest,
    build_scope,
    check_h2_head,
    check_handshake,
    check_header_line,
    check_host,
    check_request_line,
    origin_form,
)
from realtime.threads import as_deferred
from realtime.websocket import WebSocketConnection, make_factory

log = Logger()
#: Seconds between two warnings about handshakes refused over ``--handshake-rate``.
RATE_WARN_EVERY = 10.0

#: One line of a request's head (the request line or a header field line), in bytes.
MAX_LINE = 16384
#: The whole head: request line and header field lines, in bytes (431 past it).
MAX_HEAD = 16384
#: Header field lines per request (431 past it).
MAX_HEADERS = 500
#: How long a refused connection keeps reading (and discarding) before it closes.
LINGER = 2.0
#: Requests for the application held while its lifespan start-up runs (503 past it).
GATE_LIMIT = 1024

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_METHOD_SP = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ ")


def refusal_bytes(status: int, server_header: str = "") -> bytes:
    """A complete ``Connection: close`` response for a refusal made before a request
    exists (the channel's own answers to a malformed head)."""
    refusal = Refuse(status)
    body = refusal.phrase + b"\n"
    lines = [
        b"HTTP/1.1 %d %s" % (status, refusal.phrase),
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    if server_header:
        lines.append(b"Server: " + server_header.encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class RealtimeChannel(http.HTTPChannel):
    """HTTPChannel with the connect deadline, a specific answer to each malformed head, and
    a clean hand-over of its transport."""

    site: RealtimeSite
    _deadline: Any = None
    _linger: Any = None
    _refused = False
    upgrading: WebSocketConnection | None = None
    #: An upgrade request waiting for the lifespan start-up (``RealtimeSite.gate``).
    waiting: RealtimeRequest | None = None
    #: The HTTP/2 connection this channel forwards to, once ALPN chose h2 (``realtime.http2``).
    h2: Any = None
    _alpn_checked = False
    #: When the request now being read sent its first byte (its duration is counted from
    #: there, as nginx's ``$request_time``); taken by the request it makes.
    request_began: float | None = None
    #: The upgrade this connection's request made, kept after the handshake (the testing
    #: communicators read a refused handshake's exception from it).
    upgraded: WebSocketConnection | None = None
    MAX_LENGTH = MAX_LINE
    totalHeadersSize = MAX_HEAD
    maxHeaders = MAX_HEADERS

    def connectionMade(self) -> None:
        super().connectionMade()
        #: When the TCP connection was accepted (handshake latency is measured from here).
        reactor: Any = self.site.reactor
        self.accepted_at: float = reactor.seconds()
        self.lost: Deferred[None] = Deferred()
        self.site.open_channels.add(self)
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        timeout = self.site.config.connect_timeout
        if timeout > 0 and self._deadline is None:
            reactor: Any = self.site.reactor
            self._deadline = reactor.callLater(timeout, self._deadline_passed)

    # -- the request's head, checked before twisted.web parses it ---------------------------
    def _at_request_line(self) -> bool:
        return bool(getattr(self, "_HTTPChannel__first_line", 0))

    def dataReceived(self, data: bytes) -> None:
        if self.h2 is not None:
            self.h2.dataReceived(data)
            return
        if not self._alpn_checked:
            self._alpn_checked = True
            if negotiated_h2(self.transport):
                # TLS is up and ALPN chose HTTP/2: the head deadline and the idle timer
                # are HTTP/1.1's; HTTP/2 has its own idle timeout and stream limits.
                self.handshake_done()
                self.setTimeout(None)
                self.h2 = become_h2(self)
                self.h2.dataReceived(data)
                return
        if self._refused:
            return  # lingering after a refusal: discard
        if self.line_mode and not self._buffer and self._at_request_line() and data:
            # The first byte of a request: a keep-alive connection's next request gets the
            # same deadline as the first; a request that cannot be HTTP (a TLS ClientHello
            # on a plain port, binary junk) is refused at once instead of at the deadline.
            self.request_began = self.site.clock.seconds()
            self._arm_deadline()
            if data[0] not in _TCHAR and data[0] not in b"\r\n":
                self.refuse_head(400)
                return
        super().dataReceived(data)
        if (self.line_mode and not self._refused and not self._busyReceiving
                and b"\n" in self._buffer):
            # The line delimiter is CRLF, so any LF still buffered is a bare LF (RFC 9112 2.2).
            # Not in a nested call (a response finished while the channel parsed a body:
            # twisted.web hands the pipelined bytes after it back through dataReceived,
            # which only buffers them); the outer call checks once it parsed them.
            self.refuse_head(400)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        first = self._at_request_line()
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse_head(414 if first else 431)
            return
        if b"\r" in line or b"\n" in line:
            self.refuse_head(400)  # a bare CR or LF inside a line
            return
        if first:
            if line and self.persistent:
                status = check_request_line(line)
                if status is not None:
                    self.refuse_head(status)
                    return
        elif line[:1] in (b" ", b"\t"):
            self.refuse_head(400)  # obs-fold (RFC 9112 5.2), or whitespace before the first
            return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        if self._refused:
            return False
        if self._receivedHeaderCount >= self.maxHeaders:
            self.refuse_head(431)
            return False
        status = check_header_line(line)
        if status is not None:
            self.refuse_head(status)
            return False
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        if self._refused:
            return
        request: RealtimeRequest = self.requests[-1]
        request.body_limit, request.body_limit_option = self.site.body_limit(self._path)
        if self.length is not None and request.body_limit and self.length > request.body_limit:
            request.refuse_body()  # from the Content-Length, before the body is read
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if not self._refused:
            super().allContentReceived()

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._at_request_line():
            self.refuse_head(414 if _METHOD_SP.match(line) else 400)
        else:
            self.refuse_head(431)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's own 400s (conflicting Content-Length / Transfer-Encoding, a bad chunk)
        self.refuse_head(400)

    def refuse_head(self, status: int) -> None:
        """Answer a malformed request head (or a body over its limit, from the head or
        midway) with ``status`` and close; what the client still sends is read and
        discarded for up to ``LINGER`` seconds (then the connection is closed), so that it
        sees the answer rather than a reset."""
        if self._refused:
            return
        self._refused = True
        self.handshake_done()
        self.setTimeout(None)
        self.clearLineBuffer()
        self._dataBuffer = []
        transport: Any = self.transport
        if transport is None:
            return
        transport.write(refusal_bytes(status, self.site.config.server_header))
        self.site.head_refused(self, status)
        self._networkProducer.unregisterProducer()
        reactor: Any = self.site.reactor
        if isinstance(transport, ProtocolWrapper) or not hasattr(transport, "loseWriteConnection"):
            transport.loseConnection()  # TLS: a half-close would skip its close_notify
            return
        transport.loseWriteConnection()
        self._linger = reactor.callLater(LINGER, self._linger_over)

    def _linger_over(self) -> None:
        self._linger = None
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.upgrading is not None:
            self.upgrading.connect_overrun()
        elif self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            self.site.waited_too_long(waiting)
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
        # Break the channel <-> request cycle: both are freed now, not at the next GC.
        self.requests = []
        self._gone()
        return leftover

    def _gone(self) -> None:
        self.site.open_channels.discard(self)
        if not self.lost.called:
            self.lost.callback(None)
        self.site.maybe_drained()

    def drain(self) -> None:
        """The server drains: a connection with nothing in progress closes now; one with a
        request (its head or body still coming, or its response still going) closes once
        that response is done and flushed; HTTP/2 gets GOAWAY and closes after its
        streams."""
        if self.h2 is not None:
            self.h2.drain()
            return
        if self.requests:
            # Past checkPersistence: closes after this response. (Not before a request:
            # twisted.web drops what a non-persistent connection sends next.)
            self.persistent = False
            return
        if self._at_request_line() and not self._buffer and self.transport is not None:
            # Nothing of a request yet. twisted.web's own close: a response's bytes still
            # queued go out first (its network producer, paused by a slow reader, would
            # otherwise hold the close back).
            self.loseConnection()

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if self.site.draining:  # every request while draining is its connection's last
            return False
        return bool(super().checkPersistence(request, version))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.h2 is not None:
            self.h2.connectionLost(reason)
            self._gone()
            return
        self.handshake_done()
        if self._linger is not None:
            if self._linger.active():
                self._linger.cancel()
            self._linger = None
        super().connectionLost(reason)
        self._gone()


class RealtimeRequest(server.Request):
    """A request dispatched by the site, skipping twisted.web's resource traversal and its
    default ``Server`` header (``--server-name`` sets ours), with ``--http-timeout``'s
    deadline on a response of the application."""

    site: RealtimeSite
    channel: RealtimeChannel
    scope: dict[str, Any]
    _response_deadline: Any = None
    #: An HTTP/2 stream's deadline from its opening to its request complete, body included
    #: (``--websocket-connect-timeout``, as the HTTP/1.1 channel's head deadline).
    _stream_deadline: Any = None
    #: Set when ``--http-timeout`` answered 503 or cut the response off.
    timed_out = False
    #: ``--http-timeout`` runs (from dispatch, or from arrival for a request that waited
    #: for the lifespan start-up).
    deadline_started = False
    #: The largest body this request may send and the option that set it
    #: (``RealtimeSite.body_limit``); 0: none.
    body_limit = 0
    body_limit_option = "--http-body-limit"
    #: Body bytes received so far (a chunked or HTTP/2 body has no length to check first).
    body_received = 0
    #: Its body is over ``body_limit``: 413, and nothing (application or built-in path)
    #: ever runs for it.
    body_refused = False
    _body_answered = False
    #: A WebSocket upgrade: ``realtime_handshakes`` and the access log's WS lines have it,
    #: not the HTTP metrics.
    websocket = False
    #: An absolute-form target without a host (``GET http:///x``): 400.
    bad_target = False
    #: An HTTP/2 head with a header name that is no token (left out by ``realtime.http2``): 400.
    bad_head = False
    #: Counted (``RealtimeSite.http_done``), or never to be (an upgrade).
    _http_done = False

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        site: RealtimeSite = channel.site
        self.site = site
        #: From the request's first byte (HTTP/1.1: its request line's; HTTP/2: its HEADERS)
        #: to its response's end: the access log's duration and the metrics'.
        began = getattr(channel, "request_began", None)
        if began is None:
            began = site.clock.seconds()
        else:
            channel.request_began = None
        self.began: float = began
        site.stats.http_in_progress += 1  # until http_done, or not_http
        if on_h2_stream(self):
            timeout = site.config.connect_timeout
            if timeout > 0:
                self._stream_deadline = site.clock.callLater(timeout, self._stream_overdue)

    def _stream_overdue(self) -> None:
        self._stream_deadline = None
        cut_off(self)  # a request that dribbles its head or body: reset its stream

    def _stop_stream_deadline(self) -> None:
        call, self._stream_deadline = self._stream_deadline, None
        if call is not None and call.active():
            call.cancel()

    def connectionLost(self, reason: Failure) -> None:
        self._stop_stream_deadline()
        if not self._http_done and not self.finished:
            # Ended before its response did: the client left, or the server cut it off (a
            # deadline, the drain's end). The status sent, or 499 when none was.
            self.head_from_channel()
            self.site.http_done(self, self.code if self.startedWriting else NO_RESPONSE)
        super().connectionLost(reason)

    def not_http(self) -> None:
        """A WebSocket upgrade: out of the HTTP metrics (it was in progress since its
        request line)."""
        self.websocket = True
        if not self._http_done:
            self._http_done = True
            self.site.stats.http_in_progress -= 1

    def head_from_channel(self) -> None:
        """A request that ends before ``requestReceived`` (a 413, a refused head, a client
        gone mid-body): its method, target and version as its channel parsed them, for the
        access log and the metrics (``-`` for what was never read)."""
        if self.path is not None:
            return
        channel: Any = self.channel
        if isinstance(channel, RealtimeChannel):
            method, target, version = (getattr(channel, name, None)
                                       for name in ("_command", "_path", "_version"))
        elif channel is not None:  # an HTTP/2 stream
            method, target, version = channel.command, channel.path, b"HTTP/2"
        else:
            method = target = version = None
        self.method, self.uri, self.clientproto = method or b"-", target or b"-", version or b"-"
        self.path = self.uri.partition(b"?")[0]

    def write(self, data: bytes) -> None:
        if not self.startedWriting and self.site is not None:  # the head goes out now
            name = self.site.server_header
            if name and not self.responseHeaders.hasHeader(b"server"):
                self.responseHeaders.setRawHeaders(b"server", [name])
            if self.site.draining and isinstance(self.channel, RealtimeChannel):
                # The connection closes after this response (``RealtimeChannel.drain``).
                self.responseHeaders.setRawHeaders(b"connection", [b"close"])
        super().write(data)

    def head_done(self) -> None:
        """The head is in and the request is no pending upgrade: an HTTP/1.1 channel's
        connect deadline stops (an HTTP/2 stream has none)."""
        channel = self.channel
        if isinstance(channel, RealtimeChannel):
            channel.handshake_done()

    def start_response_deadline(self, seconds: float) -> None:
        """``--http-timeout``: a response not started ``seconds`` from now gets 503, one not
        finished is cut off. Cancelled when the request finishes or the client goes."""
        self.deadline_started = True
        self._response_deadline = self.site.clock.callLater(seconds, self._response_overdue,
                                                            seconds)
        self.notifyFinish().addBoth(self._stop_response_deadline)

    def _stop_response_deadline(self, _: Any) -> None:
        call, self._response_deadline = self._response_deadline, None
        if call is not None and call.active():
            call.cancel()

    def _response_overdue(self, seconds: float) -> None:
        self._response_deadline = None
        if self.finished or self._disconnected:
            return
        self.timed_out = True
        method = self.method.decode("latin-1")
        path = self.path.decode("latin-1", "replace")
        if not self.startedWriting:
            log.warn("{method} {path}: no response within --http-timeout {seconds} s: 503",
                     method=method, path=path, seconds=seconds)
            # Nothing of the half-made response (a resource's Content-Encoding, cookies).
            self.responseHeaders = Headers()
            self.cookies = []
            self.site.write_refusal(self, Refuse(503), upgrade=False)
            return
        log.warn("{method} {path}: response not finished within --http-timeout {seconds} s: "
                 "cut off", method=method, path=path, seconds=seconds)
        cut_off(self)

    # -- the body limit (``--http-body-limit``, ``--api-body-limit``) -------------------------
    def gotLength(self, length: int | None) -> None:
        if on_h2_stream(self):
            # An HTTP/2 stream's head: its :path came first (RFC 9113 8.3), the limit is known.
            channel: Any = self.channel
            self.body_limit, self.body_limit_option = channel.site.body_limit(channel.path or b"")
        if length is not None and self.body_limit and length > self.body_limit:
            # No temporary file for it. HTTP/2: answered once Twisted has set the stream up
            # (``RealtimeH2Connection._requestReceived``), with no 100 Continue before it;
            # HTTP/1.1 never gets here.
            self.body_refused = True
            if on_h2_stream(self):
                stream: Any = self.channel
                refuse = getattr(stream._conn, "refuse_continue", None)
                if refuse is not None:
                    refuse(stream.streamID)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_refused:
            return  # what a refused client still sends is dropped
        self.body_received += len(data)
        if self.body_limit and self.body_received > self.body_limit:
            self.refuse_body()
            return
        super().handleContentChunk(data)

    def refuse_body(self) -> None:
        """413 for a body over ``body_limit`` (announced, or counted as it arrives), before
        anything runs for the request. HTTP/1.1: the channel answers and closes
        (``refuse_head``: the connection is in the middle of a body it will not read).
        HTTP/2: 413 on the stream, then RST_STREAM(NO_ERROR) so that the client stops
        sending (RFC 9113 8.1, ``RealtimeH2Connection``); its other streams go on."""
        self.body_refused = True
        if self._body_answered:
            return
        self._body_answered = True
        channel: Any = self.channel
        h1 = isinstance(channel, RealtimeChannel)
        method, target = (channel._command, channel._path) if h1 else (channel.command,
                                                                        channel.path)
        log.info("{method} {path}: request body over {option} ({limit} bytes): 413",
                 method=method.decode("latin-1"),
                 path=target.partition(b"?")[0].decode("latin-1", "replace"),
                 option=self.body_limit_option, limit=self.body_limit)
        if self.content is not None:
            self.content.close()  # a chunked body's temporary file goes now
            self.content = None
        if h1:
            channel.refuse_head(413)
            return
        self._stop_stream_deadline()
        self.head_from_channel()  # requestReceived never runs for it
        self.site.write_refusal(self, Refuse(413), upgrade=False)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.body_refused:
            return  # an HTTP/2 stream that ended after its 413 was queued
        path, authority = origin_form(path)
        if authority is not None:
            # RFC 9112 3.2.2: the target's authority, not the Host header, names the host
            # (an http URI with no host is invalid, RFC 9110 4.2.1: 400).
            self.requestHeaders.setRawHeaders(b"host", [authority])
            self.bad_target = not authority
        super().requestReceived(command, path, version)

    def process(self) -> None:
        self._stop_stream_deadline()
        if self.clientproto == b"HTTP/2":
            # Twisted adds :authority as a Host; a client may send Host too (RFC 9113
            # 8.3.1; h2 refuses the two when they differ): one Host, as over HTTP/1.1.
            hosts = self.requestHeaders.getRawHeaders(b"host")
            if hosts and len(hosts) > 1 and len(set(hosts)) == 1:
                self.requestHeaders.setRawHeaders(b"host", hosts[:1])
            # The HTTP/1.1 channel's checks of the head (h2's own are fewer): 400 and the
            # like on this stream, before anything runs for it.
            status = 400 if self.bad_head else check_h2_head(
                self.method, self.uri, self.requestHeaders.getAllRawHeaders())
            if status is not None:
                self.site.write_refusal(self, Refuse(status), upgrade=False)
                return
        self.prepath = []
        self.postpath = [http.unquote(seg) for seg in self.path[1:].split(b"/")]
        self.dispatch_guarded()

    def dispatch_guarded(self) -> None:
        """``site.dispatch`` with a 500 for whatever it raises (also for requests that
        waited for the lifespan start-up)."""
        try:
            self.site.dispatch(self)
        except Exception:
            log.failure("dispatching {uri!r} failed", uri=self.uri)
            if not self.finished and not self._disconnected and self.channel is not None:
                self.site.write_refusal(self, Refuse(500), upgrade=self.websocket)


def _answered_or_gone(request: Any) -> bool:
    """Nothing more to write to this request: its response is done or its client left."""
    return bool(request.finished or request._disconnected)


def _client_host(request: Any) -> str | None:
    scope = getattr(request, "scope", None)
    if scope and scope.get("client"):
        return str(scope["client"][0])
    address = request.getClientAddress()
    return getattr(address, "host", None)


def _user_agent(request: Any) -> str | None:
    value = request.getHeader(b"user-agent")
    return value.decode("latin-1", "replace") if value else None


def target_of(request: Any) -> str:
    return redacted_target(request.path, request.uri.partition(b"?")[2])


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
        #: The reactor, untyped (twisted.web types ``self.reactor`` as IReactorTime only).
        self.clock: Any = reactor
        from realtime.layers import process_layer, unguarded

        #: The channel layer every consumer of this site gets (``self.channel_layer``): the
        #: layer itself, also when given a guarded one (a module global's).
        self.layer = process_layer() if layer is None else unguarded(layer)
        #: Messages the slow-consumer policy skipped, and sockets it closed.
        self.dropped_messages = 0
        self.slow_consumer_closes = 0
        #: Counters for /metrics (plain integers: nothing on the hot path but an add).
        self.stats = SiteStats()
        #: Set by the service when --metrics serves on this port (a ``metrics.Collector``).
        self.metrics: Any = None
        #: Whether this listener serves the operator endpoints (``--health-path``,
        #: ``--ready-path``, ``/metrics``, the server API, ``--admin-path``). False on the
        #: main ports when ``--internal-port`` has them: there those paths are the
        #: application's like any other (404 unless it routes them), so a public port
        #: shows nothing but the application.
        self.operator = True
        #: Set by the service with --access-log (a ``realtime.accesslog.AccessLog``).
        self.access_log: Any = None
        self.ws_factory = make_factory(config, reactor)
        #: Outbound permessage-deflate with --compression (``realtime.deflate``), else None.
        self.deflater: Deflater | None = (
            Deflater(config.compression_level, config.compression_min_size)
            if config.compression else None
        )
        self.connection_class = WebSocketConnection.for_site(self.ws_factory)
        #: Every WebSocket, from the start of its handshake to the end of its close.
        self.connections: set[WebSocketConnection] = set()
        #: HTTP connections twisted.web still owns (for a clean stop in tests).
        self.open_channels: set[RealtimeChannel] = set()
        #: ASGI apps still running for HTTP requests (a response's background work runs
        #: after it): the drain waits for them, so the lifespan shuts down after.
        self.asgi_running: set[Any] = set()
        self.draining = False
        self._drained: list[Deferred[None]] = []
        self._no_websockets: list[Deferred[None]] = []
        #: Told ``server_draining()`` when the drain starts: a long stream that can end
        #: itself in its protocol's terms (realtime.pubsub's streams: a 3001 push) instead
        #: of holding the drain until ``--shutdown-timeout``.
        self.drain_listeners: weakref.WeakSet[Any] = weakref.WeakSet()
        #: Requests for the application wait here while the ASGI lifespan start-up runs
        #: (a list; ``release`` sends them on), or all get this ``Refuse`` once it failed
        #: or the server stopped first; None while serving.
        self.gate: list[RealtimeRequest] | Refuse | None = None
        self._gate_overflowed = False
        #: ``--handshake-rate``'s bucket; ``twistd realtime`` gives every site of the
        #: process the same one (the limit is per process).
        self.handshakes: TokenBucket | None = (
            TokenBucket(config.handshake_rate, config.handshake_burst, self.clock)
            if config.handshake_rate else None)
        #: Open WebSockets per client address (``--max-connections-per-ip``).
        self.per_ip: dict[str, int] = {}
        #: Open WebSockets per signed-in user (``--max-connections-per-user``).
        self.per_user: dict[str, int] = {}
        self._proxies = parse_networks(config.trusted_proxies) if config.proxy_headers else []
        self._proxy_header_names = (config.proxy_headers_host.lower().encode("latin-1"),
                                    config.proxy_headers_port.lower().encode("latin-1"),
                                    config.root_path_header.lower().encode("latin-1"))
        #: ``Server`` on every response that has none of its own (``--server-name``).
        self.server_header: bytes = config.server_header.encode("latin-1")

    def buildProtocol(self, addr: Any) -> Any:
        channel: Any = RealtimeChannel()
        channel.factory = self
        channel.site = self
        channel.requestFactory = self.requestFactory
        channel.timeOut = self.timeOut
        channel.callLater = self.reactor.callLater
        return channel

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN on TLS listeners: ``h2`` first unless ``--no-http2`` (``realtime.http2``)."""
        return protocols(self.config.http2)

    def log(self, request: Any) -> None:
        """twisted.web calls this as a request finishes (``Request.finish``)."""
        self.http_done(request, request.code)

    def http_done(self, request: RealtimeRequest, status: int) -> None:
        """An HTTP request ended, with ``status`` sent (``NO_RESPONSE`` for none): the one
        place it is counted for /metrics and written to the access log. Its response
        finished (``log``), or was refused by the channel (``head_refused``), or the
        connection or stream went first (``RealtimeRequest.connectionLost``). Once per
        request; never for a WebSocket upgrade (``not_http``)."""
        if request._http_done:
            return
        request._http_done = True
        self.stats.http_in_progress -= 1
        self._http_ended(_client_host(request), request.method, target_of(request),
                         request.clientproto.decode("latin-1"), status, request.sentLength,
                         self.clock.seconds() - request.began, _user_agent(request))

    def _http_ended(self, client: str | None, method: bytes, target: str, protocol: str,
                    status: int, sent: int, duration: float, user_agent: str | None) -> None:
        """Counted for /metrics, and one access-log line."""
        self.stats.observe_http(method, status, duration)
        if self.access_log is not None:
            self.access_log.emit(
                kind="http", client=client, method=method.decode("latin-1"), target=target,
                protocol=protocol, status=status, bytes=sent, duration=duration,
                user_agent=user_agent,
            )

    def head_refused(self, channel: RealtimeChannel, status: int) -> None:
        """The channel answered ``status`` itself (a malformed head, a body over its
        limit; ``RealtimeChannel.refuse_head``): counted and logged as any response. Before
        its request line was read there is no request: ``-`` for what is unknown."""
        sent = len(Refuse(status).phrase) + 1
        request = channel.requests[-1] if channel.requests else None
        if request is not None and not request._http_done:
            request.head_from_channel()
            request.code, request.sentLength = status, sent
            self.http_done(request, status)
            return
        began = channel.request_began
        transport: Any = channel.transport
        peer = transport.getPeer() if transport is not None else None
        self._http_ended(getattr(peer, "host", None), b"-", "-", "-", status, sent,
                         0.0 if began is None else self.clock.seconds() - began, None)

    def log_ws(
        self, kind: str, scope: dict[str, Any], started: float | None, **fields: Any
    ) -> None:
        access = self.access_log
        if access is None:
            return
        client = scope.get("client")
        user_agent = None
        for name, value in scope.get("headers", ()):
            if name == b"user-agent":
                user_agent = value.decode("latin-1", "replace")
        access.emit(
            kind=kind, client=client[0] if client else None,
            target=redacted_target(scope.get("raw_path", b""), scope.get("query_string", b"")),
            duration=None if started is None else self.clock.seconds() - started,
            user_agent=user_agent, **fields,
        )

    def body_limit(self, target: bytes) -> tuple[int, str]:
        """The largest request body for a request-target, and the option that sets it:
        ``--api-body-limit`` on the publish API's paths (when the API is on), else
        ``--http-body-limit`` (0: none)."""
        config = self.config
        if config.api_keys and self.operator and target.partition(b"?")[0] in API_PATHS:
            return config.api_body_limit, "--api-body-limit"
        return config.http_body_limit, "--http-body-limit"

    # -- dispatch ------------------------------------------------------------------------------
    def dispatch(self, request: RealtimeRequest) -> None:
        path = request.path
        cfg = self.config
        if request.bad_target or check_host(_header(request, b"host"),
                                            request.clientproto) is not None:
            request.head_done()
            self.write_refusal(request, Refuse(400), upgrade=False, close=True)
            return
        # The operator endpoints (the probes, /metrics, the server API, the admin UI): one
        # attribute's cost on a main port that --internal-port leaves without them.
        if self.operator:
            if path == cfg.health_path.encode() and cfg.health_path:
                request.head_done()
                self._plain(request, 200, b"ok\n")
                return
            if self.metrics is not None and path == cfg.metrics_path.encode():
                request.head_done()
                content_type, body = exposition(self.metrics)
                request.setHeader(b"content-type", content_type)
                self._plain(request, 200, body, content_type)
                return
            if cfg.api_keys and path in API_PATHS:
                request.head_done()
                handle_api(self, request)
                return
            if cfg.admin_path and cfg.api_keys and path == cfg.admin_path.encode():
                request.head_done()
                serve_admin(request)
                return
            if path == cfg.ready_path.encode() and cfg.ready_path:
                request.head_done()
                if self.draining:
                    self._plain(request, 503, b"draining\n")
                elif self.gate is not None:
                    self._plain(request, 503, b"starting\n" if isinstance(self.gate, list)
                                else b"application startup failed\n")
                elif not self.layer.ready:
                    self._plain(request, 503, b"channel layer unavailable\n")
                else:
                    self._plain(request, 200, b"ready\n")
                return
        if b"websocket" in _tokens(_header(request, b"upgrade")):
            request.not_http()
            if self.gate is not None:
                self._at_gate(request, upgrade=True)
                return
            self._websocket(request)
        else:
            request.head_done()
            if self.gate is not None:
                self._at_gate(request, upgrade=False)
                return
            self._http(request)

    def _at_gate(self, request: RealtimeRequest, upgrade: bool) -> None:
        """Hold a request for the application while its lifespan start-up runs: at most
        ``GATE_LIMIT`` of them (past that, 503 with ``Retry-After``: a restart under load
        must not pile up memory, then a thundering herd); an upgrade until its connect
        deadline, an HTTP request until ``--http-timeout`` counted from now."""
        gate = self.gate
        if isinstance(gate, Refuse):
            self.write_refusal(request, gate, upgrade=upgrade)
            return
        assert gate is not None
        if len(gate) >= GATE_LIMIT:  # first forget those already answered or gone
            gate[:] = [r for r in gate if not _answered_or_gone(r)]
            if len(gate) >= GATE_LIMIT:
                if not self._gate_overflowed:
                    self._gate_overflowed = True
                    log.warn("{limit} requests already wait for the application's start-up: "
                             "503 to the next ones until it is done", limit=GATE_LIMIT)
                self.write_refusal(request, Refuse(503), upgrade=upgrade)  # Retry-After: 1
                return
        gate.append(request)
        if upgrade and isinstance(request.channel, RealtimeChannel):
            # Its connect deadline still runs: past it, 503 (as a connect() overrun).
            request.channel.waiting = request
        elif not upgrade and self.config.http_response_timeout:
            request.start_response_deadline(self.config.http_response_timeout)

    def release(self, refusal: Refuse | None = None) -> None:
        """The lifespan start-up is over: the waiting requests go on to the application;
        or, with ``refusal`` (it failed, or the server stopped first), they and every
        later one get it."""
        gate, self.gate = self.gate, refusal
        self._gate_overflowed = False
        for request in gate if isinstance(gate, list) else ():
            if _answered_or_gone(request):
                continue
            channel = request.channel
            if isinstance(channel, RealtimeChannel):
                channel.waiting = None
            request.dispatch_guarded()

    def waited_too_long(self, request: RealtimeRequest) -> None:
        """A WebSocket handshake waiting for the start-up reached its connect deadline."""
        if isinstance(self.gate, list) and request in self.gate:
            self.gate.remove(request)
        self.write_refusal(request, Refuse(503), upgrade=True)  # unless answered or gone

    def _scope(self, request: RealtimeRequest, kind: str) -> dict[str, Any]:
        scope = build_scope(
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
        if self._proxies:
            apply_proxy_headers(scope, self._proxies, *self._proxy_header_names)
        return scope

    def _websocket(self, request: RealtimeRequest) -> None:
        refusal = self._check_handshake(request)
        if refusal is not None:
            request.head_done()
            self.write_refusal(request, refusal, upgrade=True)
            return
        try:
            scope = self._scope(request, "websocket")
        except BadRequest:
            request.head_done()
            self.write_refusal(request, Refuse(400), upgrade=True)
            return
        client_ip = scope["client"][0] if scope.get("client") else None
        # The per-IP limit first: a client held there spends no --handshake-rate token.
        refusal = self._over_ip_limit(client_ip) or self._over_handshake_rate()
        if refusal is not None:
            request.head_done()
            self.write_refusal(request, refusal, upgrade=True)
            return
        conn = self.connection_class(self, request, scope)
        request.channel.upgrading = request.channel.upgraded = conn
        self.connections.add(conn)
        if client_ip is not None:
            conn.client_ip = client_ip
            self.per_ip[client_ip] = self.per_ip.get(client_ip, 0) + 1
        conn.start()

    def _check_handshake(self, request: RealtimeRequest) -> Refuse | None:
        """RFC 6455 4.2.1 (``realtime.scope.check_handshake``), then the server's own state,
        before anything of the application runs."""
        headers = {
            name.lower(): list(values) for name, values in request.requestHeaders.getAllRawHeaders()
        }
        refusal = check_handshake(request.method, request.clientproto, headers)
        if refusal is not None:
            return refusal
        if self.draining:
            return Refuse(503)
        limit = self.config.max_connections
        if limit and len(self.connections) >= limit:
            return Refuse(503)
        return None

    def count_ip(self, client_ip: str | None) -> bool:
        """``--max-connections-per-ip`` for a long HTTP stream (realtime.pubsub's): count it
        with the address's WebSockets, or False when the address has as many open."""
        if client_ip is None:
            return True
        if self._over_ip_limit(client_ip) is not None:
            return False
        self.per_ip[client_ip] = self.per_ip.get(client_ip, 0) + 1
        return True

    def uncount_ip(self, client_ip: str) -> None:
        """Give back the place ``count_ip`` took."""
        _count_down(self.per_ip, client_ip)

    def _over_ip_limit(self, client_ip: str | None) -> Refuse | None:
        """``--max-connections-per-ip``: 429 when this address has as many open."""
        limit = self.config.max_connections_per_ip
        if limit and client_ip is not None and self.per_ip.get(client_ip, 0) >= limit:
            return Refuse(429)
        return None

    def _over_handshake_rate(self) -> Refuse | None:
        """``--handshake-rate``: a token for this handshake, or 503 with ``Retry-After``.
        Taken last, once every other check passed: a refused client (per-IP limit, bad
        request) spends nobody's share. Logged at most every ``RATE_WARN_EVERY`` seconds,
        with the count refused meanwhile (a storm is not a line per refusal)."""
        bucket = self.handshakes
        if bucket is None or bucket.take():
            return None
        bucket.refused += 1
        now = self.clock.seconds()
        if now - bucket.warned_at >= RATE_WARN_EVERY:
            log.warn("{count} WebSocket handshake(s) over --handshake-rate {rate:g}/s "
                     "answered 503", count=bucket.refused, rate=bucket.rate)
            bucket.refused, bucket.warned_at = 0, now
        return Refuse(503, [(b"Retry-After", str(bucket.wait()).encode())])

    def _http(self, request: RealtimeRequest) -> None:
        if self.config.http_response_timeout and not request.deadline_started:
            request.start_response_deadline(self.config.http_response_timeout)
        try:
            scope = self._scope(request, "http")
        except BadRequest:
            self.write_refusal(request, Refuse(400), upgrade=False, close=True)
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
            d = as_deferred(result)
            d.addCallbacks(self._http_serve, self._http_failed,
                           callbackArgs=(request, scope), errbackArgs=(request, scope))
        else:
            self._http_serve(result, request, scope)

    def _http_serve(self, result: Any, request: RealtimeRequest, scope: dict[str, Any]) -> None:
        if request.finished or request._disconnected:
            return
        if isinstance(result, AsyncHttpConsumer):
            result._serve(request, scope, self.layer)
        elif isinstance(result, AsgiHttp):
            result.serve(request, self)
        elif isinstance(result, RoutedResource):
            # The resource sees what its route left over: a leaf route renders itself.
            request.scope = result.scope
            remaining = result.scope.get("path_remaining") or ""
            request.postpath = [http.unquote(s.encode()) for s in remaining.split("/")
                                ] if remaining else []
            request.render(resource.getChildForRequest(result.resource, request))
        elif resource.IResource.providedBy(result):
            request.render(resource.getChildForRequest(result, request))
        else:
            hint = ""
            if hasattr(result, "_send_asgi"):  # Channels' generic AsyncConsumer/SyncConsumer
                hint = ": generic consumers serve WebSocket routes and workers; use " \
                       "AsyncHttpConsumer over HTTP"
            log.error("application returned {obj!r} for an HTTP scope{hint}", obj=result,
                      hint=hint)
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
    def _plain(
        self, request: server.Request, status: int, body: bytes,
        content_type: bytes = b"text/plain; charset=utf-8",
    ) -> None:
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-length", str(len(body)).encode())
        request.setHeader(b"cache-control", b"no-store")
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def write_refusal(
        self, request: server.Request, refusal: Refuse, upgrade: bool, close: bool = False
    ) -> None:
        """A refusal as a complete HTTP response: status, headers, a short body. A refused
        upgrade, or ``close`` (a malformed request), ends the connection."""
        if _answered_or_gone(request):
            return
        request.setResponseCode(refusal.status, refusal.phrase)
        body = refusal.body or refusal.phrase + b"\n"
        if not any(name.lower() == b"content-type" for name, _ in refusal.headers):
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        for name, value in refusal.headers:
            request.responseHeaders.addRawHeader(name, value)
        request.setHeader(b"content-length", str(len(body)).encode())
        if upgrade:
            started = getattr(request.channel, "accepted_at", None)
            if started is not None:
                self.stats.observe_handshake(refusal.status, self.clock.seconds() - started)
            scope = getattr(request, "scope", None) or {
                "raw_path": request.path, "query_string": request.uri.partition(b"?")[2],
                "client": (_client_host(request), 0), "headers": []}
            self.log_ws("ws_reject", scope, started, status=refusal.status)
        if upgrade or close:
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

    def count_user(self, conn: WebSocketConnection, user: Any = None) -> bool:
        """``--max-connections-per-user``, as ``accept()`` is called: count the socket for
        its signed-in user (``scope["user"]``: Django's, ``login()``'s or a token's; or
        ``user``, one who signs in later, as realtime.pubsub's connect command), or
        False when that user has as many open already. Anonymous users are not counted:
        ``--max-connections-per-ip`` is for them. ``conn`` may be anything with a
        ``scope`` and a ``user_key`` (a Socket.IO polling session's handshake)."""
        key = user_key(user if user is not None else conn.scope.get("user"))
        if key is None:
            return True
        count = self.per_user.get(key, 0)
        if count >= self.config.max_connections_per_user:
            log.info("refused a connection for user {user}: {count} open, "
                     "--max-connections-per-user", user=key, count=count)
            return False
        self.per_user[key] = count + 1
        conn.user_key = key
        return True

    def uncount_user(self, conn: WebSocketConnection) -> None:
        """Give back the place ``count_user`` took for the socket's user, if it took one."""
        if conn.user_key is not None:
            key, conn.user_key = conn.user_key, None
            _count_down(self.per_user, key)

    def closed(self, conn: WebSocketConnection) -> None:
        if conn in self.connections and conn.client_ip is not None:
            _count_down(self.per_ip, conn.client_ip)
        self.uncount_user(conn)
        self.connections.discard(conn)
        if not self.connections and self._no_websockets:
            waiting, self._no_websockets = self._no_websockets, []
            for d in waiting:
                d.callback(None)
        self.maybe_drained()

    def websockets_gone(self) -> Deferred[None]:
        """Fires once no WebSocket is open (at once if none is)."""
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._no_websockets.append(d)
        return d

    def maybe_drained(self) -> None:
        """While draining: fire the drain once no WebSocket, no HTTP connection and no
        ASGI app for an HTTP request is left (each of them calls this as it ends)."""
        if self.draining and not self._busy():
            self.drain_over()

    def _busy(self) -> bool:
        """What the drain waits for: a WebSocket, an HTTP connection or an ASGI app for an
        HTTP request."""
        return bool(self.connections or self.open_channels or self.asgi_running)

    def drain_over(self) -> None:
        """The drain is complete, or its deadline passed (whatever is left is the
        reactor's to drop)."""
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.callback(None)

    def drain(self) -> Deferred[None]:
        """Refuse new upgrades with 503 (and say 503 on /readyz) at once, then close the open
        sockets with 1001, ``drain_batch`` of them every ``drain_interval`` seconds (a
        thundering herd of reconnects is what a deploy must not cause), and close every
        HTTP connection once what it is doing is done (``RealtimeChannel.drain``: its
        response sent, its body read); fires when all are gone and the ASGI apps they ran
        have returned. The caller enforces the deadline (``abort_all``, ``drain_over``)."""
        self.draining = True
        for listener in list(self.drain_listeners):
            try:
                listener.server_draining()
            except Exception:
                log.failure("{listener} failed at the drain's start", listener=listener)
        for channel in list(self.open_channels):
            channel.drain()
        if self.connections:
            self._drain_batch(list(self.connections))
        if not self._busy():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    def _drain_batch(self, remaining: list[WebSocketConnection]) -> None:
        batch, rest = remaining[: self.config.drain_batch], remaining[self.config.drain_batch :]
        for conn in batch:
            conn.go_away()
        rest = [conn for conn in rest if conn in self.connections]
        if rest:
            self._drain_call = self.clock.callLater(
                self.config.drain_interval, self._drain_batch, rest
            )

    def abort_all(self) -> None:
        call = getattr(self, "_drain_call", None)
        if call is not None and call.active():
            call.cancel()
        for conn in list(self.connections):
            conn.abort()

    def abort_http(self) -> None:
        """The drain's deadline: HTTP connections still busy are dropped (a response not
        finished in time: the client sees it cut)."""
        for channel in list(self.open_channels):
            transport: Any = channel.transport
            if transport is not None:
                transport.abortConnection()


def _count_down(counts: dict[str, int], key: str) -> None:
    """One fewer open for ``key``; gone from ``counts`` at none."""
    left = counts.get(key, 1) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def user_key(user: Any) -> str | None:
    """Who a scope's user is, for counting: its ``pk`` (Django), ``id`` (``login()``'s
    ``User``) or token ``sub``; None for an anonymous user or none at all."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    for name in ("pk", "id"):
        value = getattr(user, name, None)
        if value is not None:
            return f"{type(value).__name__}:{value}"
    claims = getattr(user, "claims", None)
    if isinstance(claims, dict) and claims.get("sub") is not None:
        return f"sub:{claims['sub']}"
    return None
