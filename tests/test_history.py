"""Group history and recovery: ``keep_history``/``--history``, positions on a history
group's messages, ``group_history``, ``group_add(..., since=position)``. On both layers (the
Redis one on a real redis-server; two layer instances stand for two processes)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from realtime.layers import InMemoryChannelLayer
from realtime.layers.history import check_rule, decide, parse_rule
from tests.test_layers import until
from tests.test_layers_redis import Probe, two_layers  # noqa: F401 (fixture)


def fired(d: Any) -> Any:
    """The result of a Deferred the in-memory layer has already fired."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


async def keeping(layer: Any, size: int) -> None:
    """``layer`` keeps ``room.*``'s last ``size`` messages, on a Redis emptied of earlier
    tests' streams (the server is shared by the tests)."""
    await layer.flush()
    layer.keep_history("room.*", size, 60)


async def history_pair(two_layers: Any, size: int) -> tuple[Any, Any]:  # noqa: F811
    """Two Redis layers (two processes) keeping ``room.*``'s last ``size`` messages, on a
    Redis emptied of earlier tests' streams."""
    a, b = await two_layers(), await two_layers()
    await a.flush()
    for layer in (a, b):
        layer.keep_history("room.*", size, 60)
    return a, b


def offsets(probe: Probe) -> list[int]:
    return [e["position"]["offset"] for e in probe.events if "position" in e]


# -- rules -----------------------------------------------------------------------------------

