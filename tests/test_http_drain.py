"""The drain and HTTP: when the server stops, every HTTP connection closes once what it is
doing is done — a response finished and flushed, a body still arriving read and answered,
an HTTP/2 connection's streams (after GOAWAY), an ASGI app's work after its response —
before the listeners close and the lifespans shut down; what is left at
``--shutdown-timeout`` is dropped. The real service on a real port; raw TCP, raw HTTP/2
and httpx clients. The process-level SIGTERM case is in tests/e2e/test_drain_process.py."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import h2.events
import httpx
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.logger import formatEvent

from realtime.asgi import AsgiApp
from realtime.config import ServerConfig
from realtime.lifespan import Lifespans
from realtime.service import ListenerService, RealtimeService
from realtime.site import RealtimeSite
from tests.clients import captured_log, closed_by_server, in_thread, raw_connect, until
from tests.e2e.support import self_signed, tls_options
from tests.e2e.test_http2 import RawH2, body_of, ended

BIG = 8 * 1024 * 1024


class Gated:
    """A raw ASGI app: ``/slow`` waits for ``gate``, ``/after`` answers and then works on
    until ``later`` fires, ``/big`` sends 8 MiB in one message, ``/upload`` reads its body;
    ``events`` records its lifespan and each answer."""

    def __init__(self) -> None:
        self.gate: Deferred[None] = Deferred()
        self.later: Deferred[None] = Deferred()
        self.events: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            self.events.append("lifespan shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        body = b"done"
        if path == "/slow":
            await self.gate
        elif path == "/big":
            body = b"x" * BIG
        elif path == "/upload":
            body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        self.events.append(f"answered {path}")
        if path == "/after":
            await self.later  # a background task's work, after the response
            self.events.append("after done")


def start(app: Any, tls: Any = None, **config: Any) -> tuple[RealtimeService, RealtimeSite]:
    settings = ServerConfig(**config)
    site = RealtimeSite(app, settings, reactor)
    description = "tcp:0:interface=127.0.0.1"
    endpoint = (serverFromString(reactor, description) if tls is None
                else SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1"))
    service = RealtimeService([site], reactor, settings.shutdown_timeout,
                              lifespan=Lifespans(app, "auto", reactor))
    ListenerService(endpoint, description, site).setServiceParent(service)
    service.privilegedStartService()
    service.startService()
    return service, site


async def port_of(service: RealtimeService) -> int:
    listener = next(iter(service))
    return int((await listener.when_listening()).getHost().port)


async def serving(tls: Any = None, **config: Any
                  ) -> tuple[Gated, RealtimeService, RealtimeSite, int]:
    """A ``Gated`` app served by a started service: the app, the service, its site, port."""
    gated = Gated()
    service, site = start(AsgiApp(gated), tls, **config)
    return gated, service, site, await port_of(service)


def stopping(service: RealtimeService) -> list[Any]:
    """Stop the service; the returned list gets its result when the stop is complete."""
    done: list[Any] = []
    service.stopService().addBoth(done.append)
    return done


@pytest_twisted.ensureDeferred
async def test_a_request_in_progress_finishes_before_the_server_stops():
    gated, service, site, port = await serving()
    slow = await raw_connect(port)
    slow.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    idle = await raw_connect(port)  # a keep-alive connection with no request in progress
    idle.write(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
    await idle.wait_for(lambda d: d.endswith(b"done"))
    partial = await raw_connect(port)  # half a request line when the stop comes
    partial.write(b"GET /fast HT")
    # Both have reached the server: a request in progress, half a request line buffered.
    assert await until(lambda: sorted((bool(ch.requests), ch._buffer) for ch in
                                      site.open_channels) == [(False, b""),
                                                              (False, b"GET /fast HT"),
                                                              (True, b"")])
    with captured_log() as logged:
        done = stopping(service)
        assert await closed_by_server(idle, 2)  # closed at once: it was doing nothing
        partial.write(b"TP/1.1\r\nHost: x\r\n\r\n")
        answered = await partial.closed()
        assert answered.startswith(b"HTTP/1.1 200 ") and answered.endswith(b"done")
        fresh = await raw_connect(port)  # the listener stays open while draining
        fresh.write(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await fresh.closed()
        assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" in answer.lower()
        assert done == [] and "lifespan shutdown" not in gated.events
        gated.gate.callback(None)
        response = await slow.closed()  # its connection closes after the response
        assert await until(lambda: done)
    assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"\r\n\r\ndone")
    assert b"connection: close" in response.lower()
    assert gated.events[-2:] == ["answered /slow", "lifespan shutdown"]
    assert "draining 0 WebSocket connection(s) and 3 HTTP connection(s)" in [
        formatEvent(e) for e in logged]
    assert not site.open_channels


@pytest_twisted.ensureDeferred
async def test_a_big_response_is_flushed_and_a_body_still_arriving_is_read_first():
    gated, service, site, port = await serving()
    upload = await raw_connect(port)
    upload.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")

    def slow_reader() -> int:
        """Asks for 8 MiB and reads it slowly, so that most of it still waits in the
        server's buffer when the stop comes."""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while chunk := sock.recv(256 * 1024):
                received += chunk
                if len(received) < BIG // 2:
                    time.sleep(0.005)
            return len(received.partition(b"\r\n\r\n")[2])

    reading = in_thread(slow_reader)
    assert await until(lambda: "answered /big" in gated.events, 5)
    done = stopping(service)
    upload.write(b"world")  # the rest of the body, after the stop began
    answer = await upload.closed()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"helloworld")
    assert await reading == BIG  # every byte, though the stop came while most were queued
    assert await until(lambda: done)
    assert gated.events[-1] == "lifespan shutdown"
    assert not site.open_channels


