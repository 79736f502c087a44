# ruff: noqa: F811  (the fixtures imported from tests.test_pubsub, taken as arguments)
"""``realtime.pubsub_proxy``: Centrifugo's event proxies over HTTP, against a real backend (a
twisted.web resource on 127.0.0.1 that records each request and answers as the test says)
and real clients (centrifuge-python, and a raw ``websockets`` client where the test sets
the handshake's headers or reads a close code)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from websockets.sync.client import connect

from realtime import pubsub, pubsub_proxy
from realtime.pubsub_proxy import ProxyConfig
from realtime.settings import settings
from tests.clients import captured_log, in_thread
from tests.test_pubsub import (  # noqa: F401 (fixtures)
    PATH,
    WAIT,
    Raw,
    _settings,
    asyncio_gather,
    pubsub_server,
    run,
    sdk_client,
    subscribed,
)

#: A backend answer that never comes (the proxy's timeout).
HANG = object()


class Backend:
    """The application backend: ``answers[event](body)`` is the JSON it answers (a dict),
    ``(status, bytes)`` for a raw response (``(status, HANG)``: the status and a first
    chunk of a body that never ends), ``HANG``, or a Deferred (the JSON when it fires);
    ``requests`` is every request, ``(event, headers, body)``."""

    def __init__(self) -> None:
        from twisted.web.resource import Resource

        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.answers: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self.port: Any = None
        backend = self

        class Endpoint(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> Any:
                from twisted.web.server import NOT_DONE_YET

                event = request.path.decode().strip("/")
                body = json.loads(request.content.read())
                headers = {k.decode().lower(): b", ".join(v).decode()
                           for k, v in request.requestHeaders.getAllRawHeaders()}
                backend.requests.append((event, headers, body))
                answer = backend.answers[event](body)
                if answer is HANG:
                    return NOT_DONE_YET
                if isinstance(answer, Deferred):  # answered when the test fires it
                    def write(result: Any) -> None:
                        if request._disconnected:  # the proxy gave up (its timeout)
                            return
                        request.setHeader(b"content-type", b"application/json")
                        request.write(json.dumps(result).encode())
                        request.finish()

                    answer.addCallback(write)
                    return NOT_DONE_YET
                if isinstance(answer, tuple):
                    request.setResponseCode(answer[0])
                    if answer[1] is HANG:
                        request.write(b"{")
                        return NOT_DONE_YET
                    return answer[1]
                request.setHeader(b"content-type", b"application/json")
                return json.dumps(answer).encode()

        self.resource = Endpoint()

    def url(self, event: str) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/{event}"

    def proxy(self, *events: str, **options: Any) -> None:
        """Point realtime at this backend for ``events``."""
        settings.pubsub_proxy = ProxyConfig(
            endpoints={event: self.url(event) for event in events}, **options)

    def of(self, event: str) -> list[dict[str, Any]]:
        return [body for kind, _, body in self.requests if kind == event]


@pytest.fixture
def backend(pubsub_server: Any) -> Any:
    from twisted.internet import reactor
    from twisted.web.server import Site

    found = Backend()
    found.port = reactor.listenTCP(0, Site(found.resource), interface="127.0.0.1")
    pubsub_proxy.GATES.calls.clear()
    yield found
    assert (pubsub_proxy.GATES.inflight, pubsub_proxy.GATES.waiting) == (0, 0)
    pubsub_proxy.GATES.by_key.clear()
    pytest_twisted.blockon(pubsub_proxy.close())
    pytest_twisted.blockon(found.port.stopListening())


def raw(server: Any, flow: Callable[[Raw], Any], **headers: str) -> Any:
    """``flow(Raw)`` in a worker thread, the handshake with ``headers``."""
    def go() -> Any:
        with connect(server.ws_url(PATH), open_timeout=WAIT,
                     additional_headers=headers) as ws:
            return flow(Raw(ws))

    return in_thread(go)


def connected(params: dict[str, Any] | None = None) -> Callable[[Raw], Any]:
    return lambda client: client.call("connect", params or {})


# -- connect -------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_the_connect_proxy_authenticates_by_the_forwarded_cookie(pubsub_server, backend):
    backend.proxy("connect", http_headers=("Cookie", "X-Forwarded-For"),
                  static_headers=(("X-Key", "static"), ("Cookie", "overridden")))
    sessions = {"sessionid=abc": "56"}
    backend.answers["connect"] = lambda body: {"result": {
        "user": sessions[backend.requests[-1][1]["cookie"]], "info": {"name": "Ada"},
        "data": {"greeting": "hi"}, "channels": ["news:all"], "meta": {"plan": "pro"}}}
    server = await pubsub_server("chat:allow_subscribe_for_client,presence,"
                                 "allow_presence_for_subscriber", "news:")

    def flow(client: Raw) -> Any:
        reply = client.result("connect", {"data": {"hello": 1}, "name": "js",
                                          "subs": {"news:all": {}}})
        client.result("subscribe", {"channel": "chat:room"})
        return reply, client.result("presence", {"channel": "chat:room"})

    reply, presence = await raw(server, flow, Cookie="sessionid=abc", Origin="http://x")
    assert reply["data"] == {"greeting": "hi"} and "news:all" in reply["subs"]
    assert "expires" not in reply
    (member,) = presence["presence"].values()
    assert member["user"] == "56" and member["conn_info"] == {"name": "Ada"}
    ((event, headers, body),) = backend.requests
    assert event == "connect"
    assert body == {"client": reply["client"], "transport": "websocket", "protocol": "json",
                    "encoding": "json", "name": "js", "data": {"hello": 1},
                    "channels": ["news:all"]}  # (the server-side ones it asks back)
    assert headers["cookie"] == "sessionid=abc" and headers["x-key"] == "static"
    assert "origin" not in headers and headers["content-type"] == "application/json"

    async def sdk() -> Any:  # centrifuge-python: the reply's data reaches its connected event
        client, events = sdk_client(server, headers={"Cookie": "sessionid=abc"})
        await client.connect()
        ctx = await events.next("connected")
        await client.disconnect()
        return ctx

    ctx = await run(sdk)
    assert ctx.data == {"greeting": "hi"}
    assert backend.requests[-1][2]["transport"] == "websocket"


@pytest_twisted.ensureDeferred
async def test_the_connect_proxy_refuses_by_error_and_by_disconnect(pubsub_server, backend):
    backend.proxy("connect")
    answers = {"err": {"error": {"code": 1000, "message": "custom error"}},
               "bye": {"disconnect": {"code": 4501, "reason": "unauthorized"}}}
    backend.answers["connect"] = lambda body: answers[body["data"]]
    server = await pubsub_server()

    def refused(client: Raw) -> Any:
        return client.call("connect", {"data": "err"})

    def closed(client: Raw) -> Any:
        client.send("connect", {"data": "bye"})
        return client.closed()

    reply, code = await asyncio_gather(raw(server, refused), raw(server, closed))
    assert reply["error"] == {"code": 1000, "message": "custom error"}
    assert code == 4501


@pytest_twisted.ensureDeferred
async def test_a_client_gone_while_the_connect_proxy_answers_leaves_nothing(pubsub_server,
                                                                           backend):
    """The backend answers after the client left: no place of --max-connections-per-user
    taken, no group joined, no timer, nothing written; the user connects again."""
    from tests.clients import until

    backend.proxy("connect")
    held: Deferred[Any] = Deferred()
    answers = iter([held, {"result": {"user": "ada", "channels": ["news:x"]}}])
    backend.answers["connect"] = lambda body: next(answers)
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    server = await pubsub_server("news:", max_connections_per_user=1, layer=layer)

    def leave(client: Raw) -> None:
        client.send("connect")  # and gone before the answer

    await raw(server, leave)
    assert await until(lambda: not server.site.connections and backend.requests)
    held.callback({"result": {"user": "ada", "channels": ["news:x"],
                              "expire_at": time.time() + 60}})
    # the answer read (its connection back in the pool), then another client of the user
    assert await until(lambda: any(pubsub_proxy._client().pool._connections.values()))
    again = await raw(server, lambda client: client.result("connect"))
    assert "news:x" in again["subs"]  # (the user's place was free)
    assert await until(lambda: not server.site.connections)
    assert server.site.per_user == {}
    groups = (pubsub.user_group("ada"), pubsub.channel_group("news:x"))
    assert not any(layer.local_members(group) for group in groups)


# -- channels ------------------------------------------------------------------------------------

TOKEN_FREE = {"connect": lambda body: {"result": {"user": "ada"}}}


@pytest_twisted.ensureDeferred
async def test_the_subscribe_proxy_decides_in_the_namespaces_that_enable_it(pubsub_server,
                                                                           backend):
    backend.proxy("connect", "subscribe")
    backend.answers.update(TOKEN_FREE)
    backend.answers["subscribe"] = lambda body: (
        {"result": {"info": {"seat": 3}, "data": {"welcome": body["channel"]}}}
        if body["channel"].endswith(":yes") else
        {"error": {"code": 403, "message": "permission denied"}})
    # allow_subscribe_for_client does not open it: the backend decides (Centrifugo's order)
    server = await pubsub_server("gated:subscribe_proxy_enabled,allow_subscribe_for_client,"
                                 "presence,allow_presence_for_subscriber",
                                 "open:allow_subscribe_for_client")

    def flow(client: Raw) -> Any:
        client.result("connect")
        allowed = client.result("subscribe", {"channel": "gated:yes", "data": "please"})
        members = client.result("presence", {"channel": "gated:yes"})
        return (allowed, members, client.call("subscribe", {"channel": "gated:no"}),
                client.result("subscribe", {"channel": "open:x"}))

    allowed, members, refused, opened = await raw(server, flow)
    assert allowed == {"data": {"welcome": "gated:yes"}}
    (member,) = members["presence"].values()
    assert member["chan_info"] == {"seat": 3} and member["user"] == "ada"
    assert refused["error"] == {"code": 403, "message": "permission denied"}
    assert opened == {}
    asked = backend.of("subscribe")
    assert [body["channel"] for body in asked] == ["gated:yes", "gated:no"]
    assert asked[0]["user"] == "ada" and asked[0]["data"] == "please"


@pytest_twisted.ensureDeferred
async def test_the_publish_proxy_replaces_the_data(pubsub_server, backend):
    backend.proxy("connect", "publish")
    backend.answers.update(TOKEN_FREE)

    def publish(body: dict[str, Any]) -> Any:
        if body["data"] == "spam":
            return {"error": {"code": 1403, "message": "no spam"}}
        return {"result": {"data": {"text": body["data"]["text"].upper(), "by": body["user"]}}}

    backend.answers["publish"] = publish
    server = await pubsub_server("board:allow_subscribe_for_client,publish_proxy_enabled")

    async def scenario() -> Any:
        client, events = sdk_client(server)
        await client.connect()
        await events.next("connected")
        sub, sub_events = await subscribed(client, "board:1")
        await sub.publish({"text": "hello"})
        publication = await sub_events.next("publication")
        try:
            await sub.publish("spam")
        except Exception as exc:  # centrifuge.ReplyError
            refused = exc
        await client.disconnect()
        return publication, refused

    publication, refused = await run(scenario)
    assert publication.pub.data == {"text": "HELLO", "by": "ada"}
    assert (refused.code, refused.message) == (1403, "no spam")
    assert [body["channel"] for body in backend.of("publish")] == ["board:1", "board:1"]


@pytest_twisted.ensureDeferred
async def test_the_rpc_proxy_answers_every_method(pubsub_server, backend):
    backend.proxy("connect", "rpc")
    backend.answers.update(TOKEN_FREE)
    backend.answers["rpc"] = lambda body: (
        {"result": {"data": {"price": 2019, "for": body["data"]}}}
        if body["method"] == "getCurrentPrice" else
        {"error": {"code": 1404, "message": "no such method"}})
    server = await pubsub_server()

    async def scenario() -> Any:
        client, events = sdk_client(server)
        await client.connect()
        await events.next("connected")
        result = await client.rpc("getCurrentPrice", {"object_id": 12})
        try:
            await client.rpc("other", None)
        except Exception as exc:
            refused = exc
        await client.disconnect()
        return result, refused

    result, refused = await run(scenario)
    assert result.data == {"price": 2019, "for": {"object_id": 12}}
    assert refused.code == 1404
    first, second = backend.of("rpc")
    assert first["method"] == "getCurrentPrice" and first["user"] == "ada"
    assert second["method"] == "other" and "data" not in second


# -- refresh, sub_refresh ------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_refresh_and_sub_refresh_prolong_then_expire(pubsub_server, backend):
    backend.proxy("connect", "refresh", "subscribe", "sub_refresh",
                  include_connection_meta=True)
    soon = lambda: time.time() + 0.3  # noqa: E731
    # the "conn" connection expires (and is refreshed twice), "sub" only its subscription
    backend.answers["connect"] = lambda body: {"result": {
        "user": body["data"], "expire_at": soon() if body["data"] == "conn" else 0,
        "meta": {"m": 1}}}
    refreshes: dict[str, int] = {}

    def refresh(body: dict[str, Any]) -> Any:
        refreshes[body["user"]] = refreshes.get(body["user"], 0) + 1
        if body["user"] == "conn" and refreshes["conn"] < 3:
            return {"result": {"expire_at": soon(), "info": {"round": refreshes["conn"]}}}
        return {"result": {"expired": True}}

    backend.answers["refresh"] = refresh
    backend.answers["subscribe"] = lambda body: {"result": {"expire_at": soon()}}
    backend.answers["sub_refresh"] = lambda body: {"result": {"expired": True}}
    server = await pubsub_server("s:subscribe_proxy_enabled,sub_refresh_proxy_enabled")

    def conn(client: Raw) -> Any:
        client.result("connect", {"data": "conn"})
        return client.closed()

    def sub(client: Raw) -> Any:
        client.result("connect", {"data": "sub"})
        client.result("subscribe", {"channel": "s:1"})
        return client.closed()

    conn_code, sub_code = await asyncio_gather(raw(server, conn), raw(server, sub))
    assert (conn_code, sub_code) == (3005, 3006)
    assert refreshes == {"conn": 3}
    asked = backend.of("refresh")
    assert asked[0]["meta"] == {"m": 1} and asked[0]["transport"] == "websocket"
    (sub_asked,) = backend.of("sub_refresh")
    assert sub_asked["channel"] == "s:1" and sub_asked["user"] == "sub"


@pytest_twisted.ensureDeferred
async def test_a_refresh_without_a_new_expire_at_expires_and_a_failed_one_is_retried(
        pubsub_server, backend, monkeypatch):
    """As Centrifugo: a refresh answer without ``result`` (an ``error``, say) or without
    a future ``expire_at`` ends the connection (3005; the subscription: 3006); one the
    backend could not give (500) is asked again ``RETRY_AFTER`` later."""
    monkeypatch.setattr(pubsub_proxy, "RETRY_AFTER", 0.2)
    backend.proxy("connect", "refresh", "subscribe", "sub_refresh")
    soon = lambda: time.time() + 0.3  # noqa: E731
    backend.answers["connect"] = lambda body: {"result": {
        "user": body["data"], "expire_at": 0 if body["data"] == "sub" else soon()}}
    refreshes: dict[str, int] = {}
    answers = {"empty": lambda: {"result": {}},
               "refused": lambda: {"error": {"code": 403, "message": "no"}},
               "flaky": lambda: (500, b"down") if refreshes["flaky"] == 1 else {
                   "result": {"expired": True}}}

    def refresh(body: dict[str, Any]) -> Any:
        refreshes[body["user"]] = refreshes.get(body["user"], 0) + 1
        return answers[body["user"]]()

    backend.answers["refresh"] = refresh
    backend.answers["subscribe"] = lambda body: {"result": {"expire_at": soon()}}
    backend.answers["sub_refresh"] = lambda body: {"result": {"info": {"x": 1}}}
    server = await pubsub_server("s:subscribe_proxy_enabled,sub_refresh_proxy_enabled")

    def conn(user: str) -> Callable[[Raw], Any]:
        def flow(client: Raw) -> Any:
            client.result("connect", {"data": user})
            if user == "sub":
                client.result("subscribe", {"channel": "s:1"})
            return client.closed()

        return flow

    codes = await asyncio_gather(*(raw(server, conn(user))
                                   for user in ("empty", "refused", "flaky", "sub")))
    assert codes == [3005, 3005, 3005, 3006]
    assert refreshes == {"empty": 1, "refused": 1, "flaky": 2}
    assert len(backend.of("sub_refresh")) == 1


# -- failures ------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_failing_backend_is_error_100_and_the_server_goes_on(pubsub_server, backend,
                                                                    monkeypatch):
    monkeypatch.setattr(pubsub_proxy, "MAX_RESPONSE", 1000)
    backend.proxy("connect", "rpc", timeout=0.3)
    backend.answers.update(TOKEN_FREE)
    answers = {"500": (500, b"oops"), "garbage": (200, b"<html>"), "slow": HANG,
               "array": (200, b"[1]"), "big": (200, b"[" + b" " * 2000 + b"]"),
               "bad-result": {"result": 5}, "bad-error": {"error": {"code": "x"}},
               "ok": {"result": {"data": "fine"}}}
    backend.answers["rpc"] = lambda body: answers[body["method"]]
    server = await pubsub_server()

    def flow(client: Raw) -> Any:
        client.result("connect")
        codes = {method: client.call("rpc", {"method": method}).get("error")
                 for method in answers}
        return codes, client.result("rpc", {"method": "ok"})

    codes, after = await raw(server, flow)
    internal = {"code": 100, "message": "internal server error", "temporary": True}
    assert codes == {**dict.fromkeys(answers, internal), "ok": None}
    assert after == {"data": "fine"}

    # the backend is down: the connect fails with 100, and the server serves on
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    gone = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    down = f"http://127.0.0.1:{gone.getHost().port}/connect"
    await gone.stopListening()
    settings.pubsub_proxy = ProxyConfig(endpoints={"connect": down})
    assert (await raw(server, lambda client: client.call("connect")))["error"] == internal
    backend.proxy("connect", "rpc")
    assert (await raw(server, flow))[1] == {"data": "fine"}


# -- a backend answering garbage: the table ------------------------------------------------------

def _response(body: bytes, status: bytes = b"200 OK", *headers: bytes) -> bytes:
    head = [b"HTTP/1.1 " + status, b"Content-Type: application/json", b"Connection: close",
            b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _result(**fields: Any) -> bytes:
    return json.dumps({"result": {"user": "ada", **fields}}).encode()


#: ``GARBAGE_TABLE``: each row is what the connect proxy's backend answers (raw bytes on
#: its TCP connection; ``trickle``: one byte every 50 ms, ``reset``: the bytes then a TCP
#: reset, ``hang``: nothing); the client's connect gets error 100 (internal, temporary)
#: every time, the server logs one warning line (no traceback), and the next client,
#: with a working backend, connects.
GARBAGE_TABLE: list[tuple[str, str, bytes]] = [
    ("status-500", "send", _response(b"oops", b"500 Internal Server Error")),
    ("status-204", "send", _response(b"", b"204 No Content")),
    ("redirect-302", "send", _response(b"", b"302 Found", b"Location: http://127.0.0.1:1/")),
    ("redirect-307", "send", _response(b"", b"307 Temporary Redirect", b"Location: /x")),
    ("html", "send", _response(b"<html>hi</html>")),
    ("empty-body", "send", _response(b"")),
    ("not-utf8", "send", _response(b'{"result":{"user":"\xff"}}')),
    ("json-array", "send", _response(b'[{"result":{"user":"ada"}}]')),
    ("json-string", "send", _response(b'"ok"')),
    ("json-null", "send", _response(b"null")),
    ("json-nan", "send", _response(b'{"result":{"user":"ada","meta":NaN}}')),
    ("json-trailing", "send", _response(b'{"result":{"user":"ada"}} x')),
    ("deep-nesting", "send", _response(b'{"result":{"user":"ada","meta":'
                                       + b"[" * 100_000 + b"]" * 100_000 + b"}}")),
    ("huge-float-expire-at", "send", _response(b'{"result":{"user":"ada","expire_at":1e400}}')),
    ("huge-int-expire-at", "send", _response(
        b'{"result":{"user":"ada","expire_at":1' + b"0" * 400 + b"}}")),
    ("far-expire-at", "send", _response(_result(expire_at=1e300))),
    ("negative-expire-at", "send", _response(_result(expire_at=-5))),
    ("string-expire-at", "send", _response(_result(expire_at="soon"))),
    ("bool-expire-at", "send", _response(_result(expire_at=True))),
    ("result-array", "send", _response(b'{"result":[1]}')),
    ("result-string", "send", _response(b'{"result":"ada"}')),
    ("no-result", "send", _response(b"{}")),
    ("user-number", "send", _response(b'{"result":{"user":5}}')),
    ("user-null", "send", _response(b'{"result":{"user":null}}')),
    ("channels-string", "send", _response(_result(channels="news"))),
    ("channels-numbers", "send", _response(_result(channels=[1, 2]))),
    ("subs-array", "send", _response(_result(subs=["news"]))),
    ("b64info-garbage", "send", _response(_result(b64info="!!!"))),
    ("b64info-binary", "send", _response(_result(b64info="/w=="))),
    ("b64data-number", "send", _response(_result(b64data=5))),
    ("error-not-object", "send", _response(b'{"error":"no"}')),
    ("error-code-string", "send", _response(b'{"error":{"code":"403"}}')),
    ("error-code-zero", "send", _response(b'{"error":{"code":0}}')),
    ("error-code-huge", "send", _response(b'{"error":{"code":1' + b"0" * 30 + b"}}")),
    ("error-message-number", "send", _response(b'{"error":{"code":403,"message":5}}')),
    ("disconnect-code-1000", "send", _response(b'{"disconnect":{"code":1000}}')),
    ("disconnect-not-object", "send", _response(b'{"disconnect":[4000]}')),
    ("disconnect-reason-number", "send", _response(
        b'{"disconnect":{"code":4000,"reason":5}}')),
    ("body-10-mb", "send", _response(b" " * (10 * 1024 * 1024) + b"{}")),
    ("length-lies-long", "send", _response(b"{}").replace(b"Length: 2", b"Length: 200")),
    ("chunked-garbage", "send", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
    ("not-http", "send", b"SSH-2.0-OpenSSH_9.6\r\n"),
    ("nothing-then-close", "send", b""),
    ("reset-mid-body", "reset", _response(_result())[:-5]),
    ("slow-trickle", "trickle", _response(_result())),
    ("hang", "hang", b""),
]


class _GarbageBackend:
    """A backend that reads one request and answers ``(mode, data)`` as raw bytes."""

    def __init__(self, mode: str, data: bytes) -> None:
        self.mode, self.data = mode, data
        self.port: Any = None
        self.calls: list[Any] = []

    def start(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol

        backend = self

        class Answer(Protocol):
            buffer = b""
            answered = False

            def dataReceived(self, data: bytes) -> None:
                self.buffer += data
                head, sep, body = self.buffer.partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if self.answered or not sep or len(body) < (length or [0])[0]:
                    return
                self.answered = True
                backend.answer(self)

            def connectionLost(self, reason: Any = None) -> None:
                for call in backend.calls:
                    if call.active():
                        call.cancel()

        self.port = reactor.listenTCP(0, Factory.forProtocol(Answer), interface="127.0.0.1")

    def answer(self, proto: Any) -> None:
        from twisted.internet import reactor

        transport = proto.transport
        if self.mode == "send":
            transport.write(self.data)
            transport.loseConnection()
        elif self.mode == "reset":
            transport.write(self.data)
            self.calls.append(reactor.callLater(0.05, transport.abortConnection))
        elif self.mode == "trickle":
            def step(i: int) -> None:
                if i < len(self.data):
                    transport.write(self.data[i : i + 1])
                    self.calls.append(reactor.callLater(0.05, step, i + 1))
            step(0)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/connect"


@pytest.mark.parametrize("row", GARBAGE_TABLE, ids=[row[0] for row in GARBAGE_TABLE])
@pytest_twisted.ensureDeferred
async def test_a_backend_answering_garbage(pubsub_server, backend, row):
    _, mode, data = row
    garbage = _GarbageBackend(mode, data)
    garbage.start()
    try:
        settings.pubsub_proxy = ProxyConfig(endpoints={"connect": garbage.url()}, timeout=0.3)
        server = await pubsub_server()
        with captured_log() as events:
            reply = await raw(server, lambda client: client.call("connect"))
        assert reply.get("error") == {"code": 100, "message": "internal server error",
                                      "temporary": True}, reply
        assert not [e for e in events if "log_failure" in e], events
        lines = [e for e in events if e.get("log_namespace") == "realtime.pubsub_proxy"]
        assert len(lines) == 1, [e.get("log_format") for e in lines]
        # The server serves the next client (with a working backend).
        backend.proxy("connect")
        backend.answers.update(TOKEN_FREE)
        assert (await raw(server, lambda client: client.result("connect")))["client"]
    finally:
        for call in garbage.calls:
            if call.active():
                call.cancel()
        await garbage.port.stopListening()


# -- start-up ------------------------------------------------------------------------------------

def startup_error(*args: str) -> str:
    from realtime.config import StartupError
    from realtime.tap import Options

    with pytest.raises(StartupError) as info:
        Options().parseOptions(["--app", "realtime.pubsub:application", *args])
    return str(info.value).removeprefix("realtime: error: ")


def test_proxy_options_at_start_up(tmp_path, monkeypatch):
    from realtime.tap import Options

    options = Options()
    options.parseOptions([
        "--app", "realtime.pubsub:application",
        "--proxy-connect-endpoint", "http://127.0.0.1:3000/centrifugo/connect",
        "--proxy-subscribe-endpoint", "https://backend.example/centrifugo/subscribe",
        "--namespace", "chat:subscribe_proxy_enabled", "--namespace", "v5:proxy_subscribe",
        "--proxy-http-headers", "Cookie, Authorization", "--proxy-timeout", "500ms",
        "--proxy-static-header", "X-Key: secret"])
    proxy = settings.pubsub_proxy
    assert proxy.endpoints == {"connect": "http://127.0.0.1:3000/centrifugo/connect",
                               "subscribe": "https://backend.example/centrifugo/subscribe"}
    assert proxy.timeout == 0.5 and proxy.http_headers == ("Cookie", "Authorization")
    assert proxy.static_headers == (("X-Key", "secret"),)
    assert settings.pubsub_namespaces["v5"].subscribe_proxy_enabled

    config = tmp_path / "realtime.toml"
    config.write_text('app = "realtime.pubsub:application"\n'
                      'proxy_rpc_endpoint = "http://127.0.0.1:3000/rpc"\n'
                      'proxy_http_headers = ["Cookie"]\n'
                      'proxy_timeout = "2s"\n'
                      '[proxy_static_http_headers]\n"X-Custom" = "custom value"\n')
    Options().parseOptions(["--config", str(config)])
    assert settings.pubsub_proxy.endpoints == {"rpc": "http://127.0.0.1:3000/rpc"}
    assert settings.pubsub_proxy.timeout == 2.0
    assert settings.pubsub_proxy.static_headers == (("X-Custom", "custom value"),)
    monkeypatch.setenv("REALTIME_PROXY_PUBLISH_ENDPOINT", "grpc://127.0.0.1:9000")
    assert startup_error() == (  # (one line: gRPC proxies are not built)
        "--proxy-publish-endpoint: gRPC proxies are not built (HTTP/JSON only), got "
        "'grpc://127.0.0.1:9000'")
    monkeypatch.delenv("REALTIME_PROXY_PUBLISH_ENDPOINT")

    assert startup_error("--proxy-connect-endpoint", "localhost:3000") == (
        "--proxy-connect-endpoint: expected an http:// or https:// URL, got 'localhost:3000'")
    assert startup_error("--proxy-rpc-endpoint", "http://h/x", "--proxy-timeout",
                         "soon").startswith("--proxy-timeout: expected seconds")
    assert startup_error("--proxy-rpc-endpoint", "http://h/x", "--proxy-timeout", "0") == (
        "--proxy-timeout: must be more than 0, got '0'")
    assert startup_error("--namespace", "chat:publish_proxy_enabled") == (
        "--namespace: namespace 'chat': publish_proxy_enabled needs "
        "--proxy-publish-endpoint")
    rpc = ("--proxy-rpc-endpoint", "http://h/x")
    assert startup_error(*rpc, "--proxy-static-header", "X-Key") == (
        "--proxy-static-header: expected 'Name: value' (no ':' in it)")
    assert startup_error(*rpc, "--proxy-http-headers", "Cookie Bad:Name") == (
        "--proxy-http-headers: 'Bad:Name' is not a header name")
    assert startup_error(*rpc, "--proxy-http-headers", "Cookie X_User") == (
        "--proxy-http-headers: 'X_User' holds '_': request headers so named are left out "
        "(as Daphne's scopes, CVE-2015-0219), so it would never be read; name it with '-'")
    # the request's own headers: a client's Host or Content-Length never reaches the backend
    for header in ("Host", "content-length", "Transfer-Encoding", "Connection"):
        assert startup_error(*rpc, "--proxy-http-headers", f"Cookie {header}") == (
            f"--proxy-http-headers: {header!r} is the proxy request's own header (its "
            "connection's or framing's), not one to send")
    assert startup_error(*rpc, "--proxy-static-header", "Host: backend.internal") == (
        "--proxy-static-header: 'Host' is the proxy request's own header (its "
        "connection's or framing's), not one to send")
    assert startup_error(*rpc, "--proxy-static-header", "X-Key: caf\u00e9") == (
        "--proxy-static-header: X-Key's value must be ASCII without CR, LF or NUL")
    with pytest.raises(ValueError, match="http_headers: 'Upgrade' is the proxy request"):
        ProxyConfig(endpoints={"rpc": "http://h/"}, http_headers=("Upgrade",))
    with pytest.raises(ValueError, match="http_headers: 'X_User' holds '_'"):
        ProxyConfig(endpoints={"rpc": "http://h/"}, http_headers=("X_User",))
    # the connect command's map is no request header: its names are the client's to choose
    assert ProxyConfig(endpoints={"rpc": "http://h/"}, emulated_headers=("X_User",))
    assert pubsub.Namespace().subscribe_proxy_enabled is False


# -- binary data, subclasses ---------------------------------------------------------------------

class Overriding(pubsub.PubSubConsumer):
    """A subclass's hook wins over the proxy; ``super()`` still asks it."""

    async def rpc(self, method: str, data: Any) -> Any:
        if method == "local":
            return {"from": "python"}
        return await super().rpc(method, data)


