"""Centrifugo's client protocol (JSON, and Protobuf: ``realtime.pubsub_proto``) on
realtime's channel layers.

Why: a team that runs Centrifugo beside its app keeps its clients (centrifuge-js,
centrifuge-python, the mobile SDKs), its connection and subscription JWTs and its namespace
rules, points them at ``--app realtime.pubsub:application``, and gains what Centrifugo keeps
for its PRO edition or an HTTP proxy: permission and RPC hooks written in Python
(``PubSubConsumer`` subclasses), the Channels consumers beside them on one port, and the
layers' history, presence and Redis fan-out.

A client channel ``ns:name`` is the layer group ``channel_group(channel)`` (escaped, so any
channel name maps to a valid group name, and every channel of a namespace shares the group
prefix ``namespace_prefix(ns)``, which ``--namespace``'s history rules match). Publications
of a namespace without history go out as one prepared frame per channel (``broadcast``);
with history as ``group_send`` events (``{"type": "pubsub.pub"}``) that carry their stream
position, so clients recover what they missed after a reconnect; with ``allow_tags_filter``
as such events too (each member's tags filter decides).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import uuid
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import threadable

from realtime.consumer import AsyncWebsocketConsumer, compact_json, refuse_constant
from realtime.http import AsyncHttpConsumer

if TYPE_CHECKING:
    from realtime.pubsub_proxy import Granted
from realtime.layers.base import (
    HELD,
    MAX_NAME,
    UNCOUNTED_GROUP_PREFIX,
    ThreadGuardedLayer,
    escape_name,
    frame_event,
    let_out_for,
    on_survey,
    unguarded,
)
from realtime.settings import settings
from realtime.threads import as_deferred
from realtime.websocket import _translate

log = Logger(namespace="realtime.pubsub")

#: The group-name prefix of every client channel's group.
GROUP_PREFIX = "ps."
#: The group-name prefix of each user's group (every connection of a user with a non-empty
#: id is in ``user_group(user)``: the server API's ``unsubscribe`` and ``disconnect`` reach
#: them there, in every process). It cannot collide with a channel's group ("ps."), and
#: does not count against ``--max-groups-per-connection``.
USER_GROUP_PREFIX = UNCOUNTED_GROUP_PREFIX
#: Centrifugo's default ``channel_max_length``.
CHANNEL_MAX = 255
#: A connection that sends no ``connect`` command within this many seconds is closed (3502).
STALE_AFTER = 10.0
#: Seconds between the server's pings (``{}``) once connected: the SDKs answer each with a
#: pong and reconnect when pings stop coming (a dead server, a half-open connection that
#: TCP has not noticed); a client whose pong has not come by the next ping is closed with
#: 3012. 0: no pings (the WebSocket pings of ``--ping-interval`` still run).
PING_INTERVAL = 25.0
#: Seconds past a token's ``exp`` the server waits for ``refresh`` (``sub_refresh``)
#: before it closes 3005 (3006): Centrifugo's ``client_expired_close_delay``. The SDKs
#: refresh once the reply's ``ttl`` (whole seconds) has passed, about at ``exp``.
EXPIRED_CLOSE_DELAY = 25.0
#: The longest expiry the server API's ``refresh`` sets (Centrifugo's: a year).
MAX_TTL = 365 * 86400.0
#: Commands one frame may carry (centrifuge-js batches a connection's subscribes).
MAX_COMMANDS_PER_FRAME = 1000

_NAMESPACE_NAME = re.compile(r"^[a-zA-Z0-9_.\-]{1,64}$")

# Client error codes (Centrifugo's, so its SDKs react as they do there).
INTERNAL, UNAUTHORIZED, UNKNOWN_CHANNEL, PERMISSION_DENIED = 100, 101, 102, 103
METHOD_NOT_FOUND, ALREADY_SUBSCRIBED, LIMIT_EXCEEDED, BAD_REQUEST = 104, 105, 106, 107
NOT_AVAILABLE, TOKEN_EXPIRED, UNRECOVERABLE_POSITION = 108, 109, 112
_MESSAGES = {
    INTERNAL: "internal server error", UNAUTHORIZED: "unauthorized",
    UNKNOWN_CHANNEL: "unknown channel", PERMISSION_DENIED: "permission denied",
    METHOD_NOT_FOUND: "method not found", ALREADY_SUBSCRIBED: "already subscribed",
    LIMIT_EXCEEDED: "limit exceeded", BAD_REQUEST: "bad request",
    NOT_AVAILABLE: "not available", TOKEN_EXPIRED: "token expired",
    UNRECOVERABLE_POSITION: "unrecoverable position",
}
# Close codes (Centrifugo's disconnect codes: 3000-3499 reconnect, 3500-3999 do not).
CLOSE_EXPIRED = (3005, "connection expired")
CLOSE_SUB_EXPIRED = (3006, "subscription expired")
CLOSE_INVALID_TOKEN = (3500, "invalid token")
CLOSE_BAD_REQUEST = (3501, "bad request")
CLOSE_STALE = (3502, "stale")
CLOSE_CONNECTION_LIMIT = (3504, "connection limit")
CLOSE_NO_PONG = (3012, "no pong")
#: A unidirectional connect that failed on the server's side: reconnect.
CLOSE_SERVER_ERROR = (3004, "internal server error")
CLOSE_PERMISSION_DENIED = (3507, "permission denied")
#: The server shuts down: reconnect (to another one).
CLOSE_SHUTDOWN = (3001, "shutdown")
CLOSE_CHANNEL_LIMIT = (3505, "channel limit")
#: A server-side subscription lost its stream's state: reconnect (and recover) it.
CLOSE_INSUFFICIENT_STATE = (3010, "insufficient state")
#: The WebSocket subprotocol of Centrifugo's Protobuf clients (``realtime.pubsub_proto``).
PROTOBUF_SUBPROTOCOL = "centrifuge-protobuf"
#: Unsubscribe push code: the client resubscribes (and recovers) at once.
UNSUB_INSUFFICIENT_STATE = 2500
#: Unsubscribe push of the server API's ``unsubscribe``: the client stays unsubscribed.
UNSUB_SERVER = (2000, "server unsubscribe")
#: The server API's ``disconnect`` without a ``disconnect`` object: no reconnect.
CLOSE_FORCE_DISCONNECT = (3503, "force disconnect")
#: A unidirectional connect's error as the close code that ends it (no reply reaches such
#: a client): an expired token reconnects (with a fresh one), a refused one does not.
_UNI_CLOSES = {
    TOKEN_EXPIRED: CLOSE_EXPIRED, UNAUTHORIZED: (3500, "unauthorized"),
    INTERNAL: CLOSE_SERVER_ERROR, PERMISSION_DENIED: CLOSE_PERMISSION_DENIED,
    LIMIT_EXCEEDED: CLOSE_CHANNEL_LIMIT,
}
#: SubscribeRequest.flag bit: answer 112 instead of ``recovered: false``.
FLAG_REJECT_UNRECOVERED = 2


class PubSubError(Exception):
    """A client error reply: ``{"error": {"code", "message"}}``; raise it from a hook."""

    def __init__(self, code: int, message: str | None = None, temporary: bool = False) -> None:
        super().__init__(message or _MESSAGES.get(code, "error"))
        self.code = code
        self.message = message or _MESSAGES.get(code, "error")
        self.temporary = temporary

    def reply(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.temporary:
            error["temporary"] = True
        return error


class _Close(Exception):
    """End the connection with this close code (a disconnect in Centrifugo's terms)."""

    def __init__(self, close: tuple[int, str]) -> None:
        super().__init__(close[1])
        self.close = close


# -- namespaces ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Namespace:
    """One namespace's options, by Centrifugo's names (all off by default: a channel is
    then open only to a subscription token)."""

    name: str = ""
    presence: bool = False
    join_leave: bool = False
    force_push_join_leave: bool = False
    history_size: int = 0
    history_ttl: float = 0.0
    force_recovery: bool = False
    allow_recovery: bool = False
    force_positioning: bool = False
    allow_positioning: bool = False
    allow_subscribe_for_client: bool = False
    allow_subscribe_for_anonymous: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_client: bool = False
    allow_publish_for_anonymous: bool = False
    allow_history_for_subscriber: bool = False
    allow_history_for_client: bool = False
    allow_history_for_anonymous: bool = False
    allow_presence_for_subscriber: bool = False
    allow_presence_for_client: bool = False
    allow_presence_for_anonymous: bool = False
    allow_user_limited_channels: bool = False
    #: Delta compression a subscriber may ask for (``delta: "fossil"``; only "fossil"
    #: exists), in a recoverable or positioned subscription: it then gets the publications
    #: marked for it (``delta_publish``, the API's ``delta``) as Fossil deltas of the one
    #: before (``realtime.fossil``).
    allowed_delta_types: tuple[str, ...] = ()
    #: Every publication in the namespace is marked for delta compression.
    delta_publish: bool = False
    #: A subscriber may filter the publications it gets by their tags (a subscribe
    #: request's ``tf``: ``realtime.pubsub_filter``). Publications of such a namespace
    #: without history go to each member as an event (not one ``broadcast()`` frame).
    allow_tags_filter: bool = False
    #: Centrifugo's channel proxies (``realtime.pubsub_proxy``; their endpoints are
    #: ``--proxy-subscribe-endpoint``, ...): the backend decides who subscribes and
    #: publishes here (instead of the ``allow_*`` options) and refreshes subscriptions
    #: with an ``expire_at``. Centrifugo v5's ``proxy_subscribe``, ``proxy_publish`` and
    #: ``proxy_sub_refresh`` are these too.
    subscribe_proxy_enabled: bool = False
    publish_proxy_enabled: bool = False
    sub_refresh_proxy_enabled: bool = False
    #: Which proxy those ask (Centrifugo v6's names): a named one (``--proxy NAME:...``),
    #: or ``""``/``default``, the event's own (``--proxy-subscribe-endpoint``, ...).
    subscribe_proxy_name: str = ""
    publish_proxy_name: str = ""
    sub_refresh_proxy_name: str = ""

    @property
    def history(self) -> bool:
        """Whether its channels keep history (so publications carry positions)."""
        return self.history_size > 0 and self.history_ttl > 0


_OPTIONS = {f.name: f.type for f in fields(Namespace) if f.name != "name"}
#: Centrifugo v5's names of namespace options that v6 renamed.
_V5_NAMES = {"proxy_subscribe": "subscribe_proxy_enabled",
             "proxy_publish": "publish_proxy_enabled",
             "proxy_sub_refresh": "sub_refresh_proxy_enabled"}
#: The delta compression a namespace may allow (``allowed_delta_types``).
DELTA_TYPES = ("fossil",)


def _duration(value: str, where: str) -> float:
    """Seconds from ``300``, ``300s``, ``5m``, ``1h`` or ``2d`` (Centrifugo writes "300s")."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?", value.strip())
    if not match:
        raise ValueError(f"{where}: expected seconds (300, 300s, 5m, 1h), got {value!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[match.group(2)]
    return float(match.group(1)) * scale


def parse_namespace(spec: str) -> Namespace:
    """``NAME:OPTION,OPTION=VALUE,...`` (``--namespace``); an empty NAME is the namespace of
    channels without one. ``ValueError`` names what is wrong."""
    name, sep, rest = spec.partition(":")
    if not sep:
        raise ValueError(f"expected NAME:OPTIONS (':OPTIONS' for channels without a "
                         f"namespace), got {spec!r}")
    name = name.strip()
    if name and not _NAMESPACE_NAME.match(name):
        raise ValueError(f"namespace {name!r}: a name is 1-64 letters, digits, '_', '-', '.'")
    values: dict[str, Any] = {}
    for item in (part.strip() for part in rest.split(",")):
        if not item:
            continue
        option, has_value, value = item.partition("=")
        option = option.strip().replace("-", "_")
        option = _V5_NAMES.get(option, option)
        where = f"namespace {name or '(default)'!r}: {option}"
        if option not in _OPTIONS:
            raise ValueError(f"namespace {name or '(default)'!r}: no option {option!r} "
                             f"(known: {', '.join(sorted(_OPTIONS))})")
        if option in values:
            raise ValueError(f"{where} given twice")
        if option == "history_size":
            if not value.strip().isdigit():
                raise ValueError(f"{where}: expected a number of publications, got {value!r}")
            values[option] = int(value)
        elif option == "history_ttl":
            values[option] = _duration(value, where)
        elif option.endswith("_proxy_name"):
            from realtime.pubsub_proxy import DEFAULT, is_proxy_name

            value = value.strip()
            if not has_value:
                raise ValueError(f"{where}: expected {option}=NAME (a --proxy name, or "
                                 f"{DEFAULT!r})")
            if value not in ("", DEFAULT) and not is_proxy_name(value):  # "": v6's default
                raise ValueError(f"{where}: expected a --proxy name (or {DEFAULT!r}), got "
                                 f"{value!r}")
            values[option] = value
        elif option == "allowed_delta_types":
            # "fossil" (--namespace), or "fossil+..." for a [[namespaces]] list
            kinds = tuple(kind.strip() for kind in value.split("+") if kind.strip())
            if not has_value or any(kind not in DELTA_TYPES for kind in kinds):
                raise ValueError(f"{where}: the delta types are {', '.join(DELTA_TYPES)}, "
                                 f"got {value!r}")
            values[option] = kinds
        elif not has_value or value.strip().lower() in ("true", "1", "yes"):
            values[option] = True
        elif value.strip().lower() in ("false", "0", "no"):
            values[option] = False
        else:
            raise ValueError(f"{where}: expected true or false, got {value!r}")
    namespace = Namespace(name=name, **values)
    if (namespace.history_size > 0) != (namespace.history_ttl > 0):
        raise ValueError(f"namespace {name or '(default)'!r}: history_size and history_ttl "
                         "go together")
    if (namespace.force_recovery or namespace.allow_recovery) and not namespace.history:
        raise ValueError(f"namespace {name or '(default)'!r}: recovery needs history "
                         "(history_size and history_ttl)")
    if (namespace.force_positioning or namespace.allow_positioning) and not namespace.history:
        raise ValueError(f"namespace {name or '(default)'!r}: positioning needs history "
                         "(history_size and history_ttl)")
    if namespace.allowed_delta_types and not namespace.history:
        raise ValueError(f"namespace {name or '(default)'!r}: delta compression needs "
                         "history (history_size and history_ttl), and subscribers with "
                         "recovery or positioning")
    return namespace


def parse_namespaces(specs: Iterable[str | Namespace]) -> dict[str, Namespace]:
    """Namespaces by name; the same name twice is a ``ValueError``."""
    found: dict[str, Namespace] = {}
    for spec in specs:
        namespace = spec if isinstance(spec, Namespace) else parse_namespace(spec)
        if namespace.name in found:
            raise ValueError(f"namespace {namespace.name or '(default)'!r} given twice")
        found[namespace.name] = namespace
    return found


def namespace_name(channel: str) -> str:
    """The namespace of ``ns:rest`` (a leading ``$``, private, is not part of it)."""
    name, sep, _ = channel.lstrip("$").partition(":")
    return name if sep else ""


def namespace_prefix(namespace: str) -> str:
    """The prefix of the groups of every channel in ``namespace`` (history rules glob it)."""
    escaped = escape_name(namespace)
    if len(escaped) > 40:  # "_n" never comes out of escape_name (it writes "_" + two hex digits)
        escaped = "_n" + hashlib.sha256(namespace.encode()).hexdigest()[:24]
    return f"{GROUP_PREFIX}{escaped}."


def _group_name(head: str, text: str) -> str:
    """``head`` and ``text`` escaped; a hash of ``text`` when that is too long for a group
    name ("_h" never comes out of escape_name either)."""
    group = head + escape_name(text)
    if len(group) > MAX_NAME:
        group = head + "_h" + hashlib.sha256(text.encode()).hexdigest()[:40]
    return group


def channel_group(channel: str) -> str:
    """The layer group of a client channel: a valid group name for any channel."""
    return _group_name(namespace_prefix(namespace_name(channel)), channel)


def user_group(user: str) -> str:
    """The layer group every connection of ``user`` (a non-empty user id) is in."""
    return _group_name(USER_GROUP_PREFIX, user)


def emulation_group(node: str) -> str:
    """The group a ``StreamConsumer`` (channel name ``node``) is alone in, which
    ``/emulation`` sends its client's requests to ("_e" never comes out of ``escape_name``, so
    no user's group is named so; uncounted, as the users' groups)."""
    return _group_name(USER_GROUP_PREFIX + "_e.", node)


def check_channel(channel: Any) -> str:
    if not isinstance(channel, str) or not channel:
        raise PubSubError(BAD_REQUEST, "channel required")
    if len(channel) > CHANNEL_MAX or any(ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF
                                         for c in channel):
        raise PubSubError(BAD_REQUEST, "bad channel name")
    return channel


#: Centrifugo's transports, each at its path (``--pubsub-transports`` picks them; the
#: emulation endpoint, ``/emulation``, serves ``http_stream`` and ``sse``).
TRANSPORTS = ("websocket", "http_stream", "sse", "uni_websocket", "uni_sse", "uni_http_stream")


def parse_transports(value: str | Iterable[str]) -> frozenset[str]:
    """``websocket,uni_sse`` (commas or spaces; ``--pubsub-transports``): the transports
    served; ``ValueError`` names one that is not Centrifugo's."""
    names = re.split(r"[,\s]+", value) if isinstance(value, str) else list(value)
    found = frozenset(name for name in names if name)
    for name in sorted(found):
        if name not in TRANSPORTS:
            raise ValueError(f"no transport {name!r} (known: {', '.join(TRANSPORTS)})")
    if not found:
        raise ValueError(f"expected one or more of {', '.join(TRANSPORTS)}")
    return found


