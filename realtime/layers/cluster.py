"""The Redis layer over a Redis Cluster: groups spread over its nodes by hash slot.

Why: a managed Redis in cluster mode (ElastiCache, Memorystore, Azure Cache) is often the
only Redis a team gets, and past one server's throughput a cluster is how Redis grows;
channels_redis does not work on one (channels_redis #420, #381). ``--layer
redis+cluster://node1:6379,node2:6379`` (some of the nodes: any one that answers tells
where every slot is; ``rediss+cluster://`` with TLS).

How: the layer has a fixed number of *partitions* (``?partitions=N``, 16 by default), each
a shard of ``ShardedRedisChannelLayer`` whose every key and topic carries one hash tag
(``<prefix>:{<tag>}:...``): one slot, so one node at any time, and the Lua scripts that
touch a group's history and topic together stay on one node, as a cluster requires. A
group lives in partition ``crc32(name) % N`` (every process computes the same: start every
process with the same ``partitions``). The tags are chosen so that their slots are spread
evenly over the slot space (``partition_tags``): a cluster whose nodes hold equal slot
ranges gets equal shares of the partitions (the bare indexes ``{0}``, ``{1}``, ... hash to
scattered slots and can leave nodes without any).

Pub/sub is sharded pub/sub (Redis 7.0 or later): SSUBSCRIBE, SPUBLISH and PUBSUB
SHARDNUMSUB, so a message goes only to the node that holds its partition's slot, not over
the cluster bus to every node as PUBLISH does.

Each partition connects to the node that holds its slot, found with ``CLUSTER SLOTS`` (the
URL's nodes first, then those learnt from earlier answers; each connection's first keyed
read checks the node serves the slot as master). When the slot has moved (a resharding
handed over, a failover): a command answered ``MOVED`` fails with ``LayerUnavailable``,
and a subscriber whose channels the node drops (an ``sunsubscribe`` it did not ask for)
knows too; the partition's connections reconnect to the node that holds the slot now
(where MOVED said, else asked again), as after any lost connection: its groups are
resubscribed and their members get ``layer.gap`` (a history group's members its
recovery); a script the old node tells "non local key" (one with no declared key, the
presence question's) counts as MOVED. While the slot migrates (before the hand-over)
nothing moves: topics (messages, presence questions, surveys) stay the source's, whose
shard channels are subscribed until the hand-over, so no script names a topic as a key.
A key the source no longer has (moved already, or new) is answered ``ASK``: the commands
that can follow it to the importing node (``ASKING``, then the command) do, in the order
the source answered them, over one connection per partition at a time that carries
those waiting together (``_Partition._run_asked``; a command that may follow ASK waits
meanwhile, so none overtakes them after the hand-over) (a survey's large answer, written and read;
history reads and ``group_history_remove``; a named channel's send, taken by its
receivers after the hand-over); the others fail alone with ``LayerUnavailable``: a
history publish whose keys moved (ASK: its subscribers are the source's), and a script
whose keys are not all on one node (``TRYAGAIN``: a history read of a group with no keys
yet, or whose list expired before its position).

Cost: two connections per partition and process (publisher and subscriber), and one for
named channels' BRPOP: 33 per process with 16 partitions (and, while a slot migrates,
one more at a time for its partition's commands that follow ASK).
"""

from __future__ import annotations

import binascii
import functools
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtime.layers.base import LayerUnavailable
from realtime.layers.redis import (
    _ASK_SCRIPT,
    _PUBLISH_SCRIPT,
    CONNECT_TIMEOUT,
    RedisAddress,
    RedisChannelLayer,
    _Factory,
    _host_port,
    _protocols,
    _reason,
    redact_url,
)
from realtime.layers.sharded import ShardedRedisChannelLayer, _Shard

log = Logger(namespace="realtime.layers.cluster")

#: A Redis Cluster's hash slots.
SLOTS = 16384
#: How long a command followed to the node an ASK names may take, its connection included
#: (a survey's large answer is megabytes).
ASK_TIMEOUT = 10.0
#: At most this many followed commands go over one connection (the rest over the next).
ASK_BATCH = 1000


