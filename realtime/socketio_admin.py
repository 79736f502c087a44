"""The Socket.IO Admin UI (https://admin.socket.io, ``@socket.io/admin-ui``) for
``realtime.socketio``: python-socketio's ``AsyncServer.instrument()``.

Why: a team on python-socketio that watches its server in the Admin UI keeps doing so.
The UI is a socket.io-client on the admin namespace ("/admin"); it gets ``config`` and
``all_sockets`` when it connects, ``server_stats`` every ``server_stats_interval`` seconds
from every process, and in development mode the sockets' life (``socket_connected``,
``socket_updated``, ``socket_disconnected``, ``room_joined``, ``room_left``,
``event_received``, ``event_sent``); it sends ``emit``, ``join``, ``leave`` and
``_disconnect`` unless ``read_only``.

Across processes: every admin event is an emit to the admin namespace, which reaches the
admin clients of every process through the layer, so each process reports its own
sockets and stats under its own ``serverId``. What the layer does not carry by itself
goes through one layer channel per instrumented server, in a group of the admin
namespace (``_AdminChannel``): an admin client's connect asks every other process for
its sockets (each sends them to that client as ``socket_connected``), and the
``join``/``leave``/``_disconnect`` commands reach the sockets of every process.

Costs: nothing unless ``instrument()`` is called (``AsyncServer._admin`` is None: one
attribute check at each hook). Instrumented, a tick every ``server_stats_interval``; in
development mode one admin emit per connect, disconnect, room change, event received
and per local recipient of an event sent (as python-socketio's).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import os
import socket as _socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs
from weakref import WeakSet, finalize, ref

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from realtime.layers.base import escape_name, skip_held

if TYPE_CHECKING:
    from realtime.socketio import AsyncServer, SocketIOConsumer, _Socket

log = Logger(namespace="realtime.socketio")

HOSTNAME = _socket.gethostname()
#: The features every instrumented server has; the commands' unless ``read_only``;
#: ``ALL_EVENTS`` in development mode (python-socketio's list).
_COMMANDS = ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT"]
MODES = ("development", "production")
#: The room of the admin namespace its sockets enter once their login is accepted: the
#: admin events go to it, not to the namespace, whose group a socket is in while its
#: connect handler (the login check) runs, and stays in when refused until it is dropped.
ADMINS_ROOM = "realtime:admins"
#: Request headers whose values the UI does not get (python-socketio and Node send them):
#: the users' sessions and tokens, which a browser page (often admin.socket.io's) would
#: show to whoever looks, and keep in its memory.
REDACTED_HEADERS = frozenset({"cookie", "authorization", "proxy-authorization"})
REDACTED = "(redacted)"


def _now_iso(seconds: float) -> str:
    """python-socketio's timestamps: ISO 8601 in UTC with a "Z"."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def _same(given: Any, expected: dict[Any, Any]) -> bool:
    """``given == expected`` for credentials, its strings compared in constant time."""
    if not isinstance(given, dict) or given.keys() != expected.keys():
        return False
    ok = True
    for key, want in expected.items():
        have = given[key]
        if isinstance(want, str) and isinstance(have, str):
            ok &= hmac.compare_digest(have.encode("utf-8", "surrogatepass"),
                                      want.encode("utf-8", "surrogatepass"))
        else:
            ok &= bool(have == want)
    return ok


class _EventBuffer:
    """The UI's ``aggregatedEvents``: counts by (second, type), taken at each tick."""

    def __init__(self) -> None:
        self.buffer: dict[tuple[int, str], int] = {}

    def push(self, now: float, kind: str, count: int = 1) -> None:
        if count:
            key = (int(now) * 1000, kind)
            self.buffer[key] = self.buffer.get(key, 0) + count

    def take(self) -> list[dict[str, Any]]:
        buffer, self.buffer = self.buffer, {}
        return [{"timestamp": stamp, "type": kind, "count": count}
                for (stamp, kind), count in buffer.items()]


