"""``realtime.pubsub``: application-level pings (Centrifugo's ``{}`` every 25 s, answered
by the SDKs with ``{}``) and the refresh answers that keep an SDK reconnecting: a real
server, Centrifugo's own Python SDK and a raw WebSocket client; history paged backwards;
failing hooks."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
import pytest_twisted
from twisted.internet import reactor
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from realtime import pubsub
from realtime.config import ServerConfig
from realtime.settings import configure, reset
from realtime.testing import serve
from realtime.tokens import key_from_text
from tests.clients import in_thread

SECRET = "p" * 40


def token(**claims):
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture(autouse=True)
def _settings(monkeypatch):
    monkeypatch.setattr(pubsub, "PING_INTERVAL", 0.3)
    configure(jwt_keys=[key_from_text(SECRET)])
    pubsub.configure(["chat:allow_subscribe_for_client"], layer=_Rules())
    yield
    reset()


class _Rules:
    """configure() asks the layer to keep history for namespaces that have it: none here."""

    def keep_history(self, *args, **kwargs):
        raise AssertionError("no namespace here keeps history")


def connected_as_ada(ws) -> dict:
    """Send a connect with ada's token: the reply."""
    ws.send(json.dumps({"id": 1, "connect": {"token": token(sub="ada")}}))
    return json.loads(ws.recv(timeout=5))


def closed_with(ws) -> tuple[int | None, str]:
    """Read until the server closes: its close code and reason."""
    try:
        while True:
            ws.recv(timeout=5)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "closed without a close frame"
        return closed.rcvd.code, closed.rcvd.reason


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_pongs_is_closed_3012(live):
    server = await live(pubsub.application)

    def flow():
        with connect(server.ws_url("/connection/websocket")) as ws:
            reply = connected_as_ada(ws)
            first_ping = ws.recv(timeout=5)
            return reply, first_ping, closed_with(ws)

    reply, first_ping, close = await in_thread(flow)
    assert reply["connect"]["ping"] == 1 and reply["connect"]["pong"] is True
    assert first_ping == "{}"
    assert close == (3012, "no pong")


@pytest_twisted.ensureDeferred
async def test_a_client_that_pongs_stays(live):
    server = await live(pubsub.application)

    def flow():
        with connect(server.ws_url("/connection/websocket")) as ws:
            connected_as_ada(ws)
            pings = 0
            deadline = time.monotonic() + 1.5  # five intervals
            while time.monotonic() < deadline:
                assert ws.recv(timeout=2) == "{}"
                pings += 1
                ws.send("{}")
            ws.send(json.dumps({"id": 2, "subscribe": {"channel": "chat:a"}}))
            while (frame := ws.recv(timeout=5)) == "{}":
                ws.send("{}")
            return pings, json.loads(frame)

    pings, subscribed = await in_thread(flow)
    assert pings >= 3
    assert subscribed == {"id": 2, "subscribe": {}}


@pytest_twisted.ensureDeferred
async def test_the_sdk_answers_pings_and_stays_connected(live):
    from centrifuge import Client

    server = await live(pubsub.application)

    async def flow():
        client = Client(server.ws_url("/connection/websocket"), token=token(sub="ada"))
        await client.connect()
        await asyncio.sleep(1.5)  # five ping intervals
        state = client.state
        await client.disconnect()
        return state

    state = await in_thread(lambda: asyncio.run(flow()))
    assert state.value == "connected"


@pytest_twisted.ensureDeferred
async def test_an_expired_subscription_token_on_sub_refresh_closes_3006(live):
    server = await live(pubsub.application)
    now = time.time()

    def flow():
        with connect(server.ws_url("/connection/websocket")) as ws:
            connected_as_ada(ws)
            ws.send(json.dumps({"id": 2, "subscribe": {"channel": "$secret", "token": token(
                sub="ada", channel="$secret", exp=int(now) + 60)}}))
            reply = json.loads(ws.recv(timeout=5))
            ws.send(json.dumps({"id": 3, "sub_refresh": {"channel": "$secret", "token": token(
                sub="ada", channel="$secret", exp=int(now) - 10)}}))
            return reply, closed_with(ws)

    reply, close = await in_thread(flow)
    assert reply["subscribe"]["expires"] is True and 50 <= reply["subscribe"]["ttl"] <= 60
    assert close == (3006, "subscription expired")


