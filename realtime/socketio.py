"""Socket.IO (protocol v5 over Engine.IO v4: HTTP long-polling, WebSocket, and the upgrade
from one to the other) with python-socketio's server API, on realtime's channel layers.

Why: a team on python-socketio keeps its clients (``socket.io-client``, python-socketio's
``Client``/``AsyncClient``) unchanged and ports its server by changing imports:
``sio = realtime.socketio.AsyncServer()``, the same ``@sio.event`` handlers, ``emit``,
rooms and sessions, mounted with ``path("socket.io/", sio.as_asgi())``.

Scale-out comes from the layer, not from a client manager (``client_manager=
AsyncRedisManager(url)`` only checks the layer is on that Redis): every connected socket is in
its namespace's group (``emit`` to everyone), each room is a group (``enter_room``), and a
sid names its connection's layer channel (``emit(to=sid)``, ``disconnect(sid)`` and
``enter_room(sid)`` reach it in any process through the layer; in its own process at
once). A text-only packet to a group goes out as one prepared frame (``broadcast``); a
packet with binary attachments, or to several targets, as one layer event per member,
which each connection takes at once: a client gets one handler's packets in order.
From outside the server (a Django view, a Celery task), ``Emitter`` does the same through
the server API (``--api-key``): python-socketio's write-only manager.

A polling session (``_PollingSession``) lives in the process that opened it, as
python-engineio's do: behind several processes, polling needs sticky sessions (a request
for a sid another process holds gets 400 "Session ID unknown"). It is its own layer
receiver, so its sids, rooms and acks stay the same when it upgrades to a WebSocket: from
then on its packets go out through that WebSocket, and the WebSocket's messages come in
through the session.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import decimal
import functools
import gzip
import hashlib
import inspect
import json
import math
import os
import re
import secrets
import types
import urllib.parse
import weakref
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, ClassVar, cast

import msgpack
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtime.consumer import AsyncWebsocketConsumer, compact_json, refuse_constant
from realtime.exceptions import Refuse
from realtime.http import AsyncHttpConsumer
from realtime.layers.base import (
    HELD,
    MAX_NAME,
    escape_name,
    frame_event,
    let_out_for,
    skip_held,
    unguarded,
)
from realtime.middleware import resolve
from realtime.threads import _Driven, _explained, as_deferred, asyncio_loop

log = Logger(namespace="realtime.socketio")

# Engine.IO v4 packet types (text frames start with one).
_EIO_OPEN, _EIO_CLOSE, _EIO_PING, _EIO_PONG, _EIO_MESSAGE, _EIO_UPGRADE, _EIO_NOOP = "0123456"
# Socket.IO v5 packet types.
CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = range(7)
#: Binary attachments one packet may announce (each is one more frame to wait for).
MAX_ATTACHMENTS = 100
#: Namespaces one connection may join at once (bounds what ``namespaces="*"`` lets in).
MAX_NAMESPACES = 100
#: Acks one server awaits from sids of other processes at most (``_Replies``).
MAX_REMOTE_ACKS = 10_000
#: Acks one socket of this process is asked for and has not answered, at most (past it
#: the oldest is forgotten: a client that never answers holds no unbounded memory).
MAX_PENDING_ACKS = 10_000
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
#: No namespace connected within ``CONNECT_TIMEOUT``.
CLOSE_CONNECT_TIMEOUT = (1008, "connect timeout")
#: Seconds a connection has to connect a namespace (the JS server's ``connectTimeout``):
#: one that only answers pings holds nothing for long.
CONNECT_TIMEOUT = 45.0

#: Engine.IO's HTTP error bodies (its ``code``s: 0 unknown transport, 1 unknown session id,
#: 5 unsupported protocol version).
_TRANSPORT_UNKNOWN = b'{"code":0,"message":"Transport unknown"}'
_SESSION_UNKNOWN = b'{"code":1,"message":"Session ID unknown"}'
_BAD_VERSION = b'{"code":5,"message":"Unsupported protocol version"}'
_BAD_HANDSHAKE = b'{"code":2,"message":"Bad handshake method"}'
_BAD_REQUEST = b'{"code":3,"message":"Bad request"}'
_FORBIDDEN = b'{"code":4,"message":"Forbidden"}'
_UNAVAILABLE = b'{"code":3,"message":"Service unavailable"}'
_TOO_MANY = b'{"code":3,"message":"Too many connections"}'
_JSON_HEADERS = [(b"Content-Type", b"application/json")]
#: A polling session's queued packets past this many close it (and past
#: ``--max-send-buffer`` bytes): a client that does not poll holds no unbounded memory.
MAX_QUEUED_PACKETS = 10_000
#: Seconds a probed WebSocket has to send the upgrade packet (engine.io's
#: ``upgradeTimeout``): past them it is closed and the session goes on polling.
UPGRADE_TIMEOUT = 10.0
#: Engine.IO's payload separator (between the packets of one polling request or response).
_SEPARATOR = "\x1e"

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
                  ack_id: int | None = None, allow_nan: bool = True) -> tuple[str, list[bytes]]:
    """One Socket.IO packet as its Engine.IO text frame and its binary frames (bytes in
    ``data`` become attachments, EVENT/ACK become BINARY_EVENT/BINARY_ACK). Not
    ``allow_nan``: NaN and the infinities are a ``ValueError`` (JavaScript's
    ``JSON.parse`` refuses them)."""
    attachments: list[bytes] = []
    try:
        if data is None:
            payload = None
        elif kind != EVENT and kind != ACK:
            payload = compact_json(data, allow_nan)
        else:
            try:
                # Most data has no bytes: JSON as it is, no walk. Bytes (a TypeError for
                # json) or any other error: the walk, whose outcome stands.
                payload = compact_json(data, allow_nan)
            except (TypeError, ValueError):
                payload = compact_json(_deconstruct(data, attachments), allow_nan)
    except RecursionError:
        raise ValueError("data nested too deeply to send") from None
    return _framed(kind, namespace, ack_id, payload, attachments)


#: An Engine.IO message's start for each Socket.IO packet type.
_HEADS = tuple(f"{_EIO_MESSAGE}{kind}" for kind in range(7))


def _framed(kind: int, namespace: str, ack_id: int | None, payload: str | None,
            attachments: list[bytes]) -> tuple[str, list[bytes]]:
    """A packet's text frame: its head (type, attachments' count, namespace, ack id), then
    ``payload``; and its attachments."""
    head = _HEADS[kind]
    if attachments:
        head = f"{_HEADS[BINARY_EVENT if kind == EVENT else BINARY_ACK]}{len(attachments)}-"
    if namespace != "/":
        head += namespace + ","
    if ack_id is not None:
        head += str(ack_id)
    return head if payload is None else head + payload, attachments


#: ``decode_packet``'s parser, built once (``json.loads`` with an option builds one a call).
_JSON = json.JSONDecoder(parse_constant=refuse_constant)


def _encode_with(module: Any, kind: int, namespace: str = "/", data: Any = None,
                 ack_id: int | None = None) -> tuple[str, list[bytes]]:
    """``encode_packet`` with an ``AsyncServer(json=)`` module's ``dumps`` (python-
    socketio's call: ``dumps(data, separators=(",", ":"))``, the bytes taken out first;
    bytes it returns are taken as UTF-8)."""
    attachments: list[bytes] = []
    payload = None
    if data is not None:
        try:
            if kind == EVENT or kind == ACK:
                data = _deconstruct(data, attachments)
            payload = module.dumps(data, separators=(",", ":"))
        except RecursionError:
            raise ValueError("data nested too deeply to send") from None
        if isinstance(payload, bytes | bytearray):
            payload = bytes(payload).decode("utf-8")
        if not isinstance(payload, str):
            raise TypeError(f"the json module's dumps() returned {type(payload).__name__}, "
                            "not str")
    return _framed(kind, namespace, ack_id, payload, attachments)


class _Loads:
    """An ``AsyncServer(json=)`` module's ``loads`` as ``decode_packet``'s ``decoder``,
    held to what ``_JSON`` guarantees: whatever it raises (RecursionError too) is
    ``_Malformed``, and so are NaN and the infinities it may take (``math.isfinite`` over
    every number)."""

    __slots__ = ("module",)

    def __init__(self, module: Any) -> None:
        self.module = module

    def decode(self, text: str) -> Any:
        try:
            data = self.module.loads(text)
        except Exception:
            raise _Malformed("invalid JSON (or nested too deeply)") from None
        stack = [data]
        while stack:  # (a loop, not recursion: as deep as the module nested it)
            item = stack.pop()
            if isinstance(item, list | tuple):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, float | decimal.Decimal) and not math.isfinite(item):
                raise _Malformed("NaN or Infinity in JSON")
        return data


#: ``decode_packet``'s common shape: ``2[...]`` or ``2<ack id>[...]`` (the generic path
#: takes the rest, and says what is wrong with an ack id too long).
_EVENT_HEAD = re.compile(rf"2([0-9]{{0,{_MAX_ACK_DIGITS}}})\[")


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


def decode_packet(text: str, strict: bool = True, decoder: Any = _JSON) -> Packet:
    """A Socket.IO packet (an Engine.IO message's payload); ``_Malformed`` if it is not
    one a client may send (not ``strict``: any packet, a server's too). ``decoder``'s
    ``decode`` reads its JSON (``AsyncServer(json=)``: ``_Loads``)."""
    head = _EVENT_HEAD.match(text)
    if head is not None:  # an EVENT to "/", with or without an ack id: most packets
        try:
            data: Any = decoder.decode(text[head.end() - 1:])
        except (ValueError, RecursionError):
            raise _Malformed("invalid JSON (or nested too deeply)") from None
        if strict:
            _check_packet(EVENT, None, data)
        digits = head.group(1)
        return Packet(EVENT, "/", int(digits) if digits else None, data, 0)
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
        # "/chat?x=1": the query is dropped, as python-socketio does (socket.io-client
        # sends its query with the Engine.IO URL: the scope's query_string).
        namespace = text[i:end].partition("?")[0]
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
    data = None
    if rest:
        try:
            data = decoder.decode(rest)
        except (ValueError, RecursionError):
            # (NaN and the infinities too: relayed, they would break the browsers they reach)
            raise _Malformed("invalid JSON (or nested too deeply)") from None
    if strict:
        _check_packet(kind, ack_id, data)
    return Packet(kind, namespace, ack_id, data, missing)


def _check_packet(kind: int, ack_id: int | None, data: Any) -> None:
    """``_Malformed`` for what a client may not send."""
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


# -- the msgpack serializer (python-socketio's ``serializer="msgpack"``) -------------------------
#
# Each Socket.IO packet is one binary Engine.IO message: a msgpack map ``{"type"[, "data"],
# "nsp"[, "id"]}`` (python-socketio's ``MsgPackPacket``, socket.io-msgpack-parser's), with
# bytes in its data as they are (no attachments, no BINARY_* types). A packet without data
# (a DISCONNECT) has no "data" key: Node's socket.io-msgpack-parser refuses a DISCONNECT
# whose data is anything but undefined (a nil included, which python-socketio's own server
# writes), and python-socketio's client reads a missing key as None.

def _msgpack_packet(fields: dict[str, Any]) -> bytes:
    """A packet's map, in this key order (``_msgpack_kind`` reads the type from it).
    ``ValueError`` for what msgpack cannot carry as it is (a lone surrogate, nesting
    past 512), ``TypeError`` for what it cannot carry at all."""
    try:
        packed: bytes = msgpack.packb(fields)
    except OverflowError:
        raise ValueError("an integer past 64 bits: msgpack cannot carry it") from None
    return packed


def encode_msgpack_packet(kind: int, namespace: str = "/", data: Any = None,
                          ack_id: int | None = None) -> bytes:
    """One Socket.IO packet as both msgpack parsers read it (no "data" key for None)."""
    fields: dict[str, Any] = {"type": kind}
    if data is not None:
        fields["data"] = data
    fields["nsp"] = namespace
    if ack_id is not None:
        fields["id"] = ack_id
    return _msgpack_packet(fields)


def _msgpack_kind(packet: bytes) -> int | None:
    """The type of a packet ``encode_msgpack_packet`` made (a fixmap whose first key is
    "type", a small int), without decoding it; None for other bytes."""
    if len(packet) > 6 and packet[0] in (0x82, 0x83, 0x84) and packet[1:6] == b"\xa4type":
        return packet[6] if packet[6] < 0x80 else None
    return None


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data)
    except Exception:  # msgpack's own (ExtraData, FormatError, StackError), ValueError
        raise _Malformed("not a msgpack packet") from None


def decode_msgpack_packet(data: bytes) -> Packet:
    """A Socket.IO packet in msgpack (a binary Engine.IO message); ``_Malformed`` if it
    is not one a client may send."""
    fields = _unpack(data)
    if not isinstance(fields, dict):
        raise _Malformed("a msgpack packet is a map")
    kind, namespace, ack_id = fields.get("type"), fields.get("nsp"), fields.get("id")
    if not isinstance(kind, int) or isinstance(kind, bool) or kind not in range(7):
        raise _Malformed("unknown packet type")
    if namespace is None:
        namespace = "/"
    if not isinstance(namespace, str) or not namespace.startswith("/"):
        raise _Malformed("bad namespace")
    if ack_id is not None and (not isinstance(ack_id, int) or isinstance(ack_id, bool)
                               or not 0 <= ack_id < 10 ** _MAX_ACK_DIGITS):
        raise _Malformed("bad ack id")
    if kind in (BINARY_EVENT, BINARY_ACK):
        raise _Malformed("no binary packet types with msgpack")
    payload = fields.get("data")
    _check_packet(kind, ack_id, payload)
    return Packet(kind, namespace.partition("?")[0], ack_id, payload, 0)


def _transcode(text: str, attachments: Iterable[bytes]) -> bytes:
    """A text packet (``encode_packet``'s: made by code that does not know the serializer,
    an ``Emitter``'s) as a msgpack one."""
    packet = decode_packet(text[1:], strict=False)
    data = packet.data
    if packet.missing:
        data = _reconstruct(data, list(attachments))
    kind = {BINARY_EVENT: EVENT, BINARY_ACK: ACK}.get(packet.kind, packet.kind)
    return encode_msgpack_packet(kind, packet.namespace, data, packet.ack_id)


# -- names -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1024)  # (an emit to a room names its group every time)
def _group(kind: str, namespace: str, room: str = "") -> str:
    """A layer group for ``namespace`` (kind "a": all its sockets) or one of its rooms
    (kind "r"); hashed when escaping makes it too long ("_h" never comes out of escape_name)."""
    name = f"sio{kind}.{escape_name(namespace)}.{escape_name(room)}"
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


@functools.lru_cache(maxsize=256)
def _namespace_tag(namespace: str) -> str:
    """Four characters of a sid that tell its namespace (``skip_sid`` and ``emit(to=sid,
    namespace=)`` check a sid of another process by them)."""
    digest = hashlib.sha256(namespace.encode("utf-8", "surrogatepass")).digest()
    return base64.urlsafe_b64encode(digest[:3]).decode()


def _in_namespace(sid: str, namespace: str) -> bool:
    return sid[4:8] == _namespace_tag(namespace)


def _new_sid(channel: str, namespace: str = "/") -> str:
    token = secrets.token_urlsafe(3) + _namespace_tag(namespace)
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


def _target_key(target: Any, namespace: str) -> str:
    """A sid, or the layer group of a room (the namespace's for None)."""
    if channel_of(target) is not None:
        return str(target)
    return namespace_group(namespace) if target is None else room_group(namespace, target)


def _deliveries(text: str | bytes, attachments: list[bytes], namespace: str, target: Any,
                skip_sid: str | Iterable[str] | None, offset: str | None = None,
                ) -> tuple[list[tuple[str, str, dict[str, Any] | None]], list[str]]:
    """How one packet reaches ``target`` (a sid, a room, a list of them; None: the
    namespace), for ``AsyncServer.emit`` and ``Emitter.emit`` alike: steps ``("sid", sid,
    event)`` (a ``sio.packet`` event to its channel), ``("group", group, event)`` (a
    ``group_send``: attachments, or one of several targets, whose members take it from
    the first target they are in) and ``("group", group, None)`` (one text frame,
    ``broadcast``); and the channels to exclude: only the skipped sids of ``namespace``
    (a "/" sid leaves its /chat socket in). A packet with an ``offset`` (connection state
    recovery) is always an event: each member's socket keeps it, to replay."""
    if skip_sid is None and offset is None and not isinstance(target, list | tuple | set):
        # One target, nothing skipped (most emits): the same steps, fewer allocations.
        if channel_of(target) is not None:  # a sid
            if not _in_namespace(target, namespace):
                return [], []
            return [("sid", target, {"type": "sio.packet", "namespace": namespace,
                                     "text": text, "binary": attachments, "sid": target})], []
        group = namespace_group(namespace) if target is None else room_group(namespace, target)
        with_binary: dict[str, Any] | None = {
            "type": "sio.packet", "namespace": namespace, "text": text,
            "binary": attachments} if attachments else None
        return [("group", group, with_binary)], []
    skip = {skip_sid} if isinstance(skip_sid, str) else set(skip_sid or ())
    exclude = [channel for sid in skip if isinstance(sid, str)
               and _in_namespace(sid, namespace)
               and (channel := channel_of(sid)) is not None]
    targets = list(target) if isinstance(target, list | tuple | set) else [target]
    keys = [_target_key(one, namespace) for one in targets] if len(targets) > 1 else None
    steps: list[tuple[str, str, dict[str, Any] | None]] = []
    for via, one in enumerate(targets):
        event: dict[str, Any] = {"type": "sio.packet", "namespace": namespace,
                                 "text": text, "binary": attachments}
        if keys is not None:
            event["targets"], event["via"] = keys, via
        if offset is not None:
            event["offset"] = offset
        if channel_of(one) is not None:  # a sid
            if one not in skip and _in_namespace(one, namespace):
                steps.append(("sid", one, {**event, "sid": one}))
            continue
        group = keys[via] if keys is not None else _target_key(one, namespace)
        framed = attachments or keys is not None or offset is not None
        steps.append(("group", group, event if framed else None))
    return steps, exclude


def _with_ack_id(packet: str | bytes, at: int, ack_id: int) -> str | bytes:
    """An EVENT packet made without an ack id (``_ack_at``: where it goes), with one."""
    if isinstance(packet, bytes):  # msgpack: a map; the id is one more key
        return _msgpack_packet({**_unpack(packet), "id": ack_id})
    return packet[:at] + str(ack_id) + packet[at:]


def _reply_gone(layer: Any, event: dict[str, Any]) -> None:
    """Tell the server that asked for an ack (``event``'s ``reply_to``) that the sid went
    before its client answered (or was not there)."""
    reply_to, token = event.get("reply_to"), event.get("ack")
    if not isinstance(reply_to, str) or not isinstance(token, int):
        return
    layer.send(reply_to, {"type": "sio.ack", "ack": token, "gone": True}).addErrback(
        lambda failure: log.failure("socketio: an ack's asker not told", failure))


def _room_event(sid: str, namespace: str, room: Any, enter: bool) -> dict[str, Any]:
    """The layer event that has ``sid`` enter or leave ``room`` where it is connected."""
    return {"type": "sio.room", "sid": sid, "namespace": namespace, "room": str(room),
            "enter": enter}


def _close_room_event(group: str) -> dict[str, Any]:
    return {"type": "sio.close_room", "group": group}


def _disconnect_event(sid: str, namespace: str) -> dict[str, Any]:
    return {"type": "sio.disconnect", "sid": sid, "namespace": namespace}


_COROUTINE = types.CoroutineType


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

def _send_frames(conn: Any, text: str | bytes, attachments: Iterable[bytes]) -> None:
    """A packet and its attachments on a WebSocket (``WebSocketConnection``), in one write
    (``send_together``): the slow-consumer policy never drops some of them (the client
    would take the next packet for an attachment). A msgpack packet is one binary frame."""
    attachments = list(attachments)
    if isinstance(text, bytes):
        conn.send_bytes(text)
    elif attachments:
        conn.send_together(text, *attachments)
    else:
        conn.send_text(text)


def _first_target(socket: _Socket, keys: list[str]) -> int | None:
    """The index of the first of ``keys`` (``_target_key``) ``socket`` is in."""
    everyone = namespace_group(socket.namespace)
    for index, key in enumerate(keys):
        if key == socket.sid or key == everyone or key in socket.rooms:
            return index
    return None


def _ack_at(text: str, namespace: str) -> int:
    """Where the ack id goes in ``text``, an EVENT packet ``encode_packet`` made without
    one: after its type, attachment count and namespace."""
    at = 2  # "4" and the packet type
    if text[1] == str(BINARY_EVENT):
        at = text.index("-", at) + 1
    return at + (len(namespace) + 1 if namespace != "/" else 0)


class _Answer:
    """An ack callback, and what to call instead when its socket goes before the client
    answered (``call()`` fails at once; a sid asked from another process tells it).
    ``gone`` takes why, when it is not that (None)."""

    __slots__ = ("ack_id", "callback", "gone", "socket")

    def __init__(self, callback: Callable[..., Any],
                 gone: Callable[..., Any] | None = None) -> None:
        self.callback = callback
        self.gone = gone
        #: Where it waits (``SocketIOConsumer._ack_id``): a timed-out ``call()`` takes it
        #: out of its socket's acks.
        self.socket: _Socket | None = None
        self.ack_id = -1

    def forget(self) -> None:
        """Out of its socket's acks (a ``call()`` that timed out: no answer comes for it)."""
        where, ack_id = self.socket, self.ack_id
        if where is not None and where.acks.get(ack_id) is self:
            del where.acks[ack_id]

    def __call__(self, *args: Any) -> Any:
        return self.callback(*args)


class _Replies:
    """The acks one ``AsyncServer`` asked of sids in other processes: a layer receiver of
    its own (one channel per server and layer, attached at the first such ack,
    detached by ``shutdown()``). The process holding the sid answers with a ``sio.ack``
    event: ``{"ack": token, "args": [...]}``, or ``{"ack": token, "gone": True}`` when the
    sid disconnected (or was not there) before its client answered. An entry lives until
    then, or until ``call()``'s timeout; at most ``MAX_REMOTE_ACKS`` (the oldest goes,
    for an ``emit(callback=)`` to a process that died)."""

    _held_seq = -1
    _held_count = 0

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.channel: str = layer.attach(self)
        skip_held(self)
        self.pending: dict[int, _Answer] = {}
        self._next = 0
        #: Entries forgotten past ``MAX_REMOTE_ACKS`` (one warning, at the first).
        self.evicted = 0
        #: Releases it when its server is garbage (``AsyncServer._replies_on``).
        self.finalizer: weakref.finalize[..., Any] | None = None

    def add(self, callback: Callable[..., Any], gone: Callable[..., Any] | None) -> int:
        token = self._next
        self._next += 1
        self.pending[token] = _Answer(callback, gone)
        while len(self.pending) > MAX_REMOTE_ACKS:
            oldest = next(iter(self.pending))
            self.evicted += 1
            if self.evicted == 1:  # (not once per packet: a process that died sends on)
                log.warn("socketio: more than {count} acks awaited from other processes "
                         "(MAX_REMOTE_ACKS): the oldest are forgotten", count=MAX_REMOTE_ACKS)
            self._gone(self.pending.pop(oldest),
                       f"forgotten: more than MAX_REMOTE_ACKS ({MAX_REMOTE_ACKS}) acks were "
                       "awaited from other processes")
        return token

    def forget(self, token: int) -> None:
        self.pending.pop(token, None)

    def release(self) -> None:
        """Off the layer; what waits (a ``call()``) fails now."""
        if self.finalizer is not None:
            self.finalizer.detach()  # (once)
        self.layer.detach(self.channel)
        pending, self.pending = self.pending, {}
        for answer in pending.values():
            self._gone(answer, "the server shut down (its reply channel was released)")

    @staticmethod
    def _gone(answer: _Answer, why: str | None = None) -> None:
        if answer.gone is not None:
            try:
                answer.gone(why)
            except Exception:
                log.failure("socketio: telling an ack's asker it will not come failed")

    def deliver(self, event: dict[str, Any]) -> None:
        if event.get("type") != "sio.ack":
            return
        token = event.get("ack")
        answer = self.pending.pop(token, None) if isinstance(token, int) else None
        if answer is None:
            return  # timed out, or not ours
        args = event.get("args")
        if event.get("gone") or not isinstance(args, list):
            self._gone(answer)
            return
        try:
            result = answer(*args)
        except Exception:
            log.failure("socketio: an ack callback failed")
            return
        if inspect.isawaitable(result):
            as_deferred(result).addErrback(
                lambda failure: log.failure("socketio: an ack callback failed", failure))

    def deliver_frame(self, frame: bytes) -> bool:
        return True  # in no group: nothing is broadcast to it

    def deliver_joined(self, joined: bytes) -> bool:
        return True

    def close_from_layer(self, code: int, reason: str | None) -> None:
        pass


class _Socket:
    """One namespace connection in this process."""

    __slots__ = ("acks", "channel", "consumer", "gone", "namespace", "pending", "rooms", "session",
                 "sid", "waiting")

    def __init__(self, consumer: SocketIOConsumer, namespace: str, sid: str,
                 channel: str | None = None) -> None:
        #: Its connect handler runs: its packets are ignored until CONNECT is answered.
        self.pending = True
        self.consumer = consumer
        self.namespace = namespace
        self.sid = sid
        #: The layer channel its sid names and its groups hold: its connection's, or (with
        #: connection state recovery) its own (``realtime.socketio_recovery``).
        self.channel = channel or consumer.channel_name
        self.rooms: dict[str, Any] = {}  # group -> the room as given
        self.session: dict[Any, Any] = {}
        self.acks: dict[int, Callable[..., Any]] = {}
        #: ``always_connect``: CONNECT was answered, its handler runs; the packets that
        #: wait for it (``_after_connect``, ``_take_turns``). None otherwise.
        self.waiting: list[Deferred[None]] | None = None
        #: Why it went while its connect handler ran (its connection closed, a DISCONNECT):
        #: a handler that then accepts is followed by the disconnect handler, this reason.
        self.gone: str | None = None


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


class AsyncNamespace:
    """python-socketio's class-based namespace: ``on_<event>`` methods (``async def`` or
    plain) are the namespace's handlers, ``AsyncServer.register_namespace(instance)``
    serves it. ``on_connect(sid, environ[, auth])`` and ``on_disconnect(sid[, reason])``
    take the arguments they name, as the decorators' handlers do; an event's return value
    is its ack. ``emit``, ``send``, ``call``, the rooms and the sessions are the server's,
    in this namespace unless ``namespace=`` says otherwise.

    An event is looked up as ``"on_" + event`` (``trigger_event``, which a subclass may
    override to route events itself): one whose name is no identifier ("my-event", "two
    words") finds no method unless one is set under that name (``setattr``), and is
    ignored (acked with no arguments), as in python-socketio. In the ``"*"`` class, every
    method gets the namespace before the sid, and ``emit`` and friends need
    ``namespace=``."""

    def __init__(self, namespace: str | None = None) -> None:
        self.namespace = namespace or "/"
        self.server: AsyncServer | None = None

    def is_asyncio_based(self) -> bool:
        return True

    def _set_server(self, server: AsyncServer) -> None:
        self.server = server

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Call ``on_<event>`` with ``args`` (None if there is none); ``connect`` and
        ``disconnect`` without the arguments their method does not take (``auth``,
        ``reason``)."""
        handler = getattr(self, "on_" + (event or ""), None)
        if handler is None or not callable(handler):
            return None
        if event in ("connect", "disconnect") and _positional_count(handler) < len(args):
            args = args[:-1]
        return await _maybe_await(handler(*args))

    def _at(self, namespace: str | None) -> tuple[AsyncServer, str]:
        if self.server is None:
            raise RuntimeError("this namespace is not registered: "
                               "AsyncServer.register_namespace(it) first")
        namespace = namespace or self.namespace
        if namespace == "*":
            raise ValueError("the '*' namespace class names the namespace: namespace=")
        return self.server, namespace

    async def emit(self, event: str, data: Any = None, to: Any = None, room: Any = None,
                   skip_sid: str | Iterable[str] | None = None, namespace: str | None = None,
                   callback: Callable[..., Any] | None = None, ignore_queue: bool = False,
                   ) -> None:
        server, namespace = self._at(namespace)
        await server.emit(event, data, to=to, room=room, skip_sid=skip_sid,
                          namespace=namespace, callback=callback)

    async def send(self, data: Any, to: Any = None, room: Any = None,
                   skip_sid: str | Iterable[str] | None = None, namespace: str | None = None,
                   callback: Callable[..., Any] | None = None, ignore_queue: bool = False,
                   ) -> None:
        server, namespace = self._at(namespace)
        await server.send(data, to=to, room=room, skip_sid=skip_sid, namespace=namespace,
                          callback=callback)

    async def call(self, event: str, data: Any = None, to: str | None = None,
                   sid: str | None = None, namespace: str | None = None,
                   timeout: float | None = 60, ignore_queue: bool = False) -> Any:
        server, namespace = self._at(namespace)
        return await server.call(event, data, to=to, sid=sid, namespace=namespace,
                                 timeout=timeout)

    async def enter_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        server, namespace = self._at(namespace)
        await server.enter_room(sid, room, namespace=namespace)

    async def leave_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        server, namespace = self._at(namespace)
        await server.leave_room(sid, room, namespace=namespace)

    async def close_room(self, room: Any, namespace: str | None = None) -> None:
        server, namespace = self._at(namespace)
        await server.close_room(room, namespace=namespace)

    def rooms(self, sid: str, namespace: str | None = None) -> list[Any]:
        server, namespace = self._at(namespace)
        return server.rooms(sid, namespace=namespace)

    async def get_session(self, sid: str, namespace: str | None = None) -> dict[Any, Any]:
        server, namespace = self._at(namespace)
        return await server.get_session(sid, namespace=namespace)

    async def save_session(self, sid: str, session: dict[Any, Any],
                           namespace: str | None = None) -> None:
        server, namespace = self._at(namespace)
        await server.save_session(sid, session, namespace=namespace)

    def session(self, sid: str, namespace: str | None = None) -> _Session:
        server, namespace = self._at(namespace)
        return server.session(sid, namespace=namespace)

    async def disconnect(self, sid: str, namespace: str | None = None) -> None:
        server, namespace = self._at(namespace)
        await server.disconnect(sid, namespace=namespace)


# -- python-socketio's options that need more than a value ----------------------------------------

class AsyncManager:
    """python-socketio's in-process client manager: ``sio.manager`` (``AsyncServer``'s
    own, or the one given as ``client_manager=``, which changes nothing else: realtime's
    channel layer, ``--layer``, holds the rooms and carries the emits, in one process or
    across several; python-socketio's own manager instances are a ``TypeError``).

    Why: python-socketio apps read their rooms through it (``sio.manager.rooms``,
    ``get_participants``...). Its read-only methods answer from the server's sockets in
    this process, as python-socketio's do (its docs: "only returns the participants
    connected to the server in which the method is called"): ``rooms`` (a snapshot,
    ``{namespace: {room: {sid: eio_sid}}}``, room None holding every sid of the
    namespace and each sid its own room), ``get_namespaces()``,
    ``get_participants(namespace, room)``, ``get_rooms(sid, namespace)``,
    ``is_connected(sid, namespace)``, ``can_disconnect``, ``is_sid_room``,
    ``sid_from_eio_sid``, ``eio_sid_from_sid``. Changing rooms is the server's
    (``sio.enter_room``...)."""

    def __init__(self) -> None:
        self.server: AsyncServer | None = None

    def set_server(self, server: AsyncServer) -> None:
        """Bound to ``server`` (``AsyncServer`` does it); one manager serves one server."""
        if self.server is not None and self.server is not server:
            raise ValueError(f"this {type(self).__name__} is another AsyncServer's "
                             "manager already: give each server its own")
        self.server = server

    def initialize(self) -> None:
        """python-socketio's hook before the first request: nothing to do here."""

    def _mismatch(self, layer: Any) -> str | None:
        """Why ``layer`` is not the one this manager names (None: it is)."""
        return None

    def _sockets(self, namespace: str | None = None) -> Iterator[_Socket]:
        """The server's sockets in this process (of ``namespace``), connected or on their
        way in or out (their connect or disconnect handler runs), in connect order."""
        if self.server is None:
            return
        for socket in list(self.server._sockets.values()):
            if namespace is None or socket.namespace == namespace:
                yield socket

    @staticmethod
    def _eio_sid(socket: _Socket) -> str:
        return socket.consumer._eio_sid

    @property
    def rooms(self) -> dict[str, dict[Any, dict[str, str]]]:
        """``{namespace: {room: {sid: eio_sid}}}`` now, as python-socketio's (built at
        each read: changing it changes nothing)."""
        rooms: dict[str, dict[Any, dict[str, str]]] = {}
        for socket in self._sockets():
            eio_sid = self._eio_sid(socket)
            namespace = rooms.setdefault(socket.namespace, {})
            for room in (None, socket.sid, *socket.rooms.values()):
                namespace.setdefault(room, {})[socket.sid] = eio_sid
        return rooms

    def get_namespaces(self) -> list[str]:
        """The namespaces with a socket in this process."""
        return list(dict.fromkeys(socket.namespace for socket in self._sockets()))

    def get_participants(self, namespace: str, room: Any) -> Iterator[tuple[str, str]]:
        """``(sid, eio_sid)`` of each socket of ``namespace`` in ``room`` (None: all of
        them; a list, tuple or set: in any of those rooms, once), in this process."""
        rooms = list(room) if isinstance(room, list | tuple | set) else [room]
        for socket in self._sockets(namespace):
            if any(one is None or one == socket.sid
                   or room_group(namespace, one) in socket.rooms for one in rooms):
                yield socket.sid, self._eio_sid(socket)

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        """The rooms of ``sid`` (its own first), [] for a sid not in this process."""
        socket = self._socket(sid, namespace)
        return [] if socket is None else [sid, *socket.rooms.values()]

    def is_connected(self, sid: str, namespace: str) -> bool:
        """Whether ``sid`` is connected to ``namespace`` in this process: not while its
        connect handler runs (unless ``always_connect`` answered its CONNECT already), nor
        once it is leaving (its disconnect handler runs), as in python-socketio."""
        socket = self._socket(sid, namespace)
        return socket is not None and socket.consumer._sockets.get(namespace) is socket and (
            not socket.pending or socket.waiting is not None)

    async def can_disconnect(self, sid: str, namespace: str) -> bool:
        return self.is_connected(sid, namespace)

    def is_sid_room(self, namespace: str, room: Any) -> bool:
        """Whether ``room`` is the sid of a socket of ``namespace`` in this process."""
        return self._socket(room, namespace) is not None

    def sid_from_eio_sid(self, eio_sid: str, namespace: str) -> str | None:
        for socket in self._sockets(namespace):
            if self._eio_sid(socket) == eio_sid:
                return socket.sid
        return None

    def eio_sid_from_sid(self, sid: str, namespace: str) -> str | None:
        socket = self._socket(sid, namespace)
        return None if socket is None else self._eio_sid(socket)

    def _socket(self, sid: Any, namespace: str) -> _Socket | None:
        if self.server is None or not isinstance(sid, str):
            return None
        return self.server._local(sid, namespace or "/")


class AsyncRedisManager(AsyncManager):
    """python-socketio's ``AsyncRedisManager(url, channel=...)`` as ``AsyncServer(
    client_manager=)``: the server's layer must be on that Redis, checked when the server
    first meets its layer (its construction with ``channel_layer=`` or under twistd, else
    its first connection or emit): a ``ValueError`` naming both, so a ported app never runs
    on one process's memory while it believes its rooms are shared. ``url`` is read as
    python-socketio reads it (redis-py's and valkey's forms, python-socketio's
    ``redis+sentinel://h1:p1,h2:p2/db/service``) and compared by where it leads
    (``_same_redis``: user, password and connection options aside); one of a sharded
    layer's servers or of a cluster's nodes is that layer's Redis too. ``channel``
    (python-socketio's separation of apps on one Redis) is the layer's ``prefix=`` here:
    python-socketio's default, "socketio", goes with any prefix; another must be
    ``--layer ...?prefix=`` the same. ``write_only=True`` (an emitter outside the server)
    is ``realtime.socketio.Emitter``'s work: a ``ValueError`` as a ``client_manager``."""

    def __init__(self, url: str = "redis://localhost:6379/0", channel: str = "socketio",
                 write_only: bool = False, logger: Any = None,
                 redis_options: dict[str, Any] | None = None) -> None:
        from realtime.layers.redis import redact_url

        super().__init__()
        if not isinstance(url, str):
            raise TypeError(f"AsyncRedisManager's url is a str, not {type(url).__name__}")
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"AsyncRedisManager's channel is a non-empty str, not {channel!r}")
        if redis_options:
            raise TypeError("AsyncRedisManager(redis_options=): the layer's Redis connection "
                            "is --layer's (its URL takes db=, password=, ssl_ca_certs=)")
        self.url = redact_url(url)
        self.channel = channel
        self.address = _manager_address(url, channel, self.url)
        self.write_only = bool(write_only)

    def _mismatch(self, layer: Any) -> str | None:
        from realtime.layers.redis import RedisAddress

        address = getattr(layer, "address", None)
        shards = getattr(address, "shards", None)  # a sharded layer's servers
        theirs = ([shard.address for shard in shards] if shards is not None
                  else [address] if isinstance(address, RedisAddress) else [])
        if not any(_same_redis(self.address, one) for one in theirs):
            described = (address.describe() if address is not None
                         else f"{type(layer).__name__} (--layer memory)")
            return (f"client_manager=AsyncRedisManager({self.url!r}), but the server's "
                    f"channel layer is {described}: realtime's layer carries what the "
                    f"manager did; run with --layer {_layer_url(self.address)} (with its "
                    f"password, if any; or drop client_manager=)")
        prefix = getattr(layer, "prefix", None)
        if prefix is None and shards:
            prefix = shards[0].prefix
        if self.channel != "socketio" and self.channel != prefix:
            return (f"client_manager=AsyncRedisManager(channel={self.channel!r}) keeps apps "
                    f"apart on one Redis, which the layer's prefix does here (it is "
                    f"{prefix!r}): run with --layer "
                    f"{_layer_url(self.address, prefix=self.channel)}")
        return None

    async def emit(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "realtime.socketio.AsyncRedisManager is an AsyncServer's client_manager only: "
            "to emit from outside the server use realtime.socketio.Emitter(server_url, "
            "api_key), or an AsyncServer on the same --layer")


def _manager_address(url: str, channel: str, shown: str) -> Any:
    """Where python-socketio's ``AsyncRedisManager(url)`` leads, as a ``RedisAddress``:
    its URL read as redis-py reads it (the host "localhost", port 6379 and db 0 unless
    given; ``?db=`` before the path's; other options aside), ``valkey`` schemes as
    ``redis`` ones, a sentinel URL as python-socketio reads it (``/db/service``; no
    service: ``channel``). ``redis+cluster://`` (realtime's) as ``--layer`` reads it.
    ``ValueError`` for what python-socketio would not take."""
    from urllib.parse import parse_qs, unquote, urlsplit

    from realtime.layers.redis import RedisAddress, parse_url

    where = f"AsyncRedisManager({shown!r})"
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis+cluster", "rediss+cluster"):
        try:
            address, options = parse_url(url)
        except ValueError as exc:
            raise ValueError(f"AsyncRedisManager: {exc}") from None
        if options:
            raise ValueError(f"{where}: {', '.join(sorted(options))} is a --layer option")
        return address
    base, _, extra = scheme.partition("+")
    base = {"valkey": "redis", "valkeys": "rediss"}.get(base, base)
    if (base not in ("redis", "rediss", "unix") or "://" not in url
            or extra not in ("", "sentinel") or (extra and base != "redis")):
        raise ValueError(f"{where}: not a URL scheme python-socketio's AsyncRedisManager "
                         "takes (redis://, rediss://, unix://, redis+sentinel://, valkey's)")
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    for option in ("capacity", "prefix", "partitions"):
        if option in query:
            raise ValueError(f"{where}: {option}= is a --layer option")

    def number(text: str, what: str, top: int) -> int:
        if not text.isdigit() or int(text) > top:
            raise ValueError(f"{where}: {what} {text!r} is not a number from 0 to {top}")
        return int(text)

    db_query = query.get("db", [""])[0]
    if base == "unix":
        return RedisAddress("unix", path=unquote(parts.path),
                            db=number(db_query, "the db", 2**31) if db_query else 0)
    if extra == "sentinel":  # python-socketio's parse_redis_sentinel_url
        sentinels = []
        for host_port in parts.netloc.rpartition("@")[2].split(","):
            host, colon, port_text = host_port.rpartition(":")
            if not colon or host_port.endswith("]"):
                host, port_text = host_port, "26379"
            sentinels.append((host.strip("[]"), number(port_text, "the port", 65535)))
        path = parts.path.split("/")
        db_text = path[1] if len(path) > 1 else ""
        if db_text and not db_text.isdigit():
            raise ValueError(f"{where}: python-socketio's sentinel URL is "
                             "redis+sentinel://h1:p1,h2:p2/db/service (the db first)")
        return RedisAddress("sentinel", sentinels=tuple(sentinels),
                            master=unquote(path[2]) if len(path) > 2 and path[2] else channel,
                            db=number(db_text, "the db", 2**31) if db_text else 0)
    try:
        tcp_port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{where}: the port is not a number from 1 to 65535") from None
    db_path = unquote(parts.path).replace("/", "")
    return RedisAddress(
        "tcp", host=unquote(parts.hostname or "localhost"), port=tcp_port,
        db=number(db_query or db_path, "the db", 2**31) if db_query or db_path else 0,
        tls=base == "rediss")


#: The names of this host's loopback address (``_same_redis``).
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def _host_key(host: str) -> str:
    host = host.lower().strip("[]").rstrip(".")
    return "localhost" if host in _LOOPBACK else host


def _same_redis(mine: Any, theirs: Any) -> bool:
    """Whether two ``RedisAddress``es lead to the same Redis (names as written, but a
    host's case and this host's loopback names; a sentinel deployment by its master, db
    and any sentinel in common; a cluster by any node in common, or one of its nodes)."""
    def hosts(pairs: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
        return {(_host_key(host), port) for host, port in pairs}

    if theirs.kind == "cluster" and mine.kind in ("tcp", "cluster"):
        mine_nodes = (hosts(mine.nodes) if mine.kind == "cluster"
                      else hosts([(mine.host, mine.port)]) if mine.db == 0 else set())
        return mine.tls == theirs.tls and bool(mine_nodes & hosts(theirs.nodes))
    if mine.kind != theirs.kind:
        return False
    if mine.kind == "unix":
        return (os.path.normpath(mine.path), mine.db) == (os.path.normpath(theirs.path),
                                                          theirs.db)
    if mine.kind == "sentinel":
        return ((mine.master, mine.db) == (theirs.master, theirs.db)
                and bool(hosts(mine.sentinels) & hosts(theirs.sentinels)))
    return ((_host_key(mine.host), mine.port, mine.db, mine.tls)
            == (_host_key(theirs.host), theirs.port, theirs.db, theirs.tls))


def _layer_url(address: Any, prefix: str | None = None) -> str:
    """A ``--layer`` URL for ``address`` (no password), with ``prefix=``."""
    from realtime.layers.redis import _host_port

    if address.kind == "unix":
        url = f"unix://{address.path}" + (f"?db={address.db}" if address.db else "")
    elif address.kind == "sentinel":
        hosts = ",".join(_host_port(host, port) for host, port in address.sentinels)
        url = f"redis+sentinel://{hosts}/{address.master}/{address.db}"
    elif address.kind == "cluster":
        hosts = ",".join(_host_port(host, port) for host, port in address.nodes)
        url = f"{'rediss' if address.tls else 'redis'}+cluster://{hosts}"
    else:
        url = address.describe()
    if prefix is not None:
        url += ("&" if "?" in url else "?") + f"prefix={prefix}"
    return url


def _manager(client_manager: Any) -> AsyncManager:
    """``AsyncServer(client_manager=)`` checked: one of this module's managers (a new
    ``AsyncManager`` for None)."""
    if client_manager is None:
        return AsyncManager()
    if type(client_manager) is AsyncManager:
        return client_manager
    if isinstance(client_manager, str) or (
            isinstance(client_manager, list | tuple | set | frozenset)
            and all(isinstance(one, str) for one in client_manager)):
        # (realtime's first argument was namespaces before it followed python-socketio's)
        raise TypeError(f"AsyncServer's first argument is client_manager, as in "
                        f"python-socketio, not namespaces ({client_manager!r}): "
                        f"AsyncServer(namespaces=...)")
    if isinstance(client_manager, AsyncRedisManager):
        if client_manager.write_only:
            raise ValueError(
                "client_manager=AsyncRedisManager(write_only=True): a write-only manager "
                "emits from outside a server; use realtime.socketio.Emitter(server_url, "
                "api_key) there, or an AsyncServer on the same --layer")
        return client_manager
    kind = type(client_manager)
    if any(base.__module__.split(".")[0] == "socketio" for base in kind.__mro__):
        from realtime.layers.redis import redact_url

        url = getattr(client_manager, "redis_url", None)
        layer = f"--layer {redact_url(url)}" if isinstance(url, str) else "--layer"
        raise TypeError(
            f"client_manager=socketio.{kind.__name__}: realtime does not use python-socketio's "
            f"managers; its channel layer holds the rooms and carries the emits across "
            f"processes: run with {layer} and drop client_manager= (or pass "
            f"realtime.socketio.AsyncRedisManager(url), which checks --layer is that URL)")
    raise TypeError(f"client_manager is a realtime.socketio.AsyncManager or "
                    f"AsyncRedisManager, not {kind.__name__} (the layer is --layer's)")


def _check_cookie(cookie: Any) -> dict[str, Any] | None:
    """``AsyncServer(cookie=)`` as python-engineio takes it: a name (then ``path=/;
    SameSite=Lax``) or a dict of attributes (``name``, default "io"); each value a str,
    True (the attribute alone), False or None (left out) or a callable giving one of those
    at each handshake; an empty one none, as there. What could break the header is a
    ``ValueError`` now."""
    if cookie is None or cookie == "" or cookie == {}:
        return None
    if isinstance(cookie, str):
        cookie = {"name": cookie, "path": "/", "SameSite": "Lax"}
    if not isinstance(cookie, dict):
        raise TypeError(f"cookie is a name (str) or a dict of attributes, not "
                        f"{type(cookie).__name__}")
    cookie = dict(cookie)
    name = cookie.setdefault("name", "io")
    if not isinstance(name, str) or not _COOKIE_TOKEN.match(name):
        raise ValueError(f"cookie name {name!r} is not a cookie name (a token: letters, "
                         "digits, !#$%&'*+-.^_`|~)")
    for attribute, value in cookie.items():
        if not isinstance(attribute, str) or not _COOKIE_TOKEN.match(attribute):
            raise ValueError(f"cookie attribute {attribute!r} is not an attribute name")
        if attribute != "name" and not callable(value):
            _cookie_value(attribute, value)
    return cookie


_COOKIE_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: What a cookie attribute's value may not hold (it would end the attribute or the header).
_COOKIE_BAD = re.compile(r"[^\x20-\x7e]|;")


def _cookie_value(attribute: str, value: Any) -> str | None:
    """One attribute as the header writes it ("" for a flag, None to leave out)."""
    if value is True:
        return ""
    if value is False or value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"cookie attribute {attribute!r}: a str, True, False or a callable "
                        f"giving one, not {type(value).__name__}")
    if _COOKIE_BAD.search(value):
        raise ValueError(f"cookie attribute {attribute!r}: {value!r} holds a ';', a "
                         "control character or one past ASCII")
    return value


def _sid_cookie(cookie: dict[str, Any], sid: str) -> bytes | None:
    """The handshake's ``Set-Cookie`` value (python-engineio's ``name=sid; attr=value;
    flag``); None, logged, when a callable attribute gives what cannot go in it."""
    parts = [f"{cookie['name']}={sid}"]
    for attribute, value in cookie.items():
        if attribute == "name":
            continue
        try:
            text = _cookie_value(attribute, value() if callable(value) else value)
        except Exception as exc:
            log.error("socketio: the Engine.IO cookie left out: {why}", why=str(exc))
            return None
        if text is not None:
            parts.append(f"{attribute}={text}" if text else attribute)
    return "; ".join(parts).encode("latin-1", "replace")


def _check_json(module: Any) -> Any:
    """``AsyncServer(json=)``: None for the standard library's (the built-in fast path does
    what it does), else the module (``dumps`` and ``loads`` as the standard library's)."""
    if module is None or module is json:
        return None
    if not (callable(getattr(module, "dumps", None)) and callable(getattr(module, "loads", None))):
        raise TypeError(f"json is a module with dumps() and loads() (as the standard "
                        f"library's), not {module!r}")
    return module


def _ping_interval(value: Any) -> tuple[float, float]:
    """``AsyncServer(ping_interval=)`` checked: seconds, or python-engineio's ``(interval,
    grace)``; as ``(interval, grace)``."""
    def seconds(one: Any) -> bool:
        return isinstance(one, int | float) and not isinstance(one, bool) and math.isfinite(one)

    if isinstance(value, tuple):
        if len(value) != 2 or not all(map(seconds, value)) or value[0] <= 0 or value[1] < 0:
            raise ValueError(f"ping_interval as a tuple is (interval, grace period), as in "
                             f"python-engineio: seconds, interval > 0 and grace >= 0; not "
                             f"{value!r}")
        return float(value[0]), float(value[1])
    if not seconds(value):
        raise TypeError(f"ping_interval is seconds (a number) or a tuple (interval, grace "
                        f"period), not {value!r}")
    if value <= 0:
        raise ValueError("ping_interval, ping_timeout and max_http_buffer_size are > 0")
    return float(value), 0.0


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} is True or False, not {value!r}")
    return value


