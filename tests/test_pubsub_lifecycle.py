"""``realtime.pubsub``'s connections over their lifetime, on every transport: what a
connection that goes away in the middle of its connect or of a server-side subscribe
leaves behind (nothing: no group, no presence, no timer, no place of the user's), the
drain's 3001 for streams however far their connect got, a publication held before a
close, the server API's ``refresh`` at the edges (past, far future), JSON nested past the
parser, and a stream's status when the layer fails for a while (reconnect). Each was a
defect a review found, against a real server."""
from __future__ import annotations

import json
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from realtime import pubsub
from realtime.layers import InMemoryChannelLayer
from tests.clients import in_thread
from tests.test_pubsub import SECRET, WAIT, _settings, from_thread, pubsub_server, token  # noqa: F401
from tests.test_pubsub_uni import (
    FEED,
    KEY,
    ROOM,
    UNI,
    Stream,
    call_api,
    closed,
    next_message,
    open_stream,
)


class SlowLayer(InMemoryChannelLayer):
    """group_add answers 0.5 s late (a Redis SUBSCRIBE in flight). ``joins``: how many
    group_adds were asked for; ``pending``: how many have not answered yet."""
    delay = 0.5

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.joins = self.pending = 0

    def group_add(self, group, channel, *args, **kwargs):
        self.joins += 1
        self.pending += 1
        d = super().group_add(group, channel, *args, **kwargs)
        return deferLater(reactor, self.delay, self._answered).addCallback(lambda _: d)

    def _answered(self) -> None:
        self.pending -= 1


def wait_until(check: Any, timeout: float) -> None:
    """From a test's thread: poll ``check()`` (called in the reactor) every 20 ms until it is
    true or ``timeout`` seconds have passed; the test's own assertions then decide."""
    deadline = time.monotonic() + timeout
    while not from_thread(check) and time.monotonic() < deadline:
        time.sleep(0.02)


def joins_answered(layer: Any, after: int = 0) -> Any:
    """A check for ``wait_until``: more than ``after`` joins were asked for, and every one
    has answered (the server's callbacks on them have run). The checks that follow it ask
    for ``pending == 0`` too: a state seen while a join is in flight is not the last."""
    return lambda: layer.joins > after and layer.pending == 0


def rest_of(ws: Any, wait: float, still_open: str) -> list[Any]:
    """What a WebSocket gets until it closes (then ``("closed", code)``), or until nothing
    came for ``wait`` seconds (then ``still_open``)."""
    from websockets.exceptions import ConnectionClosed

    got: list[Any] = []
    try:
        while True:
            got.append(json.loads(ws.recv(timeout=wait)))
    except ConnectionClosed as exc:
        got.append(("closed", exc.rcvd.code if exc.rcvd else None))
    except TimeoutError:
        got.append(still_open)
    return got


def assert_nothing_left(layer: Any, channel: str = "room:x") -> None:
    """No connection of the test is in any group, or in the channel's presence."""
    assert (memberships(layer), layer.local_presence(pubsub.channel_group(channel))) == (
        {}, {})


def memberships(layer: Any) -> dict[str, Any]:
    return {name: sorted(groups) for name, groups in layer._memberships.items()}


@pytest_twisted.ensureDeferred
async def test_stream_gone_mid_connect_leaves_no_membership(pubsub_server):  # noqa: F811
    """The client of an HTTP stream leaves while its connect awaits the layer's join:
    nothing of it may stay in the layer's groups or presence."""
    layer = SlowLayer()
    server = await pubsub_server(FEED, ROOM, layer=layer)

    def flow() -> Any:
        import httpx
        try:
            httpx.post(server.http_url("/connection/uni_http_stream"),
                       content=json.dumps({"token": token("ada", channels=["room:x"])}).encode(),
                       timeout=0.2)
        except httpx.TimeoutException:
            pass
        # Every delayed join has completed (as a 2 s sleep waited for before), then what the
        # server does about the gone client has had 1.5 s.
        wait_until(joins_answered(layer), 5.0)
        wait_until(lambda: layer.pending == 0 and memberships(layer) == {}
                   and layer.local_presence(pubsub.channel_group("room:x")) == {}, 1.5)

    await in_thread(flow)
    room = pubsub.channel_group("room:x")
    assert memberships(layer) == {}
    assert layer.local_presence(room) == {}