class _AdminChannel:
    """One instrumented server's layer receiver, in the admin namespace's group of every
    process: ``sio.admin_sockets`` (send your sockets to that admin sid) and
    ``sio.admin_command`` (join/leave/_disconnect your matching sockets)."""

    _held_seq = -1
    _held_count = 0

    def __init__(self, admin: InstrumentedAsyncServer, layer: Any) -> None:
        # Weakly: the layer holds this receiver, and a server dropped without shutdown()
        # must not be kept by it (its finalizer detaches this, as _Replies's does).
        self.admin = ref(admin)
        self.layer = layer
        self.channel: str = layer.attach(self)
        skip_held(self)

    def deliver(self, event: dict[str, Any]) -> None:
        admin = self.admin()
        if admin is None:
            return
        kind = event.get("type")
        if kind == "sio.admin_sockets":
            to = event.get("to")
            if isinstance(to, str) and event.get("from") != self.channel:
                admin._spawn(admin._report_sockets(to))
        elif kind == "sio.admin_command":
            admin._spawn(admin._run_command(event))

    def deliver_frame(self, frame: bytes) -> bool:
        return True  # nothing is broadcast to the group

    def deliver_joined(self, joined: bytes) -> bool:
        return True

    def close_from_layer(self, code: int, reason: str | None) -> None:
        pass


