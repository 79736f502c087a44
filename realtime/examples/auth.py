"""Who is on the socket: a signed session cookie, or a JWT.

    twistd -n --pidfile= realtime --app realtime.examples.auth:application \\
        --secret-key "$(openssl rand -hex 32)" --jwt-key "$(openssl rand -hex 32)"

- ``GET /login?name=ada`` signs ``ada`` in (the session cookie comes back);
  ``GET /logout`` signs out;
- ``/ws/greet`` greets the session's user, and refuses (403) an anonymous visitor;
- ``/ws/token`` needs a JWT (``Authorization: Bearer``, ``?token=`` or a ``bearer.<jwt>``
  subprotocol; 401 without one) and greets its ``sub``; 10 s before the token expires (or
  half its time left, for a shorter one) it says ``token expiring at EXP``;
  ``refresh <jwt>`` (a new token for the same user) keeps the socket open past it, else
  it closes with 4001.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from realtime import (
    AsyncHttpConsumer,
    AsyncWebsocketConsumer,
    ProtocolTypeRouter,
    URLRouter,
    path,
)
from realtime.auth import AuthMiddlewareStack, User, login, logout
from realtime.tokens import InvalidToken, TokenAuthMiddleware


class Login(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        query = parse_qs(self.scope["query_string"].decode("latin-1"))
        name = (query.get("name") or [""])[0]
        if not name.isalnum():
            await self.send_response(400, b"name must be letters and digits\n")
            return
        await login(self.scope, User(name))
        await self.send_response(200, f"signed in as {name}\n".encode(),
                                 headers=[(b"content-type", b"text/plain")])


class Logout(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        await logout(self.scope)
        await self.send_response(200, b"signed out\n", headers=[(b"content-type", b"text/plain")])


class Greeter(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user: Any = self.scope["user"]
        if not user.is_authenticated:
            await self.close()  # before accept: 403
            return
        await self.accept()
        await self.send(text_data=f"hello, {user.id}")


class TokenGreeter(AsyncWebsocketConsumer):
    token_expiring_ahead = 10.0

    async def connect(self) -> None:
        await self.accept()
        await self.send(text_data=f"hello, {self.scope['user'].claims.get('sub')}")

    async def token_expiring(self, event: dict[str, Any]) -> None:
        # The socket closes with 4001 at expires_at unless the client sends a new token.
        await self.send(text_data=f"token expiring at {event['expires_at']:.0f}")

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        if text_data and text_data.startswith("refresh "):  # "refresh <jwt>", in-band
            try:
                claims = await self.refresh_token(text_data.removeprefix("refresh "))
            except InvalidToken as exc:
                await self.send(text_data=f"refresh refused: {exc}")
            else:
                await self.send(text_data=f"refreshed until {claims.get('exp')}")


application = ProtocolTypeRouter(
    {
        "http": AuthMiddlewareStack(
            URLRouter([path("login", Login.as_app()), path("logout", Logout.as_app())])
        ),
        "websocket": URLRouter(
            [
                path("ws/greet", AuthMiddlewareStack(Greeter.as_app())),
                path("ws/token", TokenAuthMiddleware(TokenGreeter.as_app(), required=True)),
            ]
        ),
    }
)
