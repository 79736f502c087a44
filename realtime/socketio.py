"""Socket.IO (protocol v5 over Engine.IO v4, WebSocket transport) with python-socketio's
server API, on realtime's channel layers.

Why: a team on python-socketio keeps its clients (``socket.io-client``, python-socketio's
``Client``/``AsyncClient``) unchanged and ports its server by changing imports:
``sio = realtime.socketio.AsyncServer()``, the same ``@sio.event`` handlers, ``emit``,
rooms and sessions, mounted with ``path("socket.io/", sio.as_asgi())``.

Scale-out comes from the layer, not from a client manager: every connected socket is in
its namespace's group (``emit`` to everyone), each room is a group (``enter_room``), and a
sid names its connection's layer channel (``emit(to=sid)``, ``disconnect(sid)`` and
``enter_room(sid)`` reach it in any process through the layer). A text-only packet to a
group goes out as one prepared frame (``broadcast``); a packet with binary attachments as
one layer event per member (several frames).

Not served: HTTP long-polling (a polling request gets Engine.IO's 400 "Transport
unknown"): clients connect with ``transports: ["websocket"]``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from realtime.consumer import AsyncWebsocketConsumer
from realtime.exceptions import Refuse
from realtime.http import AsyncHttpConsumer
from realtime.layers.base import MAX_NAME

log = Logger(namespace="realtime.socketio")

# Engine.IO v4 packet types (text frames start with one).
_EIO_OPEN, _EIO_CLOSE, _EIO_PING, _EIO_PONG, _EIO_MESSAGE, _EIO_UPGRADE, _EIO_NOOP = "0123456"
# Socket.IO v5 packet types.
CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = range(7)
#: Binary attachments one packet may announce (each is one more frame to wait for).
MAX_ATTACHMENTS = 100
#: Namespaces one connection may join at once (bounds what ``namespaces="*"`` lets in).
MAX_NAMESPACES = 100
#: Digits an ack id may have (socket.io-client counts up from 0).
_MAX_ACK_DIGITS = 15
#: Events a client may not send: the server's own lifecycle names.
RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "disconnecting",
                             "newListener", "removeListener"})
#: Close code and reason for a packet that is not Engine.IO/Socket.IO.
CLOSE_MALFORMED = (1002, "invalid packet")
#: A binary frame when no packet waits for attachments.
CLOSE_UNEXPECTED_BINARY = (1003, "unexpected binary frame")
CLOSE_TOO_BIG = (1009, "message too big")
CLOSE_PING_TIMEOUT = (1008, "ping timeout")

#: Engine.IO's HTTP error bodies (its ``code``s: 0 unknown transport, 1 unknown session id,
#: 5 unsupported protocol version).
_TRANSPORT_UNKNOWN = b'{"code":0,"message":"Transport unknown"}'
_SESSION_UNKNOWN = b'{"code":1,"message":"Session ID unknown"}'
_BAD_VERSION = b'{"code":5,"message":"Unsupported protocol version"}'
_JSON_HEADERS = [(b"Content-Type", b"application/json")]

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
#: A sid: 8 random characters, then its connection's channel name
#: (``specific.<process>!<id>``) as ``<process>.<id>``.
_SID = re.compile(r"^[A-Za-z0-9_-]{8}\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$")


class SocketIOError(Exception):
    """python-socketio's base exception."""


class ConnectionRefusedError(SocketIOError):
    """Raise from a ``connect`` handler to refuse: the client gets CONNECT_ERROR with
    ``{"message": args[0]}`` (and ``"data"``: the second argument, or the rest)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        if not args:
            self.error_args: dict[str, Any] = {"message": "Connection rejected by server"}
        else:
            self.error_args = {"message": str(args[0])}
            if len(args) == 2:
                self.error_args["data"] = args[1]
            elif len(args) > 2:
                self.error_args["data"] = list(args[1:])


class CallTimeoutError(SocketIOError, TimeoutError):
    """``call()`` got no acknowledgement in time (python-socketio's ``TimeoutError``; a
    builtin ``TimeoutError`` too, so ``except TimeoutError`` catches it)."""


class Reason:
    """Why a socket disconnected: the ``disconnect(sid, reason)`` handler's argument."""

    SERVER_DISCONNECT = "server disconnect"
    CLIENT_DISCONNECT = "client disconnect"
    PING_TIMEOUT = "ping timeout"
    TRANSPORT_CLOSE = "transport close"
    TRANSPORT_ERROR = "transport error"


class _Malformed(Exception):
    """A packet the protocol does not allow: the connection closes."""


# -- packets -----------------------------------------------------------------------------------