class AsyncServer:
    """python-socketio's ``AsyncServer`` API over realtime's layers.

    The positional arguments are python-socketio's (``client_manager``, ``logger``,
    ``json``, ``async_handlers``, ``namespaces``), the others go by name.
    ``ping_interval``/``ping_timeout`` (seconds; ``ping_interval`` may be ``(interval,
    grace)``: pings every ``interval``, clients told ``interval + grace``) and
    ``max_http_buffer_size`` (the Engine.IO ``maxPayload``: longer messages close the
    connection) are python-engineio's options; ``namespaces`` ("*": any) lists namespaces
    open without handlers ("/" always is). ``channel_layer``: the layer ``emit`` and
    friends use (default: the connected consumers', else
    ``get_channel_layer(channel_layer_alias)``).

    ``cors_allowed_origins`` (python-engineio's: a list of origins in ``realtime.origins``'
    pattern forms, or "*", or a callable ``fn(origin, scope)``/``fn(origin)`` that says
    yes or no) is the cross-origin pages whose polling requests are answered
    (with ``Access-Control-Allow-Origin`` and credentials) and whose WebSockets open; by
    default only the server's own origin and those ``--allowed-origins`` lets in; a
    request from another origin gets 403 on either transport (one without ``Origin``, no
    browser's, passes); ``[]`` turns the CORS headers off (a layer in front adds them) and
    keeps the default origin check; ``cors_credentials`` (True) adds
    ``Access-Control-Allow-Credentials: true`` to those answers. A packet's binary
    attachments count together against ``max_http_buffer_size``.

    python-engineio's polling options: ``cookie`` (a name, or a dict of attributes) sets
    the Engine.IO sid as a cookie on the polling handshake (for a load balancer's
    cookie-based sticky sessions); ``http_compression`` (True) gzips or deflates a GET's
    packets of ``compression_threshold`` (1024) bytes or more for a client that accepts it.

    python-socketio's: ``always_connect`` answers a CONNECT before the connect handler runs
    (a refusal is then a DISCONNECT; the namespace's packets wait for the handler);
    ``async_handlers=False`` runs a connection's event handlers one at a time, in order,
    each awaited before its next packet is read (``call()`` is then a ``RuntimeError``);
    ``json`` a module whose ``dumps``/``loads`` write and read the packets' JSON (for this
    server only; the NaN and nesting refusals still hold); ``client_manager`` a
    ``realtime.socketio.AsyncManager`` or ``AsyncRedisManager(url)`` (the layer must be on
    that Redis: ``--layer``), ``sio.manager`` (its read-only methods: this process's
    rooms). ``async_mode``, ``logger``, ``engineio_logger`` and
    ``monitor_clients`` are accepted and ignored (logs are twisted.logger's; a dead client
    is always timed out by its pings).

    ``connection_state_recovery`` (off by default, as in Node's server): True or
    ``{"max_disconnection_duration": 120, "max_packets": 1000}`` keeps a socket whose
    connection was lost for that many seconds, in this process, for socket.io-client's
    reconnect to restore (same sid, rooms, session, and the packets it missed); see
    ``realtime.socketio_recovery`` and ``recovered()``.

    ``serializer="msgpack"`` (python-socketio's): every Socket.IO packet is one binary
    message, a msgpack map; its clients must use it too. ``transports`` and
    ``allow_upgrades`` are python-engineio's.
    """

    reason = Reason
    #: python-socketio's and python-engineio's options that change nothing here.
    _IGNORED = frozenset({"async_mode", "engineio_logger", "monitor_clients"})

    def __init__(self, client_manager: Any = None, logger: Any = False, json: Any = None,
                 async_handlers: bool = True, namespaces: Iterable[str] | str | None = None,
                 *, ping_interval: float | tuple[float, float] = 25.0,
                 ping_timeout: float = 20.0, max_http_buffer_size: int = 1_000_000,
                 channel_layer: Any = None, channel_layer_alias: str = "default",
                 cors_allowed_origins: str | Iterable[str] | Callable[..., Any] | None = None,
                 connection_state_recovery: bool | dict[str, Any] | None = None,
                 serializer: str = "default", allow_upgrades: bool = True,
                 transports: Iterable[str] | None = None, always_connect: bool = False,
                 cookie: str | dict[str, Any] | None = None, cors_credentials: bool = True,
                 http_compression: bool = True, compression_threshold: int = 1024,
                 **kwargs: Any) -> None:
        # (python-socketio's positional order: client_manager, logger, json,
        # async_handlers, namespaces; the rest by name. ``logger`` is ignored.)
        unknown = set(kwargs) - self._IGNORED
        if unknown:
            raise TypeError(f"AsyncServer() got unknown options: {sorted(unknown)}")
        #: python-socketio's: CONNECT answered before the connect handler runs.
        self.always_connect = _flag("always_connect", always_connect)
        #: python-socketio's: False runs a connection's event handlers in order, inline.
        self.async_handlers = _flag("async_handlers", async_handlers)
        #: python-engineio's: ``Access-Control-Allow-Credentials`` for allowed origins.
        self.cors_credentials = _flag("cors_credentials", cors_credentials)
        #: python-engineio's: a GET's packets compressed past ``compression_threshold``.
        self.http_compression = _flag("http_compression", http_compression)
        if not isinstance(compression_threshold, int) or isinstance(compression_threshold,
                                                                    bool):
            raise TypeError(f"compression_threshold is a number of bytes (int), not "
                            f"{compression_threshold!r}")
        if compression_threshold < 0:
            raise ValueError(f"compression_threshold is >= 0, not {compression_threshold}")
        self.compression_threshold = compression_threshold
        #: python-engineio's sid cookie (``_check_cookie``), or None.
        self.cookie = _check_cookie(cookie)
        #: python-socketio's ``json=`` module, or None for the built-in codec.
        self.json = _check_json(json)
        #: python-socketio's ``sio.manager`` (``AsyncManager``: this process's rooms, read).
        self.manager = _manager(client_manager)  # (bound to this server at the end)
        #: ``client_manager=AsyncRedisManager(url)``: the layer is checked against it once.
        self._manager = self.manager if isinstance(self.manager, AsyncRedisManager) else None
        self._checked_layer: Any = None
        self._manager_error: str | None = None
        #: python-engineio's: the transports a client may use (polling handshakes or
        #: WebSockets otherwise get 400 "Transport unknown"), and whether a polling
        #: session may upgrade.
        self.transports = frozenset(
            ("polling", "websocket") if transports is None
            else [transports] if isinstance(transports, str) else transports)
        if not self.transports or not self.transports <= {"polling", "websocket"}:
            raise ValueError(f'transports are "polling" and/or "websocket", not '
                             f"{sorted(self.transports)}")
        self.allow_upgrades = bool(allow_upgrades) and "websocket" in self.transports
        if serializer not in ("default", "msgpack"):
            raise ValueError(f'serializer is "default" or "msgpack", not {serializer!r} '
                             "(python-socketio's Packet subclasses are not supported)")
        #: ``serializer="msgpack"``: every Socket.IO packet is one binary message.
        self.msgpack = serializer == "msgpack"
        if self.msgpack:
            self.json = None  # (python-socketio's msgpack packets take no json module)
        #: Not the built-in JSON codec (``_encode``): msgpack or a ``json=`` module.
        self._codec = self.msgpack or self.json is not None
        interval, grace = _ping_interval(ping_interval)
        if ping_timeout <= 0 or max_http_buffer_size <= 0:
            raise ValueError("ping_interval, ping_timeout and max_http_buffer_size are > 0")
        self.namespaces: str | set[str] = (
            "*" if namespaces == "*" else set(namespaces or ()) | {"/"})
        #: python-engineio's: the server pings every ``ping_interval`` seconds and tells
        #: its clients ``ping_interval + ping_interval_grace_period`` (``(interval,
        #: grace)``), so a client waits that much longer for a late ping.
        self.ping_interval = interval
        self.ping_interval_grace_period = grace
        self.ping_timeout = float(ping_timeout)
        self.max_http_buffer_size = int(max_http_buffer_size)
        self.channel_layer_alias = channel_layer_alias
        # (a module global's guard: emit runs on the reactor thread, where it is the layer)
        self._channel_layer = unguarded(channel_layer)
        self.handlers: dict[str, dict[str, Callable[..., Any]]] = {}
        #: ``register_namespace``'s classes, by namespace ("*": the catch-all one).
        self.namespace_handlers: dict[str, AsyncNamespace] = {}
        #: The sockets connected to this process, by sid.
        self._sockets: dict[str, _Socket] = {}
        #: The polling sessions this process holds, by Engine.IO sid.
        self._polling: dict[str, _PollingSession] = {}
        #: python-engineio's callable form: ``fn(origin, environ)`` (or ``fn(origin)``),
        #: true to let that origin in; ``environ`` is the ASGI scope here.
        self._cors_callable: Callable[..., Any] | None = (
            cors_allowed_origins if callable(cors_allowed_origins) else None)
        self.cors_allowed_origins: list[str] | None = (
            None if cors_allowed_origins is None or self._cors_callable is not None
            else [cors_allowed_origins] if isinstance(cors_allowed_origins, str)
            else list(cast(Iterable[str], cors_allowed_origins)))
        #: python-engineio's ``cors_allowed_origins=[]``: CORS handling off (a layer in
        #: front answers it): no ``Access-Control-*`` headers; origins still checked, by
        #: the default rule (``_origin_ok``).
        self._cors_off = self.cors_allowed_origins == []
        #: The acks asked of sids in other processes (``_replies_on``), or None.
        self._replies: _Replies | None = None
        #: Connection state recovery (``realtime.socketio_recovery.Recovery``), or None.
        self._recovery: Any = None
        #: The Admin UI's hooks (``instrument()``: ``realtime.socketio_admin``), or None.
        self._admin: Any = None
        if connection_state_recovery:
            from realtime.socketio_recovery import Recovery

            self._recovery = Recovery(self, connection_state_recovery)
        if self._manager is not None:  # now, when the layer is known already
            from realtime.layers import _layers

            known = (self._channel_layer if self._channel_layer is not None
                     else _layers.get(channel_layer_alias))
            # (an in-memory layer may be a test's leftover: its first use decides)
            if getattr(known, "address", None) is not None or channel_layer is not None:
                self._layer_ok(known, now=True)
        # Last: a construction refused above leaves the manager it was given free.
        self.manager.set_server(self)

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

    def register_namespace(self, namespace_handler: AsyncNamespace) -> None:
        """Serve ``namespace_handler.namespace`` (which it opens) with the ``on_<event>``
        methods of an ``AsyncNamespace``; "*": every open namespace without a class of
        its own (its methods get the namespace before the sid). The decorators' handlers
        of the same namespace, and namespace "*"'s, come first (python-socketio's order);
        a second class for the same namespace replaces the first."""
        if not isinstance(namespace_handler, AsyncNamespace):
            hint = (" (python-socketio's: derive from realtime.socketio.AsyncNamespace)"
                    if type(namespace_handler).__module__.startswith("socketio") else "")
            raise TypeError(f"register_namespace() takes a realtime.socketio.AsyncNamespace "
                            f"instance, not {type(namespace_handler).__name__}{hint}")
        namespace = namespace_handler.namespace
        if not isinstance(namespace, str) or not (namespace == "*"
                                                   or namespace.startswith("/")):
            raise ValueError(f"a namespace starts with '/' (or is '*'), not {namespace!r}")
        namespace_handler._set_server(self)
        self.namespace_handlers[namespace] = namespace_handler

    def _handler(self, event: str, namespace: str,
                 args: tuple[Any, ...]) -> tuple[Callable[..., Any] | None, tuple[Any, ...]]:
        """The handler for ``event`` and its arguments, in python-socketio's order: this
        namespace's, its catch-all, namespace "*"'s, then the namespace's class
        (``register_namespace``), then the "*" class."""
        reserved = event in ("connect", "disconnect")
        own = self.handlers.get(namespace, {})
        # An event named "*" is the catch-all's as any other (called as its own handler,
        # python-socketio's way, it would take the sid for the event name and the client's
        # first argument for the sid).
        if event in own and event != "*":
            return own[event], args
        if not reserved and "*" in own:
            return own["*"], (event, *args)
        anywhere = self.handlers.get("*", {})
        if event in anywhere and event != "*":
            return anywhere[event], (namespace, *args)
        if not reserved and "*" in anywhere:
            return anywhere["*"], (event, namespace, *args)
        # Then the namespace's class, else the "*" class (given the namespace): its
        # trigger_event has every event that got this far, as python-socketio's does.
        space = self.namespace_handlers.get(namespace)
        if space is not None:
            return space.trigger_event, (event, *args)
        space = self.namespace_handlers.get("*")
        if space is not None:
            return space.trigger_event, (event, namespace, *args)
        return None, args

    def _serves(self, namespace: str) -> bool:
        """Whether ``namespace`` is open: listed, "*", or with handlers or a class of its
        own (namespace "*"'s handlers and class serve the open ones, as python-socketio's
        do)."""
        return (self.namespaces == "*" or namespace in self.namespaces
                or namespace in self.handlers or namespace in self.namespace_handlers)

    # -- the layer ----------------------------------------------------------------------------
    @property
    def channel_layer(self) -> Any:
        layer = self._channel_layer
        if layer is None:
            from realtime.layers import get_channel_layer

            layer = get_channel_layer(self.channel_layer_alias)
        if self._manager is not None and layer is not self._checked_layer:
            self._layer_ok(layer, now=True)
        return layer

    def _layer_ok(self, layer: Any, now: bool = False) -> bool:
        """Whether ``layer`` is the one ``client_manager=`` names (checked once a layer);
        not: a ``ValueError`` ``now``, else logged once (a connection is refused)."""
        if self._manager is None or layer is self._checked_layer:
            return True
        problem = self._manager._mismatch(layer)
        if problem is None:
            self._checked_layer = layer
            return True
        if now:
            raise ValueError(problem)
        if self._manager_error != problem:
            self._manager_error = problem
            log.error("socketio: connections refused: {problem}", problem=problem)
        return False

    def _channel(self, sid: Any) -> str | None:
        """The channel to reach ``sid`` (of another process) through; None for a sid of
        this process (gone, or of another namespace than asked: nothing here would take a
        message to its channel)."""
        channel = channel_of(sid)
        if channel is None:
            return channel
        prefix = getattr(self.channel_layer, "local_prefix", None)
        if prefix is not None and channel.startswith(prefix()) and (
                self._recovery is None or not self._recovery.kept_here(sid)):
            return None  # (a kept socket's channel takes what is sent to it)
        return channel

    def _local(self, sid: str, namespace: str | None) -> _Socket | None:
        socket = self._sockets.get(sid)
        if socket is None or (namespace is not None and socket.namespace != namespace):
            return None
        return socket

    # -- sending ------------------------------------------------------------------------------
    def _encode(self, kind: int, namespace: str, data: Any = None,
                ack_id: int | None = None) -> tuple[str | bytes, list[bytes]]:
        """A packet in this server's serializer: JSON text and its attachments, or one
        msgpack message."""
        if not self._codec:
            return encode_packet(kind, namespace, data, ack_id)
        if self.msgpack:
            return encode_msgpack_packet(kind, namespace, data, ack_id), []
        return _encode_with(self.json, kind, namespace, data, ack_id)

    async def emit(self, event: str, data: Any = None, to: Any = None, room: Any = None,
                   skip_sid: str | Iterable[str] | None = None, namespace: str | None = None,
                   callback: Callable[..., Any] | None = None, ignore_queue: bool = False,
                   ) -> None:
        """Send ``event`` to a sid, a room (or a list of them), or the whole namespace, in
        every process. ``data``: one argument, or a tuple of them; bytes anywhere in it go
        as binary attachments. ``callback`` (called with the client's ack arguments) needs
        ``to`` to be one sid, of this process or another (its ack comes back through the
        layer). ``ignore_queue`` is python-socketio's, accepted and ignored (a sid of this
        process is always reached directly, the others through the layer)."""
        if callback is not None:
            await self._emit(event, data, to, room, skip_sid, namespace, callback)
            return
        # Without an ack (most emits): here, not through ``_emit`` (no coroutine more).
        namespace = namespace or "/"
        if not isinstance(event, str):
            raise TypeError("the event name is a str")
        args = [] if data is None else list(data) if isinstance(data, tuple) else [data]
        offset = None
        if self._recovery is not None:
            # Node's: the packet's offset as its last argument (the client's position).
            offset = self._recovery.new_offset()
            args.append(offset)
        text, attachments = self._encode(EVENT, namespace, [event, *args])
        await self._send_packet(text, attachments, namespace,
                                to if to is not None else room, skip_sid, offset)
        if self._admin is not None:
            self._admin.sent(event, args[:-1] if offset is not None else args, namespace,
                             to if to is not None else room, skip_sid)

    async def _emit(self, event: str, data: Any, to: Any, room: Any,
                    skip_sid: str | Iterable[str] | None, namespace: str | None,
                    callback: Callable[..., Any],
                    gone: Callable[..., None] | None = None) -> int | None:
        """``emit`` with a ``callback`` (and ``call()``): for a sid of another process, the
        token its ack comes back under (``_Replies``), else None. ``gone``: called instead
        of ``callback`` when the sid turns out to be disconnected."""
        namespace = namespace or "/"
        if not isinstance(event, str):
            raise TypeError("the event name is a str")
        args = [] if data is None else list(data) if isinstance(data, tuple) else [data]
        target = to if to is not None else room
        if channel_of(target) is None:
            raise ValueError("emit(callback=...) and call() need to= one sid")
        ack_id = None
        remote: str | None = None  # the channel of a sid of another process asked to ack
        if isinstance(callback, _Answer):  # call()'s (it forgets the ack id at its timeout)
            answer = callback
            callback, gone = answer.callback, answer.gone
        else:
            answer = _Answer(callback, gone)
        socket = self._local(target, namespace)
        if socket is not None:
            ack_id = socket.consumer._ack_id(socket, answer)
        else:
            remote = self._channel(target) if _in_namespace(target, namespace) else None
            if remote is None:  # a sid gone from this process, or of another namespace
                if gone is not None:
                    gone()
                return None
        # (no offset: a packet asking for an ack is not replayed by connection recovery)
        text, attachments = self._encode(EVENT, namespace, [event, *args], ack_id)
        if self._admin is not None:
            self._admin.sent(event, args, namespace, target, skip_sid)
        if remote is not None:
            return await self._ask(remote, target, namespace, text, attachments, callback,
                                   gone)
        await self._send_packet(text, attachments, namespace, target, skip_sid)
        return None

    async def _ask(self, channel: str, sid: str, namespace: str, text: str | bytes,
                   attachments: list[bytes], callback: Callable[..., Any],
                   gone: Callable[..., None] | None) -> int:
        """The packet to ``sid`` in another process, asking for its ack: the consumer there
        gives it an ack id of its connection and sends the client's answer to this
        server's reply channel (python-socketio's pubsub managers do the same with a
        callback tuple and a ``callback`` message)."""
        layer = self.channel_layer
        replies = self._replies_on(layer)
        token = replies.add(callback, gone)
        event = {"type": "sio.packet", "sid": sid, "namespace": namespace, "text": text,
                 "binary": attachments, "reply_to": replies.channel, "ack": token,
                 "at": 0 if isinstance(text, bytes) else _ack_at(text, namespace)}
        try:
            await layer.send(channel, event)
        except BaseException:
            replies.forget(token)
            raise
        return token

    def _replies_on(self, layer: Any) -> _Replies:
        """This server's reply channel on ``layer`` (attached at the first ack asked of
        another process; ``shutdown()`` detaches it)."""
        replies = self._replies
        if replies is None or replies.layer is not layer:
            if replies is not None:
                replies.release()
            if not callable(getattr(layer, "attach", None)):
                raise ValueError("an ack from a sid of another process needs a channel "
                                 "layer of realtime's (attach)")
            replies = self._replies = _Replies(layer)
            # A server dropped without ``shutdown()`` takes its channel off the layer too
            # (the layer holds the receiver, which holds nothing of the server).
            replies.finalizer = weakref.finalize(self, replies.release)
        return replies

    async def _send_packet(self, text: str | bytes, attachments: list[bytes], namespace: str,
                           target: Any, skip_sid: str | Iterable[str] | None,
                           offset: str | None = None) -> None:
        """A sid of this process gets the packet at once (as its acks do: one ordered path
        per client); another's, a room or the namespace through the layer, whose events
        each connection takes at once too (``SocketIOConsumer.take_event_now``). To several
        targets, each member takes it from the first target it is in (``_first_target``):
        once, as in python-socketio."""
        steps, exclude = _deliveries(text, attachments, namespace, target, skip_sid, offset)
        layer = self.channel_layer
        for kind, name, event in steps:
            if kind == "sid":
                assert event is not None
                socket = self._local(name, namespace)
                if socket is not None:
                    keys = event.get("targets")
                    if keys is None or _first_target(socket, keys) == event["via"]:
                        if self._recovery is not None:
                            self._recovery.packet(socket, text, attachments, offset)
                        else:
                            socket.consumer._send(text, attachments)
                    continue
                channel = self._channel(name)
                if channel is not None:
                    await layer.send(channel, event)
            elif event is not None:
                await layer.group_send(name, event, exclude=exclude or None)
            elif isinstance(text, bytes):  # msgpack: one prepared binary frame
                await layer.broadcast(name, bytes=text, exclude=exclude or None)
            else:
                await layer.broadcast(name, text=text, exclude=exclude or None)

    async def send(self, data: Any, to: Any = None, room: Any = None,
                   skip_sid: str | Iterable[str] | None = None, namespace: str | None = None,
                   callback: Callable[..., Any] | None = None, ignore_queue: bool = False,
                   ) -> None:
        """``emit("message", data, ...)``."""
        await self.emit("message", data, to=to, room=room, skip_sid=skip_sid,
                        namespace=namespace, callback=callback)

    async def call(self, event: str, data: Any = None, to: str | None = None,
                   sid: str | None = None, namespace: str | None = None,
                   timeout: float | None = 60, ignore_queue: bool = False) -> Any:
        """Emit to one sid (of this process or another) and wait for its ack: its one
        argument, or a tuple of several (None for none); ``CallTimeoutError`` after
        ``timeout`` s (None: no timeout, as in python-socketio: an ack that never comes is
        waited for forever), or at once when the sid is known to be disconnected (here,
        or by its process, also when it disconnects before answering)."""
        if not self.async_handlers:  # (python-socketio's words: a handler waiting for
            # its own client's ack would hold the packet that brings it)
            raise RuntimeError("Cannot use call() when async_handlers is False.")
        target = to or sid
        if not isinstance(target, str) or channel_of(target) is None:
            raise ValueError("call() needs to= one sid")
        local = self._local(target, namespace or "/")
        if local is not None:
            reactor = local.consumer._conn.reactor
        else:
            from twisted.internet import reactor
        done: Deferred[tuple[Any, ...]] = Deferred()

        def answered(*args: Any) -> None:
            if not done.called:
                done.callback(args)

        def gone(why: str | None = None) -> None:
            if not done.called:
                done.errback(CallTimeoutError(
                    f"no ack for {event!r}: {why or f'{target} is not connected'}"))

        def timed_out() -> None:
            if not done.called:
                done.errback(CallTimeoutError(f"no ack for {event!r} in {timeout} s"))

        timer = None if timeout is None else reactor.callLater(timeout, timed_out)
        token = None
        answer = _Answer(answered, gone)
        try:
            token = await self._emit(event, data, target, None, None, namespace, answer)
            args = await done
        finally:
            if timer is not None and timer.active():
                timer.cancel()
            if token is not None and self._replies is not None:
                self._replies.forget(token)  # (timed out: its late answer finds nothing)
            answer.forget()  # (timed out: the ack id of a local sid goes too)
        if not args:
            return None
        return args[0] if len(args) == 1 else args

    # -- rooms --------------------------------------------------------------------------------
    async def enter_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        """Put ``sid`` in ``room``; a sid in another process joins there (through the
        layer), after this returns. A sid not in ``namespace``: nothing happens. Another
        sid as the room: ``ValueError``, as in python-socketio."""
        namespace = namespace or "/"
        if room != sid and channel_of(room) is not None:
            raise ValueError("cannot enter a sid room")
        socket = self._local(sid, namespace)
        if socket is not None:
            await socket.consumer._enter(socket, room)
            return
        await self._room_elsewhere(sid, namespace, room, enter=True)

    async def leave_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        namespace = namespace or "/"
        socket = self._local(sid, namespace)
        if socket is not None:
            await socket.consumer._leave(socket, room_group(namespace, room))
            return
        await self._room_elsewhere(sid, namespace, room, enter=False)

    async def _room_elsewhere(self, sid: str, namespace: str, room: Any, enter: bool) -> None:
        """A sid of another process enters or leaves ``room`` there (through the layer)."""
        channel = self._channel(sid)
        if channel is not None:
            await self.channel_layer.send(channel, _room_event(sid, namespace, room, enter))

    async def close_room(self, room: Any, namespace: str | None = None) -> None:
        """Every member, in every process, leaves ``room``."""
        group = room_group(namespace or "/", room)
        await self.channel_layer.group_send(group, _close_room_event(group))

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

    def recovered(self, sid: str, namespace: str | None = None) -> bool:
        """Whether ``sid`` (connected to this process) was restored by connection state
        recovery at its latest connect (Node's ``socket.recovered``): its rooms, session
        and missed packets are back. False without ``connection_state_recovery``."""
        socket = self._local(sid, namespace or "/")
        return socket is not None and self._recovery is not None and (
            self._recovery.recovered(socket))

    def get_environ(self, sid: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The connection's ASGI scope (python-socketio's WSGI-style environ)."""
        socket = self._local(sid, namespace or "/")
        return None if socket is None else socket.consumer.scope

    def transport(self, sid: str, namespace: str | None = None) -> str:
        """"polling" or "websocket": what the connection of ``sid`` (of this process)
        uses now."""
        socket = self._local(sid, namespace or "/")
        conn = None if socket is None else socket.consumer._conn
        return str(getattr(conn, "transport_name", "websocket"))

    async def shutdown(self) -> None:
        """Close this process's connections: every polling session (upgraded or not) and
        every WebSocket with a namespace connected; their ``disconnect`` handlers run (a
        server drain does this for polling sessions by itself)."""
        for session in list(self._polling.values()):
            session.close_with_code(1001)
        for socket in list(self._sockets.values()):
            socket.consumer._conn.close_with_code(1001)
        if self._recovery is not None:
            self._recovery.release_all()  # the sockets kept for a reconnect
        replies, self._replies = self._replies, None
        if replies is not None:  # off the layer; a call() waiting fails
            replies.release()
        if self._admin is not None:  # its stats tick, its layer channel
            self._admin.stop()

    async def disconnect(self, sid: str, namespace: str | None = None,
                         ignore_queue: bool = False) -> None:
        """Disconnect ``sid`` from ``namespace`` (the client is told), in any process; a
        sid of another namespace is left alone. ``ignore_queue``: python-socketio's,
        accepted and ignored."""
        namespace = namespace or "/"
        socket = self._local(sid, namespace)
        if socket is not None:
            await socket.consumer._server_disconnect(socket)
            return
        channel = self._channel(sid)
        if channel is not None:
            await self.channel_layer.send(channel, _disconnect_event(sid, namespace))

    async def sleep(self, seconds: float = 0) -> None:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, seconds, lambda: None)

    def start_background_task(self, target: Callable[..., Awaitable[Any]], *args: Any,
                              **kwargs: Any) -> Deferred[Any]:
        """Run ``target(*args, **kwargs)`` on the reactor; failures are logged."""
        task = as_deferred(target(*args, **kwargs))  # (an asyncio Task under its reactor)
        task.addErrback(lambda failure: log.failure("a background task failed", failure))
        return task

    def instrument(self, auth: Any = None, mode: str = "development", read_only: bool = False,
                   server_id: str | None = None, namespace: str = "/admin",
                   server_stats_interval: float = 2) -> Any:
        """Serve the Socket.IO Admin UI (https://admin.socket.io) on ``namespace``, as
        python-socketio's: ``auth`` a dict the UI's login must equal, a list of them, a
        callable (sync or async) taking the login, or False for none (None: ``ValueError``);
        ``mode="production"`` sends only the config and ``server_stats``; ``read_only``
        refuses the UI's commands. Returns ``realtime.socketio_admin``'s
        ``InstrumentedAsyncServer``."""
        from realtime.socketio_admin import InstrumentedAsyncServer

        return InstrumentedAsyncServer(self, auth=auth, mode=mode, read_only=read_only,
                                       server_id=server_id, namespace=namespace,
                                       server_stats_interval=server_stats_interval)

    def as_asgi(self) -> SocketIOApp:
        """The application to mount at ``socket.io/`` (WebSocket and HTTP scopes)."""
        return SocketIOApp(self)


class SocketIOApp:
    """``AsyncServer.as_asgi()``: a ``SocketIOConsumer`` for a WebSocket, a
    ``PollingConsumer`` for an HTTP (long-polling) request."""

    def __init__(self, server: AsyncServer) -> None:
        self.server = server

    def __call__(self, scope: dict[str, Any], *asgi: Any) -> Any:
        from realtime.routing import not_asgi

        if asgi:
            raise not_asgi(self)
        if scope.get("type") == "websocket":
            return SocketIOConsumer.as_app(server=self.server)(scope)
        return PollingConsumer.as_app(server=self.server)(scope)


def _origin_of(scope: dict[str, Any]) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"origin":
            return bytes(value)
    return None


def _callable_allows(allows: Callable[..., Any], origin: str, scope: dict[str, Any]) -> bool:
    """A callable ``cors_allowed_origins``'s answer, called as python-engineio calls it
    (``(origin, environ)``, else ``(origin)``); one that raises refuses (logged)."""
    try:
        try:
            return bool(allows(origin, scope))
        except TypeError:
            return bool(allows(origin))
    except Exception:
        log.failure("cors_allowed_origins({origin!r}) raised: the origin is refused",
                    origin=origin)
        return False


def _origin_ok(server: AsyncServer, scope: dict[str, Any]) -> bool:
    """A request without ``Origin`` (no browser's), or one ``cors_allowed_origins`` lets
    in; by default (and with ``[]``, which turns CORS headers off) the server's own origin
    and what ``--allowed-origins`` lets in (python-engineio's default is the first only;
    with ``[]`` it lets any in). The same on both transports: a page of another site
    opens no WebSocket with the user's cookies either."""
    from realtime.origins import origin_allowed
    from realtime.settings import settings

    origin = _origin_of(scope)
    if not origin:
        return True
    text = origin.decode("latin-1")
    if server._cors_callable is not None:
        return _callable_allows(server._cors_callable, text, scope)
    patterns = server.cors_allowed_origins
    if patterns:  # (None, or [] for CORS handling off: the default rule)
        return origin_allowed(text, patterns)
    host = dict(scope.get("headers", ())).get(b"host", b"").decode("latin-1")
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return (text.lower() == f"{scheme}://{host}".lower()
            or (bool(settings.allowed_origins)
                and origin_allowed(text, settings.allowed_origins)))


#: A preflight's ``Access-Control-Request-Headers``: header names (RFC 9110 tokens),
#: comma-separated; and the most bytes of them reflected (a page's ``extraHeaders`` are a
#: few names: past this, or not names, the preflight allows none).
_HEADER_NAMES = re.compile(rb"[ \t]*[-!#$%&'*+.^_`|~0-9A-Za-z]+(?:[ \t]*,[ \t]*"
                           rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+)*[ \t]*")
MAX_ALLOWED_HEADERS = 2048


def _asked_headers(scope: dict[str, Any]) -> bytes | None:
    """The header names a preflight asks to send (its ``Access-Control-Request-Headers``
    lines joined), as they came: None when there are none, or they are not a list of
    header names, or longer than ``MAX_ALLOWED_HEADERS``."""
    asked = b", ".join(value for name, value in scope.get("headers", ())
                       if name == b"access-control-request-headers")
    if (not asked or len(asked) > MAX_ALLOWED_HEADERS
            or _HEADER_NAMES.fullmatch(asked) is None):
        return None
    return asked.strip(b" \t")


#: zlib's level for polling responses (python-engineio's gzip takes 9, its deflate 6).
_COMPRESS_LEVEL = 6


def _accepted_encoding(scope: dict[str, Any]) -> str | None:
    """"gzip" or "deflate": the first of them ``Accept-Encoding`` offers (python-engineio's
    choice), one with ``q=0`` not; None for neither."""
    for name, value in scope.get("headers", ()):
        if name != b"accept-encoding":
            continue
        for item in value.decode("latin-1").split(","):
            coding, _, params = item.partition(";")
            coding = coding.strip().lower()
            if coding not in ("gzip", "deflate"):
                continue
            refused = False
            for param in params.split(";"):
                key, _, weight = param.partition("=")
                if key.strip().lower() == "q":
                    try:
                        refused = float(weight) <= 0
                    except ValueError:
                        refused = True
            if not refused:
                return coding
    return None


def _params(scope: dict[str, Any]) -> dict[str, str]:
    """The query's parameters, percent-decoded, as python-engineio reads them: a repeated
    one's first value (``sid``, ``transport``), but a repeated ``EIO`` is no version."""
    params: dict[str, str] = {}
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in urllib.parse.parse_qsl(query):
        if name not in params:
            params[name] = value
        elif name == "EIO":
            params[name] = ""
    return params


def _encode_payload(items: list[str | bytes]) -> bytes:
    """Engine.IO v4 packets as one polling response: binary as ``b<base64>``."""
    return _SEPARATOR.join(
        item if isinstance(item, str) else "b" + base64.b64encode(item).decode("ascii")
        for item in items).encode()


def _decode_payload(body: bytes) -> list[str | bytes]:
    """A polling POST's packets; ``_Malformed`` for what is not Engine.IO v4's payload."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("not UTF-8") from None
    items: list[str | bytes] = []
    for part in text.split(_SEPARATOR):
        if not part:
            raise _Malformed("an empty packet")
        if part[0] == "b":
            try:
                items.append(base64.b64decode(part[1:], validate=True))
            except (binascii.Error, ValueError):
                raise _Malformed("invalid base64") from None
        else:
            items.append(part)
    return items


class _PollingSession:
    """One Engine.IO session opened by polling, in this process: its packets queue until
    a GET takes them (``MAX_QUEUED_PACKETS``, ``--max-send-buffer``), a POST's go to its
    ``SocketIOConsumer``, which is not a WebSocket's but this session's (``_conn``); after
    an upgrade, the WebSocket's. A layer receiver of its own (the sids name its channel),
    so the upgrade changes nothing of its sockets. Its messages, POSTs and layer events are
    handled one at a time, in order, as a WebSocket's are."""

    #: How far it has had the held broadcasts (``realtime.layers.base.let_out_for``).
    _held_seq = -1
    _held_count = 0

    def __init__(self, server: AsyncServer, http: PollingConsumer, sid: str) -> None:
        site = http._site()
        self.server = server
        self.sid = sid
        self.site = site
        self.config = site.config
        self.reactor = site.clock
        self.layer = http.channel_layer
        self.max_payload = min(server.max_http_buffer_size, site.config.max_message_size)
        self.closed = False
        self.close_code: int | None = None
        #: The WebSocket it upgraded to (a ``WebSocketConnection``), and the one probing.
        self.ws: Any = None
        self.upgrading: SocketIOConsumer | None = None
        self._probed = False
        self._upgrade_deadline: Any = None
        self._queue: list[str | bytes] = []
        self._queued = 0  # bytes, as encoded
        #: Packets ``--slow-consumer drop`` dropped (``site.dropped_messages`` counts them).
        self.dropped = 0
        self._waiter: Deferred[list[str | bytes] | None] | None = None
        self._flush_call: Any = None
        self._tail: Deferred[Any] = succeed(None)
        self._running: Deferred[Any] | None = None  # the step running on ``_tail``
        self._kill_call: Any = None
        self._ended: list[Deferred[None]] = []  # server_stopping()'s
        #: The address ``--max-connections-per-ip`` counted it for (``site.count_ip``).
        self.counted_ip: str | None = None
        #: The user ``--max-connections-per-user`` counted it for (``site.count_user``).
        self.user_key: str | None = None
        consumer = self.consumer = SocketIOConsumer(server=server)
        consumer.scope = http.scope
        consumer._conn = self  # type: ignore[assignment]
        consumer._polled_by = self
        consumer.channel_layer = self.layer
        self.channel_name = consumer.channel_name = self.layer.attach(self)
        skip_held(self)  # broadcast before it opened: not for it
        server._polling[sid] = self
        listeners = getattr(site, "drain_listeners", None)
        if listeners is not None:
            listeners.add(self)

    @property
    def transport_name(self) -> str:
        return "polling" if self.ws is None else "websocket"

    # -- what SocketIOConsumer asks of its connection -------------------------------------
    @property
    def closing_or_closed(self) -> bool:
        return self.closed or (self.ws is not None and bool(self.ws.closing_or_closed))

    def send_text(self, text: str) -> None:
        self.send_packet(text)

    def send_bytes(self, data: bytes) -> None:
        if self.closed:
            return
        if self.ws is not None:
            self.ws.send_bytes(data)
        else:
            self._enqueue([bytes(data)], droppable=False)

    def send_packet(self, text: str | bytes, attachments: Iterable[bytes] = (),
                    own: bool = True) -> None:
        """An Engine.IO packet (a Socket.IO packet with its binary attachments): queued
        whole, or under ``--slow-consumer drop`` dropped whole (``_enqueue``).
        ``UnicodeEncodeError`` (nothing queued) for text UTF-8 cannot carry."""
        if self.closed:
            return
        if self.ws is not None:
            _send_frames(self.ws, text, attachments)
            return
        if own and HELD:  # broadcasts held for this turn were before this packet
            let_out_for(self, self.channel_name)
        # A Socket.IO EVENT or ACK (binary or not) is a message --slow-consumer drop may
        # drop; Engine.IO's own packets and CONNECT/DISCONNECT/CONNECT_ERROR change the
        # session's state, and are never dropped.
        if isinstance(text, bytes):  # a msgpack packet (its type read from its head)
            droppable = _msgpack_kind(text) in (EVENT, ACK)
        else:
            droppable = len(text) > 1 and text[0] == _EIO_MESSAGE and text[1] in "2356"
        self._enqueue([text, *map(bytes, attachments)], droppable)

    def _enqueue(self, items: list[str | bytes], droppable: bool) -> None:
        """Queue ``items`` for the next GET. Past ``MAX_QUEUED_PACKETS`` or
        ``--max-send-buffer``: the session closes (``--slow-consumer close``), or
        (``drop``) a droppable packet is dropped whole and counted, and the others go on
        up to twice those bounds (past them the session closes too)."""
        size = sum((len(item.encode()) if isinstance(item, str)
                    else 1 + (len(item) + 2) // 3 * 4) + 1 for item in items)
        count = len(self._queue) + len(items)
        limit = self.config.max_send_buffer
        if count > MAX_QUEUED_PACKETS or self._queued + size > limit:
            if self.config.slow_consumer == "drop":
                if droppable:
                    self.site.dropped_messages += 1
                    self.dropped += 1
                    if self.dropped == 1:
                        log.info("socketio: dropping packets for a polling session: {count} "
                                 "packets ({size} bytes) waiting for a GET",
                                 count=len(self._queue), size=self._queued)
                    return
                over = count > 2 * MAX_QUEUED_PACKETS or self._queued + size > 2 * limit
            else:
                over = True
            if over:
                self.site.slow_consumer_closes += 1
                log.info("socketio: closing a polling session: {count} packets ({size} "
                         "bytes) waiting for a GET", count=len(self._queue),
                         size=self._queued)
                self.close_with_code(1008, "slow consumer")
                return
        self._queue.extend(items)
        self._queued += size
        if self._waiter is not None and self._flush_call is None:
            # The packets of this turn go in one response.
            self._flush_call = self.reactor.callLater(0, self._flush)

    def close_with_code(self, code: int, reason: str | None = None) -> None:
        if self.closed:
            return
        if self.ws is not None:
            self.ws.close_with_code(code, reason)  # its end ends this session
            return
        self._finish(code)

    # -- the layer's side ---------------------------------------------------------------------
    def deliver(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        if HELD:
            let_out_for(self, self.channel_name)
        try:
            if self.consumer.take_event_now(event):
                return
        except Exception:  # not into the layer's delivery loop
            log.failure("socketio: a polling session's layer event failed")
            return
        self.run(lambda: self.consumer._on_event(event))

    def deliver_frame(self, frame: bytes) -> bool:
        if self.closing_or_closed:
            return False
        event = frame_event(frame)
        try:  # at once, as packets are (take_event_now)
            if "text" in event:
                self.send_packet(event["text"], own=False)
            else:  # a msgpack room packet, or bytes a broadcast() sent
                self.send_packet(event["bytes"], own=False)
        except UnicodeEncodeError:
            log.warn("socketio: dropped a packet that is not UTF-8")
        return True

    def deliver_joined(self, joined: bytes) -> bool:
        return False  # frame by frame

    def close_from_layer(self, code: int, reason: str | None) -> None:
        self.run(lambda: self.close_with_code(code, reason))

    def server_draining(self) -> None:
        """The server drains: the session ends (its ``disconnect`` handlers run)."""
        self.close_with_code(1001)

    def server_stopping(self) -> Deferred[None]:
        """``realtime.testing``'s ``LiveServer.stop()``: ends as at a drain; fires once
        its ``disconnect`` handlers ran and it left the layer."""
        if self.closed or self.ws is None:  # it ends now (or did): its steps are queued
            self.close_with_code(1001)
            return self.done()
        ended: Deferred[None] = Deferred()  # once its WebSocket's end ends it
        self._ended.append(ended)
        self.close_with_code(1001)
        return ended

    # -- one thing at a time ------------------------------------------------------------------
    def run(self, step: Callable[[], Any]) -> None:
        """``step()`` once the steps before it are done (at once when none waits)."""
        def go(_: Any) -> Any:
            running = self._running = as_deferred(step())

            def over(result: Any) -> Any:
                if self._running is running:
                    self._running = None
                return result

            return running.addBoth(over)

        def failed(failure: Any) -> None:
            if not failure.check(CancelledError):
                log.failure("socketio: a polling session's step failed", failure)

        self._tail.addCallback(go).addErrback(failed)

    def done(self) -> Deferred[None]:
        """Fires once the steps run so far are done."""
        barrier: Deferred[None] = Deferred()

        def fire(result: Any) -> Any:
            barrier.callback(None)
            return result

        self._tail.addBoth(fire)
        return barrier

    # -- polling ------------------------------------------------------------------------------
    def poll(self) -> Deferred[list[str | bytes] | None] | None:
        """A GET: fires with the packets to answer (at once if some wait), or None when the
        GET went away first; None (no Deferred) if another GET waits already."""
        if self._waiter is not None:
            return None
        waiter: Deferred[list[str | bytes] | None] = Deferred()
        self._waiter = waiter
        if self._queue or self.closed or self._probed:
            self._flush()
        return waiter

    def poll_gone(self, waiter: Deferred[Any]) -> None:
        """The GET's client went away: its packets stay queued for the next one."""
        if self._waiter is waiter:
            self._waiter = None
            self._cancel_flush()
            waiter.callback(None)

    def _cancel_flush(self) -> None:
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()

    def _flush(self, noop: bool = False) -> None:
        """Answer the waiting GET: the queued packets (a noop if none; only a noop with
        ``noop``: the rest waits for the WebSocket), then the close packet if closed."""
        self._flush_call = None
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        items: list[str | bytes] = []
        if not noop and self._queue:
            items, self._queue, self._queued = self._queue, [], 0
        if self.closed:
            items.append(_EIO_CLOSE)
        waiter.callback(items or [_EIO_NOOP])

    async def post(self, body: bytes) -> bool:
        """A POST's packets, handled in order; False if they were not Engine.IO's, or made
        the session close for an error."""
        try:
            items = _decode_payload(body)
        except _Malformed as exc:
            self.fail(str(exc))
            return False
        consumer = self.consumer
        for item in items:
            if isinstance(item, str):
                self.run(lambda text=item: consumer.receive(text_data=text))  # type: ignore[misc]
            else:
                self.run(lambda data=item: consumer.receive(bytes_data=data))  # type: ignore[misc]
        await self.done()
        return not self.closed or self.close_code == 1000

    def fail(self, why: str) -> None:
        """A request the protocol does not allow: the session closes ("transport error")."""
        log.info("socketio: closing a polling session: {why}", why=why)
        if self.consumer._close_reason is None:
            self.consumer._close_reason = Reason.TRANSPORT_ERROR
        self.close_with_code(CLOSE_MALFORMED[0], why)

    # -- the upgrade --------------------------------------------------------------------------
    def begin_upgrade(self, ws: SocketIOConsumer) -> bool:
        if self.closed or self.ws is not None or self.upgrading is not None:
            return False
        self.upgrading = ws
        # From the WebSocket's open: one that never probes does not hold the upgrade.
        self._upgrade_deadline = self.reactor.callLater(
            UPGRADE_TIMEOUT, self._probe_failed, ws, (1000, "upgrade timeout"))
        return True

    async def from_websocket(self, ws: SocketIOConsumer, text: str | None,
                             data: bytes | None) -> None:
        """A message of ``ws``: the probe and the upgrade, then this session's packets."""
        if self.ws is None:
            if self.upgrading is not ws or self.closed:
                ws._conn.close_with_code(1000)
            elif text == _EIO_PING + "probe" and not self._probed:
                ws._conn.send_text(_EIO_PONG + "probe")
                self._probed = True
                self._flush(noop=True)  # the client waits for its GET before upgrading
            elif text == _EIO_UPGRADE and self._probed:
                self._upgrade(ws)
            else:
                self._probe_failed(ws, CLOSE_MALFORMED)
            return
        self.run(lambda: self.consumer.receive(text_data=text, bytes_data=data))
        await self.done()

    def _probe_failed(self, ws: SocketIOConsumer, close: tuple[int, str]) -> None:
        """The probing WebSocket closes at once (another may probe); polling goes on."""
        self._end_probe()
        ws._conn.close_with_code(*close)

    def _end_probe(self) -> None:
        self.upgrading = None
        self._probed = False
        call, self._upgrade_deadline = self._upgrade_deadline, None
        if call is not None and call.active():
            call.cancel()

    def _upgrade(self, ws: SocketIOConsumer) -> None:
        self._end_probe()
        self._flush(noop=True)
        self._cancel_flush()
        self.ws = ws._conn
        self._uncount()  # its WebSocket counts now (the site counted it)
        if self.server._admin is not None:
            self.server._admin.upgraded(self.consumer)
        items, self._queue, self._queued = self._queue, [], 0
        if items:  # in one write: no packet cut from its attachments (``send_together``)
            self.ws.send_together(*items)

    def websocket_closed(self, ws: SocketIOConsumer, code: int) -> None:
        if self.upgrading is ws:  # the probe failed: polling goes on
            self._end_probe()
        elif self.ws is not None and self.ws is ws._conn:
            self._finish(code)

    # -- the end ------------------------------------------------------------------------------
    def _finish(self, code: int) -> None:
        """Closed: a waiting GET gets the close packet, the sockets their ``disconnect``
        handlers, then the channel goes."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        if self.server._polling.get(self.sid) is self:
            del self.server._polling[self.sid]
        listeners = getattr(self.site, "drain_listeners", None)
        if listeners is not None:
            listeners.discard(self)
        self._cancel_flush()
        self._flush()
        self._queue, self._queued = [], 0
        if self.upgrading is not None:
            self.upgrading._conn.close_with_code(1000)
        self._end_probe()
        self._uncount()
        # Out of the layer and its groups now, not after the disconnect handlers (which
        # wait behind any step still running, and may never return), as a WebSocket.
        self.layer.detach(self.channel_name)
        self.consumer.closed_now()  # a step waiting in ``_bounded`` goes on
        self.run(lambda: self.consumer.disconnect(code))
        self.run(lambda: self.layer.detach(self.channel_name))  # groups it joined since
        self.run(self._fire_ended)
        if self._kill_call is None and not self._ended_already():
            self._kill_call = self.reactor.callLater(
                self.config.application_close_timeout, self._kill)

    def _ended_already(self) -> bool:
        """Its steps all ran (``_fire_ended`` too)."""
        return self._running is None and not self._tail.paused

    def _kill(self) -> None:
        """--application-close-timeout after the close, a step still runs: cancelled, so
        the disconnect handlers, the detach and ``server_stopping()`` come (the bridge's
        ``_kill_handlers``); a disconnect handler that never returns is cancelled too."""
        self._kill_call = None
        running = self._running
        if running is None:
            return
        log.warn("socketio: a polling session's step still running {timeout} s after it "
                 "closed: cancelled", timeout=self.config.application_close_timeout)
        running.cancel()
        if self._running is not None:  # the next one (its disconnect handlers): the same
            self._kill_call = self.reactor.callLater(
                self.config.application_close_timeout, self._kill)

    def _uncount(self) -> None:
        """Give back its places in the per-IP and per-user counts (closed, or upgraded:
        its WebSocket holds them then)."""
        ip, self.counted_ip = self.counted_ip, None
        if ip is not None:
            self.site.uncount_ip(ip)
        if self.user_key is not None:
            self.site.uncount_user(self)

    def _fire_ended(self) -> None:
        call, self._kill_call = self._kill_call, None
        if call is not None and call.active():
            call.cancel()
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(None)


class PollingConsumer(AsyncHttpConsumer):
    """Engine.IO's HTTP long-polling: a GET without ``sid`` opens a session (the answer
    is its open packet), a GET with one takes its packets (waiting for some), a POST
    brings the client's. Errors are Engine.IO's 400s (code 1: an unknown session, 3: a
    bad request, which closes the session), 413 for a POST over ``maxPayload``."""

    server: ClassVar[AsyncServer | None] = None
    _session: _PollingSession | None = None
    _waiting: Deferred[Any] | None = None
    #: ``site.count_user``'s key for the handshake, until the session takes it.
    user_key: str | None = None

    @property
    def _server(self) -> AsyncServer:
        assert self.server is not None
        return self.server

    def _origin(self) -> bytes | None:
        return _origin_of(self.scope)

    async def send_headers(self, *, status: int = 200, headers: Any = None) -> None:
        pairs = [*(headers or []), (b"Cache-Control", b"no-store")]
        origin = self._origin()
        if origin and not self._server._cors_off and _origin_ok(self._server, self.scope):
            # (none for a refused origin, nor with CORS handling off)
            pairs += [(b"Access-Control-Allow-Origin", origin), (b"Vary", b"Origin")]
            if self._server.cors_credentials:
                pairs.append((b"Access-Control-Allow-Credentials", b"true"))
        await super().send_headers(status=status, headers=pairs)

    async def _error(self, status: int, body: bytes) -> None:
        await self.send_response(status, body, headers=_JSON_HEADERS)

    async def handle(self, body: bytes) -> None:
        if not _origin_ok(self._server, self.scope):
            await self._error(403, _FORBIDDEN)
            return
        method = self.scope.get("method")
        if method == "OPTIONS":  # a CORS preflight
            if self._server._cors_off:  # (a CORS layer in front answers it, if any)
                await self.send_response(204, b"")
                return
            headers = [(b"Access-Control-Allow-Methods", b"GET, POST, OPTIONS"),
                       (b"Access-Control-Max-Age", b"600")]
            # The headers an allowed page asks to send (socket.io-client's extraHeaders),
            # as python-engineio and Node's cors allow them: this origin may send anything.
            asked = _asked_headers(self.scope) if self._origin() else None
            if asked is not None:
                headers += [(b"Access-Control-Allow-Headers", asked),
                            (b"Vary", b"Access-Control-Request-Headers")]  # (Node's too)
            await self.send_response(204, b"", headers=headers)
            return
        params = _params(self.scope)
        if params.get("EIO") != "4":
            await self._error(400, _BAD_VERSION)
            return
        if params.get("transport") != "polling" or "polling" not in self._server.transports:
            await self._error(400, _TRANSPORT_UNKNOWN)
            return
        sid = params.get("sid")
        if not sid:
            if method != "GET":
                await self._error(400, _BAD_HANDSHAKE)
                return
            await self._open()
            return
        session = self._server._polling.get(sid)
        if session is None:
            await self._error(400, _SESSION_UNKNOWN)
            return
        if session.ws is not None:  # upgraded: polling is over for it (the session lives)
            await self._error(400, _BAD_REQUEST)
            return
        if method == "GET":
            await self._poll(session)
        elif method == "POST":
            await self._post(session, body)
        else:
            await self._error(400, _BAD_REQUEST)

    async def _open(self) -> None:
        if self.channel_layer is None:
            log.error("realtime.socketio needs a channel layer")
            await self.send_response(500, b"")
            return
        if self._server._manager is not None and not self._server._layer_ok(self.channel_layer):
            await self.send_response(500, b"")  # (client_manager= names another Redis: logged)
            return
        site = self._site()
        if getattr(site, "draining", False):  # as a WebSocket's handshake is refused
            await self._error(503, _UNAVAILABLE)
            return
        server = self._server
        limit = site.config.max_connections  # WebSockets and polling sessions
        if limit and len(getattr(site, "connections", ())) + sum(
                session.ws is None for session in server._polling.values()) >= limit:
            await self._error(503, _UNAVAILABLE)
            return
        client = self.scope.get("client")
        ip = client[0] if client else None
        counted = None
        if site.config.max_connections_per_ip and ip is not None:
            if not site.count_ip(ip):  # with the address's WebSockets and HTTP streams
                await self._error(429, _TOO_MANY)
                return
            counted = ip
        # --max-connections-per-user: counted with the user's WebSockets (``count_user``
        # keeps the key on the object it is given: this request, then the session).
        if site.config.max_connections_per_user and not site.count_user(self):
            if counted is not None:
                site.uncount_ip(counted)
            await self._error(429, _TOO_MANY)
            return
        sid = secrets.token_urlsafe(15)
        session = _PollingSession(server, self, sid)
        session.counted_ip = counted
        session.user_key, self.user_key = self.user_key, None
        session.consumer._open(sid, ["websocket"] if server.allow_upgrades else [],
                               session.max_payload)
        cookie = None if server.cookie is None else _sid_cookie(server.cookie, sid)
        await self._poll(session, [] if cookie is None else [(b"Set-Cookie", cookie)])

    async def _poll(self, session: _PollingSession,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
        waiter = session.poll()
        if waiter is None:
            session.fail("a second GET while one waits")
            await self._error(400, _BAD_REQUEST)
            return
        self._session, self._waiting = session, waiter
        try:
            items = await waiter
        finally:  # the request ends (or was cancelled): no GET waits any more
            self._waiting = None
            if session._waiter is waiter:
                session._waiter = None
                session._cancel_flush()
        if items is None:
            return  # the client went away
        body = _encode_payload(items)
        pairs = [*(headers or ()), (b"Content-Type", b"text/plain; charset=UTF-8")]
        server = self._server
        if server.http_compression and len(body) >= server.compression_threshold:
            body = self._compressed(body, pairs)
        await self.send_response(200, body, headers=pairs)

    def _compressed(self, body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        """python-engineio's ``http_compression``: ``body`` gzipped or deflated (zlib's
        format, as HTTP's "deflate" is), the first of the two the request's
        ``Accept-Encoding`` lists without ``q=0``, when it comes out smaller (``Vary:
        Accept-Encoding`` either way). Only what is sent is compressed (nothing inflates a
        client's body); ``--max-send-buffer`` counted the packets before."""
        headers.append((b"Vary", b"Accept-Encoding"))  # (compressed or not: it decided)
        encoding = _accepted_encoding(self.scope)
        if encoding is None:
            return body
        if encoding == "gzip":
            packed = gzip.compress(body, compresslevel=_COMPRESS_LEVEL, mtime=0)
        else:
            packed = zlib.compress(body, _COMPRESS_LEVEL)
        if len(packed) >= len(body):
            return body
        headers.append((b"Content-Encoding", encoding.encode()))
        return packed

    async def _post(self, session: _PollingSession, body: bytes) -> None:
        if len(body) > session.max_payload:
            session.fail("a POST over maxPayload")
            await self._error(413, _BAD_REQUEST)
            return
        if not await session.post(body):
            await self._error(400, _BAD_REQUEST)
            return
        await self.send_response(200, b"ok", headers=[
            (b"Content-Type", b"text/html; charset=UTF-8")])

    async def disconnect(self) -> None:
        if self._session is not None and self._waiting is not None:
            self._session.poll_gone(self._waiting)


class SocketIOConsumer(AsyncWebsocketConsumer):
    """One Engine.IO connection: its Socket.IO namespaces, pings and pending packets (a
    polling session's too, then on a ``_PollingSession`` instead of a WebSocket); or the
    WebSocket a polling session upgrades to (``_upgrade_of``), which only carries it."""

    server: ClassVar[AsyncServer | None] = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sockets: dict[str, _Socket] = {}  # by namespace
        self._pending: Packet | None = None
        self._ping: Any = None
        self._pong_deadline: Any = None
        self._close_reason: str | None = None
        self._next_ack = 0
        #: Acks forgotten past ``MAX_PENDING_ACKS`` (one warning, at the first).
        self._acks_evicted = 0
        self._max_payload = 0
        #: Its Engine.IO sid (``_open``; ``sio.manager``'s ``eio_sid``).
        self._eio_sid = ""
        self._upgrade_of: _PollingSession | None = None
        #: The polling session this consumer is the Socket.IO side of (its ``_conn``).
        self._polled_by: _PollingSession | None = None
        #: Handler tasks running (events' and connect's): ``--max-inflight`` at most.
        self._tasks: set[Deferred[Any]] = set()
        self._slot: Deferred[None] | None = None
        self._cancel_call: Any = None
        self._connect_deadline: Any = None
        #: The server's ``serializer="msgpack"`` (read by ``_send``, for every packet).
        self._msgpack = self.server is not None and self.server.msgpack
        #: What reads a text Socket.IO packet but the built-in codec: the server's
        #: ``json=`` module (``_Loads``), or True with msgpack (text packets refused).
        self._text_codec: Any = None
        if self._msgpack:
            self._text_codec = True
        elif self.server is not None and self.server.json is not None:
            self._text_codec = _Loads(self.server.json)
        #: ``async_handlers=False``: the packets waiting for the one being handled
        #: (``_in_turn``); None while none is.
        self._turns: deque[Packet] | None = None
        #: ``async_handlers=False``, closed while packets were in turn: the close's reason
        #: and code, for ``_take_turns`` to end with (the disconnect handlers come last),
        #: and the ``disconnect()`` calls waiting for that.
        self._ending: tuple[str, int] | None = None
        self._end_waiters: list[Deferred[None]] = []
        #: Its tasks were cancelled (``_cancel_tasks``).
        self._killed = False
        if self.server is not None and not self.server.async_handlers:
            self._dispatch = self._in_turn  # type: ignore[method-assign]

    @property
    def _server(self) -> AsyncServer:
        assert self.server is not None
        return self.server

    async def connect(self) -> None:
        if not _origin_ok(self._server, self.scope):
            raise Refuse(403, _JSON_HEADERS, _FORBIDDEN)
        params = _params(self.scope)
        if params.get("EIO") != "4":
            raise Refuse(400, _JSON_HEADERS, _BAD_VERSION)
        if (params.get("transport", "websocket") != "websocket"
                or "websocket" not in self._server.transports):
            raise Refuse(400, _JSON_HEADERS, _TRANSPORT_UNKNOWN)
        if self.channel_layer is None:
            log.error("realtime.socketio needs a channel layer")
            raise Refuse(500)
        server = self._server
        if server._manager is not None and not server._layer_ok(self.channel_layer):
            raise Refuse(500)  # (client_manager= names another Redis: logged)
        if params.get("sid"):  # the upgrade of a polling session (of this process)
            session = server._polling.get(params["sid"])
            if session is None or not server.allow_upgrades or not session.begin_upgrade(
                    self):
                raise Refuse(400, _JSON_HEADERS, _SESSION_UNKNOWN)
            self._upgrade_of = session
            await self.accept()
            return
        await self.accept()
        self._open(secrets.token_urlsafe(15), [],
                   min(server.max_http_buffer_size, self._conn.config.max_message_size))

    def _open(self, sid: str, upgrades: list[str], max_payload: int) -> None:
        """Engine.IO's open packet, then the pings."""
        server = self._server
        if server._channel_layer is None:
            server._channel_layer = self.channel_layer
        self._eio_sid = sid
        self._max_payload = max_payload
        self._send(_EIO_OPEN + compact_json({
            "sid": sid, "upgrades": upgrades,
            "pingInterval": int((server.ping_interval
                                 + server.ping_interval_grace_period) * 1000),
            "pingTimeout": int(server.ping_timeout * 1000),
            "maxPayload": max_payload}))
        self._ping = self._conn.reactor.callLater(server.ping_interval, self._send_ping)
        self._connect_deadline = self._conn.reactor.callLater(CONNECT_TIMEOUT,
                                                              self._no_connect)
        if server._admin is not None:
            server._admin.opened(self)

    def _no_connect(self) -> None:
        self._connect_deadline = None
        if not any(not socket.pending for socket in self._sockets.values()):
            self._refuse(CLOSE_CONNECT_TIMEOUT, "no namespace connected in time")

    # -- handler tasks -----------------------------------------------------------------------
    def _spawn(self, work: Awaitable[Any], what: str, name: Any = None) -> None:
        """Run ``work`` as a task of this connection (``_bounded`` counts them). ``what``
        names it in the log (with ``name``, formatted only if it fails)."""
        if type(work) is _COROUTINE and not asyncio_loop():
            self._drive(_Driven(work), what, name)
            return
        # (under --reactor=asyncio an asyncio Task, which may await asyncio code: Twisted's
        # own driver fails on the first asyncio future)
        task = as_deferred(work)
        if task.called:
            task.addErrback(self._task_failed, what, name)
            return
        self._track(task, what, name)

    def _drive(self, driven: _Driven, what: str, name: Any,
               then: Callable[[Any], Any] | None = None) -> None:
        """A coroutine's first step now, under Twisted's rules (as ``Deferred.fromCoroutine``
        runs it, in a copy of the context): no Deferred for one that waits for nothing (an
        ``async def`` handler that returns a value, the common case), else a task for the
        rest. ``then`` gets its value."""
        kind, value = driven.step(None, None)
        if kind == "wait":
            task = driven.wait(value)
            if then is not None:
                task.addCallback(then)
            self._track(task, what, name)
        elif kind == "raise":  # (asyncio code's failure with the hint, as after a wait)
            self._task_failed(Failure(_explained(value)), what, name)
        elif then is not None:
            try:
                then(value)
            except BaseException:
                self._task_failed(Failure(), what, name)

    def _track(self, task: Deferred[Any], what: str, name: Any) -> None:
        self._tasks.add(task)

        def done(result: Any) -> Any:
            self._tasks.discard(task)
            self._wake()
            if not self._tasks and self._cancel_call is not None:
                if self._cancel_call.active():
                    self._cancel_call.cancel()
                self._cancel_call = None
            return result

        task.addBoth(done).addErrback(self._task_failed, what, name)

    @staticmethod
    def _task_failed(failure: Failure, what: str, name: Any) -> None:
        if not failure.check(CancelledError, asyncio.CancelledError):
            log.failure("socketio: " + what + " failed", failure, name=name)

    def _wake(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.callback(None)

    async def _bounded(self) -> None:
        """At ``--max-inflight`` tasks, wait for one to end: ``receive`` returns later, so
        the bridge stops reading this WebSocket (a polling POST is answered later)."""
        limit = self._conn.config.max_inflight
        while len(self._tasks) >= limit and not self._conn.closing_or_closed:
            if self._slot is None:
                self._slot = Deferred()
            await self._slot

    def closed_now(self) -> None:
        """The bridge's hook: the connection is gone (a ``receive`` waiting in
        ``_bounded`` returns, so ``disconnect`` comes). The WebSocket a polling session
        upgraded to ends the session here, not in ``disconnect`` (queued behind a
        ``receive`` that waits for the session, it may be dropped at the kill)."""
        if self._upgrade_of is not None:
            code = getattr(self._conn, "disconnect_code", None)
            self._upgrade_of.websocket_closed(self, 1006 if code is None else code)
        self._wake()
        for socket in list(self._sockets.values()):  # (always_connect's waiting packets)
            self._connect_ended(socket)

    def _cancel_tasks(self) -> None:
        self._cancel_call = None
        self._killed = True  # (``_take_turns`` handles no more packets)
        if self._tasks:
            log.warn("socketio: {count} handlers still running {timeout} s after their "
                     "connection closed: cancelled", count=len(self._tasks),
                     timeout=self._conn.config.application_close_timeout)
        for task in list(self._tasks):
            task.cancel()
        # A handler that caught its cancel and waits on holds ``_take_turns`` (whose end
        # would start the disconnect handlers): they start now all the same.
        self._end_turns_now()

    # -- Engine.IO ---------------------------------------------------------------------------
    def _send(self, text: str | bytes, attachments: Iterable[bytes] = ()) -> None:
        """One packet (its attachments after it); one that is not UTF-8 (a lone surrogate
        from a layer event no ``compact_json`` made) is dropped, the connection goes on.
        With the msgpack serializer a text Socket.IO packet (the server's CONNECT, an
        ``Emitter``'s) goes as msgpack."""
        if self._conn.closing_or_closed:
            return
        if self._msgpack and isinstance(text, str) and text[:1] == _EIO_MESSAGE:
            try:
                text, attachments = _transcode(text, attachments), ()
            except (_Malformed, ValueError, TypeError) as exc:
                log.warn("socketio: dropped a packet msgpack cannot carry: {why}",
                         why=str(exc))
                return
        try:
            if self._polled_by is not None:  # queued (or dropped) with its attachments
                self._polled_by.send_packet(text, attachments)
            elif not attachments and type(text) is str:  # (most packets)
                self._conn.send_text(text)
            else:
                _send_frames(self._conn, text, attachments)
        except UnicodeEncodeError:
            log.warn("socketio: dropped a packet that is not UTF-8: {text!r}",
                     text=text[:100])

    def _send_ping(self) -> None:
        self._ping = None
        self._send(_EIO_PING)
        if self._server._recovery is not None:
            self._server._recovery.ping_sent(self)
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
        if self._server._recovery is not None:
            self._server._recovery.pong(self)  # what went before the ping has arrived
        self._ping = self._conn.reactor.callLater(self._server.ping_interval, self._send_ping)

    def _stop_timers(self) -> None:
        for call in (self._ping, self._pong_deadline, self._connect_deadline):
            if call is not None and call.active():
                call.cancel()
        self._ping = self._pong_deadline = self._connect_deadline = None

    def _refuse(self, close: tuple[int, str], why: str) -> None:
        log.info("socketio: closing a connection: {why}", why=why)
        self._close_reason = Reason.TRANSPORT_ERROR
        self._pending = None
        self._conn.close_with_code(*close)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._upgrade_of is not None:
            await self._upgrade_of.from_websocket(self, text_data, bytes_data)
            return
        if self._conn.closing_or_closed and (self._turns is None
                                             or self._close_reason is not None):
            return  # (async_handlers=False, its peer closed: what came before is handled)
        size = len(bytes_data or b"") if text_data is None else len(text_data)
        if size > self._max_payload or (
                text_data is not None and size * 4 > self._max_payload
                and len(text_data.encode()) > self._max_payload):
            self._refuse(CLOSE_TOO_BIG, "a message over maxPayload")
            return
        if text_data is None and self._msgpack:  # each packet one binary message
            try:
                packet = decode_msgpack_packet(bytes_data or b"")
            except _Malformed as exc:
                self._refuse(CLOSE_MALFORMED, str(exc))
                return
            await self._handle(packet)
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
            except RecursionError:
                self._refuse(CLOSE_MALFORMED, "a packet nested too deeply")
                return
            await self._handle(pending)
            return
        if self._pending is not None:
            self._refuse(CLOSE_MALFORMED, "a text frame while attachments were awaited")
            return
        kind = text_data[:1]
        if kind == _EIO_MESSAGE:
            codec = self._text_codec
            if codec is True:
                self._refuse(CLOSE_MALFORMED, "a text packet with the msgpack serializer")
                return
            try:  # (codec: a json= module's loads)
                packet = decode_packet(text_data[1:], True, codec or _JSON)
            except _Malformed as exc:
                self._refuse(CLOSE_MALFORMED, str(exc))
                return
            if packet.missing:
                self._pending = packet
                return
            work = self._dispatch(packet)
            if work is not None:
                await work
            if len(self._tasks) >= self._conn.config.max_inflight:
                await self._bounded()
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
    async def _handle(self, packet: Packet) -> None:
        work = self._dispatch(packet)
        if work is not None:
            await work
        await self._bounded()

    def _dispatch(self, packet: Packet) -> Awaitable[None] | None:
        """A packet's work: done here (an event's handler runs as a task of its own), or
        the coroutine to await."""
        kind = packet.kind
        if kind == CONNECT:
            return self._connect_namespace(packet.namespace, packet.data)
        socket = self._sockets.get(packet.namespace)
        if socket is None:
            return None  # not connected to that namespace: ignored, as python-socketio does
        if socket.pending:  # its connect handler runs
            if socket.waiting is not None:  # connected for its client (always_connect)
                if kind == ACK or kind == BINARY_ACK:  # (the handler may wait for one)
                    return self._acked(socket, packet)
                self._spawn(self._after_connect(socket, packet), "a packet's handling")
                return None
            # only that counts (a handler that then accepts gets its disconnect)
            return self._forget(socket, Reason.CLIENT_DISCONNECT) if kind == DISCONNECT else None
        if kind == EVENT or kind == BINARY_EVENT:
            self._event(socket, packet)
            return None
        if kind == DISCONNECT:
            return self._forget(socket, Reason.CLIENT_DISCONNECT)
        return self._acked(socket, packet)  # ACK, BINARY_ACK

    def _in_turn(self, packet: Packet) -> Awaitable[None] | None:
        """``async_handlers=False`` (the consumer's ``_dispatch`` then): its Socket.IO
        packets are handled one at a time, in order, an event's handler awaited before the
        next packet (python-socketio's in-order handlers), by a task of the connection
        (``_take_turns``), so its pongs, ACKs (a handler may wait for one) and close are
        not held behind a slow handler; with ``--max-inflight`` packets waiting,
        ``receive`` waits too (the connection is not read meanwhile)."""
        if packet.kind == ACK or packet.kind == BINARY_ACK:
            return SocketIOConsumer._dispatch(self, packet)
        turns = self._turns
        if turns is None:
            self._turns = deque((packet,))
            self._spawn(self._take_turns(), "the in-order handlers")
            return None
        turns.append(packet)
        return self._turn_room() if len(turns) >= self._conn.config.max_inflight else None

    async def _take_turns(self) -> None:
        """The packets in turn, one at a time. Those received before the connection
        closed are still handled, in order, as python-socketio reads what came before the
        close (their acks go nowhere); then the disconnect handlers (``_ending``)."""
        turns = self._turns
        assert turns is not None
        try:
            while turns and not self._killed:
                packet = turns.popleft()
                self._wake()  # (a receive waiting in ``_turn_room``)
                if packet.kind == CONNECT and self._conn.closing_or_closed:
                    continue  # (a closed connection connects no namespace)
                socket = self._sockets.get(packet.namespace)
                if socket is not None and socket.waiting is not None:
                    # always_connect: its connect handler runs; the packets behind wait
                    # too (one order for the connection, as in python-socketio)
                    woken: Deferred[None] = Deferred()
                    socket.waiting.append(woken)
                    await woken
                    socket = self._sockets.get(packet.namespace)
                try:
                    if (packet.kind == EVENT or packet.kind == BINARY_EVENT) and (
                            socket is not None and not socket.pending):
                        await self._event_inline(socket, packet)
                    else:
                        work = SocketIOConsumer._dispatch(self, packet)
                        if work is not None:
                            await work
                except CancelledError:
                    raise
                except Exception:
                    self._task_failed(Failure(), "a packet's handling", None)
        finally:
            # (cancelled past --application-close-timeout too: the disconnect handlers
            # still run, with that much time of their own)
            self._end_turns_now()

    def _end_turns_now(self) -> None:
        """No more packets in turn: a close's disconnect handlers (``_ending``) start."""
        self._turns = None
        ending, self._ending = self._ending, None
        if ending is not None:
            self._spawn(self._end_turns(*ending), "the disconnect handlers")
            self._arm_cancel()

    async def _end_turns(self, reason: str, code: int) -> None:
        """``async_handlers=False``: the close's end, once the packets in turn were handled."""
        try:
            await self._closed(reason, code)
        finally:
            waiters, self._end_waiters = self._end_waiters, []
            for waiter in waiters:
                if not waiter.called:  # (not cancelled meanwhile)
                    waiter.callback(None)

    async def _turn_room(self) -> None:
        """``_in_turn``'s bound: wait while ``--max-inflight`` packets wait."""
        limit = self._conn.config.max_inflight
        while (self._turns is not None and len(self._turns) >= limit
               and not self._conn.closing_or_closed):
            if self._slot is None:
                self._slot = Deferred()
            await self._slot

    async def _after_connect(self, socket: _Socket, packet: Packet) -> None:
        """``always_connect``: a packet of a namespace whose CONNECT was answered while its
        connect handler runs waits for it (a task of the connection: its other namespaces,
        pongs and ACKs go on; python-socketio holds them all), in order; then it is the
        namespace's, or dropped with the socket the handler refused."""
        if socket.waiting is not None:
            woken: Deferred[None] = Deferred()
            socket.waiting.append(woken)
            await woken
        if self._conn.closing_or_closed:
            return
        work = self._dispatch(packet)
        if work is not None:
            await work

    @staticmethod
    def _connect_ended(socket: _Socket) -> None:
        """The packets waiting for ``socket``'s connect handler go on, in order."""
        waiting, socket.waiting = socket.waiting, None
        for woken in waiting or ():
            woken.callback(None)

    async def _acked(self, socket: _Socket, packet: Packet) -> None:
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
        if server._recovery is not None:  # a socket of its own channel, or one restored
            socket, auth = server._recovery.open(self, namespace, auth)
            sid = socket.sid
        else:
            sid = _new_sid(self.channel_name, namespace)
            socket = _Socket(self, namespace, sid)
        self._sockets[namespace] = socket
        server._sockets[sid] = socket
        await self.channel_layer.group_add(namespace_group(namespace), socket.channel)
        if server.always_connect and namespace in self._sockets:  # (not dropped meanwhile)
            socket.waiting = []
            self._connected(socket)  # (python-socketio's order: CONNECT, then the handler)
        # A task, as python-socketio's: a slow one holds no other namespace, ack or pong.
        self._spawn(self._connect_handler(socket, auth), "the connect handler")

    def _connected(self, socket: _Socket) -> None:
        """CONNECT answered: ``{"sid"}`` (with recovery ``{"sid", "pid"}`` and the packets
        the client missed)."""
        if self._server._recovery is not None:
            self._server._recovery.connected(socket)
        else:
            self._send(encode_packet(CONNECT, socket.namespace, {"sid": socket.sid})[0])

    async def _connect_handler(self, socket: _Socket, auth: Any) -> None:
        try:
            await self._run_connect_handler(socket, auth)
        finally:
            self._connect_ended(socket)

    async def _run_connect_handler(self, socket: _Socket, auth: Any) -> None:
        server, namespace, sid = self._server, socket.namespace, socket.sid
        told = socket.waiting is not None  # always_connect: its CONNECT was answered
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
        except builtins.ConnectionRefusedError:  # as python-socketio takes it
            refusal = {"message": "Connection refused by server"}
        except CancelledError:
            raise
        except Exception:
            log.failure("socketio: the connect handler failed")
            refusal = {"message": "Internal server error"}
        if self._sockets.get(namespace) is not socket:  # disconnected meanwhile
            if refusal is None and socket.gone is not None:
                # Accepted, but its connection (or a DISCONNECT) ended it first: the
                # disconnect handler, once, as python-socketio calls it (a connect that
                # set something up for the sid has it undone).
                await self._disconnect_handler(socket, socket.gone)
            return
        if refusal is not None:
            await self._drop(socket)
            if told:
                # always_connect: told it is connected, the client is disconnected; a
                # DISCONNECT without python-socketio's refusal in it (socket.io-client
                # takes data there for a parse error and closes the connection)
                self._send(encode_packet(DISCONNECT, namespace)[0])
            else:
                self._send(encode_packet(CONNECT_ERROR, namespace, refusal)[0])
            return
        socket.pending = False
        if not told:
            self._connected(socket)
        if server._admin is not None:  # (always_connect: once accepted, its login too)
            server._admin.connected(socket)

    def _event(self, socket: _Socket, packet: Packet) -> None:
        """An EVENT's handler, as a task of this connection; its value is the ack. An
        ``async def`` handler is driven as it is (no coroutine around it), and its ack
        sent at once when it waits for nothing."""
        name = packet.data[0]
        try:
            server = self._server
            if server._admin is not None:
                server._admin.received(socket, packet.data)
            handler, args = server._handler(name, socket.namespace,
                                            (socket.sid, *packet.data[1:]))
            if handler is None:
                return
            result = handler(*args)
            if type(result) is _COROUTINE and not asyncio_loop():
                self._drive(_Driven(result), "the {name!r} handler", name,
                            functools.partial(self._answer, socket, packet))
            elif inspect.isawaitable(result):
                self._spawn(self._answer_later(socket, packet, result),
                            "the {name!r} handler", name)
            else:
                self._answer(socket, packet, result)
        except BaseException:
            self._task_failed(Failure(), "the {name!r} handler", name)

    async def _event_inline(self, socket: _Socket, packet: Packet) -> None:
        """``async_handlers=False``: an EVENT's handler awaited in its turn
        (``_take_turns``), so the connection's next packet waits for it; its value is the
        ack."""
        name = packet.data[0]
        try:
            server = self._server
            if server._admin is not None:
                server._admin.received(socket, packet.data)
            handler, args = server._handler(name, socket.namespace,
                                            (socket.sid, *packet.data[1:]))
            if handler is None:
                return
            result = await resolve(handler(*args))
        except BaseException:  # (a cancel too, as a task's: nothing more of it)
            self._task_failed(Failure(), "the {name!r} handler", name)
            return
        self._answer(socket, packet, result)

    async def _answer_later(self, socket: _Socket, packet: Packet, result: Any) -> None:
        # (an awaitable the handler's awaitable returns is awaited too, as ``_Driven`` does)
        self._answer(socket, packet, await resolve(result))

    def _answer(self, socket: _Socket, packet: Packet, result: Any) -> None:
        """The ack of ``packet`` (if it asked for one) with the handler's ``result``."""
        if packet.ack_id is None or self._sockets.get(socket.namespace) is not socket:
            return  # (a reconnected namespace's new socket did not ask)
        data = [] if result is None else list(result) if isinstance(result, tuple) else [result]
        try:
            ack = self._server._encode(ACK, socket.namespace, data, packet.ack_id)
        except ValueError as exc:
            log.info("socketio: the {event!r} handler's ack not sent: {why}",
                     event=packet.data[0], why=str(exc))
            return
        self._send(*ack)

    def _ack_id(self, socket: _Socket, callback: Callable[..., Any]) -> int:
        ack_id = self._next_ack
        self._next_ack += 1
        socket.acks[ack_id] = callback
        if isinstance(callback, _Answer):
            callback.socket, callback.ack_id = socket, ack_id
        while len(socket.acks) > MAX_PENDING_ACKS:  # the oldest goes (dicts keep order)
            oldest = socket.acks.pop(next(iter(socket.acks)))
            if self._acks_evicted == 0:
                log.warn("socketio: more than {count} acks awaited from one client "
                         "(MAX_PENDING_ACKS): the oldest are forgotten",
                         count=MAX_PENDING_ACKS)
            self._acks_evicted += 1
            gone = getattr(oldest, "gone", None)
            if gone is not None:
                try:
                    gone(f"forgotten: more than MAX_PENDING_ACKS ({MAX_PENDING_ACKS}) acks "
                         "were awaited from this client")
                except Exception:
                    log.failure("socketio: telling an ack's asker it will not come failed")
        return ack_id

    async def _enter(self, socket: _Socket, room: Any) -> None:
        group = room_group(socket.namespace, room)
        if group in socket.rooms:
            return
        socket.rooms[group] = room
        if socket.channel == self.channel_name and self._conn.closing_or_closed:
            return  # (a handler after the close: a closed connection joins no group)
        await self.channel_layer.group_add(group, socket.channel)
        if self._server._admin is not None:
            self._server._admin.room(socket, room, True)

    async def _leave(self, socket: _Socket, group: str) -> None:
        if group in socket.rooms:
            room = socket.rooms.pop(group)
            await self.channel_layer.group_discard(group, socket.channel)
            if self._server._admin is not None:
                self._server._admin.room(socket, room, False)

    async def _drop(self, socket: _Socket) -> None:
        """Forget ``socket`` here and in the layer (no handler, nothing sent); the acks it
        owes will not come (a ``call()`` waiting for one fails now)."""
        self._sockets.pop(socket.namespace, None)
        self._server._sockets.pop(socket.sid, None)
        acks, socket.acks = socket.acks, {}
        for answer in acks.values():
            if isinstance(answer, _Answer) and answer.gone is not None:
                try:
                    answer.gone()
                except Exception:
                    log.failure("socketio: telling an ack's asker its socket went failed")
        if self._server._recovery is not None:  # kept for a reconnect, or let go
            self._server._recovery.drop(socket)
            return
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
        if socket.pending and socket.waiting is None:
            # Not connected yet: its connect handler decides (``gone``). One whose CONNECT
            # ``always_connect`` answered is connected for its client, as python-socketio
            # has it: its disconnect handler runs now (a ``disconnect(sid)`` in its
            # connect handler: inside that call), and the connect handler's end changes
            # nothing more.
            socket.gone = reason
            await self._drop(socket)
            return
        del self._sockets[socket.namespace]
        if self._server._admin is not None and not socket.pending:  # (announced)
            self._server._admin.disconnected(socket, reason)
        try:
            await self._disconnect_handler(socket, reason)
        finally:
            await self._drop(socket)

    async def _disconnect_handler(self, socket: _Socket, reason: str) -> None:
        handler, args = self._server._handler("disconnect", socket.namespace,
                                              (socket.sid, reason))
        try:
            if handler is not None:
                if _positional_count(handler) < len(args):
                    args = args[:-1]  # disconnect(sid): no reason argument
                await _maybe_await(handler(*args))
        except CancelledError:
            raise  # (past --application-close-timeout: ``_closed`` lets the others go)
        except Exception:
            log.failure("socketio: the disconnect handler failed")

    async def _server_disconnect(self, socket: _Socket) -> None:
        if self._sockets.get(socket.namespace) is not socket:
            if self._server._recovery is not None:  # its connection's loss is handled:
                self._server._recovery.let_go(socket)  # it is not kept, then
            return
        self._send(encode_packet(DISCONNECT, socket.namespace)[0])
        await self._forget(socket, Reason.SERVER_DISCONNECT)

    async def disconnect(self, code: int) -> None:
        if self._upgrade_of is not None:
            self._upgrade_of.websocket_closed(self, code)
            return
        self._stop_timers()
        self._pending = None
        reason = self._close_reason or Reason.TRANSPORT_CLOSE
        if self._server._admin is not None and self._max_payload:  # (it had opened)
            self._server._admin.closed()
        if self._turns is not None:
            # async_handlers=False: the packets received before the close are handled
            # first, in order, then the disconnect handlers (``_take_turns``), as in
            # python-socketio; the bridge's next steps wait for them (up to its
            # --application-close-timeout: they go on after it, under ``_arm_cancel``'s).
            self._ending = (reason, code)
            self._arm_cancel()
            waiter: Deferred[None] = Deferred()
            self._end_waiters.append(waiter)
            await waiter
            return
        try:
            await self._closed(reason, code)
        finally:  # (cancelled by the bridge's kill too: its handlers still running are)
            self._arm_cancel()

    async def _closed(self, reason: str, code: int) -> None:
        """The connection's end for its sockets: kept for a reconnect (recovery), and
        their disconnect handlers, one after the other. Cancelled (past
        --application-close-timeout), the sockets left go without theirs: none stays."""
        if self._server._recovery is not None:  # its sockets are kept past their handlers
            self._server._recovery.connection_lost(self, code)
        try:
            for socket in list(self._sockets.values()):
                await self._forget(socket, reason)
        finally:
            left = list(self._sockets.values())
            if left:
                log.warn("socketio: a disconnect handler was cancelled: {count} other "
                         "sockets of its connection go without theirs", count=len(left))
            for socket in left:
                if socket.pending and socket.waiting is None:
                    socket.gone = reason  # (its connect handler decides, as in ``_forget``)
                elif self._server._admin is not None and not socket.pending:
                    self._server._admin.disconnected(socket, reason)
                await self._drop(socket)  # (a closed connection's: it waits for nothing)

    def _arm_cancel(self) -> None:
        """As the bridge does for a consumer's handlers: the tasks still running
        --application-close-timeout from now are cancelled."""
        if self._tasks and self._cancel_call is None:
            self._cancel_call = self._conn.reactor.callLater(
                self._conn.config.application_close_timeout, self._cancel_tasks)

    # -- layer events --------------------------------------------------------------------------
    def _mine(self, event: dict[str, Any]) -> _Socket | None:
        """The socket a sid-addressed event is for: of this connection and of the event's
        namespace (an event of an older process has none)."""
        sid = event.get("sid")
        socket = self._server._sockets.get(sid) if isinstance(sid, str) else None
        namespace = event.get("namespace")
        if socket is None or socket.consumer is not self or (
                namespace is not None and socket.namespace != namespace):
            return None
        return socket

    def take_event_now(self, event: dict[str, Any]) -> bool:
        """The bridge's hook: a packet goes out when the layer brings it, not behind the
        messages this connection's queue holds (a handler's ``emit(to=sid)`` made while
        ``receive`` runs, then its ack: they go out in that order)."""
        if event.get("type") != "sio.packet":
            return False
        self.sio_packet(event)
        return True

    def sio_packet(self, event: dict[str, Any]) -> None:
        """A packet for this connection (a sid of it) or a room it is in."""
        if "sid" in event:
            socket = self._mine(event)
            if socket is None:  # that namespace disconnected since
                if "reply_to" in event:
                    _reply_gone(self.channel_layer, event)
                return
        else:
            socket = self._sockets.get(event.get("namespace"))  # type: ignore[arg-type]
        targets = event.get("targets")
        if targets is not None and (socket is None
                                    or _first_target(socket, targets) != event.get("via")):
            return  # it has it from an earlier target
        text = event["text"]
        if "reply_to" in event:
            assert socket is not None
            text = self._asked(socket, event)
            if text is None:
                return
        self._send(text, event.get("binary") or ())

    def _asked(self, socket: _Socket, event: dict[str, Any]) -> str | bytes | None:
        """A packet from another process that asks for the client's ack: given an ack id
        of this connection whose answer goes back to the asking server's reply channel
        (``_Replies``), as does the news that the socket went first. None for an event
        that is not such a packet."""
        reply_to, token, at = event.get("reply_to"), event.get("ack"), event.get("at")
        text = event.get("text")
        if not (isinstance(reply_to, str) and isinstance(token, int)
                and isinstance(at, int) and isinstance(text, str | bytes)):
            return None
        layer = self.channel_layer

        def answered(*args: Any) -> Any:
            return layer.send(reply_to, {"type": "sio.ack", "ack": token, "args": list(args)})

        ack_id = self._ack_id(socket, _Answer(answered, lambda why=None: _reply_gone(layer, event)))
        return _with_ack_id(text, at, ack_id)

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


# -- from outside the server ----------------------------------------------------------------

def _check_namespace(namespace: Any) -> str:
    if (not isinstance(namespace, str) or not namespace.startswith("/")
            or any(c in namespace for c in ",?") or not namespace.isprintable()):
        raise ValueError(f"a namespace is a str that starts with '/', without ',' or '?' "
                         f"(printable), not {namespace!r}")
    return namespace


def _check_sid(sid: Any) -> str:
    if channel_of(sid) is None:
        raise ValueError(f"not a realtime.socketio sid: {sid!r}")
    return str(sid)


class Emitter:
    """Emit to Socket.IO clients from outside the server (a Django view, a Celery task, a
    script): python-socketio's ``RedisManager(url, write_only=True)``, through realtime's
    HTTP API (``--api-key``; ``realtime.client``: the standard library, no reactor, no
    asyncio), so it reaches every process of the server, which need not share a Redis
    with the caller. ``url`` is the API's address: with ``--internal-port``, that
    listener's.

    The methods are ``AsyncServer``'s (not the manager's: its ``enter_room(sid, namespace,
    room)`` takes another order), with every argument after the first two keyword-only.
    Each is one HTTP request per target, done when the server's layer took it (a sid's
    ``enter_room`` happens where it is connected, just after); a refusal is a
    ``realtime.client.PublishError`` (its ``status``: 400, 401, 404 without ``--api-key``,
    413 past ``--api-body-limit``, 429 when a sid's queue is full, 503 while the layer is
    down). Bytes in ``data`` are a ``ValueError``: binary
    attachments are frames of their own, which the API's JSON does not carry (emit them
    from the server's ``AsyncServer``, or send base64 text)."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 10.0,
                 serializer: str = "default") -> None:
        if serializer not in ("default", "msgpack"):
            raise ValueError(f'serializer is "default" or "msgpack", not {serializer!r}')
        self.url = url
        self.api_key = api_key
        self.timeout = timeout
        #: The server's ``serializer="msgpack"``: packets go as layer events, which each
        #: connection turns into msgpack (a prepared frame would reach it as JSON text).
        self.msgpack = serializer == "msgpack"

    def emit(self, event: str, data: Any = None, *, to: Any = None, room: Any = None,
             skip_sid: str | Iterable[str] | None = None, namespace: str = "/") -> None:
        """``event`` to a sid, a room, a list of them (each client once), or the whole
        ``namespace`` (neither ``to`` nor ``room``), in every process, but the sids of
        ``skip_sid``; ``data``: one argument, or a tuple of them (JSON values)."""
        from realtime import client

        _check_namespace(namespace)
        if not isinstance(event, str):
            raise TypeError("the event name is a str")
        args = [] if data is None else list(data) if isinstance(data, tuple) else [data]
        try:
            text, attachments = encode_packet(EVENT, namespace, [event, *args],
                                              allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"data must be JSON values: {exc}") from None
        if attachments:
            raise ValueError("bytes in data: binary attachments cannot go through the HTTP "
                             "API (emit them from the server's AsyncServer, or send base64)")
        target = to if to is not None else room
        steps, exclude = _deliveries(text, [], namespace, target, skip_sid)
        for kind, name, packet in steps:
            if packet is None and self.msgpack:
                packet = {"type": "sio.packet", "namespace": namespace, "text": text,
                          "binary": []}
            if kind == "sid":
                assert packet is not None
                self._send(name, packet)
            elif packet is not None:
                client.publish(self.url, self.api_key, name, event=packet,
                               exclude=exclude or None, timeout=self.timeout)
            else:
                client.publish(self.url, self.api_key, name, text=text,
                               exclude=exclude or None, timeout=self.timeout)

    def send(self, data: Any, *, to: Any = None, room: Any = None,
             skip_sid: str | Iterable[str] | None = None, namespace: str = "/") -> None:
        """``emit("message", data, ...)``."""
        self.emit("message", data, to=to, room=room, skip_sid=skip_sid, namespace=namespace)

    def enter_room(self, sid: str, room: Any, *, namespace: str = "/") -> None:
        """Put ``sid`` in ``room`` where it is connected (a sid of another namespace:
        nothing happens; another sid as the room: ``ValueError``, as ``AsyncServer``)."""
        self._room(sid, room, namespace, enter=True)

    def leave_room(self, sid: str, room: Any, *, namespace: str = "/") -> None:
        self._room(sid, room, namespace, enter=False)

    def close_room(self, room: Any, *, namespace: str = "/") -> None:
        """Every member, in every process, leaves ``room``."""
        from realtime import client

        group = room_group(_check_namespace(namespace), room)
        client.publish(self.url, self.api_key, group, event=_close_room_event(group),
                       timeout=self.timeout)

    def disconnect(self, sid: str, *, namespace: str = "/") -> None:
        """Disconnect ``sid`` from ``namespace`` (the client is told; its ``disconnect``
        handler runs with "server disconnect")."""
        _check_namespace(namespace)
        if _in_namespace(_check_sid(sid), namespace):
            self._send(sid, _disconnect_event(sid, namespace))

    def _room(self, sid: str, room: Any, namespace: str, enter: bool) -> None:
        _check_namespace(namespace)
        _check_sid(sid)
        if enter and room != sid and channel_of(room) is not None:
            raise ValueError("cannot enter a sid room")
        if _in_namespace(sid, namespace):
            self._send(sid, _room_event(sid, namespace, room, enter))

    def _send(self, sid: str, event: dict[str, Any]) -> None:
        from realtime import client

        channel = channel_of(sid)
        assert channel is not None
        client.send(self.url, self.api_key, channel, event, timeout=self.timeout)


__all__ = ["AsyncManager", "AsyncNamespace", "AsyncRedisManager", "AsyncServer",
           "CallTimeoutError", "ConnectionRefusedError", "Emitter", "PollingConsumer",
           "Reason", "SocketIOApp", "SocketIOConsumer", "SocketIOError", "channel_of",
           "decode_msgpack_packet", "decode_packet", "encode_msgpack_packet",
           "encode_packet", "namespace_group", "room_group"]
