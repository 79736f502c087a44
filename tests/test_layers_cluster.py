"""The Redis layer over a Redis Cluster (``realtime.layers.cluster``): real clusters of
redis-servers (three masters; one test adds a replica), two layers standing for two
processes. Each group lives in a partition whose hash tag puts all its keys and topics in
one slot, on whichever node holds it; pub/sub is sharded; a moved slot, a node away and a
failover each cost only the partitions concerned, reported as ``layer.gap``.
(tests/conftest.py also runs every generic layer test against it: LAYER_KINDS.)"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted

from realtime.layers import LayerUnavailable, layer_from_url
from realtime.layers.base import on_survey
from realtime.layers.cluster import (
    ASK_TIMEOUT,
    SLOTS,
    ClusterRedisChannelLayer,
    key_slot,
    partition_tags,
)
from realtime.layers.redis import RedisChannelLayer
from tests.clients import captured_log
from tests.redis_support import RedisCluster, RedisServer
from tests.test_group_close import Closable
from tests.test_layers import until
from tests.test_layers_redis import Probe


def in_partition(layer: ClusterRedisChannelLayer, index: int, tag: str) -> str:
    """A group name (with ``tag``) that lives in partition ``index``."""
    n = 0
    while layer.shards.index(layer.shard(f"{tag}.{n}")) != index:
        n += 1
    return f"{tag}.{n}"


def slot_of(layer: ClusterRedisChannelLayer, group: str) -> int:
    return key_slot(layer.shard(group)._group_topic.encode())


def shardnumsub(node: RedisServer, topic: str) -> int:
    return int(node.call("PUBSUB", "SHARDNUMSUB", topic)[1].lstrip(":"))


async def started(url: str) -> ClusterRedisChannelLayer:
    from twisted.internet import reactor

    layer = layer_from_url(url)
    assert isinstance(layer, ClusterRedisChannelLayer)
    layer.start(reactor)
    await layer.when_ready(10)
    return layer


#: Tests marked ``own_cluster`` get a cluster of their own (``own_cluster``), started ahead
#: of them (tests/redis_support.py: ``ClusterSpares``).
pytestmark = pytest.mark.usefixtures("cluster_spares")


@contextlib.asynccontextmanager
async def cluster_processes(cluster: RedisCluster) -> AsyncIterator[
        tuple[RedisCluster, ClusterRedisChannelLayer, ClusterRedisChannelLayer]]:
    """Two started layers on a cluster of the test's own (``own_cluster``: tests that move
    slots, stop nodes or need TLS or a password), closed after."""
    one, two = await started(cluster.url), await started(cluster.url)
    try:
        yield cluster, one, two
    finally:
        await one.close()
        await two.close()


@pytest.fixture
def two_processes(redis_cluster: RedisCluster) -> Any:
    """``await make()``: a started cluster layer on the session's cluster (a key prefix of
    the test's own), closed after the test."""
    prefix = f"cl{uuid.uuid4().hex[:8]}"
    layers: list[ClusterRedisChannelLayer] = []

    async def make(partitions: int = 16) -> ClusterRedisChannelLayer:
        layer = await started(f"{redis_cluster.url}?prefix={prefix}&partitions={partitions}")
        layers.append(layer)
        return layer

    make.prefix = prefix  # type: ignore[attr-defined]
    yield make
    for layer in layers:
        pytest_twisted.blockon(layer.close())


def test_key_slot_is_redis_clusters_and_partitions_spread_evenly(redis_cluster):
    node = redis_cluster.masters[0]
    for key in ["foo", "{user1000}.following", "a{}b", "{}{x}", "x{y}z{w}", "é",
                "prefix:{r7}:g:room"]:
        assert key_slot(key.encode()) == int(node.call("CLUSTER", "KEYSLOT", key).lstrip(":"))
    for count in (1, 3, 16, 100, 256):
        tags = partition_tags(count)
        assert len(set(tags)) == count
        for k, tag in enumerate(tags):  # each in the middle half of its range of slots
            low, high = k * SLOTS // count, (k + 1) * SLOTS // count
            assert low <= key_slot(tag.encode()) < high
    # 16 partitions on the test cluster's three equal ranges: 5, 6 and 5 of them.
    owners = [redis_cluster.owner(key_slot(t.encode())).port for t in partition_tags(16)]
    assert sorted(owners.count(node.port) for node in redis_cluster.masters) == [5, 5, 6]


