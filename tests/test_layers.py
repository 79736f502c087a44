"""The channel-layer API (DESIGN.md "Channel layer"), against every layer kind, through real
consumers driven by the in-memory communicator and by real clients on a live server."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from realtime import (
    AsyncWebsocketConsumer,
    JsonWebsocketConsumer,
    URLRouter,
    WebsocketConsumer,
    path,
)
from realtime.config import ServerConfig
from realtime.layers import ChannelFull, InMemoryChannelLayer
from realtime.testing import WebsocketCommunicator


async def until(condition, timeout=5.0):
    """Poll (bounded) until ``condition()`` holds; layers that cross processes need turns."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


class ChatConsumer(AsyncWebsocketConsumer):
    """The Channels tutorial's room consumer, unchanged but for the imports."""

    async def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data):
        import json

        text_data_json = json.loads(text_data)
        message = text_data_json["message"]
        await self.channel_layer.group_send(
            self.room_group_name, {"type": "chat.message", "message": message}
        )

    async def chat_message(self, event):
        import json

        message = event["message"]
        await self.send(text_data=json.dumps({"message": message}))


class Members(WebsocketConsumer):
    groups = ["everyone"]

    def receive(self, text_data=None, bytes_data=None):
        if text_data == "unknown":
            self.channel_layer.group_send("everyone", {"type": "no.such.handler"})
        elif text_data == "name":
            self.send(text_data=self.channel_name)
        else:
            self.channel_layer.group_send("everyone", {"type": "shout", "text": text_data})

    def shout(self, event):
        self.send(text_data="shout:" + event["text"])

    def direct(self, event):
        self.send(text_data="direct:" + event["text"])


class Broadcaster(JsonWebsocketConsumer):
    def connect(self):
        self.channel_layer.group_add("room", self.channel_name)
        self.accept()

    def receive_json(self, content, **kwargs):
        self.channel_layer.broadcast("room", text=content["say"])


app = URLRouter(
    [
        path("chat/<str:room_name>/", ChatConsumer.as_asgi()),
        path("members", Members.as_app()),
        path("broadcast", Broadcaster.as_app()),
    ]
)


def comm(layer, route, **kw):
    c = WebsocketCommunicator(app, route, **kw)
    c.site.layer = layer
    return c


@pytest_twisted.ensureDeferred
async def test_channels_tutorial_room_consumer(layer):
    a, b = comm(layer, "/chat/lobby/"), comm(layer, "/chat/lobby/")
    other = comm(layer, "/chat/elsewhere/")
    for c in (a, b, other):
        assert (await c.connect())[0]
    await until(lambda: len(layer.local_members("chat_lobby")) == 2)
    await a.send_to(text_data='{"message": "hello"}')
    assert await a.receive_json_from() == {"message": "hello"}
    assert await b.receive_json_from() == {"message": "hello"}
    assert await other.receive_nothing()
    for c in (a, b, other):
        await c.disconnect()
    assert layer.local_members("chat_lobby") == []


@pytest_twisted.ensureDeferred
async def test_groups_attribute_typed_dispatch_and_missing_handler(layer):
    a, b = comm(layer, "/members"), comm(layer, "/members")
    await a.connect()
    await b.connect()
    await until(lambda: len(layer.local_members("everyone")) == 2)
    await a.send_to(text_data="hi")
    assert await a.receive_from() == "shout:hi"
    assert await b.receive_from() == "shout:hi"
    # An event type with no handler is dropped; the socket stays open.
    await a.send_to(text_data="unknown")
    assert await a.receive_nothing(0.2)
    await a.send_to(text_data="still here")
    assert await b.receive_from() == "shout:still here"
    assert a.close_code is None
    await a.disconnect()
    await b.disconnect()
    # Members are removed from their groups when their consumer ends.
    assert layer.local_members("everyone") == []