@pytest_twisted.ensureDeferred
async def test_binary_data_goes_as_b64data_and_a_subclass_hook_wins(pubsub_server, backend):
    import base64

    from realtime.routing import URLRouter, path

    backend.proxy("connect", "rpc")
    backend.answers.update(TOKEN_FREE)
    backend.answers["rpc"] = lambda body: {"result": {"b64data": base64.b64encode(
        b"\xfe" + base64.b64decode(body["b64data"])).decode()}}
    app = URLRouter([path("connection/websocket", Overriding.as_asgi())])
    server = await pubsub_server(app=app)

    async def scenario() -> Any:
        client, events = sdk_client(server, use_protobuf=True)
        await client.connect()
        await events.next("connected")
        binary = await client.rpc("bin", b"\x00\xff")
        local = await client.rpc("local", b"{}")
        await client.disconnect()
        return binary.data, local.data

    binary, local = await run(scenario)
    assert binary == b"\xfe\x00\xff"
    assert json.loads(local) == {"from": "python"}
    (asked,) = backend.of("rpc")
    assert asked["b64data"] == "AP8=" and "data" not in asked
    # Centrifugo's encoding is the proxy's (binary_encoding), not the client's protocol
    assert (asked["protocol"], asked["encoding"]) == ("protobuf", "json")