@pytest_twisted.ensureDeferred
async def test_each_group_lives_in_its_partition_on_the_node_that_holds_it(
        two_processes, redis_cluster):
    one, two = await two_processes(), await two_processes()
    prefix = two_processes.prefix
    # Groups in partitions on each of the three nodes.
    groups = [in_partition(one, k, "room") for k in range(16)]
    owners = {redis_cluster.owner(slot_of(one, g)).port for g in groups}
    assert owners == {node.port for node in redis_cluster.masters}
    one.keep_history(f"{groups[0]}", 10, 60)
    two.keep_history(f"{groups[0]}", 10, 60)
    a, b = Probe(), Probe()
    ca, cb = one.attach(a), two.attach(b)
    for group in groups:
        await two.group_add(group, cb)
    await one.group_add(groups[0], ca)
    for group in groups:
        await one.group_send(group, {"type": "hello", "group": group})
    await until(lambda: len(b.events) == 16)
    assert sorted(e["group"] for e in b.events) == sorted(groups)
    assert [e["group"] for e in a.events] == [groups[0]]
    # The partition's tag keeps the group's topic and history keys in one slot, on the node
    # that holds it; the topic is a shard channel (SSUBSCRIBE), not a plain one.
    tag = one.shard(groups[0]).tag
    topic, history = f"{prefix}:{{{tag}}}:g:{groups[0]}", f"{prefix}:{{{tag}}}:h:{groups[0]}"
    owner = redis_cluster.owner(key_slot(topic.encode()))
    assert key_slot(topic.encode()) == key_slot(history.encode())
    assert shardnumsub(owner, topic) == 2
    assert owner.call("PUBSUB", "NUMSUB", topic)[1] == ":0"
    assert owner.call("EXISTS", history) == ":1"
    kept = await two.group_history(groups[0])
    assert [m["group"] for m in kept["messages"]] == [groups[0]]
    # b goes: its shard channels go with it.
    two.detach(cb)
    await until(lambda: shardnumsub(owner, topic) == 1)
    assert two.local_groups() == {}


@pytest_twisted.ensureDeferred
async def test_start_up_says_one_line_for_every_partition(redis_cluster):
    """Not 32 lines (a publisher and a subscriber per partition): one, naming the nodes."""
    from twisted.logger import LogLevel, formatEvent

    with captured_log() as events:
        layer = await started(redis_cluster.url)
        await until(lambda: any(e.get("log_namespace") == "realtime.layers.cluster"
                                for e in events))
    await layer.close()
    said = [formatEvent(e) for e in events if e.get("log_level") in (LogLevel.info,
                                                                      LogLevel.warn)
            and str(e.get("log_namespace", "")).startswith("realtime.layers")]
    nodes = ", ".join(f"127.0.0.1:{port}"
                      for port in sorted(node.port for node in redis_cluster.masters))
    assert said == [f"channel layer: connected to the Redis Cluster ({redis_cluster.url}): "
                    f"16 partitions on 3 node(s) ({nodes})"]


@pytest_twisted.ensureDeferred
async def test_direct_sends_remote_joins_named_channels_presence_and_surveys(two_processes):
    one, two = await two_processes(), await two_processes()
    prefix = two_processes.prefix
    a, b = Probe(), Probe()
    ca, cb = one.attach(a), two.attach(b)
    await one.send(cb, {"type": "direct"})  # another process's consumer
    await until(lambda: b.events == [{"type": "direct"}])
    group = in_partition(one, 9, f"{prefix}-remote")
    await one.group_add(group, cb)  # another process's consumer, added from here
    assert two.local_members(group) == [cb]
    await one.group_send(group, {"type": "to.group"})
    await until(lambda: b.events[-1:] == [{"type": "to.group"}])
    await one.send("thumbnails", {"type": "job", "n": 1})  # a worker's named channel
    assert await two.receive("thumbnails") == {"type": "job", "n": 1}
    feeds = [in_partition(one, k, f"{prefix}-feed") for k in (1, 6, 12)]
    for feed in feeds:
        await one.group_add(feed, ca, presence={"user": "ada"})
        await two.group_add(feed, cb, presence={"user": "bob"})
    for feed in feeds:
        members = await one.group_presence(feed)
        assert sorted(info["user"] for info in members.values()) == ["ada", "bob"]
    assert await one.group_sizes(f"{prefix}-feed") == dict.fromkeys(feeds, 2)
    two.detach(cb)
    await until(lambda: len([e for e in a.events if e["type"] == "presence.leave"]) == 3)
    assert await two.group_sizes(f"{prefix}-feed") == dict.fromkeys(feeds, 1)


