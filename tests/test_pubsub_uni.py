"""``realtime.pubsub.UniPubSubConsumer``: Centrifugo's unidirectional WebSocket
(``/connection/uni_websocket``) against a real server with a plain WebSocket client (the
``websockets`` package, as a page's ``new WebSocket(...)`` would be): the connect request
as the first message or in ``cf_connect``, bare pushes, pings, recovery, server-side
subscriptions by token and by the server API, and the close codes of a failed connect."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from realtime import pubsub
from realtime.accesslog import redact_query
from tests.clients import http_get, in_thread
from tests.test_pubsub import (  # noqa: F401  (fixtures)
    SECRET,
    WAIT,
    _settings,
    from_thread,
    pubsub_server,
    token,
)

UNI = "/connection/uni_websocket"
FEED = "feed:history_size=10,history_ttl=60s,force_recovery"
ROOM = "room:presence,join_leave,force_push_join_leave"
KEY = "uni-test-api-key-0123456789"


def call_api(server: Any, method: str, body: dict[str, Any]) -> int:
    """A Centrifugo server API call (blocking): its HTTP status."""
    status, _, _ = http_get(server.http_url(f"/api/{method}"), method="POST",
                            data=json.dumps(body).encode(), headers={"X-API-Key": KEY})
    return status


def next_message(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(ws.recv(timeout=WAIT))
    return message


def pushes(ws: ClientConnection, count: int, skip_pings: bool = True) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < count:
        message = next_message(ws)
        if message or not skip_pings:
            got.append(message)
    return got


def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    try:
        while True:
            ws.recv(timeout=WAIT)
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (None, None)


@pytest_twisted.ensureDeferred
async def test_a_plain_websocket_gets_bare_pushes_of_its_server_side_channels(
        pubsub_server):  # noqa: F811
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    server = await pubsub_server(FEED, ROOM, layer=layer)

    def flow() -> Any:
        with connect(server.ws_url(UNI), open_timeout=WAIT) as ws:
            ws.send(json.dumps({"token": token("ada", info={"name": "Ada"},
                                               channels=["feed:news", "room:x"])}))
            connected = next_message(ws)
            joined = next_message(ws)  # her own join (force_push_join_leave)
            from_thread(pubsub.publish, "feed:news", {"n": 1}, layer=layer)
            from_thread(pubsub.publish, "room:x", BINARY, layer=layer)
            ws.send("anything after the connect is ignored")
            from_thread(pubsub.publish, "room:x", "text", layer=layer)
            return connected, joined, pushes(ws, 3)

    connected, joined, got = await in_thread(flow)
    assert set(connected) == {"connect"}
    body = connected["connect"]
    assert body["client"] and body["version"].startswith("realtime ") and body["ping"] == 25
    assert "pong" not in body  # nothing is expected back
    assert body["subs"]["feed:news"]["recoverable"] is True
    assert body["subs"]["room:x"] == {}
    assert joined == {"channel": "room:x", "join": {"info": {
        "user": "ada", "client": body["client"], "conn_info": {"name": "Ada"}}}}
    assert got[0] == {"channel": "feed:news", "pub": {"data": {"n": 1}, "offset": 1}}
    assert got[1]["channel"] == "room:x" and got[1]["pub"]["data"] is None
    assert got[1]["pub"]["b64data"]  # binary data: a JSON client gets it in base64
    assert got[2] == {"channel": "room:x", "pub": {"data": "text"}}


BINARY = bytes(range(256))


@pytest_twisted.ensureDeferred
async def test_cf_connect_pings_and_recovery(pubsub_server, monkeypatch):  # noqa: F811
    """The connect request may come in the URL (``cf_connect``, redacted from access
    logs); ``{}`` arrives every PING_INTERVAL and no pong is wanted; a client that comes
    back with its position in ``subs`` recovers what it missed."""
    from realtime.layers import InMemoryChannelLayer

    monkeypatch.setattr(pubsub, "PING_INTERVAL", 0.2)
    layer = InMemoryChannelLayer()
    server = await pubsub_server(FEED, layer=layer)
    tok = token("ada", channels=["feed:news"])

    def url(request: dict[str, Any]) -> str:
        return server.ws_url(UNI) + "?cf_connect=" + quote(json.dumps(request))

    def flow() -> Any:
        with connect(url({"token": tok}), open_timeout=WAIT) as ws:
            first = next_message(ws)["connect"]["subs"]["feed:news"]
            time.sleep(0.7)  # three pings, none answered
            from_thread(pubsub.publish, "feed:news", "live", layer=layer)
            seen = pushes(ws, 4, skip_pings=False)
        for n in range(3):
            from_thread(pubsub.publish, "feed:news", n, layer=layer)
        position = {"recover": True, "offset": 1, "epoch": first["epoch"]}
        with connect(url({"token": tok, "subs": {"feed:news": position}}),
                     open_timeout=WAIT) as ws:
            again = next_message(ws)["connect"]["subs"]["feed:news"]
            missed = pushes(ws, 3)
        return first, seen, again, missed

    first, seen, again, missed = await in_thread(flow)
    assert first["recoverable"] and first["offset"] == 0
    assert len([message for message in seen if message == {}]) >= 3  # pings, unanswered
    assert {"channel": "feed:news", "pub": {"data": "live", "offset": 1}} in seen
    assert (again["recovered"], again["was_recovering"]) == (True, True)
    assert [m["pub"] for m in missed] == [{"data": n, "offset": n + 2} for n in range(3)]
    assert "cf_connect=[redacted]" in redact_query(b"cf_connect=" + quote(
        json.dumps({"token": tok})).encode())


@pytest_twisted.ensureDeferred
async def test_a_failed_connect_is_a_close_code(pubsub_server, monkeypatch):  # noqa: F811
    monkeypatch.setattr(pubsub, "STALE_AFTER", 0.3)
    server = await pubsub_server(FEED)

    def close_of(first: Any) -> Any:
        with connect(server.ws_url(UNI), open_timeout=WAIT) as ws:
            if first is not None:
                ws.send(first)
            last = json.loads(ws.recv(timeout=WAIT))
            code, reason = closed(ws)
        # The close is told in a disconnect push first (Centrifugo >= 6.5.1).
        assert last == {"disconnect": {"code": code, "reason": reason}}, last
        return code, reason

    def flow() -> Any:
        return {
            "not JSON": close_of("{nope"),
            "not an object": close_of("[1]"),
            "binary": close_of(b'{"token": "x"}'),
            "a bad signature": close_of(json.dumps({"token": token("ada", key="x" * 40)})),
            "expired": close_of(json.dumps({"token": token("ada", ttl=-10)})),
            "no token": close_of(json.dumps({})),
            "an unknown namespace": close_of(json.dumps(
                {"token": token("ada", channels=["nowhere:x"])})),
            "nothing sent": close_of(None),
        }

    assert await in_thread(flow) == {
        "not JSON": (3501, "bad request"), "not an object": (3501, "bad request"),
        "binary": (3501, "bad request"), "a bad signature": (3500, "invalid token"),
        "expired": (3005, "connection expired"), "no token": (3500, "unauthorized"),
        "an unknown namespace": (3501, "bad request"), "nothing sent": (3502, "stale")}


@pytest_twisted.ensureDeferred
async def test_the_server_api_subscribes_and_refreshes_a_unidirectional_client(
        pubsub_server):  # noqa: F811
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    server = await pubsub_server(FEED, ROOM, layer=layer, api_keys=(KEY,))

    def flow() -> Any:
        with connect(server.ws_url(UNI), open_timeout=WAIT) as ws:
            ws.send(json.dumps({"token": token("ada")}))
            connected = next_message(ws)
            statuses = [call_api(server, "subscribe", {"user": "ada", "channel": "room:x",
                                          "data": {"why": "invited"}})]
            subscribed = pushes(ws, 2)  # the subscribe push, her own join
            from_thread(pubsub.publish, "room:x", "hello", layer=layer)
            pub = pushes(ws, 1)[0]
            at = int(time.time()) + 60
            statuses.append(call_api(server, "refresh", {"user": "ada", "expire_at": at}))
            refresh = pushes(ws, 1)[0]
            statuses.append(call_api(server, "refresh", {"user": "ada", "expired": True}))
            end = (pushes(ws, 1)[0], closed(ws))
        with connect(server.ws_url(UNI), open_timeout=WAIT) as ws:
            ws.send(json.dumps({"token": token("bob")}))
            next_message(ws)
            statuses.append(call_api(server, "disconnect", {"user": "bob"}))  # group_close
            gone = (pushes(ws, 1)[0], closed(ws))
        return connected, statuses, subscribed, pub, refresh, end, gone

    connected, statuses, subscribed, pub, refresh, end, gone = await in_thread(flow)
    assert "subs" not in connected["connect"] and statuses == [200, 200, 200, 200]
    assert subscribed[0] == {"channel": "room:x", "subscribe": {"data": {"why": "invited"}}}
    assert subscribed[1]["join"]["info"]["user"] == "ada"
    assert pub == {"channel": "room:x", "pub": {"data": "hello"}}
    assert refresh == {"refresh": {"expires": True, "ttl": pytest.approx(60, abs=2)}}
    # Each close the server makes is told in a disconnect push just before it.
    assert end == ({"disconnect": {"code": 3005, "reason": "connection expired"}},
                   (3005, "connection expired"))
    assert gone == ({"disconnect": {"code": 3503, "reason": "force disconnect"}},
                    (3503, "force disconnect"))


# -- server-sent events and HTTP streaming ---------------------------------------------------------

class Stream:
    """A streamed response read with httpx: each message (an SSE event's data, or a line of
    JSON) parsed; the status, the headers."""

    def __init__(self, response: Any, sse: bool) -> None:
        self.response = response
        self.sse = sse
        self.lines = response.iter_lines()

    def next(self) -> Any:
        for line in self.lines:
            if self.sse:
                if line.startswith("data: "):
                    return json.loads(line[len("data: "):])
            elif line.strip():
                return json.loads(line)
        return "ended"

    def pushes(self, count: int) -> list[Any]:
        got: list[Any] = []
        while len(got) < count:
            message = self.next()
            if message != {}:
                got.append(message)
        return got

    def rest(self) -> list[Any]:
        """Every message until the response ends."""
        got = []
        while (message := self.next()) != "ended":
            got.append(message)
        return got


def open_stream(server: Any, kind: str, request: dict[str, Any] | None, **options: Any) -> Any:
    """``httpx.stream`` on ``uni_sse`` (GET with ``cf_connect``) or ``uni_http_stream``
    (POST): a context manager of the response."""
    import httpx

    if kind == "sse":
        url = server.http_url("/connection/uni_sse")
        if request is not None:
            url += "?cf_connect=" + quote(json.dumps(request))
        return httpx.stream("GET", url, timeout=WAIT, **options)
    return httpx.stream("POST", server.http_url("/connection/uni_http_stream"),
                        content=json.dumps(request).encode(), timeout=WAIT, **options)


@pytest.mark.parametrize("kind", ["sse", "http_stream"])
@pytest_twisted.ensureDeferred
async def test_a_stream_gets_the_pushes_of_its_channels(pubsub_server, kind,  # noqa: F811
                                                       monkeypatch):
    from realtime.layers import InMemoryChannelLayer

    monkeypatch.setattr(pubsub, "PING_INTERVAL", 0.2)
    layer = InMemoryChannelLayer()
    server = await pubsub_server(FEED, ROOM, layer=layer, api_keys=(KEY,))

    def flow() -> Any:
        request = {"token": token("ada", channels=["feed:news", "room:x"])}
        with open_stream(server, kind, request) as response:
            stream = Stream(response, sse=kind == "sse")
            connected = stream.next()
            joined = stream.next()
            from_thread(pubsub.publish, "feed:news", {"n": 1}, layer=layer)
            from_thread(pubsub.publish, "room:x", "plain", layer=layer)
            got = stream.pushes(2)
            time.sleep(0.5)
            from_thread(pubsub.publish, "room:x", "after pings", layer=layer)
            statuses = [call_api(server, "subscribe", {"user": "ada", "channel": "feed:other"})]
            later = []
            while (message := stream.next()) != {"channel": "room:x", "pub": {
                    "data": "after pings"}}:
                later.append(message)
            subscribed = stream.pushes(1)
            statuses.append(call_api(server, "disconnect", {"user": "ada"}))
            end = stream.rest()
            return (response.status_code, response.headers.get("content-type"), connected,
                    joined, got, later, subscribed, statuses, end)

    (status, content_type, connected, joined, got, later, subscribed, statuses,
     end) = await in_thread(flow)
    assert status == 200
    assert content_type == ("text/event-stream" if kind == "sse" else "application/json")
    assert set(connected["connect"]["subs"]) == {"feed:news", "room:x"}
    assert joined["channel"] == "room:x" and joined["join"]["info"]["user"] == "ada"
    assert got == [{"channel": "feed:news", "pub": {"data": {"n": 1}, "offset": 1}},
                   {"channel": "room:x", "pub": {"data": "plain"}}]
    assert later and all(message == {} for message in later)  # pings
    assert subscribed == [{"channel": "feed:other", "subscribe": {
        "recoverable": True, "epoch": subscribed[0]["subscribe"]["epoch"], "offset": 0}}]
    assert statuses == [200, 200]
    assert end[-1] == {"disconnect": {"code": 3503, "reason": "force disconnect"}}


@pytest_twisted.ensureDeferred
async def test_a_refused_stream_is_an_http_status(pubsub_server):  # noqa: F811
    server = await pubsub_server(FEED, max_connections_per_user=1)

    def answer(kind: str, request: Any) -> tuple[int, Any]:
        with open_stream(server, kind, request) as response:
            body = response.read()
            return response.status_code, json.loads(body) if body else None

    def flow() -> Any:
        got = {
            "a bad signature": answer("sse", {"token": token("ada", key="x" * 40)}),
            "no token": answer("http_stream", {}),
            "expired": answer("sse", {"token": token("ada", ttl=-10)}),
            "an unknown namespace": answer("http_stream", {
                "token": token("ada", channels=["nowhere:x"])}),
        }
        import httpx

        got["not JSON"] = (httpx.post(server.http_url("/connection/uni_http_stream"),
                                      content=b"{nope").status_code, None)
        got["GET on http_stream"] = (httpx.get(server.http_url(
            "/connection/uni_http_stream")).status_code, None)
        with open_stream(server, "sse", {"token": token("bob")}) as first:
            held = Stream(first, sse=True)  # (a Stream dropped closes its response)
            assert held.next()["connect"]["client"]
            got["bob's second"] = answer("http_stream", {"token": token("bob")})
        time.sleep(0.2)  # the first stream's end reaches the server
        with open_stream(server, "sse", {"token": token("bob")}) as again:
            got["bob again"] = (again.status_code, Stream(again, sse=True).next().keys())
        return got

    got = await in_thread(flow)

    def disconnect(code: int, reason: str) -> dict[str, Any]:
        return {"disconnect": {"code": code, "reason": reason}}

    assert got == {
        "a bad signature": (401, disconnect(3500, "invalid token")),
        "no token": (401, disconnect(3500, "unauthorized")),
        "expired": (401, disconnect(3005, "connection expired")),
        "an unknown namespace": (400, disconnect(3501, "bad request")),
        "not JSON": (400, None),
        "GET on http_stream": (405, None),
        "bob's second": (429, disconnect(3504, "connection limit")),
        "bob again": (200, {"connect": None}.keys()),
    }


@pytest_twisted.ensureDeferred
async def test_a_stream_past_its_token_ends_with_3005(pubsub_server, monkeypatch):  # noqa: F811
    monkeypatch.setattr(pubsub, "EXPIRED_CLOSE_DELAY", 0.1)
    monkeypatch.setattr(pubsub, "PING_INTERVAL", 0)
    server = await pubsub_server(FEED)

    def flow() -> Any:
        with open_stream(server, "sse", {"token": token("ada", ttl=1.5)}) as response:
            stream = Stream(response, sse=True)
            connected = stream.next()
            started = time.time()
            return connected, stream.rest(), time.time() - started

    connected, rest, took = await in_thread(flow)
    assert connected["connect"]["expires"] is True
    assert rest == [{"disconnect": {"code": 3005, "reason": "connection expired"}}]
    assert 0.3 < took < 3.0


@pytest_twisted.ensureDeferred
async def test_the_drain_ends_a_stream_with_3001(pubsub_server):  # noqa: F811
    """SIGTERM's drain: a stream gets Centrifugo's shutdown push (3001: reconnect, to
    another server) and ends at once, instead of holding the drain until
    ``--shutdown-timeout``."""
    server = await pubsub_server(FEED)

    def flow() -> Any:
        with open_stream(server, "sse", {"token": token("ada")}) as response:
            stream = Stream(response, sse=True)
            connected = stream.next()
            drained = from_thread(server.site.drain)
            started = time.time()
            return connected, stream.rest(), time.time() - started, drained

    connected, rest, took, _ = await in_thread(flow)
    assert "connect" in connected
    assert rest == [{"disconnect": {"code": 3001, "reason": "shutdown"}}]
    assert took < 2.0


@pytest_twisted.ensureDeferred
async def test_streams_count_with_websockets_per_ip(pubsub_server):  # noqa: F811
    """``--max-connections-per-ip`` counts a stream with the address's WebSockets: past
    it, a stream gets 429 (as a WebSocket's handshake does), and its place comes back
    when it ends."""
    from websockets.exceptions import InvalidStatus

    server = await pubsub_server(FEED, max_connections_per_ip=1)

    def flow() -> Any:
        with open_stream(server, "sse", {"token": token("ada")}) as first:
            held = Stream(first, sse=True)  # (a Stream dropped closes its response)
            assert "connect" in held.next()
            with open_stream(server, "http_stream", {"token": token("bob")}) as second:
                stream_status = second.status_code
            try:
                with connect(server.ws_url(UNI), open_timeout=WAIT):
                    ws_status = 101
            except InvalidStatus as exc:
                ws_status = exc.response.status_code
        time.sleep(0.2)  # the first stream's end reaches the server
        with open_stream(server, "sse", {"token": token("ada")}) as again:
            again_status = again.status_code
        return stream_status, ws_status, again_status

    assert await in_thread(flow) == (429, 429, 200)


@pytest.mark.parametrize("kind", ["sse", "http_stream"])
@pytest_twisted.ensureDeferred
async def test_a_head_that_waits_holds_the_stream_in_order(pubsub_server, kind):  # noqa: F811
    """A middleware's ``realtime.before_head`` hook that waits (Django's session, saved in
    a thread before the head of an HTTP response: ``AuthMiddlewareStack`` around the
    app) holds the stream's writes behind the head, in order; none is lost or fails."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from realtime import BaseMiddleware
    from realtime.layers import InMemoryChannelLayer

    class SlowHead(BaseMiddleware):
        async def __call__(self, scope: Any) -> Any:
            if scope.get("type") == "http":
                scope.setdefault("realtime.before_head", []).append(
                    lambda: deferLater(reactor, 0.3, lambda: None))
            return await self.inner(scope)

    layer = InMemoryChannelLayer()
    server = await pubsub_server(FEED, ROOM, layer=layer, app=SlowHead(pubsub.application))

    def flow() -> Any:
        request = {"token": token("ada", channels=["room:x", "feed:news"])}
        with open_stream(server, kind, request) as response:
            stream = Stream(response, sse=kind == "sse")
            from_thread(pubsub.publish, "feed:news", "kept", layer=layer)
            return response.status_code, [stream.next() for _ in range(3)]

    status, got = await in_thread(flow)
    assert status == 200
    assert "connect" in got[0] and got[1]["join"]["info"]["user"] == "ada"
    assert got[2] == {"channel": "feed:news", "pub": {"data": "kept", "offset": 1}}