def test_rules_parse_and_say_what_is_wrong():
    rule = parse_rule("room.*=100:300")
    assert (rule.pattern, rule.size, rule.ttl) == ("room.*", 100, 300.0)
    assert parse_rule("feed=5:0.5").ttl == 0.5
    for text, message in [
        ("room.*", "PATTERN=SIZE:TTL"),
        ("room.*=100", "PATTERN=SIZE:TTL"),
        ("room.*=ten:300", "whole SIZE"),
        ("room.*=0:300", "size must be a whole number from 1"),
        ("room.*=100:0", "ttl must be a number of seconds above 0"),
        ("room/*=1:1", "group-name glob"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_rule(text)
    with pytest.raises(ValueError, match="size"):
        check_rule("a", True, 1)


def test_the_first_matching_rule_wins():
    layer = InMemoryChannelLayer(history={"room.vip": (5, 10)})
    layer.keep_history("room.*", 100, 300)
    assert layer.history.match("room.vip").size == 5
    assert layer.history.match("room.a").size == 100
    assert layer.history.match("lobby") is None


def test_decide_is_all_or_nothing():
    # (since, epoch, top, kept, limit) -> (recovered, count)
    assert decide(None, "e", 10, 4, None) == (None, 4)
    assert decide(None, "e", 10, 4, 2) == (None, 2)
    assert decide(("e", 10), "e", 10, 4, None) == (True, 0)
    assert decide(("e", 7), "e", 10, 4, None) == (True, 3)
    assert decide(("e", 6), "e", 10, 4, None) == (True, 4)
    assert decide(("e", 5), "e", 10, 4, None) == (False, 0)  # offset 6 is forgotten
    assert decide(("e", 11), "e", 10, 4, None) == (False, 0)  # from the future
    assert decide(("x", 10), "e", 10, 4, None) == (False, 0)  # another epoch
    assert decide(("e", 7), "e", 10, 4, 2) == (False, 0)  # more than the limit


# -- the layer API, on every layer -----------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_history_group_messages_carry_positions_and_are_kept(layer):
    await keeping(layer, 3)
    member = Probe()
    channel = layer.attach(member)
    joined = await layer.group_add("room.a", channel)
    assert joined["offset"] == 0 and joined["recovered"] is None and joined["missed"] == 0
    epoch = joined["epoch"]
    sent = [await layer.group_send("room.a", {"type": "chat.message", "n": n})
            for n in range(5)]
    assert sent == [{"epoch": epoch, "offset": n} for n in range(1, 6)]
    await until(lambda: len(member.events) == 5)
    assert [(e["n"], e["position"]) for e in member.events] == [
        (n, {"epoch": epoch, "offset": n + 1}) for n in range(5)]
    kept = await layer.group_history("room.a")
    assert (kept["epoch"], kept["offset"], kept["recovered"]) == (epoch, 5, None)
    assert [m["n"] for m in kept["messages"]] == [2, 3, 4]  # the last 3
    assert [m["n"] for m in (await layer.group_history("room.a", limit=2))["messages"]] == [3, 4]
    after = await layer.group_history("room.a", since={"epoch": epoch, "offset": 4})
    assert after["recovered"] is True and [m["n"] for m in after["messages"]] == [4]
    # A group no rule matches: as before, no position, no history.
    assert await layer.group_add("lobby", channel) is None
    assert await layer.group_send("lobby", {"type": "chat.message"}) is None
    await until(lambda: len(member.events) == 6)
    assert "position" not in member.events[-1]
    with pytest.raises(ValueError, match="keeps no history"):
        await layer.group_history("lobby")
    with pytest.raises(ValueError, match="keeps no history"):
        await layer.group_add("lobby", channel, since={"epoch": epoch, "offset": 1})


@pytest_twisted.ensureDeferred
async def test_history_remove_forgets_the_messages_not_the_position(layer):
    """Centrifugo's ``history_remove``: what the group keeps goes; its epoch and offset
    stay, so the next message continues the stream and a member that comes back from
    before is told it was not recovered (never a partial replay)."""
    await keeping(layer, 5)
    member = Probe()
    channel = layer.attach(member)
    epoch = (await layer.group_add("room.a", channel))["epoch"]
    for n in range(3):
        await layer.group_send("room.a", {"type": "m", "n": n})
    await until(lambda: len(member.events) == 3)
    await layer.group_history_remove("room.a")
    kept = await layer.group_history("room.a")
    assert (kept["epoch"], kept["offset"], kept["messages"]) == (epoch, 3, [])
    assert await layer.group_send("room.a", {"type": "m", "n": 3}) == {"epoch": epoch,
                                                                        "offset": 4}
    assert [m["n"] for m in (await layer.group_history("room.a"))["messages"]] == [3]
    layer.detach(channel)
    back = Probe()
    result = await layer.group_add("room.a", layer.attach(back),
                                   since={"epoch": epoch, "offset": 1})
    assert (result["recovered"], result["offset"]) == (False, 4)
    with pytest.raises(ValueError, match="keeps no history"):
        await layer.group_history_remove("lobby")


@pytest_twisted.ensureDeferred
async def test_a_member_that_comes_back_gets_what_it_missed_first(layer):
    await keeping(layer, 10)
    member, other = Probe(), Probe()
    channel, witness = layer.attach(member), layer.attach(other)
    await layer.group_add("room.a", witness)
    start = await layer.group_add("room.a", channel)
    for n in range(3):
        await layer.group_send("room.a", {"type": "m", "n": n})
    await until(lambda: len(member.events) == 3)
    last = member.events[-1]["position"]
    layer.detach(channel)  # its socket closed
    for n in range(3, 7):
        await layer.group_send("room.a", {"type": "m", "n": n})
    back = Probe()
    channel = layer.attach(back)
    result = await layer.group_add("room.a", channel, since=last)
    assert result == {"epoch": start["epoch"], "offset": 7, "recovered": True, "missed": 4}
    await layer.group_send("room.a", {"type": "m", "n": 7})
    await until(lambda: len(back.events) == 5)
    assert [e["n"] for e in back.events] == [3, 4, 5, 6, 7]
    assert offsets(back) == [4, 5, 6, 7, 8]
    # Nothing missed: recovered, nothing replayed.
    layer.detach(channel)
    again = Probe()
    result = await layer.group_add("room.a", layer.attach(again),
                                   since={"epoch": start["epoch"], "offset": 8})
    assert (result["recovered"], result["missed"]) == (True, 0)
    assert again.events == []
    await until(lambda: len(other.events) == 8)
    assert offsets(other) == list(range(1, 9))  # the witness had each once


@pytest_twisted.ensureDeferred
async def test_history_that_no_longer_covers_the_gap_replays_nothing(layer):
    await keeping(layer, 3)
    channel = layer.attach(Probe())
    epoch = (await layer.group_add("room.a", channel))["epoch"]
    for n in range(6):
        await layer.group_send("room.a", {"type": "m", "n": n})
    for top, since in enumerate(({"epoch": epoch, "offset": 2},  # offset 3 is pushed out
                                 {"epoch": "0ther", "offset": 5},  # another epoch
                                 {"epoch": epoch, "offset": 9}),  # one it never had
                                start=6):
        late = Probe()
        result = await layer.group_add("room.a", layer.attach(late), since=since)
        assert (result["offset"], result["recovered"], result["missed"]) == (top, False, 0)
        assert late.events == []
        await layer.group_send("room.a", {"type": "m", "n": "live"})
        await until(lambda late=late: len(late.events) == 1)  # what comes after the join does
        assert late.events[0]["n"] == "live"
    assert (await layer.group_history("room.a", since={"epoch": epoch, "offset": 2}))[
        "messages"] == []


@pytest_twisted.ensureDeferred
async def test_bad_arguments_are_refused(layer):
    await keeping(layer, 3)
    channel = layer.attach(Probe())
    for since, message in [(5, "position dict"), ({"offset": 1}, "epoch"),
                           ({"epoch": "e", "offset": -1}, "offset"),
                           ({"epoch": "e", "offset": "1"}, "offset")]:
        with pytest.raises(TypeError, match=message):
            await layer.group_add("room.a", channel, since=since)
        with pytest.raises(TypeError, match=message):
            await layer.group_history("room.a", since=since)
    with pytest.raises(TypeError, match="limit"):
        await layer.group_history("room.a", limit=0)
    with pytest.raises(TypeError):
        await layer.group_history("bad group!")
    with pytest.raises(ValueError, match="size"):
        layer.keep_history("room.*", 0, 60)
    assert layer.local_members("room.a") == []  # nothing joined by a refused call


@pytest_twisted.ensureDeferred
async def test_presence_events_are_not_kept(layer):
    await keeping(layer, 10)
    watcher = Probe()
    watching = layer.attach(watcher)
    await layer.group_add("room.a", watching)
    result = await layer.group_add("room.a", layer.attach(Probe()), presence={"user": "ada"})
    assert result["offset"] == 0  # a join with presence still answers the position
    await until(lambda: len(watcher.events) == 1)
    assert watcher.events[0]["type"] == "presence.join"
    assert "position" not in watcher.events[0]
    assert (await layer.group_history("room.a"))["messages"] == []


@pytest_twisted.ensureDeferred
async def test_flush_starts_a_new_epoch(layer):
    await keeping(layer, 10)
    channel = layer.attach(Probe())
    before = await layer.group_add("room.a", channel)
    await layer.group_send("room.a", {"type": "m"})
    await layer.flush()
    after = await layer.group_history("room.a", since={"epoch": before["epoch"], "offset": 1})
    assert after["epoch"] != before["epoch"] and after["offset"] == 0
    assert after["recovered"] is False


def test_memory_history_expires_on_the_layers_clock():
    clock = Clock()
    layer = InMemoryChannelLayer(history={"room.*": (10, 30)}, reactor=clock)
    layer.history_meta_ttl = 100
    channel = layer.attach(Probe())
    first = fired(layer.group_add("room.a", channel))
    layer.group_send("room.a", {"type": "m"})
    clock.advance(29)
    layer.group_send("room.a", {"type": "m"})  # ttl counts from the last publish
    clock.advance(29)
    assert len(fired(layer.group_history("room.a"))["messages"]) == 2
    clock.advance(1)
    kept = fired(layer.group_history("room.a"))
    assert kept["messages"] == [] and kept["offset"] == 2 and kept["epoch"] == first["epoch"]
    # Nothing was missed since offset 2: still recoverable within the meta ttl.
    assert fired(layer.group_history(
        "room.a", since={"epoch": first["epoch"], "offset": 2}))["recovered"] is True
    clock.advance(100)
    late = fired(layer.group_history(
        "room.a", since={"epoch": first["epoch"], "offset": 2}))
    assert late["recovered"] is False and late["epoch"] != first["epoch"]


def test_memory_streams_past_their_meta_ttl_are_swept():
    from realtime.layers import memory

    clock = Clock()
    layer = InMemoryChannelLayer(history={"user.*": (1, 1)}, reactor=clock)
    layer.history_meta_ttl = 10
    for n in range(memory.SWEEP_EVERY - 1):
        layer.group_send(f"user.{n}", {"type": "m"})
    clock.advance(11)
    layer.group_send("user.last", {"type": "m"})  # the sweep's turn
    assert list(layer._streams) == ["user.last"]


# -- Redis: across processes ---------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_redis_history_is_shared_by_processes(two_layers):  # noqa: F811
    a, b = await history_pair(two_layers, 5)
    away = Probe()
    channel = b.attach(away)
    start = await b.group_add("room.a", channel)
    positions = [await a.group_send("room.a", {"type": "m", "n": n}) for n in range(3)]
    assert [p["offset"] for p in positions] == [1, 2, 3]
    assert {p["epoch"] for p in positions} == {start["epoch"]}
    await until(lambda: len(away.events) == 3)
    last = away.events[-1]["position"]
    b.detach(channel)
    for n in range(3, 5):
        await a.group_send("room.a", {"type": "m", "n": n})
    back = Probe()
    result = await b.group_add("room.a", b.attach(back), since=last)
    assert (result["recovered"], result["missed"], result["offset"]) == (True, 2, 5)
    await until(lambda: len(back.events) == 2)
    assert [e["n"] for e in back.events] == [3, 4]
    seen = await a.group_history("room.a")
    assert [m["n"] for m in seen["messages"]] == [0, 1, 2, 3, 4]
    assert seen["messages"][0]["position"] == {"epoch": start["epoch"], "offset": 1}


@pytest_twisted.ensureDeferred
async def test_redis_recovery_during_a_publish_storm_loses_and_repeats_nothing(
        two_layers):  # noqa: F811
    """Messages published while the join subscribes and reads come both live and from the
    read: each reaches the member once, in order, after the missed ones."""
    a, b = await history_pair(two_layers, 1000)
    first = Probe()
    channel = b.attach(first)
    await b.group_add("room.a", channel)
    await a.group_send("room.a", {"type": "m"})
    await until(lambda: len(first.events) == 1)
    since = first.events[0]["position"]
    b.detach(channel)  # b now has no member: the rejoin subscribes again
    for _ in range(20):
        await a.group_send("room.a", {"type": "m"})
    back = Probe()
    storm = [a.group_send("room.a", {"type": "m"}) for _ in range(300)]
    joined = b.group_add("room.a", b.attach(back), since=since)
    storm += [a.group_send("room.a", {"type": "m"}) for _ in range(300)]
    result = await joined
    for d in storm:
        await d
    assert result["recovered"] is True and result["missed"] >= 20
    await until(lambda: offsets(back)[-1:] == [621])
    assert offsets(back) == list(range(2, 622))


@pytest_twisted.ensureDeferred
async def test_redis_a_lost_stream_is_a_new_epoch(two_layers, redis_server):  # noqa: F811
    from tests.test_presence import RawRedis

    layer = await two_layers()
    await keeping(layer, 5)
    channel = layer.attach(Probe())
    start = await layer.group_add("room.a", channel)
    await layer.group_send("room.a", {"type": "m"})
    raw = RawRedis(redis_server)
    try:
        raw.send(b"DEL", layer._meta_key.encode() + b"room.a")  # evicted, or a new Redis
        raw.read_until(b"\r\n")
    finally:
        raw.close()
    position = await layer.group_send("room.a", {"type": "m"})
    assert position["epoch"] != start["epoch"] and position["offset"] == 1
    kept = await layer.group_history("room.a")
    assert [m["position"]["offset"] for m in kept["messages"]] == [1]  # the old list went too
    result = await layer.group_add("room.b", channel, since={"epoch": start["epoch"],
                                                             "offset": 1})
    assert result["recovered"] is False


@pytest_twisted.ensureDeferred
async def test_redis_history_expires_after_its_ttl(two_layers):  # noqa: F811
    layer = await two_layers()
    await layer.flush()  # the Redis server is shared by the tests
    layer.keep_history("room.*", 5, 0.2)
    await layer.group_send("room.a", {"type": "m"})
    assert len((await layer.group_history("room.a"))["messages"]) == 1

    async def forgotten() -> bool:
        return (await layer.group_history("room.a"))["messages"] == []

    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(100):
        if await forgotten():
            break
        await deferLater(reactor, 0.05, lambda: None)
    kept = await layer.group_history("room.a")
    assert kept["messages"] == [] and kept["offset"] == 1  # the position stays


@pytest_twisted.ensureDeferred
async def test_redis_since_for_another_process_channel_is_refused(two_layers):  # noqa: F811
    a, b = await two_layers(), await two_layers()
    a.keep_history("room.*", 5, 60)
    remote = b.attach(Probe())
    with pytest.raises(ValueError, match="channel of this process"):
        await a.group_add("room.a", remote, since={"epoch": "e", "offset": 0})




# -- consumers, real clients and the HTTP API on live servers ---------------------------------

import json  # noqa: E402
from urllib.parse import parse_qs  # noqa: E402

from websockets.sync.client import connect  # noqa: E402

from realtime import AsyncJsonWebsocketConsumer, URLRouter, path  # noqa: E402
from realtime.client import PublishError  # noqa: E402
from realtime.client import history as history_api  # noqa: E402
from realtime.client import publish as publish_api  # noqa: E402
from tests.clients import in_thread  # noqa: E402

KEY = "history-test-key-0123456789"


class Room(AsyncJsonWebsocketConsumer):
    """Joins ``room.<name>``, recovering from ``?epoch=E&offset=N`` when given (what a
    client keeps of the last message it had); passes messages on with their position."""

    async def connect(self) -> None:
        query = parse_qs(self.scope["query_string"].decode())
        since = None
        if "epoch" in query:
            since = {"epoch": query["epoch"][0], "offset": int(query["offset"][0])}
        await self.accept()
        group = "room." + self.scope["url_route"]["kwargs"]["name"]
        joined = await self.channel_layer.group_add(group, self.channel_name, since=since)
        await self.send_json({"joined": joined})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"text": event["text"], "position": event["position"]})


