"""The Redis layer's own behaviour, in process: two layer instances on one real redis-server
stand for two processes (each has its own process id, connections and subscriptions)."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest
import pytest_twisted

from realtime.layers import ChannelFull, LayerUnavailable, layer_from_url
from realtime.layers.base import on_survey
from realtime.layers.redis import RedisChannelLayer, parse_url
from tests.redis_support import RedisServer, free_port, started_layer
from tests.test_layers import until


class Probe:
    """A receiver (what the bridge is to the layer) that records what it gets."""

    #: How far it has had the held broadcasts (``Receiver``).
    _held_seq = -1
    _held_count = 0

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.frames: list[bytes] = []
        self.joined = 0

    def deliver(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def deliver_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def deliver_joined(self, joined: bytes) -> bool:
        """A held burst in one write: recorded as its frames, and counted."""
        from realtime.websocket import encode_frame
        from tests.clients import parse_frames

        self.joined += 1
        self.frames.extend(encode_frame(op, payload) for op, payload in parse_frames(joined))
        return True


@pytest.fixture
def two_layers(redis_server: RedisServer) -> Any:
    layers: list[RedisChannelLayer] = []

    async def make(url: str | None = None) -> RedisChannelLayer:
        layer = await started_layer(url or redis_server.url)
        layers.append(layer)
        return layer

    yield make
    for layer in layers:
        pytest_twisted.blockon(layer.close())


# -- URLs --------------------------------------------------------------------------------------

def test_urls_parse():
    a, _ = parse_url("redis://127.0.0.1:6380/2")
    assert (a.kind, a.host, a.port, a.db, a.tls) == ("tcp", "127.0.0.1", 6380, 2, False)
    a, _ = parse_url("redis://:s3cret@redis.internal")
    assert (a.host, a.port, a.db, a.password, a.username) == ("redis.internal", 6379, 0,
                                                                 "s3cret", None)
    a, _ = parse_url("redis://user:pw@[::1]:7000/1")
    assert (a.host, a.port, a.username, a.password) == ("::1", 7000, "user", "pw")
    a, _ = parse_url("rediss://cache.example:6390/0")
    assert a.tls and a.ca_certs is None
    a, _ = parse_url("unix:///run/redis/redis.sock?db=3")
    assert (a.kind, a.path, a.db) == ("unix", "/run/redis/redis.sock", 3)
    a, _ = parse_url("redis+sentinel://10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/4")
    assert a.kind == "sentinel" and a.master == "mymaster" and a.db == 4
    assert a.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    _, options = parse_url("redis://h/0?capacity=5&prefix=app1")
    assert options == {"capacity": "5", "prefix": "app1"}


@pytest.mark.parametrize("url", [
    "redis://",
    "redis://host:0/0",
    "redis://host:99999",
    "redis://host:port",
    "redis://host/zero",
    "redis://host/0/extra",
    "redis://a,b/0",
    "redis://host/0?nope=1",
    "redis://host/0?db=1",
    "redis://host/0?ssl_ca_certs=/etc/ssl/ca.pem",
    "rediss://host/0?ssl_ca_certs=/no/such/file.pem",
    "redis://host/0?capacity=0",
    "redis://host/0?prefix=bad%20prefix",
    "unix://host/path",
    "unix://",
    "unix:///tmp/r.sock?db=x",
    "redis+sentinel:///master/0",
    "redis+sentinel://h1:1,h2:2",
    "redis+sentinel://h1:1/master/x",
])
def test_bad_urls_are_value_errors_that_name_the_url(url):
    with pytest.raises(ValueError) as error:
        layer_from_url(url)
    assert repr(url) in str(error.value) or url.split("?")[0] in str(error.value)


def test_from_url_connects_nothing_and_imports_no_reactor():
    """Built in postOptions, before twistd installs the reactor: nothing may import it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from realtime.layers import layer_from_url\n"
        "layer = layer_from_url('redis://127.0.0.1:1/0')\n"
        "assert 'twisted.internet.reactor' not in sys.modules, 'reactor imported'\n"
        "assert 'txredisapi' not in sys.modules, 'txredisapi imported'\n"
        "assert not layer.ready\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr


