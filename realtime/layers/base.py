"""What every channel layer shares: names, local receivers, local groups, local fan-out.

A *receiver* is the bridge object of one live consumer (a WebSocket or an HTTP consumer):
``deliver(event)`` puts an event on its ordered handler queue, ``deliver_frame(frame)``
writes a prepared WebSocket frame (the ``broadcast`` fast path). Each process keeps its own
group memberships for its own receivers, so a member that goes away is removed from every
group at once: no zombie members, no expiry scans.

Broadcasts made while one read is parsed (a WebSocket's frames, a Redis subscriber's
messages) are *held* and leave when the reactor turn is done (the end of the read, off a
running reactor): consecutive broadcasts to one group go to each member as one write (a
burst of 5 messages, or 5 publishers' messages read in one turn: one ``send()`` per member,
not 5), and a member of several groups that had broadcasts then gets them all in one
write. A connection's own write, or a change of its groups, first lets out what is held
for that connection alone (``let_out_for``), so every member still sees every frame in the
order it was sent; see ``hold()``. With ``set_broadcast_delay(seconds)`` (the
``--broadcast-delay`` option) every broadcast waits up to that long, so a busy group's
messages reach each member in fewer, larger writes: less CPU, more latency. No more than
``JOIN_LIMIT`` bytes are ever held.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import secrets
import sys
import threading
import time
import types
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import msgpack
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread

from realtime import _fanout
from realtime._fanout import Members, slots_of
from realtime.exceptions import (
    ChannelFull,  # noqa: F401 (re-exported: realtime.layers)
    TooManyGroups,
)
from realtime.layers.history import (
    META_TTL,
    POSITION,
    HistoryRule,
    HistoryRules,
    check_limit,
    check_rule,
    check_since,
)

log = Logger()

_NAME = re.compile(r"^[a-zA-Z0-9\-_.]+(![a-zA-Z0-9\-_.]*)?$")
MAX_NAME = 99
#: The prefix of the group each connection of a user joins to be reached by user
#: (``realtime.pubsub.user_group``): one per connection, not counted against
#: ``max_groups_per_connection`` (which bounds the channels a client subscribes to).
UNCOUNTED_GROUP_PREFIX = "ps-user."


class LayerUnavailable(ConnectionError):
    """The layer cannot reach its backend (Redis down or reconnecting): the publish was not
    made. Nothing is buffered; ``stats.unavailable`` counts these."""


class Receiver(Protocol):
    #: How far it has had the held broadcasts (``let_out_for``): ``-1, 0`` to start with.
    _held_seq: int
    _held_count: int

    def deliver(self, event: dict[str, Any]) -> None: ...

    def deliver_frame(self, frame: bytes) -> bool: ...

    def deliver_joined(self, joined: bytes) -> bool: ...

    def close_from_layer(self, code: int, reason: str | None) -> None: ...


# -- held broadcasts ------------------------------------------------------------------------------

#: Broadcasts waiting for the end of the read (or reactor turn, or broadcast delay) that made
#: them: ``[layer, group, frames, seq]``, in order; a broadcast to the same group as the last
#: one joins it. ``seq`` numbers the entries for good, so a receiver can note how far it has
#: had them (``let_out_for``). Mutated in place, never rebound, so ``if HELD:`` in the write
#: paths is one global lookup.
HELD: list[list[Any]] = []
#: The same entries by ``(layer, group)``, in order, and the layers they belong to: a
#: member's own write reads only its own groups' entries, not everything held (with many
#: rooms busy in one turn or delay, a scan of ``HELD`` per write was quadratic).
_BY_GROUP: dict[tuple[Any, str], list[list[Any]]] = {}
_LAYERS: list[Any] = []


#: A burst is joined into one write per member up to this size (the cork's limit); past it
#: each frame goes on its own, so the slow-consumer policy sees every frame. It is also as
#: much as is ever held: a broadcast that takes what is held past it lets everything out at
#: once, so a flood of broadcasts (or a long ``--broadcast-delay``) costs no more memory.
JOIN_LIMIT = 65536


class _Hold:
    depth = 0
    thread: int | None = None
    #: Calls waiting for the held broadcasts to be written (``after_release``).
    after: list[Callable[[], Any]] = []
    #: The reactor of the outermost read being parsed (``hold(reactor)``).
    reactor: Any = None
    #: The pending end-of-turn call, while broadcasts wait for the reactor turn to end.
    turn: Any = None
    #: The next entry's ``seq``.
    seq = 0
    #: The bytes of every frame in ``HELD``.
    size = 0
    #: Some receiver has had part of what is held (``let_out_for``, ``skip_held``): the
    #: fan-out checks each member's mark until everything held is out.
    marked = False
    #: ``set_broadcast_delay``: how long the turn's end waits (0: the turn itself), and the
    #: reactor a broadcast outside a read waits on.
    delay = 0.0
    delay_reactor: Any = None


#: Receivers whose sends ``deliver`` corked during a read (``corking``): the events a
#: read's handlers fan out (one ``group_send`` per message in it) reach each member in one
#: write at the outermost ``release()``.
CORKED: list[Any] = []


def corking() -> bool:
    """A read is being parsed on this (the reactor's) thread: a receiver that a layer event
    reaches may cork its sends until ``release()`` (and join ``CORKED``)."""
    return bool(_Hold.depth) and _Hold.thread == threading.get_ident()


def _uncork_read() -> None:
    corked = CORKED[:]
    CORKED.clear()
    for receiver in corked:
        try:
            receiver.uncork_read()
        except Exception:
            log.failure("writing what a read's layer events sent failed")


def hold(reactor: Any = None) -> None:
    """A read starts being parsed (on the reactor thread): hold broadcasts until
    ``release()``. Nests. With a running ``reactor``, what is held at the outermost
    release waits for the end of the reactor turn, or the broadcast delay (``release``)."""
    if not _Hold.depth:
        if _Hold.turn is None:
            _Hold.thread = threading.get_ident()
        _Hold.reactor = reactor
    _Hold.depth += 1


def release() -> None:
    """The read is done. The outermost release lets the held broadcasts out, then runs what
    waited for them (``after_release``); or, when the read came from a running reactor,
    leaves them for the end of the reactor turn (or ``set_broadcast_delay``'s seconds): the
    other reads of that time (other publishers' messages to the same group) join them, one
    write per member for all."""
    _Hold.depth -= 1
    if _Hold.depth:
        return
    if CORKED:
        # What the handlers of this read's events sent, before the held broadcasts: any of
        # those broadcast earlier went into the cork already (every write lets them out).
        _uncork_read()
    if _Hold.turn is not None and _turn_live():
        return
    if not HELD:
        if _Hold.after:
            _let_out()
        return  # the end of almost every read: nothing was broadcast
    reactor = _Hold.reactor
    if getattr(reactor, "running", False):
        # callLater(0) runs after every read the reactor's poll returned with (Twisted's
        # mainLoop: runUntilCurrent, doIteration, runUntilCurrent), before it polls again;
        # with a broadcast delay, after the reads of that many seconds.
        _Hold.turn = reactor.callLater(_Hold.delay, _end_turn)
        return
    _let_out()


def set_broadcast_delay(seconds: float, reactor: Any = None) -> None:
    """Hold every broadcast on ``reactor``'s thread up to ``seconds`` (0: to the end of the
    reactor turn only, the default): what a group gets in that time reaches each member in
    one write (Centrifugo's ``client.write_delay``). A connection's own writes and group
    changes still let the held frames out first, so order is kept and the delay is a
    ceiling."""
    if seconds < 0:
        raise ValueError("the broadcast delay cannot be negative")
    _Hold.delay = float(seconds)
    _Hold.delay_reactor = reactor
    turn = _Hold.turn
    if turn is not None and not _Hold.depth:
        # What waits for the old delay goes now (a test server's stop, a reload).
        if turn.active():
            turn.cancel()
        _Hold.turn = None
        _let_out()


def _turn_live() -> bool:
    """The pending end-of-turn call will run at the end of this turn (or within the broadcast
    delay). One that was cancelled (a test harness's clean-up, a stopped reactor) or that
    the wall clock was set back behind (Twisted times calls by ``time.time()``: the
    broadcasts would wait as long) is dropped, and the caller lets the held broadcasts out
    itself."""
    turn = _Hold.turn
    if turn.active():
        if turn.getTime() <= turn.seconds() + _Hold.delay:
            return True
        turn.cancel()
    _Hold.turn = None
    return False


def _end_turn() -> None:
    _Hold.turn = None
    if not _Hold.depth:
        _let_out()


def _let_out() -> None:
    if HELD:
        flush_held()
    if not _Hold.after:
        return
    after, _Hold.after = _Hold.after, []
    for call in after:
        try:
            call()
        except Exception:
            log.failure("a call waiting for held broadcasts failed")


def _holding() -> bool:
    """Broadcasts from this thread are held now (inside a read, or until the turn ends)."""
    if not (_Hold.depth or _Hold.turn is not None) or _Hold.thread != threading.get_ident():
        return False
    if _Hold.depth or _turn_live():
        return True
    _let_out()  # a dead turn: what it held goes now, ahead of the caller's
    return False


def after_release(call: Callable[[], Any]) -> None:
    """Run ``call`` once the broadcasts held so far are written: when the read being parsed
    (or the reactor turn, or the broadcast delay) ends, or now outside one (the Redis layer
    fires a publisher's Deferred so)."""
    if _holding():
        _Hold.after.append(call)
    else:
        call()


def flush_held() -> None:
    """Deliver every held broadcast now, in order (what must happen before a layer flush,
    so nothing overtakes them). Nothing held: nothing done. One entry at a time, the rest
    left in ``HELD``: a member's own write made meanwhile (a 4008 close) takes its share of
    them first and is marked, as anywhere else. With several entries held (broadcasts to
    several groups, or to one group with others between), a member that more than one of
    them reaches gets its share of all of them first, in one write (``_join_members``)."""
    if len(HELD) > 1:
        _join_members()
    while HELD:
        layer, group, frames, seq = HELD.pop(0)
        _Hold.size -= sum(map(len, frames))
        key = (layer, group)
        entries = _BY_GROUP[key]
        del entries[0]  # this one: a group's entries leave in order
        if not entries:
            del _BY_GROUP[key]
        try:
            layer._send_frames(group, frames, seq if _Hold.marked else -1)
        except Exception:
            # A bug in one member's write must not cost the other groups their frames
            # (nor the connection whose read ends here).
            log.failure("broadcast to group {group} failed", group=group)
    # Every mark is behind every later entry's seq now.
    _Hold.marked = False
    _Hold.size = 0
    _BY_GROUP.clear()
    del _LAYERS[:]


def _join_members() -> None:
    """Before the entries leave one by one: each member that more than one held entry
    reaches (a member of two rooms that both had a message, or of a group with another
    group's entry between two of its own) has its frames of all of them written now, in
    broadcast order, in one write, and is marked (so the entries then skip it): one
    ``send()`` per member per turn (or broadcast delay), not one per entry.

    Members are grouped by the entries that reach them (set operations, not a loop per
    member), and each group of members shares one joined copy. A member that one entry
    reaches is left to that entry's fan-out loop, the cheap path (finding that no member is
    reached twice is a counter read when no member is in two groups, else one C-level
    count); so is one whose frames together exceed
    ``JOIN_LIMIT`` (one write per entry, as before, rather than one per frame), and one
    that cannot take a joined write now (its mark is put back). One marked earlier (it had
    part of what is held) takes the general ``let_out_for``.

    Layers that share their receivers (the shards of ``realtime.layers.sharded``: one
    receiver in groups on several of them) are one *family* here: their entries are joined
    together, in held order, and a mark names the family's last entry (joined per layer, a
    member's mark past another shard's earlier entry made that entry skip it: lost).

    Everything is read before the first write, and marks name the family's last entry as
    it was then (a receiver is attached to one family; were one in two, the other's later
    entries would still reach it): a write that makes another read parse at once (no
    socket does; a transport that did could add entries or frames, or let everything out)
    changes nothing decided here, and if that read let the held entries out, this stops."""
    snapshot = [(entry, list(entry[2])) for entry in HELD]
    first = HELD[0]
    first_seq = first[3]
    plans = []
    families: dict[int, list[Any]] = {}
    for held_layer in _LAYERS:
        families.setdefault(id(held_layer._receivers), []).append(held_layer)
    for family in families.values():
        layer = family[0]
        mine = [(entry, frames) for entry, frames in snapshot
                if any(entry[0] is member for member in family)]
        if len(mine) < 2:
            continue
        if not layer._in_several and len(
                {(id(entry[0]), entry[1]) for entry, _ in mine}) == len(mine):
            continue  # no channel in two groups, no group held twice: no one reached twice
        reached = [entry[0]._groups.get(entry[1]) or {} for entry, _ in mine]
        times: Counter[str] = Counter()
        for members in reached:
            times.update(members.keys())
        if len(times) == sum(map(len, reached)):
            continue  # no member is reached twice
        # The members by the entries that reach them: {(0, 2): {channels}, ...}.
        parts: dict[tuple[int, ...], set[str]] = {}
        for index, members in enumerate(reached):
            if not members:
                continue
            keys = members.keys()
            rest = set(keys)
            refined: dict[tuple[int, ...], set[str]] = {}
            for key, part in parts.items():
                inside = part.intersection(keys)
                if inside:
                    rest -= inside
                    refined[(*key, index)] = inside
                    if len(inside) < len(part):
                        refined[key] = part - inside
                else:
                    refined[key] = part
            if rest:
                refined[(index,)] = rest
            parts = refined
        for key, part in parts.items():
            if len(key) > 1:
                frames = [frame for index in key for frame in mine[index][1]]
                joined = b"".join(frames)
                if len(joined) <= JOIN_LIMIT:
                    last, last_frames = mine[-1]
                    plans.append((layer, part, frames, joined, last[3], len(last_frames)))
    for layer, part, frames, joined, upto, count in plans:
        receivers = layer._receivers
        for channel in part:
            receiver = receivers.get(channel)
            if receiver is None:
                continue
            if _Hold.marked and getattr(receiver, "_held_seq", -1) >= first_seq:
                let_out_for(receiver, channel)
            else:
                # Marked first: a write that closes the socket (4008) must not come back
                # for the same frames.
                before = getattr(receiver, "_held_seq", -1), getattr(receiver, "_held_count", 0)
                receiver._held_seq, receiver._held_count = upto, count
                _Hold.marked = True
                try:
                    if not layer._write_joined(receiver, len(frames), joined):
                        # Nothing written: the entries give it its frames one by one.
                        receiver._held_seq, receiver._held_count = before
                except Exception:
                    log.failure("broadcast to channel {channel} failed", channel=channel)
            if not HELD or HELD[0] is not first:
                return  # let out from inside a write (see above): nothing left to join


def let_out_for(receiver: Any, channel: str | None) -> None:
    """Before a write of ``receiver``'s own (a ``send``, a pong, a close frame) or a change
    of its groups: write what is held for it alone, in order, and mark it as having had
    everything held, so the held frames still go to every other member together when the
    turn (or delay) ends, and none broadcast before now reaches it later. The layer's own
    deliveries are used (``deliver_joined``, else ``deliver_frame``): they never come back
    here."""
    if channel is None:
        return  # in no group
    last = HELD[-1]
    upto, count = receiver._held_seq, receiver._held_count
    if upto == last[3] and count == len(last[2]):
        return  # it has had everything held
    # Marked first: a write below that closes the socket (4008) must not come back for
    # the same frames.
    _mark(receiver)
    picked: list[list[Any]] = []
    counted: Any = None
    for layer in _LAYERS:
        groups = layer._memberships.get(channel)
        if not groups or layer._receivers.get(channel) is not receiver:
            continue
        for group in groups:
            entries = _BY_GROUP.get((layer, group))
            if entries:
                picked.extend(entry for entry in entries if entry[3] >= upto)
                counted = counted or layer
    if len(picked) > 1:
        picked.sort(key=lambda entry: entry[3])
    mine: list[bytes] = []
    for _, _, frames, seq in picked:
        mine.extend(frames[count:] if seq == upto else frames)
    if mine:
        try:
            # Counted on the first layer's stats (a process has one layer).
            counted._deliver_frames(receiver, mine)
        except Exception:
            log.failure("broadcast to channel {channel} failed", channel=channel)


def skip_held(receiver: Any) -> None:
    """``receiver`` opens now: what is held was broadcast before, and is not for it."""
    if HELD:
        _mark(receiver)


def _mark(receiver: Any) -> None:
    """``receiver`` has had everything held (``HELD[-1]``: its seq and frame count)."""
    last = HELD[-1]
    receiver._held_seq, receiver._held_count = last[3], len(last[2])
    _Hold.marked = True


#: The characters ``escape_name`` keeps as they are (``_`` is not one: it starts escapes).
NAME_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def escape_name(text: str) -> str:
    """``text`` in characters every group name allows, any other as ``_XX`` per UTF-8 byte:
    distinct texts stay distinct (``realtime.pubsub``'s channels, ``realtime.socketio``'s
    namespaces and rooms as group names)."""
    return "".join(c if c in NAME_SAFE else "".join(f"_{b:02X}" for b in c.encode())
                   for c in text)


def check_name(name: Any, what: str = "channel") -> str:
    """ASCII letters, digits, ``-``, ``_``, ``.`` (and a ``!`` suffix on channels), under
    100 characters; anything else is a ``TypeError`` (as in Channels)."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not _NAME.match(name):
        raise TypeError(
            f"{what} name must be a str of ASCII letters, digits, '-', '_' or '.' under 100 "
            f"characters, not {name!r}"
        )
    if what == "group" and "!" in name:
        raise TypeError(f"group name may not contain '!': {name!r}")
    return name


def check_message(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise TypeError(f"a channel layer message must be a dict, not {type(message).__name__}")
    kind = message.get("type")
    if not isinstance(kind, str) or not kind:
        raise TypeError("a channel layer message needs a 'type' str")
    return message


_UNSET: Any = object()


def check_presence(info: Any) -> dict[str, Any] | None:
    """``presence=`` of ``group_add``: None (no presence) or a dict of JSON values (it
    crosses processes, and ``/api/presence`` answers it), copied."""
    if info is None:
        return None
    if not isinstance(info, dict):
        raise TypeError(f"presence must be a dict, not {type(info).__name__}")
    try:
        copied: dict[str, Any] = json.loads(json.dumps(info, allow_nan=False))
        msgpack.packb(copied)  # what crosses processes (an int past 64 bits does not)
        return copied
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise TypeError(f"presence must be a dict of JSON values: {exc}") from None


def check_close(code: Any, reason: Any) -> None:
    """``group_close``'s arguments: a close code an application may send (1000 or
    3000-4999, as ``close()`` takes) and a str reason or None; else ``ValueError``."""
    if not isinstance(code, int) or isinstance(code, bool) or not (
            code == 1000 or 3000 <= code <= 4999):
        raise ValueError(f"close code must be 1000 or 3000-4999, not {code!r}")
    if reason is not None and not isinstance(reason, str):
        raise ValueError(f"close reason must be a str, not {reason!r}")


def invalid(group: Any = _UNSET, channel: Any = _UNSET, message: Any = _UNSET) -> Any:
    """A failed Deferred (``TypeError``) when a name or message is bad, else None: what every
    layer method checks first, so that ``await`` raises and a fire-and-forget never does."""
    try:
        if group is not _UNSET:
            check_name(group, "group")
        if channel is not _UNSET:
            check_name(channel)
        if message is not _UNSET:
            check_message(message)
    except TypeError as exc:
        return fail(exc)
    return None


def check_exclude(exclude: Any) -> tuple[str, ...] | None:
    """``broadcast``'s ``exclude=``: None, a channel name or an iterable of them (a
    ``TypeError`` otherwise), as a tuple; None when empty."""
    if exclude is None:
        return None
    if isinstance(exclude, str):
        names: tuple[Any, ...] = (exclude,)
    else:
        try:
            names = tuple(exclude)
        except TypeError:
            raise TypeError(f"exclude must be a channel name or a list of them, not "
                            f"{exclude!r}") from None
    for name in names:
        check_name(name)
    return names or None


def prepared_frame(text: str | None, data: bytes | None) -> bytes:
    from realtime.websocket import encode_frame, utf8

    if (text is None) == (data is None):
        raise ValueError("broadcast() takes exactly one of text= or bytes=")
    if text is not None:
        return encode_frame(0x1, utf8(text))
    assert data is not None
    return encode_frame(0x2, bytes(data))


def frame_event(frame: bytes) -> dict[str, Any]:
    """A ``prepared_frame`` back as a ``broadcast.message`` event (``text`` or ``bytes``),
    for a member that is no WebSocket (an HTTP consumer's event stream)."""
    opcode, size = frame[0] & 0x0F, frame[1] & 0x7F
    start = 2 if size < 126 else 4 if size == 126 else 10
    payload = frame[start:]
    if opcode == 0x1:
        return {"type": "broadcast.message", "text": payload.decode("utf-8")}
    return {"type": "broadcast.message", "bytes": payload}


def _had(had: tuple[str, int] | None, where: tuple[str, int] | None) -> bool:
    """A member that has had everything up to ``had`` has had the message at ``where``."""
    return (had is not None and where is not None and had[0] == where[0]
            and had[1] >= where[1])


def _where(message: dict[str, Any]) -> tuple[str, int] | None:
    """A history message's position as ``(epoch, offset)``; None for any other message
    (a ``layer.gap``, a presence event)."""
    where = message.get(POSITION)
    if isinstance(where, dict):
        epoch, offset = where.get("epoch"), where.get("offset")
        if isinstance(epoch, str) and isinstance(offset, int):
            return epoch, offset
    return None


def no_history(group: str) -> ValueError:
    return ValueError(f"group {group!r} keeps no history (no --history rule matches it)")


class LayerStats:
    """Counters the operations issue exports as metrics."""

    def __init__(self) -> None:
        self.delivered = 0
        self.dropped = 0
        self.published = 0
        self.broadcast_frames = 0
        self.broadcast_bytes = 0
        #: Writes that carried broadcast frames to a member: several frames held during one
        #: read and sent together count once (frames / writes is the coalescing ratio).
        self.broadcast_writes = 0
        #: Publishes refused because the backend was unreachable (``LayerUnavailable``).
        self.unavailable = 0
        #: ``layer.gap`` notices sent (one per group per reconnect).
        self.gaps = 0
        #: History: messages replayed to members (joins with ``since``, reconnects), and
        #: recoveries history no longer covered (``recovered`` False, or a reconnect's gap).
        self.history_recovered = 0
        self.history_unrecovered = 0
        #: ``presence.leave`` events this process made for another process's members when
        #: that process was declared gone (it died without its members leaving; Redis).
        self.presence_expired = 0


#: Survey answers by question (``on_survey``): ``answer(layer, args)`` gives this process's.
_SURVEYS: dict[str, Callable[[Any, Any], Any]] = {}
#: ``group_sizes``' question: this process's members of each group with a given prefix.
GROUP_SIZES = "realtime.group_sizes"


def on_survey(name: str, answer: Callable[[Any, Any], Any]) -> None:
    """This process answers ``layer.survey(name, args)`` with ``answer(layer, args)``, for
    every layer: a value msgpack carries (dicts, lists, str, numbers, None). A module
    registers its questions at import, so every process that serves it answers them."""
    _SURVEYS[name] = answer


def _local_group_sizes(layer: BaseChannelLayer, prefix: Any) -> dict[str, int]:
    if not isinstance(prefix, str):
        return {}
    return {group: len(members) for group, members in layer.local_groups().items()
            if group.startswith(prefix)}


class BaseChannelLayer:
    """Local bookkeeping; subclasses decide what crosses processes."""

    extensions = ["groups", "flush"]
    #: How long a history stream's epoch and offset outlive its last publish (seconds).
    history_meta_ttl = META_TTL
    #: Groups one local consumer's channel may be in (``--max-groups-per-connection``;
    #: 0: no limit): past it ``group_add`` fails with ``TooManyGroups``.
    max_groups_per_connection = 128

    #: Seconds a queue of messages nobody reads (a ``receive()`` channel whose reader went
    #: away, a name nothing will read) is kept after its last message: Channels' message
    #: ``expiry`` (60 s), per queue. Without it such queues, each up to ``capacity``
    #: messages, would stay for the life of the process.
    expiry = 60.0

    def __init__(self, capacity: int = 100,
                 history: dict[str, tuple[int, float]] | None = None) -> None:
        self.capacity = capacity
        #: Which groups keep their last messages (``keep_history``; ``realtime.layers.history``).
        self.history = HistoryRules()
        for pattern, (size, ttl) in (history or {}).items():
            self.keep_history(pattern, size, ttl)
        #: ``(group, channel)`` joins recovering history (Redis: the read is in flight):
        #: the group's messages for that member wait here, to follow the missed ones (a
        #: newer join of the same pair puts a new list here: the older one's read is moot).
        self._recovering: dict[tuple[str, str], list[dict[str, Any]]] = {}
        #: Layers where a history message can reach a member twice (Redis: a read and the
        #: live stream race; they pass ``_fan_out`` the position): members of history groups
        #: that a read (a join, a reconnect's recovery) gave everything up to a position the
        #: live stream has not passed yet: group -> {channel: (epoch, offset)}; a live
        #: message at or before it is skipped, the first one after it ends the entry. Few
        #: entries: recent joins.
        self._floors: dict[str, dict[str, tuple[str, int]]] = {}
        #: Those layers: the last history position fanned out live per group; a member
        #: without a floor has had everything up to it.
        self._seen: dict[str, tuple[str, int]] = {}
        self.process_id = secrets.token_hex(6)
        self.stats = LayerStats()
        #: Live local consumers by channel name.
        self._receivers: dict[str, Receiver] = {}
        #: group -> local member channel names (insertion-ordered), each with its live
        #: receiver (None for a channel nobody is attached to): a fan-out reads no other map.
        self._groups: dict[str, dict[str, Receiver | None]] = {}
        #: channel -> the groups it is in (to clean up on detach).
        self._memberships: dict[str, set[str]] = {}
        #: How many channels are in more than one group: none, and held broadcasts to
        #: different groups cannot reach one member twice (``_join_members`` skips its count).
        self._in_several = 0
        #: Presence: group -> {channel: (info, announce)} for this process's members added
        #: with ``group_add(..., presence=info)`` (``group_presence`` asks every process).
        self._presence: dict[str, dict[str, tuple[dict[str, Any], bool]]] = {}
        #: Queued messages for channels nobody is attached to (workers, ``receive()``).
        self._queues: dict[str, deque[dict[str, Any]]] = {}
        #: When each queue last had a message (``_expire_queues``), and when they were
        #: last swept.
        self._queued_at: dict[str, float] = {}
        self._queues_swept = 0.0
        self._waiters: dict[str, deque[Deferred[dict[str, Any]]]] = {}

    def _join_args(self, group: str, channel: str, presence: Any, since: Any
                   ) -> tuple[dict[str, Any] | None, tuple[str, int] | None, HistoryRule | None]:
        """``group_add``'s arguments checked (``TypeError``, ``ValueError``): the presence
        info, the position to recover from, the group's history rule."""
        check_name(group, "group")
        check_name(channel)
        info = check_presence(presence)
        position = check_since(since)
        limit = self.max_groups_per_connection
        if limit and channel in self._receivers:
            joined = self._memberships.get(channel)
            if joined is not None and len(joined) >= limit and group not in joined and (
                    not group.startswith(UNCOUNTED_GROUP_PREFIX)):
                counted = sum(not g.startswith(UNCOUNTED_GROUP_PREFIX) for g in joined)
                if counted >= limit:
                    raise TooManyGroups(
                        f"{channel} is in {counted} groups, as many as "
                        f"--max-groups-per-connection allows: not added to {group!r}")
        rule = self.history.match(group) if self.history else None
        if rule is None and position is not None:
            raise no_history(group)
        if position is not None and channel in self._groups.get(group, ()):
            raise ValueError(f"{channel} is already in {group!r}: since= is for its first "
                             "join (not with the consumer's groups attribute: join it in "
                             "connect())")
        return info, position, rule

    def _history_args(self, group: str, since: Any, limit: Any
                      ) -> tuple[HistoryRule, tuple[str, int] | None, int | None]:
        """``group_history``'s arguments checked (``TypeError``, ``ValueError``)."""
        check_name(group, "group")
        position = check_since(since)
        most = check_limit(limit)
        rule = self.history.match(group) if self.history else None
        if rule is None:
            raise no_history(group)
        return rule, position, most

    def keep_history(self, pattern: str, size: int, ttl: float) -> None:
        """Groups matching ``pattern`` (a glob; the first rule that matches wins) keep their
        last ``size`` ``group_send`` messages, forgotten ``ttl`` seconds after the last
        publish; their messages carry a ``position`` (see ``realtime.layers.history``).
        Every process publishing to such a group must have the same rules."""
        self.history.add(check_rule(pattern, size, ttl))

    # -- the bridge's side ------------------------------------------------------------------
    def local_prefix(self) -> str:
        return f"specific.{self.process_id}!"

    def attach(self, receiver: Receiver) -> str:
        """A new channel name for a live consumer; events for it go to ``receiver``."""
        name = self.local_prefix() + secrets.token_hex(6)
        self._receivers[name] = receiver
        return name

    def _gone_consumer(self, channel: str) -> bool:
        """Whether ``channel`` (not attached now) was an ``attach`` name of this process: a
        consumer that is gone, which nothing will ever receive from, so a message for it
        (a stored ``channel_name``, a sid, ``POST /api/send``) is dropped, not kept for
        ever. ``new_channel()`` names have another form: they queue for ``receive()``."""
        prefix = self.local_prefix()
        tail = channel[len(prefix):]
        return (len(tail) == 12 and channel.startswith(prefix)
                and all(c in "0123456789abcdef" for c in tail))

    def detach(self, channel: str) -> None:
        """The consumer is gone: forget the channel and its memberships."""
        self._let_out_member(channel)
        self._receivers.pop(channel, None)
        groups = self._memberships.pop(channel, ())
        if len(groups) > 1:
            self._in_several -= 1
        for group in groups:
            self._forget_member(group, channel)

    def _forget_member(self, group: str, channel: str) -> None:
        """``detach``'s part for one of the channel's groups (its memberships are gone)."""
        if self._floors:
            self._unfloor(group, channel)
        members = self._groups.get(group)
        if members is not None:
            members.pop(channel, None)
            if not members:
                del self._groups[group]
                self._group_emptied(group)
        if self._presence:
            self._untrack(group, channel)

    # -- local group bookkeeping --------------------------------------------------------------
    def _let_out_member(self, channel: str) -> None:
        """Before ``channel``'s groups change: what is held for it goes now, and nothing
        held reaches it later (``let_out_for``); the other members' frames stay held."""
        if HELD:
            receiver = self._receivers.get(channel)
            if receiver is not None:
                let_out_for(receiver, channel)

    def _add_local(self, group: str, channel: str) -> bool:
        """True when ``group`` just got its first local member."""
        self._let_out_member(channel)  # a member added now must not get what came before
        members = self._groups.get(group)
        first = members is None
        if members is None:
            members = self._groups[group] = Members()
        members[channel] = self._receivers.get(channel)
        groups = self._memberships.setdefault(channel, set())
        if group not in groups:
            groups.add(group)
            if len(groups) == 2:
                self._in_several += 1
        return first

    def _discard_local(self, group: str, channel: str) -> None:
        self._let_out_member(channel)  # a member leaving now still gets what came before
        members = self._groups.get(group)
        if members is None or channel not in members:
            return
        del members[channel]
        if self._floors:
            self._unfloor(group, channel)
        groups = self._memberships.get(channel)
        if groups is not None and group in groups:
            groups.discard(group)
            if len(groups) == 1:
                self._in_several -= 1
            elif not groups:
                del self._memberships[channel]
        if not members:
            del self._groups[group]
            self._group_emptied(group)
        if self._presence:
            self._untrack(group, channel)

    def _unfloor(self, group: str, channel: str) -> None:
        floors = self._floors.get(group)
        if floors is not None:
            floors.pop(channel, None)
            if not floors:
                del self._floors[group]

    def _group_emptied(self, group: str) -> None:
        """Hook: the last local member of ``group`` left (Redis unsubscribes here)."""

    def local_members(self, group: str) -> list[str]:
        return list(self._groups.get(group, ()))

    def local_groups(self) -> Mapping[str, Mapping[str, Any]]:
        """This process's groups with members here (group -> its local members)."""
        return self._groups

    # -- presence ------------------------------------------------------------------------------
    def _track(self, group: str, channel: str, info: dict[str, Any],
               announce: bool = True) -> Deferred[None]:
        """``channel``, now a local member of ``group``, is in the group's presence with
        ``info``; with ``announce`` the group hears ``presence.join`` (again when the info
        changes; not when it is the same). Fires once this process's members have had it
        (as ``group_send`` does)."""
        if channel not in self._groups.get(group, ()):
            return succeed(None)  # it left (or its socket closed) while the join was made
        tracked = self._presence.setdefault(group, {})
        before = tracked.get(channel)
        if before is not None:
            announce = before[1]  # as first added: its joins and leaves stay in pairs
        tracked[channel] = (info, announce)
        if not announce or (before is not None and before[0] == info):
            return succeed(None)
        return self._presence_event("presence.join", group, channel, info)

    def _untrack(self, group: str, channel: str) -> None:
        """``channel`` left ``group``: out of its presence, and (if it announced itself)
        the group hears ``presence.leave``."""
        tracked = self._presence.get(group)
        if tracked is None or channel not in tracked:
            return
        info, announce = tracked.pop(channel)
        if not tracked:
            del self._presence[group]
        if announce:
            self._presence_event("presence.leave", group, channel, info)

    def _presence_event(self, kind: str, group: str, channel: str,
                        info: dict[str, Any]) -> Deferred[None]:
        """``presence.join``/``presence.leave`` to the group; a layer that cannot send it
        (Redis down) logs it and goes on: the presence itself is right either way."""
        event = {"type": kind, "group": group, "channel": channel, "info": info}

        def not_sent(failure: Failure) -> None:
            log.info("channel layer: {kind} for group {group} not sent: {error}",
                     kind=kind, group=group, error=failure.getErrorMessage())
            self._presence_not_sent(kind, group)

        # Not recorded in a history group: a replayed join of someone long gone is wrong.
        return self._group_send(group, event, False).addErrback(not_sent)

    def _presence_not_sent(self, kind: str, group: str) -> None:
        """Hook: a presence event could not be published (Redis re-announces its members
        once it is back, so other processes still learn the change)."""

    def local_presence(self, group: str) -> dict[str, dict[str, Any]]:
        """This process's members of ``group`` in its presence, with their info."""
        return {channel: entry[0] for channel, entry in self._presence.get(group, {}).items()}

    # -- local delivery ------------------------------------------------------------------------
    def _deliver_local(self, channel: str, message: dict[str, Any]) -> bool:
        """Deliver to a local receiver, a waiting ``receive()``, or the channel's queue."""
        receiver = self._receivers.get(channel)
        if receiver is not None:
            receiver.deliver(dict(message))
            self.stats.delivered += 1
            return True
        waiters = self._waiters.get(channel)
        if waiters:
            d = waiters.popleft()
            if not waiters:
                del self._waiters[channel]
            d.callback(dict(message))
            self.stats.delivered += 1
            return True
        if self._gone_consumer(channel):
            self.stats.dropped += 1  # at-most-once, as for a channel of a process gone
            return True
        now = self._queue_clock()
        if now - self._queues_swept >= self.expiry / 4:
            self._expire_queues(now)
        queue = self._queues.setdefault(channel, deque())
        if len(queue) >= self.capacity:
            self.stats.dropped += 1
            return False
        queue.append(dict(message))
        self._queued_at[channel] = now
        return True

    def _queue_clock(self) -> float:
        """The clock of ``expiry`` (the memory layer's is its injected reactor's)."""
        return time.monotonic()

    def _expire_queues(self, now: float) -> None:
        """Drop the queues that had no message for ``expiry`` seconds (their messages
        counted as dropped): at most once per ``expiry / 4``, on a queued message, so a
        queue lives at most ``1.25 * expiry`` past its last message and the sweep costs
        nothing while nothing queues."""
        self._queues_swept = now
        for channel, at in list(self._queued_at.items()):
            if now - at >= self.expiry:
                del self._queued_at[channel]
                queue = self._queues.pop(channel, None)
                if queue:
                    self.stats.dropped += len(queue)

    def _fan_out(self, group: str, message: dict[str, Any],
                 where: tuple[str, int] | None = None,
                 exclude: tuple[str, ...] | None = None) -> None:
        """``message`` to every local member of ``group`` (but ``exclude``); ``where``: its
        position, for a history message that a read may have given some members already
        (they skip it)."""
        recovering = self._recovering
        members = self._groups.get(group)
        if not members:
            return
        floors = None
        if where is not None:
            self._seen[group] = where
            floors = self._floors.get(group)
        for channel in list(members):
            if exclude and channel in exclude:
                continue
            if recovering and (waiting := recovering.get((group, channel))) is not None:
                waiting.append(message)  # after what it missed (``_recovered``)
                continue
            if floors and channel in floors and self._had_it(group, channel, where):
                continue  # a read gave it this one
            if not self._deliver_local(channel, message):
                log.info("group {group}: channel {channel} is over capacity; message dropped",
                         group=group, channel=channel)

    def _had_it(self, group: str, channel: str, where: tuple[str, int] | None) -> bool:
        """A read gave ``channel`` the live message at ``where`` (its floor is at or past
        it); a message past the floor ends the floor, which the live stream has passed."""
        floors = self._floors.get(group)
        if not floors or channel not in floors or where is None:
            return False
        if _had(floors[channel], where):
            return True
        self._unfloor(group, channel)
        return False

    def _recovered(self, group: str, channel: str, missed: list[dict[str, Any]],
                   result: dict[str, Any] | None, waiting: list[dict[str, Any]],
                   had: tuple[str, int] | None = None) -> int:
        """A recovering join (or reconnect) of ``channel`` whose messages waited in
        ``waiting`` is answered (``result``: the read's answer; None when it failed):
        ``missed`` (the missed messages, or a ``layer.gap``) but those up to ``had``
        (what it had before), then those that came meanwhile and the read did not have
        (all when it failed), to the member if it still is one. Nothing when a newer join
        of the pair took over (its own read covers this one's). How many of ``missed``
        it got."""
        key = (group, channel)
        if self._recovering.get(key) is not waiting:
            return 0
        del self._recovering[key]
        if channel not in self._groups.get(group, ()):
            return 0  # it left (or its socket closed) meanwhile
        replayed = 0
        for message in missed:
            if not _had(had, _where(message)):
                replayed += self._recover_one(group, channel, message)
        if result is not None:
            # Everything up to the read's position is had: the live stream may still bring
            # some of it (a slower connection than the read's).
            self._floors.setdefault(group, {})[channel] = (result["epoch"], result["offset"])
        for message in waiting:
            if not self._had_it(group, channel, _where(message)):
                self._recover_one(group, channel, message)
        return replayed

    def _recover_one(self, group: str, channel: str, message: dict[str, Any]) -> bool:
        """False: its queue is full."""
        if not self._deliver_local(channel, message):
            log.info("group {group}: channel {channel} is over capacity; message dropped",
                     group=group, channel=channel)
            return False
        return True

    def _broadcast_local(self, group: str, frame: bytes,
                         exclude: tuple[str, ...] | None = None) -> None:
        """Write ``frame`` to every open local member of ``group`` (but the channels in
        ``exclude``); during a read (``hold``), the rest of its turn, or always with a
        broadcast delay, it is held, to leave with the other broadcasts to the group of that
        time in one write."""
        if _Hold.depth or _Hold.turn is not None:
            if _holding():
                if group in self._groups:
                    skipped = self._excluded(group, exclude) if exclude else None
                    last = HELD[-1] if HELD else None
                    if last is not None and last[0] is self and last[1] == group:
                        last[2].append(frame)
                    else:
                        entry = [self, group, [frame], _Hold.seq]
                        _Hold.seq += 1
                        HELD.append(entry)
                        _BY_GROUP.setdefault((self, group), []).append(entry)
                        if self not in _LAYERS:
                            _LAYERS.append(self)
                    if skipped:
                        for receiver in skipped:
                            _mark(receiver)  # had everything held, this frame included
                    _Hold.size += len(frame)
                    if _Hold.size > JOIN_LIMIT:
                        flush_held()  # in order; what waits for the turn's end still does
                return
            reactor = _Hold.reactor
            if _Hold.thread != threading.get_ident() and getattr(reactor, "running", False):
                # A worker thread's call (outside the contract: ``async_to_sync`` is the
                # way) while the reactor thread holds: on that thread, behind the held ones.
                reactor.callFromThread(self._broadcast_local, group, frame, exclude)
                return
        elif _Hold.delay and isInIOThread():
            # A broadcast outside a read (a timer's, the HTTP API's) waits the delay too.
            hold(_Hold.delay_reactor)
            try:
                self._broadcast_local(group, frame, exclude)
            finally:
                release()
            return
        self._send_frames(group, [frame], exclude=exclude)

    def _excluded(self, group: str, exclude: tuple[str, ...]) -> list[Any]:
        """The local members of ``group`` a held broadcast must skip, each given its share of
        what is held before it first (``let_out_for``): marked after the frame is held,
        they have had it, and get only what is broadcast later."""
        members = self._groups.get(group) or {}
        skipped = [(channel, receiver) for channel in exclude
                   if (receiver := members.get(channel)) is not None]
        while skipped and HELD:
            for channel, receiver in skipped:
                let_out_for(receiver, channel)
            # A write above that made a read parse at once (no socket does) may have held
            # more since: the mark must not pass frames that receiver has not had.
            last = HELD[-1] if HELD else None
            if last is None or all(receiver._held_seq == last[3]
                                   and receiver._held_count == len(last[2])
                                   for _, receiver in skipped):
                break
        return [receiver for _, receiver in skipped]

    def _send_frames(self, group: str, frames: list[bytes], seq: int = -1,
                     exclude: tuple[str, ...] | None = None) -> None:
        """The fan-out loop. Several frames (a held burst) go to a member as one write when
        its socket takes them at once (``deliver_joined``), else one by one, and are counted
        as written. ``seq``: the held entry's, when some members may have had some of it
        (``let_out_for``): they get only the rest. ``exclude``: channels left out (a
        broadcast written at once; held ones mark them instead)."""
        members = self._groups.get(group)
        if members is None:
            return
        # The C loop only on the reactor's thread: it reads the socket table with the GIL
        # released, which only that thread changes (a broadcast on the raw layer from
        # another thread is outside the contract, and takes the Python loop).
        if exclude is None and seq < 0 and _fanout.send_each is not None \
                and type(members) is Members and isInIOThread():
            joined = frames[0] if len(frames) == 1 else b"".join(frames)
            if len(frames) == 1 or len(joined) <= JOIN_LIMIT:
                self._send_each(members, frames, joined)
                return
        # A copy (a few µs for thousands of members): a write whose transport runs code at
        # once (no socket does) may join or leave the group while the loop goes on.
        if exclude is None:
            receivers: Any = list(members.values())
        else:
            skip = exclude if len(exclude) < 8 else frozenset(exclude)  # a long list: hashed
            receivers = [r for channel, r in members.items() if channel not in skip]
        if seq >= 0:
            receivers = self._not_had(receivers, frames, seq)
        stats = self.stats
        if len(frames) == 1:
            frame = frames[0]
            sent = 0
            for receiver in receivers:
                if receiver is not None and receiver.deliver_frame(frame):
                    sent += 1
            stats.broadcast_frames += sent
            stats.broadcast_bytes += sent * len(frame)
            stats.broadcast_writes += sent
            return
        joined = b"".join(frames)  # once for every member
        for receiver in receivers:
            if receiver is not None:
                self._deliver_frames(receiver, frames, joined)

    def _send_each(self, members: Members, frames: list[bytes], joined: bytes) -> None:
        """``frames`` (back to back in ``joined``) to every member: to the clean sockets in
        one write each, in one C loop (``realtime._fanout``); then, in Python, the slow
        path of the others (``_deliver_frames``, which counts them) and the rest of each
        partial write. Nothing run here can change the slot array it writes from (a group
        change makes a new one)."""
        _, slots, others = slots_of(members)
        written = len(slots)
        if written:
            missed = _fanout.send_each(_fanout.FDS, slots, joined)  # type: ignore[misc]
            if missed is not None:
                owners = _fanout.OWNERS
                # First the rests of partial writes (the kernel took part, none, or
                # failed): nothing may reach those sockets before them.
                for slot, took in missed:
                    if took is not None and (receiver := owners[slot]) is not None:
                        receiver._send_rest(receiver.transport, took, joined)
                for slot, took in missed:
                    if took is None:  # not clean
                        written -= 1
                        if (receiver := owners[slot]) is not None:  # (None: lost)
                            self._deliver_frames(receiver, frames, joined)
        if others:
            slotted = False
            for receiver in others:
                self._deliver_frames(receiver, frames, joined)
                slotted = slotted or _fanout.slot_of(receiver) >= 0
            if slotted:
                members.fast = None  # one took a slot since: in the array next time
        if written:
            stats = self.stats
            stats.broadcast_frames += written * len(frames)
            stats.broadcast_bytes += written * len(joined)
            stats.broadcast_writes += written

    def _not_had(self, receivers: Any, frames: list[bytes], seq: int) -> list[Any]:
        """The members that have had none of held entry ``seq``; those that had its first
        frames (a write of their own came between) get the rest now, on their own."""
        whole = []
        rests = []
        for receiver in receivers:
            if receiver is None:
                continue
            upto = getattr(receiver, "_held_seq", -1)
            if upto < seq:
                whole.append(receiver)
            elif upto == seq:
                rest = frames[receiver._held_count:]
                if rest:
                    rests.append((receiver, rest))
        # Every mark read before the first write: a write that made a read parse at once
        # (no socket does) could mark a later member past this entry, which is out of
        # HELD already (a broadcast there that leaves it out) and would never reach it.
        for receiver, rest in rests:
            self._deliver_frames(receiver, rest)
        return whole

    def _deliver_frames(self, receiver: Any, frames: list[bytes],
                        joined: bytes | None = None) -> None:
        """Several frames for one member: joined (``joined``, if the caller has it) in one
        write when it takes them so and they are within JOIN_LIMIT, else one by one, so
        the slow-consumer policy sees every frame; each counted as written."""
        if len(frames) > 1 and self._write_joined(
                receiver, len(frames), b"".join(frames) if joined is None else joined):
            return
        stats = self.stats
        for frame in frames:
            if receiver.deliver_frame(frame):
                stats.broadcast_frames += 1
                stats.broadcast_bytes += len(frame)
                stats.broadcast_writes += 1

    def _write_joined(self, receiver: Any, count: int, joined: bytes) -> bool:
        """``count`` frames, back to back in ``joined``, as one write: when within
        JOIN_LIMIT and the receiver takes them so now (``deliver_joined``); counted as
        written. False: nothing was written."""
        if len(joined) <= JOIN_LIMIT and receiver.deliver_joined(joined):
            stats = self.stats
            stats.broadcast_frames += count
            stats.broadcast_bytes += len(joined)
            stats.broadcast_writes += 1
            return True
        return False

    def _receive_local(self, channel: str) -> Deferred[dict[str, Any]]:
        queue = self._queues.get(channel)
        if queue:
            message = queue.popleft()
            if not queue:
                del self._queues[channel]
                self._queued_at.pop(channel, None)
            return succeed(message)
        d: Deferred[dict[str, Any]] = Deferred()
        self._waiters.setdefault(channel, deque()).append(d)
        return d

    # -- the public API (Channels' names; every method returns a Deferred) ------------------------
    def new_channel(self, prefix: str = "specific") -> Deferred[str]:
        """A channel name for ``receive()`` (its tail starts with "n": never taken for a
        gone consumer's, ``_gone_consumer``)."""
        check_name(prefix)
        return succeed(f"{prefix}.{self.process_id}!n{secrets.token_hex(6)}")

    def send(self, channel: str, message: dict[str, Any]) -> Deferred[None]:
        raise NotImplementedError

    def receive(self, channel: str) -> Deferred[dict[str, Any]]:
        raise NotImplementedError

    def group_add(self, group: str, channel: str, presence: dict[str, Any] | None = None,
                  announce: bool = True,
                  since: dict[str, Any] | None = None) -> Deferred[Any]:
        """Channels' ``group_add``. ``presence=``: see ``group_presence``. In a history
        group it fires with ``{"epoch", "offset", "recovered", "missed"}``: the stream's
        position at the join (the channel gets every message after it). With ``since``
        (a position the client had) the ``missed`` messages after it reach the channel
        first, ``recovered`` True; when history no longer covers them none do and
        ``recovered`` is False (reload). Outside history groups, and for another process's
        channel (that process joins it and reads): None (``since`` is a ``ValueError``)."""
        raise NotImplementedError

    def group_presence(self, group: str) -> Deferred[dict[str, dict[str, Any]]]:
        """Every member of ``group`` added with ``presence=``, in every process: channel
        name -> the info it was added with."""
        raise NotImplementedError

    def group_discard(self, group: str, channel: str) -> Deferred[None]:
        raise NotImplementedError

    def group_send(self, group: str, message: dict[str, Any],
                   exclude: str | Iterable[str] | None = None) -> Deferred[Any]:
        """To every member of ``group`` but the channels in ``exclude`` (the sender's
        ``self.channel_name``: its handler does not run for its own message); fires with
        the message's position in a history group (``{"epoch", "offset"}``), else None.
        ``exclude`` is refused (``ValueError``) in a history group, whose members recover
        every message it keeps."""
        if exclude is None:
            return self._group_send(group, message, True)
        try:
            skip = check_exclude(exclude)
            if skip:
                self.check_group_send_exclude(group)
        except (TypeError, ValueError) as exc:
            return fail(exc)
        return self._group_send(group, message, True, skip)

    def check_group_send_exclude(self, group: str) -> None:
        """``ValueError`` when ``group_send(group, ..., exclude=...)`` is refused (a history
        group); ``TypeError`` for a bad group name. The publish API asks this of every group
        first, so a refusal sends to none of them."""
        check_name(group, "group")
        if self.history and self.history.match(group) is not None:
            raise ValueError(f"group_send(exclude=...) is not for history group "
                             f"{group!r}: its members recover every message it keeps")

    def _group_send(self, group: str, message: dict[str, Any], record: bool,
                    exclude: tuple[str, ...] | None = None) -> Deferred[Any]:
        """``group_send``; ``record`` False keeps it out of the group's history;
        ``exclude``: channels left out (never with a history rule)."""
        raise NotImplementedError

    def group_history(self, group: str, since: dict[str, Any] | None = None,
                      limit: int | None = None) -> Deferred[dict[str, Any]]:
        """What a history group keeps: ``{"epoch", "offset", "recovered", "messages"}``
        (``offset``: the newest's). Without ``since``, the newest ``limit`` (or all) and
        ``recovered`` None; with it, every message after it and ``recovered`` True, or
        none and False when they are not all kept (or more than ``limit``).
        ``ValueError`` for a group no rule matches."""
        raise NotImplementedError

    def group_history_remove(self, group: str) -> Deferred[None]:
        """Forget the messages a history group keeps (Centrifugo's ``history_remove``),
        not its position: the next message has the next offset, and a client that comes
        back from before is told it was not recovered. ``ValueError`` for a group no rule
        matches."""
        raise NotImplementedError

    def broadcast(
        self, group: str, text: str | None = None, bytes: bytes | None = None,
        exclude: str | Iterable[str] | None = None,
    ) -> Deferred[None]:
        """One prepared frame to every open member of ``group`` in every process, but the
        channels in ``exclude`` (the sender's ``self.channel_name``: Socket.IO's
        ``skip_sid``, Phoenix's ``broadcast_from``)."""
        raise NotImplementedError

    def group_close(self, group: str, code: int = 1000,
                    reason: str | None = None) -> Deferred[None]:
        """Close every member of ``group``, in every process: Centrifugo's server-side
        disconnect, Socket.IO's ``disconnectSockets`` (a user's sockets, when they join a
        group of their own). A WebSocket closes with ``code`` (1000 or 3000-4999) and
        ``reason`` once the events sent to it before have been handled (a member whose
        ``connect()`` has not run yet is refused, 403; one still in ``connect()`` is
        closed after it), or ``--application-close-timeout`` seconds after, if a handler
        keeps it waiting; an HTTP consumer's response ends (503 before its head). As
        every group message, it reaches the processes subscribed at that moment: one cut
        off from Redis then does not close its members. ``ValueError`` for a bad code or
        reason, ``TypeError`` for a bad name."""
        raise NotImplementedError

    def _close_args(self, group: str, code: Any, reason: Any) -> Deferred[None] | None:
        """A failed Deferred for bad ``group_close`` arguments, else None."""
        if (bad := invalid(group=group)) is not None:
            return bad
        try:
            check_close(code, reason)
        except ValueError as exc:
            return fail(exc)
        return None

    def _close_local(self, group: str, code: int, reason: str | None) -> None:
        """``group_close`` for this process's members of ``group``."""
        members = self._groups.get(group)
        if not members:
            return
        for receiver in list(members.values()):
            close = getattr(receiver, "close_from_layer", None)
            if close is None:
                continue
            try:
                close(code, reason)
            except Exception:
                log.failure("closing a member of group {group} failed", group=group)

    # -- surveys: one question every process answers -----------------------------------------
    def survey(self, name: str, args: Any = None) -> Deferred[dict[str, Any]]:
        """Every process's answer to the question ``name`` (``on_survey``), by process id:
        what no one process knows (which groups are busy, how many clients each process
        holds). Here only this process answers; the Redis layer asks every process on the
        same Redis and prefix (one that does not answer in time is left out, with a
        warning). A process without an answer for ``name`` answers None."""
        if not isinstance(name, str):
            return fail(TypeError(f"a survey's name is a str, not {type(name).__name__}"))
        return succeed({self.process_id: self._answer(name, args)})

    def _answer(self, name: str, args: Any) -> Any:
        answer = _SURVEYS.get(name)
        if answer is None:
            return None
        try:
            return answer(self, args)
        except Exception:
            log.failure("channel layer: the answer to survey {name!r} failed", name=name)
            return None

    def group_sizes(self, prefix: str = "") -> Deferred[dict[str, int]]:
        """How many members each group whose name starts with ``prefix`` has, over every
        process (a survey): "how many are in this room" without presence, which Channels'
        layers cannot tell. Groups with no member anywhere are not listed."""
        if not isinstance(prefix, str):
            return fail(TypeError(f"prefix is a str, not {type(prefix).__name__}"))

        def added(answers: dict[str, Any]) -> dict[str, int]:
            sizes: Counter[str] = Counter()
            for answer in answers.values():
                if isinstance(answer, dict):
                    sizes.update(answer)
            return dict(sizes)

        return self.survey(GROUP_SIZES, prefix).addCallback(added)

    def flush(self) -> Deferred[None]:
        raise NotImplementedError

    def close(self) -> Deferred[None]:
        """Release connections (the service calls this at shutdown)."""
        return succeed(None)

    @property
    def ready(self) -> bool:
        """False while the layer cannot reach its backend (``/readyz`` says 503)."""
        return True


on_survey(GROUP_SIZES, _local_group_sizes)


# -- the layer as handler threads see it ------------------------------------------------------
class ThreadGuardedLayer:
    """``layer`` as code in worker threads gets it (a ``thread_handlers`` consumer's
    ``self.channel_layer``, ``get_channel_layer()`` called off the reactor thread or before
    the reactor runs): its methods run when called on the reactor thread ``io_thread``
    (None: the reactor's, whichever thread runs it, read at each call; before one runs,
    the main thread) and raise ``RuntimeError`` anywhere else, where they would touch the
    layer's state, its Redis connections and the reactor from a second thread (Twisted is
    not thread-safe); called there from asgiref's ``async_to_sync`` (or another coroutine
    on an asyncio loop of that thread) a method returns a coroutine that runs the call on
    the reactor thread. Reading an attribute (``capacity``, ``ready``) passes through,
    setting one sets the layer's, and ``isinstance`` sees the layer's class. Consumers on
    the reactor thread get the layer itself: this costs them nothing."""

    def __init__(self, layer: Any, io_thread: int | None, via: str = "self.channel_layer",
                 where: str = "a handler thread") -> None:
        mine = self.__dict__
        mine["_layer"] = layer
        mine["_io_thread"] = io_thread
        mine["_via"] = via
        mine["_where"] = where

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(guard, RedisChannelLayer) holds
        return type(self.__dict__["_layer"])

    def __getattr__(self, name: str) -> Any:
        layer = self.__dict__["_layer"]
        value = getattr(layer, name)
        if name.startswith("_") or getattr(value, "__self__", None) is not layer:
            return value  # data, a property's value, a class or static method
        guarded = self._guard(name, value)
        self.__dict__[name] = guarded  # read once per name: then a plain attribute
        return guarded

    def _guard(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        layer, io_thread, refused = self._layer, self._io_thread, self._refused
        get_ident, getframe = threading.get_ident, sys._getframe

        if io_thread is None:
            main = threading.main_thread().ident

            def guarded(*args: Any, **kwargs: Any) -> Any:
                here, io = get_ident(), threadable.ioThread
                # (before a reactor runs: the main thread, which will run it, passes)
                if here != io and (io is not None or here != main):
                    return refused(name, getframe(1), args, kwargs)
                return getattr(layer, name)(*args, **kwargs)  # the layer's, even if replaced
        else:
            def guarded(*args: Any, **kwargs: Any) -> Any:
                if get_ident() != io_thread:
                    return refused(name, getframe(1), args, kwargs)
                return getattr(layer, name)(*args, **kwargs)

        guarded.__name__ = name
        guarded.__qualname__ = getattr(method, "__qualname__", name)
        guarded.__doc__ = method.__doc__
        guarded.__wrapped__ = method  # type: ignore[attr-defined]
        return guarded

    def _refused(self, name: str, caller: types.FrameType, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
        """A call off the reactor thread: a coroutine that makes it there, for a caller
        that awaits on an asyncio loop (asgiref's ``async_to_sync``), else ``RuntimeError``
        saying what works."""
        layer = self._layer
        if _awaits_on_a_loop(caller):
            from realtime.threads import awaited_on_reactor, installed_reactor

            reactor = installed_reactor(f"{type(layer).__name__}.{name}()")

            def call() -> Any:
                return getattr(layer, name)(*args, **kwargs)

            call.__qualname__ = f"{type(layer).__name__}.{name}"
            return awaited_on_reactor(reactor, call)
        raise RuntimeError(
            f"{type(layer).__name__}.{name}() called from {self._where}, where it would race "
            "the reactor (Twisted is not thread-safe): call it through "
            f"async_to_sync({self._via}.{name})(...), which runs it on the reactor thread")

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._layer, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._layer, name)

    def __repr__(self) -> str:
        return f"<{self._layer!r} guarded for {self._where}>"


#: The code of asgiref's ``AsyncToSync`` that calls the function it wraps: ``__call__``
#: (asgiref 3.8 and later, in the calling thread) or ``main_wrap`` (before, on its loop).
_asgiref_calls: frozenset[types.CodeType] = frozenset()
_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _awaits_on_a_loop(caller: types.FrameType) -> bool:
    """Whether ``caller`` will await what it gets on an asyncio loop: it is asgiref's
    ``async_to_sync``, or a coroutine running on this thread's loop."""
    global _asgiref_calls
    code = caller.f_code
    if code.co_flags & _ASYNC_CODE:
        return asyncio._get_running_loop() is not None
    if not _asgiref_calls:
        sync = sys.modules.get("asgiref.sync")
        wrapper = getattr(sync, "AsyncToSync", None)
        if wrapper is None:
            return False
        _asgiref_calls = frozenset(
            fn.__code__ for fn in (vars(wrapper).get("__call__"),
                                   vars(wrapper).get("main_wrap"))
            if isinstance(fn, types.FunctionType))
    return code in _asgiref_calls


def unguarded(layer: Any) -> Any:
    """The layer a ``ThreadGuardedLayer`` wraps (``layer`` itself if it is none): what
    realtime keeps for code on the reactor thread."""
    if type(layer) is ThreadGuardedLayer:
        return layer.__dict__["_layer"]
    return layer


def guarded_for_threads(layer: Any, io_thread: int, via: str = "self.channel_layer",
                        where: str = "a handler thread") -> Any:
    """``layer`` (unwrapped if a guard) wrapped in a ``ThreadGuardedLayer`` for handlers in
    threads of the reactor on ``io_thread`` (None stays None)."""
    if layer is None:
        return layer
    return ThreadGuardedLayer(unguarded(layer), io_thread, via, where)