def configure(namespaces: Iterable[str | Namespace] = (), anonymous: bool = False,
              layer: Any = None, transports: str | Iterable[str] | None = None
              ) -> dict[str, Namespace]:
    """Set the namespaces (``--namespace``), whether a client may connect without a
    token (``--pubsub-anonymous``) and the transports served (``--pubsub-transports``;
    None: all) for this process, and the history rules of the namespaces that keep
    history on ``layer`` (the default layer). Every process that publishes to such
    channels needs the same (``twistd realtime`` does it from the options)."""
    from realtime.layers import process_layer

    served = None if transports is None else parse_transports(transports)
    found = parse_namespaces(namespaces)
    target = process_layer() if layer is None else unguarded(layer)
    for namespace in found.values():
        if namespace.history:
            target.keep_history(namespace_prefix(namespace.name) + "*",
                                size=namespace.history_size, ttl=namespace.history_ttl)
    settings.pubsub_namespaces = found
    settings.pubsub_anonymous = anonymous
    settings.pubsub_transports = served
    return found


def _namespace(channel: str, namespaces: Mapping[str, Namespace] | None = None) -> Namespace:
    known = settings.pubsub_namespaces if namespaces is None else namespaces
    name = namespace_name(channel)
    namespace = known.get(name)
    if namespace is None:
        if name:
            raise PubSubError(UNKNOWN_CHANNEL)
        return Namespace()  # channels without a namespace, none configured: tokens only
    return namespace


def _dumps(document: Any) -> str:
    """JSON text; ``TypeError`` for what JSON cannot carry (NaN and the infinities too:
    Python writes them, but a browser's ``JSON.parse`` and Go's decoder refuse them)."""
    try:
        # (a lone surrogate, which failed the send in every member's handler with 1011,
        # goes out escaped: as Centrifugo passes it on)
        return compact_json(document, allow_nan=False)
    except ValueError as exc:
        raise TypeError(str(exc)) from None


def from_bytes(data: bytes | bytearray | memoryview) -> Any:
    """Binary data (a Protobuf client's, the server API's ``b64data``, ``publish(channel,
    b"...")``) as realtime.pubsub carries it: the JSON value when it is UTF-8 JSON text (so
    JSON clients get it as JSON, as Centrifugo embeds it), else the bytes themselves
    (Protobuf clients get them byte for byte, JSON clients as ``b64data``)."""
    data = bytes(data)
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=refuse_constant)
        _dumps(value)  # 1e400 reads as inf, which JSON clients cannot take
    except (ValueError, TypeError, RecursionError):  # not JSON text, or too deep
        return data
    return value if _carried(value) else data


