"""realtime: a standalone realtime WebSocket service on Twisted and Autobahn.

The names here are Channels' names, so a Channels routing file or consumer ports by
changing its imports. Nothing here imports the reactor: twistd installs it later.
"""

from realtime.config import ServerConfig
from realtime.consumer import (
    AsyncConsumer,
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    JsonWebsocketConsumer,
    SyncConsumer,
    WebsocketConsumer,
)
from realtime.exceptions import (
    AcceptConnection,
    ConnectionClosed,
    DenyConnection,
    Refuse,
    StopConsumer,
)
from realtime.http import AsyncHttpConsumer
from realtime.layers import get_channel_layer
from realtime.middleware import BaseMiddleware
from realtime.routing import (
    ChannelNameRouter,
    ProtocolTypeRouter,
    URLRouter,
    path,
    re_path,
    register_converter,
)
from realtime.threads import aio, async_to_sync, sync_to_async

__version__ = "0.1.0.dev0"

__all__ = [
    "AcceptConnection",
    "AsyncConsumer",
    "AsyncHttpConsumer",
    "AsyncJsonWebsocketConsumer",
    "AsyncWebsocketConsumer",
    "BaseMiddleware",
    "ChannelNameRouter",
    "ConnectionClosed",
    "DenyConnection",
    "JsonWebsocketConsumer",
    "ProtocolTypeRouter",
    "Refuse",
    "ServerConfig",
    "StopConsumer",
    "SyncConsumer",
    "URLRouter",
    "WebsocketConsumer",
    "__version__",
    "aio",
    "async_to_sync",
    "get_channel_layer",
    "path",
    "re_path",
    "register_converter",
    "sync_to_async",
]
