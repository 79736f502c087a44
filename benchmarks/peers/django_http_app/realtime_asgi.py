"""The Channels project's asgi.py ported by changing one import (ours: ``twistd
--reactor=asyncio realtime --app django_http_app.realtime_asgi:application``)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_http_app.settings")

from django.core.asgi import get_asgi_application

from realtime import ProtocolTypeRouter

application = ProtocolTypeRouter({"http": get_asgi_application()})
