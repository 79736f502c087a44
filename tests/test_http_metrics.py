"""HTTP metrics (``--metrics``): ``realtime_http_requests_total`` by method and status,
``realtime_http_requests_in_progress`` and ``realtime_http_request_seconds``, counted where
each request ends (``RealtimeSite.http_done``), with its access-log line.

Real servers on free loopback ports, real clients: urllib, raw HTTP/1.1 bytes over TCP,
``websockets``, httpx over HTTP/2 with TLS. The metrics are read through the exposition
(``realtime.metrics.exposition``, on the reactor thread: reading them costs no request),
or scraped over HTTP where a scrape counting itself is the point. Totals across
``--workers`` are in tests/e2e/test_workers.py (``test_metrics_totals_add_up_across_workers``).
"""

from __future__ import annotations

import json
import ssl
import struct
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from realtime import AsyncHttpConsumer, ProtocolTypeRouter, URLRouter, WebsocketConsumer, path
from realtime.metrics import HTTP_BUCKETS, Collector, SnapshotWriter, exposition, snapshot
from tests.clients import (
    client_frame,
    closed_by_server,
    http_get,
    in_thread,
    parse_response,
    raw_connect,
    raw_exchange,
    until,
    ws_open,
)
from tests.e2e.support import self_signed, tls_options

LIMIT = 1000
TIMEOUT = 10


