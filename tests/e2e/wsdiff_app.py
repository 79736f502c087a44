r"""One Channels application served by both Daphne and realtime for
tests/e2e/test_ws_vs_daphne.py: the same consumer classes, their imports taken from
Channels (``WSDIFF_FLAVOUR=channels``, under Daphne) or from realtime (anything else), as
README "Porting from Channels" promises a project ports.

Django is configured here for both (no database: signed-cookie sessions, anonymous users;
Channels' ``InMemoryChannelLayer``), so ``AuthMiddlewareStack`` and
``AllowedHostsOriginValidator`` read the same Django settings under either server.

Each connection with an ``X-Row: NAME`` header (a WebSocket handshake, or an HTTP request
to ``/http/``) leaves what the application saw in ``SEEN[NAME]``: its scope, then its events
in order (``connect``, ``receive``, ``json``, layer events, what a send raised,
``disconnect`` with its code); ``GET /seen/NAME`` answers it as JSON (404 while there is
none). The WebSocket routes (``MODE`` says what ``connect()`` does: ``AsyncEcho.connect``):

- ``ws/sync/MODE/``, ``ws/async/MODE/``: ``WebsocketConsumer``, ``AsyncWebsocketConsumer``:
  text is echoed unless it is a command (``!close CODE REASON``, ``!raise``, ``!leave G``,
  ``!gs G TYPE TEXT``, ...: ``AsyncEcho.command``), bytes are echoed.
- ``ws/json/``, ``ws/ajson/``: the JSON consumers, echoing what they decode.
- ``ws/raw/MODE/``: a raw ASGI application.
- ``ws/room/ROOM/``: joins ``room.ROOM`` (``groups`` holds ``lobby`` too).
- ``ws/tutorial/ROOM/``: Channels' tutorial chat consumer (a sync consumer that calls the
  layer through ``async_to_sync``: threaded by itself); ``ws/threaded/ROOM/``: the same
  with ``thread_handlers = True`` said.
- ``ws/route/<int:n>/<path:rest>``, ``ws/uuid/<uuid:u>/``, ``re_path``'s
  ``^ws/re/(?P<word>[^/]+)/$`` and ``^ws/positional/(\d+)/(\w+)/$``: captures.
- ``ws/auth/``: behind ``AuthMiddlewareStack``; ``ws/hosts/``: behind
  ``AllowedHostsOriginValidator``; ``ws/origin/``: behind ``OriginValidator`` for
  ``http://good.example`` and ``.trusted.example``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from tests.e2e.diffapp import describe as common
from tests.e2e.diffapp import file_by_row, send_json, send_record, text

FLAVOUR = os.environ.get("WSDIFF_FLAVOUR", "realtime")

import django  # noqa: E402
from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        DEBUG=False, SECRET_KEY="tests-only-" + "w" * 40,
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "allowed.example"],
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                        "django.contrib.sessions"],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        DATABASES={}, USE_TZ=True, ROOT_URLCONF=__name__,
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}})
    django.setup()

urlpatterns: list[Any] = []

if FLAVOUR == "channels":
    from asgiref.sync import async_to_sync
    from channels.auth import AuthMiddlewareStack
    from channels.exceptions import AcceptConnection, DenyConnection, StopConsumer
    from channels.generic.websocket import (
        AsyncJsonWebsocketConsumer,
        AsyncWebsocketConsumer,
        JsonWebsocketConsumer,
        WebsocketConsumer,
    )
    from channels.layers import get_channel_layer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from channels.security.websocket import AllowedHostsOriginValidator, OriginValidator
    from django.urls import path, re_path
else:
    from realtime import (
        AcceptConnection,
        AsyncJsonWebsocketConsumer,
        AsyncWebsocketConsumer,
        DenyConnection,
        JsonWebsocketConsumer,
        ProtocolTypeRouter,
        StopConsumer,
        URLRouter,
        WebsocketConsumer,
        async_to_sync,
        path,
        re_path,
    )
    from realtime.auth import AuthMiddlewareStack
    from realtime.layers import get_channel_layer
    from realtime.origins import AllowedHostsOriginValidator, OriginValidator

#: What each ``X-Row`` connection saw, by row name (the process's own: one per server).
SEEN: dict[str, dict[str, Any]] = {}
#: Channel names by label (``!register``), so a row can address one without seeing it.
NAMES: dict[str, str] = {}


def shown(value: str) -> str:
    """Text as a record holds it: short as it is, long by size and digest."""
    return value if len(value) <= 64 else payload(value.encode())


def payload(data: bytes) -> str:
    """Bytes as a record holds them: short ones as latin-1, long ones by size and digest."""
    if len(data) <= 64:
        return text(data)
    return f"{len(data)} bytes, sha1 {hashlib.sha1(data).hexdigest()[:12]}"


def _value(value: Any) -> Any:
    """A captured value in JSON: a converter's objects (``uuid.UUID``) by type and text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return f"{type(value).__name__}({value})"


