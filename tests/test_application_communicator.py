"""``realtime.testing.ApplicationCommunicator``: asgiref's API (what Channels' tests use
below the WebSocket and HTTP communicators), for channel (worker), websocket and http
scopes, with the consumers as the server and ``realtime-runworker`` run them."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from realtime import (
    AsyncConsumer,
    AsyncHttpConsumer,
    AsyncWebsocketConsumer,
    ChannelNameRouter,
    SyncConsumer,
    URLRouter,
    path,
)
from realtime.layers import InMemoryChannelLayer
from realtime.testing import ApplicationCommunicator

# -- channel scopes (workers) ----------------------------------------------------------------


class Thumbnailer(AsyncConsumer):
    async def thumbnail_make(self, message: dict[str, Any]) -> None:
        if message["path"] == "broken.png":
            raise ValueError("cannot read broken.png")
        await self.channel_layer.send(message["reply_to"],
                                      {"type": "thumbnail.done", "path": message["path"],
                                       "worker": self.channel_name})


class Counter(SyncConsumer):  # handlers run in the thread pool
    seen: list[int] = []

    def count_add(self, message: dict[str, Any]) -> None:
        Counter.seen.append(message["n"])


workers = ChannelNameRouter({"thumbnails": Thumbnailer.as_asgi(),
                             "counts": Counter.as_asgi()})


async def thumbnailer() -> tuple[Any, str, ApplicationCommunicator]:
    """A layer, a channel for the answers, and a communicator for the thumbnails worker."""
    layer = InMemoryChannelLayer()
    reply = await layer.new_channel()
    comm = ApplicationCommunicator(workers, {"type": "channel", "channel": "thumbnails"},
                                   layer=layer)
    return layer, reply, comm


@pytest_twisted.ensureDeferred
async def test_a_worker_consumer_handles_messages_in_order_and_answers_through_its_layer():
    layer, reply, comm = await thumbnailer()
    for name in ("a.png", "b.png"):
        await comm.send_input({"type": "thumbnail.make", "path": name, "reply_to": reply})
    await comm.wait()
    done = [await layer.receive(reply), await layer.receive(reply)]
    assert [(m["path"], m["worker"]) for m in done] == [("a.png", "thumbnails"),
                                                        ("b.png", "thumbnails")]
    assert await comm.receive_nothing()  # a worker answers through its layer


@pytest_twisted.ensureDeferred
async def test_wait_reraises_a_worker_handlers_exception_and_the_next_still_runs():
    layer, reply, comm = await thumbnailer()
    await comm.send_input({"type": "thumbnail.make", "path": "broken.png", "reply_to": reply})
    await comm.send_input({"type": "thumbnail.make", "path": "ok.png", "reply_to": reply})
    with pytest.raises(ValueError, match=r"broken\.png"):
        await comm.wait()
    assert (await layer.receive(reply))["path"] == "ok.png"  # as the worker goes on


@pytest_twisted.ensureDeferred
async def test_a_sync_worker_consumer_runs_in_threads_one_at_a_time():
    Counter.seen = []
    comm = ApplicationCommunicator(workers, {"type": "channel", "channel": "counts"})
    for n in range(5):
        await comm.send_input({"type": "count.add", "n": n})
    await comm.wait(timeout=5)
    assert Counter.seen == [0, 1, 2, 3, 4]
    with pytest.raises(TypeError, match="'type'"):
        comm.send_input({"n": 1})


# -- websocket scopes ----------------------------------------------------------------------


class Greeter(AsyncWebsocketConsumer):
    disconnected: list[int] = []

    async def connect(self) -> None:
        if self.scope.get("user") == "mallory":
            await self.close()  # before accept: refused
            return
        await self.accept(subprotocol="chat.v1", headers=[(b"set-cookie", b"seen=1")])

    async def receive(self, text_data: str | None = None,
                      bytes_data: bytes | None = None) -> None:
        if text_data == "bye":
            await self.close(4001, "asked to")
        elif text_data == "boom":
            raise RuntimeError("boom")
        elif text_data is not None:
            await self.send(text_data=f"hello {self.scope['user']}: {text_data}")
        else:
            await self.send(bytes_data=bytes_data[::-1])

    async def disconnect(self, code: int) -> None:
        Greeter.disconnected.append(code)


sockets = URLRouter([path("greet/", Greeter.as_asgi())])


def greet_scope(user: str) -> dict[str, Any]:
    return {"type": "websocket", "path": "/greet/", "query_string": b"x=1",
            "headers": [(b"origin", b"http://testserver")], "subprotocols": ["chat.v1"],
            "user": user}


@pytest_twisted.ensureDeferred
async def test_a_websocket_in_asgi_messages():
    Greeter.disconnected = []
    comm = ApplicationCommunicator(sockets, greet_scope("ada"))
    await comm.send_input({"type": "websocket.connect"})
    assert await comm.receive_output() == {"type": "websocket.accept", "subprotocol": "chat.v1",
                                           "headers": [(b"set-cookie", b"seen=1")]}
    await comm.send_input({"type": "websocket.receive", "text": "hi"})
    assert await comm.receive_output() == {"type": "websocket.send", "text": "hello ada: hi"}
    await comm.send_input({"type": "websocket.receive", "bytes": b"abc"})
    assert await comm.receive_output() == {"type": "websocket.send", "bytes": b"cba"}
    await comm.send_input({"type": "websocket.receive", "text": "bye"})
    assert await comm.receive_output() == {"type": "websocket.close", "code": 4001,
                                           "reason": "asked to"}
    await comm.wait()
    assert Greeter.disconnected == [4001]
    assert await comm.receive_nothing()


@pytest_twisted.ensureDeferred
async def test_a_refused_websocket_and_a_client_disconnect():
    comm = ApplicationCommunicator(sockets, greet_scope("mallory"))
    await comm.send_input({"type": "websocket.connect"})
    refused = await comm.receive_output()
    assert (refused["type"], refused["status"]) == ("websocket.http.response.start", 403)
    Greeter.disconnected = []
    comm = ApplicationCommunicator(sockets, greet_scope("bob"))
    await comm.send_input({"type": "websocket.connect"})
    assert (await comm.receive_output())["type"] == "websocket.accept"
    await comm.send_input({"type": "websocket.disconnect", "code": 1001})
    await comm.wait()
    assert Greeter.disconnected == [1001]


@pytest_twisted.ensureDeferred
async def test_a_websocket_handlers_exception_is_reraised():
    comm = ApplicationCommunicator(sockets, greet_scope("ada"))
    await comm.send_input({"type": "websocket.connect"})
    await comm.receive_output()
    await comm.send_input({"type": "websocket.receive", "text": "boom"})
    closed = await comm.receive_output()
    assert (closed["type"], closed["code"]) == ("websocket.close", 1011)
    with pytest.raises(RuntimeError, match="boom"):
        await comm.wait()


@pytest_twisted.ensureDeferred
async def test_websocket_inputs_out_of_turn_are_refused():
    comm = ApplicationCommunicator(sockets, greet_scope("ada"))
    with pytest.raises(AssertionError, match=r"before websocket\.connect"):
        comm.send_input({"type": "websocket.receive", "text": "hi"})
    await comm.send_input({"type": "websocket.connect"})
    with pytest.raises(ValueError, match=r"not 'http\.request'"):
        comm.send_input({"type": "http.request"})
    await comm.stop()
    with pytest.raises(ValueError, match="not 'lifespan'"):
        ApplicationCommunicator(sockets, {"type": "lifespan"})


# -- http scopes -------------------------------------------------------------------------------


class Upper(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        await self.send_response(201, body.upper() + self.scope["user"].encode(),
                                 headers=[(b"content-type", b"text/plain")])


@pytest_twisted.ensureDeferred
async def test_an_http_request_in_asgi_messages():
    comm = ApplicationCommunicator(URLRouter([path("up/", Upper.as_asgi())]),
                                   {"type": "http", "method": "POST", "path": "/up/",
                                    "headers": [(b"content-type", b"text/plain")],
                                    "user": "!"})
    await comm.send_input({"type": "http.request", "body": b"hel", "more_body": True})
    await comm.send_input({"type": "http.request", "body": b"lo"})
    start = await comm.receive_output()
    assert (start["type"], start["status"]) == ("http.response.start", 201)
    assert (b"content-type", b"text/plain") in start["headers"]
    assert await comm.receive_output() == {"type": "http.response.body", "body": b"HELLO!",
                                           "more_body": False}
    await comm.wait()


# -- after a review: ends, timeouts, errors, shapes ---------------------------------------------

class Slow(AsyncWebsocketConsumer):
    """Takes its time to accept and to finish; joins ``room`` (a layer group)."""

    groups = ["room"]
    finished: list[int] = []

    async def connect(self) -> None:
        await deferLater(reactor(), 0.3, lambda: None)
        await self.accept()

    async def room_news(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])

    async def receive(self, text_data: str | None = None,
                      bytes_data: bytes | None = None) -> None:
        raise RuntimeError(f"cannot take {text_data}")

    async def disconnect(self, code: int) -> None:
        await deferLater(reactor(), 0.5, lambda: None)
        Slow.finished.append(code)


class Poll(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        await self.send_headers(headers=[(b"content-type", b"text/plain")])
        await self.send_body(b"waiting", more_body=True)  # and nothing more, ever


class Sleeper(AsyncConsumer):
    async def nap_take(self, message: dict[str, Any]) -> None:
        await deferLater(reactor(), 5, lambda: None)


def reactor() -> Any:
    from twisted.internet import reactor as default

    return default



class Raiser(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        raise KeyError("in connect")


slow_app = URLRouter([path("slow/", Slow.as_asgi()), path("greet/", Greeter.as_asgi()),
                      path("poll/", Poll.as_asgi())])


@pytest_twisted.ensureDeferred
async def test_a_slow_accept_comes_out_later_and_the_given_layer_is_used(realtime_leak_check):
    layer = InMemoryChannelLayer()
    comm = ApplicationCommunicator(slow_app, {"type": "websocket", "path": "/slow/"},
                                   layer=layer)
    await comm.send_input({"type": "websocket.connect"})  # returns before the accept
    assert await comm.receive_output(timeout=3) == {"type": "websocket.accept",
                                                    "subprotocol": None}
    await layer.group_send("room", {"type": "room.news", "text": "hello"})
    assert await comm.receive_output() == {"type": "websocket.send", "text": "hello"}
    Slow.finished = []
    await comm.send_input({"type": "websocket.disconnect", "code": 1001})
    assert await comm.receive_nothing()  # the server's answer to the close is not output
    await comm.wait(timeout=3)  # its 0.5 s disconnect() runs to the end
    assert Slow.finished == [1001]


@pytest_twisted.ensureDeferred
async def test_handler_exceptions_come_out_of_receive_output_wait_and_stop():
    comm = ApplicationCommunicator(slow_app, {"type": "websocket", "path": "/slow/"})
    await comm.send_input({"type": "websocket.connect"})
    await comm.receive_output(timeout=3)
    await comm.send_input({"type": "websocket.receive", "text": "x"})
    assert await comm.receive_output() == {"type": "websocket.close", "code": 1011,
                                           "reason": "internal error"}
    with pytest.raises(RuntimeError, match="cannot take x"):
        await comm.receive_output()
    with pytest.raises(RuntimeError, match="cannot take x"):
        await comm.wait(timeout=3)
    # One raised in connect(): the client saw a 500, and wait() raises it.
    comm = ApplicationCommunicator(URLRouter([path("x/", Raiser.as_asgi())]),
                                   {"type": "websocket", "path": "/x/"})
    await comm.send_input({"type": "websocket.connect"})
    assert (await comm.receive_output())["status"] == 500
    with pytest.raises(KeyError, match="in connect"):
        await comm.wait()



@pytest_twisted.ensureDeferred
async def test_wait_on_a_socket_still_open_times_out_and_ends_it(realtime_leak_check):
    Greeter.disconnected = []
    comm = ApplicationCommunicator(slow_app, greet_scope("ada"))
    await comm.send_input({"type": "websocket.connect"})
    await comm.receive_output()
    with pytest.raises(TimeoutError):
        await comm.wait(timeout=0.2)
    assert Greeter.disconnected == [1000]


@pytest_twisted.ensureDeferred
async def test_stop_ends_a_long_poll_and_a_workers_handler(realtime_leak_check):
    comm = ApplicationCommunicator(slow_app, {"type": "http", "path": "/poll/"})
    await comm.send_input({"type": "http.request"})
    assert await comm.receive_nothing()  # the response is not complete
    with pytest.raises(AssertionError, match="one request per communicator"):
        await comm.send_input({"type": "http.request"})
    await comm.stop()
    worker = ApplicationCommunicator(ChannelNameRouter({"naps": Sleeper.as_asgi()}),
                                     {"type": "channel", "channel": "naps"})
    await worker.send_input({"type": "nap.take"})
    await worker.send_input({"type": "nap.take"})
    with pytest.raises(TimeoutError):
        await worker.wait(timeout=0.2)  # the 5 s handler is cancelled, the next dropped
    await worker.stop()


@pytest_twisted.ensureDeferred
async def test_a_worker_error_wakes_a_waiting_receive_output_and_no_consumer_is_an_error():
    _, reply, comm = await thumbnailer()
    waiting = comm.receive_output(timeout=5)
    await comm.send_input({"type": "thumbnail.make", "path": "broken.png", "reply_to": reply})
    with pytest.raises(ValueError, match=r"broken\.png"):
        await waiting
    nobody = ApplicationCommunicator(workers, {"type": "channel", "channel": "elsewhere"})
    await nobody.send_input({"type": "x.y"})
    with pytest.raises(ValueError):
        await nobody.wait()


@pytest_twisted.ensureDeferred
async def test_scope_keys_and_a_host_header_reach_the_consumer():
    class Echo(AsyncWebsocketConsumer):
        async def receive(self, text_data: str | None = None,
                          bytes_data: bytes | None = None) -> None:
            host = dict(self.scope["headers"])[b"host"]
            await self.send(text_data=f"{self.scope['client'][0]} {host.decode()} "
                                      f"{self.scope['user']}")

    comm = ApplicationCommunicator(
        URLRouter([path("e/", Echo.as_asgi())]),
        {"type": "websocket", "path": "/e/", "client": ("10.0.0.9", 5555), "user": "ada",
         "headers": [(b"host", b"example.com")]})
    await comm.send_input({"type": "websocket.connect"})
    assert await comm.receive_output() == {"type": "websocket.accept", "subprotocol": None}
    await comm.send_input({"type": "websocket.receive", "text": "?"})
    assert await comm.receive_output() == {"type": "websocket.send",
                                           "text": "10.0.0.9 example.com ada"}
    await comm.stop()