@pytest.mark.own_cluster
@pytest_twisted.ensureDeferred
async def test_a_moved_slot_costs_its_partition_a_gap_and_keeps_its_history(own_cluster):
    """A resharding moves one partition's slot (and its keys) to another node: that node's
    old connections are told (MOVED, an unasked ``sunsubscribe``), reconnect where the slot
    is, and its groups' members get ``layer.gap`` (a history group: what it missed, from
    the moved history); the other partitions notice nothing."""
    async with cluster_processes(own_cluster) as (cluster, one, two):
        moving, steady = in_partition(one, 3, "moving"), in_partition(one, 12, "steady")
        feed = in_partition(one, 3, "feed")
        for layer in (one, two):
            layer.keep_history("feed.*", 10, 60)
        b = Probe()
        cb = two.attach(b)
        for group in (moving, steady, feed):
            await two.group_add(group, cb)
        await one.group_send(feed, {"type": "before"})
        await until(lambda: len(b.events) == 1)
        slot = slot_of(one, moving)
        source = cluster.owner(slot)
        target = next(n for n in cluster.masters if n is not source)
        cluster.move(slot, target)
        # Publishing there is answered MOVED (LayerUnavailable) until the publisher
        # has moved; the subscriber was dropped by the old node and resubscribes.
        await until(lambda: any(e["type"] == "layer.gap" for e in b.events), 10)
        await until(lambda: one.ready and two.ready, 10)

        async def sent(group: str, message: dict[str, Any]) -> int:
            """Sent, after how many LayerUnavailable (at most one per connection moved:
            MOVED, then the reconnect)."""
            from twisted.internet import reactor
            from twisted.internet.task import deferLater

            for failures in range(20):
                try:
                    await one.group_send(group, message)
                    return failures
                except LayerUnavailable:
                    await deferLater(reactor, 0.05, lambda: None)  # (a turn: the close)
                    await until(lambda: one.ready, 10)
            raise AssertionError("never sent")

        assert await sent(moving, {"type": "after"}) <= 1
        assert await sent(feed, {"type": "after.feed"}) <= 1
        await one.group_send(steady, {"type": "steady"})
        await until(lambda: {"after", "after.feed", "steady"}
                    <= {e["type"] for e in b.events}, 10)
        gaps = [e["group"] for e in b.events if e["type"] == "layer.gap"]
        assert gaps == [moving]  # not steady's partition; feed recovered (nothing lost)
        kept = await two.group_history(feed)  # the history moved with the slot
        assert [m["type"] for m in kept["messages"]] == ["before", "after.feed"]
        assert kept["offset"] == 2
        assert cluster.owner(slot) is target
        topic = one.shard(moving)._group_topic + moving
        assert shardnumsub(target, topic) == 1 and shardnumsub(source, topic) == 0


@pytest.mark.own_cluster(masters=3, replicas=1)
@pytest_twisted.ensureDeferred
async def test_a_node_away_costs_only_its_partitions_and_a_replica_takes_over(
        own_cluster, monkeypatch):
    """Three masters, a replica of the first. The first is killed: its partitions fail
    (LayerUnavailable) while the others carry on; the replica is promoted, the layers find
    it (CLUSTER SLOTS from the nodes that are left), and only those partitions' members get
    ``layer.gap``."""
    monkeypatch.setattr("realtime.layers.redis.BACKOFF_CAP", 0.5)  # (retries: 5 s apart)
    async with cluster_processes(own_cluster) as (cluster, one, two):
        victim, replica = cluster.masters[0], cluster.nodes[3]
        shaky = next(g for g in (in_partition(one, k, "g") for k in range(16))
                     if cluster.owner(slot_of(one, g)) is victim)
        steady = next(g for g in (in_partition(one, k, "g") for k in range(16))
                      if cluster.owner(slot_of(one, g)) is not victim)
        b = Probe()
        cb = two.attach(b)
        await two.group_add(shaky, cb)
        await two.group_add(steady, cb)
        victim.kill()
        await until(lambda: not one.ready and not two.ready, 10)
        with pytest.raises(LayerUnavailable):
            await one.group_send(shaky, {"type": "lost"})
        await one.group_send(steady, {"type": "still"})  # other nodes carry on
        await until(lambda: [e["type"] for e in b.events] == ["still"])
        await one.when_ready(20)  # the replica was promoted, and found
        await two.when_ready(20)
        assert cluster.owner(slot_of(one, shaky)) is replica
        gaps = [e["group"] for e in b.events if e["type"] == "layer.gap"]
        assert gaps == [shaky]
        await one.group_send(shaky, {"type": "back"})
        await until(lambda: b.events[-1:] == [{"type": "back"}])