room_app = URLRouter([path("room/<name>", Room.as_asgi())])


def _reconnecting_client(first: Any, second: Any) -> list[Any]:
    """Connect to ``first``, have 2 messages, leave; 3 are published meanwhile; come back
    to ``second`` with the last position; then one live message."""
    out: list[Any] = []
    base = first.http_url("/")
    with connect(first.ws_url("/room/a")) as ws:
        out.append(json.loads(ws.recv(timeout=5)))
        out.append([publish_api(base, KEY, "room.a", event={"type": "chat.message",
                                                            "text": t})["positions"]
                    for t in ("one", "two")])
        out.append([json.loads(ws.recv(timeout=5)) for _ in range(2)])
    last = out[-1][-1]["position"]
    for text in ("three", "four", "five"):
        publish_api(base, KEY, "room.a", event={"type": "chat.message", "text": text})
    query = f"?epoch={last['epoch']}&offset={last['offset']}"
    with connect(second.ws_url("/room/a" + query)) as ws:
        out.append(json.loads(ws.recv(timeout=5)))
        out.append([json.loads(ws.recv(timeout=5))["text"] for _ in range(3)])
        publish_api(second.http_url("/"), KEY, "room.a",
                    event={"type": "chat.message", "text": "six"})
        out.append(json.loads(ws.recv(timeout=5)))
    # Too far behind (the room keeps 4): nothing replayed, told so.
    with connect(second.ws_url("/room/a" + query.replace(f"={last['offset']}", "=0"))) as ws:
        out.append(json.loads(ws.recv(timeout=5)))
    out.append(history_api(base, KEY, "room.a", limit=2))
    out.append(history_api(base, KEY, "room.a", since=last))
    for body in ({"group": "lobby"}, {"group": "room.a", "since": {"epoch": 1}},
                 {"group": "room.a", "limit": 0}):
        try:
            history_api(base, KEY, body["group"], since=body.get("since"),
                        limit=body.get("limit"))
        except PublishError as exc:
            out.append((exc.status, exc.error))
    return out


