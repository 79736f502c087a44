"""The drain and HTTP: a request in progress when the server stops finishes (on a connection
that then closes) before the listeners close and the lifespans shut down; one still
running at ``--shutdown-timeout`` is cut off. The real service on a real port, raw TCP and
httpx (HTTP/2) clients; the process-level SIGTERM case is in
tests/e2e/test_drain_process.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import formatEvent

from realtime.asgi import AsgiApp
from realtime.config import ServerConfig
from realtime.lifespan import Lifespans
from realtime.service import ListenerService, RealtimeService
from realtime.site import RealtimeSite
from tests.clients import captured_log, closed_by_server, in_thread, raw_connect, until
from tests.e2e.support import self_signed, tls_options


class Gated:
    """A raw ASGI app whose responses wait for ``gate``; ``events`` records its lifespan
    and each request's end."""

    def __init__(self) -> None:
        self.gate: Deferred[None] = Deferred()
        self.events: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            self.events.append("lifespan shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/slow":
            await self.gate
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"done"})
        self.events.append(f"answered {scope['path']}")


def start(app: Any, tls: Any = None, **config: Any) -> tuple[RealtimeService, RealtimeSite]:
    settings = ServerConfig(**config)
    site = RealtimeSite(app, settings, reactor)
    description = "tcp:0:interface=127.0.0.1"
    endpoint = serverFromString(reactor, description)
    if tls is not None:
        from twisted.internet.endpoints import SSL4ServerEndpoint

        endpoint = SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1")
    service = RealtimeService([site], reactor, settings.shutdown_timeout,
                              lifespan=Lifespans(app, "auto", reactor))
    ListenerService(endpoint, description, site).setServiceParent(service)
    service.privilegedStartService()
    service.startService()
    return service, site


async def port_of(service: RealtimeService) -> int:
    listener = next(iter(service))
    return int((await listener.when_listening()).getHost().port)


def stopping(service: RealtimeService) -> list[Any]:
    """Stop the service; the returned list gets its result when the stop is complete."""
    done: list[Any] = []
    service.stopService().addBoth(done.append)
    return done


@pytest_twisted.ensureDeferred
async def test_a_request_in_progress_finishes_before_the_server_stops():
    gated = Gated()
    app = AsgiApp(gated)
    service, site = start(app)
    port = await port_of(service)
    slow = await raw_connect(port)
    slow.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    idle = await raw_connect(port)  # a keep-alive connection with no request in progress
    idle.write(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
    await idle.wait_for(lambda d: d.endswith(b"done"))
    assert await until(lambda: len(site.in_flight) == 1)
    with captured_log() as logged:
        done = stopping(service)
        fresh = await raw_connect(port)  # the listener stays open while draining
        fresh.write(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await fresh.closed()
        assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" in answer.lower()
        assert done == [] and gated.events == ["answered /fast", "answered /fast"]
        gated.gate.callback(None)
        response = await slow.closed()  # its connection closes after the response
        assert await until(lambda: done)
    assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"\r\n\r\ndone")
    assert b"connection: close" in response.lower()
    # The lifespan shut down after the request was answered, not before.
    assert gated.events == ["answered /fast", "answered /fast", "answered /slow",
                            "lifespan shutdown"]
    assert "draining 0 WebSocket connection(s) and 1 HTTP request(s)" in [
        formatEvent(e) for e in logged]
    assert not site.in_flight
    # The keep-alive connection idle since before the stop is closed by the server.
    assert await closed_by_server(idle, 2)
    assert not site.open_channels


@pytest_twisted.ensureDeferred
async def test_a_request_still_running_at_the_deadline_is_cut_off():
    gated = Gated()
    service, site = start(AsgiApp(gated), shutdown_timeout=0.5)
    port = await port_of(service)
    slow = await raw_connect(port)
    slow.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await until(lambda: len(site.in_flight) == 1)
    with captured_log() as logged:
        done = stopping(service)
        cut = await slow.closed(5)
        assert await until(lambda: done)
    assert cut == b""  # nothing of a response: the client knows it did not get one
    assert "shutdown timeout: closing 0 connection(s) and cutting 1 HTTP response(s) off " \
           "at once" in [formatEvent(e) for e in logged]
    assert gated.events == ["lifespan shutdown"] and not site.in_flight


@pytest_twisted.ensureDeferred
async def test_an_http2_stream_in_progress_finishes_too(tmp_path):
    gated = Gated()
    cert, key = self_signed(tmp_path)
    service, site = start(AsgiApp(gated), tls=tls_options(cert, key))
    port = await port_of(service)

    def fetch() -> tuple[str, int, bytes]:
        with httpx.Client(http2=True, verify=False, timeout=10) as client:
            response = client.get(f"https://127.0.0.1:{port}/slow")
            return response.http_version, response.status_code, response.content

    fetched = in_thread(fetch)
    assert await until(lambda: len(site.in_flight) == 1, 10)
    done = stopping(service)
    assert done == []
    gated.gate.callback(None)
    assert await fetched == ("HTTP/2", 200, b"done")
    assert await until(lambda: done)
    assert gated.events == ["answered /slow", "lifespan shutdown"]