def test_ca_file_is_checked_at_start_up(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        layer_from_url(f"rediss://127.0.0.1:6379/0?ssl_ca_certs={bad}")


# -- across processes ---------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_group_send_crosses_processes_and_reaches_only_members(two_layers):
    one, two = await two_layers(), await two_layers()
    third = await two_layers()  # no member: receives nothing for the group
    a, b, c = Probe(), Probe(), Probe()
    ca, cb, cc = one.attach(a), two.attach(b), third.attach(c)
    await one.group_add("room", ca)
    await two.group_add("room", cb)
    await one.group_send("room", {"type": "chat.message", "text": "from one"})
    await two.group_send("room", {"type": "chat.message", "text": "from two"})
    await until(lambda: len(a.events) == 2 and len(b.events) == 2)
    assert [e["text"] for e in a.events] == ["from one", "from two"]
    assert [e["text"] for e in b.events] == ["from one", "from two"]
    assert c.events == [] and third.local_members("room") == [] and cc
    # After await group_send, this process's members already have it (no double delivery).
    await one.group_send("room", {"type": "x"})
    assert len(a.events) == 3
    await until(lambda: len(b.events) == 3)
    assert len(a.events) == 3


@pytest_twisted.ensureDeferred
async def test_last_member_leaving_unsubscribes(two_layers, redis_server):
    one, two = await two_layers(), await two_layers()
    a, b = Probe(), Probe()
    ca = one.attach(a)
    two.attach(b)
    await one.group_add("lobby", ca)
    assert one._subscribed == {"lobby"}
    one.detach(ca)
    assert one._subscribed == set() and one.local_members("lobby") == []
    topic = one._group_topic + "lobby"
    await until(lambda: redis_server.call("PUBSUB", "NUMSUB", topic) == [topic, ":0"])
    await two.group_send("lobby", {"type": "t"})
    assert a.events == []


@pytest_twisted.ensureDeferred
async def test_send_to_another_processes_channel_and_remote_group_add(two_layers):
    one, two = await two_layers(), await two_layers()
    b = Probe()
    cb = two.attach(b)
    await one.send(cb, {"type": "direct", "n": 1})
    await until(lambda: len(b.events) == 1)
    assert b.events[0] == {"type": "direct", "n": 1}
    # group_add from process one for process two's channel: after the await, it is a member.
    await one.group_add("remote", cb)
    assert two.local_members("remote") == [cb]
    assert one.local_members("remote") == []
    await one.group_send("remote", {"type": "g"})
    await until(lambda: len(b.events) == 2)
    await one.group_discard("remote", cb)
    assert two.local_members("remote") == []
    # A consumer of process two that is gone: two drops what comes for it (and counts
    # it), keeping nothing.
    two.detach(cb)
    dropped = two.stats.dropped
    for n in range(two.capacity + 1):
        await one.send(cb, {"type": "late", "n": n})
    await until(lambda: two.stats.dropped == dropped + two.capacity + 1)
    assert cb not in two._queues
    # A channel whose process is gone: the message is dropped (at-most-once) and counted.
    before = one.stats.dropped
    await one.send("specific.0123456789ab!gone", {"type": "t"})
    assert one.stats.dropped == before + 1


@pytest_twisted.ensureDeferred
async def test_broadcast_one_prepared_frame_per_process(two_layers):
    from realtime.websocket import encode_frame

    one, two = await two_layers(), await two_layers()
    a1, a2, b = Probe(), Probe(), Probe()
    for layer, probe in ((one, a1), (one, a2), (two, b)):
        await layer.group_add("fast", layer.attach(probe))
    await two.broadcast("fast", text="héllo")
    await one.broadcast("fast", bytes=b"\x00\xff")
    await until(lambda: all(len(p.frames) == 2 for p in (a1, a2, b)))
    for probe in (a1, a2, b):
        assert set(probe.frames) == {encode_frame(0x1, "héllo".encode()),
                                     encode_frame(0x2, b"\x00\xff")}
    assert a1.frames[0] is a2.frames[0]  # one frame built per process, not per member
    with pytest.raises(ValueError):
        await one.broadcast("fast")


@pytest_twisted.ensureDeferred
async def test_broadcast_leaves_out_the_excluded_channels_in_every_process(two_layers):
    """``exclude=`` crosses Redis: a channel of the publishing process and one of another
    process are both left out, the rest get the frame; the next broadcast reaches all."""
    from realtime.websocket import encode_frame

    one, two = await two_layers(), await two_layers()
    a1, a2, b1, b2 = Probe(), Probe(), Probe(), Probe()
    names = {}
    for layer, probe in ((one, a1), (one, a2), (two, b1), (two, b2)):
        names[probe] = layer.attach(probe)
        await layer.group_add("x", names[probe])
    await one.broadcast("x", text="first", exclude=[names[a1], names[b2]])
    await two.broadcast("x", bytes=b"second", exclude=names[b1])
    await one.broadcast("x", text="third")
    await until(lambda: all(len(p.frames) == n for p, n in ((a1, 2), (a2, 3), (b1, 2),
                                                             (b2, 2))))
    first, second, third = (encode_frame(0x1, b"first"), encode_frame(0x2, b"second"),
                            encode_frame(0x1, b"third"))
    assert a1.frames == [second, third] and b2.frames == [second, third]
    assert b1.frames == [first, third] and a2.frames == [first, second, third]
    for bad in (5, ["no spaces"], [None]):
        with pytest.raises(TypeError):
            await one.broadcast("x", text="t", exclude=bad)


@pytest_twisted.ensureDeferred
async def test_group_send_leaves_out_the_excluded_channels_in_every_process(two_layers):
    """``group_send(exclude=)`` crosses Redis as broadcast's does; a history group refuses
    it (its members recover every message it keeps)."""
    one, two = await two_layers(), await two_layers()
    a1, a2, b1 = Probe(), Probe(), Probe()
    names = {}
    for layer, probe in ((one, a1), (one, a2), (two, b1)):
        names[probe] = layer.attach(probe)
        await layer.group_add("y", names[probe])
    await one.group_send("y", {"type": "first"}, exclude=[names[a1], names[b1]])
    await two.group_send("y", {"type": "second"}, exclude=names[a2])
    await one.group_send("y", {"type": "third"})
    await until(lambda: [len(p.events) for p in (a1, a2, b1)] == [2, 2, 2])
    assert [e["type"] for e in a1.events] == ["second", "third"]
    assert [e["type"] for e in a2.events] == ["first", "third"]
    assert [e["type"] for e in b1.events] == ["second", "third"]
    one.keep_history("kept.*", 10, 60)
    with pytest.raises(ValueError, match=r"not for history group 'kept\.a'"):
        await one.group_send("kept.a", {"type": "t"}, exclude=names[a1])
    with pytest.raises(TypeError):
        await one.group_send("y", {"type": "t"}, exclude=5)
    # An int past 64 bits (JSON has them: the publish API's events) fails the Deferred
    # (a 400 there), not the call.
    with pytest.raises(TypeError, match="msgpack-safe"):
        await one.group_send("y", {"type": "t", "n": 2**70}, exclude=names[a1])


@pytest_twisted.ensureDeferred
async def test_named_channels_are_lists_with_capacity_and_one_receiver_each(redis_server,
                                                                             two_layers):
    url = redis_server.url + "?capacity=3&prefix=named"
    one, two = await two_layers(url), await two_layers(url)
    await one.flush()
    for n in range(3):
        await one.send("thumbnails", {"type": "make", "n": n})
    with pytest.raises(ChannelFull):
        await one.send("thumbnails", {"type": "make", "n": 3})
    got = [await two.receive("thumbnails") for _ in range(3)]
    assert [m["n"] for m in got] == [0, 1, 2]  # FIFO
    # Two receivers waiting on one channel: each message goes to exactly one.
    first, second = one.receive("thumbnails"), two.receive("thumbnails")
    await one.send("thumbnails", {"type": "make", "n": 10})
    await one.send("thumbnails", {"type": "make", "n": 11})
    results = [await first, await second]
    assert sorted(m["n"] for m in results) == [10, 11]
    # receive_any: the first message from any of several channels.
    pending = two.receive_any(["a-jobs", "b-jobs"])
    await one.send("b-jobs", {"type": "job"})
    assert (await pending)[0] == "b-jobs"
    with pytest.raises(ValueError):
        await one.receive(f"specific.{two.process_id}!x")
    await one.flush()
    assert redis_server.call("EXISTS", one._list_key + "thumbnails") == ":0"


@pytest_twisted.ensureDeferred
async def test_unreachable_at_start_then_up_and_publishes_fail_fast_while_down():
    """Redis not there: not ready, publishes fail with LayerUnavailable (counted); once it
    starts on that port the layer connects by itself."""
    port = free_port()
    layer = RedisChannelLayer.from_url(f"redis://127.0.0.1:{port}/0")
    from twisted.internet import reactor

    layer.start(reactor)
    try:
        probe = Probe()
        channel = layer.attach(probe)
        await layer.group_add("early", channel)  # recorded; subscribed once connected
        assert not layer.ready
        with pytest.raises(LayerUnavailable):
            await layer.group_send("early", {"type": "t"})
        with pytest.raises(ConnectionError):
            await layer.send("named", {"type": "t"})
        assert layer.stats.unavailable == 2
        with RedisServer(port=port):
            await layer.when_ready(10)
            await layer.group_send("early", {"type": "t"})
            # The member joined while Redis was unreachable: it is told it may have missed
            # messages (since start), then gets what follows.
            assert [e["type"] for e in probe.events] == ["layer.gap", "t"]
            await layer.close()
    finally:
        await layer.close()


@pytest_twisted.ensureDeferred
async def test_redis_restart_reconnects_resubscribes_and_reports_the_gap():
    with RedisServer() as redis:
        one = await started_layer(redis.url)
        two = await started_layer(redis.url)
        try:
            a, b = Probe(), Probe()
            await one.group_add("room", one.attach(a))
            await two.group_add("room", two.attach(b))
            redis.kill()
            await until(lambda: not one.ready and not two.ready)
            with pytest.raises(LayerUnavailable):
                await one.group_send("room", {"type": "lost"})
            redis.start()
            await one.when_ready(10)
            await two.when_ready(10)
            for probe in (a, b):
                gaps = [e for e in probe.events if e["type"] == "layer.gap"]
                assert len(gaps) == 1 and gaps[0]["group"] == "room"
                assert gaps[0]["since"] < gaps[0]["until"]
            assert one.reconnects == 1 and one.last_outage is not None
            await one.group_send("room", {"type": "after"})
            await until(lambda: b.events[-1:] == [{"type": "after"}])
        finally:
            await one.close()
            await two.close()


async def crossing(two_layers, url, group):
    """Two layers on ``url``; an event sent by the first reaches a member of the second."""
    one, two = await two_layers(url), await two_layers(url)
    b = Probe()
    await two.group_add(group, two.attach(b))
    await one.group_send(group, {"type": f"over.{group}"})
    await until(lambda: b.events == [{"type": f"over.{group}"}])
    return one, two


@pytest_twisted.ensureDeferred
async def test_unix_socket(two_layers):
    with RedisServer(unix_socket=True) as redis:
        one, two = await crossing(two_layers, f"unix://{redis.unix_socket}?db=1", "unix")
        await one.close()
        await two.close()


@pytest_twisted.ensureDeferred
async def test_an_acl_user_signs_in_as_itself(two_layers):
    """``redis://user:password@host``: every connection of the layer is that ACL user's."""
    from tests.test_redis_sessions import ACL, client_users

    with RedisServer(args=ACL) as redis:
        await crossing(two_layers, f"redis://app:s3cret@127.0.0.1:{redis.port}/0", "acl")
        users = client_users(redis)
        assert users.count("default") == 1  # CLIENT LIST's own connection
        assert users.count("app") == len(users) - 1 >= 2


# -- TLS ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_redis() -> Any:
    with RedisServer(tls=True) as redis:
        yield redis


@pytest_twisted.ensureDeferred
async def test_rediss_verifies_the_server_with_the_given_ca(tls_redis, two_layers):
    url = f"rediss://127.0.0.1:{tls_redis.tls_port}/0?ssl_ca_certs={tls_redis.cert}"
    one, _ = await crossing(two_layers, url, "tls")
    transport = one._pub.proto.transport
    assert transport.getPeerCertificate() is not None  # really TLS


@pytest_twisted.ensureDeferred
async def test_rediss_refuses_a_server_the_ca_did_not_sign(tls_redis, tmp_path):
    """A certificate from another CA (and the system store, which knows neither) is
    refused: the layer never becomes ready and says why."""
    from twisted.internet import reactor

    from tests.clients import captured_log
    from tests.e2e.support import self_signed

    other_ca, _ = self_signed(tmp_path)
    for url in (f"rediss://127.0.0.1:{tls_redis.tls_port}/0?ssl_ca_certs={other_ca}",
                f"rediss://127.0.0.1:{tls_redis.tls_port}/0"):
        layer = RedisChannelLayer.from_url(url)
        with captured_log() as events:

            def refused() -> bool:
                return any("certificate verify failed" in e.get("problem", "") for e in events)

            layer.start(reactor)
            try:
                await until(refused, timeout=10)  # refused: it does not get ready
                with pytest.raises(TimeoutError):
                    await layer.when_ready(0.3)
                assert not layer.ready
                with pytest.raises(LayerUnavailable):
                    await layer.group_send("g", {"type": "t"})
            finally:
                await layer.close()
        problems = [e.get("problem", "") for e in events if "problem" in e]
        assert any("certificate verify failed" in p for p in problems), problems


# -- Sentinel -----------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_sentinel_finds_the_master_and_follows_a_failover(two_layers):
    """A master, its replica and a Sentinel; the first sentinel in the URL is not there (the
    next one is asked). After SENTINEL FAILOVER the layer reconnects to the new master by
    itself, resubscribes and reports the gap."""
    with RedisServer(args=["--repl-diskless-sync-delay", "0"]) as master, \
            RedisServer() as replica:
        replica.call("REPLICAOF", "127.0.0.1", str(master.port))
        await until(lambda: "master_link_status:up" in replica.call("INFO", "replication"),
                    timeout=10)
        with RedisServer(sentinel_of=("mymaster", master.port)) as sentinel:
            url = (f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{sentinel.port}"
                   "/mymaster/0")
            one, two = await two_layers(url), await two_layers(url)
            assert one._pub.proto.transport.getPeer().port == master.port
            b = Probe()
            await two.group_add("s", two.attach(b))
            await one.group_send("s", {"type": "before"})
            await until(lambda: b.events == [{"type": "before"}])
            await until(lambda: sentinel.call("SENTINEL", "REPLICAS", "mymaster") != [],
                        timeout=15)
            assert sentinel.call("SENTINEL", "FAILOVER", "mymaster") == "+OK"
            # +switch-master moves the layer at once (not when Sentinel reconfigures the old
            # master, up to 10 s later).
            await until(lambda: any(e["type"] == "layer.gap" for e in b.events), timeout=5)
            await one.when_ready(10)
            await two.when_ready(10)
            assert one._pub.proto.transport.getPeer().port == replica.port
            await one.group_send("s", {"type": "after"})
            await until(lambda: b.events[-1:] == [{"type": "after"}])


# -- the command line ---------------------------------------------------------------------------

def test_layer_option_builds_the_redis_layer_or_stops_with_one_line(tmp_path):
    from realtime.config import StartupError
    from realtime.tap import Options

    options = Options()
    options.parseOptions(["--app", "realtime.examples.bench:application",
                          "--layer", "redis://127.0.0.1:6390/3?capacity=7"])
    assert isinstance(options.layer, RedisChannelLayer)
    assert options.layer.address.port == 6390 and options.layer.capacity == 7
    for url, expected in (("redis://127.0.0.1:6390/x", "the database must be a number"),
                          (f"rediss://h/0?ssl_ca_certs={tmp_path}/none.pem",
                           "No such file or directory")):
        with pytest.raises(StartupError) as error:
            Options().parseOptions(["--app", "realtime.examples.bench:application",
                                    "--layer", url])
        message = str(error.value)
        assert message.startswith("realtime: error: --layer: ") and expected in message
        assert "\n" not in message


@pytest_twisted.ensureDeferred
async def test_live_server_on_a_given_layer(two_layers):
    """``realtime.testing.serve(app, layer=...)``: a live server whose consumers use the
    Redis layer; a group_send from another "process" reaches a real client."""
    from realtime.testing import serve
    from tests.apps.layer_app import application
    from tests.clients import in_thread

    one, two = await two_layers(), await two_layers()
    server = await serve(application, layer=one)
    try:
        assert server.site.layer is one

        def client() -> Any:
            import json

            from websockets.sync.client import connect

            with connect(server.ws_url("/typed/live")) as ws:
                assert json.loads(ws.recv(timeout=5))["type"] == "hello"
                from twisted.internet import reactor
                from twisted.internet.threads import blockingCallFromThread

                blockingCallFromThread(reactor, two.group_send, "live",
                                       {"type": "chat.message", "text": "hi", "pid": 0})
                return json.loads(ws.recv(timeout=5))

        assert await in_thread(client) == {"type": "chat", "text": "hi", "pid": 0}
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_join_leave_join_churn_keeps_the_subscription(two_layers):
    """Channels' "messages to newly connected members get lost under churn": the last member
    leaving while the group's SUBSCRIBE is still in flight, then a new one joining, leaves
    the process subscribed (the UNSUBSCRIBE is not mistaken for the state)."""
    one, two = await two_layers(), await two_layers()
    for round_ in range(20):
        first, second = Probe(), Probe()
        c1 = one.attach(first)
        one.group_add(f"churn{round_}", c1)  # SUBSCRIBE in flight
        one.detach(c1)  # UNSUBSCRIBE behind it
        if round_ % 2:  # both answered before the next member joins
            await until(lambda: one._inflight == 0)
        await one.group_add(f"churn{round_}", one.attach(second))
        await two.group_send(f"churn{round_}", {"type": "hello"})
        await until(lambda: second.events == [{"type": "hello"}])  # noqa: B023
        assert first.events == []
    assert one._epochs == {} and one._inflight == 0


@pytest_twisted.ensureDeferred
async def test_broadcasts_in_one_subscriber_read_reach_a_member_in_one_write(two_layers):
    """Three broadcasts made in one reactor turn leave in one write to Redis, which sends
    the three messages to each subscriber in one write: they are held for that read and
    reach each member as one write, in order, in the other process and in the publisher's
    own (whose Deferreds fire once its members have them)."""
    from realtime.websocket import encode_frame

    one, two = await two_layers(), await two_layers()
    local, remote = Probe(), Probe()
    await one.group_add("burst", one.attach(local))
    await two.group_add("burst", two.attach(remote))
    sent = [one.broadcast("burst", text=f"m{i}") for i in range(3)]
    for d in sent:
        await d
    assert len(local.frames) == 3  # fired only once the local member had them
    await until(lambda: len(remote.frames) == 3)
    expected = [encode_frame(0x1, f"m{i}".encode()) for i in range(3)]
    for layer, probe in ((one, local), (two, remote)):
        assert probe.frames == expected
        assert probe.joined == 1
        assert (layer.stats.broadcast_frames, layer.stats.broadcast_writes) == (3, 1)


def test_reconnect_backoff_doubles_from_a_tenth_of_a_second_up_to_five():
    """The retry schedule on a fake clock (the e2e tests restart a real Redis; they bound
    their waits but assert no timing)."""
    from twisted.internet.task import Clock

    from realtime.layers.redis import BACKOFF_CAP, BACKOFF_START, _Link

    clock = Clock()
    layer = RedisChannelLayer.from_url(f"redis://127.0.0.1:{free_port()}/0", clock)
    link = _Link(layer, "test", "publisher", on_up=lambda proto: None, on_down=lambda: None)
    delays = []
    for _ in range(12):
        link._retry()
        (call,) = clock.getDelayedCalls()
        delays.append(call.getTime() - clock.seconds())
        call.cancel()
        link._retry_call = None
    assert BACKOFF_START == 0.1 and BACKOFF_CAP == 5.0
    for attempt, delay in enumerate(delays):
        ceiling = min(BACKOFF_CAP, BACKOFF_START * 2 ** attempt)
        assert 0.75 * ceiling <= delay <= ceiling  # jittered down by at most a quarter
    assert max(delays) <= BACKOFF_CAP
    assert delays[-1] >= 0.75 * BACKOFF_CAP  # capped, not still doubling


# -- surveys ----------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_surveys_hear_every_process_and_group_sizes_add_them_up(two_layers, redis_server):
    import uuid

    url = f"{redis_server.url}?prefix=survey{uuid.uuid4().hex[:8]}"
    one, two = await two_layers(url), await two_layers(url)
    a1, a2, b = one.attach(Probe()), one.attach(Probe()), two.attach(Probe())
    await one.group_add("room.1", a1)
    await one.group_add("room.1", a2)
    await two.group_add("room.1", b)
    await two.group_add("room.2", b)
    await one.group_add("lobby", a1)
    assert await one.group_sizes("room.") == {"room.1": 3, "room.2": 1}
    assert await two.group_sizes() == {"room.1": 3, "room.2": 1, "lobby": 1}
    one.detach(a2)
    two.detach(b)
    assert await two.group_sizes("room.") == {"room.1": 1}
    assert await one.survey("tests.nobody.asks") == {one.process_id: None,
                                                      two.process_id: None}
    with pytest.raises(TypeError):
        await one.survey("tests.args", object())  # not a msgpack value


@pytest_twisted.ensureDeferred
async def test_a_survey_leaves_out_a_subscriber_that_never_answers(two_layers, redis_server):
    """Something else subscribed to the surveys topic (a process that hangs, a tool) is
    waited for PRESENCE_TIMEOUT, then left out: the survey still answers."""
    import socket
    import uuid

    from twisted.internet import reactor

    prefix = f"survey{uuid.uuid4().hex[:8]}"
    one = await two_layers(f"{redis_server.url}?prefix={prefix}")
    two = await two_layers(f"{redis_server.url}?prefix={prefix}")
    topic = f"{prefix}:0:s".encode()
    mute = socket.create_connection(("127.0.0.1", redis_server.port))
    try:
        mute.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(topic), topic))
        assert mute.recv(1024).startswith(b"*3\r\n$9\r\nsubscribe")
        one.presence_timeout = 0.3
        started = reactor.seconds()
        answers = await one.survey("tests.nobody.asks")
        assert answers == {one.process_id: None, two.process_id: None}
        assert reactor.seconds() - started >= 0.3  # it waited for the silent one
    finally:
        mute.close()


