"""The chat demo: a page at ``/`` and its socket at ``/ws/chat/<room>/``; the page's
client, ``realtime.js`` (reconnects with backoff, resumes history), at ``/realtime.js``.

    pip install . && twistd -n --pidfile= realtime --app realtime.examples.chat:application

then open http://127.0.0.1:8000/ in two browser tabs. Works unchanged across processes
with ``--layer redis://...``. Who is in the room is the layer's presence: a newcomer joins
the room's group with ``presence={"name": ...}``, which tells every member
(``presence.join``), and asks ``group_presence`` who else is there; a page that goes away
leaves the group when its socket closes, which tells the others (``presence.leave``).
With ``--history 'chat.*=50:3600'`` a room keeps its last 50 messages for an hour: a
newcomer is shown the last ``EARLIER`` of them (those before its join: the rest reach it
live), and a page that lost its connection comes back with the position of the last
message it had (``?epoch=...&offset=...``) and is sent what it missed, or told it may have
missed some (``gap``) when the room no longer keeps them all.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from twisted.web.resource import Resource

from realtime import AsyncJsonWebsocketConsumer, ProtocolTypeRouter, URLRouter, path
from realtime.static import client_app

NAME = re.compile(r"^[\w .-]{1,32}$")
EPOCH = re.compile(r"^[0-9a-f]{1,64}$")
#: How many of a history room's last messages a newcomer is shown.
EARLIER = 20


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
        await self.accept()
        # Every member (this one too) hears the join; then the others are listed to it.
        since = _since(query)
        layer = self.channel_layer
        if since is not None and layer.history.match(self.group) is None:
            since = None  # the room keeps no history (no --history rule)
        joined = await layer.group_add(self.group, self.channel_name,
                                       presence={"name": name}, since=since)
        if joined is not None:  # the room keeps history
            if since is None:
                await self._earlier(joined)
            elif not joined["recovered"]:  # away too long: what it missed is not all kept
                await self.send_json({"type": "gap"})
        members = await self.channel_layer.group_presence(self.group)
        for channel, info in members.items():
            if channel != self.channel_name:
                await self.send_json({"type": "here", "name": info["name"]})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        text = content.get("message") if isinstance(content, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > 2000:
            await self.send_json({"type": "error", "error": "a message is 1-2000 characters"})
            return
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "name": self.name, "message": text}
        )

    async def _earlier(self, joined: dict[str, Any]) -> None:
        """The room's last messages up to the join (those after it come as events)."""
        kept = await self.channel_layer.group_history(self.group, limit=EARLIER)
        for message in kept["messages"]:
            where = message["position"]
            if where["epoch"] == joined["epoch"] and where["offset"] <= joined["offset"]:
                await self.send_json({"type": "message", "name": message["name"],
                                      "message": message["message"], "earlier": True,
                                      "position": where})

    # -- events from the room ---------------------------------------------------------------
    async def presence_join(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "join", "name": event["info"]["name"]})

    async def presence_leave(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "leave", "name": event["info"]["name"]})

    async def chat_message(self, event: dict[str, Any]) -> None:
        message = {"type": "message", "name": event["name"], "message": event["message"]}
        if "position" in event:  # a history room: the page comes back with the last one
            message["position"] = event["position"]
        await self.send_json(message)

    async def layer_gap(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "gap"})


def _since(query: dict[str, list[str]]) -> dict[str, Any] | None:
    """The position a returning page gives (``?epoch=E&offset=N``), if it is one."""
    epoch = (query.get("epoch") or [""])[0]
    offset = (query.get("offset") or [""])[0]
    if EPOCH.match(epoch) and offset.isdigit() and len(offset) <= 18:
        return {"epoch": epoch, "offset": int(offset)}
    return None


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
        "http": URLRouter([path("", _page()), path("realtime.js", client_app())]),
        "websocket": URLRouter([path("ws/chat/<slug:room>/", ChatConsumer.as_asgi())]),
    }
)