@pytest_twisted.ensureDeferred
async def test_stream_gone_mid_connect_presence_and_count(pubsub_server):  # noqa: F811
    """The same: the user's place and the presence are given back."""
    layer = SlowLayer()
    server = await pubsub_server(FEED, ROOM, layer=layer, max_connections_per_user=1)

    def flow() -> Any:
        import httpx
        try:
            httpx.post(server.http_url("/connection/uni_http_stream"),
                       content=json.dumps({"token": token("ada", channels=["room:x"])}).encode(),
                       timeout=0.2)
        except httpx.TimeoutException:
            pass
        wait_until(joins_answered(layer), 5.0)
        wait_until(lambda: layer.pending == 0 and server.site.per_user == {}
                   and layer.local_presence(pubsub.channel_group("room:x")) == {}, 1.5)

    await in_thread(flow)
    room = pubsub.channel_group("room:x")
    assert server.site.per_user == {}  # --max-connections-per-user's place given back
    assert layer.local_presence(room) == {}


@pytest_twisted.ensureDeferred
async def test_ws_gone_mid_connect_control(pubsub_server):  # noqa: F811
    """The same over the unidirectional WebSocket."""
    from websockets.sync.client import connect
    layer = SlowLayer()
    server = await pubsub_server(FEED, ROOM, layer=layer)

    def flow() -> Any:
        with connect(server.ws_url(UNI), open_timeout=WAIT) as ws:
            ws.send(json.dumps({"token": token("ada", channels=["room:x"])}))
            time.sleep(0.2)
        wait_until(joins_answered(layer), 5.0)
        wait_until(lambda: layer.pending == 0 and memberships(layer) == {}
                   and layer.local_presence(pubsub.channel_group("room:x")) == {}, 1.5)

    await in_thread(flow)
    room = pubsub.channel_group("room:x")
    assert memberships(layer) == {}
    assert layer.local_presence(room) == {}


@pytest_twisted.ensureDeferred
async def test_stream_connecting_at_drain_start_ends_with_3001(pubsub_server):  # noqa: F811
    """A stream whose connect is still in progress (here: the layer's join) when the
    drain starts must end too, not hold the drain until --shutdown-timeout."""
    layer = SlowLayer()
    server = await pubsub_server(FEED, ROOM, layer=layer)
    drained: list[Any] = []

    def flow() -> Any:
        import threading
        threading.Timer(0.2, lambda: from_thread(
            lambda: drained.append(server.site.drain()))).start()  # mid-connect
        with open_stream(server, "sse", {"token": token("ada", channels=["room:x"])}) as response:
            stream = Stream(response, sse=True)
            connected = stream.next()
            started = time.time()
            try:
                rest = stream.rest()
            except Exception as exc:  # read timeout: still open
                rest = repr(exc)
            return connected, rest, time.time() - started

    connected, rest, took = await in_thread(flow)
    assert "connect" in connected
    assert rest and rest[-1] == {"disconnect": {"code": 3001, "reason": "shutdown"}}, (rest, took)


@pytest_twisted.ensureDeferred
async def test_stream_opened_during_drain(pubsub_server):  # noqa: F811
    """A stream that comes while the server drains connects and ends at once with 3001
    (the client goes to another server), as Centrifugo shuts new connections."""
    server = await pubsub_server(FEED)

    def flow() -> Any:
        from_thread(lambda: server.site.drain() and None)
        with open_stream(server, "sse", {"token": token("ada")}) as response:
            stream = Stream(response, sse=True)
            status = response.status_code
            try:
                first = stream.next()
                rest = stream.rest()
            except Exception as exc:
                first, rest = None, repr(exc)
            return status, first, rest

    status, first, rest = await in_thread(flow)
    assert status == 200 and "connect" in first
    assert rest == [{"disconnect": {"code": 3001, "reason": "shutdown"}}]




@pytest_twisted.ensureDeferred
async def test_api_refresh_expire_at_in_the_past_expires_now(pubsub_server):  # noqa: F811
    """Centrifugo (centrifuge's Client.Refresh): expire_at with ttl <= 0 closes with
    DisconnectExpired (3005) at once, without a refresh push."""
    from websockets.sync.client import connect
    server = await pubsub_server(FEED, api_keys=(KEY,))

    def flow() -> Any:
        got: list[Any] = []
        with connect(server.ws_url(UNI), open_timeout=WAIT) as ws:
            ws.send(json.dumps({"token": token("ada")}))
            next_message(ws)
            call_api(server, "refresh", {"user": "ada", "expire_at": int(time.time()) - 5})
            got += rest_of(ws, 3, "still open after 3 s")
        return got

    got = await in_thread(flow)
    # No refresh push: the disconnect push (this unidirectional socket's last message
    # before every close) and the close.
    assert got == [{"disconnect": {"code": 3005, "reason": "connection expired"}},
                   ("closed", 3005)], got


