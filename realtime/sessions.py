"""Sessions: ``SessionMiddleware`` puts a dict-like ``scope["session"]`` in the scope.

Three stores of its own: ``cookie`` (the whole session, signed with HMAC-SHA256, in the
cookie; needs a secret key; old keys still verify, so keys rotate without logging everybody
out), ``memory`` and ``redis://...`` (the cookie holds a random session id). A tampered,
forged or expired cookie is an empty session, never an error. In a Django project (Django
set up with ``django.contrib.sessions``), ``auto``, the default, means Django's own
sessions instead (``DjangoSessionStore``): the same cookie and the same users as its views.

Changes made before ``accept()`` go out as ``Set-Cookie`` on the handshake response. After
accept a cookie-store session cannot reach the browser any more, so ``save()`` raises
``SessionError`` there; server-side stores save at any time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger

from realtime.cookies import add_response_headers, cookies_from_scope, delete_cookie, set_cookie
from realtime.middleware import BaseMiddleware
from realtime.routing import Application, Scope
from realtime.settings import ConfigurationError, settings

log = Logger()


class SessionError(Exception):
    """A session operation that cannot work here (e.g. a cookie-store save after accept)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """HMAC-SHA256 over ``payload.timestamp``; the first key signs, every key verifies."""

    def __init__(self, keys: list[str], salt: str = "realtime.sessions") -> None:
        if not keys or not all(keys):
            raise ConfigurationError("a signing key is required")
        self._keys = [hashlib.sha256((salt + ":" + key).encode()).digest() for key in keys]

    def _mac(self, key: bytes, message: str) -> str:
        return _b64(hmac.new(key, message.encode("ascii"), hashlib.sha256).digest())

    def sign(self, payload: str, now: float) -> str:
        message = f"{payload}.{int(now):x}"
        return f"{message}.{self._mac(self._keys[0], message)}"

    def unsign(self, value: str, max_age: float, now: float) -> str | None:
        """The payload, or None when the signature is wrong or the value is too old."""
        try:
            message, _, mac = value.rpartition(".")
            payload, _, stamp = message.rpartition(".")
            issued = int(stamp, 16)
        except ValueError:
            return None
        if not payload or not any(
            hmac.compare_digest(self._mac(key, message), mac) for key in self._keys
        ):
            return None
        if now - issued > max_age or issued - now > 60:
            return None
        return payload


class CookieStore:
    """The session *is* the cookie: signed JSON."""

    kind = "cookie"

    def __init__(
        self, secret_key: str | None, old_keys: list[str] | None = None,
        max_age: int = 1209600, clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret_key:
            hint = ""
            if os.environ.get("DJANGO_SETTINGS_MODULE"):
                # A Django project whose middleware was built before django.setup().
                hint = ("; for Django's own sessions, set Django up (get_asgi_application()) "
                        "before building the middleware")
            raise ConfigurationError(
                "SessionMiddleware with the cookie store needs a secret key "
                "(--secret-key or --secret-key-file), or use --session-store memory|redis://"
                + hint
            )
        self.signer = Signer([secret_key, *(old_keys or [])])
        self.max_age = max_age
        self.clock = clock

    def decode(self, value: str) -> dict[str, Any]:
        payload = self.signer.unsign(value, self.max_age, self.clock())
        if payload is None:
            return {}
        try:
            data = json.loads(_unb64(payload))
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def encode(self, data: dict[str, Any]) -> str:
        payload = _b64(json.dumps(data, separators=(",", ":")).encode())
        return self.signer.sign(payload, self.clock())


class MemorySessionStore:
    """Sessions in this process's memory, by random id (lost on restart; one process)."""

    kind = "server"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._data: dict[str, tuple[dict[str, Any], float]] = {}
        self.clock = clock

    def load(self, key: str) -> Deferred[dict[str, Any] | None]:
        entry = self._data.get(key)
        if entry is None:
            return succeed(None)
        data, expires = entry
        if expires < self.clock():
            del self._data[key]
            return succeed(None)
        return succeed(json.loads(json.dumps(data)))

    def save(self, key: str, data: dict[str, Any], max_age: int) -> Deferred[None]:
        self._data[key] = (json.loads(json.dumps(data)), self.clock() + max_age)
        return succeed(None)

    def delete(self, key: str) -> Deferred[None]:
        self._data.pop(key, None)
        return succeed(None)


#: The ``--session-store`` values that are Redis URLs (the forms ``--layer`` takes; a
#: cluster's is refused by name).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://",
                 "rediss+cluster://")


