"""``realtime.pubsub.StreamConsumer``/``SseConsumer`` and ``EmulationConsumer``: the
bidirectional protocol over a streamed HTTP response (centrifuge-js's ``http_stream`` and
``sse`` fallbacks), its later commands as POSTs to ``/emulation``, against a real server
with httpx; in JSON and, for ``http_stream``, Protobuf (messages built with
centrifuge-python's generated classes). Browser tests with centrifuge-js's own fallback
transports are in tests/e2e/test_browser_pubsub.py."""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_twisted

from realtime import pubsub
from tests.clients import in_thread
from tests.test_pubsub import (  # noqa: F401  (fixtures)
    WAIT,
    _settings,
    from_thread,
    pubsub_server,
    token,
)
from tests.test_pubsub_protobuf import RawPb

ROOM = "room:allow_subscribe_for_client,allow_publish_for_subscriber,presence," \
       "allow_presence_for_subscriber"
FEED = "feed:history_size=10,history_ttl=60s,force_recovery,allow_subscribe_for_client"


class Session:
    """One emulated connection: the stream (read message by message) and the client's
    later commands, POSTed to /emulation with the session and node of the connect reply."""

    def __init__(self, server: Any, kind: str, response: Any) -> None:
        self.server = server
        self.kind = kind
        self.response = response
        self.binary = kind == "protobuf"
        self.chunks = response.iter_bytes() if self.binary else response.iter_lines()
        self.buffer = b""
        self.ids = 1  # the connect was 1
        self.session = self.node = ""
        self.pending: list[dict[str, Any]] = []
        self.seen: list[Any] = []

    def recv(self) -> Any:
        message = self._recv()
        self.seen.append(message)
        return message

    def _recv(self) -> Any:
        if self.pending:
            return self.pending.pop(0)
        if self.binary:
            from centrifuge.codecs import _ProtobufCodec

            while True:
                if self.buffer:
                    try:
                        replies = _ProtobufCodec.decode_replies(self.buffer)
                    except Exception:  # an incomplete message: read on
                        replies = None
                    if replies is not None:
                        self.buffer = b""
                        self.pending = replies[1:]
                        return replies[0]
                chunk = next(self.chunks, None)
                if chunk is None:
                    return "ended"
                self.buffer += chunk
        for line in self.chunks:
            if self.kind == "sse":
                if line.startswith("data: "):
                    return json.loads(line[len("data: "):])
            elif line.strip():
                return json.loads(line)
        return "ended"

    def rest(self) -> list[Any]:
        """Every message until the stream ends, then "ended"."""
        got = []
        while (message := self.recv()) != "ended":
            got.append(message)
        return [*got, "ended"]

    def reply(self, ident: int) -> dict[str, Any]:
        while True:
            message = self.recv()
            assert message != "ended"
            if message.get("id") == ident:
                return message

    def post(self, *commands: dict[str, Any], session: str | None = None) -> int:
        body: Any
        if self.binary:
            from centrifuge.protocol import client_pb2

            request = client_pb2.EmulationRequest(
                node=self.node, session=session if session is not None else self.session,
                data=RawPb.frame(*commands))
            body, kind = request.SerializeToString(), "application/octet-stream"
        else:
            body = json.dumps({"node": self.node,
                               "session": session if session is not None else self.session,
                               "data": "\n".join(json.dumps(c) for c in commands)})
            kind = "application/json"
        answer = httpx.post(self.server.http_url("/emulation"), content=body,
                            headers={"Content-Type": kind}, timeout=WAIT)
        return answer.status_code

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.ids += 1
        assert self.post({"id": self.ids, method: params}) == 204
        return self.reply(self.ids)


