"""The admin web UI (``--admin-path``): one page that is a client of the server API.

Why: Centrifugo ships an admin UI (its nodes, channels, a publish form); a team coming from
it keeps that view. The page, ``realtime/static/admin.html`` (HTML with one inline style
and one inline script: nothing is fetched from anywhere else, nothing is built), asks for
an API key, keeps it in the page's memory only (a reload asks again) and sends it nowhere
but the same-origin ``POST /api/<method>`` calls (beside the page: a proxy that routes
this server under a path prefix serves the page at ``<prefix>/admin`` and the API at
``<prefix>/api/``; with the browser's credentials for the origin, so a proxy's access
control in front of the page guards them too), in ``X-API-Key``
(``realtime.pubsub_api``: ``info``, ``channels``, ``presence_stats``, ``presence``,
``history``, ``publish``, ``disconnect``, ``unsubscribe``). The server gives the page no
data of its own and no other power: without a key it is an empty form.

It is served (GET, HEAD; 405 otherwise) with ``Cache-Control: no-store`` and a strict
Content-Security-Policy: the inline script and style run by their SHA-256 hashes (taken
here from the file, so an edit cannot forget them), nothing else loads, ``fetch`` reaches
only the page's origin, no page may frame it, and Trusted Types refuse every HTML sink
(``innerHTML`` and the like throw: the page writes text with ``textContent`` only, so a
channel named ``<img src=x onerror=...>`` stays text).
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["HEADERS", "page", "serve"]

#: The headers of every answer of the page's path but the CSP (``page()`` makes that).
HEADERS = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


def _hash(code: str) -> str:
    digest = hashlib.sha256(code.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


@cache
def page() -> tuple[bytes, bytes]:
    """(the page's bytes, its Content-Security-Policy)."""
    text = resources.files("realtime.static").joinpath("admin.html").read_text("utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", text, re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", text, re.DOTALL)
    if len(scripts) != 1 or len(styles) != 1 or text.count("<script") != 1:
        raise RuntimeError("admin.html must have exactly one inline <script> and <style>")
    policy = "; ".join([
        "default-src 'none'",
        f"script-src {_hash(scripts[0])}",
        f"style-src {_hash(styles[0])}",
        "connect-src 'self'",
        "img-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ])
    return text.encode("utf-8"), policy.encode("ascii")


def serve(request: Any) -> None:
    """Answer a request for the admin path (``RealtimeSite.dispatch`` sends it here when
    ``--admin-path`` and an API key are set)."""
    body, policy = page()
    # The path it was asked at (the admin path): the page's script finds the server API
    # beside it, under a proxy's path prefix too.
    served = html.escape(request.path.decode("ascii", "replace"), quote=True)
    body = body.replace(b"<head>\n", b'<head>\n<meta name="realtime-admin-path" content="'
                        + served.encode("ascii", "replace") + b'">\n', 1)
    for name, value in HEADERS:
        request.setHeader(name, value)
    if request.method not in (b"GET", b"HEAD"):
        body = b"method not allowed\n"
        request.setResponseCode(405)
        request.setHeader(b"allow", b"GET, HEAD")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    else:
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", policy)
    request.setHeader(b"content-length", str(len(body)).encode())
    if request.method != b"HEAD":
        request.write(body)
    request.finish()
