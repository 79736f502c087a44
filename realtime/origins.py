"""Origin checks: ``OriginValidator`` and ``AllowedHostsOriginValidator`` (Channels' names and
pattern forms), on WebSocket and HTTP scopes. A refusal is 403.

Patterns: ``"*"`` (anything, and a missing Origin); ``"https://app.example.com[:port]"``
(scheme, host and port; 80/443 implied by the scheme); ``".example.com"`` (the domain and
every subdomain, any scheme and port); ``"example.com"`` (that host, any scheme and port);
``"example.com:8443"`` (that host and port). On a WebSocket a missing or ``null`` Origin
passes only with ``"*"``; on plain HTTP a request without Origin (not a cross-site browser
request) passes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from twisted.logger import Logger

from realtime.exceptions import Refuse
from realtime.middleware import BaseMiddleware
from realtime.routing import Application, Scope

log = Logger()

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _split_origin(origin: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(origin)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not host:
        return None
    scheme = parts.scheme.lower()
    return scheme, host.lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


def origin_allowed(origin: str | None, patterns: Iterable[str]) -> bool:
    patterns = list(patterns)
    if "*" in patterns:
        return True
    if not origin or origin == "null":
        return False
    parsed = _split_origin(origin)
    if parsed is None:
        return False
    scheme, host, port = parsed
    for pattern in patterns:
        pattern = pattern.strip().lower()
        if not pattern:
            continue
        if "://" in pattern:
            want = _split_origin(pattern)
            if want is not None and want == (scheme, host, port):
                return True
        elif pattern.startswith("."):
            if host == pattern[1:] or host.endswith(pattern):
                return True
        else:
            want_host, sep, want_port = pattern.rpartition(":")
            if sep and want_port.isdigit():
                if host == want_host.strip("[]") and port == int(want_port):
                    return True
            elif host == pattern.strip("[]"):
                return True
    return False


def _origin_header(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"origin":
            return value.decode("latin-1")
    return None


class OriginValidator(BaseMiddleware):
    """Refuse (403) a connection whose ``Origin`` matches none of ``allowed_origins``."""

    def __init__(self, application: Application, allowed_origins: Iterable[str]) -> None:
        super().__init__(application)
        self.allowed_origins = list(allowed_origins)

    def allowed(self, scope: Scope) -> bool:
        origin = _origin_header(scope)
        if scope.get("type") != "websocket" and origin is None:
            return True
        return origin_allowed(origin, self.allowed_origins)

    async def __call__(self, scope: Scope, *asgi: Any) -> Any:
        if not self.allowed(scope):
            raise Refuse(403)
        return await super().__call__(scope, *asgi)


_LOCAL = ["localhost", "127.0.0.1", "[::1]"]


def django_allowed_hosts() -> list[str] | None:
    """Django's ``ALLOWED_HOSTS`` in a Django project (its settings configured, or named by
    ``DJANGO_SETTINGS_MODULE``), as Channels' validator reads them: with ``DEBUG`` an empty
    list means the local hosts, as Django's own check does; None without Django."""
    if "django.conf" not in sys.modules and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return None  # not a Django project: Django is not imported for nothing
    try:
        from django.conf import settings as django_settings
    except ImportError:
        return None
    if not (django_settings.configured or os.environ.get("DJANGO_SETTINGS_MODULE")):
        return None
    try:
        hosts = list(django_settings.ALLOWED_HOSTS)
        debug = bool(django_settings.DEBUG)
    except Exception as exc:  # a DJANGO_SETTINGS_MODULE that does not import
        log.warn("AllowedHostsOriginValidator: Django's settings did not load ({error}); "
                 "only local origins pass", error=exc)
        return None
    return _LOCAL if debug and not hosts else hosts


class AllowedHostsOriginValidator(OriginValidator):
    """``OriginValidator`` over ``--allowed-hosts``; without it, Django's ``ALLOWED_HOSTS``
    in a Django project (what Channels' validator reads, so a ported ``asgi.py`` keeps its
    policy), else only local origins (localhost, 127.0.0.1, [::1]). An ``allowed_hosts``
    given here wins over both (empty: the local ones). Django's settings are read at the
    first connection, once: an ``asgi.py`` may build the validator before Django is
    imported or configured."""

    #: Django's settings are still to be read (at the first connection).
    _read_django = False

    def __init__(
        self, application: Application, allowed_hosts: Iterable[str] | None = None
    ) -> None:
        from realtime.settings import settings

        if allowed_hosts is not None:
            hosts = list(allowed_hosts) or _LOCAL
        elif settings.allowed_hosts:
            hosts = list(settings.allowed_hosts)
        else:
            hosts = []
            self._read_django = True
        super().__init__(application, hosts)

    def allowed(self, scope: Scope) -> bool:
        if self._read_django:
            self._read_django = False
            django_hosts = django_allowed_hosts()
            self.allowed_origins = _LOCAL if django_hosts is None else django_hosts
        return super().allowed(scope)
