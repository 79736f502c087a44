"""Presence: ``group_add(group, channel, presence=info)``, ``group_presence(group)``, the
``presence.join``/``presence.leave`` events, ``POST /api/presence``. On both layers (the
Redis one on a real redis-server; two layer instances stand for two processes), and with
real clients against a live server."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from websockets.sync.client import connect

from realtime import AsyncJsonWebsocketConsumer, URLRouter, path
from realtime.client import PublishError
from realtime.client import presence as presence_api
from tests.clients import in_thread
from tests.test_layers import until
from tests.test_layers_redis import Probe, two_layers  # noqa: F401 (fixture)

# -- the layer API, on every layer -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_presence_lists_members_added_with_info_and_tells_the_group(layer):
    a, b, c = Probe(), Probe(), Probe()
    ca, cb, cc = layer.attach(a), layer.attach(b), layer.attach(c)
    await layer.group_add("room", cc)  # a member, not in the presence
    await layer.group_add("room", ca, presence={"user": "ada"})
    await layer.group_add("room", cb, presence={"user": "bob", "tabs": 2})
    assert await layer.group_presence("room") == {ca: {"user": "ada"},
                                                  cb: {"user": "bob", "tabs": 2}}
    assert await layer.group_presence("empty") == {}
    # Every member hears each join (the new member too), in order.
    await until(lambda: len(c.events) == 2 and len(a.events) == 2 and len(b.events) == 1)
    assert c.events == [
        {"type": "presence.join", "group": "room", "channel": ca, "info": {"user": "ada"}},
        {"type": "presence.join", "group": "room", "channel": cb,
         "info": {"user": "bob", "tabs": 2}},
    ]
    # group_discard and a consumer's end both leave the presence, and tell the others.
    await layer.group_discard("room", ca)
    layer.detach(cb)
    await until(lambda: len(c.events) == 4)
    assert [(e["type"], e["channel"], e["info"]) for e in c.events[2:]] == [
        ("presence.leave", ca, {"user": "ada"}), ("presence.leave", cb, {"user": "bob", "tabs": 2})]
    assert await layer.group_presence("room") == {}
    assert a.events[-1]["type"] == "presence.join"  # ca left: it hears no more of the room


@pytest_twisted.ensureDeferred
async def test_presence_is_checked_and_copied(layer):
    channel = layer.attach(Probe())
    with pytest.raises(TypeError, match="presence must be a dict"):
        await layer.group_add("room", channel, presence=["ada"])
    with pytest.raises(TypeError, match="JSON values"):
        await layer.group_add("room", channel, presence={"avatar": b"\x89PNG"})
    with pytest.raises(TypeError):
        await layer.group_presence("bad group!")
    assert layer.local_members("room") == []
    info = {"user": "ada", "tabs": [1]}
    await layer.group_add("room", channel, presence=info)
    info["tabs"].append(2)
    assert await layer.group_presence("room") == {channel: {"user": "ada", "tabs": [1]}}


@pytest_twisted.ensureDeferred
async def test_joins_are_announced_once_per_info_and_can_be_silent(layer):
    watcher, a, b = Probe(), Probe(), Probe()
    cw, ca, cb = layer.attach(watcher), layer.attach(a), layer.attach(b)
    await layer.group_add("room", cw)
    await layer.group_add("room", ca, presence={"user": "ada"})
    await layer.group_add("room", ca, presence={"user": "ada"})  # the same: no new join
    await layer.group_add("room", ca)  # without presence: it stays as it was
    await layer.group_add("room", ca, presence={"user": "ada", "away": True})  # changed
    await layer.group_add("room", cb, presence={"user": "bob"}, announce=False)
    await until(lambda: len(watcher.events) == 2)
    assert [e["info"] for e in watcher.events] == [{"user": "ada"},
                                                   {"user": "ada", "away": True}]
    assert await layer.group_presence("room") == {ca: {"user": "ada", "away": True},
                                                  cb: {"user": "bob"}}
    layer.detach(cb)  # silent: no leave either
    layer.detach(ca)
    await until(lambda: len(watcher.events) == 3)
    assert watcher.events[2]["type"] == "presence.leave"
    assert watcher.events[2]["channel"] == ca
    assert await layer.group_presence("room") == {}


@pytest_twisted.ensureDeferred
async def test_announce_stays_as_first_given_so_joins_and_leaves_pair(layer):
    watcher, quiet = Probe(), Probe()
    cw, cq = layer.attach(watcher), layer.attach(quiet)
    await layer.group_add("room", cw)
    await layer.group_add("room", cq, presence={"user": "q"}, announce=False)
    await layer.group_add("room", cq, presence={"user": "q"}, announce=True)
    await layer.group_add("room", cq, presence={"user": "q2"}, announce=True)
    assert await layer.group_presence("room") == {cq: {"user": "q2"}}
    layer.detach(cq)
    assert await layer.group_presence("room") == {}
    assert watcher.events == []


@pytest.mark.parametrize("info", [{"score": float("nan")}, {"big": 2**64},
                                  {"deep": __import__("functools").reduce(
                                      lambda inner, _: [inner], range(100_000), [])}],
                         ids=["nan", "int past 64 bits", "too deep"])
@pytest_twisted.ensureDeferred
async def test_info_that_cannot_cross_processes_is_refused(layer, info):
    channel = layer.attach(Probe())
    with pytest.raises(TypeError, match="JSON values"):
        await layer.group_add("room", channel, presence=info)
    assert await layer.group_presence("room") == {}


@pytest_twisted.ensureDeferred
async def test_a_channel_from_new_channel_can_be_in_the_presence(layer):
    """Not only consumers: a worker's ``new_channel()`` (no receiver attached)."""
    channel = await layer.new_channel()
    await layer.group_add("workers", channel, presence={"role": "thumbnails"})
    assert await layer.group_presence("workers") == {channel: {"role": "thumbnails"}}


