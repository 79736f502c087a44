# ruff: noqa: F811  (the fixtures imported from tests.test_pubsub*, taken as arguments)
"""``realtime.pubsub_proxy``'s named proxies (``--proxy``, Centrifugo v6's ``proxies``), an
event's own settings (``--proxy-event``), namespaces' ``*_proxy_name``, RPC namespaces
(``--rpc-namespace``) and ``status_to_code_transforms``: two real twisted.web backends on
127.0.0.1 (``tests.test_pubsub_proxy.Backend``), raw WebSocket clients and
centrifuge-python."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from realtime.pubsub_proxy import Proxy, ProxyConfig, StatusTransform
from realtime.settings import settings
from tests.clients import captured_log
from tests.test_pubsub import (  # noqa: F401 (fixtures)
    WAIT,
    Raw,
    _settings,
    asyncio_gather,
    pubsub_server,
    run,
    sdk_client,
)
from tests.test_pubsub_proxy import (  # noqa: F401 (fixtures)
    HANG,
    Backend,
    _gauges,
    backend,
    raw,
    startup_error,
)


@pytest.fixture
def second(backend: Any) -> Any:
    """Another backend, on a port of its own (the named proxies' service)."""
    from twisted.internet import reactor
    from twisted.web.server import Site

    found = Backend()
    found.port = reactor.listenTCP(0, Site(found.resource), interface="127.0.0.1")
    yield found
    pytest_twisted.blockon(found.port.stopListening())


def later(seconds: float, answer: Any) -> Deferred[Any]:
    """An answer the backend gives ``seconds`` from now (a slow backend)."""
    from twisted.internet import reactor

    found: Deferred[Any] = Deferred()
    reactor.callLater(seconds, found.callback, answer)
    return found


# -- channel namespaces ------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_each_namespace_asks_the_proxy_it_names_with_that_proxys_headers(
        pubsub_server, backend, second):
    """The events' own proxies on one backend, named ones on another: a namespace's
    ``subscribe_proxy_name`` (``publish_``, ``sub_refresh_``) picks the backend, and each
    proxy sends its own forwarded, static and emulated headers, and meta where it
    includes it."""
    settings.pubsub_proxy = ProxyConfig(
        endpoints={"connect": backend.url("connect"), "subscribe": backend.url("subscribe")},
        http_headers=("Cookie",), static_headers=(("X-Key", "own"),),
        proxies={
            "b-sub": Proxy(second.url("subscribe"), name="b-sub", http_headers=("Origin",),
                           static_headers=(("X-Key", "named"),),
                           emulated_headers=("X-Token",)),
            "b-pub": Proxy(second.url("publish"), name="b-pub", include_connection_meta=True),
            "b-refresh": Proxy(second.url("sub_refresh"), name="b-refresh", timeout=WAIT)})
    backend.answers["connect"] = lambda body: {"result": {"user": "ada", "meta": {"m": 1}}}
    backend.answers["subscribe"] = lambda body: {"result": {"data": "own"}}
    second.answers["subscribe"] = lambda body: {"result": {
        "data": "named", "expire_at": time.time() + 0.3}}  # (then the sub_refresh)
    second.answers["publish"] = lambda body: {"result": {"data": {"by": "named"}}}
    # expired, once the client has its publication (however slow the machine, it comes
    # before the close)
    published: Deferred[Any] = Deferred()
    second.answers["sub_refresh"] = lambda body: published
    server = await pubsub_server(
        "a:subscribe_proxy_enabled", "d:subscribe_proxy_enabled,subscribe_proxy_name=default",
        "b:subscribe_proxy_enabled,subscribe_proxy_name=b-sub,publish_proxy_enabled,"
        "publish_proxy_name=b-pub,sub_refresh_proxy_enabled,sub_refresh_proxy_name=b-refresh")

    def flow(client: Raw) -> Any:
        client.result("connect", {"headers": {"X-Token": "emulated"}})
        replies = [client.result("subscribe", {"channel": channel})
                   for channel in ("a:1", "d:1", "b:1")]
        client.result("publish", {"channel": "b:1", "data": {"text": "hi"}})
        pub = client.push()
        reactor.callFromThread(published.callback, {"result": {"expired": True}})
        return replies, pub, client.closed()

    from twisted.internet import reactor

    replies, pub, code = await raw(server, flow, Cookie="sid=1", Origin="http://app")
    assert replies == [{"data": "own"}, {"data": "own"}, {"data": "named"}]
    assert pub["push"]["pub"]["data"] == {"by": "named"}
    assert code == 3006  # the named sub_refresh proxy said expired
    own = [(event, body.get("channel")) for event, _, body in backend.requests]
    assert own == [("connect", None), ("subscribe", "a:1"), ("subscribe", "d:1")]
    named = [(event, body["channel"]) for event, _, body in second.requests]
    assert sorted(named) == [("publish", "b:1"), ("sub_refresh", "b:1"), ("subscribe", "b:1")]
    assert named[0] == ("subscribe", "b:1")  # (the sub_refresh may come before the publish)
    for _, headers, _ in backend.requests:
        assert (headers["cookie"], headers["x-key"]) == ("sid=1", "own")
        assert "origin" not in headers and "x-token" not in headers
    _, headers, body = second.requests[0]
    assert (headers["origin"], headers["x-key"], headers["x-token"]) == (
        "http://app", "named", "emulated")
    assert "cookie" not in headers and "meta" not in body
    _, headers, body = next(request for request in second.requests if request[0] == "publish")
    assert body["meta"] == {"m": 1}  # (b-pub includes it)
    assert "x-token" not in headers and "x-key" not in headers
    assert _gauges(by_proxy=True)[2] == {
        "connect default answered": 1, "subscribe default answered": 2,
        "subscribe b-sub answered": 1, "publish b-pub answered": 1,
        "sub_refresh b-refresh answered": 1}


