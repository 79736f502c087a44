"""The benchmark protocol: ``/echo`` echoes text as text and bytes as bytes.

Served by ``twistd -n realtime --app realtime.examples.bench:application`` and by the
benchmark suite. The consumer is a plain ``WebsocketConsumer``: the fast path.
"""

from __future__ import annotations

from realtime import ProtocolTypeRouter, URLRouter, WebsocketConsumer, path


class EchoConsumer(WebsocketConsumer):
    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            self.send(text_data=text_data)
        else:
            self.send(bytes_data=bytes_data)


application = ProtocolTypeRouter(
    {
        "websocket": URLRouter([path("echo", EchoConsumer.as_app())]),
    }
)