@pytest_twisted.ensureDeferred
async def test_history_before_a_position_newest_first(live):
    """``history`` with ``since`` and ``reverse`` pages backwards, as Centrifugo's does:
    the publications before the position, newest first (a client loading older messages
    of a chat it already shows); a position of another epoch is 112."""
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    pubsub.configure(["log:allow_subscribe_for_client,allow_history_for_client,"
                      "history_size=10,history_ttl=60"], layer=layer)
    server = await serve(pubsub.application, ServerConfig(), reactor, layer=layer)
    try:
        for n in range(1, 7):
            await pubsub.publish("log:a", n, layer=layer)

        def flow():
            with connect(server.ws_url("/connection/websocket")) as ws:
                ws.send(json.dumps({"id": 1, "connect": {"token": token(sub="ada")}}))
                epoch = None
                answers = []
                for ident, params in enumerate([
                        {"limit": 0},
                        {"limit": 2, "since": "EPOCH5", "reverse": True},
                        {"limit": -1, "since": "EPOCH3", "reverse": True},
                        {"limit": 2, "since": "EPOCH2"},
                        {"limit": 2, "since": {"epoch": "other", "offset": 2}, "reverse": True},
                        {"limit": 2, "since": {"epoch": "x", "offset": "2"}, "reverse": True},
                ], start=2):
                    if isinstance(params.get("since"), str):
                        params["since"] = {"epoch": epoch, "offset": int(params["since"][5:])}
                    ws.send(json.dumps({"id": ident, "history": {"channel": "log:a", **params}}))
                    while (frame := json.loads(ws.recv(timeout=5))).get("id") != ident:
                        pass
                    if epoch is None:
                        epoch = frame["history"]["epoch"]
                    answers.append(frame)
                return answers

        answers = await in_thread(flow)
    finally:
        await server.stop()

    def offsets(answer):
        return [(p["data"], p["offset"]) for p in answer["history"].get("publications", [])]

    assert answers[0]["history"]["offset"] == 6 and offsets(answers[0]) == []
    assert offsets(answers[1]) == [(4, 4), (3, 3)]
    assert offsets(answers[2]) == [(2, 2), (1, 1)]
    assert offsets(answers[3]) == [(3, 3), (4, 4)]
    assert answers[4]["error"]["code"] == 112
    assert answers[5]["error"]["code"] == 107


class Failing(pubsub.PubSubConsumer):
    async def on_message(self, data):
        raise RuntimeError("boom " + str(data))

    async def rpc(self, method, data):
        raise RuntimeError("rpc boom")


@pytest_twisted.ensureDeferred
async def test_a_failing_hook_keeps_the_connection(live):
    """``send`` has no reply to carry an error: a failing ``on_message`` is logged and the
    socket stays; a failing ``rpc`` answers 100, temporary (the SDKs may try again)."""
    from realtime import URLRouter, path
    from tests.clients import captured_log

    server = await live(URLRouter([path("connection/websocket", Failing.as_asgi())]))

    def flow():
        with connect(server.ws_url("/connection/websocket")) as ws:
            connected_as_ada(ws)
            ws.send(json.dumps({"send": {"data": "x"}}))
            ws.send(json.dumps({"id": 2, "rpc": {"method": "m", "data": 1}}))
            rpc = json.loads(ws.recv(timeout=5))
            ws.send(json.dumps({"id": 3, "subscribe": {"channel": "chat:a"}}))
            return rpc, json.loads(ws.recv(timeout=5))

    with captured_log() as events:
        rpc, subscribed = await in_thread(flow)
    assert rpc == {"id": 2, "error": {"code": 100, "message": "internal server error",
                                      "temporary": True}}
    assert subscribed == {"id": 3, "subscribe": {}}
    failures = [e for e in events if e.get("log_failure") is not None]
    assert sorted(str(e["log_failure"].value) for e in failures) == ["boom x", "rpc boom"]


