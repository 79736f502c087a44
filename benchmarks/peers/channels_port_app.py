"""Daphne's benchmark consumers (daphne_app/consumers.py) ported to realtime by changing
their imports: what a Channels app costs unchanged (``async def`` handlers, ``group_send``
to a ``room.message`` handler per member), served by ``ours-channels`` (the default reactor)
and ``ours-channels-asyncio`` (``--reactor=asyncio``, where handlers are asyncio Tasks)."""

from __future__ import annotations

from realtime import AsyncWebsocketConsumer, ProtocolTypeRouter, URLRouter, path


class EchoConsumer(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


class RoomConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.group = "room." + self.scope["url_route"]["kwargs"]["name"]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send(
            self.group, {"type": "room.message", "text": text_data, "bytes": bytes_data}
        )

    async def room_message(self, event):
        await self.send(text_data=event["text"], bytes_data=event["bytes"])


application = ProtocolTypeRouter(
    {
        "websocket": URLRouter(
            [
                path("echo", EchoConsumer.as_asgi()),
                path("room/<slug:name>", RoomConsumer.as_asgi()),
            ]
        ),
    }
)
