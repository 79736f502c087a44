"""centrifuge-js's WebSocket fallbacks in a real browser against ``realtime.pubsub``: the
bidirectional protocol over streamed HTTP (``http_stream``: a ``fetch`` POST read as a
stream; ``sse``: an ``EventSource``), the SDK's later commands POSTed to ``/emulation``.

The SDK is given its transports as a list (centrifuge-js's fallback form); WebSocket is
left out of it, so the fallback is all it has, except in the test of falling back, where a
WebSocket to a path nothing serves comes first. The page (tests/e2e/pubsub_fallback_page_app.py,
the page and the transports on one origin) records what its clients do and its own traffic
(each ``fetch``, ``EventSource`` and ``WebSocket``), so the tests can tell what went over
which transport. The server runs in this process (``tests/test_pubsub.py``'s
``pubsub_server``), so Python publishes with ``realtime.pubsub.publish`` in the reactor;
Chromium runs on a thread of its own (``chromium``, tests/e2e/conftest.py),
skipped without it or without the installed package, except under ``CI=true``. Every wait
is on a JS condition with a bound.

centrifuge-js (5.7.4) handles the end of an ``http_stream`` response at once but the
replies read just before it through a promise chain, so it may see a stream end before
the last message on it: harmless for a ``disconnect`` push (the push still comes, right
after), not for a refused connect's 109 reply, which it would then never see: the server
leaves that stream open for the SDK to close, as Centrifugo does
(``test_an_expired_token_is_refreshed_at_the_first_refusal``).
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import pytest_twisted

from realtime import pubsub
from tests.clients import http_get, in_thread
from tests.e2e.pubsub_fallback_page_app import RECORD_TRAFFIC
from tests.e2e.pubsub_fallback_page_app import application as APP
from tests.e2e.test_browser_chat import TIMEOUT_MS
from tests.e2e.test_browser_pubsub import (
    _js,
    _rec,
    centrifuge_js,  # noqa: F401  (fixture)
)
from tests.test_pubsub import (  # noqa: F401  (fixtures)
    _settings,
    from_thread,
    pubsub_server,
    token,
)

pytestmark = pytest.mark.slow

CHAT = ("chat:allow_subscribe_for_client,allow_publish_for_subscriber,presence,join_leave,"
        "force_push_join_leave,history_size=50,history_ttl=300s,force_recovery,"
        "allow_history_for_subscriber,allow_presence_for_subscriber")
#: No history: its publications are ``broadcast()`` frames (translated for Protobuf).
LIVE = "live:allow_subscribe_for_client,allow_publish_for_subscriber"
KEY = "fallback-browser-api-key-0123456789"
ENDPOINTS = {
    "http_stream": {"transport": "http_stream", "endpoint": "/connection/http_stream"},
    "sse": {"transport": "sse", "endpoint": "/connection/sse"},
}
ALL_BYTES = list(range(256))
#: What the JSON build publishes: non-ASCII, a quote and a newline in it.
SENT = {"text": "héllo 👋 \"quoted\"\nline", "n": [1, 2.5, None]}


async def _serve(pubsub_server: Any, **config: Any) -> tuple[Any, Any]:  # noqa: F811
    """The page app on a fresh in-memory layer with CHAT and LIVE: (server, layer)."""
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    server = await pubsub_server(CHAT, LIVE, app=APP, layer=layer, **config)
    return server, layer


# -- in the browser's thread ---------------------------------------------------------------------

def _open(browser: Any, server: Any, path: str = "/") -> Any:
    """A new context (its own connections) on the page, its traffic recorded; uncaught
    page errors are kept in ``page.page_errors``."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORD_TRAFFIC)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.http_url(path))
    page.wait_for_function("window.ready === true")
    page.page_errors = errors
    return page


def _wait(page: Any, condition: str, timeout: int = TIMEOUT_MS) -> None:
    page.wait_for_function(condition, timeout=timeout)


