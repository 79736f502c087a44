"""Routing applications: by scope type, by path, by channel name.

Pure code (no I/O, no reactor): a router looks at the scope, picks an inner application and
calls it. ``URLRouter`` follows Channels: it matches ``scope["path_remaining"]`` when set,
else the path with ``root_path`` stripped, without its leading ``/``; nested routers are
prefix matches; captures accumulate in ``scope["url_route"]``.
"""

from __future__ import annotations

import functools
import inspect
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from realtime.exceptions import NoRoute

ASGI_MIDDLEWARE_HINT = (
    "was called as an ASGI application (scope, receive, send): realtime's routers, consumers "
    "and BaseMiddleware take the scope alone, so ASGI-3 middleware cannot wrap them; wrap "
    "them in BaseMiddleware (async def __call__(self, scope)) instead, or put the ASGI "
    "middleware around a raw ASGI app mounted inside"
)


def raw_asgi(app: Any) -> bool:
    """Whether ``app`` takes ASGI's ``(scope, receive, send)``: routers, middleware and
    ``--app`` wrap such an app in ``realtime.asgi.AsgiApp``."""
    call: Any
    if inspect.isfunction(app) or inspect.ismethod(app) or isinstance(app, functools.partial):
        call = app  # a partial's signature leaves out what it binds
    elif callable(app):
        call = app.__call__  # bound: no self
    else:
        return False
    if not inspect.iscoroutinefunction(call):
        return False
    try:
        params = inspect.signature(call).parameters.values()
    except (TypeError, ValueError):
        return False
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(required) == 3


def mount(app: Any) -> Any:
    """``app`` as a realtime application: a raw ASGI app is wrapped in ``AsgiApp``."""
    if raw_asgi(app):
        from realtime.asgi import AsgiApp

        return AsgiApp(app)
    return app


def not_asgi(who: Any) -> TypeError:
    """The error for ``who`` called by ASGI-3 middleware with ``receive`` and ``send``."""
    return TypeError(f"{type(who).__name__} {ASGI_MIDDLEWARE_HINT}")

Scope = dict[str, Any]
Application = Callable[[Scope], Any]


class Ready:
    """An application's result that is already there, made awaitable.

    Routers and ``Consumer.as_app()`` return one so that middleware can always write
    ``return await self.inner(scope)``; the bridge unwraps it without a coroutine.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        return self.value
        yield  # a generator: ``await`` finishes at once with ``value``


def ready(result: Any) -> Any:
    """``result`` if it is awaitable already, else ``Ready(result)``."""
    if isinstance(result, Ready) or hasattr(result, "__await__"):
        return result
    return Ready(result)


class RoutedResource:
    """A twisted.web resource with the scope its route matched (``url_route``,
    ``path_remaining``): the site renders the resource on what the route left over."""

    __slots__ = ("resource", "scope")

    def __init__(self, resource: Any, scope: Scope) -> None:
        self.resource = resource
        self.scope = scope


class _ResourceApp:
    """A twisted.web resource used directly as a route's application."""

    def __init__(self, resource: Any) -> None:
        self.resource = resource

    def __call__(self, scope: Scope) -> Ready:
        return Ready(RoutedResource(self.resource, scope))


class Converter(Protocol):
    regex: str

    def to_python(self, value: str) -> Any: ...

    def to_url(self, value: Any) -> str: ...


class StringConverter:
    regex = "[^/]+"

    def to_python(self, value: str) -> Any:
        return value

    def to_url(self, value: Any) -> str:
        return str(value)


class IntConverter(StringConverter):
    regex = "[0-9]+"

    def to_python(self, value: str) -> Any:
        return int(value)


class SlugConverter(StringConverter):
    regex = "[-a-zA-Z0-9_]+"


class UUIDConverter(StringConverter):
    regex = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

    def to_python(self, value: str) -> Any:
        return uuid.UUID(value)


class PathConverter(StringConverter):
    regex = ".+"


_CONVERTERS: dict[str, Converter] = {
    "str": StringConverter(),
    "int": IntConverter(),
    "slug": SlugConverter(),
    "uuid": UUIDConverter(),
    "path": PathConverter(),
}