@pytest_twisted.ensureDeferred
async def test_deeply_nested_connect_request_is_a_bad_request(pubsub_server):  # noqa: F811
    """A connect request nested past the JSON parser's depth is bad input (3501 / 400),
    as "{nope" is, not an internal error (1011 / 500 with a traceback)."""
    import httpx
    from websockets.sync.client import connect
    server = await pubsub_server(FEED)
    deep = "[" * 100_000 + "]" * 100_000

    def flow() -> Any:
        with connect(server.ws_url(UNI), open_timeout=WAIT, max_size=None) as ws:
            ws.send(deep)
            ws_end = closed(ws)
        status = httpx.post(server.http_url("/connection/uni_http_stream"),
                            content=deep.encode(), timeout=WAIT).status_code
        return ws_end, status

    ws_end, status = await in_thread(flow)
    assert (ws_end, status) == ((3501, "bad request"), 400)


@pytest_twisted.ensureDeferred
async def test_streams_translate_a_broadcast_once_per_frame(pubsub_server, monkeypatch):  # noqa: F811
    """A publication of a channel without history reaches N streams: translated once per
    process (as for WebSockets: the memo), not once per stream."""
    import uuid

    unique = uuid.uuid4().hex
    layer = InMemoryChannelLayer()
    server = await pubsub_server(ROOM, layer=layer)
    calls: list[int] = []
    original = pubsub._translated
    monkeypatch.setattr(pubsub, "_translated", lambda frame, form: (
        calls.append(1), original(frame, form))[1])

    def flow() -> Any:
        from contextlib import ExitStack
        with ExitStack() as stack:
            streams = []
            for n in range(5):
                response = stack.enter_context(open_stream(
                    server, "http_stream", {"token": token(f"u{n}", channels=["room:x"])}))
                streams.append(Stream(response, sse=False))
                streams[-1].next()
            time.sleep(0.3)
            calls.clear()
            # A payload of its own: translations are kept per process, by frame (another
            # test's "hello" in room:x would be translated already).
            from_thread(pubsub.publish, "room:x", unique, layer=layer)
            got = []
            for stream in streams:
                while (m := stream.next()) and "pub" not in m:
                    pass
                got.append(m)
            return got

    got = await in_thread(flow)
    assert all(m == {"channel": "room:x", "pub": {"data": unique}} for m in got)
    assert len(calls) == 1, len(calls)


class SlowJwks:
    """--jwks-url's refetch of a rotated key ("k2"), answered 0.5 s late."""

    def unknown_kid(self) -> Any:
        from realtime.settings import settings
        from realtime.tokens import VerificationKey

        def fetched() -> bool:
            settings.jwt_keys = [*settings.jwt_keys, VerificationKey(SECRET, ("HS256",), "k2")]
            return True
        return deferLater(reactor, 0.5, fetched)


def rotating_keys() -> None:
    """Only "k1" is known; "k2" comes later, from ``SlowJwks``."""
    from realtime.settings import settings
    from realtime.tokens import VerificationKey

    settings.jwt_keys = [VerificationKey(SECRET, ("HS256",), "k1")]
    settings.jwt_key_source = SlowJwks()


@pytest_twisted.ensureDeferred
async def test_stream_gone_while_connect_awaits_jwks(pubsub_server):  # noqa: F811
    """The same with a plain in-memory layer: the client leaves while the connect waits
    for --jwks-url's refetch of a rotated key."""
    import jwt as pyjwt


    layer = InMemoryChannelLayer()
    server = await pubsub_server(FEED, ROOM, layer=layer)
    rotating_keys()
    tok = pyjwt.encode({"sub": "ada", "exp": int(time.time()) + 60, "channels": ["room:x"]},
                       SECRET, algorithm="HS256", headers={"kid": "k2"})

    def flow() -> Any:
        import httpx
        try:
            httpx.post(server.http_url("/connection/uni_http_stream"),
                       content=json.dumps({"token": tok}).encode(), timeout=0.2)
        except httpx.TimeoutException:
            pass
        time.sleep(1.0)

    await in_thread(flow)
    assert_nothing_left(layer)