# -- across processes (Redis) -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_presence_across_processes_asks_only_live_ones(two_layers,  # noqa: F811
                                                             redis_server):
    one, two = await two_layers(), await two_layers()
    third = await two_layers()  # no member: not asked, and it can ask
    a, b, b2 = Probe(), Probe(), Probe()
    ca, cb, cb2 = one.attach(a), two.attach(b), two.attach(b2)
    await one.group_add("hall", ca, presence={"user": "ada"})
    await two.group_add("hall", cb, presence={"user": "bob"})
    await two.group_add("hall", cb2)
    expected = {ca: {"user": "ada"}, cb: {"user": "bob"}}
    for layer in (one, two, third):
        assert await layer.group_presence("hall") == expected
    # Joins are group events: members in every process hear them, from then on.
    await until(lambda: len(a.events) == 2)
    assert [(e["type"], e["channel"]) for e in a.events] == [("presence.join", ca),
                                                             ("presence.join", cb)]
    assert [e["channel"] for e in b.events] == [cb] and b2.events == []
    # A remote group_add with presence (process three adds process one's channel).
    a2 = Probe()
    ca2 = one.attach(a2)
    await third.group_add("hall", ca2, presence={"user": "ada", "tab": 2})
    assert (await third.group_presence("hall"))[ca2] == {"user": "ada", "tab": 2}
    # A process that goes away (its connections closed, as at a crash) is not asked any
    # more: its members leave the presence with no expiry to wait for.
    await two.close()
    topic = one._group_topic + "hall"
    await until(lambda: redis_server.call("PUBSUB", "NUMSUB", topic) == [topic, ":1"])
    assert await third.group_presence("hall") == {ca: {"user": "ada"},
                                                  ca2: {"user": "ada", "tab": 2}}
    with pytest.raises(TypeError, match="JSON values"):
        await one.group_add("hall", ca, presence={"when": object()})


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class RawRedis:
    """A bare connection to the test's redis-server: a subscriber that is not a layer (a
    monitoring tool, a process of an older version), or a publisher of raw payloads."""

    def __init__(self, redis_server: Any) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", redis_server.port), timeout=5)
        self.buffer = b""

    def send(self, *args: bytes) -> None:
        self.sock.sendall(_resp(*args))

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buffer += chunk
        return self.buffer

    def close(self) -> None:
        self.sock.close()