def open_session(server: Any, kind: str, connect: dict[str, Any]) -> Any:
    command = {"id": 1, "connect": connect}
    if kind == "sse":
        return httpx.stream("GET", server.http_url("/connection/sse") + "?cf_connect="
                            + quote(json.dumps(command)), timeout=WAIT)
    if kind == "protobuf":
        return httpx.stream("POST", server.http_url("/connection/http_stream"),
                            content=RawPb.frame(command), timeout=WAIT,
                            headers={"Content-Type": "application/octet-stream"})
    return httpx.stream("POST", server.http_url("/connection/http_stream"),
                        content=json.dumps(command).encode(), timeout=WAIT,
                        headers={"Content-Type": "application/json"})


def data_of(session: Session, pub: dict[str, Any]) -> Any:
    if session.binary:
        return json.loads(base64.b64decode(pub["data"]))
    return pub["data"]


@pytest.mark.parametrize("kind", ["http_stream", "sse", "protobuf"])
@pytest_twisted.ensureDeferred
async def test_an_emulated_connection_speaks_the_whole_protocol(pubsub_server, kind,  # noqa: F811
                                                                monkeypatch):
    from realtime.layers import InMemoryChannelLayer

    monkeypatch.setattr(pubsub, "PING_INTERVAL", 0.3)
    layer = InMemoryChannelLayer()
    server = await pubsub_server(ROOM, FEED, layer=layer)

    def flow() -> Any:
        with open_session(server, kind, {"token": token("ada")}) as response:
            session = Session(server, kind, response)
            connected = session.reply(1)["connect"]
            session.session, session.node = connected["session"], connected["node"]
            subscribed = session.call("subscribe", {"channel": "room:x"})
            published = session.call("publish", {"channel": "room:x", "data": (
                base64.b64encode(b'{"from": "ada"}').decode() if session.binary
                else {"from": "ada"})})
            from_thread(pubsub.publish, "room:x", "server", layer=layer)
            pubs = []
            pings = 0
            while len(pubs) < 2 or pings < 2:
                message = session.recv()
                if message == {}:
                    pings += 1
                    assert session.post({}) == 204  # the pong
                elif "pub" in message.get("push", {}):
                    pubs.append(data_of(session, message["push"]["pub"]))
            stats = session.call("presence_stats", {"channel": "room:x"})
            wrong = session.post({"id": 99, "ping": {}}, session="not-the-session")
            after = session.call("ping", {})
            return (response.status_code, response.headers["content-type"], connected,
                    subscribed, published, pubs, stats, wrong, after, session.seen)

    (status, content_type, connected, subscribed, published, pubs, stats, wrong,
     after, seen) = await in_thread(flow)
    assert status == 200
    assert content_type == {"sse": "text/event-stream", "http_stream": "application/json",
                            "protobuf": "application/octet-stream"}[kind]
    assert connected["client"] and connected["session"] and connected["node"]
    assert "error" not in subscribed and "error" not in published
    assert pubs == [{"from": "ada"}, "server"]
    assert stats["presence_stats"] == {"num_clients": 1, "num_users": 1}
    assert wrong == 204  # answered alike; the command never reached the stream
    assert after == {"id": 5, "ping": {}}
    assert not [m for m in seen if isinstance(m, dict) and m.get("id") == 99]


@pytest.mark.parametrize("kind", ["http_stream", "sse", "protobuf"])
@pytest_twisted.ensureDeferred
async def test_a_refused_connect_is_told_down_the_stream(pubsub_server, kind,  # noqa: F811
                                                         monkeypatch):
    """An SDK reads the stream: a refused connect is its disconnect push (200), which tells
    centrifuge-js not to reconnect (3500), after which the stream ends; or an error reply
    (109: it fetches a token and tries again), after which the stream stays open for the
    client to close, as Centrifugo's (ended at once, the SDK may see the end before the
    reply), and is closed as stale (3502) if the client does not."""
    monkeypatch.setattr(pubsub, "STALE_AFTER", 0.5)
    server = await pubsub_server(ROOM)

    def flow() -> Any:
        got = []
        for tok in (token("ada", key="x" * 40), token("ada", ttl=-10)):
            with open_session(server, kind, {"token": tok}) as response:
                session = Session(server, kind, response)
                started = time.monotonic()
                got.append((response.status_code, *session.rest(),
                            time.monotonic() - started))
        return got

    bad, expired = await in_thread(flow)
    assert bad[:3] == (200, {"push": {"disconnect": {"code": 3500, "reason": "invalid token"}}},
                       "ended") and bad[3] < 0.4
    assert expired[:2] == (200, {"id": 1, "error": {"code": 109, "message": "token expired"}})
    assert expired[2:4] == ({"push": {"disconnect": {"code": 3502, "reason": "stale"}}},
                            "ended")
    assert 0.4 < expired[4] < 3.0