@pytest_twisted.ensureDeferred
async def test_temporary_failure_is_not_a_final_status_for_eventsource(pubsub_server):  # noqa: F811
    """The layer failing (3004: reconnect) must not answer a status that makes an
    EventSource give up for good (any non-200)."""
    from twisted.internet.defer import fail

    class Down(InMemoryChannelLayer):
        def group_add(self, group, channel, *args, **kwargs):
            return fail(ConnectionError("redis away"))

    server = await pubsub_server(FEED, layer=Down())

    def flow() -> Any:
        with open_stream(server, "sse", {"token": token("ada")}) as response:
            return response.status_code, response.read()

    status, body = await in_thread(flow)
    assert status == 200, (status, body)


@pytest.mark.parametrize("kind", ["sse", "ws"])
@pytest_twisted.ensureDeferred
async def test_held_publication_before_group_close_reaches_the_stream(pubsub_server, kind):  # noqa: F811
    """A publication broadcast (held: --broadcast-delay) before the user's group_close
    (the server API's disconnect) reaches the client before the disconnect, as on a
    WebSocket."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect
    layer = InMemoryChannelLayer()
    server = await pubsub_server(ROOM, layer=layer, broadcast_delay=0.2)

    def both() -> Any:
        pubsub.publish("room:x", "last words", layer=layer)
        return layer.group_close(pubsub.user_group("ada"), 3503, "force disconnect")

    def flow() -> Any:
        request = {"token": token("ada", channels=["room:x"])}
        if kind == "ws":
            got = []
            with connect(server.ws_url(UNI), open_timeout=WAIT) as ws:
                ws.send(json.dumps(request))
                next_message(ws)
                next_message(ws)  # own join
                from_thread(both)
                try:
                    while True:
                        got.append(json.loads(ws.recv(timeout=WAIT)))
                except ConnectionClosed as exc:
                    got.append({"closed": exc.rcvd.code})
            return got
        with open_stream(server, kind, request) as response:
            stream = Stream(response, sse=True)
            stream.next()
            stream.next()  # own join
            from_thread(both)
            return stream.rest()

    got = await in_thread(flow)
    assert got[0] == {"channel": "room:x", "pub": {"data": "last words"}}, got



class LateLayer(InMemoryChannelLayer):
    """group_add takes effect 0.5 s late (as Redis's join and presence, after SUBSCRIBE).
    ``joins`` and ``pending`` as ``SlowLayer``'s."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.joins = self.pending = 0

    def group_add(self, group, channel, *args, **kwargs):
        self.joins += 1
        self.pending += 1

        def join(_: Any) -> Any:
            self.pending -= 1
            return super(LateLayer, self).group_add(group, channel, *args, **kwargs)
        return deferLater(reactor, 0.5, lambda: None).addCallback(join)


@pytest_twisted.ensureDeferred
async def test_stream_gone_during_api_subscribe(pubsub_server):  # noqa: F811
    """A stream that goes while the server API's subscribe joins for it leaves nothing."""
    layer = LateLayer()
    server = await pubsub_server(FEED, ROOM, layer=layer, api_keys=(KEY,))

    def flow() -> Any:
        import threading
        with open_stream(server, "http_stream", {"token": token("ada")}) as response:
            stream = Stream(response, sse=False)
            stream.next()
            joined = from_thread(lambda: layer.joins)
            threading.Thread(target=call_api, args=(server, "subscribe", {
                "user": "ada", "channel": "room:x"})).start()
            time.sleep(0.2)
        # The subscribe's join has taken effect (a 1.5 s sleep waited for it before), then
        # what the server does about the gone client has had 1 s.
        wait_until(joins_answered(layer, joined), 5.0)
        wait_until(lambda: layer.pending == 0 and memberships(layer) == {}
                   and layer.local_presence(pubsub.channel_group("room:x")) == {}, 1.0)

    await in_thread(flow)
    assert_nothing_left(layer)


@pytest_twisted.ensureDeferred
async def test_ws_gone_during_api_subscribe_control(pubsub_server):  # noqa: F811
    """The same over the unidirectional WebSocket."""
    from websockets.sync.client import connect
    layer = LateLayer()
    server = await pubsub_server(FEED, ROOM, layer=layer, api_keys=(KEY,))

    def flow() -> Any:
        import threading
        with connect(server.ws_url(UNI), open_timeout=WAIT) as ws:
            ws.send(json.dumps({"token": token("ada")}))
            next_message(ws)
            joined = from_thread(lambda: layer.joins)
            threading.Thread(target=call_api, args=(server, "subscribe", {
                "user": "ada", "channel": "room:x"})).start()
            time.sleep(0.2)
        # The subscribe's join has taken effect (a 1.5 s sleep waited for it before), then
        # what the server does about the gone client has had 1 s.
        wait_until(joins_answered(layer, joined), 5.0)
        wait_until(lambda: layer.pending == 0 and memberships(layer) == {}
                   and layer.local_presence(pubsub.channel_group("room:x")) == {}, 1.0)

    await in_thread(flow)
    assert_nothing_left(layer)


@pytest_twisted.ensureDeferred
async def test_deeply_nested_command_bidirectional(pubsub_server):  # noqa: F811
    """A command nested past the parser is bad input (3501) on the bidirectional
    WebSocket too."""
    from websockets.sync.client import connect
    server = await pubsub_server(FEED)
    deep = "[" * 100_000 + "]" * 100_000

    def flow() -> Any:
        with connect(server.ws_url("/connection/websocket"), open_timeout=WAIT) as ws:
            ws.send(deep)
            return closed(ws)

    assert await in_thread(flow) == (3501, "bad request")


@pytest.mark.parametrize("expire_at", [10**400, 2**64, 2**40])
@pytest_twisted.ensureDeferred
async def test_api_refresh_huge_expire_at(pubsub_server, expire_at):  # noqa: F811
    """``expire_at`` past 64 bits is a bad body (400); a far one is held to a year
    (Centrifugo's limit); the connection stays either way."""
    from websockets.sync.client import connect
    server = await pubsub_server(FEED, api_keys=(KEY,))

    def flow() -> Any:
        got: list[Any] = []
        with connect(server.ws_url(UNI), open_timeout=WAIT) as ws:
            ws.send(json.dumps({"token": token("ada")}))
            next_message(ws)
            import httpx
            r = httpx.post(server.http_url("/api/refresh"), headers={"X-API-Key": KEY},
                           content=f'{{"user": "ada", "expire_at": {expire_at}}}'.encode())
            got.append(r.status_code)
            got += rest_of(ws, 1, "open")
        return got

    got = await in_thread(flow)
    assert got[-1] == "open", got
    if expire_at < 1 << 63:
        assert got[0] == 200
        assert got[1] == {"refresh": {"expires": True, "ttl": pytest.approx(
            pubsub.MAX_TTL, abs=5)}}
    else:
        assert got == [400, "open"]


@pytest_twisted.ensureDeferred
async def test_a_stream_gone_during_sub_refresh_leaves_no_timer(pubsub_server):  # noqa: F811
    """A stream's client leaves while its ``sub_refresh`` waits for a rotated key: no
    subscription expiry is armed for it afterwards (the leak check finds none)."""
    import jwt as pyjwt

    from tests.test_pubsub_emulation import Session, open_session

    server = await pubsub_server("feed:allow_subscribe_for_client")
    rotating_keys()
    now = int(time.time())

    def signed(claims: dict[str, Any], kid: str) -> str:
        return pyjwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": kid})

    def flow() -> Any:
        connect = {"token": signed({"sub": "ada", "exp": now + 60}, "k1")}
        with open_session(server, "http_stream", connect) as response:
            session = Session(server, "http_stream", response)
            connected = session.reply(1)["connect"]
            session.session, session.node = connected["session"], connected["node"]
            subscribed = session.call("subscribe", {"channel": "$feed:x", "token": signed(
                {"sub": "ada", "exp": now + 60, "channel": "$feed:x"}, "k1")})
            session.ids += 1
            session.post({"id": session.ids, "sub_refresh": {"channel": "$feed:x", "token":
                          signed({"sub": "ada", "exp": now + 120, "channel": "$feed:x"},
                                 "k2")}})
            time.sleep(0.1)
        time.sleep(1.0)  # the key came after the client left
        return subscribed

    subscribed = await in_thread(flow)
    assert subscribed["subscribe"]["expires"] is True
