"""Server-side disconnect: ``layer.group_close(group, code, reason)`` and ``POST
/api/disconnect`` close every member of a group in every process (Centrifugo's disconnect,
Socket.IO's ``disconnectSockets``). On both layers (two Redis layers on a real redis-server
stand for two processes), and with real clients against live servers."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from realtime import AsyncHttpConsumer, AsyncWebsocketConsumer, URLRouter, path
from realtime.layers import InMemoryChannelLayer
from tests.clients import http_get, in_thread
from tests.test_layers import until
from tests.test_layers_redis import Probe, two_layers  # noqa: F401 (fixture)

KEY = "k" * 32


class Closable(Probe):
    def __init__(self) -> None:
        super().__init__()
        self.closes: list[tuple[int, str | None]] = []

    def close_from_layer(self, code: int, reason: str | None) -> None:
        self.closes.append((code, reason))


@pytest_twisted.ensureDeferred
async def test_group_close_closes_every_member_and_no_one_else(layer):
    a, b, other = Closable(), Closable(), Closable()
    ca, cb, co = layer.attach(a), layer.attach(b), layer.attach(other)
    await layer.group_add("user.42", ca)
    await layer.group_add("user.42", cb)
    await layer.group_add("user.7", co)
    await layer.group_close("user.42", 4003, "logged out")
    await until(lambda: len(a.closes) == 1 and len(b.closes) == 1)
    assert a.closes == b.closes == [(4003, "logged out")]
    assert other.closes == []
    await layer.group_close("nobody")  # an empty group: nothing to do, no error
    await layer.group_close("user.7")
    await until(lambda: other.closes == [(1000, None)])


@pytest.mark.parametrize("code, reason, error", [
    (1001, None, ValueError), (2999, None, ValueError), (5000, None, ValueError),
    (True, None, ValueError), ("4000", None, ValueError), (4000, b"bytes", ValueError),
])
@pytest_twisted.ensureDeferred
async def test_group_close_refuses_codes_an_application_may_not_send(code, reason, error):
    layer = InMemoryChannelLayer()
    with pytest.raises(error):
        await layer.group_close("g", code, reason)
    with pytest.raises(TypeError):
        await layer.group_close("no spaces", 4000)


@pytest_twisted.ensureDeferred
async def test_group_close_reaches_members_in_other_processes(two_layers):  # noqa: F811
    one, two = await two_layers(), await two_layers()
    here, there = Closable(), Closable()
    await one.group_add("user.1", one.attach(here))
    await two.group_add("user.1", two.attach(there))
    await one.group_close("user.1", 4001, "session revoked")
    await until(lambda: here.closes and there.closes, timeout=5)
    assert here.closes == there.closes == [(4001, "session revoked")]


class Member(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope["url_route"]["kwargs"]["user"]
        await self.channel_layer.group_add("user." + user, self.channel_name)
        await self.accept()
        await self.send(text_data="joined")

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


class Stream(AsyncHttpConsumer):
    """Server-sent events for a user, until the server closes the group."""

    groups = ["user.ada"]

    async def handle(self, body: bytes) -> None:
        await self.send_headers(headers=[(b"Content-Type", b"text/event-stream")])
        await self.send_body(b"data: open\n\n", more_body=True)


APP = URLRouter([path("ws/<slug:user>", Member.as_asgi()), path("events", Stream.as_asgi())])


def open_member(server: Any, user: str) -> Any:
    ws = connect(server.ws_url(f"/ws/{user}")).__enter__()
    assert ws.recv(timeout=5) == "joined"
    return ws


def closed_with(ws: Any) -> tuple[list[str], int, str]:
    """What the client got before the close, and the close's code and reason."""
    got = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            got.append(ws.recv(timeout=5))
    return got, closed.value.rcvd.code, closed.value.rcvd.reason


@pytest_twisted.ensureDeferred
async def test_api_disconnect_closes_a_users_sockets_after_what_was_sent_before(live):
    server = await live(APP, api_keys=(KEY,))
    layer = server.site.layer
    url = server.http_url("/api/disconnect")
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def clients() -> Any:
        ada1, ada2, bob = (open_member(server, "ada"), open_member(server, "ada"),
                           open_member(server, "bob"))
        return ada1, ada2, bob

    ada1, ada2, bob = await in_thread(clients)
    # A message, then the close: the member gets the message first.
    layer.group_send("user.ada", {"type": "chat.message", "text": "last words"})
    status, _, body = await in_thread(
        http_get, url, json.dumps({"group": "user.ada", "code": 4003,
                                   "reason": "logged out"}).encode(), None, auth)
    assert status == 200 and json.loads(body) == {"ok": True, "group": "user.ada"}
    first = await in_thread(closed_with, ada1)
    second = await in_thread(closed_with, ada2)
    assert first == second == (["last words"], 4003, "logged out")

    def bob_still_there() -> str:
        bob.send("ping")  # nothing answers it; the socket is open
        layer.group_send("user.bob", {"type": "chat.message", "text": "still here"})
        text = bob.recv(timeout=5)
        bob.close()
        return text

    assert await in_thread(bob_still_there) == "still here"