@pytest_twisted.ensureDeferred
async def test_binary_encoding_sends_every_payload_as_b64data(pubsub_server, backend):
    import base64

    backend.proxy("connect", "rpc", binary_encoding=True)
    backend.answers["connect"] = lambda body: {"result": {"user": "ada"}}
    backend.answers["rpc"] = lambda body: {"result": {"b64data": body["b64data"]}}
    server = await pubsub_server()

    def flow(client: Raw) -> Any:
        client.result("connect", {"data": {"hello": 1}})
        return client.result("rpc", {"method": "echo", "data": {"n": 1}})

    assert await raw(server, flow) == {"data": {"n": 1}}
    connect_body, rpc_body = backend.of("connect")[0], backend.of("rpc")[0]
    assert json.loads(base64.b64decode(connect_body["b64data"])) == {"hello": 1}
    assert json.loads(base64.b64decode(rpc_body["b64data"])) == {"n": 1}
    assert "data" not in connect_body and "data" not in rpc_body
    assert (rpc_body["protocol"], rpc_body["encoding"]) == ("json", "binary")


@pytest_twisted.ensureDeferred
async def test_a_unidirectional_connect_through_the_proxy(pubsub_server, backend):
    from websockets.exceptions import ConnectionClosed

    backend.proxy("connect", http_headers=("Authorization",))
    answers = {"ok": {"result": {"user": "ada", "data": {"hi": 1}}}, "fail": (503, b"busy"),
               "refused": {"error": {"code": 1403, "message": "no"}},
               "bye": {"disconnect": {"code": 4501, "reason": "unauthorized"}}}
    backend.answers["connect"] = lambda body: answers[body["data"]]
    server = await pubsub_server()

    def uni(data: str) -> Any:
        with connect(server.ws_url("/connection/uni_websocket"), open_timeout=WAIT,
                     additional_headers={"Authorization": "Bearer t"}) as ws:
            ws.send(json.dumps({"data": data}))
            try:
                return json.loads(ws.recv(timeout=WAIT))
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None

    pushed, failed, refused, bye = await asyncio_gather(
        *(in_thread(uni, data) for data in ("ok", "fail", "refused", "bye")))
    assert pushed["connect"]["data"] == {"hi": 1}
    # (the unidirectional WebSocket tells its close in a disconnect push first); the
    # backend's error too is 3004 (Centrifugo's: no error reply reaches such a client)
    assert failed == refused == {"disconnect": {"code": 3004,
                                                "reason": "internal server error"}}
    assert bye == {"disconnect": {"code": 4501, "reason": "unauthorized"}}
    assert {body["transport"] for body in backend.of("connect")} == {"uni_websocket"}
    assert {headers["authorization"] for _, headers, _ in backend.requests} == {"Bearer t"}


