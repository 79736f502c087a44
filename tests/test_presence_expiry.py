"""Presence of a process that dies without its members leaving (Redis layer): the other
processes remember its announced members, check its liveness with ``PUBSUB NUMSUB``, and
after ``presence_grace`` tell their own members ``presence.leave`` for each. Real layers
on a real redis-server (each layer instance stands for a process); the checks run on a
``Clock`` so the grace is exact, while Redis I/O is real."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.task import Clock

from realtime.layers.redis import RedisChannelLayer
from tests.redis_support import RedisServer, started_layer
from tests.test_layers import until
from tests.test_layers_redis import Probe, two_layers  # noqa: F401 (fixture)

INTERVAL = RedisChannelLayer.presence_check_interval
GRACE = RedisChannelLayer.presence_grace


def crash(layer: RedisChannelLayer) -> None:
    """What SIGKILL does to a process, as Redis sees it: its connections drop, unclosed,
    nothing is sent, and nothing reconnects."""
    layer._closed = True
    for link in (layer._pub, layer._sub, layer._pop):
        if link is not None:
            link.stopped = True
            if link.proto is not None and link.proto.transport is not None:
                link.proto.transport.abortConnection()


def cut_off(layer: RedisChannelLayer) -> None:
    """A partition: its connections drop and it cannot reconnect until ``heal``."""
    for link in (layer._pub, layer._sub):
        assert link is not None and link.proto is not None
        link._retry = lambda: None  # type: ignore[method-assign]
        link.proto.transport.abortConnection()


def heal(layer: RedisChannelLayer) -> None:
    for link in (layer._pub, layer._sub):
        assert link is not None
        del link._retry
        link.start()


async def gone_from_redis(redis_server: RedisServer, layer: RedisChannelLayer) -> None:
    """Until Redis has seen ``layer``'s connections close (its topic has no subscriber)."""
    topic = layer._process_topic + layer.process_id
    await until(lambda: redis_server.call("PUBSUB", "NUMSUB", topic) == [topic, ":0"])


async def check(clock: Clock, *layers: RedisChannelLayer) -> None:
    """One check interval: each layer's PUBSUB NUMSUB is sent and answered."""
    clock.advance(INTERVAL)
    await until(lambda: not any(layer._checking for layer in layers))


def kinds(probe: Probe, kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e["group"], e["channel"], e["info"]) for e in probe.events if e["type"] == kind]


async def clocked(make: Any, clock: Clock) -> RedisChannelLayer:
    layer: RedisChannelLayer = await make()
    layer.clock = clock
    return layer


@pytest_twisted.ensureDeferred
async def test_a_dead_processes_announced_members_leave_after_the_grace(
        two_layers, redis_server):  # noqa: F811
    clock = Clock()
    one, two, three = [await clocked(two_layers, clock) for _ in range(3)]
    a, c = Probe(), Probe()
    ca = one.attach(a)
    await one.group_add("hall", ca, presence={"user": "ada"})
    await one.group_add("side", ca)  # a plain member of "side": it hears its presence too
    b1, b2, b3, b4 = [two.attach(Probe()) for _ in range(4)]
    await two.group_add("hall", b1, presence={"user": "bob"})
    await two.group_add("hall", b2, presence={"user": "quiet"}, announce=False)
    await two.group_add("hall", b3)  # no presence
    await two.group_add("side", b4, presence={"user": "bea"})
    # One learns them from the joins it hears; three, which joins after them, by asking.
    await until(lambda: kinds(a, "presence.join")[-1:] == [("side", b4, {"user": "bea"})])
    await three.group_add("hall", three.attach(c), presence={"user": "cy"})
    pid = two.process_id
    for layer in (one, three):
        await until(lambda layer=layer: layer._remote.get("hall", b1) == (pid, {"user": "bob"}))
    assert one._remote.get("side", b4) == (pid, {"user": "bea"})
    assert one._remote.get("hall", b2) is None and three._remote.get("hall", b2) is None
    assert three._remote.get("side", b4) is None  # three is not in "side"
    assert three._remote.get("hall", ca) == (one.process_id, {"user": "ada"})

    crash(two)
    await gone_from_redis(redis_server, two)
    await check(clock, one, three)  # absent since now
    await check(clock, one, three)  # absent for one interval: not yet
    assert INTERVAL <= GRACE < 2 * INTERVAL
    assert kinds(a, "presence.leave") == [] and kinds(c, "presence.leave") == []
    await check(clock, one, three)  # absent for two intervals, past the grace: gone
    assert sorted(kinds(a, "presence.leave")) == sorted([("hall", b1, {"user": "bob"}),
                                                         ("side", b4, {"user": "bea"})])
    assert kinds(c, "presence.leave") == [("hall", b1, {"user": "bob"})]
    assert {"type": "presence.leave", "group": "hall", "channel": b1,
            "info": {"user": "bob"}} in a.events  # the shape a live leave has
    assert (one.stats.presence_expired, three.stats.presence_expired) == (2, 1)
    assert not one._remote.processes.get(pid) and not three._remote.processes.get(pid)
    # Told once: later checks find nothing more.
    await check(clock, one, three)
    assert len(kinds(a, "presence.leave")) == 2 and len(kinds(c, "presence.leave")) == 1
    # The other live process is still known, and not expired.
    assert three._remote.get("hall", ca) == (one.process_id, {"user": "ada"})
    from realtime.metrics import snapshot

    assert snapshot([], one)["layer_presence_expired"] == 2