def describe(scope: dict[str, Any]) -> dict[str, Any]:
    """The scope in JSON (``diffapp.describe``), with what Channels adds (routing, user,
    session) and the subprotocols."""
    route = scope.get("url_route")
    user = scope.get("user")
    return {
        **common(scope),
        "subprotocols": list(scope["subprotocols"]) if "subprotocols" in scope else None,
        "url_route": None if route is None else {
            "args": [_value(v) for v in route.get("args", ())],
            "kwargs": {k: _value(v) for k, v in route.get("kwargs", {}).items()}},
        "path_remaining": scope.get("path_remaining"),
        "user": None if user is None else {
            "authenticated": bool(user.is_authenticated), "anonymous": bool(user.is_anonymous)},
        "session": None if "session" not in scope else sorted(scope["session"].keys()),
    }


def record_for(scope: dict[str, Any]) -> dict[str, Any]:
    """A new record of this connection under its ``X-Row`` (a throwaway one without)."""
    record: dict[str, Any] = {"scope": describe(scope), "events": []}
    return file_by_row(SEEN, scope, record)


def note(record: dict[str, Any], *event: Any) -> None:
    record["events"].append(list(event))


# -- the consumers: one body, Channels' or realtime's base classes ------------------------------
def _words(text: str, count: int) -> list[str]:
    parts = text.split(" ", count)
    return parts + [""] * (count + 1 - len(parts))


def _close_args(args: str) -> dict[str, Any]:
    code, reason = _words(args, 1)
    out: dict[str, Any] = {}
    if code:
        out["code"] = int(code)
    if reason:
        out["reason"] = reason
    return out


class AsyncEcho(AsyncWebsocketConsumer):
    """``connect()`` by the route's ``mode``; text commands, else an echo."""

    async def connect(self) -> None:
        self.record = record_for(self.scope)
        note(self.record, "connect")
        mode = self.scope["url_route"]["kwargs"].get("mode", "accept")
        offered = self.scope.get("subprotocols") or []
        if mode in ("accept", "lastword"):
            await self.accept()
        elif mode == "proto":
            await self.accept(subprotocol=offered[-1] if offered else None)
        elif mode == "badproto":
            await self.accept(subprotocol="not-offered")
        elif mode == "headers":
            await self.accept(headers=[(b"x-extra", b"one"), (b"set-cookie", b"a=1; Path=/")])
        elif mode == "close":
            await self.close()
        elif mode == "close4000":
            await self.close(code=4000, reason="not you")
        elif mode == "deny":
            raise DenyConnection()
        elif mode == "acceptexc":
            raise AcceptConnection()
        elif mode == "raise":
            raise RuntimeError("connect() failed")
        elif mode == "sendfirst":
            await self.send(text_data="before accept")
        elif mode == "twice":
            await self.accept()
            await self.accept()
        elif mode == "hello":
            await self.accept()
            await self.send(text_data="hello")
            await self.send(bytes_data=b"\x00\x01")

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            note(self.record, "receive", "text", shown(text_data))
            if text_data.startswith("!"):
                await self.command(text_data[1:])
            else:
                await self.send(text_data=text_data)
        else:
            note(self.record, "receive", "bytes", payload(bytes_data or b""))
            await self.send(bytes_data=bytes_data)

    async def command(self, text: str) -> None:
        verb, args = _words(text, 1)
        layer = self.channel_layer
        if verb == "close":
            await self.close(**_close_args(args))
        elif verb == "sendclose":
            await self.send(text_data="bye", close=int(args) if args else True)
        elif verb == "closesend":
            await self.close()
            try:
                await self.send(text_data="after close")
            except Exception as exc:
                note(self.record, "send raised", type(exc).__name__)
            else:
                note(self.record, "send returned")
        elif verb == "raise":
            raise RuntimeError("receive() failed")
        elif verb == "stop":
            raise StopConsumer()
        elif verb == "empty":
            await self.send(text_data="")
            await self.send(bytes_data=b"")
            await self.send(text_data="after empty")
        elif verb == "unicode":
            await self.send(text_data="h\u00e9llo \u2603 \U0001f600")
        elif verb == "big":
            await self.send(text_data="x" * int(args))
        elif verb == "surrogate":
            await self.send(text_data="half an emoji: \ud83d")
        elif verb == "leave":
            await layer.group_discard(args, self.channel_name)
            await self.send(text_data=f"left {args}")
        elif verb == "gs":
            group, kind, rest = _words(args, 2)
            await layer.group_send(group, {"type": kind, "text": rest})
        elif verb == "register":
            NAMES[args] = self.channel_name
            await self.send(text_data=f"registered {args}")
        elif verb == "to":
            label, kind, rest = _words(args, 2)
            await layer.send(NAMES[label], {"type": kind, "text": rest})
        elif verb == "ping":
            await self.send(text_data="pong")

    async def room_message(self, event: dict[str, Any]) -> None:
        note(self.record, "event", event["type"], event.get("text"))
        await self.send(text_data=f"room: {event['text']}")

    async def room_big_news(self, event: dict[str, Any]) -> None:
        note(self.record, "event", event["type"], event.get("text"))
        await self.send(text_data=f"news: {event['text']}")

    async def direct_message(self, event: dict[str, Any]) -> None:
        note(self.record, "event", event["type"], event.get("text"))
        await self.send(text_data=f"direct: {event['text']}")

    async def disconnect(self, code: int) -> None:
        note(self.record, "disconnect", code)
        if self.scope["url_route"]["kwargs"].get("mode") == "lastword":
            try:
                await self.send(text_data="too late")
            except Exception as exc:
                note(self.record, "send raised", type(exc).__name__)
            else:
                note(self.record, "send returned")