def _last_bulk(data: bytes) -> bytes:
    """The last bulk string of a pub/sub ``message`` reply in ``data``."""
    _, _, rest = data.rpartition(b"\r\n$")
    size, _, body = rest.partition(b"\r\n")
    return body[: int(size)]


def _bulk_with(data: bytes, marker: bytes) -> bytes:
    """The first bulk string in ``data`` that contains ``marker`` (other messages, such as
    the answers to a process's own presence question, may follow it on the topic)."""
    for part in data.split(b"\r\n$")[1:]:
        size, _, body = part.partition(b"\r\n")
        if marker in body[: int(size)]:
            return body[: int(size)]
    raise AssertionError(f"no message with {marker!r}")


@pytest_twisted.ensureDeferred
async def test_control_messages_stay_readable_by_older_processes(two_layers,  # noqa: F811
                                                               redis_server):
    """A group_add for another process's channel is five fields, as before presence (an
    older process reads exactly five); with presence two more follow. And a five-field one
    from an older process is still understood."""
    import msgpack

    one, two = await two_layers(), await two_layers()
    b = Probe()
    cb = two.attach(b)
    tap = RawRedis(redis_server)
    topic = (two._process_topic + two.process_id).encode()
    try:
        tap.send(b"SUBSCRIBE", topic)
        tap.read_until(b":1\r\n")
        await one.group_add("plain", cb)
        body = msgpack.unpackb(_last_bulk(tap.read_until(b"plain")), raw=False)
        assert len(body) == 5 and body[1:3] == ["plain", cb]
        await one.group_add("shown", cb, presence={"user": "bob"})
        body = msgpack.unpackb(_bulk_with(tap.read_until(b"shown"), b"shown"), raw=False)
        assert body[1:3] == ["shown", cb] and body[5:] == [{"user": "bob"}, True]
        assert await one.group_presence("shown") == {cb: {"user": "bob"}}
        old = RawRedis(redis_server)
        old.send(b"PUBLISH", topic, msgpack.packb([4, "from-old", cb, "0ld0ld0ld0ld", 0]))
        old.read_until(b"\r\n")
        old.close()
        await until(lambda: two.local_members("from-old") == [cb])
    finally:
        tap.close()


@pytest_twisted.ensureDeferred
async def test_a_subscriber_that_never_answers_is_waited_for_then_left_out(
        two_layers, redis_server):  # noqa: F811
    from tests.clients import captured_log

    one = await two_layers()
    one.presence_timeout = 0.3
    a = Probe()
    ca = one.attach(a)
    await one.group_add("hall", ca, presence={"user": "ada"})
    monitor, silent = RawRedis(redis_server), RawRedis(redis_server)
    try:
        # A pattern subscriber (a monitoring tool) is not counted: no wait at all.
        monitor.send(b"PSUBSCRIBE", b"realtime:*")
        monitor.read_until(b":1\r\n")
        one.presence_timeout = 30.0
        asked = one.group_presence("hall")
        await until(lambda: asked.called)
        assert await asked == {ca: {"user": "ada"}}
        # A subscriber of the topic itself that never answers: waited for, then left out.
        one.presence_timeout = 0.3
        silent.send(b"SUBSCRIBE", (one._group_topic + "hall").encode())
        silent.read_until(b":1\r\n")
        with captured_log() as events:
            assert await one.group_presence("hall") == {ca: {"user": "ada"}}
        assert any("did not answer" in str(e.get("log_format", "")) for e in events)
    finally:
        monitor.close()
        silent.close()


@pytest_twisted.ensureDeferred
async def test_a_question_in_flight_fails_when_the_layer_closes(redis_server):
    from twisted.internet import reactor

    from realtime.layers import LayerUnavailable
    from tests.redis_support import started_layer

    layer = await started_layer(redis_server.url)
    layer.presence_timeout = 30.0
    silent = RawRedis(redis_server)
    try:
        silent.send(b"SUBSCRIBE", (layer._group_topic + "hall").encode())
        silent.read_until(b":1\r\n")
        asked = layer.group_presence("hall")
        await until(lambda: layer._censuses and next(iter(layer._censuses.values())).timer)
        await layer.close()
        with pytest.raises(LayerUnavailable):
            await asked
        assert layer._censuses == {}
        assert not [c for c in reactor.getDelayedCalls()
                    if getattr(c.func, "__name__", "") == "timed_out"]
    finally:
        silent.close()


