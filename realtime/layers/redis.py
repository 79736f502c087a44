"""The Redis channel layer: groups over Redis pub/sub, named channels as Redis lists.

Like channels_redis's PubSub layer, without its failure modes:

- **Groups.** Membership stays in the process that owns the member (``BaseChannelLayer``),
  so a dead process leaves no zombie members and nothing ever expires. A process
  SUBSCRIBEs to ``<prefix>:<db>:g:<group>`` while it has at least one local member (from the
  first ``group_add`` to the last member leaving) and fans each message out locally; a
  process with no member receives nothing for that group. ``group_send`` is one PUBLISH of
  a msgpack payload, whatever the group's size; ``broadcast`` PUBLISHes the frame's payload
  and each process writes one prepared frame to its members. The sending process gets its
  own copy through its subscription (once); the returned Deferred fires after the local
  members have it, so a ``send`` made after ``await group_send`` is delivered after it.
- **Process-specific channels** (``specific.<process>!...``, what consumers get): a
  ``send`` from the owning process is delivered directly; from another process it is a
  PUBLISH to the owner's own topic, which every process subscribes to.
  ``group_add``/``group_discard`` for another process's channel go to that process as a
  control message; it subscribes, then acknowledges, so ``await group_add`` means the group
  reaches the member.
- **Named channels** (no ``!``: what workers consume) are Redis lists: ``send`` is an
  LPUSH behind a capacity check (``ChannelFull``), ``receive`` a BRPOP on a dedicated
  connection. Delivery is **at-most-once**: a message BRPOP'd by a process that dies before
  handling it is lost, and no two receivers ever get the same message.
- **Connections.** One publisher and one subscriber connection per process, plus one for
  BRPOP once a named channel is received from. Redis unreachable at start: the service
  starts, ``ready`` is False (``/readyz`` answers 503) and the layer keeps trying with
  capped exponential backoff. Redis lost later: sockets stay open, the layer reconnects,
  resubscribes every group itself, then delivers ``{"type": "layer.gap", "group": name,
  "since": t0, "until": t1}`` to every local member of every group and logs one line per
  group: messages published in that window may be lost, and that is never silent.
  Publishing while disconnected fails at once with ``LayerUnavailable`` (a
  ``ConnectionError``), counted in ``stats.unavailable``; nothing is buffered.
- **Presence of a dead process.** Presence is not stored: ``group_presence`` asks. So that a
  process that dies without its members leaving (SIGKILL, OOM, a lost host) still has
  their ``presence.leave`` sent, each process remembers the other processes' announced
  members of the groups it has members in (from the joins and leaves it hears, and from
  the answers to its questions) and checks every ``presence_check_interval`` s, with one
  ``PUBSUB NUMSUB`` of their process topics, that their processes are still subscribed.
  One absent for longer than a live process takes to reconnect (``presence_grace``) is
  gone: every process tells its own members that its members left. A process that was
  only cut off re-announces its members when it is back (``_AGAIN``).

txredisapi imports the global reactor when it is imported, so it is imported in
``start()``, after twistd has installed the reactor chosen with ``--reactor``.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import msgpack
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtime.layers.base import (
    BaseChannelLayer,
    ChannelFull,
    LayerUnavailable,
    after_release,
    check_exclude,
    check_name,
    flush_held,
    hold,
    invalid,
    prepared_frame,
    release,
)
from realtime.layers.history import (
    HistoryRule,
    answer,
    new_epoch,
    positioned,
)

log = Logger(namespace="realtime.layers.redis")

#: Reconnect backoff: first retry after BACKOFF_START s, doubling, at most BACKOFF_CAP s.
BACKOFF_START = 0.1
BACKOFF_CAP = 5.0
#: TCP (and TLS) connect timeout, per attempt.
CONNECT_TIMEOUT = 3.0
#: How long ``group_add`` for another process's channel waits for that process's ack.
CONTROL_TIMEOUT = 5.0
#: A process absent from Redis for longer than this (its topic unsubscribed on checks this
#: far apart) is gone: a live one is back sooner (its longest backoff, then a connect
#: attempt), so a Redis restart or a blip never passes for a death.
PRESENCE_GRACE = BACKOFF_CAP + CONNECT_TIMEOUT
#: BRPOP timeout: a receive() on a channel not in the current BRPOP joins within this.
BRPOP_TIMEOUT = 0.5
#: A named channel's list expires this long after its last send (nobody receiving it).
LIST_EXPIRY = 86400

# Pub/sub payload kinds: [kind, ...] msgpack arrays.
_GROUP, _TEXT, _BYTES = 0, 1, 2  # on a group topic: [kind, origin, seq, body]
# (_GROUP, _TEXT, _BYTES: a fifth field lists the channels exclude= leaves out)
_DIRECT, _ADD, _DISCARD, _ACK = 3, 4, 5, 6  # on a process topic
# group_presence: the question on the group's topic ([_WHO, origin, seq, None]: every
# process with members there hears it), each one's answer on the asker's process topic
# ([_MEMBERS, seq, [[channel, info], ...]]).
_WHO, _MEMBERS = 7, 8
# A group_send to a history group: [_HGROUP, origin, seq, body, offset, epoch], built by
# _PUBLISH_SCRIPT (which adds the last two) and kept in the group's history list as is.
# (A process older than history cannot read it: upgrade every process before --history.)
_HGROUP = 9
# After a reconnect, a process's announced members of a group, all of them:
# [_AGAIN, origin, 0, [[channel, info], ...]]. Those that hear it and knew them already
# deliver nothing; they tell their members of joins (a process declared gone that was only
# cut off) and leaves (left while the process could not publish) that they missed.
# (A process older than expiry ignores it: it never declares anyone gone.)
_AGAIN = 10
# group_close: [_CLOSE, origin, seq, [code, reason]] on the group's topic; every process
# with members there closes them. (A process older than group_close ignores it.)
_CLOSE = 11
# survey(): the question on the surveys topic every process subscribes to, [_SURVEY, origin,
# seq, name, args]; each one's answer on the asker's process topic, [_ANSWER, seq, process,
# answer]. (A process older than surveys is not subscribed there: not counted, not waited for.)
_SURVEY, _ANSWER = 12, 13

# A history group's publish: the next offset (a new epoch, and an empty list, when the
# stream's meta hash is gone), the message kept in the list (trimmed to its size; the whole
# list expires ttl after the last publish) and published, atomically, so subscribers see
# offsets in order. KEYS: list, meta. ARGV: the payload's first four fields (a six-element
# msgpack array's head), a new epoch, size, ttl ms, meta ttl ms, the topic. (The topic is
# not a key: a Redis Cluster that is moving the slot answers TRYAGAIN for a script whose
# declared keys are partly missing, and a topic is never a key that exists.)
_PUBLISH_SCRIPT = """
if redis.call('HSETNX', KEYS[2], 'e', ARGV[2]) == 1 then redis.call('DEL', KEYS[1]) end
local epoch = redis.call('HGET', KEYS[2], 'e')
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
local payload = ARGV[1] .. cmsgpack.pack(offset) .. cmsgpack.pack(epoch)
redis.call('RPUSH', KEYS[1], payload)
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[6], payload)
return {offset, epoch}
"""
# A history read: {epoch, offset, recovered (-1 not asked, 0, 1), entries}, deciding as
# realtime.layers.history.decide does. KEYS: meta, list. ARGV: a new epoch (used if the
# stream has none), meta ttl ms, since's epoch ('' for none), since's offset, limit (0:
# none, -1: the position only).
_READ_SCRIPT = """
if redis.call('HSETNX', KEYS[1], 'e', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'o', 0)
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local epoch = redis.call('HGET', KEYS[1], 'e')
local top = tonumber(redis.call('HGET', KEYS[1], 'o'))
local kept = redis.call('LLEN', KEYS[2])
local limit = tonumber(ARGV[5])
local recovered = -1
local count = 0
if limit < 0 then
  count = 0
elseif ARGV[3] == '' then
  count = kept
  if limit > 0 and count > limit then count = limit end
else
  local missed = top - tonumber(ARGV[4])
  if ARGV[3] ~= epoch or missed < 0 or missed > kept or (limit > 0 and missed > limit) then
    recovered = 0
  else
    recovered = 1
    count = missed
  end
end
local entries = {}
if count > 0 then entries = redis.call('LRANGE', KEYS[2], -count, -1) end
return {epoch, top, recovered, entries}
"""

# The presence question (and a survey's), and how many processes hear it: the topic's own
# subscribers at the moment of the PUBLISH (PUBLISH's reply would count pattern subscribers
# too, a monitoring ``PSUBSCRIBE realtime:*`` say, which never answer). ARGV: the question,
# the topic. (The topic is not a key: a Redis Cluster that is moving the slot answers ASK
# for a script whose declared key does not exist, and a topic never does; its shard
# channels stay the source's until the hand-over. A process older than this evaluates its
# own text, with the topic in KEYS: the messages are the same.)
_ASK_SCRIPT = """
local n = redis.call('PUBSUB', 'NUMSUB', ARGV[2])[2]
redis.call('PUBLISH', ARGV[2], ARGV[1])
return n
"""
#: How long ``group_presence`` waits for every process's answer.
PRESENCE_TIMEOUT = 2.0
#: A survey answer larger than this (packed) goes in a key, not in the pub/sub message.
SURVEY_INLINE_MAX = 1024 * 1024
#: How often a process that knows other processes' announced members checks that those
#: processes are alive (their process topic still has its subscriber: one PUBSUB NUMSUB).
PRESENCE_CHECK_INTERVAL = 5.0

# LPUSH behind a capacity check, atomically; refreshes the list's expiry.
_SEND_SCRIPT = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

_QUERY_KEYS = {"ssl_ca_certs", "db", "capacity", "prefix", "password", "partitions"}
#: A Redis Cluster layer's partitions (``?partitions=``): each is one hash tag, so one slot
#: and one node at a time (``realtime.layers.cluster``).
DEFAULT_PARTITIONS = 16
MAX_PARTITIONS = 256
_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster")


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is, parsed from a ``--layer`` URL."""

    kind: str  # "tcp", "unix", "sentinel" or "cluster"
    host: str = ""
    port: int = 6379
    path: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_certs: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    #: A Redis Cluster's nodes as given (any of them answers where each slot is), its
    #: partitions, and (one partition's address) the partition's hash tag.
    nodes: tuple[tuple[str, int], ...] = ()
    partitions: int = 0
    tag: str = ""

    def describe(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path} db {self.db}"
        if self.kind == "sentinel":
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {hosts} master {self.master} db {self.db}"
        if self.kind == "cluster":
            hosts = ",".join(_host_port(h, p) for h, p in self.nodes)
            scheme = "rediss" if self.tls else "redis"
            where = f" partition {{{self.tag}}}" if self.tag else ""
            return f"{scheme}+cluster://{hosts}{where}"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{_host_port(self.host, self.port)}/{self.db}"


#: Where a URL's options surely begin (a password may hold an unencoded ``?``).
_OPTIONS_START = re.compile("[?&](?:" + "|".join(sorted(_QUERY_KEYS)) + ")=")
_PASSWORD_OPTION = re.compile(r"((?:^|[?&])password=)[^&]*")


def _userinfo_end(scheme: str, rest: str) -> int:
    """Where the ``user:password`` of a URL (``rest``: past its ``://``) ends: its ``@``,
    or -1. The last ``@`` before the options, so that a password with an unencoded ``@``,
    ``/``, ``?`` or ``#`` is found whole (a path or an option may hold an ``@`` too: a unix
    socket's path follows the ``@/``, a ``ssl_ca_certs`` path an option's ``=``)."""
    options = _OPTIONS_START.search(rest)
    limit = options.start() if options else len(rest)
    if scheme == "unix":
        return rest.rfind("@/", 0, limit) if not rest.startswith("/") else -1
    return rest.rfind("@", 0, limit)


def redact_url(url: str) -> str:
    """``url`` with its password (``user:password@``, ``:password@``, ``?password=``)
    replaced by ``***``: what error messages and logs may show."""
    scheme, sep, rest = url.partition("://")
    if sep:
        at = _userinfo_end(scheme, rest)
        if at >= 0:
            user, colon, _ = rest[:at].partition(":")
            rest = (f"{user}:***" if colon else "***") + rest[at:]
        url = f"{scheme}{sep}{rest}"
    return _PASSWORD_OPTION.sub(r"\1***", url)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_port(text: str, url: str, default: int) -> int:
    if text == "":
        return default
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"{url!r}: {text!r} is not a port number (1-65535)")
    return int(text)


