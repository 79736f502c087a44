"""``--max-connections-per-user``: a signed-in user (here from a JWT) has at most so many
WebSockets open in the process; the next handshake gets 429 as the consumer accepts, a
closed socket frees its place, and anonymous users and other users are not held back.
A real server and the ``websockets`` client."""

from __future__ import annotations

import time

import jwt
import pytest
import pytest_twisted
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from realtime import AsyncWebsocketConsumer
from realtime.site import user_key
from realtime.tokens import TokenAuthMiddleware, key_from_text
from tests.clients import in_thread, until

SECRET = "u" * 40


class Hello(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()
        await self.send(text_data="hello")


APP = TokenAuthMiddleware(Hello.as_app(), keys=[key_from_text(SECRET)])


def url(server, sub=None):
    if sub is None:
        return server.ws_url("/")
    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    return server.ws_url("/") + "?token=" + token


def opened(address):
    """An open client (the caller closes it), or the refusal's status."""
    try:
        ws = connect(address, open_timeout=5, proxy=None).__enter__()
    except InvalidStatus as exc:
        return exc.response.status_code
    assert ws.recv(timeout=5) == "hello"
    return ws


@pytest_twisted.ensureDeferred
async def test_a_user_past_the_limit_gets_429_and_a_closed_socket_frees_a_place(live):
    server = await live(APP, max_connections_per_user=2)

    def flow():
        ada1, ada2 = opened(url(server, "ada")), opened(url(server, "ada"))
        third = opened(url(server, "ada"))
        bob = opened(url(server, "bob"))
        anonymous = [opened(url(server)) for _ in range(3)]
        ada1.close()
        return ada2, third, bob, anonymous

    ada2, third, bob, anonymous = await in_thread(flow)
    try:
        assert third == 429
        assert not isinstance(bob, int) and all(not isinstance(a, int) for a in anonymous)
        # ada1's close frees its place (the third was never counted).
        assert await until(lambda: server.site.per_user == {"str:ada": 1, "str:bob": 1},
                           timeout=5)
        again = await in_thread(opened, url(server, "ada"))
        assert not isinstance(again, int)  # ada1's place is free again
        await in_thread(again.close)  # (a client's close waits for the reactor's answer)
    finally:
        for ws in [ada2, bob, *anonymous]:
            await in_thread(ws.close)
    assert await until(lambda: server.site.per_user == {}, timeout=5)


def test_who_counts_as_a_user():
    from realtime.auth import AnonymousUser, User

    assert user_key(User("ada")) == "str:ada"
    assert user_key(User(7)) == "int:7"
    assert user_key(AnonymousUser()) is None and user_key(None) is None

    class DjangoLike:
        is_authenticated = True
        pk = 5

    assert user_key(DjangoLike()) == "int:5"


def test_a_negative_limit_is_refused():
    from realtime.config import ServerConfig

    with pytest.raises(ValueError, match="max_connections_per_user must not be negative"):
        ServerConfig(max_connections_per_user=-1)