@pytest_twisted.ensureDeferred
async def test_each_proxy_has_its_own_timeout(pubsub_server, backend, second):
    """A slow backend (0.4 s) behind two named proxies: the one with a 0.15 s timeout
    answers error 100, the other waits and succeeds; an event's own timeout
    (``--proxy-event rpc:timeout=150ms``) wins over ``--proxy-timeout`` for it alone."""
    settings.pubsub_proxy = ProxyConfig(
        endpoints={"connect": backend.url("connect"), "rpc": backend.url("rpc")},
        timeout=WAIT, events={"rpc": {"timeout": 0.15}},
        proxies={"short": Proxy(second.url("subscribe"), name="short", timeout=0.15),
                 "long": Proxy(second.url("subscribe"), name="long", timeout=WAIT)})
    slow = lambda body: later(0.4, {"result": {}})  # noqa: E731
    backend.answers["connect"] = lambda body: later(0.4, {"result": {"user": "ada"}})
    backend.answers["rpc"] = second.answers["subscribe"] = slow
    server = await pubsub_server("s:subscribe_proxy_enabled,subscribe_proxy_name=short",
                                 "l:subscribe_proxy_enabled,subscribe_proxy_name=long")

    def flow(client: Raw) -> Any:
        client.result("connect")  # (the connect proxy: --proxy-timeout, WAIT)
        short = client.call("subscribe", {"channel": "s:1"})
        rpc = client.call("rpc", {"method": "m"})
        return short, rpc, client.call("subscribe", {"channel": "l:1"})

    short, rpc, long = await raw(server, flow)
    internal = {"code": 100, "message": "internal server error", "temporary": True}
    assert short["error"] == rpc["error"] == internal
    assert long == {"id": 4, "subscribe": {}}
    assert [body["channel"] for body in second.of("subscribe")] == ["s:1", "l:1"]
    assert _gauges(by_proxy=True)[2] == {
        "connect default answered": 1, "subscribe short timeout": 1,
        "rpc default timeout": 1, "subscribe long answered": 1}


@pytest_twisted.ensureDeferred
async def test_a_hanging_proxy_fills_its_own_places_never_a_fast_ones(pubsub_server, backend,
                                                                     second):
    """Each proxy has its own places and queue: a backend that hangs behind a named proxy
    with a long timeout (its own ``max_inflight=2``) holds 2 calls and queues the rest,
    while the event's own rpc proxy (``--proxy-max-inflight 1``, a fast backend) answers
    call after call, none queued; a call that times out in the slow one's queue is logged
    naming that proxy and its bound. Then every held call is answered."""
    from twisted.logger import formatEvent

    from realtime.pubsub_proxy import GATES, RpcNamespace
    from tests.clients import until
    from tests.test_pubsub_proxy import _calling

    slow = Proxy(second.url("rpc"), name="slow", timeout=WAIT, max_inflight=2)
    settings.pubsub_proxy = ProxyConfig(
        endpoints={"rpc": backend.url("rpc")}, timeout=WAIT, max_inflight=1,
        proxies={"slow": slow}, rpc_namespaces={
            "": RpcNamespace("", proxy_enabled=True),
            "slow": RpcNamespace("slow", proxy_enabled=True, proxy_name="slow")})
    held: list[Deferred[Any]] = []

    def hang(body: dict[str, Any]) -> Deferred[Any]:
        held.append(Deferred())
        return held[-1]

    second.answers["rpc"] = hang
    backend.answers["rpc"] = lambda body: {"result": {"data": body["method"]}}
    server = await pubsub_server(anonymous=True)
    stuck = [_calling(server, f"slow:{i}") for i in range(4)]
    assert await until(lambda: len(held) == 2 and GATES.waiting == 2)

    def fast(client: Raw) -> Any:
        client.result("connect")
        return [client.result("rpc", {"method": f"fast{i}"}) for i in range(5)]

    assert await raw(server, fast) == [{"data": f"fast{i}"} for i in range(5)]
    inflight, queued, calls = _gauges(by_proxy=True)
    assert inflight == {"slow ": 2, "default rpc": 0}
    assert queued == {"slow ": 2, "default rpc": 0}
    assert calls == {"rpc default answered": 5}

    # a slow call that cannot wait long: out of the queue at 3/4 of its timeout, logged
    settings.pubsub_proxy = replace(settings.pubsub_proxy,
                                    proxies={"slow": replace(slow, timeout=0.2)})
    with captured_log() as events:
        late = await _calling(server, "slow:late")
    assert late["error"] == {"code": 100, "message": "internal server error",
                             "temporary": True}
    assert [formatEvent(e) for e in events if e.get("log_namespace") ==
            "realtime.pubsub_proxy"] == [
        "pubsub: 1 call(s) to the proxy slow waited 0.15 s (3/4 of its timeout) for one of "
        "its 2 places in flight (its max_inflight) and failed (the clients get error 100)"]

    for answered in held[:2]:
        answered.callback({"result": {"data": "done"}})
    assert await until(lambda: len(held) == 4)  # the two queued ones, let in
    for answered in held[2:]:
        answered.callback({"result": {"data": "done"}})
    assert [reply["rpc"] for reply in await asyncio_gather(*stuck)] == [{"data": "done"}] * 4
    assert sorted(body["method"] for body in second.of("rpc")) == [
        "slow:0", "slow:1", "slow:2", "slow:3"]
    assert _gauges(by_proxy=True)[2] == {"rpc default answered": 5, "rpc slow answered": 4,
                                         "rpc slow queue_timeout": 1}


@pytest_twisted.ensureDeferred
async def test_a_named_proxys_places_serve_every_event_an_events_own_its_event_alone(
        pubsub_server, backend, second):
    """One place each (``--proxy-max-inflight 1``, and ``pay``'s ``max_inflight=1``): an RPC
    held at the named proxy ``pay`` makes a subscribe of a namespace that picks ``pay``
    wait (one backend service, one bound), while an RPC held at the event's own rpc proxy
    leaves the own subscribe proxy's place free (one bound per event)."""
    from realtime.pubsub_proxy import GATES, RpcNamespace
    from tests.clients import until
    from tests.test_pubsub_proxy import _calling

    settings.pubsub_proxy = ProxyConfig(
        endpoints={"rpc": backend.url("rpc"), "subscribe": backend.url("subscribe")},
        timeout=WAIT, max_inflight=1,
        proxies={"pay": Proxy(second.url("pay"), name="pay", timeout=WAIT, max_inflight=1)},
        rpc_namespaces={"": RpcNamespace("", proxy_enabled=True),
                        "pay": RpcNamespace("pay", proxy_enabled=True, proxy_name="pay")})
    held: dict[str, Deferred[Any]] = {}

    def hold(body: dict[str, Any]) -> Deferred[Any]:
        held[body["method"]] = Deferred()
        return held[body["method"]]

    backend.answers["rpc"] = hold
    backend.answers["subscribe"] = lambda body: {"result": {}}
    # (pay's one endpoint: its RPCs held, its subscribes answered)
    second.answers["pay"] = lambda body: hold(body) if "method" in body else {"result": {}}
    server = await pubsub_server("own:subscribe_proxy_enabled",
                                 "p:subscribe_proxy_enabled,subscribe_proxy_name=pay",
                                 anonymous=True)

    def subscribing(channel: str) -> Any:
        return raw(server, lambda client: [client.result("connect"), client.call(
            "subscribe", {"channel": channel})][1])

    calls = [_calling(server, "pay:charge"), _calling(server, "hold")]
    assert await until(lambda: sorted(held) == ["hold", "pay:charge"])
    paid = subscribing("p:1")
    assert await until(lambda: GATES.waiting == 1)
    assert (await subscribing("own:1"))["subscribe"] == {}  # (the own subscribe's place)
    inflight, queued, _ = _gauges(by_proxy=True)
    assert inflight == {"default rpc": 1, "default subscribe": 0, "pay ": 1}
    assert queued == {"default rpc": 0, "default subscribe": 0, "pay ": 1}
    assert [body.get("channel") for body in second.of("pay")] == [None]  # (p:1 waits)
    held["pay:charge"].callback({"result": {"data": "paid"}})
    assert (await paid)["subscribe"] == {}
    held["hold"].callback({"result": {"data": "held"}})
    assert [reply["rpc"] for reply in await asyncio_gather(*calls)] == [
        {"data": "paid"}, {"data": "held"}]
    assert [body.get("channel") for body in second.of("pay")] == [None, "p:1"]