@pytest.mark.own_cluster(tls=True)
@pytest_twisted.ensureDeferred
async def test_rediss_cluster_verifies_every_node_with_the_given_ca(own_cluster, tmp_path):
    """``rediss+cluster://``: CLUSTER SLOTS over TLS names the nodes' TLS ports, and each
    partition's connection verifies its node against ``ssl_ca_certs``; a CA that did not
    sign them: never ready, the TLS error named."""
    from twisted.internet import reactor

    from tests.e2e.support import self_signed

    async with cluster_processes(own_cluster) as (cluster, one, two):
        b = Probe()
        cb = two.attach(b)
        groups = [in_partition(one, k, "secure") for k in (0, 7, 15)]  # three nodes
        assert len({cluster.owner(slot_of(one, g)).port for g in groups}) == 3
        for group in groups:
            await two.group_add(group, cb)
            await one.group_send(group, {"type": "tls", "group": group})
        await until(lambda: len(b.events) == 3)
        assert sorted(e["group"] for e in b.events) == sorted(groups)
        other, _ = self_signed(tmp_path)
        stranger = layer_from_url(cluster.url.replace(str(cluster.cert), str(other)))
        stranger.start(reactor)
        try:
            await until(lambda: "certificate verify failed"
                        in (stranger.shards[0]._pub._last_problem or ""), timeout=10)
            with pytest.raises(TimeoutError):  # refused: it does not get ready
                await stranger.when_ready(0.3)
            problem = stranger.shards[0]._pub._last_problem or ""
            assert "no Redis Cluster node answered CLUSTER SLOTS" in problem
            assert "certificate verify failed" in problem
        finally:
            await stranger.close()


@pytest.mark.own_cluster(masters=1, password="s3cret-pass")
@pytest_twisted.ensureDeferred
async def test_a_cluster_with_a_password_and_a_wrong_one(own_cluster):
    """The URL's password AUTHs every connection, the nodes asked CLUSTER SLOTS included;
    a wrong one: never ready, Redis's refusal named, the password never shown."""
    from twisted.internet import reactor

    async with cluster_processes(own_cluster) as (cluster, one, two):
        b = Probe()
        cb = two.attach(b)
        await two.group_add("locked", cb)
        await one.group_send("locked", {"type": "in"})
        await until(lambda: b.events == [{"type": "in"}])
        wrong = layer_from_url(cluster.url.replace("s3cret-pass", "wrong-pass"))
        wrong.start(reactor)
        try:
            await until(lambda: "WRONGPASS" in (wrong.shards[0]._pub._last_problem or ""),
                        timeout=10)
            with pytest.raises(TimeoutError):  # refused: it does not get ready
                await wrong.when_ready(0.3)
            problem = wrong.shards[0]._pub._last_problem or ""
            assert "could not auth" in problem and "WRONGPASS" in problem, problem
            assert "wrong-pass" not in problem and "wrong-pass" not in wrong.address.describe()
        finally:
            await wrong.close()


@pytest.mark.own_cluster(masters=3, replicas=1)
@pytest_twisted.ensureDeferred
async def test_a_connection_to_a_replica_goes_on_to_its_master(own_cluster):
    """A partition sent to a replica (a stale address: here a MOVED hint) is told MOVED by
    its first keyed read and connects to the master: never left on a replica, whose
    shard channels and PUBSUB SHARDNUMSUB are its own."""
    from twisted.internet import reactor

    cluster = own_cluster
    master, replica = cluster.masters[0], cluster.nodes[3]
    layer = layer_from_url(cluster.url)
    partition = next(p for p in layer.shards
                     if cluster.owner(key_slot(p.tag.encode())) is master)
    partition._moved_to = ("127.0.0.1", replica.port)
    layer.start(reactor)
    try:
        await layer.when_ready(10)
        assert partition.node == ("127.0.0.1", master.port)
        channel = layer.attach(Probe())
        group = next(g for g in (f"r.{n}" for n in range(200))
                     if layer.shard(g) is partition)
        await layer.group_add(group, channel)
        assert shardnumsub(master, partition._group_topic + group) == 1
    finally:
        await layer.close()


