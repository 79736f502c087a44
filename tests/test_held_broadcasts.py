"""Held broadcasts (realtime.layers.base.hold): broadcasts made while one read is parsed
leave together when the read is done, one write per member per group, and nothing
overtakes them. The layer's side, with receivers that record every call; the bridge's side
against a real server is tests/e2e/test_held_broadcasts.py."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from twisted.internet.task import Clock

from realtime.layers import InMemoryChannelLayer
from realtime.layers.base import (
    _BY_GROUP,
    _LAYERS,
    HELD,
    _Hold,
    after_release,
    flush_held,
    hold,
    let_out_for,
    release,
    set_broadcast_delay,
    skip_held,
)
from realtime.websocket import encode_frame


@pytest.fixture(autouse=True)
def no_hold_left():
    """Every test ends with no read held and nothing parked (a leak would hold every
    later test's broadcasts)."""
    yield
    depth, parked, turn = _Hold.depth, list(HELD), _Hold.turn
    _Hold.depth = 0
    _Hold.turn = None
    _Hold.after = []
    _Hold.marked = False
    _Hold.size = 0
    set_broadcast_delay(0)  # the delay tests set one
    HELD.clear()
    _BY_GROUP.clear()
    del _LAYERS[:]
    assert (depth, parked, turn) == (0, [], None)


class Recording:
    """A receiver that records the bytes of every write (a held burst joined into one
    write is one item); ``joinable=False`` stands for a socket that cannot take a joined
    write now (paused, TLS, ...)."""

    _held_seq = -1
    _held_count = 0

    def __init__(self, log: list[tuple[str, bytes]] | None = None, name: str = "",
                 joinable: bool = True) -> None:
        self.writes: list[bytes] = []
        self.log = log
        self.name = name
        self.joinable = joinable

    def deliver(self, event: dict[str, Any]) -> None:
        raise AssertionError("no events here")

    def deliver_frame(self, frame: bytes) -> bool:
        self.writes.append(frame)
        if self.log is not None:
            self.log.append((self.name, frame))
        return True

    def deliver_joined(self, joined: bytes) -> bool:
        if not self.joinable:
            return False
        return self.deliver_frame(joined)


def text(s: str) -> bytes:
    return encode_frame(0x1, s.encode())


def member(layer: InMemoryChannelLayer, *groups: str, **kw: Any) -> tuple[Recording, str]:
    receiver = Recording(**kw)
    channel = layer.attach(receiver)
    for group in groups:
        layer._add_local(group, channel)
    return receiver, channel


def test_a_burst_to_one_group_is_one_write_per_member_at_release():
    layer = InMemoryChannelLayer()
    a, _ = member(layer, "g")
    b, _ = member(layer, "g")
    hold()
    try:
        for i in range(5):
            layer.broadcast("g", text=f"m{i}")
        assert a.writes == [] and b.writes == []  # held until the read is done
    finally:
        release()
    burst = b"".join(text(f"m{i}") for i in range(5))
    assert a.writes == [burst] and b.writes == [burst]
    assert (layer.stats.broadcast_frames, layer.stats.broadcast_writes) == (10, 2)
    assert layer.stats.broadcast_bytes == 2 * len(burst)
    assert HELD == []


def test_outside_a_read_a_broadcast_is_written_at_once():
    layer = InMemoryChannelLayer()
    a, _ = member(layer, "g")
    layer.broadcast("g", text="now")
    assert a.writes == [text("now")]


def test_groups_interleaved_reach_each_member_in_one_write_in_broadcast_order():
    """g, g, h, g: a member of both gets g1 g2 h1 g3 in one write, never g3 before h1; a
    member of g alone gets its three frames (two entries) in one write too; a member that
    cannot take a joined write gets each frame, in the same order."""
    layer = InMemoryChannelLayer()
    both, _ = member(layer, "g", "h")
    only_g, _ = member(layer, "g")
    only_h, _ = member(layer, "h")
    single, _ = member(layer, "g", "h", joinable=False)
    hold()
    for name in ("g1", "g2"):
        layer.broadcast("g", text=name)
    layer.broadcast("h", text="h1")
    layer.broadcast("g", text="g3")
    release()
    assert both.writes == [text("g1") + text("g2") + text("h1") + text("g3")]
    assert only_g.writes == [text("g1") + text("g2") + text("g3")]
    assert only_h.writes == [text("h1")]
    assert single.writes == [text("g1"), text("g2"), text("h1"), text("g3")]
    # 4 + 3 + 1 + 4 frames, in 1 + 1 + 1 + 4 writes.
    assert (layer.stats.broadcast_frames, layer.stats.broadcast_writes) == (12, 7)


def test_a_member_of_several_rooms_gets_one_write_per_turn_not_one_per_room():
    """Three rooms with a message each in one read: a member of all three gets one write,
    members of one room their one frame; the order is the broadcasts' order."""
    layer = InMemoryChannelLayer()
    everywhere, _ = member(layer, "r1", "r2", "r3")
    two, _ = member(layer, "r3", "r1")
    rooms = {room: member(layer, room)[0] for room in ("r1", "r2", "r3")}
    hold()
    for room in ("r1", "r2", "r3"):
        layer.broadcast(room, text=f"to {room}")
    release()
    assert everywhere.writes == [text("to r1") + text("to r2") + text("to r3")]
    assert two.writes == [text("to r1") + text("to r3")]
    for room, alone in rooms.items():
        assert alone.writes == [text(f"to {room}")]
    assert layer.stats.broadcast_writes == 5
    assert HELD == [] and not _Hold.marked


def test_members_joined_across_groups_still_get_only_what_came_after_their_own_write():
    """A member whose own write came mid-turn (marked) gets, at the turn's end, one write
    of only what was broadcast after it, across its groups."""
    reactor = Turns()
    layer = InMemoryChannelLayer()
    a, a_channel = member(layer, "g", "h")
    b, _ = member(layer, "g", "h")
    read(reactor, lambda: layer.broadcast("g", text="g1"),
         lambda: layer.broadcast("h", text="h1"))
    assert a.writes == b.writes == []  # held for the turn's end
    let_out_for(a, a_channel)  # a's own write, between two reads of the turn
    assert a.writes == [text("g1") + text("h1")]
    read(reactor, lambda: layer.broadcast("g", text="g2"),
         lambda: layer.broadcast("h", text="h2"))
    reactor.end_turn()
    assert a.writes == [text("g1") + text("h1"), text("g2") + text("h2")]
    assert b.writes == [text("g1") + text("h1") + text("g2") + text("h2")]


def test_a_member_who_joins_after_a_broadcast_does_not_get_it():
    layer = InMemoryChannelLayer()
    early, _ = member(layer, "g")
    late = Recording()
    late_channel = layer.attach(late)
    hold()
    layer.broadcast("g", text="before")
    assert layer.group_add("g", late_channel).called  # the memory layer: synchronous
    layer.broadcast("g", text="after")
    release()
    # The join changed no one else's wait: one write for the others.
    assert early.writes == [text("before") + text("after")]
    assert late.writes == [text("after")]


def test_a_member_who_leaves_after_a_broadcast_still_gets_it():
    layer = InMemoryChannelLayer()
    stays, _ = member(layer, "g")
    leaves, leaving = member(layer, "g")
    hold()
    layer.broadcast("g", text="before")
    assert layer.group_discard("g", leaving).called
    assert leaves.writes == [text("before")] and stays.writes == []  # its share, at once
    layer.broadcast("g", text="after")
    release()
    assert leaves.writes == [text("before")]
    assert stays.writes == [text("before") + text("after")]


def detach(layer: InMemoryChannelLayer, channel: str) -> None:
    layer.detach(channel)  # the consumer goes away


def flush(layer: InMemoryChannelLayer, channel: str) -> None:
    assert layer.flush().called


@pytest.mark.parametrize("change", [detach, flush])
def test_what_was_broadcast_before_a_detach_or_a_flush_is_still_delivered(change):
    layer = InMemoryChannelLayer()
    a, channel = member(layer, "g")
    hold()
    layer.broadcast("g", text="before")
    change(layer, channel)
    release()
    assert a.writes == [text("before")]


def test_holds_nest_and_only_the_outermost_release_writes():
    layer = InMemoryChannelLayer()
    a, _ = member(layer, "g")
    hold()
    layer.broadcast("g", text="outer")
    hold()
    layer.broadcast("g", text="inner")
    release()
    assert a.writes == []
    release()
    assert a.writes == [text("outer") + text("inner")]


def test_a_broadcast_from_another_thread_is_not_held():
    """Only the reactor thread's reads hold; a worker thread's call is not parked in a
    list another thread empties."""
    layer = InMemoryChannelLayer()
    a, _ = member(layer, "g")
    hold()
    try:
        worker = threading.Thread(target=lambda: layer.broadcast("g", text="from a thread"))
        worker.start()
        worker.join()
        assert a.writes == [text("from a thread")]
    finally:
        release()


def test_a_group_with_no_local_members_holds_nothing():
    layer = InMemoryChannelLayer()
    hold()
    layer.broadcast("nobody", text="x")
    assert HELD == []
    release()
    assert layer.stats.broadcast_frames == 0


def test_a_member_whose_write_raises_costs_no_other_group_its_frames():
    """A bug in one receiver's write is logged; the other held broadcasts still go out and
    the read that made them ends normally."""
    from tests.clients import captured_log

    class Broken(Recording):
        def deliver_frame(self, frame: bytes) -> bool:
            raise RuntimeError("boom")

    layer = InMemoryChannelLayer()
    broken = Broken()
    layer._add_local("bad", layer.attach(broken))
    fine, _ = member(layer, "good")
    with captured_log() as events:
        hold()
        layer.broadcast("bad", text="lost")
        layer.broadcast("good", text="kept")
        release()
    assert fine.writes == [text("kept")]
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["group"] == "bad"
    assert failures[0]["log_failure"].check(RuntimeError)


def test_a_member_that_cannot_take_a_joined_write_gets_each_frame_and_exact_counts():
    layer = InMemoryChannelLayer()
    joins, _ = member(layer, "g")
    one_by_one, _ = member(layer, "g", joinable=False)
    hold()
    for name in ("a", "bb", "ccc"):
        layer.broadcast("g", text=name)
    release()
    frames = [text("a"), text("bb"), text("ccc")]
    assert joins.writes == [b"".join(frames)]
    assert one_by_one.writes == frames
    stats = layer.stats
    assert (stats.broadcast_frames, stats.broadcast_writes) == (6, 4)
    assert stats.broadcast_bytes == 2 * len(b"".join(frames))


def test_a_burst_past_the_join_limit_goes_frame_by_frame():
    """Past JOIN_LIMIT bytes a burst is not joined: the slow-consumer policy must see each
    frame (a joined 4 MiB write would land whole in Twisted's buffer)."""
    from realtime.layers.base import JOIN_LIMIT

    layer = InMemoryChannelLayer()
    a, _ = member(layer, "g")
    payload = "x" * (JOIN_LIMIT // 2)
    hold()
    for _ in range(3):
        layer.broadcast("g", text=payload)
    release()
    assert a.writes == [text(payload)] * 3
    assert layer.stats.broadcast_writes == 3


def test_after_release_runs_once_the_held_broadcasts_are_out():
    layer = InMemoryChannelLayer()
    a, _ = member(layer, "g")
    seen: list[int] = []
    hold()
    layer.broadcast("g", text="x")
    after_release(lambda: seen.append(len(a.writes)))
    assert seen == []
    release()
    assert seen == [1]
    after_release(lambda: seen.append(-1))  # outside a read: at once
    assert seen == [1, -1]


# -- one write per member per reactor turn ------------------------------------------------------

class Turns(Clock):
    """A reactor whose loop is running (``release`` waits for the turn's end only then);
    ``end_turn()`` is the end of the turn: the ``callLater(0)`` calls run."""

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.from_threads.append((f, args))

    def end_turn(self) -> None:
        """Twisted's runUntilCurrent: the calls from threads, then the timed calls."""
        calls, self.from_threads = self.from_threads, []
        for f, args in calls:
            f(*args)
        self.advance(0)


def read(reactor: Any, *calls: Any) -> None:
    """One read of one connection: its handlers' calls, inside hold/release."""
    hold(reactor)
    try:
        for call in calls:
            call()
    finally:
        release()


def test_reads_of_one_turn_reach_each_member_in_one_write_when_the_turn_ends():
    """Two publishers' reads in one reactor turn: their broadcasts to a group are joined."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    a, _ = member(layer, "g")
    b, _ = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="from 1"))
    read(reactor, lambda: layer.broadcast("g", text="from 2"))
    assert a.writes == [] and b.writes == [] and len(reactor.getDelayedCalls()) == 1
    reactor.end_turn()
    both = text("from 1") + text("from 2")
    assert a.writes == [both] and b.writes == [both]
    assert layer.stats.broadcast_writes == 2 and layer.stats.broadcast_frames == 4
    assert _Hold.turn is None and not reactor.getDelayedCalls()


def test_a_reactor_that_is_not_running_lets_them_out_at_the_end_of_the_read():
    """A test's Clock (the in-memory communicator, unit tests): written at release, no
    timer to advance."""
    reactor, layer = Clock(), InMemoryChannelLayer()
    a, _ = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="x"))
    assert a.writes == [text("x")] and not reactor.getDelayedCalls()


def test_a_read_that_broadcasts_nothing_sets_no_timer():
    reactor, layer = Turns(), InMemoryChannelLayer()
    member(layer, "g")
    read(reactor, lambda: layer.broadcast("nobody", text="x"))
    assert not reactor.getDelayedCalls() and _Hold.turn is None


def test_a_broadcast_outside_a_read_waits_behind_the_turns_held_ones():
    """A timer's broadcast, run before the turn's end: behind what the turn's reads held,
    never ahead of it."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    log: list[tuple[str, bytes]] = []
    a, _ = member(layer, "g", log=log, name="a")
    read(reactor, lambda: layer.broadcast("g", text="read"))
    layer.broadcast("g", text="timer")
    assert log == []
    reactor.end_turn()
    assert a.writes == [text("read") + text("timer")]


def test_a_write_in_the_turn_lets_out_what_was_held_before_it_and_later_ones_wait():
    """``flush_held`` (every write of a connection, a group change) mid-turn: the held
    frames go first; the turn's later broadcasts still wait for its end."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    a, _ = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="1"))
    read(reactor, flush_held, lambda: layer.broadcast("g", text="2"))
    assert a.writes == [text("1")]
    read(reactor, lambda: layer.broadcast("g", text="3"))
    reactor.end_turn()
    assert a.writes == [text("1"), text("2") + text("3")]


def test_group_changes_in_the_turn_keep_who_gets_what():
    reactor, layer = Turns(), InMemoryChannelLayer()
    a, ca = member(layer, "g")
    b, cb = member(layer)
    read(reactor, lambda: layer.broadcast("g", text="before"))
    read(reactor, lambda: layer.group_add("g", cb), lambda: layer.group_discard("g", ca),
         lambda: layer.broadcast("g", text="after"))
    reactor.end_turn()
    assert a.writes == [text("before")]
    assert b.writes == [text("after")]


def test_after_release_waits_for_the_end_of_the_turn():
    reactor, layer = Turns(), InMemoryChannelLayer()
    a, _ = member(layer, "g")
    seen: list[int] = []
    read(reactor, lambda: layer.broadcast("g", text="x"),
         lambda: after_release(lambda: seen.append(len(a.writes))))
    after_release(lambda: seen.append(-len(a.writes)))  # outside the read, still in the turn
    assert seen == []
    reactor.end_turn()
    assert seen == [1, -1]
    after_release(lambda: seen.append(7))  # the turn is over: at once
    assert seen == [1, -1, 7]


def test_a_cancelled_turn_does_not_hold_broadcasts_for_ever():
    """A harness that cancels pending calls (or a reactor that stopped): the next broadcast
    lets the held ones out, then goes itself; later reads start a new turn."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    a, _ = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="held"))
    _Hold.turn.cancel()
    layer.broadcast("g", text="next")
    assert a.writes == [text("held"), text("next")] and _Hold.turn is None
    read(reactor, lambda: layer.broadcast("g", text="again"))
    assert a.writes[2:] == [] and _Hold.turn is not None
    reactor.end_turn()
    assert a.writes[2:] == [text("again")]


def test_a_wall_clock_set_back_does_not_hold_broadcasts_until_it_catches_up():
    """Twisted times calls by time.time(): set back 60 s, the end-of-turn call would run a
    minute late. The next read replaces it with one due now; a broadcast outside a read
    lets the held ones out at once."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    reactor.advance(1000)
    a, _ = member(layer, "g")
    seen: list[int] = []
    read(reactor, lambda: layer.broadcast("g", text="1"),
         lambda: after_release(lambda: seen.append(len(a.writes))))
    reactor.rightNow -= 60
    read(reactor, lambda: layer.broadcast("g", text="2"))
    reactor.end_turn()
    assert a.writes == [text("1") + text("2")] and seen == [1]
    read(reactor, lambda: layer.broadcast("g", text="3"))
    reactor.rightNow -= 60
    layer.broadcast("g", text="4")  # a timer's broadcast: behind 3, at once
    assert a.writes[1:] == [text("3"), text("4")]
    assert not [c for c in reactor.getDelayedCalls() if c.active()]


def test_a_worker_threads_broadcast_during_a_turn_goes_behind_the_held_ones():
    """Outside the contract (async_to_sync is the way), but kept in order: the call moves
    to the reactor thread (callFromThread) and is held there with the turn's others."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    a, _ = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="read"))
    worker = threading.Thread(target=lambda: layer.broadcast("g", text="thread"))
    worker.start()
    worker.join()
    assert a.writes == []
    reactor.end_turn()
    assert a.writes == [text("read") + text("thread")]


# -- a member's own writes let out its held frames only --------------------------------------

def test_a_members_own_write_lets_out_its_held_frames_and_no_one_elses():
    """A write of one member's own (a send, a ping) mid-turn: what is held for it goes
    first; the others still get the turn's broadcasts in one write at its end, and the
    member gets the rest of the group's entry, without the frames it already had."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    a, ca = member(layer, "g")
    b, _ = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="1"), lambda: layer.broadcast("g", text="2"))
    let_out_for(a, ca)
    assert a.writes == [text("1") + text("2")] and b.writes == []
    let_out_for(a, ca)  # nothing new for it: nothing written
    assert len(a.writes) == 1
    read(reactor, lambda: layer.broadcast("g", text="3"))
    reactor.end_turn()
    assert a.writes == [text("1") + text("2"), text("3")]
    assert b.writes == [text("1") + text("2") + text("3")]
    stats = layer.stats
    assert (stats.broadcast_frames, stats.broadcast_writes) == (6, 3)
    assert stats.broadcast_bytes == 2 * sum(len(text(s)) for s in "123")


def test_a_members_own_write_takes_its_frames_of_every_group_in_order():
    reactor, layer = Turns(), InMemoryChannelLayer()
    log: list[tuple[str, bytes]] = []
    a, ca = member(layer, "g", "h", log=log, name="a")
    b, _ = member(layer, "g", log=log, name="b")
    c, _ = member(layer, "h", log=log, name="c")
    read(reactor, lambda: layer.broadcast("g", text="g1"), lambda: layer.broadcast("h", text="h1"),
         lambda: layer.broadcast("g", text="g2"))
    let_out_for(a, ca)
    assert log == [("a", text("g1") + text("h1") + text("g2"))]
    reactor.end_turn()
    assert a.writes == [text("g1") + text("h1") + text("g2")]
    # b's two entries of g (h's between them) leave in one write too.
    assert b.writes == [text("g1") + text("g2")] and c.writes == [text("h1")]


def test_a_member_that_cannot_take_a_joined_write_gets_its_held_frames_one_by_one():
    reactor, layer = Turns(), InMemoryChannelLayer()
    a, ca = member(layer, "g", joinable=False)
    read(reactor, lambda: layer.broadcast("g", text="1"), lambda: layer.broadcast("g", text="2"))
    let_out_for(a, ca)
    assert a.writes == [text("1"), text("2")]
    read(reactor, lambda: layer.broadcast("g", text="3"), lambda: layer.broadcast("g", text="4"))
    reactor.end_turn()
    assert a.writes == [text(s) for s in "1234"]


def test_a_member_that_opens_mid_turn_gets_only_what_is_broadcast_after():
    """``skip_held`` (a WebSocket's accept): the group's held frames are not for it, the
    later ones of the same entry are."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    a, _ = member(layer, "g")
    b, _ = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="before"))
    skip_held(b)
    read(reactor, lambda: layer.broadcast("g", text="after"))
    reactor.end_turn()
    assert a.writes == [text("before") + text("after")] and b.writes == [text("after")]


def test_marks_do_not_outlive_what_they_marked():
    """Once everything held is out, an old mark costs a member nothing of later turns."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    a, ca = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="1"))
    let_out_for(a, ca)
    reactor.end_turn()
    assert not _Hold.marked
    read(reactor, lambda: layer.broadcast("g", text="2"))
    reactor.end_turn()
    assert a.writes == [text("1"), text("2")]


# -- the broadcast delay (--broadcast-delay) -----------------------------------------------------

def test_with_a_delay_the_broadcasts_of_that_time_reach_each_member_in_one_write():
    reactor, layer = Turns(), InMemoryChannelLayer()
    set_broadcast_delay(0.05, reactor)
    a, _ = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="1"))
    reactor.end_turn()
    reactor.advance(0.03)
    read(reactor, lambda: layer.broadcast("g", text="2"))
    reactor.end_turn()
    assert a.writes == [] and len(reactor.getDelayedCalls()) == 1
    reactor.advance(0.02)
    assert a.writes == [text("1") + text("2")] and _Hold.turn is None
    read(reactor, lambda: layer.broadcast("g", text="3"))  # a new window
    reactor.advance(0.049)
    assert a.writes == [text("1") + text("2")]
    reactor.advance(0.001)
    assert a.writes[1:] == [text("3")]


def test_with_a_delay_a_broadcast_outside_a_read_waits_too():
    """A timer's or the HTTP API's broadcast, on the reactor thread."""
    from twisted.python import threadable

    threadable.registerAsIOThread()  # this thread is the reactor's (pytest-twisted's)
    reactor, layer = Turns(), InMemoryChannelLayer()
    set_broadcast_delay(0.05, reactor)
    a, _ = member(layer, "g")
    layer.broadcast("g", text="timer")
    read(reactor, lambda: layer.broadcast("g", text="read"))
    assert a.writes == []
    reactor.advance(0.05)
    assert a.writes == [text("timer") + text("read")]


def test_with_a_delay_a_members_own_write_does_not_shorten_the_others_wait():
    """A direct send to one member (an answer, a pong) lets out that member's frames
    only."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    set_broadcast_delay(0.05, reactor)
    a, ca = member(layer, "g")
    b, _ = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="1"))
    let_out_for(a, ca)
    read(reactor, lambda: layer.broadcast("g", text="2"))
    assert a.writes == [text("1")] and b.writes == []
    reactor.advance(0.05)
    assert a.writes == [text("1"), text("2")] and b.writes == [text("1") + text("2")]