def _check_reconnect(out: list[Any]) -> None:
    joined = out[0]["joined"]
    epoch = joined["epoch"]
    assert joined == {"epoch": epoch, "offset": 0, "recovered": None, "missed": 0}
    assert out[1] == [{"room.a": {"epoch": epoch, "offset": 1}},
                      {"room.a": {"epoch": epoch, "offset": 2}}]
    assert [m["position"]["offset"] for m in out[2]] == [1, 2]
    assert out[3] == {"joined": {"epoch": epoch, "offset": 5, "recovered": True, "missed": 3}}
    assert out[4] == ["three", "four", "five"]
    assert out[5] == {"text": "six", "position": {"epoch": epoch, "offset": 6}}
    assert out[6] == {"joined": {"epoch": epoch, "offset": 6, "recovered": False, "missed": 0}}
    newest = out[7]
    assert (newest["group"], newest["offset"], newest["recovered"]) == ("room.a", 6, None)
    assert [m["text"] for m in newest["messages"]] == ["five", "six"]
    assert [m["text"] for m in out[8]["messages"]] == ["three", "four", "five", "six"]
    assert out[8]["recovered"] is True
    assert out[9][0] == 404 and "keeps no history" in out[9][1]
    assert out[10][0] == 400 and "epoch" in out[10][1]
    assert out[11][0] == 400 and "limit" in out[11][1]


