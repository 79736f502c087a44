"""In-band token refresh (``refresh_token``, ``token_expiring``): a live socket takes a new
JWT for its own user and stays open past the old one's ``exp``; anything else leaves the
old expiry standing. On a fake clock (the communicator) and on a real server with the
``websockets`` client."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
import pytest_twisted
from twisted.internet.task import Clock
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from realtime import AsyncWebsocketConsumer, URLRouter, WebsocketConsumer, path
from realtime.settings import configure, reset
from realtime.testing import WebsocketCommunicator, serve
from realtime.tokens import InvalidToken, TokenAuthMiddleware, key_from_text, verify
from tests.clients import in_thread

SECRET = "r" * 40


@pytest.fixture(autouse=True)
def _settings():
    configure(jwt_keys=[key_from_text(SECRET)])
    yield
    reset()


def token(sub: str | None = "ada", exp: float | None = None, key: str = SECRET,
          **claims: Any) -> str:
    body: dict[str, Any] = dict(claims)
    if sub is not None:
        body["sub"] = sub
    if exp is not None:
        body["exp"] = int(exp)
    return jwt.encode(body, key, algorithm="HS256")


class Refresher(AsyncWebsocketConsumer):
    """Says what happened to each ``refresh <jwt>``, and when the token is expiring."""

    token_expiring_ahead = 30.0

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        assert text_data is not None
        if text_data.startswith("refresh "):
            try:
                claims = await self.refresh_token(text_data.removeprefix("refresh "))
            except InvalidToken as exc:
                await self.send(text_data=f"refused: {exc}")
            else:
                user = self.scope["user"]
                await self.send(text_data=f"ok {claims.get('exp')} {user.claims.get('role')}")
        else:
            await self.send(text_data=f"echo {text_data}")

    async def token_expiring(self, event: dict[str, Any]) -> None:
        await self.send(text_data=f"expiring {event['expires_at']:.0f}")


def app(clock: Any = None, consumer: Any = Refresher, **options: Any) -> Any:
    return URLRouter([path("t", TokenAuthMiddleware(consumer.as_app(**options),
                                                    clock=clock))])


async def opened(clock: Clock, tok: str, **options: Any) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(app(clock, **options), f"/t?token={tok}", clock=clock)
    assert (await comm.connect())[0]
    return comm


def at(when: float) -> Clock:
    clock = Clock()
    clock.advance(when)
    return clock


@pytest_twisted.ensureDeferred
async def test_a_refreshed_socket_outlives_the_first_token_and_closes_at_the_new_exp():
    clock = at(1000)
    comm = await opened(clock, token(exp=1060))
    clock.advance(40)
    assert await comm.receive_from() == "expiring 1060"  # at 1030
    await comm.send_to(text_data="refresh " + token(exp=1200, role="admin"))
    assert await comm.receive_from() == "ok 1200 admin"  # the new claims are the user's
    clock.advance(100)  # 1140: past the first exp
    assert comm.close_code is None
    await comm.send_to(text_data="still")
    assert await comm.receive_from() == "echo still"
    clock.advance(59)
    assert comm.close_code is None
    clock.advance(1)
    assert (comm.close_code, comm.close_reason) == (4001, "token expired")


@pytest_twisted.ensureDeferred
async def test_token_expiring_is_told_ahead_and_again_after_a_refresh():
    clock = at(1000)
    comm = await opened(clock, token(exp=1100))
    clock.advance(69)
    assert await comm.receive_nothing()
    clock.advance(1)  # 30 s before 1100
    assert await comm.receive_from() == "expiring 1100"
    await comm.send_to(text_data="refresh " + token(exp=1400))
    assert await comm.receive_from() == "ok 1400 None"
    clock.advance(299)  # 1369: not yet
    assert await comm.receive_nothing()
    clock.advance(1)
    assert await comm.receive_from() == "expiring 1400"
    await comm.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_short_token_is_told_at_half_its_time_left():
    clock = at(1000)
    comm = await opened(clock, token(exp=1010))  # 10 s: ahead is 5, not 30
    clock.advance(4.9)
    assert await comm.receive_nothing()
    clock.advance(0.1)
    assert await comm.receive_from() == "expiring 1010"
    clock.advance(5)
    assert comm.close_code == 4001
    # The close's reply came back at once: no close deadline is left behind to fire on a
    # connection that is over (it raised AlreadyCalledError from Autobahn's dropConnection).
    clock.advance(30)
    assert not clock.getDelayedCalls()


@pytest.mark.parametrize("bad, reason", [
    (lambda: token(sub="eve", exp=1500), "token is for another user"),
    (lambda: token(exp=900), "token expired"),
    (lambda: token(exp=1500, key="x" * 40), "bad signature"),
    (lambda: "not.a.jwt", "malformed token"),
    (lambda: jwt.encode({"sub": "ada", "exp": 1500}, None, algorithm="none"),
     "no key for this token's algorithm"),
])
@pytest_twisted.ensureDeferred
async def test_a_refused_refresh_leaves_the_old_expiry_standing(bad, reason):
    clock = at(1000)
    comm = await opened(clock, token(exp=1060, role="user"))
    await comm.send_to(text_data="refresh " + bad())
    assert await comm.receive_from() == f"refused: {reason}"
    await comm.send_to(text_data="who")
    assert await comm.receive_from() == "echo who"
    clock.advance(60)
    assert (comm.close_code, comm.close_reason) == (4001, "token expired")


@pytest_twisted.ensureDeferred
async def test_a_token_without_exp_ends_the_expiry():
    clock = at(1000)
    comm = await opened(clock, token(exp=1060))
    await comm.send_to(text_data="refresh " + token())
    assert await comm.receive_from() == "ok None None"
    clock.advance(10_000)
    assert comm.close_code is None
    await comm.disconnect()


@pytest_twisted.ensureDeferred
async def test_an_anonymous_socket_cannot_refresh_into_a_user():
    """``required=False`` lets a socket in without a token; a refresh must not sign it in."""
    clock = at(1000)
    application = URLRouter([path("t", TokenAuthMiddleware(Refresher.as_app(), clock=clock,
                                                           required=False))])
    comm = WebsocketCommunicator(application, "/t", clock=clock)
    assert (await comm.connect())[0]
    await comm.send_to(text_data="refresh " + token(exp=1500))
    assert await comm.receive_from() == "refused: this connection was not opened with a token"
    await comm.disconnect()


@pytest_twisted.ensureDeferred
async def test_without_token_middleware_refresh_token_says_what_is_missing():
    class Bare(AsyncWebsocketConsumer):
        async def receive(self, text_data: Any = None, bytes_data: Any = None) -> None:
            try:
                await self.refresh_token("x")
            except RuntimeError as exc:
                await self.send(text_data=str(exc))

    comm = WebsocketCommunicator(Bare.as_app(), "/")
    assert (await comm.connect())[0]
    await comm.send_to(text_data="go")
    assert "needs TokenAuthMiddleware" in await comm.receive_from()
    await comm.disconnect()


class ThreadedRefresher(WebsocketConsumer):
    """A sync consumer whose handlers run in the thread pool: the timers still move."""

    thread_handlers = True

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            claims = self.refresh_token(str(text_data))
        except InvalidToken as exc:
            self.send(text_data=f"refused: {exc}")
        else:
            self.send(text_data=f"ok {claims['exp']}")


@pytest_twisted.ensureDeferred
async def test_a_threaded_sync_consumer_refreshes_on_a_real_server():
    """A real server and client, real time: a 2-second token refreshed from a worker
    thread keeps the socket open past it; the new token's exp then closes it with 4001."""
    now = time.time()
    server = await serve(app(consumer=ThreadedRefresher))
    try:
        def client() -> tuple[str, str, float, Any]:
            with connect(server.ws_url(f"/t?token={token(exp=now + 2)}")) as ws:
                ws.send(token(exp=now + 4))
                first = ws.recv(timeout=5)
                time.sleep(max(0.0, now + 2.5 - time.time()))
                ws.send(token(sub="eve", exp=now + 60))  # past the first exp: still open
                second = ws.recv(timeout=5)
                try:
                    ws.recv(timeout=10)
                except ConnectionClosed as exc:
                    rcvd = exc.rcvd
                    return first, second, time.time(), (rcvd.code, rcvd.reason) if rcvd else None
                return first, second, time.time(), "no close"

        first, second, closed_at, close = await in_thread(client)
    finally:
        await server.stop()
    assert first == f"ok {int(now + 4)}"
    assert second == "refused: token is for another user"
    assert close == (4001, "token expired")
    assert closed_at >= int(now + 4) - 0.1  # the second token's exp, not the first's


