"""The chat demo: a page at ``/`` and its socket at ``/ws/chat/<room>/``.

    pip install . && twistd -n --pidfile= realtime --app realtime.examples.chat:application

then open http://127.0.0.1:8000/ in two browser tabs. Works unchanged across processes
with ``--layer redis://...`` (presence is built from messages, not from process memory):
a newcomer announces itself with ``chat.join``; every member answers the newcomer's own
channel with ``chat.here``; ``chat.leave`` goes out on disconnect.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from twisted.web.resource import Resource

from realtime import AsyncJsonWebsocketConsumer, ProtocolTypeRouter, URLRouter, path

NAME = re.compile(r"^[\w .-]{1,32}$")


class ChatConsumer(AsyncJsonWebsocketConsumer):
    room: str
    group: str
    name: str

    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        query = parse_qs(self.scope["query_string"].decode("utf-8", "replace"))
        name = (query.get("name") or [""])[0].strip()
        if not NAME.match(name):
            await self.close()  # before accept: 403
            return
        self.name = name
        self.group = f"chat.{self.room}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.channel_layer.group_send(
            self.group, {"type": "chat.join", "name": name, "channel": self.channel_name}
        )

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        text = content.get("message") if isinstance(content, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > 2000:
            await self.send_json({"type": "error", "error": "a message is 1-2000 characters"})
            return
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "name": self.name, "message": text}
        )

    async def disconnect(self, code: int) -> None:
        if getattr(self, "group", None):
            await self.channel_layer.group_send(
                self.group, {"type": "chat.leave", "name": self.name}
            )
            await self.channel_layer.group_discard(self.group, self.channel_name)

    # -- events from the room ---------------------------------------------------------------
    async def chat_join(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "join", "name": event["name"]})
        if event["channel"] != self.channel_name:
            await self.channel_layer.send(
                event["channel"], {"type": "chat.here", "name": self.name}
            )

    async def chat_here(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "here", "name": event["name"]})

    async def chat_leave(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "leave", "name": event["name"]})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "message", "name": event["name"],
                              "message": event["message"]})

    async def layer_gap(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "gap"})


class _Page(Resource):
    """The demo's one page (twisted.web.static would do, but importing it warns about
    Twisted's own deprecations on every start)."""

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-length", str(len(self.body)).encode())
        return self.body


def _page() -> _Page:
    return _Page(resources.files("realtime.examples").joinpath("static/chat.html").read_bytes())


application = ProtocolTypeRouter(
    {
        "http": URLRouter([path("", _page())]),
        "websocket": URLRouter([path("ws/chat/<slug:room>/", ChatConsumer.as_asgi())]),
    }
)
