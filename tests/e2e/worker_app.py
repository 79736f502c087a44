"""The application the ``--workers`` tests serve (``--app tests.e2e.worker_app:application``
with the repository on ``PYTHONPATH``):

- ``/pid`` sends the serving process's pid once accepted (so a client knows which worker
  it reached), then echoes text;
- ``/room/<name>`` joins group ``name`` (before it accepts), sends the pid, then
  broadcasts each text message to the group through the channel layer, so members on
  different workers only meet through Redis;
- HTTP ``/pid`` answers the serving process's pid (each request on a connection of its
  own reaches either worker).
"""

from __future__ import annotations

import os

from realtime import (
    AsyncHttpConsumer,
    AsyncWebsocketConsumer,
    ProtocolTypeRouter,
    URLRouter,
    WebsocketConsumer,
    path,
)


class PidConsumer(WebsocketConsumer):
    def connect(self) -> None:
        self.accept()
        self.send(text_data=str(os.getpid()))

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.send(text_data=text_data)


class RoomConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["name"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()
        await self.send(text_data=str(os.getpid()))

    async def receive(self, text_data: str | None = None,
                      bytes_data: bytes | None = None) -> None:
        await self.channel_layer.group_send(self.room, {"type": "room.message",
                                                        "text": text_data})

    async def room_message(self, event: dict) -> None:
        await self.send(text_data=event["text"])


class PidView(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        await self.send_response(200, str(os.getpid()).encode())


application = ProtocolTypeRouter(
    {"http": URLRouter([path("pid", PidView.as_app())]),
     "websocket": URLRouter([path("pid", PidConsumer.as_app()),
                             path("room/<slug:name>", RoomConsumer.as_app())])}
)
