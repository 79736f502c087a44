"""The benchmark protocol, served by ``twistd -n realtime --app
realtime.examples.bench:application`` and by the benchmark suite:

- ``/echo`` echoes text as text and bytes as bytes;
- ``/room/<name>`` joins group ``name``; each message a member sends is broadcast to every
  member, sender included, with ``broadcast()`` (one prepared frame for all).

Both consumers are plain ``WebsocketConsumer`` classes: the fast path.
"""

from __future__ import annotations

from realtime import ProtocolTypeRouter, URLRouter, WebsocketConsumer, path


class EchoConsumer(WebsocketConsumer):
    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            self.send(text_data=text_data)
        else:
            self.send(bytes_data=bytes_data)


class RoomConsumer(WebsocketConsumer):
    room: str

    def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["name"]
        self.channel_layer.group_add(self.room, self.channel_name)
        self.accept()

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            sent = self.channel_layer.broadcast(self.room, text=text_data)
        else:
            sent = self.channel_layer.broadcast(self.room, bytes=bytes_data)
        # Fire and forget: while a Redis layer is down the layer counts the refusal.
        sent.addErrback(lambda failure: None)


application = ProtocolTypeRouter(
    {
        "websocket": URLRouter(
            [
                path("echo", EchoConsumer.as_app()),
                path("room/<slug:name>", RoomConsumer.as_app()),
            ]
        ),
    }
)
