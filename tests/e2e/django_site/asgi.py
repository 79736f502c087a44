"""The application: Django's views over HTTP, consumers over WebSocket behind realtime's
``AuthMiddlewareStack``, as a Channels project's ``asgi.py`` with its imports changed."""

from __future__ import annotations

import json
import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.django_site.settings")

import django

django.setup()

from realtime import (  # noqa: E402
    AsyncHttpConsumer,
    AsyncWebsocketConsumer,
    ProtocolTypeRouter,
    URLRouter,
    WebsocketConsumer,
    path,
)
from realtime.auth import AuthMiddleware, AuthMiddlewareStack, User, login, logout  # noqa: E402
from realtime.cookies import CookieMiddleware  # noqa: E402
from realtime.db import database_sync_to_async  # noqa: E402
from realtime.sessions import SessionMiddleware, SessionMiddlewareStack  # noqa: E402


def describe(scope: dict[str, Any]) -> dict[str, Any]:
    user = scope["user"]
    return {"user": user.username if user.is_authenticated else None,
            "kind": f"{type(user).__module__}.{type(user).__name__}",
            "key": scope["session"].session_key}


def connection_state() -> dict[str, Any]:
    """In a worker thread: was this thread's connection open at entry? Then a query."""
    from django.contrib.auth.models import User
    from django.db import connection

    open_at_entry = connection.connection is not None
    return {"open_at_entry": open_at_entry, "users": User.objects.count()}


class Who(AsyncWebsocketConsumer):
    """``/ws/who``: the socket's user; ``login NAME``, ``logout``, ``seen VALUE`` (a
    session change saved as Channels' docs save it)."""

    async def connect(self) -> None:
        query = self.scope["query_string"].decode()
        name = query.partition("login=")[2]
        if name:  # a login before accept: the 101 carries the new session cookie
            await login(self.scope, await self.user(name))
        if query == "logout":  # a logout before accept: the 101 deletes the cookie
            await logout(self.scope)
        await self.accept()
        await self.send(text_data=json.dumps(describe(self.scope)))

    async def user(self, name: str) -> Any:
        from django.contrib.auth.models import User

        return (await database_sync_to_async(User.objects.get_or_create)(username=name))[0]

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        command, _, arg = (text_data or "").partition(" ")
        if command == "login":
            await login(self.scope, await self.user(arg))
        elif command == "logout":
            await logout(self.scope)
        elif command == "seen":
            self.scope["session"]["seen"] = arg
            await database_sync_to_async(self.scope["session"].save)()
        await self.send(text_data=json.dumps(describe(self.scope)))


class Bare(AsyncWebsocketConsumer):
    """``/ws/bare``: sessions without AuthMiddleware (no ``scope["user"]``): ``logout``."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        await logout(self.scope)
        await self.send(text_data=json.dumps({"user": type(self.scope["user"]).__name__,
                                              "key": self.scope["session"].session_key}))


async def load_user(user_id: str) -> Any:
    return User(user_id, source="loader")


class Loader(AsyncWebsocketConsumer):
    """``/ws/loader``: Django's sessions with realtime's ``user_loader`` users."""

    async def connect(self) -> None:
        await self.accept()
        user = self.scope["user"]
        await self.send(text_data=json.dumps({"id": user.id,
                                              "source": getattr(user, "source", None)}))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        await login(self.scope, User(text_data))
        await self.send(text_data=json.dumps({"key": self.scope["session"].session_key}))


class ThreadedDb(WebsocketConsumer):
    """``/ws/threaded``: a Channels-style sync consumer using the ORM in its thread."""

    thread_handlers = True

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.send(text_data=json.dumps(connection_state()))


class AsyncDb(AsyncWebsocketConsumer):
    """``/ws/async``: the ORM through ``database_sync_to_async``."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        state = await database_sync_to_async(connection_state)()
        await self.send(text_data=json.dumps(state))


class ConsumerLogin(AsyncHttpConsumer):
    """``/consumer-login/?name=NAME`` (under the default reactor): an HTTP consumer's
    Django login, whose response carries Django's cookie."""

    async def handle(self, body: bytes) -> None:
        from django.contrib.auth.models import User

        name = self.scope["query_string"].decode().partition("name=")[2]
        if name:
            user = (await database_sync_to_async(User.objects.get_or_create)(
                username=name))[0]
        if name:
            await login(self.scope, user)
        else:  # a plain session change: saved before the head, its cookie in it
            self.scope["session"]["seen"] = "http"
        await self.send_response(200, json.dumps(describe(self.scope)).encode(),
                                 headers=[(b"Content-Type", b"application/json")])


websocket = URLRouter([
    path("ws/who", AuthMiddlewareStack(Who.as_asgi())),
    path("ws/threaded", AuthMiddlewareStack(ThreadedDb.as_asgi())),
    path("ws/async", AuthMiddlewareStack(AsyncDb.as_asgi())),
    path("ws/bare", SessionMiddlewareStack(Bare.as_asgi())),
    path("ws/loader", CookieMiddleware(SessionMiddleware(AuthMiddleware(Loader.as_asgi(),
                                                                         load_user)))),
])

if os.environ.get("SITE_HTTP") == "django":  # Django's views need --reactor=asyncio
    from django.core.asgi import get_asgi_application

    application: Any = ProtocolTypeRouter({"http": get_asgi_application(),
                                           "websocket": websocket})
else:
    application = ProtocolTypeRouter({
        "http": AuthMiddlewareStack(URLRouter([path("consumer-login/",
                                                     ConsumerLogin.as_asgi())])),
        "websocket": websocket,
    })
