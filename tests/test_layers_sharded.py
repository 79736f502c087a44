"""The Redis layer over several servers (``realtime.layers.sharded``): two sharded layers on
two real redis-servers stand for two processes. Each group lives on the server its name
hashes to; what is not a group's goes through the first; a server that goes away costs only
its groups. (tests/conftest.py also runs every generic layer test against it: LAYER_KINDS.)"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import pytest_twisted

from realtime.layers import LayerUnavailable, TooManyGroups, layer_from_url
from realtime.layers.base import HELD, set_broadcast_delay
from realtime.layers.redis import RedisChannelLayer
from realtime.layers.sharded import ShardedRedisChannelLayer
from realtime.websocket import encode_frame
from tests.redis_support import RedisServer
from tests.test_layers import until
from tests.test_layers_redis import Probe


def groups_on(layer: ShardedRedisChannelLayer, shard: int, count: int, tag: str) -> list[str]:
    """``count`` group names (with ``tag``) that hash to ``shard``."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        name = f"{tag}.{n}"
        if layer.shards.index(layer.shard(name)) == shard:
            found.append(name)
        n += 1
    return found


@pytest.fixture
def two_processes(redis_server: RedisServer, second_redis_server: RedisServer) -> Any:
    """``await make()``: a started sharded layer over both servers (a key prefix of the
    test's own), closed after the test."""
    from twisted.internet import reactor

    prefix = f"shard{uuid.uuid4().hex[:8]}"
    layers: list[ShardedRedisChannelLayer] = []

    async def make() -> ShardedRedisChannelLayer:
        for server in (redis_server, second_redis_server):
            if not server.ping():
                server.kill()
                server.start()
        layer = layer_from_url(f"{redis_server.url}?prefix={prefix} "
                               f"{second_redis_server.url}?prefix={prefix}")
        assert isinstance(layer, ShardedRedisChannelLayer)
        layer.start(reactor)
        await layer.when_ready(10)
        layers.append(layer)
        return layer

    make.prefix = prefix  # type: ignore[attr-defined]
    yield make
    for layer in layers:
        pytest_twisted.blockon(layer.close())


def numsub(server: RedisServer, topic: str) -> int:
    return int(server.call("PUBSUB", "NUMSUB", topic)[1].lstrip(":"))


@pytest_twisted.ensureDeferred
async def test_each_group_lives_on_its_server_and_crosses_processes(
        two_processes, redis_server, second_redis_server):
    one, two = await two_processes(), await two_processes()
    prefix = two_processes.prefix
    first, second = groups_on(one, 0, 1, "room")[0], groups_on(one, 1, 1, "room")[0]
    a, b = Probe(), Probe()
    ca, cb = one.attach(a), two.attach(b)
    for group in (first, second):  # b is a member of a group on each server
        await two.group_add(group, cb)
    await one.group_add(first, ca)
    await one.group_send(first, {"type": "on.first"})
    await one.group_send(second, {"type": "on.second"})
    await until(lambda: len(b.events) == 2)
    assert sorted(e["type"] for e in b.events) == ["on.first", "on.second"]
    assert [e["type"] for e in a.events] == ["on.first"]
    # Each group's topic is subscribed on its own server only.
    topic = f"{prefix}:0:g:"
    assert (numsub(redis_server, topic + first), numsub(second_redis_server, topic + first)) \
        == (2, 0)
    assert (numsub(redis_server, topic + second), numsub(second_redis_server, topic + second)) \
        == (0, 1)
    # b goes: each server's subscription of its group goes with it (one member of both).
    two.detach(cb)
    await until(lambda: numsub(second_redis_server, topic + second) == 0)
    assert numsub(redis_server, topic + first) == 1  # one's member a is still there
    assert two.local_members(first) == [] and two.local_groups() == {}


@pytest_twisted.ensureDeferred
async def test_direct_sends_remote_joins_and_named_channels(two_processes):
    one, two = await two_processes(), await two_processes()
    b = Probe()
    cb = two.attach(b)
    await one.send(cb, {"type": "direct"})  # another process's consumer
    await until(lambda: b.events == [{"type": "direct"}])
    # One process adds another's consumer to a group on the second server.
    [group] = groups_on(one, 1, 1, "remote")
    await one.group_add(group, cb)
    assert two.local_members(group) == [cb]
    await one.group_send(group, {"type": "to.group"})
    await until(lambda: b.events[-1:] == [{"type": "to.group"}])
    await one.group_discard(group, cb)
    assert two.local_members(group) == []
    # A worker's named channel: sent from one, received by the other.
    await one.send("thumbnails", {"type": "job", "n": 1})
    assert await two.receive("thumbnails") == {"type": "job", "n": 1}


