"""``realtime.pubsub`` across two servers on one real redis-server (tests/redis_support.py
starts it; without ``redis-server`` the tests skip, and fail under ``CI=true``): Centrifugo's
SDK on each, publications, presence, join/leave, history and recovery crossing Redis."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from centrifuge import StreamPosition

from realtime import pubsub
from tests.redis_support import started_layer
from tests.test_pubsub import (  # noqa: F401 (fixtures)
    CHAT,
    RECOVER,
    _settings,
    from_thread,
    pubsub_server,
    run,
    sdk_client,
    subscribed,
    token,
)


@pytest_twisted.async_yield_fixture
async def two_layers(redis_server: Any, realtime_leak_check: Any) -> Any:
    """Two started Redis layers (two servers' worth) on a flushed redis-server, closed
    before the leak check."""
    if not redis_server.ping():  # an earlier test killed the shared server
        redis_server.kill()
        redis_server.start()
    one = await started_layer(redis_server.url)
    two = await started_layer(redis_server.url)
    await one.flush()
    yield one, two
    await one.close()
    await two.close()


@pytest_twisted.ensureDeferred
async def test_publications_presence_and_join_leave_cross_servers(two_layers, pubsub_server):  # noqa: F811
    one, two = two_layers
    first = await pubsub_server(CHAT, layer=one)
    second = await pubsub_server(CHAT, layer=two)

    async def scenario() -> Any:
        ada, _ = sdk_client(first, token("ada"))
        bob, _ = sdk_client(second, token("bob"))
        await ada.connect()
        await bob.connect()
        _, at_ada = await subscribed(ada, "chat:room", join_leave=True)
        _, at_bob = await subscribed(bob, "chat:room")
        joined = await at_ada.next("join")  # her own
        joined = await at_ada.next("join")
        await ada.publish("chat:room", {"from": "one"})
        got = await at_bob.next("publication")
        from_thread(pubsub.publish, "chat:room", "from the server", layer=two)
        server_pub = await at_ada.next("publication")
        server_pub = await at_ada.next("publication")  # her own came first
        stats = await ada.presence_stats("chat:room")
        await bob.disconnect()
        left = await at_ada.next("leave")
        await ada.disconnect()
        return joined, got, server_pub, stats, left

    joined, got, server_pub, stats, left = await run(scenario)
    assert joined.info.user == "bob" and left.info.user == "bob"
    assert got.pub.data == {"from": "one"} and got.pub.info.user == "ada"
    assert server_pub.pub.data == "from the server"
    assert (stats.num_clients, stats.num_users) == (2, 2)


@pytest_twisted.ensureDeferred
async def test_history_and_recovery_cross_servers(two_layers, pubsub_server):  # noqa: F811
    one, two = two_layers
    first = await pubsub_server(RECOVER, layer=one)
    second = await pubsub_server(RECOVER, layer=two)

    async def scenario() -> Any:
        ada, _ = sdk_client(first, token("ada"))
        bob, _ = sdk_client(second, token("bob"))
        await ada.connect()
        await bob.connect()
        _, feed = await subscribed(ada, "feed:x")
        subscribed_ctx = await feed.next("subscribed")
        await ada.disconnect()
        for n in range(3):
            await bob.publish("feed:x", n)
        kept = await bob.history("feed:x", limit=-1)
        await ada.connect()
        again = await feed.next("subscribed")
        missed = [await feed.next("publication") for _ in range(3)]
        await bob.publish("feed:x", "live")
        live = await feed.next("publication")
        since = await ada.history("feed:x", limit=-1, since=StreamPosition(2, kept.epoch))
        for client in (ada, bob):
            await client.disconnect()
        return subscribed_ctx, kept, again, missed, live, since

    subscribed_ctx, kept, again, missed, live, since = await run(scenario)
    assert subscribed_ctx.stream_position.epoch == kept.epoch
    assert [(p.data, p.offset) for p in kept.publications] == [(0, 1), (1, 2), (2, 3)]
    assert (again.was_recovering, again.recovered) == (True, True)
    assert [(m.pub.data, m.pub.offset, m.pub.info.user) for m in missed] == [
        (0, 1, "bob"), (1, 2, "bob"), (2, 3, "bob")]
    assert (live.pub.data, live.pub.offset) == ("live", 4)
    assert [p.data for p in since.publications] == [2, "live"]


@pytest_twisted.ensureDeferred
async def test_protobuf_clients_binary_data_crosses_servers(two_layers, pubsub_server):  # noqa: F811
    """A Protobuf client's binary data through Redis (msgpack carries the bytes), in a
    channel without history (a broadcast frame, translated by the other server for its
    Protobuf client) and in one with history (kept in Redis, recovered byte for byte)."""
    one, two = two_layers
    first = await pubsub_server(CHAT, RECOVER, layer=one)
    second = await pubsub_server(CHAT, RECOVER, layer=two)
    binary = bytes(range(255, -1, -1))

    async def scenario() -> Any:
        ada, _ = sdk_client(first, token("ada"), use_protobuf=True)
        bob, _ = sdk_client(second, token("bob"), use_protobuf=True)
        carl, _ = sdk_client(second, token("carl"))  # JSON
        for client in (ada, bob, carl):
            await client.connect()
        _, at_bob = await subscribed(bob, "chat:room")
        _, at_carl = await subscribed(carl, "chat:room")
        _, feed = await subscribed(bob, "feed:x")
        await feed.next("subscribed")
        await subscribed(ada, "chat:room")
        await ada.publish("chat:room", binary)
        await ada.publish("chat:room", b'{"n": 1}')
        live = [(await at_bob.next("publication")).pub.data for _ in range(2)]
        json_side = [(await at_carl.next("publication")).pub.data for _ in range(2)]
        await bob.disconnect()
        await ada.publish("feed:x", binary)
        await bob.connect()
        again = await feed.next("subscribed")
        missed = await feed.next("publication")
        for client in (ada, bob, carl):
            await client.disconnect()
        return live, json_side, again, missed

    live, json_side, again, missed = await run(scenario)
    assert live == [binary, b'{"n":1}']
    assert json_side == [None, {"n": 1}]
    assert again.recovered and (missed.pub.data, missed.pub.offset) == (binary, 1)


@pytest_twisted.ensureDeferred
async def test_delta_compression_across_servers(two_layers, pubsub_server):  # noqa: F811
    """Publications made on one server reach a delta subscriber on the other as deltas
    (the other process makes them from what Redis brings), and a reconnect to the first
    server recovers whole-then-deltas from the history in Redis."""
    from centrifuge.client import DeltaType

    from tests.test_pubsub_delta import SCORES, board

    one, two = two_layers
    first = await pubsub_server(SCORES, layer=one)
    second = await pubsub_server(SCORES, layer=two)

    async def scenario() -> Any:
        ada, _ = sdk_client(second, token("ada"))
        await ada.connect()
        _, events = await subscribed(ada, "scores:league", delta=DeltaType.FOSSIL)
        got = []
        for n in range(1, 4):
            from_thread(pubsub.publish, "scores:league", board(n, changed=4), layer=one)
            got.append((await events.next("publication")).pub)
        await ada.disconnect()
        for n in range(4, 6):
            from_thread(pubsub.publish, "scores:league", board(n, changed=4), layer=one)
        ada._address = first.ws_url("/connection/websocket")  # back, to the other server
        await ada.connect()
        for _ in range(2):
            got.append((await events.next("publication")).pub)
        await ada.disconnect()
        return got

    got = await run(scenario)
    assert [(pub.data, pub.offset) for pub in got] == [
        (board(n, changed=4), n) for n in range(1, 6)]
    assert [pub.delta for pub in got] == [False, True, True, False, True]