def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _deconstruct(data: Any, attachments: list[bytes]) -> Any:
    """``data`` with each bytes value replaced by a placeholder (its bytes appended)."""
    if isinstance(data, bytes | bytearray | memoryview):
        attachments.append(bytes(data))
        return {"_placeholder": True, "num": len(attachments) - 1}
    if isinstance(data, list | tuple):
        return [_deconstruct(item, attachments) for item in data]
    if isinstance(data, dict):
        return {key: _deconstruct(value, attachments) for key, value in data.items()}
    return data


def _reconstruct(data: Any, attachments: list[bytes]) -> Any:
    if isinstance(data, list):
        return [_reconstruct(item, attachments) for item in data]
    if isinstance(data, dict):
        if data.get("_placeholder") is True:
            num = data.get("num")
            if (not isinstance(num, int) or isinstance(num, bool)
                    or not 0 <= num < len(attachments)):
                raise _Malformed("placeholder out of range")
            return attachments[num]
        return {key: _reconstruct(value, attachments) for key, value in data.items()}
    return data


def encode_packet(kind: int, namespace: str = "/", data: Any = None,
                  ack_id: int | None = None) -> tuple[str, list[bytes]]:
    """One Socket.IO packet as its Engine.IO text frame and its binary frames (bytes in
    ``data`` become attachments, EVENT/ACK become BINARY_EVENT/BINARY_ACK)."""
    attachments: list[bytes] = []
    if data is not None and kind in (EVENT, ACK):
        data = _deconstruct(data, attachments)
    if attachments:
        kind = BINARY_EVENT if kind == EVENT else BINARY_ACK
    parts = [_EIO_MESSAGE, str(kind)]
    if attachments:
        parts.append(f"{len(attachments)}-")
    if namespace != "/":
        parts.append(namespace + ",")
    if ack_id is not None:
        parts.append(str(ack_id))
    if data is not None:
        parts.append(_dumps(data))
    return "".join(parts), attachments


class Packet:
    """A decoded Socket.IO packet (attachments still to come when ``missing`` > 0)."""

    __slots__ = ("ack_id", "attachments", "data", "kind", "missing", "namespace")

    def __init__(self, kind: int, namespace: str, ack_id: int | None, data: Any,
                 missing: int) -> None:
        self.kind = kind
        self.namespace = namespace
        self.ack_id = ack_id
        self.data = data
        self.missing = missing
        self.attachments: list[bytes] = []


def decode_packet(text: str) -> Packet:
    """A Socket.IO packet (an Engine.IO message's payload); ``_Malformed`` if it is not
    one a client may send."""
    if not text or text[0] not in "0123456":
        raise _Malformed("unknown packet type")
    kind = int(text[0])
    i = 1
    missing = 0
    if kind in (BINARY_EVENT, BINARY_ACK):
        dash = text.find("-", i)
        count = text[i:dash] if dash > 0 else ""
        if not count.isdigit() or len(count) > 3:
            raise _Malformed("bad attachment count")
        missing = int(count)
        if not 0 < missing <= MAX_ATTACHMENTS:
            raise _Malformed("bad attachment count")
        i = dash + 1
    namespace = "/"
    if text.startswith("/", i):
        comma = text.find(",", i)
        end = comma if comma >= 0 else len(text)
        namespace = text[i:end]
        i = end + 1 if comma >= 0 else end
    j = i
    while j < len(text) and text[j].isdigit() and text[j].isascii():
        j += 1
    ack_id = None
    if j > i:
        if j - i > _MAX_ACK_DIGITS:
            raise _Malformed("ack id too long")
        ack_id = int(text[i:j])
    rest = text[j:]
    data: Any = None
    if rest:
        try:
            data = json.loads(rest)
        except ValueError:
            raise _Malformed("invalid JSON") from None
    if kind == CONNECT:
        if not (data is None or isinstance(data, dict)) or ack_id is not None:
            raise _Malformed("bad CONNECT")
    elif kind == DISCONNECT:
        if data is not None or ack_id is not None:
            raise _Malformed("bad DISCONNECT")
    elif kind in (EVENT, BINARY_EVENT):
        if (not isinstance(data, list) or not data or not isinstance(data[0], str)
                or data[0] in RESERVED_EVENTS):
            raise _Malformed("bad EVENT")
    elif kind in (ACK, BINARY_ACK):
        if not isinstance(data, list) or ack_id is None:
            raise _Malformed("bad ACK")
    else:
        raise _Malformed("a client does not send CONNECT_ERROR")
    return Packet(kind, namespace, ack_id, data, missing)


# -- names -------------------------------------------------------------------------------------

def _escape(text: str) -> str:
    return "".join(c if c in _SAFE else "".join(f"_{b:02X}" for b in c.encode())
                   for c in text)