def _parse_hostport(item: str, url: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``."""
    if item.startswith("["):
        end = item.find("]")
        if end < 0:
            raise ValueError(f"{url!r}: unclosed '[' in {item!r}")
        host, rest = item[1:end], item[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{url!r}: unexpected {rest!r} after [{host}]")
        port = _parse_port(rest[1:], url, default_port)
    else:
        host, _, port_text = item.partition(":")
        port = _parse_port(port_text, url, default_port)
    if not host:
        raise ValueError(f"{url!r}: no host")
    return host, port


def _parse_db(text: str, url: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{url!r}: the database must be a number, got {text!r}")
    return int(text)


def _load_ca_certs(path: str, url: str) -> list[Any]:
    """The certificates in a PEM file (checked at start-up, so a bad file stops it)."""
    from twisted.internet.ssl import Certificate

    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ValueError(f"{url!r}: ssl_ca_certs: {exc.strerror}: {path}") from None
    marker = b"-----END CERTIFICATE-----"
    certs = []
    for block in data.split(marker)[:-1]:
        try:
            certs.append(Certificate.loadPEM(block + marker))
        except Exception:
            raise ValueError(
                f"{url!r}: ssl_ca_certs: cannot read a certificate in {path}"
            ) from None
    if not certs:
        raise ValueError(f"{url!r}: ssl_ca_certs: no PEM certificate in {path}")
    return certs


def parse_url(url: str) -> tuple[RedisAddress, dict[str, str]]:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://...[?ssl_ca_certs=PATH]``,
    ``unix://[:password@]/path[?db=N]``, ``redis+sentinel://[:password@]h1:p1,h2:p2/master[/db]``,
    ``redis+cluster://[user:password@]h1:p1,h2:p2[?partitions=N]`` (``rediss+cluster://``
    with TLS); plus ``capacity=N`` and ``prefix=NAME`` on any. ``ValueError`` names what
    is wrong."""
    shown = redact_url(url)  # error messages never carry a password
    try:
        return _parse_url(url, shown)
    except ValueError:
        scheme, _, rest = url.partition("://")
        at = _userinfo_end(scheme, rest)
        if at >= 0 and any(c in rest[:at] for c in "/?#"):
            # The URL was cut inside the password: the error would name a piece of it.
            raise ValueError(
                f"{shown!r}: a '/', '?' or '#' in the user name or password must be "
                "percent-encoded (%2F, %3F, %23)"
            ) from None
        raise


def _parse_url(url: str, shown: str) -> tuple[RedisAddress, dict[str, str]]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ValueError(f"{shown!r}: expected redis://, rediss://, unix://, redis+sentinel:// "
                         "or redis+cluster://")
    rest, _, fragment = rest.partition("#")
    if fragment:
        # Not when it is the end of a ?password= (shown as ***).
        named = f" #{fragment}" if shown.endswith(f"#{fragment}") else ""
        raise ValueError(f"{shown!r}: unexpected fragment{named}")
    rest, _, query_text = rest.partition("?")
    try:
        parsed_query = parse_qs(query_text, keep_blank_values=True, strict_parsing=bool(query_text))
    except ValueError:
        query_shown = _PASSWORD_OPTION.sub(r"\1***", query_text)
        raise ValueError(f"{shown!r}: cannot parse the query {query_shown!r}") from None
    query: dict[str, str] = {}
    for key, values in parsed_query.items():
        if key not in _QUERY_KEYS:
            raise ValueError(
                f"{shown!r}: unknown option {key!r} (known: {', '.join(sorted(_QUERY_KEYS))})"
            )
        if len(values) != 1:
            raise ValueError(f"{shown!r}: option {key!r} given more than once")
        query[key] = values[0]
    if "ssl_ca_certs" in query and scheme not in ("rediss", "rediss+cluster"):
        raise ValueError(f"{shown!r}: ssl_ca_certs is for rediss:// URLs")
    if "partitions" in query and not scheme.endswith("+cluster"):
        raise ValueError(f"{shown!r}: partitions is for redis+cluster:// URLs")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon and user:  # redis://secret@host: a password alone, as redis-py reads it
            username, password = None, unquote(user)
    if "password" in query:
        password = query.pop("password")
    if scheme == "unix":
        if hosts:
            raise ValueError(f"{shown!r}: a unix:// URL takes no host (unix:///path/to/socket)")
        socket_path = unquote(slash + path)
        if not path:
            raise ValueError(f"{shown!r}: no socket path (unix:///path/to/socket)")
        db = _parse_db(query.pop("db"), shown) if "db" in query else 0
        return RedisAddress("unix", path=socket_path, db=db, username=username,
                            password=password), query
    if "db" in query:
        raise ValueError(f"{shown!r}: give the database in the path (/{query['db']}), not ?db=")
    if scheme == "redis+sentinel":
        if not hosts:
            raise ValueError(f"{shown!r}: no sentinel hosts")
        sentinels = tuple(_parse_hostport(h, shown, 26379) for h in hosts.split(","))
        master, _, db_text = path.partition("/")
        if not master:
            raise ValueError(f"{shown!r}: no master name (redis+sentinel://h1:p1,h2:p2/master/db)")
        db = _parse_db(db_text, shown) if db_text else 0
        return RedisAddress("sentinel", sentinels=sentinels, master=unquote(master), db=db,
                            username=username, password=password), query
    if scheme.endswith("+cluster"):
        return _parse_cluster(scheme, hosts, path, query, shown, username, password)
    if not hosts:
        raise ValueError(f"{shown!r}: no host")
    if "," in hosts:
        raise ValueError(f"{shown!r}: one host only (use redis+sentinel:// for several)")
    host, port = _parse_hostport(hosts, shown, 6379)
    if "/" in path:
        raise ValueError(f"{shown!r}: unexpected path {'/' + path!r} (expected /db)")
    db = _parse_db(path, shown) if path else 0
    ca = query.pop("ssl_ca_certs", None)
    if ca is not None and not ca:
        raise ValueError(f"{shown!r}: ssl_ca_certs is empty")
    return RedisAddress("tcp", host=host, port=port, db=db, username=username,
                        password=password, tls=scheme == "rediss", ca_certs=ca), query


def _parse_cluster(scheme: str, hosts: str, path: str, query: dict[str, str], shown: str,
                   username: str | None, password: str | None
                   ) -> tuple[RedisAddress, dict[str, str]]:
    """``redis+cluster://`` and ``rediss+cluster://``: some of the cluster's nodes (any one
    that answers tells where every slot is), database 0 (a cluster has no other)."""
    if not hosts:
        raise ValueError(f"{shown!r}: no cluster node (redis+cluster://h1:p1,h2:p2)")
    nodes = tuple(_parse_hostport(h, shown, 6379) for h in hosts.split(","))
    if path not in ("", "0"):
        raise ValueError(f"{shown!r}: a Redis Cluster has database 0 only, got /{path}")
    text = query.pop("partitions", str(DEFAULT_PARTITIONS))
    if not text.isdigit() or not 1 <= int(text) <= MAX_PARTITIONS:
        raise ValueError(f"{shown!r}: partitions must be a whole number from 1 to "
                         f"{MAX_PARTITIONS}, got {text!r}")
    ca = query.pop("ssl_ca_certs", None)
    if ca is not None and not ca:
        raise ValueError(f"{shown!r}: ssl_ca_certs is empty")
    return RedisAddress("cluster", nodes=nodes, partitions=int(text), username=username,
                        password=password, tls=scheme == "rediss+cluster", ca_certs=ca), query


# -- connections ---------------------------------------------------------------------------------

#: A Redis Cluster's answers that mean "not now, not here" (``LayerUnavailable``).
_CLUSTER_BUSY = ("MOVED ", "ASK ", "TRYAGAIN ", "CLUSTERDOWN ")
#: What a Redis Cluster node says to a script that publishes on (or touches) a slot it no
#: longer holds: a script with no declared key (``_ASK_SCRIPT``) gets this, not MOVED.
#: (Mid-migration the layer's scripts get ASK or TRYAGAIN instead: each declares every key
#: it touches, and a shard channel stays the source's until the hand-over.)
_NOT_LOCAL = "Script attempted to access a non local key"


def _not_here(text: str) -> bool:
    """A Redis Cluster node's answer that the slot is another node's now (handed over)."""
    return text.startswith("MOVED ") or _NOT_LOCAL in text


def _cluster_busy(text: str) -> bool:
    """A Redis Cluster's answer that this command cannot run here now."""
    return text.startswith(_CLUSTER_BUSY) or _NOT_LOCAL in text

_protocol_classes: dict[str, Any] = {}


def _protocols() -> dict[str, Any]:
    """txredisapi's protocol, subclassed; built on first use (importing txredisapi imports
    the global reactor, so this only runs from ``start()``)."""
    if _protocol_classes:
        return _protocol_classes
    import txredisapi

    class Command(txredisapi.BaseRedisProtocol):
        """A command connection (publisher, BRPOP, discovery) owned by a ``_Link``."""

        link: Any = None
        _extra = b""

        def setLineMode(self, extra: bytes = b"") -> None:
            # txredisapi parses what follows a bulk reply one reactor turn later (a
            # callLater per bulk); parse it in this turn instead, in dataReceived's loop.
            self.line_mode = 1
            if extra:
                self._extra += extra

        def dataReceived(self, data: bytes, unpause: bool = False) -> Any:
            super().dataReceived(data, unpause)
            while self._extra and self.transport is not None:
                extra, self._extra = self._extra, b""
                super().dataReceived(extra)

        def connectionLost(self, why: Any) -> None:
            super().connectionLost(why)
            if self.link is not None:
                self.link.lost(self, why)

        def replyReceived(self, reply: Any) -> None:
            if (isinstance(reply, txredisapi.ResponseError) and self.link is not None
                    and _not_here(str(reply))):
                # A Redis Cluster node that no longer holds the partition's slot: the
                # command fails, and the connection goes to whichever node has it now.
                # (ASK and TRYAGAIN, while the slot migrates, fail only their command:
                # the slot and its shard channels are this node's until it is handed over.)
                self.link.moved(self, str(reply))
            super().replyReceived(reply)

    class Subscriber(Command):
        """The subscriber connection: messages go to the layer, replies to their commands."""

        #: SUNSUBSCRIBEs sent and not yet answered, per topic: any other ``sunsubscribe``
        #: is the cluster's (the slot moved to another node).
        _leaving: Counter[bytes] | None = None

        def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            if args and args[0] == "SUNSUBSCRIBE":
                if self._leaving is None:
                    self._leaving = Counter()
                self._leaving.update(t.encode() if isinstance(t, str) else t for t in args[1:])
            return super().execute_command(*args, **kwargs)

        def dataReceived(self, data: bytes, unpause: bool = False) -> Any:
            # Broadcasts that arrive in one read (one reactor turn) reach each local member
            # in one write.
            link = self.link
            hold(link.layer.reactor if link is not None else None)
            try:
                return super().dataReceived(data, unpause)
            finally:
                release()

        def replyReceived(self, reply: Any) -> None:
            if isinstance(reply, list) and len(reply) == 3:
                kind = reply[0]
                if kind == b"message" or kind == b"smessage":
                    if self.link is not None:
                        self.link.on_message(reply[1], reply[2])
                    return
                if kind == b"sunsubscribe":
                    if not self._leaving or not self._leaving[reply[1]]:
                        if self.link is not None:
                            self.link.moved(self, f"the cluster moved {reply[1]!r}'s slot")
                        return
                    self._leaving[reply[1]] -= 1
            Command.replyReceived(self, reply)

    _protocol_classes.update(Command=Command, Subscriber=Subscriber,
                             ResponseError=txredisapi.ResponseError,
                             ConnectionError=txredisapi.ConnectionError)
    return _protocol_classes


class _Factory:
    """A client factory for one link (txredisapi's protocol asks its factory a few things
    when AUTH or SELECT fails)."""

    isLazy = True  # txredisapi reads it: log an AUTH/SELECT failure

    def __init__(self, link: _Link) -> None:
        self.link = link

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def buildProtocol(self, addr: Any) -> Any:
        address = self.link.layer.address
        cls = _protocols()[self.link.protocol_name]
        if self.link.to_sentinel:
            proto = cls(charset=None, convertNumbers=False)
        else:
            proto = cls(charset=None, convertNumbers=False, password=address.password,
                        dbid=address.db or None, username=address.username)
        proto.factory = self
        proto.link = self.link
        return proto

    def stopTrying(self) -> None:
        pass

    def connectionError(self, message: str) -> None:
        self.link.problem(message)


class _Link:
    """One Redis connection that reconnects itself with capped exponential backoff.

    ``on_up(proto)`` runs once AUTH, SELECT and a PING have succeeded (and, through
    Sentinel, ROLE says master); ``on_down()`` when an up connection is lost. ``stop()``
    ends it for good.
    """

    def __init__(self, layer: RedisChannelLayer, name: str, protocol_name: str,
                 on_up: Any, on_down: Any, on_message: Any = None,
                 to_sentinel: bool = False) -> None:
        self.layer = layer
        self.on_message = on_message
        #: A connection to a Sentinel (no AUTH/SELECT/ROLE), not to the master.
        self.to_sentinel = to_sentinel
        self.name = name
        self.protocol_name = protocol_name
        self.on_up = on_up
        self.on_down = on_down
        self.proto: Any = None  # the ready connection
        self.pending: Any = None  # connected, not ready yet
        self.attempt = 0
        self.stopped = False
        self._retry_call: Any = None
        self._ready_call: Any = None
        self._connecting: Deferred[Any] | None = None
        self._last_problem: str | None = None
        self._closing: dict[Any, Deferred[None]] = {}

    def start(self) -> None:
        if self._connecting is None and self._retry_call is None and self.proto is None:
            self._connect()

    def _connect(self) -> None:
        self._retry_call = None
        if self.stopped:
            return
        d = self.layer._sentinel_endpoint() if self.to_sentinel else self.layer._endpoint()
        d.addCallback(lambda endpoint: endpoint.connect(_Factory(self)))
        d.addCallback(self._connected)
        d.addErrback(self._failed)
        self._connecting = d

    def _connected(self, proto: Any) -> Any:
        if self.stopped:
            proto.transport.loseConnection()
            return None
        self.pending = proto
        transport = proto.transport
        if hasattr(transport, "setTcpKeepAlive"):
            try:
                transport.setTcpKeepAlive(1)
            except OSError:
                pass
        # A server that accepts but never answers (not Redis, a hung one) is dropped.
        self._ready_call = self.layer.reactor.callLater(
            CONNECT_TIMEOUT, self._not_ready, proto
        )
        d = proto.whenConnected()
        # A PING proves the server answers (a TLS handshake completed, AUTH/SELECT ran).
        d.addCallback(lambda p: p.execute_command("PING"))
        if self.layer.address.kind == "sentinel" and not self.to_sentinel:
            d.addCallback(lambda _: proto.execute_command("ROLE"))
            d.addCallback(self._check_role)
        elif self.layer.address.kind == "cluster":
            # A keyed read of the partition's slot: a node that does not serve it as its
            # master (a stale address, a replica) answers MOVED (_Link.moved: elsewhere);
            # the master that is migrating it answers ASK (the key is not there): its own.
            d.addCallback(lambda _: proto.execute_command(
                "EXISTS", self.layer._survey_topic).addErrback(_asked_is_here))
        d.addCallback(lambda _: self._ready(proto))
        return d

    def _check_role(self, reply: Any) -> None:
        role = reply[0] if isinstance(reply, list) and reply else reply
        if role not in (b"master", "master"):
            raise LookupError(f"the address Sentinel gave is a {role!r}, not a master")

    def _not_ready(self, proto: Any) -> None:
        self._ready_call = None
        if proto is self.pending and proto.transport is not None:
            self.problem(f"no answer in {CONNECT_TIMEOUT} s")
            proto.transport.abortConnection()

    def _cancel_ready_call(self) -> None:
        if self._ready_call is not None:
            if self._ready_call.active():
                self._ready_call.cancel()
            self._ready_call = None

    def _ready(self, proto: Any) -> None:
        self._connecting = None
        self._cancel_ready_call()
        if self.pending is not proto or self.stopped or not proto.connected:
            return
        self.layer._moved_to = None  # (there now: a later move is told again)
        self.pending = None
        self.proto = proto
        self.attempt = 0
        self._last_problem = None
        self.on_up(proto)

    def _failed(self, failure: Failure) -> None:
        self._connecting = None
        self._cancel_ready_call()
        self.layer._moved_to = None  # (where MOVED said may be gone too: ask again)
        if self.stopped:
            return
        self.problem(_reason(failure))
        if self.pending is not None:
            # Open but not usable: closing it retries (from lost()).
            if self.pending.connected and self.pending.transport is not None:
                self.pending.transport.abortConnection()
            return
        self._retry()

    def problem(self, text: str) -> None:
        if text != self._last_problem:
            self._last_problem = text
            log.warn("channel layer: {link} connection to Redis ({address}): {problem}; "
                     "retrying", link=self.name, address=self.layer.address.describe(),
                     problem=text)

    def moved(self, proto: Any, text: str) -> None:
        """A Redis Cluster node answered MOVED, or dropped our shard channels: the
        partition's slot is elsewhere now. The layer's connections are closed; the next ones
        go where MOVED said (else ask the cluster)."""
        if proto is not self.proto and proto is not self.pending:
            return
        if text.startswith("MOVED "):
            target = text.split()[2] if len(text.split()) > 2 else ""
            host, _, port = target.rpartition(":")
            if host and port.isdigit():
                self.layer._moved_to = (host.strip("[]"), int(port))
        self.problem(f"Redis Cluster: {text}")
        if proto.transport is not None:
            proto.transport.loseConnection()
        # The layer's other connections are to the same slot's old node: they go too (a
        # history group's recovery must not read from there).
        for other in (self.layer._pub, self.layer._sub, self.layer._pop):
            if other is not None and other is not self and other.proto is not None \
                    and other.proto.transport is not None:
                other.proto.transport.loseConnection()

    def lost(self, proto: Any, reason: Failure) -> None:
        closing = self._closing.pop(proto, None)
        if closing is not None:
            closing.callback(None)
        if self.stopped:
            return
        if proto is self.proto:
            self.proto = None
            self.on_down()
        elif proto is self.pending:
            self.pending = None
            self._connecting = None
            self._cancel_ready_call()
            self.problem(_reason(reason))
        else:
            return
        self._retry()

    def _retry(self) -> None:
        if self.stopped or self._retry_call is not None or self._connecting is not None:
            return
        delay = min(BACKOFF_CAP, BACKOFF_START * 2 ** min(self.attempt, 16))
        delay *= random.uniform(0.75, 1.0)
        self.attempt += 1
        self._retry_call = self.layer.reactor.callLater(delay, self._connect)

    def stop(self) -> Deferred[None]:
        self.stopped = True
        self._cancel_ready_call()
        if self._retry_call is not None:
            self._retry_call.cancel()
            self._retry_call = None
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.addErrback(lambda _: None)
            connecting.cancel()
        waits = []
        for proto in (self.proto, self.pending):
            if proto is not None and proto.transport is not None and proto.connected:
                d: Deferred[None] = Deferred()
                self._closing[proto] = d
                waits.append(d)
                proto.transport.loseConnection()
        self.proto = self.pending = None
        return gatherResults(waits).addCallback(lambda _: None)


def _asked_is_here(failure: Failure) -> Failure | None:
    """ASK: the node still holds the slot (it is migrating it to the node named)."""
    return None if str(failure.value).startswith("ASK ") else failure


def _reason(failure: Failure) -> str:
    value = failure.value
    text = str(value) or type(value).__name__
    if type(value).__name__ == "Error" and getattr(value, "args", None):  # pyOpenSSL
        text = f"TLS error: {value.args[0]!r}"
    return text.splitlines()[0]


# -- the layer -------------------------------------------------------------------------------------

class RedisChannelLayer(BaseChannelLayer):
    """Groups, process channels and named channels across processes through one Redis."""

    extensions = ["groups", "flush", "broadcast"]
    #: How long ``group_presence`` waits for every process's answer (seconds).
    presence_timeout = PRESENCE_TIMEOUT
    #: How often other processes' liveness is checked while their members are known, and
    #: how long one must be absent from Redis to be declared gone (seconds).
    presence_check_interval = PRESENCE_CHECK_INTERVAL
    presence_grace = PRESENCE_GRACE
    #: Pub/sub's commands and the scripts that publish (a Redis Cluster partition uses
    #: sharded pub/sub instead: SSUBSCRIBE, SPUBLISH, PUBSUB SHARDNUMSUB).
    _SUBSCRIBE, _UNSUBSCRIBE, _PUBLISH = "SUBSCRIBE", "UNSUBSCRIBE", "PUBLISH"
    _NUMSUB = "NUMSUB"
    _publish_script = _PUBLISH_SCRIPT
    _ask_script = _ASK_SCRIPT

    def __init__(self, address: RedisAddress, capacity: int = 100, prefix: str = "realtime",
                 reactor: Any = None, ca_certs: list[Any] | None = None,
                 history: dict[str, tuple[int, float]] | None = None,
                 clock: Any = None) -> None:
        super().__init__(capacity=capacity, history=history)
        self.address = address
        self.prefix = prefix
        self.reactor = reactor
        #: What times the presence checks (``callLater``, ``seconds``): the reactor unless
        #: given (a test's ``Clock``; connections always use the reactor).
        self.clock = clock
        self._ca_certs = ca_certs
        self._names(self._key_base())
        #: Where a Redis Cluster's MOVED said the partition is now: the next connection's
        #: address, once (``_Link.moved``).
        self._moved_to: tuple[str, int] | None = None
        self._seq = itertools.count(1)
        self._pub: _Link | None = None
        self._sub: _Link | None = None
        self._pop: _Link | None = None
        self._watch: _Link | None = None
        self._sentinel_turn = 0
        self._started = False
        self._closed = False
        #: The subscriber is up and every group is (re)subscribed.
        self._sub_ready = False
        #: Groups whose SUBSCRIBE is confirmed / in flight (group -> waiters).
        self._subscribed: set[str] = set()
        self._sub_pending: dict[str, list[Deferred[None]]] = {}
        #: Bumped when a group's last local member leaves while SUBSCRIBEs are in flight
        #: (a SUBSCRIBE answered after our UNSUBSCRIBE does not count); cleared when none are.
        self._epochs: dict[str, int] = {}
        self._inflight = 0
        #: Our own publishes we wait to see come back: seq -> (group, Deferred).
        self._echo: dict[int, tuple[str, Deferred[None]]] = {}
        #: Acks for control messages we sent: seq -> (Deferred, timeout call).
        self._acks: dict[int, tuple[Deferred[None], Any]] = {}
        #: group_presence questions in flight: seq -> _Census.
        self._censuses: dict[int, _Census] = {}
        #: History groups' live messages that came while a reconnect resubscribes (before
        #: ``_resubscribed`` recovers the group): group -> messages, in order.
        self._outage: dict[str, list[dict[str, Any]]] = {}
        #: Since when the subscriber has been down (wall clock), None while up.
        self._down_since: float | None = None
        self._ready_waiters: list[Deferred[None]] = []
        #: BRPOP receivers: a waiter is (channels, Deferred[(channel, message)]).
        self._pop_waiters: deque[tuple[tuple[str, ...], Deferred[tuple[str, dict[str, Any]]]]]
        self._pop_waiters = deque()
        self._popping = False
        self._pop_retry: Any = None
        self.reconnects = 0
        self.last_outage: float | None = None
        #: Other processes' announced members of our groups (see the module docstring).
        self._remote = _RemotePresence()
        #: Groups whose other members this process has asked for (once per subscription,
        #: on its first announced presence join; again after a reconnect).
        self._seeded: set[str] = set()
        #: Processes with known members absent on the checks: process -> since (clock).
        self._absent: dict[str, float] = {}
        self._check_call: Any = None
        self._reseed_call: Any = None
        self._checking = False
        #: Bumped when a connection is lost: a check answered across it does not count.
        self._links_gen = 0
        #: Our announced members must be re-announced once both connections are up (a
        #: reconnect, a presence event not published); groups whose leave was not published.
        self._reannounce_due = False
        self._unannounced: set[str] = set()

    def _key_base(self) -> str:
        return f"{self.prefix}:{self.address.db}:"

    def _names(self, base: str) -> None:
        """Every key and topic starts with ``base``: ``<prefix>:<db>:`` (a Redis Cluster
        partition's: ``<prefix>:{<tag>}:``, so that all of them are in one slot)."""
        self._group_topic = base + "g:"
        self._process_topic = base + "p:"
        self._list_key = base + "c:"
        self._history_key = base + "h:"  # a history group's messages (a list)
        self._meta_key = base + "m:"  # its epoch and offset (a hash)
        self._own_topic = (self._process_topic + self.process_id).encode()
        self._survey_topic = base + "s"  # every process's: survey()
        self._survey_bytes = self._survey_topic.encode()
        self._group_prefix = self._group_topic.encode()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, reactor: Any = None) -> RedisChannelLayer:
        """Parse and check ``url`` fully (a CA file included); connects nothing."""
        address, options = cls.parse_options(url)
        if address.kind == "cluster":
            raise ValueError(f"{redact_url(url)!r}: a Redis Cluster is "
                             "realtime.layers.cluster's (layer_from_url)")
        return cls(address, reactor=reactor, **options)

    @staticmethod
    def parse_options(url: str) -> tuple[RedisAddress, dict[str, Any]]:
        """``url``'s address and the layer's keyword arguments (``capacity``, ``prefix``,
        ``ca_certs``: the certificates read now, so a bad file stops start-up)."""
        address, options = parse_url(url)
        shown = redact_url(url)
        capacity = 100
        if "capacity" in options:
            text = options["capacity"]
            if not text.isdigit() or int(text) < 1:
                raise ValueError(f"{shown!r}: capacity must be a whole number >= 1, got {text!r}")
            capacity = int(text)
        prefix = options.get("prefix", "realtime")
        try:
            check_name(prefix, "prefix")
        except TypeError:
            raise ValueError(
                f"{shown!r}: prefix must be letters, digits, '-', '_' or '.'") from None
        ca_certs = _load_ca_certs(address.ca_certs, shown) if address.ca_certs else None
        if address.tls and ca_certs is None:
            from twisted.internet.ssl import platformTrust

            platformTrust()  # fails now if the system has no trust store support
        return address, {"capacity": capacity, "prefix": prefix, "ca_certs": ca_certs}

    def _endpoint(self) -> Deferred[Any]:
        """A client endpoint for the master (after a Sentinel lookup for sentinel URLs)."""
        from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint

        address = self.address
        if address.kind == "unix":
            return succeed(UNIXClientEndpoint(self.reactor, address.path,
                                              timeout=CONNECT_TIMEOUT))
        if address.kind == "sentinel":
            d = Deferred.fromCoroutine(self._discover_master())
            return d.addCallback(lambda hp: HostnameEndpoint(self.reactor, hp[0], hp[1],
                                                             timeout=CONNECT_TIMEOUT))
        return succeed(self._tcp_endpoint(address.host, address.port))

    def _tcp_endpoint(self, host: str, port: int) -> Any:
        """A client endpoint for ``host:port``, through TLS for ``rediss``."""
        from twisted.internet.endpoints import HostnameEndpoint

        endpoint: Any = HostnameEndpoint(self.reactor, host, port, timeout=CONNECT_TIMEOUT)
        if self.address.tls:
            from twisted.internet.endpoints import wrapClientTLS
            from twisted.internet.ssl import (
                optionsForClientTLS,
                platformTrust,
                trustRootFromCertificates,
            )

            trust = (trustRootFromCertificates(self._ca_certs) if self._ca_certs
                     else platformTrust())
            endpoint = wrapClientTLS(optionsForClientTLS(host, trustRoot=trust), endpoint)
        return endpoint

    def _sentinel_endpoint(self) -> Deferred[Any]:
        """The sentinels in turn, for the watcher's connection."""
        from twisted.internet.endpoints import HostnameEndpoint

        sentinels = self.address.sentinels
        host, port = sentinels[self._sentinel_turn % len(sentinels)]
        self._sentinel_turn += 1
        return succeed(HostnameEndpoint(self.reactor, host, port, timeout=CONNECT_TIMEOUT))

    def _watch_up(self, proto: Any) -> None:
        proto.execute_command("SUBSCRIBE", "+switch-master", apply_timeout=False).addErrback(
            lambda _: None)

    def _on_sentinel_message(self, topic: bytes, payload: bytes) -> None:
        # "<master> <old ip> <old port> <new ip> <new port>"
        fields = payload.decode("utf-8", "replace").split()
        if topic != b"+switch-master" or not fields or fields[0] != self.address.master:
            return
        log.warn("channel layer: Sentinel moved master {master} to {new}; reconnecting",
                 master=fields[0], new=" ".join(fields[3:5]))
        for link in (self._pub, self._sub, self._pop):
            proto = link.proto if link is not None else None
            if proto is not None and proto.transport is not None:
                proto.transport.abortConnection()

    async def _discover_master(self) -> tuple[str, int]:
        """Ask each sentinel in turn for the master's address (SENTINEL
        get-master-addr-by-name); the connection then checks it is a master (ROLE)."""
        from twisted.internet.endpoints import HostnameEndpoint
        from twisted.internet.protocol import Factory

        problems = []
        for host, port in self.address.sentinels:
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=CONNECT_TIMEOUT)
            factory: Any = Factory.forProtocol(
                lambda: _protocols()["Command"](charset="utf-8", convertNumbers=False)
            )
            proto = None
            try:
                proto = await endpoint.connect(factory)
                call = self.reactor.callLater(CONNECT_TIMEOUT, proto.transport.abortConnection)
                try:
                    reply = await proto.execute_command(
                        "SENTINEL", "get-master-addr-by-name", self.address.master
                    )
                finally:
                    if call.active():
                        call.cancel()
                if isinstance(reply, list) and len(reply) == 2:
                    return str(reply[0]), int(reply[1])
                problems.append(f"{_host_port(host, port)} knows no master "
                                f"{self.address.master!r}")
            except Exception as exc:
                problems.append(f"{_host_port(host, port)}: {exc or type(exc).__name__}")
            finally:
                if proto is not None and proto.transport is not None:
                    proto.transport.loseConnection()
        raise LookupError("no sentinel gave the master: " + "; ".join(problems))

    # -- life cycle ------------------------------------------------------------------------------
    def start(self, reactor: Any = None) -> None:
        """Connect (in the background, retrying until ``close()``)."""
        if self._started:
            return
        if reactor is not None:
            self.reactor = reactor
        if self.reactor is None:
            from twisted.internet import reactor as default

            self.reactor = default
        _protocols()
        self._started = True
        self._down_since = time.time()
        self._pub = _Link(self, "publisher", "Command", self._pub_up, self._pub_down)
        self._sub = _Link(self, "subscriber", "Subscriber", self._sub_up, self._sub_down,
                          on_message=self._on_message)
        self._pub.start()
        self._sub.start()
        if self.address.kind == "sentinel":
            # Sentinel announces a failover on +switch-master; the old master keeps
            # accepting clients until Sentinel reconfigures it (up to ~10 s later), so the
            # layer listens and moves at once.
            self._watch = _Link(self, "sentinel watcher", "Subscriber", self._watch_up,
                                lambda: None, on_message=self._on_sentinel_message,
                                to_sentinel=True)
            self._watch.start()

    @property
    def ready(self) -> bool:
        return (not self._closed and self._pub is not None and self._pub.proto is not None
                and self._sub_ready)

    def when_ready(self, timeout: float | None = None) -> Deferred[None]:
        """Fires once both connections are up (``TimeoutError`` after ``timeout`` s)."""
        if self.ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        if timeout is not None:
            def expire() -> None:
                if not d.called:
                    self._ready_waiters.remove(d)
                    d.errback(TimeoutError(f"Redis not ready in {timeout} s"))

            call = self.reactor.callLater(timeout, expire)

            def done(result: Any) -> Any:
                if call.active():
                    call.cancel()
                return result

            d.addBoth(done)
        return d

    def _check_ready(self) -> None:
        if self.ready:
            if self._reannounce_due:
                self._reannounce_due = False
                self._reannounce()
                self._schedule_reseed()
            waiters, self._ready_waiters = self._ready_waiters, []
            for d in waiters:
                d.callback(None)

    def close(self) -> Deferred[None]:
        if self._closed:
            return succeed(None)
        self._closed = True
        self._sub_ready = False
        for call in (self._check_call, self._reseed_call, self._pop_retry):
            if call is not None and call.active():
                call.cancel()
        self._check_call = self._reseed_call = self._pop_retry = None
        for d in self._ready_waiters:
            d.errback(LayerUnavailable("the channel layer is closed"))
        self._ready_waiters = []
        self._release_waiters()
        for _, popper in list(self._pop_waiters):
            if not popper.called:
                popper.cancel()
        self._pop_waiters.clear()
        for waiters in self._waiters.values():
            for w in waiters:
                w.cancel()
        self._waiters.clear()
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        from twisted.internet.task import deferLater

        # A BRPOP in flight returns within BRPOP_TIMEOUT; what it takes for nobody, and
        # what waits in local queues of named channels, goes back to Redis, not lost.
        waited = 0.0
        while self._popping and waited < BRPOP_TIMEOUT + 1.0:
            await deferLater(self.reactor, 0.01, lambda: None)
            waited += 0.01
        await self._requeue()
        links = [link for link in (self._pub, self._sub, self._pop, self._watch)
                 if link is not None]
        await gatherResults([link.stop() for link in links])

    async def _requeue(self) -> None:
        proto = self._pub.proto if self._pub is not None else None
        count = 0
        for channel, queue in list(self._queues.items()):
            if self._owner(channel) is not None or proto is None:
                continue
            for message in reversed(queue):  # RPUSH: the oldest is popped (BRPOP) first
                try:
                    await proto.execute_command("RPUSH", self._list_key + channel,
                                                _pack(message))
                    count += 1
                except Exception:
                    log.warn("channel layer: could not put a message back on {channel}",
                             channel=channel)
            del self._queues[channel]
        if count:
            log.info("channel layer: put {count} untaken message(s) back in Redis", count=count)

    def _release_waiters(self) -> None:
        """Our own publishes will not come back (subscriber lost, layer closed): the gap
        event reports what was lost; whoever awaited them goes on."""
        echo, self._echo = self._echo, {}
        for _, d in echo.values():
            d.callback(None)
        for waiters in self._sub_pending.values():
            for d in waiters:
                d.callback(None)
        self._sub_pending.clear()
        acks, self._acks = self._acks, {}
        for d, call in acks.values():
            if call.active():
                call.cancel()
            d.callback(None)
        # Answers to our presence questions come to our subscriber: they are lost.
        censuses, self._censuses = self._censuses, {}
        for census in censuses.values():
            census.fail(LayerUnavailable("channel layer: the Redis subscriber connection was "
                                         "lost while asking the other processes"))

    # -- connection events -------------------------------------------------------------------------
    def _connected_log(self, link: str) -> None:
        """The first connection's line (a Redis Cluster's partitions log one line for all:
        ``realtime.layers.cluster``)."""
        log.info("channel layer: {link} connected to Redis ({address})", link=link,
                 address=self.address.describe())

    def _pub_up(self, proto: Any) -> None:
        self._connected_log("publisher")
        self._check_ready()

    def _pub_down(self) -> None:
        log.warn("channel layer: publisher connection to Redis lost; reconnecting")
        self._links_down()

    def _links_down(self) -> None:
        """A connection was lost: what we saw of other processes' liveness no longer
        counts (the window starts again once we are back), and what we announced may not
        have reached everyone (re-announced then)."""
        self._links_gen += 1
        self._absent.clear()
        self._reannounce_due = True

    def _sub_up(self, proto: Any) -> None:
        topics = [self._own_topic, self._survey_bytes] + [
            self._group_topic + g for g in self._groups]
        self._subscribed.clear()
        waits = [proto.execute_command(self._SUBSCRIBE, topic, apply_timeout=False)
                 for topic in topics]
        epochs = {g: self._epochs.get(g, 0) for g in self._groups}
        self._inflight += 1
        d = gatherResults(waits, consumeErrors=True)
        d.addCallbacks(lambda _: self._resubscribed(proto, epochs), lambda _: None)
        d.addBoth(self._landed)

    def _landed(self, result: Any = None) -> Any:
        """An in-flight SUBSCRIBE was answered (or lost); with none left, epochs reset."""
        self._inflight -= 1
        if self._inflight == 0:
            self._epochs.clear()
        return result

    def _resubscribed(self, proto: Any, epochs: dict[str, int]) -> None:
        if self._sub is None or self._sub.proto is not proto:
            return
        # A group emptied meanwhile was UNSUBSCRIBEd after our SUBSCRIBE: not subscribed.
        self._subscribed.update(g for g, epoch in epochs.items()
                                if g in self._groups and self._epochs.get(g, 0) == epoch)
        # Groups that gained their first member while the SUBSCRIBEs were in flight (their
        # _subscribe saw the subscriber not ready and left them for now): ready first, or
        # _subscribe would leave them again, for good.
        self._sub_ready = True
        for group in list(self._groups):
            if group not in self._subscribed and group not in self._sub_pending:
                self._subscribe(group)
        since, until = self._down_since, time.time()
        self._down_since = None
        first = self.reconnects == 0 and self.last_outage is None
        if since is not None and not first:
            self.reconnects += 1
            self.last_outage = until - since
            log.info("channel layer: reconnected to Redis after {outage:.2f} s; resubscribed "
                     "{count} group(s)", outage=until - since, count=len(self._groups))
        else:
            self.last_outage = 0.0
            self._connected_log("subscriber")
        if since is not None:
            for group in list(self._groups):
                members = self.local_members(group)
                if not members:
                    continue
                if self.history.match(group) is not None:
                    self._recover_group(group, members, since, until)
                else:
                    self._gap(group, members, since, until)
        self._check_ready()

    def _gap(self, group: str, members: list[str], since: float, until: float) -> None:
        self.stats.gaps += 1
        log.warn("channel layer: group {group}: messages published between {since} and "
                 "{until} may be lost (Redis connection lost); layer.gap sent to {count} "
                 "member(s)", group=group, since=_iso(since), until=_iso(until),
                 count=len(members))
        self._fan_out(group, self._gap_event(group, since, until))

    @staticmethod
    def _gap_event(group: str, since: float, until: float) -> dict[str, Any]:
        return {"type": "layer.gap", "group": group, "since": since, "until": until}

    def _recover_group(self, group: str, members: list[str], since: float,
                       until: float) -> None:
        """After a reconnect, a history group's members get what was published while the
        subscriber was away, read from history after the oldest position one of them had
        (each only what is newer than its own: its floor, else the group's last live
        position), and no ``layer.gap``; when history does not cover it (or cannot be read)
        they get the gap as before. A member with no position in the epoch most of them are
        in gets the gap."""
        gap_event = self._gap_event(group, since, until)
        outage = self._outage.pop(group, [])  # live since the resubscribe: after the rest
        joining = [m for m in members if (group, m) in self._recovering]
        for member in joining:
            # Its join's read may have been made before this outage ended: what that read
            # has not, it may have missed, and is told so after what the read has.
            self._recovering[(group, member)].extend([gap_event, *outage])
        floors, seen = self._floors.get(group, {}), self._seen.get(group)
        had = {m: floors.get(m, seen) for m in members if m not in joining}
        epochs = Counter(where[0] for where in had.values() if where is not None)
        epoch = epochs.most_common(1)[0][0] if epochs else None
        recovering = [m for m, where in had.items() if where is not None and where[0] == epoch]
        unknown = [m for m in had if m not in recovering]
        if unknown:
            self.stats.gaps += 1
            for member in unknown:
                for message in [gap_event, *outage]:
                    self._recover_one(group, member, message)
        if epoch is None:
            return
        position = (epoch, min(w[1] for m in recovering if (w := had[m]) is not None))
        waiting: dict[str, list[dict[str, Any]]] = {m: list(outage) for m in recovering}
        for member, buffer in waiting.items():
            self._recovering[(group, member)] = buffer
        d = self.when_ready(CONTROL_TIMEOUT)
        pending = self._sub_pending.get(group)
        if pending is not None:  # a SUBSCRIBE sent after the reconnect's: wait for it too
            subscribed: Deferred[None] = Deferred()
            pending.append(subscribed)
            d.addCallback(lambda _: subscribed)
        d.addCallback(lambda _: self._read_history(group, position, 0))

        def read(result: dict[str, Any]) -> None:
            if not result["recovered"]:
                gap()
                return
            missed = result.pop("messages")
            for member, buffer in waiting.items():
                self.stats.history_recovered += self._recovered(group, member, missed, result,
                                                                buffer, had[member])
            log.info("channel layer: group {group}: {count} message(s) published while Redis "
                     "was unreachable recovered from history for {members} member(s)",
                     group=group, count=len(missed), members=len(waiting))

        def gap() -> None:
            self.stats.gaps += 1
            self.stats.history_unrecovered += 1
            log.warn("channel layer: group {group}: messages published between {since} and "
                     "{until} may be lost (history does not cover them); layer.gap sent",
                     group=group, since=_iso(since), until=_iso(until))
            for member, buffer in waiting.items():  # then every live message: none dropped
                self._recovered(group, member, [gap_event], None, buffer)

        def failed(failure: Failure) -> None:
            log.info("channel layer: group {group}: history not read after the reconnect: "
                     "{error}", group=group, error=failure.getErrorMessage())
            gap()

        d.addCallbacks(read, failed)

    def _sub_down(self) -> None:
        self._sub_ready = False
        self._subscribed.clear()
        self._down_since = time.time()
        log.warn("channel layer: subscriber connection to Redis lost; reconnecting (group "
                 "messages published until it is back are reported as layer.gap)")
        self._links_down()
        self._release_waiters()

    # -- subscriptions -----------------------------------------------------------------------------
    def _subscribe(self, group: str) -> Deferred[None]:
        """SUBSCRIBE to ``group``'s topic; fires when confirmed (or when the subscriber is
        down: it will be subscribed on reconnect, and the gap reported)."""
        waiters = self._sub_pending.get(group)
        d: Deferred[None] = Deferred()
        if waiters is not None:
            waiters.append(d)
            return d
        proto = self._sub.proto if self._sub is not None else None
        if proto is None or not self._sub_ready:
            return succeed(None)
        waiters = self._sub_pending[group] = [d]
        epoch = self._epochs.get(group, 0)
        self._inflight += 1
        try:
            sent = proto.execute_command(self._SUBSCRIBE, self._group_topic + group,
                                         apply_timeout=False)
        except Exception:
            self._subscribed_now(group, proto, waiters, epoch, ok=False)
            self._landed()
            return d
        sent.addCallbacks(lambda _: self._subscribed_now(group, proto, waiters, epoch),
                          lambda _: self._subscribed_now(group, proto, waiters, epoch, False))
        sent.addBoth(self._landed)
        return d

    def _subscribed_now(self, group: str, proto: Any, waiters: list[Deferred[None]],
                        epoch: int, ok: bool = True) -> None:
        current = self._sub is not None and self._sub.proto is proto
        if ok and current and self._epochs.get(group, 0) == epoch:
            self._subscribed.add(group)
        if self._sub_pending.get(group) is waiters:
            del self._sub_pending[group]
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def _group_emptied(self, group: str) -> None:
        self._remote.drop_group(group)  # we hear no more of its joins and leaves
        self._seeded.discard(group)
        self._floors.pop(group, None)
        self._seen.pop(group, None)
        self._outage.pop(group, None)
        # A SUBSCRIBE still in flight is answered before this UNSUBSCRIBE: it no longer
        # counts (the epoch), and a new first member sends a new SUBSCRIBE.
        if self._inflight:
            self._epochs[group] = self._epochs.get(group, 0) + 1
        for waiter in self._sub_pending.pop(group, []):
            waiter.callback(None)
        self._subscribed.discard(group)
        for seq, (g, d) in list(self._echo.items()):
            if g == group:
                del self._echo[seq]
                d.callback(None)
        proto = self._sub.proto if self._sub is not None else None
        if proto is not None:
            try:
                proto.execute_command(self._UNSUBSCRIBE, self._group_topic + group).addErrback(
                    lambda _: None)
            except Exception:  # lost meanwhile: nothing to unsubscribe
                pass

    # -- incoming pub/sub messages ---------------------------------------------------------------
    def _on_message(self, topic: bytes, payload: bytes) -> None:
        try:
            body = _unpack(payload)
            if topic == self._own_topic:
                self._on_control(body)
            elif topic.startswith(self._group_prefix):
                self._on_group(topic[len(self._group_prefix):].decode(), body)
            elif topic == self._survey_bytes:
                self._on_survey(body)
        except Exception:
            log.failure("channel layer: cannot handle a message on {topic!r}", topic=topic)

    def _on_group(self, group: str, body: list[Any]) -> None:
        kind, origin, seq, data = body[:4]
        if kind == _WHO:
            tracked = self._presence.get(group, {})
            members = [[channel, entry[0]] for channel, entry in tracked.items()]
            quiet = [channel for channel, entry in tracked.items() if not entry[1]]
            # [..., our process, the members that do not announce] follow (an older
            # asker reads three fields).
            answer = [_MEMBERS, seq, members, self.process_id, quiet]
            self._publish(self._process_topic + origin,
                          _pack(answer)).addErrback(lambda _: None)
            return
        if kind == _GROUP:
            self._fan_out(group, data, exclude=tuple(body[4]) if len(body) > 4 else None)
            if origin != self.process_id and data.get("type") in _PRESENCE_TYPES:
                self._heard(group, origin, data)
        elif kind == _HGROUP:
            message, where = positioned(data, body[5], body[4]), (body[5], body[4])
            if not self._sub_ready and group in self._groups:
                # A group resubscribed early in a reconnect: its live messages wait for
                # the group's recovery (they come after what was missed), and do not move
                # the position the recovery reads from.
                self._outage.setdefault(group, []).append(message)
            else:
                self._fan_out(group, message, where)
        elif kind == _TEXT:
            self._broadcast_local(group, prepared_frame(data, None),
                                  tuple(body[4]) if len(body) > 4 else None)
        elif kind == _BYTES:
            self._broadcast_local(group, prepared_frame(None, data),
                                  tuple(body[4]) if len(body) > 4 else None)
        elif kind == _AGAIN:
            self._reannounced(group, origin, data)
        elif kind == _CLOSE:
            self._close_local(group, data[0], data[1])
        if seq and origin == self.process_id:
            waiting = self._echo.pop(seq, None)
            if waiting is not None:
                # The publisher's Deferred fires once local members have the frame: after
                # this read's held broadcasts are written (so they still go out together).
                after_release(functools.partial(waiting[1].callback, None))

    def _on_control(self, body: list[Any]) -> None:
        kind = body[0]
        if kind == _DIRECT:
            channel, message = body[1], body[2]
            if not self._deliver_local(channel, message):
                log.info("channel {channel} is over capacity; message dropped", channel=channel)
        elif kind == _MEMBERS:
            census = self._censuses.get(body[1])
            if census is not None:
                origin = body[3] if len(body) > 4 else None
                census.answer(body[2], origin)
                if origin is not None:
                    self._learn(census.group, origin, body[2], body[4])
        elif kind in (_ADD, _DISCARD):
            _, group, channel, origin, seq = body[:5]
            if kind == _ADD:
                done: Deferred[Any]
                if self.history.match(group) is not None:  # its position read here too
                    done = self._join_history(group, channel, None, keep=True).addErrback(
                        lambda f: log.info("channel layer: group {group}: position of "
                                           "{channel} not read: {error}", group=group,
                                           channel=channel, error=f.getErrorMessage()))
                else:
                    done = self._join(group, channel)
                if len(body) > 5:  # with presence: [..., info, announce]
                    info, announce = body[5], body[6]
                    done.addCallback(lambda _: self._track(group, channel, info, announce))
            else:
                self._discard_local(group, channel)
                done = succeed(None)
            if origin and seq:
                done.addCallback(lambda _: self._publish(
                    self._process_topic + origin, _pack([_ACK, seq])))
                done.addErrback(lambda _: None)
        elif kind == _ANSWER:
            survey = self._censuses.get(body[1])
            if isinstance(survey, _Survey):
                if len(body) > 4 and isinstance(body[4], str):  # a large one, in a key
                    self._fetch_answer(survey, body[4])
                else:
                    survey.heard(body[2], body[3])
        elif kind == _ACK:
            waiting = self._acks.pop(body[1], None)
            if waiting is not None:
                if waiting[1].active():
                    waiting[1].cancel()
                waiting[0].callback(None)

    # -- other processes' presence: remembered, expired when their process dies ---------------
    def _timer(self) -> Any:
        return self.clock if self.clock is not None else self.reactor

    def _track(self, group: str, channel: str, info: dict[str, Any],
               announce: bool = True) -> Deferred[None]:
        """As the base's; and the first announced join of a group here asks who else is in
        it (in the background), so members that joined before this process subscribed
        are known too, and get their ``presence.leave`` if their process dies."""
        d = super()._track(group, channel, info, announce)
        tracked = self._presence.get(group, {}).get(channel)
        if tracked is not None and tracked[1] and group not in self._seeded:
            self._seeded.add(group)
            if self._sub_ready:
                self._ask(group).addErrback(self._not_asked, group)
            else:
                self._reannounce_due = True  # asked (``_reseed``) once we are connected
        return d

    @staticmethod
    def _not_asked(failure: Failure, group: str) -> None:
        log.info("channel layer: group {group}: other processes' members not asked: "
                 "{error}", group=group, error=failure.getErrorMessage())

    def _presence_not_sent(self, kind: str, group: str) -> None:
        if kind == "presence.leave":
            self._unannounced.add(group)
        self._reannounce_due = True  # once both connections are up (``_check_ready``)

    def _heard(self, group: str, origin: str, event: dict[str, Any]) -> None:
        """Another process's ``presence.join``/``presence.leave`` on a group we are in."""
        channel, info = event.get("channel"), event.get("info")
        if group not in self._groups or not isinstance(channel, str):
            return
        if event["type"] == "presence.leave":
            self._remote.remove(group, channel)
        elif isinstance(info, dict):
            self._remote.add(group, channel, origin, info)
            self._schedule_check()

    def _learn(self, group: str, origin: str, members: list[list[Any]],
               quiet: list[str]) -> None:
        """One process's answer to our question: its announced members of ``group``, all of
        them, as of its answer (its later joins and leaves come after it, in order)."""
        if origin == self.process_id or group not in self._groups:
            return
        silent = set(quiet)
        self._remote.replace(group, origin, {channel: info for channel, info in members
                                             if channel not in silent})
        self._schedule_check()

    def _reannounced(self, group: str, origin: str, members: list[list[Any]]) -> None:
        """A process that was cut off from Redis is back with all its announced members of
        ``group``: our members hear only what they missed (a join of one we had declared
        gone, or new; a leave that could not be published); none of what we knew."""
        if origin == self.process_id or group not in self._groups:
            return
        now = {channel: info for channel, info in members}
        for channel, info in self._remote.of(origin, group).items():
            if channel not in now:
                self._remote.remove(group, channel)
                self._fan_out(group, _presence_event("presence.leave", group, channel, info))
        for channel, info in now.items():
            if self._remote.get(group, channel) == (origin, info):
                continue
            self._remote.add(group, channel, origin, info)
            self._fan_out(group, _presence_event("presence.join", group, channel, info))
        self._schedule_check()

    def _reannounce(self) -> None:
        """Back after a reconnect (or a presence event that was not published): every
        announced member of ours, one message per group, so a process that declared us
        gone meanwhile learns them again (and one that did not is told nothing twice)."""
        groups = self._unannounced | {group for group, tracked in self._presence.items()
                                      if any(entry[1] for entry in tracked.values())}
        self._unannounced = set()
        for group in groups:
            members = [[channel, entry[0]] for channel, entry
                       in self._presence.get(group, {}).items() if entry[1]]
            d = self._publish(self._group_topic + group,
                              _pack([_AGAIN, self.process_id, 0, members]))
            d.addErrback(self._not_reannounced, group)

    def _not_reannounced(self, failure: Failure, group: str) -> None:
        if not self._presence.get(group):  # lost again: sent with the next reconnect
            self._unannounced.add(group)

    def _schedule_reseed(self) -> None:
        """After a reconnect, ask again who is in our groups that use presence (we missed
        their joins and leaves meanwhile), once every live process has had time to be
        back too (so a slow one is not taken for one with no members there)."""
        if (self._seeded or self._remote) and self._reseed_call is None and not self._closed:
            self._reseed_call = self._timer().callLater(self.presence_grace, self._reseed)

    def _reseed(self) -> None:
        self._reseed_call = None
        for group in self._seeded | set(self._remote.groups):
            if group not in self._groups:
                continue
            before = self._remote.groups.get(group, {}).copy()
            self._ask(group).addCallbacks(self._reseeded, self._not_asked,
                                          callbackArgs=(before,), errbackArgs=(group,))

    def _reseeded(self, census: _Census, before: dict[str, tuple[str, dict[str, Any]]]) -> None:
        """Members known before the question whose process did not answer: if that process
        is alive, it has no member in the group any more, and they left while we could
        not hear it: forgotten, without an event (our members had ``layer.gap``). One that
        is not alive keeps them, for the checks to expire (with ``presence.leave``)."""
        group = census.group
        stale = {channel: entry for channel, entry in before.items()
                 if entry[0] not in census.origins and self._remote.get(group, channel) is entry}
        processes = sorted({entry[0] for entry in stale.values()})
        if not census.complete or not processes:
            return

        def counted(counts: dict[str, int]) -> None:
            for channel, entry in stale.items():
                if counts.get(entry[0]) and self._remote.get(group, channel) is entry:
                    self._remote.remove(group, channel)

        self._numsub(processes).addCallbacks(counted, lambda _: None)

    def _numsub(self, processes: list[str]) -> Deferred[dict[str, int]]:
        """How many subscribers each process's topic has (0: its connection is gone)."""
        proto = self._pub.proto if self._pub is not None else None
        if proto is None:
            return fail(LayerUnavailable("channel layer: not connected to Redis"))
        try:
            d = proto.execute_command("PUBSUB", self._NUMSUB,
                                      *[self._process_topic + p for p in processes])
        except Exception as exc:
            return fail(LayerUnavailable(f"channel layer: Redis connection lost: {exc}"))
        return d.addCallback(lambda reply: dict(zip(processes, map(int, reply[1::2]),
                                                    strict=False)))

    def _schedule_check(self) -> None:
        if self._check_call is None and self._remote and not self._closed:
            self._check_call = self._timer().callLater(self.presence_check_interval,
                                                       self._check_processes)

    def _check_processes(self) -> None:
        """One ``PUBSUB NUMSUB`` of the process topics of every process whose members we
        know: a process's subscriber connection is subscribed to its topic while it lives
        (Redis drops a killed process's connection at once, a vanished host's by
        ``tcp-keepalive``)."""
        self._check_call = None
        if self._closed or not self._remote:
            self._absent.clear()
            return
        self._schedule_check()
        if not self.ready or self._checking:
            return  # (after a lost connection the window starts again once it is back)
        gen = self._links_gen
        self._checking = True

        def counted(counts: dict[str, int]) -> None:
            if gen == self._links_gen:
                self._counted(counts)

        def done(result: Any) -> None:
            self._checking = False
            if isinstance(result, Failure):
                log.info("channel layer: presence check not made: {error}",
                         error=result.getErrorMessage())

        self._numsub(list(self._remote.processes)).addCallback(counted).addBoth(done)

    def _counted(self, counts: dict[str, int]) -> None:
        """A process absent on checks more than ``presence_grace`` apart, with our own
        connections up all the while (a reconnect of ours clears ``_absent``), is gone."""
        now = self._timer().seconds()
        for process in list(self._absent):
            if process not in self._remote.processes:
                del self._absent[process]
        for process, count in counts.items():
            if count:
                self._absent.pop(process, None)
                continue
            since = self._absent.setdefault(process, now)
            if now - since > self.presence_grace and process in self._remote.processes:
                self._expire(process, now - since)

    def _expire(self, process: str, absent: float) -> None:
        """``process`` died without its members leaving: our members of each of its groups
        hear ``presence.leave`` for each of them, from us (every process tells its own: no
        publish, nothing heard twice)."""
        self._absent.pop(process, None)
        gone = self._remote.drop_process(process)
        count = 0
        for group, members in gone.items():
            for channel, info in members.items():
                self._fan_out(group, _presence_event("presence.leave", group, channel, info))
                count += 1
        self.stats.presence_expired += count
        log.warn("channel layer: process {process} left Redis {absent:.1f} s ago without its "
                 "members leaving (it died, or is cut off); presence.leave given here for "
                 "{count} member(s) of {groups} group(s)", process=process, absent=absent,
                 count=count, groups=len(gone))

    # -- publishing -------------------------------------------------------------------------------
    def _on_publisher(self, command: Callable[[Any], Deferred[Any]],
                      asking: bool = False) -> Deferred[Any]:
        """``command(protocol)`` on the publisher connection; while Redis is unreachable it
        fails at once with ``LayerUnavailable`` (counted), never buffering. ``asking``: a
        command whose keys may be on a Redis Cluster's importing node while their slot
        migrates, run there when the source answers ASK (``_follow_ask``)."""
        proto = self._pub.proto if self._pub is not None else None
        if proto is None:
            self.stats.unavailable += 1
            return fail(LayerUnavailable(
                f"channel layer: not connected to Redis ({self.address.describe()})"
            ))
        try:
            d = command(proto)
        except Exception:
            self.stats.unavailable += 1
            return fail(LayerUnavailable("channel layer: the Redis connection was just lost"))
        if asking:
            d.addErrback(self._follow_ask, command)
        return d.addErrback(self._publish_failed)

    def _follow_ask(self, failure: Failure, command: Callable[[Any], Deferred[Any]]) -> Any:
        """Only a Redis Cluster answers ASK (``realtime.layers.cluster._Partition``)."""
        return failure

    def _publish(self, topic: str, payload: bytes) -> Deferred[int]:
        d = self._on_publisher(lambda proto: proto.execute_command(self._PUBLISH, topic, payload))
        if not (d.called and isinstance(d.result, Failure)):
            self.stats.published += 1
        return d

    def _publish_failed(self, failure: Failure) -> Failure:
        if failure.check(LayerUnavailable):
            return failure
        errors = _protocols()
        if failure.check(errors["ConnectionError"]):
            self.stats.unavailable += 1
            return Failure(LayerUnavailable(f"channel layer: Redis connection lost: "
                                            f"{failure.value}"))
        if failure.check(errors["ResponseError"]) and _cluster_busy(str(failure.value)):
            # MOVED (or a script told the slot is not local): the connection is moving
            # (_Link.moved); ASK, TRYAGAIN: the slot is migrating (keys on two nodes);
            # CLUSTERDOWN: the cluster refuses for now.
            self.stats.unavailable += 1
            return Failure(LayerUnavailable(f"channel layer: the Redis Cluster cannot take "
                                            f"this now ({failure.value})"))
        return failure

    def _publish_group(self, group: str, kind: int, data: Any,
                       rule: HistoryRule | None = None,
                       extra: tuple[Any, ...] = ()) -> Deferred[Any]:
        """One PUBLISH (with ``rule``: kept in the group's history too, and the Deferred
        fires with its position); when this process has members, fire once they have it
        too."""
        if self._pub is None or self._pub.proto is None:
            self.stats.unavailable += 1
            return fail(LayerUnavailable(
                f"channel layer: not connected to Redis ({self.address.describe()})"
            ))
        pending = self._sub_pending.get(group)
        if pending is not None:  # our own SUBSCRIBE first, so our members get it too
            d: Deferred[None] = Deferred()
            pending.append(d)
            return d.addCallback(lambda _: self._publish_group(group, kind, data, rule, extra))
        local = group in self._groups and group in self._subscribed
        seq = next(self._seq) if local else 0
        try:
            if rule is None:
                payload = _pack([kind, self.process_id, seq, data, *extra])
            else:  # the script adds offset and epoch: a six-element array
                payload = b"\x96" + b"".join(_pack(v) for v in (
                    kind, self.process_id, seq, data))
        except (TypeError, ValueError, OverflowError) as exc:  # (an int past 64 bits)
            return fail(TypeError(f"a channel layer message must be msgpack-safe: {exc}"))
        topic = self._group_topic + group
        position: list[Any] = [None]
        if rule is None:
            published: Deferred[Any] = self._publish(topic, payload)
        else:
            ttl = int(rule.ttl * 1000)
            args = [payload, new_epoch(), rule.size, ttl,
                    max(ttl, int(self.history_meta_ttl * 1000)), topic]
            published = self._on_publisher(lambda proto: proto.eval(
                self._publish_script, keys=[self._history_key + group,
                                            self._meta_key + group], args=args))
            if not (published.called and isinstance(published.result, Failure)):
                self.stats.published += 1

            def stored(reply: list[Any]) -> None:
                position[0] = {"epoch": _text(reply[1]), "offset": int(reply[0])}

            published.addCallback(stored)
        if not local:
            return published.addCallback(lambda _: position[0])
        echo: Deferred[None] = Deferred()
        self._echo[seq] = (group, echo)

        def failed(failure: Failure) -> Failure:
            self._echo.pop(seq, None)
            return failure

        def landed(_: Any) -> Deferred[Any]:
            return echo.addCallback(lambda _: position[0])

        return published.addCallbacks(landed, failed)

    # -- the public API ---------------------------------------------------------------------------
    def _owner(self, channel: str) -> str | None:
        """The process a ``<prefix>.<process>!...`` channel belongs to, else None."""
        head, bang, _ = channel.partition("!")
        if not bang:
            return None
        owner = head.rpartition(".")[2]
        if len(owner) == 12 and all(c in "0123456789abcdef" for c in owner):
            return owner
        return None

    def send(self, channel: str, message: dict[str, Any]) -> Deferred[None]:
        if (bad := invalid(channel=channel, message=message)) is not None:
            return bad
        owner = self._owner(channel)
        if owner == self.process_id:
            if not self._deliver_local(channel, message):
                return fail(ChannelFull(channel))
            return succeed(None)
        try:
            payload = _pack([_DIRECT, channel, message] if owner else message)
        except (TypeError, ValueError, OverflowError) as exc:
            return fail(TypeError(f"a channel layer message must be msgpack-safe: {exc}"))
        if owner is not None:
            d = self._publish(self._process_topic + owner, payload)
            return d.addCallback(self._sent_direct, channel)
        return self._push(channel, payload)

    def _sent_direct(self, receivers: Any, channel: str) -> None:
        if receivers == 0:  # the owning process is gone: at-most-once, counted
            self.stats.dropped += 1
            log.debug("channel {channel}: its process is gone; message dropped", channel=channel)

    def _push(self, channel: str, payload: bytes) -> Deferred[None]:
        # (On a Redis Cluster slot that is migrating, a list not on the source any more, or
        # new, is the importing node's: its receivers' BRPOP takes it after the hand-over.)
        d = self._on_publisher(lambda proto: proto.eval(
            _SEND_SCRIPT, keys=[self._list_key + channel],
            args=[payload, self.capacity, LIST_EXPIRY]), asking=True)

        def pushed(result: Any) -> None:
            if result != 1:
                self.stats.dropped += 1
                raise ChannelFull(channel)
            self.stats.published += 1

        return d.addCallback(pushed)

    def receive(self, channel: str) -> Deferred[dict[str, Any]]:
        if (bad := invalid(channel=channel)) is not None:
            return bad
        owner = self._owner(channel)
        if owner == self.process_id:
            return self._receive_local(channel)
        if owner is not None:
            return fail(ValueError(
                f"{channel!r} belongs to another process; only it can receive from it"
            ))
        return self.receive_any([channel]).addCallback(lambda pair: pair[1])

    def receive_any(self, channels: list[str]) -> Deferred[tuple[str, dict[str, Any]]]:
        """The next message from any of these named channels, as ``(channel, message)``
        (BRPOP: each message goes to one receiver only; at-most-once)."""
        try:
            for channel in channels:
                check_name(channel)
                if "!" in channel:
                    raise TypeError(f"receive_any() takes named channels, not {channel!r}")
        except TypeError as exc:
            return fail(exc)
        for channel in channels:  # left over from a cancelled receive
            queue = self._queues.get(channel)
            if queue:
                message = queue.popleft()
                if not queue:
                    del self._queues[channel]
                return succeed((channel, message))
        if self._closed:
            return fail(LayerUnavailable("the channel layer is closed"))
        entry: tuple[tuple[str, ...], Deferred[tuple[str, dict[str, Any]]]]

        def cancel(d: Deferred[Any]) -> None:
            try:
                self._pop_waiters.remove(entry)
            except ValueError:
                pass

        entry = (tuple(channels), Deferred(cancel))
        self._pop_waiters.append(entry)
        self._start_popping()
        return entry[1]

    def _start_popping(self) -> None:
        if self._pop is None:
            self._pop = _Link(self, "receiver", "Command", self._pop_up, lambda: None)
            self._pop.start()
            return
        if self._pop.proto is not None:
            self._pop_loop(self._pop.proto)

    def _pop_up(self, proto: Any) -> None:
        self._popping = False  # a BRPOP on a lost connection is gone with it
        self._pop_loop(proto)

    def _pop_loop(self, proto: Any) -> None:
        if self._popping:  # one BRPOP at a time (a second would pop for nobody)
            return
        waiters = [w for w in self._pop_waiters if not w[1].called]
        if not waiters or self._closed or self._pop is None or self._pop.proto is not proto:
            self._popping = False
            return
        keys = list(dict.fromkeys(self._list_key + c for cs, _ in waiters for c in cs))
        self._popping = True
        try:
            d = proto.execute_command("BRPOP", *keys, BRPOP_TIMEOUT, apply_timeout=False)
        except Exception:
            self._popping = False
            return

        def popped(reply: Any) -> None:
            self._popping = False
            if isinstance(reply, list) and len(reply) == 2:
                self._popped(reply[0].decode()[len(self._list_key):], reply[1])
            self._pop_loop(proto)

        def lost(failure: Failure) -> None:
            self._popping = False  # the link reconnects, and _pop_up resumes
            if _cluster_busy(str(failure.value)):
                # A Redis Cluster slot migrating (or MOVED: the link moves): the
                # connection stays; BRPOP again in a while, not at once.
                self._pop_retry = self.reactor.callLater(BRPOP_TIMEOUT, self._pop_loop, proto)

        d.addCallbacks(popped, lost)

    def _popped(self, channel: str, payload: bytes) -> None:
        try:
            message = _unpack(payload)
        except Exception:
            log.failure("channel {channel}: cannot decode a message; dropped", channel=channel)
            return
        for entry in list(self._pop_waiters):
            channels, d = entry
            if channel in channels and not d.called:
                self._pop_waiters.remove(entry)
                self.stats.delivered += 1
                d.callback((channel, message))
                return
        # Its receiver was cancelled meanwhile: keep it for the next receive in this process.
        self._queues.setdefault(channel, deque()).append(message)

    def group_add(self, group: str, channel: str, presence: dict[str, Any] | None = None,
                  announce: bool = True,
                  since: dict[str, Any] | None = None) -> Deferred[Any]:
        try:
            presence, position, rule = self._join_args(group, channel, presence, since)
        except (TypeError, ValueError) as exc:
            return fail(exc)
        owner = self._owner(channel)
        if owner is None or owner == self.process_id:
            joined: Deferred[Any]
            if rule is not None:
                joined = self._join_history(group, channel, position)
            else:
                joined = self._join(group, channel)
            if presence is not None:
                info = presence

                def track(result: Any) -> Any:
                    return self._track(group, channel, info, announce).addCallback(
                        lambda _: result)

                joined.addCallback(track)
            return joined
        if position is not None:
            return fail(ValueError("group_add(since=...) needs a channel of this process"))
        extra = () if presence is None else (presence, announce)
        return self._control(_ADD, group, channel, owner, *extra)

    def _join_history(self, group: str, channel: str, since: tuple[str, int] | None,
                      keep: bool = False) -> Deferred[dict[str, Any]]:
        """Join, then read the stream's position (and with ``since`` what was missed) once
        subscribed; the group's messages that come meanwhile wait (``_recovering``) and
        follow the missed ones, without those the read had. A member already: its
        position only. ``keep``: a failed read leaves
        the member in (a join made for another process)."""
        key = (group, channel)
        if channel in self._groups.get(group, ()):  # (``since`` was refused: _join_args)

            def position(result: dict[str, Any]) -> dict[str, Any]:
                result.pop("messages")
                result["missed"] = 0
                return result

            return self._read_history(group, None, -1).addCallback(position)
        waiting: list[dict[str, Any]] = []
        self._recovering[key] = waiting  # a join of the pair still in flight is moot now
        d = self._join(group, channel)
        d.addCallback(lambda _: self._read_history(group, since, -1 if since is None else 0))

        def read(result: dict[str, Any]) -> dict[str, Any]:
            missed = result.pop("messages")
            self.stats.history_recovered += self._recovered(group, channel, missed, result,
                                                            waiting)
            if result["recovered"] is False:
                self.stats.history_unrecovered += 1
            result["missed"] = len(missed)
            return result

        def failed(failure: Failure) -> Failure:
            if self._recovering.get(key) is waiting and not keep:
                # Not joined: a failed group_add leaves no member behind.
                del self._recovering[key]
                self._discard_local(group, channel)
            else:
                self._recovered(group, channel, [], None, waiting)
            return failure

        return d.addCallbacks(read, failed)

    def _read_history(self, group: str, since: tuple[str, int] | None,
                      limit: int) -> Deferred[dict[str, Any]]:
        """``_READ_SCRIPT``'s answer as ``group_history`` gives it."""
        args = [new_epoch(), max(1000, int(self.history_meta_ttl * 1000)),
                "" if since is None else since[0], 0 if since is None else since[1], limit]
        d = self._on_publisher(lambda proto: proto.eval(
            _READ_SCRIPT, keys=[self._meta_key + group, self._history_key + group],
            args=args), asking=True)

        def parsed(reply: list[Any]) -> dict[str, Any]:
            messages = []
            for entry in reply[3] or ():
                body = _unpack(entry)
                messages.append(positioned(body[3], body[5], body[4]))
            recovered = None if int(reply[2]) < 0 else bool(int(reply[2]))
            return answer(_text(reply[0]), int(reply[1]), recovered, messages)

        return d.addCallback(parsed)

    def group_history_remove(self, group: str) -> Deferred[None]:
        """The group's list goes; its position (the meta key) stays, in every process."""
        try:
            self._history_args(group, None, None)  # a group some rule matches
        except (TypeError, ValueError) as exc:
            return fail(exc)
        d = self._on_publisher(lambda proto: proto.execute_command(
            "DEL", self._history_key + group), asking=True)
        return d.addCallback(lambda _: None)

    def group_history(self, group: str, since: dict[str, Any] | None = None,
                      limit: int | None = None) -> Deferred[dict[str, Any]]:
        try:
            _, position, most = self._history_args(group, since, limit)
        except (TypeError, ValueError) as exc:
            return fail(exc)
        return self._read_history(group, position, most or 0)

    def group_presence(self, group: str) -> Deferred[dict[str, dict[str, Any]]]:
        """Asks on the group's topic: every process subscribed there (as many as the topic
        had subscribers when it was asked) answers with its own members; one that does not
        answer in PRESENCE_TIMEOUT is left out, with a warning. A process that died is not
        asked: nothing stale."""
        if (bad := invalid(group=group)) is not None:
            return bad
        return self._ask(group).addCallback(lambda census: census.members)

    def _ask(self, group: str) -> Deferred[_Census]:
        """``group_presence``'s question; fires with its census (answered, or timed out)."""
        if not self._sub_ready:
            self.stats.unavailable += 1
            return fail(LayerUnavailable("channel layer: not subscribed to Redis (reconnecting)"))
        pending = self._sub_pending.get(group)
        if pending is not None:  # our own SUBSCRIBE first, or our members are not asked
            subscribed: Deferred[None] = Deferred()
            pending.append(subscribed)
            return subscribed.addCallback(lambda _: self._ask(group))
        seq = next(self._seq)
        question = _pack([_WHO, self.process_id, seq, None])
        return self._put(seq, _Census(group, self.presence_timeout),
                         self._group_topic + group, question)

    def _put(self, seq: int, census: _Census, topic: str, question: bytes
             ) -> Deferred[_Census]:
        """``question`` on ``topic``, behind ``PUBSUB NUMSUB`` (``_ASK_SCRIPT``: a pattern
        subscriber, which never answers, is not waited for); fires with ``census`` once as
        many answers came as the topic had subscribers, or after ``presence_timeout``."""
        self._censuses[seq] = census
        asked = self._on_publisher(lambda proto: proto.eval(
            self._ask_script, keys=[], args=[question, topic]))

        def heard_by(processes: int) -> Deferred[_Census]:
            if self._censuses.get(seq) is census:  # not released meanwhile (subscriber lost)
                census.expect(int(processes),
                              self.reactor.callLater(self.presence_timeout, census.timed_out))
            return census.done

        def done(result: Any) -> Any:
            if self._censuses.get(seq) is census:
                del self._censuses[seq]
            census.stop()
            return result

        return asked.addCallback(heard_by).addBoth(done)

    def survey(self, name: str, args: Any = None) -> Deferred[dict[str, Any]]:
        """Asks on the surveys topic: every process subscribed there when it was asked
        answers (one that does not in PRESENCE_TIMEOUT is left out, with a warning)."""
        if not isinstance(name, str):
            return super().survey(name, args)
        if not self._sub_ready:
            self.stats.unavailable += 1
            return fail(LayerUnavailable("channel layer: not subscribed to Redis (reconnecting)"))
        seq = next(self._seq)
        try:
            question = _pack([_SURVEY, self.process_id, seq, name, args])
        except (TypeError, ValueError, OverflowError) as exc:
            return fail(TypeError(f"a survey's args must be msgpack values: {exc}"))
        survey = _Survey(name, self.presence_timeout)
        return self._put(seq, survey, self._survey_topic, question).addCallback(
            lambda _: survey.answers_by)

    def _on_survey(self, body: list[Any]) -> None:
        _, origin, seq, name, args = body[:5]
        value = self._answer(name, args) if isinstance(name, str) else None
        try:
            answer = _pack([_ANSWER, seq, self.process_id, value])
        except (TypeError, ValueError, OverflowError):
            # As an answer that raises: None, at once (the asker does not wait for us).
            log.failure("channel layer: the answer to survey {name!r} is not a msgpack "
                        "value", name=name)
            answer = _pack([_ANSWER, seq, self.process_id, None])
        topic = self._process_topic + origin
        if len(answer) <= SURVEY_INLINE_MAX:
            self._publish(topic, answer).addErrback(lambda _: None)
            return
        # Too large for one pub/sub message (Redis cuts a subscriber whose output buffer
        # passes client-output-buffer-limit pubsub: the asker's, with all its groups):
        # kept in a key for the asker to GET, with only its name published.
        key = f"{self._survey_topic}:a:{self.process_id}:{seq}"
        ttl = int((self.presence_timeout + 10) * 1000)
        # (A new key, so on a Redis Cluster slot that is migrating it goes to the node
        # importing it, as ASK says; the asker's GET follows the same ASK.)
        stored = self._on_publisher(lambda proto: proto.execute_command(
            "SET", key, answer, "PX", ttl), asking=True)
        stored.addCallback(lambda _: self._publish(topic, _pack(
            [_ANSWER, seq, self.process_id, None, key])))
        stored.addErrback(lambda f: log.info("channel layer: an answer to survey {name!r} "
                                             "not given: {error}", name=name,
                                             error=f.getErrorMessage()))

    def _fetch_answer(self, survey: _Survey, key: str) -> None:
        """A large answer (``_on_survey``): read from its key, then counted."""
        def read(payload: Any) -> None:
            body = _unpack(payload) \
                if isinstance(payload, bytes) else None
            if isinstance(body, list) and len(body) > 3:
                survey.heard(body[2], body[3])

        def delete(result: Any) -> Any:
            # Once the GET is answered: each may follow an ASK over a connection of its
            # own, and the DEL's could come first.
            self._on_publisher(lambda proto: proto.execute_command("DEL", key),
                               asking=True).addErrback(lambda _: None)
            return result

        got = self._on_publisher(lambda proto: proto.execute_command("GET", key), asking=True)
        got.addBoth(delete)
        got.addCallback(read)
        got.addErrback(lambda f: log.info("channel layer: a survey answer not read: "
                                          "{error}", error=f.getErrorMessage()))

    def _join(self, group: str, channel: str) -> Deferred[None]:
        self._add_local(group, channel)
        if group in self._subscribed:
            return succeed(None)
        return self._subscribe(group)

    def group_discard(self, group: str, channel: str) -> Deferred[None]:
        if (bad := invalid(group=group, channel=channel)) is not None:
            return bad
        owner = self._owner(channel)
        if owner is None or owner == self.process_id:
            self._discard_local(group, channel)
            return succeed(None)
        return self._control(_DISCARD, group, channel, owner)

    def _control(self, kind: int, group: str, channel: str, owner: str,
                 *presence: Any) -> Deferred[None]:
        """Ask ``owner`` to add/discard its channel; fires on its ack (or at once if it is
        gone, or after CONTROL_TIMEOUT with a warning)."""
        seq = next(self._seq)
        ack: Deferred[None] = Deferred()

        def timed_out() -> None:
            if self._acks.pop(seq, None) is not None:
                log.warn("channel layer: process {owner} did not confirm group {group} for "
                         "{channel} in {t} s", owner=owner, group=group, channel=channel,
                         t=CONTROL_TIMEOUT)
                ack.callback(None)

        # With presence, [..., info, announce] follow (older processes read five fields).
        payload = _pack([kind, group, channel, self.process_id, seq, *presence])
        published = self._publish(self._process_topic + owner, payload)

        def sent(receivers: Any) -> Deferred[None]:
            if receivers == 0 or not self._sub_ready:
                return succeed(None)  # nobody owns it (any more), or we cannot hear the ack
            self._acks[seq] = (ack, self.reactor.callLater(CONTROL_TIMEOUT, timed_out))
            return ack

        return published.addCallback(sent)

    def _group_send(self, group: str, message: dict[str, Any], record: bool,
                    exclude: tuple[str, ...] | None = None) -> Deferred[Any]:
        if (bad := invalid(group=group, message=message)) is not None:
            return bad
        rule = self.history.match(group) if record and self.history else None
        if rule is None:
            # The channels left out ride as a fifth field, as broadcast()'s do.
            return self._publish_group(group, _GROUP, message,
                                       extra=(list(exclude),) if exclude else ())
        return self._publish_group(group, _HGROUP, message, rule)

    def broadcast(
        self, group: str, text: str | None = None, bytes: bytes | None = None,
        exclude: str | Iterable[str] | None = None,
    ) -> Deferred[None]:
        try:
            check_name(group, "group")
            skip = check_exclude(exclude)
            prepared_frame_args(text, bytes)
        except (TypeError, ValueError) as exc:
            return fail(exc)
        # The channels to leave out ride as a fifth field (a process of an older version
        # reads four, and writes to them too).
        extra = (list(skip),) if skip else ()
        if text is not None:
            return self._publish_group(group, _TEXT, text, extra=extra)
        assert bytes is not None
        return self._publish_group(group, _BYTES, builtins_bytes(bytes), extra=extra)

    def group_close(self, group: str, code: int = 1000,
                    reason: str | None = None) -> Deferred[None]:
        if (bad := self._close_args(group, code, reason)) is not None:
            return bad
        return self._publish_group(group, _CLOSE, [code, reason]).addCallback(lambda _: None)

    def flush(self) -> Deferred[None]:
        """Forget every local group (unsubscribing) and queue, and delete this prefix's
        named-channel lists in Redis."""
        flush_held()
        self._floors.clear()
        self._seen.clear()
        self._outage.clear()
        for group in list(self._groups):
            del self._groups[group]
            self._group_emptied(group)
        self._memberships.clear()
        self._presence.clear()
        self._remote.clear()
        self._seeded.clear()
        self._absent.clear()
        self._unannounced.clear()
        self._in_several = 0
        self._queues.clear()
        self._queued_at.clear()
        for waiters in self._waiters.values():
            for d in waiters:
                d.cancel()
        self._waiters.clear()
        proto = self._pub.proto if self._pub is not None else None
        if proto is None:
            return succeed(None)
        return Deferred.fromCoroutine(self._delete_lists(proto))

    async def _delete_lists(self, proto: Any) -> None:
        """Named channels' lists, and history groups' lists and positions."""
        for prefix in (self._list_key, self._history_key, self._meta_key):
            cursor = 0
            while True:
                reply = await proto.execute_command("SCAN", cursor, "MATCH",
                                                    prefix + "*", "COUNT", 1000)
                cursor = int(reply[0])
                if reply[1]:
                    await proto.execute_command("DEL", *reply[1])
                if cursor == 0:
                    break


