"""Socket.IO connection state recovery (Node's ``connectionStateRecovery``, socket.io 4.6+)
for ``realtime.socketio.AsyncServer(connection_state_recovery=...)``; python-socketio has
none (its issue #1258).

Why: a client that loses its connection for a moment (a train tunnel, a Wi-Fi handover, a
proxy that cuts idle sockets) comes back as the same socket: same sid, same rooms, same
session, and the packets sent to it meanwhile, in order; ``socket.recovered`` is true on
the client and ``sio.recovered(sid)`` on the server. socket.io-client >= 4.6 does its part
by itself once the CONNECT answer carries a ``pid``.

The wire, as Node's server speaks it:

- the CONNECT answer is ``{"sid", "pid"}``; the pid is the socket's secret (whoever holds it
  takes the socket over), sent nowhere else and taken out of the auth the connect handler
  sees (Node leaves it in ``handshake.auth``);
- every EVENT the server emits without an ack callback (to a sid, a room, a namespace)
  carries one more last argument, its offset (a string): the client keeps the last one it
  had and, on its reconnect, sends ``{"pid", "offset"}`` merged into its CONNECT auth;
- the answer to that CONNECT is the same sid, then the packets after that offset.

How it is kept here: with recovery on, each socket has a layer channel of its own (its sid
names it; its namespace and rooms are groups of it), attached to a ``_Kept`` receiver, not
to its connection. While connected, ``_Kept`` passes packets on and keeps those sent since
the client's last pong (a pong answers a ping sent after them: the client has them); when
the connection is lost (not a DISCONNECT packet, not a server disconnect or a
``group_close``, not a server drain), the socket's ``disconnect`` handler runs as Node's
does, and the channel stays in its groups: packets for it from any process (``--layer
redis://``) are kept, in order, for ``max_disconnection_duration`` seconds, up to
``max_packets`` and ``--max-send-buffer`` bytes (past either, the socket is let go: its
reconnect gets a fresh one). A reconnect that brings its pid restores it; expiry, a forged
or unknown pid or offset, or a reconnect that lands in another process (the state is in
this process's memory: recovery needs the client back on the same process, as polling does
— sticky sessions) gets a fresh socket, and the kept one leaves every group and frees
everything.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from realtime.layers.base import HELD, let_out_for, skip_held
from realtime.socketio import (
    CONNECT,
    _first_target,
    _new_sid,
    _reply_gone,
    _Socket,
    encode_packet,
    room_group,
)

if TYPE_CHECKING:
    from realtime.socketio import AsyncServer, SocketIOConsumer

log = Logger(namespace="realtime.socketio")

#: Node's default ``maxDisconnectionDuration`` (2 minutes), in seconds.
MAX_DISCONNECTION_DURATION = 120.0
#: Packets one socket keeps at most (while connected: since its last pong; while kept:
#: since the connection was lost).
MAX_PACKETS = 1000
#: Close codes after which a socket is not kept: the server goes away (a drain, a stop,
#: ``shutdown()``), or the page did (a browser's WebSocket closes with it on unload).
_NOT_KEPT_CODES = frozenset({1001})
#: A restored socket's connection closes with it when more packets came than it may keep
#: before its missed ones could be sent (a gap would follow): the reconnect gets a new one.
CLOSE_MISSED_TOO_MANY = (1008, "missed too many packets")


def _options(value: Any) -> tuple[float, int]:
    """``connection_state_recovery``'s value: True (the defaults) or a dict; the
    ``(max_disconnection_duration, max_packets)`` it sets."""
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise TypeError("connection_state_recovery is True or a dict")
    unknown = set(value) - {"max_disconnection_duration", "max_packets", "skip_middlewares"}
    if unknown:
        raise TypeError(f"connection_state_recovery got unknown options: {sorted(unknown)}")
    duration = value.get("max_disconnection_duration", MAX_DISCONNECTION_DURATION)
    packets = value.get("max_packets", MAX_PACKETS)
    skip = value.get("skip_middlewares", True)
    if (isinstance(duration, bool) or not isinstance(duration, int | float)
            or not duration > 0):
        raise ValueError("max_disconnection_duration is a number of seconds > 0")
    if isinstance(packets, bool) or not isinstance(packets, int) or packets <= 0:
        raise ValueError("max_packets is an int > 0")
    if not isinstance(skip, bool):
        raise TypeError("skip_middlewares is a bool")
    return float(duration), packets


class _Kept:
    """One socket's recovery state, and the layer receiver of its own channel: passes its
    packets to its connection, keeps those the client may not have, holds the socket
    while its connection is lost."""

    #: How far it has had the held broadcasts (``realtime.layers.base.let_out_for``).
    _held_seq = -1
    _held_count = 0

    def __init__(self, recovery: Recovery, layer: Any) -> None:
        self.recovery = recovery
        self.layer = layer
        self.socket: _Socket = None  # type: ignore[assignment]  # set right after
        self.pid = secrets.token_urlsafe(16)
        self.channel = ""
        #: ``(seq, offset, text, attachments, size)`` of the packets the client may not
        #: have, oldest first.
        self.packets: deque[tuple[int, str, str, tuple[bytes, ...], int]] = deque()
        self.size = 0
        self.seq = -1  # the last packet's
        #: The newest packet the client is known to have (a pong came after it): its
        #: ``(offset, seq)``.
        self.confirmed: tuple[str, int] | None = None
        #: The newest packet dropped for the bound before the client was known to have it:
        #: an offset before it cannot be recovered from.
        self.lost = -1
        #: The last packet's seq when a ping went (the pong confirms up to it); -1: none.
        self.mark = -1
        #: Its connection is lost: it waits for a reconnect (``expiry`` ends it).
        self.parked = False
        #: Restored; its connect handler runs: its packets wait to follow the missed ones.
        self.holding = False
        #: Packets without an offset (acks asked) that came while ``holding``.
        self.later: list[tuple[str, tuple[bytes, ...]]] = []
        #: The client has had the pid (a CONNECT answer): it can come back.
        self.announced = False
        self.keep = False  # its connection was lost in a way it may come back from
        #: Told to go (``group_close``, a server disconnect while its connection closes):
        #: the connection's loss that follows does not keep it (``connection_lost``).
        self.final = False
        self.recovered = False
        self.expiry: Any = None
        #: ``Recovery._settle``'s call, from the connection's loss until ``drop``.
        self.settle: Any = None
        self.site: Any = None
        self.done = False
        self.max_bytes = 1 << 22  # --max-send-buffer (``Recovery.open`` sets it)

    # -- what the client may not have --------------------------------------------------------
    def _record(self, offset: str, text: str, attachments: tuple[bytes, ...]) -> bool:
        """Keep the packet; False if that let this (parked) socket go."""
        self.seq += 1
        size = len(text) + sum(len(data) for data in attachments)
        self.packets.append((self.seq, offset, text, attachments, size))
        self.size += size
        recovery = self.recovery
        while len(self.packets) > recovery.max_packets or (
                self.size > self.max_bytes and (self.parked or len(self.packets) > 1)):
            if self.parked:
                log.info("socketio: a disconnected socket missed more than {packets} packets "
                         "or --max-send-buffer bytes: not kept", packets=recovery.max_packets)
                recovery.release(self)
                return False
            if self.holding:  # restored: its missed packets are not sent yet, none may go
                self._overflow()
                return False
            seq, _, _, _, dropped = self.packets.popleft()
            self.size -= dropped
            self.lost = seq
        return True

    def _overflow(self) -> None:
        """Restored, it had more than it may keep before its connect handler returned:
        let go, its connection closed (a replay would have a gap)."""
        log.info("socketio: a restored socket had more than {packets} packets or "
                 "--max-send-buffer bytes before its connect handler returned: let go, its "
                 "connection closed", packets=self.recovery.max_packets)
        conn = self.socket.consumer._conn
        self.recovery.release(self)  # (``connected`` answers nothing now)
        conn.close_with_code(*CLOSE_MISSED_TOO_MANY)

    def take_later(self) -> list[tuple[str, tuple[bytes, ...]]]:
        """The packets without an offset that came while ``holding``, out of the bound."""
        later, self.later = self.later, []
        self.size -= sum(len(text) + sum(map(len, attachments)) for text, attachments in later)
        return later

    def confirm(self) -> None:
        """A pong: the packets sent before its ping have arrived."""
        mark, self.mark = self.mark, -1
        self._trim(mark)

    def _trim(self, upto: int) -> None:
        packets = self.packets
        while packets and packets[0][0] <= upto:
            seq, offset, _, _, size = packets.popleft()
            self.size -= size
            self.confirmed = (offset, seq)

    def position(self, offset: Any) -> int | None:
        """The seq of the last packet the client had, from the offset it sent (None: it
        had none, -1); None when it cannot be recovered from."""
        at: int | None
        if offset is None:
            at = -1 if self.confirmed is None else self.confirmed[1]
        elif not isinstance(offset, str):
            return None  # as Node: not a string, not recovered
        elif self.confirmed is not None and self.confirmed[0] == offset:
            at = self.confirmed[1]
        else:
            at = next((seq for seq, known, *_ in reversed(self.packets) if known == offset),
                      None)
            if at is None:
                return None  # forged, or too old
        return at if at >= self.lost else None  # (packets after it were dropped)

    # -- packets -----------------------------------------------------------------------------
    def take(self, text: str, attachments: Any, offset: str | None) -> None:
        """A packet for this socket: kept if it has an offset, sent if it can be."""
        attachments = tuple(attachments or ())
        if offset is not None and not self._record(offset, text, attachments):
            return
        if self.parked:
            return
        if self.holding:
            if offset is None:  # (bounded with the missed ones)
                self.later.append((text, attachments))
                self.size += len(text) + sum(len(data) for data in attachments)
                if (len(self.packets) + len(self.later) > self.recovery.max_packets
                        or self.size > self.max_bytes):
                    self._overflow()
            return
        if HELD:  # room broadcasts held for this turn were before this packet
            let_out_for(self, self.channel)
        self.socket.consumer._send(text, attachments)

    def deliver(self, event: dict[str, Any]) -> None:
        """The layer's events for the socket's channel."""
        if self.done:
            return
        try:
            if event.get("type") == "sio.packet":
                self._packet(event)
            elif self.parked or self._lost():
                self._while_lost(event)
            else:  # in order with its connection's own events
                if HELD:  # (and after the room broadcasts held before it)
                    let_out_for(self, self.channel)
                self.socket.consumer._conn.deliver(event)
        except Exception:  # not into the layer's delivery loop
            log.failure("socketio: a layer event for a recoverable socket failed")

    def _lost(self) -> bool:
        return bool(self.socket.consumer._conn.closing_or_closed)

    def _packet(self, event: dict[str, Any]) -> None:
        socket = self.socket
        sid, namespace = event.get("sid"), event.get("namespace")
        if (sid is not None and sid != socket.sid) or (
                namespace is not None and namespace != socket.namespace):
            return
        targets = event.get("targets")
        if targets is not None and _first_target(socket, targets) != event.get("via"):
            return  # it has it from an earlier target
        text = event["text"]
        if "reply_to" in event:  # an ack asked from another process: not while lost
            if self.parked or self._lost():
                _reply_gone(self.layer, event)
                return
            text = socket.consumer._asked(socket, event)
            if text is None:
                return
        self.take(text, event.get("binary"), event.get("offset"))

    def _while_lost(self, event: dict[str, Any]) -> None:
        """What ``sio.room``/``sio.close_room``/``sio.disconnect`` do to a socket whose
        connection is lost: its rooms change (a reconnect has them), a disconnect lets it go."""
        kind, socket = event.get("type"), self.socket
        if kind == "sio.disconnect" and event.get("sid") == socket.sid:
            self.keep, self.final = False, True
            if self.parked:
                self.recovery.release(self)
        elif kind == "sio.room" and event.get("sid") == socket.sid:
            group = room_group(socket.namespace, event.get("room"))
            if event.get("enter"):
                if group not in socket.rooms:
                    socket.rooms[group] = event.get("room")
                    self._later(self.layer.group_add(group, self.channel))
            elif group in socket.rooms:
                del socket.rooms[group]
                self._later(self.layer.group_discard(group, self.channel))
        elif kind == "sio.close_room" and event.get("group") in socket.rooms:
            group = event["group"]
            del socket.rooms[group]
            self._later(self.layer.group_discard(group, self.channel))

    @staticmethod
    def _later(d: Deferred[Any]) -> None:
        d.addErrback(lambda failure: log.failure(
            "socketio: a disconnected socket's room change failed", failure))

    def deliver_frame(self, frame: bytes) -> bool:
        """A ``broadcast()`` frame (code that sends to a room group itself; ``emit`` sends
        events): passed on while connected, not kept (it has no offset)."""
        if self.done or self.parked or self.holding or self._lost():
            return False
        return bool(self.socket.consumer._conn.deliver_frame(frame))

    def deliver_joined(self, joined: bytes) -> bool:
        return False  # frame by frame

    def close_from_layer(self, code: int, reason: str | None) -> None:
        """``group_close`` of a group it is in: its connection closes; one lost goes."""
        if self.done:
            return
        self.keep, self.final = False, True  # as Node's disconnectSockets: not recoverable
        if self.parked:
            self.recovery.release(self)
        else:
            self.socket.consumer._conn.close_from_layer(code, reason)

    # -- a server that stops -----------------------------------------------------------------
    def server_draining(self) -> None:
        self.recovery.release(self)

    def server_stopping(self) -> Deferred[None]:
        self.recovery.release(self)
        return succeed(None)


class Recovery:
    """An ``AsyncServer``'s connection state recovery: its sockets' ``_Kept`` by pid and
    by sid, and the hooks ``realtime.socketio`` calls."""

    def __init__(self, server: AsyncServer, options: Any) -> None:
        self.server = server
        self.max_disconnection_duration, self.max_packets = _options(options)
        self._by_pid: dict[str, _Kept] = {}
        self._by_sid: dict[str, _Kept] = {}
        self._prefix = secrets.token_urlsafe(6)
        self._count = itertools.count()

    def new_offset(self) -> str:
        """A packet's offset: unique to this process's run (random prefix, then a count)."""
        return f"{self._prefix}{next(self._count):x}"

    def kept_here(self, sid: str) -> bool:
        """Whether ``sid`` is a socket of this process whose connection is lost (packets,
        rooms and disconnects for it go to its channel)."""
        kept = self._by_sid.get(sid)
        return kept is not None and kept.parked

    def recovered(self, socket: _Socket) -> bool:
        kept = self._by_sid.get(socket.sid)
        return kept is not None and kept.recovered and kept.socket is socket

    # -- connect -------------------------------------------------------------------------------
    def open(self, consumer: SocketIOConsumer, namespace: str,
             auth: Any) -> tuple[_Socket, Any]:
        """The socket for a CONNECT: the one its auth's pid and offset restore (its
        packets held until ``connected``), else a new one on a channel of its own; and
        the auth for the connect handler, without ``pid``/``offset``."""
        pid = offset = None
        if isinstance(auth, dict) and ("pid" in auth or "offset" in auth):
            auth = dict(auth)
            pid, offset = auth.pop("pid", None), auth.pop("offset", None)
        kept = self._by_pid.get(pid) if isinstance(pid, str) else None
        if kept is not None and kept.parked and kept.socket.namespace == namespace:
            at = kept.position(offset)
            if at is not None:
                return self._restore(kept, consumer, at), auth
            log.info("socketio: a reconnect's offset is not one this socket can recover "
                     "from: a new socket")
            self.release(kept)  # its client goes on with a new one
        layer = consumer.channel_layer
        kept = _Kept(self, layer)
        kept.channel = layer.attach(kept)
        skip_held(kept)
        socket = _Socket(consumer, namespace, _new_sid(kept.channel, namespace), kept.channel)
        kept.socket = socket
        kept.max_bytes = consumer._conn.config.max_send_buffer
        self._by_pid[kept.pid] = kept
        self._by_sid[socket.sid] = kept
        return socket, auth

    def _restore(self, kept: _Kept, consumer: SocketIOConsumer, at: int) -> _Socket:
        self._unpark(kept)
        kept._trim(at)  # the client has those
        kept.mark = -1
        kept.holding = kept.recovered = True
        kept.keep = kept.final = False
        socket = kept.socket
        socket.consumer = consumer
        socket.pending = True
        socket.acks = {}  # the old connection's acks are gone with it
        log.debug("socketio: socket {sid} recovered", sid=socket.sid)
        return socket

    def connected(self, socket: _Socket) -> None:
        """The connect handler accepted: CONNECT with the sid and the pid, then (restored)
        the packets the client missed, in order, then the rest."""
        kept = self._by_sid.get(socket.sid)
        if kept is None or kept.socket is not socket:
            return  # let go while its connect handler ran: its connection closes
        consumer = socket.consumer
        consumer._send(encode_packet(CONNECT, socket.namespace,
                                     {"sid": socket.sid, "pid": kept.pid})[0])
        kept.announced = True
        if kept.holding:
            kept.holding = False
            for _, _, text, attachments, _ in list(kept.packets):
                consumer._send(text, attachments)
            for text, attachments in kept.take_later():
                consumer._send(text, attachments)

    def packet(self, socket: _Socket, text: str, attachments: list[bytes],
               offset: str | None) -> None:
        """A packet ``emit`` sends to a socket of this process directly."""
        kept = self._by_sid.get(socket.sid)
        if kept is None or kept.socket is not socket:
            socket.consumer._send(text, attachments)
        else:
            kept.take(text, attachments, offset)

    # -- pings ---------------------------------------------------------------------------------
    def ping_sent(self, consumer: SocketIOConsumer) -> None:
        for socket in consumer._sockets.values():
            kept = self._by_sid.get(socket.sid)
            if kept is not None and not kept.holding and not kept.parked:
                kept.mark = kept.seq

    def pong(self, consumer: SocketIOConsumer) -> None:
        for socket in consumer._sockets.values():
            kept = self._by_sid.get(socket.sid)
            if kept is not None and not kept.holding and not kept.parked:
                kept.confirm()

    # -- the end -------------------------------------------------------------------------------
    def connection_lost(self, consumer: SocketIOConsumer, code: int) -> None:
        """Its connection ended (``disconnect(code)``): its sockets are kept once their
        ``disconnect`` handlers ran (not after a DISCONNECT or a server disconnect: those
        sockets left ``consumer._sockets`` first). Whatever happens to the handlers, each
        socket is kept or let go at last (``_settle``): its channel is not the connection's,
        so nothing else would take it out of the layer."""
        conn = consumer._conn
        for socket in consumer._sockets.values():
            kept = self._by_sid.get(socket.sid)
            if kept is not None and kept.socket is socket:
                kept.keep = code not in _NOT_KEPT_CODES and not kept.final
                if kept.settle is None:
                    kept.settle = conn.reactor.callLater(
                        conn.config.application_close_timeout + 1.0, self._settle, kept,
                        socket)

    def _settle(self, kept: _Kept, socket: _Socket) -> None:
        """Its ``disconnect`` step never came to ``_drop`` (cancelled at the kill)."""
        kept.settle = None
        if kept.done or kept.parked or kept.socket is not socket:
            return
        log.warn("socketio: socket {sid} outlived its connection's disconnect step",
                 sid=socket.sid)
        if socket.consumer._sockets.get(socket.namespace) is socket:
            del socket.consumer._sockets[socket.namespace]
        if self.server._sockets.get(socket.sid) is socket:
            del self.server._sockets[socket.sid]
        self.drop(socket)

    @staticmethod
    def _unsettle(kept: _Kept) -> None:
        call, kept.settle = kept.settle, None
        if call is not None and call.active():
            call.cancel()

    def let_go(self, socket: _Socket) -> None:
        """A server disconnect while its connection's loss is handled (its ``disconnect``
        handler runs): not kept when that ends."""
        kept = self._by_sid.get(socket.sid)
        if kept is not None and kept.socket is socket:
            kept.keep, kept.final = False, True

    def drop(self, socket: _Socket) -> None:
        """``_drop``: the socket is gone from its connection: kept for a reconnect, or let go."""
        kept = self._by_sid.get(socket.sid)
        if kept is None or kept.socket is not socket or kept.done:
            return
        self._unsettle(kept)
        if kept.keep and kept.announced and not self.server._sockets.get(socket.sid):
            self._park(kept)
        else:
            self.release(kept)

    def _park(self, kept: _Kept) -> None:
        conn = kept.socket.consumer._conn
        kept.parked = True
        kept.holding = False
        kept.take_later()  # (not kept: they have no offset)
        kept.mark = -1
        kept.expiry = conn.reactor.callLater(self.max_disconnection_duration,
                                             self._expired, kept)
        site = getattr(conn, "site", None)
        listeners = getattr(site, "drain_listeners", None)
        if listeners is not None:
            if getattr(site, "draining", False):
                self.release(kept)
                return
            kept.site = site
            listeners.add(kept)

    def _unpark(self, kept: _Kept) -> None:
        kept.parked = False
        call, kept.expiry = kept.expiry, None
        if call is not None and call.active():
            call.cancel()
        site, kept.site = kept.site, None
        if site is not None:
            site.drain_listeners.discard(kept)

    def _expired(self, kept: _Kept) -> None:
        kept.expiry = None
        log.debug("socketio: socket {sid} not back in {seconds} s: let go",
                  sid=kept.socket.sid, seconds=self.max_disconnection_duration)
        self.release(kept)

    def release(self, kept: _Kept) -> None:
        """Let the socket go: out of the layer and its groups, its packets freed."""
        if kept.done:
            return
        self._unpark(kept)
        self._unsettle(kept)
        kept.done = True
        if self._by_pid.get(kept.pid) is kept:
            del self._by_pid[kept.pid]
        sid = kept.socket.sid
        if self._by_sid.get(sid) is kept:
            del self._by_sid[sid]
        kept.packets.clear()
        kept.later = []
        kept.size = 0
        kept.socket.rooms.clear()
        kept.layer.detach(kept.channel)

    def release_all(self) -> None:
        """Every kept socket goes (``shutdown()``)."""
        for kept in [kept for kept in self._by_sid.values() if kept.parked]:
            self.release(kept)

    def kept_count(self) -> int:
        """How many sockets wait for their client to come back."""
        return sum(kept.parked for kept in self._by_sid.values())


__all__ = ["MAX_DISCONNECTION_DURATION", "MAX_PACKETS", "Recovery"]
