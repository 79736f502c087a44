"""A worker application (``twistd realtime-runworker --app tests.apps.worker_app:application
thumbnails``): each ``thumbnail.make`` message is answered on its ``reply_to`` channel."""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import Logger

from realtime import ChannelNameRouter, SyncConsumer, async_to_sync

log = Logger(namespace="worker_app")


class Thumbnailer(SyncConsumer):
    """Runs in the thread pool (a SyncConsumer), as blocking work would."""

    def thumbnail_make(self, message: dict[str, Any]) -> None:
        log.info("handled thumbnail {n} in {pid}", n=message["n"], pid=os.getpid())
        async_to_sync(self.channel_layer.send)(
            message["reply_to"],
            {"type": "thumbnail.done", "n": message["n"], "worker": os.getpid()},
        )

    def boom(self, message: dict[str, Any]) -> None:
        raise RuntimeError("a handler that fails")


application = ChannelNameRouter({"thumbnails": Thumbnailer.as_app()})
