"""The Redis layer over several Redis servers: each group lives on one of them.

Why: one Redis carries every PUBLISH of every group, and past some hundred thousand
deliveries a second (or a few large rooms' worth of history) it is the limit. Channels'
``channels_redis`` shards over a list of hosts, Centrifugo over a list of addresses; this
does the same: ``--layer "redis://a:6379/0 redis://b:6379/0"`` (URLs separated by spaces,
each any form one Redis takes: ``rediss://``, ``unix://``, ``redis+sentinel://``).

A group lives on the server its name hashes to (``zlib.crc32`` of the name, modulo the
number of servers): its pub/sub topic, its presence question, its history and its gap
events are that server's, exactly as in ``RedisChannelLayer`` (each server is one, a
*shard*). Every process must list the same servers in the same order (a different list
hashes groups elsewhere: start every process with the same ``--layer``). What is not a
group's, ``send`` to a consumer's channel and the named channels of workers
(``receive``), goes through the first server.

One process keeps one set of local bookkeeping for all its shards (its consumers'
channels, the groups each is in, ``--max-groups-per-connection``'s count, named channels'
queues), so a member of groups on two servers is one member, and each shard keeps only
its own groups. The layer is ready when every shard is; a server that goes away costs
the groups on it their messages meanwhile (their members get ``layer.gap``), not the
others.
"""

from __future__ import annotations

import zlib
from collections import ChainMap
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.python.failure import Failure

from realtime.layers.base import BaseChannelLayer, invalid
from realtime.layers.redis import RedisChannelLayer, redact_url

#: The schemes one Redis URL starts with: a ``--layer`` value made of several such URLs
#: separated by whitespace is a sharded layer (anything else is one URL, as before: a
#: password with a space in it is never cut up, and never shown).
SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")


def several(url: str) -> list[str] | None:
    """The URLs of a sharded ``--layer`` value, or None for one URL; ``ValueError`` for a
    list with a URL of another scheme."""
    parts = url.split()
    if len(parts) < 2 or not any("://" in part for part in parts[1:]):
        return None  # one URL (a password may hold a space)
    for part in parts:
        if not part.startswith(SCHEMES):
            raise ValueError(f"{redact_url(part)!r}: expected redis://, rediss://, unix:// or "
                             "redis+sentinel://")
    return parts


def _first_error(failure: Failure) -> Failure:
    """What ``gatherResults`` wraps in ``FirstError``: the shard's own error (a
    ``TimeoutError`` from ``when_ready``, as one Redis gives)."""
    if failure.check(FirstError):
        inner: Failure = failure.value.subFailure
        return inner
    return failure


class _Shard(RedisChannelLayer):
    """One server of a ``ShardedRedisChannelLayer``: its groups' pub/sub, presence and
    history; the process's identity, consumers, memberships, queues, history rules, stats
    and limits are the parent's."""

    def __init__(self, parent: ShardedRedisChannelLayer, index: int,
                 layer: RedisChannelLayer) -> None:
        self._parent = parent
        self.index = index
        super().__init__(layer.address, capacity=layer.capacity, prefix=layer.prefix,
                         reactor=layer.reactor, ca_certs=layer._ca_certs, clock=layer.clock)
        self.process_id = parent.process_id
        self._names(self._key_base())  # the process topic is the parent's process's
        self._receivers = parent._receivers
        self._memberships = parent._memberships
        self._queues = parent._queues
        self._waiters = parent._waiters
        self.history = parent.history
        self.stats = parent.stats

    # The parent's settings and counters, wherever the shard's code reads or changes them.
    @property
    def _in_several(self) -> int:
        return self._parent._in_several

    @_in_several.setter
    def _in_several(self, value: int) -> None:
        # (BaseChannelLayer.__init__ sets it to 0 while the shard is built: the parent,
        # built just before, has no members yet)
        self._parent._in_several = value

    @property
    def max_groups_per_connection(self) -> int:  # type: ignore[override]
        return self._parent.max_groups_per_connection

    @property
    def history_meta_ttl(self) -> float:  # type: ignore[override]
        return self._parent.history_meta_ttl

    def _answer(self, name: str, args: Any) -> Any:
        """A survey is the process's, whichever shard carries it: answered for the parent
        (all its groups, its clients)."""
        return BaseChannelLayer._answer(self._parent, name, args)

    async def _requeue(self) -> None:
        """Named channels' queues are the first shard's to give back."""
        if self.index == 0:
            await super()._requeue()