@pytest_twisted.ensureDeferred
async def test_a_body_over_the_limit_fails_its_call_alone(pubsub_server, backend,
                                                         monkeypatch):
    """A response over ``MAX_RESPONSE`` is error 100, and its connection is not handed,
    closing, to the next call (the backend's keep-alive connection, at once): each call
    after one is answered (20 rounds: a race shows)."""
    monkeypatch.setattr(pubsub_proxy, "MAX_RESPONSE", 1000)
    backend.proxy("connect", "rpc", timeout=WAIT)
    backend.answers.update(TOKEN_FREE)
    backend.answers["rpc"] = lambda body: ((200, b"[" + b" " * 2000 + b"]")
                                           if body["method"] == "big" else
                                           {"result": {"data": body["method"]}})
    server = await pubsub_server()

    def flow(client: Raw) -> Any:
        client.result("connect")
        found = []
        for _ in range(20):
            found.append(client.call("rpc", {"method": "big"})["error"]["code"])
            found.append(client.call("rpc", {"method": "ok"}).get("rpc", {}).get("data"))
        return found

    assert await raw(server, flow) == [100, "ok"] * 20
    assert _gauges()[2] == {"connect answered": 1, "rpc failed": 20, "rpc answered": 20}


# -- the bound on requests in flight -----------------------------------------------------------

