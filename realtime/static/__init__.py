"""``realtime.js``, the browser client, and the app that serves it.

The client is one dependency-free file shipped with the package (``realtime/static/
realtime.js``, an ES module). Mount it where your pages can load it; nothing is added to
every server's routes (it could collide with an application's)::

    from realtime import ProtocolTypeRouter, URLRouter, path
    from realtime.static import client_app

    application = ProtocolTypeRouter({
        "http": URLRouter([
            path("realtime.js", client_app()),                       # import {RealtimeSocket}
            path("realtime.classic.js", client_app(module=False)),  # <script src=...>
        ]),
        "websocket": ...,
    })

``GET`` (and ``HEAD``) answer ``200`` with ``Content-Type: text/javascript;
charset=utf-8``, ``Cache-Control`` (``no-cache`` by default: browsers keep the file and ask
again each time, so an upgrade of the package reaches them at once), a strong ``ETag`` and
``304`` to a matching ``If-None-Match``; other methods get ``405``. ``script()`` gives the
bytes, to serve them some other way (a CDN, a static directory, a template).
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

from realtime.consumer import ConsumerApp
from realtime.http import AsyncHttpConsumer

__all__ = ["ClientScript", "client_app", "script"]

#: The comment line in realtime.js above which the classic form keeps everything.
_EXPORTS = "\n// realtime.static.client_app(module=False)"


@cache
def script(module: bool = True) -> bytes:
    """``realtime.js`` as an ES module (``module=True``: ``export {RealtimeSocket}``), or
    as a classic script that sets ``window.RealtimeSocket`` (the same code in a function,
    without the ``export`` lines)."""
    text = resources.files(__name__).joinpath("realtime.js").read_text("utf-8")
    if module:
        return text.encode("utf-8")
    code, found, _ = text.partition(_EXPORTS)
    if not found:
        raise RuntimeError("realtime.js has lost its exports marker line")
    classic = (
        '(() => {\n"use strict";\n' + code.rstrip()
        + "\nglobalThis.RealtimeSocket = RealtimeSocket;\n})();\n"
    )
    return classic.encode("utf-8")


class ClientScript(AsyncHttpConsumer):
    """Answers with one JavaScript file (``client_app()`` makes it)."""

    body: bytes = b""
    etag: bytes = b""
    cache_control: bytes = b"no-cache"

    async def handle(self, body: bytes) -> None:
        method = self.scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await self.send_response(405, b"method not allowed\n", headers=[
                (b"allow", b"GET, HEAD"), (b"content-type", b"text/plain; charset=utf-8")])
            return
        common = [(b"etag", self.etag), (b"cache-control", self.cache_control)]
        if _matches(self._header(b"if-none-match"), self.etag):
            await self.send_headers(status=304, headers=common)
            await self.send_body(b"")
            return
        await self.send_response(200, self.body, headers=[
            (b"content-type", b"text/javascript; charset=utf-8"),
            (b"x-content-type-options", b"nosniff"),
            *common,
        ])

    def _header(self, name: bytes) -> bytes | None:
        values = [v for k, v in self.scope.get("headers", ()) if k.lower() == name]
        return b",".join(values) if values else None


def _matches(if_none_match: bytes | None, etag: bytes) -> bool:
    """``If-None-Match`` names this entity (weak comparison, as RFC 9110 asks for it)."""
    if if_none_match is None:
        return False
    for candidate in if_none_match.split(b","):
        tag = candidate.strip()
        if tag == b"*" or tag.removeprefix(b"W/") == etag:
            return True
    return False


def client_app(module: bool = True, cache_control: str = "no-cache") -> ConsumerApp:
    """The HTTP app that serves ``realtime.js``: mount it with ``path("realtime.js",
    client_app())``. ``module=False`` serves the classic-script form (sets
    ``window.RealtimeSocket``); ``cache_control`` is the ``Cache-Control`` value (say
    ``"public, max-age=31536000, immutable"`` on a URL that names the version)."""
    body = script(module)
    etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode("ascii") + b'"'
    options: dict[str, Any] = {
        "body": body, "etag": etag, "cache_control": cache_control.encode("latin-1"),
    }
    return ClientScript.as_app(**options)