@pytest_twisted.ensureDeferred
async def test_emulation_requests_that_are_none(pubsub_server):  # noqa: F811
    server = await pubsub_server(ROOM)

    def post(body: bytes, kind: str = "application/json", method: str = "POST") -> int:
        return httpx.request(method, server.http_url("/emulation"), content=body,
                             headers={"Content-Type": kind}, timeout=WAIT).status_code

    def flow() -> Any:
        return {
            "not JSON": post(b"{nope"),
            "an array": post(b"[]"),
            "no node": post(json.dumps({"session": "s", "data": "{}"}).encode()),
            "a bad node": post(json.dumps({"node": "no spaces", "session": "s",
                                           "data": "{}"}).encode()),
            "not Protobuf": post(b"\xff\xff", "application/octet-stream"),
            "data not a string": post(json.dumps({"node": "x", "session": "s",
                                                  "data": {"id": 1}}).encode()),
            "a session not ASCII": post(json.dumps({"node": "x", "session": "é",
                                                    "data": "{}"}).encode()),
            "too large": post(json.dumps({"node": "x", "session": "s",
                                          "data": "x" * (1 << 21)}).encode()),
            "GET": post(b"", method="GET"),
            "a node nobody has": post(json.dumps({"node": "specific.gone!x",
                                                  "session": "s", "data": "{}"}).encode()),
        }

    assert await in_thread(flow) == {
        "not JSON": 400, "an array": 400, "no node": 400, "a bad node": 400,
        "not Protobuf": 400, "data not a string": 400, "a session not ASCII": 400,
        "too large": 413, "GET": 405, "a node nobody has": 204}