@pytest_twisted.ensureDeferred
async def test_presence_history_and_surveys_over_both_servers(two_processes):
    one, two = await two_processes(), await two_processes()
    prefix = two_processes.prefix
    for layer in (one, two):
        layer.keep_history(f"{prefix}-feed.*", 10, 60)
    feeds = [f"{prefix}-feed.{n}" for n in range(6)]  # on both servers
    assert {one.shards.index(one.shard(g)) for g in feeds} == {0, 1}
    a, b = Probe(), Probe()
    ca, cb = one.attach(a), two.attach(b)
    for feed in feeds:
        await one.group_add(feed, ca, presence={"user": "ada"})
        await two.group_add(feed, cb, presence={"user": "bob"})
    for feed in feeds:
        members = await one.group_presence(feed)
        assert sorted(info["user"] for info in members.values()) == ["ada", "bob"]
        await two.group_send(feed, {"type": "news", "feed": feed})
    kept = await one.group_history(feeds[-1])
    assert [m["feed"] for m in kept["messages"]] == [feeds[-1]] and kept["offset"] == 1
    assert await one.group_sizes(f"{prefix}-feed.") == dict.fromkeys(feeds, 2)
    # b leaves: a hears it in each group, on each server.
    two.detach(cb)
    await until(lambda: len([e for e in a.events if e["type"] == "presence.leave"]) == 6)
    assert await two.group_sizes(f"{prefix}-feed.") == dict.fromkeys(feeds, 1)


@pytest_twisted.ensureDeferred
async def test_max_groups_per_connection_counts_groups_on_every_server(two_processes):
    one = await two_processes()
    one.max_groups_per_connection = 3
    channel = one.attach(Probe())
    groups = groups_on(one, 0, 2, "limit") + groups_on(one, 1, 2, "limit")
    for group in groups[:3]:
        await one.group_add(group, channel)
    with pytest.raises(TooManyGroups):
        await one.group_add(groups[3], channel)


@pytest_twisted.ensureDeferred
async def test_a_server_away_costs_only_its_own_groups():
    from twisted.internet import reactor

    with RedisServer() as first, RedisServer() as second:
        one = layer_from_url(f"{first.url} {second.url}")
        two = layer_from_url(f"{first.url} {second.url}")
        for layer in (one, two):
            layer.start(reactor)
            await layer.when_ready(10)
        try:
            assert isinstance(one, ShardedRedisChannelLayer)
            steady, shaky = groups_on(one, 0, 1, "g")[0], groups_on(one, 1, 1, "g")[0]
            b = Probe()
            cb = two.attach(b)
            await two.group_add(steady, cb)
            await two.group_add(shaky, cb)
            second.kill()
            await until(lambda: not one.ready and not two.ready)
            with pytest.raises(LayerUnavailable):
                await one.group_send(shaky, {"type": "lost"})
            await one.group_send(steady, {"type": "still"})  # the other server carries on
            await until(lambda: [e["type"] for e in b.events] == ["still"])
            second.start()
            await one.when_ready(10)
            await two.when_ready(10)
            gaps = [e["group"] for e in b.events if e["type"] == "layer.gap"]
            assert gaps == [shaky]  # only the group on the server that went away
            assert two.reconnects == 1 and two.last_outage is not None
            await one.group_send(shaky, {"type": "back"})
            await until(lambda: b.events[-1:] == [{"type": "back"}])
        finally:
            await one.close()
            await two.close()


def test_urls_are_checked_each_and_one_is_a_plain_redis_layer(tmp_path):
    assert isinstance(layer_from_url("redis://127.0.0.1:6379/0"), RedisChannelLayer)
    layer = layer_from_url("redis://127.0.0.1:6379/0  rediss://cache.example:6390/1")
    assert isinstance(layer, ShardedRedisChannelLayer) and len(layer.shards) == 2
    with pytest.raises(ValueError, match="the same Redis as"):
        layer_from_url("redis://h:1/0 redis://h:1/0")
    with pytest.raises(ValueError, match="the same Redis as"):  # however it is spelt
        layer_from_url("redis://H:1/0 redis://h:1?capacity=100")
    with pytest.raises(ValueError, match="same capacity= and prefix="):
        layer_from_url("redis://h:1/0?prefix=a redis://h:2/0?prefix=b")
    with pytest.raises(ValueError, match="port"):
        layer_from_url("redis://127.0.0.1:6379/0 redis://h:notaport/0")
    with pytest.raises(ValueError, match="ca"):
        layer_from_url(f"redis://h/0 rediss://h:1/0?ssl_ca_certs={tmp_path / 'missing.pem'}")


def test_the_command_line_takes_several_servers_and_stops_on_a_bad_one():
    from realtime.config import StartupError
    from realtime.tap import Options

    options = Options()
    options.parseOptions(["--app", "realtime.examples.bench:application",
                          "--layer", "redis://:s3cret@127.0.0.1:1/0 redis://127.0.0.1:2/0"])
    assert isinstance(options.layer, ShardedRedisChannelLayer)
    # What --check and the logs name: every server, no password.
    assert options.layer.address.describe() == "redis://127.0.0.1:1/0 redis://127.0.0.1:2/0"
    with pytest.raises(StartupError, match="--layer: 'mysql://x': expected redis://"):
        Options().parseOptions(["--app", "realtime.examples.bench:application",
                                "--layer", "redis://127.0.0.1:1/0 mysql://x"])


# -- review 3's reproductions (each failed before its fix) -------------------------------------

