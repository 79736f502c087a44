"""A Channels 4 project's asgi.py, HTTP only (Daphne: ``daphne
django_http_app.channels_asgi:application``)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_http_app.settings")

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

application = ProtocolTypeRouter({"http": get_asgi_application()})