@pytest_twisted.ensureDeferred
async def test_send_to_a_channel_name_reaches_that_consumer(layer):
    a = comm(layer, "/members")
    await a.connect()
    await a.send_to(text_data="name")
    name = await a.receive_from()
    assert name.startswith("specific.")
    await layer.send(name, {"type": "direct", "text": "psst"})
    assert await a.receive_from() == "direct:psst"
    await a.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_send_to_a_gone_consumers_channel_is_dropped_not_kept(layer):
    """A consumer's channel (``attach``) is never received from once it is detached: what
    is sent to it later (a stored ``channel_name``, a sid, ``POST /api/send``) is dropped and
    counted, not queued for ever, and past the capacity it is no ``ChannelFull``. A
    ``new_channel()`` name still queues until a ``receive()``."""
    gone = layer.attach(_Member())
    layer.detach(gone)
    before = layer.stats.dropped
    for n in range(layer.capacity + 3):
        await layer.send(gone, {"type": "late", "n": n})
    assert gone not in layer._queues
    assert layer.stats.dropped == before + layer.capacity + 3
    reply = await layer.new_channel()
    await layer.send(reply, {"type": "answer"})
    assert (await layer.receive(reply))["type"] == "answer"


@pytest_twisted.ensureDeferred
async def test_a_queue_nobody_reads_expires_as_channels_messages_do():
    """A ``receive()`` channel whose reader went away (or a name nothing reads, through
    ``POST /api/send``) keeps its messages ``expiry`` seconds after its last one, as
    Channels' layers do, not for the life of the process; a queue still being sent to,
    or read, stays."""
    from twisted.internet.task import Clock

    clock = Clock()
    layer = InMemoryChannelLayer(reactor=clock)
    stale, busy = await layer.new_channel(), await layer.new_channel()
    for n in range(3):
        await layer.send(stale, {"type": "note", "n": n})
    clock.advance(layer.expiry / 2)
    await layer.send(busy, {"type": "note", "n": 0})
    clock.advance(layer.expiry / 2 + 1)
    before = layer.stats.dropped
    await layer.send(busy, {"type": "note", "n": 1})  # a queued message sweeps
    assert stale not in layer._queues and stale not in layer._queued_at
    assert layer.stats.dropped == before + 3
    waiting = layer.receive(stale)
    assert not waiting.called
    waiting.cancel()
    waiting.addErrback(lambda f: None)
    assert [(await layer.receive(busy))["n"] for _ in range(2)] == [0, 1]
    assert busy not in layer._queued_at  # read empty: nothing left to expire


@pytest_twisted.ensureDeferred
async def test_new_channel_receive_and_group_send_outside_consumers(layer):
    channel = await layer.new_channel()
    await layer.group_add("outside", channel)
    await layer.group_send("outside", {"type": "note", "n": 1})
    await layer.send(channel, {"type": "note", "n": 2})
    first = await layer.receive(channel)
    second = await layer.receive(channel)
    assert [first["n"], second["n"]] == [1, 2]
    waiting = layer.receive(channel)
    assert not waiting.called
    await layer.send(channel, {"type": "note", "n": 3})
    assert (await waiting)["n"] == 3
    await layer.group_discard("outside", channel)
    await layer.group_send("outside", {"type": "note", "n": 4})
    later = layer.receive(channel)
    assert not later.called
    later.cancel()
    later.addErrback(lambda f: None)


@pytest.mark.parametrize(
    "name", ["", "has space", "ünïcode", "x" * 100, 12, None, "semi;colon"]
)
@pytest_twisted.ensureDeferred
async def test_bad_names_are_type_errors(layer, name):
    for call in (
        lambda: layer.group_add(name, "ok"),
        lambda: layer.group_add("ok", name),
        lambda: layer.group_send(name, {"type": "x"}),
        lambda: layer.send(name, {"type": "x"}),
    ):
        with pytest.raises(TypeError):
            await call()