def register_converter(converter: type | Converter, type_name: str) -> None:
    """Register a path converter under ``type_name`` (Django's signature: class, name)."""
    instance = converter() if isinstance(converter, type) else converter
    if not hasattr(instance, "regex") or not hasattr(instance, "to_python"):
        raise TypeError("a converter needs a regex attribute and a to_python method")
    _CONVERTERS[type_name] = instance


_PARAM = re.compile(r"<(?:(?P<conv>[^>:]+):)?(?P<name>[^>]+)>")


class Route:
    """One ``path()``/``re_path()`` entry: a compiled pattern, an application, extra kwargs."""

    def __init__(
        self,
        pattern: str,
        app: Application | Any,
        kwargs: Mapping[str, Any] | None,
        name: str | None,
        is_regex: bool,
    ) -> None:
        app = mount(app)
        if not callable(app):
            from twisted.web.resource import IResource

            if not IResource.providedBy(app):
                raise TypeError(
                    f"route {pattern!r}: the application must be callable or a twisted.web "
                    "resource"
                )
            app = _ResourceApp(app)
        self.pattern = pattern
        self.app = app
        self.kwargs = dict(kwargs or {})
        self.name = name
        self.converters: dict[str, Converter] = {}
        self.prefix = find_router(app) is not None
        if is_regex:
            source = pattern
        else:
            source = "^" + self._translate(pattern)
        if not self.prefix and not source.endswith("$"):
            source = source if is_regex else source + r"\Z"
        self.regex = re.compile(source)
        self.is_regex = is_regex

    def _translate(self, pattern: str) -> str:
        parts: list[str] = []
        pos = 0
        for m in _PARAM.finditer(pattern):
            parts.append(re.escape(pattern[pos : m.start()]))
            conv_name = m.group("conv") or "str"
            name = m.group("name")
            if not name.isidentifier():
                raise ValueError(f"route {pattern!r}: {name!r} is not a valid parameter name")
            try:
                conv = _CONVERTERS[conv_name]
            except KeyError:
                raise ValueError(f"route {pattern!r}: unknown converter {conv_name!r}") from None
            self.converters[name] = conv
            parts.append(f"(?P<{name}>{conv.regex})")
            pos = m.end()
        parts.append(re.escape(pattern[pos:]))
        return "".join(parts)

    def match(self, path: str) -> tuple[str, tuple[Any, ...], dict[str, Any]] | None:
        """Return (remaining path, args, kwargs), or None; converters may refuse by raising."""
        m = self.regex.search(path)
        if m is None:
            return None
        groups = m.groupdict()
        kwargs: dict[str, Any] = {}
        args: tuple[Any, ...] = ()
        if groups:
            try:
                for key, value in groups.items():
                    if value is None:
                        continue
                    conv = self.converters.get(key)
                    kwargs[key] = conv.to_python(value) if conv else value
            except ValueError:
                return None
        elif self.is_regex:
            args = tuple(g for g in m.groups() if g is not None)
        kwargs.update(self.kwargs)
        return path[m.end() :], args, kwargs

    def __repr__(self) -> str:
        return f"<Route {self.pattern!r}>"