@pytest_twisted.ensureDeferred
async def test_server_side_subscriptions_from_the_token(live):
    """The connection token's ``channels`` (Centrifugo's claim): the client is subscribed
    before the connect reply, gets their publications at client level, cannot unsubscribe
    from them, and recovers what it missed when it reconnects (the SDK sends its
    positions in the connect's ``subs``)."""
    from centrifuge import Client, ClientEventHandler

    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    pubsub.configure(["personal:", "news:history_size=10,history_ttl=60,force_recovery"],
                     layer=layer)
    server = await serve(pubsub.application, ServerConfig(), reactor, layer=layer)
    channels = ["personal:ada", "news:all"]
    try:
        async def sdk():
            seen: list = []

            class Events(ClientEventHandler):
                async def on_subscribed(self, ctx):
                    seen.append(("subscribed", ctx.channel, ctx.recovered))

                async def on_publication(self, ctx):
                    seen.append((ctx.channel, ctx.pub.data, ctx.pub.offset))

            client = Client(server.ws_url("/connection/websocket"),
                            token=token(sub="ada", channels=channels), events=Events())
            await client.connect()
            await client.ready()
            await in_reactor(pubsub.publish, "personal:ada", "hello")
            await in_reactor(pubsub.publish, "news:all", "one")
            await wait_for(lambda: len(seen) >= 4)
            await client.disconnect()
            await in_reactor(pubsub.publish, "news:all", "two")
            await in_reactor(pubsub.publish, "news:all", "three")
            await client.connect()
            await client.ready()
            await wait_for(lambda: len(seen) >= 8)
            await client.disconnect()
            return seen

        from twisted.internet import threads

        def in_reactor_call(fn, *args):
            return threads.blockingCallFromThread(reactor, fn, *args, layer=layer)

        async def in_reactor(fn, *args):
            return await asyncio.get_running_loop().run_in_executor(
                None, lambda: in_reactor_call(fn, *args))

        async def wait_for(condition):
            for _ in range(100):
                if condition():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("timed out")

        seen = await in_thread(lambda: asyncio.run(sdk()))

        def raw():
            with connect(server.ws_url("/connection/websocket")) as ws:
                ws.send(json.dumps({"id": 1, "connect": {
                    "token": token(sub="bob", channels=["personal:bob"])}}))
                reply = json.loads(ws.recv(timeout=5))
                ws.send(json.dumps({"id": 2, "unsubscribe": {"channel": "personal:bob"}}))
                ws.send(json.dumps({"id": 3, "subscribe": {"channel": "personal:bob"}}))
                answers = json.loads(ws.recv(timeout=5)), json.loads(ws.recv(timeout=5))
                in_reactor_call(pubsub.publish, "personal:bob", "still here")
                return (reply, *answers, json.loads(ws.recv(timeout=5)))

        reply, unsubscribed, again, pushed = await in_thread(raw)
    finally:
        await server.stop()
    assert sorted(seen[:2]) == [("subscribed", "news:all", False),
                                ("subscribed", "personal:ada", False)]
    assert seen[2:4] == [("personal:ada", "hello", 0), ("news:all", "one", 1)]
    assert ("subscribed", "news:all", True) in seen[4:6]
    assert seen[6:] == [("news:all", "two", 2), ("news:all", "three", 3)]
    assert reply["connect"]["subs"] == {"personal:bob": {}}
    assert unsubscribed == {"id": 2, "unsubscribe": {}}
    assert pushed == {"push": {"channel": "personal:bob", "pub": {"data": "still here"}}}
    assert again == {"id": 3, "error": {"code": 105, "message": "already subscribed"}}


@pytest_twisted.ensureDeferred
async def test_anonymous_subscribers_publish_only_with_for_anonymous(live):
    """Centrifugo's rule for anonymous clients: ``allow_publish_for_subscriber`` lets a
    signed-in subscriber publish; an anonymous one needs ``allow_publish_for_anonymous``
    too."""
    pubsub.configure([
        "talk:allow_subscribe_for_client,allow_subscribe_for_anonymous,"
        "allow_publish_for_subscriber",
        "open:allow_subscribe_for_client,allow_subscribe_for_anonymous,"
        "allow_publish_for_subscriber,allow_publish_for_anonymous",
    ], anonymous=True, layer=_Rules())
    server = await live(pubsub.application)

    def flow(tok):
        with connect(server.ws_url("/connection/websocket")) as ws:
            ws.send(json.dumps({"id": 1, "connect": {"token": tok} if tok else {}}))
            answers = [json.loads(ws.recv(timeout=5))]
            for ident, (method, params) in enumerate([
                    ("subscribe", {"channel": "talk:a"}),
                    ("publish", {"channel": "talk:a", "data": 1}),
                    ("subscribe", {"channel": "open:a"}),
                    ("publish", {"channel": "open:a", "data": 2})], start=2):
                ws.send(json.dumps({"id": ident, method: params}))
                while "push" in (answer := json.loads(ws.recv(timeout=5))):
                    pass
                answers.append(answer.get("error", {}).get("code", "ok"))
            return answers[1:]

    assert await in_thread(flow, None) == ["ok", 103, "ok", "ok"]
    assert await in_thread(flow, token(sub="ada")) == ["ok", "ok", "ok", "ok"]