@pytest_twisted.ensureDeferred
async def test_a_client_that_reconnects_gets_what_it_missed(live):
    server = await live(room_app, api_keys=(KEY,))
    server.site.layer.keep_history("room.*", 4, 60)
    await server.site.layer.flush()
    _check_reconnect(await in_thread(_reconnecting_client, server, server))


@pytest_twisted.ensureDeferred
async def test_a_client_recovers_on_another_server_through_redis(two_layers):  # noqa: F811
    from realtime.config import ServerConfig
    from realtime.testing import serve

    one, two = await two_layers(), await two_layers()
    await one.flush()
    for layer in (one, two):
        layer.keep_history("room.*", 4, 60)
    config = ServerConfig(api_keys=(KEY,))
    first = await serve(room_app, config, layer=one)
    second = await serve(room_app, config, layer=two)
    try:
        _check_reconnect(await in_thread(_reconnecting_client, first, second))
    finally:
        await first.stop()
        await second.stop()


def _kill_subscribers(redis_server: Any) -> None:
    """Cut every pub/sub connection of the test's Redis (not the server, not its data)."""
    from tests.test_presence import RawRedis

    raw = RawRedis(redis_server)
    try:
        raw.send(b"CLIENT", b"KILL", b"TYPE", b"pubsub")
        raw.read_until(b"\r\n")
    finally:
        raw.close()