class RedisSessionStore:
    """Sessions in Redis (``SETEX realtime:session:<id>``), shared by every process. The
    URL takes the forms ``--layer`` does (an ACL user, TLS, a socket, Sentinel)."""

    kind = "server"
    prefix = "realtime:session:"
    #: Seconds a command may wait for Redis (a connection, then the reply): past it the
    #: request fails with ``SessionError`` (a 500 naming the store) instead of hanging for
    #: as long as Redis is away. Below ``--websocket-connect-timeout``'s default of 5 s.
    timeout = 3.0

    def __init__(self, url: str, reactor: Any = None) -> None:
        from realtime.redis_url import parse_redis_url

        self.address = parse_redis_url(url)
        self._client: Any = None
        self._reactor = reactor

    def _connection(self) -> Any:
        if self._client is None:
            from realtime.redis_url import LazyClient

            self._client = LazyClient(self.address)
        return self._client.commands

    def _bounded(self, d: Deferred[Any]) -> Deferred[Any]:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor

        def timed_out(failure: Any) -> None:
            from txredisapi import ConnectionError as NotConnected

            where = f"--session-store {self.address.describe()}"
            if failure.check(NotConnected):  # lost, or given up on (a refused password)
                raise SessionError(f"{where}: {failure.getErrorMessage()}")
            failure.trap(DeferredTimeout)
            if self._client is not None:
                self._client.forget_cancelled()
            raise SessionError(f"{where}: no answer from Redis within {self.timeout:g} s")

        return d.addTimeout(self.timeout, self._reactor).addErrback(timed_out)

    def load(self, key: str) -> Deferred[dict[str, Any] | None]:
        d: Deferred[Any] = self._bounded(self._connection().get(self.prefix + key))

        def decode(raw: Any) -> dict[str, Any] | None:
            if raw is None:
                return None
            try:
                data = json.loads(raw)
            except ValueError:
                return None
            return data if isinstance(data, dict) else None

        return d.addCallback(decode)

    def save(self, key: str, data: dict[str, Any], max_age: int) -> Deferred[None]:
        d: Deferred[Any] = self._bounded(self._connection().setex(
            self.prefix + key, max_age, json.dumps(data)
        ))
        return d.addCallback(lambda _: None)

    def delete(self, key: str) -> Deferred[None]:
        d: Deferred[Any] = self._bounded(self._connection().delete(self.prefix + key))
        return d.addCallback(lambda _: None)

    def close(self) -> Deferred[None]:
        if self._client is not None:
            client, self._client = self._client, None
            return client.disconnect()
        return succeed(None)


class DjangoSessionStore:
    """Django's own sessions (``SESSION_ENGINE``, ``SESSION_COOKIE_*``): a user logged in
    through a Django view is logged in on the socket, as under Channels. The session is
    Django's ``SessionStore`` object, loaded in a worker thread before the consumer runs
    (its database is not touched on the reactor thread); as in Channels, a change is
    saved when the app saves it (``await database_sync_to_async(session.save)()``) or by
    ``login()``/``logout()``. When its key changed before the response head (a login or
    logout before ``accept()``), the head carries the new cookie (or its deletion)."""

    kind = "django"

    def __init__(self) -> None:
        from django.conf import settings as django_settings

        self.settings = django_settings

    @property
    def cookie_name(self) -> str:
        return str(self.settings.SESSION_COOKIE_NAME)

    def open(self, key: str | None) -> Any:
        """In a worker thread: the session for cookie value ``key``, loaded now."""
        from importlib import import_module

        engine = import_module(self.settings.SESSION_ENGINE)
        session = engine.SessionStore(key or None)
        session.keys()  # Django loads lazily: here, not on the reactor thread
        return session

    def save_if_changed(self, session: Any) -> None:
        """In a worker thread: save a changed, non-empty session (what Django's
        ``SessionMiddleware`` does before a response, and Channels' before an HTTP one)."""
        if session.modified and not session.is_empty():
            session.save()

    def response_headers(self, session: Any, had: str | None) -> list[tuple[bytes, bytes]]:
        """``Set-Cookie`` when the session's key is no longer the cookie's ``had``, as
        Django's ``SessionMiddleware`` writes it (its settings, its expiry)."""
        key = session.session_key
        if key == (had or None):
            return []
        conf = self.settings
        samesite = conf.SESSION_COOKIE_SAMESITE or None
        if key is None or session.is_empty():
            if not had:
                return []
            return [delete_cookie(self.cookie_name, path=conf.SESSION_COOKIE_PATH,
                                  domain=conf.SESSION_COOKIE_DOMAIN, samesite=samesite)]
        at_close = session.get_expire_at_browser_close()
        return [set_cookie(self.cookie_name, key,
                           max_age=None if at_close else session.get_expiry_age(),
                           path=conf.SESSION_COOKIE_PATH, domain=conf.SESSION_COOKIE_DOMAIN,
                           secure=bool(conf.SESSION_COOKIE_SECURE),
                           httponly=bool(conf.SESSION_COOKIE_HTTPONLY),
                           samesite=samesite)]


