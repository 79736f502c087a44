"""The bridge end to end: handler ordering, thread handlers, keepalive, lifetime, the connect
deadline, connection and in-flight limits, drain; and the smoke tests under asyncio."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.python import threadable
from websockets.sync.client import connect

from realtime import (
    AsyncWebsocketConsumer,
    ProtocolTypeRouter,
    URLRouter,
    WebsocketConsumer,
    async_to_sync,
    path,
)
from realtime.layers import InMemoryChannelLayer
from tests.clients import (
    Recorder,
    captured_log,
    client_frame,
    closed_by_server,
    handshake,
    http_request,
    in_thread,
    later,
    parse_response,
    raw_connect,
    raw_exchange,
    ws_open,
)
from tests.test_layers import until

REPO = Path(__file__).resolve().parents[2]


def ws_app(consumer: Any) -> ProtocolTypeRouter:
    return ProtocolTypeRouter({"websocket": URLRouter([path("t", consumer)])})


def bounded(d: Deferred[Any], timeout: float = 5.0) -> Deferred[Any]:
    from twisted.internet import reactor

    return d.addTimeout(timeout, reactor)


class Tracker(WebsocketConsumer):
    """Accepts, records its disconnect code."""

    rec: Any = None

    def disconnect(self, code):
        self.rec.add(("disconnect", code))


# -- ordering --------------------------------------------------------------------------------


class SlowAsync(AsyncWebsocketConsumer):
    rec: Any = None
    delay = 0.02
    active = 0

    async def receive(self, text_data=None, bytes_data=None):
        self.active += 1
        self.rec.add(("active", self.active))
        n = int(text_data)
        # early messages wait longest: out-of-order completion if handlers overlapped
        await later(self.delay if n % 3 == 0 else 0)
        self.active -= 1
        await self.send(text_data=text_data)


@pytest_twisted.ensureDeferred
async def test_async_receive_awaiting_a_deferred_answers_in_order(live):
    rec = Recorder()
    server = await live(ws_app(SlowAsync.as_app(rec=rec)))

    def client():
        with connect(server.ws_url("/t")) as ws:
            for i in range(20):
                ws.send(str(i))
            return [ws.recv(timeout=5) for _ in range(20)]

    assert await in_thread(client) == [str(i) for i in range(20)]
    assert {event for event in rec.events} == {("active", 1)}


class Threaded(WebsocketConsumer):
    thread_handlers = True
    rec: Any = None
    reply = True

    def connect(self):
        self.rec.add(("connect", threadable.isInIOThread(), threading.get_ident()))
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        self.rec.add(("receive", text_data, threadable.isInIOThread()))
        if self.reply:
            self.send(text_data="re:" + text_data)
        elif text_data == "9":
            self.close()

    def disconnect(self, code):
        self.rec.add(("disconnect", code, threadable.isInIOThread()))


@pytest_twisted.ensureDeferred
async def test_thread_handlers_run_off_the_reactor_in_order(live):
    rec = Recorder()
    server = await live(ws_app(Threaded.as_app(rec=rec, reply=False)))
    conn = await ws_open(server.port, "/t")
    assert conn.response()[0] == 101  # accept() from a worker thread
    for i in range(10):
        conn.send_text(str(i))
    close = await conn.wait_close_frame()  # close() from a worker thread
    assert close is not None and close[0] == 1000
    conn.send_close()
    events = await rec.wait(lambda ev: ev and ev[-1][0] == "disconnect")
    kind, in_io, ident = events[0]
    assert (kind, in_io) == ("connect", False)
    assert ident != threading.get_ident()  # the reactor runs this test's thread
    assert events[1:11] == [("receive", str(i), False) for i in range(10)]
    assert events[11] == ("disconnect", 1000, False)
    assert len(events) == 12


@pytest_twisted.ensureDeferred
async def test_thread_handlers_sends_arrive(live):
    rec = Recorder()
    server = await live(ws_app(Threaded.as_app(rec=rec)))

    def client():
        with connect(server.ws_url("/t")) as ws:
            for i in range(10):
                ws.send(str(i))
            try:
                return [ws.recv(timeout=1) for _ in range(10)]
            except TimeoutError:
                return "timed out waiting for the thread handlers' sends"

    assert await in_thread(client) == [f"re:{i}" for i in range(10)]
    events = await rec.wait(lambda ev: ev and ev[-1][0] == "disconnect")
    assert events[-1] == ("disconnect", 1000, False)


class TutorialChat(WebsocketConsumer):
    """Channels' tutorial chat consumer, ported by changing imports: a sync consumer that
    calls the layer through async_to_sync (so its handlers run in the pool by themselves)."""

    def connect(self):
        async_to_sync(self.channel_layer.group_add)("chat_lobby", self.channel_name)
        self.accept()

    def disconnect(self, code):
        async_to_sync(self.channel_layer.group_discard)("chat_lobby", self.channel_name)

    def receive(self, text_data=None, bytes_data=None):
        async_to_sync(self.channel_layer.group_send)(
            "chat_lobby", {"type": "chat.message", "message": text_data}
        )

    def chat_message(self, event):
        self.send(text_data=event["message"])


class ThreadedTutorialChat(TutorialChat):
    thread_handlers = True


class ReactorTutorialChat(TutorialChat):
    """The same, its author asking for the reactor thread."""

    thread_handlers = False


@pytest.mark.parametrize("consumer", [TutorialChat, ThreadedTutorialChat],
                         ids=["as-is", "thread_handlers"])
@pytest_twisted.ensureDeferred
async def test_channels_tutorial_sync_consumer_runs_in_the_pool(live, consumer):
    server = await live(ws_app(consumer.as_app()))

    def client():
        with connect(server.ws_url("/t")) as a, connect(server.ws_url("/t")) as b:
            a.send("hello")
            return a.recv(timeout=5), b.recv(timeout=5)

    assert await in_thread(client) == ("hello", "hello")


@pytest_twisted.ensureDeferred
async def test_async_to_sync_on_the_reactor_thread_refuses_instead_of_hanging(live):
    """With thread_handlers = False the same consumer runs on the reactor thread, where
    waiting for the reactor would hang the whole process: the call raises, the handshake
    gets 500, and the server goes on serving."""
    server = await live(ws_app(ReactorTutorialChat.as_app()))
    with captured_log() as events:
        status, _, _ = parse_response(await raw_exchange(server.port, handshake("/t"), 5))
    assert status == 500
    errors = [e["log_failure"].value for e in events if "log_failure" in e]
    assert any(isinstance(err, RuntimeError) and "thread_handlers = True" in str(err)
               for err in errors), errors
    health = await raw_exchange(server.port, http_request("/healthz"), 5)
    assert parse_response(health)[0] == 200


class StuckOnLeaving(AsyncWebsocketConsumer):
    """A consumer whose last handlers never finish (a hung database call, say)."""

    groups = ["stuck"]
    stuck_in = "disconnect"
    rec: Any = None

    async def receive(self, text_data=None, bytes_data=None):
        if self.stuck_in == "receive":
            self.rec.add("stuck")
            await self.hang()

    async def disconnect(self, code):
        self.rec.add(("disconnect", code))
        if self.stuck_in == "disconnect":
            await self.hang()

    async def hang(self):
        try:
            await Deferred()
        except CancelledError:
            self.rec.add("cancelled")
            raise


@pytest.mark.parametrize("stuck_in", ["disconnect", "receive"])
@pytest_twisted.ensureDeferred
async def test_a_closed_socket_leaves_its_groups_even_if_its_handlers_never_finish(
    live, stuck_in
):
    """Channels discards ``groups`` before ``disconnect()`` runs; here the connection leaves
    every group when the socket closes, not when its handlers are done."""
    from realtime.layers import get_channel_layer

    layer = get_channel_layer()
    rec = Recorder()
    server = await live(ws_app(StuckOnLeaving.as_app(stuck_in=stuck_in, rec=rec)),
                        application_close_timeout=0.3)
    stays = await ws_open(server.port, "/t")
    leaves = await ws_open(server.port, "/t")
    assert len(layer.local_members("stuck")) == 2
    if stuck_in == "receive":
        leaves.send_text("hang")
        assert await rec.wait(lambda ev: "stuck" in ev) == ["stuck"]
    with captured_log() as events:  # from before the close: the kill comes 0.3 s after it
        leaves.send_close()
        assert (await leaves.wait_close_frame())[0] == 1000
        await until(lambda: len(layer.local_members("stuck")) == 1, timeout=3)
        assert ("disconnect", 1000) in rec.events or stuck_in == "receive"
        await layer.broadcast("stuck", text="still here")
        frames = await stays.wait_frames(1)
        assert frames == [(0x1, b"still here")]
        # --application-close-timeout after the close, the stuck handler is cancelled (and
        # logged), and nothing queued behind it runs.
        cancelled = await rec.wait(lambda ev: "cancelled" in ev, timeout=5)
    assert cancelled[-1] == "cancelled"
    warnings = [e for e in events if "still running" in e.get("log_format", "")]
    assert len(warnings) == 1 and warnings[0]["consumer"] == "StuckOnLeaving"
    assert not any("log_failure" in e for e in events)  # the cancel is not an error
    if stuck_in == "receive":  # its disconnect() never got to run
        assert not any(isinstance(e, tuple) and e[0] == "disconnect" for e in rec.events)
    stays.send_close()
    await until(lambda: layer.local_members("stuck") == [], timeout=3)


class LateAckLayer(InMemoryChannelLayer):
    """The memory layer with group_add acknowledged only when the test says, as Redis
    acknowledges a SUBSCRIBE later (the membership itself is local and immediate)."""

    gate: Deferred

    def group_add(self, group, channel):
        joined = super().group_add(group, channel)
        return self.gate.addCallback(lambda _: joined)


class JoinsInConnect(AsyncWebsocketConsumer):
    groups = ["room"]
    rec: Any = None

    async def connect(self):
        self.rec.add("connect")
        await self.channel_layer.group_add("extra", self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        self.rec.add(("disconnect", code))


@pytest_twisted.ensureDeferred
async def test_a_client_gone_before_its_groups_are_joined_never_runs_connect(live):
    """connect() could join more groups after the disconnect and detach: it does not run."""
    from realtime.layers import set_channel_layer

    layer = LateAckLayer()
    layer.gate = Deferred()
    set_channel_layer(layer)  # the live server's layer (restored after the test)
    rec = Recorder()
    server = await live(ws_app(JoinsInConnect.as_app(rec=rec)))
    conn = await raw_connect(server.port)
    conn.write(handshake("/t"))
    await until(lambda: len(layer.local_members("room")) == 1)  # joining, not acknowledged
    conn.abort()
    assert await rec.wait(1) == [("disconnect", 1006)]
    layer.gate.callback(None)
    assert layer.local_members("room") == [] and layer.local_members("extra") == []
    await later(0.05)  # a connect() would have run synchronously on the ack; none did
    assert rec.events == [("disconnect", 1006)]


class ThreadRejoins(WebsocketConsumer):
    """A thread handler that outlives the kill (a thread cannot be stopped) and joins a
    group after it."""

    thread_handlers = True
    release: Any = None
    rec: Any = None

    def disconnect(self, code):
        self.release.wait(5)
        async_to_sync(self.channel_layer.group_add)("late", self.channel_name)
        self.rec.add("joined late")


@pytest_twisted.ensureDeferred
async def test_a_thread_handler_that_outlives_the_kill_leaves_its_late_groups(live):
    from realtime.layers import get_channel_layer

    layer = get_channel_layer()
    rec, release = Recorder(), threading.Event()
    server = await live(ws_app(ThreadRejoins.as_app(rec=rec, release=release)),
                        application_close_timeout=0.1)
    conn = await ws_open(server.port, "/t")
    with captured_log() as events:
        conn.send_close()
        await until(lambda: any("still running" in e.get("log_format", "") for e in events))
    release.set()
    assert await rec.wait(1) == ["joined late"]
    await until(lambda: layer.local_members("late") == [])


def test_async_to_sync_before_the_reactor_runs_refuses_instead_of_hanging():
    """A module-level call while --app is imported (the layer is set by then) would wait
    for the reactor that this very thread is about to run."""
    done = subprocess.run(
        [sys.executable, "-c",
         "from realtime import async_to_sync\n"
         "from realtime.layers import get_channel_layer\n"
         "async_to_sync(get_channel_layer().group_add)('g', 'specific.a!b')\n"],
        cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1
    assert "RuntimeError: async_to_sync('InMemoryChannelLayer.group_add') called before " \
           "the reactor runs" in done.stderr, done.stderr


# -- keepalive, lifetime ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_keepalive_ping_arrives(live):
    server = await live(ws_app(Tracker.as_app(rec=Recorder())), ping_interval=0.1)
    conn = await ws_open(server.port, "/t")
    assert conn.response()[0] == 101
    frames = await conn.wait_frames(lambda fs: any(op == 0x9 for op, _ in fs), timeout=3)
    assert [op for op, _ in frames][:1] == [0x9]


@pytest_twisted.ensureDeferred
async def test_no_pong_drops_the_connection(live):
    rec = Recorder()
    server = await live(ws_app(Tracker.as_app(rec=rec)), ping_interval=0.1, ping_timeout=0.2)
    conn = await ws_open(server.port, "/t")
    started = time.monotonic()
    assert await closed_by_server(conn, 3)
    assert time.monotonic() - started >= 0.25
    assert not any(op == 0x8 for op, _ in conn.frames())  # dropped, not closed
    assert await rec.wait(1) == [("disconnect", 1006)]


@pytest_twisted.ensureDeferred
async def test_answered_pings_keep_the_connection_open(live):
    rec = Recorder()
    server = await live(ws_app(Tracker.as_app(rec=rec)), ping_interval=0.1, ping_timeout=0.15)
    conn = await ws_open(server.port, "/t")
    for count in range(1, 6):  # 5 pings: well past ping_timeout
        frames = await conn.wait_frames(
            lambda fs, c=count: sum(op == 0x9 for op, _ in fs) >= c, timeout=3)
        pings = [p for op, p in frames if op == 0x9]
        assert len(pings) >= count
        conn.send_frame(0xA, pings[count - 1])
    assert not conn.is_closed
    assert rec.events == []
    conn.send_close()
    assert await rec.wait(1) == [("disconnect", 1000)]


@pytest_twisted.ensureDeferred
async def test_lifetime_closes_with_1000(live):
    rec = Recorder()
    server = await live(ws_app(Tracker.as_app(rec=rec)), websocket_timeout=0.2)
    conn = await ws_open(server.port, "/t")
    started = time.monotonic()
    close = await conn.wait_close_frame(timeout=3)
    assert time.monotonic() - started >= 0.15
    assert close is not None and close[0] == 1000
    conn.send_close()
    assert await rec.wait(1) == [("disconnect", 1000)]


# -- the connect deadline --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_half_a_request_is_dropped_at_the_connect_deadline(live):
    server = await live(ws_app(Tracker.as_app(rec=Recorder())), connect_timeout=0.3)
    conn = await raw_connect(server.port)
    conn.write(b"GET /t HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: web")
    started = time.monotonic()
    assert await closed_by_server(conn, 3)
    assert time.monotonic() - started >= 0.25
    assert conn.data == b""


@pytest_twisted.ensureDeferred
async def test_a_dribbling_client_is_dropped_at_the_connect_deadline(live):
    from twisted.internet.task import LoopingCall

    server = await live(ws_app(Tracker.as_app(rec=Recorder())), connect_timeout=0.3)
    conn = await raw_connect(server.port)
    conn.write(b"GET /t HTTP/1.1\r\n")
    dribble = LoopingCall(lambda: conn.is_closed or conn.write(b"X-A: b\r\n"))
    dribble.start(0.05)
    started = time.monotonic()
    try:
        assert await closed_by_server(conn, 3)
    finally:
        dribble.stop()
    assert time.monotonic() - started >= 0.25


@pytest_twisted.ensureDeferred
async def test_connect_deadline_does_not_touch_an_open_socket(live):
    server = await live(ws_app(Tracker.as_app(rec=Recorder())), connect_timeout=0.2,
                        ping_interval=0.1)
    conn = await ws_open(server.port, "/t")
    # three keepalive pings: the deadline has long passed
    await conn.wait_frames(lambda fs: sum(op == 0x9 for op, _ in fs) >= 3, timeout=3)
    assert not conn.is_closed
    assert not any(op == 0x8 for op, _ in conn.frames())


class NeverAccepts(AsyncWebsocketConsumer):
    gate: Any = None
    rec: Any = None

    async def connect(self):
        self.rec.add("connect")
        await self.gate

    async def disconnect(self, code):
        self.rec.add(("disconnect", code))


@pytest_twisted.ensureDeferred
async def test_connect_that_never_accepts_gets_503_at_the_deadline(live):
    rec, gate = Recorder(), Deferred()
    server = await live(ws_app(NeverAccepts.as_app(rec=rec, gate=gate)), connect_timeout=0.3)
    started = time.monotonic()
    raw = await raw_exchange(server.port, handshake("/t"), timeout=3)
    assert time.monotonic() - started >= 0.25
    status, headers, _ = parse_response(raw)
    assert status == 503
    assert headers[b"retry-after"]
    assert not server.site.connections
    gate.callback(None)  # connect() returns late: nothing is accepted, disconnect follows
    assert await rec.wait(2) == ["connect", ("disconnect", 1006)]


# -- limits ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_max_connections(live):
    server = await live(ws_app(Tracker.as_app(rec=Recorder())), max_connections=2)
    first = await ws_open(server.port, "/t")
    second = await ws_open(server.port, "/t")
    assert first.response()[0] == second.response()[0] == 101
    status, headers, _ = parse_response(await raw_exchange(server.port, handshake("/t")))
    assert status == 503
    assert headers[b"retry-after"]
    first.send_close()
    await first.closed(timeout=3)
    third = await ws_open(server.port, "/t")
    assert third.response()[0] == 101


@pytest_twisted.ensureDeferred
async def test_max_connections_counts_handshakes_in_progress(live):
    rec, gate = Recorder(), Deferred()
    server = await live(ws_app(NeverAccepts.as_app(rec=rec, gate=gate)), max_connections=1)
    pending = await raw_connect(server.port)
    pending.write(handshake("/t"))
    assert await rec.wait(1) == ["connect"]  # its connect() is running
    status, _, _ = parse_response(await raw_exchange(server.port, handshake("/t")))
    assert status == 503
    gate.callback(None)


class SlowReader(AsyncWebsocketConsumer):
    rec: Any = None

    async def connect(self):
        await self.accept()
        transport = self._conn.transport
        pause, resume = transport.pauseProducing, transport.resumeProducing

        def spy_pause():
            self.rec.add("pause")
            pause()

        def spy_resume():
            self.rec.add("resume")
            resume()

        transport.pauseProducing, transport.resumeProducing = spy_pause, spy_resume

    async def receive(self, text_data=None, bytes_data=None):
        await later(0.005)
        await self.send(text_data=text_data)


@pytest_twisted.ensureDeferred
async def test_max_inflight_loses_nothing_and_keeps_order(live):
    rec = Recorder()
    server = await live(ws_app(SlowReader.as_app(rec=rec)), max_inflight=2)
    conn = await ws_open(server.port, "/t")
    # one write: the server reads many messages at once while the first is still handled
    conn.write(b"".join(client_frame(0x1, str(i).encode()) for i in range(40)))
    frames = await conn.wait_frames(lambda fs: sum(op == 0x1 for op, _ in fs) >= 40, timeout=5)
    assert [p for op, p in frames if op == 0x1] == [str(i).encode() for i in range(40)]
    # reading paused past max_inflight and resumed once the queue emptied
    assert "pause" in rec.events
    assert rec.events[-1] == "resume"


# -- drain -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_drain(live):
    rec = Recorder()
    server = await live(ws_app(Tracker.as_app(rec=rec)), close_timeout=5)
    clients = [await ws_open(server.port, "/t") for _ in range(5)]
    assert all(c.response()[0] == 101 for c in clients)
    drained = server.site.drain()
    for c in clients:
        assert await c.wait_close_frame() == (1001, b"server shutting down")
    # while the clients have not answered, the server is still draining
    assert not drained.called
    status, headers, _ = parse_response(await raw_exchange(server.port, handshake("/t")))
    assert status == 503 and headers[b"retry-after"]
    raw = await raw_exchange(server.port, http_request("/readyz"))
    assert parse_response(raw)[0] == 503
    for c in clients:
        c.send_close(1001)
    await bounded(drained)
    assert not server.site.connections
    events = await rec.wait(5)
    assert events == [("disconnect", 1001)] * 5
    for c in clients:
        await c.closed(timeout=3)


@pytest_twisted.ensureDeferred
async def test_drain_drops_silent_clients_after_close_timeout(live):
    rec = Recorder()
    server = await live(ws_app(Tracker.as_app(rec=rec)), close_timeout=0.2)
    clients = [await ws_open(server.port, "/t") for _ in range(3)]
    await bounded(server.site.drain())
    for c in clients:
        assert await closed_by_server(c, 3)  # not aborted by us
        assert c.frames()[-1] == (0x8, b"\x03\xe9server shutting down")
    assert await rec.wait(3) == [("disconnect", 1001)] * 3