def _connect(page: Any, name: str, transports: list[dict[str, str]],
             options: dict[str, Any]) -> None:
    page.evaluate(f"window.fallback({json.dumps(name)}, {json.dumps(transports)}, "
                  f"{json.dumps(options)}).connect()")


def _seen_js(name: str) -> str:
    return f"window.clients[{json.dumps(name)}].seen"


def _subscribe(page: Any, name: str, channel: str) -> None:
    page.evaluate(f"window.sub({json.dumps(name)}, {json.dumps(channel)}).subscribe()")
    _wait(page, f"{_rec(name, channel)}.subscribed.length === 1")


def _record(page: Any, name: str, channel: str) -> dict[str, Any]:
    return page.evaluate(_rec(name, channel))


def _seen(page: Any, name: str) -> dict[str, Any]:
    return page.evaluate(_seen_js(name))


def _traffic(page: Any) -> dict[str, Any]:
    return page.evaluate("({fetches: window.traffic, sources: window.sources, "
                         "sockets: window.sockets})")


def _publish(layer: Any, channel: str, data: Any) -> Any:
    return from_thread(pubsub.publish, channel, data, layer=layer)


def _emulated(traffic: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON build's requests to /emulation, their bodies parsed; each body's ``data``
    as its list of commands."""
    requests = []
    for fetch in traffic["fetches"]:
        if fetch["url"] == "/emulation":
            body = json.loads(fetch["body"])
            body["commands"] = [json.loads(line) for line in body.pop("data").split("\n")]
            requests.append({"status": fetch["status"], **body})
    return requests


def _methods(requests: list[dict[str, Any]]) -> list[str]:
    """The commands sent, by method (``pong`` for ``{}``)."""
    return [next((key for key in command if key != "id"), "pong")
            for request in requests for command in request["commands"]]


def _stream_messages(traffic: dict[str, Any], transport: str) -> list[list[Any]]:
    """What came down each JSON stream (lines of an http_stream, events of an
    EventSource), parsed."""
    if transport == "sse":
        return [[json.loads(event) for event in source["events"]]
                for source in traffic["sources"]]
    return [[json.loads(line) for line in fetch["received"].split("\n") if line.strip()]
            for fetch in traffic["fetches"] if fetch["url"] == "/connection/http_stream"]


# -- the tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["http_stream", "sse"])
@pytest_twisted.ensureDeferred
async def test_the_json_build_over_a_fallback_transport(
        centrifuge_js, chromium, pubsub_server, monkeypatch, transport):  # noqa: F811
    """Two clients of the JSON build, each given only ``transport``: both connect (a token),
    the ``connected`` context says ``transport``; no WebSocket is opened. Both subscribe to
    chat:room (Ada sees Bob join); what Ada publishes and what Python publishes reach
    both, in order, with increasing offsets; presence, presenceStats and history answer.
    Every one of those later commands went as a POST to /emulation (204) with its
    stream's session and node, the server's pings were answered there (pongs), and the
    connection outlives several ping intervals (the server closes one without pongs:
    3012)."""
    monkeypatch.setattr(pubsub, "PING_INTERVAL", 0.5)
    server, layer = await _serve(pubsub_server)
    channel = "chat:room"

    def flow(browser: Any) -> Any:
        page = _open(browser, server)
        try:
            only = [ENDPOINTS[transport]]
            _connect(page, "ada", only, {"token": token("ada")})
            _connect(page, "bob", only, {"token": token("bob")})
            _wait(page, f"{_seen_js('ada')}.connected.length === 1 && "
                        f"{_seen_js('bob')}.connected.length === 1")
            _subscribe(page, "ada", channel)
            _subscribe(page, "bob", channel)
            _wait(page, f"{_rec('ada', channel)}.joins.some((j) => j.user === 'bob')")

            published = page.evaluate(f"{_js('ada', channel)}.publish({json.dumps(SENT)})")
            _wait(page, f"{_rec('bob', channel)}.pubs.length === 1")
            position = _publish(layer, channel, "from python")
            for name in ("ada", "bob"):
                _wait(page, f"{_rec(name, channel)}.pubs.length === 2")
            stats = page.evaluate(f"{_js('bob', channel)}.presenceStats()")
            presence = page.evaluate(f"{_js('ada', channel)}.presence()")["clients"]
            history = page.evaluate(f"{_js('bob', channel)}.history({{limit: 10}})")
            # Three pings of the server's (0.5 s apart) answered through /emulation.
            _wait(page, "window.traffic.filter((t) => t.url === '/emulation' && "
                        "JSON.parse(t.body).data === '{}' && t.status === 204).length >= 6")
            state = page.evaluate(f"[{_js('ada')}.state, {_js('bob')}.state]")
            return (published, position, stats, presence, history, state,
                    {name: _record(page, name, channel) for name in ("ada", "bob")},
                    {name: _seen(page, name) for name in ("ada", "bob")},
                    _traffic(page), page.page_errors)
        finally:
            page.context.close()

    (published, position, stats, presence, history, state, records, seen, traffic,
     errors) = await in_thread(chromium.run, flow)
    assert published == {}
    for name in ("ada", "bob"):
        assert seen[name]["transports"] == [transport]
        assert seen[name]["states"] == ["connecting", "connected"]
        assert seen[name]["disconnected"] == [] and seen[name]["errors"] == []
        pubs = records[name]["pubs"]
        assert [p["data"] for p in pubs] == [SENT, "from python"]
        assert pubs[0]["user"] == "ada"
        assert [p["offset"] for p in pubs] == [position["offset"] - 1, position["offset"]]
    assert state == ["connected", "connected"]
    assert stats == {"numClients": 2, "numUsers": 2}
    assert sorted(info["user"] for info in presence.values()) == ["ada", "bob"]
    assert set(presence) == {c["client"] for s in seen.values() for c in s["connected"]}
    assert [p["data"] for p in history["publications"]] == [SENT, "from python"]
    assert history["offset"] == position["offset"] and history["epoch"] == position["epoch"]

    # The transports: a stream each, no WebSocket; the rest through /emulation.
    assert traffic["sockets"] == []
    if transport == "http_stream":
        streams = [f for f in traffic["fetches"] if f["url"] == "/connection/http_stream"]
        assert [(f["method"], f["status"]) for f in streams] == [("POST", 200)] * 2
        connects = [json.loads(f["body"]) for f in streams]
        assert traffic["sources"] == []
    else:
        assert [s["url"].split("?")[0] for s in traffic["sources"]] == [
            server.http_url("/connection/sse")] * 2
        connects = [json.loads(parse_qs(urlsplit(s["url"]).query)["cf_connect"][0])
                    for s in traffic["sources"]]
        assert all(s["errors"] == 0 for s in traffic["sources"])
    assert [set(c) for c in connects] == [{"id", "connect"}] * 2
    assert sorted(jwt.decode(c["connect"]["token"], options={"verify_signature": False})["sub"]
                  for c in connects) == ["ada", "bob"]
    emulated = _emulated(traffic)
    assert emulated and all(r["status"] == 204 for r in emulated)
    # Each with the session and node its stream's connect reply gave.
    given = {(m[0]["connect"]["session"], m[0]["connect"]["node"])
             for m in _stream_messages(traffic, transport)}
    assert len(given) == 2 and {(r["session"], r["node"]) for r in emulated} == given
    methods = _methods(emulated)
    for method in ("subscribe", "publish", "presence_stats", "presence", "history"):
        assert method in methods
    assert methods.count("pong") >= 6
    assert errors == []


def _received_bytes(page: Any, name: str, channel: str) -> list[list[int] | None]:
    """The data of each publication ``name`` received in ``channel``, as lists of numbers
    (None when it is no ``Uint8Array``)."""
    return page.evaluate(f"{_rec(name, channel)}.pubs.map((p) => "
                         "p.data instanceof Uint8Array ? Array.from(p.data) : null)")


def _uint64(value: Any) -> int | None:
    """An offset from the Protobuf build (protobufjs's ``Long``, ``{low, high}``)."""
    if isinstance(value, dict):
        return (value["high"] & 0xFFFFFFFF) << 32 | (value["low"] & 0xFFFFFFFF)
    return value


def _pb_emulated(traffic: dict[str, Any]) -> list[dict[str, Any]]:
    """The Protobuf build's requests to /emulation (``EmulationRequest``s), decoded with
    centrifuge-python's generated classes: each one's commands as dicts (a pong, the
    empty command, is ``{}``)."""
    from centrifuge.protocol import client_pb2
    from google.protobuf.json_format import MessageToDict

    requests = []
    for fetch in traffic["fetches"]:
        if fetch["url"] != "/emulation":
            continue
        request = client_pb2.EmulationRequest.FromString(bytes(fetch["body"]))
        data, commands, at = request.data, [], 0
        while at < len(data):
            size = shift = 0
            while True:
                byte = data[at]
                at += 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            commands.append(MessageToDict(client_pb2.Command.FromString(data[at:at + size])))
            at += size
        requests.append({"status": fetch["status"], "type": fetch["type"],
                         "session": request.session, "node": request.node,
                         "commands": commands})
    return requests


@pytest.mark.parametrize("channel", ["chat:bytes", "live:bytes"])
@pytest_twisted.ensureDeferred
async def test_the_protobuf_build_over_http_stream_carries_bytes(
        centrifuge_js, chromium, pubsub_server, monkeypatch, channel):  # noqa: F811
    """Two clients of the Protobuf build, given only ``http_stream``: the stream's POST and
    every /emulation request are ``application/octet-stream`` (Protobuf ``Command``s in
    ``EmulationRequest``s), all 204. What Ada publishes (a ``Uint8Array`` of 0..255, and
    those bytes reversed) reaches both byte for byte, in a channel with history (with
    increasing offsets, and ``history`` gives the same bytes back) and in one without
    (``broadcast()`` frames translated for Protobuf streams); bytes Python publishes too.
    The server's pings are answered with Protobuf pongs through /emulation, and the
    connections outlive several ping intervals.

    (Replies are kept small: centrifuge-js 5.7.4's Protobuf stream reader fails on a reply
    split across reads, one of 64 KiB or more on loopback, and reconnects; fixed upstream
    in centrifuge-js#395.)"""
    monkeypatch.setattr(pubsub, "PING_INTERVAL", 0.5)
    server, layer = await _serve(pubsub_server)
    history_kept = channel.startswith("chat:")

    def flow(browser: Any) -> Any:
        page = _open(browser, server, "/protobuf")
        try:
            only = [ENDPOINTS["http_stream"]]
            _connect(page, "ada", only, {"token": token("ada")})
            _connect(page, "bob", only, {"token": token("bob")})
            _subscribe(page, "ada", channel)
            _subscribe(page, "bob", channel)
            for data in (ALL_BYTES, ALL_BYTES[::-1]):
                page.evaluate(f"{_js('ada', channel)}.publish("
                              f"new Uint8Array({json.dumps(data)}))")
            _wait(page, f"{_rec('bob', channel)}.pubs.length === 2")
            _publish(layer, channel, bytes([0, 255, 128, 10]))
            for name in ("ada", "bob"):
                _wait(page, f"{_rec(name, channel)}.pubs.length === 3")
            history = None
            if history_kept:
                history = page.evaluate(
                    f"{_js('bob', channel)}.history({{limit: -1}}).then((r) => "
                    "r.publications.map((p) => ({offset: p.offset, data: "
                    "p.data instanceof Uint8Array ? Array.from(p.data) : null})))")
            # Three pings each (0.5 s apart): an EmulationRequest whose data is one empty
            # command (length 0), field 3 = [0] at its end.
            _wait(page, "window.traffic.filter((t) => t.url === '/emulation' && "
                        "t.status === 204 && t.body.slice(-3).join() === '26,1,0').length >= 6")
            state = page.evaluate(f"[{_js('ada')}.state, {_js('bob')}.state]")
            return ({name: _received_bytes(page, name, channel) for name in ("ada", "bob")},
                    {name: _record(page, name, channel) for name in ("ada", "bob")},
                    {name: _seen(page, name) for name in ("ada", "bob")},
                    history, state, _traffic(page), page.page_errors)
        finally:
            page.context.close()

    (received, records, seen, history, state, traffic, errors) = await in_thread(
        chromium.run, flow)
    expected = [ALL_BYTES, ALL_BYTES[::-1], [0, 255, 128, 10]]
    assert received == {"ada": expected, "bob": expected}
    for name in ("ada", "bob"):
        assert seen[name]["transports"] == ["http_stream"]
        assert seen[name]["states"] == ["connecting", "connected"]
        assert seen[name]["errors"] == [] and seen[name]["disconnected"] == []
        assert [p["user"] for p in records[name]["pubs"]][:2] == ["ada", "ada"]
    assert state == ["connected", "connected"]
    offsets = [_uint64(p["offset"]) for p in records["bob"]["pubs"]]
    if history_kept:
        assert offsets == list(range(offsets[0], offsets[0] + 3)) and offsets[0] >= 1
        assert history is not None
        assert [p["data"] for p in history] == expected
        assert [_uint64(p["offset"]) for p in history] == offsets
    else:
        assert set(offsets) <= {None, 0}

    assert traffic["sockets"] == [] and traffic["sources"] == []
    assert {f["url"] for f in traffic["fetches"]} == {"/connection/http_stream", "/emulation"}
    streams = [f for f in traffic["fetches"] if f["url"] == "/connection/http_stream"]
    assert len(streams) == 2
    for fetch in streams:
        assert (fetch["method"], fetch["status"]) == ("POST", 200)
        assert fetch["type"] == "application/octet-stream"
        assert isinstance(fetch["body"], list)  # bytes, not text
    emulated = _pb_emulated(traffic)
    assert all((r["status"], r["type"]) == (204, "application/octet-stream") for r in emulated)
    assert len({(r["session"], r["node"]) for r in emulated}) == 2  # one per stream
    commands = [c for r in emulated for c in r["commands"]]
    assert sum(1 for c in commands if c == {}) >= 6  # pongs
    assert sorted(c["subscribe"]["channel"] for c in commands if "subscribe" in c) == [
        channel] * 2
    published = [c["publish"] for c in commands if "publish" in c]
    assert [base64.b64decode(p["data"]) for p in published] == [bytes(ALL_BYTES),
                                                                 bytes(ALL_BYTES[::-1])]
    assert errors == []


@pytest_twisted.ensureDeferred
async def test_a_websocket_that_fails_falls_back_to_http_stream(
        centrifuge_js, chromium, pubsub_server):  # noqa: F811
    """Transports ``[websocket to /connection/nowhere, http_stream]``: the server refuses
    that WebSocket's handshake (404: no route), the SDK reports the transport error of
    ``websocket`` (an ``error`` event; still connecting, so no second ``connecting``) and
    goes on at once to ``http_stream``, where it connects, subscribes and gets a
    publication; the WebSocket never opened, and the stream's POST was the only one."""
    server, layer = await _serve(pubsub_server)
    channel = "chat:fallback"
    nowhere = server.http_url("/connection/nowhere").replace("http://", "ws://", 1)

    def handshake() -> int | None:
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        try:
            with connect(nowhere, open_timeout=5):
                return None
        except InvalidStatus as exc:
            return int(exc.response.status_code)

    def flow(browser: Any) -> Any:
        page = _open(browser, server)
        try:
            transports = [{"transport": "websocket", "endpoint": nowhere},
                          ENDPOINTS["http_stream"]]
            _connect(page, "ada", transports, {"token": token("ada")})
            _wait(page, f"{_seen_js('ada')}.connected.length === 1")
            _subscribe(page, "ada", channel)
            _publish(layer, channel, "over the fallback")
            _wait(page, f"{_rec('ada', channel)}.pubs.length === 1")
            return (_seen(page, "ada"), _record(page, "ada", channel), _traffic(page),
                    page.page_errors)
        finally:
            page.context.close()

    status = await in_thread(handshake)
    seen, record, traffic, errors = await in_thread(chromium.run, flow)
    assert status == 404
    assert [(s["url"], s["opened"]) for s in traffic["sockets"]] == [(nowhere, False)]
    assert traffic["sockets"][0]["close"]["code"] == 1006
    assert seen["transports"] == ["http_stream"]
    assert seen["states"] == ["connecting", "connected"]
    # Still connecting: no second ``connecting`` event, the failure is an ``error`` one.
    assert seen["connecting"] == [{"code": 0, "reason": "connect called"}]
    assert [(e["type"], e["error"]["code"]) for e in seen["errors"]] == [("transport", 2)]
    assert seen["failedTransports"] == ["websocket"]
    assert seen["disconnected"] == []
    assert [p["data"] for p in record["pubs"]] == ["over the fallback"]
    streams = [f for f in traffic["fetches"] if f["url"] == "/connection/http_stream"]
    assert [(f["method"], f["status"]) for f in streams] == [("POST", 200)]
    assert any(f["url"] == "/emulation" and f["status"] == 204 for f in traffic["fetches"])
    assert errors == []


def _api(server: Any, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    status, _, answer = http_get(server.http_url(f"/api/{method}"), method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"X-API-Key": KEY, "Content-Type": "application/json"})
    return status, json.loads(answer) if answer else None


@pytest.mark.parametrize("target", ["user", "client"])
@pytest.mark.parametrize("transport", ["http_stream", "sse"])
@pytest_twisted.ensureDeferred
async def test_a_server_side_disconnect_reaches_the_sdk(
        centrifuge_js, chromium, pubsub_server, transport, target):  # noqa: F811
    """The server API's ``disconnect`` (``X-API-Key``) of user ada (every connection of
    hers: the layer's ``group_close``), or of one client of hers (``client``): each
    connection it names gets the ``disconnect`` push (3503, force disconnect) as the last
    message of its stream; the SDK reports ``disconnected`` with that
    code over ``transport`` and stays disconnected (no new stream: 35xx is final); the
    others go on (Bob's, and with ``client`` Ada's other one) and still get
    publications."""
    server, layer = await _serve(pubsub_server, api_keys=(KEY,))
    channel = "chat:kick"
    names = ("ada1", "ada2", "bob")

    def flow(browser: Any) -> Any:
        page = _open(browser, server)
        try:
            only = [ENDPOINTS[transport]]
            for name in names:
                _connect(page, name, only, {"token": token(name[:3])})
                _subscribe(page, name, channel)
            ada1 = _seen(page, "ada1")["connected"][0]["client"]
            body = {"user": "ada"} if target == "user" else {"user": "ada", "client": ada1}
            answer = _api(server, "disconnect", body)
            _wait(page, f"{_seen_js('ada1')}.disconnected.length === 1")
            if target == "user":
                _wait(page, f"{_seen_js('ada2')}.disconnected.length === 1")
            _publish(layer, channel, "after the disconnect")
            kept = ("bob",) if target == "user" else ("ada2", "bob")
            for name in kept:
                _wait(page, f"{_rec(name, channel)}.pubs.length === 1")
            # Past the SDK's reconnect delays here (20-200 ms): nothing would come back.
            page.wait_for_timeout(500)
            states = page.evaluate(f"({{{', '.join(f'{n}: {_js(n)}.state' for n in names)}}})")
            return (answer, {name: _seen(page, name) for name in names},
                    {name: _record(page, name, channel) for name in names},
                    states, _traffic(page), page.page_errors)
        finally:
            page.context.close()

    answer, seen, records, states, traffic, errors = await in_thread(chromium.run, flow)
    assert answer == (200, {"result": {}})
    forced = {"code": 3503, "reason": "force disconnect"}
    kicked = ("ada1", "ada2") if target == "user" else ("ada1",)
    streams = _stream_messages(traffic, transport)
    assert len(streams) == 3  # the first three, none since
    by_client = {stream[0]["connect"]["client"]: stream for stream in streams}
    for name in names:
        assert seen[name]["transports"] == [transport]
        stream = by_client[seen[name]["connected"][0]["client"]]
        if name in kicked:
            assert stream[-1] == {"push": {"disconnect": forced}}
            assert seen[name]["disconnected"] == [forced]
            assert seen[name]["states"][:2] == ["connecting", "connected"]
            assert seen[name]["states"][-1] == "disconnected" == states[name]
            # centrifuge-js may see the end of the stream before it has dispatched the
            # push it read just before (its replies go through a promise chain, the end
            # does not): then a "transport closed" (code 1) comes first, and the push
            # right after it ends the reconnecting.
            assert seen[name]["connecting"] in (
                [{"code": 0, "reason": "connect called"}],
                [{"code": 0, "reason": "connect called"}, {"code": 1,
                                                           "reason": "transport closed"}])
            assert records[name]["pubs"] == []
        else:
            assert all("disconnect" not in m.get("push", {}) for m in stream)
            assert seen[name]["connecting"] == [{"code": 0, "reason": "connect called"}]
            assert seen[name]["disconnected"] == []
            assert states[name] == "connected"
            assert [p["data"] for p in records[name]["pubs"]] == ["after the disconnect"]
    assert errors == []


@pytest.mark.parametrize("path,transport", [
    ("/", "sse"),
    ("/", "http_stream"),
    ("/protobuf", "http_stream"),
])
@pytest_twisted.ensureDeferred
async def test_an_expired_token_is_refreshed_at_the_first_refusal(
        centrifuge_js, chromium, pubsub_server, path, transport):  # noqa: F811
    """Four clients (below Chromium's six connections to one host, streams included)
    connect over ``transport`` with a token that has expired and a ``getToken`` with a
    fresh one. The server answers each first stream with the 109 error reply (token
    expired), as Centrifugo does; the SDK is to take it (its one ``connect`` error),
    ask ``getToken`` once and connect on its second stream with the fresh token."""
    server, _layer = await _serve(pubsub_server)
    names = [f"u{i}" for i in range(4)]

    def flow(browser: Any) -> Any:
        page = _open(browser, server, path)
        try:
            for name in names:
                page.evaluate(f"window.tokens[{json.dumps(name)}] = "
                              f"[{json.dumps(token(name))}]")
                _connect(page, name, [ENDPOINTS[transport]],
                         {"token": token(name, ttl=-10), "getToken": True})
            # Connected, or a second failed attempt (the defect): either way, bounded.
            for name in names:
                _wait(page, f"{_seen_js(name)}.connected.length === 1 || "
                            f"{_seen_js(name)}.errors.length >= 2")
            return {name: _seen(page, name) for name in names}, _traffic(page)
        finally:
            page.context.close()

    seen, traffic = await in_thread(chromium.run, flow)
    # What the server wrote on each refused stream: the 109 reply to the connect (id 1).
    if transport == "sse":
        refused = [[json.loads(e) for e in s["events"]] for s in traffic["sources"]
                   if '"error"' in "".join(s["events"])]
    elif path == "/":
        refused = [[json.loads(line) for line in f["received"].splitlines()]
                   for f in traffic["fetches"]
                   if f["url"] == "/connection/http_stream"
                   and '"error"' in (f.get("received") or "")]
    else:
        from centrifuge.codecs import _ProtobufCodec

        refused = [_ProtobufCodec.decode_replies(bytes(f["received"]))
                   for f in traffic["fetches"] if f["url"] == "/connection/http_stream"
                   and (f.get("received") or [])[1:3] == [8, 1]]  # id 1
    assert refused and all(replies[0]["error"]["code"] == 109 for replies in refused)
    # What the SDK made of it.
    attempts = {name: [e["error"]["code"] for e in seen[name]["errors"]] for name in names}
    assert attempts == {name: [109] for name in names}
    for name in names:
        assert seen[name]["tokenCalls"] == 1
        assert seen[name]["transports"] == [transport]
        assert seen[name]["disconnected"] == []
    assert len(refused) == len(names)
