"""The application the Daphne-option tests serve under a real ``twistd``
(``--app tests.e2e.options_app:application`` with the repository on ``PYTHONPATH``):

- ``/log`` logs one line at each of debug, info and warn (``options-app ...``), then 200;
- ``/block`` holds the reactor thread for 0.3 s (a slow callback for asyncio's debug mode);
- ``/hang`` never answers (for ``--http-timeout``);
- ``/gc`` answers the collector's settings as JSON (for ``--gc-threshold``);
- ``/echo`` (WebSocket) echoes text.
"""

from __future__ import annotations

import gc
import json
import time

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from realtime import AsyncHttpConsumer, ProtocolTypeRouter, URLRouter, WebsocketConsumer, path

log = Logger(namespace="options_app")


class LogLines(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        log.debug("options-app debug line")
        log.info("options-app info line")
        log.warn("options-app warn line")
        await self.send_response(200, b"logged")


class Block(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        time.sleep(0.3)  # on purpose: the slow callback -v 3 reports
        await self.send_response(200, b"blocked")


class Hang(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        await Deferred()


class GcSettings(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        settings = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
        await self.send_response(200, json.dumps(settings).encode())


class Echo(WebsocketConsumer):
    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.send(text_data=text_data)


application = ProtocolTypeRouter({
    "http": URLRouter([path("log", LogLines.as_app()), path("block", Block.as_app()),
                       path("hang", Hang.as_app()), path("gc", GcSettings.as_app())]),
    "websocket": URLRouter([path("echo", Echo.as_app())]),
})
