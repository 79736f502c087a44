"""Channels ``SyncConsumer``s whose handlers send, or call the layer through
``async_to_sync``, after a pause: what a server stopping meanwhile must not wait on for
ever (tests/test_generic_consumers.py)."""

from __future__ import annotations

import time

from realtime import SyncConsumer, URLRouter, async_to_sync, path


class Slow(SyncConsumer):
    def websocket_connect(self, event):
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, event):
        self.send({"type": "websocket.send", "text": "working"})
        time.sleep(2)  # the server is told to stop meanwhile
        self.send({"type": "websocket.send", "text": "done"})


class SlowLayer(Slow):
    def websocket_receive(self, event):
        self.send({"type": "websocket.send", "text": "working"})
        time.sleep(2)  # the server is told to stop meanwhile
        try:
            async_to_sync(self.channel_layer.group_send)("late", {"type": "x"})
        except Exception as exc:  # what the call raised, for the log
            print(f"async_to_sync raised {type(exc).__name__}: {exc}", flush=True)
            raise


application = URLRouter([path("slow", Slow.as_asgi()), path("slowlayer", SlowLayer.as_asgi())])