def django_sessions() -> bool:
    """Django is set up with ``django.contrib.sessions`` installed."""
    from realtime.db import django_ready

    if not django_ready():
        return False
    from django.apps import apps

    return bool(apps.is_installed("django.contrib.sessions"))


def _django_not_set_up() -> bool:
    """A Django project whose middleware is built before ``django.setup()``: choosing
    realtime's own cookie store then would overwrite Django's ``sessionid``. (Set up
    without ``django.contrib.sessions``, a project has no Django sessions to read.)"""
    from realtime.db import django_ready

    if django_ready():
        return False
    if "django.conf" in sys.modules:
        from django.conf import settings as django_settings

        if django_settings.configured:
            return True
    return bool(os.environ.get("DJANGO_SETTINGS_MODULE"))


def is_django_session(session: Any) -> bool:
    """``session`` is one of Django's ``SessionStore`` objects (``DjangoSessionStore``)."""
    base = sys.modules.get("django.contrib.sessions.backends.base")
    return base is not None and isinstance(session, base.SessionBase)


def store_from_setting(value: str | None = None) -> Any:
    value = value or settings.session_store
    if value == "auto":
        if django_sessions():
            value = "django"
        elif _django_not_set_up():
            raise ConfigurationError(
                "--session-store auto: Django is configured but not set up yet, so its "
                "sessions cannot be read; call django.setup() (or get_asgi_application()) "
                "before building the middleware, or choose --session-store cookie"
            )
        else:
            value = "cookie"
    if value == "django":
        if not django_sessions():
            raise ConfigurationError(
                "--session-store django: Django is not set up with django.contrib.sessions "
                "in INSTALLED_APPS (call django.setup() or get_asgi_application() before "
                "building the middleware)"
            )
        return DjangoSessionStore()
    if value == "cookie":
        return CookieStore(settings.secret_key, settings.old_secret_keys,
                           settings.session_cookie_age)
    if value == "memory":
        return MemorySessionStore()
    if value.startswith(REDIS_SCHEMES):
        try:
            return RedisSessionStore(value)
        except ValueError as exc:
            raise ConfigurationError(f"--session-store: {exc}") from None
    from realtime.layers.redis import redact_url  # (imports no txredisapi)

    raise ConfigurationError(
        f"--session-store: expected auto, django, cookie, memory or redis://..., "
        f"got {redact_url(value)!r}"
    )