@pytest_twisted.ensureDeferred
async def test_the_drain_closes_pubsub_websockets_with_centrifugos_shutdown(
        pubsub_server):  # noqa: F811
    """SIGTERM's drain: Centrifugo's 3001 "shutdown" (reconnect), as the streams end, on
    the bidirectional WebSocket and the unidirectional one (told in a disconnect push
    first); other consumers' sockets keep 1001."""
    from twisted.internet import reactor

    server = await pubsub_server(FEED)

    def flow() -> Any:
        with connect(server.ws_url(UNI), open_timeout=WAIT) as uni, \
                connect(server.ws_url("/connection/websocket"), open_timeout=WAIT) as bi:
            uni.send(json.dumps({"token": token("ada")}))
            next_message(uni)
            bi.send(json.dumps({"id": 1, "connect": {"token": token("bob")}}))
            next_message(bi)
            reactor.callFromThread(server.site.drain)
            return pushes(uni, 1)[0], closed(uni), closed(bi)

    assert await in_thread(flow) == (
        {"disconnect": {"code": 3001, "reason": "shutdown"}}, (3001, "shutdown"),
        (3001, "shutdown"))


@pytest_twisted.ensureDeferred
async def test_a_transport_left_off_is_404_as_in_centrifugo(pubsub_server):  # noqa: F811
    """``--pubsub-transports websocket,uni_sse`` (``settings.pubsub_transports``): the
    other transports' paths answer 404, ``/emulation`` too (it goes with ``http_stream``
    or ``sse``), WebSocket upgrades included; the ones on are served as ever."""
    from websockets.exceptions import InvalidStatus

    from realtime.settings import settings

    server = await pubsub_server()
    settings.pubsub_transports = pubsub.parse_transports("websocket,uni_sse")

    def upgrade(path: str) -> Any:
        try:
            with connect(server.ws_url(path), open_timeout=WAIT) as ws:
                ws.send(json.dumps({"id": 1, "connect": {"token": token("ada")}}))
                return next_message(ws)["id"]
        except InvalidStatus as exc:
            return exc.response.status_code

    def status(path: str, method: str = "POST") -> int:
        code, _, _ = http_get(server.http_url(path), method=method, data=b"{}")
        return code

    def preflight(path: str) -> int:
        """A browser's CORS preflight (centrifuge-js's fetch and EventSource ask it)."""
        code, _, _ = http_get(server.http_url(path), method="OPTIONS", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        return code

    left_off = ("/connection/sse", "/connection/http_stream", "/emulation",
                "/connection/uni_http_stream")

    def flow() -> Any:
        off = [status("/connection/sse", "GET"), status("/connection/http_stream"),
               status("/emulation"), status("/connection/uni_http_stream"),
               upgrade("/connection/uni_websocket")]
        off += [preflight(path) for path in left_off]
        with open_stream(server, "sse", {"token": token("ada")}) as response:
            uni_sse = response.status_code
        return off, uni_sse, preflight("/connection/uni_sse"), upgrade("/connection/websocket")

    off, uni_sse, uni_sse_preflight, websocket = await in_thread(flow)
    assert off == [404] * 9
    assert (uni_sse, uni_sse_preflight, websocket) == (200, 204, 1)
    settings.pubsub_transports = pubsub.parse_transports(["sse"])
    emulation, websocket = await in_thread(lambda: (status("/emulation"),
                                                    upgrade("/connection/websocket")))
    assert (emulation, websocket) == (400, 404)  # (400: not an emulation request)


def test_pubsub_transports_at_start_up():
    from realtime.config import StartupError
    from realtime.settings import settings
    from realtime.tap import Options

    def parse(*args: str) -> None:
        Options().parseOptions(["--app", "realtime.pubsub:application", *args])

    parse("--pubsub-transports", "uni_sse, websocket")
    assert settings.pubsub_transports == {"uni_sse", "websocket"}
    parse()
    assert settings.pubsub_transports is None  # (every transport)
    for value, line in (
            ("websocket,uni_grpc", "--pubsub-transports: no transport 'uni_grpc' (known: "
                                   "websocket, http_stream, sse, uni_websocket, uni_sse, "
                                   "uni_http_stream)"),
            (" , ", "--pubsub-transports: expected one or more of websocket, http_stream, "
                    "sse, uni_websocket, uni_sse, uni_http_stream")):
        with pytest.raises(StartupError) as error:
            parse("--pubsub-transports", value)
        assert str(error.value) == f"realtime: error: {line}"