def _gauges(by_proxy: bool = False) -> tuple[Any, Any, dict[str, int]]:
    """(in flight, queued, calls) as a ``--metrics`` scrape has them: calls by "event
    outcome" (every proxy together), or "event proxy outcome"; in flight and queued
    every proxy together, or by "proxy event" (a named proxy's: "proxy ")."""
    from prometheus_client.parser import text_string_to_metric_families

    from realtime.metrics import Collector, exposition

    found: dict[str, Any] = {"calls": {}, "realtime_pubsub_proxy_requests_in_progress": {},
                             "realtime_pubsub_proxy_calls_queued": {}}
    text = exposition(Collector([], None))[1].decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "realtime_pubsub_proxy_calls_total":
                labels = ("event", "proxy", "outcome") if by_proxy else ("event", "outcome")
                key = " ".join(sample.labels[label] for label in labels)
                found["calls"][key] = found["calls"].get(key, 0) + int(sample.value)
            elif sample.name in found:
                gate = f"{sample.labels['proxy']} {sample.labels['event']}"
                found[sample.name][gate] = int(sample.value)
    inflight, queued = (found[name] for name in ("realtime_pubsub_proxy_requests_in_progress",
                                                  "realtime_pubsub_proxy_calls_queued"))
    if by_proxy:
        return inflight, queued, found["calls"]
    return sum(inflight.values()), sum(queued.values()), found["calls"]


