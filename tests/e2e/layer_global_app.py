"""An application that keeps ``get_channel_layer()`` as a module global, taken while
``--app`` is imported, before the reactor runs (as Channels apps do), and uses it on the
reactor thread and from a handler thread (``tests/e2e/test_layer_global.py``)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync as asgiref_async_to_sync

from realtime import URLRouter, WebsocketConsumer, async_to_sync, re_path
from realtime.layers import get_channel_layer

LAYER = get_channel_layer()
# While the application is imported, on the thread that will run the reactor: passes.
LAYER.keep_history("room.*", size=10, ttl=60)


class Reactor(WebsocketConsumer):
    """On the reactor thread: the module global's calls pass straight through."""

    def connect(self) -> Any:
        # Its Deferred, returned: the handshake waits for the join (a Redis SUBSCRIBE).
        return LAYER.group_add("room.lobby", self.channel_name).addCallback(self.joined)

    def joined(self, _: Any) -> None:
        self.accept()
        self.send(text_data=type(LAYER).__name__)

    def note(self, event: dict[str, Any]) -> None:
        self.send(text_data=event["text"])


class Pool(WebsocketConsumer):
    """In a thread: a direct call is refused; through either async_to_sync it runs."""

    thread_handlers = True

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data == "direct":
            try:
                LAYER.group_send("room.lobby", {"type": "note", "text": text_data})
            except RuntimeError as exc:
                self.send(text_data=str(exc))
            return
        call = asgiref_async_to_sync if text_data == "asgiref" else async_to_sync
        position = call(LAYER.group_send)("room.lobby", {"type": "note", "text": text_data})
        self.send(text_data=f"sent, offset {position['offset']}")  # (the import's history)


application = URLRouter([re_path(r"^reactor/$", Reactor.as_asgi()),
                         re_path(r"^pool/$", Pool.as_asgi())])