@pytest_twisted.ensureDeferred
async def test_asked_while_its_own_subscribe_is_in_flight(two_layers):  # noqa: F811
    """``group_presence`` right after a ``group_add`` not awaited: this process's SUBSCRIBE
    is answered first, so its own member is counted."""
    one = await two_layers()
    ca = one.attach(Probe())
    joined = one.group_add("fresh", ca, presence={"user": "ada"})
    assert "fresh" in one._sub_pending
    assert await one.group_presence("fresh") == {ca: {"user": "ada"}}
    await joined


@pytest_twisted.ensureDeferred
async def test_a_group_joined_while_resubscribing_is_subscribed(two_layers):  # noqa: F811
    """A group that gets its first member while the subscriber's SUBSCRIBEs are in flight
    after a reconnect is subscribed once they are answered (it was left out for good)."""
    one, two = await two_layers(), await two_layers()
    a = Probe()
    ca = one.attach(a)
    proto = one._sub.proto
    one._sub_down()  # what a lost connection does, then its reconnect: on the live one
    one._sub_up(proto)
    await one.group_add("late", ca)  # _subscribe sees the subscriber not ready yet
    await until(lambda: one.ready)
    await until(lambda: "late" in one._subscribed)
    await two.group_send("late", {"type": "hello"})
    await until(lambda: [e["type"] for e in a.events if e["type"] == "hello"] == ["hello"])


@pytest_twisted.ensureDeferred
async def test_presence_while_redis_is_unreachable_fails_at_once(redis_server):
    from realtime.layers import LayerUnavailable
    from realtime.layers.redis import RedisChannelLayer
    from tests.redis_support import free_port

    layer = RedisChannelLayer.from_url(f"redis://127.0.0.1:{free_port()}/0")
    layer.start()
    try:
        with pytest.raises(LayerUnavailable):
            await layer.group_presence("hall")
        assert layer.stats.unavailable == 1
        # Over HTTP: 503 with Retry-After.
        from realtime.config import ServerConfig
        from realtime.testing import serve

        server = await serve(application, ServerConfig(api_keys=(KEY,)), layer=layer)
        try:
            with pytest.raises(PublishError) as info:
                await in_thread(presence_api, server.http_url("/"), KEY, "hall")
            assert info.value.status == 503
        finally:
            await server.stop()
    finally:
        await layer.close()


# -- consumers and the HTTP API on a live server ----------------------------------------------


class Lobby(AsyncJsonWebsocketConsumer):
    """Joins ``lobby`` with its ``?name=`` as presence; passes presence events on."""

    async def connect(self) -> None:
        name = self.scope["query_string"].decode().partition("=")[2]
        await self.accept()
        await self.channel_layer.group_add("lobby", self.channel_name,
                                           presence={"user": name})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if content.get("who"):
            members = await self.channel_layer.group_presence("lobby")
            await self.send_json({"who": sorted(m["user"] for m in members.values())})

    async def presence_join(self, event: dict[str, Any]) -> None:
        await self.send_json({"joined": event["info"]["user"]})

    async def presence_leave(self, event: dict[str, Any]) -> None:
        await self.send_json({"left": event["info"]["user"]})


class Late(AsyncJsonWebsocketConsumer):
    """Joins the presence from disconnect(), after its socket closed (and left its groups):
    the bridge leaves the groups again when the handler is done."""

    async def connect(self) -> None:
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_add("lobby", self.channel_name,
                                           presence={"user": "late"})


class Quiet(AsyncJsonWebsocketConsumer):
    """In the presence without presence handlers: the events are dropped silently."""

    async def connect(self) -> None:
        await self.accept()
        await self.channel_layer.group_add("lobby", self.channel_name, presence={"user": "q"})


application = URLRouter([path("lobby", Lobby.as_asgi()), path("quiet", Quiet.as_asgi()),
                         path("late", Late.as_asgi())])
KEY = "presence-test-key-0123456789"