class SyncEcho(WebsocketConsumer):
    """``AsyncEcho`` with plain methods (Channels runs them in a thread; realtime on the
    reactor thread), without the layer commands (``async_to_sync`` would need
    ``thread_handlers`` here: README "Porting from Channels")."""

    def connect(self) -> None:
        self.record = record_for(self.scope)
        note(self.record, "connect")
        mode = self.scope["url_route"]["kwargs"].get("mode", "accept")
        offered = self.scope.get("subprotocols") or []
        if mode == "accept":
            self.accept()
        elif mode == "proto":
            self.accept(subprotocol=offered[-1] if offered else None)
        elif mode == "headers":
            self.accept(headers=[(b"x-extra", b"one"), (b"set-cookie", b"a=1; Path=/")])
        elif mode == "close":
            self.close()
        elif mode == "close4000":
            self.close(code=4000, reason="not you")
        elif mode == "deny":
            raise DenyConnection()
        elif mode == "acceptexc":
            raise AcceptConnection()
        elif mode == "raise":
            raise RuntimeError("connect() failed")

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            note(self.record, "receive", "text", shown(text_data))
            verb, args = _words(text_data, 1)
            if verb == "!close":
                self.close(**_close_args(args))
            elif verb == "!sendclose":
                self.send(text_data="bye", close=int(args) if args else True)
            elif verb == "!raise":
                raise RuntimeError("receive() failed")
            elif verb == "!stop":
                raise StopConsumer()
            else:
                self.send(text_data=text_data)
        else:
            note(self.record, "receive", "bytes", payload(bytes_data or b""))
            self.send(bytes_data=bytes_data)

    def disconnect(self, code: int) -> None:
        note(self.record, "disconnect", code)


class TutorialConsumer(WebsocketConsumer):
    """Channels' tutorial chat consumer as its docs write it: a sync consumer calling the
    layer through ``async_to_sync`` (Channels runs it in a thread)."""

    def connect(self) -> None:
        self.record = record_for(self.scope)
        note(self.record, "connect")
        self.room_group_name = "chat_" + self.scope["url_route"]["kwargs"]["room"]
        async_to_sync(self.channel_layer.group_add)(self.room_group_name, self.channel_name)
        self.accept()

    def disconnect(self, code: int) -> None:
        note(self.record, "disconnect", code)
        async_to_sync(self.channel_layer.group_discard)(self.room_group_name,
                                                        self.channel_name)

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        message = json.loads(text_data or "{}")["message"]
        async_to_sync(self.channel_layer.group_send)(
            self.room_group_name, {"type": "chat.message", "message": message})

    def chat_message(self, event: dict[str, Any]) -> None:
        note(self.record, "event", event["type"], event["message"])
        self.send(text_data=json.dumps({"message": event["message"]}))


class ThreadedTutorialConsumer(TutorialConsumer):
    """The same, with ``thread_handlers = True`` said, as README "Porting from Channels"
    asked before a class calling ``async_to_sync`` got it by itself (Channels ignores the
    attribute)."""

    thread_handlers = True