@pytest_twisted.ensureDeferred
async def test_max_connections_per_user_counts_connect_command_users(live):
    """``--max-connections-per-user`` (Centrifugo's ``user_connection_limit``) for users who
    sign in with the connect command: past it, 3504 (the SDKs do not reconnect); another
    user is not affected, and a closed connection frees its place."""
    server = await live(pubsub.application, max_connections_per_user=1)
    url = server.ws_url("/connection/websocket")

    def connected(ws, sub):
        ws.send(json.dumps({"id": 1, "connect": {"token": token(sub=sub)}}))
        return json.loads(ws.recv(timeout=5))

    def flow():
        with connect(url) as first, connect(url) as second, connect(url) as bob:
            ok = connected(first, "ada")
            second.send(json.dumps({"id": 1, "connect": {"token": token(sub="ada")}}))
            refused = closed_with(second)
            other = connected(bob, "bob")
        deadline = time.monotonic() + 5
        while True:  # until the first one's close has reached the server
            with connect(url) as again:
                try:
                    later = connected(again, "ada")
                    break
                except ConnectionClosed:
                    if time.monotonic() > deadline:
                        raise
        return ok, refused, other, later

    ok, refused, other, later = await in_thread(flow)
    assert "connect" in ok and "connect" in other and "connect" in later
    assert refused == (3504, "connection limit")


@pytest_twisted.ensureDeferred
async def test_commands_are_counted_for_metrics(live):
    """``realtime_pubsub_commands_total{method, result}``: each command answered, by its
    result (``ok`` or the error code)."""
    from realtime.metrics import Collector, exposition
    from tests.test_http_metrics import parse

    server = await live(pubsub.application)
    server.site.metrics = Collector([server.site], server.site.layer)

    def flow():
        with connect(server.ws_url("/connection/websocket")) as ws:
            for ident, command in enumerate([
                    {"connect": {"token": token(sub="ada")}},
                    {"subscribe": {"channel": "chat:a"}},
                    {"subscribe": {"channel": "chat:b"}},
                    {"subscribe": {"channel": "nowhere:x"}},
                    {"rpc": {"method": "m"}}], start=1):
                ws.send(json.dumps({"id": ident, **command}))
                json.loads(ws.recv(timeout=5))

    await in_thread(flow)
    values = parse(exposition(server.site.metrics)[1].decode())
    counted = {key: value for key, value in values.items()
               if key.startswith("realtime_pubsub_commands_total")}
    assert counted == {
        'realtime_pubsub_commands_total{"method": "connect", "result": "ok"}': 1.0,
        'realtime_pubsub_commands_total{"method": "subscribe", "result": "ok"}': 2.0,
        'realtime_pubsub_commands_total{"method": "subscribe", "result": "102"}': 1.0,
        'realtime_pubsub_commands_total{"method": "rpc", "result": "108"}': 1.0,
    }


def _answer(ws, ident, pushes):
    """The reply to command ``ident``; the pushes read before it go to ``pushes`` (pings,
    ``{}``, are dropped)."""
    while (frame := json.loads(ws.recv(timeout=5))).get("id") != ident:
        if "push" in frame:
            pushes.append(frame)
    return frame