def _carried(value: Any) -> bool:
    """Whether the layers carry ``value`` (msgpack: integers from -2**63 to 2**64-1)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            if not -(1 << 63) <= item < (1 << 64):
                return False
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return True


def _on_the_reactor(name: str) -> bool:
    """Whether a call from a thread other than the reactor's (a ``thread_handlers``
    consumer's, a Django view's; before the reactor runs, any but the main thread, which
    will run it), where the layer would be touched from a second thread, is to go to the
    reactor thread: made from asgiref's ``async_to_sync`` (or a coroutine on that thread's
    asyncio loop), as ``ThreadGuardedLayer`` does; else ``RuntimeError`` saying how to call
    it instead. False on the reactor thread (what the caller of ``name`` is, is read only
    off it)."""
    here, io_thread = threading.get_ident(), threadable.ioThread
    if here == io_thread or (io_thread is None and here == threading.main_thread().ident):
        return False
    from realtime.layers.base import _awaits_on_a_loop

    if _awaits_on_a_loop(sys._getframe(2)):  # (the caller of publish)
        return True
    raise RuntimeError(
        f"realtime.pubsub.{name}() called from a thread other than the reactor's, where it "
        "would race the reactor (Twisted is not thread-safe): call it through "
        f"async_to_sync({name})(...), which runs it on the reactor thread")


def publish(channel: str, data: Any, info: dict[str, Any] | None = None,
            layer: Any = None, tags: dict[str, str] | None = None,
            delta: bool | None = None) -> Deferred[dict[str, Any] | None]:
    """Publish ``data`` (any JSON value, or ``bytes``: see ``from_bytes``) to a client
    channel, in every process: the position ``{"epoch", "offset"}`` in a namespace with
    history, else None. ``tags`` (str to str) reach the clients with the publication
    (Centrifugo's publication tags). ``delta`` marks it for delta compression (None: the
    namespace's ``delta_publish``): subscribers that asked for it and have the one before
    get a Fossil delta. ``PubSubError`` (102) for a channel of an unknown namespace;
    ``TypeError`` for data JSON cannot carry."""
    from realtime.layers import process_layer

    if _on_the_reactor("publish"):  # asgiref's async_to_sync in a thread
        from realtime.threads import awaited_on_reactor, installed_reactor

        reactor = installed_reactor("realtime.pubsub.publish()")
        later: Any = awaited_on_reactor(reactor, functools.partial(
            publish, channel, data, info, layer, tags, delta))
        return later  # (a coroutine: what asgiref awaits)
    check_channel(channel)
    if isinstance(data, bytes | bytearray | memoryview):
        data = from_bytes(data)
    namespace = _namespace(channel)
    target = (process_layer() if layer is None
              else layer if type(layer) is not ThreadGuardedLayer else unguarded(layer))
    group = channel_group(channel)
    message: dict[str, Any] = {"type": "pubsub.pub", "channel": channel, "data": data}
    if info:
        message["info"] = info
    if tags:
        if not isinstance(tags, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise TypeError("tags map str to str")
        message["tags"] = tags
    if namespace.history or namespace.allow_tags_filter:
        # Members handle it one by one: history positions it; tags filters may refuse it.
        if namespace.history and (delta or (delta is None and namespace.delta_publish)):
            message["delta"] = True
        if not namespace.history:  # names it for _push_frame: encoded once per process
            message["uid"] = secrets.token_hex(8)
        if not isinstance(data, bytes):
            _dumps(data)  # TypeError now, not in every member's handler
        result: Deferred[Any] = target.group_send(group, message)
        if not namespace.history:
            result.addCallback(lambda _: None)
        return result
    frame = _dumps({"push": {"channel": channel, "pub": _publication(message)}})
    sent: Deferred[Any] = target.broadcast(group, text=frame)
    sent.addCallback(lambda _: None)
    return sent


async def read_history(layer: Any, channel: str, limit: int, since: dict[str, Any] | None,
                       reverse: bool) -> dict[str, Any]:
    """Centrifugo's history pages: ``{"publications", "epoch", "offset"}``. ``limit`` 0:
    the position only; -1: all kept; N: at most N. Without ``since``, the oldest kept first
    (``reverse``: the newest first); with it, those after it, oldest first (``reverse``:
    those before it, newest first). ``PubSubError`` 112 when ``since`` is not in the
    stream kept (another epoch, or pushed out)."""
    from realtime.layers.history import check_since

    try:
        check_since(since)
    except TypeError:
        raise PubSubError(BAD_REQUEST) from None
    group = channel_group(channel)
    want = None if limit < 0 else min(limit, 100_000)
    # The layer gives the newest ``limit`` (and with since refuses more than ``limit``),
    # so it is asked for them all but for the newest.
    layer_limit = max(1, want) if want is not None and since is None and reverse else None
    try:
        kept = await layer.group_history(group, since=None if reverse else since,
                                         limit=layer_limit)
    except (ValueError, TypeError):
        raise PubSubError(BAD_REQUEST) from None
    messages = kept["messages"]
    if since is not None:
        if reverse:
            if since["epoch"] != kept["epoch"] or since["offset"] > kept["offset"]:
                raise PubSubError(UNRECOVERABLE_POSITION)
            messages = [m for m in messages if m["position"]["offset"] < since["offset"]]
        elif kept.get("recovered") is False:
            raise PubSubError(UNRECOVERABLE_POSITION)
    if reverse:
        messages = list(reversed(messages))
    if want is not None:
        messages = messages[:want]
    return {"publications": [_publication(m) for m in messages],
            "epoch": kept["epoch"], "offset": kept["offset"]}


# -- this process's clients: what the server API's info and channels ask every process --------

#: Connected clients of every carrier, held weakly (one that ends leaves by itself).
_CLIENTS: weakref.WeakSet[_Protocol] = weakref.WeakSet()
_STARTED = time.monotonic()
#: The layer surveys (``BaseChannelLayer.survey``) of the server API's ``info``, ``channels``.
INFO_SURVEY = "pubsub.info"
CHANNELS_SURVEY = "pubsub.channels"


def _clients_of(layer: Any) -> list[_Protocol]:
    return [client for client in list(_CLIENTS)
            if client._connected and client.channel_layer is layer
            and not client._conn.closing_or_closed]


def node_info(layer: Any, args: Any = None) -> dict[str, Any]:
    """This process's node in Centrifugo's ``info``: its clients (distinct users, anonymous
    ones as one, as Centrifugo counts), the channels they are in and their subscriptions."""
    from realtime import __version__

    clients = _clients_of(layer)
    channels: set[str] = set()
    for client in clients:
        channels.update(client._subs)
    return {"uid": layer.process_id, "name": f"{socket.gethostname()}_{os.getpid()}",
            "version": __version__, "num_clients": len(clients),
            "num_users": len({client.user for client in clients}),
            "num_channels": len(channels),
            "num_subs": sum(len(client._subs) for client in clients),
            "uptime": int(time.monotonic() - _STARTED)}


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Centrifugo's channel patterns (the gobwas/glob syntax its ``channels`` takes): ``*``
    any run of characters, ``?`` one, ``[abc]``, ``[a-z]``, ``[!abc]`` a class,
    ``{a,b}`` alternatives (nested too), ``\\`` the next character as it is.
    ``ValueError`` for an unclosed ``{`` or ``[``."""
    out: list[str] = []
    depth = 0
    at = 0
    while at < len(pattern):
        char = pattern[at]
        if char == "\\" and at + 1 < len(pattern):
            out.append(re.escape(pattern[at + 1]))
            at += 2
            continue
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            end = pattern.find("]", at + 2)
            if end < 0:
                raise ValueError(f"pattern {pattern!r}: '[' without ']'")
            inner = pattern[at + 1:end]
            negate = inner.startswith("!")
            inner = inner[1:] if negate else inner
            body = "".join("-" if c == "-" else re.escape(c) for c in inner)
            out.append(f"[{'^' if negate else ''}{body}]")
            at = end
        elif char == "{":
            depth += 1
            out.append("(?:")
        elif char == "," and depth:
            out.append("|")
        elif char == "}" and depth:
            depth -= 1
            out.append(")")
        else:
            out.append(re.escape(char))
        at += 1
    if depth:
        raise ValueError(f"pattern {pattern!r}: '{{' without '}}'")
    return re.compile("".join(out), re.DOTALL)


def channel_counts(layer: Any, pattern: Any = "") -> dict[str, int]:
    """This process's subscribers of each channel whose name matches ``pattern``
    (``compile_glob``; empty: every channel)."""
    if not isinstance(pattern, str):
        return {}
    try:
        match = compile_glob(pattern).fullmatch if pattern else None
    except (ValueError, re.error):
        return {}
    counts: Counter[str] = Counter()
    for client in _clients_of(layer):
        counts.update(channel for channel in client._subs
                      if match is None or match(channel))
    return dict(counts)


on_survey(INFO_SURVEY, node_info)
on_survey(CHANNELS_SURVEY, channel_counts)


# -- the consumer ------------------------------------------------------------------------------

@dataclass
class _Sub:
    channel: str
    group: str
    namespace: Namespace
    recoverable: bool
    join_leave: bool
    info: dict[str, Any]
    epoch: str = ""
    expiry: Any = None  # an IDelayedCall
    #: A server-side subscription (the connection token's ``channels``): the client
    #: cannot unsubscribe from it.
    server: bool = False
    #: Positioned (Centrifugo's ``positioned``): the client keeps its stream position and
    #: is told, as a recoverable one, when the stream lost its state.
    positioned: bool = False
    #: Delta compression negotiated (``delta: "fossil"``): every publication's data is
    #: sent as text (JSON) or bytes (Protobuf), those marked for it as a Fossil delta of
    #: the one before when the client has that one (``base``: its offset).
    delta: bool = False
    base: int | None = None
    #: The subscriber's tags filter (``realtime.pubsub_filter``): a publication whose tags
    #: it refuses is not sent to it.
    filter: Any = None


class _Protocol:
    """Centrifugo's client protocol, whatever carries it: its state, commands, pushes and
    layer events. ``PubSubConsumer`` carries it on a WebSocket, ``UniStreamConsumer`` on a
    streamed HTTP response; ``self._conn`` is the transport (a ``WebSocketConnection``, or
    ``_StreamConn``)."""

    scope: Any
    channel_layer: Any
    channel_name: Any
    _conn: Any

    #: None: the ``--namespace`` options (``realtime.pubsub.configure``).
    namespaces: ClassVar[Mapping[str, Namespace] | None] = None
    #: None: ``--pubsub-anonymous``. Whether a client may connect without a token.
    allow_anonymous: ClassVar[bool | None] = None
    #: The connection token's ``exp`` passed without a ``refresh``: close with this.
    token_expired_close: ClassVar[tuple[int, str]] = CLOSE_EXPIRED
    #: The drain (SIGTERM) closes the connection with Centrifugo's shutdown (reconnect),
    #: as the streams end (``WebSocketConnection.go_away``).
    drain_close: ClassVar[tuple[int, str]] = CLOSE_SHUTDOWN
    #: This client speaks the Protobuf format (it offered ``centrifuge-protobuf``): binary
    #: frames of length-prefixed messages (``realtime.pubsub_proto``); data fields arrive
    #: as ``from_bytes`` gives them, and hooks may return ``bytes`` for it.
    binary = False
    #: Centrifugo's unidirectional WebSocket (``UniPubSubConsumer``): no commands but the
    #: first message's connect request; the server writes bare pushes.
    unidirectional: ClassVar[bool] = False
    #: Centrifugo's name of the transport (the proxies' ``transport`` field).
    transport_name: ClassVar[str] = "websocket"

    # -- hooks ---------------------------------------------------------------------------------
    async def can_subscribe(self, channel: str, data: Any) -> bool | Granted:
        """Asked when neither a token nor the namespace lets the client in (Centrifugo's
        subscribe proxy, in-process), and always in a namespace with
        ``subscribe_proxy_enabled``; ``self.user`` is the connection's user id ("" when
        anonymous). Raise ``PubSubError`` for another error code. This one asks the
        subscribe proxy where the namespace enables it and returns its answer (a
        ``pubsub_proxy.Granted``, true: its ``info``, ``data``, ``override`` and
        ``expire_at`` go with the subscription; a subclass returns ``super()``'s to keep
        them), else refuses."""
        from realtime import pubsub_proxy

        namespace = _namespace(channel, self._namespaces())
        if pubsub_proxy.enabled("subscribe", namespace):
            return await pubsub_proxy.subscribe(self, channel, data)
        return False

    async def can_publish(self, channel: str, data: Any) -> bool | Granted:
        """Asked when the namespace does not let this client publish to ``channel``, and
        always in a namespace with ``publish_proxy_enabled``. This one asks the publish
        proxy there and returns its answer (a ``pubsub_proxy.Granted``, true: its ``data``
        replaces the client's, its ``tags`` go along), else refuses."""
        from realtime import pubsub_proxy

        namespace = _namespace(channel, self._namespaces())
        if pubsub_proxy.enabled("publish", namespace):
            return await pubsub_proxy.publish(self, channel, data)
        return False

    async def rpc(self, method: str, data: Any) -> Any:
        """A client's ``rpc`` command: return the result data (any JSON value; ``bytes``
        too for a Protobuf client). ``data`` is what ``from_bytes`` makes of a Protobuf
        client's bytes. This one asks the method's RPC proxy (``--proxy-rpc-endpoint`` for
        every method; with ``--rpc-namespace``, its namespace's: 104 for a namespace not
        configured, 108 where it does not enable its proxy). Without any RPC proxy it
        answers 108 (not available), as Centrifugo without an RPC handler (centrifuge's
        ``Client.handleRPC``); called as a subclass's ``super().rpc()``, 104 (method not
        found: the subclass is the handler, and it does not know the method)."""
        from realtime import pubsub_proxy

        proxy = pubsub_proxy.config()
        if proxy is not None and proxy.answers_rpc:
            return await pubsub_proxy.rpc(self, method, data)
        raise PubSubError(NOT_AVAILABLE if type(self).rpc is _Protocol.rpc
                          else METHOD_NOT_FOUND)

    async def on_message(self, data: Any) -> None:
        """A client's ``send`` (asynchronous message, no reply)."""

    # -- connection ------------------------------------------------------------------------------
    @property
    def _form(self) -> str:
        """How this client takes its pushes (``_JSON``, ``_PROTOBUF``, ``_UNI``)."""
        return _UNI if self.unidirectional else _PROTOBUF if self.binary else _JSON

    def _session_info(self) -> dict[str, Any]:
        """What the connect reply adds for a stream client's later requests
        (``StreamConsumer``: its ``session`` and ``node``)."""
        return {}

    async def pubsub_emulation(self, event: dict[str, Any]) -> None:
        """Emulation requests are a ``StreamConsumer``'s: anything else ignores them."""

    def _init_state(self) -> None:
        self.client_id = str(uuid.uuid4())
        self.user = ""
        self.conn_info: Any = None
        self._subs: dict[str, _Sub] = {}
        self._by_group: dict[str, _Sub] = {}
        self._connected = False
        self._claims: dict[str, Any] = {}
        self._ping_call: Any = None
        self._ponged = True
        #: _count_user counted this connection's user (the connect command's token).
        self._counted_user = False
        self._stale: Any = None
        self._uni_started = False
        #: The connect proxy's ``meta`` (sent back with ``--proxy-include-connection-meta``).
        self.conn_meta: Any = None
        #: When a proxied connection's ``expire_at`` comes (``realtime.pubsub_proxy``).
        self._proxy_refresh_call: Any = None
        #: The connect command's emulated headers for the proxies (``--proxy-emulated-
        #: headers``), and this connection's proxy calls waiting for a place.
        self._emulated_headers: dict[bytes, bytes] = {}
        self._proxy_waiting: set[Any] = set()

    def closed_now(self) -> None:
        """The socket is gone (told at once, before ``disconnect`` waits behind a running
        command): its proxy calls waiting for a place leave the queue (none: nothing)."""
        if getattr(self, "_proxy_waiting", None):
            from realtime import pubsub_proxy

            pubsub_proxy.drop_waiting(self)

    def _cleanup(self) -> None:
        """The connection is over: its timers go, and its proxy calls still queued."""
        self.closed_now()
        for name in ("_stale", "_ping_call", "_proxy_refresh_call"):
            call = getattr(self, name, None)
            if call is not None and call.active():
                call.cancel()
        for sub in getattr(self, "_subs", {}).values():
            if sub.expiry is not None and sub.expiry.active():
                sub.expiry.cancel()

    async def _uni_connect(self, text: str) -> None:
        """The unidirectional connect: ``text`` is a ConnectRequest (``token``, ``subs``
        with recovery positions, ...); the answer is a ``connect`` push, or a close code
        (``_UNI_CLOSES``: no error reply can reach such a client)."""
        self._uni_started = True
        try:
            params = json.loads(text, parse_constant=refuse_constant)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser
            params = None
        if not isinstance(params, dict):
            self._count("connect", str(BAD_REQUEST))
            self._conn.close(*CLOSE_BAD_REQUEST)
            return
        try:
            result = await self._cmd_connect(params)
            push = _dumps({"connect": {k: v for k, v in result.items() if k != "pong"}})
        except _Close as close:
            self._conn.close(*close.close)
            return
        except PubSubError as exc:
            self._count("connect", str(exc.code))
            self._conn.close(*_UNI_CLOSES.get(exc.code, CLOSE_BAD_REQUEST))
            return
        except Exception:
            log.failure("pubsub: a unidirectional connect failed")
            self._count("connect", str(INTERNAL))
            self._conn.close(*CLOSE_SERVER_ERROR)
            return
        self._count("connect", "ok")
        self._write(push)
        self._shutdown_if_draining()

    def _shutdown_if_draining(self) -> None:
        """A stream connected while the server drains (it began during the connect, or
        the request came after it began) ends at once with 3001: the client goes to
        another server (``_StreamConn.server_draining`` ends those connected before)."""
        if getattr(self._conn, "draining", False):
            self._conn.close(*CLOSE_SHUTDOWN)

    def _close_stale(self) -> None:
        self._stale = None
        if not self._connected:
            self._conn.close(*CLOSE_STALE)

    def _namespaces(self) -> Mapping[str, Namespace]:
        return self.namespaces if self.namespaces is not None else settings.pubsub_namespaces

    def _now(self) -> float:
        return float(self._conn.reactor.seconds())

    async def _run_frame(self, text_data: str | None, bytes_data: bytes | None) -> None:
        """The commands of one frame (a WebSocket message, a stream's first request, an
        emulation request): JSON, one per line, or Protobuf (``binary``); a frame of the
        other kind, or one that is not commands, closes the connection with 3501 after
        the commands before the bad one have run."""
        commands: list[Any]
        if self.binary:
            from realtime import pubsub_proto

            error: Exception | None
            if not bytes_data:  # a text frame, or an empty one (Centrifugo's bad request)
                commands, error = [], pubsub_proto.DecodeError("not a Protobuf frame")
            else:
                commands, error = pubsub_proto.decode_prefix(bytes_data,
                                                             MAX_COMMANDS_PER_FRAME)
            if error is not None:  # the ones before it run, then the close
                log.info("pubsub: a bad Protobuf frame: {error}", error=str(error))
                commands = [*commands, None]
        else:
            lines = ([line for line in text_data.split("\n") if line.strip()]
                     if text_data else [""])  # a binary frame, an empty one: 3501
            if len(lines) > MAX_COMMANDS_PER_FRAME:
                self._conn.close(*CLOSE_BAD_REQUEST)
                return
            commands = lines
        for command in commands:
            if self._conn.closing_or_closed:
                return
            if isinstance(command, str):
                try:
                    command = json.loads(command, parse_constant=refuse_constant)
                except (ValueError, RecursionError):  # not JSON, or nested past the parser
                    command = None
            if not isinstance(command, dict):
                self._conn.close(*CLOSE_BAD_REQUEST)
                return
            try:
                await self._command(command)
            except _Close as close:
                self._conn.close(*close.close)
                return

    async def _command(self, command: dict[str, Any]) -> None:
        if not command:
            self._ponged = True  # a pong to a server ping
            return
        ident = command.get("id", 0)
        if isinstance(ident, bool) or not isinstance(ident, int) or ident < 0:
            raise _Close(CLOSE_BAD_REQUEST)
        methods = [m for m in _METHODS if m in command]
        if not methods:
            if ident:
                self._reply(ident, error=PubSubError(METHOD_NOT_FOUND).reply())
                return
            raise _Close(CLOSE_BAD_REQUEST)
        method = methods[0]
        params = command[method]
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise _Close(CLOSE_BAD_REQUEST)
        if self.binary and isinstance(params.get("data"), bytes):
            params["data"] = from_bytes(params["data"])
        if method == "send":
            if self._connected:
                try:
                    await self.on_message(params.get("data"))
                except Exception:  # no reply to carry an error: logged, the socket stays
                    log.failure("pubsub: on_message failed")
            return
        if not ident:
            raise _Close(CLOSE_BAD_REQUEST)
        if method == "connect":
            if self._connected:
                raise _Close(CLOSE_BAD_REQUEST)
        elif not self._connected:
            raise _Close(CLOSE_BAD_REQUEST)
        try:
            result = await getattr(self, "_cmd_" + method)(params)
            reply = self._encode({"id": ident, method: result})
        except PubSubError as exc:
            self._count(method, str(exc.code))
            self._reply(ident, error=exc.reply())
            return
        except _Close:
            raise
        except Exception:
            # A hook that raised or returned what JSON cannot carry: this command fails
            # (Centrifugo's internal error), not the connection and its subscriptions.
            log.failure("pubsub: {method} failed", method=method)
            # Temporary, as Centrifugo's: the SDKs try again (a subscribe resubscribes).
            self._count(method, str(INTERNAL))
            self._reply(ident, error=PubSubError(INTERNAL, temporary=True).reply())
            return
        self._count(method, "ok")
        self._write(reply)

    def _count(self, method: str, result: str) -> None:
        """``realtime_pubsub_commands_total{method, result}`` (``--metrics``)."""
        stats = getattr(getattr(self._conn, "site", None), "stats", None)
        if stats is not None:
            stats.pubsub_commands[method, result] += 1

    def _encode(self, document: dict[str, Any]) -> str | bytes:
        """A reply or push in this client's format; ``TypeError`` for what it cannot carry."""
        if self.unidirectional and "push" in document:
            return _dumps(document["push"])  # bare pushes
        if self.binary:
            from realtime import pubsub_proto

            return pubsub_proto.encode(document)
        return _dumps(document)

    def _write(self, payload: str | bytes) -> None:
        if not self._conn.closing_or_closed:
            if isinstance(payload, str):
                self._conn.send_text(payload)
            else:
                self._conn.send_bytes(payload)

    def _reply(self, ident: int, **fields_: Any) -> None:
        try:
            payload = self._encode({"id": ident, **fields_})
        except TypeError:  # an error a hook made up that this format cannot carry
            log.failure("pubsub: a reply could not be encoded")
            payload = self._encode({"id": ident, "error": PubSubError(
                INTERNAL, temporary=True).reply()})
        self._write(payload)

    def _push(self, channel: str, **fields_: Any) -> None:
        self._write_push({"push": {"channel": channel, **fields_}})

    def _write_push(self, document: dict[str, Any]) -> None:
        """A push, or nothing (logged) when this client's format cannot carry it: the
        connection and its other pushes go on (JSON clients may have had it)."""
        try:
            payload = self._encode(document)
        except TypeError as exc:
            log.warn("pubsub: a push to {client} skipped: it cannot be encoded ({error})",
                     client=self.client_id, error=str(exc))
            return
        self._write(payload)

    # -- tokens ----------------------------------------------------------------------------------
    async def _verify(self, token: Any) -> dict[str, Any]:
        from realtime.tokens import InvalidToken, verify, verify_refetching

        if not isinstance(token, str) or not token:
            raise _Close(CLOSE_INVALID_TOKEN)
        if not settings.jwt_keys and settings.jwt_key_source is None:
            raise _Close(CLOSE_INVALID_TOKEN)  # nothing verifies tokens here

        def check() -> dict[str, Any]:
            return verify(token, settings.jwt_keys, self._now(), settings.jwt_audience,
                          settings.jwt_issuer, settings.jwt_leeway)

        try:
            return await verify_refetching(check, settings.jwt_key_source)
        except InvalidToken as exc:
            if str(exc) == "token expired":
                raise PubSubError(TOKEN_EXPIRED) from None
            log.info("pubsub: token refused: {reason}", reason=str(exc))
            raise _Close(CLOSE_INVALID_TOKEN) from None

    async def _verify_connection(self, token: Any) -> dict[str, Any]:
        """A connection token's claims: one with a ``channel`` claim is a subscription
        token, refused (3500) for connect and refresh, as Centrifugo refuses it."""
        claims = await self._verify(token)
        if claims.get("channel") is not None:
            log.info("pubsub: a subscription token (channel claim) offered as a "
                     "connection token")
            raise _Close(CLOSE_INVALID_TOKEN)
        return claims

    def _expiry(self, claims: dict[str, Any]) -> tuple[bool, int, float | None]:
        """(expires, ttl in whole seconds, the moment) of a connection or subscription:
        the token's ``expire_at`` when it has one (Centrifugo's claim: the token's ``exp``
        is still checked, but the connection or subscription lasts until ``expire_at``;
        ``0``: it does not expire: a one-time token), else its ``exp``."""
        if "expire_at" in claims:
            exp, leeway = claims["expire_at"], 0.0
            if isinstance(exp, bool) or not isinstance(exp, int | float):
                raise _Close(CLOSE_INVALID_TOKEN)
            if exp == 0:
                return False, 0, None
        else:
            exp, leeway = claims.get("exp"), settings.jwt_leeway
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return False, 0, None
        at = float(exp) + leeway
        return True, max(1, int(at - self._now())), at

    def _adopt(self, claims: dict[str, Any]) -> dict[str, Any]:
        from realtime.auth import User

        self._claims = claims
        expires, ttl, at = self._expiry(claims)
        self.scope["user"] = User(claims.get("sub"), claims=claims)
        if at is not None:
            self.scope["auth_expires_at"] = at + EXPIRED_CLOSE_DELAY
        else:
            self.scope.pop("auth_expires_at", None)
        self._conn.token_refreshed()
        return {"expires": True, "ttl": ttl} if expires else {}

    async def _cmd_connect(self, params: dict[str, Any]) -> dict[str, Any]:
        from realtime import pubsub_proxy

        token = params.get("token")
        result: dict[str, Any] = {"client": self.client_id, "version": _version()}
        user: Any = self.scope.get("user")
        claims: dict[str, Any] = {}
        granted: pubsub_proxy.Granted | None = None
        pubsub_proxy.take_emulated_headers(self, params)  # (for every proxy of this one)
        if token:
            claims = await self._verify_connection(token)
            sub = claims.get("sub", "")
            if not isinstance(sub, str):
                raise _Close(CLOSE_INVALID_TOKEN)
            known = getattr(user, "id", None) if getattr(user, "is_authenticated", False) \
                else None
            if known is not None and str(known) != sub:
                # Signed in at the handshake as someone else: one socket, one user (and
                # --max-connections-per-user counted the handshake's).
                log.info("pubsub: a connect token for {sub} on a socket of {user}", sub=sub,
                         user=str(known))
                raise _Close(CLOSE_INVALID_TOKEN)
            self.user = sub
            self.conn_info = claims.get("info")
        elif getattr(user, "is_authenticated", False) and getattr(user, "id", None):
            self.user = str(user.id)  # a handshake token or session (middleware)
        elif pubsub_proxy.configured("connect"):
            # Centrifugo's connect proxy: the backend names the user (the cookie it got).
            try:
                granted = await pubsub_proxy.connect(self, params)
            except PubSubError:
                if self.unidirectional:  # no error reply reaches it: Centrifugo's 3004
                    raise _Close(CLOSE_SERVER_ERROR) from None
                raise
            self.user, self.conn_meta = granted.user, granted.meta
            self.conn_info = granted.info[1] if granted.info[0] else None
        else:
            anonymous = (self.allow_anonymous if self.allow_anonymous is not None
                         else settings.pubsub_anonymous)
            if not anonymous:
                raise PubSubError(UNAUTHORIZED)
        if (token or granted is not None) and self.user:
            self._count_user(claims)
        try:
            await self._join_user_group()
            if token and claims.get("channels") is not None:
                result["subs"] = await self._server_subs(claims["channels"],
                                                         params.get("subs"))
            elif granted is not None and granted.channels:
                result["subs"] = await self._server_subs(granted.channels,
                                                         params.get("subs"))
        except Exception:
            await self._undo_connect()
            raise
        if self._conn.closing_or_closed:
            # Gone while the connect waited (a token's key, the layer): nothing is left
            # behind (groups, presence, the user's place, timers).
            await self._undo_connect()
            raise _Close(CLOSE_BAD_REQUEST)
        if token:
            result.update(self._adopt(claims))
        self._connected = True
        if granted is not None:
            if granted.data[0]:
                result["data"] = granted.data[1]
            # No expires/ttl for the client: the server asks the refresh proxy itself.
            pubsub_proxy.arm_refresh(self, granted.expire_at)
        _CLIENTS.add(self)
        if self._stale is not None and self._stale.active():
            self._stale.cancel()
        self._stale = None
        result.update(self._session_info())
        if PING_INTERVAL > 0:
            result.update(ping=max(1, round(PING_INTERVAL)), pong=True)
            self._ponged = True
            self._ping_call = self._conn.reactor.callLater(PING_INTERVAL, self._ping)
        return result

    def _count_user(self, claims: dict[str, Any]) -> None:
        """``--max-connections-per-user`` for a user who signs in with the connect command
        (the handshake counted only users signed in there): Centrifugo's
        ``user_connection_limit``, closed with 3504."""
        conn = self._conn
        if not conn.config.max_connections_per_user or conn.user_key is not None:
            return
        if conn.finished:
            # Closed while the connect waited (for a token's key): site.closed() has run,
            # and nothing would give the place back.
            raise _Close(CLOSE_CONNECTION_LIMIT)
        from realtime.auth import User

        if not conn.site.count_user(conn, User(self.user, claims=claims)):
            raise _Close(CLOSE_CONNECTION_LIMIT)
        self._counted_user = True

    async def _undo_connect(self) -> None:
        """A connect that failed after joining groups (a server-side subscription refused,
        say): leave them all, so the client, not connected, gets nothing from them, and
        may connect again."""
        groups = [sub.group for sub in self._subs.values()]
        for sub in list(self._subs.values()):
            self._forget(sub)
        if self._counted_user:  # --max-connections-per-user: not this user's connection
            self._counted_user = False
            self._conn.site.uncount_user(self._conn)
        if self.user:
            groups.append(user_group(self.user))
        self.user, self.conn_info, self.conn_meta = "", None, None
        for group in groups:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception as exc:  # the layer drops it on close
                log.warn("pubsub: leaving {group} failed: {error}", group=group,
                         error=str(exc) or type(exc).__name__)

    async def _server_subs(self, channels: Any, asked: Any) -> dict[str, Any]:
        """Server-side subscriptions: the connection token's ``channels`` (Centrifugo's
        claim), joined before the connect reply, whose ``subs`` has their results; a
        client coming back asks to recover them in its connect's ``subs``."""
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise _Close(CLOSE_INVALID_TOKEN)
        asked = asked if isinstance(asked, dict) else {}
        results: dict[str, Any] = {}
        for channel in dict.fromkeys(channels):
            check_channel(channel)
            if channel in self._subs:
                continue
            request = asked.get(channel)
            since = None
            if isinstance(request, dict):
                try:
                    since = _asked_position(request)
                except PubSubError:  # a bad position: no recovery, the rest connects
                    since = None
            results[channel] = await self._server_sub(
                channel, _namespace(channel, self._namespaces()), {}, since)
        return results

    async def _server_sub(self, channel: str, namespace: Namespace, claims: dict[str, Any],
                          since: dict[str, Any] | None) -> dict[str, Any]:
        """A server-side subscription (the token's ``channels``, the server API's
        ``subscribe``): recoverable with the namespace's recovery, from ``since``."""
        recoverable = namespace.history and (namespace.force_recovery
                                             or namespace.allow_recovery)
        return await self._open(
            channel, namespace, claims, recoverable,
            namespace.join_leave and namespace.force_push_join_leave,
            since if recoverable else None, reject=False, server=True,
            positioned=namespace.force_positioning and not recoverable)

    def _ping(self) -> None:
        """Centrifugo's application-level ping: ``{}``; the client's pong is ``{}`` too."""
        self._ping_call = None
        if self._conn.closing_or_closed:
            return
        if not self._ponged and not self.unidirectional:  # no pongs from those
            self._conn.close(*CLOSE_NO_PONG)
            return
        self._ponged = False
        self._write(_BINARY_PING if self.binary else "{}")
        self._ping_call = self._conn.reactor.callLater(PING_INTERVAL, self._ping)

    async def _cmd_refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        if not self._claims:
            raise PubSubError(BAD_REQUEST, "this connection has no token to refresh")
        try:
            claims = await self._verify_connection(params.get("token"))
        except PubSubError as exc:
            if exc.code != TOKEN_EXPIRED:
                raise
            # As Centrifugo: the connection expires (3005, reconnect), and the client's
            # connect then asks for a fresh token; an error reply (109) would end it for
            # good in centrifuge-js.
            raise _Close(CLOSE_EXPIRED) from None
        if (claims.get("sub", ""), claims.get("iss")) != (self.user, self._claims.get("iss")):
            raise _Close(CLOSE_INVALID_TOKEN)
        info = claims.get("info")
        if info is not None:
            self.conn_info = info
        result = {"client": self.client_id, "version": _version()}
        expires = self._adopt(claims)
        result.update(expires or {"expires": False})
        return result

    # -- subscriptions ---------------------------------------------------------------------------
    def _client_info(self, chan_info: Any = None) -> dict[str, Any]:
        info: dict[str, Any] = {"user": self.user, "client": self.client_id}
        if self.conn_info is not None:
            info["conn_info"] = self.conn_info
        if chan_info is not None:
            info["chan_info"] = chan_info
        return info

    async def _sub_token(self, channel: str, token: Any) -> dict[str, Any]:
        claims = await self._verify(token)
        if claims.get("channel") != channel or claims.get("sub", "") != self.user:
            raise PubSubError(PERMISSION_DENIED)
        return claims

    def _arm_sub_expiry(self, sub: _Sub, at: float | None) -> None:
        if sub.expiry is not None and sub.expiry.active():
            sub.expiry.cancel()
        sub.expiry = None
        if at is not None and not self._conn.closing_or_closed:  # none for a gone client
            sub.expiry = self._conn.reactor.callLater(
                max(0.0, at + EXPIRED_CLOSE_DELAY - self._now()), self._conn.close,
                *CLOSE_SUB_EXPIRED)

    async def _cmd_subscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        from realtime import pubsub_proxy

        channel = check_channel(params.get("channel"))
        if channel in self._subs:
            raise PubSubError(ALREADY_SUBSCRIBED)
        namespace = _namespace(channel, self._namespaces())
        token = params.get("token")
        claims: dict[str, Any] = {}
        granted: pubsub_proxy.Granted | None = None
        if token:
            claims = await self._sub_token(channel, token)
        elif channel.startswith("$"):
            raise PubSubError(PERMISSION_DENIED)
        elif namespace.allow_user_limited_channels and "#" in channel:
            # A user-limited channel is its users' alone (without a token): neither the
            # namespace's allow_subscribe_* nor can_subscribe is asked (Centrifugo's order).
            if not self._user_limited(channel, namespace):
                raise PubSubError(PERMISSION_DENIED)
        elif namespace.subscribe_proxy_enabled or not self._allowed(
                namespace.allow_subscribe_for_client, namespace.allow_subscribe_for_anonymous):
            # (with the subscribe proxy enabled the backend decides: Centrifugo's order)
            answer = await self.can_subscribe(channel, params.get("data"))
            if not answer:
                raise PubSubError(PERMISSION_DENIED)
            if isinstance(answer, pubsub_proxy.Granted):
                granted = answer
        if granted is not None:
            namespace = pubsub_proxy.overridden(namespace, granted.override)
            if granted.info[0]:
                claims = {"info": granted.info[1]}
        # What the client asks for, as Centrifugo grants it: recovery with allow_recovery or
        # a right to the channel's history, join/leave pushes with a right to its presence
        # (who is there), each as the subscriber it is about to be.
        reads_history = self._reads_history(namespace, subscribed=True)
        recoverable = namespace.history and (namespace.force_recovery or (
            params.get("recoverable") is True and (namespace.allow_recovery or reads_history)))
        join_leave = namespace.join_leave and (namespace.force_push_join_leave or (
            params.get("join_leave") is True
            and self._reads_presence(namespace, subscribed=True)))
        since = _asked_position(params) if recoverable else None
        flag = params.get("flag", 0)
        reject = isinstance(flag, int) and bool(flag & FLAG_REJECT_UNRECOVERED)
        positioned = namespace.history and not recoverable and (
            namespace.force_positioning or (params.get("positioned") is True and (
                namespace.allow_positioning or reads_history)))
        tags_filter = self._tags_filter(params.get("tf"), namespace)
        # Delta compression, as Centrifugo grants it: a type the namespace allows, in a
        # subscription that recovers or keeps its position and filters nothing (else it is
        # not negotiated and the client gets whole publications).
        delta = (params.get("delta") in namespace.allowed_delta_types
                 and bool(recoverable or positioned) and tags_filter is None)
        result = await self._open(channel, namespace, claims, bool(recoverable), join_leave,
                                  since, reject, positioned=bool(positioned), delta=delta,
                                  tags_filter=tags_filter)
        if granted is not None:
            if granted.data[0]:
                result["data"] = granted.data[1]
            sub = self._subs.get(channel)
            if sub is not None and granted.expire_at is not None:
                pubsub_proxy.arm_sub_refresh(self, sub, granted.expire_at)
        return result

    @staticmethod
    def _tags_filter(tf: Any, namespace: Namespace) -> Any:
        """A subscribe request's ``tf`` compiled (None without one); 107 for one the
        namespace does not allow (``allow_tags_filter``) or that does not compile."""
        if tf is None or tf == {}:  # (an empty Protobuf FilterNode is no filter)
            return None
        if not namespace.allow_tags_filter:
            raise PubSubError(BAD_REQUEST, "bad request: tags filters are not allowed in "
                              f"namespace {namespace.name!r}")
        from realtime.pubsub_filter import FilterError, compile_filter

        try:
            return compile_filter(tf)
        except FilterError as exc:
            raise PubSubError(BAD_REQUEST, f"bad request: {exc}") from None

    async def _open(self, channel: str, namespace: Namespace, claims: dict[str, Any],
                    recoverable: bool, join_leave: bool, since: dict[str, Any] | None,
                    reject: bool, server: bool = False,
                    positioned: bool = False, delta: bool = False,
                    tags_filter: Any = None) -> dict[str, Any]:
        """Join the channel's group: the subscribe result (a server-side subscription's
        too: the connect reply's ``subs``)."""
        group = channel_group(channel)
        info = self._client_info(claims.get("info"))
        sub = _Sub(channel, group, namespace, recoverable, join_leave, info, server=server,
                   positioned=positioned, delta=delta, filter=tags_filter)
        presence = info if namespace.presence or namespace.join_leave else None
        self._subs[channel] = sub
        self._by_group[group] = sub
        try:
            joined = await self._join(group, presence, since)
        except BaseException:
            self._forget(sub)
            raise
        if self._conn.closing_or_closed:  # gone while it joined: no timers for it
            self._forget(sub)
            raise _Close(CLOSE_BAD_REQUEST)
        result: dict[str, Any] = {}
        expires, ttl, at = self._expiry(claims)
        if expires:
            result.update(expires=True, ttl=ttl)
        if delta:
            result["delta"] = True
        self._arm_sub_expiry(sub, at)
        if isinstance(joined, dict) and namespace.history:
            sub.epoch = joined["epoch"]
            if positioned:
                result.update(positioned=True, epoch=joined["epoch"], offset=joined["offset"])
            if recoverable:
                result.update(recoverable=True, epoch=joined["epoch"])
                if since is None:
                    result["offset"] = joined["offset"]
                elif joined.get("recovered"):
                    # The missed ones follow as pushes, each with its offset.
                    result.update(offset=since["offset"], recovered=True, was_recovering=True)
                else:
                    if reject:
                        self._forget(sub)
                        await self.channel_layer.group_discard(group, self.channel_name)
                        raise PubSubError(UNRECOVERABLE_POSITION)
                    result.update(offset=joined["offset"], recovered=False,
                                  was_recovering=True)
        return result

    async def _join(self, group: str, presence: Any, since: Any) -> Any:
        from realtime.layers import TooManyGroups

        try:
            return await self.channel_layer.group_add(group, self.channel_name,
                                                      presence=presence, since=since)
        except TooManyGroups:
            raise PubSubError(LIMIT_EXCEEDED) from None
        except (ValueError, TypeError):
            raise PubSubError(BAD_REQUEST) from None

    def _forget(self, sub: _Sub) -> None:
        self._subs.pop(sub.channel, None)
        if self._by_group.get(sub.group) is sub:
            del self._by_group[sub.group]
        self._arm_sub_expiry(sub, None)

    def _allowed(self, for_client: bool, for_anonymous: bool) -> bool:
        """Centrifugo's rule: ``allow_*_for_client`` lets signed-in clients in, and anonymous
        ones too when ``allow_*_for_anonymous`` extends it (alone, that does nothing), so a
        configuration ported from Centrifugo opens exactly what it opened there."""
        return for_client and (bool(self.user) or for_anonymous)

    def _user_limited(self, channel: str, namespace: Namespace) -> bool:
        if not namespace.allow_user_limited_channels or "#" not in channel or not self.user:
            return False
        return self.user in channel.rpartition("#")[2].split(",")

    async def _cmd_unsubscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = check_channel(params.get("channel"))
        sub = self._subs.get(channel)
        if sub is not None and not sub.server:  # a server-side one stays (as Centrifugo's)
            self._forget(sub)
            await self.channel_layer.group_discard(sub.group, self.channel_name)
        return {}

    async def _cmd_sub_refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = check_channel(params.get("channel"))
        sub = self._subs.get(channel)
        if sub is None:
            raise PubSubError(PERMISSION_DENIED)
        try:
            claims = await self._sub_token(channel, params.get("token"))
        except PubSubError as exc:
            if exc.code != TOKEN_EXPIRED:
                raise
            # As a connection refresh: the subscription expires (3006, the SDK reconnects
            # and subscribes with a fresh token); 109 here would end it for good.
            raise _Close(CLOSE_SUB_EXPIRED) from None
        expires, ttl, at = self._expiry(claims)
        self._arm_sub_expiry(sub, at)
        return {"expires": True, "ttl": ttl} if expires else {}

    # -- publish, history, presence ----------------------------------------------------------------
    async def _cmd_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        from realtime import pubsub_proxy

        channel = check_channel(params.get("channel"))
        if "data" not in params:
            raise PubSubError(BAD_REQUEST, "data required")
        data = params["data"]
        namespace = _namespace(channel, self._namespaces())
        tags = None
        if namespace.publish_proxy_enabled or not self._reads(
                channel in self._subs, namespace.allow_publish_for_subscriber,
                namespace.allow_publish_for_client, namespace.allow_publish_for_anonymous):
            granted = await self.can_publish(channel, data)
            if not granted:
                raise PubSubError(PERMISSION_DENIED)
            if isinstance(granted, pubsub_proxy.Granted):  # its data instead, its tags
                if granted.data[0]:
                    data = granted.data[1]
                tags = granted.tags
        sub = self._subs.get(channel)
        # The connection's info as it is now (a server API refresh may have changed it),
        # with the subscription's own chan_info.
        info = self._client_info(sub.info.get("chan_info") if sub is not None else None)
        try:
            await publish(channel, data, info, layer=self.channel_layer, tags=tags)
        except TypeError:
            raise PubSubError(BAD_REQUEST) from None
        return {}

    def _reads(self, subscribed: bool, subscriber: bool, client: bool, anonymous: bool) -> bool:
        """Whether this client may publish to, or read the history or presence of, a
        channel, given the namespace's ``allow_*_for_subscriber``/``_for_client``/
        ``_for_anonymous``."""
        return self._allowed(subscriber and subscribed, anonymous) or self._allowed(client,
                                                                                   anonymous)

    def _reads_history(self, namespace: Namespace, subscribed: bool) -> bool:
        return self._reads(subscribed, namespace.allow_history_for_subscriber,
                           namespace.allow_history_for_client,
                           namespace.allow_history_for_anonymous)

    def _reads_presence(self, namespace: Namespace, subscribed: bool) -> bool:
        return self._reads(subscribed, namespace.allow_presence_for_subscriber,
                           namespace.allow_presence_for_client,
                           namespace.allow_presence_for_anonymous)

    async def _cmd_history(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = check_channel(params.get("channel"))
        namespace = _namespace(channel, self._namespaces())
        if not namespace.history:
            raise PubSubError(NOT_AVAILABLE)
        if not self._reads_history(namespace, subscribed=channel in self._subs):
            raise PubSubError(PERMISSION_DENIED)
        limit = params.get("limit", 0)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise PubSubError(BAD_REQUEST)
        since = params.get("since")
        if since is not None:
            if not isinstance(since, dict):
                raise PubSubError(BAD_REQUEST)
            since = {"epoch": since.get("epoch", ""), "offset": since.get("offset", 0)}
        return await read_history(self.channel_layer, channel, limit, since,
                                  params.get("reverse") is True)

    async def _cmd_presence(self, params: dict[str, Any]) -> dict[str, Any]:
        members = await self._presence(params)
        return {"presence": {info.get("client", name): info for name, info in members.items()}}

    async def _cmd_presence_stats(self, params: dict[str, Any]) -> dict[str, Any]:
        members = await self._presence(params)
        users = {info.get("user", "") for info in members.values()}
        return {"num_clients": len(members), "num_users": len(users)}

    async def _presence(self, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        channel = check_channel(params.get("channel"))
        namespace = _namespace(channel, self._namespaces())
        if not namespace.presence:
            raise PubSubError(NOT_AVAILABLE)
        if not self._reads_presence(namespace, subscribed=channel in self._subs):
            raise PubSubError(PERMISSION_DENIED)
        members: dict[str, dict[str, Any]] = await self.channel_layer.group_presence(
            channel_group(channel))
        return members

    async def _cmd_rpc(self, params: dict[str, Any]) -> dict[str, Any]:
        method = params.get("method", "")
        if not isinstance(method, str):
            raise PubSubError(BAD_REQUEST)
        data = await self.rpc(method, params.get("data"))
        if isinstance(data, bytes) and not self.binary:
            data = from_bytes(data)  # JSON text as JSON; other bytes: error 100
        return {"data": data} if data is not None else {}

    async def _cmd_ping(self, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    # -- layer events ------------------------------------------------------------------------------
    def pubsub_pub(self, event: dict[str, Any]) -> None:
        """A publication in a history channel (``publish``): pushed with its offset. A plain
        method, as the join/leave handlers: no coroutine per member (benchmarks/README,
        step 17)."""
        group = event.get("group")
        sub = self._by_group.get(group) if isinstance(group, str) else None
        if sub is None:
            sub = self._subs.get(event.get("channel", ""))
        if sub is None:
            return
        position = event.get("position")
        if ((sub.recoverable or sub.positioned) and isinstance(position, dict) and sub.epoch
                and position.get("epoch") != sub.epoch):
            # A new epoch (history lost): the client must resubscribe and recover.
            self._lost(sub)
            return
        if sub.filter is not None and not self._passes(sub, event.get("tags")):
            return
        if not self._conn.closing_or_closed:
            try:
                payload = (_delta_push(sub, event, self._form) if sub.delta
                           else _push_frame(sub.channel, event, self._form))
            except (TypeError, UnicodeDecodeError) as exc:  # one this format cannot carry
                sub.base = None  # (skipped: the next one goes whole)
                log.warn("pubsub: a publication in {channel} skipped for {client}: it "
                         "cannot be encoded ({error})", channel=sub.channel,
                         client=self.client_id, error=str(exc))
                return
            dropped = self._conn.dropped
            self._write(payload)
            if sub.delta and self._conn.dropped != dropped:
                # --slow-consumer drop skipped it: it is no base for the next delta.
                sub.base = None

    @staticmethod
    def _passes(sub: _Sub, tags: Any) -> bool:
        """Whether a publication's tags pass the subscriber's filter; tags that are no
        str-to-str mapping (a publisher that did not go through ``publish``) do not."""
        if tags is None:
            tags = {}
        try:
            return bool(sub.filter(tags))
        except (TypeError, AttributeError, ValueError):
            return False

    def presence_join(self, event: dict[str, Any]) -> None:
        sub = self._by_group.get(event.get("group", ""))
        if sub is not None and sub.join_leave:
            self._push(sub.channel, join={"info": event.get("info") or {}})

    def presence_leave(self, event: dict[str, Any]) -> None:
        sub = self._by_group.get(event.get("group", ""))
        if sub is not None and sub.join_leave:
            self._push(sub.channel, leave={"info": event.get("info") or {}})

    async def layer_gap(self, event: dict[str, Any]) -> None:
        """The layer lost messages of a group (its Redis connection dropped): a recoverable
        subscription is told to resubscribe, which recovers what history still has."""
        sub = self._by_group.get(event.get("group", ""))
        if sub is not None and (sub.recoverable or sub.positioned):
            self._lost(sub)

    def _lost(self, sub: _Sub) -> None:
        if sub.server:
            # The client cannot resubscribe to a server-side subscription (the SDKs drop
            # it at an unsubscribe push): as Centrifugo, close 3010 and the reconnect
            # recovers it (the connect's subs).
            self._conn.close(*CLOSE_INSUFFICIENT_STATE)
            return
        self._forget(sub)
        left = self.channel_layer.group_discard(sub.group, self.channel_name)
        if isinstance(left, Deferred):  # the layer away: its membership ends with the socket
            left.addErrback(lambda failure: log.info(
                "pubsub: leaving {group} failed: {error}", group=sub.group,
                error=failure.getErrorMessage()))
        self._push(sub.channel, unsubscribe={"code": UNSUB_INSUFFICIENT_STATE,
                                             "reason": "insufficient state"})

    # -- the server API's unsubscribe and disconnect (realtime.pubsub_api) -----------------------
    async def _join_user_group(self) -> None:
        """A connection with a user id joins ``user_group(user)`` before its connect
        reply, so the server API reaches it from then on (not counted against
        ``--max-groups-per-connection``)."""
        if not self.user:
            return
        try:
            await self.channel_layer.group_add(user_group(self.user), self.channel_name)
        except Exception as exc:
            log.warn("pubsub: joining the group of user {user!r} failed: {error}",
                     user=self.user, error=str(exc) or type(exc).__name__)
            raise PubSubError(INTERNAL, temporary=True) from None

    def _addressed(self, event: dict[str, Any]) -> bool:
        """Whether a user-group event is for this connection (``client``, ``whitelist``)."""
        client = event.get("client")
        if client and client != self.client_id:
            return False
        whitelist = event.get("whitelist")
        return not (isinstance(whitelist, list) and self.client_id in whitelist)

    async def pubsub_unsubscribe(self, event: dict[str, Any]) -> None:
        """The server API's ``unsubscribe``: leave ``channel``, push ``unsubscribe``."""
        sub = self._subs.get(event.get("channel", ""))
        if sub is None or not self._addressed(event):
            return
        self._forget(sub)
        code, reason = UNSUB_SERVER
        self._push(sub.channel, unsubscribe={"code": code, "reason": reason})
        try:
            await self.channel_layer.group_discard(sub.group, self.channel_name)
        except Exception as exc:  # it left the channel here; the layer drops it on close
            log.warn("pubsub: leaving {group} failed: {error}", group=sub.group,
                     error=str(exc) or type(exc).__name__)

    async def pubsub_subscribe(self, event: dict[str, Any]) -> None:
        """The server API's ``subscribe``: a server-side subscription of this connection
        (the client cannot unsubscribe from it; lost with the connection, as in
        Centrifugo), announced with a ``subscribe`` push, the SDKs' server-side
        ``subscribed`` event; ``override`` sets namespace options for it."""
        channel = event.get("channel")
        if (not self._connected or not isinstance(channel, str) or channel in self._subs
                or not self._addressed(event)):
            return
        try:
            namespace = _namespace(channel, self._namespaces())
            override = event.get("override")
            if isinstance(override, dict) and override:
                namespace = replace(namespace, **override)
                if not namespace.history:  # recovery and positioning need history
                    namespace = replace(namespace, force_recovery=False,
                                        force_positioning=False)
            claims = {"info": event["info"]} if "info" in event else {}
            result = await self._server_sub(channel, namespace, claims, event.get("since"))
        except _Close:  # the connection went away meanwhile
            return
        except PubSubError as exc:
            log.info("pubsub: the server API's subscribe to {channel} refused for {client}: "
                     "{error}", channel=channel, client=self.client_id, error=exc.message)
            return
        push: dict[str, Any] = {key: result[key] for key in (
            "recoverable", "epoch", "offset", "positioned") if key in result}
        if event.get("data") is not None:
            push["data"] = event["data"]
        self._push(channel, subscribe=push)

    def pubsub_refresh(self, event: dict[str, Any]) -> None:
        """The server API's ``refresh``: ``expired`` closes the connection with 3005 (the
        SDK reconnects with a fresh token); else it lasts until ``expire_at`` (Unix seconds;
        absent: it no longer expires), told with a ``refresh`` push."""
        if not self._connected or not self._addressed(event):
            return
        if event.get("expired"):
            self._conn.close(*CLOSE_EXPIRED)
            return
        if "info" in event:  # the connection's info from now on (what it publishes, joins)
            self.conn_info = event["info"]
        at = event.get("expire_at")
        if isinstance(at, int | float) and not isinstance(at, bool) and at > 0:
            now = self._now()
            if at <= now:  # already past: expired now, as Centrifugo does
                self._conn.close(*CLOSE_EXPIRED)
                return
            at = min(float(at), now + MAX_TTL)
            self.scope["auth_expires_at"] = at + EXPIRED_CLOSE_DELAY
            refresh: dict[str, Any] = {"expires": True, "ttl": max(1, int(at - now))}
        else:
            self.scope.pop("auth_expires_at", None)
            refresh = {"expires": False}
        self._conn.token_refreshed()
        self._write_push({"push": {"refresh": refresh}})

    async def pubsub_disconnect(self, event: dict[str, Any]) -> None:
        """The server API's ``disconnect`` of some of a user's connections (``client``,
        ``whitelist``; all of them go by ``group_close``)."""
        if self._addressed(event):
            self._conn.close(event.get("code", CLOSE_FORCE_DISCONNECT[0]),
                             event.get("reason", CLOSE_FORCE_DISCONNECT[1]))


class PubSubConsumer(_Protocol, AsyncWebsocketConsumer):
    """Centrifugo's bidirectional protocol (JSON, or Protobuf for a client that offers
    ``centrifuge-protobuf``: ``binary``): ``connect``, ``subscribe``,
    ``unsubscribe``, ``publish``, ``presence``, ``presence_stats``, ``history``,
    ``refresh``, ``sub_refresh``, ``rpc``, ``send`` and pings, with namespace permissions
    and connection and subscription JWTs (``--jwt-key`` and the other ``--jwt-*`` options).

    Subclass it to decide in Python what Centrifugo asks an HTTP proxy for:
    ``can_subscribe``, ``can_publish``, ``rpc``, ``on_message``.
    """

    async def connect(self) -> None:
        self._init_state()
        if self.unidirectional:
            await self._connect_unidirectional()
            return
        if PROTOBUF_SUBPROTOCOL in (self.scope.get("subprotocols") or ()):
            from realtime import pubsub_proto

            pubsub_proto.schema()  # built at the first such client, not at start-up
            self.binary = True
            await self.accept(PROTOBUF_SUBPROTOCOL)
            # Publications of channels without history are broadcast() as JSON frames:
            # this socket gets each once translated (for all such sockets of the process).
            self._conn.translate_broadcasts(_TRANSLATIONS[self._form])
        else:
            await self.accept()
        self._stale = self._conn.reactor.callLater(STALE_AFTER, self._close_stale)

    @staticmethod
    def _disconnect_push(code: int, reason: str | None) -> str:
        """The unidirectional WebSocket's last message: Centrifugo's disconnect push."""
        return _dumps({"disconnect": {"code": code, "reason": reason or ""}})

    async def _connect_unidirectional(self) -> None:
        await self.accept()
        # broadcast() frames of channels without history wrap their push as for the
        # bidirectional clients: this socket gets each bare (translated once per frame).
        self._conn.translate_broadcasts(_TRANSLATIONS[self._form])
        # Every close the server makes is told in a disconnect push first (a browser's
        # WebSocket hides the close frame's code behind an event; Centrifugo >= 6.5.1).
        self._conn.close_notice = self._disconnect_push
        query = parse_qs(self.scope.get("query_string", b"").decode("utf-8", "replace"))
        asked = query.get("cf_connect")
        if asked:  # Centrifugo's connect request in the URL (as for its uni_sse)
            await self._uni_connect(asked[0])
            return
        self._stale = self._conn.reactor.callLater(STALE_AFTER, self._close_stale)

    async def disconnect(self, code: int) -> None:
        self._cleanup()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """One frame: JSON commands, one per line (text frames), or Protobuf ones (binary
        frames, ``binary``); a frame of the other kind, or one that is not commands, closes
        the connection with 3501 after the commands before the bad one have run."""
        if self.unidirectional:
            # The first message is the connect request; anything after it is ignored, as
            # Centrifugo does (a client's keep-alive messages, say).
            if not self._uni_started:
                if text_data is None:
                    self._conn.close(*CLOSE_BAD_REQUEST)
                    return
                await self._uni_connect(text_data)
            return
        await self._run_frame(text_data, bytes_data)


_METHODS = ("connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats",
            "history", "ping", "send", "rpc", "refresh", "sub_refresh")


#: A server ping in the Protobuf format: an empty ``Reply``, length-prefixed.
_BINARY_PING = b"\x00"

#: What a client takes its pushes as (``_Protocol._form``): the JSON protocol's, the
#: Protobuf protocol's, or bare JSON pushes (unidirectional).
_JSON, _PROTOBUF, _UNI = "json", "protobuf", "uni"

#: The push frames of the last publications of history channels, by (channel, epoch,
#: offset, form), which name one publication in one form: encoded once for all the
#: members of a process.
_PUSHES: dict[tuple[str, Any, int, str], str | bytes] = {}


def _push_frame(channel: str, event: dict[str, Any], form: str = _JSON) -> str | bytes:
    position = event.get("position")
    key = None
    if isinstance(position, dict) and isinstance(position.get("offset"), int):
        key = (channel, position.get("epoch"), position["offset"], form)
    elif isinstance(uid := event.get("uid"), str):  # a tags-filter namespace's, no history
        key = (channel, uid, -1, form)
    if key is not None and (found := _PUSHES.get(key)) is not None:
        return found
    return _encoded({"channel": channel, "pub": _publication(event)}, form, key)


def _encoded(push: dict[str, Any], form: str, key: tuple[str, Any, int, str] | None
             ) -> str | bytes:
    """A push as ``form`` takes it, kept in ``_PUSHES`` under ``key`` (the last 64)."""
    if form == _PROTOBUF:
        from realtime import pubsub_proto

        payload: str | bytes = pubsub_proto.encode({"push": push})
    else:
        payload = _dumps(push if form == _UNI else {"push": push})
    if key is not None:
        if len(_PUSHES) >= 64:
            del _PUSHES[next(iter(_PUSHES))]
        _PUSHES[key] = payload
    return payload


class _Chain:
    """A history channel's last publications' data as a delta subscriber has it (JSON
    text or the bytes), by offset, and the deltas between them: made once per process."""

    KEEP = 4
    #: What a chain costs besides its bytes (its dicts, its key), counted in ``size``.
    OVERHEAD = 1024
    #: The bytes every chain of the process keeps (``_trim_chains``).
    total = 0

    def __init__(self) -> None:
        self.targets: dict[int, bytes] = {}
        #: offset -> the delta from the one before, or None where it was not worth it.
        self.deltas: dict[int, bytes | None] = {}
        self.size = self.OVERHEAD
        _Chain.total += self.OVERHEAD

    def _grow(self, added: int) -> None:
        self.size += added
        _Chain.total += added

    def target(self, offset: int, data: Any) -> bytes:
        found = self.targets.get(offset)
        if found is None:
            found = data if isinstance(data, bytes) else _dumps(data).encode()
            self.targets[offset] = found
            self._grow(len(found))
            while len(self.targets) > self.KEEP:
                oldest = min(self.targets)
                dropped = self.deltas.pop(oldest, None)
                self._grow(-len(self.targets.pop(oldest)) - len(dropped or b""))
        return found

    def delta(self, offset: int, text: bool) -> bytes | None:
        """The delta from ``offset - 1`` to ``offset``; None without the one before, for a
        publication over DELTA_MAX (the plain-Python codec would hold the reactor), or when
        the delta is no smaller than the publication (it goes whole, as Centrifugo's)."""
        source = self.targets.get(offset - 1)
        if source is None:
            return None
        if offset in self.deltas:
            return self.deltas[offset]
        target = self.targets[offset]
        made: bytes | None = None
        if len(target) <= DELTA_MAX and len(source) <= DELTA_MAX:
            from realtime import fossil

            made = fossil.create(source, target, text)
            if len(made) >= len(target):
                made = None
        self.deltas[offset] = made
        self._grow(len(made or b""))
        return made


#: Delta subscribers' channels by (group, epoch), the most recently used last; at most
#: CHAINS_BYTES in all, data and deltas and each chain's overhead counted (the least
#: recently used go first: their subscribers get the next publication whole).
_CHAINS: OrderedDict[tuple[str, Any], _Chain] = OrderedDict()
CHAINS_BYTES = 32 * 1024 * 1024
#: A publication larger than this goes whole to delta subscribers (``fossil.create`` is
#: plain Python: about 0.2 s of the reactor per MB that has nothing in common).
DELTA_MAX = 1024 * 1024


def _chain(group: str, epoch: Any) -> _Chain:
    key = (group, epoch)
    chain = _CHAINS.get(key)
    if chain is None:
        chain = _CHAINS[key] = _Chain()
    else:
        _CHAINS.move_to_end(key)
    return chain


def _trim_chains() -> None:
    while _Chain.total > CHAINS_BYTES and len(_CHAINS) > 1:
        _, chain = _CHAINS.popitem(last=False)
        _Chain.total -= chain.size


def _delta_push(sub: _Sub, event: dict[str, Any], form: str) -> str | bytes:
    """A publication for a subscriber with delta compression: its data as JSON text in a
    string (JSON; centrifuge-js parses it) or the bytes (Protobuf); a Fossil delta of the
    one before (``"delta": true``) when the publication is marked for it and the client
    got that one. Made once per process and form, as ``_push_frame``'s."""
    position = event.get("position")
    offset = position.get("offset") if isinstance(position, dict) else None
    data = event.get("data")
    if not isinstance(offset, int) or (isinstance(data, bytes) and form == _JSON):
        sub.base = None  # (binary data cannot be text: a JSON client has no base then)
        return _push_frame(sub.channel, event, form)
    epoch = position.get("epoch") if isinstance(position, dict) else None
    chain = _chain(sub.group, epoch)
    body = chain.target(offset, data)
    made = None
    if event.get("delta") is True and sub.base == offset - 1:
        # Text (copies on characters) whenever the data is JSON text, whoever asks first:
        # the one delta serves JSON and Protobuf members alike.
        made = chain.delta(offset, text=not isinstance(data, bytes))
    _trim_chains()
    sub.base = offset
    kind = f"{form}+delta" if made is not None else f"{form}+whole"
    key = (sub.channel, epoch, offset, kind)
    if (found := _PUSHES.get(key)) is not None:
        return found
    if made is not None:
        body = made
    if form == _JSON:
        pub = _publication({**event, "data": None})
        pub["data"] = body.decode("utf-8")
    else:
        pub = _publication({**event, "data": body})
    if made is not None:
        pub["delta"] = True
    return _encoded({"channel": sub.channel, "pub": pub}, form, key)


def _translated(frame: bytes, form: str) -> bytes | None:
    """A publication's JSON frame (``publish`` in a channel without history: ``{"push":
    {...}}``) as a Protobuf client (``_PROTOBUF``) or a unidirectional one (``_UNI``: the
    bare push) takes it; None (skipped, with a warning) for a frame that is no push (a
    ``broadcast()`` to a channel's group from elsewhere), or one that cannot be
    translated. Once per frame and process: ``WebSocketConnection.translate_broadcasts``
    keeps what it made."""
    from realtime import pubsub_proto
    from realtime.layers.base import prepared_frame

    out: bytes | None = None
    try:
        event = frame_event(frame)
        document = json.loads(event["text"]) if "text" in event else None
        if isinstance(document, dict) and isinstance(document.get("push"), dict):
            out = (prepared_frame(None, pubsub_proto.encode(document)) if form == _PROTOBUF
                   else prepared_frame(_dumps(document["push"]), None))
    except Exception:  # a frame nobody can translate is skipped, not fatal
        out = None
    if out is None:
        log.warn("pubsub: a broadcast frame that is no push skipped for a {client} client",
                 client="Protobuf" if form == _PROTOBUF else "unidirectional")
    return out


def _binary_broadcast(frame: bytes) -> bytes | None:
    return _translated(frame, _PROTOBUF)


def _uni_broadcast(frame: bytes) -> bytes | None:
    return _translated(frame, _UNI)


#: Each form's broadcast translation (one function each: the translations are kept per
#: function, ``WebSocketConnection.translate_broadcasts``); JSON clients take the frame.
_TRANSLATIONS = {_PROTOBUF: _binary_broadcast, _UNI: _uni_broadcast}


def _asked_position(request: dict[str, Any]) -> dict[str, Any] | None:
    """The position a subscribe request (``recover``, ``epoch``, ``offset``) asks to
    recover from; None when it asks none; ``PubSubError`` 107 for a bad one."""
    if request.get("recover") is not True:
        return None
    epoch, offset = request.get("epoch", ""), request.get("offset", 0)
    if not isinstance(epoch, str) or isinstance(offset, bool) or not isinstance(
            offset, int) or offset < 0:
        raise PubSubError(BAD_REQUEST)
    return {"epoch": epoch, "offset": offset}


def _publication(message: dict[str, Any]) -> dict[str, Any]:
    """A publication in the JSON protocol's form. Binary data (bytes that are not JSON:
    ``from_bytes``) cannot go in a JSON frame: ``data`` is null and ``b64data`` has them
    (Centrifugo's API name; ``realtime.pubsub_proto`` writes them back as bytes)."""
    data = message.get("data")
    pub: dict[str, Any] = ({"data": None, "b64data": base64.b64encode(data).decode("ascii")}
                           if isinstance(data, bytes) else {"data": data})
    if message.get("info"):
        pub["info"] = message["info"]
    if message.get("tags"):
        pub["tags"] = message["tags"]
    position = message.get("position")
    if isinstance(position, dict) and isinstance(position.get("offset"), int):
        pub["offset"] = position["offset"]
    return pub


class UniPubSubConsumer(PubSubConsumer):
    """Centrifugo's unidirectional WebSocket (``/connection/uni_websocket``): a plain
    ``WebSocket`` in a browser, no SDK. The first message (or the ``cf_connect`` query
    parameter) is a connect request, ``{"token": "<JWT>", "subs": {channel: {"recover":
    true, "offset": N, "epoch": "..."}}}``; the server answers with a ``connect`` push and
    then writes bare pushes (``{"channel": ..., "pub": {...}}``, join, leave, unsubscribe,
    subscribe), and ``{}`` every ``PING_INTERVAL`` (no pong expected). Subscriptions are
    server-side: the token's ``channels`` claim and the server API's ``subscribe``. JSON
    only, as Centrifugo's."""

    unidirectional = True
    transport_name = "uni_websocket"


def _binary_body(scope: Any) -> bool:
    """Whether a request's body is Protobuf (``Content-Type: application/octet-stream``,
    as centrifuge-js's Protobuf build sends it)."""
    kind = dict(scope.get("headers", ())).get(b"content-type", b"")
    return bool(kind.split(b";")[0].strip().lower() == b"application/octet-stream")


#: A unidirectional stream's connect refused for good (3500 and up; 3005: the token in the
#: URL expired), before anything was written: the HTTP status (an EventSource stops at an
#: error status; a stream that ends, it opens again); 400 for the others.
_STREAM_STATUS = {3500: 401, 3005: 401, 3507: 403, 3504: 429}


class _StreamConn:
    """What ``_Protocol`` asks of its connection, for a streamed HTTP response: each
    message one server-sent event (``data: <json>``, ``sse``), one line of JSON, or
    Protobuf messages as they are; a close is Centrifugo's ``disconnect`` push and the end
    of the response (for a unidirectional client, before anything was written, an HTTP
    status instead: ``_STREAM_STATUS``); the token's expiry a timer."""

    user_key: Any = None

    def __init__(self, consumer: UniStreamConsumer) -> None:
        self.consumer = consumer
        self.site = consumer._site()
        self.config = self.site.config
        self.reactor = self.site.clock
        self.scope = consumer.scope
        self._expiry: Any = None
        self._started = False
        #: The response's writes, one after another: a head that waits (a Django
        #: session saved before it, in a thread) holds the bodies after it.
        self._tail: Deferred[Any] = Deferred()
        self._tail.callback(None)
        listeners = getattr(self.site, "drain_listeners", None)
        if listeners is not None:
            listeners.add(self)

    @property
    def finished(self) -> bool:
        return bool(self.consumer._finished)

    @property
    def draining(self) -> bool:
        return bool(getattr(self.site, "draining", False))

    @property
    def closing_or_closed(self) -> bool:
        return bool(self.consumer._finished)

    @property
    def dropped(self) -> int:
        """Sends ``--slow-consumer drop`` skipped (as ``WebSocketConnection.dropped``)."""
        return int(self.consumer._dropped)

    def _then(self, write: Any, what: str) -> None:
        """``write()`` once the writes before it are done (at once when none waits)."""
        def failed(failure: Any) -> None:
            log.failure("pubsub: a stream's {what} failed", failure, what=what)

        self._tail.addCallback(lambda _: as_deferred(write())).addErrback(failed)

    def _send(self, body: bytes, more: bool = True) -> None:
        self._then(lambda: self.consumer.send_body(body, more_body=more), "write")

    def _head(self) -> None:
        if not self._started:
            self._started = True
            self._then(lambda: self.consumer.send_headers(
                status=200, headers=self.consumer.stream_headers), "head")

    def send_text(self, text: str) -> None:
        """One JSON message: a server-sent event, or a line."""
        if self.consumer._finished:
            return
        self._head()
        payload = text.encode()
        self._send(b"data: " + payload + b"\n\n" if self.consumer.sse else payload + b"\n")

    def send_bytes(self, data: bytes) -> None:
        """Protobuf messages (each length-prefixed already): as they are."""
        if self.consumer._finished:
            return
        self._head()
        self._send(data)

    def close(self, code: int, reason: str | None = None) -> None:
        if self.consumer._finished:
            return
        self._cancel_expiry()
        push = self.consumer._encode({"push": {"disconnect": {"code": code,
                                                             "reason": reason or ""}}})
        if not self._started and self.consumer.unidirectional and (
                code >= 3500 or code == CLOSE_EXPIRED[0]):
            # No SDK reads the stream: an EventSource stops at an error status (and would
            # open a stream that ended again: with the same token, for 3005). A code that
            # says "reconnect", and an SDK's stream, get the push (200), then the end.
            self._started = True
            status = _STREAM_STATUS.get(code, 400)
            body, kind = ((push.encode() + b"\n", b"application/json")
                          if isinstance(push, str) else (push, b"application/octet-stream"))
            self._then(lambda: self.consumer.send_response(status, body, headers=[
                (b"Content-Type", kind)]), "refusal")
            return
        if isinstance(push, str):
            self.send_text(push)
        else:
            self.send_bytes(push)
        self._send(b"", more=False)

    def server_draining(self) -> None:
        """The server drains (SIGTERM): Centrifugo's shutdown push (3001, reconnect), then
        the end, so the client reconnects to another server at once."""
        if self._started:
            self.close(*CLOSE_SHUTDOWN)

    def token_refreshed(self) -> None:
        """``scope["auth_expires_at"]`` changed: the expiry follows it."""
        self._cancel_expiry()
        at = self.scope.get("auth_expires_at")
        if at is not None and not self.consumer._finished:
            self._expiry = self.reactor.callLater(
                max(0.0, float(at) - self.reactor.seconds()), self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self.close(*self.consumer.token_expired_close)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None


class _Cors(AsyncHttpConsumer):
    """Answers a page of another origin may read (the SDKs fetch with ``mode: "cors"``):
    every head names the request's ``Origin`` (``--allowed-origins`` refused the others
    with 403 before this), and a preflight (``OPTIONS``) is answered; no credentials."""

    async def send_headers(self, *, status: int = 200, headers: Any = None) -> None:
        pairs = [*(headers or []), (b"Vary", b"Origin")]
        origin = dict(self.scope.get("headers", ())).get(b"origin")
        if origin:
            pairs.append((b"Access-Control-Allow-Origin", origin))
        await super().send_headers(status=status, headers=pairs)

    async def _preflight(self) -> bool:
        if self.scope.get("method") != "OPTIONS":
            return False
        await self.send_response(204, b"", headers=[
            (b"Access-Control-Allow-Methods", b"GET, POST, OPTIONS"),
            (b"Access-Control-Allow-Headers", b"Content-Type"),
            (b"Access-Control-Max-Age", b"600")])
        return True


class UniStreamConsumer(_Protocol, _Cors):
    """Centrifugo's unidirectional HTTP streaming (``/connection/uni_http_stream``: POST a
    connect request, read lines of JSON) and, with ``sse = True``, its server-sent events
    (``/connection/uni_sse``: ``GET ?cf_connect=<connect request>`` from an
    ``EventSource``, or POST it): the pushes of ``UniPubSubConsumer``, one per line or
    event. A refused connect is an HTTP status with the ``disconnect`` push as its body;
    later, a ``disconnect`` push ends the stream (an ``EventSource`` opens it again unless
    the page closes it: do that for codes of 3500 and up)."""

    unidirectional = True
    transport_name = "uni_http_stream"
    #: Server-sent events (``data: <json>``) instead of lines of JSON.
    sse = False

    @property
    def stream_headers(self) -> list[tuple[bytes, bytes]]:
        kind = (b"text/event-stream" if self.sse else b"application/octet-stream"
                if self.binary else b"application/json")
        return [(b"Content-Type", kind), (b"Cache-Control", b"no-cache"),
                (b"X-Accel-Buffering", b"no")]  # nginx: pass each event on at once

    async def handle(self, body: bytes) -> None:
        method = await self._start(body)
        if method is None:
            return
        text = body.decode("utf-8", "replace") if method == "POST" else self._cf_connect("{}")
        await self._uni_connect(text)

    async def _start(self, body: bytes) -> str | None:
        """A stream's start: its state, a preflight's answer, the limits, the method (POST,
        or GET for server-sent events); the method, or None once it is answered."""
        self._init_state()
        self._conn = _StreamConn(self)
        if await self._preflight() or await self._refused_at_once(body):
            return None
        method = self.scope.get("method", "GET")
        if method == "POST" or (method == "GET" and self.sse):
            return str(method)
        await self.send_response(405, b"", headers=[
            (b"Allow", b"GET, POST, OPTIONS" if self.sse else b"POST, OPTIONS")])
        return None

    def _cf_connect(self, default: str) -> str:
        """The connect request (or command) in the URL's ``cf_connect`` parameter."""
        query = parse_qs(self.scope.get("query_string", b"").decode("utf-8", "replace"))
        return query.get("cf_connect", [default])[0]

    async def _refused_at_once(self, body: bytes) -> bool:
        """A first request past ``--max-message-size`` (a connect request is small;
        Centrifugo's limit is 64 KiB): 413. And ``--max-connections-per-ip``, counted with
        the address's WebSockets: 429 past it."""
        if len(body) > self._site().config.max_message_size:
            await self.send_response(413, b"")
            return True
        client = self.scope.get("client")
        ip = client[0] if client else None
        if self._site().config.max_connections_per_ip and ip is not None:
            if not self._site().count_ip(ip):
                await self.send_response(429, b"")
                return True
            self._counted_ip = ip
        return False

    def deliver_frame(self, frame: bytes) -> bool:
        """``broadcast()`` (a publication of a channel without history): as this client
        takes it (bare, Protobuf, or the JSON push as it is), as an event in order with
        the others; translated once per process."""
        if self._finished:
            return False
        translate = _TRANSLATIONS.get(self._form)
        if translate is not None:
            frame = _translate(translate, frame)
            if not frame:
                return False
        self._queue(frame_event(frame))
        return True

    def broadcast_message(self, event: dict[str, Any]) -> None:
        if "text" in event:
            self._conn.send_text(event["text"])
        else:
            self._conn.send_bytes(event["bytes"])

    def close_from_layer(self, code: int, reason: str | None) -> None:
        """``group_close`` (the server API's ``disconnect`` of a user, a drain): the
        ``disconnect`` push, then the end."""
        if not self._finished and getattr(self, "_conn", None) is not None:
            if HELD:  # broadcasts held for this turn were before the close: they go first
                let_out_for(self, self.channel_name)
            self._queue({"type": "pubsub.stream_close", "code": code, "reason": reason})
        super().close_from_layer(code, reason)

    def pubsub_stream_close(self, event: dict[str, Any]) -> None:
        self._conn.close(event["code"], event.get("reason"))

    async def disconnect(self) -> None:
        self._cleanup()
        ip, self._counted_ip = getattr(self, "_counted_ip", None), None
        if ip is not None:
            self._site().uncount_ip(ip)
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn._cancel_expiry()
            if conn.user_key is not None:
                self._site().uncount_user(conn)


class UniSseConsumer(UniStreamConsumer):
    """Centrifugo's ``uni_sse``: ``UniStreamConsumer`` as server-sent events."""

    sse = True
    transport_name = "uni_sse"


class StreamConsumer(UniStreamConsumer):
    """The bidirectional protocol over a streamed HTTP response: centrifuge-js's
    fallbacks when WebSocket is not there (``transports: [{transport: "http_stream",
    endpoint: ".../connection/http_stream"}, {transport: "sse", ...}]``). The stream's
    first request carries the client's first commands (``connect``: the POST body, JSON
    lines or, as ``application/octet-stream``, Protobuf; for ``sse = True`` the
    ``cf_connect`` query parameter, JSON); the replies and pushes come down the stream;
    the client's later commands come as POSTs to ``/emulation`` (``EmulationConsumer``),
    which reach this stream, in whatever process holds it, through the channel layer:
    the connect reply's ``node`` is its channel name, its ``session`` a secret the
    requests must carry."""

    unidirectional = False
    transport_name = "http_stream"

    async def handle(self, body: bytes) -> None:
        self._session = secrets.token_urlsafe(18)
        method = await self._start(body)
        if method is None:
            return
        try:  # where /emulation reaches this stream, in whatever process holds it
            await self.channel_layer.group_add(emulation_group(self.channel_name),
                                               self.channel_name)
        except Exception as exc:
            log.warn("pubsub: a stream could not join its emulation group: {error}",
                     error=str(exc) or type(exc).__name__)
            self._conn.close(*CLOSE_SERVER_ERROR)
            return
        if method == "GET":
            await self._run_frame(self._cf_connect(""), None)
        elif not self.sse and _binary_body(self.scope):
            from realtime import pubsub_proto

            pubsub_proto.schema()
            self.binary = True
            await self._run_frame(None, body)
        else:
            await self._run_frame(body.decode("utf-8", "replace"), None)
        if not self._connected and not self._finished and self._conn.draining:
            self._conn.close(*CLOSE_SHUTDOWN)  # not held open while the server drains
        elif not self._connected and not self._finished:
            # The first request did not connect (its error reply is written): the stream
            # stays open until the client, having read the reply, closes it (as
            # Centrifugo's): ended now, centrifuge-js may see the end before the reply and
            # try again with the same expired token instead of asking for a fresh one.
            # One left open is closed as stale (3502) after STALE_AFTER.
            self._conn._head()
            self._stale = self._conn.reactor.callLater(STALE_AFTER, self._close_stale)
        elif self._connected:
            self._shutdown_if_draining()

    def _session_info(self) -> dict[str, Any]:
        return {"session": self._session, "node": self.channel_name}

    async def pubsub_emulation(self, event: dict[str, Any]) -> None:
        """A later request of this client's (``EmulationConsumer``): its commands, when it
        carries this stream's session (anything else is ignored)."""
        session = event.get("session")
        if (not isinstance(session, str) or self._finished
                or not secrets.compare_digest(session.encode(), self._session.encode())):
            return
        await self._run_frame(event.get("text"), event.get("bytes"))


class SseConsumer(StreamConsumer):
    """``StreamConsumer`` as server-sent events (centrifuge-js's ``sse`` transport: an
    ``EventSource``, JSON only)."""

    sse = True
    transport_name = "sse"


class EmulationConsumer(_Cors):
    """``/emulation``: a stream client's later commands (centrifuge-js POSTs ``{"session",
    "node", "data"}`` as JSON, or an ``EmulationRequest`` as Protobuf), passed on to its
    ``StreamConsumer`` through the channel layer (``node`` is its channel name, in any
    process); 200 with nothing, 400 for what is not such a request, 413 past
    ``--max-message-size``."""

    async def handle(self, body: bytes) -> None:
        from realtime.layers.base import check_name

        if await self._preflight():
            return
        if self.scope.get("method") != "POST":
            await self.send_response(405, b"", headers=[(b"Allow", b"POST")])
            return
        if len(body) > self._site().config.max_message_size:
            await self.send_response(413, b"")
            return
        event: dict[str, Any] = {"type": "pubsub.emulation"}
        try:
            if _binary_body(self.scope):
                from realtime import pubsub_proto

                request = pubsub_proto.decode_message("EmulationRequest", body)
                event["bytes"] = request.get("data", b"")
            else:
                request = json.loads(body, parse_constant=refuse_constant)
                if not isinstance(request, dict) or not isinstance(request.get("data"), str):
                    raise ValueError("not an object with data (the commands' JSON text)")
                event["text"] = request["data"]
            node, session = request.get("node"), request.get("session")
            if not isinstance(node, str) or not isinstance(session, str):
                raise ValueError("node and session required")
            check_name(node)
            session.encode("ascii")  # a session is ASCII (UnicodeEncodeError: ValueError)
        except (ValueError, TypeError, RecursionError):
            await self.send_response(400, b"not an emulation request\n", headers=[
                (b"Content-Type", b"text/plain; charset=utf-8")])
            return
        event["session"] = session
        try:
            # To the stream's own group: delivered only while the stream lives (in any
            # process), never queued for a name nobody reads, never to another channel.
            await self.channel_layer.group_send(emulation_group(node), event)
        except Exception as exc:  # an unavailable layer: the client may retry
            log.info("pubsub: an emulation request not passed on: {error}",
                     error=str(exc) or type(exc).__name__)
            await self.send_response(503, b"")
            return
        await self.send_response(204, b"")


def _version() -> str:
    from realtime import __version__

    return f"realtime {__version__}"


#: ``--app realtime.pubsub:application``: the protocol at Centrifugo's paths
#: (``/connection/websocket``; over HTTP ``/connection/http_stream``, ``/connection/sse``
#: and ``/emulation``; unidirectional ``/connection/uni_websocket``, ``/connection/uni_sse``
#: and ``/connection/uni_http_stream``), and nothing else.
def _application() -> Any:
    from realtime.routing import ProtocolTypeRouter, Route, URLRouter

    class Transport(Route):
        """A transport's path, there only while ``--pubsub-transports`` serves it (a
        transport left off is 404, as Centrifugo has no handler for it)."""

        def __init__(self, pattern: str, app: Any, *names: str) -> None:
            super().__init__(pattern, app, None, None, False)
            self.names = frozenset(names or (pattern.rpartition("/")[2],))

        def match(self, path: str) -> Any:
            found = super().match(path)  # (the path first: one set look-up per request)
            served = settings.pubsub_transports
            if found is None or served is None or not served.isdisjoint(self.names):
                return found
            return None

    return ProtocolTypeRouter({
        "websocket": URLRouter([
            Transport("connection/websocket", PubSubConsumer.as_asgi()),
            Transport("connection/uni_websocket", UniPubSubConsumer.as_asgi())]),
        "http": URLRouter([
            Transport("connection/uni_sse", UniSseConsumer.as_asgi()),
            Transport("connection/uni_http_stream", UniStreamConsumer.as_asgi()),
            Transport("connection/http_stream", StreamConsumer.as_asgi()),
            Transport("connection/sse", SseConsumer.as_asgi()),
            Transport("emulation", EmulationConsumer.as_asgi(), "http_stream", "sse")]),
    })


application = _application()

__all__ = ["EmulationConsumer", "Namespace", "PubSubConsumer", "PubSubError", "SseConsumer",
           "StreamConsumer", "UniPubSubConsumer", "UniSseConsumer", "UniStreamConsumer",
           "application", "channel_group", "configure", "emulation_group", "from_bytes",
           "namespace_prefix", "parse_namespace", "parse_namespaces", "parse_transports",
           "publish", "read_history", "user_group"]