@pytest_twisted.ensureDeferred
async def test_consumers_see_who_is_there_and_who_comes_and_goes(live):
    from tests.clients import captured_log

    server = await live(application, api_keys=(KEY,))

    def clients() -> list[Any]:
        out = []
        with connect(server.ws_url("/lobby?name=ada")) as ada:
            out.append(json.loads(ada.recv(timeout=5)))  # her own join
            with connect(server.ws_url("/lobby?name=bob")) as bob, \
                    connect(server.ws_url("/quiet")):
                out.append(json.loads(bob.recv(timeout=5)))
                out.append(json.loads(ada.recv(timeout=5)))
                out.append(json.loads(ada.recv(timeout=5)))
                ada.send(json.dumps({"who": True}))
                out.append(json.loads(ada.recv(timeout=5)))
                out.append(presence_api(server.http_url("/"), KEY, "lobby"))
            out.append(json.loads(ada.recv(timeout=5)))
            out.append(json.loads(ada.recv(timeout=5)))
        try:
            presence_api(server.http_url("/"), "wrong-key-0123456789", "lobby")
        except PublishError as exc:
            out.append(exc.status)
        try:
            presence_api(server.http_url("/"), KEY, "not a group!")
        except PublishError as exc:
            out.append(exc.status)
        return out

    with captured_log() as events:
        out = await in_thread(clients)
    assert out[:5] == [{"joined": "ada"}, {"joined": "bob"}, {"joined": "bob"},
                       {"joined": "q"}, {"who": ["ada", "bob", "q"]}]
    api = out[5]
    assert api["group"] == "lobby" and api["count"] == 3
    assert sorted(m["user"] for m in api["members"].values()) == ["ada", "bob", "q"]
    assert all(channel.startswith("specific.") for channel in api["members"])
    assert sorted(map(json.dumps, out[6:8])) == [json.dumps({"left": "bob"}),
                                                 json.dumps({"left": "q"})]
    assert out[8:] == [401, 400]
    # Quiet has no presence handlers: nothing logged about them.
    assert not [e for e in events if "no handler" in str(e.get("log_format", ""))]
    assert await server.site.layer.group_presence("lobby") == {}


@pytest_twisted.ensureDeferred
async def test_chat_demo_across_two_servers_on_redis(two_layers):  # noqa: F811
    """The chat demo on two live servers sharing Redis (as two processes would): a newcomer
    on one learns who is on the other, and the other hears it come and go."""
    from realtime.examples.chat import application as chat
    from realtime.testing import serve

    one, two = await two_layers(), await two_layers()
    first, second = await serve(chat, layer=one), await serve(chat, layer=two)
    try:
        def clients() -> list[Any]:
            out = []
            with connect(first.ws_url("/ws/chat/ops/?name=ada")) as ada:
                out.append(json.loads(ada.recv(timeout=5)))
                with connect(second.ws_url("/ws/chat/ops/?name=bob")) as bob:
                    out.append(sorted(json.dumps(json.loads(bob.recv(timeout=5)))
                                      for _ in range(2)))
                    out.append(json.loads(ada.recv(timeout=5)))
                out.append(json.loads(ada.recv(timeout=5)))
            return out

        out = await in_thread(clients)
    finally:
        await first.stop()
        await second.stop()
    assert out == [
        {"type": "join", "name": "ada"},
        sorted([json.dumps({"type": "join", "name": "bob"}),
                json.dumps({"type": "here", "name": "ada"})]),
        {"type": "join", "name": "bob"},
        {"type": "leave", "name": "bob"},
    ]


@pytest_twisted.ensureDeferred
async def test_a_join_made_after_the_socket_closed_does_not_stay(live):
    server = await live(application)
    layer = server.site.layer

    def clients() -> list[Any]:
        with connect(server.ws_url("/lobby?name=ada")) as ada:
            assert json.loads(ada.recv(timeout=5)) == {"joined": "ada"}
            with connect(server.ws_url("/late")):
                pass
            return [{"joined": "ada"}] + [json.loads(ada.recv(timeout=5)) for _ in range(2)]

    seen = await in_thread(clients)
    assert seen == [{"joined": "ada"}, {"joined": "late"}, {"left": "late"}]
    await until(lambda: layer.local_presence("lobby") == {})
