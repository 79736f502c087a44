"""The ``realtime`` subprotocol: answered when a client offered it and the consumer picked
none (a browser fails a handshake whose offered subprotocols get no answer, and the
``bearer.<jwt>`` entry is never answered); a real client on a real server."""

from __future__ import annotations

import jwt
import pytest_twisted
from websockets.sync.client import connect

from realtime import AsyncWebsocketConsumer, URLRouter, path
from realtime.tokens import TokenAuthMiddleware, key_from_text
from tests.clients import in_thread

SECRET = "m" * 40


class Plain(AsyncWebsocketConsumer):
    """Picks no subprotocol; says which it was offered."""

    async def connect(self) -> None:
        await self.accept()
        await self.send(text_data=",".join(self.scope["subprotocols"]))


class Picky(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept("chat.v1")


app = URLRouter([
    path("plain", Plain.as_app()),
    path("token", TokenAuthMiddleware(Plain.as_app(), keys=[key_from_text(SECRET)],
                                      required=True)),
    path("picky", Picky.as_app()),
])


@pytest_twisted.ensureDeferred
async def test_the_marker_is_answered_when_the_consumer_picks_none(live):
    server = await live(app)
    token = jwt.encode({"sub": "ada"}, SECRET, algorithm="HS256")

    def flow():
        answers = {}
        for name, route, offered in (
            ("bearer", "/token", ["realtime", f"bearer.{token}"]),
            ("marker", "/plain", ["realtime"]),
            ("other", "/plain", ["chat.v1"]),
            ("picked", "/picky", ["realtime", "chat.v1"]),
        ):
            try:
                with connect(server.ws_url(route), subprotocols=offered) as ws:
                    answers[name] = (ws.subprotocol, ws.recv(timeout=5) if route != "/picky"
                                     else None)
            except Exception as exc:  # the client refuses an answer it did not offer
                answers[name] = type(exc).__name__
        return answers

    answers = await in_thread(flow)
    assert answers["bearer"] == ("realtime", "realtime")  # the entry is not the app's
    assert answers["marker"] == ("realtime", "realtime")
    # Offered protocols and none answered: websockets accepts that (browsers do not).
    assert answers["other"] == (None, "chat.v1")
    assert answers["picked"] == ("chat.v1", None)