# -- RPC namespaces ----------------------------------------------------------------------------

def _options(*args: str) -> None:
    from realtime.tap import Options

    Options().parseOptions(["--app", "realtime.pubsub:application", *args])


@pytest_twisted.ensureDeferred
async def test_rpc_namespaces_route_each_method_as_centrifugo_does(pubsub_server, backend,
                                                                  second):
    """With ``--rpc-namespace``, a method's namespace (before the first ``:``) picks its
    proxy: a named one, the rpc endpoint (``default``), or none: 108 where the namespace
    does not enable it, 104 for a namespace not configured; methods without one follow
    ``:OPTIONS`` (none given: 108). centrifuge-python's ``rpc()``."""
    own, pay = backend.url("rpc"), second.url("rpc")
    _options("--proxy-connect-endpoint", backend.url("connect"), "--proxy-rpc-endpoint", own,
             "--proxy", f"pay:endpoint={pay},timeout=2s", "--rpc-namespace",
             "billing:proxy_enabled,proxy_name=pay", "--rpc-namespace",
             "chat:proxy_enabled,proxy_name=default", "--rpc-namespace", "off:",
             "--rpc-namespace", ":proxy_enabled")
    backend.answers["connect"] = lambda body: {"result": {"user": "ada"}}
    backend.answers["rpc"] = lambda body: {"result": {"data": ["own", body["method"]]}}
    second.answers["rpc"] = lambda body: {"result": {"data": ["pay", body["method"]]}}
    server = await pubsub_server()
    methods = ["billing:charge", "chat:send", "plain", "off:x", "nope:x", "billing"]

    async def scenario() -> Any:
        client, events = sdk_client(server)
        await client.connect()
        await events.next("connected")
        answers = []
        for method in methods:
            try:
                answers.append((await client.rpc(method, {"n": 1})).data)
            except Exception as exc:  # centrifuge.ReplyError
                answers.append(exc.code)
        await client.disconnect()
        return answers

    assert await run(scenario) == [["pay", "billing:charge"], ["own", "chat:send"],
                                   ["own", "plain"], 108, 104, ["own", "billing"]]
    assert [body["method"] for body in second.of("rpc")] == ["billing:charge"]

    # no ":OPTIONS": a method without a namespace is not available; another boundary
    _options("--proxy-connect-endpoint", backend.url("connect"), "--proxy-rpc-endpoint", own,
             "--proxy", f"pay:endpoint={pay}", "--rpc-namespace",
             "billing:proxy_enabled,proxy_name=pay", "--rpc-namespace-boundary", ".")

    def flow(client: Raw) -> Any:
        client.result("connect")
        return [client.call("rpc", {"method": method}) for method in (
            "billing.charge", "billing:charge", "plain")]

    dotted, colon, plain = await raw(server, flow)
    assert dotted["rpc"] == {"data": ["pay", "billing.charge"]}
    assert colon["error"]["code"] == plain["error"]["code"] == 108


# -- status_to_code_transforms ----------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_an_rpc_with_no_rpc_proxy_at_all_is_108_as_centrifugo_answers(pubsub_server,
                                                                            backend):
    """Centrifugo sets a client's RPC handler only where an RPC proxy is enabled
    (internal/client/handler.go, ``Handler.Setup``), and centrifuge's
    ``Client.handleRPC`` answers 108 (not available) without one: so here, with no proxy
    at all, with proxies but no rpc one, and with RPC namespaces none of which enables
    its proxy (a method of a namespace not configured too: no handler to say 104); none
    reaches the backend. centrifuge-python's ``rpc()``; a ``PubSubConsumer`` whose
    ``rpc`` hook passes a method to ``super()`` is the handler, and that is 104
    (tests/test_pubsub.py, ``test_the_hooks_of_a_subclass``)."""
    backend.answers["connect"] = lambda body: {"result": {"user": "ada"}}
    backend.answers["rpc"] = lambda body: {"result": {"data": "reached"}}
    server = await pubsub_server(anonymous=True)

    async def answers() -> Any:
        client, events = sdk_client(server)
        await client.connect()
        await events.next("connected")
        found = []
        for method in ("plain", "off:x", "nope:x"):
            try:
                found.append((await client.rpc(method, {"n": 1})).data)
            except Exception as exc:  # centrifuge.ReplyError
                found.append((exc.code, exc.message))  # type: ignore[attr-defined]
        await client.disconnect()
        return found

    unavailable = [(108, "not available")] * 3
    settings.pubsub_proxy = None
    assert await run(answers) == unavailable
    _options("--proxy-connect-endpoint", backend.url("connect"))
    assert await run(answers) == unavailable
    _options("--proxy-connect-endpoint", backend.url("connect"), "--proxy-rpc-endpoint",
             backend.url("rpc"), "--rpc-namespace", "off:")
    assert await run(answers) == unavailable
    assert backend.of("rpc") == [] and len(backend.of("connect")) == 2
    # one namespace that enables its proxy: the rest answer as Centrifugo's RPC handler
    _options("--proxy-connect-endpoint", backend.url("connect"), "--proxy-rpc-endpoint",
             backend.url("rpc"), "--rpc-namespace", "off:", "--rpc-namespace",
             ":proxy_enabled")
    assert await run(answers) == ["reached", (108, "not available"),
                                  (104, "method not found")]