def _calling(server: Any, method: str) -> Any:
    """A client that connects, then calls ``method`` (its reply, in a worker thread)."""
    def flow(client: Raw) -> Any:
        client.result("connect")
        return client.call("rpc", {"method": method})

    return raw(server, flow)


@pytest_twisted.ensureDeferred
async def test_at_most_max_inflight_requests_reach_the_backend_the_rest_in_order(
        pubsub_server, backend):
    """A slow backend: two requests in flight at a time (--proxy-max-inflight 2), the
    other calls wait and reach it in the order they were made; every one is answered."""
    from tests.clients import until

    backend.proxy("rpc", max_inflight=2, timeout=WAIT)
    held: dict[str, Deferred[Any]] = {}

    def rpc(body: dict[str, Any]) -> Any:
        held[body["method"]] = Deferred()
        return held[body["method"]]

    backend.answers["rpc"] = rpc
    server = await pubsub_server(anonymous=True)
    calls = []
    for i in range(5):  # each queued (or in flight) before the next is made
        calls.append(_calling(server, f"m{i}"))
        assert await until(lambda i=i: len(held) + pubsub_proxy.GATES.waiting == i + 1)
    assert sorted(held) == ["m0", "m1"]  # the backend sees two, and no more
    assert _gauges()[:2] == (2, 3)
    # answered out of order: each answer lets the next waiter in, the queue's order kept
    for name, seen in (("m1", 3), ("m0", 4), ("m2", 5), ("m3", 5), ("m4", 5)):
        held[name].callback({"result": {"data": name}})
        assert await until(lambda seen=seen: len(backend.of("rpc")) == seen)
        assert pubsub_proxy.GATES.inflight <= 2
        assert len(held) - sum(d.called for d in held.values()) <= 2  # at the backend
    replies = await asyncio_gather(*calls)
    assert [reply["rpc"]["data"] for reply in replies] == ["m0", "m1", "m2", "m3", "m4"]
    assert [body["method"] for body in backend.of("rpc")] == ["m0", "m1", "m2", "m3", "m4"]
    inflight, queued, counted = _gauges()
    assert (inflight, queued) == (0, 0) and counted == {"rpc answered": 5}


@pytest_twisted.ensureDeferred
async def test_every_configured_proxy_has_its_gauges_from_the_first_scrape(pubsub_server,
                                                                           backend):
    """The in-flight and queued gauges have a series at 0 for each configured proxy (each
    event's own, each named one) before its first call, as the one series was before they
    were per proxy: a dashboard or an alert finds them from the start."""
    from realtime.pubsub_proxy import Proxy

    backend.proxy("connect", "rpc", proxies={"pay": Proxy(backend.url("pay"), name="pay")})
    every = {"default connect": 0, "default rpc": 0, "pay ": 0}
    assert _gauges(by_proxy=True)[:2] == (every, every)
    backend.answers["rpc"] = lambda body: {"result": {"data": body["method"]}}
    backend.answers["connect"] = lambda body: {"result": {"user": "ada"}}
    server = await pubsub_server()
    assert (await _calling(server, "m"))["rpc"] == {"data": "m"}
    inflight, queued, calls = _gauges(by_proxy=True)
    assert (inflight, queued) == (every, every)
    assert calls == {"connect default answered": 1, "rpc default answered": 1}


@pytest_twisted.ensureDeferred
async def test_a_call_times_out_from_when_it_queued_and_a_client_gone_frees_its_place(
        pubsub_server, backend):
    """One place (--proxy-max-inflight 1), held by a connect: a connect queued with a
    short timeout fails with error 100 when it passes, never reaching the backend; a
    client that leaves while its connect waits is dropped from the queue at once, and the
    one after it is served when the place frees."""
    from tests.clients import until

    backend.proxy("connect", max_inflight=1, timeout=WAIT)
    hold: Deferred[Any] = Deferred()
    backend.answers["connect"] = lambda body: hold if body.get("data") == "holder" else {
        "result": {"user": body.get("data", "")}}
    server = await pubsub_server()
    held = raw(server, lambda client: client.result("connect", {"data": "holder"}))
    assert await until(lambda: pubsub_proxy.GATES.inflight == 1 and backend.of("connect"))

    # the timeout counts from the queue: this call never gets the place
    backend.proxy("connect", max_inflight=1, timeout=0.2)
    def timed_out(client: Raw) -> Any:
        return client.call("connect", {"data": "late"})

    late = await raw(server, timed_out)
    assert late["error"] == {"code": 100, "message": "internal server error",
                             "temporary": True}
    backend.proxy("connect", max_inflight=1, timeout=WAIT)

    def leaves(client: Raw) -> None:  # its connect waits, and it goes
        client.send("connect", {"data": "gone"})
        deadline = time.monotonic() + WAIT
        while pubsub_proxy.GATES.waiting != 1 and time.monotonic() < deadline:
            time.sleep(0.01)

    await raw(server, leaves)
    assert await until(lambda: _gauges()[1] == 0)  # dropped at once, not at its deadline
    assert _gauges()[2].get("connect dropped") == 1
    after = raw(server, lambda client: client.result("connect", {"data": "after"}))
    assert await until(lambda: pubsub_proxy.GATES.waiting == 1)
    assert [body.get("data") for body in backend.of("connect")] == ["holder"]
    hold.callback({"result": {"user": "holder"}})
    assert (await after)["client"] and (await held)["client"]
    # the one that left and the one timed out never reached the backend
    assert [body.get("data") for body in backend.of("connect")] == ["holder", "after"]
    calls = _gauges()[2]
    assert calls == {"connect answered": 2, "connect queue_timeout": 1,
                     "connect dropped": 1}


