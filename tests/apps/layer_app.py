"""Served by the Redis layer's end-to-end tests (``--app tests.apps.layer_app:application``).

- ``/typed/<group>``: joins ``group`` (awaited, so after the handshake the group reaches
  it) and says ``{"type": "hello", "channel": ..., "pid": ...}``. A JSON message
  ``{"text": T}`` is a typed ``group_send`` (``chat.message``) to the group; ``{"send_to":
  CHANNEL, "text": T}`` a ``send`` to one channel; ``{"enqueue": CHANNEL, "n": N}`` a
  ``send`` to a named channel for a worker (the reply comes back as ``thumbnail.done``).
  A layer that is unavailable is answered with ``{"type": "error"}``; the socket stays open.
  ``layer.gap`` events are passed on as ``{"type": "gap", ...}``.
- ``/room/<name>``: the benchmark's room (``broadcast`` to all members).
"""

from __future__ import annotations

import os
from typing import Any

from realtime import AsyncJsonWebsocketConsumer, ProtocolTypeRouter, URLRouter, path
from realtime.examples.bench import RoomConsumer
from realtime.layers import LayerUnavailable


class Typed(AsyncJsonWebsocketConsumer):
    group: str

    async def connect(self) -> None:
        self.group = self.scope["url_route"]["kwargs"]["group"]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "hello", "channel": self.channel_name,
                              "pid": os.getpid()})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        layer = self.channel_layer
        try:
            if "enqueue" in content:
                await layer.send(content["enqueue"], {"type": "thumbnail.make",
                                                      "n": content["n"],
                                                      "reply_to": self.channel_name})
            elif "send_to" in content:
                await layer.send(content["send_to"], {"type": "direct",
                                                      "text": content["text"],
                                                      "pid": os.getpid()})
            else:
                await layer.group_send(self.group, {"type": "chat.message",
                                                    "text": content["text"],
                                                    "pid": os.getpid()})
        except LayerUnavailable as exc:
            await self.send_json({"type": "error", "error": str(exc)})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "chat", "text": event["text"], "pid": event["pid"]})

    async def direct(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "direct", "text": event["text"], "pid": event["pid"]})

    async def thumbnail_done(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "done", "n": event["n"], "worker": event["worker"]})

    async def layer_gap(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "gap", "group": event["group"],
                              "since": event["since"], "until": event["until"]})

    async def disconnect(self, code: int) -> None:
        try:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        except LayerUnavailable:
            pass


application = ProtocolTypeRouter({
    "websocket": URLRouter([
        path("typed/<slug:group>", Typed.as_app()),
        path("room/<slug:name>", RoomConsumer.as_app()),
    ]),
})