class InstrumentedAsyncServer:
    """What ``AsyncServer.instrument()`` returns (python-socketio's class of that name):
    ``await shutdown()`` stops the stats and leaves the layer (``AsyncServer.shutdown()``
    does too); ``uninstrument()`` takes the hooks off as well."""

    def __init__(self, sio: AsyncServer, auth: Any = None, mode: str = "development",
                 read_only: bool = False, server_id: str | None = None,
                 namespace: str = "/admin", server_stats_interval: float = 2) -> None:
        if auth is None:
            raise ValueError(
                "instrument() needs auth=: {'username': ..., 'password': ...} (compared "
                "with the UI's login), a list of such dicts, a callable that takes the "
                "login and returns True to let it in, or auth=False for none (never on a "
                "server others can reach)")
        if auth is not False and not callable(auth) and not (
                isinstance(auth, dict | list) and auth):
            raise ValueError("instrument(auth=...) is a non-empty dict, a non-empty list "
                             "of dicts, a callable, or False")
        if mode not in MODES:
            raise ValueError(f'mode is "development" or "production", not {mode!r}')
        if not isinstance(namespace, str) or not namespace.startswith("/"):
            raise ValueError(f"the admin namespace starts with '/': {namespace!r}")
        if not server_stats_interval > 0:
            raise ValueError("server_stats_interval is > 0 (seconds)")
        if sio._admin is not None:
            raise ValueError("this AsyncServer is instrumented already")
        self.sio = sio
        self.auth = auth
        self.mode = mode
        self.development = mode == "development"
        self.read_only = bool(read_only)
        self.admin_namespace = namespace
        #: Unique per process by default (hostname#pid), so the UI, which aggregates by
        #: ``serverId``, tells ``--workers`` apart (Node's default under its cluster).
        self.server_id = server_id or f"{HOSTNAME}#{os.getpid()}"
        self.server_stats_interval = float(server_stats_interval)
        self.events = _EventBuffer()
        self.clients = 0  # Engine.IO connections open, counted since instrument()
        self._sites: WeakSet[Any] = WeakSet()
        self._counted: dict[str, int] = {}  # the sites' counters at the last tick
        self._clock: Any = None
        self._tick: Any = None
        self._started = 0.0
        self._channel: _AdminChannel | None = None
        self._finalizer: finalize[..., Any] | None = None
        self._connected_at: dict[str, float] = {}
        features = ["AGGREGATED_EVENTS"] + ([] if self.read_only else _COMMANDS)
        if self.development:
            features.append("ALL_EVENTS")
        self.features = features
        sio.on("connect", self._admin_connect, namespace=namespace)
        if not self.read_only:
            sio.on("emit", self._admin_emit, namespace=namespace)
            sio.on("join", self._admin_join, namespace=namespace)
            sio.on("leave", self._admin_leave, namespace=namespace)
            sio.on("_disconnect", self._admin_disconnect, namespace=namespace)
        sio._admin = self

    # -- life -------------------------------------------------------------------------------
    def _start(self, clock: Any) -> None:
        """At the first Engine.IO connection (the reactor runs then): the stats tick and
        the layer channel."""
        from twisted.internet.task import LoopingCall

        self._clock = clock
        self._started = clock.seconds()
        # The tick and the layer hold this weakly: a server dropped without shutdown() is
        # garbage, and its finalizer stops both (the reactor and the layer live on).
        tick = self._tick = LoopingCall(_tick, ref(self))
        tick.clock = clock
        tick.start(self.server_stats_interval, now=False).addErrback(
            lambda failure: log.failure("socketio admin: the stats tick failed", failure))
        layer = self.sio.channel_layer
        channel = None
        if callable(getattr(layer, "attach", None)):
            channel = self._channel = _AdminChannel(self, layer)
            self._spawn(layer.group_add(self._group, channel.channel))
        self._finalizer = finalize(self, _release, tick, channel)

    @property
    def _group(self) -> str:
        name = "sioadmin." + escape_name(self.admin_namespace)
        if len(name) > 90:
            name = "sioadmin._h" + hashlib.sha256(self.admin_namespace.encode(
                "utf-8", "surrogatepass")).hexdigest()[:40]
        return name

    def stop(self) -> None:
        """No more stats; off the layer (started again by the next connection)."""
        tick, self._tick = self._tick, None
        channel, self._channel = self._channel, None
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer.detach()
        _release(tick, channel)

    async def shutdown(self) -> None:
        self.stop()

    def uninstrument(self) -> None:
        """Stop, and take the hooks and the admin namespace's handlers off."""
        self.stop()
        if self.sio._admin is self:
            self.sio._admin = None
        self.sio.handlers.pop(self.admin_namespace, None)

    def _spawn(self, work: Any) -> None:
        Deferred.fromCoroutine(_awaited(work)).addErrback(
            lambda failure: log.failure("socketio admin: {what} failed", failure,
                                        what=getattr(work, "__name__", "a step")))

    def _post(self, event: str, *args: Any, to: str | None = None) -> None:
        """One admin event to every admin client (in every process: the admins' room,
        never a login being checked), or to ``to``."""
        self._spawn(self.sio.emit(event, args, to=to or ADMINS_ROOM,
                                  namespace=self.admin_namespace))

    def _time(self) -> float:
        return self._clock.seconds() if self._clock is not None else 0.0

    # -- the admin namespace ----------------------------------------------------------------
    async def _admin_connect(self, sid: str, environ: Any, auth: Any) -> None:
        from realtime.socketio import ConnectionRefusedError

        if self.auth is False:
            return
        if isinstance(self.auth, dict):
            ok = _same(auth, self.auth)
        elif isinstance(self.auth, list):
            ok = any(isinstance(one, dict) and _same(auth, one) for one in self.auth)
        else:
            ok = bool(await _awaited(self.auth(auth)))
        if not ok:
            raise ConnectionRefusedError("authentication failed")

    async def _admin_emit(self, _sid: str, namespace: Any, room_filter: Any, event: Any,
                          *data: Any) -> None:
        if not self._valid(namespace, room_filter) or not isinstance(event, str):
            return
        await self.sio.emit(event, data, to=room_filter or None, namespace=namespace)

    async def _admin_join(self, _sid: str, namespace: Any, room: Any,
                          room_filter: Any = None) -> None:
        await self._command("join", namespace, room, room_filter)

    async def _admin_leave(self, _sid: str, namespace: Any, room: Any,
                           room_filter: Any = None) -> None:
        await self._command("leave", namespace, room, room_filter)

    async def _admin_disconnect(self, _sid: str, namespace: Any, close: Any = False,
                                room_filter: Any = None) -> None:
        await self._command("disconnect", namespace, None, room_filter)

    @staticmethod
    def _valid(namespace: Any, room_filter: Any) -> bool:
        ok = (isinstance(namespace, str) and namespace.startswith("/")
              and (room_filter is None or isinstance(room_filter, str)))
        if not ok:
            log.info("socketio admin: a command with namespace {nsp!r} and filter "
                     "{filter!r} ignored", nsp=namespace, filter=room_filter)
        return ok

    async def _command(self, what: str, namespace: Any, room: Any, room_filter: Any) -> None:
        """To every process (its matching sockets), through the admin group; here only
        without a layer of realtime's."""
        if not self._valid(namespace, room_filter) or (
                what != "disconnect" and not isinstance(room, str | int)):
            return
        event = {"type": "sio.admin_command", "what": what, "namespace": namespace,
                 "room": room, "filter": room_filter or None}
        if self._channel is None:
            await self._run_command(event)
            return
        await self._channel.layer.group_send(self._group, event)

    async def _run_command(self, event: dict[str, Any]) -> None:
        from realtime.socketio import room_group

        namespace, room, what = event.get("namespace"), event.get("room"), event.get("what")
        room_filter = event.get("filter")
        if not isinstance(namespace, str):
            return
        group = None if room_filter is None else room_group(namespace, room_filter)
        for sid, socket in list(self.sio._sockets.items()):
            if socket.namespace != namespace or socket.pending or not (
                    group is None or sid == room_filter or group in socket.rooms):
                continue
            if what == "join":
                await self.sio.enter_room(sid, room, namespace=namespace)
            elif what == "leave":
                await self.sio.leave_room(sid, room, namespace=namespace)
            elif what == "disconnect":
                await self.sio.disconnect(sid, namespace=namespace)

    async def _report_sockets(self, to: str) -> None:
        """Another process's admin client connected: our sockets, one by one."""
        if not self.development:
            return
        for socket in list(self.sio._sockets.values()):
            if not socket.pending:
                await self.sio.emit("socket_connected", (self._serialize(socket),),
                                    to=to, namespace=self.admin_namespace)

    # -- hooks (``realtime.socketio`` calls them when ``AsyncServer._admin`` is set) --------
    def opened(self, consumer: SocketIOConsumer) -> None:
        """An Engine.IO connection opened (WebSocket or polling)."""
        conn = consumer._conn
        if self._tick is None:
            self._start(conn.reactor)
        site = getattr(conn, "site", None)
        if site is not None and hasattr(site, "stats"):
            self._sites.add(site)
        self.clients += 1
        self.events.push(self._time(), "rawConnection")

    def closed(self) -> None:
        self.clients = max(0, self.clients - 1)
        self.events.push(self._time(), "rawDisconnection")

    def connected(self, socket: _Socket) -> None:
        """A socket's CONNECT went out: the admin client gets its config and sockets; the
        others are announced."""
        now = self._time()
        self._connected_at[socket.sid] = now
        if socket.namespace == self.admin_namespace:
            self._spawn(self._welcome(socket))
        if self.development:
            self._post("socket_connected", self._serialize(socket), _now_iso(now))

    async def _welcome(self, socket: _Socket) -> None:
        """An admin client let in: into the admins' room, then its config and sockets."""
        await self.sio.enter_room(socket.sid, ADMINS_ROOM, namespace=self.admin_namespace)
        self._post("config", {"supportedFeatures": self.features}, to=socket.sid)
        if self.development:
            sockets = [self._serialize(one) for one in list(self.sio._sockets.values())
                       if not one.pending]
            self._post("all_sockets", sockets, to=socket.sid)
            if self._channel is not None:  # the other processes' sockets
                await self._channel.layer.group_send(self._group, {
                    "type": "sio.admin_sockets", "to": socket.sid,
                    "from": self._channel.channel})

    def disconnected(self, socket: _Socket, reason: str) -> None:
        self._connected_at.pop(socket.sid, None)
        if self.development:
            self._post("socket_disconnected", socket.namespace, socket.sid, reason,
                       _now_iso(self._time()))

    def upgraded(self, consumer: SocketIOConsumer) -> None:
        if self.development:
            for socket in list(consumer._sockets.values()):
                self._post("socket_updated", {"id": socket.sid, "nsp": socket.namespace,
                                              "transport": "websocket"})

    def room(self, socket: _Socket, room: Any, joined: bool) -> None:
        if self.development and not socket.pending and not (
                room == ADMINS_ROOM and socket.namespace == self.admin_namespace):
            self._post("room_joined" if joined else "room_left", socket.namespace, room,
                       socket.sid, _now_iso(self._time()))

    def received(self, socket: _Socket, data: list[Any]) -> None:
        if self.development and socket.namespace != self.admin_namespace:
            self._post("event_received", socket.namespace, socket.sid, data,
                       _now_iso(self._time()))

    def sent(self, event: str, args: list[Any], namespace: str, target: Any,
             skip_sid: Any) -> None:
        """``event_sent`` for each recipient of an emit in this process (a sid of another
        process: that sid; a room's members elsewhere are not known here)."""
        if not self.development or namespace == self.admin_namespace:
            return
        from realtime.socketio import _in_namespace, _target_key, channel_of, namespace_group

        skip = {skip_sid} if isinstance(skip_sid, str) else set(skip_sid or ())
        targets = list(target) if isinstance(target, list | tuple | set) else [target]
        keys: set[str] = set()
        sids: dict[str, None] = {}
        for one in targets:
            if channel_of(one) is not None:
                if one not in skip and _in_namespace(one, namespace):
                    sids[one] = None
            else:
                keys.add(_target_key(one, namespace))
        if keys:
            everyone = namespace_group(namespace) in keys
            for sid, socket in list(self.sio._sockets.items()):
                if (socket.namespace == namespace and not socket.pending
                        and sid not in skip
                        and (everyone or not keys.isdisjoint(socket.rooms))):
                    sids[sid] = None
        stamp = _now_iso(self._time())
        for sid in sids:
            self._post("event_sent", namespace, sid, [event, *args], stamp)

    # -- what the UI shows ------------------------------------------------------------------
    def _emit_stats(self) -> None:
        now = self._time()
        for counter, kind in (("messages_in", "packetsIn"), ("messages_out", "packetsOut"),
                              ("bytes_in", "bytesIn"), ("bytes_out", "bytesOut")):
            total = sum(getattr(site.stats, counter, 0) for site in list(self._sites))
            self.events.push(now, kind, max(0, total - self._counted.get(counter, total)))
            self._counted[counter] = total
        counts: dict[str, int] = dict.fromkeys(self._namespaces(), 0)
        for socket in list(self.sio._sockets.values()):
            if not socket.pending:
                counts[socket.namespace] = counts.get(socket.namespace, 0) + 1
        self._post("server_stats", {
            "serverId": self.server_id,
            "hostname": HOSTNAME,
            "pid": os.getpid(),
            "uptime": now - self._started,
            "clientsCount": self.clients,
            "pollingClientsCount": sum(1 for session in list(self.sio._polling.values())
                                       if session.ws is None),
            "aggregatedEvents": self.events.take(),
            "namespaces": [{"name": name, "socketsCount": counts[name]}
                           for name in sorted(counts)],
        })

    def _namespaces(self) -> Iterable[str]:
        sio = self.sio
        names = set(sio.handlers) | set(sio.namespace_handlers)
        if sio.namespaces != "*":
            names |= set(sio.namespaces)
        return sorted(name for name in names if name != "*")

    def _serialize(self, socket: _Socket) -> dict[str, Any]:
        """python-socketio's ``serialize_socket`` from the connection's ASGI scope."""
        scope = socket.consumer.scope or {}
        headers: dict[str, str] = {}
        for name, value in scope.get("headers") or ():
            key = name.decode("latin-1").lower()
            headers[key] = REDACTED if key in REDACTED_HEADERS else value.decode("latin-1")
        raw_query = (scope.get("query_string") or b"").decode("latin-1")
        query = {key: values[0] if len(values) == 1 else values
                 for key, values in parse_qs(raw_query).items()}
        client = scope.get("client")
        at = self._connected_at.get(socket.sid, 0.0)
        return {
            "id": socket.sid,
            "clientId": socket.consumer.channel_name,
            "transport": self.sio.transport(socket.sid, socket.namespace),
            "nsp": socket.namespace,
            "data": {},
            "handshake": {
                "address": client[0] if client else "",
                "headers": headers,
                "query": query,
                "secure": scope.get("scheme") in ("https", "wss"),
                "url": scope.get("path", "") + (f"?{raw_query}" if raw_query else ""),
                "issued": at * 1000,
                "time": _now_iso(at) if at else "",
            },
            "rooms": [room for room in self.sio.rooms(socket.sid, socket.namespace)
                      if room != ADMINS_ROOM or socket.namespace != self.admin_namespace],
        }


def _tick(admin: ref[InstrumentedAsyncServer]) -> None:
    instrumented = admin()
    if instrumented is not None:
        instrumented._emit_stats()


def _release(tick: Any, channel: _AdminChannel | None) -> None:
    """The stats tick stopped, the admin channel off the layer (``stop()``, or the
    finalizer of a server dropped without it)."""
    if tick is not None and tick.running:
        tick.stop()
    if channel is not None:
        channel.layer.detach(channel.channel)


async def _awaited(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def instrument(sio: AsyncServer, auth: Any = None, mode: str = "development",
               read_only: bool = False, server_id: str | None = None,
               namespace: str = "/admin", server_stats_interval: float = 2,
               ) -> InstrumentedAsyncServer:
    return InstrumentedAsyncServer(sio, auth=auth, mode=mode, read_only=read_only,
                                   server_id=server_id, namespace=namespace,
                                   server_stats_interval=server_stats_interval)


__all__ = ["InstrumentedAsyncServer", "instrument"]
