"""``realtime.pubsub``: Centrifugo's client protocol (JSON) against Centrifugo's own Python
SDK (centrifuge-python, the asyncio client, in a worker thread's own event loop) and a raw
``websockets`` client for what no SDK sends. Real servers on the in-memory layer (each test
its own, so history rules do not outlive it); tests/e2e/test_pubsub_redis.py runs the
cross-server part on a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
import pytest_twisted
from centrifuge import (
    Client,
    ClientEventHandler,
    ReplyError,
    StreamPosition,
    SubscriptionEventHandler,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from realtime import pubsub
from realtime.pubsub import PubSubConsumer, PubSubError
from realtime.routing import URLRouter, path
from realtime.settings import configure, reset
from realtime.tokens import TokenAuthMiddleware, key_from_text
from tests.clients import in_thread

SECRET = "p" * 40
PATH = "/connection/websocket"
WAIT = 5.0


@pytest.fixture(autouse=True)
def _settings() -> Any:
    configure(jwt_keys=[key_from_text(SECRET)])
    yield
    reset()


def token(sub: str = "ada", ttl: float | None = 60.0, key: str = SECRET, **claims: Any) -> str:
    body: dict[str, Any] = {"sub": sub, **claims}
    if ttl is not None:
        body["exp"] = int(time.time() + ttl)
    return jwt.encode(body, key, algorithm="HS256")


@pytest.fixture
def pubsub_server(realtime_leak_check: Any) -> Any:
    """``await pubsub_server(*namespaces, anonymous=, app=, layer=, **config)``: a real
    server (``realtime.pubsub.application`` by default) on a fresh in-memory layer (or
    ``layer``), the namespaces configured on it; stopped and leak-checked after the test."""
    from realtime.config import ServerConfig
    from realtime.layers import InMemoryChannelLayer
    from realtime.testing import serve

    servers: list[Any] = []

    async def start(*namespaces: str, anonymous: bool = False, app: Any = None,
                    layer: Any = None, **config: Any) -> Any:
        layer = layer if layer is not None else InMemoryChannelLayer()
        pubsub.configure(namespaces, anonymous=anonymous, layer=layer)
        server = await serve(app or pubsub.application, ServerConfig(**config), layer=layer)
        servers.append(server)
        return server

    yield start
    for server in servers:
        pytest_twisted.blockon(server.stop())


# -- the SDK -----------------------------------------------------------------------------------

class Recorder(ClientEventHandler, SubscriptionEventHandler):
    """Every event of a client or a subscription, in order, for ``next``."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def _put(self, kind: str, ctx: Any) -> None:
        self.log.append((kind, ctx))
        self._queue.put_nowait((kind, ctx))

    async def on_connecting(self, ctx: Any) -> None:
        self._put("connecting", ctx)

    async def on_connected(self, ctx: Any) -> None:
        self._put("connected", ctx)

    async def on_disconnected(self, ctx: Any) -> None:
        self._put("disconnected", ctx)

    async def on_error(self, ctx: Any) -> None:
        self._put("error", ctx)

    async def on_subscribing(self, ctx: Any) -> None:
        self._put("subscribing", ctx)

    async def on_subscribed(self, ctx: Any) -> None:
        self._put("subscribed", ctx)

    async def on_unsubscribed(self, ctx: Any) -> None:
        self._put("unsubscribed", ctx)

    async def on_publication(self, ctx: Any) -> None:
        self._put("publication", ctx)

    async def on_join(self, ctx: Any) -> None:
        self._put("join", ctx)

    async def on_leave(self, ctx: Any) -> None:
        self._put("leave", ctx)

    async def next(self, kind: str, timeout: float = WAIT) -> Any:
        """The next event of ``kind`` (others before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} event in {timeout} s; had {self.kinds()}")
            try:
                got, ctx = await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                continue
            if got == kind:
                return ctx

    async def none(self, kind: str, within: float) -> None:
        """No event of ``kind`` within ``within`` seconds."""
        try:
            ctx = await self.next(kind, within)
        except AssertionError:
            return
        raise AssertionError(f"unexpected {kind}: {ctx}")

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.log]


def sdk_client(server: Any, tok: str = "", **options: Any) -> tuple[Client, Recorder]:
    events = Recorder()
    options.setdefault("timeout", WAIT)
    client = Client(server.ws_url(PATH), events=events, token=tok, proxy=None,
                    min_reconnect_delay=0.05, max_reconnect_delay=0.3, **options)
    return client, events


async def subscribed(client: Client, channel: str, **options: Any) -> tuple[Any, Recorder]:
    """A subscription of ``client`` to ``channel``, subscribed (its SubscribedContext is
    the recorder's first ``subscribed`` event)."""
    events = Recorder()
    sub = client.new_subscription(channel, events=events, **options)
    await sub.subscribe()
    await sub.ready(WAIT)
    return sub, events


def run(scenario: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """Run an SDK scenario in a worker thread's own event loop (the reactor keeps serving)."""
    async def bounded() -> Any:
        return await asyncio.wait_for(scenario(), timeout)

    return in_thread(asyncio.run, bounded())


def from_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` in the reactor from an SDK scenario and wait for its Deferred."""
    from twisted.internet import reactor
    from twisted.internet.threads import blockingCallFromThread

    return blockingCallFromThread(reactor, fn, *args, **kwargs)


# -- a raw client --------------------------------------------------------------------------------

class Raw:
    """A raw WebSocket client speaking the JSON protocol by hand."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = 0
        self.pushes: list[dict[str, Any]] = []

    def send(self, method: str, params: Any = None) -> int:
        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, method: params or {}}))
        return self.ids

    def recv(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.ws.recv(timeout=WAIT))
        return message

    def call(self, method: str, params: Any = None) -> dict[str, Any]:
        """The reply to one command (pushes before it are skipped)."""
        ident = self.send(method, params)
        while True:
            message = self.recv()
            if message.get("id") == ident:
                return message
            self.pushes.append(message)

    def push(self) -> dict[str, Any]:
        """The next push (one ``call`` skipped, or the next to come)."""
        return self.pushes.pop(0) if self.pushes else self.recv()

    def result(self, method: str, params: Any = None) -> dict[str, Any]:
        reply = self.call(method, params)
        assert "error" not in reply, reply
        result: dict[str, Any] = reply[method]
        return result

    def error(self, method: str, params: Any = None) -> int:
        reply = self.call(method, params)
        assert "error" in reply, reply
        return int(reply["error"]["code"])

    def connect(self, tok: str | None = None) -> dict[str, Any]:
        return self.result("connect", {"token": tok if tok is not None else token()})

    def closed(self) -> int | None:
        """The close code the server ends the connection with (messages before it skipped)."""
        try:
            while True:
                self.ws.recv(timeout=WAIT)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None


def raw(server: Any, flow: Callable[..., Any]) -> Any:
    """Run ``flow(Raw)`` in a worker thread."""
    def go() -> Any:
        with connect(server.ws_url(PATH), open_timeout=WAIT) as ws:
            return flow(Raw(ws))

    return in_thread(go)


# -- connect -------------------------------------------------------------------------------------

CHAT = "chat:presence,join_leave,allow_subscribe_for_client,allow_publish_for_subscriber," \
       "allow_presence_for_subscriber"


@pytest_twisted.ensureDeferred
async def test_connect_with_a_token_carries_its_user_and_info(pubsub_server):
    server = await pubsub_server(CHAT)

    async def scenario() -> Any:
        client, events = sdk_client(server, token("ada", info={"name": "Ada"}))
        await client.connect()
        connected = await events.next("connected")
        await subscribed(client, "chat:room")
        presence = await client.presence("chat:room")
        await client.disconnect()
        return connected, presence

    connected, presence = await run(scenario)
    assert connected.client and connected.version.startswith("realtime ")
    (info,) = presence.clients.values()
    assert (info.client, info.user, info.conn_info) == (connected.client, "ada",
                                                        {"name": "Ada"})


@pytest_twisted.ensureDeferred
async def test_an_expired_token_is_109_and_the_sdk_gets_a_new_one(pubsub_server):
    server = await pubsub_server()
    asked: list[str] = []

    async def get_token() -> str:
        asked.append("token")
        return token("ada")

    async def scenario() -> Any:
        client, events = sdk_client(server, token("ada", ttl=-10), get_token=get_token)
        await client.connect()
        error = await events.next("error")
        await events.next("connected")
        await client.disconnect()
        return error

    error = await run(scenario)
    assert isinstance(error.error, ReplyError) and error.error.code == 109
    assert asked == ["token"]


@pytest_twisted.ensureDeferred
async def test_a_bad_signature_closes_3500_and_the_sdk_stays_away(pubsub_server):
    server = await pubsub_server()

    async def scenario() -> Any:
        client, events = sdk_client(server, token("ada", key="x" * 40))
        await client.connect()
        disconnected = await events.next("disconnected")
        return disconnected, events.kinds()

    disconnected, kinds = await run(scenario)
    assert disconnected.code == 3500
    assert "connected" not in kinds and kinds.count("connecting") == 1


@pytest_twisted.ensureDeferred
async def test_a_subscription_token_is_no_connection_token(pubsub_server):
    """As Centrifugo: a token with a ``channel`` claim (a subscription token, perhaps for
    an anonymous user, and anonymous connections not allowed) closes 3500, on connect and
    on refresh."""
    server = await pubsub_server("chat:")

    def on_connect(c: Raw) -> Any:
        c.send("connect", {"token": token("", channel="chat:room")})
        return c.closed()

    def on_refresh(c: Raw) -> Any:
        c.connect(token("ada"))
        c.send("refresh", {"token": token("ada", channel="chat:room")})
        return c.closed()

    assert await raw(server, on_connect) == 3500
    assert await raw(server, on_refresh) == 3500


@pytest_twisted.ensureDeferred
async def test_a_connect_refused_halfway_through_its_server_side_subscriptions(
        pubsub_server):
    """A token whose ``channels`` name a channel of an unknown namespace after a good one:
    the connect is refused (102) and leaves the groups it joined (the client, not
    connected, gets no publication of the first), and the token's user does not stay
    (a connect without a token is still 101)."""
    server = await pubsub_server("ok:")

    def flow(c: Raw) -> Any:
        failed = c.call("connect", {"token": token("ada", channels=["ok:a", "nope:b"])})
        from_thread(pubsub.publish, "ok:a", "not for you", layer=server.site.layer)
        anonymous = c.call("connect", {})
        connected = c.call("connect", {"token": token("ada")})
        return failed, anonymous, connected, c.pushes

    failed, anonymous, connected, pushes = await raw(server, flow)
    assert failed["error"]["code"] == 102
    assert anonymous["error"]["code"] == 101
    assert "connect" in connected
    assert pushes == []


@pytest_twisted.ensureDeferred
async def test_a_server_side_subscription_that_lost_its_state_reconnects(pubsub_server):
    """A recoverable server-side subscription told of a gap (or a new epoch): closed 3010
    (Centrifugo's insufficient state: reconnect, and the connect's ``subs`` recover it),
    not an unsubscribe push, at which the SDKs drop a server-side subscription for good."""
    server = await pubsub_server(RECOVER)
    group = pubsub.channel_group("feed:all")

    def flow(c: Raw) -> Any:
        c.connect(token("ada", channels=["feed:all"]))
        from_thread(server.site.layer.group_send, group, {"type": "layer.gap", "group": group})
        return c.closed(), c.pushes

    code, pushes = await raw(server, flow)
    assert code == 3010 and pushes == []


@pytest_twisted.ensureDeferred
async def test_no_token_is_101_unless_anonymous_is_allowed(pubsub_server):
    server = await pubsub_server()

    async def scenario() -> Any:
        client, events = sdk_client(server)
        await client.connect()
        return await events.next("disconnected")

    assert (await run(scenario)).code == 101

    server = await pubsub_server("news:allow_subscribe_for_client,allow_subscribe_for_anonymous",
                                 anonymous=True)

    async def anonymous() -> Any:
        client, events = sdk_client(server)
        await client.connect()
        await events.next("connected")
        _sub, sub_events = await subscribed(client, "news:today")
        ctx = await sub_events.next("subscribed")
        await client.disconnect()
        return ctx

    assert (await run(anonymous)).channel == "news:today"


@pytest_twisted.ensureDeferred
async def test_a_user_authenticated_at_the_handshake_needs_no_connect_token(pubsub_server):
    app = TokenAuthMiddleware(URLRouter([path("connection/websocket",
                                              PubSubConsumer.as_asgi())]))
    server = await pubsub_server(":allow_user_limited_channels,presence,"
                                 "allow_presence_for_subscriber", app=app)

    async def scenario() -> Any:
        client, events = sdk_client(server, headers={"Authorization": f"Bearer {token('bob')}"})
        await client.connect()
        await events.next("connected")
        await subscribed(client, "dialog#ada,bob")  # bob's channel: he is bob
        presence = await client.presence("dialog#ada,bob")
        await client.disconnect()
        return presence

    presence = await run(scenario)
    assert [info.user for info in presence.clients.values()] == ["bob"]


# -- subscribe -----------------------------------------------------------------------------------

PERMISSIONS = (
    "open:allow_subscribe_for_client",
    "anon:allow_subscribe_for_client,allow_subscribe_for_anonymous",
    # Alone it does nothing, as in Centrifugo: it extends allow_subscribe_for_client.
    "alone:allow_subscribe_for_anonymous",
    "closed:",
    ":allow_user_limited_channels",
)


@pytest_twisted.ensureDeferred
async def test_who_may_subscribe(pubsub_server):
    server = await pubsub_server(*PERMISSIONS, anonymous=True)

    def sub(channel: str, tok: str | None = None) -> dict[str, Any]:
        return {"channel": channel, **({"token": tok} if tok else {})}

    def as_ada(client: Raw) -> Any:
        client.connect(token("ada"))
        return {
            "open": client.result("subscribe", sub("open:x")),
            "anon": client.result("subscribe", sub("anon:x")),
            "alone": client.error("subscribe", sub("alone:x")),
            "closed": client.error("subscribe", sub("closed:x")),
            "unknown": client.error("subscribe", sub("nowhere:x")),
            "private": client.error("subscribe", sub("$open:x")),
            "private token": client.result("subscribe", sub(
                "$open:x", token("ada", ttl=None, channel="$open:x"))),
            "token": client.result("subscribe", sub(
                "closed:y", token("ada", channel="closed:y", info={"role": "op"}))),
            "wrong channel": client.error("subscribe", sub(
                "closed:z", token("ada", channel="closed:other"))),
            "other user": client.error("subscribe", sub(
                "closed:w", token("bob", channel="closed:w"))),
            "expired": client.error("subscribe", sub(
                "closed:v", token("ada", ttl=-10, channel="closed:v"))),
            "limited": client.result("subscribe", sub("dialog#ada,bob")),
            "not hers": client.error("subscribe", sub("dialog#bob,carl")),
            "again": client.error("subscribe", sub("open:x")),
            "after unsubscribe": (client.result("unsubscribe", sub("open:x")),
                                  client.result("subscribe", sub("open:x"))),
        }

    def anonymous(client: Raw) -> Any:
        client.result("connect", {})
        return (client.error("subscribe", sub("open:x")),
                client.result("subscribe", sub("anon:x")),
                client.error("subscribe", sub("alone:x")),
                client.error("subscribe", sub("dialog#,ada")))

    got = await raw(server, as_ada)
    assert got["open"] == got["anon"] == got["private token"] == got["limited"] == {}
    assert got["token"] == {"expires": True, "ttl": pytest.approx(60, abs=2)}
    assert got["after unsubscribe"] == ({}, {})
    assert {k: v for k, v in got.items() if isinstance(v, int)} == {
        "alone": 103, "closed": 103, "unknown": 102, "private": 103, "wrong channel": 103,
        "other user": 103, "expired": 109, "not hers": 103, "again": 105}
    assert await raw(server, anonymous) == (103, {}, 103, 103)


@pytest_twisted.ensureDeferred
async def test_a_user_limited_channel_is_its_users_alone(pubsub_server):
    """In a namespace open to every client that also has user-limited channels, ``#ada``
    is still Ada's alone (Centrifugo asks neither ``allow_subscribe_for_client`` nor its
    proxy for a user-limited channel): bob and the hook are refused, a token lets in."""
    class Lenient(PubSubConsumer):
        async def can_subscribe(self, channel: str, data: Any) -> bool:
            return True

    app = URLRouter([path("connection/websocket", Lenient.as_asgi())])
    server = await pubsub_server("open:allow_subscribe_for_client,allow_user_limited_channels",
                                 "hooked:allow_user_limited_channels", app=app)

    def as_bob(client: Raw) -> Any:
        client.connect(token("bob"))
        return (client.error("subscribe", {"channel": "open:dialog#ada,carl"}),
                client.error("subscribe", {"channel": "hooked:dialog#ada"}),
                client.result("subscribe", {"channel": "open:dialog#ada,bob"}),
                client.result("subscribe", {"channel": "open:plain"}),
                client.result("subscribe", {"channel": "open:dialog#ada", "token": token(
                    "bob", channel="open:dialog#ada")}))

    *refused_or_not, with_token = await raw(server, as_bob)
    assert refused_or_not == [103, 103, {}, {}]
    assert with_token["expires"] is True


@pytest_twisted.ensureDeferred
async def test_max_groups_per_connection_is_106(pubsub_server):
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    layer.max_groups_per_connection = 2
    server = await pubsub_server("open:allow_subscribe_for_client", layer=layer)

    def flow(client: Raw) -> Any:
        client.connect()
        return [client.call("subscribe", {"channel": f"open:{n}"}).get("error", {}).get("code")
                for n in range(3)]

    assert await raw(server, flow) == [None, None, 106]


class Hooked(PubSubConsumer):
    """Decides in Python what the namespaces leave closed."""

    messages: list[Any] = []

    async def can_subscribe(self, channel: str, data: Any) -> bool:
        if data == "teapot":
            raise PubSubError(4418, "teapot")
        return bool(data == "please" and self.user == "ada")

    async def can_publish(self, channel: str, data: Any) -> bool:
        return bool(data == {"signed": "ada"} and self.user == "ada")

    async def rpc(self, method: str, data: Any) -> Any:
        if method == "echo":
            return {"echo": data, "user": self.user}
        if method == "sent":
            return list(self.messages)
        if method == "nothing":
            return None
        if method == "unserialisable":
            return {1, 2}
        return await super().rpc(method, data)

    async def on_message(self, data: Any) -> None:
        self.messages.append(data)


HOOKED = URLRouter([path("connection/websocket", Hooked.as_asgi())])


@pytest_twisted.ensureDeferred
async def test_the_hooks_of_a_subclass(pubsub_server):
    Hooked.messages = []
    server = await pubsub_server("closed:", app=HOOKED)

    async def scenario() -> Any:
        client, events = sdk_client(server, token("ada"))
        await client.connect()
        await events.next("connected")
        _, sub_events = await subscribed(client, "closed:a", data="please")
        refused = client.new_subscription("closed:b", events=Recorder(), data="nope")
        await refused.subscribe()
        denied = await refused.events.next("unsubscribed")
        teapot = client.new_subscription("closed:c", events=Recorder(), data="teapot")
        await teapot.subscribe()
        custom = await teapot.events.next("unsubscribed")
        await client.publish("closed:a", {"signed": "ada"})
        pub = await sub_events.next("publication")
        errors = []
        for method, data in (("publish", "unsigned"), ("rpc", "missing")):
            try:
                if method == "publish":
                    await client.publish("closed:a", data)
                else:
                    await client.rpc(data, None)
            except ReplyError as exc:
                errors.append(exc.code)
        echo = await client.rpc("echo", [1, "two"])
        nothing = await client.rpc("nothing", None)
        await client.disconnect()
        return denied.code, custom.code, pub.pub.data, errors, echo.data, nothing.data

    denied, custom, data, errors, echo, nothing = await run(scenario)
    assert (denied, custom) == (103, 4418)
    assert data == {"signed": "ada"}
    assert errors == [103, 104]
    assert echo == {"echo": [1, "two"], "user": "ada"} and nothing is None

    def send(client: Raw) -> Any:  # the SDK has no send(): centrifuge-js's client.send()
        client.ws.send(json.dumps({"send": {"data": "before connect"}}))
        client.connect()
        client.ws.send(json.dumps({"send": {"data": {"async": 1}}}))
        return client.result("rpc", {"method": "sent"}), client.call("rpc", {
            "method": "unserialisable"}), client.result("ping")

    sent, unserialisable, pong = await raw(server, send)
    assert sent == {"data": [{"async": 1}]}
    assert unserialisable["error"]["code"] == 100 and pong == {}


# -- publish -------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_publications_fan_out_between_sdk_clients(pubsub_server):
    server = await pubsub_server(CHAT, "board:allow_publish_for_client",
                                 "wall:allow_publish_for_client,allow_publish_for_anonymous",
                                 anonymous=True)

    async def scenario() -> Any:
        ada, ada_events = sdk_client(server, token("ada", info={"name": "Ada"}))
        bob, bob_events = sdk_client(server, token("bob"))
        carl, carl_events = sdk_client(server, token("carl"))
        anon, anon_events = sdk_client(server)
        for client, events in ((ada, ada_events), (bob, bob_events), (carl, carl_events),
                               (anon, anon_events)):
            await client.connect()
            await events.next("connected")
        _, at_ada = await subscribed(ada, "chat:room")
        _, at_bob = await subscribed(bob, "chat:room")
        await ada.publish("chat:room", {"text": "hi"})
        got = [await at_bob.next("publication"), await at_ada.next("publication")]
        refused = []
        for client, channel in ((carl, "chat:room"), (anon, "board:x"), (anon, "chat:room")):
            try:
                await client.publish(channel, 1)
                refused.append(None)
            except ReplyError as exc:
                refused.append(exc.code)
        await carl.publish("board:x", 2)  # allow_publish_for_client: no subscription needed
        await anon.publish("wall:x", 3)
        await bob.publish("chat:room", [2])
        after = await at_ada.next("publication")
        for client in (ada, bob, carl, anon):
            await client.disconnect()
        return got, refused, after

    (at_bob, at_ada), refused, after = await run(scenario)
    assert at_bob.pub.data == at_ada.pub.data == {"text": "hi"}
    assert (at_bob.pub.info.user, at_bob.pub.info.conn_info) == ("ada", {"name": "Ada"})
    assert refused == [103, 103, 103]
    assert after.pub.data == [2] and after.pub.info.user == "bob"


@pytest_twisted.ensureDeferred
async def test_the_server_publishes_to_sdk_clients(pubsub_server):
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    server = await pubsub_server(CHAT, "feed:history_size=5,history_ttl=60s,"
                                 "allow_subscribe_for_client", layer=layer)

    async def scenario() -> Any:
        client, _events = sdk_client(server, token("ada"))
        await client.connect()
        _, chat = await subscribed(client, "chat:room")
        _, feed = await subscribed(client, "feed:news")
        plain = from_thread(pubsub.publish, "chat:room", {"n": 1}, layer=layer)
        kept = from_thread(pubsub.publish, "feed:news", "two", layer=layer)
        got = (await chat.next("publication"), await feed.next("publication"))
        await client.disconnect()
        return plain, kept, got

    plain, kept, (chat, feed) = await run(scenario)
    assert plain is None and kept["offset"] == 1 and kept["epoch"]
    assert (chat.pub.data, chat.pub.info, chat.pub.offset) == ({"n": 1}, None, 0)
    assert (feed.pub.data, feed.pub.offset) == ("two", 1)
    for channel in ("chat:room", "feed:news"):
        with pytest.raises(TypeError):
            pubsub.publish(channel, {1, 2}, layer=layer)
        with pytest.raises(TypeError):  # NaN is not JSON: a browser's JSON.parse fails on it
            pubsub.publish(channel, float("nan"), layer=layer)
    with pytest.raises(PubSubError) as unknown:
        pubsub.publish("nowhere:x", 1, layer=layer)
    assert unknown.value.code == 102


# -- history and presence ------------------------------------------------------------------------

FEED = ("feed:history_size=4,history_ttl=60s,allow_subscribe_for_client,"
        "allow_publish_for_client,allow_history_for_client")


@pytest_twisted.ensureDeferred
async def test_history(pubsub_server):
    server = await pubsub_server(FEED, CHAT)

    async def scenario() -> Any:
        client, events = sdk_client(server, token("ada"))
        await client.connect()
        await events.next("connected")
        for n in range(6):
            await client.publish("feed:x", n)
        position = await client.history("feed:x")
        every = await client.history("feed:x", limit=-1)
        first = await client.history("feed:x", limit=2)
        latest = await client.history("feed:x", limit=2, reverse=True)
        since = await client.history("feed:x", limit=-1, since=StreamPosition(4, every.epoch))
        page = await client.history("feed:x", limit=1, since=StreamPosition(3, every.epoch))
        errors = []
        for channel, since_ in (("chat:room", None), ("feed:x", StreamPosition(3, "nope")),
                                ("feed:x", StreamPosition(0, every.epoch))):
            try:
                await client.history(channel, limit=-1, since=since_)
                errors.append(None)
            except ReplyError as exc:
                errors.append(exc.code)
        await client.disconnect()
        return position, every, first, latest, since, page, errors

    position, every, first, latest, since, page, errors = await run(scenario)

    def data(result: Any) -> list[Any]:
        return [(p.data, p.offset) for p in result.publications]

    assert (position.offset, position.publications) == (6, []) and position.epoch
    assert data(every) == [(2, 3), (3, 4), (4, 5), (5, 6)]
    assert data(first) == [(2, 3), (3, 4)]  # Centrifugo's: the oldest kept first
    assert data(latest) == [(5, 6), (4, 5)]  # reverse: the newest first
    assert data(since) == [(4, 5), (5, 6)]
    assert data(page) == [(3, 4)]  # a page of what follows 3, not 112
    assert errors == [108, 112, 112]


@pytest_twisted.ensureDeferred
async def test_presence_and_join_leave(pubsub_server):
    server = await pubsub_server(CHAT, "quiet:presence,allow_subscribe_for_client,"
                                 "allow_presence_for_client",
                                 "loud:join_leave,force_push_join_leave,"
                                 "allow_subscribe_for_client")

    async def scenario() -> Any:
        ada, ada_events = sdk_client(server, token("ada", info={"name": "Ada"}))
        bob, bob_events = sdk_client(server, token("bob"))
        bob2, bob2_events = sdk_client(server, token("bob"))
        for client, events in ((ada, ada_events), (bob, bob_events), (bob2, bob2_events)):
            await client.connect()
            await events.next("connected")
        _, ada_chat = await subscribed(ada, "chat:room", join_leave=True)
        _, ada_plain = await subscribed(ada, "quiet:room", join_leave=True)
        _, ada_loud = await subscribed(ada, "loud:room")  # forced on it
        _, bob_chat = await subscribed(bob, "chat:room")  # did not ask
        await subscribed(bob, "quiet:room")
        await subscribed(bob, "loud:room")
        await subscribed(bob2, "chat:room")
        joined = await ada_chat.next("join")  # her own first, as Centrifugo does
        joined = await ada_chat.next("join")
        await ada_loud.next("join")
        loud_join = await ada_loud.next("join")
        stats = await bob.presence_stats("chat:room")
        presence = await bob.presence("chat:room")
        quiet = await ada.presence_stats("quiet:room")
        try:
            await bob.presence("loud:room")
            no_presence = None
        except ReplyError as exc:
            no_presence = exc.code
        await bob2.disconnect()
        left = await ada_chat.next("leave")
        await ada_plain.none("join", 0.2)
        await bob_chat.none("join", 0.0)
        for client in (ada, bob):
            await client.disconnect()
        return joined, loud_join, stats, presence, quiet, no_presence, left

    joined, loud_join, stats, presence, quiet, no_presence, left = await run(scenario)
    assert joined.info.user == "bob" and loud_join.info.user == "bob"
    assert (stats.num_clients, stats.num_users) == (3, 2)
    assert sorted(info.user for info in presence.clients.values()) == ["ada", "bob", "bob"]
    ada_info = next(i for i in presence.clients.values() if i.user == "ada")
    assert ada_info.conn_info == {"name": "Ada"}
    assert (quiet.num_clients, quiet.num_users) == (2, 2)
    assert no_presence == 108
    assert left.info.user == "bob"


# -- recovery --------------------------------------------------------------------------------

RECOVER = ("feed:history_size=10,history_ttl=60s,force_recovery,allow_subscribe_for_client,"
           "allow_publish_for_client,allow_history_for_client")
SHORT = ("short:history_size=2,history_ttl=60s,force_recovery,allow_subscribe_for_client,"
         "allow_history_for_client")


@pytest_twisted.ensureDeferred
async def test_a_reconnecting_sdk_client_recovers_what_it_missed(pubsub_server):
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    server = await pubsub_server(RECOVER, SHORT, layer=layer)

    async def scenario() -> Any:
        client, _events = sdk_client(server, token("ada"))
        await client.connect()
        _sub, feed = await subscribed(client, "feed:x")
        _, short = await subscribed(client, "short:x")
        first = await feed.next("subscribed")
        await short.next("subscribed")
        await client.publish("feed:x", "seen")
        await feed.next("publication")
        await client.disconnect()
        for n in range(3):
            from_thread(pubsub.publish, "feed:x", {"n": n}, layer=layer)
            from_thread(pubsub.publish, "short:x", {"n": n}, layer=layer)
        await client.connect()
        again = await feed.next("subscribed")
        missed = [await feed.next("publication") for _ in range(3)]
        lost = await short.next("subscribed")
        await feed.none("publication", 0.2)
        from_thread(pubsub.publish, "feed:x", "live", layer=layer)
        live = await feed.next("publication")
        await client.disconnect()
        return first, again, missed, lost, live

    first, again, missed, lost, live = await run(scenario)
    assert (first.recoverable, first.recovered, first.stream_position.offset) == (True, False, 0)
    assert (again.was_recovering, again.recovered) == (True, True)
    assert [(p.pub.data, p.pub.offset) for p in missed] == [
        ({"n": 0}, 2), ({"n": 1}, 3), ({"n": 2}, 4)]
    assert (lost.was_recovering, lost.recovered) == (True, False)
    assert lost.stream_position.offset == 3
    assert (live.pub.data, live.pub.offset) == ("live", 5)


@pytest_twisted.ensureDeferred
async def test_reject_unrecovered_sends_112_and_the_sdk_loads_its_state_again(pubsub_server):
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    server = await pubsub_server(SHORT, layer=layer)

    async def scenario() -> Any:
        reader, _ = sdk_client(server, token("bob"))
        await reader.connect()
        loads: list[int] = []

        async def get_state(channel: str) -> StreamPosition:
            current = await reader.history(channel)
            loads.append(current.offset)
            return StreamPosition(current.offset, current.epoch)

        client, _events = sdk_client(server, token("ada"))
        await client.connect()
        _, short = await subscribed(client, "short:x", get_state=get_state)
        await client.disconnect()
        for n in range(3):
            from_thread(pubsub.publish, "short:x", {"n": n}, layer=layer)
        await client.connect()
        await short.next("subscribed")
        again = await short.next("subscribed")
        from_thread(pubsub.publish, "short:x", "live", layer=layer)
        live = await short.next("publication")
        for c in (client, reader):
            await c.disconnect()
        return loads, again, live

    loads, again, live = await run(scenario)
    assert loads == [0, 3]  # 112 on the reconnect: get_state asked again
    assert again.recovered is True and again.stream_position.offset == 3
    assert (live.pub.data, live.pub.offset) == ("live", 4)


# -- token expiry --------------------------------------------------------------------------------

def wait_past(exp: float, extra: float) -> None:
    time.sleep(max(0.0, exp + extra - time.time()))


@pytest_twisted.ensureDeferred
async def test_a_connection_past_its_token_closes_3005_unless_refreshed(pubsub_server,
                                                                        monkeypatch):
    monkeypatch.setattr(pubsub, "EXPIRED_CLOSE_DELAY", 0.2)
    server = await pubsub_server()

    def unrefreshed(client: Raw) -> Any:
        return client.connect(token("ada", ttl=1)), client.closed()

    def refreshed(client: Raw) -> Any:
        exp = time.time() + 1
        connected = client.connect(token("ada", ttl=1))
        result = client.result("refresh", {"token": token("ada", ttl=60)})
        wait_past(exp, 0.5)
        return connected, result, client.result("ping")

    def someone_else(client: Raw) -> Any:
        client.connect(token("ada", ttl=1))
        client.send("refresh", {"token": token("bob", ttl=60)})
        return client.closed()

    def expired(client: Raw) -> Any:
        # Not error 109, which centrifuge-js takes as final: the connection expires, the
        # SDK reconnects and its connect asks getToken for a fresh token.
        client.connect(token("ada", ttl=60))
        client.send("refresh", {"token": token("ada", ttl=-10)})
        return client.closed()

    (connected, code), refresh, other, late = await asyncio_gather(
        raw(server, unrefreshed), raw(server, refreshed), raw(server, someone_else),
        raw(server, expired))
    assert connected["expires"] is True and connected["ttl"] == 1 and code == 3005
    first, result, pong = refresh
    assert late == 3005 and pong == {}
    assert result["client"] == first["client"] and result["expires"] is True
    assert result["ttl"] == pytest.approx(60, abs=2)
    assert other == 3500


@pytest_twisted.ensureDeferred
async def test_a_subscription_past_its_token_closes_3006_unless_refreshed(pubsub_server,
                                                                          monkeypatch):
    monkeypatch.setattr(pubsub, "EXPIRED_CLOSE_DELAY", 0.2)
    server = await pubsub_server("closed:")

    def unrefreshed(client: Raw) -> Any:
        client.connect()
        client.result("subscribe", {"channel": "closed:a",
                                    "token": token("ada", ttl=1, channel="closed:a")})
        return client.closed()

    def refreshed(client: Raw) -> Any:
        exp = time.time() + 1
        client.connect()
        client.result("subscribe", {"channel": "closed:a",
                                    "token": token("ada", ttl=1, channel="closed:a")})
        wrong = client.error("sub_refresh", {"channel": "closed:a",
                                             "token": token("ada", channel="closed:b")})
        unknown = client.error("sub_refresh", {"channel": "closed:b",
                                               "token": token("ada", channel="closed:b")})
        result = client.result("sub_refresh", {"channel": "closed:a",
                                               "token": token("ada", channel="closed:a")})
        wait_past(exp, 0.5)
        return wrong, unknown, result, client.result("ping")

    code, (wrong, unknown, result, pong) = await asyncio_gather(
        raw(server, unrefreshed), raw(server, refreshed))
    assert code == 3006
    assert (wrong, unknown, pong) == (103, 103, {})
    assert result["expires"] is True and result["ttl"] == pytest.approx(60, abs=2)


@pytest_twisted.ensureDeferred
async def test_the_sdk_refreshes_its_tokens_in_time(pubsub_server):
    """The SDK asks for a new token when the reply's ``ttl`` (whole seconds, rounded down,
    at least 1) has passed: the server waits EXPIRED_CLOSE_DELAY past ``exp`` for it, as
    Centrifugo does (client_expired_close_delay), rather than close a client that does what
    it was told."""
    server = await pubsub_server("closed:")
    asked: list[str] = []
    exp = int(time.time()) + 1  # under a second left: the SDK is told ttl 1

    async def get_token() -> str:
        asked.append("connection")
        return token("ada", ttl=60)

    async def get_sub_token(channel: str) -> str:
        asked.append(channel)
        return token("ada", ttl=60, channel=channel)

    async def scenario() -> Any:
        client, events = sdk_client(server, token("ada", ttl=None, exp=exp),
                                    get_token=get_token)
        await client.connect()
        await events.next("connected")
        sub = client.new_subscription("closed:a", events=Recorder(), get_token=get_sub_token,
                                      token=token("ada", ttl=None, exp=exp, channel="closed:a"))
        await sub.subscribe()
        await sub.ready(WAIT)
        await asyncio.sleep(max(0.0, exp + 1.5 - time.time()))
        state = client.state.value, sub.state.value
        await client.disconnect()
        return state, events.kinds(), sub.events.kinds()

    state, kinds, sub_kinds = await run(scenario)
    assert sorted(asked) == ["closed:a", "connection"]
    assert state == ("connected", "subscribed")
    assert kinds == ["connecting", "connected", "disconnected"], kinds
    assert sub_kinds == ["subscribing", "subscribed", "subscribing"], sub_kinds


def asyncio_gather(*deferreds: Any) -> Any:
    """The results of several Deferreds (the flows run in parallel worker threads)."""
    from twisted.internet.defer import gatherResults

    return gatherResults(list(deferreds), consumeErrors=True)


# -- hostile input -------------------------------------------------------------------------------

def hostile_cases() -> list[tuple[str, Callable[[Raw], Any], Any]]:
    """(name, what the client does, the close code or error code it gets)."""
    def frame(text: str | bytes, connect: bool = True) -> Callable[[Raw], Any]:
        def act(client: Raw) -> Any:
            if connect:
                client.connect()
            client.ws.send(text)
            return client.closed()
        return act

    def error(method: str, params: Any) -> Callable[[Raw], Any]:
        def act(client: Raw) -> Any:
            client.connect()
            reply = client.call(method, params)
            return reply.get("error", {}).get("code"), client.result("ping")
        return act

    def command(body: Any) -> str:
        return json.dumps(body)

    return [
        ("invalid JSON", frame("{nope"), 3501),
        ("an empty frame", frame(""), 3501),  # Centrifugo: "empty request received"
        ("invalid JSON on a later line", frame('{"id":9,"ping":{}}\n{nope'), 3501),
        ("an array", frame("[1, 2]"), 3501),
        ("a number", frame("5"), 3501),
        ("NaN", frame('{"id":9,"publish":{"channel":"open:x","data":NaN}}'), 3501),
        ("a binary frame", frame(b'{"id":1,"connect":{}}', connect=False), 3501),
        ("no id", frame(command({"subscribe": {"channel": "open:x"}})), 3501),
        ("a string id", frame(command({"id": "1", "ping": {}})), 3501),
        ("a negative id", frame(command({"id": -1, "ping": {}})), 3501),
        ("params not an object", frame(command({"id": 1, "subscribe": [1]})), 3501),
        ("subscribe before connect", frame(
            command({"id": 1, "subscribe": {"channel": "open:x"}}), connect=False), 3501),
        ("a second connect", frame(command({"id": 9, "connect": {}})), 3501),
        ("1001 commands in a frame", frame(
            "\n".join(command({"id": n + 10, "ping": {}}) for n in range(1001))), 3501),
        ("an unknown method", error("nope", {}), (104, {})),
        ("a 256-character channel", error("subscribe", {"channel": "open:" + "x" * 251}),
         (107, {})),
        ("a control character", error("subscribe", {"channel": "open:a\x01b"}), (107, {})),
        ("a lone surrogate", error("subscribe", {"channel": "open:a\ud800"}), (107, {})),
        ("no channel", error("subscribe", {}), (107, {})),
        ("a bad recovery position", error("subscribe", {
            "channel": "rec:y", "recover": True, "epoch": 5, "offset": 1}), (107, {})),
        ("a bad history limit", error("history", {"channel": "feed:y", "limit": "10"}),
         (107, {})),
        ("a bad history since", error("history", {"channel": "feed:y", "since": {
            "epoch": "x", "offset": "one"}}), (107, {})),
        ("a publish without data", error("publish", {"channel": "open:x"}), (107, {})),
        ("an rpc method not a string", error("rpc", {"method": 5}), (107, {})),
    ]


@pytest_twisted.ensureDeferred
async def test_hostile_input_closes_or_refuses_that_client_only(pubsub_server):
    server = await pubsub_server("open:allow_subscribe_for_client,allow_publish_for_client",
                                 FEED, RECOVER.replace("feed:", "rec:"))
    cases = hostile_cases()

    def flow() -> Any:
        with connect(server.ws_url(PATH), open_timeout=WAIT) as ws:
            witness = Raw(ws)
            witness.connect(token("bob"))
            witness.result("subscribe", {"channel": "open:x"})
            got = {}
            for name, act, _ in cases:
                with connect(server.ws_url(PATH), open_timeout=WAIT) as other:
                    got[name] = act(Raw(other))
            # 1000 commands in one frame are fine (centrifuge-js batches its subscribes).
            with connect(server.ws_url(PATH), open_timeout=WAIT) as other:
                batch = Raw(other)
                batch.connect()
                other.send("\n".join(json.dumps({"id": n + 10, "ping": {}})
                                     for n in range(1000)))
                replies = [batch.recv()["id"] for _ in range(1000)]
            witness.result("publish", {"channel": "open:x", "data": "still here"})
            return got, replies, witness.push(), witness.result("ping")

    got, replies, push, pong = await in_thread(flow)
    assert got == {name: expected for name, _, expected in cases}
    assert replies == list(range(10, 1010))
    assert push["push"]["pub"]["data"] == "still here" and pong == {}


@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_in_published_data_reaches_the_subscribers(pubsub_server):
    """``"\\ud800"`` (a JavaScript string cut inside an emoji) is valid JSON that Python
    reads as a lone surrogate, which UTF-8 cannot carry: the push goes out escaped (as
    Centrifugo passes it on), and the subscribers stay (the send failed in each one's
    handler, closing it 1011, and again on every recovery from history)."""
    server = await pubsub_server("open:allow_subscribe_for_client,allow_publish_for_client",
                                 FEED)

    def flow(c: Raw) -> Any:
        c.connect()
        got = []
        for channel in ("open:x", "feed:y"):
            c.result("subscribe", {"channel": channel})
            c.ws.send(json.dumps({"id": 99, "publish": {"channel": channel,
                                                        "data": "a\ud800"}}))
            got.append(c.push())
            got.append(c.recv())
        return got, c.result("history", {"channel": "feed:y", "limit": -1}), c.result("ping")

    got, history, pong = await raw(server, flow)
    pushes = sorted((m for m in got if "push" in m), key=lambda m: m["push"]["channel"])
    assert [m["push"]["pub"]["data"] for m in pushes] == ["a\ud800", "a\ud800"]
    assert [m for m in got if "id" in m] == [{"id": 99, "publish": {}}] * 2
    assert history["publications"][0]["data"] == "a\ud800"
    assert pong == {}


@pytest_twisted.ensureDeferred
async def test_a_socket_that_never_connects_is_closed_3502(pubsub_server, monkeypatch):
    monkeypatch.setattr(pubsub, "STALE_AFTER", 0.3)
    server = await pubsub_server()

    def stale(client: Raw) -> Any:
        client.ws.send(json.dumps({}))  # a pong is not a connect
        return client.closed()

    def connected(client: Raw) -> Any:
        client.connect()
        time.sleep(0.6)
        return client.result("ping")

    assert await asyncio_gather(raw(server, stale), raw(server, connected)) == [3502, {}]


# -- twistd realtime --namespace -----------------------------------------------------------------

def namespace_error(*specs: str) -> str:
    from realtime.config import StartupError
    from realtime.tap import Options

    args = ["--app", "realtime.pubsub:application"]
    for spec in specs:
        args += ["--namespace", spec]
    with pytest.raises(StartupError) as info:
        Options().parseOptions(args)
    return str(info.value).removeprefix("realtime: error: ")


def test_namespace_options_at_start_up():
    from realtime.tap import Options

    options = Options()
    options.parseOptions(["--app", "realtime.pubsub:application", "--namespace",
                          "chat:presence,history_size=10,history_ttl=5m,force_recovery",
                          "--namespace", ":allow_subscribe_for_client", "--pubsub-anonymous"])
    from realtime.settings import settings

    chat = settings.pubsub_namespaces["chat"]
    assert (chat.presence, chat.history_size, chat.history_ttl, chat.force_recovery) == (
        True, 10, 300.0, True)
    assert settings.pubsub_namespaces[""].allow_subscribe_for_client
    assert settings.pubsub_anonymous is True
    rule = options.layer.history.match(pubsub.channel_group("chat:room"))
    assert (rule.size, rule.ttl) == (10, 300.0)
    assert options.layer.history.match(pubsub.channel_group("other:room")) is None

    assert namespace_error("chat:presense").startswith(
        "--namespace: namespace 'chat': no option 'presense' (known: ")
    assert namespace_error("chat:presence=maybe") == (
        "--namespace: namespace 'chat': presence: expected true or false, got 'maybe'")
    assert namespace_error("chat:history_size=ten,history_ttl=1s") == (
        "--namespace: namespace 'chat': history_size: expected a number of publications, "
        "got 'ten'")
    assert namespace_error("chat:history_size=5,history_ttl=soon").startswith(
        "--namespace: namespace 'chat': history_ttl: expected seconds")
    assert namespace_error("chat:history_size=10") == (
        "--namespace: namespace 'chat': history_size and history_ttl go together")
    assert namespace_error("chat:force_recovery") == (
        "--namespace: namespace 'chat': recovery needs history (history_size and history_ttl)")
    assert namespace_error("chat:presence", "chat:join_leave") == (
        "--namespace: namespace 'chat' given twice")
    assert namespace_error("chat:presence,presence=false") == (
        "--namespace: namespace 'chat': presence given twice")
    assert namespace_error("chat").startswith("--namespace: expected NAME:OPTIONS")
    assert namespace_error("bad name:presence").startswith(
        "--namespace: namespace 'bad name': a name is")


# -- the server API's refresh with info (review 2's reproduction) ---------------------------

@pytest_twisted.ensureDeferred
async def test_refresh_info_reaches_what_the_connection_publishes_in_a_channel_it_is_in(
        pubsub_server):
    """After ``refresh`` with ``info``, a publication the connection makes carries the new
    ``conn_info`` (the CHANGELOG: "the connections' info from then on (... their
    publications)"; Centrifugo builds a publication's ClientInfo from the connection's
    current info). With ``allow_publish_for_subscriber`` a client can only publish into
    channels it is subscribed to, so the old info must not stick to those publications."""
    from tests.clients import http_get

    key = "k" * 20
    server = await pubsub_server(
        "chat:allow_subscribe_for_client,allow_publish_for_subscriber", api_keys=(key,))

    def refresh() -> int:
        status, _, _ = http_get(server.http_url("/api/refresh"), method="POST", data=json.dumps(
            {"user": "ada", "info": {"role": "admin"}}).encode(), headers={"X-API-Key": key})
        return status

    def flow() -> Any:
        with connect(server.ws_url(PATH), open_timeout=WAIT) as a, \
                connect(server.ws_url(PATH), open_timeout=WAIT) as b:
            ada, bob = Raw(a), Raw(b)
            ada.connect(token("ada", info={"role": "guest"}))
            bob.connect(token("bob"))
            ada.result("subscribe", {"channel": "chat:x"})
            bob.result("subscribe", {"channel": "chat:x"})
            assert refresh() == 200
            ada.call("ping", {})  # the refresh push has reached ada (and been handled)
            ada.result("publish", {"channel": "chat:x", "data": {"n": 1}})
            pub = bob.push()["push"]["pub"]
            return pub["info"].get("conn_info")

    assert await in_thread(flow) == {"role": "admin"}


# -- a lone surrogate over every layer (review 5's reproduction) ---------------------------

#: A tags-filter namespace without history: its publications are layer events since
#: today (group_send), no longer one broadcast() frame.
MARKET = "market:allow_subscribe_for_client,allow_publish_for_client,allow_tags_filter"
#: The same without tags filters: one broadcast() frame, as before.
OPEN = "open:allow_subscribe_for_client,allow_publish_for_client"
#: With history: events that Redis keeps too.
KEPT = ("kept:allow_subscribe_for_client,allow_publish_for_client,history_size=5,"
        "history_ttl=60s")


@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_crosses_every_layer_in_every_kind_of_namespace(
        layer, pubsub_server):
    """``"a\\ud800"`` (valid JSON: a JavaScript string cut inside an emoji) published to a
    channel of a tags-filter namespace reaches its subscribers over Redis (and the sharded
    layer) as it does in a namespace without filters, escaped as Centrifugo passes it on.

    Such publications (and those with history) are layer events: the raw str went into
    msgpack, which refuses a lone surrogate, so over Redis the publish failed with 107,
    where the broadcast() frame (``_dumps``-escaped text) of a namespace without either
    went out (review 5; the Redis layer now packs with ``surrogatepass``)."""
    server = await pubsub_server(OPEN, MARKET, KEPT, layer=layer)

    def flow(c: Raw) -> Any:
        c.connect()
        got = []
        for channel in ("open:x", "market:x", "kept:x"):
            c.result("subscribe", {"channel": channel})
            reply = c.call("publish", {"channel": channel, "data": "a\ud800"})
            got.append((channel, reply, c.push() if "error" not in reply else None))
        return got

    got = await raw(server, flow)
    replies = {channel: reply for channel, reply, _ in got}
    pushes = {channel: push["push"]["pub"]["data"] for channel, _, push in got if push}
    assert replies == {"open:x": {"id": 3, "publish": {}}, "market:x": {"id": 5, "publish": {}},
                       "kept:x": {"id": 7, "publish": {}}}, replies
    assert pushes == dict.fromkeys(("open:x", "market:x", "kept:x"), "a\ud800")
