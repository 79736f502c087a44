"""``broadcast(group, text=..., exclude=channel)`` (Socket.IO's ``skip_sid``, Phoenix's
``broadcast_from``): a member says something to its room without hearing it back; the
publish API's ``"exclude"``. Real servers, real WebSocket clients."""

from __future__ import annotations

import contextlib
import json

import pytest_twisted
from websockets.sync.client import connect

from realtime import AsyncWebsocketConsumer, URLRouter, path
from realtime.client import PublishError, publish
from tests.clients import in_thread
from tests.e2e.test_operations import KEY, get


class Shout(AsyncWebsocketConsumer):
    """Joins ``room``, says its channel name; what it receives goes to everyone else in the
    room (a burst ``a|b|c`` as three broadcasts in one read)."""

    groups = ["room"]

    async def connect(self) -> None:
        await self.accept()
        await self.send(text_data="channel:" + self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        assert text_data is not None
        for part in text_data.split("|"):
            await self.channel_layer.broadcast("room", text=part, exclude=self.channel_name)


app = URLRouter([path("shout", Shout.as_app())])


def joined(stack, server, n):
    """``n`` clients in the room (closed with ``stack``), with their channel names."""
    sockets = [stack.enter_context(connect(server.ws_url("/shout"))) for _ in range(n)]
    names = []
    for ws in sockets:
        hello = ws.recv(timeout=5)
        assert hello.startswith("channel:")
        names.append(hello[len("channel:"):])
    return sockets, names


@pytest_twisted.ensureDeferred
async def test_the_sender_does_not_hear_itself(live):
    server = await live(app)

    def flow():
        with contextlib.ExitStack() as stack:
            (a, b, c), _ = joined(stack, server, 3)
            a.send("hi|there")
            got_b = [b.recv(timeout=5), b.recv(timeout=5)]
            got_c = [c.recv(timeout=5), c.recv(timeout=5)]
            b.send("yo")
            # a's next message is b's: it never had its own two.
            return got_b, got_c, a.recv(timeout=5), c.recv(timeout=5)

    got_b, got_c, got_a, c_next = await in_thread(flow)
    assert got_b == got_c == ["hi", "there"]
    assert got_a == "yo" and c_next == "yo"


@pytest_twisted.ensureDeferred
async def test_the_publish_api_leaves_out_the_channels_it_names(live):
    server = await live(app, api_keys=(KEY,))
    url = server.http_url("")
    publish_url = server.http_url("/api/publish")
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def flow():
        with contextlib.ExitStack() as stack:
            (a, b, c), (name_a, name_b, _) = joined(stack, server, 3)
            publish(url, KEY, "room", json={"n": 1}, exclude=name_a)
            publish(url, KEY, "room", text="two", exclude=[name_a, name_b])
            publish(url, KEY, "room", text="three")
            refusals = [
                get(publish_url, json.dumps(body).encode(), auth) for body in (
                    {"group": "room", "event": {"type": "x"}, "exclude": [name_a]},
                    {"group": "room", "text": "x", "exclude": name_a},
                    {"group": "room", "text": "x", "exclude": ["no spaces"]},
                )
            ]
            try:
                publish(url, KEY, "room", event={"type": "x"}, exclude=name_a)
                client_error = None
            except PublishError as exc:
                client_error = exc.status, exc.error
            return ([a.recv(timeout=5)], [b.recv(timeout=5), b.recv(timeout=5)],
                    [c.recv(timeout=5) for _ in range(3)], refusals, client_error)

    got_a, got_b, got_c, refusals, client_error = await in_thread(flow)
    assert got_a == ["three"]
    assert got_b == ['{"n": 1}', "three"]
    assert got_c == ['{"n": 1}', "two", "three"]
    assert [status for status, _, _ in refusals] == [400, 400, 400]
    errors = [json.loads(body)["error"] for _, _, body in refusals]
    assert errors[0] == "'exclude' applies to 'text' and 'json', not to 'event'"
    assert errors[1] == "'exclude' must be a list of channel names"
    assert errors[2].startswith("'exclude': channel name must be")
    assert client_error == (400, errors[0])
