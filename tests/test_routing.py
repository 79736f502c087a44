"""Routing as pure code: converters, path/re_path, nesting, root_path, NoRoute, route_matches."""

from __future__ import annotations

import functools
import uuid
from typing import Any

import pytest

from realtime import routing
from realtime.exceptions import NoRoute
from realtime.middleware import BaseMiddleware
from realtime.routing import (
    ChannelNameRouter,
    ProtocolTypeRouter,
    Ready,
    URLRouter,
    path,
    re_path,
    register_converter,
    route_matches,
)


def call(app, scope):
    """Call a router and unwrap the ``Ready`` it returns (what the bridge does)."""
    result = app(scope)
    return result.value if isinstance(result, Ready) else result


def leaf(tag: str) -> Any:
    """An application that returns (tag, the scope it was given)."""

    def app(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return tag, scope

    return app


def ws(p: str, **extra: Any) -> dict[str, Any]:
    return {"type": "websocket", "path": p, **extra}


@pytest.fixture
def converters(monkeypatch):
    """register_converter writes to a private copy of the registry for this test."""
    monkeypatch.setattr(routing, "_CONVERTERS", dict(routing._CONVERTERS))


# -- converters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "url", "kwargs"),
    [
        ("a/<name>", "/a/x y", {"name": "x y"}),
        ("a/<str:name>", "/a/é", {"name": "é"}),
        ("a/<int:n>", "/a/0042", {"n": 42}),
        ("a/<slug:s>", "/a/a-B_9", {"s": "a-B_9"}),
        ("a/<uuid:u>", "/a/12345678-1234-5678-1234-567812345678",
         {"u": uuid.UUID("12345678-1234-5678-1234-567812345678")}),
        ("a/<path:p>", "/a/b/c/d.txt", {"p": "b/c/d.txt"}),
    ],
)
def test_converters_match(pattern, url, kwargs):
    tag, scope = call(URLRouter([path(pattern, leaf("x"))]), ws(url))
    assert tag == "x"
    assert scope["url_route"] == {"args": (), "kwargs": kwargs}
    assert type(scope["url_route"]["kwargs"][next(iter(kwargs))]) is type(next(iter(
        kwargs.values())))


@pytest.mark.parametrize(
    ("pattern", "url"),
    [
        ("a/<str:name>", "/a/x/y"),
        ("a/<str:name>", "/a/"),
        ("a/<int:n>", "/a/-1"),
        ("a/<int:n>", "/a/1.5"),
        ("a/<slug:s>", "/a/a b"),
        ("a/<slug:s>", "/a/é"),
        ("a/<uuid:u>", "/a/12345678-1234-5678-1234-56781234567"),
        ("a/<uuid:u>", "/a/12345678-1234-5678-1234-56781234567G"),
        ("a/<uuid:u>", "/a/12345678-1234-5678-1234-567812345678/x"),
        ("a/<path:p>", "/a/"),
        ("a", "/a/"),
        ("a", "/ab"),
        ("a", "/xa"),
    ],
)
def test_converters_refuse(pattern, url):
    with pytest.raises(NoRoute) as info:
        call(URLRouter([path(pattern, leaf("x"))]), ws(url))
    assert info.value.status == 404


def test_unknown_converter_and_bad_name():
    with pytest.raises(ValueError, match="unknown converter"):
        path("a/<nope:x>", leaf("x"))
    with pytest.raises(ValueError, match="not a valid parameter name"):
        path("a/<int:x-y>", leaf("x"))