@pytest_twisted.ensureDeferred
async def test_status_to_code_transforms_answer_a_status_as_an_error_or_a_disconnect(
        pubsub_server, backend, second):
    """A named proxy's transforms: 404 is error 404, 429 a temporary 429, 403 closes 4903;
    a status not listed is still error 100 (and the one warning line); the connect
    proxy's own (``--proxy-event``) closes 4501 for a 401. Transformed: ``answered``."""
    statuses = {"404": (404, b""), "429": (429, b""), "500": (500, b""), "403": (403, b"")}
    settings.pubsub_proxy = ProxyConfig(
        endpoints={"connect": backend.url("connect")},
        events={"connect": {"status_to_code_transforms": (
            StatusTransform(401, disconnect=(4501, "unauthorized")),)}},
        proxies={"api": Proxy(second.url("rpc"), name="api", status_to_code_transforms=(
            StatusTransform(404, error=(404, "not found", False)),
            StatusTransform(429, error=(429, "too many requests", True)),
            StatusTransform(403, disconnect=(4903, "forbidden"))))},
        rpc_namespaces={"": pubsub_rpc(proxy_name="api")})
    backend.answers["connect"] = lambda body: (
        (401, b"") if body.get("data") == "bad" else {"result": {"user": "ada"}})
    second.answers["rpc"] = lambda body: statuses[body["method"]]
    server = await pubsub_server()

    def flow(client: Raw) -> Any:
        client.result("connect")
        replies = [client.call("rpc", {"method": m}) for m in ("404", "429", "500")]
        client.send("rpc", {"method": "403"})
        return replies, client.closed()

    def refused(client: Raw) -> Any:
        client.send("connect", {"data": "bad"})
        return client.closed()

    with captured_log() as events:
        (replies, code), unauthorized = await asyncio_gather(raw(server, flow),
                                                             raw(server, refused))
    assert [reply["error"] for reply in replies] == [
        {"code": 404, "message": "not found"},
        {"code": 429, "message": "too many requests", "temporary": True},
        {"code": 100, "message": "internal server error", "temporary": True}]
    assert (code, unauthorized) == (4903, 4501)
    lines = [e for e in events if e.get("log_namespace") == "realtime.pubsub_proxy"]
    assert len(lines) == 1 and "HTTP status 500" in str(lines[0].get("why"))
    assert _gauges(by_proxy=True)[2] == {
        "connect default answered": 2, "rpc api answered": 3, "rpc api failed": 1}


@pytest_twisted.ensureDeferred
async def test_a_status_is_transformed_whatever_its_body(pubsub_server, backend, second,
                                                        monkeypatch):
    """Centrifugo decides by a non-200 status alone, its body unread: a 403 whose body is
    over ``MAX_RESPONSE``, or never ends (answered within the proxy's timeout), is still
    the transform's error; a 500 with such a body fails by its status."""
    from realtime import pubsub_proxy

    monkeypatch.setattr(pubsub_proxy, "MAX_RESPONSE", 1000)
    settings.pubsub_proxy = ProxyConfig(
        endpoints={"connect": backend.url("connect")},
        proxies={"api": Proxy(second.url("rpc"), name="api", timeout=0.5,
                              status_to_code_transforms=(
                                  StatusTransform(403, error=(403, "forbidden", False)),))},
        rpc_namespaces={"": pubsub_rpc(proxy_name="api")})
    backend.answers["connect"] = lambda body: {"result": {"user": "ada"}}
    answers = {"big": (403, b"x" * 2000), "endless": (403, HANG), "big500": (500, b"x" * 2000)}
    second.answers["rpc"] = lambda body: answers[body["method"]]
    server = await pubsub_server()

    def flow(client: Raw) -> Any:
        client.result("connect")
        return [client.call("rpc", {"method": method}).get("error") for method in answers]

    with captured_log() as events:
        errors = await raw(server, flow)
    assert errors == [{"code": 403, "message": "forbidden"}] * 2 + [
        {"code": 100, "message": "internal server error", "temporary": True}]
    lines = [e for e in events if e.get("log_namespace") == "realtime.pubsub_proxy"]
    assert len(lines) == 1 and str(lines[0].get("why")) == "HTTP status 500"
    assert _gauges(by_proxy=True)[2] == {"connect default answered": 1,
                                         "rpc api answered": 2, "rpc api failed": 1}


def pubsub_rpc(**options: Any) -> Any:
    from realtime.pubsub_proxy import RpcNamespace

    return RpcNamespace(name="", proxy_enabled=True, **options)


# -- start-up ----------------------------------------------------------------------------------

def test_named_proxies_event_settings_and_rpc_namespaces_at_start_up(tmp_path, monkeypatch):
    """The command line, the environment and TOML (Centrifugo's proxy object: ``http``'s
    ``static_headers`` and ``status_to_code_transforms``) make the same configuration;
    the ``--proxy-*`` options stay the events' own defaults."""
    _options("--proxy-connect-endpoint", "http://127.0.0.1:3000/connect",
             "--proxy-subscribe-endpoint", "http://127.0.0.1:3000/subscribe",
             "--proxy-timeout", "2s", "--proxy-http-headers", "Cookie",
             "--proxy-event", "subscribe:timeout=300ms,static_header=X-Key: k1",
             "--proxy", "billing:endpoint=http://127.0.0.1:3001/sub?a=1%2C2,timeout=5s,"
             "http_headers=Cookie+Origin,emulated_headers=X-Token,include_connection_meta,"
             "status_to_error=404:404:not found,status_to_temporary_error=429:429,"
             "status_to_disconnect=403:4903:forbidden",
             "--namespace", "chat:subscribe_proxy_enabled,subscribe_proxy_name=billing",
             "--rpc-namespace", "pay:proxy_enabled,proxy_name=billing")
    proxy = settings.pubsub_proxy
    connect, subscribe = proxy.own("connect"), proxy.own("subscribe")
    assert (connect.timeout, connect.http_headers, connect.static_headers) == (
        2.0, ("Cookie",), ())
    assert (subscribe.timeout, subscribe.http_headers, subscribe.static_headers) == (
        0.3, ("Cookie",), (("X-Key", "k1"),))
    billing = proxy.proxies["billing"]
    assert billing == Proxy(
        "http://127.0.0.1:3001/sub?a=1%2C2", name="billing", timeout=5.0,
        http_headers=("Cookie", "Origin"), emulated_headers=("X-Token",),
        include_connection_meta=True, status_to_code_transforms=(
            StatusTransform(404, error=(404, "not found", False)),
            StatusTransform(429, error=(429, "", True)),
            StatusTransform(403, disconnect=(4903, "forbidden"))))
    assert proxy.for_channel("subscribe", settings.pubsub_namespaces["chat"]) is billing
    assert proxy.for_rpc("pay:x") is billing and proxy.all_emulated == {"x-token"}

    monkeypatch.setenv("REALTIME_PROXY", "a1:endpoint=http://h/a a2:endpoint=http://h/b")
    _options()
    assert sorted(settings.pubsub_proxy.proxies) == ["a1", "a2"]
    monkeypatch.delenv("REALTIME_PROXY")

    config = tmp_path / "realtime.toml"
    config.write_text('''app = "realtime.pubsub:application"
proxy_rpc_endpoint = "http://127.0.0.1:3000/rpc"
proxy_timeout = "2s"

[proxy_events.rpc]
timeout = "500ms"
http_headers = ["Authorization"]

[[proxies]]
name = "billing"
endpoint = "http://127.0.0.1:3001/centrifugo/subscribe"
timeout = "3s"
http_headers = ["Cookie"]
grpc_metadata = []
http = { static_headers = { "X-Key" = "a, b" }, status_to_code_transforms = [
  { status_code = 404, to_error = { code = 404, message = "not found" } },
  { status_code = 403, to_disconnect = { code = 4903, reason = "forbidden" } } ] }

[[namespaces]]
name = "chat"
subscribe_proxy_enabled = true
subscribe_proxy_name = "billing"

[[rpc_namespaces]]
name = "pay"
proxy_enabled = true
proxy_name = "billing"

[[rpc_namespaces]]
name = ""
proxy_enabled = true
''')
    _options("--config", str(config))
    proxy = settings.pubsub_proxy
    rpc = proxy.own("rpc")
    assert (rpc.timeout, rpc.http_headers) == (0.5, ("Authorization",))
    billing = proxy.proxies["billing"]
    assert (billing.timeout, billing.static_headers) == (3.0, (("X-Key", "a, b"),))
    assert billing.transform(403) == StatusTransform(403, disconnect=(4903, "forbidden"))
    assert proxy.for_rpc("pay:x") is billing and proxy.for_rpc("plain") is rpc
    assert sorted(proxy.rpc_namespaces) == ["", "pay"]