@pytest.mark.parametrize("first, second, reason", [
    ({"uid": "alice"}, {"uid": "mallory", "role": "admin"},
     "token has no sub: it cannot be matched to this connection"),
    ({"sub": "ada", "iss": "https://a.example"}, {"sub": "ada", "iss": "https://b.example"},
     "token is for another user"),
])
@pytest_twisted.ensureDeferred
async def test_a_refresh_needs_the_same_subject_from_the_same_issuer(first, second, reason):
    """Tokens without ``sub`` match nobody (they would let any such token in), and the
    same ``sub`` from another issuer is another user."""
    clock = at(1000)
    comm = await opened(clock, token(**{"sub": None, "exp": 1060, **first}))
    await comm.send_to(text_data="refresh " + token(**{"sub": None, "exp": 1500, **second}))
    assert await comm.receive_from() == f"refused: {reason}"
    clock.advance(60)
    assert comm.close_code == 4001


@pytest.mark.parametrize("text", ["e\u00e9.x.y", json.loads('"a\\ud800.b.c"')])
def test_a_token_that_is_not_ascii_is_malformed_not_a_crash(text):
    """A JWT is base64url. A lone surrogate (``json.loads`` makes one from a JSON client's
    ``"\\ud800"``) cannot even be encoded: ``InvalidToken``, not ``UnicodeEncodeError``."""
    with pytest.raises(InvalidToken, match="malformed token"):
        verify(text, [key_from_text(SECRET)], now=1000.0)


