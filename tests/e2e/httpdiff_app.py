"""One ASGI application served by both realtime and Daphne for
tests/e2e/test_http_vs_daphne.py: a pure ASGI app that says what it saw, plus Django's
views through Django's own ``ASGIHandler`` under ``/django/``.

Each request with an ``X-Row: NAME`` header leaves what the app saw (its scope, the
``receive()`` messages it got, how it ended) in ``SEEN[NAME]``; ``GET /seen/NAME`` answers
it as JSON (404 while there is none), so a row can ask after a HEAD request, a client that
went away, or an app that never answered. The paths (first segment):

- ``/echo``: reads the whole body, answers 200 with it.
- ``/stream``: a response in ``more_body`` chunks, the first one empty, no Content-Length.
- ``/nolength``: one body, no Content-Length.
- ``/status/N``: status N with a 5-byte body (``/status/204``, ``/status/304``).
- ``/cookies``: two ``Set-Cookie`` headers.
- ``/return``: returns without a response.
- ``/raise-before``, ``/raise-after``: raises before ``http.response.start``, or after a
  first chunk.
- ``/never``: reads the body, then waits on ``receive()`` (``http.disconnect``) and
  never answers.
- ``/late``: as ``/never``, but reads the body only after 0.2 s.
- ``/slow``: starts a streamed response, then waits on ``receive()`` for the client to go.
- ``/header/KIND``: a response header the app should not send (``crlf``, ``nul``,
  ``space-name``, ``str``).
- ``/django/echo/``, ``/django/stream/``: a Django view (the request as Django saw it),
  a ``StreamingHttpResponse``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.e2e.diffapp import describe as common
from tests.e2e.diffapp import file_by_row, lifespan, send_json, send_record, text

#: What each ``X-Row`` request saw, by row name (the process's own: one per server).
SEEN: dict[str, dict[str, Any]] = {}


def describe(scope: dict[str, Any]) -> dict[str, Any]:
    """The scope in JSON (``diffapp.describe``), with an HTTP request's own keys."""
    return {**common(scope), "http_version": scope.get("http_version"),
            "method": scope.get("method")}


async def _read_body(receive: Any, record: dict[str, Any]) -> bytes:
    """The request body, each ``receive()`` message noted in ``record``."""
    body = b""
    while True:
        message = await receive()
        record["events"].append({"type": message["type"],
                                 "size": len(message.get("body", b"")),
                                 "more_body": message.get("more_body", False)})
        if message["type"] != "http.request":
            record["end"] = "disconnected while reading the body"
            return body
        body += message.get("body", b"")
        if not message.get("more_body", False):
            record["body"] = text(body)
            return body


_django: Any = None


def _django_app() -> Any:
    """Django's ASGI handler, with settings of its own (no database)."""
    global _django
    if _django is None:
        import django
        from django.conf import settings

        if not settings.configured:
            settings.configure(
                DEBUG=False, SECRET_KEY="tests-only-" + "h" * 40, ALLOWED_HOSTS=["*"],
                ROOT_URLCONF=__name__, INSTALLED_APPS=[], MIDDLEWARE=[], DATABASES={},
                USE_TZ=True)
            django.setup()
        from django.core.handlers.asgi import ASGIHandler

        _django = ASGIHandler()
    return _django


def django_echo(request: Any) -> Any:
    """The request as a Django view sees it."""
    from django.http import JsonResponse

    response = JsonResponse({
        "method": request.method, "path": request.path, "path_info": request.path_info,
        "script_name": request.META.get("SCRIPT_NAME"),
        "query": sorted((k, v) for k in request.GET for v in request.GET.getlist(k)),
        "body": text(request.body), "host": request.get_host(),
        "content_type": request.META.get("CONTENT_TYPE"),
        "http": sorted((k, v) for k, v in request.META.items() if k.startswith("HTTP_")),
    })
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


def django_stream(request: Any) -> Any:
    from django.http import StreamingHttpResponse

    return StreamingHttpResponse(iter([b"one,", b"two,", b"three"]),
                                 content_type="text/plain")


def _urls() -> list[Any]:
    try:
        from django.urls import path
    except ImportError:
        return []
    return [path("django/echo/", django_echo), path("django/stream/", django_stream)]


urlpatterns = _urls()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        raise ValueError(f"no {scope['type']} here")
    first, _, rest = scope["raw_path"].lstrip(b"/").partition(b"/")
    if first == b"django":
        await _django_app()(scope, receive, send)
        return
    if first == b"seen":
        await send_record(send, SEEN.get(text(rest)))
        return
    record: dict[str, Any] = file_by_row(
        SEEN, scope, {"scope": describe(scope), "events": [], "end": None})
    if first == b"late":  # something else first (a database query), the body after
        await asyncio.sleep(0.2)
    body = await _read_body(receive, record)
    if record["end"] is not None:
        return
    if first == b"echo":
        record["end"] = "answered"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    elif first == b"stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for chunk in (b"", b"a" * 10, b"", b"b" * 20):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        record["end"] = "answered"
    elif first == b"nolength":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"no length"})
        record["end"] = "answered"
    elif first == b"status":
        await send({"type": "http.response.start", "status": int(rest),
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})
        record["end"] = "answered"
    elif first == b"cookies":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2"), (b"set-cookie", b"a=1; Path=/"),
                                (b"set-cookie", b"b=2; Path=/")]})
        await send({"type": "http.response.body", "body": b"ok"})
        record["end"] = "answered"
    elif first == b"return":
        record["end"] = "returned"  # without a response
    elif first == b"raise-before":
        record["end"] = "raised"
        raise RuntimeError("before the response")
    elif first == b"raise-after":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        record["end"] = "raised"
        raise RuntimeError("after the response started")
    elif first in (b"never", b"slow", b"sse", b"late"):
        if first == b"sse":  # the head at once, with an empty first body
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            await send({"type": "http.response.body", "body": b"", "more_body": True})
        if first == b"slow":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"started", "more_body": True})
        record["end"] = "waiting"
        message = await receive()
        record["events"].append({"type": message["type"]})
        record["end"] = "told " + message["type"]
    elif first == b"header":
        bad = {b"crlf": (b"x-bad", b"one\r\nx-injected: yes"), b"nul": (b"x-bad", b"a\x00b"),
               b"space-name": (b"x bad", b"v"), b"str": ("x-bad", "v")}[rest]
        record["end"] = "sent a bad header"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2"), bad]})
        await send({"type": "http.response.body", "body": b"ok"})
        record["end"] = "answered"
    else:
        await send_json(send, 404, {"unknown": first.decode("latin-1")})