@pytest_twisted.ensureDeferred
async def test_a_redis_that_is_not_a_cluster_is_named_in_the_log(redis_server):
    """A plain Redis behind a redis+cluster:// URL: never ready, and the reason is Redis's
    own ("cluster support disabled"), not a hang."""
    from twisted.internet import reactor

    layer = layer_from_url(f"redis+cluster://127.0.0.1:{redis_server.port}")
    layer.start(reactor)
    try:
        await until(lambda: any("cluster support disabled" in (link._last_problem or "")
                                for link in (layer.shards[0]._pub, layer.shards[0]._sub)),
                    timeout=10)
        with pytest.raises(TimeoutError):  # refused: it does not get ready
            await layer.when_ready(0.3)
        problems = {link._last_problem for link in (layer.shards[0]._pub, layer.shards[0]._sub)}
        assert any("cluster support disabled" in (p or "") for p in problems), problems
    finally:
        await layer.close()


def test_cluster_urls_are_checked(tmp_path):
    layer = layer_from_url("redis+cluster://u:s3cret@n1:7000,[::1]:7001?partitions=4&prefix=x")
    assert isinstance(layer, ClusterRedisChannelLayer) and len(layer.shards) == 4
    assert layer.address.describe() == "redis+cluster://n1:7000,[::1]:7001"
    assert layer.shards[1].address.describe() == (
        f"redis+cluster://n1:7000,[::1]:7001 partition {{{partition_tags(4)[1]}}}")
    assert layer.shards[1]._group_topic == f"x:{{{partition_tags(4)[1]}}}:g:"
    assert len(layer_from_url("rediss+cluster://n1").shards) == 16  # the default
    for url, problem in [
        ("redis+cluster://n1?partitions=0", "partitions must be a whole number from 1 to 256"),
        ("redis+cluster://n1?partitions=257", "from 1 to 256, got '257'"),
        ("redis+cluster://n1/3", "a Redis Cluster has database 0 only"),
        ("redis+cluster://", "no cluster node"),
        ("redis+cluster://n1:notaport", "not a port number"),
        ("redis://n1?partitions=4", "partitions is for redis+cluster:// URLs"),
        ("redis+cluster://n1?ssl_ca_certs=/x.pem", "ssl_ca_certs is for rediss://"),
        (f"rediss+cluster://n1?ssl_ca_certs={tmp_path / 'missing.pem'}", "ssl_ca_certs"),
        ("redis+cluster://:hunter2@n1?partitions=x", "'redis+cluster://:***@n1?partitions=x'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(problem)) as caught:
            layer_from_url(url)
        assert "hunter2" not in str(caught.value)
    # A cluster is one --layer value, not one of a sharded list's URLs.
    with pytest.raises(ValueError, match="expected redis://"):
        layer_from_url("redis://h:1/0 redis+cluster://n1")
    with pytest.raises(ValueError, match=r"realtime\.layers\.cluster"):
        RedisChannelLayer.from_url("redis+cluster://n1")


def test_the_command_line_takes_a_cluster_and_the_session_store_refuses_one():
    from realtime.config import StartupError
    from realtime.tap import Options

    options = Options()
    options.parseOptions(["--app", "realtime.examples.bench:application",
                          "--layer", "redis+cluster://:s3cret@127.0.0.1:7000,127.0.0.1:7001"])
    assert isinstance(options.layer, ClusterRedisChannelLayer)
    assert options.layer.address.describe() == "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    with pytest.raises(StartupError, match=r"--layer: .*partitions must be"):
        Options().parseOptions(["--app", "realtime.examples.bench:application",
                                "--layer", "redis+cluster://127.0.0.1:7000?partitions=0"])
    with pytest.raises(StartupError, match=r"--session-store: .*Redis Cluster"):
        Options().parseOptions(["--app", "realtime.examples.bench:application",
                                "--session-store", "redis+cluster://127.0.0.1:7000"])


# -- the review's reproductions (each failed before its fix) ------------------------------------

async def pause(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


@pytest.mark.own_cluster
@pytest_twisted.ensureDeferred
async def test_a_migrating_slot_keeps_its_partition_connected(own_cluster):
    """While a slot migrates, the source keeps its shard channels until the hand-over; a
    command answered ASK (a key already moved, or never there) fails alone with
    LayerUnavailable, unless it can follow the ASK (see the tests below). It used to close
    the partition's connections (ASK taken for MOVED): a false ``layer.gap`` for every
    member, and with a named channel received on partition 0 (BRPOP answered ASK) a
    reconnect every 0.1 s. A presence question is answered (its topic is no key). A history
    publish whose keys are still on the source goes through (its topic is not a declared
    key: with it, the source answered TRYAGAIN, as a txredisapi error)."""
    async with cluster_processes(own_cluster) as (cluster, one, two):
        for layer in (one, two):
            layer.keep_history("feed.*", 10, 60)
        group, feed = in_partition(one, 0, "mig"), in_partition(one, 0, "feed")
        a, b = Probe(), Probe()
        ca, cb = one.attach(a), two.attach(b)
        for group_ in (group, feed):
            await one.group_add(group_, ca, presence={"u": "ada"})
            await two.group_add(group_, cb, presence={"u": "bob"})
        await one.group_send(feed, {"type": "before"})
        cluster.migrating(slot_of(one, group))
        receiving = one.receive("jobs")  # BRPOP on partition 0, during its migration
        receiving.addErrback(lambda _: None)
        members = await one.group_presence(group)  # (its topic is no key: no ASK)
        assert sorted(m["u"] for m in members.values()) == ["ada", "bob"]
        await one.group_send(feed, {"type": "during"})
        await one.group_send(group, {"type": "live"})
        await pause(1.5)
        receiving.cancel()
        assert [e["type"] for e in a.events if e["type"] == "layer.gap"] == []
        assert one.shards[0].reconnects == 0 and two.shards[0].reconnects == 0
        kept = await one.group_history(feed)
        assert [m["type"] for m in kept["messages"]] == ["before", "during"]
        await until(lambda: {"during", "live"} <= {e["type"] for e in b.events})


#: A survey answer past SURVEY_INLINE_MAX (1 MiB): kept in a key, its name published.
LARGE = 1536 * 1024


def answer_keys(node: RedisServer) -> list[str]:
    """The large survey answers ``node`` keeps (``<prefix>:{tag}:s:a:<process>:<seq>``)."""
    return [key for key in node.call("KEYS", "*") if ":s:a:" in key]


async def surveyed(one: ClusterRedisChannelLayer, two: ClusterRedisChannelLayer,
                   prefix: str, group: str) -> None:
    """A small survey (``group_sizes``) and a large one, each answered by both."""
    assert await one.group_sizes(prefix) == {group: 2}
    answers = await one.survey("tests.cluster.large", LARGE)
    assert answers == {one.process_id: one.process_id[0] * LARGE,
                       two.process_id: two.process_id[0] * LARGE}


@pytest.mark.own_cluster
@pytest_twisted.ensureDeferred
async def test_presence_and_surveys_are_answered_while_their_slot_migrates_and_after(own_cluster):
    """Partition 0 carries the surveys topic; its slot migrates. A presence question and a
    survey publish on topics, which stay the source's until the hand-over: both are
    answered (their script named the topic as a key: ASK, LayerUnavailable). A large
    survey answer is a new key, which the source sends to the target (ASK): written there
    (ASKING) and read from there, then deleted. After the hand-over, a question still sent
    to the source (its script told "non local key") fails with LayerUnavailable and moves
    the partition; once moved, all of it is answered by the target."""
    on_survey("tests.cluster.large", lambda layer, size: layer.process_id[0] * size)
    async with cluster_processes(own_cluster) as (cluster, one, two):
        group = in_partition(one, 0, "room")
        a, b = Probe(), Probe()
        ca, cb = one.attach(a), two.attach(b)
        await one.group_add(group, ca, presence={"u": "ada"})
        await two.group_add(group, cb, presence={"u": "bob"})
        slot = slot_of(one, group)
        source, target = cluster.migrating(slot)
        for _ in range(2):
            members = await one.group_presence(group)
            assert sorted(m["u"] for m in members.values()) == ["ada", "bob"]
            await surveyed(one, two, "room", group)
        await until(lambda: answer_keys(source) == answer_keys(target) == [])
        # Joins, leaves and group_close publish or (un)subscribe topics: the source's.
        c = Closable()
        cc = two.attach(c)
        await one.group_add(group, cc, presence={"u": "cy"})
        assert sorted(m["u"] for m in (await one.group_presence(group)).values()) == [
            "ada", "bob", "cy"]
        await one.group_discard(group, cc)
        closing = in_partition(one, 0, "closing")
        await two.group_add(closing, cc)
        await one.group_close(closing, 4000, "bye")
        await until(lambda: c.closes == [(4000, "bye")])
        # A named channel's new list is the target's: sent now, received after the
        # hand-over (BRPOP on the source is answered ASK until then).
        await one.send("jobs", {"type": "job"})
        receiving = two.receive("jobs")
        assert one.shards[0].reconnects == two.shards[0].reconnects == 0
        assert one.shards[0].node == ("127.0.0.1", source.port)

        # The hand-over, before one's subscriber hears its shard channels dropped: its
        # publisher asks the source, which holds the slot no more.
        one.shards[0]._sub.proto.transport.pauseProducing()
        cluster.hand_over(slot, source, target)
        with pytest.raises(LayerUnavailable, match="non local key"):
            await one.group_presence(group)
        await until(lambda: one.ready and two.ready
                    and one.shards[0].node == two.shards[0].node == ("127.0.0.1",
                                                                     target.port), 10)
        members = await two.group_presence(group)
        assert sorted(m["u"] for m in members.values()) == ["ada", "bob"]
        await surveyed(one, two, "room", group)
        await until(lambda: answer_keys(target) == [])
        assert await receiving == {"type": "job"}
        assert [e["group"] for e in a.events if e["type"] == "layer.gap"] == [group]


@pytest.mark.own_cluster
@pytest_twisted.ensureDeferred
async def test_history_reads_follow_their_keys_to_the_importing_node(own_cluster):
    """A history group's keys moved to the target before the hand-over: the source answers
    ASK, and reads (``group_history``, a join's recovery), ``group_history_remove`` and a
    partition's reconnect (its connection check, a key never there: ASK) follow it. What
    still fails meanwhile, alone (LayerUnavailable): a publish to that group (its topic's
    subscribers are the source's), and a read of a history group whose list is not beside
    its position: no keys yet, or its list removed (the target answers TRYAGAIN to a script
    whose keys are not all there)."""
    async with cluster_processes(own_cluster) as (cluster, one, two):
        for layer in (one, two):
            layer.keep_history("feed.*", 10, 60)
        feed, fresh = in_partition(one, 5, "feed"), in_partition(one, 5, "feed.fresh")
        for n in range(3):
            await one.group_send(feed, {"type": "m", "n": n})
        kept = await one.group_history(feed)
        shard = one.shard(feed)
        source, target = cluster.migrating(slot_of(one, feed))
        cluster.migrate(source, target, shard._meta_key + feed, shard._history_key + feed)

        moved = await two.group_history(feed)
        assert [m["n"] for m in moved["messages"]] == [0, 1, 2]
        assert (moved["epoch"], moved["offset"]) == (kept["epoch"], 3)
        b = Probe()
        cb = two.attach(b)
        joined = await two.group_add(feed, cb, since={"epoch": kept["epoch"], "offset": 1})
        assert (joined["recovered"], joined["missed"]) == (True, 2)
        assert [e["n"] for e in b.events] == [1, 2]
        with pytest.raises(LayerUnavailable, match="ASK"):
            await one.group_send(feed, {"type": "m", "n": 3})
        with pytest.raises(LayerUnavailable, match="TRYAGAIN"):
            await one.group_history(fresh)

        link = one.shard(feed)._pub
        cut = link.proto
        cut.transport.loseConnection()
        await until(lambda: link.proto not in (None, cut), 5)
        assert one.shard(feed).node == ("127.0.0.1", source.port)
        slot = str(slot_of(one, feed))
        assert target.call("CLUSTER", "COUNTKEYSINSLOT", slot) == ":2"
        await one.group_history_remove(feed)  # (its list goes, its position stays)
        assert target.call("CLUSTER", "COUNTKEYSINSLOT", slot) == ":1"
        assert target.call("CLUSTER", "GETKEYSINSLOT", slot, "10") == [shard._meta_key + feed]
        with pytest.raises(LayerUnavailable, match="TRYAGAIN"):  # (its list is gone)
            await one.group_history(feed)


@pytest_twisted.ensureDeferred
async def test_close_ends_the_search_for_the_cluster(monkeypatch):
    """``close()`` while CLUSTER SLOTS waits on a node that accepts and never answers: the
    probe connection goes at once, and no other node is asked (it used to stay open until
    its timer, 3 s, here 0.5, then the closed layer asked the next node)."""
    from twisted.internet import reactor

    monkeypatch.setattr("realtime.layers.cluster.CONNECT_TIMEOUT", 0.5)
    from twisted.internet.protocol import Factory, Protocol

    class Silent(Protocol):
        def connectionMade(self) -> None:
            self.factory.open.append(self)  # type: ignore[attr-defined]

        def connectionLost(self, reason: Any = None) -> None:
            self.factory.open.remove(self)  # type: ignore[attr-defined]

    factories, ports = [], []
    for _ in range(2):
        factory = Factory.forProtocol(Silent)
        factory.open = []  # type: ignore[attr-defined]
        factories.append(factory)
        ports.append(reactor.listenTCP(0, factory, interface="127.0.0.1"))
    try:
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{p.getHost().port}" for p in ports)
        layer = layer_from_url(url + "?partitions=2")
        layer.start(reactor)
        await until(lambda: len(factories[0].open) == 1)
        await layer.close()
        await pause(0.2)
        assert factories[0].open == []
        await pause(0.7)  # (past the probe's timer)
        assert factories[1].open == []
    finally:
        for port in ports:
            await port.stopListening()
        for factory in factories:
            for proto in list(factory.open):
                proto.transport.abortConnection()


def connections_received(node: RedisServer) -> int:
    """How many connections ``node`` has accepted so far (this question's included)."""
    stats = node.call("INFO", "stats")
    return int(re.search(r"total_connections_received:(\d+)", stats).group(1))  # type: ignore[union-attr]


@pytest.mark.own_cluster(tls=True, password="s3cret-pass")
@pytest_twisted.ensureDeferred
async def test_sends_that_follow_ask_share_a_connection_and_keep_their_order(own_cluster):
    """A burst of sends to a named channel whose list is the importing node's (partition 0's
    slot migrating: every named channel's): each is answered ASK by the source and follows
    it, over TLS with the password as every connection. They go over one connection at a
    time per partition, in the order they were sent (each used to open its own: a busy
    channel opened thousands at once, and took its messages in whichever order those
    connections came up), and the receiver takes them in that order after the hand-over."""
    from twisted.internet.defer import gatherResults

    async with cluster_processes(own_cluster) as (cluster, one, two):
        slot = key_slot(one.shards[0]._list_key.encode())
        source, target = cluster.migrating(slot)
        before = connections_received(target)
        count = 80  # (within the channel's capacity, 100)
        await gatherResults([one.send("jobs", {"type": "job", "n": n}) for n in range(count)])
        # (each batch of followed commands: one connection; here two or three batches)
        assert connections_received(target) - before <= 1 + 10
        cluster.hand_over(slot, source, target)
        assert target.call("LLEN", one.shards[0]._list_key + "jobs") == f":{count}"
        taken = [(await two.receive("jobs"))["n"] for _ in range(count)]
        assert taken == list(range(count))


@pytest.mark.own_cluster
@pytest_twisted.ensureDeferred
async def test_a_send_after_the_hand_over_waits_for_those_still_following_ask(own_cluster):
    """A send followed ASK and its connection to the importing node is slow (held here);
    the hand-over comes, the partition moves there, and a later send to the same channel
    goes there directly: it waits for the followed one, so the channel's messages stay in
    order (it used to overtake it)."""
    from twisted.internet.defer import Deferred

    async with cluster_processes(own_cluster) as (cluster, one, two):
        first_partition = one.shards[0]
        slot = key_slot(first_partition._list_key.encode())
        source, target = cluster.migrating(slot)
        gate: Deferred[None] = Deferred()
        on_node = one.on_node

        async def held(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("timeout") == ASK_TIMEOUT:  # (not a CLUSTER SLOTS)
                await gate
            return await on_node(*args, **kwargs)

        one.on_node = held  # type: ignore[method-assign]
        first = one.send("jobs", {"type": "job", "n": 0})
        await until(lambda: first_partition._asking)
        cluster.hand_over(slot, source, target)  # (its shard channels dropped: it moves)
        await until(lambda: one.ready and first_partition.node == ("127.0.0.1", target.port),
                    10)
        second = one.send("jobs", {"type": "job", "n": 1})
        gate.callback(None)
        await first
        await second
        assert [(await two.receive("jobs"))["n"] for _ in range(2)] == [0, 1]
