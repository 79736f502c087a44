"""Middleware: applications that wrap an inner application.

A middleware may change the scope, refuse (``raise Refuse(...)``) or hand on with
``return await self.inner(scope)``. Keep no per-connection state on the instance: one
instance serves every connection.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.internet.defer import Deferred

from realtime.routing import Application, Scope, mount, not_asgi


async def resolve(value: Any) -> Any:
    """Await ``value`` if it is a Deferred, coroutine or other awaitable; else return it."""
    while isinstance(value, Deferred) or inspect.isawaitable(value):
        value = await value
    return value


class BaseMiddleware:
    """Base class for middleware: copies the scope, lets ``populate_scope`` add to it,
    awaits ``resolve_scope`` (for lazy lookups such as loading a user), then calls inner."""

    def __init__(self, inner: Application) -> None:
        if not callable(inner):
            raise TypeError(f"{type(self).__name__}: the inner application is not callable")
        self.inner = mount(inner)

    def populate_scope(self, scope: Scope) -> None:
        """Add keys to the scope before the inner application sees it."""

    async def resolve_scope(self, scope: Scope) -> None:
        """Fill in what needs waiting for (a user lookup, a session load)."""

    async def __call__(self, scope: Scope, *asgi: Any) -> Any:
        if asgi:
            raise not_asgi(self)
        scope = dict(scope)
        self.populate_scope(scope)
        await self.resolve_scope(scope)
        return await resolve(self.inner(scope))