@pytest_twisted.ensureDeferred
async def test_redis_reconnect_recovers_a_history_group_instead_of_a_gap(
        two_layers, redis_server):  # noqa: F811
    a, b = await history_pair(two_layers, 3)
    members = [Probe(), Probe()]
    for probe in members:
        await b.group_add("room.kept", b.attach(probe))
    short = Probe()
    await b.group_add("room.short", b.attach(short))
    plain = Probe()
    await b.group_add("lobby", b.attach(plain))
    await a.group_send("room.kept", {"type": "m", "n": 0})
    await a.group_send("room.short", {"type": "m", "n": 0})
    await until(lambda: len(members[1].events) == 1 and len(short.events) == 1)
    _kill_subscribers(redis_server)
    await until(lambda: not b._sub_ready)
    for n in (1, 2, 3):  # while b cannot hear them
        await a.group_send("room.kept", {"type": "m", "n": n})
    for n in range(1, 6):  # more than room.short keeps (3)
        await a.group_send("room.short", {"type": "m", "n": n})
    await b.when_ready(10)
    await a.group_send("room.kept", {"type": "m", "n": 4})
    await a.group_send("room.short", {"type": "m", "n": 6})
    for probe in members:
        await until(lambda p=probe: len(p.events) == 5)
        assert [e["n"] for e in probe.events] == [0, 1, 2, 3, 4]  # no gap, none twice
    assert b.stats.history_recovered == 6
    await until(lambda: short.events[-1:] and short.events[-1].get("n") == 6)
    assert [e["type"] for e in short.events] == ["m", "layer.gap", "m"]  # not covered
    await until(lambda: any(e["type"] == "layer.gap" for e in plain.events))
    assert b.stats.history_unrecovered == 1 and b.stats.gaps == 2


class HeldReconnect:
    """Keeps ``layer``'s subscriber from reconnecting until ``release()``: an outage of
    the test's choosing (the publisher connection stays up)."""

    def __init__(self, layer: Any) -> None:
        self.link = layer._sub
        self.due = self.released = False
        self.link._connect = self._connect  # the instance's, in place of the class's

    def _connect(self) -> None:
        if self.released:  # a retry scheduled before the release
            type(self.link)._connect(self.link)
            return
        self.link._retry_call = None
        self.due = True

    def release(self) -> None:
        self.released = True
        del self.link._connect
        if self.due:
            self.link._connect()


@pytest_twisted.ensureDeferred
async def test_redis_members_that_joined_during_an_outage_get_each_message_once(
        two_layers, redis_server):  # noqa: F811
    """Joins made while the subscriber is away (the publisher up) read their position;
    after the reconnect each member gets what is newer than what it had, once, in order."""
    a, b = await history_pair(two_layers, 100)
    old = Probe()
    await b.group_add("room.a", b.attach(old))
    for _ in range(2):
        await a.group_send("room.a", {"type": "m"})
    await until(lambda: offsets(old) == [1, 2])
    epoch = old.events[0]["position"]["epoch"]
    held = HeldReconnect(b)
    _kill_subscribers(redis_server)
    await until(lambda: not b._sub_ready)
    for _ in range(3):
        await a.group_send("room.a", {"type": "m"})  # 3, 4, 5: b hears none live
    back, new = Probe(), Probe()
    result = await b.group_add("room.a", b.attach(back), since={"epoch": epoch, "offset": 4})
    assert (result["recovered"], result["missed"]) == (True, 1)
    assert (await b.group_add("room.a", b.attach(new)))["offset"] == 5
    held.release()
    await b.when_ready(10)
    await a.group_send("room.a", {"type": "m"})
    await until(lambda: all(6 in offsets(p) for p in (old, back, new)))
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.2, lambda: None)  # anything late would be here by now
    assert offsets(old) == [1, 2, 3, 4, 5, 6]  # recovered after the reconnect
    assert offsets(back) == [5, 6]
    assert offsets(new) == [6]