def test_with_a_delay_a_group_change_lets_out_the_changing_members_frames_only():
    """Joins and leaves (every connect and disconnect in a busy room) do not cut the
    others' wait short."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    set_broadcast_delay(0.05, reactor)
    a, _ = member(layer, "g")
    b, cb = member(layer)
    c, cc = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="before"))
    layer.group_add("g", cb)
    layer.group_discard("g", cc)
    layer.detach(cc)
    assert a.writes == [] and c.writes == [text("before")]
    read(reactor, lambda: layer.broadcast("g", text="after"))
    reactor.advance(0.05)
    assert a.writes == [text("before") + text("after")] and b.writes == [text("after")]
    assert c.writes == [text("before")]


def test_a_member_joining_a_group_still_gets_what_is_held_for_its_other_groups():
    reactor, layer = Turns(), InMemoryChannelLayer()
    a, ca = member(layer, "h")
    read(reactor, lambda: layer.broadcast("h", text="h1"))
    layer.group_add("g", ca)
    read(reactor, lambda: layer.broadcast("g", text="g1"), lambda: layer.broadcast("h", text="h2"))
    reactor.end_turn()
    assert b"".join(a.writes) == text("h1") + text("g1") + text("h2")


def test_the_join_limit_flush_in_a_turn_gives_marked_members_only_the_rest():
    reactor, layer = Turns(), InMemoryChannelLayer()
    a, ca = member(layer, "g")
    b, _ = member(layer, "g")
    big = "x" * 40000
    read(reactor, lambda: layer.broadcast("g", text="1"))
    let_out_for(a, ca)
    read(reactor, lambda: layer.broadcast("g", text=big), lambda: layer.broadcast("g", text=big))
    assert not HELD  # past the limit: out at once
    assert a.writes == [text("1"), text(big), text(big)]
    assert b.writes == [text("1"), text(big), text(big)]
    reactor.end_turn()
    assert len(a.writes) == 3 and len(b.writes) == 3


def test_changing_the_delay_lets_out_what_waits_for_the_old_one():
    reactor, layer = Turns(), InMemoryChannelLayer()
    set_broadcast_delay(0.5, reactor)
    a, _ = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="x"))
    assert a.writes == []
    set_broadcast_delay(0)
    assert a.writes == [text("x")] and _Hold.turn is None and not reactor.getDelayedCalls()


def test_with_a_delay_off_a_running_reactor_broadcasts_still_go_at_the_end_of_the_read():
    """The communicators' in-memory transports (and a test's Clock): no timers to turn."""
    reactor, layer = Clock(), InMemoryChannelLayer()
    set_broadcast_delay(0.05, reactor)
    a, _ = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="x"))
    assert a.writes == [text("x")] and not reactor.getDelayedCalls()


def test_no_more_than_the_join_limit_is_ever_held():
    """A flood of broadcasts (or a long delay) holds at most JOIN_LIMIT bytes: the broadcast
    that takes it past lets everything out, in order, at once."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    set_broadcast_delay(0.5, reactor)
    a, _ = member(layer, "g")
    big = "x" * 30000
    read(reactor, lambda: layer.broadcast("g", text=big + "1"),
         lambda: layer.broadcast("g", text=big + "2"))
    assert a.writes == [] and _Hold.size == 2 * len(text(big + "1"))
    read(reactor, lambda: layer.broadcast("g", text=big + "3"))
    # Joined they would be over the limit: each frame on its own.
    assert a.writes == [text(big + s) for s in "123"] and _Hold.size == 0 and not HELD
    read(reactor, lambda: layer.broadcast("g", text="small"))
    reactor.advance(0.5)
    assert a.writes[3:] == [text("small")]