class RoomConsumer(AsyncEcho):
    """In ``lobby`` by ``groups`` and in ``room.ROOM`` by ``connect()``."""

    groups = ["lobby"]

    async def connect(self) -> None:
        self.record = record_for(self.scope)
        note(self.record, "connect")
        self.room = "room." + self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room, self.channel_name)
        note(self.record, "disconnect", code)


class JsonEcho(JsonWebsocketConsumer):
    def connect(self) -> None:
        self.record = record_for(self.scope)
        note(self.record, "connect")
        self.accept()

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        note(self.record, "json", content)
        self.send_json({"got": content})

    def disconnect(self, code: int) -> None:
        note(self.record, "disconnect", code)


class AsyncJsonEcho(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.record = record_for(self.scope)
        note(self.record, "connect")
        await self.accept()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        note(self.record, "json", content)
        await self.send_json({"got": content})

    async def disconnect(self, code: int) -> None:
        note(self.record, "disconnect", code)


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A raw ASGI WebSocket app: every message it receives noted; ``mode`` from the path."""
    record = record_for(scope)
    mode = scope["url_route"]["kwargs"]["mode"]
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.connect":
            note(record, "message", kind)
            if mode == "close":
                await send({"type": "websocket.close"})
            elif mode == "deny-response":
                await send({"type": "websocket.http.response.start", "status": 418,
                            "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "websocket.http.response.body", "body": b"teapot"})
            elif mode == "proto":
                await send({"type": "websocket.accept",
                            "subprotocol": (scope["subprotocols"] or [None])[0]})
            else:
                await send({"type": "websocket.accept"})
            if mode == "return":
                return
        elif kind == "websocket.receive":
            text = message.get("text")
            data = message.get("bytes")
            note(record, "message", kind, None if text is None else shown(text),
                 None if data is None else payload(data))
            if text is not None and text.startswith("!close"):
                _, args = _words(text, 1)
                await send({"type": "websocket.close", **_close_args(args)})
            elif text == "!raise":
                raise RuntimeError("the raw app failed")
            elif text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": data})
        elif kind == "websocket.disconnect":
            note(record, "message", kind, message.get("code"))
            return


# -- HTTP: what a row's app saw, and an HTTP scope recorder ----------------------------------
async def http_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/seen/NAME``: a row's record; ``/gs/GROUP/TYPE/TEXT``: a ``group_send`` from
    outside any consumer (``get_channel_layer()``, as a view does); ``/http/...``: records
    the scope, answers it."""
    if scope["path"].startswith("/seen/"):
        await send_record(send, SEEN.get(scope["path"][len("/seen/"):]))
        return
    if scope["path"].startswith("/gs/"):
        group, kind, rest = scope["path"][len("/gs/"):].split("/", 2)
        await get_channel_layer().group_send(group, {"type": kind, "text": rest})
        await send_json(send, 200, "sent")
        return
    record = record_for(scope)
    await send_json(send, 200, record["scope"])


_auth_inner = AsyncEcho.as_asgi()

application = ProtocolTypeRouter({
    "http": http_app,
    "websocket": URLRouter([
        path("ws/sync/<slug:mode>/", SyncEcho.as_asgi()),
        path("ws/async/<slug:mode>/", AsyncEcho.as_asgi()),
        path("ws/json/", JsonEcho.as_asgi()),
        path("ws/ajson/", AsyncJsonEcho.as_asgi()),
        path("ws/raw/<slug:mode>/", raw_app),
        path("ws/room/<slug:room>/", RoomConsumer.as_asgi()),
        path("ws/tutorial/<slug:room>/", TutorialConsumer.as_asgi()),
        path("ws/threaded/<slug:room>/", ThreadedTutorialConsumer.as_asgi()),
        path("ws/route/<int:n>/<path:rest>", AsyncEcho.as_asgi()),
        re_path(r"^ws/re/(?P<word>[^/]+)/$", AsyncEcho.as_asgi()),
        re_path(r"^ws/positional/(\d+)/(\w+)/$", AsyncEcho.as_asgi()),
        path("ws/uuid/<uuid:u>/", AsyncEcho.as_asgi()),
        path("ws/auth/", AuthMiddlewareStack(_auth_inner)),
        path("ws/hosts/", AllowedHostsOriginValidator(_auth_inner)),
        path("ws/origin/", OriginValidator(_auth_inner, ["http://good.example",
                                                         ".trusted.example"])),
    ]),
})