# -- headers emulation -------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_emulated_headers_go_with_every_proxy_request_of_the_connection(pubsub_server,
                                                                             backend):
    """The connect command's ``headers`` (centrifuge-js's ``headers`` option), in JSON and
    Protobuf: the listed names reach the connect, subscribe and rpc requests, over the
    static ones and under the handshake's; other names never; a bad value is 107."""
    from tests.test_pubsub_protobuf import raw_pb

    backend.proxy("connect", "subscribe", "rpc", http_headers=("Authorization",),
                  emulated_headers=("Authorization", "X-Token"),
                  static_headers=(("X-Token", "static"), ("X-Static", "s")))
    backend.answers["connect"] = lambda body: {"result": {"user": "ada"}}
    backend.answers["subscribe"] = lambda body: {"result": {}}
    backend.answers["rpc"] = lambda body: {"result": {"data": "ok"}}
    server = await pubsub_server("p:subscribe_proxy_enabled")
    sent = {"authorization": "Bearer emulated", "X-TOKEN": "tok", "Cookie": "forged=1"}

    def flow(client: Raw) -> Any:
        client.result("connect", {"headers": sent})
        client.result("subscribe", {"channel": "p:1"})
        return client.result("rpc", {"method": "m"})

    assert await raw(server, flow) == {"data": "ok"}
    emulated = backend.requests[:]
    assert [event for event, _, _ in emulated] == ["connect", "subscribe", "rpc"]
    for _, headers, _ in emulated:
        assert headers["authorization"] == "Bearer emulated" and headers["x-token"] == "tok"
        assert headers["x-static"] == "s" and "cookie" not in headers
    # the handshake's own header wins over the client's map
    await raw(server, flow, Authorization="Bearer real")
    assert {headers["authorization"] for _, headers, _ in backend.requests[3:]} == {
        "Bearer real"}

    def protobuf(client: Any) -> Any:
        client.result("connect", {"headers": {"X-Token": "pb"}})
        return client.result("rpc", {"method": "m"})

    await raw_pb(server, protobuf)
    assert [headers.get("x-token") for _, headers, _ in backend.requests[6:]] == ["pb", "pb"]
    assert all("authorization" not in headers for _, headers, _ in backend.requests[6:])

    before = len(backend.requests)
    bad = [{"X-Token": "a\r\nX-Evil: 1"}, {"X-Token": "x" * 9000}, {"X-Token": "caf\u00e9"},
           {"X-Token": 5}, ["X-Token"]]
    replies = await asyncio_gather(*(raw(server, connected({"headers": h})) for h in bad))
    assert {reply["error"]["code"] for reply in replies} == {107}
    assert "must be ASCII without CR, LF or NUL" in replies[0]["error"]["message"]
    assert len(backend.requests) == before  # none reached the backend
    # a name not listed is not read at all: any value, no error
    ok = await raw(server, connected({"headers": {"X-Other": "a\r\nb"}}))
    assert "error" not in ok


def test_emulated_headers_and_max_inflight_at_start_up(tmp_path):
    from realtime.tap import Options

    Options().parseOptions(["--app", "realtime.pubsub:application", "--proxy-rpc-endpoint",
                            "http://h/x", "--proxy-emulated-headers", "Authorization,X-Token",
                            "--proxy-max-inflight", "0"])
    proxy = settings.pubsub_proxy
    assert proxy.emulated_headers == ("Authorization", "X-Token")
    assert proxy.max_inflight == 0 and proxy.timeout == 1.0
    Options().parseOptions(["--app", "realtime.pubsub:application", "--proxy-rpc-endpoint",
                            "http://h/x"])
    assert settings.pubsub_proxy.max_inflight == 64
    assert settings.pubsub_proxy.emulated_headers == ()
    config = tmp_path / "realtime.toml"
    config.write_text('app = "realtime.pubsub:application"\n'
                      'proxy_connect_endpoint = "http://127.0.0.1:3000/connect"\n'
                      'proxy_emulated_headers = ["Authorization"]\n'
                      'proxy_max_inflight = 16\n')
    Options().parseOptions(["--config", str(config)])
    assert settings.pubsub_proxy.emulated_headers == ("Authorization",)
    assert settings.pubsub_proxy.max_inflight == 16
    rpc = ("--proxy-rpc-endpoint", "http://h/x")
    assert startup_error(*rpc, "--proxy-emulated-headers", "Host") == (
        "--proxy-emulated-headers: 'Host' is the proxy request's own header (its "
        "connection's or framing's), not one to send")
    assert startup_error(*rpc, "--proxy-max-inflight", "-1") == (
        "--proxy-max-inflight: must be at least 0, got '-1'")
    assert startup_error(*rpc, "--proxy-max-inflight", "many") == (
        "--proxy-max-inflight: expected a whole number, got 'many'")
    # an option of the proxies without any endpoint: one line naming it
    for args in (("--proxy-timeout", "2s"), ("--proxy-max-inflight", "8"),
                 ("--proxy-http-headers", "Cookie"), ("--proxy-emulated-headers", "X-A"),
                 ("--proxy-static-header", "X-Key: v"), ("--proxy-binary-encoding",),
                 ("--proxy-include-connection-meta",)):
        needs = "a proxy" if args[0] == "--proxy-max-inflight" else "a proxy endpoint"
        alone = ", or a --proxy" if args[0] == "--proxy-max-inflight" else ""
        assert startup_error(*args) == (
            f"{args[0]}: needs {needs} (--proxy-connect-endpoint, ..., "
            f"--proxy-rpc-endpoint{alone})")
    with pytest.raises(ValueError, match="emulated_headers: 'Upgrade' is the proxy"):
        ProxyConfig(endpoints={"rpc": "http://h/"}, emulated_headers=("Upgrade",))
    with pytest.raises(ValueError, match="max_inflight"):
        ProxyConfig(endpoints={"rpc": "http://h/"}, max_inflight=-1)


class Wrapping(pubsub.PubSubConsumer):
    """Hooks that return ``super()``'s answer (the backend's grant kept), or their own."""

    async def can_subscribe(self, channel: str, data: Any) -> Any:
        if channel == "p:mine":
            return True  # decided here: nothing of the backend's
        return await super().can_subscribe(channel, data)

    async def can_publish(self, channel: str, data: Any) -> Any:
        if not data:
            return False
        return await super().can_publish(channel, data)


@pytest_twisted.ensureDeferred
async def test_the_hooks_hand_the_proxys_grant_back_as_their_answer(pubsub_server, backend):
    """A subclass that returns ``super()``'s answer keeps the backend's ``data`` (and
    ``info``, ...); one that answers True itself gets none of it; the publish proxy's
    ``skip_history`` is true or false (else error 100)."""
    from realtime.routing import URLRouter, path

    backend.proxy("subscribe", "publish")
    backend.answers["subscribe"] = lambda body: {"result": {"data": {"from": "backend"}}}
    backend.answers["publish"] = lambda body: (
        {"result": {"data": {"n": 2}, "skip_history": True}} if body["data"] == {"n": 1}
        else {"result": {"skip_history": "yes"}})
    app = URLRouter([path("connection/websocket", Wrapping.as_asgi())])
    server = await pubsub_server("p:subscribe_proxy_enabled,publish_proxy_enabled",
                                 anonymous=True, app=app)

    def flow(client: Raw) -> Any:
        client.result("connect")
        proxied = client.result("subscribe", {"channel": "p:1"})
        mine = client.result("subscribe", {"channel": "p:mine"})
        client.result("publish", {"channel": "p:1", "data": {"n": 1}})
        pub = client.push()
        return proxied, mine, pub, client.call("publish", {"channel": "p:1", "data": 3})

    proxied, mine, pub, refused = await raw(server, flow)
    assert proxied == {"data": {"from": "backend"}} and mine == {}
    assert pub["push"]["pub"]["data"] == {"n": 2}
    assert refused["error"]["code"] == 100
    assert [body["channel"] for body in backend.of("subscribe")] == ["p:1"]