# -- the application ------------------------------------------------------------------------
class Ok(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        await self.send_response(200, b"ok")


class Stream(AsyncHttpConsumer):
    """Server-sent events: one event, then the stream stays open until the client leaves."""

    async def handle(self, body: bytes) -> None:
        await self.send_headers(headers=[(b"Content-Type", b"text/event-stream")])
        await self.send_body(b"data: 1\n\n", more_body=True)


class Never(AsyncHttpConsumer):
    """A long poll that never answers."""

    async def handle(self, body: bytes) -> None:
        pass


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class Echo(WebsocketConsumer):
    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.send(text_data=text_data)


APP = ProtocolTypeRouter({
    "http": URLRouter([path("ok", Ok.as_app()), path("stream", Stream.as_app()),
                       path("never", Never.as_app()), path("asgi", asgi_app)]),
    "websocket": URLRouter([path("ws", Echo.as_app())]),
})


class Logged(list[dict[str, Any]]):
    """An access log that keeps its records."""

    def emit(self, **record: Any) -> None:
        self.append(record)


async def serve(live: Any, tls: Any = None, **config: Any) -> tuple[Any, Logged]:
    """A server with --metrics on its port and a recording access log."""
    server = await live(APP, tls=tls, lifespan="off", **config)  # asgi_app has no lifespan
    server.site.metrics = Collector([server.site], server.site.layer)
    logged = Logged()
    server.site.access_log = logged
    return server, logged


# -- reading the metrics --------------------------------------------------------------------
def parse(text: str) -> dict[str, float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name + json.dumps(sample.labels, sort_keys=True)] = sample.value
    return values


def read(server: Any) -> dict[str, float]:
    """The exposition, made on the reactor thread (no request of its own)."""
    return parse(exposition(server.site.metrics)[1].decode())


def requests(values: dict[str, float]) -> dict[tuple[str, str], float]:
    """``realtime_http_requests_total`` as {(method, status): count}."""
    out = {}
    for key, value in values.items():
        name, _, labels = key.partition("{")
        if name == "realtime_http_requests_total":
            found = json.loads("{" + labels)
            out[found["method"], found["status"]] = value
    return out


def in_progress(values: dict[str, float]) -> float:
    return values["realtime_http_requests_in_progress{}"]


def histogram_count(values: dict[str, float]) -> float:
    count = values["realtime_http_request_seconds_count{}"]
    assert values['realtime_http_request_seconds_bucket{"le": "+Inf"}'] == count
    return count


def statuses(logged: Logged) -> Counter[tuple[str, int]]:
    return Counter((r["method"], r["status"]) for r in logged if r["kind"] == "http")


# -- HTTP/1.1 -------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_requests_are_counted_by_method_and_status_and_upgrades_are_not(live):
    """Consumers, the ASGI bridge, the built-in paths and the router's 404, by method (an
    unknown one is "other") and status; each is in the histogram and the access log once.
    A WebSocket, accepted or refused, is a handshake, not an HTTP request."""
    server, logged = await serve(live)

    def clients() -> None:
        for _ in range(3):
            assert http_get(server.http_url("/ok"))[0] == 200
        assert http_get(server.http_url("/ok"), b"body")[0] == 200
        assert http_get(server.http_url("/asgi"))[0] == 201
        assert http_get(server.http_url("/nowhere"))[0] == 404
        assert http_get(server.http_url("/healthz"), method="HEAD")[0] == 200
        assert http_get(server.http_url("/ok"), method="PROPFIND")[0] == 200
        with connect(server.ws_url("/ws")) as ws:
            ws.send("x")
            assert ws.recv(timeout=TIMEOUT) == "x"
        with pytest.raises(Exception, match="404"):
            connect(server.ws_url("/nowhere"))

    await in_thread(clients)
    values = read(server)
    expected = {("GET", "200"): 3, ("POST", "200"): 1, ("GET", "201"): 1, ("GET", "404"): 1,
                ("HEAD", "200"): 1, ("other", "200"): 1}
    assert requests(values) == expected
    assert histogram_count(values) == sum(expected.values()) == 8
    assert values["realtime_http_request_seconds_sum{}"] > 0
    assert in_progress(values) == 0
    assert values['realtime_handshakes_total{"status": "101"}'] == 1
    assert values['realtime_handshakes_total{"status": "404"}'] == 1
    logged_as = {(m, int(s)): n for (m, s), n in expected.items() if m != "other"}
    assert statuses(logged) == Counter(logged_as | {("PROPFIND", 200): 1})
    assert Counter(r["kind"] for r in logged) == Counter(
        {"http": 8, "ws_connect": 1, "ws_disconnect": 1, "ws_reject": 1})


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("frame,code", [
    (struct.pack("!H", 1005), 1002),  # a reserved code
    (b"x", 1002),  # a 1-byte payload
    (struct.pack("!H", 1000) + b"\xff", 1007),  # a reason that is not UTF-8
])
async def test_the_close_code_sent_for_a_malformed_close_frame_is_the_one_counted(
        live, frame, code):
    """A malformed close frame gets Autobahn's 1002 or 1007: the code sent is the one the
    metrics count and the access log's ws_disconnect has (disconnect(code) hears it too:
    tests/e2e/test_ws_vs_daphne.py), not the 1000 or 1005 Autobahn takes for the peer's."""
    server, logged = await serve(live)
    conn = await ws_open(server.port, "/ws")
    conn.write(client_frame(0x8, frame))
    assert await closed_by_server(conn, TIMEOUT)
    head, _, frames = conn.data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert frames[0] == 0x88 and struct.unpack("!H", frames[2:4])[0] == code, frames
    # (logged once the TCP close is seen)
    assert await until(lambda: any(r["kind"] == "ws_disconnect" for r in logged), TIMEOUT)
    assert [r["code"] for r in logged if r["kind"] == "ws_disconnect"] == [code]
    values = read(server)
    assert values[f'realtime_close_codes_total{{"code": "{code}"}}'] == 1
    assert {k for k in values if k.startswith("realtime_close_codes_total")} == {
        f'realtime_close_codes_total{{"code": "{code}"}}'}


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_each_answered_and_counted_once(live):
    """Requests pipelined in one write, the first with a body (its response is made while
    the channel still parses that write, and the next request arrives in a nested
    ``dataReceived``): each is answered, counted and logged once."""
    server, logged = await serve(live)
    conn = await raw_connect(server.port)
    conn.write(b"POST /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc"
               b"HEAD /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
               b"PUT /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n\r\nx"
               b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert await closed_by_server(conn, TIMEOUT)
    assert conn.data.count(b"HTTP/1.1 200 OK\r\n") == 4, conn.data
    values = read(server)
    expected = {("POST", "200"): 1, ("HEAD", "200"): 1, ("PUT", "200"): 1, ("GET", "200"): 1}
    assert requests(values) == expected
    assert histogram_count(values) == 4
    assert in_progress(values) == 0
    assert [r["method"] for r in logged] == ["POST", "HEAD", "PUT", "GET"]
    # A bare LF in the request pipelined after a body is still refused.
    bare = await raw_exchange(server.port, b"POST /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                           b"Content-Length: 3\r\n\r\nabc"
                                           b"GET /ok HTTP/1.1\nHost: 127.0.0.1\n\n")
    assert bare.startswith(b"HTTP/1.1 200 OK\r\n")
    assert bare.count(b"HTTP/1.1 400 Bad Request\r\n") == 1
    assert requests(read(server)) == expected | {("POST", "200"): 2, ("other", "400"): 1}


@pytest_twisted.ensureDeferred
async def test_a_scrape_counts_itself_in_progress_then_as_a_request(live):
    server, _ = await serve(live)

    def scrapes() -> tuple[dict[str, float], dict[str, float]]:
        first = http_get(server.http_url("/metrics"))
        second = http_get(server.http_url("/metrics"))
        return parse(first[2].decode()), parse(second[2].decode())

    first, second = await in_thread(scrapes)
    assert in_progress(first) == in_progress(second) == 1
    assert requests(first) == {} and histogram_count(first) == 0
    assert requests(second) == {("GET", "200"): 1} and histogram_count(second) == 1


class Clock:
    """The site's clock for durations: the reactor's, but its time moves only when told
    (``advance``), so that a duration is known exactly."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.now = 1000.0

    def seconds(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reactor, name)  # callLater: the real reactor's


@pytest_twisted.ensureDeferred
async def test_an_sse_stream_is_in_progress_while_open_and_counted_as_it_closes(live):
    """Open, it is in the gauge and not yet counted; the client closing it ends it with
    the status it was sent (200: an SSE stream's normal end is its client leaving), timed
    from its request's first byte to its end, not to its head."""
    server, logged = await serve(live)
    clock = server.site.clock = Clock(server.site.clock)
    conn = await raw_connect(server.port)
    conn.write(b"GET /stream HTTP/1.1\r\n")
    assert await until(lambda: server.site.stats.http_in_progress == 1, TIMEOUT)
    clock.advance(1.0)  # the head takes 1 s to come
    conn.write(b"Host: 127.0.0.1\r\n\r\n")
    await conn.wait_for(lambda d: b"data: 1\n\n" in d)
    assert parse_response(conn.data)[0] == 200
    values = read(server)
    assert in_progress(values) == 1
    assert requests(values) == {} and histogram_count(values) == 0

    clock.advance(7.5)  # the stream is open for 7.5 s of the site's time
    conn.proto.transport.loseConnection()
    assert await until(lambda: server.site.stats.http_in_progress == 0, TIMEOUT)
    values = read(server)
    assert in_progress(values) == 0
    assert requests(values) == {("GET", "200"): 1}
    assert histogram_count(values) == 1
    assert values["realtime_http_request_seconds_sum{}"] == 8.5
    assert values['realtime_http_request_seconds_bucket{"le": "5.0"}'] == 0
    assert values['realtime_http_request_seconds_bucket{"le": "10.0"}'] == 1
    assert [(r["status"], r["target"], r["duration"]) for r in logged] == [
        (200, "/stream", 8.5)]


@pytest_twisted.ensureDeferred
async def test_a_client_gone_before_the_response_counts_499(live):
    """nginx's 499: the client left before any response; it leaves the gauge, is in the
    histogram and gets its access-log line."""
    server, logged = await serve(live)
    conn = await raw_connect(server.port)
    conn.write(b"GET /never?token=secret HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert await until(lambda: read(server)["realtime_http_requests_in_progress{}"] == 1,
                       TIMEOUT)
    conn.proto.transport.loseConnection()
    assert await until(lambda: server.site.stats.http_in_progress == 0, TIMEOUT)
    values = read(server)
    assert requests(values) == {("GET", "499"): 1}
    assert histogram_count(values) == 1
    [record] = logged
    assert (record["status"], record["target"], record["bytes"]) == (
        499, "/never?token=[redacted]", 0)


@pytest_twisted.ensureDeferred
async def test_a_body_over_the_limit_is_counted_413_and_logged(live):
    """--http-body-limit's 413s, from the Content-Length and from a chunked body midway,
    answered by the channel itself: counted, in the histogram, and each has an access-log
    line (none had one before)."""
    server, logged = await serve(live, http_body_limit=LIMIT)
    declared = await raw_connect(server.port)
    declared.write(b"POST /ok?q=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
                   % (LIMIT + 1))
    chunked = await raw_connect(server.port)
    chunked.write(b"POST /asgi HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked"
                  b"\r\n\r\n%x\r\n%s\r\n" % (LIMIT + 1, b"x" * (LIMIT + 1)))
    for conn in (declared, chunked):
        assert await closed_by_server(conn, TIMEOUT)
        assert parse_response(conn.data)[0] == 413
    values = read(server)
    assert requests(values) == {("POST", "413"): 2}
    assert histogram_count(values) == 2
    assert in_progress(values) == 0
    assert sorted((r["method"], r["target"], r["protocol"], r["status"], r["bytes"])
                  for r in logged) == [
        ("POST", "/asgi", "HTTP/1.1", 413, len(b"Request Entity Too Large\n")),
        ("POST", "/ok?q=1", "HTTP/1.1", 413, len(b"Request Entity Too Large\n"))]


@pytest_twisted.ensureDeferred
async def test_heads_the_channel_refuses_are_counted_with_their_status(live, tmp_path):
    """A head refused before its request line is read (junk, a too-long target) has no
    method: "other", and ``-`` in the access log; one refused after it (a bad header
    field) has its own."""
    from realtime.accesslog import AccessLog

    server, _ = await serve(live)
    log_path = tmp_path / "access.log"
    server.site.access_log = AccessLog(str(log_path))
    try:
        junk = await raw_exchange(server.port, b"\x16\x03\x01\x02\x00junk")
        long_target = await raw_exchange(server.port, b"GET /" + b"a" * 20000)
        bad_field = await raw_exchange(server.port, b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                    b"Bad Name: x\r\n\r\n")
    finally:
        server.site.access_log.close()
    assert [parse_response(r)[0] for r in (junk, long_target, bad_field)] == [400, 414, 400]
    values = read(server)
    assert requests(values) == {("other", "400"): 1, ("other", "414"): 1, ("GET", "400"): 1}
    assert histogram_count(values) == 3
    assert in_progress(values) == 0
    lines = log_path.read_text().splitlines()
    assert len(lines) == 3
    assert '"- - -" 400 12 ' in lines[0]
    assert '"- - -" 414 ' in lines[1]
    assert '"GET /ok HTTP/1.1" 400 12 ' in lines[2]


# -- HTTP/2 ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: Any) -> tuple[Path, Any]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    return cert, tls_options(cert, key)


@pytest_twisted.ensureDeferred
async def test_http2_requests_and_streams_are_counted(live, certificate):
    """Over one HTTP/2 connection: a 200, a 404, a 413 from the body limit, and an SSE
    stream, in progress (with the scrape asking) while open and counted 200 once the
    client's connection is gone."""
    cert, options = certificate
    server, logged = await serve(live, tls=options, http_body_limit=LIMIT)

    def client() -> tuple[list[int], dict[str, float]]:
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(http2=True, verify=context, timeout=TIMEOUT) as c:
            answers = [c.get(server.http_url("/ok")), c.get(server.http_url("/nowhere")),
                       c.post(server.http_url("/ok"), content=b"x" * 5000)]
            with c.stream("GET", server.http_url("/stream")) as stream:
                assert next(stream.iter_raw()) == b"data: 1\n\n"
                scrape = c.get(server.http_url("/metrics"))
                answers.append(scrape)
                assert stream.http_version == "HTTP/2"
        assert {r.http_version for r in answers} == {"HTTP/2"}
        return [r.status_code for r in answers], parse(scrape.text)

    codes, during = await in_thread(client)
    assert codes == [200, 404, 413, 200]
    assert in_progress(during) == 2  # the stream and the scrape
    assert requests(during) == {("GET", "200"): 1, ("GET", "404"): 1, ("POST", "413"): 1}
    assert await until(lambda: server.site.stats.http_in_progress == 0, TIMEOUT)
    values = read(server)
    assert requests(values) == {("GET", "200"): 3, ("GET", "404"): 1, ("POST", "413"): 1}
    assert histogram_count(values) == 5 == len(logged)
    assert {r["protocol"] for r in logged} == {"HTTP/2"}
    assert sorted((r["target"], r["status"]) for r in logged) == [
        ("/metrics", 200), ("/nowhere", 404), ("/ok", 200), ("/ok", 413), ("/stream", 200)]


# -- across workers: the snapshots ------------------------------------------------------------
def test_snapshots_add_up_and_a_dead_worker_has_nothing_in_progress(tmp_path):
    """``add_up`` sums the HTTP counters and buckets of every worker's snapshot; a snapshot
    left by a worker that died keeps its counts, not its in-progress requests."""
    from realtime.metrics import SiteStats

    class Site:
        connections: list[Any] = []
        slow_consumer_closes = dropped_messages = 0

        def __init__(self) -> None:
            self.stats = SiteStats()

    live_site, dead_site = Site(), Site()
    for site in (live_site, dead_site):
        site.stats.observe_http(b"GET", 200, 0.001)
        site.stats.http_in_progress = 2
    dead_site.stats.observe_http(b"BREW", 418, 100.0)  # past the last bucket
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = SnapshotWriter(str(tmp_path), [dead_site], None)
    dead.path = str(tmp_path / f"worker-{gone.pid}.json")
    dead.write()
    own = SnapshotWriter(str(tmp_path), [live_site], None)
    total = Collector([live_site], None, own).totals()
    assert total["http_requests"] == {"GET 200": 2, "other 418": 1}
    assert total["http_in_progress"] == 2  # the live worker's only
    assert len(total["http_buckets"]) == len(HTTP_BUCKETS) + 1
    assert total["http_buckets"][-1] == 1 and sum(total["http_buckets"]) == 3
    assert total["http_sum"] == pytest.approx(100.002)


def test_a_dead_workers_proxy_calls_are_neither_in_flight_nor_queued(tmp_path):
    """The pubsub proxies' gauges are a live worker's too: a snapshot left by a worker that
    died with calls in flight and queued keeps its call counts, and its gauges read 0 (its
    series stay, so a scrape's series do not come and go with the workers)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / f"worker-{gone.pid}.json").write_text(json.dumps({
        "pubsub_proxy_inflight": {"default connect": 3, "pay ": 1},
        "pubsub_proxy_queued": {"default connect": 5},
        "pubsub_proxy_calls": {"connect default answered": 7}}))
    own = snapshot([], None)  # (this process's: what earlier tests left, and 0)
    total = Collector([], None, SnapshotWriter(str(tmp_path), [], None)).totals()
    for gauge, key in (("pubsub_proxy_inflight", "default connect"),
                       ("pubsub_proxy_inflight", "pay "),
                       ("pubsub_proxy_queued", "default connect")):
        assert total[gauge][key] == own[gauge].get(key, 0) == 0
    assert total["pubsub_proxy_calls"]["connect default answered"] == \
        own["pubsub_proxy_calls"].get("connect default answered", 0) + 7


@pytest_twisted.ensureDeferred
async def test_twisted_webs_own_400_for_a_malformed_form_is_counted(live, certificate):
    """twisted.web answers a multipart body it cannot parse with 400 itself, before the
    application: counted and logged, over HTTP/1.1 and HTTP/2."""
    cert, options = certificate
    server, logged = await serve(live, tls=options)
    form = {"Content-Type": "multipart/form-data"}  # no boundary: not a multipart

    def post(http2: bool) -> httpx.Response:
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(http2=http2, verify=context, timeout=TIMEOUT) as c:
            return c.post(server.http_url("/ok"), content=b"--x\r\nnot a part", headers=form)

    answers = [await in_thread(post, False), await in_thread(post, True)]
    assert [(r.http_version, r.status_code) for r in answers] == [
        ("HTTP/1.1", 400), ("HTTP/2", 400)]
    assert await until(lambda: server.site.stats.http_in_progress == 0, TIMEOUT)
    values = read(server)
    assert requests(values) == {("POST", "400"): 2}
    assert histogram_count(values) == 2
    assert sorted((r["protocol"], r["status"], r["target"]) for r in logged) == [
        ("HTTP/1.1", 400, "/ok"), ("HTTP/2", 400, "/ok")]
