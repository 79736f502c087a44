"""``broadcast(group, text=..., exclude=channel)`` (Socket.IO's ``skip_sid``, Phoenix's
``broadcast_from``): a member says something to its room without hearing it back; the
publish API's ``"exclude"``. Real servers, real WebSocket clients."""

from __future__ import annotations

import contextlib
import json

import pytest_twisted
from websockets.sync.client import connect

from realtime import AsyncWebsocketConsumer, URLRouter, path
from realtime.client import PublishError, broadcast, publish
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
        if text_data.startswith("event:"):  # Channels' way: a typed event to the others
            await self.channel_layer.group_send(
                "room", {"type": "chat.message", "text": text_data[len("event:"):]},
                exclude=self.channel_name)
            return
        for part in text_data.split("|"):
            await self.channel_layer.broadcast("room", text=part, exclude=self.channel_name)

    async def chat_message(self, event: dict) -> None:
        await self.send(text_data="event " + event["text"])


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
            got_a, c_next = a.recv(timeout=5), c.recv(timeout=5)
            c.send("event:hello")  # group_send(exclude=): the others' handlers only
            events = [a.recv(timeout=5), b.recv(timeout=5)]
            a.send("event:again")
            # c's next message is a's event: its handler never ran for its own.
            return got_b, got_c, got_a, c_next, events, c.recv(timeout=5)

    got_b, got_c, got_a, c_next, events, c_event = await in_thread(flow)
    assert got_b == got_c == ["hi", "there"]
    assert got_a == "yo" and c_next == "yo"
    assert events == ["event hello", "event hello"] and c_event == "event again"


@pytest_twisted.ensureDeferred
async def test_the_publish_api_leaves_out_the_channels_it_names():
    from realtime.config import ServerConfig
    from realtime.layers import InMemoryChannelLayer
    from realtime.testing import serve

    layer = InMemoryChannelLayer()  # its own: a history rule must not outlive the test
    layer.keep_history("kept.*", 10, 60)
    server = await serve(app, ServerConfig(api_keys=(KEY,)), layer=layer)
    url = server.http_url("")
    publish_url = server.http_url("/api/publish")
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def flow():
        with contextlib.ExitStack() as stack:
            (a, b, c), (name_a, name_b, _) = joined(stack, server, 3)
            publish(url, KEY, "room", json={"n": 1}, exclude=name_a)
            publish(url, KEY, "room", text="two", exclude=[name_a, name_b])
            publish(url, KEY, "room", text="three")
            publish(url, KEY, "room", event={"type": "chat.message", "text": "four"},
                    exclude=[name_b])
            refusals = [
                get(publish_url, json.dumps(body).encode(), auth) for body in (
                    {"group": "kept.1", "event": {"type": "x"}, "exclude": [name_a]},
                    {"group": "room", "text": "x", "exclude": name_a},
                    {"group": "room", "text": "x", "exclude": ["no spaces"]},
                )
            ]
            try:
                publish(url, KEY, "kept.1", event={"type": "x"}, exclude=name_a)
                client_error = None
            except PublishError as exc:
                client_error = exc.status, exc.error
            try:  # refused for kept.1: room, asked first, does not have it either
                broadcast(url, KEY, ["room", "kept.1"],
                          event={"type": "chat.message", "text": "partial"}, exclude=name_b)
                several_error = None
            except PublishError as exc:
                several_error = exc.status, exc.error
            publish(url, KEY, "room", text="five")  # to all: b's next is this one
            return ([a.recv(timeout=5) for _ in range(3)],
                    [b.recv(timeout=5) for _ in range(3)],
                    [c.recv(timeout=5) for _ in range(5)], refusals, client_error,
                    several_error)

    try:
        got_a, got_b, got_c, refusals, client_error, several_error = await in_thread(flow)
    finally:
        await server.stop()
    assert got_a == ["three", "event four", "five"]
    assert got_b == ['{"n": 1}', "three", "five"]
    assert got_c == ['{"n": 1}', "two", "three", "event four", "five"]
    assert [status for status, _, _ in refusals] == [400, 400, 400]
    errors = [json.loads(body)["error"] for _, _, body in refusals]
    assert errors[0] == ("group_send(exclude=...) is not for history group 'kept.1': its "
                         "members recover every message it keeps")
    assert errors[1] == "'exclude' must be a list of channel names"
    assert errors[2].startswith("'exclude': channel name must be")
    assert client_error == (400, errors[0])
    assert several_error == (400, errors[0])