def key_slot(key: bytes) -> int:
    """The slot Redis Cluster gives ``key``: CRC16 (XMODEM) of its hash tag (the first
    non-empty ``{...}``) or of the whole key, modulo 16384."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return binascii.crc_hqx(key, 0) % SLOTS


@functools.cache
def partition_tags(count: int) -> tuple[str, ...]:
    """``count`` hash tags, the k-th one (``r<i>``, the first that fits) in the middle half
    of the k-th of ``count`` equal ranges of slots: spread evenly over the nodes of a
    cluster with equal slot ranges, whatever their number."""
    tags = []
    for k in range(count):
        low, high = k * SLOTS // count, (k + 1) * SLOTS // count
        quarter = (high - low) // 4
        i = 0
        while not low + quarter <= key_slot(b"r%d" % i) < high - quarter:
            i += 1
        tags.append(f"r{i}")
    return tuple(tags)


def _sharded(script: str) -> str:
    """A script of the single-Redis layer with sharded pub/sub's commands."""
    changed = script.replace("'PUBLISH'", "'SPUBLISH'").replace("'NUMSUB'", "'SHARDNUMSUB'")
    assert changed != script
    return changed


def _slot_table(reply: Any, asked: str) -> list[tuple[int, int, str, int]]:
    """``CLUSTER SLOTS``'s answer as (first slot, last slot, master host, master port);
    a master without a known address (an empty host) is the node asked."""
    table = []
    for entry in reply:
        first, last, master = int(entry[0]), int(entry[1]), entry[2]
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        table.append((first, last, host if host not in ("", "?") else asked, int(master[1])))
    return table


class _Partition(_Shard):
    """One partition: its hash tag's slot, on whichever node holds it."""

    _SUBSCRIBE, _UNSUBSCRIBE, _PUBLISH = "SSUBSCRIBE", "SUNSUBSCRIBE", "SPUBLISH"
    _NUMSUB = "SHARDNUMSUB"
    _publish_script = _sharded(_PUBLISH_SCRIPT)
    _ask_script = _sharded(_ASK_SCRIPT)

    _parent: ClusterRedisChannelLayer

    def __init__(self, parent: ClusterRedisChannelLayer, index: int,
                 layer: RedisChannelLayer) -> None:
        self.tag = parent.tags[index]
        self.slot = key_slot(self.tag.encode())
        #: The node its connections go to (host, port): the last one located.
        self.node: tuple[str, int] = ("", 0)
        super().__init__(parent, index, layer)
        #: Commands the source answered ASK for, waiting for their turn on the importing
        #: node: (node, command, Deferred); ``_asking`` while ``_run_asked`` runs them, and
        #: what may follow ASK meanwhile waits in ``_behind``.
        self._asked: deque[tuple[tuple[str, int], Callable[[Any], Deferred[Any]],
                                 Deferred[Any]]] = deque()
        self._asking = False
        self._behind: list[Deferred[None]] = []
        #: What its connections' log lines name: the cluster and the partition.
        self.address = replace(layer.address, tag=self.tag)

    def _key_base(self) -> str:
        return f"{self.prefix}:{{{self.tag}}}:"

    def _connected_log(self, link: str) -> None:
        """Said once for every partition, by the layer (``ClusterRedisChannelLayer.start``)."""
        log.debug("channel layer: {link} connected to Redis ({address}) at {node}", link=link,
                  address=self.address.describe(), node=_host_port(*self.node))

    def _endpoint(self) -> Deferred[Any]:
        """Where MOVED said the slot went, else the node the cluster says holds it."""
        moved = self._moved_to
        if moved is not None:
            self.node = moved
            return succeed(self._tcp_endpoint(*moved))

        def found(node: tuple[str, int]) -> Any:
            self.node = node
            return self._tcp_endpoint(*node)

        return self._parent.locate(self.slot).addCallback(found)

    def _on_publisher(self, command: Callable[[Any], Deferred[Any]],
                      asking: bool = False) -> Deferred[Any]:
        """While commands follow ASK (``_follow_ask``), one that may follow it too waits
        until they are done: after the hand-over it would go to the importing node
        directly, and could overtake them there (a named channel's messages reordered)."""
        if asking and self._asking:
            held: Deferred[None] = Deferred()
            self._behind.append(held)
            return held.addCallback(
                lambda _: RedisChannelLayer._on_publisher(self, command, asking))
        return super()._on_publisher(command, asking)

    def _follow_ask(self, failure: Failure, command: Callable[[Any], Deferred[Any]]) -> Any:
        """ASK (the slot is migrating, and the command's keys are on the importing node
        already, or are new): the command once more on that node, after ``ASKING``, over a
        connection of the partition's own (``_run_asked``: only until the hand-over, and
        only for keys that moved: a survey's large answer, a history read, a named
        channel's send). What it answers there (TRYAGAIN: a script's keys not all there)
        fails as the source's would."""
        text = str(failure.value)
        if not (failure.check(_protocols()["ResponseError"]) and text.startswith("ASK ")):
            return failure
        fields = text.split()
        host, _, port = (fields[2] if len(fields) > 2 else "").rpartition(":")
        if not host or not port.isdigit():
            return failure
        node = (host.strip("[]"), int(port))

        def unreachable(reason: Failure) -> Failure:
            if reason.check(_protocols()["ResponseError"]):
                return reason
            self.stats.unavailable += 1
            return Failure(LayerUnavailable(
                f"channel layer: the Redis Cluster node importing slot {self.slot} "
                f"({_host_port(*node)}): {reason.getErrorMessage()}"))

        followed: Deferred[Any] = Deferred()
        self._asked.append((node, command, followed))
        if not self._asking:
            self._asking = True
            Deferred.fromCoroutine(self._run_asked())
        return followed.addErrback(unreachable)

    async def _run_asked(self) -> None:
        """The commands ASK sent elsewhere, in the order the source answered them: those
        waiting go together, ``ASKING`` before each, over one connection to the node
        (``on_node``), then the next ones over the next; at most one connection per
        partition (a busy named channel is every send), and none overtakes another."""
        try:
            while self._asked:
                node = self._asked[0][0]
                batch: list[tuple[tuple[str, int], Callable[[Any], Deferred[Any]],
                                  Deferred[Any]]] = []
                while self._asked and self._asked[0][0] == node and len(batch) < ASK_BATCH:
                    batch.append(self._asked.popleft())

                def run(proto: Any, batch: list[Any] = batch) -> Deferred[Any]:
                    replies = []
                    for _, command, followed in batch:
                        # (pipelined, on the same connection: the importing node serves
                        # the slot's keys to the command right after ASKING)
                        proto.execute_command("ASKING").addErrback(lambda _: None)
                        try:
                            reply = command(proto)
                        except Exception:
                            followed.errback(Failure())
                            continue
                        replies.append(reply.addBoth(_settle, followed))
                    return gatherResults(replies)

                try:
                    await self._parent.on_node(*node, run, timeout=ASK_TIMEOUT)
                except Exception:
                    problem = Failure()
                    for _, _, followed in batch:
                        if not followed.called:
                            followed.errback(problem)
        finally:
            self._asking = False
            behind, self._behind = self._behind, []
            for held in behind:
                held.callback(None)