@pytest_twisted.ensureDeferred
async def test_leaving_members_and_groups_are_forgotten(two_layers, redis_server):  # noqa: F811
    clock = Clock()
    one, two = [await clocked(two_layers, clock) for _ in range(2)]
    a = Probe()
    ca = one.attach(a)
    await one.group_add("hall", ca)
    b1, b2 = two.attach(Probe()), two.attach(Probe())
    await two.group_add("hall", b1, presence={"user": "bob"})
    await two.group_add("hall", b2, presence={"user": "bo"})
    await until(lambda: len(one._remote.groups.get("hall", {})) == 2)
    two.detach(b1)  # a live leave: forgotten, heard once
    await until(lambda: one._remote.get("hall", b1) is None)
    one.detach(ca)  # one has no member left: it hears no more, and remembers nothing
    assert not one._remote and one._seeded == set()
    crash(two)
    await gone_from_redis(redis_server, two)
    for _ in range(4):
        await check(clock, one)
    assert kinds(a, "presence.leave") == [("hall", b1, {"user": "bob"})]
    assert one.stats.presence_expired == 0


@pytest_twisted.ensureDeferred
async def test_our_own_reconnect_starts_the_window_again(two_layers, redis_server):  # noqa: F811
    """An absence seen before this process's own connection was lost does not count: the
    other process may be reconnecting too, and gets the whole grace again."""
    clock = Clock()
    one, two = [await clocked(two_layers, clock) for _ in range(2)]
    a = Probe()
    await one.group_add("hall", one.attach(a))
    b = two.attach(Probe())
    await two.group_add("hall", b, presence={"user": "bob"})
    await until(lambda: one._remote.get("hall", b) is not None)
    cut_off(two)
    await gone_from_redis(redis_server, two)
    await check(clock, one)
    await check(clock, one)  # absent for one interval
    assert one._absent
    assert one._sub is not None and one._sub.proto is not None
    one._sub.proto.transport.abortConnection()  # our own blip; we are back at once
    await until(lambda: not one.ready)
    await one.when_ready(10)
    assert one._absent == {}
    await check(clock, one)  # would be past the grace had the earlier absence counted
    await check(clock, one)
    assert kinds(a, "presence.leave") == []
    await check(clock, one)  # the whole grace since our reconnect: gone
    assert kinds(a, "presence.leave") == [("hall", b, {"user": "bob"})]
    heal(two)
    await two.when_ready(10)


@pytest_twisted.ensureDeferred
async def test_cut_off_then_back_reannounces_and_only_what_was_missed_is_told(
        two_layers, redis_server):  # noqa: F811
    """Two is cut off past the grace: one (checking) tells its member two's members left;
    three (not checking meanwhile) still has them. When two is back it re-announces: one's
    member hears the joins again, three's hears nothing twice, only the leave it missed."""
    one_clock, three_clock = Clock(), Clock()
    one = await clocked(two_layers, one_clock)
    two = await clocked(two_layers, Clock())
    three = await clocked(two_layers, three_clock)
    a, c = Probe(), Probe()
    await one.group_add("hall", one.attach(a))
    await three.group_add("hall", three.attach(c))
    b1, b2, b3 = [two.attach(Probe()) for _ in range(3)]
    await two.group_add("hall", b1, presence={"user": "bob"})
    await two.group_add("hall", b2, presence={"user": "bo"})
    await two.group_add("hall", b3, presence={"user": "shh"}, announce=False)
    await three.group_add("side", three.attach(c))
    b4 = two.attach(Probe())
    await two.group_add("side", b4, presence={"user": "bea"})
    await until(lambda: len(kinds(c, "presence.join")) == 3
                and len(one._remote.groups.get("hall", {})) == 2)
    cut_off(two)
    await gone_from_redis(redis_server, two)
    for _ in range(3):
        await check(one_clock, one)
    assert sorted(kinds(a, "presence.leave")) == sorted([("hall", b1, {"user": "bob"}),
                                                         ("hall", b2, {"user": "bo"})])
    assert kinds(c, "presence.leave") == []
    two.detach(b2)  # leaves while two cannot publish: its leave is not sent
    two.detach(b4)  # two's last member of "side": two is not even subscribed there now
    heal(two)
    await two.when_ready(10)
    await until(lambda: len(kinds(a, "presence.join")) == 3)
    await until(lambda: len(kinds(c, "presence.leave")) == 2)
    # One's member: bob is back (not b2, gone meanwhile; not b3, which never announces).
    assert kinds(a, "presence.join")[2] == ("hall", b1, {"user": "bob"})
    assert one._remote.get("hall", b1) == (two.process_id, {"user": "bob"})
    # Three's member: no second join for bob; the leaves it missed for b2 and b4.
    assert sorted(kinds(c, "presence.leave")) == sorted([("hall", b2, {"user": "bo"}),
                                                         ("side", b4, {"user": "bea"})])
    assert len(kinds(c, "presence.join")) == 3
    assert three._remote.get("hall", b2) is None and not three._remote.processes.get(
        two.process_id, {}).get("side")
    await one.group_send("hall", {"type": "after"})  # everything before it has landed
    await until(lambda: c.events[-1:] == [{"type": "after"}])
    assert len(kinds(a, "presence.join")) == 3 and len(kinds(c, "presence.join")) == 3