@pytest_twisted.ensureDeferred
async def test_join_leave_asked_by_a_client_needs_presence_permission(live):
    """Centrifugo honours a client's ``join_leave: true`` only for a client that may ask the
    channel's presence (``allow_presence_for_subscriber``/``_for_client``, anonymous ones
    with ``_for_anonymous``): join and leave pushes show who is there, as presence does."""
    pubsub.configure([
        "hidden:allow_subscribe_for_client,allow_subscribe_for_anonymous,presence,join_leave",
        "seen:allow_subscribe_for_client,allow_subscribe_for_anonymous,presence,join_leave,"
        "allow_presence_for_subscriber",
    ], anonymous=True, layer=_Rules())
    server = await live(pubsub.application)
    url = server.ws_url("/connection/websocket")

    def flow(tok):
        pushes: list = []
        with connect(url) as watcher, connect(url) as bob:
            watcher.send(json.dumps({"id": 1, "connect": {"token": tok} if tok else {}}))
            _answer(watcher, 1, pushes)
            for ident, channel in enumerate(("hidden:a", "seen:a"), start=2):
                watcher.send(json.dumps({"id": ident, "subscribe": {
                    "channel": channel, "join_leave": True}}))
                _answer(watcher, ident, pushes)
            bob.send(json.dumps({"id": 1, "connect": {"token": token(sub="bob")}}))
            _answer(bob, 1, [])
            for ident, channel in enumerate(("hidden:a", "seen:a"), start=2):
                bob.send(json.dumps({"id": ident, "subscribe": {"channel": channel}}))
                _answer(bob, ident, [])
            # bob's joins reach the watcher in his order: hidden:a's (if any) came first.
            while not any(p["push"].get("join", {}).get("info", {}).get("user") == "bob"
                          for p in pushes if p["push"]["channel"] == "seen:a"):
                if "push" in (frame := json.loads(watcher.recv(timeout=5))):
                    pushes.append(frame)
        return sorted({p["push"]["channel"] for p in pushes if "join" in p["push"]})

    assert await in_thread(flow, token(sub="ada")) == ["seen:a"]
    # An anonymous subscriber has no presence here (no allow_presence_for_anonymous).
    pubsub.configure([
        "hidden:allow_subscribe_for_client,allow_subscribe_for_anonymous,presence,join_leave,"
        "allow_presence_for_subscriber",
        "seen:allow_subscribe_for_client,allow_subscribe_for_anonymous,presence,join_leave,"
        "allow_presence_for_subscriber,allow_presence_for_anonymous",
    ], anonymous=True, layer=_Rules())
    assert await in_thread(flow, None) == ["seen:a"]


@pytest_twisted.ensureDeferred
async def test_a_client_with_history_access_may_ask_recoverable(live):
    """Centrifugo makes a subscription recoverable when the client asks (``recoverable:
    true``) and the namespace has ``allow_recovery`` or the client may ask the channel's
    history (``allow_history_for_subscriber``/``_for_client``; anonymous clients with
    ``_for_anonymous``)."""
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    kept = "allow_subscribe_for_client,allow_subscribe_for_anonymous,history_size=10," \
           "history_ttl=60"
    pubsub.configure([f"plain:{kept}", f"asked:{kept},allow_recovery",
                      f"read:{kept},allow_history_for_subscriber",
                      f"open:{kept},allow_history_for_subscriber,allow_history_for_anonymous"],
                     anonymous=True, layer=layer)
    server = await serve(pubsub.application, ServerConfig(), reactor, layer=layer)
    try:
        def flow(tok):
            with connect(server.ws_url("/connection/websocket")) as ws:
                ws.send(json.dumps({"id": 1, "connect": {"token": tok} if tok else {}}))
                _answer(ws, 1, [])
                got = {}
                for ident, name in enumerate(("plain", "asked", "read", "open"), start=2):
                    ws.send(json.dumps({"id": ident, "subscribe": {
                        "channel": f"{name}:a", "recoverable": True}}))
                    got[name] = _answer(ws, ident, [])["subscribe"].get("recoverable", False)
                return got

        assert await in_thread(flow, token(sub="ada")) == {
            "plain": False, "asked": True, "read": True, "open": True}
        assert await in_thread(flow, None) == {
            "plain": False, "asked": True, "read": False, "open": True}
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_failed_connect_gives_back_its_user_count(live):
    """``--max-connections-per-user``: a connect refused after its user was counted (a
    server-side subscription in an unknown namespace: error 102, the socket stays) does not
    hold that user's place, and a connect tried again on that socket counts its own user."""
    server = await live(pubsub.application, max_connections_per_user=1)
    url = server.ws_url("/connection/websocket")

    def connect_as(ws, sub, **claims):
        ws.send(json.dumps({"id": 1, "connect": {"token": token(sub=sub, **claims)}}))
        try:
            return json.loads(ws.recv(timeout=5))
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None

    def flow():
        with connect(url) as first, connect(url) as ada, connect(url) as bob:
            failed = connect_as(first, "ada", channels=["nowhere:x"])
            ada_ok = connect_as(ada, "ada")
            retried = connect_as(first, "bob")
            bob_refused = connect_as(bob, "bob")
        return failed, ada_ok, retried, bob_refused

    failed, ada_ok, retried, bob_refused = await in_thread(flow)
    assert failed["error"]["code"] == 102
    assert "connect" in ada_ok and "connect" in retried
    assert bob_refused == 3504


