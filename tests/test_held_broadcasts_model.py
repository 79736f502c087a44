"""Held broadcasts against a model: random sequences of broadcasts (in reads, outside them,
on two layers, some past the 64 KiB cap), joins, leaves, detaches, a member's own writes,
late accepts, members that close 4008 part-way through their frames, turn ends and
broadcast delays. Every member must get every frame broadcast to it while it was open and
in the group, exactly once, in broadcast order, with its own writes in their place; a
member that closed gets a prefix of that and nothing after its close; and what a turn's end
(or the delay) lets out reaches a member that can take a joined write in one write. With
members whose write makes a read parse at once (``answers``: no socket does that), every
frame and write still arrives exactly once, order aside."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.python import threadable

from realtime.layers import InMemoryChannelLayer
from realtime.layers.base import (
    _BY_GROUP,
    _LAYERS,
    HELD,
    _Hold,
    let_out_for,
    set_broadcast_delay,
    skip_held,
)
from tests.test_held_broadcasts import Turns, atoms, read, text


@pytest.fixture(autouse=True)
def clean() -> Any:
    yield
    _Hold.depth = 0
    _Hold.turn = None
    _Hold.after = []
    _Hold.marked = False
    _Hold.size = 0
    set_broadcast_delay(0)
    HELD.clear()
    _BY_GROUP.clear()
    del _LAYERS[:]


class Rec:
    """A receiver that records its writes; ``close_after``: closes (4008) once it has that
    many, writing its close frame as a socket does (its own write: ``let_out_for`` first)."""

    _held_seq = -1
    _held_count = 0

    def __init__(self, name: str, joinable: bool = True) -> None:
        self.name = name
        self.writes: list[bytes] = []
        self.joinable = joinable
        self.open = True
        self.channel: str | None = None
        self.close_after: int | None = None
        #: Called (once) at its first write at a turn's end: a read of its own parsed at
        #: once, inside the flush that wrote to it.
        self.on_write: Any = None
        self.turn_ending = False

    def _wrote(self) -> None:
        # Only at a turn's end (a write of a join or leave of its own would answer before
        # the model has the membership it is changing).
        if self.on_write is not None and self.turn_ending:
            call, self.on_write = self.on_write, None
            call()

    def deliver(self, event: dict[str, Any]) -> None:
        raise AssertionError("no events here")

    def _own_close(self) -> None:
        self.open = False
        if HELD:
            let_out_for(self, self.channel)
        self.writes.append(b"<close>")

    def deliver_frame(self, frame: bytes) -> bool:
        if not self.open:
            return False
        if self.close_after is not None and len(self.writes) >= self.close_after:
            self._own_close()
            return False
        self.writes.append(frame)
        self._wrote()
        return True

    def deliver_joined(self, joined: bytes) -> bool:
        if not self.joinable or not self.open or self.close_after is not None:
            return False
        self.writes.append(joined)
        self._wrote()
        return True

    def own_write(self, tag: str) -> None:
        """``WebSocketConnection._write``."""
        if HELD:
            let_out_for(self, self.channel)
        if self.open:
            self.writes.append(b"<own:" + tag.encode() + b">")

    def stream(self) -> bytes:
        return b"".join(self.writes)


def run(seed: int, delay: float = 0.0, closers: bool = True, nlayers: int = 2,
        answers: bool = False, exclusions: bool = False):
    rnd = random.Random(seed)
    threadable.registerAsIOThread()
    reactor = Turns()
    layers = [InMemoryChannelLayer() for _ in range(nlayers)]
    if delay:
        set_broadcast_delay(delay, reactor)
    groups = ["g", "h", "k"]
    recs: list[tuple[Rec, Any]] = []
    expected: dict[int, list[bytes]] = {}
    member: dict[int, set] = {}
    accepted: dict[int, bool] = {}
    detached: dict[int, bool] = {}
    n = [0]
    log = []
    reentered = [0]

    def new_rec(accept_now=True):
        i = len(recs)
        L = rnd.choice(layers)
        r = Rec(f"r{i}", joinable=rnd.random() < 0.8)
        r.channel = L.attach(r)
        recs.append((r, L))
        expected[i] = []
        member[i] = set()
        accepted[i] = accept_now
        detached[i] = False
        if not accept_now:
            r.open = False
        if closers and rnd.random() < 0.15:
            r.close_after = rnd.randint(1, 8)
        if answers and rnd.random() < 0.3:
            def answer() -> None:
                reentered[0] += 1
                log.append(("answer", i))
                read(reactor, lambda: bcast(L, rnd.choice(groups), False))
            r.on_write = answer
        return i

    for _ in range(4):
        new_rec()

    def bcast(L, g, big):
        n[0] += 1
        body = f"{n[0]}:{L is layers[0]}:{g}:"
        if big:
            body += "x" * rnd.choice([20000, 30000, 40000])
        frame = text(body)
        # Some leave members out (broadcast(exclude=)): members of the group or not.
        left_out = (set(rnd.sample(range(len(recs)), min(len(recs), rnd.randint(1, 2))))
                    if exclusions and rnd.random() < 0.3 else set())
        log.append(("b", layers.index(L), g, n[0], sorted(left_out)))
        for i, (_r, RL) in enumerate(recs):
            if (RL is L and g in member[i] and accepted[i] and not detached[i]
                    and i not in left_out):
                expected[i].append(frame)
        L.broadcast(g, text=body,
                    exclude=[recs[i][0].channel for i in left_out] if left_out else None)

    def join(i, g):
        r, L = recs[i]
        log.append(("join", i, g))
        member[i].add(g)
        L._add_local(g, r.channel)

    def leave(i, g):
        r, L = recs[i]
        log.append(("leave", i, g))
        member[i].discard(g)
        L._discard_local(g, r.channel)

    def own(i):
        r, _L = recs[i]
        n[0] += 1
        tag = f"w{n[0]}"
        log.append(("own", i, tag))
        if accepted[i] and not detached[i]:
            expected[i].append(b"<own:" + tag.encode() + b">")
            r.own_write(tag)

    def detach(i):
        r, L = recs[i]
        log.append(("detach", i))
        detached[i] = True
        member[i].clear()
        L.detach(r.channel)

    def accept_new():
        i = new_rec(accept_now=False)
        for g in rnd.sample(groups, rnd.randint(0, 2)):
            join(i, g)
        # broadcasts during "handshake" are not expected
        def do_accept():
            r, _L = recs[i]
            log.append(("accept", i))
            skip_held(r)
            r.open = True
            accepted[i] = True
        return do_accept

    pending_accepts = []

    def turn_ends(end: Any) -> None:
        """What the turn's end (or the delay) lets out reaches each member that can take a
        joined write in one write at most, whatever groups and entries it came in."""
        before = [len(r.writes) for r, _L in recs]
        answered = reentered[0]
        for r, _L in recs:
            r.turn_ending = True
        try:
            end()
        finally:
            for r, _L in recs:
                r.turn_ending = False
        if reentered[0] != answered:
            return  # a read parsed inside the flush: its broadcasts are later writes
        for i, (r, _L) in enumerate(recs):
            if r.joinable and r.close_after is None:
                assert len(r.writes) - before[i] <= 1, (seed, i, r.writes[before[i]:], log)

    def action():
        x = rnd.random()
        live = [i for i in range(len(recs)) if not detached[i]]
        if x < 0.45:
            L = rnd.choice(layers)
            bcast(L, rnd.choice(groups), rnd.random() < 0.05)
        elif x < 0.55 and live:
            join(rnd.choice(live), rnd.choice(groups))
        elif x < 0.63 and live:
            leave(rnd.choice(live), rnd.choice(groups))
        elif x < 0.75 and live:
            own(rnd.choice(live))
        elif x < 0.78 and live:
            detach(rnd.choice(live))
        elif x < 0.82:
            pending_accepts.append(accept_new())
        elif x < 0.86 and pending_accepts:
            pending_accepts.pop(0)()
        elif x < 0.95:
            if delay:
                log.append(("advance",))
                step = rnd.choice([0, delay / 3, delay])
                turn_ends(lambda: reactor.advance(step))
            else:
                log.append(("end_turn",))
                turn_ends(reactor.end_turn)
        # else nothing

    for _ in range(rnd.randint(5, 60)):
        if rnd.random() < 0.6:
            k = rnd.randint(1, 4)
            log.append(("read",))
            read(reactor, *[action for _ in range(k)])
            log.append(("/read",))
        else:
            action()
    while pending_accepts:
        pending_accepts.pop(0)()
    turn_ends(reactor.end_turn)
    turn_ends(lambda: reactor.advance(max(delay, 0) + 1))
    assert not HELD
    for layer in layers:  # the count that lets _join_members skip its work
        assert layer._in_several == sum(len(g) > 1 for g in layer._memberships.values())
    for i, (r, _L) in enumerate(recs):
        exp = b"".join(expected[i])
        got = r.stream()
        if b"<close>" in got:
            before, after = got.split(b"<close>", 1)
            assert after == b"", (seed, i, log)
            # before must be a concatenation prefix of expected
            acc = b""
            ok = before == b""
            for item in expected[i]:
                acc += item
                if acc == before:
                    ok = True
                    break
            assert ok, (seed, i, got, exp, log)
        elif answers:
            assert sorted(atoms(got)) == sorted(atoms(exp)), (seed, i, r.name, got, exp, log)
        else:
            assert got == exp, (seed, i, r.name, got, exp, log)



@pytest.mark.parametrize("seed", range(0, 3000, 10))
def test_reactor_turns_two_layers(seed: int) -> None:
    run(seed)


@pytest.mark.parametrize("seed", range(1, 1500, 10))
def test_a_broadcast_delay(seed: int) -> None:
    run(seed, delay=0.05)


@pytest.mark.parametrize("seed", range(2, 1500, 10))
def test_one_layer_no_closers(seed: int) -> None:
    run(seed, closers=False, nlayers=1)


@pytest.mark.parametrize("seed", range(3, 1500, 10))
def test_reads_parsed_inside_a_flush(seed: int) -> None:
    """Members that answer at their first write at a turn's end (a read parsed at once,
    inside the flush that wrote to them), with and without a delay, no closers: every
    frame exactly once, nothing lost, nothing left held."""
    run(seed, delay=0.05 if seed % 20 == 3 else 0.0, closers=False, answers=True)


@pytest.mark.parametrize("seed", range(4, 3000, 10))
def test_broadcasts_that_leave_members_out(seed: int) -> None:
    """``broadcast(exclude=)``: an excluded member gets nothing of that broadcast and
    everything else in order (what was held before it, what is broadcast after it to the
    same held entry), on two layers, with closers, with and without a delay."""
    run(seed, delay=0.05 if seed % 20 == 4 else 0.0, exclusions=True)


@pytest.mark.parametrize("seed", [351, 1635, 2244, 4298, *range(5, 1500, 10)])
def test_reads_parsed_inside_a_flush_with_exclusions(seed: int) -> None:
    """Both at once: a read parsed inside a member's write that leaves members out (or
    one that the excluded member's own share sets off). Every frame exactly once. (The
    first four seeds lost a frame before ``_excluded`` re-checked its marks and
    ``_not_had`` read every mark before writing: cases too rare for the range.)"""
    run(seed, delay=0.05 if seed % 20 == 5 else 0.0, closers=False, answers=True,
        exclusions=True)