@pytest_twisted.ensureDeferred
async def test_a_survey_fails_at_once_while_redis_is_away():
    port = free_port()
    layer = RedisChannelLayer.from_url(f"redis://127.0.0.1:{port}/0")
    from twisted.internet import reactor

    layer.start(reactor)
    try:
        with pytest.raises(LayerUnavailable):
            await layer.group_sizes()
    finally:
        await layer.close()


# -- surveys: review 1's reproductions (each failed before its fix) -------------------------

def _prefix() -> str:
    return f"survey{uuid.uuid4().hex[:8]}"


def _raw(port: int, *args: bytes) -> socket.socket:
    """A plain Redis connection of our own that sends one command (a 'tool')."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    sock.sendall(b"".join(parts))
    return sock


@pytest_twisted.ensureDeferred
async def test_a_pattern_subscriber_does_not_make_every_survey_wait(two_layers, redis_server):
    """Correct: a survey waits for the processes subscribed to the surveys topic, as
    ``group_presence`` does (``_ASK_SCRIPT``: PUBSUB NUMSUB, then PUBLISH, precisely so
    that a monitoring ``PSUBSCRIBE realtime:*`` is not waited for). Now: survey() uses
    PUBLISH's reply, which counts pattern subscribers too, so with any PSUBSCRIBE matching
    the topic every survey (info, channels, group_sizes) waits the whole presence_timeout
    and logs that a process did not answer."""
    from twisted.internet import reactor

    prefix = _prefix()
    one = await two_layers(f"{redis_server.url}?prefix={prefix}")
    two = await two_layers(f"{redis_server.url}?prefix={prefix}")
    tool = _raw(redis_server.port, b"PSUBSCRIBE", f"{prefix}:*".encode())
    try:
        assert tool.recv(1024).startswith(b"*3\r\n$10\r\npsubscribe")
        one.presence_timeout = 1.0
        started = reactor.seconds()
        answers = await one.survey("tests.survey.nobody")
        elapsed = reactor.seconds() - started
        assert answers == {one.process_id: None, two.process_id: None}
        assert elapsed < 0.5, f"waited {elapsed:.2f} s for a pattern subscriber"
    finally:
        tool.close()


@pytest_twisted.ensureDeferred
async def test_an_answer_msgpack_cannot_carry_is_none_at_once(two_layers, redis_server):
    """Correct: an answer msgpack cannot carry (an object, an int past 64 bits) is treated
    like an answer that raises: that process answers None (logged), at once; the asker
    neither waits presence_timeout nor loses the process (the in-memory layer does answer
    it). Now: packb raises in ``_on_survey`` inside the subscriber's message handler
    (logged as 'cannot handle a message on ...:s'), no answer is published, and every such
    survey waits presence_timeout and leaves every process out ({})."""
    from twisted.internet import reactor

    on_survey("tests.survey.object", lambda layer, args: object())
    on_survey("tests.survey.bigint", lambda layer, args: {"n": 2 ** 70})
    prefix = _prefix()
    one = await two_layers(f"{redis_server.url}?prefix={prefix}")
    two = await two_layers(f"{redis_server.url}?prefix={prefix}")
    one.presence_timeout = 1.0
    for name in ("tests.survey.object", "tests.survey.bigint"):
        started = reactor.seconds()
        answers = await one.survey(name)
        elapsed = reactor.seconds() - started
        assert answers == {one.process_id: None, two.process_id: None}, (name, answers)
        assert elapsed < 0.5, (name, elapsed)


@pytest_twisted.ensureDeferred
async def test_survey_args_past_64_bits_are_a_failed_deferred(two_layers, redis_server):
    """Correct: args msgpack cannot carry give a failed Deferred (TypeError, as for
    ``object()``), like every other layer method. Now: msgpack raises OverflowError for
    an int past 64 bits, which ``survey`` does not catch (only TypeError, ValueError): it
    escapes synchronously from survey() instead."""
    layer = await two_layers(f"{redis_server.url}?prefix={_prefix()}")
    try:
        d = layer.survey("tests.survey.args", 2 ** 70)
    except OverflowError:
        pytest.fail("survey() raised OverflowError instead of returning a failed Deferred")
    with pytest.raises(TypeError):
        await d


@pytest_twisted.ensureDeferred
async def test_a_large_answer_does_not_cut_the_askers_subscriber(two_layers, redis_server):
    """Correct: a survey whose answers are large (``channels`` or ``group_sizes("")`` on
    a big deployment, any question's answer: 'any value msgpack carries') either answers
    or fails alone; it does not take the asker's subscriber connection down. Now: each
    answer is one PUBLISH to the asker's process topic, and one past Redis's default
    ``client-output-buffer-limit pubsub 32mb`` makes Redis close the asker's subscriber:
    the survey fails with LayerUnavailable, and every group of that process gets a
    layer.gap (messages lost) and a resubscribe."""
    on_survey("tests.survey.huge", lambda layer, args: "x" * (40 * 1024 * 1024)
              if args == layer.process_id else None)
    prefix = _prefix()
    one = await two_layers(f"{redis_server.url}?prefix={prefix}")
    two = await two_layers(f"{redis_server.url}?prefix={prefix}")
    reconnects = one.reconnects
    lost = None
    try:
        answers = await one.survey("tests.survey.huge", two.process_id)
    except LayerUnavailable as exc:
        lost = exc
        answers = None
    assert lost is None, f"the asker's subscriber was cut: {lost}"
    assert answers is not None and set(answers) == {one.process_id, two.process_id}
    assert one.reconnects == reconnects