@pytest_twisted.ensureDeferred
async def test_redis_a_live_message_slower_than_the_read_is_not_given_twice(
        two_layers):  # noqa: F811
    """The read (publisher connection) and the live stream (subscriber connection) are not
    ordered: a live message the read already had, arriving after it, is dropped."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    a, b = await history_pair(two_layers, 100)
    first = Probe()
    await b.group_add("room.a", b.attach(first))
    await a.group_send("room.a", {"type": "m"})
    await until(lambda: offsets(first) == [1])
    since = first.events[0]["position"]
    heard = b._sub.on_message
    b._sub.on_message = lambda topic, payload: reactor.callLater(0.1, heard, topic, payload)
    try:
        await a.group_send("room.a", {"type": "m"})  # 2: late on b's subscriber
        late = Probe()
        result = await b.group_add("room.a", b.attach(late), since=since)
        assert (result["recovered"], result["missed"]) == (True, 1)
        await until(lambda: offsets(first) == [1, 2])  # the late live message came
    finally:
        b._sub.on_message = heard
    await deferLater(reactor, 0.1, lambda: None)
    assert offsets(late) == [2]
    assert offsets(first) == [1, 2]


@pytest_twisted.ensureDeferred
async def test_redis_a_join_that_cannot_read_leaves_no_member(two_layers):  # noqa: F811
    from realtime.layers import LayerUnavailable

    layer = await two_layers()
    layer.keep_history("room.*", 100, 60)
    channel = layer.attach(Probe())
    await layer.group_add("lobby", channel)
    proto, layer._pub.proto = layer._pub.proto, None  # the publisher is away
    try:
        with pytest.raises(LayerUnavailable):
            await layer.group_add("room.a", channel)
        assert channel not in layer.local_members("room.a")
        assert layer._recovering == {}
        assert await layer.group_add("lobby", channel) is None  # a plain group still joins
    finally:
        layer._pub.proto = proto


@pytest_twisted.ensureDeferred
async def test_redis_leave_and_join_again_while_the_read_is_in_flight(two_layers):  # noqa: F811
    layer = await two_layers()
    await layer.flush()
    layer.keep_history("room.*", 100, 60)
    member = Probe()
    channel = layer.attach(member)
    first = layer.group_add("room.a", channel)
    layer.group_discard("room.a", channel)
    second = layer.group_add("room.a", channel)
    assert (await first)["offset"] == (await second)["offset"] == 0
    assert layer.local_members("room.a") == [channel]
    await layer.group_send("room.a", {"type": "m"})
    await until(lambda: offsets(member) == [1])


@pytest_twisted.ensureDeferred
async def test_redis_a_join_made_for_another_process_reads_the_position_there(
        two_layers, redis_server):  # noqa: F811
    """``group_add`` of b's channel from a: b joins it and reads the stream's position, so
    b's reconnect recovers that member too (a answers None: the join is b's)."""
    a, b = await history_pair(two_layers, 100)
    member = Probe()
    channel = b.attach(member)
    assert await a.group_add("room.a", channel) is None
    assert b._floors["room.a"][channel][1] == 0  # its read's position
    held = HeldReconnect(b)
    _kill_subscribers(redis_server)
    await until(lambda: not b._sub_ready)
    await a.group_send("room.a", {"type": "m"})
    held.release()
    await until(lambda: offsets(member) == [1])
    assert [e["type"] for e in member.events] == ["m"]  # recovered, no gap


def test_memory_history_is_freed_without_publishes():
    """Streams made by reads and messages past their ttl go at the next sweep, without
    waiting for the group's next publish."""
    from realtime.layers import memory

    clock = Clock()
    layer = InMemoryChannelLayer(history={"room.*": (1000, 60)}, reactor=clock)
    layer.history_meta_ttl = 3600
    for n in range(100):
        for i in range(10):
            layer.group_send(f"room.{n}", {"type": "m", "i": i})
    for n in range(500):
        fired(layer.group_history(f"room.read{n}"))  # reads of groups never published to
    assert sum(len(s.entries) for s in layer._streams.values()) == 1000
    clock.advance(61)
    fired(layer.group_history("room.0"))  # past SWEEP_INTERVAL: a sweep
    assert sum(len(s.entries) for s in layer._streams.values()) == 0
    assert len(layer._streams) == 600  # the positions stay, for the meta ttl
    clock.advance(3600)
    fired(layer.group_history("room.other"))
    assert list(layer._streams) == ["room.other"]
    assert memory.SWEEP_INTERVAL < 60


def test_a_limit_past_the_largest_history_is_refused():
    layer = InMemoryChannelLayer(history={"room.*": (10, 60)})
    with pytest.raises(TypeError, match="limit must be a whole number from 1 to"):
        fired(layer.group_history("room.a", limit=10**6))