builtins_bytes = bytes


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, builtins_bytes) else str(value)


_PRESENCE_TYPES = ("presence.join", "presence.leave")


def _presence_event(kind: str, group: str, channel: str,
                    info: dict[str, Any]) -> dict[str, Any]:
    """The event ``_presence_event`` of the base layer sends, made here for a member of
    another process."""
    return {"type": kind, "group": group, "channel": channel, "info": info}


class _RemotePresence:
    """Other processes' announced members of the groups we have members in: by group
    (``{channel: (process, info)}``) and by process (``{group: {channel}}``), to check
    their processes and expire a dead one's at once."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
        self.processes: dict[str, dict[str, set[str]]] = {}

    def __bool__(self) -> bool:
        return bool(self.groups)

    def get(self, group: str, channel: str) -> tuple[str, dict[str, Any]] | None:
        return self.groups.get(group, {}).get(channel)

    def of(self, process: str, group: str) -> dict[str, dict[str, Any]]:
        members = self.groups.get(group, {})
        return {channel: members[channel][1]
                for channel in self.processes.get(process, {}).get(group, ())}

    def add(self, group: str, channel: str, process: str, info: dict[str, Any]) -> None:
        self.remove(group, channel)
        self.groups.setdefault(group, {})[channel] = (process, info)
        self.processes.setdefault(process, {}).setdefault(group, set()).add(channel)

    def remove(self, group: str, channel: str) -> tuple[str, dict[str, Any]] | None:
        members = self.groups.get(group)
        entry = members.pop(channel, None) if members is not None else None
        if entry is None:
            return None
        if not members:
            del self.groups[group]
        groups = self.processes[entry[0]]
        groups[group].discard(channel)
        if not groups[group]:
            del groups[group]
            if not groups:
                del self.processes[entry[0]]
        return entry

    def replace(self, group: str, process: str, members: dict[str, dict[str, Any]]) -> None:
        """``process``'s members of ``group`` are these, and only these."""
        for channel in list(self.processes.get(process, {}).get(group, ())):
            if channel not in members:
                self.remove(group, channel)
        for channel, info in members.items():
            self.add(group, channel, process, info)

    def drop_group(self, group: str) -> None:
        for channel in list(self.groups.get(group, ())):
            self.remove(group, channel)

    def drop_process(self, process: str) -> dict[str, dict[str, dict[str, Any]]]:
        """Forget ``process``'s members; what they were, by group."""
        gone = {group: self.of(process, group) for group in self.processes.get(process, {})}
        for group, members in gone.items():
            for channel in members:
                self.remove(group, channel)
        return gone

    def clear(self) -> None:
        self.groups.clear()
        self.processes.clear()


