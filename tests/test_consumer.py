"""Consumer and exception rules that need no server: close codes, header checks, refusals,
close reasons, the application factory."""

from __future__ import annotations

import pytest

from realtime import (
    AsyncHttpConsumer,
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    DenyConnection,
    JsonWebsocketConsumer,
    Refuse,
    WebsocketConsumer,
)
from realtime.consumer import check_app_close_code
from realtime.exceptions import NoRoute, check_headers
from realtime.websocket import accept_key, truncate_reason, valid_server_close_code


@pytest.mark.parametrize(("code", "expected"), [
    (None, 1000), (True, 1000), (1000, 1000), (3000, 3000), (4000, 4000), (4999, 4999),
])
def test_app_close_codes_allowed(code, expected):
    assert check_app_close_code(code) == expected


@pytest.mark.parametrize("code", [1001, 1005, 1006, 1011, 1015, 2999, 5000, 0, -1, False,
                                  "4000", 4000.0])
def test_app_close_codes_refused(code):
    with pytest.raises(ValueError):
        check_app_close_code(code)


def test_server_close_codes():
    for code in (1000, 1001, 1003, 1007, 1008, 1009, 1011, 3000, 4999):
        assert valid_server_close_code(code)
    for code in (999, 1004, 1005, 1006, 1015, 2000, 5000):
        assert not valid_server_close_code(code)


def test_truncate_reason():
    assert truncate_reason(None) == b""
    assert truncate_reason("") == b""
    assert truncate_reason("x" * 123) == b"x" * 123
    assert truncate_reason("x" * 200) == b"x" * 123
    # never a broken character: "é" is 2 bytes, "€" 3
    assert truncate_reason("é" * 100) == "é".encode() * 61
    assert truncate_reason("a" + "€" * 50) == ("a" + "€" * 40).encode()


def test_accept_key_rfc6455_example():
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("headers", [
    [(b"x", b"a\r\nInjected: 1")],
    [(b"x", b"a\nb")],
    [(b"x", b"a\rb")],
    [(b"x", b"a\x00b")],
    [(b"x\r\nInjected", b"1")],
    [(b"x y", b"1")],
    [(b"x:", b"1")],
    [(b"", b"1")],
    {"x": "a\r\nb"},
])
def test_check_headers_refuses_response_splitting(headers):
    with pytest.raises(ValueError):
        check_headers(headers)
    with pytest.raises(ValueError):
        Refuse(403, headers)


def test_check_headers_normalises():
    assert check_headers(None) == []
    assert check_headers({"X-A": "1"}) == [(b"X-A", b"1")]
    assert check_headers([("set-cookie", b"a=b; Path=/")]) == [(b"set-cookie", b"a=b; Path=/")]
    with pytest.raises(TypeError):
        check_headers([(b"x", 1)])  # type: ignore[list-item]


def test_refuse_defaults():
    assert Refuse(401).headers == [(b"WWW-Authenticate", b'Bearer realm="realtime"')]
    assert Refuse(429).headers == [(b"Retry-After", b"1")]
    assert Refuse(503).headers == [(b"Retry-After", b"1")]
    assert Refuse(503, [(b"retry-after", b"30")]).headers == [(b"retry-after", b"30")]
    assert Refuse(401, {"WWW-Authenticate": "Basic"}).headers == [(b"WWW-Authenticate", b"Basic")]
    assert Refuse(400).headers == []
    assert Refuse(404).phrase == b"Not Found"
    assert Refuse(499).phrase == b"Refused"
    assert Refuse().status == 403
    deny = DenyConnection()
    assert isinstance(deny, Refuse) and deny.status == 403
    assert NoRoute("/x").status == 404


@pytest.mark.parametrize("status", [200, 101, 399, 600, "403", None])
def test_refuse_status_range(status):
    with pytest.raises(ValueError):
        Refuse(status)


def test_refuse_body_is_bytes():
    with pytest.raises(TypeError):
        Refuse(403, body="text")  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [WebsocketConsumer, AsyncWebsocketConsumer,
                                 JsonWebsocketConsumer, AsyncJsonWebsocketConsumer,
                                 AsyncHttpConsumer])
def test_as_app_and_as_asgi(cls):
    class C(cls):  # type: ignore[misc,valid-type]
        greeting = "hi"

    app = C.as_app(greeting="hello")
    first = app({"type": "x"}).value
    second = C.as_asgi(greeting="hello")({"type": "y"}).value
    assert isinstance(first, C) and first is not second
    assert first.greeting == "hello"
    assert first.scope == {"type": "x"}
    with pytest.raises(TypeError):
        C.as_app(nonexistent=1)


def test_json_encoding_hooks():
    assert JsonWebsocketConsumer.encode_json({"a": [1]}) == '{"a": [1]}'
    assert JsonWebsocketConsumer.decode_json('{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError):
        JsonWebsocketConsumer.decode_json("{nope")


def test_channel_full_is_where_channels_keeps_it():
    """``from channels.exceptions import ChannelFull`` ports to realtime.exceptions; the
    layers raise the same class."""
    from realtime.exceptions import ChannelFull
    from realtime.layers import ChannelFull as from_layers

    assert ChannelFull is from_layers


def test_thread_handlers_on_coroutine_handlers_is_refused_at_class_definition():
    """In a worker thread an async def handler would only make a coroutine, never run it
    (connect() would hang): the combination is a TypeError where the class is written."""
    with pytest.raises(TypeError, match="thread_handlers = True is for plain"):
        class Mixed(AsyncWebsocketConsumer):
            thread_handlers = True
    with pytest.raises(TypeError, match=r"receive\(\) is async def"):
        class AsyncReceive(WebsocketConsumer):
            thread_handlers = True

            async def receive(self, text_data=None, bytes_data=None):
                pass

    class Plain(WebsocketConsumer):  # fine
        thread_handlers = True

        def receive(self, text_data=None, bytes_data=None):
            pass