@pytest_twisted.ensureDeferred
async def test_redis_a_message_in_flight_when_the_last_member_leaves_leaves_nothing(
        two_layers, redis_server):  # noqa: F811
    """No stale position stays behind for a group without members here, so a later first
    member's reconnect recovers from its own join's position."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    a, b = await history_pair(two_layers, 100)
    gone = b.attach(Probe())
    await b.group_add("room.a", gone)
    heard = b._sub.on_message
    came: list[bytes] = []

    def slowly(topic: Any, payload: bytes) -> None:
        heard(topic, payload)
        came.append(payload)

    b._sub.on_message = lambda topic, payload: reactor.callLater(0.1, slowly, topic, payload)
    try:
        await a.group_send("room.a", {"type": "m"})  # 1: still on its way to b
        b.detach(gone)
        await until(lambda: bool(came))
    finally:
        b._sub.on_message = heard
    assert "room.a" not in b._seen and "room.a" not in b._floors
    for _ in range(3):
        await a.group_send("room.a", {"type": "m"})  # 2-4: b has no member
    late = Probe()
    assert (await b.group_add("room.a", b.attach(late)))["offset"] == 4
    held = HeldReconnect(b)
    _kill_subscribers(redis_server)
    await until(lambda: not b._sub_ready)
    await a.group_send("room.a", {"type": "m"})
    held.release()
    await until(lambda: offsets(late) == [5])
    await deferLater(reactor, 0.2, lambda: None)
    assert offsets(late) == [5]


@pytest_twisted.ensureDeferred
async def test_redis_joining_again_loses_nothing_and_since_is_for_a_first_join(
        two_layers):  # noqa: F811
    """A member added again (a presence update, a join made for it by another process)
    keeps getting every message, including those on their way meanwhile; ``since`` on a
    member already in the group is refused (it would replay what it had, or skip what it
    did not)."""
    a, b = await history_pair(two_layers, 1000)
    member = Probe()
    channel = b.attach(member)
    first = await b.group_add("room.a", channel, presence={"n": 1})
    burst = [a.group_send("room.a", {"type": "m"}) for _ in range(100)]
    again = [b.group_add("room.a", channel, presence={"n": 2}),  # on its own process
             a.group_add("room.a", channel)]  # made for it by another one
    for d in burst + again:
        await d
    await a.group_send("room.a", {"type": "m"})
    await until(lambda: offsets(member)[-1:] == [101])
    assert offsets(member) == list(range(1, 102))
    with pytest.raises(ValueError, match="since= is for its first join"):
        await b.group_add("room.a", channel, since={"epoch": first["epoch"], "offset": 0})
    assert channel in b.local_members("room.a")  # still a member, as it was


def test_memory_since_is_for_a_first_join():
    layer = InMemoryChannelLayer(history={"room.*": (10, 60)})
    member = Probe()
    channel = layer.attach(member)
    epoch = fired(layer.group_add("room.a", channel))["epoch"]
    layer.group_send("room.a", {"type": "m"})
    with pytest.raises(ValueError, match="since= is for its first join"):
        fired(layer.group_add("room.a", channel, since={"epoch": epoch, "offset": 0}))
    assert fired(layer.group_add("room.a", channel))["missed"] == 0  # a plain re-add is fine
    assert offsets(member) == [1]


@pytest_twisted.ensureDeferred
async def test_a_plain_groups_message_may_have_a_position_key(layer):
    """Only history groups' positions are the layer's: elsewhere it is the app's key."""
    await layer.flush()
    layer.keep_history("room.*", 10, 60)
    member = Probe()
    await layer.group_add("lobby", layer.attach(member))
    for value in ("left", {"x": 1}, {"epoch": "e", "offset": 1}):
        await layer.group_send("lobby", {"type": "chat.move", "position": value})
    await until(lambda: len(member.events) == 3)
    assert [e["position"] for e in member.events] == ["left", {"x": 1},
                                                      {"epoch": "e", "offset": 1}]


@pytest_twisted.ensureDeferred
async def test_redis_live_messages_before_the_resubscribe_is_done_wait_for_the_recovery(
        two_layers, redis_server):  # noqa: F811
    """A group resubscribed early in a reconnect hears live messages before the layer
    recovers it: they wait, and follow what was published during the outage."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    a, b = await history_pair(two_layers, 100)
    member = Probe()
    await b.group_add("room.a", b.attach(member))
    await a.group_send("room.a", {"type": "m"})
    await until(lambda: offsets(member) == [1])
    held = HeldReconnect(b)
    _kill_subscribers(redis_server)
    await until(lambda: not b._sub_ready)
    for _ in range(3):
        await a.group_send("room.a", {"type": "m"})  # 2-4: during the outage
    done = b._resubscribed
    answered: list[tuple[Any, Any]] = []  # its SUBSCRIBEs answered; the recovery held here
    b._resubscribed = lambda proto, epochs: answered.append((proto, epochs))
    try:
        held.release()
        await until(lambda: bool(answered))
        for _ in range(2):
            await a.group_send("room.a", {"type": "m"})  # 5, 6: live, before the recovery
        await until(lambda: len(b._outage.get("room.a", [])) == 2)
        assert not b._sub_ready and offsets(member) == [1]
        done(*answered[0])
        await until(lambda: b._sub_ready)
    finally:
        del b._resubscribed
    await until(lambda: offsets(member)[-1:] == [6])
    await deferLater(reactor, 0.2, lambda: None)
    assert offsets(member) == [1, 2, 3, 4, 5, 6]
    assert [e["type"] for e in member.events] == ["m"] * 6  # recovered: no gap


@pytest_twisted.ensureDeferred
async def test_redis_a_join_made_for_another_process_that_cannot_read_still_joins(
        two_layers, monkeypatch):  # noqa: F811
    from realtime.layers import redis

    monkeypatch.setattr(redis, "CONTROL_TIMEOUT", 0.5)
    a, b = await two_layers(), await two_layers()
    for layer in (a, b):
        layer.keep_history("room.*", 100, 60)
    member = Probe()
    channel = b.attach(member)
    proto, b._pub.proto = b._pub.proto, None  # b cannot read history (nor acknowledge)
    try:
        assert await a.group_add("room.a", channel) is None  # after CONTROL_TIMEOUT
        assert channel in b.local_members("room.a")  # joined all the same
    finally:
        b._pub.proto = proto
    await a.group_send("room.a", {"type": "m"})
    await until(lambda: len(offsets(member)) == 1)
