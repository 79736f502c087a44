"""The bridge end to end, HTTP side: twisted.web resources and ``AsyncHttpConsumer`` as
``http`` routes, streaming, the built-in health and readiness paths, HTTP refusals."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource

from realtime import (
    AsyncHttpConsumer,
    BaseMiddleware,
    ProtocolTypeRouter,
    Refuse,
    URLRouter,
    WebsocketConsumer,
    path,
)
from tests.clients import (
    Recorder,
    captured_log,
    dechunk,
    http_request,
    in_thread,
    parse_response,
    raw_connect,
    raw_exchange,
)


async def get(port: int, path: str, **kwargs: Any) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    raw = await raw_exchange(port, http_request(path, **kwargs), timeout=5)
    return parse_response(raw)


async def get_logging(port: int, path: str) -> tuple[int, bytes, list[dict[str, Any]]]:
    """(status, body, the failures logged meanwhile) of a GET."""
    with captured_log() as events:
        status, _, body = await get(port, path)
    return status, body, [e for e in events if "log_failure" in e]


class ScopeResource(Resource):
    isLeaf = True

    def render_GET(self, request):
        scope = request.scope
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({
            "type": scope["type"], "method": scope["method"], "scheme": scope["scheme"],
            "path": scope["path"], "query_string": scope["query_string"].decode(),
            "http_version": scope["http_version"],
            "has_host": any(name == b"host" for name, _ in scope["headers"]),
        }).encode()


class Hello(AsyncHttpConsumer):
    async def handle(self, body):
        await self.send_response(
            201, b"hello " + body, headers=[(b"Content-Type", b"text/plain"), (b"X-A", b"1")])


class Routed(AsyncHttpConsumer):
    async def handle(self, body):
        await self.send_response(200, json.dumps(self.scope.get("url_route")).encode())


class Failing(AsyncHttpConsumer):
    async def handle(self, body):
        raise RuntimeError("secret handler detail")


class Stream(AsyncHttpConsumer):
    gate: Any = None
    rec: Any = None

    async def handle(self, body):
        await self.send_headers(headers=[(b"Content-Type", b"text/event-stream")])
        await self.send_body(b"data: 1\n\n", more_body=True)
        self.rec.add("first sent")
        await self.gate
        self.rec.add("last sent")
        await self.send_body(b"data: 2\n\n")

    async def disconnect(self):
        self.rec.add("disconnect")


class Echo(WebsocketConsumer):
    def receive(self, text_data=None, bytes_data=None):
        self.send(text_data=text_data)


def make_app(**http_routes: Any) -> ProtocolTypeRouter:
    routes = [path(name, app) for name, app in http_routes.items()]
    return ProtocolTypeRouter({
        "websocket": URLRouter([path("ws", Echo.as_app())]),
        "http": URLRouter(routes),
    })


@pytest_twisted.ensureDeferred
async def test_resource_route_sees_the_scope(live):
    server = await live(make_app(res=lambda scope: ScopeResource()))

    def client():
        with urllib.request.urlopen(server.http_url("/res?a=1"), timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], json.loads(resp.read())

    status, ctype, scope = await in_thread(client)
    assert status == 200
    assert ctype == "application/json"
    assert scope == {"type": "http", "method": "GET", "scheme": "http", "path": "/res",
                     "query_string": "a=1", "http_version": "1.1", "has_host": True}


@pytest_twisted.ensureDeferred
async def test_resource_instance_as_a_route(live):
    server = await live(ProtocolTypeRouter({
        "http": URLRouter([path("res", ScopeResource())]),
    }))
    status, headers, body = await get(server.port, "/res?b=2")
    assert status == 200
    assert headers[b"content-type"] == [b"application/json"]
    assert json.loads(body)["query_string"] == "b=2"


@pytest_twisted.ensureDeferred
async def test_async_http_consumer_send_response(live):
    server = await live(make_app(hello=Hello.as_app()))
    status, headers, body = await get(server.port, "/hello", method=b"POST", body=b"world")
    assert status == 201
    assert headers[b"content-type"] == [b"text/plain"]
    assert headers[b"x-a"] == [b"1"]
    assert headers[b"content-length"] == [b"11"]
    assert body == b"hello world"


@pytest_twisted.ensureDeferred
async def test_async_http_consumer_sees_url_route(live):
    server = await live(ProtocolTypeRouter({
        "http": URLRouter([path("items/<int:n>", Routed.as_app())]),
    }))
    status, _, body = await get(server.port, "/items/7")
    assert status == 200
    assert json.loads(body) == {"args": [], "kwargs": {"n": 7}}


@pytest_twisted.ensureDeferred
async def test_handle_that_raises_is_500_without_its_text(live):
    server = await live(make_app(fail=Failing.as_app()))
    status, body, failures = await get_logging(server.port, "/fail")
    assert status == 500
    assert b"secret" not in body
    assert any(isinstance(e["log_failure"].value, RuntimeError) for e in failures)


@pytest_twisted.ensureDeferred
async def test_streaming_chunks_arrive_as_they_are_sent(live):
    rec, gate = Recorder(), Deferred()
    server = await live(make_app(stream=Stream.as_app(gate=gate, rec=rec)))
    conn = await raw_connect(server.port)
    conn.write(http_request("/stream"))
    data = await conn.wait_for(lambda d: b"data: 1" in d)
    assert b"data: 1" in data
    assert rec.events == ["first sent"]
    assert b"data: 2" not in data
    gate.callback(None)
    raw = await conn.closed()
    status, headers, body = parse_response(raw)
    assert status == 200
    assert headers[b"content-type"] == [b"text/event-stream"]
    assert headers[b"transfer-encoding"] == [b"chunked"]
    assert dechunk(body) == b"data: 1\n\ndata: 2\n\n"
    # disconnect() once the response is over, as Channels runs it after handle()
    assert (await rec.wait(3)) == ["first sent", "last sent", "disconnect"]


class Cleanup(AsyncHttpConsumer):
    rec: Any = None
    fail = False

    async def handle(self, body):
        if self.fail:
            raise RuntimeError("handler failed")
        await self.send_response(200, b"ok")
        self.rec.add("handle returns")

    async def disconnect(self):
        self.rec.add("disconnect")


@pytest.mark.parametrize("fail", [False, True])
@pytest_twisted.ensureDeferred
async def test_disconnect_runs_once_after_a_response(live, fail):
    """Cleanup in disconnect() runs after a plain response too (and after a failed one), as
    Channels calls it when handle() returns."""
    rec = Recorder()
    server = await live(make_app(c=Cleanup.as_app(rec=rec, fail=fail)))
    with captured_log():
        status, _, _ = await get(server.port, "/c")
    assert status == (500 if fail else 200)
    expected = ["disconnect"] if fail else ["handle returns", "disconnect"]  # after handle()
    assert await rec.wait(len(expected)) == expected
    await get(server.port, "/healthz")
    assert rec.events == expected


@pytest_twisted.ensureDeferred
async def test_client_disconnect_mid_stream_calls_disconnect(live):
    rec, gate = Recorder(), Deferred()
    server = await live(make_app(stream=Stream.as_app(gate=gate, rec=rec)))
    conn = await raw_connect(server.port)
    conn.write(http_request("/stream"))
    await conn.wait_for(lambda d: b"data: 1" in d)
    conn.abort()
    events = await rec.wait(lambda ev: "disconnect" in ev)
    assert events == ["first sent", "disconnect"]
    gate.callback(None)  # the handler's late send goes nowhere and raises nothing
    assert (await rec.wait(3)) == ["first sent", "disconnect", "last sent"]


@pytest_twisted.ensureDeferred
async def test_health_and_readiness(live):
    server = await live(make_app())
    status, headers, body = await get(server.port, "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers[b"cache-control"] == [b"no-store"]
    status, _, body = await get(server.port, "/readyz")
    assert (status, body) == (200, b"ready\n")
    await server.site.drain()
    status, _, body = await get(server.port, "/readyz")
    assert status == 503
    status, _, _ = await get(server.port, "/healthz")
    assert status == 200


@pytest_twisted.ensureDeferred
async def test_builtin_paths_match_before_the_application(live):
    hit = Recorder()

    def app(scope):
        hit.add(scope["path"])
        raise Refuse(418)

    server = await live(app)
    status, _, _ = await get(server.port, "/healthz")
    assert status == 200
    status, _, _ = await get(server.port, "/other")
    assert status == 418
    assert hit.events == ["/other"]


@pytest_twisted.ensureDeferred
async def test_keep_alive_serves_several_requests(live):
    server = await live(make_app(hello=Hello.as_app()))
    conn = await raw_connect(server.port)
    conn.write(http_request("/hello", method=b"POST", body=b"a", close=False))
    await conn.wait_for(lambda d: d.endswith(b"hello a"))
    conn.write(http_request("/hello", method=b"POST", body=b"b"))
    raw = await conn.closed()
    assert raw.count(b"HTTP/1.1 201 ") == 2
    assert raw.endswith(b"hello b")


@pytest_twisted.ensureDeferred
async def test_plain_get_on_a_websocket_path_is_426(live):
    server = await live(make_app(hello=Hello.as_app()))
    status, headers, _ = await get(server.port, "/ws")
    assert status == 426
    assert headers[b"upgrade"] == [b"websocket"]
    # the same without an "http" application at all
    server2 = await live(ProtocolTypeRouter({"websocket": URLRouter([path("ws", Echo.as_app())])}))
    status, _, _ = await get(server2.port, "/ws")
    assert status == 426


@pytest.mark.parametrize("method", [b"GET", b"POST", b"HEAD"])
@pytest_twisted.ensureDeferred
async def test_plain_request_with_no_route_is_404(live, method):
    server = await live(make_app(hello=Hello.as_app()))
    status, _, body = await get(server.port, "/nowhere", method=method)
    assert status == 404
    assert body == (b"" if method == b"HEAD" else b"Not Found\n")


@pytest_twisted.ensureDeferred
async def test_http_app_that_raises_is_500(live):
    def broken(scope):
        raise ValueError("secret")

    server = await live(ProtocolTypeRouter({"http": broken}))
    status, _, body = await get(server.port, "/x")
    assert status == 500
    assert b"secret" not in body


@pytest_twisted.ensureDeferred
async def test_http_refusal_from_middleware(live):
    class NeedsKey(BaseMiddleware):
        async def resolve_scope(self, scope):
            if b"key=1" not in scope["query_string"]:
                raise Refuse(401, body=b"key please\n")

    server = await live(ProtocolTypeRouter({
        "http": NeedsKey(URLRouter([path("hello", Hello.as_app())])),
    }))
    status, headers, body = await get(server.port, "/hello")
    assert status == 401
    assert headers[b"www-authenticate"]
    assert body == b"key please\n"
    status, _, body = await get(server.port, "/hello?key=1", method=b"POST", body=b"x")
    assert (status, body) == (201, b"hello x")


@pytest_twisted.ensureDeferred
async def test_urllib_sees_refusals(live):
    server = await live(make_app())

    def client():
        try:
            urllib.request.urlopen(server.http_url("/nope"), timeout=5)
        except urllib.error.HTTPError as exc:
            return exc.code
        return None

    assert await in_thread(client) == 404


class SelfNotify(AsyncHttpConsumer):
    """A long-poll whose event comes during handle()'s own first steps (it notifies its
    own group before returning, on the memory layer a synchronous delivery)."""

    groups = ["poll"]

    async def handle(self, body):
        await self.send_headers(headers=[(b"Content-Type", b"text/plain")])
        await self.channel_layer.group_send("poll", {"type": "poll.done", "text": "ready"})

    async def poll_done(self, event):
        await self.send_body(event["text"].encode())


@pytest_twisted.ensureDeferred
async def test_an_event_that_arrives_while_handle_starts_is_queued_not_lost(live):
    server = await live(make_app(poll=SelfNotify.as_app()))
    status, _, body = await get(server.port, "/poll")
    assert (status, dechunk(body)) == (200, b"ready")


class BadGroup(AsyncHttpConsumer):
    groups = ["not a valid name"]

    async def handle(self, body):
        await self.send_response(200, b"ok")


@pytest_twisted.ensureDeferred
async def test_a_group_that_cannot_be_joined_is_logged(live):
    server = await live(make_app(bad=BadGroup.as_app()))
    status, _, failures = await get_logging(server.port, "/bad")
    assert status == 200
    assert any("could not join group" in e["log_format"] and e["group"] == "not a valid name"
               and isinstance(e["log_failure"].value, TypeError) for e in failures), failures

