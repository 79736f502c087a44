"""``realtime.pubsub``'s application-level pings (Centrifugo's ``{}`` every 25 s, answered
by the SDKs with ``{}``) and the refresh answers that keep an SDK reconnecting: a real
server, Centrifugo's own Python SDK and a raw WebSocket client."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
import pytest_twisted
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from realtime import pubsub
from realtime.settings import configure, reset
from realtime.tokens import key_from_text
from tests.clients import in_thread

SECRET = "p" * 40


def token(**claims):
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture(autouse=True)
def _settings(monkeypatch):
    monkeypatch.setattr(pubsub, "PING_INTERVAL", 0.3)
    configure(jwt_keys=[key_from_text(SECRET)])
    pubsub.configure(["chat:allow_subscribe_for_client"], layer=_Rules())
    yield
    reset()


class _Rules:
    """configure() asks the layer to keep history for namespaces that have it: none here."""

    def keep_history(self, *args, **kwargs):
        raise AssertionError("no namespace here keeps history")


def closed_with(ws) -> tuple[int | None, str]:
    """Read until the server closes: its close code and reason."""
    try:
        while True:
            ws.recv(timeout=5)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "closed without a close frame"
        return closed.rcvd.code, closed.rcvd.reason


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_pongs_is_closed_3012(live):
    server = await live(pubsub.application)

    def flow():
        with connect(server.ws_url("/connection/websocket")) as ws:
            ws.send(json.dumps({"id": 1, "connect": {"token": token(sub="ada")}}))
            reply = json.loads(ws.recv(timeout=5))
            first_ping = ws.recv(timeout=5)
            return reply, first_ping, closed_with(ws)

    reply, first_ping, close = await in_thread(flow)
    assert reply["connect"]["ping"] == 1 and reply["connect"]["pong"] is True
    assert first_ping == "{}"
    assert close == (3012, "no pong")


@pytest_twisted.ensureDeferred
async def test_a_client_that_pongs_stays(live):
    server = await live(pubsub.application)

    def flow():
        with connect(server.ws_url("/connection/websocket")) as ws:
            ws.send(json.dumps({"id": 1, "connect": {"token": token(sub="ada")}}))
            json.loads(ws.recv(timeout=5))
            pings = 0
            deadline = time.monotonic() + 1.5  # five intervals
            while time.monotonic() < deadline:
                assert ws.recv(timeout=2) == "{}"
                pings += 1
                ws.send("{}")
            ws.send(json.dumps({"id": 2, "subscribe": {"channel": "chat:a"}}))
            while (frame := ws.recv(timeout=5)) == "{}":
                ws.send("{}")
            return pings, json.loads(frame)

    pings, subscribed = await in_thread(flow)
    assert pings >= 3
    assert subscribed == {"id": 2, "subscribe": {}}


@pytest_twisted.ensureDeferred
async def test_the_sdk_answers_pings_and_stays_connected(live):
    from centrifuge import Client

    server = await live(pubsub.application)

    async def flow():
        client = Client(server.ws_url("/connection/websocket"), token=token(sub="ada"))
        await client.connect()
        await asyncio.sleep(1.5)  # five ping intervals
        state = client.state
        await client.disconnect()
        return state

    state = await in_thread(lambda: asyncio.run(flow()))
    assert state.value == "connected"


@pytest_twisted.ensureDeferred
async def test_an_expired_subscription_token_on_sub_refresh_closes_3006(live):
    server = await live(pubsub.application)
    now = time.time()

    def flow():
        with connect(server.ws_url("/connection/websocket")) as ws:
            ws.send(json.dumps({"id": 1, "connect": {"token": token(sub="ada")}}))
            json.loads(ws.recv(timeout=5))
            ws.send(json.dumps({"id": 2, "subscribe": {"channel": "$secret", "token": token(
                sub="ada", channel="$secret", exp=int(now) + 60)}}))
            reply = json.loads(ws.recv(timeout=5))
            ws.send(json.dumps({"id": 3, "sub_refresh": {"channel": "$secret", "token": token(
                sub="ada", channel="$secret", exp=int(now) - 10)}}))
            return reply, closed_with(ws)

    reply, close = await in_thread(flow)
    assert reply["subscribe"]["expires"] is True and 50 <= reply["subscribe"]["ttl"] <= 60
    assert close == (3006, "subscription expired")
