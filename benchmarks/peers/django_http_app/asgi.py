"""The bare Django ASGI app (uvicorn: ``uvicorn django_http_app.asgi:application``)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_http_app.settings")

from django.core.asgi import get_asgi_application

application = get_asgi_application()
