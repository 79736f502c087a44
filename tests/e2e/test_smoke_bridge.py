"""First end-to-end checks of the bridge against a real client."""

from __future__ import annotations

import pytest_twisted
from websockets.sync.client import connect

from realtime.examples.bench import application
from tests.clients import (
    after_headers,
    close_code,
    handshake,
    in_thread,
    parse_frames,
    parse_response,
    raw_exchange,
)


@pytest_twisted.ensureDeferred
async def test_echo_text_and_bytes(live):
    server = await live(application)

    def client():
        with connect(server.ws_url("/echo")) as ws:
            ws.send("héllo")
            text = ws.recv()
            ws.send(b"\x00\xff")
            data = ws.recv()
        return text, data

    assert await in_thread(client) == ("héllo", b"\x00\xff")


@pytest_twisted.ensureDeferred
async def test_version_8_gets_426(live):
    server = await live(application)
    raw = await raw_exchange(server.port, handshake(version=b"8"))
    status, headers, _ = parse_response(raw)
    assert status == 426
    assert headers[b"sec-websocket-version"] == [b"13"]


@pytest_twisted.ensureDeferred
async def test_lifetime_closes_with_1000(live):
    # close_timeout: the raw client never answers the close; it has the frame at once
    server = await live(application, websocket_timeout=0.2, close_timeout=0.3)
    raw = await raw_exchange(server.port, handshake(), timeout=3)
    assert raw.startswith(b"HTTP/1.1 101 ")
    frames = parse_frames(after_headers(raw))
    assert frames and frames[-1][0] == 0x8
    assert close_code(frames[-1][1]) == 1000


def _asyncio_reactor() -> bool:
    from twisted.internet import reactor

    return type(reactor).__name__ == "AsyncioSelectorReactor"


@pytest_twisted.ensureDeferred
async def test_aio_awaits_asyncio_code_in_a_consumer(live):
    """``realtime.aio`` lets a consumer await asyncio code (under ``--reactor=asyncio``; the
    asyncio-reactor run of this file is driven by a subprocess test)."""
    import asyncio

    import pytest

    from realtime import AsyncWebsocketConsumer, URLRouter, aio, path

    if not _asyncio_reactor():
        pytest.skip("needs --reactor=asyncio (run by the asyncio subprocess test)")

    class Sleepy(AsyncWebsocketConsumer):
        async def receive(self, text_data=None, bytes_data=None):
            await aio(asyncio.sleep(0.01))
            await self.send(text_data=f"slept {text_data}")

    server = await live(URLRouter([path("s", Sleepy.as_app())]))

    def client():
        with connect(server.ws_url("/s")) as ws:
            ws.send("1")
            return ws.recv(timeout=5)

    assert await in_thread(client) == "slept 1"