class SlowRefresher(AsyncWebsocketConsumer):
    """Takes 5 s (on the test's clock) before each refresh, or runs into the close."""

    clock: Any = None
    told: Any = None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        from twisted.internet.task import deferLater

        assert text_data is not None
        await deferLater(self.clock, 5, lambda: None)
        try:
            claims = await self.refresh_token(text_data)
        except Exception as exc:
            self.told.append(f"{type(exc).__name__}: {exc}")
        else:
            self.told.append(f"ok {claims['exp']}")

    async def token_expiring(self, event: dict[str, Any]) -> None:
        self.told.append(f"expiring {event['expires_at']:.0f}")


async def slow(clock: Clock, tok: str, told: list[str]) -> WebsocketCommunicator:
    consumer = SlowRefresher.as_app(clock=clock, told=told)
    application = TokenAuthMiddleware(consumer, clock=clock)
    comm = WebsocketCommunicator(application, f"/?token={tok}", clock=clock)
    assert (await comm.connect())[0]
    return comm


@pytest_twisted.ensureDeferred
async def test_a_warning_queued_behind_a_refresh_is_not_given_for_the_old_expiry():
    clock = at(1000)
    told: list[str] = []
    comm = await slow(clock, token(exp=1060), told)
    clock.advance(28)
    await comm.send_to(text_data=token(exp=1200))
    clock.advance(2)  # 1030: the warning comes while the handler waits, and queues
    clock.advance(3)  # 1033: the refresh is done, then the queued warning's turn
    assert told == ["ok 1200"]
    clock.advance(137)  # 1170: 30 s before the new exp
    assert told == ["ok 1200", "expiring 1200"]
    await comm.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_refresh_after_the_close_raises_and_no_warning_comes_after_it():
    clock = at(1000)
    told: list[str] = []
    comm = await slow(clock, token(exp=1004), told)
    await comm.send_to(text_data=token(exp=2000))
    clock.advance(4)  # 4001 while the handler waits (its warning, at 1002, queued)
    assert comm.close_code == 4001
    clock.advance(10)
    assert told == ["ConnectionClosed: refresh_token() on a WebSocket that is closing or closed"]
    assert not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_a_refresh_that_reached_the_scope_before_the_old_timer_ran_stands():
    """A ``thread_handlers`` consumer's refresh changes the scope in its thread and moves
    the timers on the reactor thread after: if the old expiry's timer runs in between, it
    finds the new expiry and follows it instead of closing."""
    clock = at(1000)
    comm = await opened(clock, token(exp=1060))
    conn = comm._connection()
    verifier = conn.scope["realtime.token_auth"]
    verifier.refresh(conn.scope, token(exp=1200))  # the timers not moved yet
    clock.advance(60)
    assert comm.close_code is None
    clock.advance(140)
    assert comm.close_code == 4001


def test_token_expiring_ahead_must_be_seconds():
    with pytest.raises(TypeError, match="token_expiring_ahead must be seconds"):
        type("Bad", (AsyncWebsocketConsumer,), {"token_expiring_ahead": "30"})
