"""The two views: the same ~100-byte JSON body, from a sync view (Django runs it in
asgiref's thread) and from an async view (on the event loop)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

#: 100 bytes of JSON once serialised (the smoke test checks the size).
BODY = {"message": "Hello, World!", "items": [1, 2, 3, 4, 5], "ok": True,
        "server": "django", "pad": "xxx"}


def sync_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse(BODY)


async def async_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse(BODY)