@pytest_twisted.ensureDeferred
async def test_a_page_of_another_origin_may_read_the_streams(pubsub_server):  # noqa: F811
    """The SDKs fetch with ``mode: "cors"``: the answers name the page's origin, and a
    preflight is answered; ``--allowed-origins`` refuses the other origins (403)."""
    server = await pubsub_server(ROOM)
    app = "https://app.example.com"

    def flow() -> Any:
        preflight = httpx.options(server.http_url("/emulation"), headers={
            "Origin": app, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"}, timeout=WAIT)
        with httpx.stream("POST", server.http_url("/connection/http_stream"),
                          content=json.dumps({"id": 1, "connect": {"token": token("ada")}}),
                          headers={"Origin": app, "Content-Type": "application/json"},
                          timeout=WAIT) as response:
            stream_headers = response.headers
        with httpx.stream("GET", server.http_url("/connection/uni_sse") + "?cf_connect="
                          + quote(json.dumps({"token": token("ada")})),
                          headers={"Origin": app}, timeout=WAIT) as response:
            sse_headers = response.headers
        same_origin = httpx.post(server.http_url("/emulation"), content=b"{}", timeout=WAIT)
        return preflight, stream_headers, sse_headers, same_origin

    preflight, stream_headers, sse_headers, same_origin = await in_thread(flow)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == app
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"].lower() == "content-type"
    assert stream_headers["access-control-allow-origin"] == app
    assert sse_headers["access-control-allow-origin"] == app
    assert "access-control-allow-origin" not in same_origin.headers


@pytest_twisted.ensureDeferred
async def test_allowed_origins_refuse_the_other_pages(pubsub_server):  # noqa: F811
    """``--allowed-origins`` (an ``OriginValidator`` around the app) refuses a page of
    another origin before any of this: its preflight and its stream get 403."""
    from realtime.origins import OriginValidator

    app = OriginValidator(pubsub.application, ["https://app.example.com"])
    server = await pubsub_server(ROOM, app=app)

    def flow() -> Any:
        def status(origin: str) -> tuple[int, int]:
            preflight = httpx.options(server.http_url("/emulation"), headers={
                "Origin": origin, "Access-Control-Request-Method": "POST"}, timeout=WAIT)
            stream = httpx.post(server.http_url("/connection/uni_http_stream"),
                                content=json.dumps({"token": token("ada", key="x" * 40)}),
                                headers={"Origin": origin}, timeout=WAIT)
            return preflight.status_code, stream.status_code
        return status("https://evil.example.com"), status("https://app.example.com")

    evil, app_page = await in_thread(flow)
    assert evil == (403, 403)
    assert app_page == (204, 401)  # let through: a bad token's answer


@pytest_twisted.ensureDeferred
async def test_emulation_reaches_live_streams_only(pubsub_server):  # noqa: F811
    """``/emulation`` sends to the stream's own group: nothing is kept for a stream that
    ended or a name nobody holds (a layer queue per name was kept for ever), nothing
    reaches an app's channel of that name, and a request with another session, even one
    that is not ASCII, leaves the stream as it was."""
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    server = await pubsub_server(ROOM, layer=layer)
    got: list[Any] = []
    layer.receive("jobs").addCallback(got.append)

    def post(node: str, session: str, data: str = "{}") -> int:
        return httpx.post(server.http_url("/emulation"), content=json.dumps(
            {"node": node, "session": session, "data": data}).encode(),
            headers={"Content-Type": "application/json"}, timeout=WAIT).status_code

    def flow() -> Any:
        with open_session(server, "http_stream", {"token": token("ada")}) as response:
            session = Session(server, "http_stream", response)
            connected = session.reply(1)["connect"]
            session.session, session.node = connected["session"], connected["node"]
            stranger = post(session.node, "not-" + session.session[4:])
            sneaky = httpx.post(server.http_url("/emulation"), content=json.dumps(
                {"node": session.node, "session": session.session[:-1] + "\u00e9",
                 "data": "{}"}).encode(), timeout=WAIT).status_code
            alive = session.call("ping", {})
        late = [session.post({}) for _ in range(3)]  # after the stream ended
        junk = [post(f"junk{n}", "x", "x" * 1000) for n in range(5)] + [post("jobs", "x")]
        return stranger, sneaky, alive, late, junk

    stranger, sneaky, alive, late, junk = await in_thread(flow)
    assert (stranger, sneaky) == (204, 400)
    assert alive == {"id": 2, "ping": {}}
    assert late == [204] * 3 and junk == [204] * 6
    assert {name: len(queue) for name, queue in layer._queues.items()} == {}
    assert got == []


@pytest_twisted.ensureDeferred
async def test_a_refused_stream_during_the_drain_ends_with_3001(pubsub_server,  # noqa: F811
                                                                monkeypatch):
    monkeypatch.setattr(pubsub, "STALE_AFTER", 3.0)
    server = await pubsub_server(ROOM)

    def flow() -> Any:
        from_thread(lambda: server.site.drain() and None)
        with open_session(server, "http_stream", {"token": token("ada", ttl=-10)}) as resp:
            started = time.monotonic()
            return Session(server, "http_stream", resp).rest(), time.monotonic() - started

    rest, took = await in_thread(flow)
    assert rest == [{"id": 1, "error": {"code": 109, "message": "token expired"}},
                    {"push": {"disconnect": {"code": 3001, "reason": "shutdown"}}}, "ended"]
    assert took < 1.5
