"""Centrifugo's server API on /api/ (realtime.pubsub_api): Centrifugo's own API client
(``cent``) against a live server, with centrifuge-python SDK clients subscribed over
realtime.pubsub's client protocol to see what reaches them; realtime's own API beside it."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import jwt
import pytest
import pytest_twisted
from cent import (
    AsyncClient,
    BatchRequest,
    BroadcastRequest,
    CentApiResponseError,
    CentTransportError,
    CentUnauthorizedError,
    ChannelsRequest,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent import Client as CentClient
from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler
from websockets.exceptions import ConnectionClosed

from realtime import pubsub
from tests.clients import http_get, in_thread

KEY = "test-api-key-0123456789"
SECRET = "a-test-jwt-secret-of-at-least-32-characters"
NAMESPACES = [
    "chat:allow_subscribe_for_client,presence,join_leave",
    "news:allow_subscribe_for_client,history_size=10,history_ttl=300s,force_recovery",
    "plain:allow_subscribe_for_client",
]
WAIT = 5.0


@pytest.fixture
def pubsub_settings() -> Any:
    """The process-wide settings (JWT keys, namespaces) as they were, after the test."""
    from realtime.settings import settings
    from realtime.tokens import key_from_text

    saved = dict(vars(settings))
    settings.jwt_keys = [key_from_text(SECRET)]
    yield settings
    vars(settings).update(saved)


@pytest.fixture
def start(realtime_leak_check: Any, pubsub_settings: Any) -> Any:
    """``await start(layer=None)``: realtime.pubsub's application with the API on (``KEY``)
    on its own layer (a fresh in-memory one by default), the namespaces configured; after
    the test the servers stop, then the layers given close."""
    from realtime.config import ServerConfig
    from realtime.layers import InMemoryChannelLayer
    from realtime.testing import serve

    servers: list[Any] = []
    layers: list[Any] = []

    async def go(layer: Any = None) -> Any:
        if layer is not None:
            layers.append(layer)
        layer = layer if layer is not None else InMemoryChannelLayer()
        pubsub.configure(NAMESPACES, layer=layer)
        server = await serve(pubsub.application, ServerConfig(api_keys=(KEY,)), layer=layer)
        servers.append(server)
        return server

    yield go
    for server in servers:
        pytest_twisted.blockon(server.stop())
    for layer in layers:
        pytest_twisted.blockon(layer.close())


def token(user: str) -> str:
    return jwt.encode({"sub": user}, SECRET, algorithm="HS256")


def unique(namespace: str) -> str:
    return f"{namespace}:{uuid.uuid4().hex[:8]}"


def run(scenario: Any, *args: Any) -> Any:
    """Run an asyncio scenario (the SDK and ``cent``'s async client) in a worker thread
    while the reactor serves."""
    return in_thread(lambda: asyncio.run(asyncio.wait_for(scenario(*args), 20)))


# -- a centrifuge-python SDK client that records what reaches it ----------------------------------

class Sdk(ClientEventHandler):
    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.client_id = ""
        self.client: Client | None = None

    async def on_connected(self, ctx: Any) -> None:
        self.client_id = ctx.client

    async def on_disconnected(self, ctx: Any) -> None:
        await self.events.put(("disconnected", ctx.code, ctx.reason))

    async def on_connecting(self, ctx: Any) -> None:
        if ctx.code:  # a reconnect, after a close code < 3500 (0: the first connect)
            await self.events.put(("connecting", ctx.code, ctx.reason))

    async def on_subscribed(self, ctx: Any) -> None:  # a server-side subscription
        await self.events.put(("server subscribed", ctx.channel, ctx.recoverable,
                               ctx.stream_position, ctx.data))

    async def on_publication(self, ctx: Any) -> None:  # in a server-side subscription
        await self.events.put(("server pub", ctx.channel, ctx.pub.data, ctx.pub.offset))

    async def next(self, kind: str) -> tuple[Any, ...]:
        """The next event of ``kind`` (others before it are dropped); fails after WAIT."""
        while True:
            event = await asyncio.wait_for(self.events.get(), WAIT)
            if event[0] == kind:
                return event

    async def before(self, kind: str) -> list[tuple[Any, ...]]:
        """The events before the next one of ``kind``; fails after WAIT."""
        found = []
        while (event := await asyncio.wait_for(self.events.get(), WAIT))[0] != kind:
            found.append(event)
        return found


class SubEvents(SubscriptionEventHandler):
    def __init__(self, sdk: Sdk, channel: str) -> None:
        self.sdk, self.channel = sdk, channel

    async def on_publication(self, ctx: Any) -> None:
        await self.sdk.events.put(("pub", self.channel, ctx.pub.data, ctx.pub.offset,
                                   ctx.pub.tags))

    async def on_unsubscribed(self, ctx: Any) -> None:
        await self.sdk.events.put(("unsubscribed", self.channel, ctx.code, ctx.reason))


async def connect(server: Any, user: str, *channels: str, use_protobuf: bool = False) -> Sdk:
    sdk = Sdk()
    client = Client(server.ws_url("/connection/websocket"), events=sdk, token=token(user),
                    use_protobuf=use_protobuf)
    sdk.client = client
    subs = [client.new_subscription(ch, SubEvents(sdk, ch)) for ch in channels]
    await client.connect()
    await client.ready(WAIT)
    for sub in subs:
        await sub.subscribe()
        await sub.ready(WAIT)
    return sdk


async def alice_twice_and_bob(server: Any, channel: str) -> tuple[Sdk, Sdk, Sdk]:
    """Two connections of alice's and one of bob's, each subscribed to ``channel``."""
    return (await connect(server, "alice", channel), await connect(server, "alice", channel),
            await connect(server, "bob", channel))


async def close(*sdks: Sdk) -> None:
    for sdk in sdks:
        assert sdk.client is not None
        await sdk.client.disconnect()


def api(server: Any) -> AsyncClient:
    return AsyncClient(server.http_url("/api"), KEY)


def post(server: Any, method: str, body: bytes, headers: dict[str, str] | None = None
         ) -> Any:
    """Plain HTTP: (status, parsed JSON body or the raw bytes)."""
    def go() -> tuple[int, Any]:
        status, _, raw = http_get(server.http_url(f"/api/{method}"), data=body,
                                  method="POST",
                                  headers={"X-API-Key": KEY} if headers is None else headers)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw
    return in_thread(go)


# -- publish, broadcast ---------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_cent_publish_reaches_a_subscribed_sdk_client(start):
    server = await start()
    plain, news = unique("plain"), unique("news")

    async def scenario() -> Any:
        sdk = await connect(server, "alice", plain, news)
        async with api(server) as cent:
            first = await cent.publish(PublishRequest(channel=plain, data={"text": "hi"},
                                                      tags={"kind": "greeting"}))
            got_plain = await sdk.next("pub")
            second = await cent.publish(PublishRequest(channel=news, data=[1, 2]))
            got_news = await sdk.next("pub")
        await close(sdk)
        return first, got_plain, second, got_news

    first, got_plain, second, got_news = await run(scenario)
    # No history in "plain": the result is empty (cent reads it as offset 0, epoch "").
    assert (first.offset, first.epoch) == (0, "")
    assert got_plain == ("pub", plain, {"text": "hi"}, 0, {"kind": "greeting"})
    # "news" keeps history: the position of the publication, which the client sees too.
    assert second.offset == 1 and second.epoch
    assert got_news[:4] == ("pub", news, [1, 2], 1)


@pytest_twisted.ensureDeferred
async def test_b64data_reaches_protobuf_clients_byte_for_byte(start):
    """Centrifugo's ``b64data``: binary data. A Protobuf client gets the bytes as they
    were; a JSON client gets JSON text as its JSON, anything else as ``b64data`` (there is
    no other way to put bytes in a JSON frame; Centrifugo writes them out raw, and the
    JSON client cannot parse the frame); the history API answers with ``b64data`` too."""
    server = await start()
    plain, news = unique("plain"), unique("news")
    binary = bytes(range(256))

    async def scenario() -> Any:
        pb = await connect(server, "alice", plain, news, use_protobuf=True)
        js = await connect(server, "bob", plain, news)
        async with api(server) as cent:
            for channel in (plain, news):
                for data in (binary, b'{"n": [1, 2]}'):
                    await cent.publish(PublishRequest(
                        channel=channel, data=None, b64data=base64.b64encode(data).decode()))
            got_pb = [await pb.next("pub") for _ in range(4)]
            got_js = [await js.next("pub") for _ in range(4)]
            history = await cent.history(HistoryRequest(channel=news, limit=-1))
        await close(pb, js)
        return got_pb, got_js, history

    got_pb, got_js, history = await run(scenario)
    assert [(channel, data) for _, channel, data, _, _ in got_pb] == [
        (plain, binary), (plain, b'{"n":[1,2]}'), (news, binary), (news, b'{"n":[1,2]}')]
    # centrifuge-python's JSON mode reads "data" only: None for b64data, JSON as JSON
    assert [data for _, _, data, _, _ in got_js] == [None, {"n": [1, 2]}] * 2
    assert [p.data for p in history.publications] == [None, {"n": [1, 2]}]
    status, raw = await post(server, "history", json.dumps(
        {"channel": news, "limit": -1}).encode())
    assert status == 200
    assert [(p["data"], p.get("b64data")) for p in raw["result"]["publications"]] == [
        (None, base64.b64encode(binary).decode()), ({"n": [1, 2]}, None)]


@pytest_twisted.ensureDeferred
async def test_history_remove_forgets_the_publications_not_the_position(start):
    server = await start()
    news, plain = unique("news"), unique("plain")

    async def scenario() -> Any:
        async with api(server) as cent:
            for n in range(2):
                await cent.publish(PublishRequest(channel=news, data=n))
            await cent.history_remove(HistoryRemoveRequest(channel=news))
            after = await cent.history(HistoryRequest(channel=news, limit=-1))
            third = await cent.publish(PublishRequest(channel=news, data=2))
            kept = await cent.history(HistoryRequest(channel=news, limit=-1))
            errors = []
            for channel in (plain, "nowhere:x"):
                try:
                    await cent.history_remove(HistoryRemoveRequest(channel=channel))
                except CentApiResponseError as exc:
                    errors.append(exc.code)
        return after, third, kept, errors

    after, third, kept, errors = await run(scenario)
    assert (after.publications, after.offset) == ([], 2)
    assert third.offset == 3 and third.epoch == after.epoch
    assert [(p.data, p.offset) for p in kept.publications] == [(2, 3)]
    assert errors == [108, 102]  # no history in "plain"; no such namespace


@pytest_twisted.ensureDeferred
async def test_broadcast_answers_each_channel(start):
    server = await start()
    chat, news = unique("chat"), unique("news")

    async def scenario() -> Any:
        sdk = await connect(server, "alice", chat, news)
        async with api(server) as cent:
            result = await cent.broadcast(BroadcastRequest(
                channels=[chat, "nowhere:x", news], data={"n": 1}))
            got = {(await sdk.next("pub"))[1] for _ in range(2)}
        await close(sdk)
        return result, got

    result, got = await run(scenario)
    ok_chat, unknown, ok_news = result.responses
    assert ok_chat.error is None and ok_chat.result.offset == 0
    assert unknown.result is None and unknown.error.code == 102
    assert ok_news.error is None and ok_news.result.offset == 1 and ok_news.result.epoch
    assert got == {chat, news}


# -- history, presence ----------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_history_iterates_like_centrifugo(start):
    server = await start()
    news = unique("news")

    def scenario() -> Any:
        cent = CentClient(server.http_url("/api"), KEY)
        for n in (1, 2, 3):
            cent.publish(PublishRequest(channel=news, data={"n": n}))
        only_position = cent.history(HistoryRequest(channel=news))
        oldest = cent.history(HistoryRequest(channel=news, limit=2))
        newest = cent.history(HistoryRequest(channel=news, limit=2, reverse=True))
        everything = cent.history(HistoryRequest(channel=news, limit=-1))
        epoch = only_position.epoch
        after = cent.history(HistoryRequest(channel=news, limit=10,
                                            since=StreamPosition(offset=1, epoch=epoch)))
        before = cent.history(HistoryRequest(channel=news, limit=10, reverse=True,
                                             since=StreamPosition(offset=3, epoch=epoch)))
        errors = []
        for request in (
            HistoryRequest(channel=news, limit=10, since=StreamPosition(offset=1, epoch="x")),
            HistoryRequest(channel=unique("chat")),
            HistoryRequest(channel="nowhere:x"),
        ):
            try:
                cent.history(request)
            except CentApiResponseError as exc:
                errors.append(exc.code)
        return only_position, oldest, newest, everything, after, before, errors

    only_position, oldest, newest, everything, after, before, errors = await in_thread(scenario)

    def data(result: Any) -> list[Any]:
        return [(p.offset, p.data["n"]) for p in result.publications]

    assert (only_position.publications, only_position.offset) == ([], 3)
    assert only_position.epoch
    assert data(oldest) == [(1, 1), (2, 2)]
    assert data(newest) == [(3, 3), (2, 2)]
    assert data(everything) == [(1, 1), (2, 2), (3, 3)]
    assert data(after) == [(2, 2), (3, 3)]
    assert data(before) == [(2, 2), (1, 1)]
    # a stale epoch: unrecoverable position; no history in "chat": not available; an
    # unknown namespace: unknown channel
    assert errors == [112, 108, 102]


@pytest_twisted.ensureDeferred
async def test_presence_and_presence_stats(start):
    server = await start()
    chat = unique("chat")

    async def scenario() -> Any:
        alice, alice2, bob = await alice_twice_and_bob(server, chat)
        async with api(server) as cent:
            presence = await cent.presence(PresenceRequest(channel=chat))
            stats = await cent.presence_stats(PresenceStatsRequest(channel=chat))
            try:
                await cent.presence(PresenceRequest(channel=unique("news")))
                error = None
            except CentApiResponseError as exc:
                error = exc.code
        ids = {alice.client_id: "alice", alice2.client_id: "alice", bob.client_id: "bob"}
        await close(alice, alice2, bob)
        return presence, stats, error, ids

    presence, stats, error, ids = await run(scenario)
    assert {client: info.user for client, info in presence.presence.items()} == ids
    assert all(info.client == client for client, info in presence.presence.items())
    assert (stats.num_clients, stats.num_users) == (3, 2)
    assert error == 108  # no presence in "news"


# -- unsubscribe and disconnect by user -----------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_unsubscribe_by_user_reaches_every_connection_of_that_user(start):
    server = await start()
    chat, other = unique("chat"), unique("chat")

    async def scenario() -> Any:
        alice = await connect(server, "alice", chat, other)
        alice2 = await connect(server, "alice", chat)
        bob = await connect(server, "bob", chat)
        async with api(server) as cent:
            await cent.unsubscribe(UnsubscribeRequest(user="alice", channel=chat))
            seen = [await alice.next("unsubscribed"), await alice2.next("unsubscribed")]
            stats = await cent.presence_stats(PresenceStatsRequest(channel=chat))
            await cent.publish(PublishRequest(channel=chat, data="after"))
            bob_got = await bob.next("pub")
            await cent.publish(PublishRequest(channel=other, data="still"))
            alice_got = await alice.next("pub")  # the next publication alice sees
        await close(alice, alice2, bob)
        return seen, stats, bob_got, alice_got

    seen, stats, bob_got, alice_got = await run(scenario)
    assert seen == [("unsubscribed", chat, 2000, "server unsubscribe")] * 2
    assert (stats.num_clients, stats.num_users) == (1, 1)  # bob's
    assert bob_got[2] == "after"
    # alice left only that channel: the other one still reaches her, and "after" did not
    assert alice_got[1:3] == (other, "still")


@pytest_twisted.ensureDeferred
async def test_subscribe_by_user_makes_server_side_subscriptions(start):
    """Centrifugo's ``subscribe``: each connection of the user (or one ``client``), JSON
    and Protobuf alike, in every process, gets a server-side subscription, announced with
    a ``subscribe`` push (the SDK's client-level ``subscribed``) carrying ``data``; a
    ``recover_since`` position replays what came after it."""
    server = await start()
    chat, news = unique("chat"), unique("news")

    async def scenario() -> Any:
        alice = await connect(server, "alice")
        alice_pb = await connect(server, "alice", use_protobuf=True)
        bob = await connect(server, "bob")
        async with api(server) as cent:
            await cent.subscribe(SubscribeRequest(user="alice", channel=chat,
                                                  data={"why": "invited"}))
            subscribed = [await alice.next("server subscribed"),
                          await alice_pb.next("server subscribed")]
            await cent.publish(PublishRequest(channel=chat, data="hello"))
            got = [await alice.next("server pub"), await alice_pb.next("server pub")]
            first = await cent.publish(PublishRequest(channel=news, data=1))
            await cent.publish(PublishRequest(channel=news, data=2))
            await cent.subscribe(SubscribeRequest(
                user="alice", client=alice.client_id, channel=news,
                recover_since=StreamPosition(offset=first.offset, epoch=first.epoch)))
            recovering = await alice.next("server subscribed")
            replayed = await alice.next("server pub")
            stats = await cent.presence_stats(PresenceStatsRequest(channel=chat))
            bob_events = [bob.events.get_nowait()[0] for _ in range(bob.events.qsize())]
        await close(alice, alice_pb, bob)
        return subscribed, got, recovering, replayed, stats, bob_events

    subscribed, got, recovering, replayed, stats, bob_events = await run(scenario)
    assert [s[:3] for s in subscribed] == [("server subscribed", chat, False)] * 2
    assert subscribed[0][4] == {"why": "invited"}
    assert subscribed[1][4] == b'{"why":"invited"}'  # Protobuf: the data's JSON text
    assert got == [("server pub", chat, "hello", 0), ("server pub", chat, b'"hello"', 0)]
    assert recovering[1:3] == (news, True)
    assert replayed == ("server pub", news, 2, 2)
    assert (stats.num_clients, stats.num_users) == (2, 1)  # both of alice's; presence
    assert bob_events == []  # nothing of alice's reached bob


@pytest_twisted.ensureDeferred
async def test_subscribe_and_refresh_refuse_what_they_cannot_do(start):
    server = await start()
    chat = unique("chat")
    answers = {
        "unknown namespace": await post(server, "subscribe", json.dumps(
            {"user": "alice", "channel": "nowhere:x"}).encode()),
        "no user": await post(server, "subscribe", json.dumps({"channel": chat}).encode()),
        "bad override": await post(server, "subscribe", json.dumps(
            {"user": "alice", "channel": chat, "override": {"history_size": 5}}).encode()),
        "recovery without history": await post(server, "subscribe", json.dumps(
            {"user": "alice", "channel": chat,
             "override": {"force_recovery": {"value": True}}}).encode()),
        "bad since": await post(server, "subscribe", json.dumps(
            {"user": "alice", "channel": chat, "recover_since": {"offset": -1}}).encode()),
        "refresh, no user": await post(server, "refresh", b"{}"),
        "refresh, bad expire_at": await post(server, "refresh", json.dumps(
            {"user": "alice", "expire_at": "soon"}).encode()),
    }
    assert {name: (status, body.get("error", {}).get("code"))
            for name, (status, body) in answers.items()} == {
        "unknown namespace": (200, 102), "no user": (200, 107), "bad override": (400, 107),
        "recovery without history": (200, 107), "bad since": (400, 107),
        "refresh, no user": (200, 107), "refresh, bad expire_at": (400, 107)}


@pytest_twisted.ensureDeferred
async def test_refresh_by_user_moves_or_ends_the_connections_expiry(start, monkeypatch):
    """Centrifugo's ``refresh``: ``expire_at`` is when the user's connections expire (a
    ``refresh`` push tells the client; 3005 once it passed, after the grace); ``expired``
    ends them at once with 3005 (the SDKs reconnect with a fresh token)."""
    import time

    from websockets.sync.client import connect as ws_connect

    monkeypatch.setattr(pubsub, "EXPIRED_CLOSE_DELAY", 0.1)
    server = await start()

    async def scenario() -> Any:
        alice = await connect(server, "alice")
        bob = await connect(server, "bob")
        async with api(server) as cent:
            await cent.refresh(RefreshRequest(user="alice", expired=True))
            ended = await alice.next("connecting")  # 3005: the SDK reconnects
        await close(alice, bob)
        return ended

    def timed() -> Any:
        with ws_connect(server.ws_url("/connection/websocket")) as ws:
            ws.send(json.dumps({"id": 1, "connect": {"token": token("carl")}}))
            connected = json.loads(ws.recv(timeout=WAIT))
            at = int(time.time()) + 2
            status, _, _ = http_get(server.http_url("/api/refresh"), method="POST", data=(
                json.dumps({"user": "carl", "expire_at": at}).encode()),
                headers={"X-API-Key": KEY})
            push = json.loads(ws.recv(timeout=WAIT))
            try:
                while True:
                    ws.recv(timeout=WAIT)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
            return connected, status, push, code, time.time() - at

    ended = await run(scenario)
    assert ended == ("connecting", 3005, "connection expired")
    connected, status, push, code, late = await in_thread(timed)
    assert "expires" not in connected["connect"] and status == 200
    assert push == {"push": {"refresh": {"expires": True, "ttl": pytest.approx(2, abs=1)}}}
    assert code == 3005 and -0.2 < late < 2.0


@pytest_twisted.ensureDeferred
async def test_refresh_with_info_is_the_connections_info_from_then_on(start):
    """``refresh``'s ``info`` (or ``b64info``): what the connection subscribes to (and
    publishes) afterwards carries it as its ``conn_info``; what it joined before keeps the
    info it joined with."""
    from websockets.sync.client import connect as ws_connect

    server = await start()
    first, second = unique("chat"), unique("chat")

    def api_post(method: str, body: dict[str, Any]) -> Any:
        status, _, raw = http_get(server.http_url(f"/api/{method}"), method="POST",
                                  data=json.dumps(body).encode(), headers={"X-API-Key": KEY})
        return status, json.loads(raw)

    def conn_info(channel: str) -> Any:
        _, answer = api_post("presence", {"channel": channel})
        [member] = answer["result"]["presence"].values()
        return member.get("conn_info")

    def flow() -> Any:
        with ws_connect(server.ws_url("/connection/websocket")) as ws:
            def call(ident: int, method: str, params: dict[str, Any]) -> Any:
                ws.send(json.dumps({"id": ident, method: params}))
                while (reply := json.loads(ws.recv(timeout=WAIT))).get("id") != ident:
                    pass
                return reply

            call(1, "connect", {"token": token("alice")})
            answers = [api_post("refresh", {"user": "alice", "info": {"role": "admin"}})]
            call(2, "subscribe", {"channel": first})
            answers.append(api_post("refresh", {"user": "alice", "b64info": base64.b64encode(
                b'{"role":"guest"}').decode()}))
            call(3, "subscribe", {"channel": second})
            return answers, conn_info(first), conn_info(second)

    answers, as_admin, as_guest = await in_thread(flow)
    assert answers == [(200, {"result": {}})] * 2
    assert (as_admin, as_guest) == ({"role": "admin"}, {"role": "guest"})


@pytest_twisted.ensureDeferred
async def test_disconnect_by_user_closes_its_connections(start):
    server = await start()
    chat = unique("chat")

    async def scenario() -> Any:
        alice, alice2, bob = await alice_twice_and_bob(server, chat)
        async with api(server) as cent:
            # One connection of alice's, by client id, with a code of the caller's.
            await cent.disconnect(DisconnectRequest(
                user="alice", client=alice2.client_id,
                disconnect={"code": 4501, "reason": "banned"}))
            one = await alice2.next("disconnected")
            # The rest of alice's: Centrifugo's default, 3503 "force disconnect".
            await cent.disconnect(DisconnectRequest(user="alice"))
            rest = await alice.next("disconnected")
            stats = await cent.presence_stats(PresenceStatsRequest(channel=chat))
            # bob still gets what is published, and nothing else happened to him first
            await cent.publish(PublishRequest(channel=chat, data="still here"))
            bob_events = await bob.before("pub")
        await close(alice, alice2, bob)
        return one, rest, stats, bob_events

    one, rest, stats, bob_events = await run(scenario)
    assert one == ("disconnected", 4501, "banned")
    assert rest == ("disconnected", 3503, "force disconnect")
    assert (stats.num_clients, stats.num_users) == (1, 1)
    assert bob_events == []


@pytest_twisted.ensureDeferred
async def test_the_user_group_takes_none_of_max_groups_per_connection(start):
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    layer.max_groups_per_connection = 1
    server = await start(layer)
    chat = unique("chat")

    async def scenario() -> Any:
        alice = await connect(server, "alice", chat)  # 106 if her user group counted
        async with api(server) as cent:
            await cent.unsubscribe(UnsubscribeRequest(user="alice", channel=chat))
            seen = await alice.next("unsubscribed")
        await close(alice)
        return seen

    assert await run(scenario) == ("unsubscribed", chat, 2000, "server unsubscribe")


@pytest_twisted.ensureDeferred
async def test_over_redis_the_api_of_one_server_reaches_clients_of_another(start, redis_server):
    from tests.redis_support import started_layer

    a = await start(await started_layer(redis_server.url))
    b = await start(await started_layer(redis_server.url))
    chat, news = unique("chat"), unique("news")

    async def scenario() -> Any:
        alice = await connect(a, "alice", chat, news)
        async with api(b) as cent:
            position = await cent.publish(PublishRequest(channel=news, data="n1"))
            pub = await alice.next("pub")
            stats = await cent.presence_stats(PresenceStatsRequest(channel=chat))
            await cent.unsubscribe(UnsubscribeRequest(user="alice", channel=chat))
            unsubscribed = await alice.next("unsubscribed")
            await cent.disconnect(DisconnectRequest(user="alice"))
            disconnected = await alice.next("disconnected")
        await close(alice)
        return position, pub, stats, unsubscribed, disconnected

    position, pub, stats, unsubscribed, disconnected = await run(scenario)
    assert position.offset == 1 and pub[1:4] == (news, "n1", 1)
    assert (stats.num_clients, stats.num_users) == (1, 1)
    assert unsubscribed == ("unsubscribed", chat, 2000, "server unsubscribe")
    assert disconnected == ("disconnected", 3503, "force disconnect")


# -- info and channels ----------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_info_and_channels_count_the_clients_and_subscriptions(start):
    from realtime import __version__

    server = await start()
    chat, plain = unique("chat"), unique("plain")

    async def scenario() -> Any:
        async with api(server) as cent:
            before = await cent.info(InfoRequest())
            alice, alice2, bob = await alice_twice_and_bob(server, chat)
            carol = await connect(server, "carol", plain)
            info = await cent.info(InfoRequest())
            everything = await cent.channels(ChannelsRequest())
            chats = await cent.channels(ChannelsRequest(pattern="chat:*"))
            one = await cent.channels(ChannelsRequest(pattern=plain[:-1] + "?"))
            none = await cent.channels(ChannelsRequest(pattern="news:*"))
            both = await cent.channels(ChannelsRequest(pattern="{chat,plain}:*"))
            try:
                await cent.channels(ChannelsRequest(pattern="{chat:*"))
                unclosed = None
            except CentApiResponseError as exc:
                unclosed = exc.code
            await close(alice2, carol)
            for _ in range(100):  # until the server has seen the two closes
                after = await cent.channels(ChannelsRequest())
                if sum(c.num_clients for c in after.channels.values()) == 2:
                    break
                await asyncio.sleep(0.05)
            after_info = await cent.info(InfoRequest())
        await close(alice, bob)
        return before, info, everything, chats, one, none, after, after_info, both, unclosed

    (before, info, everything, chats, one, none, after, after_info, both,
     unclosed) = await run(scenario)
    assert [(n.num_clients, n.num_subs) for n in before.nodes] == [(0, 0)]
    [node] = info.nodes
    assert node.uid == server.site.layer.process_id and node.version == __version__
    assert (node.num_clients, node.num_users, node.num_channels, node.num_subs) == (4, 3, 2, 4)
    assert node.uptime >= 0 and node.name
    assert {name: c.num_clients for name, c in everything.channels.items()} == {
        chat: 3, plain: 1}
    assert {name: c.num_clients for name, c in chats.channels.items()} == {chat: 3}
    assert list(one.channels) == [plain]
    assert none.channels == {}
    assert set(both.channels) == {chat, plain}  # Centrifugo's {a,b} alternatives
    assert unclosed == 107
    # Gone clients leave the counts.
    assert {name: c.num_clients for name, c in after.channels.items()} == {chat: 2}
    [node] = after_info.nodes
    assert (node.num_clients, node.num_users, node.num_subs) == (2, 2, 2)


@pytest_twisted.ensureDeferred
async def test_over_redis_info_lists_every_node_and_channels_adds_them_up(start, redis_server):
    from tests.redis_support import started_layer

    url = f"{redis_server.url}?prefix=info{uuid.uuid4().hex[:8]}"
    a = await start(await started_layer(url))
    b = await start(await started_layer(url))
    chat = unique("chat")

    async def scenario() -> Any:
        alice = await connect(a, "alice", chat)
        bob = await connect(b, "bob", chat)
        bob2 = await connect(b, "bob", chat, unique("plain"))
        async with api(a) as cent:
            info = await cent.info(InfoRequest())
            channels = await cent.channels(ChannelsRequest(pattern="chat:*"))
        await close(alice, bob, bob2)
        return info, channels

    info, channels = await run(scenario)
    nodes = {node.uid: (node.num_clients, node.num_users, node.num_subs) for node in info.nodes}
    assert nodes == {a.site.layer.process_id: (1, 1, 1),
                     b.site.layer.process_id: (2, 1, 3)}
    assert {name: c.num_clients for name, c in channels.channels.items()} == {chat: 3}


# -- batch ----------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_batch_runs_each_command_in_order(start):
    server = await start()
    news = unique("news")

    def scenario() -> Any:
        cent = CentClient(server.http_url("/api"), KEY)
        return cent.batch(BatchRequest(requests=[
            PublishRequest(channel=news, data=1),
            PublishRequest(channel=news, data=2),
            HistoryRequest(channel=news, limit=-1),
        ]))

    result = await in_thread(scenario)
    first, second, history = result.replies
    assert (first.offset, second.offset) == (1, 2)
    assert [p.data for p in history.publications] == [1, 2]


# -- bad input, keys, layer failures --------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_bad_bodies_and_bad_values(start):
    server = await start()
    chat = unique("chat")
    not_json = await post(server, "publish", b"{nope")
    array = await post(server, "publish", b"[]")
    nan = await post(server, "publish", b'{"channel": "%s", "data": NaN}' % chat.encode())
    wrong_type = await post(server, "publish", json.dumps({"channel": 5, "data": 1}).encode())
    bad_pattern = await post(server, "channels", json.dumps({"pattern": ["chat:*"]}).encode())
    no_channel = await post(server, "publish", json.dumps({"data": 1}).encode())
    no_data = await post(server, "publish", json.dumps({"channel": chat}).encode())
    not_base64 = await post(server, "publish",
                            json.dumps({"channel": chat, "b64data": "AA!E"}).encode())
    bad_code = await post(server, "disconnect", json.dumps(
        {"user": "alice", "disconnect": {"code": 2000, "reason": "x"}}).encode())
    bad_reason = await post(server, "disconnect", json.dumps(
        {"user": "alice", "disconnect": {"code": 4000, "reason": "a\ud800"}}).encode())
    no_user = await post(server, "unsubscribe", json.dumps({"channel": chat}).encode())
    bad_batch = await post(server, "batch", json.dumps(
        {"commands": [{"publish": {"channel": chat, "data": 1}}, {"nope": {}}, 7]}).encode())
    # not JSON, not an object, a field of the wrong type: 400, Centrifugo's error shape
    for status, body in (not_json, array, nan, wrong_type, bad_pattern):
        assert status == 400 and body["error"]["code"] == 107, (status, body)
    # values Centrifugo refuses: 200 with the error
    for status, body in (no_channel, no_data, not_base64, bad_code, bad_reason, no_user):
        assert status == 200 and body["error"]["code"] == 107, (status, body)
    assert bad_batch[0] == 200
    assert [list(r) for r in bad_batch[1]["replies"]] == [["publish"], ["error"], ["error"]]
    assert bad_batch[1]["replies"][1]["error"]["code"] == 104


@pytest_twisted.ensureDeferred
async def test_keys_and_methods(start):
    server = await start()
    chat = unique("chat")
    body = json.dumps({"channel": chat, "data": 1}).encode()

    def with_cent(key: str) -> Any:
        try:
            return CentClient(server.http_url("/api"), key).publish(
                PublishRequest(channel=chat, data=1))
        except (CentUnauthorizedError, CentTransportError) as exc:
            return exc

    wrong = await in_thread(with_cent, "wrong-key")
    right = await in_thread(with_cent, KEY)
    apikey = await post(server, "publish", body, {"Authorization": f"apikey {KEY}"})
    wrong_apikey = await post(server, "publish", body, {"Authorization": "apikey nope"})
    no_key = await post(server, "presence_stats", body, {})
    bearer_only_here = await post(server, "presence_stats",
                                  json.dumps({"channel": chat}).encode(),
                                  {"Authorization": f"Bearer {KEY}"})
    get = await in_thread(lambda: http_get(server.http_url("/api/publish"),
                                           headers={"X-API-Key": KEY}))
    assert isinstance(wrong, CentUnauthorizedError)
    assert (right.offset, right.epoch) == (0, "")
    assert apikey == (200, {"result": {}})
    assert wrong_apikey[0] == 401 and wrong_apikey[1]["error"]["code"] == 101
    assert no_key[0] == 401
    assert bearer_only_here == (200, {"result": {"num_clients": 0, "num_users": 0}})
    assert get[0] == 405


@pytest_twisted.ensureDeferred
async def test_realtime_form_still_answers_beside_it(start):
    server = await start()
    realtime_form = await post(server, "publish",
                               json.dumps({"group": "lobby", "text": "hi"}).encode(),
                               {"Authorization": f"Bearer {KEY}"})
    realtime_bad = await post(server, "publish", json.dumps({"channel": "x"}).encode(),
                              {"Authorization": f"Bearer {KEY}"})
    # The same path with X-API-Key is Centrifugo's form: a realtime body is a bad request.
    centrifugo_form = await post(server, "publish",
                                 json.dumps({"group": "lobby", "text": "hi"}).encode())
    assert realtime_form == (200, {"ok": True, "groups": 1})
    assert realtime_bad[0] == 400 and isinstance(realtime_bad[1]["error"], str)
    assert centrifugo_form[0] == 200 and centrifugo_form[1]["error"]["code"] == 107


@pytest_twisted.ensureDeferred
async def test_an_unavailable_layer_is_a_clear_error(start):
    from realtime.layers.redis import RedisChannelLayer
    from tests.redis_support import free_port

    layer = RedisChannelLayer.from_url(f"redis://127.0.0.1:{free_port()}/0")
    layer.start()
    server = await start(layer)
    chat, news = unique("chat"), unique("news")
    publish = await post(server, "publish", json.dumps({"channel": news, "data": 1}).encode())
    presence = await post(server, "presence", json.dumps({"channel": chat}).encode())
    broadcast = await post(server, "broadcast", json.dumps(
        {"channels": [chat, news], "data": 1}).encode())
    for status, body in (publish, presence):
        assert status == 200, body
        assert body["error"] == {"code": 100, "message":
                                 "internal server error: the channel layer is unavailable"}
    assert [r["error"]["code"] for r in broadcast[1]["result"]["responses"]] == [100, 100]


@pytest.mark.parametrize("pattern, name, matches", [
    ("chat:*", "chat:a", True), ("chat:*", "news:a", False),
    ("{chat,news}:*", "news:x", True), ("{chat,news}:*", "feed:x", False),
    ("{a,{b,c}d}", "cd", True), ("{a,{b,c}d}", "c", False),
    ("a?c", "abc", True), ("[a-c]x", "bx", True), ("[!a-c]x", "bx", False),
    ("[!a-c]x", "dx", True), ("a\\*b", "a*b", True), ("a\\*b", "axb", False),
    ("x.y", "xzy", False), ("*", "", True),
])
def test_channel_patterns_are_centrifugos_globs(pattern, name, matches):
    """gobwas/glob, as Centrifugo's ``channels`` reads its ``pattern``."""
    assert bool(pubsub.compile_glob(pattern).fullmatch(name)) is matches