#: (arguments, the one line that stops start-up)
REFUSALS: list[tuple[tuple[str, ...], str]] = [
    (("--proxy", "billing:endpoint=http://h/a", "--proxy", "billing:endpoint=http://h/b"),
     "--proxy: 'billing' given twice"),
    (("--proxy", "bill ing:endpoint=http://h/a"),
     "--proxy: a proxy's name is 2 or more letters, digits, '-', '_', '.' (Centrifugo's "
     "rule), got 'bill ing'"),
    (("--proxy", "b:endpoint=http://h/a"),
     "--proxy: a proxy's name is 2 or more letters, digits, '-', '_', '.' (Centrifugo's "
     "rule), got 'b'"),
    (("--proxy", "default:endpoint=http://h/a"),
     "--proxy: 'default' is reserved (it names the events' own proxies)"),
    (("--proxy", "billing"), "--proxy: expected NAME:endpoint=URL,SETTING=VALUE,..., got "
                             "'billing'"),
    (("--proxy", "billing:timeout=2s"),
     "--proxy: 'billing': needs an endpoint (an http:// or https:// URL)"),
    (("--proxy", "billing:endpoint=localhost:3000"),
     "--proxy: 'billing': endpoint: expected an http:// or https:// URL, got "
     "'localhost:3000'"),
    (("--proxy", "billing:endpoint=grpc://127.0.0.1:9000"),
     "--proxy: 'billing': endpoint: gRPC proxies are not built (HTTP/JSON only), got "
     "'grpc://127.0.0.1:9000'"),
    (("--proxy-subscribe-endpoint", "grpc://127.0.0.1:9000"),
     "--proxy-subscribe-endpoint: gRPC proxies are not built (HTTP/JSON only), got "
     "'grpc://127.0.0.1:9000'"),
    (("--proxy", "billing:endpoint=http://ada:s3cret@h/"),
     "--proxy: 'billing': endpoint: a user and password in the URL are not sent (an "
     "Authorization static header is), got 'http://ada:***@h/'"),
    (("--proxy-rpc-endpoint", "https://ada@h:8443/rpc"),
     "--proxy-rpc-endpoint: a user and password in the URL are not sent (an "
     "Authorization static header is), got 'https://ada@h:8443/rpc'"),
    (("--proxy", "billing:endpoint=http://h/,timeout=soon"),
     "--proxy: 'billing': timeout: expected seconds (300, 300s, 5m, 1h), got 'soon'"),
    (("--proxy", "billing:endpoint=http://h/,timeout=0s"),
     "--proxy: 'billing': timeout: must be more than 0, got '0s'"),
    (("--proxy", "billing:endpoint=http://h/,max_inflight=-1"),
     "--proxy: 'billing': max_inflight: expected a whole number of requests, 0 or more (0: "
     "no bound), got '-1'"),
    (("--proxy", "billing:endpoint=http://h/,max_inflight=\u00b2"),
     "--proxy: 'billing': max_inflight: expected a whole number of requests, 0 or more (0: "
     "no bound), got '\u00b2'"),
    (("--proxy", "billing:endpoint=http://h/,max_inflight"),
     "--proxy: 'billing': max_inflight: expected max_inflight=VALUE"),
    (("--proxy-rpc-endpoint", "http://h/", "--proxy-event", "rpc:max_inflight=many"),
     "--proxy-event: rpc: max_inflight: expected a whole number of requests, 0 or more (0: "
     "no bound), got 'many'"),
    (("--proxy", "billing:endpoint=http://h/?a=1,b=2"),
     "--proxy: 'billing': no setting 'b' (known: endpoint, timeout, http_headers, "
     "emulated_headers, static_header, include_connection_meta, binary_encoding, "
     "status_to_error, status_to_temporary_error, status_to_disconnect, max_inflight; a "
     "comma inside a value: %2C in a URL, or the TOML form)"),
    (("--proxy", "billing:endpoint=http://h/,http_headers=Cookie+Host"),
     "--proxy: 'billing': http_headers: 'Host' is the proxy request's own header (its "
     "connection's or framing's), not one to send"),
    (("--proxy", "billing:endpoint=http://h/,status_to_error=200:1:ok"),
     "--proxy: 'billing': status_to_error: status 200 is not an HTTP status other than 200"),
    (("--proxy", "billing:endpoint=http://h/,status_to_disconnect=403:1000:x"),
     "--proxy: 'billing': status_to_disconnect: status 403: disconnect code 1000 is not "
     "3000-4999"),
    (("--proxy", "billing:endpoint=http://h/", "--namespace",
      "chat:subscribe_proxy_enabled,subscribe_proxy_name=nope"),
     "--namespace: namespace 'chat': subscribe_proxy_name 'nope' needs a --proxy of that "
     "name (known: billing)"),
    (("--proxy", "billing:endpoint=http://h/", "--namespace",
      "chat:publish_proxy_enabled"),
     "--namespace: namespace 'chat': publish_proxy_enabled needs --proxy-publish-endpoint"),
    (("--namespace", "chat:sub_refresh_proxy_name=bad name"),
     "--namespace: namespace 'chat': sub_refresh_proxy_name: expected a --proxy name (or "
     "'default'), got 'bad name'"),
    (("--proxy-event", "connect:timeout=2s"),
     "--proxy-event: connect: needs its endpoint (--proxy-connect-endpoint, or "
     "endpoint=URL)"),
    (("--proxy-event", "conect:timeout=2s"),
     "--proxy-event: no event 'conect' (the events: connect, refresh, subscribe, publish, "
     "sub_refresh, rpc)"),
    (("--proxy-rpc-endpoint", "http://h/", "--proxy-event", "rpc:endpoint=http://h/b"),
     "--proxy-event: rpc: endpoint given twice (and --proxy-rpc-endpoint)"),
    (("--rpc-namespace", "pay:proxy_enabled"),
     "--rpc-namespace: needs a proxy (--proxy-rpc-endpoint or --proxy)"),
    (("--proxy", "billing:endpoint=http://h/", "--rpc-namespace", "pay:proxy_enabled"),
     "--rpc-namespace: 'pay': proxy_enabled needs --proxy-rpc-endpoint"),
    (("--proxy", "billing:endpoint=http://h/", "--rpc-namespace",
      "pay:proxy_enabled,proxy_name=nope"),
     "--rpc-namespace: 'pay': proxy_name 'nope' needs a --proxy of that name (known: "
     "billing)"),
    (("--proxy", "billing:endpoint=http://h/", "--rpc-namespace", "p:proxy_enabled"),
     "--rpc-namespace: an RPC namespace's name is 2 or more letters, digits, '-', '_', '.' "
     "(Centrifugo's rule; \"\" for methods without one), got 'p'"),
    (("--proxy", "billing:endpoint=http://h/", "--rpc-namespace", "pay:", "--rpc-namespace",
      "pay:proxy_enabled"), "--rpc-namespace: 'pay' given twice"),
    (("--proxy", "billing:endpoint=http://h/", "--rpc-namespace", "pay:proxy_on"),
     "--rpc-namespace: 'pay': no option 'proxy_on' (known: proxy_enabled, proxy_name)"),
    (("--proxy", "billing:endpoint=http://h/", "--rpc-namespace", "p.ay:",
      "--rpc-namespace-boundary", "."),
     "--rpc-namespace: 'p.ay': no method reaches it with --rpc-namespace-boundary '.'"),
    (("--proxy", "billing:endpoint=http://h/", "--rpc-namespace-boundary", "."),
     "--rpc-namespace-boundary: needs --rpc-namespace"),
]


