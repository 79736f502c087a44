"""The bridge: one Autobahn ``WebSocketServerProtocol`` per connection, driving one consumer.

The handshake is ours: twisted.web parses the request, ``realtime.site`` validates it, the
application picks a consumer and ``connect()`` runs while twisted.web still owns the
socket, so a refusal is an ordinary HTTP response. ``accept()`` writes the 101 response,
takes the transport over from twisted.web and puts Autobahn's frame parser straight into
the OPEN state (no second parse of the request).

Autobahn parses frames and enforces the inbound size limits (``onPing`` answers pings);
whole small text and binary frames at the start of a read skip its parser
(``_parse_frames``), and the decode a consumer's ``str`` needs is the UTF-8 validation.
Everything on the reactor clock is ours (keepalive, lifetime, the close deadline), on the
injected reactor, so a ``Clock`` drives it in tests; Autobahn's own timers (on txaio's
global loop) are switched off. Outbound frames are written to the transport directly: the
inbound size limit must not apply to sends, and the per-send Python path of
``sendMessage`` is most of its cost.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import struct
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from realtime import _fanout, _masking
from realtime.deflate import Deflater, choose, inbound, parse_offers
from realtime.exceptions import (
    ConnectionClosed,
    HeaderPairs,
    Refuse,
    StopConsumer,
)
from realtime.layers.base import (
    CORKED,
    HELD,
    corking,
    guarded_for_threads,
    hold,
    let_out_for,
    release,
    skip_held,
)
from realtime.ratelimit import TokenBucket
from realtime.routing import Ready
from realtime.threads import _explained, as_deferred, run_handler

if TYPE_CHECKING:
    from twisted.web.server import Request

    from realtime.site import RealtimeSite

#: The subprotocol the server answers when a client offered it and the application picked
#: none (``accept()``): how a browser can send its token as a ``bearer.<jwt>`` entry.
MARKER_PROTOCOL = "realtime"

log = Logger()

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ids = itertools.count(1)


def _direct_transports() -> tuple[type, ...]:
    from twisted.internet import tcp, unix

    return (tcp.Server, unix.Server)


_DIRECT_TRANSPORTS = _direct_transports()
_masking.install()
_OPEN = WebSocketProtocol.STATE_OPEN
# A cork holding this much is written out at once (one read can ask for many answers).
_CORK_LIMIT = 65536
#: Frames up to this size may skip Autobahn's parser (``_parse_frames``); larger ones are
#: unmasked faster by Autobahn's NVX masker than by Python's big integers.
FAST_FRAME_LIMIT = _masking.SMALL
_unmask = _masking.unmask
_CLOSING = WebSocketProtocol.STATE_CLOSING
_CLOSED = WebSocketProtocol.STATE_CLOSED

#: Close codes a server may send (RFC 6455 7.4.1 and the IANA registry); 1005/1006/1015 never.
SERVER_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                                1013, 1014})


class RecentText:
    """The text message decoded last, with the UTF-8 it came as: a consumer that sends the
    very same ``str`` on (an echo, a relay, a ``broadcast(text=text_data)``) does not pay to
    encode it again (for a 64 KiB message of mixed scripts, a fifth of the echo's CPU). Keyed
    by identity, so it can never be wrong; one tuple, replaced whole (thread-safe to read)."""

    last: tuple[str, bytes] = ("", b"")


def utf8(text: str) -> bytes:
    last = RecentText.last
    if text is last[0]:
        return last[1]
    return text.encode("utf-8")


def valid_server_close_code(code: int) -> bool:
    return code in SERVER_CLOSE_CODES or 3000 <= code <= 4999


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def frame_header(opcode: int, length: int) -> bytes:
    """The header of one unmasked, final server frame."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def encode_frame(opcode: int, payload: bytes) -> bytes:
    return frame_header(opcode, len(payload)) + payload


def truncate_reason(reason: str | None, limit: int = 123) -> bytes:
    """The UTF-8 close reason cut to ``limit`` bytes on a character boundary."""
    if not reason:
        return b""
    raw = reason.encode("utf-8")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


def make_factory(config: Any, reactor: Any) -> WebSocketServerFactory:
    """Autobahn's factory with every unsafe default set explicitly.

    Origins stay open here (``['*']``, null allowed) because origin policy lives in the
    middleware; timers are off because ours run on the injected reactor; compression
    offers are refused (the default, restated).
    """
    factory = WebSocketServerFactory(reactor=reactor, server=None)
    factory.setProtocolOptions(
        versions=[13],
        webStatus=False,
        # Text is validated once, by the decode the consumer's str needs anyway (onMessage:
        # invalid UTF-8 still closes with 1007, at the end of the message), instead of
        # twice: Autobahn's incremental validator costs ~150 µs per 64 KiB of mixed text.
        utf8validateIncoming=False,
        requireMaskedClientFrames=True,
        applyMask=True,
        maskServerFrames=False,
        maxFramePayloadSize=config.max_frame_size,
        maxMessagePayloadSize=config.max_message_size,
        autoFragmentSize=0,
        failByDrop=False,
        echoCloseCodeReason=False,
        openHandshakeTimeout=0,
        closeHandshakeTimeout=0,
        tcpNoDelay=True,
        perMessageCompressionAccept=lambda offers: None,
        autoPingInterval=0,
        autoPingTimeout=0,
        serveFlashSocketPolicy=False,
        allowedOrigins=["*"],
        allowNullOrigin=True,
        maxConnections=0,
        trustXForwardedFor=0,
    )
    return factory


class _DeflatingSend:
    """A compressing socket's ``_sock`` on the fan-out's fast path: what is sent (one frame,
    or held frames joined) goes out compressed, compressed once per broadcast for every
    member; a send the kernel does not take whole is finished here, the usual way
    (``_send_rest``), so the caller sees it all sent. An error is left to the caller,
    which writes the uncompressed frames to Twisted's buffer (valid: RSV1 clear), where
    Twisted meets the error and closes."""

    __slots__ = ("bits", "conn", "deflater", "sock")

    def __init__(self, conn: WebSocketConnection, deflater: Deflater) -> None:
        self.conn = conn
        self.sock = conn.transport.socket  # type: ignore[union-attr]
        self.deflater = deflater
        self.bits = conn._deflate_bits

    def send(self, data: bytes) -> int:
        conn = self.conn
        out = self.deflater.frame(data, self.bits)
        try:
            sent = self.sock.send(out)
        except BlockingIOError:
            sent = 0
        if sent != len(out):
            conn._send_rest(conn.transport, sent, out)
        return len(data)


class _TranslatingSend:
    """A translating socket's ``_sock`` on the fan-out's fast path
    (``translate_broadcasts``): what is sent (one frame, or held frames joined) goes out
    translated, each frame, those the translation skips left out, through ``sock`` (the
    socket, or a ``_DeflatingSend``); translated once per process (``_memo``: the same
    bytes reach every member), so a member costs a lookup and a ``send()``. A send the
    kernel does not take whole, and an error, are finished here (``_send_rest``: on an
    error the translated bytes go to Twisted's buffer, where Twisted meets it and
    closes), so the caller sees it all sent and never writes an untranslated frame."""

    __slots__ = ("conn", "memo", "sock", "translate")

    def __init__(self, conn: WebSocketConnection, translate: Callable[[bytes], bytes | None],
                 sock: Any) -> None:
        self.conn = conn
        self.translate = translate
        self.sock = sock
        self.memo = _memo(translate)

    def send(self, data: bytes) -> int:
        out = self.memo.outs.get(data)
        if out is None:
            out = _translate(self.translate, data)
        if out:
            try:
                sent = self.sock.send(out)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = -1
            if sent != len(out):
                self.conn._send_rest(self.conn.transport, sent, out)
        return len(data)


#: How many bytes of frames each translation's memo keeps: above what is ever held at once
#: (``layers.base.JOIN_LIMIT``), so a burst's frames are translated once for all members.
MEMO_BYTES = 1 << 20


class _Memo:
    """Frames (or held frames joined) and their translation, oldest out first past
    ``MEMO_BYTES``."""

    __slots__ = ("outs", "size")

    def __init__(self) -> None:
        self.outs: dict[bytes, bytes] = {}
        self.size = 0

    def put(self, data: bytes, out: bytes) -> None:
        self.outs[data] = out
        self.size += len(data) + len(out)
        outs = self.outs
        while self.size > MEMO_BYTES and len(outs) > 1:
            oldest = next(iter(outs))
            self.size -= len(oldest) + len(outs.pop(oldest))


#: By translation function, held weakly: a memo goes with its function.
_MEMOS: weakref.WeakKeyDictionary[Any, _Memo] = weakref.WeakKeyDictionary()


def _memo(translate: Callable[[bytes], bytes | None]) -> _Memo:
    memo = _MEMOS.get(translate)
    if memo is None:
        memo = _MEMOS[translate] = _Memo()
    return memo


def _translate(translate: Callable[[bytes], bytes | None], data: bytes) -> bytes:
    """``data`` (a frame, or frames joined) translated frame by frame, those skipped left
    out (empty: nothing to write); once per process (the memo)."""
    memo = _memo(translate)
    out = memo.outs.get(data)
    if out is None:
        parts = [translate(frame) for frame in _frames(data)]
        out = b"".join(part for part in parts if part is not None)
        memo.put(data, out)
    return out


def _frames(data: bytes) -> list[bytes]:
    """The frames of prepared (unmasked) frames joined back to back."""
    frames = []
    at = 0
    while at < len(data):
        size = data[at + 1] & 0x7F
        head = 2
        if size == 126:
            size, head = int.from_bytes(data[at + 2:at + 4], "big"), 4
        elif size == 127:
            size, head = int.from_bytes(data[at + 2:at + 10], "big"), 10
        end = at + head + size
        frames.append(data if at == 0 and end == len(data) else data[at:end])
        at = end
    return frames


#: The per-connection timers (``WebSocketConnection._cancel_timers``); the token's two.
_TOKEN_TIMERS = ("_expiry_call", "_expiring_call")
_TIMERS = ("_ping_call", "_pong_deadline", "_lifetime_call", "_close_call", "_layer_close_call",
           *_TOKEN_TIMERS)


class WebSocketConnection(WebSocketServerProtocol):
    """One WebSocket: the handshake, the consumer's ordered handler queue, the timers.

    The phases are ``handshake`` (twisted.web owns the socket; ``connect()`` runs), then
    Autobahn's OPEN, CLOSING and CLOSED. Consumers talk to it through ``accept``,
    ``send_text``/``send_bytes``, ``close`` and ``close_with_code``.
    """

    # Per-connection state starts as these class-level defaults and becomes an instance
    # attribute only when it changes: an idle socket keeps a small __dict__ (idle memory
    # per connection is a performance target). ``for_site`` also lifts Autobahn's 29 config
    # attributes, which it would otherwise copy into every instance, to a per-site class.
    consumer: Any = None
    in_handshake = True
    finished = False
    disconnect_code: int | None = None
    channel_name: str | None = None
    #: A text message sent just before every close frame the server starts with an
    #: application's code (``close_with_code``: the consumer's ``close``, ``group_close``,
    #: the drain), made from the code and reason: for clients that cannot read a close
    #: frame's code (Centrifugo's unidirectional WebSocket sends a ``disconnect`` push).
    close_notice: Callable[[int, str | None], str] | None = None
    #: How far this socket has had the held broadcasts: entry ``seq`` and how many of its
    #: frames (``realtime.layers.base.let_out_for``).
    _held_seq = -1
    _held_count = 0
    #: The client address this socket counts against (``--max-connections-per-ip``).
    client_ip: str | None = None
    #: The signed-in user it counts for (``--max-connections-per-user``), once accepted.
    user_key: str | None = None
    _busy = False
    #: The handler Deferred in flight, and the timer that cancels it once the socket has been
    #: closed for --application-close-timeout.
    _running: Deferred[Any] | None = None
    #: The first exception a handler raised (logged, then 500 or 1011).
    handler_error: BaseException | None = None
    _kill_call: Any = None
    _killed = False
    # Queues are made when first needed (an empty deque costs 624 bytes).
    _pending: deque[tuple[Callable[..., Any], tuple[Any, ...]]] | None = None
    _paused = False
    _threaded = False
    #: The consumer's ``take_event_now`` (layer events it takes at once, outside its queue:
    #: ``realtime.socketio``), looked up once, not per event.
    _take_now: Any = None
    _ping_call: Any = None
    _pong_deadline: Any = None
    _lifetime_call: Any = None
    _close_call: Any = None
    #: ``group_close``'s deadline while a handler keeps the queued close waiting.
    _layer_close_call: Any = None
    _expiry_call: Any = None
    _expiring_call: Any = None
    _closed_code: int | None = None
    _graceful_drop = False
    _opened_at: float | None = None
    _bucket: TokenBucket | None = None
    # Outbound flow control: frames wait in _outq while the transport's buffer is full.
    _write_paused = False
    _outq: deque[bytes] | None = None
    _outq_bytes = 0
    _slow_closing = False
    _direct = False
    # Broadcasts held during a read wait for the end of the reactor turn, or the broadcast
    # delay (``realtime.layers.base.release``), except on the in-memory transports of the
    # communicators, whose writes are delivered synchronously for tests: there, to the end
    # of each read. (Set per connection only there: idle memory.)
    _per_read = False
    # While this connection's own input is parsed, its sends gather here and leave in one
    # write when the read is done (``dataReceived``): 16 echoes of one read, one send().
    _cork: list[bytes] | None = None
    _cork_bytes = 0
    # The fan-out fast path (``deliver_frame``): True only while the socket is open, plain
    # TCP/unix, not paused, with nothing queued, no cork, and nothing in Twisted's buffer.
    # Every write that can leave bytes in Twisted's buffer (and every change of the others)
    # clears it; the slow path checks them all and sets it again.
    _clean = False
    _sock: Any = None
    # This connection's entry in the fan-out's socket table (``realtime._fanout``): plain
    # TCP/unix sockets only (-1: none); the entry is the descriptor while ``_clean`` and
    # the socket is written as it is (no deflater, no translation), else -1.
    _slot = -1
    # Autobahn sets ``state`` in accept(); a connection whose handshake was abandoned during
    # an async connect() is still a group member until its detach, and is not open.
    state: Any = None
    #: Messages the ``drop`` policy skipped for this client.
    dropped = 0
    #: permessage-deflate (``--compression``, ``realtime.deflate``): the site's deflater
    #: and the window bits this socket's messages are compressed with; None: it does not
    #: compress. A compressing socket's fast path sends through ``_DeflatingSend``.
    _deflater: Deflater | None = None
    _deflate_bits = 15
    #: ``translate_broadcasts``: broadcast frames pass through it on their way to this
    #: socket (which then never takes the fast path); None: they go out as they are.
    _translate: Callable[[bytes], bytes | None] | None = None

    #: The largest payload ``_parse_frames`` takes without Autobahn's parser (``for_site``:
    #: within the frame and message limits); -1: every frame goes to Autobahn.
    _fast_limit = -1

    @classmethod
    def for_site(cls, factory: WebSocketServerFactory) -> type[WebSocketConnection]:
        """A subclass carrying the factory's protocol options as class attributes."""
        options: dict[str, Any] = {name: getattr(factory, name) for name in cls.CONFIG_ATTRS}
        limit = FAST_FRAME_LIMIT
        for size in (factory.maxFramePayloadSize, factory.maxMessagePayloadSize):
            if 0 < size < limit:
                limit = size
        options["_fast_limit"] = limit
        return type(cls.__name__, (cls,), options)

    def __init__(self, site: RealtimeSite, request: Request, scope: dict[str, Any]) -> None:
        super().__init__()
        self.factory = site.ws_factory
        self.site = site
        self.config = site.config
        self.reactor: Any = site.reactor
        self.scope = scope
        self._request: Request | None = request
        self._io_thread = threading.get_ident()
        #: A process-unique id, written to the access log.
        self.id = next(_ids)
        self.stats = site.stats
        rate = self.config.rate_limit
        if rate:  # inbound rate limit (--rate-limit, --rate-burst)
            self._bucket = TokenBucket(rate, self.config.rate_burst, self.reactor)

    # -- handshake (twisted.web owns the socket) --------------------------------------------
    def start(self) -> None:
        """Ask the application for a consumer, then run its ``connect()``."""
        assert self._request is not None
        self._request.notifyFinish().addErrback(self._handshake_lost)
        try:
            result = self.site.application(self.scope)
        except BaseException as exc:
            self._app_failed(Failure(exc))
            return
        if type(result) is Ready:
            result = result.value
        if isinstance(result, Deferred) or hasattr(result, "__await__"):
            d = as_deferred(result)
            d.addCallbacks(self._got_consumer, self._app_failed)
        else:
            self._got_consumer(result)

    def _app_failed(self, failure: Failure) -> None:
        if not self.in_handshake or self.finished:
            return
        if isinstance(failure.value, Refuse):
            self.refuse(failure.value)
        else:
            log.failure("application failed to route {path}", failure, path=self.scope["path"])
            self.refuse(Refuse(500))

    def _got_consumer(self, consumer: Any) -> None:
        if not self.in_handshake or self.finished:
            return
        if not hasattr(consumer, "_on_connect"):
            log.error(
                "application returned {obj!r} for a WebSocket scope, not a WebSocket consumer",
                obj=consumer,
            )
            self.refuse(Refuse(500))
            return
        self.consumer = consumer
        # The router gave the consumer its own copy of the scope (url_route, ...): keep it.
        if getattr(consumer, "scope", None) is None:
            consumer.scope = self.scope
        else:
            self.scope = consumer.scope
        consumer._conn = self
        self._threaded = bool(getattr(consumer, "thread_handlers", False))
        self._take_now = getattr(consumer, "take_event_now", None)
        layer = self.site.layer
        joins = []
        if layer is not None:
            # A thread handler's direct layer call would race the reactor: it gets the layer
            # guarded (refused off this thread), the reactor's consumers the layer itself.
            consumer.channel_layer = (guarded_for_threads(layer, self._io_thread)
                                      if self._threaded else layer)
            self.channel_name = consumer.channel_name = layer.attach(self)
            for group in getattr(consumer, "groups", ()):
                joins.append(layer.group_add(group, self.channel_name))
        waiting = [d for d in joins if not d.called]
        if not waiting:
            for d in joins:
                d.addErrback(self._join_failed)
            if not self.finished:  # a join that failed at once refused the handshake
                self._run(consumer._on_connect)
            return
        # As in Channels: the ``groups`` are joined before connect() runs (with Redis, a
        # SUBSCRIBE in flight), so a group_send right after the handshake reaches this member.
        gathered = gatherResults(joins, consumeErrors=True)
        gathered.addCallbacks(self._joined, self._join_failed)

    def _joined(self, _: Any) -> None:
        """The ``groups`` are joined; a client that left meanwhile has had its disconnect()
        and its detach, so its connect() (which could join more groups) never runs."""
        if not self.finished:
            self._run(self.consumer._on_connect)

    def _join_failed(self, failure: Failure) -> None:
        failure = getattr(failure.value, "subFailure", failure)
        if failure.check(TypeError, ValueError):
            # The consumer's own fault (a bad group name, more groups than
            # --max-groups-per-connection allows): no retry helps, so 500, not 503.
            log.error("{consumer}: its groups cannot be joined: {error}; handshake refused",
                      consumer=type(self.consumer).__qualname__,
                      error=failure.getErrorMessage())
            status = 500
        else:
            log.failure("joining the consumer's groups failed", failure)
            status = 503
        if self.in_handshake and not self.finished:
            self.refuse(Refuse(status))

    def _handshake_lost(self, failure: Failure) -> None:
        """The client went away while ``connect()`` ran."""
        if self.in_handshake and not self.finished:
            self.in_handshake = False
            self._request = None
            self._finish(1006)

    def connect_overrun(self) -> None:
        """The connect deadline passed with the handshake undecided: 503."""
        if self.in_handshake and not self.finished:
            log.warn("connect() on {path} overran the connect deadline", path=self.scope["path"])
            self.refuse(Refuse(503))

    def refuse(self, refusal: Refuse) -> None:
        """Answer the handshake with an HTTP error; the consumer (if any) is told 1006."""
        if not self.in_handshake:
            return
        request = self._request
        self.in_handshake = False
        self._request = None
        if request is not None:
            self.site.write_refusal(request, refusal, upgrade=True)
        self._finish(1006)

    def accept(self, subprotocol: str | None = None, headers: HeaderPairs | None = None) -> None:
        if subprotocol is None and MARKER_PROTOCOL in self.scope["subprotocols"]:
            # A browser fails a handshake whose offered subprotocols get no answer; a
            # client that offers "realtime" (realtime.js, beside its bearer.<jwt> entry)
            # gets it when the application picks none.
            subprotocol = MARKER_PROTOCOL
        if subprotocol is not None and subprotocol not in self.scope["subprotocols"]:
            raise ValueError(
                f"subprotocol {subprotocol!r} was not offered by the client "
                f"(offered: {self.scope['subprotocols']!r})"
            )
        if self._call_in_io_thread(self.accept, subprotocol, headers):
            return
        if not self.in_handshake:
            if self.finished or self.state != _OPEN:
                return
            raise RuntimeError("accept() on a WebSocket that is already open")
        if self.config.max_connections_per_user and not self.site.count_user(self):
            self.refuse(Refuse(429))  # --max-connections-per-user: this user has enough
            return
        request = self._request
        assert request is not None
        self.in_handshake = False
        self._request = None
        channel: Any = request.channel
        transport: Any = channel.transport
        if transport is None:
            self._finish(1006)
            return
        channel.handshake_done()
        now = self.reactor.seconds()
        self._opened_at = now
        accepted_at = getattr(channel, "accepted_at", None)
        if accepted_at is not None:
            self.stats.observe_handshake(101, now - accepted_at)
        if self.site.access_log is not None:
            self.site.log_ws("ws_connect", self.scope, accepted_at, status=101, conn=self.id)
        key = request.requestHeaders.getRawHeaders(b"sec-websocket-key", [b""])[0].strip()
        lines = [
            b"HTTP/1.1 101 Switching Protocols",
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Accept: " + accept_key(key),
        ]
        if subprotocol is not None:
            lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1"))
        if self.site.server_header and not any(
            name.lower() == b"server" for name, _ in headers or ()
        ):
            lines.append(b"Server: " + self.site.server_header)
        from realtime.cookies import response_headers

        for name, value in [*(headers or ()), *response_headers(self.scope)]:
            lines.append(name + b": " + value)
        deflate_bits = 0
        if self.site.deflater is not None:
            offers = request.requestHeaders.getRawHeaders(b"sec-websocket-extensions")
            chosen = choose(parse_offers(offers)) if offers else None
            if chosen is not None:
                lines.append(b"Sec-WebSocket-Extensions: " + chosen[0])
                deflate_bits = chosen[1]
        leftover = channel.release_transport()
        # Re-wire the transport (TLS wraps the protocol; plain TCP holds it directly).
        if isinstance(transport, ProtocolWrapper):
            wrapper: Any = transport
            wrapper.wrappedProtocol = self
        else:
            transport.protocol = self
        self.makeConnection(transport)
        # Autobahn's queue for chopped/synchronous sends, which the bridge never makes:
        # an empty tuple answers its len() checks (a deque would cost 624 bytes).
        self.send_queue = ()  # type: ignore[assignment]
        transport.registerProducer(self, True)
        # Plain TCP and unix sockets (not TLS, not the in-memory transports of the tests)
        # take the direct send path (see ``_write``).
        self._direct = isinstance(transport, _DIRECT_TRANSPORTS)
        if getattr(transport, "holds_per_read", False):
            self._per_read = True
        # Everything is in the OPEN state before the 101 goes out: a peer may answer with
        # frames before write() returns (in memory it does), and they must parse as frames.
        self.websocket_version = 13
        self.websocket_protocols = self.scope["subprotocols"]
        self.websocket_protocol_in_use = subprotocol
        self.websocket_extensions = []
        self.websocket_extensions_in_use = []
        if deflate_bits:
            # After makeConnection, which resets it: Autobahn's parser inflates RSV1
            # messages with it (bounded by --max-message-size after inflation).
            self._perMessageCompress = inbound()
            self.websocket_extensions_in_use = [self._perMessageCompress]
            self._deflater = self.site.deflater
            if deflate_bits != 15:
                self._deflate_bits = deflate_bits
        self.inside_message = False
        self.current_frame: Any = None
        skip_held(self)  # broadcasts made before this accept are not for this socket
        self.state = _OPEN
        self.site.opened(self)
        self._schedule_keepalive()
        timeout = self.config.websocket_timeout
        if timeout >= 0:
            self._lifetime_call = self.reactor.callLater(timeout, self._lifetime_over)
        if self.scope.get("auth_expires_at") is not None:
            self._arm_token_timers()
        if self._bucket is not None:
            self._bucket.last = self.reactor.seconds()  # full from the accept on
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
        transport.resumeProducing()
        if leftover:
            self.dataReceived(leftover)

    # -- consumer-facing sends ------------------------------------------------------------------
    def send_text(self, text: str) -> None:
        self._write_message(0x1, utf8(text))

    def send_bytes(self, data: bytes) -> None:
        self._write_message(0x2, data)

    def _write_message(self, opcode: int, payload: bytes) -> None:
        if self._call_in_io_thread(self._write_message, opcode, payload):
            return
        if self.in_handshake:
            # A send before accept accepts, as Daphne's serverSend() means to (Daphne 4
            # refuses such a send first, with 500: tests/e2e/test_ws_vs_daphne.py).
            self.accept()
        if self.state != _OPEN:
            raise ConnectionClosed("send on a WebSocket that is closing or closed")
        stats = self.stats
        stats.messages_out += 1
        stats.bytes_out += len(payload)
        deflater = self._deflater
        if deflater is not None:
            deflated = deflater.message(opcode, payload, self._deflate_bits)
            if deflated is not None:
                self._write(deflated)
                return
        if len(payload) < 16384:
            self._write(frame_header(opcode, len(payload)) + payload)
        else:
            self._write(frame_header(opcode, len(payload)), payload)

    # -- outbound flow control -----------------------------------------------------------------
    def send_together(self, *messages: str | bytes) -> None:
        """Messages that only make sense together (a Socket.IO packet and its binary
        attachments), each its own frame, in one write: the slow-consumer policy meets
        them as one (``_write``), so they are sent or queued, or dropped (one dropped
        message), all of them; never some, even when the transport's buffer fills in the
        middle of them. Only that path pays for the join."""
        if self._call_in_io_thread(self.send_together, *messages):
            return
        if self.in_handshake:
            self.accept()
        if self.state != _OPEN:
            raise ConnectionClosed("send on a WebSocket that is closing or closed")
        stats = self.stats
        deflater = self._deflater
        frames: list[bytes] = []
        for message in messages:
            opcode, payload = (0x1, utf8(message)) if isinstance(message, str) else (
                0x2, message)
            stats.messages_out += 1
            stats.bytes_out += len(payload)
            if deflater is not None:
                deflated = deflater.message(opcode, payload, self._deflate_bits)
                if deflated is not None:
                    frames.append(deflated)
                    continue
            frames += (frame_header(opcode, len(payload)), payload)
        self._write(b"".join(frames))

    def _write(self, data: bytes, more: bytes | None = None) -> bool:
        """Write whole frames; while the transport's buffer is full they wait in our queue,
        and a frame that would be queued while more than ``max_send_buffer`` bytes already
        wait makes the slow-consumer policy act (one large send to an idle client still goes
        out: the check is on what already waits). True when written or queued."""
        if HELD:  # what is held for this socket goes first (see realtime.layers.base)
            let_out_for(self, self.channel_name)
            if self._slow_closing:
                return False  # they made it close 4008: nothing after that close frame
        return self._put(data, more)

    def _put(self, data: bytes, more: bytes | None = None) -> bool:
        """``_write`` once nothing held may go ahead: into the cork, the socket, Twisted's
        buffer or our queue."""
        if not self._write_paused and not self._outq:
            cork = self._cork
            if cork is not None:
                cork.append(data)
                size = len(data)
                if more is not None:
                    cork.append(more)
                    size += len(more)
                self._cork_bytes += size
                if self._cork_bytes >= _CORK_LIMIT:
                    self._uncork(keep_corked=True)
                return True
            transport: Any = self.transport
            if self._nothing_buffered(transport):
                # Nothing waits in Twisted's buffer: send now, as asyncio transports do,
                # instead of buffering, registering for writability with epoll, and sending
                # on the next reactor turn (most of a fan-out delivery's cost).
                self._send_now(transport, data, more)
                return True
            self._unclean()
            transport.write(data)
            if more is not None:
                transport.write(more)
            return True
        self._unclean()
        if self._outq_bytes > self.config.max_send_buffer:
            self._slow_consumer()
            return False
        if self._outq is None:
            self._outq = deque()
        if more is not None:
            # One item per frame: the slow-consumer policy drops whole frames, never a
            # payload whose header already went out.
            data += more
        self._outq.append(data)
        self._outq_bytes += len(data)
        return True

    def dataReceived(self, data: bytes) -> None:
        """Parse a read with this connection's sends corked: what the handlers send in
        answer to the frames of one read leaves in one write (Bun and Centrifugo do the
        same), ordered with everything else sent to this socket. Broadcasts the handlers
        make are held for the read too, and for the rest of the reactor turn or the
        broadcast delay (``realtime.layers.base.hold``): a burst of messages to one group,
        or messages from several publishers read in one turn, reach each member in one
        write."""
        corked = self._direct and self._cork is None
        if corked:
            self._cork = []
            self._unclean()
        hold(None if self._per_read else self.reactor)
        try:
            if self.current_frame is None and not self.inside_message and self.state == _OPEN:
                if self.data:  # the start of a frame the last read cut (kept here or by
                    # Autobahn: either way unparsed, and parsed again from its first byte)
                    data = self.data + data
                    self.data = b""
                self._parse_frames(data)
            else:
                super().dataReceived(data)
        finally:
            try:
                # The held broadcasts first (unless they wait for the turn's end or the
                # delay): this socket's own copy joins the cork.
                release()
            finally:
                if corked:
                    self._uncork()

    def _parse_frames(self, data: bytes) -> None:
        """Autobahn's parser, short-cut for the common case: a read that starts with whole,
        final, masked text or binary frames of up to ``_fast_limit`` bytes. Each goes
        straight to ``onMessage`` (Autobahn builds a frame header, a masker and a message
        for it and makes a dozen calls: a fifth of a small echo's CPU). From the first
        frame that is anything else (a control frame, a fragment, a 64-bit length, any
        protocol error) or once the socket is no longer open, the rest of the read goes to
        Autobahn, which parses and answers it exactly as before. A frame of the common kind
        that the read cut waits, unparsed, in Autobahn's buffer, and the next read starts
        with it (Autobahn, given it, would only have begun the frame: nothing to see). A
        read taken whole here never reaches Autobahn: its ``trafficStats`` (octets, frames,
        messages) and its per-read debug line miss it; nothing here reads them. Transports
        never re-enter ``dataReceived`` (the communicators' wire queues), so the local
        cursor is safe."""
        limit = self._fast_limit
        end = len(data)
        pos = 0
        # data[pos:] is a frame of that kind that the read cut (Autobahn would only have
        # begun it; a header it would reject is never this); with the short cut off
        # (limit -1), nothing is.
        cut = False
        while pos < end:
            if end - pos < 2:
                cut = limit >= 0  # one byte, of any kind: Autobahn, too, needs two to judge
                break
            first = data[pos]
            if first != 0x81 and first != 0x82:
                break  # not FIN + text/binary with RSV clear
            n = data[pos + 1] ^ 0x80  # the mask bit set: the 7-bit length; unmasked: >= 128
            if n < 126:
                start = pos + 6
            elif n == 126:
                if end - pos < 4:
                    cut = limit >= 126  # the length is still to come
                    break
                n = (data[pos + 2] << 8) | data[pos + 3]
                if n < 126:
                    break  # not the minimal length encoding: Autobahn's 1002
                start = pos + 8
            else:
                break  # a 64-bit length or an unmasked frame
            if n > limit:
                break
            stop = start + n
            if stop > end:
                cut = True
                break
            payload = _unmask(data[start - 4 : start], data[start:stop])
            pos = stop
            self.onMessage(payload, first == 0x82)
            if self.state != _OPEN:
                break
        if cut:  # only ever set while the socket is open
            self.data = data[pos:]
        elif pos < end:
            super().dataReceived(data[pos:] if pos else data)

    def _nothing_buffered(self, transport: Any) -> bool:
        """A plain socket with nothing waiting in Twisted's buffer: a send may go straight
        to the kernel without overtaking anything."""
        return self._direct and not transport._tempDataLen and (
            transport.offset == len(transport.dataBuffer)
        )

    def _uncork(self, keep_corked: bool = False) -> None:
        """Write what the cork gathered (one send, or a gathering one for a large frame);
        ``keep_corked``: go on gathering afterwards (the rest of the read)."""
        cork = self._cork
        self._cork = None
        self._cork_bytes = 0
        if cork:
            # Not ``_write``: what is held now was broadcast after all the cork holds (every
            # write lets held broadcasts out first), so it stays held, behind the cork.
            if len(cork) == 1:
                self._put(cork[0])
            elif len(cork) == 2 and len(cork[1]) >= 16384:
                self._put(cork[0], cork[1])
            else:
                self._put(b"".join(cork))
        if keep_corked:
            self._cork = []

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """Autobahn's own writes (close frames, 1002/1007/1009 included): what the cork
        holds and what waits in our queue go first, so nothing follows a close frame."""
        closing = self._slow_closing
        if HELD:
            let_out_for(self, self.channel_name)
        if self._slow_closing and not closing:
            return  # the held broadcasts made it close 4008 (slow consumer): nothing after
        self._unclean()
        if self._cork is not None:
            self._uncork(keep_corked=True)
        if self._outq:
            self._flush_queue()
        super().sendData(data, sync, chopsize)

    def _send_now(self, transport: Any, data: bytes, more: bytes | None = None) -> None:
        """One send (a gathering ``sendmsg`` for a header and a large payload, no copy);
        what the kernel does not take goes to Twisted's buffer, in order."""
        if transport.disconnecting or not transport.connected:
            return
        try:
            if more is None:
                sent = transport.socket.send(data)
            else:
                sent = transport.socket.sendmsg((data, more))
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = -1
        if sent != len(data) + (0 if more is None else len(more)):
            self._send_rest(transport, sent, data, more)

    def _send_rest(self, transport: Any, sent: int, data: bytes,
                   more: bytes | None = None) -> None:
        """After a direct send the kernel did not take whole (``sent`` bytes; -1: an
        error): the rest goes to Twisted's buffer, in order (on an error, all of it:
        Twisted sees the error on its own write and closes)."""
        self._unclean()
        if sent < 0:
            sent = 0
        if sent < len(data):
            transport.write(data[sent:])
            if more is not None:
                transport.write(more)
        elif more is not None:
            transport.write(more[sent - len(data) :])

    def pauseProducing(self) -> None:
        """The transport's write buffer is full (we are its registered producer)."""
        self._write_paused = True
        self._unclean()

    def resumeProducing(self) -> None:
        """The transport drained: hand it queued frames until it fills up again."""
        self._write_paused = False
        self._unclean()
        transport: Any = self.transport
        queue = self._outq
        while queue and not self._write_paused and transport is not None:
            data = queue.popleft()
            self._outq_bytes -= len(data)
            transport.write(data)

    def stopProducing(self) -> None:
        self._outq = None
        self._outq_bytes = 0

    def _flush_queue(self) -> None:
        """Before a close frame: everything queued goes first, in order."""
        self._unclean()
        transport: Any = self.transport
        while self._outq and transport is not None:
            transport.write(self._outq.popleft())
        self._outq_bytes = 0

    def _slow_consumer(self) -> None:
        if self.config.slow_consumer == "drop":
            self.site.dropped_messages += 1
            self.dropped += 1
            if self.dropped == 1:
                log.info("dropping messages for {peer}: slow consumer ({queued} bytes waiting)",
                         peer=self.peer, queued=self._outq_bytes)
            return
        if self._slow_closing or self.state != _OPEN:
            return
        self._slow_closing = True
        self._unclean()
        self.site.slow_consumer_closes += 1
        log.info("closing {peer}: slow consumer ({queued} bytes waiting)", peer=self.peer,
                 queued=self._outq_bytes)
        # What waits is dropped: the close frame goes straight to the transport (which holds
        # only whole frames), and the close deadline aborts if it cannot be written in time.
        self._outq = None
        self._outq_bytes = 0
        self._closed_code = 4008
        self.sendCloseFrame(code=4008, reasonUtf8=b"slow consumer", isReply=False)
        self._start_close_deadline()

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Close with an application code (checked by the consumer); before accept: 403."""
        if self._call_in_io_thread(self.close, code, reason):
            return
        if self.in_handshake:
            self.refuse(Refuse(403))
            return
        self.close_with_code(code, reason)

    def close_with_code(self, code: int, reason: str | None = None) -> None:
        """Send a close frame with any valid server code (1001, 1008 and 1011 included,
        which Autobahn's public ``sendClose`` refuses), then wait ``close_timeout`` for the
        peer's reply before dropping the TCP connection."""
        if self._call_in_io_thread(self.close_with_code, code, reason):
            return
        if not valid_server_close_code(code):
            raise ValueError(f"{code} is not a close code a server may send")
        if self.in_handshake:
            self.refuse(Refuse(403))
            return
        if self.state != _OPEN:
            return
        if self.close_notice is not None:
            notice, self.close_notice = self.close_notice, None
            self.send_text(notice(code, reason))
            if self.state != _OPEN:  # the notice met --slow-consumer close: 4008 it is
                return
        self._closed_code = code
        self._flush_queue()
        self.sendCloseFrame(code=code, reasonUtf8=truncate_reason(reason), isReply=False)

    def go_away(self) -> None:
        """Drain: refuse a handshake in progress with 503, close an open socket with 1001
        (or the consumer's ``drain_close``: Centrifugo's 3001 for ``realtime.pubsub``)."""
        if self.in_handshake:
            self.refuse(Refuse(503))
        elif self.state == _OPEN:
            code, reason = getattr(self.consumer, "drain_close", None) or (
                1001, "server shutting down")
            self.close_with_code(code, reason)

    def abort(self) -> None:
        if self.in_handshake:
            self.refuse(Refuse(503))
        elif self.transport is not None and self.state != _CLOSED:
            self.dropConnection(abort=True)

    def _call_in_io_thread(self, method: Callable[..., Any], *args: Any) -> bool:
        """For ``thread_handlers`` consumers: hop calls made in a worker thread over."""
        if self._threaded and threading.get_ident() != self._io_thread:
            self.reactor.callFromThread(method, *args)
            return True
        return False

    # -- channel-layer delivery (a Receiver for realtime.layers) ---------------------------------
    def deliver(self, event: dict[str, Any]) -> None:
        """A layer event: handled in order with this connection's messages. One that a read
        brings (a ``group_send`` a handler made, a Redis read) corks this socket's sends
        until the read is done (``realtime.layers.base.corking``): when several messages
        are read at once (a burst, a server that fell behind), what their handlers send
        reaches each member in one write, as held broadcasts do."""
        if not self.finished and self.consumer is not None:
            if self._cork is None and self._direct and corking():
                self._cork = []
                self._unclean()
                CORKED.append(self)
            # A consumer may take an event at once, outside its queue (realtime.socketio's
            # packets: one ordered path per client with what its handlers send directly).
            now = self._take_now
            if now is not None and not self.in_handshake:
                try:
                    if now(event):
                        return
                except Exception as exc:
                    self._handler_failed(exc)
                    return
            self._run(self.consumer._on_event, event)

    def close_from_layer(self, code: int, reason: str | None) -> None:
        """``group_close``: closed in turn, after the events that reached it before; a
        handler that keeps it waiting past ``--application-close-timeout`` does not keep
        the socket open (it closes then, and the handler is cancelled as after any
        close)."""
        if self.finished:
            return
        self._run(self._closed_by_layer, code, reason)
        if self._busy and self._layer_close_call is None:
            self._layer_close_call = self.reactor.callLater(
                self.config.application_close_timeout, self._closed_by_layer, code, reason)

    def _closed_by_layer(self, code: int, reason: str | None) -> None:
        self._cancel_timers(("_layer_close_call",))
        if self.in_handshake:
            self.refuse(Refuse(403))
        elif self.state == _OPEN:
            self.close_with_code(code, reason)

    def uncork_read(self) -> None:
        """The read that ``deliver`` corked this socket for is done: write what it got."""
        if self._cork is not None:
            self._uncork()

    def deliver_frame(self, frame: bytes) -> bool:
        """``broadcast()``: one prepared frame, written unless this socket is not open.

        The hot loop of a fan-out (once per member per message): while ``_clean`` and
        nothing waits in Twisted's buffer, one ``send()`` and nothing else (measured: each
        attribute of a large object read per member costs, at 5,000 members, more than the
        Python it runs); the layer counts frames and bytes once per broadcast, not here."""
        if self._clean:
            try:
                sent = self._sock.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = -1
            if sent != len(frame):
                self._send_rest(self.transport, sent, frame)
            return True
        if self.in_handshake or self.state != _OPEN or self._slow_closing:
            return False
        if self._becomes_clean():
            return self.deliver_frame(frame)
        translate = self._translate
        if translate is not None:
            frame = _translate(translate, frame)
            if not frame:
                return False
        deflater = self._deflater
        if deflater is not None and not (
                (self._write_paused or self._outq)
                and self._outq_bytes > self.config.max_send_buffer):
            # (Not for a frame the slow-consumer policy is about to drop or close on.)
            frame = deflater.frame(frame, self._deflate_bits)
        # ``_put``, not ``_write``: the layer delivers a frame in its turn; anything still
        # held is newer and must not go ahead of it.
        return self._put(frame)

    def deliver_joined(self, joined: bytes) -> bool:
        """Several held broadcast frames, back to back: one ``send()`` if this socket is
        clean now; False (nothing written) otherwise, and the layer writes them one by one
        (so the slow-consumer policy sees, counts and drops whole frames)."""
        if self._clean:
            return self.deliver_frame(joined)
        if (self.in_handshake or self.state != _OPEN or self._slow_closing
                or self._translate is not None):  # translated frame by frame
            return False
        if self._cork is not None and not self._write_paused and not self._outq:
            # Into the cork: this socket's one write for the read.
            deflater = self._deflater
            if deflater is not None:
                joined = deflater.frame(joined, self._deflate_bits)
            return self._put(joined)
        if self._becomes_clean():
            return self.deliver_frame(joined)
        return False

    def translate_broadcasts(self, translate: Callable[[bytes], bytes | None] | None) -> None:
        """Pass every ``broadcast()`` frame for this socket through ``translate`` (a prepared
        frame in, the frame to write out, or None to skip it): a consumer whose client
        speaks another encoding of what its group broadcasts (``realtime.pubsub``'s
        Protobuf clients) stays in the one group, its translated frames in order with the
        rest. Its fast path sends through ``_TranslatingSend``. Each frame is translated
        once per process (``_memo``): ``translate`` must be one function for every socket
        (a module's function, not a closure per socket), and pure."""
        self._translate = translate
        self._unclean()

    def _becomes_clean(self) -> bool:
        """Nothing stands between a frame and the socket now: take the fast path."""
        transport: Any = self.transport
        if not self._write_paused and not self._outq and self._cork is None \
                and self._nothing_buffered(transport) \
                and not transport.disconnecting and transport.connected:
            deflater = self._deflater
            self._sock = transport.socket if deflater is None else _DeflatingSend(self, deflater)
            if self._translate is not None:
                self._sock = _TranslatingSend(self, self._translate, self._sock)
            elif deflater is None:  # written as it is: by the C loop too
                slot = self._slot
                if slot < 0:
                    slot = self._slot = _fanout.take(self)
                _fanout.FDS[slot] = transport.socket.fileno()
            self._clean = True
            return True
        return False

    def _unclean(self) -> None:
        """Something may stand between a frame and the socket now (a read's cork, bytes in
        Twisted's buffer, a pause, a close): the fan-out takes the slow path, which checks
        them all (``_becomes_clean``). The only way ``_clean`` is cleared: the socket table
        must agree with it."""
        self._clean = False
        if self._slot >= 0:
            _fanout.FDS[self._slot] = -1

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Twisted has just closed the socket: its descriptor leaves the fan-out's table
        before anything can open another with the same number."""
        slot = self._slot
        if slot >= 0:
            self._unclean()
            self._slot = -1
            _fanout.give_back(slot)
        super().connectionLost(reason)

    def _detach(self) -> None:
        if self.channel_name is not None:
            self.site.layer.detach(self.channel_name)

    # -- Autobahn callbacks --------------------------------------------------------------------
    def onMessageEnd(self) -> None:
        """A whole message is in. Autobahn's version also fires its observer API (a txaio
        future per message, ~15 % of an echo's CPU) that nothing here subscribes to."""
        if not self.failedByMe:
            parts = self.message_data
            self.onMessage(parts[0] if len(parts) == 1 else b"".join(parts),
                           self.message_is_binary)
        self.message_data = None  # type: ignore[assignment]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        stats = self.stats
        stats.messages_in += 1
        stats.bytes_in += len(payload)
        if self._bucket is not None and not self._bucket.take():
            if not self._slow_closing and self.state == _OPEN:
                log.info("closing {peer}: message rate over --rate-limit", peer=self.peer)
                self.close_with_code(1008, "rate limit exceeded")
            return
        if isBinary:
            self._run(self.consumer._on_receive, None, payload)
        else:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                self._invalid_payload("invalid UTF-8 in a text message")
                return
            RecentText.last = (text, payload)
            self._run(self.consumer._on_receive, text, None)

    def onPing(self, payload: bytes) -> None:
        """The pong goes through the outbound queue: a peer that floods pings and does not
        read meets the slow-consumer policy instead of growing the write buffer."""
        if self.state == _OPEN and not self._slow_closing:
            self._write(encode_frame(0xA, payload))

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        """Every close we start, Autobahn's own 1002/1007/1009 for a protocol violation
        included, gets the close deadline: a peer that never answers is dropped. The code of
        the first close we start is the one ``disconnect(code)`` hears, whatever the peer
        answers: Autobahn's too (a close frame with a reserved code gets 1002, which Autobahn
        would otherwise report as the peer's 1000)."""
        if not isReply and code is not None and self._closed_code is None \
                and self.state == _OPEN:
            self._closed_code = code
        super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)
        if not isReply and self.state == _CLOSING:
            self._start_close_deadline()

    def _start_close_deadline(self) -> None:
        """``close_timeout`` from now, the connection is dropped. Not twice, and not once
        it is over: a close whose reply came back inside the send (the in-memory
        communicator) has finished it, and nothing would cancel the timer."""
        if self._close_call is None and not self.finished:
            self._close_call = self.reactor.callLater(
                self.config.close_timeout, self._close_deadline
            )

    def onCloseFrame(self, code: Any, reasonRaw: Any) -> Any:
        """A close frame from the peer ends in a graceful TCP close: for a malformed close
        frame (a reserved code, a 1-byte payload, a reason that is not UTF-8) Autobahn sends
        1002/1007 and then takes the same frame as the reply, and its abort would discard
        that answer unsent."""
        self._graceful_drop = True
        try:
            return super().onCloseFrame(code, reasonRaw)
        finally:
            self._graceful_drop = False

    def dropConnection(self, abort: bool = False) -> None:
        self._unclean()
        if self._graceful_drop:
            abort = False
        if not abort:
            # Flushing can stall on a peer that stopped reading: the deadline aborts then.
            self._start_close_deadline()
        super().dropConnection(abort=abort)

    def onPong(self, payload: bytes) -> None:
        if self._pong_deadline is not None:
            if self._pong_deadline.active():
                self._pong_deadline.cancel()
            self._pong_deadline = None

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._unclean()
        self._sock = None
        if self.finished:
            return
        if self._closed_code is not None:
            final = self._closed_code
        elif wasClean:
            final = code if code is not None else 1005
        else:
            final = 1006
        self._finish(final)

    # -- timers ------------------------------------------------------------------------------
    def _schedule_keepalive(self) -> None:
        if self.config.ping_interval > 0:
            self._ping_call = self.reactor.callLater(self.config.ping_interval, self._keepalive)

    def _keepalive(self) -> None:
        self._ping_call = None
        if self.state != _OPEN:
            return
        if self._pong_deadline is None and self.config.ping_timeout > 0:
            # Armed before the write: the pong may arrive while the write is still running.
            self._pong_deadline = self.reactor.callLater(
                self.config.ping_timeout, self._ping_timed_out
            )
        self._schedule_keepalive()
        self._unclean()
        transport: Any = self.transport
        transport.write(encode_frame(0x9, b"realtime"))

    def _ping_timed_out(self) -> None:
        self._pong_deadline = None
        if self.state == _OPEN:
            log.info("closing {peer}: no pong within {t} s", peer=self.peer,
                     t=self.config.ping_timeout)
            self.dropConnection(abort=True)

    def _arm_token_timers(self) -> None:
        """The token's ``exp`` closes the socket at that moment (TokenAuthMiddleware); a
        consumer with a ``token_expiring`` handler hears of it first, ``token_expiring_ahead``
        seconds before (at most half the time left), so it can ask its client for a new
        token (``refresh_token``). Called again after each refresh."""
        self._cancel_timers(_TOKEN_TIMERS)
        expires = self.scope.get("auth_expires_at")
        if expires is None or self.state != _OPEN:
            return
        left = max(0.0, float(expires) - self.reactor.seconds())
        self._expiry_call = self.reactor.callLater(left, self._token_expired)
        consumer = self.consumer
        if left > 0 and callable(getattr(consumer, "token_expiring", None)) and hasattr(
                consumer, "_on_token_expiring"):
            ahead = min(float(getattr(consumer, "token_expiring_ahead", 30.0)), left / 2)
            self._expiring_call = self.reactor.callLater(
                left - ahead, self._token_expiring, float(expires)
            )

    def token_refreshed(self) -> None:
        """``refresh_token`` changed ``scope["auth_expires_at"]``: the timers follow it."""
        if not self._call_in_io_thread(self.token_refreshed):
            self._arm_token_timers()

    @property
    def closing_or_closed(self) -> bool:
        """Past the handshake and no longer open: nothing more can be done for this socket."""
        return self.finished or (not self.in_handshake and self.state != _OPEN)

    def _token_expiring(self, expires: float) -> None:
        self._expiring_call = None
        if self.state == _OPEN and self.consumer is not None:
            # Queued behind the handlers running: it checks again when its turn comes.
            self._run(self.consumer._on_token_expiring, expires)

    def _token_expired(self) -> None:
        self._expiry_call = None
        expires = self.scope.get("auth_expires_at")
        if expires is None or float(expires) > self.reactor.seconds():
            # A refresh (from a handler thread) got in before this timer ran: it stands.
            self._arm_token_timers()
            return
        self._cancel_timers(("_expiring_call",))
        # realtime.pubsub's consumer closes with Centrifugo's code, which its SDKs know.
        code, reason = getattr(self.consumer, "token_expired_close", (4001, "token expired"))
        self.close_with_code(code, reason)

    def _lifetime_over(self) -> None:
        self._lifetime_call = None
        self.close_with_code(1000, "connection lifetime reached")

    def _close_deadline(self) -> None:
        self._close_call = None
        if self.transport is not None and self.state != _CLOSED:
            self.dropConnection(abort=True)
        elif self.transport is not None and not self.finished:
            transport: Any = self.transport
            transport.abortConnection()  # a graceful close that could not flush in time

    def _cancel_timers(self, names: tuple[str, ...] = _TIMERS) -> None:
        for name in names:
            call = getattr(self, name)
            if call is not None:
                if call.active():
                    call.cancel()
                setattr(self, name, None)

    # -- the ordered handler queue ---------------------------------------------------------------
    def _run(self, handler: Callable[..., Any], *args: Any) -> None:
        """Run ``handler(*args)`` now if nothing is running, else queue it (in order); past
        ``max_inflight`` queued messages, stop reading from this client."""
        if self._busy:
            pending = self._pending
            if pending is None:
                pending = self._pending = deque()
            pending.append((handler, args))
            if (
                not self._paused
                and len(pending) >= self.config.max_inflight
                and self.transport is not None
                and self.state == _OPEN
            ):
                self._paused = True
                self.transport.pauseProducing()
            return
        self._drain_queue(handler, args)

    def _drain_queue(self, handler: Callable[..., Any] | None, args: tuple[Any, ...]) -> None:
        while True:
            if handler is None:
                pending = self._pending
                if not pending:
                    self._busy = False
                    if self._kill_call is not None:  # all done after the close, in time
                        self._kill_call.cancel()
                        self._kill_call = None
                    if self._paused:
                        self._paused = False
                        if self.transport is not None and self.state == _OPEN:
                            self.transport.resumeProducing()
                    return
                handler, args = pending.popleft()
            self._busy = True
            try:
                # The bridge's own steps (detaching from the layer) stay on the reactor thread.
                if self._threaded and getattr(handler, "__self__", None) is not self:
                    result: Any = self._in_thread(handler, args)
                else:
                    result = handler(*args)
            except BaseException as exc:
                self._handler_failed(exc)
                result = None
            if result is not None:
                if not isinstance(result, Deferred):
                    if not hasattr(result, "__await__"):
                        handler = None
                        continue
                    try:  # a coroutine that waits for nothing is done here: no Deferred
                        result = run_handler(result)
                    except BaseException as exc:
                        self._handler_failed(exc)
                        result = None
                    if result is None:
                        handler = None
                        continue
                self._running = result
                result.addCallbacks(self._handler_done, self._handler_errback)
                return
            handler = None

    def _in_thread(self, handler: Callable[..., Any], args: tuple[Any, ...]) -> Deferred[Any]:
        """A ``thread_handlers`` handler in the pool, Django's stale connections closed
        before and after (as Channels runs a sync consumer's handlers: ``realtime.db``)."""
        from realtime.db import in_pool

        return in_pool(self.reactor, handler, *args)

    def _handler_done(self, _: Any) -> None:
        self._running = None
        if self._killed:  # finished after all: out of any group it joined since the kill
            self._detach()
        self._drain_queue(None, ())

    def _handler_errback(self, failure: Failure) -> None:
        if not (self._killed and failure.check(CancelledError)):  # the kill's own: no error
            self._handler_failed(failure.value, failure)
        self._handler_done(None)

    def _kill_handlers(self, after: float | None = None) -> None:
        """--application-close-timeout (or ``after``) seconds after the close, handlers
        still run (a disconnect() awaiting something that never comes): cancel them, as
        Daphne kills the app. Called early (the communicators), it takes the timer's place."""
        call, self._kill_call = self._kill_call, None
        if call is not None and call.active():
            call.cancel()
        if not self._busy:
            return
        log.warn(
            "consumer {consumer} on {path} still running {timeout} s after its socket "
            "closed: cancelled",
            consumer=type(self.consumer).__name__, path=self.scope.get("path"),
            timeout=self.config.application_close_timeout if after is None else after,
        )
        self._killed = True
        self._pending = None
        running = self._running
        if running is not None and not self._threaded:
            # A coroutine gets CancelledError; if it goes on anyway, or a thread handler
            # (no way to stop a thread) finishes later, its end detaches it once more.
            running.cancel()
        self._busy = False
        self._detach()

    def _handler_failed(self, exc: BaseException, failure: Failure | None = None) -> None:
        if isinstance(exc, StopConsumer):
            if self.in_handshake:
                self.refuse(Refuse(403))
            elif self.state == _OPEN:
                self.close_with_code(1000)
            return
        if isinstance(exc, Refuse) and self.in_handshake:
            self.refuse(exc)
            return
        if isinstance(exc, ConnectionClosed) and (self.finished
                                                  or self.state in (_CLOSING, _CLOSED)):
            return  # the client left (during the handshake, too): nothing went wrong
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise exc
        hinted = _explained(exc)  # (asgiref's async_to_sync on the reactor thread)
        if hinted is not exc:
            exc, failure = hinted, Failure(hinted, type(hinted), exc.__traceback__)
        log.failure(
            "consumer {consumer} raised on {path}",
            failure or Failure(exc),
            consumer=type(self.consumer).__name__,
            path=self.scope.get("path"),
        )
        if self.handler_error is None:
            self.handler_error = exc  # the communicators raise it in the test, as Channels'
        if self.in_handshake:
            self.refuse(Refuse(500))
        elif self.state == _OPEN:
            self.close_with_code(1011, "internal error")

    # -- the end -----------------------------------------------------------------------------
    def _finish(self, code: int) -> None:
        """Once per connection: stop timers, forget it, tell the consumer ``disconnect``."""
        if self.finished:
            return
        self.finished = True
        self.disconnect_code = code
        self._cancel_timers()
        if self._opened_at is not None:
            self.stats.close_codes[code] += 1
            if self.site.access_log is not None:
                self.site.log_ws("ws_disconnect", self.scope, self._opened_at, code=code,
                                 conn=self.id)
        self.site.closed(self)
        self._outq = None
        self._outq_bytes = 0
        if self.consumer is not None:
            # Out of every group now, not after disconnect() (which waits behind any handler
            # still running, and may never finish): a closed socket is no group's member.
            self._detach()
            lost = getattr(self.consumer, "closed_now", None)
            if lost is not None:  # a consumer may learn it at once (realtime.socketio)
                lost()
            self._run(self.consumer._on_disconnect, code)
            self._run(self._detach)  # and out of any group disconnect() itself joined
            if self._busy:
                self._kill_call = self.reactor.callLater(
                    self.config.application_close_timeout, self._kill_handlers
                )
