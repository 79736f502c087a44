"""Users: ``AuthMiddleware`` puts ``scope["user"]`` in the scope from the session.

With Django's sessions (a Django project: ``realtime.sessions.DjangoSessionStore``) the
user is Django's, found as Django's ``get_user`` finds it, and ``login``/``logout`` are
Django's own, each in a worker thread: a user logged in through a Django view is logged in
on the socket, as under Channels' ``AuthMiddlewareStack``.

Without Django there is no user model: a *user loader* (an async function, or one returning a
Deferred) turns the id stored at ``login()`` into your user object; the default gives a
``User`` with just that id. ``TokenAuthMiddleware`` (``realtime.tokens``) fills the same
``scope["user"]`` from a JWT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from realtime.middleware import BaseMiddleware, resolve
from realtime.routing import Application, Scope
from realtime.sessions import is_django_session

SESSION_KEY = "_auth_user_id"


class AnonymousUser:
    id = None
    pk = None
    is_authenticated = False
    is_anonymous = True
    claims: dict[str, Any] = {}

    def __repr__(self) -> str:
        return "AnonymousUser"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AnonymousUser)

    def __hash__(self) -> int:
        return 0


class User:
    """A signed-in user: ``id``, ``is_authenticated``, and ``claims`` for token users."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, id: Any, claims: dict[str, Any] | None = None, **attributes: Any) -> None:
        self.id = self.pk = id
        self.claims = claims or {}
        for name, value in attributes.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"User({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, User) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


async def default_user_loader(user_id: str) -> Any:
    return User(user_id)


class AuthMiddleware(BaseMiddleware):
    """Adds ``scope["user"]`` from ``scope["session"]`` (needs ``SessionMiddleware``)."""

    def __init__(
        self, inner: Application, user_loader: Callable[[str], Any] | None = None
    ) -> None:
        super().__init__(inner)
        self.user_loader = user_loader or default_user_loader
        #: A Django session's user comes from Django (``get_user``) unless a loader is given.
        self.django_users = user_loader is None

    async def resolve_scope(self, scope: Scope) -> None:
        if scope.get("user") is not None and scope["user"].is_authenticated:
            return
        session = scope.get("session")
        if session is None:
            raise ValueError(
                "AuthMiddleware cannot find scope['session']: wrap it in SessionMiddleware "
                "(or use AuthMiddlewareStack)"
            )
        if self.django_users and is_django_session(session):
            from realtime.db import in_db_thread

            scope["user"] = await in_db_thread(_django_user, scope, session)
            return
        user_id = session.get(SESSION_KEY)
        user = None
        if user_id is not None:
            user = await resolve(self.user_loader(user_id))
        scope["user"] = user if user is not None else AnonymousUser()


def _request(scope: Scope, session: Any, user: Any = None) -> Any:
    """A Django request for Django's ``get_user``/``login``/``logout`` and the receivers of
    their signals: Django's own ``ASGIRequest`` built from the scope (headers in ``META``,
    client, server, path, cookies), with the session and the user."""
    import io

    from django.core.handlers.asgi import ASGIRequest

    request = ASGIRequest({**scope, "method": "GET"}, io.BytesIO())
    request.session = session
    if user is not None:
        request.user = user
    return request


def _is_django_user(user: Any) -> bool:
    """A Django user (a model instance, or Django's ``AnonymousUser``)."""
    return type(user).__module__.startswith("django.") or hasattr(user, "_meta")


def _django_user(scope: Scope, session: Any) -> Any:
    """In a worker thread: Django's user for the session (its ``get_user``: the backend
    the login used, the password-change hash check), or Django's ``AnonymousUser``. When
    that changed the session (a hash upgraded after a ``SECRET_KEY`` rotation, which
    cycles the key), it is saved here: its old row is gone."""
    from django.contrib.auth import get_user

    user = get_user(_request(scope, session))
    if session.modified and not session.is_empty():
        session.save()
    return user


def _django_login(scope: Scope, session: Any, user: Any, backend: Any) -> None:
    """In a worker thread: Django's ``login`` (a new session key, the ``user_logged_in``
    signal, ``last_login``), then the session saved: the next request sees the user."""
    from django.contrib.auth import login as django_login

    django_login(_request(scope, session, scope.get("user")), user, backend)
    session.save()


def _loader_login(session: Any, user: Any) -> None:
    """In a worker thread: a ``user_loader`` user (not Django's) in a Django session."""
    session.cycle_key()
    session[SESSION_KEY] = str(user.id)
    session.save()


def _django_logout(scope: Scope, session: Any) -> Any:
    """In a worker thread: Django's ``logout`` (the signal, the session deleted); Django's
    ``AnonymousUser``. A ``user_loader`` user's session is just flushed."""
    from django.contrib.auth import logout as django_logout
    from django.contrib.auth.models import AnonymousUser as DjangoAnonymousUser

    current = scope.get("user")
    if current is not None and not _is_django_user(current):
        session.flush()
        return AnonymousUser()
    request = _request(scope, session, current)
    django_logout(request)
    return getattr(request, "user", None) or DjangoAnonymousUser()


async def login(scope: Scope, user: Any, backend: Any = None) -> None:
    """Remember ``user`` in the session under a new session id (no fixation).
    ``backend`` is Channels' argument: with Django's sessions (``DjangoSessionStore``) and
    a Django user this is Django's ``login(request, user, backend)``, run in a worker
    thread, and the session is saved (Channels leaves the save to you); elsewhere the
    ``user_loader`` finds users and ``backend`` is unused."""
    session = scope.get("session")
    if session is None:
        raise ValueError("login() needs scope['session'] (SessionMiddleware)")
    if user is None or getattr(user, "pk", getattr(user, "id", None)) is None:
        raise ValueError("login() needs a user with an id")
    if is_django_session(session):
        from realtime.db import in_db_thread

        if _is_django_user(user):
            await in_db_thread(_django_login, scope, session, user, backend)
        else:
            await in_db_thread(_loader_login, session, user)
        scope["user"] = user
        return
    session.cycle_key()
    session[SESSION_KEY] = str(user.id)
    scope["user"] = user


async def logout(scope: Scope) -> None:
    """Forget the user: the session is emptied and its id dropped (with Django's sessions,
    Django's ``logout``: the session is deleted and ``scope["user"]`` is Django's
    ``AnonymousUser``)."""
    session = scope.get("session")
    if session is not None and is_django_session(session):
        from realtime.db import in_db_thread

        scope["user"] = await in_db_thread(_django_logout, scope, session)
        return
    if session is not None:
        session.flush()
    scope["user"] = AnonymousUser()


def AuthMiddlewareStack(
    inner: Application, user_loader: Callable[[str], Any] | None = None
) -> BaseMiddleware:
    """Cookies, sessions, then users: Channels' stack."""
    from realtime.cookies import CookieMiddleware
    from realtime.sessions import SessionMiddleware

    return CookieMiddleware(SessionMiddleware(AuthMiddleware(inner, user_loader)))