class Session(MutableMapping[str, Any]):
    """A dict with ``save()``, ``flush()``, ``cycle_key()`` and ``session_key``."""

    def __init__(self, store: Any, key: str | None, data: dict[str, Any], secure: bool) -> None:
        self._store = store
        self.session_key = key
        self._data = data
        self._secure = secure
        self._old_key: str | None = None
        self.modified = False
        self._save_requested = False
        #: Set once the response head (the 101) has gone out.
        self.headers_sent = False
        self._had_cookie = bool(key) or bool(data)

    def __getitem__(self, name: str) -> Any:
        return self._data[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._data[name] = value
        self.modified = True

    def __delitem__(self, name: str) -> None:
        del self._data[name]
        self.modified = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"<Session {len(self._data)} keys>"

    def save(self) -> Deferred[None]:
        """Before accept: the change goes out with the handshake. After accept: a server-side
        store saves now; the cookie store raises ``SessionError``."""
        if self._store.kind == "cookie":
            if self.headers_sent:
                raise SessionError(
                    "a cookie-store session cannot change after accept(): the cookie went out "
                    "with the handshake. Save before accept(), or use --session-store "
                    "memory or redis://..."
                )
            self._save_requested = True
            return succeed(None)
        if not self.headers_sent:
            self._save_requested = True
            return succeed(None)
        if self.session_key is None:
            raise SessionError(
                "this session has no id the browser knows: save it before accept()"
            )
        self.modified = False
        return self._store.save(self.session_key, self._data, settings.session_cookie_age)

    def flush(self) -> None:
        """Empty the session and drop its id (logout)."""
        self._data.clear()
        self._retire_key()
        self.session_key = None
        self.modified = True

    def cycle_key(self) -> None:
        """Keep the data under a new id (login: no session fixation)."""
        self._retire_key()
        self.session_key = None
        self.modified = True

    def _retire_key(self) -> None:
        if self._store.kind == "server" and self.session_key and self._old_key is None:
            self._old_key = self.session_key

    # -- the response head --------------------------------------------------------------------
    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """``Set-Cookie`` for changes made so far; called once, when the head goes out."""
        self.headers_sent = True
        if not (self.modified or self._save_requested):
            return []
        self.modified = self._save_requested = False
        name = settings.session_cookie_name
        attrs: dict[str, Any] = {
            "max_age": settings.session_cookie_age,
            "secure": self._secure,
            "httponly": True,
            "samesite": settings.session_cookie_samesite,
        }
        if self._old_key is not None:
            self._store.delete(self._old_key).addErrback(
                lambda f: log.failure("deleting an old session failed", f)
            )
            self._old_key = None
        if not self._data:
            return [delete_cookie(name)] if self._had_cookie else []
        if self._store.kind == "cookie":
            return [set_cookie(name, self._store.encode(self._data), **attrs)]
        if self.session_key is None:
            self.session_key = secrets.token_urlsafe(24)
        self._store.save(self.session_key, dict(self._data), settings.session_cookie_age
                         ).addErrback(lambda f: log.failure("saving a session failed", f))
        return [set_cookie(name, self.session_key, **attrs)]


class SessionMiddleware(BaseMiddleware):
    """Adds ``scope["session"]``; the store comes from ``--session-store`` unless given."""

    def __init__(self, inner: Application, store: Any = None) -> None:
        super().__init__(inner)
        self.store = store if store is not None else store_from_setting()
        if self.store.kind == "django":
            log.info("sessions: Django's ({engine})",
                     engine=self.store.settings.SESSION_ENGINE)

    async def resolve_scope(self, scope: Scope) -> None:
        if "session" in scope:
            return
        cookies = scope.get("cookies")
        if cookies is None:
            cookies = scope["cookies"] = cookies_from_scope(scope)
        if self.store.kind == "django":
            from realtime.db import in_db_thread

            had = cookies.get(self.store.cookie_name)
            django_session = await in_db_thread(self.store.open, had)
            scope["session"] = django_session
            # An HTTP consumer's changes are saved before its head (as Django and Channels
            # do for HTTP); a WebSocket's are saved by the app (Channels' rule).
            if scope.get("type") == "http":
                scope.setdefault("realtime.before_head", []).append(
                    lambda: in_db_thread(self.store.save_if_changed, django_session))
            add_response_headers(
                scope, lambda: self.store.response_headers(django_session, had))
            return
        raw = cookies.get(settings.session_cookie_name)
        secure = scope.get("scheme") in ("wss", "https")
        key: str | None = None
        data: dict[str, Any] = {}
        if raw:
            if self.store.kind == "cookie":
                data = self.store.decode(raw)
            else:
                loaded = await self.store.load(raw)
                if loaded is not None:
                    key, data = raw, loaded
        session = Session(self.store, key, data, secure)
        session._had_cookie = bool(raw)
        scope["session"] = session
        add_response_headers(scope, session.response_headers)


def SessionMiddlewareStack(inner: Application) -> BaseMiddleware:
    """Cookies, then sessions."""
    from realtime.cookies import CookieMiddleware

    return CookieMiddleware(SessionMiddleware(inner))