@pytest_twisted.ensureDeferred
async def test_the_drain_waits_for_an_asgi_apps_work_after_its_response():
    gated, service, site, port = await serving()
    conn = await raw_connect(port)
    conn.write(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await conn.closed()).endswith(b"done")
    assert site.asgi_running  # still at work
    done = stopping(service)
    await until(lambda: done, 0.3)
    assert done == [] and gated.events == ["answered /after"]
    gated.later.callback(None)
    assert await until(lambda: done)
    assert gated.events == ["answered /after", "after done", "lifespan shutdown"]


@pytest_twisted.ensureDeferred
async def test_what_is_left_at_the_deadline_is_dropped_and_the_stop_goes_on():
    gated, service, site, port = await serving(shutdown_timeout=0.5, http_response_timeout=0.2)
    slow = await raw_connect(port)
    slow.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    stuck = await raw_connect(port)
    stuck.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\nab")
    assert await until(lambda: sum(bool(ch.requests) for ch in site.open_channels) == 2)
    with captured_log() as logged:
        done = stopping(service)
        # -t answers the slow one 503 during the drain: that connection closes too.
        refused = await slow.closed(5)
        cut = await stuck.closed(5)
        assert await until(lambda: done)
    assert refused.startswith(b"HTTP/1.1 503 ") and b"connection: close" in refused.lower()
    assert cut == b""  # nothing of a response: the client knows it got none
    assert "shutdown timeout: dropping 0 WebSocket connection(s) and 1 HTTP connection(s) " \
           "at once" in [formatEvent(e) for e in logged]
    assert gated.events == ["lifespan shutdown"]
    gated.gate.callback(None)  # the slow app's late send goes nowhere


@pytest_twisted.ensureDeferred
async def test_http2_streams_in_progress_finish_then_goaway_closes_the_connection(tmp_path):
    """No GOAWAY while a stream is being answered: an h2-package client (httpx) would fail
    that stream (its state machine closes on GOAWAY). Once the connection's last stream is
    done: GOAWAY (no error, the last stream's id) and close."""
    cert, key = self_signed(tmp_path)
    gated, service, site, port = await serving(tls_options(cert, key))

    def fetch() -> tuple[str, int, bytes]:
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(http2=True, verify=trust, timeout=10) as client:
            response = client.get(f"https://127.0.0.1:{port}/slow")
            return response.http_version, response.status_code, response.content

    fetched = in_thread(fetch)
    raw = await in_thread(RawH2, port, cert)  # blocking: not on the reactor's thread
    stream = raw.request("/fast")
    events = await in_thread(raw.events_until, ended(stream))
    assert body_of(events, stream) == b"done"
    assert await until(lambda: site.gate is None and sum(
        bool(ch.h2 is not None and ch.h2.streams) for ch in site.open_channels) == 1)
    done = stopping(service)
    # The idle one (its stream done): GOAWAY at once, then closed.
    events = await in_thread(raw.events_until, lambda e: isinstance(
        e, h2.events.ConnectionTerminated))
    goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert (goaway[0].error_code, goaway[0].last_stream_id) == (0, stream)
    raw.close()
    assert done == []
    gated.gate.callback(None)
    assert await fetched == ("HTTP/2", 200, b"done")  # the busy one finished its stream
    assert await until(lambda: done)  # and then closed
    assert gated.events == ["answered /fast", "answered /slow", "lifespan shutdown"]