class _Servers:
    """A sharded layer's ``address``, for what names it (``describe()``)."""

    def __init__(self, shards: list[_Shard]) -> None:
        self.shards = shards

    def describe(self) -> str:
        return " ".join(shard.address.describe() for shard in self.shards)


#: What each shard keeps of its own but the parent sets for all.
_SHARD_SETTINGS = frozenset({"presence_timeout", "presence_check_interval", "presence_grace",
                             "clock"})


class ShardedRedisChannelLayer(BaseChannelLayer):
    """Groups spread over several Redis servers (see the module docstring)."""

    #: What each shard is (``realtime.layers.cluster`` makes Redis Cluster partitions).
    _shard_class: type[_Shard] = _Shard

    def __init__(self, layers: list[RedisChannelLayer]) -> None:
        if not layers:
            raise ValueError("a sharded layer needs Redis servers")
        super().__init__(capacity=layers[0].capacity)
        self.shards = [self._shard_class(self, index, layer)
                       for index, layer in enumerate(layers)]
        self.reactor = layers[0].reactor
        #: What logs and ``--check`` name: every server, no password.
        self.address = _Servers(self.shards)

    @classmethod
    def from_url(cls, url: str, reactor: Any = None) -> ShardedRedisChannelLayer:
        """Redis URLs separated by whitespace, each checked as
        ``RedisChannelLayer.from_url`` checks one; the same server twice (however it is
        spelt) or URLs with different ``capacity``/``prefix`` are a ``ValueError``."""
        urls = several(url) or [url]
        if len(urls) < 2:
            raise ValueError(f"{redact_url(url)!r}: a sharded layer needs at least two Redis "
                             "servers")
        layers = [RedisChannelLayer.from_url(one, reactor) for one in urls]
        # As written (names are not resolved: localhost and 127.0.0.1 are two servers).
        seen: dict[tuple[Any, ...], str] = {}
        for one, layer in zip(urls, layers, strict=True):
            a = layer.address
            where = (a.kind, a.host.lower(), a.port, a.path, a.db, a.sentinels, a.master)
            if where in seen:
                raise ValueError(f"{redact_url(one)!r}: the same Redis as "
                                 f"{redact_url(seen[where])!r}")
            seen[where] = one
        if len({(layer.capacity, layer.prefix) for layer in layers}) > 1:
            raise ValueError(f"{redact_url(url)!r}: every URL needs the same capacity= and "
                             "prefix=")
        return cls(layers)

    def shard(self, name: str) -> _Shard:
        """The shard a group (its name) lives on: the same in every process."""
        return self.shards[zlib.crc32(name.encode()) % len(self.shards)]

    # -- life ----------------------------------------------------------------------------
    def start(self, reactor: Any = None) -> None:
        for shard in self.shards:
            shard.start(reactor)
        self.reactor = self.shards[0].reactor

    @property
    def ready(self) -> bool:
        return all(shard.ready for shard in self.shards)

    def when_ready(self, timeout: float | None = None) -> Deferred[None]:
        waits = [shard.when_ready(timeout) for shard in self.shards]
        return gatherResults(waits, consumeErrors=True).addCallbacks(
            lambda _: None, _first_error)

    def close(self) -> Deferred[None]:
        closed = [shard.close() for shard in self.shards]
        return gatherResults(closed, consumeErrors=True).addCallbacks(
            lambda _: None, _first_error)

    def flush(self) -> Deferred[None]:
        flushed = [shard.flush() for shard in self.shards]
        return gatherResults(flushed, consumeErrors=True).addCallbacks(
            lambda _: None, _first_error)

    @property
    def reconnects(self) -> int:
        return sum(shard.reconnects for shard in self.shards)

    @property
    def last_outage(self) -> float | None:
        """The longest of the shards' last outages (seconds)."""
        outages = [s.last_outage for s in self.shards if s.last_outage is not None]
        return max(outages) if outages else None

    # Settings each shard keeps of its own (presence questions and checks): set on all.
    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _SHARD_SETTINGS and "shards" in self.__dict__:
            for shard in self.shards:
                setattr(shard, name, value)

    def __getattr__(self, name: str) -> Any:
        if name in _SHARD_SETTINGS and "shards" in self.__dict__:
            return getattr(self.shards[0], name)
        raise AttributeError(name)

    # -- local bookkeeping: each group on its shard ------------------------------------------
    def _forget_member(self, group: str, channel: str) -> None:
        self.shard(group)._forget_member(group, channel)

    def local_members(self, group: str) -> list[str]:
        return self.shard(group).local_members(group)

    def local_presence(self, group: str) -> dict[str, dict[str, Any]]:
        return self.shard(group).local_presence(group)

    def local_groups(self) -> Mapping[str, Mapping[str, Any]]:
        return ChainMap(*(shard._groups for shard in self.shards))

    # -- the layer's API: a group's calls go to its shard; the rest to the first ----------
    def send(self, channel: str, message: dict[str, Any]) -> Deferred[None]:
        return self.shards[0].send(channel, message)

    def receive(self, channel: str) -> Deferred[dict[str, Any]]:
        return self.shards[0].receive(channel)

    def receive_any(self, channels: list[str]) -> Deferred[tuple[str, dict[str, Any]]]:
        return self.shards[0].receive_any(channels)

    def group_add(self, group: str, channel: str, presence: dict[str, Any] | None = None,
                  announce: bool = True,
                  since: dict[str, Any] | None = None) -> Deferred[Any]:
        if (bad := invalid(group=group, channel=channel)) is not None:
            return bad
        return self.shard(group).group_add(group, channel, presence, announce, since)

    def group_discard(self, group: str, channel: str) -> Deferred[None]:
        if (bad := invalid(group=group, channel=channel)) is not None:
            return bad
        return self.shard(group).group_discard(group, channel)

    def group_send(self, group: str, message: dict[str, Any],
                   exclude: str | Iterable[str] | None = None) -> Deferred[Any]:
        if (bad := invalid(group=group)) is not None:
            return bad
        return self.shard(group).group_send(group, message, exclude)

    def broadcast(
        self, group: str, text: str | None = None, bytes: bytes | None = None,
        exclude: str | Iterable[str] | None = None,
    ) -> Deferred[None]:
        if (bad := invalid(group=group)) is not None:
            return bad
        return self.shard(group).broadcast(group, text, bytes, exclude)

    def group_close(self, group: str, code: int = 1000,
                    reason: str | None = None) -> Deferred[None]:
        if (bad := invalid(group=group)) is not None:
            return bad
        return self.shard(group).group_close(group, code, reason)

    def group_presence(self, group: str) -> Deferred[dict[str, dict[str, Any]]]:
        if (bad := invalid(group=group)) is not None:
            return bad
        return self.shard(group).group_presence(group)

    def group_history(self, group: str, since: dict[str, Any] | None = None,
                      limit: int | None = None) -> Deferred[dict[str, Any]]:
        if (bad := invalid(group=group)) is not None:
            return bad
        return self.shard(group).group_history(group, since=since, limit=limit)

    def group_history_remove(self, group: str) -> Deferred[None]:
        if (bad := invalid(group=group)) is not None:
            return bad
        return self.shard(group).group_history_remove(group)

    def check_group_send_exclude(self, group: str) -> None:
        self.shard(group).check_group_send_exclude(group)

    def survey(self, name: str, args: Any = None) -> Deferred[dict[str, Any]]:
        """On the first shard: every process subscribes to each shard's surveys topic and
        answers for all its groups (``_Shard._answer``)."""
        return self.shards[0].survey(name, args)



__all__ = ["ShardedRedisChannelLayer"]