def test_route_app_must_be_callable():
    with pytest.raises(TypeError):
        path("a", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        URLRouter(["a"])  # type: ignore[list-item]


class Year:
    regex = "[0-9]{4}"

    def to_python(self, value: str) -> int:
        year = int(value)
        if year < 1900:
            raise ValueError("too old")
        return year

    def to_url(self, value: int) -> str:
        return f"{value:04d}"


def test_register_converter(converters):
    register_converter(Year, "yyyy")
    router = URLRouter([path("y/<yyyy:year>", leaf("y")), path("y/<str:other>", leaf("s"))])
    tag, scope = call(router, ws("/y/2024"))
    assert (tag, scope["url_route"]["kwargs"]) == ("y", {"year": 2024})
    # to_python raising ValueError means "no match": the next route tries
    tag, scope = call(router, ws("/y/1800"))
    assert (tag, scope["url_route"]["kwargs"]) == ("s", {"other": "1800"})
    with pytest.raises(NoRoute):
        call(URLRouter([path("y/<yyyy:year>", leaf("y"))]), ws("/y/24"))


def test_register_converter_instance_and_bad_converter(converters):
    register_converter(Year(), "year2")
    tag, _ = call(URLRouter([path("<year2:y>", leaf("y"))]), ws("/1999"))
    assert tag == "y"
    with pytest.raises(TypeError):
        register_converter(object, "bad")


# -- path, re_path, extra kwargs -------------------------------------------------------------


def test_extra_kwargs_are_merged():
    router = URLRouter([path("r/<int:n>", leaf("x"), kwargs={"flag": True, "n2": 2}, name="r")])
    _, scope = call(router, ws("/r/5"))
    assert scope["url_route"]["kwargs"] == {"n": 5, "flag": True, "n2": 2}


def test_extra_kwargs_win_over_captures():
    # Django: extra kwargs override captured ones of the same name
    _, scope = call(URLRouter([path("r/<int:n>", leaf("x"), kwargs={"n": 0})]), ws("/r/5"))
    assert scope["url_route"]["kwargs"] == {"n": 0}


def test_re_path_named_and_positional_groups():
    router = URLRouter([
        re_path(r"^named/(?P<room>\w+)/$", leaf("named")),
        re_path(r"^pos/(\d+)/(\w+)$", leaf("pos"), kwargs={"k": 1}),
        re_path(r"^opt/(?P<a>\d+)?$", leaf("opt")),
    ])
    tag, scope = call(router, ws("/named/lobby/"))
    assert (tag, scope["url_route"]) == ("named", {"args": (), "kwargs": {"room": "lobby"}})
    tag, scope = call(router, ws("/pos/7/abc"))
    assert (tag, scope["url_route"]) == ("pos", {"args": ("7", "abc"), "kwargs": {"k": 1}})
    tag, scope = call(router, ws("/opt/"))
    assert (tag, scope["url_route"]) == ("opt", {"args": (), "kwargs": {}})
    with pytest.raises(NoRoute):
        call(router, ws("/named/lobby"))


def test_re_path_without_anchor_end_is_a_prefix():
    # like Django: re_path without "$" matches a prefix
    tag, _ = call(URLRouter([re_path(r"^chat/", leaf("c"))]), ws("/chat/anything/here"))
    assert tag == "c"


def test_first_match_wins():
    router = URLRouter([path("a/<str:x>", leaf("first")), path("a/b", leaf("second"))])
    assert call(router, ws("/a/b"))[0] == "first"


# -- nesting ---------------------------------------------------------------------------------


def test_nesting_accumulates_url_route_and_sets_path_remaining():
    inner = URLRouter([
        path("msg/<int:n>", leaf("msg"), kwargs={"extra": "x"}),
        re_path(r"^re/(\d+)$", leaf("re")),
    ])
    outer = URLRouter([
        re_path(r"^v(\d)/", URLRouter([path("rooms/<slug:room>/", inner)])),
    ])
    tag, scope = call(outer, ws("/v1/rooms/lobby/msg/5"))
    assert tag == "msg"
    assert scope["url_route"] == {"args": ("1",), "kwargs": {"room": "lobby", "n": 5,
                                                             "extra": "x"}}
    assert scope["path_remaining"] == ""
    assert scope["path"] == "/v1/rooms/lobby/msg/5"  # the full path is untouched
    tag, scope = call(outer, ws("/v1/rooms/lobby/re/9"))
    assert scope["url_route"] == {"args": ("1", "9"), "kwargs": {"room": "lobby"}}


def test_nested_router_matches_path_remaining():
    inner = URLRouter([path("x", leaf("x"))])
    tag, scope = call(inner, ws("/ignored/x", path_remaining="x"))
    assert (tag, scope["path_remaining"]) == ("x", "")
    with pytest.raises(NoRoute):
        call(inner, ws("/x", path_remaining="y"))


def test_middleware_between_routers_keeps_the_prefix():
    # the inner router is found through the middleware's .inner
    outer = URLRouter([path("p/", BaseMiddleware(URLRouter([path("x", leaf("x"))])))])
    assert outer.resolve(ws("/p/x")) is not None
    assert outer.resolve(ws("/p/y")) is None
    assert outer.resolve(ws("/p/")) is None


def test_prefix_whose_inner_routes_miss_lets_the_next_route_try():
    outer = URLRouter([
        path("rooms/", URLRouter([path("<int:n>", leaf("int"))])),
        path("rooms/<str:name>", leaf("name")),
    ])
    assert call(outer, ws("/rooms/5"))[0] == "int"
    tag, scope = call(outer, ws("/rooms/lobby"))
    assert (tag, scope["url_route"]["kwargs"]) == ("name", {"name": "lobby"})


def test_url_route_of_the_outer_scope_is_not_mutated():
    inner = URLRouter([path("<int:n>", leaf("n"))])
    outer = URLRouter([path("<str:room>/", inner)])
    original = ws("/lobby/3")
    _, scope = call(outer, original)
    assert "url_route" not in original
    assert "path_remaining" not in original
    assert scope["url_route"]["kwargs"] == {"room": "lobby", "n": 3}


# -- root_path, no route ----------------------------------------------------------------------


def test_root_path_is_stripped():
    router = URLRouter([path("echo", leaf("echo"))])
    tag, scope = call(router, ws("/ws/echo", root_path="/ws"))
    assert tag == "echo"
    assert scope["root_path"] == "/ws"
    with pytest.raises(NoRoute):
        call(router, ws("/echo", root_path="/ws"))
    with pytest.raises(NoRoute):
        call(router, ws("/other/echo", root_path="/ws"))
    # only on a segment boundary: "/wsecho" is not "/ws" + "echo"
    with pytest.raises(NoRoute):
        call(router, ws("/wsecho", root_path="/ws"))


def test_no_route_is_404_with_the_path():
    with pytest.raises(NoRoute) as info:
        call(URLRouter([path("a", leaf("a"))]), ws("/b"))
    assert info.value.status == 404
    assert info.value.path == "/b"


def test_protocol_type_router():
    router = ProtocolTypeRouter({"websocket": leaf("ws"), "http": leaf("http")})
    assert call(router, ws("/"))[0] == "ws"
    assert call(router, {"type": "http", "path": "/"})[0] == "http"
    with pytest.raises(NoRoute):
        call(ProtocolTypeRouter({"websocket": leaf("ws")}), {"type": "http", "path": "/"})
    with pytest.raises(TypeError):
        ProtocolTypeRouter({"websocket": "not callable"})  # type: ignore[dict-item]


def test_channel_name_router():
    router = ChannelNameRouter({"thumbnails": leaf("t")})
    assert call(router, {"type": "channel", "channel": "thumbnails"})[0] == "t"
    with pytest.raises(ValueError):
        call(router, {"type": "channel", "channel": "other"})
    with pytest.raises(ValueError):
        call(router, {"type": "channel"})


# -- route_matches ---------------------------------------------------------------------------


def test_route_matches():
    app = ProtocolTypeRouter({
        "websocket": BaseMiddleware(URLRouter([path("ws/<int:n>", leaf("w"))])),
    })
    assert route_matches(app, ws("/ws/1"))
    assert not route_matches(app, ws("/ws/x"))
    assert not route_matches(app, {"type": "http", "path": "/ws/1"})
    assert route_matches(app, ws("/x/ws/1", root_path="/x"))
    # an application we cannot see into matches everything
    assert route_matches(leaf("opaque"), ws("/anything"))
    assert route_matches(ProtocolTypeRouter({"websocket": leaf("o")}), ws("/anything"))


def test_route_matches_calls_nothing():
    called: list[Any] = []

    def app(scope):
        called.append(scope)

    assert route_matches(URLRouter([path("a", app)]), ws("/a"))
    assert called == []


class _DjangoStyleASGI:
    """What ``django.core.asgi.get_asgi_application()`` returns: ASGI's three arguments."""

    async def __call__(self, scope, receive, send):
        pass


class _ThreeArgumentMiddleware:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        return await self.inner(scope, receive, send)


async def _asgi_function(scope, receive, send):
    pass


async def _asgi_with_config(config, scope, receive, send):
    pass


@pytest.mark.parametrize("app", [_DjangoStyleASGI(), _asgi_function,
                                 _ThreeArgumentMiddleware(_asgi_function),
                                 functools.partial(_asgi_function),
                                 functools.partial(_asgi_with_config, {})])
def test_a_raw_asgi_application_is_wrapped_where_it_is_mounted(app):
    """A Channels project's ``"http": get_asgi_application()`` (or ASGI-3 middleware) is
    served through ``realtime.asgi.AsgiApp`` (tests/test_asgi.py serves them)."""
    from realtime import ProtocolTypeRouter
    from realtime.asgi import AsgiApp

    mounted = ProtocolTypeRouter({"http": app}).application_mapping["http"]
    assert isinstance(mounted, AsgiApp) and mounted.app is app
    assert isinstance(path("x/", app).app, AsgiApp)


def test_consumers_middleware_and_routers_are_not_mistaken_for_asgi():
    from realtime import AsyncWebsocketConsumer, BaseMiddleware, ProtocolTypeRouter
    from realtime.routing import raw_asgi

    class Consumer(AsyncWebsocketConsumer):
        pass

    app = Consumer.as_app()
    async def scope_first(scope, receive=None, send=None):  # app(scope) works
        return app(scope)

    for candidate in (app, BaseMiddleware(app), URLRouter([path("a/", app)]),
                      ProtocolTypeRouter({"websocket": app}), Consumer, lambda scope: None,
                      scope_first, functools.partial(scope_first)):
        assert not raw_asgi(candidate), candidate