def test_the_delay_is_bounded():
    with pytest.raises(ValueError):
        set_broadcast_delay(-0.1)


class Answering(Recording):
    """On its first write, a read of its own is parsed at once, which broadcasts to g. No
    socket does this (nor the in-memory communicators, which share one wire); a receiver
    whose transport did must still get every frame once and break nothing."""

    def __init__(self, layer: InMemoryChannelLayer, reactor: Any = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.layer, self.reactor, self.answered = layer, reactor, False

    def deliver_frame(self, frame: bytes) -> bool:
        ok = super().deliver_frame(frame)
        if not self.answered:
            self.answered = True
            read(self.reactor, lambda: self.layer.broadcast("g", text="answer"))
        return ok


def atoms(stream: bytes) -> list[bytes]:
    """A member's bytes split into its frames (7- or 16-bit lengths) and the ``<...>``
    markers the model's receivers write for their own writes."""
    out = []
    while stream:
        if stream.startswith(b"<"):
            n = stream.index(b">") + 1
        elif stream[1] < 126:
            n = 2 + stream[1]
        else:
            n = 4 + int.from_bytes(stream[2:4], "big")
        out.append(stream[:n])
        stream = stream[n:]
    return out


@pytest.mark.parametrize("turns", [False, True], ids=["end-of-read", "end-of-turn"])
def test_a_read_parsed_inside_a_members_write_costs_no_frame_and_no_copy(turns):
    """Whichever member's delivery sets the read off and whenever the others are reached:
    every member of g gets the answer, each frame exactly once, nothing is left held."""
    reactor = Turns() if turns else None
    layer = InMemoryChannelLayer()
    a = Answering(layer, reactor)
    b, c = Recording(), Recording()
    channels = [layer.attach(r) for r in (a, b, c)]
    for channel in channels[:2]:
        layer._add_local("g", channel)
        layer._add_local("h", channel)
    layer._add_local("g", channels[2])
    read(reactor, lambda: layer.broadcast("g", text="g1"), lambda: layer.broadcast("h", text="h1"))
    if turns:
        reactor.end_turn()
        reactor.end_turn()  # the answer's own turn
    for member in (a, b):
        assert sorted(atoms(b"".join(member.writes))) == sorted(
            [text("g1"), text("h1"), text("answer")])
    assert sorted(atoms(b"".join(c.writes))) == sorted([text("g1"), text("answer")])
    assert HELD == [] and _BY_GROUP == {}
    assert layer.stats.broadcast_frames == 3 + 3 + 2


def test_a_member_whose_frames_together_pass_the_join_limit_gets_one_write_per_entry():
    """Joining across entries only within JOIN_LIMIT: past it, each entry's own joined
    write, as before, rather than every frame on its own."""
    layer = InMemoryChannelLayer()
    both, _ = member(layer, "g", "h")
    hold()
    for i in range(1000):
        layer.broadcast("g", text=f"{i:058d}")  # 60-byte frames: 60,000 bytes
    layer.broadcast("h", text="x" * 6000)  # past 64 KiB held: let out now
    release()
    assert len(both.writes) == 2
    assert both.writes[1] == text("x" * 6000)
    assert b"".join(both.writes) == b"".join(text(f"{i:058d}") for i in range(1000)) + \
        text("x" * 6000)


def test_a_receiver_without_marks_of_its_own_is_joined_too():
    """``_held_seq`` is read with a default: a receiver class without it still gets its
    frames, in one write, while another member is marked."""

    class Bare:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def deliver(self, event: dict[str, Any]) -> None:
            raise AssertionError("no events here")

        def deliver_frame(self, frame: bytes) -> bool:
            self.writes.append(frame)
            return True

        deliver_joined = deliver_frame

    layer = InMemoryChannelLayer()
    bare = Bare()
    bare_channel = layer.attach(bare)
    marked, marked_channel = member(layer, "g", "h")
    for group in ("g", "h"):
        layer._add_local(group, bare_channel)
    hold()
    layer.broadcast("g", text="g1")
    let_out_for(marked, marked_channel)
    layer.broadcast("h", text="h1")
    layer.broadcast("g", text="g2")
    release()
    assert bare.writes == [text("g1") + text("h1") + text("g2")]
    assert marked.writes == [text("g1"), text("h1") + text("g2")]
    assert HELD == []


def test_members_in_several_groups_are_counted_through_joins_leaves_detaches_and_flush():
    layer = InMemoryChannelLayer()
    _, a_channel = member(layer, "g")
    _, b_channel = member(layer, "g", "h", "k")
    assert layer._in_several == 1
    layer._add_local("h", a_channel)
    layer._add_local("h", a_channel)  # again: no change
    assert layer._in_several == 2
    layer._discard_local("g", b_channel)
    layer._discard_local("g", b_channel)  # again: no change
    assert layer._in_several == 2  # b still in h and k
    layer._discard_local("h", a_channel)
    assert layer._in_several == 1
    layer.detach(b_channel)
    assert layer._in_several == 0
    layer._add_local("k", a_channel)
    assert layer._in_several == 1
    assert layer.flush().called
    assert layer._in_several == 0 and layer._memberships == {}


# -- broadcast(exclude=) -------------------------------------------------------------------------

def test_an_excluded_member_of_several_groups_gets_the_rest_in_order():
    """g1, g2 (not to m), h1, g3 in one read: m (in g and h) gets g1 at once (what was
    held for it before g2), then h1 and g3 together; the others get all four in one
    write. The mark set by the exclusion holds across the turn's joins."""
    layer = InMemoryChannelLayer()
    m, m_channel = member(layer, "g", "h")
    both, _ = member(layer, "g", "h")
    only_g, _ = member(layer, "g")
    hold()
    layer.broadcast("g", text="g1")
    layer.broadcast("g", text="g2", exclude=m_channel)
    assert m.writes == [text("g1")] and both.writes == []
    layer.broadcast("h", text="h1")
    layer.broadcast("g", text="g3")
    release()
    assert m.writes == [text("g1"), text("h1") + text("g3")]
    assert both.writes == [text("g1") + text("g2") + text("h1") + text("g3")]
    assert only_g.writes == [text("g1") + text("g2") + text("g3")]
    assert HELD == []


def test_excluding_a_channel_outside_the_group_changes_nothing_for_it():
    """A channel of this process in another group only (or of another layer, or of no
    one): no write, no mark; its held frames leave with everyone's at the turn's end."""
    layer, other = InMemoryChannelLayer(), InMemoryChannelLayer()
    elsewhere, elsewhere_channel = member(layer, "h")
    foreign, foreign_channel = member(other, "g")
    in_g, _ = member(layer, "g", "h")
    hold()
    layer.broadcast("h", text="h1")
    other.broadcast("g", text="o1")
    layer.broadcast("g", text="g1",
                    exclude=[elsewhere_channel, foreign_channel, "specific.nobody!x"])
    assert elsewhere.writes == [] and foreign.writes == [] and in_g.writes == []
    assert elsewhere._held_seq == -1 and foreign._held_seq == -1
    release()
    assert elsewhere.writes == [text("h1")]
    assert foreign.writes == [text("o1")]
    assert in_g.writes == [text("h1") + text("g1")]


def test_the_join_limit_flush_right_after_an_exclusion():
    """A broadcast that leaves m out and takes what is held past the limit: everything goes
    at once, m gets only what was held before it, and what follows in the turn."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    m, m_channel = member(layer, "g", "h")
    x, _ = member(layer, "g", "h")
    big = "x" * 70000
    read(reactor, lambda: layer.broadcast("h", text="h1"),
         lambda: layer.broadcast("g", text=big, exclude=m_channel))
    assert not HELD
    assert m.writes == [text("h1")]
    assert b"".join(x.writes) == text("h1") + text(big)
    read(reactor, lambda: layer.broadcast("g", text="g2"))
    reactor.end_turn()
    assert m.writes == [text("h1"), text("g2")]
    assert x.writes[-1] == text("g2")


def test_exclusions_with_a_delay_and_from_a_worker_thread():
    """A timer's broadcast waiting the delay, and a worker thread's (moved to the reactor
    thread, behind the held ones): each leaves its excluded member out, the rest in
    order."""
    from twisted.python import threadable

    threadable.registerAsIOThread()
    reactor, layer = Turns(), InMemoryChannelLayer()
    set_broadcast_delay(0.05, reactor)
    m, m_channel = member(layer, "g")
    n, n_channel = member(layer, "g")
    layer.broadcast("g", text="timer", exclude=m_channel)
    read(reactor, lambda: layer.broadcast("g", text="read"))
    worker = threading.Thread(
        target=lambda: layer.broadcast("g", text="thread", exclude=[n_channel]))
    worker.start()
    worker.join()
    reactor.end_turn()
    # n's share of what was held went out before the broadcast that leaves it out (as
    # before a write of its own: the delay is a ceiling); m still waits.
    assert m.writes == [] and n.writes == [text("timer") + text("read")]
    reactor.advance(0.05)
    assert m.writes == [text("read") + text("thread")]
    assert n.writes == [text("timer") + text("read")]


def test_an_exclusion_outside_a_read_is_written_at_once_to_the_others():
    layer = InMemoryChannelLayer()
    m, m_channel = member(layer, "g")
    n, _ = member(layer, "g")
    layer.broadcast("g", text="now", exclude=(m_channel,))
    assert m.writes == [] and n.writes == [text("now")]
    assert m._held_seq == -1


class AnswersOnce(Recording):
    """At its next write once ``answer`` is set, a read of its own is parsed at once (no
    socket does; see ``Answering``): ``answer()`` runs inside that write."""

    answer: Any = None

    def deliver_frame(self, frame: bytes) -> bool:
        ok = super().deliver_frame(frame)
        answer, self.answer = self.answer, None
        if answer is not None:
            answer()
        return ok


def test_a_read_parsed_inside_the_excluded_members_own_share_costs_it_no_frame():
    """The excluded member's share, written before the broadcast that leaves it out, sets
    off a read that broadcasts to the group: that frame is held after the member's mark
    was taken, and the member still gets it (it was marked past it: lost)."""
    layer = InMemoryChannelLayer()
    a = AnswersOnce()
    a_channel = layer.attach(a)
    layer._add_local("g", a_channel)
    b, _ = member(layer, "g")
    a.answer = lambda: read(None, lambda: layer.broadcast("g", text="answer"))
    hold()
    layer.broadcast("g", text="g1")
    layer.broadcast("g", text="g2", exclude=a_channel)
    release()
    assert sorted(atoms(b"".join(a.writes))) == sorted([text("g1"), text("answer")])
    assert sorted(atoms(b"".join(b.writes))) == sorted(
        [text("g1"), text("answer"), text("g2")])
    assert HELD == []


def test_a_read_parsed_inside_a_flush_that_leaves_a_later_member_out_costs_it_no_frame():
    """At the turn's end an entry gives two marked members its rest; the first one's write
    sets off a read whose broadcast leaves the second out (marking it past everything
    held, the entry in flight no longer among it): the second still gets the rest."""
    reactor, layer = Turns(), InMemoryChannelLayer()
    first = AnswersOnce()
    first_channel = layer.attach(first)
    layer._add_local("g", first_channel)
    second, second_channel = member(layer, "g")
    read(reactor, lambda: layer.broadcast("g", text="g1"))
    let_out_for(first, first_channel)  # their own writes: both marked after g1
    let_out_for(second, second_channel)
    read(reactor, lambda: layer.broadcast("g", text="g2"))
    first.answer = lambda: read(
        reactor, lambda: layer.broadcast("g", text="answer", exclude=second_channel))
    reactor.end_turn()
    reactor.end_turn()  # the answer's own turn
    assert sorted(atoms(b"".join(first.writes))) == sorted(
        [text("g1"), text("g2"), text("answer")])
    assert second.writes == [text("g1"), text("g2")]
    assert HELD == []