@pytest.mark.parametrize("args, line", REFUSALS, ids=[line[:40] for _, line in REFUSALS])
def test_a_bad_proxy_option_stops_start_up_with_one_line(args, line):
    assert startup_error(*args) == line


#: (a TOML document's body after ``app = ...``, the line that stops start-up; CONFIG:
#: ``--config PATH: ``)
TOML_REFUSALS: list[tuple[str, str]] = [
    ('[[proxies]]\nendpoint = "http://h/"\n',
     "CONFIG: proxies: every [[proxies]] table needs a name"),
    ('[[proxies]]\nname = "bi"\nendpoint = "http://h/"\ngrpc_metadata = ["x"]\n',
     "CONFIG: proxies: 'bi': grpc_metadata: gRPC proxies are not built (HTTP/JSON only)"),
    ('[[proxies]]\nname = "bi"\nendpoint = "grpc://h:9000"\n',
     "CONFIG: proxies: 'bi': endpoint: gRPC proxies are not built (HTTP/JSON only), got "
     "'grpc://h:9000'"),
    ('[[proxies]]\nname = "bi"\nendpoint = "http://h/"\ntimeout = true\n',
     "CONFIG: proxies: 'bi': timeout: expected a duration, got True"),
    ('[[proxies]]\nname = "bi"\nendpoint = "http://h/"\nmax_inflight = "8"\n',
     "CONFIG: proxies: 'bi': max_inflight: expected a whole number of requests, 0 or more "
     "(0: no bound), got '8'"),
    ('[[proxies]]\nname = "bi"\nendpoint = "http://h/"\nretries = 3\n',
     "CONFIG: proxies: 'bi': no setting 'retries' (known: endpoint, timeout, "
     "http_headers, emulated_headers, static_headers, include_connection_meta, binary_encoding, "
     "status_to_code_transforms, http, grpc_metadata, grpc, max_inflight)"),
    ('[[proxies]]\nname = "bi"\nendpoint = "http://h/"\n'
     '[[proxies.http.status_to_code_transforms]]\nstatus_code = 404\n',
     "CONFIG: proxies: 'bi': status_to_code_transforms[0]: status 404: an error or a "
     "disconnect, one of them"),
    ('[proxy_events.connect]\ntimeout = "2s"\n',
     "--proxy-event: connect: needs its endpoint (--proxy-connect-endpoint, or "
     "endpoint=URL)"),
    ('[[rpc_namespaces]]\nproxy_enabled = true\n',
     "CONFIG: rpc_namespaces: every [[rpc_namespaces]] table needs a name (a string; "
     'name = "" for methods without a namespace)'),
]


@pytest.mark.parametrize("body, line", TOML_REFUSALS,
                         ids=[line[8:48] for _, line in TOML_REFUSALS])
def test_a_bad_proxy_table_stops_start_up_with_one_line(tmp_path, body, line):
    config = tmp_path / "realtime.toml"
    config.write_text('app = "realtime.pubsub:application"\n' + body)
    assert startup_error("--config", str(config)) == line.replace(
        "CONFIG:", f"--config {config}:")


def test_the_contrib_configs_commented_proxy_objects_parse(tmp_path):
    """contrib/pubsub/realtime.toml's commented v6 proxy objects ([proxy_events.connect],
    [[proxies]], [[rpc_namespaces]]), uncommented after its proxy_* endpoints, are a
    configuration realtime takes as the comments say."""
    import re

    from tests.test_config_file import REPO

    text = (REPO / "contrib" / "pubsub" / "realtime.toml").read_text()
    block = text[text.index("# [proxy_events.connect]"):]
    block = block[:block.index("\n\n")]
    toml = "\n".join(line[2:] for line in block.splitlines()
                     if re.match(r'# (\[|[\w"]+ = |  \{)', line))
    config = tmp_path / "realtime.toml"
    config.write_text('app = "realtime.pubsub:application"\n'
                      'proxy_connect_endpoint = "http://127.0.0.1:8001/centrifugo/connect"\n'
                      'proxy_rpc_endpoint = "http://127.0.0.1:8001/centrifugo/rpc"\n'
                      'proxy_timeout = "1s"\n' + toml + "\n")
    _options("--config", str(config), "--namespace",
             "shop:subscribe_proxy_enabled,subscribe_proxy_name=payments")
    proxy = settings.pubsub_proxy
    assert (proxy.own("connect").timeout, proxy.own("connect").http_headers) == (
        3.0, ("Cookie",))
    payments = proxy.proxies["payments"]
    assert payments.static_headers == (("X-Proxy-Key", "change-me"),)
    assert (payments.max_inflight, proxy.max_inflight) == (16, 64)
    assert payments.transform(401) == StatusTransform(401, disconnect=(4501, "unauthorized"))
    assert proxy.for_rpc("billing:charge") is payments
    assert proxy.for_rpc("ping") is proxy.own("rpc")
    assert proxy.for_channel("subscribe", settings.pubsub_namespaces["shop"]) is payments