@pytest_twisted.ensureDeferred
async def test_api_disconnect_checks_its_body_and_key(live):
    server = await live(APP, api_keys=(KEY,))
    url = server.http_url("/api/disconnect")
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def post(body: bytes, headers: Any = auth) -> tuple[int, Any]:
        status, _, answer = http_get(url, body, None, headers)
        return status, json.loads(answer)

    def flow() -> list[Any]:
        return [post(b'{"group": "g", "code": 1001}'),
                post(b'{"group": "g", "reason": 7}'),
                post(b'{"code": 4000}'),
                post(b'{"group": "g"}', {}),
                post(b'{"group": "g"}')]

    bad_code, bad_reason, no_group, no_key, ok = await in_thread(flow)
    from realtime.client import PublishError, disconnect

    assert await in_thread(lambda: disconnect(server.http_url("/"), KEY, "g", code=4000,
                                              reason="bye")) == {"ok": True, "group": "g"}
    with pytest.raises(PublishError, match="3000-4999"):
        await in_thread(lambda: disconnect(server.http_url("/"), KEY, "g", code=1011))
    assert bad_code == (400, {"error": "close code must be 1000 or 3000-4999, not 1001"})
    assert bad_reason[0] == 400 and "reason" in bad_reason[1]["error"]
    assert no_group[0] == 400
    assert no_key[0] == 401
    assert ok == (200, {"ok": True, "group": "g"})


@pytest_twisted.ensureDeferred
async def test_group_close_ends_an_event_stream(live):
    from twisted.internet import reactor

    server = await live(APP)

    def stream() -> bytes:
        import urllib.request

        with urllib.request.urlopen(server.http_url("/events"), timeout=5) as response:
            first = response.readline()
            response.readline()
            reactor.callFromThread(server.site.layer.group_close, "user.ada")
            return first + response.read()  # read() returns once the response has ended

    assert await in_thread(stream) == b"data: open\n"


class Slow(AsyncWebsocketConsumer):
    """A member whose handlers wait: ``chat.message`` a moment, ``stuck`` for ever."""

    async def connect(self) -> None:
        await self.channel_layer.group_add("user.slow", self.channel_name)
        await self.accept()
        await self.send(text_data="joined")

    async def chat_message(self, event: dict[str, Any]) -> None:
        from tests.clients import later

        await later(0.2)
        await self.send(text_data=event["text"])

    async def stuck(self, event: dict[str, Any]) -> None:
        from twisted.internet.defer import Deferred

        await Deferred()  # never fires: cancelled once the socket is closed


SLOW = URLRouter([path("slow", Slow.as_asgi())])


@pytest_twisted.ensureDeferred
async def test_the_close_waits_for_a_handler_that_is_sending_what_came_before(live):
    server = await live(SLOW)
    ws = await in_thread(lambda: open_member_at(server, "/slow"))
    layer = server.site.layer
    layer.group_send("user.slow", {"type": "chat.message", "text": "one"})
    layer.group_send("user.slow", {"type": "chat.message", "text": "two"})
    await layer.group_close("user.slow", 4003, "bye")
    assert await in_thread(closed_with, ws) == (["one", "two"], 4003, "bye")


@pytest_twisted.ensureDeferred
async def test_a_handler_that_hangs_does_not_keep_the_socket_open(live):
    server = await live(SLOW, application_close_timeout=0.5)
    ws = await in_thread(lambda: open_member_at(server, "/slow"))
    layer = server.site.layer
    layer.group_send("user.slow", {"type": "stuck"})
    await layer.group_close("user.slow", 4003, "banned")
    assert await in_thread(closed_with, ws) == ([], 4003, "banned")


def open_member_at(server: Any, where: str) -> Any:
    ws = connect(server.ws_url(where)).__enter__()
    assert ws.recv(timeout=5) == "joined"
    return ws