@pytest_twisted.ensureDeferred
async def test_a_socket_closed_while_its_connect_waits_is_not_counted(live):
    """``--max-connections-per-user``: a socket that closes while its connect waits for a
    token's key (an unknown ``kid``: the JWKS is fetched again) is gone when the connect
    goes on; counting its user then would hold that user's place for good."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import deferLater

    from realtime.settings import settings
    from realtime.tokens import VerificationKey

    fetched: list[Deferred] = []

    class Source:
        def unknown_kid(self):
            fetched.append(Deferred())
            return fetched[-1]

    configure(jwt_keys=[VerificationKey(SECRET, ("HS256",), "old")], jwt_key_source=Source())
    server = await live(pubsub.application, max_connections_per_user=1)
    url = server.ws_url("/connection/websocket")
    new_kid = jwt.encode({"sub": "ada"}, SECRET, algorithm="HS256", headers={"kid": "new"})

    def send_and_leave():
        with connect(url) as ws:
            ws.send(json.dumps({"id": 1, "connect": {"token": new_kid}}))
            deadline = time.monotonic() + 5
            while not fetched and time.monotonic() < deadline:
                time.sleep(0.01)  # until the server waits for the key (a poll, not a pause)

    await in_thread(send_and_leave)
    assert fetched
    deadline = time.monotonic() + 5
    while server.site.connections and time.monotonic() < deadline:  # the close reached it
        await deferLater(reactor, 0.01, lambda: None)
    assert not server.site.connections
    settings.jwt_keys = [VerificationKey(SECRET, ("HS256",), "new")]
    fetched[0].callback(True)

    def again():
        with connect(url) as ws:
            ws.send(json.dumps({"id": 1, "connect": {"token": new_kid}}))
            try:
                return json.loads(ws.recv(timeout=5))
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd is not None else None

    assert "connect" in await in_thread(again)


@pytest_twisted.ensureDeferred
async def test_expire_at_decides_how_long_a_connection_or_subscription_lasts(live,
                                                                             monkeypatch):
    """Centrifugo's ``expire_at`` claim: the token's ``exp`` is checked as ever, but the
    connection (subscription) lasts until ``expire_at``; ``0``: it does not expire (a
    one-time token); a value that is no number is an invalid token (3500)."""
    monkeypatch.setattr(pubsub, "EXPIRED_CLOSE_DELAY", 0.2)
    monkeypatch.setattr(pubsub, "PING_INTERVAL", 0)  # the lasting one sleeps past exp
    server = await live(pubsub.application)
    url = server.ws_url("/connection/websocket")
    now = int(time.time())

    def connected(ws, **claims):
        ws.send(json.dumps({"id": 1, "connect": {"token": token(sub="ada", **claims)}}))
        return json.loads(ws.recv(timeout=5))

    def flow():
        with connect(url) as short, connect(url) as forever, connect(url) as bad:
            soon = connected(short, exp=now + 60, expire_at=now + 1)
            lasting = connected(forever, exp=now + 2, expire_at=0)
            forever.send(json.dumps({"id": 2, "subscribe": {"channel": "$x", "token": token(
                sub="ada", channel="$x", exp=now + 60, expire_at=0)}}))
            subscribed = json.loads(forever.recv(timeout=5))
            bad.send(json.dumps({"id": 1, "connect": {"token": token(
                sub="ada", exp=now + 60, expire_at="later")}}))
            refused = closed_with(bad)
            ended = closed_with(short)
            time.sleep(max(0.0, now + 2.5 - time.time()))  # past the token's exp + grace
            forever.send(json.dumps({"id": 3, "ping": {}}))
            return soon, lasting, subscribed, refused, ended, json.loads(forever.recv(timeout=5))

    soon, lasting, subscribed, refused, ended, pong = await in_thread(flow)
    assert soon["connect"]["expires"] is True and soon["connect"]["ttl"] == 1
    assert "expires" not in lasting["connect"] and "expires" not in subscribed["subscribe"]
    assert refused == (3500, "invalid token") and ended == (3005, "connection expired")
    assert pong == {"id": 3, "ping": {}}


@pytest_twisted.ensureDeferred
async def test_a_socket_signed_in_at_the_handshake_takes_no_token_of_another_user(live):
    """One socket, one user: signed in at the handshake (``TokenAuthMiddleware``) as ada, a
    connect token for bob closes 3500; ada's own token is taken (its claims: its expiry)."""
    from realtime import URLRouter, path
    from realtime.tokens import TokenAuthMiddleware

    app = TokenAuthMiddleware(URLRouter([path("connection/websocket",
                                              pubsub.PubSubConsumer.as_asgi())]))
    server = await live(app)
    url = server.ws_url("/connection/websocket")

    def flow(sub):
        with connect(url, additional_headers={"Authorization": f"Bearer {token(sub='ada')}"}
                     ) as ws:
            ws.send(json.dumps({"id": 1, "connect": {"token": token(sub=sub)}}))
            if sub == "ada":
                return json.loads(ws.recv(timeout=5))
            return closed_with(ws)

    assert await in_thread(flow, "bob") == (3500, "invalid token")
    assert "connect" in await in_thread(flow, "ada")