def test_the_bound_on_requests_in_flight_is_set_with_named_proxies_alone():
    """``--proxy-max-inflight`` bounds each proxy of the process, named ones too: with
    ``--proxy`` and no ``--proxy-*-endpoint`` it is taken (the other ``--proxy-*`` options
    are the events' own proxies' and still need an endpoint)."""
    _options("--proxy", "pay:endpoint=http://127.0.0.1:3001/", "--proxy-max-inflight", "8")
    assert settings.pubsub_proxy.max_inflight == 8
    assert settings.pubsub_proxy.proxies["pay"].max_inflight is None  # (--proxy-max-inflight)
    assert startup_error("--proxy-max-inflight", "8") == (
        "--proxy-max-inflight: needs a proxy (--proxy-connect-endpoint, ..., "
        "--proxy-rpc-endpoint, or a --proxy)")
    assert startup_error("--proxy", "pay:endpoint=http://127.0.0.1:3001/", "--proxy-timeout",
                         "2s") == (
        "--proxy-timeout: needs a proxy endpoint (--proxy-connect-endpoint, ..., "
        "--proxy-rpc-endpoint; a --proxy has its own timeout=)")


def test_a_proxys_own_bound_on_requests_in_flight_at_start_up(tmp_path):
    """realtime's own ``max_inflight`` (Centrifugo has no bound): a ``--proxy``'s, an
    event's own (``--proxy-event``), the same in TOML (``[[proxies]]``,
    ``[proxy_events.EVENT]``); a proxy without one takes ``--proxy-max-inflight``."""
    _options("--proxy-rpc-endpoint", "http://127.0.0.1:3000/rpc", "--proxy-connect-endpoint",
             "http://127.0.0.1:3000/connect", "--proxy-max-inflight", "8",
             "--proxy", "slow:endpoint=http://127.0.0.1:3001/,max_inflight=2",
             "--proxy", "fast:endpoint=http://127.0.0.1:3002/",
             "--proxy-event", "rpc:max_inflight=0")
    proxy = settings.pubsub_proxy
    assert (proxy.max_inflight, proxy.proxies["slow"].max_inflight) == (8, 2)
    assert proxy.proxies["fast"].max_inflight is None and proxy.own("connect").max_inflight \
        is None
    assert proxy.own("rpc").max_inflight == 0  # (no bound for it alone)
    config = tmp_path / "realtime.toml"
    config.write_text('app = "realtime.pubsub:application"\n'
                      'proxy_rpc_endpoint = "http://127.0.0.1:3000/rpc"\n'
                      '[proxy_events.rpc]\nmax_inflight = 4\n'
                      '[[proxies]]\nname = "slow"\nendpoint = "http://127.0.0.1:3001/"\n'
                      'max_inflight = 2\n')
    _options("--config", str(config))
    proxy = settings.pubsub_proxy
    assert (proxy.max_inflight, proxy.own("rpc").max_inflight,
            proxy.proxies["slow"].max_inflight) == (64, 4, 2)


#: (arguments, or a TOML body after ``app = ...``; the line that stops start-up): a static
#: header's value (a secret: "s3cret") is never in it, its name is.
SECRET_REFUSALS: list[tuple[tuple[str, ...] | str, str]] = [
    (("--proxy", "pay:endpoint=http://h/,static_header=X Key: s3cret"),
     "--proxy: 'pay': static_header: expected 'Name: value', got the name 'X Key'"),
    (("--proxy", "pay:endpoint=http://h/,static_header=X-Key=s3cret"),
     "--proxy: 'pay': static_header: expected 'Name: value' (no ':' in it)"),
    (("--proxy-rpc-endpoint", "http://h/", "--proxy-static-header", "Bad Name: s3cret"),
     "--proxy-static-header: expected 'Name: value', got the name 'Bad Name'"),
    ('[[proxies]]\nname = "pay"\nendpoint = "http://h/"\n'
     'http = { static_headers = { "X-Key" = "s3cret", "X-N" = 5 } }\n',
     "CONFIG: proxies: 'pay': static_headers: X-N: expected a string, got an integer"),
    ('[[proxies]]\nname = "pay"\nendpoint = "http://h/"\n'
     'http = { static_headers = { "X Key" = "s3cret" } }\n',
     "CONFIG: proxies: 'pay': static_headers: expected 'Name: value', got the name 'X Key'"),
    ('[[proxies]]\nname = "pay"\nendpoint = "http://h/"\n'
     'http = { static_headers = { "X-Key" = "s3cret" }, timeout = "1s" }\n',
     "CONFIG: proxies: 'pay': http: no key 'timeout' (known: static_headers, "
     "status_to_code_transforms, tls)"),
    ('[[proxies]]\nname = "pay"\nendpoint = "http://h/"\nstatic_headers = ["X-Key: s3cret"]\n',
     "CONFIG: proxies: 'pay': static_headers: expected a table of strings, got an array"),
    ('proxy_rpc_endpoint = "http://h/"\nproxy_static_header = ["X-Key: s3cret", true]\n',
     "CONFIG: proxy_static_header: expected a string or a list of strings, got something "
     "else (its values are not shown: secrets)"),
]


@pytest.mark.parametrize("given, line", SECRET_REFUSALS,
                         ids=[line[:48] for _, line in SECRET_REFUSALS])
def test_a_refused_static_header_never_shows_its_value(tmp_path, given, line):
    args: tuple[str, ...]
    if isinstance(given, str):
        config = tmp_path / "realtime.toml"
        config.write_text('app = "realtime.pubsub:application"\n' + given)
        args, line = ("--config", str(config)), line.replace("CONFIG:", f"--config {config}:")
    else:
        args = given
    found = startup_error(*args)
    assert "s3cret" not in found
    assert found == line