def path(
    route: str,
    view: Application | Any,
    kwargs: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Route:
    """Django-style ``path("room/<slug:name>/", app)``; a nested ``URLRouter`` is a prefix."""
    return Route(route, view, kwargs, name, is_regex=False)


def re_path(
    route: str,
    view: Application | Any,
    kwargs: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Route:
    """Django-style ``re_path(r"^room/(?P<name>\\w+)/$", app)``."""
    return Route(route, view, kwargs, name, is_regex=True)


def find_router(app: Any, depth: int = 16) -> URLRouter | None:
    """The URLRouter inside ``app``, seen through middleware's ``inner`` (Channels cannot)."""
    for _ in range(depth):
        if isinstance(app, URLRouter):
            return app
        app = getattr(app, "inner", None)
        if app is None:
            return None
    return None


class URLRouter:
    """Route by path to the first matching entry; no match raises ``NoRoute`` (404)."""

    def __init__(self, routes: Sequence[Route]) -> None:
        for r in routes:
            if not isinstance(r, Route):
                raise TypeError(f"URLRouter takes path()/re_path() entries, not {r!r}")
        self.routes = list(routes)

    @staticmethod
    def _path_of(scope: Scope) -> str | None:
        remaining = scope.get("path_remaining")
        if remaining is not None:
            return str(remaining)
        full = str(scope.get("path", ""))
        root = str(scope.get("root_path") or "")
        if root:
            # On a segment boundary: with root "/ws", "/wschat/" is not under it.
            if full != root and not full.startswith(root + "/"):
                return None
            full = full[len(root) :]
        return full[1:] if full.startswith("/") else full

    def resolve(self, scope: Scope) -> tuple[Route, str, tuple[Any, ...], dict[str, Any]] | None:
        """The first route (and its captures) that matches this scope, descending into nested
        routers so that a prefix whose inner routes all miss lets the next route try."""
        target = self._path_of(scope)
        if target is None:
            return None
        for route in self.routes:
            found = route.match(target)
            if found is None:
                continue
            if route.prefix:
                inner = find_router(route.app)
                assert inner is not None
                if inner.resolve({"path_remaining": found[0]}) is None:
                    continue
            return (route, *found)
        return None

    def matches(self, scope: Scope) -> bool:
        return self.resolve(scope) is not None

    def __call__(self, scope: Scope, *asgi: Any) -> Any:
        if asgi:
            raise not_asgi(self)
        found = self.resolve(scope)
        if found is None:
            raise NoRoute(str(scope.get("path", "")))
        route, remaining, args, kwargs = found
        outer = scope.get("url_route") or {"args": (), "kwargs": {}}
        new_scope = dict(scope)
        new_scope["path_remaining"] = remaining
        new_scope["url_route"] = {
            "args": tuple(outer["args"]) + args,
            "kwargs": {**outer["kwargs"], **kwargs},
        }
        return ready(route.app(new_scope))


class ProtocolTypeRouter:
    """Pick an application by ``scope["type"]`` (``websocket``, ``http``, ``channel``)."""

    def __init__(self, application_mapping: Mapping[str, Application]) -> None:
        for key, app in application_mapping.items():
            if not callable(app):
                raise TypeError(f"ProtocolTypeRouter: the {key!r} application is not callable")
        self.application_mapping = {key: mount(app) for key, app in application_mapping.items()}
        #: The ``"lifespan"`` entry's lifespan state (``realtime.lifespan``): every scope
        #: routed here gets a copy. None while no lifespan ran.
        self.state: dict[str, Any] | None = None

    def __call__(self, scope: Scope, *asgi: Any) -> Any:
        if asgi:
            raise not_asgi(self)
        if self.state is not None:
            scope["state"] = self.state.copy()
        app = self.application_mapping.get(scope["type"])
        if app is None:
            raise NoRoute(str(scope.get("path", "")))
        return ready(app(scope))


class ChannelNameRouter:
    """Route ``channel`` scopes (workers) by ``scope["channel"]``."""

    def __init__(self, application_mapping: Mapping[str, Application]) -> None:
        self.application_mapping = dict(application_mapping)

    def __call__(self, scope: Scope) -> Any:
        if "channel" not in scope:
            raise ValueError("ChannelNameRouter got a scope without a 'channel' key")
        try:
            app = self.application_mapping[scope["channel"]]
        except KeyError:
            raise ValueError(
                f"no application configured for channel {scope['channel']!r}"
            ) from None
        return ready(app(scope))


def route_matches(app: Any, scope: Scope, depth: int = 32) -> bool:
    """Whether ``app`` would route this scope somewhere, without calling anything.

    Used for the 426 rule: a plain GET on a path only a WebSocket route matches. An
    application we cannot see into counts as matching everything.
    """
    for _ in range(depth):
        if isinstance(app, ProtocolTypeRouter):
            app = app.application_mapping.get(scope["type"])
            if app is None:
                return False
            continue
        if isinstance(app, URLRouter):
            return app.matches(scope)
        inner = getattr(app, "inner", None)
        if inner is None:
            return True
        app = inner
    return True
