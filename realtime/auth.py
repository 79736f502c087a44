"""Users: ``AuthMiddleware`` puts ``scope["user"]`` in the scope from the session.

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

    async def resolve_scope(self, scope: Scope) -> None:
        if scope.get("user") is not None and scope["user"].is_authenticated:
            return
        session = scope.get("session")
        if session is None:
            raise ValueError(
                "AuthMiddleware cannot find scope['session']: wrap it in SessionMiddleware "
                "(or use AuthMiddlewareStack)"
            )
        user_id = session.get(SESSION_KEY)
        user = None
        if user_id is not None:
            user = await resolve(self.user_loader(user_id))
        scope["user"] = user if user is not None else AnonymousUser()


async def login(scope: Scope, user: Any, backend: Any = None) -> None:
    """Remember ``user`` in the session under a new session id (no fixation).
    ``backend`` is Channels' argument, accepted so calls port: the ``user_loader`` finds
    users here, not a Django auth backend."""
    session = scope.get("session")
    if session is None:
        raise ValueError("login() needs scope['session'] (SessionMiddleware)")
    if user is None or getattr(user, "id", None) is None:
        raise ValueError("login() needs a user with an id")
    session.cycle_key()
    session[SESSION_KEY] = str(user.id)
    scope["user"] = user


async def logout(scope: Scope) -> None:
    """Forget the user: the session is emptied and its id dropped."""
    session = scope.get("session")
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
