"""Cookies: ``CookieMiddleware`` (``scope["cookies"]``) and ``Set-Cookie`` helpers.

Parsing never raises: a malformed pair is skipped, the rest of the header still counts
(browsers send what they like; a bad cookie must not cost a user the connection).
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from typing import Any

from realtime.middleware import BaseMiddleware
from realtime.routing import Scope

_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VALUE_FORBIDDEN = re.compile(r'[\x00-\x20",;\\\x7f]')


def parse_cookie(header: str) -> dict[str, str]:
    """``a=1; b="2"`` -> ``{"a": "1", "b": "2"}``; bad pairs are skipped; the first of
    duplicate names wins (as browsers order the most specific first)."""
    cookies: dict[str, str] = {}
    for chunk in header.split(";"):
        name, sep, value = chunk.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not _NAME.match(name):
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if name not in cookies:
            cookies[name] = value
    return cookies


def cookies_from_scope(scope: Scope) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            for key, val in parse_cookie(value.decode("latin-1")).items():
                cookies.setdefault(key, val)
    return cookies


def set_cookie(
    key: str,
    value: str = "",
    *,
    max_age: int | None = None,
    expires: float | None = None,
    path: str = "/",
    domain: str | None = None,
    secure: bool = False,
    httponly: bool = False,
    samesite: str | None = "Lax",
) -> tuple[bytes, bytes]:
    """A ``(b"Set-Cookie", value)`` header pair; ``ValueError`` for anything that could break
    the header (CR/LF, ``;`` in a value, an invalid name or SameSite)."""
    if not _NAME.match(key):
        raise ValueError(f"invalid cookie name {key!r}")
    if _VALUE_FORBIDDEN.search(value):
        raise ValueError(f"invalid cookie value for {key!r}")
    parts = [f"{key}={value}"]
    if max_age is not None:
        parts.append(f"Max-Age={int(max_age)}")
        if expires is None:
            expires = time.time() + int(max_age)
    if expires is not None:
        parts.append("Expires=" + formatdate(expires, usegmt=True))
    for attr, text in (("Path", path), ("Domain", domain)):
        if text:
            if re.search(r"[;\r\n\x00]", text):
                raise ValueError(f"invalid cookie {attr}")
            parts.append(f"{attr}={text}")
    if secure:
        parts.append("Secure")
    if httponly:
        parts.append("HttpOnly")
    if samesite:
        if samesite.capitalize() not in ("Lax", "Strict", "None"):
            raise ValueError("samesite must be Lax, Strict or None")
        parts.append(f"SameSite={samesite.capitalize()}")
    return (b"Set-Cookie", "; ".join(parts).encode("latin-1"))


def delete_cookie(key: str, path: str = "/", domain: str | None = None,
                  samesite: str | None = None) -> tuple[bytes, bytes]:
    """As Django's ``delete_cookie``: a ``__Secure-``/``__Host-`` name, or
    ``SameSite=None``, is only deleted by a ``Secure`` cookie."""
    secure = key.startswith(("__Secure-", "__Host-")) or (
        samesite is not None and samesite.lower() == "none")
    return set_cookie(key, "", max_age=0, expires=0, path=path, domain=domain, secure=secure,
                      samesite=samesite)


class CookieMiddleware(BaseMiddleware):
    """Adds ``scope["cookies"]`` (a dict) from the request's ``Cookie`` headers."""

    def populate_scope(self, scope: Scope) -> None:
        if "cookies" not in scope:
            scope["cookies"] = cookies_from_scope(scope)

    set_cookie = staticmethod(set_cookie)
    delete_cookie = staticmethod(delete_cookie)


def add_response_headers(scope: Scope, hook: Any) -> None:
    """Register ``hook() -> [(name, value), ...]``: called when the response head is written
    (the 101 of a WebSocket, or an ``AsyncHttpConsumer``'s ``send_headers``)."""
    scope.setdefault("realtime.response_hooks", []).append(hook)


def response_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The headers every registered hook adds (the bridge calls this once)."""
    headers: list[tuple[bytes, bytes]] = []
    for hook in scope.get("realtime.response_hooks", ()):
        headers.extend(hook())
    return headers
