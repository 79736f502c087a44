"""The fan-out's socket table: a broadcast writes to its members' sockets in one C loop.

A broadcast to a room of thousands costs one ``send()`` per member, and in Python each one
also costs a method call, the member objects read to find its socket (cache misses: the
kernel's send path evicts them between members) and ``socket.send``'s own overhead: about
a third more CPU than the kernel's send (benchmarks/README.md, step 19). So every plain
TCP/unix WebSocket connection holds a *slot* here, and while it is clean (open, nothing
buffered, corked, paused, translated or compressed: ``WebSocketConnection._clean``) its
slot's entry in ``FDS`` is its socket's descriptor, else -1. A group's members keep their
slots in an ``array('i')`` (``Members.fast``, rebuilt when the group changes), and
``realtime._sendeach.send_each`` (C, optional: built when a compiler is at hand) writes a
frame to each clean one, handing back those that need Python: the slow path of the ones
not clean, the rest of a partial write.

The rules that keep a descriptor from reaching the wrong socket:

- An entry holds a descriptor only between ``WebSocketConnection._becomes_clean`` and the
  next ``_unclean()`` (every change that makes a socket not clean calls it), and a
  connection's ``connectionLost`` clears it and gives the slot back before anything can
  open another descriptor (Twisted closes the socket just before, in the same call).
- A slot given back is not handed out again at once (a group's array may still name it):
  slots come back in batches, and each batch moves ``generation`` on, which makes every
  group rebuild its array before its next fan-out.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable
from typing import Any

SendEach = Callable[["array[int]", "array[int]", bytes], "list[tuple[int, int | None]] | None"]
_send_each: SendEach | None
try:
    from realtime._sendeach import send_each as _send_each
except ImportError:  # built without a C compiler: the Python loop (realtime/layers/base.py)
    _send_each = None

#: The C loop, or None for the Python one: without a compiler at install time, or with
#: ``REALTIME_C_FANOUT=0`` in the environment (to rule it out when chasing a fan-out bug).
#: The tests run both.
send_each: SendEach | None = None if os.environ.get("REALTIME_C_FANOUT") == "0" else _send_each

#: By slot: the socket's descriptor while its connection is clean, else -1.
FDS: array[int] = array("i")
#: By slot: the connection holding it (None: free or given back).
OWNERS: list[Any] = []
_free: list[int] = []
_given_back: list[int] = []
#: Slots given back come back in batches of at least this many (or a quarter of the table).
BATCH = 64


class _Generation:
    value = 0


def generation() -> int:
    """Moves on whenever given-back slots may be handed out again: a group's slot array
    built before names slots that may belong to other connections now."""
    return _Generation.value


def take(owner: Any) -> int:
    """A slot for ``owner`` (a connection), its entry -1 (not clean)."""
    if not _free and len(_given_back) >= max(BATCH, len(FDS) // 4):
        _free.extend(_given_back)
        _given_back.clear()
        _Generation.value += 1
    if _free:
        slot = _free.pop()
        FDS[slot] = -1
        OWNERS[slot] = owner
        return slot
    FDS.append(-1)
    OWNERS.append(owner)
    return len(FDS) - 1


def give_back(slot: int) -> None:
    """``slot``'s connection is gone: its entry is cleared now, and the slot handed out
    again only after the next ``generation``."""
    FDS[slot] = -1
    OWNERS[slot] = None
    _given_back.append(slot)


class Members(dict[str, Any]):
    """A group's local members (channel name to receiver) that drop their slot array
    (``fast``) on any change, so it never names a member that left nor misses one that
    joined. The array stays with the dict: a group deleted and made again starts
    without one."""

    __slots__ = ("fast",)

    def __init__(self) -> None:
        super().__init__()
        #: ``(generation, slots, others)``: the members' slots (``array('i')``) and the
        #: receivers without one (TLS, HTTP/2, in-memory); None: build it again.
        self.fast: tuple[int, array[int], list[Any]] | None = None

    def __setitem__(self, key: Any, value: Any) -> None:
        self.fast = None
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.fast = None
        super().__delitem__(key)

    def pop(self, *args: Any) -> Any:
        self.fast = None
        return super().pop(*args)

    def popitem(self) -> Any:
        self.fast = None
        return super().popitem()

    def clear(self) -> None:
        self.fast = None
        super().clear()

    def setdefault(self, *args: Any) -> Any:
        self.fast = None
        return super().setdefault(*args)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.fast = None
        super().update(*args, **kwargs)

    def __ior__(self, other: Any) -> Members:  # type: ignore[misc,override]
        self.fast = None
        super().update(other)
        return self


def slot_of(receiver: Any) -> int:
    """``receiver``'s slot, or -1: a slot only a connection that took it (``take``) and
    holds it still. Receivers are also an app's own objects (an ``AsyncHttpConsumer`` in a
    group), whose attribute of the same name means something else: taken for a slot, it
    sent their frames to another connection's socket."""
    slot = getattr(receiver, "_slot", -1)
    if type(slot) is int and 0 <= slot < len(OWNERS) and OWNERS[slot] is receiver:
        return slot
    return -1


def slots_of(members: Members) -> tuple[int, array[int], list[Any]]:
    """``members.fast``, built now if it was dropped or is from an older generation."""
    fast = members.fast
    if fast is not None and fast[0] == _Generation.value:
        return fast
    slots: array[int] = array("i")
    others = []
    for receiver in members.values():
        if receiver is None:
            continue
        slot = slot_of(receiver)
        if slot >= 0:
            slots.append(slot)
        else:
            others.append(receiver)
    fast = members.fast = (_Generation.value, slots, others)
    return fast