@pytest_twisted.ensureDeferred
async def test_a_storm_of_failures_timeouts_and_leaves_gives_every_place_back(
        pubsub_server, backend):
    """Two places, calls that are answered, refused, fail (a status, not JSON), hang past
    --proxy-timeout, time out in the queue, and clients that leave while their connect is
    in flight or queued: afterwards nothing is in flight or queued (a place kept would
    wedge the proxy for good), every call is counted once, and a call still gets in."""
    from tests.clients import until
    from tests.test_pubsub import token

    backend.proxy("connect", "rpc", max_inflight=2, timeout=0.4)
    backend.answers["connect"] = lambda body: HANG
    backend.answers["rpc"] = lambda body: {
        "ok": {"result": {"data": "ok"}}, "err": {"error": {"code": 1000, "message": "no"}},
        "500": (500, b""), "junk": (200, b"[")}.get(body["method"], HANG)
    server = await pubsub_server(anonymous=True)
    methods = ["ok", "hang", "err", "500", "hang", "junk", "ok", "hang"]

    def worker(offset: int) -> Callable[[Raw], list[dict[str, Any]]]:
        def flow(client: Raw) -> list[dict[str, Any]]:
            client.connect(token())  # (a token: no connect proxy)
            return [client.call("rpc", {"method": methods[(offset + i) % len(methods)]})
                    for i in range(5)]
        return flow

    def leaver(client: Raw) -> None:  # asks the connect proxy, and goes at once
        client.send("connect", {"data": "gone"})

    runs = [raw(server, worker(i)) for i in range(6)] + [raw(server, leaver)
                                                          for _ in range(3)]
    replies = [reply for got in await asyncio_gather(*runs) if got for reply in got]
    assert await until(lambda: (pubsub_proxy.GATES.inflight, pubsub_proxy.GATES.waiting)
                       == (0, 0), timeout=WAIT)
    assert not any(gate.queue for gate in pubsub_proxy.GATES.by_key.values())  # (none
    # skipped left behind either)
    inflight, queued, calls = _gauges()
    assert (inflight, queued) == (0, 0)
    assert len(replies) == 30
    good = sum("error" not in r or r["error"]["code"] == 1000 for r in replies)
    assert good == calls.get("rpc answered", 0)
    assert len(replies) - good == sum(calls.get(f"rpc {o}", 0) for o in (
        "failed", "timeout", "queue_timeout"))
    assert all(r["error"]["code"] == 100 for r in replies
               if "error" in r and r["error"]["code"] != 1000)
    assert calls.get("rpc dropped", 0) == 0 and calls.get("connect answered", 0) == 0
    assert 0 < sum(n for key, n in calls.items() if key.startswith("connect ")) <= 3
    sent = len(backend.of("rpc"))  # a call let in reached the backend (or timed out first)
    assert good + calls.get("rpc failed", 0) <= sent <= good + calls.get(
        "rpc failed", 0) + calls.get("rpc timeout", 0)

    def after(client: Raw) -> Any:
        client.connect(token())
        return client.result("rpc", {"method": "ok"})

    assert await raw(server, after) == {"data": "ok"}
    assert _gauges()[:2] == (0, 0)


@pytest_twisted.ensureDeferred
async def test_a_backend_that_does_not_answer_in_time_is_a_timeout(pubsub_server, backend):
    """A request in flight past --proxy-timeout is ``timeout`` in the calls counter and
    the log line says so (the Agent's cancelled request fails with its own errors, a
    ``ResponseNeverReceived`` say: not ``failed``)."""
    from twisted.logger import globalLogPublisher

    backend.proxy("connect", "rpc", timeout=0.2)
    backend.answers["connect"] = backend.answers["rpc"] = lambda body: HANG
    server = await pubsub_server(anonymous=True)
    lines: list[str] = []

    def seen(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "realtime.pubsub_proxy":
            from twisted.logger import formatEvent

            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(seen)
    try:
        reply = await raw(server, connected())
        assert reply["error"]["code"] == 100
        settings.pubsub_proxy = replace(settings.pubsub_proxy, endpoints={
            "rpc": backend.url("rpc")})

        def flow(client: Raw) -> Any:
            client.result("connect")
            return client.call("rpc", {"method": "m"})

        assert (await raw(server, flow))["error"]["code"] == 100
    finally:
        globalLogPublisher.removeObserver(seen)
    assert _gauges()[2] == {"connect timeout": 1, "rpc timeout": 1}
    assert len(lines) == 2 and all("no answer within 0.2 s" in line for line in lines)


def test_a_call_waits_three_quarters_of_the_timeout_at_most_and_gets_the_rest():
    """On a clock: a call queued behind the one place fails (``QueueTimeout``) at 3/4 of
    --proxy-timeout, not at its end, when the backend would have had no time left; one let
    in before then has a quarter at least; the place and the queue are given back."""
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    settings.pubsub_proxy = ProxyConfig(endpoints={"rpc": "http://h/"}, max_inflight=1)
    clock, gate = Clock(), pubsub_proxy.Gate()

    def client() -> Any:
        return SimpleNamespace(_conn=SimpleNamespace(closing_or_closed=False),
                               _proxy_waiting=set())

    first = Deferred.fromCoroutine(gate.enter(client(), 1, 1.0, clock))
    assert first.called and gate.inflight == 1
    late = Deferred.fromCoroutine(gate.enter(client(), 1, 1.0, clock))
    failures: list[Any] = []
    late.addErrback(failures.append)
    clock.advance(0.74)
    assert not late.called and gate.waiting == 1
    clock.advance(0.02)  # 0.76 s: 0.24 s left would be too little
    assert failures and failures[0].check(pubsub_proxy.QueueTimeout)
    assert gate.waiting == 0 and not gate.queue
    soon = Deferred.fromCoroutine(gate.enter(client(), 1, 1.0, clock))
    clock.advance(0.7)  # let in with 0.3 s left
    gate.leave()
    assert soon.called and gate.inflight == 1 and gate.waiting == 0
    assert not clock.getDelayedCalls()  # its queue timer went with it
    gate.leave()
    assert gate.inflight == 0


@pytest_twisted.ensureDeferred
async def test_a_stream_client_that_leaves_while_its_connect_waits_is_dropped_at_once(
        pubsub_server, backend):
    """An HTTP-stream client whose connect waits for the one place and that goes (its
    connection closed) is dropped from the queue at once, not at its deadline."""
    import socket

    from tests.clients import until

    backend.proxy("connect", max_inflight=1, timeout=WAIT)
    hold: Deferred[Any] = Deferred()
    backend.answers["connect"] = lambda body: hold
    server = await pubsub_server()

    def stream() -> socket.socket:
        body = json.dumps({"id": 1, "connect": {}}).encode()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        sock.sendall(b"POST /connection/http_stream HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return sock

    first = await in_thread(stream)
    assert await until(lambda: pubsub_proxy.GATES.inflight == 1)
    second = await in_thread(stream)
    assert await until(lambda: pubsub_proxy.GATES.waiting == 1)
    second.close()
    assert await until(lambda: pubsub_proxy.GATES.waiting == 0)  # (WAIT is its deadline)
    assert _gauges()[2] == {"connect dropped": 1}
    hold.callback({"result": {"user": ""}})
    first.close()
    assert await until(lambda: pubsub_proxy.GATES.inflight == 0)
    assert len(backend.of("connect")) == 1
