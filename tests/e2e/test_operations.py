"""Operations end to end: /metrics, the publish API and its sync client, the access log,
and the batched drain — real HTTP and WebSocket clients against real servers."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from realtime import AsyncWebsocketConsumer, URLRouter, path
from realtime.client import PublishError, broadcast, publish, send
from realtime.examples.bench import application as bench
from tests.clients import in_thread

KEY = "test-api-key-0123456789"


def get(url, data=None, headers=None, method=None):
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def scrape(url):
    status, headers, body = get(url)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = sample.name + json.dumps(sample.labels, sort_keys=True)
            values[key] = sample.value
    return values


def enable_metrics(server):
    from realtime.metrics import Collector

    server.site.metrics = Collector([server.site], server.site.layer)


@pytest_twisted.ensureDeferred
async def test_metrics_parse_and_move_with_traffic(live):
    server = await live(bench)
    enable_metrics(server)

    def flow():
        before = scrape(server.http_url("/metrics"))
        with connect(server.ws_url("/echo")) as ws:
            for i in range(5):
                ws.send(f"m{i}")
                ws.recv(timeout=5)
            during = scrape(server.http_url("/metrics"))
        get(server.http_url("/nowhere"))
        try:
            connect(server.ws_url("/nowhere"))
        except Exception:
            pass
        # the closes are counted once the server has seen them: poll, then read
        _wait(lambda: scrape(server.http_url("/metrics"))["realtime_connections{}"]
              == before["realtime_connections{}"])
        after = scrape(server.http_url("/metrics"))
        return before, during, after

    before, during, after = await in_thread(flow)
    assert during["realtime_connections{}"] == before["realtime_connections{}"] + 1
    assert after["realtime_connections{}"] == before["realtime_connections{}"]
    assert after["realtime_messages_in_total{}"] - before["realtime_messages_in_total{}"] == 5
    assert after["realtime_messages_out_total{}"] - before["realtime_messages_out_total{}"] == 5
    assert after["realtime_bytes_in_total{}"] - before["realtime_bytes_in_total{}"] == 10
    assert after['realtime_handshakes_total{"status": "101"}'] >= 1
    assert after['realtime_handshakes_total{"status": "404"}'] >= 1
    assert after['realtime_close_codes_total{"code": "1000"}'] >= 1
    assert after['realtime_handshake_seconds_count{}'] >= 2


@pytest_twisted.ensureDeferred
async def test_publish_api_answers(live):
    server = await live(bench, api_keys=(KEY,), api_body_limit=1024)
    url = server.http_url("/api/publish")
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def flow():
        out = {}
        out["get"] = get(url)[0]
        out["nokey"] = get(url, b'{"group": "g", "text": "x"}')[0]
        out["badkey"] = get(url, b'{"group": "g", "text": "x"}',
                            {"Authorization": "Bearer wrong-key-000000000"})[0]
        status, _, body = get(url, b"{not json", auth)
        out["badjson"] = status, json.loads(body)["error"]
        out["nogroup"] = get(url, b'{"text": "x"}', auth)[0]
        out["twokinds"] = get(url, b'{"group": "g", "text": "x", "json": 1}', auth)[0]
        out["badgroup"] = get(url, b'{"group": "no spaces allowed", "text": "x"}', auth)[0]
        out["toolarge"] = get(url, b'{"group": "g", "text": "' + b"x" * 2000 + b'"}', auth)[0]
        out["ok"] = get(url, b'{"group": "g", "text": "x"}', auth)
        return out

    out = await in_thread(flow)
    assert out["get"] == 405
    assert out["nokey"] == 401 and out["badkey"] == 401
    assert out["badjson"] == (400, "the body is not JSON")
    assert out["nogroup"] == out["twokinds"] == out["badgroup"] == 400
    assert out["toolarge"] == 413
    assert out["ok"][0] == 200 and json.loads(out["ok"][2])["ok"] is True


@pytest_twisted.ensureDeferred
async def test_api_is_404_without_a_key(live):
    server = await live(bench)
    status = await in_thread(lambda: get(server.http_url("/api/publish"), b"{}")[0])
    assert status == 404


class Listener(AsyncWebsocketConsumer):
    groups = ["news", "sport"]

    async def chat_message(self, event):
        await self.send(text_data="event:" + event["message"])


@pytest_twisted.ensureDeferred
async def test_sync_client_publishes_into_a_room(live):
    app = URLRouter([path("room/<slug:name>", bench.application_mapping["websocket"].routes[1]
                          .app), path("listen", Listener.as_app())])
    server = await live(app, api_keys=(KEY,))
    base = server.http_url("")

    def flow():
        with connect(server.ws_url("/room/lobby")) as room, \
                connect(server.ws_url("/listen")) as listener:
            # both joined their groups before accepting: no wait needed
            publish(base, KEY, "lobby", text="from django")
            got = [room.recv(timeout=5)]
            publish(base, KEY, "lobby", json={"a": 1})
            got.append(room.recv(timeout=5))
            publish(base, KEY, "news", event={"type": "chat.message", "message": "hi"})
            got.append(listener.recv(timeout=5))
            broadcast(base, KEY, ["news", "sport"], text="both")
            got += [listener.recv(timeout=5), listener.recv(timeout=5)]
            try:
                publish(base, "wrong-key-000000000", "lobby", text="x")
            except PublishError as exc:
                got.append(exc.status)
        return got

    assert await in_thread(flow) == ["from django", '{"a": 1}', "event:hi", "both", "both", 401]


class Named(AsyncWebsocketConsumer):
    """Tells its client its channel name; a ``chat.message`` event comes back as text."""

    async def connect(self):
        await self.accept()
        await self.send(text_data=self.channel_name)

    async def chat_message(self, event):
        await self.send(text_data="event:" + event["message"])


@pytest_twisted.ensureDeferred
async def test_send_api_reaches_one_channel_and_checks_its_body(live):
    server = await live(Named.as_app(), api_keys=(KEY,))
    base, url = server.http_url(""), server.http_url("/api/send")
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def answer(body, headers=auth):
        status, _, text = get(url, body, headers)
        return status, json.loads(text).get("error")

    def flow():
        out = {}
        with connect(server.ws_url("/")) as one, connect(server.ws_url("/")) as two:
            channel = one.recv(timeout=5)
            two.recv(timeout=5)
            out["sent"] = send(base, KEY, channel, {"type": "chat.message", "message": "hi"})
            out["got"] = one.recv(timeout=5)
            try:
                two.recv(timeout=0.3)
                out["two"] = "got it too"
            except TimeoutError:
                out["two"] = "nothing"
        out["get"] = get(url)[0]
        out["nochannel"] = answer(b'{"event": {"type": "t"}}')
        out["badchannel"] = answer(b'{"channel": "no spaces", "event": {"type": "t"}}')
        out["noevent"] = answer(b'{"channel": "c"}')
        out["notype"] = answer(b'{"channel": "c", "event": {"message": "x"}}')
        out["emptytype"] = answer(b'{"channel": "c", "event": {"type": ""}}')
        out["array"] = answer(b'[]')
        # The ASGI protocol's own messages are the server's word about a connection (its
        # client's message, its end): not an event the API may make up, here or in a room.
        out["asgi"] = answer(json.dumps({"channel": channel, "event": {
            "type": "websocket.receive", "text": "as if the client said it"}}).encode())
        out["asgi_room"] = get(server.http_url("/api/publish"), json.dumps({
            "group": "lobby", "event": {"type": "websocket.disconnect", "code": 1000}
        }).encode(), auth)[0]
        # Centrifugo's key header does not make /api/send Centrifugo's (it has no send).
        out["apikey"] = answer(b'{"channel": "c", "event": {"type": "t"}}',
                               {"X-API-Key": KEY})
        return out

    out = await in_thread(flow)
    assert out["sent"]["ok"] is True and out["sent"]["channel"].startswith("specific.")
    assert out["got"] == "event:hi" and out["two"] == "nothing"
    assert out["get"] == 405
    assert out["nochannel"] == (400, "'channel' (a string) is required")
    assert out["badchannel"][0] == 400 and "channel name must be" in out["badchannel"][1]
    assert out["noevent"] == out["notype"] == out["emptytype"] == (
        400, "'event' must be an object with a non-empty 'type' string")
    assert out["array"] == (400, "the body must be a JSON object")
    assert out["asgi"] == (400, "'event' type 'websocket.receive' is the ASGI protocol's "
                                "(the server's own messages about a connection), not an "
                                "application event")
    assert out["asgi_room"] == 400
    assert out["apikey"] == (401, "a valid 'Authorization: Bearer <key>' is required")


@pytest_twisted.ensureDeferred
async def test_send_api_answers_429_for_a_full_channel_and_503_without_the_layer(
        redis_url, realtime_leak_check):
    """ChannelFull (the receiver is behind) is 429 with Retry-After; an unreachable Redis is
    503 with Retry-After, as the other endpoints answer; an event Redis cannot carry (an int
    past 64 bits) is 400."""
    from twisted.internet import reactor

    from realtime.config import ServerConfig
    from realtime.layers import InMemoryChannelLayer
    from realtime.layers.redis import RedisChannelLayer
    from realtime.testing import serve
    from tests.redis_support import free_port, started_layer

    redis = await started_layer(redis_url)
    small = InMemoryChannelLayer(capacity=2)
    down = RedisChannelLayer.from_url(f"redis://127.0.0.1:{free_port()}/0")
    down.start(reactor)
    servers = [await serve(Named.as_app(), ServerConfig(api_keys=(KEY,)), layer=layer)
               for layer in (small, down)]
    try:
        def flow():
            out = []
            for server in servers:
                base = server.http_url("")
                for _ in range(3):
                    try:
                        send(base, KEY, "nobody.reads", {"type": "t"})
                        out.append(200)
                    except PublishError as exc:
                        out.append((exc.status, exc.error))
                status, headers, _ = get(server.http_url("/api/send"),
                                         b'{"channel": "nobody.reads", "event": {"type": "t"}}',
                                         {"Authorization": f"Bearer {KEY}"})
                out.append((status, headers.get("Retry-After")))
            return out

        out = await in_thread(flow)
        there = await serve(Named.as_app(), ServerConfig(api_keys=(KEY,)), layer=redis)
        servers.append(there)
        status, _, body = await in_thread(
            get, there.http_url("/api/send"),
            b'{"channel": "c", "event": {"type": "t", "n": 1180591620717411303424}}',
            {"Authorization": f"Bearer {KEY}"})
    finally:
        for server in servers:
            await server.stop()
        await down.close()
        await redis.close()
    assert status == 400 and "msgpack-safe" in json.loads(body)["error"]
    full = (429, "channel 'nobody.reads' is full (its receiver is behind)")
    unavailable = (503, "the channel layer is unavailable")
    assert out == [200, 200, full, (429, "1"),
                   unavailable, unavailable, unavailable, (503, "1")]


@pytest_twisted.ensureDeferred
async def test_access_log_text_and_json_redacts_tokens(live, tmp_path):
    from realtime.accesslog import AccessLog

    for fmt in ("text", "json"):
        path_ = tmp_path / f"access.{fmt}"
        server = await live(bench)
        server.site.access_log = AccessLog(str(path_), fmt)

        def flow(server=server, path_=path_):
            get(server.http_url("/healthz?token=SECRET1&x=1"))
            with connect(server.ws_url("/echo?access_token=SECRET2")) as ws:
                ws.send("x")
                ws.recv(timeout=5)
            try:
                connect(server.ws_url("/nowhere?token=SECRET3"))
            except Exception:
                pass
            # the last line (the echo socket's close) is written once the server saw it
            _wait(lambda: len(path_.read_text().splitlines()) >= 4)

        await in_thread(flow)
        server.site.access_log.close()
        text = path_.read_text()
        assert "SECRET" not in text
        lines = text.strip().splitlines()
        assert len(lines) == 4, text
        if fmt == "json":
            records = [json.loads(line) for line in lines]
            kinds = [r["kind"] for r in records]
            assert kinds == ["http", "ws_connect", "ws_disconnect", "ws_reject"]
            assert records[0]["status"] == 200 and records[0]["target"].startswith("/healthz?")
            assert records[2]["code"] == 1000 and records[2]["conn"] == records[1]["conn"]
            assert records[3]["status"] == 404
        else:
            assert '"GET /healthz?token=[redacted]&x=1 HTTP/1.1" 200' in lines[0]
            assert '"WSCONNECT /echo?access_token=[redacted]" 101' in lines[1]
            assert '"WSDISCONNECT /echo?access_token=[redacted]" 1000' in lines[2]
            assert '"WSREJECT /nowhere?token=[redacted]" 404' in lines[3]


def test_access_log_reopens_on_sighup(tmp_path):
    from tests.e2e.support import BENCH_APP, start, twistd

    log_path = tmp_path / "access.log"
    with start(twistd("--app", BENCH_APP, "--port", "0", "--access-log", str(log_path))) as srv:
        get(f"http://127.0.0.1:{srv.port}/healthz")
        _wait(lambda: log_path.exists() and "/healthz" in log_path.read_text())
        rotated = tmp_path / "access.log.1"
        os.rename(log_path, rotated)
        srv.send_signal(signal.SIGHUP)
        _wait(lambda: log_path.exists())
        get(f"http://127.0.0.1:{srv.port}/readyz")
        _wait(lambda: "/readyz" in log_path.read_text())
    assert "/readyz" not in rotated.read_text()
    assert "/healthz" not in log_path.read_text()


def _wait(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_metrics_port_and_options_from_the_command_line():
    from tests.e2e.support import BENCH_APP, start, twistd

    with start(twistd("--app", BENCH_APP, "--port", "0", "--metrics-port", "0"),
               listeners=2) as srv:
        main, metrics = srv.addresses[0], srv.addresses[1]
        main_port = int(main.rsplit(":", 1)[1])
        metrics_port = int(metrics.rsplit(":", 1)[1])
        with connect(f"ws://127.0.0.1:{main_port}/echo") as ws:
            ws.send("x")
            ws.recv(timeout=5)
        values = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert values["realtime_messages_in_total{}"] == 1
        assert get(f"http://127.0.0.1:{main_port}/metrics")[0] == 404  # not on the main port


@pytest_twisted.ensureDeferred
async def test_drain_2000_clients_in_batches(live):
    import resource

    from twisted.internet import reactor

    from tests.clients import close_code, handshake, parse_frames, raw_connect

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    server = await live(bench, drain_batch=500, drain_interval=0.1, connect_timeout=30)
    clients = []
    for _ in range(2000):
        conn = await raw_connect(server.port)
        conn.write(handshake("/echo"))
        clients.append(conn)
    for conn in clients:
        await conn.wait_for(lambda d: b"\r\n\r\n" in d, timeout=30)
    assert len(server.site.connections) == 2000
    seen_at = {}

    def closed_frame(data):
        return any(op == 8 for op, _ in parse_frames(data.partition(b"\r\n\r\n")[2]))

    started = reactor.seconds()
    waits = []
    for conn in clients:
        d = conn.wait_for(closed_frame, timeout=30)
        d.addCallback(lambda data, conn=conn: (seen_at.__setitem__(
            conn, reactor.seconds() - started), data)[1])
        waits.append((conn, d))
    drained = server.site.drain()
    status, _, _ = await in_thread(lambda: get(server.http_url("/readyz")))
    assert status == 503  # from the first moment
    for conn, d in waits:
        data = await d
        frames = parse_frames(data.partition(b"\r\n\r\n")[2])
        assert close_code(frames[-1][1]) == 1001
        conn.abort()
    await drained
    times = sorted(seen_at.values())
    # Four batches of 500, 0.1 s apart: the last socket closes ~0.3 s after the first.
    assert times[-1] - times[0] >= 0.25