def _group(kind: str, namespace: str, room: str = "") -> str:
    """A layer group for ``namespace`` (kind "a": all its sockets) or one of its rooms
    (kind "r"); hashed when escaping makes it too long ("_h" never comes out of _escape)."""
    name = f"sio{kind}.{_escape(namespace)}.{_escape(room)}"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(f"{namespace}\x00{room}".encode()).hexdigest()[:40]
        name = f"sio{kind}._h{digest}"
    return name


def room_group(namespace: str, room: Any) -> str:
    """The layer group of ``room`` in ``namespace`` (for ``broadcast``/``group_send``
    from code that has no ``AsyncServer``)."""
    return _group("r", namespace, str(room))


def namespace_group(namespace: str) -> str:
    """The layer group every socket connected to ``namespace`` is in."""
    return _group("a", namespace)


def _new_sid(channel: str) -> str:
    token = secrets.token_urlsafe(6)
    head, _, tail = channel.partition("!")
    if head.startswith("specific.") and tail:
        return f"{token}.{head[len('specific.'):]}.{tail}"
    raise ValueError(f"unexpected channel name {channel!r}")


def channel_of(sid: Any) -> str | None:
    """The layer channel of the connection ``sid`` belongs to (None: not a sid)."""
    if not isinstance(sid, str):
        return None
    match = _SID.match(sid)
    if match is None:
        return None
    return f"specific.{match.group(1)}!{match.group(2)}"


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _positional_count(handler: Callable[..., Any]) -> int:
    """How many positional arguments ``handler`` takes (a large number for ``*args``)."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return 99
    count = 0
    for param in params:
        if param.kind is param.VAR_POSITIONAL:
            return 99
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


# -- the server --------------------------------------------------------------------------------

class _Socket:
    """One namespace connection in this process."""

    __slots__ = ("acks", "consumer", "namespace", "rooms", "session", "sid")

    def __init__(self, consumer: SocketIOConsumer, namespace: str, sid: str) -> None:
        self.consumer = consumer
        self.namespace = namespace
        self.sid = sid
        self.rooms: dict[str, Any] = {}  # group -> the room as given
        self.session: dict[Any, Any] = {}
        self.acks: dict[int, Callable[..., Any]] = {}


class _Session:
    """``async with sio.session(sid) as session``: saved on exit."""

    def __init__(self, server: AsyncServer, sid: str, namespace: str | None) -> None:
        self.server, self.sid, self.namespace = server, sid, namespace
        self.session: dict[Any, Any] = {}

    async def __aenter__(self) -> dict[Any, Any]:
        self.session = await self.server.get_session(self.sid, self.namespace)
        return self.session

    async def __aexit__(self, *exc: Any) -> None:
        await self.server.save_session(self.sid, self.session, self.namespace)


class AsyncServer:
    """python-socketio's ``AsyncServer`` API over realtime's layers.

    ``ping_interval``/``ping_timeout`` (seconds) and ``max_http_buffer_size`` (the
    Engine.IO ``maxPayload``: longer messages close the connection) are python-engineio's
    options; ``namespaces`` ("*": any) lists namespaces open without handlers ("/" always
    is). ``channel_layer``: the layer ``emit`` and friends use (default: the connected
    consumers', else ``get_channel_layer(channel_layer_alias)``). python-socketio's
    ``async_mode``, ``cors_allowed_origins``, ``logger`` and ``engineio_logger`` are
    accepted and ignored (origins: ``--allowed-origins``). A packet's binary attachments
    count together against ``max_http_buffer_size``.
    """

    reason = Reason
    _IGNORED = frozenset({"async_mode", "cors_allowed_origins", "cors_credentials",
                          "logger", "engineio_logger", "async_handlers", "transports",
                          "monitor_clients", "http_compression", "compression_threshold"})

    def __init__(self, namespaces: Iterable[str] | str | None = None,
                 ping_interval: float = 25.0, ping_timeout: float = 20.0,
                 max_http_buffer_size: int = 1_000_000, channel_layer: Any = None,
                 channel_layer_alias: str = "default", **kwargs: Any) -> None:
        unknown = set(kwargs) - self._IGNORED
        if unknown:
            raise TypeError(f"AsyncServer() got unknown options: {sorted(unknown)}")
        if ping_interval <= 0 or ping_timeout <= 0 or max_http_buffer_size <= 0:
            raise ValueError("ping_interval, ping_timeout and max_http_buffer_size are > 0")
        self.namespaces: str | set[str] = (
            "*" if namespaces == "*" else set(namespaces or ()) | {"/"})
        self.ping_interval = float(ping_interval)
        self.ping_timeout = float(ping_timeout)
        self.max_http_buffer_size = int(max_http_buffer_size)
        self.channel_layer_alias = channel_layer_alias
        self._channel_layer = channel_layer
        self.handlers: dict[str, dict[str, Callable[..., Any]]] = {}
        #: The sockets connected to this process, by sid.
        self._sockets: dict[str, _Socket] = {}

    # -- handlers ---------------------------------------------------------------------------
    def on(self, event: str, handler: Callable[..., Any] | None = None,
           namespace: str | None = None) -> Any:
        """Register ``handler`` for ``event`` (a decorator without ``handler``); "*" is the
        catch-all event (its handler gets the event name first), and namespace "*" every
        namespace (its handler gets the namespace before the sid)."""
        namespace = namespace or "/"

        def set_handler(handler: Callable[..., Any]) -> Callable[..., Any]:
            self.handlers.setdefault(namespace, {})[event] = handler
            return handler

        if handler is None:
            return set_handler
        set_handler(handler)
        return None

    def event(self, *args: Any, **kwargs: Any) -> Any:
        """``@sio.event`` (the function's name is the event) or ``@sio.event(namespace=)``."""
        if len(args) == 1 and not kwargs and callable(args[0]):
            return self.on(args[0].__name__)(args[0])

        def set_handler(handler: Callable[..., Any]) -> Callable[..., Any]:
            self.on(handler.__name__, handler, namespace=kwargs.get("namespace"))
            return handler

        return set_handler

    def _handler(self, event: str, namespace: str,
                 args: tuple[Any, ...]) -> tuple[Callable[..., Any] | None, tuple[Any, ...]]:
        """The handler for ``event`` and its arguments, in python-socketio's order: this
        namespace's, its catch-all, then namespace "*"'s."""
        reserved = event in ("connect", "disconnect")
        own = self.handlers.get(namespace, {})
        if event in own:
            return own[event], args
        if not reserved and "*" in own:
            return own["*"], (event, *args)
        anywhere = self.handlers.get("*", {})
        if event in anywhere:
            return anywhere[event], (namespace, *args)
        if not reserved and "*" in anywhere:
            return anywhere["*"], (event, namespace, *args)
        return None, args

    def _serves(self, namespace: str) -> bool:
        return (self.namespaces == "*" or namespace in self.namespaces
                or namespace in self.handlers or "*" in self.handlers)

    # -- the layer ----------------------------------------------------------------------------
    @property
    def channel_layer(self) -> Any:
        if self._channel_layer is not None:
            return self._channel_layer
        from realtime.layers import get_channel_layer

        return get_channel_layer(self.channel_layer_alias)

    def _channel(self, sid: Any) -> str | None:
        """The channel to reach ``sid`` through; None for a sid of this process that is
        gone (a message to its channel would only wait in the layer's queue)."""
        channel = channel_of(sid)
        if channel is None or sid in self._sockets:
            return channel
        prefix = getattr(self.channel_layer, "local_prefix", None)
        if prefix is not None and channel.startswith(prefix()):
            return None
        return channel

    def _local(self, sid: str, namespace: str | None) -> _Socket | None:
        socket = self._sockets.get(sid)
        if socket is None or (namespace is not None and socket.namespace != namespace):
            return None
        return socket

    # -- sending ------------------------------------------------------------------------------
    async def emit(self, event: str, data: Any = None, to: Any = None, room: Any = None,
                   skip_sid: str | Iterable[str] | None = None, namespace: str | None = None,
                   callback: Callable[..., Any] | None = None) -> None:
        """Send ``event`` to a sid, a room (or a list of them), or the whole namespace, in
        every process. ``data``: one argument, or a tuple of them; bytes anywhere in it go
        as binary attachments. ``callback`` (called with the client's ack arguments) needs
        ``to`` to be one sid connected to this process."""
        namespace = namespace or "/"
        if not isinstance(event, str):
            raise TypeError("the event name is a str")
        args = [] if data is None else list(data) if isinstance(data, tuple) else [data]
        target = to if to is not None else room
        ack_id = None
        if callback is not None:
            socket = self._local(target, namespace) if isinstance(target, str) else None
            if socket is None:
                raise ValueError("emit(callback=...) needs to= one sid connected to this "
                                 "process")
            ack_id = socket.consumer._ack_id(socket, callback)
        text, attachments = encode_packet(EVENT, namespace, [event, *args], ack_id)
        await self._send_packet(text, attachments, namespace, target, skip_sid)

    async def _send_packet(self, text: str, attachments: list[bytes], namespace: str,
                           target: Any, skip_sid: str | Iterable[str] | None) -> None:
        skip = [skip_sid] if isinstance(skip_sid, str) else list(skip_sid or ())
        exclude = [c for c in map(channel_of, skip) if c is not None]
        layer = self.channel_layer
        targets = target if isinstance(target, list | tuple | set) else [target]
        for one in targets:
            if channel_of(one) is not None:  # a sid: its own connection, through the layer
                channel = self._channel(one)
                if channel is None or one in skip:
                    continue
                await layer.send(channel, {"type": "sio.packet", "sid": one, "text": text,
                                           "binary": attachments})
                continue
            group = namespace_group(namespace) if one is None else room_group(namespace, one)
            if attachments:
                await layer.group_send(group, {"type": "sio.packet", "text": text,
                                               "binary": attachments},
                                       exclude=exclude or None)
            else:
                await layer.broadcast(group, text=text, exclude=exclude or None)

    async def send(self, data: Any, to: Any = None, room: Any = None,
                   skip_sid: str | Iterable[str] | None = None, namespace: str | None = None,
                   callback: Callable[..., Any] | None = None) -> None:
        """``emit("message", data, ...)``."""
        await self.emit("message", data, to=to, room=room, skip_sid=skip_sid,
                        namespace=namespace, callback=callback)

    async def call(self, event: str, data: Any = None, to: str | None = None,
                   sid: str | None = None, namespace: str | None = None,
                   timeout: float = 60) -> Any:
        """Emit to one sid (of this process) and wait for its ack: its one argument, or a
        tuple of several (None for none); ``CallTimeoutError`` after ``timeout`` s."""
        target = to or sid
        socket = self._local(target, namespace or "/") if target else None
        if socket is None:
            raise ValueError("call() needs to= one sid connected to this process")
        reactor = socket.consumer._conn.reactor
        done: Deferred[tuple[Any, ...]] = Deferred()

        def answered(*args: Any) -> None:
            if not done.called:
                done.callback(args)

        def timed_out() -> None:
            if not done.called:
                done.errback(CallTimeoutError(f"no ack for {event!r} in {timeout} s"))

        timer = reactor.callLater(timeout, timed_out)
        try:
            await self.emit(event, data, to=target, namespace=namespace, callback=answered)
            args = await done
        finally:
            if timer.active():
                timer.cancel()
        if not args:
            return None
        return args[0] if len(args) == 1 else args

    # -- rooms --------------------------------------------------------------------------------
    async def enter_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        """Put ``sid`` in ``room``; a sid in another process joins there (through the
        layer), after this returns."""
        namespace = namespace or "/"
        socket = self._local(sid, namespace)
        if socket is not None:
            await socket.consumer._enter(socket, room)
            return
        channel = self._channel(sid)
        if channel is not None:
            await self.channel_layer.send(channel, {"type": "sio.room", "sid": sid,
                                                    "room": str(room), "enter": True})

    async def leave_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        namespace = namespace or "/"
        socket = self._local(sid, namespace)
        if socket is not None:
            await socket.consumer._leave(socket, room_group(namespace, room))
            return
        channel = self._channel(sid)
        if channel is not None:
            await self.channel_layer.send(channel, {"type": "sio.room", "sid": sid,
                                                    "room": str(room), "enter": False})

    async def close_room(self, room: Any, namespace: str | None = None) -> None:
        """Every member, in every process, leaves ``room``."""
        group = room_group(namespace or "/", room)
        await self.channel_layer.group_send(group, {"type": "sio.close_room", "group": group})

    def rooms(self, sid: str, namespace: str | None = None) -> list[Any]:
        """The rooms of a sid connected to this process (its own sid first), else []."""
        socket = self._local(sid, namespace or "/")
        if socket is None:
            return []
        return [sid, *socket.rooms.values()]

    # -- sessions and the rest ------------------------------------------------------------------
    async def get_session(self, sid: str, namespace: str | None = None) -> dict[Any, Any]:
        """The session dict of a sid connected to this process (``KeyError`` otherwise)."""
        socket = self._local(sid, namespace or "/")
        if socket is None:
            raise KeyError(sid)
        return socket.session

    async def save_session(self, sid: str, session: dict[Any, Any],
                           namespace: str | None = None) -> None:
        socket = self._local(sid, namespace or "/")
        if socket is None:
            raise KeyError(sid)
        socket.session = session

    def session(self, sid: str, namespace: str | None = None) -> _Session:
        return _Session(self, sid, namespace)

    def get_environ(self, sid: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The connection's ASGI scope (python-socketio's WSGI-style environ)."""
        socket = self._local(sid, namespace or "/")
        return None if socket is None else socket.consumer.scope

    def transport(self, sid: str, namespace: str | None = None) -> str:
        return "websocket"

    async def disconnect(self, sid: str, namespace: str | None = None) -> None:
        """Disconnect ``sid`` from its namespace (the client is told), in any process."""
        socket = self._local(sid, namespace or "/")
        if socket is not None:
            await socket.consumer._server_disconnect(socket)
            return
        channel = self._channel(sid)
        if channel is not None:
            await self.channel_layer.send(channel, {"type": "sio.disconnect", "sid": sid})

    async def sleep(self, seconds: float = 0) -> None:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, seconds, lambda: None)

    def start_background_task(self, target: Callable[..., Awaitable[Any]], *args: Any,
                              **kwargs: Any) -> Deferred[Any]:
        """Run ``target(*args, **kwargs)`` on the reactor; failures are logged."""
        task: Deferred[Any] = Deferred.fromCoroutine(_maybe_await(target(*args, **kwargs)))
        task.addErrback(lambda failure: log.failure("a background task failed", failure))
        return task

    def as_asgi(self) -> SocketIOApp:
        """The application to mount at ``socket.io/`` (WebSocket and HTTP scopes)."""
        return SocketIOApp(self)


class SocketIOApp:
    """``AsyncServer.as_asgi()``: a ``SocketIOConsumer`` for a WebSocket, Engine.IO's 400
    for an HTTP (polling) request."""

    def __init__(self, server: AsyncServer) -> None:
        self.server = server

    def __call__(self, scope: dict[str, Any], *asgi: Any) -> Any:
        from realtime.routing import not_asgi

        if asgi:
            raise not_asgi(self)
        if scope.get("type") == "websocket":
            return SocketIOConsumer.as_app(server=self.server)(scope)
        return PollingRefused.as_app()(scope)


class PollingRefused(AsyncHttpConsumer):
    """HTTP long-polling is not served: Engine.IO's "Transport unknown" (400)."""

    async def handle(self, body: bytes) -> None:
        await self.send_response(400, _TRANSPORT_UNKNOWN, headers=_JSON_HEADERS)


class SocketIOConsumer(AsyncWebsocketConsumer):
    """One Engine.IO connection: its Socket.IO namespaces, pings and pending packets."""

    server: ClassVar[AsyncServer | None] = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sockets: dict[str, _Socket] = {}  # by namespace
        self._pending: Packet | None = None
        self._ping: Any = None
        self._pong_deadline: Any = None
        self._close_reason: str | None = None
        self._next_ack = 0
        self._max_payload = 0

    @property
    def _server(self) -> AsyncServer:
        assert self.server is not None
        return self.server

    async def connect(self) -> None:
        query = self.scope.get("query_string", b"").decode("latin-1")
        params = dict(part.partition("=")[::2] for part in query.split("&") if part)
        if params.get("EIO") != "4":
            raise Refuse(400, _JSON_HEADERS, _BAD_VERSION)
        if params.get("transport", "websocket") != "websocket":
            raise Refuse(400, _JSON_HEADERS, _TRANSPORT_UNKNOWN)
        if params.get("sid"):  # an upgrade of a polling session, which we never open
            raise Refuse(400, _JSON_HEADERS, _SESSION_UNKNOWN)
        if self.channel_layer is None:
            log.error("realtime.socketio needs a channel layer")
            raise Refuse(500)
        server = self._server
        if server._channel_layer is None:
            server._channel_layer = self.channel_layer
        await self.accept()
        self._max_payload = min(server.max_http_buffer_size,
                                self._conn.config.max_message_size)
        self._send(_EIO_OPEN + _dumps({
            "sid": secrets.token_urlsafe(15), "upgrades": [],
            "pingInterval": int(server.ping_interval * 1000),
            "pingTimeout": int(server.ping_timeout * 1000),
            "maxPayload": self._max_payload}))
        self._ping = self._conn.reactor.callLater(server.ping_interval, self._send_ping)

    # -- Engine.IO ---------------------------------------------------------------------------
    def _send(self, text: str, attachments: Iterable[bytes] = ()) -> None:
        if self._conn.closing_or_closed:
            return
        self._conn.send_text(text)
        for data in attachments:
            self._conn.send_bytes(data)

    def _send_ping(self) -> None:
        self._ping = None
        self._send(_EIO_PING)
        self._pong_deadline = self._conn.reactor.callLater(self._server.ping_timeout,
                                                           self._no_pong)

    def _no_pong(self) -> None:
        self._pong_deadline = None
        self._close_reason = Reason.PING_TIMEOUT
        self._conn.close_with_code(*CLOSE_PING_TIMEOUT)

    def _pong(self) -> None:
        if self._pong_deadline is None:
            return  # unasked: ignored, as Engine.IO does
        self._pong_deadline.cancel()
        self._pong_deadline = None
        self._ping = self._conn.reactor.callLater(self._server.ping_interval, self._send_ping)

    def _stop_timers(self) -> None:
        for call in (self._ping, self._pong_deadline):
            if call is not None and call.active():
                call.cancel()
        self._ping = self._pong_deadline = None

    def _refuse(self, close: tuple[int, str], why: str) -> None:
        log.info("socketio: closing a connection: {why}", why=why)
        self._close_reason = Reason.TRANSPORT_ERROR
        self._pending = None
        self._conn.close_with_code(*close)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._conn.closing_or_closed:
            return
        size = len(bytes_data or b"") if text_data is None else len(text_data)
        if size > self._max_payload or (
                text_data is not None and size * 4 > self._max_payload
                and len(text_data.encode()) > self._max_payload):
            self._refuse(CLOSE_TOO_BIG, "a message over maxPayload")
            return
        if text_data is None:
            pending = self._pending
            if pending is None:
                self._refuse(CLOSE_UNEXPECTED_BINARY, "a binary frame with no packet waiting")
                return
            pending.attachments.append(bytes_data or b"")
            if sum(map(len, pending.attachments)) > self._max_payload:
                self._refuse(CLOSE_TOO_BIG, "a packet's attachments over maxPayload")
                return
            if len(pending.attachments) < pending.missing:
                return
            self._pending = None
            try:
                pending.data = _reconstruct(pending.data, pending.attachments)
            except _Malformed as exc:
                self._refuse(CLOSE_MALFORMED, str(exc))
                return
            await self._dispatch(pending)
            return
        if self._pending is not None:
            self._refuse(CLOSE_MALFORMED, "a text frame while attachments were awaited")
            return
        kind = text_data[:1]
        if kind == _EIO_MESSAGE:
            try:
                packet = decode_packet(text_data[1:])
            except _Malformed as exc:
                self._refuse(CLOSE_MALFORMED, str(exc))
                return
            if packet.missing:
                self._pending = packet
                return
            await self._dispatch(packet)
        elif kind == _EIO_PONG and len(text_data) == 1:
            self._pong()
        elif kind == _EIO_PING and len(text_data) == 1:
            self._send(_EIO_PONG)
        elif kind == _EIO_CLOSE and len(text_data) == 1:
            self._close_reason = Reason.CLIENT_DISCONNECT
            self._conn.close_with_code(1000)
        elif kind == _EIO_NOOP and len(text_data) == 1:
            pass
        else:
            self._refuse(CLOSE_MALFORMED, "not an Engine.IO packet")

    # -- Socket.IO ---------------------------------------------------------------------------
    async def _dispatch(self, packet: Packet) -> None:
        if packet.kind == CONNECT:
            await self._connect_namespace(packet.namespace, packet.data)
            return
        socket = self._sockets.get(packet.namespace)
        if socket is None:
            return  # not connected to that namespace: ignored, as python-socketio does
        if packet.kind == DISCONNECT:
            await self._forget(socket, Reason.CLIENT_DISCONNECT)
        elif packet.kind in (EVENT, BINARY_EVENT):
            task = Deferred.fromCoroutine(self._event(socket, packet))
            task.addErrback(lambda failure: log.failure(
                "socketio: the {event!r} handler failed", failure, event=packet.data[0]))
        else:  # ACK, BINARY_ACK
            assert packet.ack_id is not None
            callback = socket.acks.pop(packet.ack_id, None)
            if callback is not None:
                try:
                    await _maybe_await(callback(*packet.data))
                except Exception:
                    log.failure("socketio: an ack callback failed")

    async def _connect_namespace(self, namespace: str, auth: Any) -> None:
        server = self._server
        if namespace in self._sockets:
            return  # connected already: ignored
        if not server._serves(namespace):
            self._send(encode_packet(CONNECT_ERROR, namespace,
                                     {"message": "Invalid namespace"})[0])
            return
        if len(self._sockets) >= MAX_NAMESPACES:
            self._send(encode_packet(CONNECT_ERROR, namespace,
                                     {"message": "Too many namespaces"})[0])
            return
        assert self.channel_name is not None
        sid = _new_sid(self.channel_name)
        socket = _Socket(self, namespace, sid)
        self._sockets[namespace] = socket
        server._sockets[sid] = socket
        await self.channel_layer.group_add(namespace_group(namespace), self.channel_name)
        refusal: dict[str, Any] | None = None
        # No auth, or an empty one (python-socketio's client sends {}): None, as there.
        handler, args = server._handler("connect", namespace, (sid, self.scope, auth or None))
        try:
            if handler is not None:
                if _positional_count(handler) < len(args):
                    args = args[:-1]  # connect(sid, environ): no auth argument
                if await _maybe_await(handler(*args)) is False:
                    refusal = ConnectionRefusedError().error_args
        except ConnectionRefusedError as exc:
            refusal = exc.error_args
        except Exception:
            log.failure("socketio: the connect handler failed")
            refusal = {"message": "Internal server error"}
        if self._sockets.get(namespace) is not socket:
            return  # disconnected meanwhile
        if refusal is not None:
            await self._drop(socket)
            self._send(encode_packet(CONNECT_ERROR, namespace, refusal)[0])
            return
        self._send(encode_packet(CONNECT, namespace, {"sid": sid})[0])

    async def _event(self, socket: _Socket, packet: Packet) -> None:
        handler, args = self._server._handler(packet.data[0], socket.namespace,
                                              (socket.sid, *packet.data[1:]))
        if handler is None:
            return
        result = await _maybe_await(handler(*args))
        if packet.ack_id is None or socket.namespace not in self._sockets:
            return
        data = [] if result is None else list(result) if isinstance(result, tuple) else [result]
        self._send(*encode_packet(ACK, socket.namespace, data, packet.ack_id))

    def _ack_id(self, socket: _Socket, callback: Callable[..., Any]) -> int:
        ack_id = self._next_ack
        self._next_ack += 1
        socket.acks[ack_id] = callback
        return ack_id

    async def _enter(self, socket: _Socket, room: Any) -> None:
        group = room_group(socket.namespace, room)
        if group in socket.rooms:
            return
        socket.rooms[group] = room
        await self.channel_layer.group_add(group, self.channel_name)

    async def _leave(self, socket: _Socket, group: str) -> None:
        if group in socket.rooms:
            del socket.rooms[group]
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _drop(self, socket: _Socket) -> None:
        """Forget ``socket`` here and in the layer (no handler, nothing sent)."""
        self._sockets.pop(socket.namespace, None)
        self._server._sockets.pop(socket.sid, None)
        if self._conn.closing_or_closed:
            return  # the layer forgets a closed connection's groups itself
        for group in [namespace_group(socket.namespace), *socket.rooms]:
            await self.channel_layer.group_discard(group, self.channel_name)
        socket.rooms.clear()

    async def _forget(self, socket: _Socket, reason: str) -> None:
        """The ``disconnect`` handler, then ``_drop``: the handler still sees the sid's
        session and rooms (as in python-socketio), but no more of its packets."""
        if self._sockets.get(socket.namespace) is not socket:
            return
        del self._sockets[socket.namespace]
        handler, args = self._server._handler("disconnect", socket.namespace,
                                              (socket.sid, reason))
        try:
            if handler is not None:
                if _positional_count(handler) < len(args):
                    args = args[:-1]  # disconnect(sid): no reason argument
                await _maybe_await(handler(*args))
        except Exception:
            log.failure("socketio: the disconnect handler failed")
        finally:
            await self._drop(socket)

    async def _server_disconnect(self, socket: _Socket) -> None:
        if self._sockets.get(socket.namespace) is not socket:
            return
        self._send(encode_packet(DISCONNECT, socket.namespace)[0])
        await self._forget(socket, Reason.SERVER_DISCONNECT)

    async def disconnect(self, code: int) -> None:
        self._stop_timers()
        self._pending = None
        reason = self._close_reason or Reason.TRANSPORT_CLOSE
        for socket in list(self._sockets.values()):
            await self._forget(socket, reason)

    # -- layer events --------------------------------------------------------------------------
    def _mine(self, event: dict[str, Any]) -> _Socket | None:
        sid = event.get("sid")
        socket = self._server._sockets.get(sid) if isinstance(sid, str) else None
        return socket if socket is not None and socket.consumer is self else None

    def sio_packet(self, event: dict[str, Any]) -> None:
        """A packet for this connection (a sid of it) or a room it is in."""
        if "sid" in event and self._mine(event) is None:
            return  # that namespace disconnected since
        self._send(event["text"], event.get("binary") or ())

    async def sio_room(self, event: dict[str, Any]) -> None:
        socket = self._mine(event)
        if socket is None:
            return
        if event.get("enter"):
            await self._enter(socket, event["room"])
        else:
            await self._leave(socket, room_group(socket.namespace, event["room"]))

    async def sio_close_room(self, event: dict[str, Any]) -> None:
        group = event.get("group")
        for socket in list(self._sockets.values()):
            if group in socket.rooms:
                await self._leave(socket, group)

    async def sio_disconnect(self, event: dict[str, Any]) -> None:
        socket = self._mine(event)
        if socket is not None:
            await self._server_disconnect(socket)


__all__ = ["AsyncServer", "CallTimeoutError", "ConnectionRefusedError", "PollingRefused",
           "Reason", "SocketIOApp", "SocketIOConsumer", "SocketIOError", "channel_of",
           "decode_packet", "encode_packet", "namespace_group", "room_group"]