def text(payload: str) -> bytes:
    return encode_frame(0x1, payload.encode())


@pytest.mark.parametrize("order", ["131", "311"])
@pytest_twisted.ensureDeferred
async def test_held_broadcasts_on_two_shards_reach_a_member_of_both_all_in_order(
        two_processes, order):
    """A member of groups on two servers gets every broadcast, in the order held.

    With a broadcast delay (or several reads in one reactor turn) the broadcasts to g1
    (shard 0), g3 (shard 1) and g2 (shard 0) are held in that order. ``_join_members``
    joins shard 0's two entries for the member and marks it as having had everything up to
    g2's entry ("a receiver is attached to one layer"); shard 1's g3 entry, between them,
    then skips the member as already had: the frame is lost (and were it not, it would
    come after g2's). The same when g3's entry is held first ("311": one read from the
    second server, then one from the first with both of its groups' messages, in one
    reactor turn, no delay needed). Correct: the member gets every frame, in the order
    held."""
    from twisted.internet import reactor

    layer = await two_processes()
    g1, g2 = groups_on(layer, 0, 2, "held")
    [g3] = groups_on(layer, 1, 1, "held")
    member = Probe()
    channel = layer.attach(member)
    for group in (g1, g2, g3):
        await layer.group_add(group, channel)
    set_broadcast_delay(1.0, reactor)
    try:
        await _held_in(layer, member, g1, g2, g3, order)
    finally:
        set_broadcast_delay(0)


async def _held_in(layer: Any, member: Probe, g1: str, g2: str, g3: str, order: str) -> None:
    sent = []
    plan = [(g1, "1"), (g3, "3"), (g2, "2")] if order == "131" else [(g3, "3"), (g1, "1"),
                                                                      (g2, "2")]
    for count, (group, payload) in enumerate(plan, 1):
        sent.append(layer.broadcast(group, text=payload))
        await until(lambda count=count: len(HELD) == count)  # held in this order
    await until(lambda: not HELD, timeout=5)
    for d in sent:
        await d
    assert member.frames == [text(payload) for _, payload in plan]


@pytest_twisted.ensureDeferred
async def test_the_same_redis_under_two_spellings_is_refused(redis_server, second_redis_server):
    """``redis://127.0.0.1:PORT/0`` and ``redis://127.0.0.1:PORT`` (db 0 by default) are the
    same Redis, database and prefix: ``from_url`` refuses "the same Redis twice", but
    compares the URL strings only, so these are taken as two shards. Both shards of every
    process then subscribe to the process's own topic on that one server, and each direct
    ``send()`` to a consumer (and each remote ``group_add`` control message) is handled
    twice: the consumer gets every message twice. Correct: refused (ValueError), as the
    identical spelling is (compare the parsed address, db and prefix)."""
    from twisted.internet import reactor

    port = redis_server.port
    url = f"redis://127.0.0.1:{port}/0 redis://127.0.0.1:{port}"
    try:
        one, two = layer_from_url(url), layer_from_url(url)
    except ValueError:
        return  # refused: correct
    layers = [one, two]
    try:
        for layer in layers:
            layer.start(reactor)
            await layer.when_ready(10)
        b = Probe()
        cb = two.attach(b)
        await one.send(cb, {"type": "direct"})
        await until(lambda: len(b.events) >= 1)
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.3, lambda: None)  # a second copy, if any, has come
        assert b.events == [{"type": "direct"}], "the same Redis twice: sent twice"
    finally:
        for layer in layers:
            await layer.close()


def test_a_password_with_a_space_is_never_shown(redis_server):
    """A single Redis URL whose password holds a space (``parse_url`` takes it, and
    ``layer_from_url`` did before 2055f0f) is now split on the space into two "URLs"; the
    first half, password included, is then quoted unredacted in the ValueError (which
    ``--layer`` prints at start-up). Correct: either the URL is taken as one server, as
    before, or the error does not show any part of the password."""
    secret = "s3cr3t"
    url = f"redis://:{secret} pa55@127.0.0.1:{redis_server.port}/0"
    try:
        layer = layer_from_url(url)
    except ValueError as exc:
        assert secret not in str(exc), f"password shown: {exc}"
        return
    assert not isinstance(layer, ShardedRedisChannelLayer)


@pytest_twisted.ensureDeferred
async def test_when_ready_times_out_with_timeouterror_as_one_redis_does(redis_server):
    """``when_ready(timeout)`` fails with ``TimeoutError`` when Redis is not ready in time
    (RedisChannelLayer's contract, which callers catch). The sharded layer gathers its
    shards' Deferreds with ``gatherResults``: a server that is away gives
    ``defer.FirstError`` instead, and ``except TimeoutError`` misses it. Correct: the
    shard's ``TimeoutError`` itself (unwrap the FirstError)."""
    from twisted.internet import reactor

    with RedisServer() as away:
        away.kill()
        layer = layer_from_url(f"{redis_server.url} {away.url}")
        layer.start(reactor)
        try:
            with pytest.raises(TimeoutError):
                await layer.when_ready(0.5)
        finally:
            await layer.close()