class _Census:
    """One ``group_presence`` question: the answers of the topic's subscribers when it was
    asked (they may come before the script's reply says how many), merged."""

    def __init__(self, group: str, timeout: float) -> None:
        self.group = group
        self.timeout = timeout
        self.done: Deferred[_Census] = Deferred()
        self.members: dict[str, dict[str, Any]] = {}
        self.answers = 0
        self.processes: int | None = None
        self.timer: Any = None
        #: The processes that answered (those that say who they are), and whether every
        #: subscriber did (not timed out).
        self.origins: set[str] = set()
        self.complete = False

    def answer(self, members: list[list[Any]], origin: str | None = None) -> None:
        self.answers += 1
        if origin is not None:
            self.origins.add(origin)
        for channel, info in members:
            self.members[channel] = info
        self._check()

    def expect(self, processes: int, timer: Any) -> None:
        self.processes = processes
        self.timer = timer
        self._check()

    def _check(self) -> None:
        if self.processes is not None and self.answers >= self.processes \
                and not self.done.called:
            self.stop()
            self.complete = True
            self.done.callback(self)

    def stop(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()

    def fail(self, error: Exception) -> None:
        self.stop()
        if not self.done.called:
            self.done.errback(error)

    def timed_out(self) -> None:
        if not self.done.called:
            log.warn("channel layer: presence of group {group}: {missing} of {processes} "
                     "subscriber(s) of its topic did not answer in {t} s (a process that "
                     "died without closing its connection, an older version, a tool "
                     "subscribed to the topic); their members are left out",
                     group=self.group, missing=(self.processes or 0) - self.answers,
                     processes=self.processes, t=self.timeout)
            self.done.callback(self)


class _Survey(_Census):
    """One ``survey`` question: the answers of the processes subscribed to the surveys
    topic when it was asked, by process id."""

    def __init__(self, name: str, timeout: float) -> None:
        super().__init__(name, timeout)
        self.answers_by: dict[str, Any] = {}

    def heard(self, origin: str, answer: Any) -> None:
        self.answers_by[origin] = answer
        self.answers += 1
        self._check()

    def timed_out(self) -> None:
        if not self.done.called:
            log.warn("channel layer: survey {name!r}: {missing} of {processes} process(es) "
                     "did not answer in {t} s (a process that died without closing its "
                     "connection); left out", name=self.group,
                     missing=(self.processes or 0) - self.answers,
                     processes=self.processes, t=self.timeout)
            self.done.callback(self)


def _pack(value: Any) -> bytes:
    """What crosses Redis: msgpack, a lone surrogate kept (JSON carries one: a JavaScript
    string cut inside an emoji; ``publish`` escapes it for the clients)."""
    packed: bytes = msgpack.packb(value, unicode_errors="surrogatepass")
    return packed


def _unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=False,
                           unicode_errors="surrogatepass")


def prepared_frame_args(text: str | None, data: bytes | None) -> None:
    """What ``prepared_frame`` checks, without building the frame (each process does)."""
    if (text is None) == (data is None):
        raise ValueError("broadcast() takes exactly one of text= or bytes=")
    if text is not None and not isinstance(text, str):
        raise TypeError("broadcast(text=) takes a str")
    if data is not None and not isinstance(data, builtins_bytes | bytearray | memoryview):
        raise TypeError("broadcast(bytes=) takes bytes")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


__all__ = ["LayerUnavailable", "RedisAddress", "RedisChannelLayer", "parse_url"]