@pytest_twisted.ensureDeferred
async def test_bad_messages_are_type_errors(layer):
    for message in ({}, {"type": 3}, "text", None):
        with pytest.raises(TypeError):
            await layer.group_send("ok", message)


@pytest_twisted.ensureDeferred
async def test_broadcast_writes_one_frame_to_every_open_member(layer):
    members = [comm(layer, "/broadcast") for _ in range(4)]
    for c in members:
        await c.connect()
    await until(lambda: len(layer.local_members("room")) == 4)
    await members[2].disconnect()
    await members[0].send_json_to({"say": "to all"})
    for i, c in enumerate(members):
        if i == 2:
            continue
        assert await c.receive_from() == "to all"
    await layer.broadcast("room", bytes=b"\x00\x01")
    assert await members[3].receive_from() == b"\x00\x01"
    with pytest.raises(ValueError):
        await layer.broadcast("room", text="a", bytes=b"b")
    for c in members:
        await c.disconnect()


@pytest_twisted.ensureDeferred
async def test_memory_layer_capacity():
    layer = InMemoryChannelLayer(capacity=2)
    await layer.send("work", {"type": "t"})
    await layer.send("work", {"type": "t"})
    with pytest.raises(ChannelFull):
        await layer.send("work", {"type": "t"})
    # group_send never raises at capacity: it skips and counts.
    await layer.group_add("g", "work")
    await layer.group_send("g", {"type": "t"})
    assert layer.stats.dropped >= 1
    await layer.flush()
    assert layer.local_members("g") == []


@pytest_twisted.ensureDeferred
async def test_memory_layer_group_send_cost_does_not_grow_with_unrelated_channels():
    """No expiry scans: a group_send touches only that group's members (Daphne's walks
    every channel). 10,000 idle channels with queued messages beside a 2-member group."""
    layer = InMemoryChannelLayer()
    for i in range(10_000):
        await layer.send(f"idle{i}", {"type": "t"})
    seen: list[Any] = []

    class Probe:
        def deliver(self, event):
            seen.append(event)

        def deliver_frame(self, frame):
            return True

    a, b = layer.attach(Probe()), layer.attach(Probe())
    await layer.group_add("pair", a)
    await layer.group_add("pair", b)
    calls = []
    original = layer._deliver_local

    def counting(channel, message):
        calls.append(channel)
        return original(channel, message)

    layer._deliver_local = counting
    await layer.group_send("pair", {"type": "t"})
    assert sorted(calls) == sorted([a, b])
    assert len(seen) == 2


# -- backpressure: the slow-consumer policy, against a real server and a stalled client ----------

class Flood(AsyncWebsocketConsumer):
    """Joins 'flood'; "N SIZE" makes it broadcast N frames of SIZE bytes, one per reactor
    turn (a publisher over time, not one synchronous burst)."""

    codes: list = []

    async def connect(self):
        await self.channel_layer.group_add("flood", self.channel_name)
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        count, size = map(int, text_data.split())
        payload = b"x" * size
        for _ in range(count):
            await self.channel_layer.broadcast("flood", bytes=payload)
            await deferLater(reactor, 0, lambda: None)

    async def disconnect(self, code):
        type(self).codes.append(code)


flood_app = URLRouter([path("flood", Flood.as_app())])


