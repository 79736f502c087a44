"""A Django project for tests/e2e/test_django.py: its settings, its URLconf and two views
(log in, who am I), on a SQLite file named by ``SITE_DB``. Served with the consumers of
``asgi.py`` by ``twistd realtime --app tests.e2e.django_site.asgi:application``."""

from __future__ import annotations

import os
from typing import Any

SECRET_KEY = "tests-only-" + "d" * 40
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth",
                  "django.contrib.sessions"]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware",
              "django.contrib.auth.middleware.AuthenticationMiddleware"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.environ.get("SITE_DB", "/nonexistent/db.sqlite3")}}
SESSION_ENGINE = os.environ.get("SITE_SESSION_ENGINE", "django.contrib.sessions.backends.db")
ROOT_URLCONF = __name__
USE_TZ = True


def login_view(request: Any) -> Any:
    """``/login/?name=ada``: Django's own login (the user made on first use)."""
    from django.contrib.auth import login
    from django.contrib.auth.models import User
    from django.http import JsonResponse

    user, _ = User.objects.get_or_create(username=request.GET["name"])
    login(request, user)
    return JsonResponse({"user": user.username})


def whoami_view(request: Any) -> Any:
    from django.http import JsonResponse

    user = request.user
    return JsonResponse({"user": user.username if user.is_authenticated else None,
                         "seen": request.session.get("seen")})


def _urls() -> list[Any]:
    from django.urls import path

    return [path("login/", login_view), path("whoami/", whoami_view)]


urlpatterns = _urls()
