"""A minimal Django project for the asyncio-reactor tests: SQLite, auth's tables, and a
URLconf whose views are what a Channels project serves through ``get_asgi_application()``
(sync and async views, a form POST, a streamed response, cookies). Configured once per
process by ``django_database``."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.clients import in_thread

_ready: list[bool] = []


async def django_database(tmp_path_factory: Any) -> None:
    """Django on a SQLite file (asgiref's thread-sensitive executor opens its own
    connection), auth's tables migrated; once per process."""
    if _ready:
        return
    import django
    from django.conf import settings

    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": str(tmp_path_factory.mktemp("db") / "db.sqlite3")}},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        USE_TZ=True,
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        SECRET_KEY="tests-only-" + "x" * 40,
        DEBUG=False,
        MIDDLEWARE=[],
    )
    django.setup()

    def migrate() -> None:  # in a thread: Django refuses sync ORM calls beside a loop
        from django.core.management import call_command

        call_command("migrate", verbosity=0)

    await in_thread(migrate)
    _ready.append(True)


# -- the views (Django imports this module as the URLconf) --------------------------------------

def sync_view(request: Any) -> Any:
    """A plain view: Django runs it in asgiref's thread, with the sync ORM."""
    import threading

    from django.contrib.auth.models import User
    from django.http import JsonResponse

    response = JsonResponse({
        "method": request.method, "path": request.path, "q": request.GET.get("q"),
        "users": User.objects.count(),
        "main": threading.current_thread() is threading.main_thread(),
        "host": request.get_host(), "remote": request.META.get("REMOTE_ADDR"),
    })
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


async def async_view(request: Any) -> Any:
    """An async view: the async ORM and asyncio.sleep on the reactor's loop."""
    from django.contrib.auth.models import User
    from django.http import HttpResponse

    if request.method == "POST":
        await User.objects.acreate(username=request.POST["name"])
    await asyncio.sleep(0.01)
    return HttpResponse(f"users={await User.objects.acount()}", content_type="text/plain")


async def stream_view(request: Any) -> Any:
    from django.http import StreamingHttpResponse

    async def chunks() -> Any:
        for i in range(5):
            await asyncio.sleep(0.005)
            yield f"chunk{i};".encode()

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def notify_view(request: Any) -> Any:
    """A plain view telling a group, as Channels' documentation writes it: asgiref's
    ``async_to_sync`` of the layer ``get_channel_layer()`` gives this thread."""
    from asgiref.sync import async_to_sync
    from django.http import HttpResponse

    from realtime.layers import get_channel_layer

    async_to_sync(get_channel_layer().group_send)(
        "notes", {"type": "note", "text": request.GET["text"]})
    return HttpResponse("sent", content_type="text/plain")


def _urlpatterns() -> list[Any]:
    from django.urls import path

    return [path("sync/", sync_view), path("async/", async_view), path("stream/", stream_view),
            path("notify/", notify_view)]


def __getattr__(name: str) -> Any:  # Django reads urlpatterns after settings exist
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)