@pytest.mark.parametrize("policy", ["close", "drop"])
@pytest_twisted.ensureDeferred
async def test_slow_member_is_handled_by_the_policy_and_fast_members_keep_up(live, policy):
    from tests.clients import after_headers, client_frame, handshake, raw_connect

    Flood.codes = []
    server = await live(flood_app, max_send_buffer=256 * 1024, slow_consumer=policy)
    stalled = await raw_connect(server.port)
    stalled.write(handshake("/flood"))
    await stalled.wait_for(lambda d: b"\r\n\r\n" in d)
    stalled.stop_reading()  # the server's writes back up
    fast = await raw_connect(server.port)
    fast.write(handshake("/flood"))
    await fast.wait_for(lambda d: b"\r\n\r\n" in d)
    site = server.site
    # 12 MB towards the stalled member, 64 KiB at a time.
    total = 12 * 1024 * 1024
    size = 64 * 1024
    fast.write(client_frame(0x1, f"{total // size} {size}".encode()))
    expected = total + (total // size) * 4  # payload + 4-byte headers (64 KiB frames)
    got = await fast.wait_for(lambda d: len(after_headers(d)) >= expected, timeout=30)
    assert len(after_headers(got)) >= expected  # the fast member got everything
    if policy == "close":
        await until(lambda: site.slow_consumer_closes == 1, timeout=10)
        await until(lambda: 4008 in Flood.codes, timeout=10)
        assert len(site.connections) == 1  # the stalled member is gone, the fast one stays
    else:
        assert site.dropped_messages > 0
        assert site.slow_consumer_closes == 0
        # Both stay open; the stalled member's server-side queue stays bounded by the
        # limit (+ one frame) while everything past it is dropped.
        assert len(site.connections) == 2
        assert max(conn._outq_bytes for conn in site.connections) > 0  # it did back up
        for conn in site.connections:
            assert conn._outq_bytes <= 256 * 1024 + size + 16
    stalled.abort()
    fast.abort()


@pytest_twisted.ensureDeferred
async def test_one_large_send_to_an_idle_client_still_goes_out(live):
    from realtime import WebsocketConsumer as WC

    class Big(WC):
        def receive(self, text_data=None, bytes_data=None):
            self.send(bytes_data=b"y" * (3 * 1024 * 1024))

    server = await live(URLRouter([path("big", Big.as_app())]), max_send_buffer=1024)
    from tests.clients import in_thread

    def client():
        from websockets.sync.client import connect

        with connect(server.ws_url("/big"), max_size=None) as ws:
            ws.send("go")
            return len(ws.recv(timeout=10))

    assert await in_thread(client) == 3 * 1024 * 1024


def test_server_config_validates_the_policy():
    with pytest.raises(ValueError):
        ServerConfig(slow_consumer="block")
    Deferred()  # keep the import used


# -- surveys: group_sizes ---------------------------------------------------------------------

class _Member:
    """A receiver that takes nothing (group_sizes counts members, it delivers nothing)."""

    _held_seq = -1
    _held_count = 0

    def deliver(self, event: dict[str, Any]) -> None:
        pass

    def deliver_frame(self, frame: bytes) -> bool:
        return True

    def deliver_joined(self, joined: bytes) -> bool:
        return True

    def close_from_layer(self, code: int, reason: str | None) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_group_sizes_counts_members_by_prefix_and_forgets_those_gone():
    from realtime.layers.base import on_survey

    layer = InMemoryChannelLayer()
    a, b = layer.attach(_Member()), layer.attach(_Member())
    await layer.group_add("room.1", a)
    await layer.group_add("room.1", b)
    await layer.group_add("room.2", b)
    await layer.group_add("lobby", a)
    await layer.group_add("room.1", "worker-channel")  # a named channel is a member too
    assert await layer.group_sizes("room.") == {"room.1": 3, "room.2": 1}
    assert await layer.group_sizes() == {"room.1": 3, "room.2": 1, "lobby": 1}
    layer.detach(b)
    assert await layer.group_sizes("room.") == {"room.1": 2}
    with pytest.raises(TypeError):
        await layer.group_sizes(b"room.")  # type: ignore[arg-type]
    # A question nobody answers here is None; an answer that fails is None (and logged).
    assert await layer.survey("tests.nobody.asks") == {layer.process_id: None}

    def broken(layer: Any, args: Any) -> Any:
        raise RuntimeError("boom")

    on_survey("tests.broken", broken)
    assert await layer.survey("tests.broken") == {layer.process_id: None}