@pytest_twisted.ensureDeferred
async def test_positioned_subscriptions(live):
    """Centrifugo's positioning: with ``force_positioning``, or a client asking
    (``positioned: true``) with ``allow_positioning`` or a right to the channel's history,
    the subscribe reply carries the stream position and every push its offset; without
    either the request is not granted; a namespace without history cannot have it."""
    from centrifuge import Client, SubscriptionEventHandler

    from realtime.layers import InMemoryChannelLayer

    kept = "history_size=10,history_ttl=60,allow_subscribe_for_client"
    layer = InMemoryChannelLayer()
    pubsub.configure([f"forced:{kept},force_positioning",
                      f"asked:{kept},allow_positioning,allow_publish_for_subscriber",
                      f"reader:{kept},allow_history_for_client", f"plain:{kept}"],
                     layer=layer)
    with pytest.raises(ValueError, match="positioning needs history"):
        pubsub.parse_namespace("bad:allow_positioning")
    server = await serve(pubsub.application, ServerConfig(), reactor, layer=layer)
    url = server.ws_url("/connection/websocket")
    try:
        def raw():
            with connect(url) as ws:
                connected_as_ada(ws)
                replies = {}
                for ident, channel in enumerate(
                        ["forced:a", "asked:a", "reader:a", "plain:a"], start=2):
                    ws.send(json.dumps({"id": ident, "subscribe": {
                        "channel": channel, "positioned": channel != "forced:a"}}))
                    replies[channel] = json.loads(ws.recv(timeout=5))["subscribe"]
                return replies

        replies = await in_thread(raw)

        async def sdk():
            got = []

            class Events(SubscriptionEventHandler):
                async def on_subscribed(self, ctx):
                    got.append((ctx.positioned, ctx.stream_position.offset))

                async def on_publication(self, ctx):
                    got.append(ctx.pub.offset)

            client = Client(url, token=token(sub="bob"))
            await client.connect()
            sub = client.new_subscription("asked:b", Events(), positioned=True)
            await sub.subscribe()
            await sub.publish("x")
            for _ in range(100):
                if len(got) == 2:
                    break
                await asyncio.sleep(0.05)
            await client.disconnect()
            return got

        got = await in_thread(lambda: asyncio.run(sdk()))
    finally:
        await server.stop()
    for channel in ("forced:a", "asked:a", "reader:a"):
        assert replies[channel]["positioned"] is True and replies[channel]["offset"] == 0
        assert isinstance(replies[channel]["epoch"], str) and replies[channel]["epoch"]
    assert replies["plain:a"] == {}
    assert got == [(True, 0), 1]
