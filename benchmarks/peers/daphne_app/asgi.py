"""The ASGI application Daphne serves: ``daphne daphne_app.asgi:application``."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "daphne_app.settings")

import django

django.setup()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from daphne_app.consumers import EchoConsumer, RoomConsumer  # noqa: E402

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