def test_the_connect_and_refresh_objects_enabled_key_as_centrifugo_has_it(tmp_path):
    """v6's ``client.proxy.connect`` and ``client.proxy.refresh`` objects carry
    ``enabled``: copied as they are into ``[proxy_events.connect]`` they load; ``enabled =
    false`` turns that proxy off (its endpoint set or not), as in Centrifugo. The other
    events have no such key (a namespace's ``*_proxy_enabled`` turns them on)."""
    config = tmp_path / "realtime.toml"
    config.write_text('''app = "realtime.pubsub:application"
proxy_rpc_endpoint = "http://127.0.0.1:3000/rpc"
proxy_refresh_endpoint = "http://127.0.0.1:3000/refresh"

[proxy_events.connect]
enabled = true
endpoint = "http://127.0.0.1:3000/connect"
timeout = "3s"

[proxy_events.refresh]
enabled = false
timeout = "2s"
''')
    _options("--config", str(config))
    proxy = settings.pubsub_proxy
    assert proxy.own("connect").timeout == 3.0
    assert proxy.own("refresh") is None and "refresh" not in proxy.endpoints
    _options("--proxy-connect-endpoint", "http://127.0.0.1:3000/connect", "--proxy-event",
             "connect:enabled=false", "--proxy-rpc-endpoint", "http://127.0.0.1:3000/rpc")
    assert settings.pubsub_proxy.own("connect") is None
    _options("--proxy-event", "connect:enabled,endpoint=http://127.0.0.1:3000/connect")
    assert settings.pubsub_proxy.own("connect").endpoint == "http://127.0.0.1:3000/connect"
    assert startup_error("--proxy-event", "connect:enabled") == (
        "--proxy-event: connect: needs its endpoint (--proxy-connect-endpoint, or "
        "endpoint=URL)")
    assert startup_error("--proxy-subscribe-endpoint", "http://h/", "--proxy-event",
                         "subscribe:enabled") == (
        "--proxy-event: subscribe: enabled: only connect and refresh have it (Centrifugo's "
        "client.proxy.connect and .refresh); a namespace's subscribe_proxy_enabled turns "
        "this one on")
    assert startup_error("--proxy-event", "connect:enabled=maybe") == (
        "--proxy-event: connect: enabled: expected true or false, got 'maybe'")


def test_an_empty_proxy_name_is_the_events_own_as_in_centrifugo(tmp_path):
    """A namespace's ``subscribe_proxy_name = ""`` (v6's default, as an exported config
    writes it) is the event's own proxy, like none or ``default``; a bare
    ``subscribe_proxy_name`` (no ``=``) is refused."""
    config = tmp_path / "realtime.toml"
    config.write_text('''app = "realtime.pubsub:application"
proxy_subscribe_endpoint = "http://127.0.0.1:3000/subscribe"

[[namespaces]]
name = "chat"
subscribe_proxy_enabled = true
subscribe_proxy_name = ""
publish_proxy_name = ""
sub_refresh_proxy_name = ""
''')
    _options("--config", str(config))
    chat = settings.pubsub_namespaces["chat"]
    assert settings.pubsub_proxy.for_channel("subscribe", chat) is (
        settings.pubsub_proxy.own("subscribe"))
    _options("--proxy-subscribe-endpoint", "http://127.0.0.1:3000/subscribe", "--namespace",
             "chat:subscribe_proxy_enabled,subscribe_proxy_name=")
    assert settings.pubsub_namespaces["chat"].subscribe_proxy_name == ""
    assert startup_error("--namespace", "chat:subscribe_proxy_name") == (
        "--namespace: namespace 'chat': subscribe_proxy_name: expected "
        "subscribe_proxy_name=NAME (a --proxy name, or 'default')")


def test_grpc_and_tls_tables_that_say_nothing_load(tmp_path):
    """An exported v6 proxy object carries ``grpc`` and ``http.tls`` with every value off
    (``tls = { enabled = false }``): it loads; one that turns something on stops start-up
    (gRPC proxies and a proxy's own TLS are not built)."""
    head = ('app = "realtime.pubsub:application"\n[[proxies]]\nname = "pay"\n'
            'endpoint = "http://127.0.0.1:3001/"\n')
    config = tmp_path / "realtime.toml"
    config.write_text(head + 'grpc_metadata = []\n'
                      'http = { tls = { enabled = false, server_name = "" }, '
                      'static_headers = {} }\n'
                      'grpc = { tls = { enabled = false }, compression = false, '
                      'credentials_key = "", static_metadata = {} }\n')
    _options("--config", str(config))
    assert settings.pubsub_proxy.proxies["pay"].static_headers == ()
    config.write_text(head + 'grpc = { tls = { enabled = false }, compression = true }\n')
    assert startup_error("--config", str(config)) == (
        f"--config {config}: proxies: 'pay': grpc: gRPC proxies are not built (HTTP/JSON "
        "only)")
    config.write_text(head + 'http = { tls = { enabled = true } }\n')
    assert startup_error("--config", str(config)) == (
        f"--config {config}: proxies: 'pay': http.tls: not built (https uses the system's "
        "CA certificates)")


def test_a_proxys_repr_never_shows_its_static_headers():
    """A static header holds the backend's shared secret: a ``Proxy`` or ``ProxyConfig``
    in a traceback or a debugging line never shows it."""
    proxy = Proxy("http://127.0.0.1:3001/", name="pay", static_headers=(("X-Key", "s3cret"),))
    config = ProxyConfig(endpoints={"rpc": "http://127.0.0.1:3000/"},
                         static_headers=(("X-Key", "s3cret"),), proxies={"pay": proxy})
    assert "s3cret" not in repr(proxy) and "s3cret" not in repr(config)
    assert "pay" in repr(config) and proxy.static_headers == (("X-Key", "s3cret"),)


@pytest_twisted.ensureDeferred
async def test_a_transforms_message_is_any_text_as_a_backends_error_is(pubsub_server, backend,
                                                                       tmp_path):
    """A transform's error message is any text (a v6 config's ``message = "не найдено"``
    loads, and the client gets it, as it would a backend's ``error``); a disconnect's
    reason is a close frame's, 123 bytes of UTF-8 at most."""
    config = tmp_path / "realtime.toml"
    config.write_text(f'''app = "realtime.pubsub:application"
proxy_connect_endpoint = "{backend.url("connect")}"
proxy_rpc_endpoint = "{backend.url("rpc")}"

[proxy_events.rpc]
http = {{ status_to_code_transforms = [
  {{ status_code = 404, to_error = {{ code = 404, message = "не найдено" }} }},
  {{ status_code = 403, to_disconnect = {{ code = 4903, reason = "запрещено" }} }} ] }}
''')
    _options("--config", str(config))
    backend.answers["connect"] = lambda body: {"result": {"user": "ada"}}
    backend.answers["rpc"] = lambda body: (int(body["method"]), b"")
    server = await pubsub_server()

    def flow(client: Raw) -> Any:
        client.result("connect")
        error = client.call("rpc", {"method": "404"})["error"]
        client.send("rpc", {"method": "403"})
        return error, client.ws, client.closed()

    error, ws, code = await raw(server, flow)
    assert (error, code) == ({"code": 404, "message": "не найдено"}, 4903)
    assert ws.close_reason == "запрещено"
    assert startup_error("--proxy", "pay:endpoint=http://h/,status_to_disconnect=403:4903:"
                         + "é" * 62) == (
        "--proxy: 'pay': status_to_disconnect: status 403: a disconnect reason is 123 bytes "
        "of UTF-8 at most (a close frame's), got 124")
