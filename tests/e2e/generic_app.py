"""A Channels ``SyncConsumer`` whose handler sends after a pause: what a server stopping
meanwhile must not wait on for ever (tests/test_generic_consumers.py)."""

from __future__ import annotations

import time

from realtime import SyncConsumer, URLRouter, path


class Slow(SyncConsumer):
    def websocket_connect(self, event):
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, event):
        self.send({"type": "websocket.send", "text": "working"})
        time.sleep(2)  # the server is told to stop meanwhile
        self.send({"type": "websocket.send", "text": "done"})


application = URLRouter([path("slow", Slow.as_asgi())])