def _settle(result: Any, followed: Deferred[Any]) -> None:
    """A followed command's answer goes to whoever waits for it, at once."""
    if followed.called:
        return
    if isinstance(result, Failure):
        followed.errback(result)
    else:
        followed.callback(result)


class _Probe:
    """What a one-off connection (a ``CLUSTER SLOTS``, a command ASK sent to another node)
    reports to, in place of a ``_Link``."""

    protocol_name = "Command"
    to_sentinel = False
    on_message = None

    def __init__(self, layer: RedisChannelLayer) -> None:
        self.layer = layer
        self.answer: Deferred[Any] = Deferred()
        self._problem: str | None = None

    def problem(self, text: str) -> None:  # AUTH refused, ...
        self._problem = text

    def lost(self, proto: Any, reason: Failure) -> None:
        if not self.answer.called:
            self.answer.errback(ConnectionError(self._problem or _reason(reason)))

    def moved(self, proto: Any, text: str) -> None:
        pass  # (CLUSTER SLOTS is answered by any node; an ASKING command's MOVED fails it)


class ClusterRedisChannelLayer(ShardedRedisChannelLayer):
    """Groups spread over a Redis Cluster's nodes (see the module docstring)."""

    _shard_class = _Partition

    def __init__(self, address: RedisAddress, capacity: int = 100,
                 prefix: str = "realtime", reactor: Any = None,
                 ca_certs: list[Any] | None = None) -> None:
        if address.kind != "cluster":
            raise ValueError(f"{address.describe()}: not a Redis Cluster address")
        #: Each partition's hash tag.
        self.tags = partition_tags(address.partitions)
        #: Nodes learnt from the last ``CLUSTER SLOTS`` (asked after the URL's).
        self._known: tuple[tuple[str, int], ...] = ()
        self._locating: list[tuple[int, Deferred[tuple[str, int]]]] = []
        #: ``on_node``'s connections open now, or their attempts (``close()`` ends them).
        self._probes: set[Any] = set()
        self._closing = False
        super().__init__([
            RedisChannelLayer(address, capacity=capacity, prefix=prefix, reactor=reactor,
                              ca_certs=ca_certs)
            for _ in range(address.partitions)])
        self.address = address  # type: ignore[assignment]
        self.cluster = address

    @classmethod
    def from_url(cls, url: str, reactor: Any = None) -> ClusterRedisChannelLayer:
        """Parse and check ``url`` fully (a CA file included); connects nothing."""
        address, options = RedisChannelLayer.parse_options(url)
        if address.kind != "cluster":
            raise ValueError(f"{redact_url(url)!r}: expected redis+cluster:// or "
                             "rediss+cluster://")
        return cls(address, reactor=reactor, **options)

    def start(self, reactor: Any = None) -> None:
        super().start(reactor)
        self.when_ready().addCallbacks(self._connected, lambda _: None)

    def close(self) -> Deferred[None]:
        """Also ends a ``CLUSTER SLOTS`` in flight (a hung node would hold its connection
        for ``CONNECT_TIMEOUT``, and the search would go on to the next node)."""
        self._closing = True
        for proto in list(self._probes):
            if isinstance(proto, Deferred):  # still connecting
                proto.cancel()
            elif proto.transport is not None:
                proto.transport.abortConnection()
        return super().close()

    def _connected(self, _: Any) -> None:
        nodes = {shard.node for shard in self.shards}  # type: ignore[attr-defined]
        log.info("channel layer: connected to the Redis Cluster ({address}): {partitions} "
                 "partitions on {count} node(s) ({nodes})", address=self.address.describe(),
                 partitions=len(self.shards), count=len(nodes),
                 nodes=", ".join(_host_port(*node) for node in sorted(nodes)))

    # -- where each slot is ----------------------------------------------------------------
    def locate(self, slot: int) -> Deferred[tuple[str, int]]:
        """The (host, port) of the node that holds ``slot`` now: one ``CLUSTER SLOTS``,
        shared by every partition that asks while it is in flight."""
        d: Deferred[tuple[str, int]] = Deferred()
        self._locating.append((slot, d))
        if len(self._locating) == 1:
            Deferred.fromCoroutine(self._slots()).addBoth(self._located)
        return d

    def _located(self, result: Any) -> None:
        waiting, self._locating = self._locating, []
        for slot, d in waiting:
            if d.called:  # cancelled (the layer closed)
                continue
            if isinstance(result, Failure):
                d.errback(result)
                continue
            node = next(((host, port) for first, last, host, port in result
                         if first <= slot <= last), None)
            if node is None:
                d.errback(LookupError(f"no Redis Cluster node holds slot {slot} (is every "
                                      "slot assigned?)"))
            else:
                d.callback(node)

    async def _slots(self) -> list[tuple[int, int, str, int]]:
        """``CLUSTER SLOTS`` from the first node that answers."""
        problems = []
        for host, port in dict.fromkeys(self.cluster.nodes + self._known):
            if self._closing:
                raise LookupError("the channel layer is closed")
            try:
                table = _slot_table(await self.on_node(
                    host, port, lambda proto: proto.execute_command("CLUSTER", "SLOTS")), host)
            except Exception as exc:
                problems.append(f"{_host_port(host, port)}: {exc or type(exc).__name__}")
                continue
            self._known = tuple(dict.fromkeys((h, p) for _, _, h, p in table))
            return table
        raise LookupError("no Redis Cluster node answered CLUSTER SLOTS: "
                          + "; ".join(problems))

    async def on_node(self, host: str, port: int, command: Callable[[Any], Deferred[Any]],
                      timeout: float = CONNECT_TIMEOUT) -> Any:
        """``command(protocol)``'s answer from the node ``host:port``, over a connection
        of its own, closed after (AUTH and TLS as the layer's; ``CLUSTER SLOTS``, the
        commands a partition follows ASK with). The whole within ``timeout``; ``close()``
        ends it."""
        if self._closing:
            raise LookupError("the channel layer is closed")
        first = self.shards[0]
        probe = _Probe(first)
        connecting = first._tcp_endpoint(host, port).connect(_Factory(probe))  # type: ignore[arg-type]
        self._probes.add(connecting)  # (close() cancels it: no attempt outlives the layer)
        try:
            proto = await connecting
        finally:
            self._probes.discard(connecting)
        if self._closing:
            proto.transport.abortConnection()
            raise LookupError("the channel layer is closed")
        self._probes.add(proto)
        timer = self.reactor.callLater(timeout, proto.transport.abortConnection)

        def answered(reply: Any) -> None:
            if not probe.answer.called:
                probe.answer.callback(reply)

        def failed(failure: Failure) -> None:
            if failure.check(_protocols()["ConnectionError"]):
                return  # lost: probe.lost() tells why (a TLS error, AUTH refused, ...)
            if not probe.answer.called:
                probe.answer.errback(failure)

        try:
            asked = proto.whenConnected().addCallback(command)
            asked.addCallbacks(answered, failed)
            return await probe.answer
        finally:
            self._probes.discard(proto)
            if timer.active():
                timer.cancel()
            if proto.transport is not None:
                proto.transport.loseConnection()


__all__ = ["ClusterRedisChannelLayer", "key_slot", "partition_tags"]