@pytest_twisted.ensureDeferred
async def test_a_redis_restart_expires_no_one_and_tells_no_one_twice():
    clock = Clock()
    with RedisServer() as redis:
        layers = [await started_layer(redis.url) for _ in range(2)]
        one, two = layers
        try:
            for layer in layers:
                layer.clock = clock
            a = Probe()
            ca = one.attach(a)
            await one.group_add("hall", ca, presence={"user": "ada"})
            b = two.attach(Probe())
            await two.group_add("hall", b, presence={"user": "bob"})
            await until(lambda: len(kinds(a, "presence.join")) == 2)
            await check(clock, one, two)
            redis.kill()
            await until(lambda: not one.ready and not two.ready)
            await check(clock, one, two)  # while Redis is away: no check is made
            await check(clock, one, two)
            redis.start()
            await one.when_ready(10)
            await two.when_ready(10)
            for _ in range(int(3 * GRACE / INTERVAL) + 1):
                await check(clock, one, two)
            await one.group_send("hall", {"type": "after"})
            await until(lambda: a.events[-1:] == [{"type": "after"}])
            assert [e["type"] for e in a.events] == [
                "presence.join", "presence.join", "layer.gap", "after"]
            assert one.stats.presence_expired == 0 and two.stats.presence_expired == 0
            # Asked again after the reconnect: still known, still checked.
            assert one._remote.get("hall", b) == (two.process_id, {"user": "bob"})
            assert two._remote.get("hall", ca) == (one.process_id, {"user": "ada"})
        finally:
            for layer in layers:
                await layer.close()


@pytest_twisted.ensureDeferred
async def test_leaves_missed_while_cut_off_are_forgotten_by_asking_again(
        two_layers, redis_server):  # noqa: F811
    """One is cut off while two's members leave (published; one misses them). Back, one
    asks again once the grace has passed: those members are forgotten silently (its
    member had layer.gap), so when two dies later only the member still there leaves."""
    clock = Clock()
    one = await clocked(two_layers, clock)
    two = await clocked(two_layers, Clock())
    a = Probe()
    ca = one.attach(a)
    await one.group_add("hall", ca)
    await one.group_add("side", ca)
    b1, b2, b3 = [two.attach(Probe()) for _ in range(3)]
    await two.group_add("hall", b1, presence={"user": "bob"})
    await two.group_add("hall", b3, presence={"user": "bea"})
    await two.group_add("side", b2, presence={"user": "bo"})
    await until(lambda: len(kinds(a, "presence.join")) == 3)
    cut_off(one)
    await until(lambda: not one.ready)
    two.detach(b1)  # two stays in "hall" (b3)
    two.detach(b2)  # two leaves "side" altogether: it will not answer for it
    heal(one)
    await one.when_ready(10)
    assert one._remote.get("hall", b1) is not None  # not yet: asked after the grace
    await check(clock, one)
    await check(clock, one)
    await until(lambda: one._remote.get("hall", b1) is None
                and one._remote.groups.get("side") is None)
    assert one._remote.get("hall", b3) == (two.process_id, {"user": "bea"})
    assert [e["type"] for e in a.events[3:]] == ["layer.gap", "layer.gap"]
    crash(two)
    await gone_from_redis(redis_server, two)
    for _ in range(3):
        await check(clock, one)
    assert kinds(a, "presence.leave") == [("hall", b3, {"user": "bea"})]
