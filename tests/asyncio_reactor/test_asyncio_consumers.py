"""Channels-style asyncio code in an application, under ``--reactor=asyncio``: handlers,
middleware, HTTP and worker consumers await asyncio code (``asyncio.sleep``, tasks,
``asyncio.timeout``, asgiref, Django's async ORM) and Deferreds alike, as under Daphne.

Collected only under ``--reactor=asyncio`` (tests/conftest.py); the main run drives it
in a subprocess (tests/test_asyncio_reactor.py)."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from typing import Any

import pytest
import pytest_twisted
from asgiref.sync import sync_to_async as asgiref_sync_to_async
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from websockets.sync.client import connect

from realtime import (
    AsyncConsumer,
    AsyncHttpConsumer,
    AsyncWebsocketConsumer,
    BaseMiddleware,
    ChannelNameRouter,
    ProtocolTypeRouter,
    URLRouter,
    WebsocketConsumer,
    path,
)
from realtime.layers import InMemoryChannelLayer
from realtime.testing import ApplicationCommunicator, WebsocketCommunicator
from tests.asyncio_reactor.django_project import django_database
from tests.clients import fire_from_a_frame, in_thread, traceback_names


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def test_the_reactor_is_asyncios() -> None:
    assert type(_reactor()).__name__ == "AsyncioSelectorReactor"


def blocking_square(n: int) -> tuple[int, str]:
    return n * n, threading.current_thread().name


class Room(AsyncWebsocketConsumer):
    """Awaits asyncio code and Deferreds in the same handlers."""

    groups = ["room"]
    events: list[Any] = []

    async def connect(self) -> None:
        await asyncio.sleep(0.01)
        type(self).events.append(("connect in a task", asyncio.current_task() is not None))
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        if text_data == "sleep":
            async with asyncio.timeout(5):  # needs the current Task
                await asyncio.sleep(0.01)
                await self.channel_layer.group_send("room", {"type": "room.say",
                                                             "text": "slept"})
        elif text_data == "gather":
            (square, thread), _, later = await asyncio.gather(
                asgiref_sync_to_async(blocking_square)(7),
                self.channel_layer.group_send("room", {"type": "room.say", "text": "g"}),
                asyncio.wait_for(deferLater(_reactor(), 0.01, lambda: "later"), 5),
            )
            on_main = thread == threading.main_thread().name
            await self.send(text_data=f"{square} {later} main={on_main}")
        elif text_data == "tick":
            self.ticker = asyncio.create_task(self.tick())

    async def tick(self) -> None:
        try:
            for n in range(3):
                await asyncio.sleep(0.01)
                await self.send(text_data=f"tick {n}")
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            type(self).events.append("ticker cancelled")
            raise

    async def room_say(self, event: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        await self.send(text_data=event["text"])

    async def disconnect(self, code: int) -> None:
        ticker = getattr(self, "ticker", None)
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)


rooms = URLRouter([path("room", Room.as_asgi())])


@pytest_twisted.ensureDeferred
async def test_a_consumer_awaits_asyncio_code_and_the_layer_alike(live: Any) -> None:
    Room.events = []
    server = await live(rooms)

    def client() -> tuple[str, str, str]:
        with connect(server.ws_url("/room")) as a, connect(server.ws_url("/room")) as b:
            a.send("sleep")
            first = (a.recv(timeout=5), b.recv(timeout=5))
            a.send("gather")
            got = {a.recv(timeout=5), a.recv(timeout=5)}
            return first[0], first[1], " | ".join(sorted(got))

    slept_a, slept_b, gathered = await in_thread(client)
    assert (slept_a, slept_b) == ("slept", "slept")
    # asgiref ran the blocking call in a thread; the group message and the Deferred came.
    assert gathered == "49 later main=False | g"
    assert Room.events == [("connect in a task", True)] * 2


@pytest_twisted.ensureDeferred
async def test_a_task_a_consumer_starts_sends_and_is_cancelled_at_disconnect(live: Any
                                                                             ) -> None:
    Room.events = []
    server = await live(rooms)

    def client() -> list[str]:
        with connect(server.ws_url("/room")) as ws:
            ws.send("tick")
            return [ws.recv(timeout=5) for _ in range(3)]

    assert await in_thread(client) == ["tick 0", "tick 1", "tick 2"]
    for _ in range(100):
        if "ticker cancelled" in Room.events:
            break
        await deferLater(_reactor(), 0.02, lambda: None)
    assert Room.events[-1] == "ticker cancelled"


class Stuck(AsyncWebsocketConsumer):
    """Its disconnect() never ends by itself: the server cancels it."""

    events: list[str] = []

    async def disconnect(self, code: int) -> None:
        wait_for = self.scope["url_route"]["kwargs"]["on"]
        try:
            if wait_for == "asyncio":
                await asyncio.sleep(100)
            else:
                await Deferred()
        except asyncio.CancelledError:  # as a Channels consumer catches it
            type(self).events.append(f"{wait_for}: cancelled")
            raise


@pytest_twisted.ensureDeferred
async def test_handlers_waiting_on_asyncio_or_a_deferred_are_cancelled_asyncios_way(
        ) -> None:
    Stuck.events = []
    app = URLRouter([path("stuck/<str:on>", Stuck.as_asgi())])
    for on in ("asyncio", "deferred"):
        comm = WebsocketCommunicator(app, f"/stuck/{on}")
        assert (await comm.connect())[0]
        await comm.disconnect(timeout=0.1)
    for _ in range(100):  # asyncio delivers a cancel on the loop's next turn
        if len(Stuck.events) == 2:
            break
        await deferLater(_reactor(), 0.01, lambda: None)
    assert Stuck.events == ["asyncio: cancelled", "deferred: cancelled"]


class UserFromToken(BaseMiddleware):
    """A user lookup the way a Django project writes one: asgiref around a blocking call."""

    async def resolve_scope(self, scope: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        token = dict(scope["headers"]).get(b"x-token", b"").decode()
        scope["user"] = await asgiref_sync_to_async(lambda: f"user-{token}")()


class Hello(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        await asyncio.sleep(0.01)
        await self.send_response(200, f"hello {self.scope['user']}".encode(),
                                 headers=[(b"content-type", b"text/plain")])


@pytest_twisted.ensureDeferred
async def test_middleware_and_an_http_consumer_await_asyncio_code(live: Any) -> None:
    app = ProtocolTypeRouter({"http": UserFromToken(URLRouter([path("hello",
                                                                    Hello.as_asgi())]))})
    server = await live(app)

    def get() -> tuple[int, bytes]:
        request = urllib.request.Request(server.http_url("/hello"),
                                         headers={"X-Token": "42"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()

    assert await in_thread(get) == (200, b"hello user-42")


class Resizer(AsyncConsumer):
    async def resize(self, message: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)
        size = await asgiref_sync_to_async(len)(message["path"])
        await self.channel_layer.send(message["reply_to"], {"type": "resized", "size": size})


@pytest_twisted.ensureDeferred
async def test_a_worker_consumer_awaits_asyncio_code() -> None:
    layer = InMemoryChannelLayer()
    reply = await layer.new_channel()
    comm = ApplicationCommunicator(ChannelNameRouter({"resize": Resizer.as_asgi()}),
                                   {"type": "channel", "channel": "resize"}, layer=layer)
    await comm.send_input({"type": "resize", "path": "a.png", "reply_to": reply})
    await comm.wait(5)
    assert await layer.receive(reply) == {"type": "resized", "size": 5}


class Echo(AsyncWebsocketConsumer):
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        await self.send(text_data=text_data)


@pytest_twisted.ensureDeferred
async def test_communicators_still_deliver_synchronously() -> None:
    """A handler that waits for nothing has answered when ``send_to`` returns, and a
    ``Clock``'s keepalive closes at ``advance``: no turn of the loop is needed."""
    clock = Clock()
    comm = WebsocketCommunicator(URLRouter([path("e", Echo.as_asgi())]), "/e", clock=clock)
    comm.answer_pings = False
    connected = comm.connect()
    assert connected.called and (await connected)[0]
    comm.send_to(text_data="now")
    received = comm.receive_from(timeout=None)
    assert received.called and await received == "now"
    clock.advance(20)  # the ping
    clock.advance(29)
    assert comm.close_code is None
    clock.advance(1)  # no pong within the ping timeout: the connection is dropped
    assert comm.close_code == 1006


@pytest_twisted.ensureDeferred
async def test_asyncio_code_awaits_the_testing_api_and_the_layer() -> None:
    """A test body written for pytest-asyncio (an asyncio Task) awaits the communicators'
    and the layer's Deferreds."""
    layer = InMemoryChannelLayer()

    async def channels_style_test() -> list[str]:
        comm = WebsocketCommunicator(rooms, "/room")
        comm.site.layer = layer
        connected, _ = await comm.connect()
        assert connected
        await asyncio.sleep(0)
        await layer.group_send("room", {"type": "room.say", "text": "from the test"})
        got = [await comm.receive_from()]
        await comm.send_to(text_data="sleep")
        got.append(await asyncio.wait_for(comm.receive_from(), 5))
        await comm.disconnect()
        return got

    task = asyncio.get_running_loop().create_task(channels_style_test())
    assert await Deferred.fromFuture(task) == ["from the test", "slept"]


# -- Django's async ORM ---------------------------------------------------------------------

class SignUp(AsyncWebsocketConsumer):
    """What a Channels consumer does with Django's async ORM and Channels'
    ``database_sync_to_async``."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        from channels.db import database_sync_to_async
        from django.contrib.auth.models import User

        user = await User.objects.acreate(username=text_data)
        count = await database_sync_to_async(User.objects.count)()
        again = await User.objects.aget(pk=user.pk)
        await self.send(text_data=f"{again.username} #{count}")


@pytest_twisted.ensureDeferred
async def test_a_consumer_uses_djangos_async_orm(live: Any, tmp_path_factory: Any) -> None:
    await django_database(tmp_path_factory)
    server = await live(URLRouter([path("signup", SignUp.as_asgi())]))

    def client() -> list[str]:
        with connect(server.ws_url("/signup")) as ws:
            answers = []
            for name in ("ada", "grace"):
                ws.send(name)
                answers.append(ws.recv(timeout=10))
            return answers

    assert await in_thread(client) == ["ada #1", "grace #2"]


class Fetcher(AsyncWebsocketConsumer):
    """httpx runs on anyio, which asks sniffio for the running library: it needs the
    current Task."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        import httpx

        async with httpx.AsyncClient() as client:
            response = await client.get(text_data or "")
        await self.send(text_data=f"{response.status_code} {response.text.strip()}")


@pytest_twisted.ensureDeferred
async def test_a_consumer_uses_an_anyio_http_client(live: Any) -> None:
    server = await live(URLRouter([path("fetch", Fetcher.as_asgi())]))

    def client() -> str:
        with connect(server.ws_url("/fetch")) as ws:
            ws.send(server.http_url("/healthz"))
            return ws.recv(timeout=10)

    assert await in_thread(client) == "200 ok"


# -- the bridge's timing, cancellation and clean-up (found in review) -------------------------


@pytest_twisted.ensureDeferred
async def test_asyncio_timeout_and_taskgroup_behave_as_in_asyncio() -> None:
    """asyncio.timeout() and TaskGroup test asyncio's CancelledError by identity: the one
    a Task throws reaches them unchanged, around asyncio waits and Deferreds alike."""
    from realtime.threads import as_deferred

    async def timed(wait: Any) -> str:
        try:
            async with asyncio.timeout(0.02):
                await wait()
        except TimeoutError:
            return "TimeoutError"
        return "no timeout"

    async def group() -> str:
        async def child() -> None:
            await deferLater(_reactor(), 0.01, lambda: None)
            raise ValueError("child failed")

        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(child())
                tasks.create_task(asyncio.sleep(5))
        except ExceptionGroup as group:
            return repr(group.exceptions)
        return "no error"

    assert await as_deferred(timed(lambda: asyncio.sleep(5))) == "TimeoutError"
    assert await as_deferred(timed(lambda: deferLater(_reactor(), 5, lambda: None))
                             ) == "TimeoutError"
    assert await as_deferred(group()) == "(ValueError('child failed'),)"


@pytest_twisted.ensureDeferred
async def test_a_clock_resumes_a_handler_at_each_advance() -> None:
    """Each awaited Deferred resumes the coroutine in its callback, also before the Task's
    first turn: two advances, two steps, no loop turn needed."""
    from realtime.threads import as_deferred

    clock = Clock()
    steps: list[int] = []

    async def handler() -> str:
        await deferLater(clock, 1, lambda: None)
        steps.append(1)
        await deferLater(clock, 1, lambda: None)
        steps.append(2)
        return "done"

    done = as_deferred(handler())
    clock.advance(1)
    clock.advance(1)
    assert steps == [1, 2] and done.called and await done == "done"


@pytest_twisted.ensureDeferred
async def test_a_worker_handler_stopped_before_its_first_turn_gets_asyncios_cancel() -> None:
    got: list[str] = []

    class Jobs(AsyncConsumer):
        async def job(self, message: dict[str, Any]) -> None:
            try:
                await deferLater(_reactor(), 10, lambda: None)
            except asyncio.CancelledError:
                got.append("asyncio.CancelledError")
                raise

    comm = ApplicationCommunicator(ChannelNameRouter({"jobs": Jobs.as_asgi()}),
                                   {"type": "channel", "channel": "jobs"},
                                   layer=InMemoryChannelLayer())
    with _asyncio_errors() as errors:
        comm.send_input({"type": "job"})
        await comm.stop()  # in the same turn
        await deferLater(_reactor(), 0.05, lambda: None)
        import gc

        gc.collect()
    assert got == ["asyncio.CancelledError"]
    assert errors == []  # no "Task exception was never retrieved"


@pytest_twisted.ensureDeferred
async def test_a_handler_does_not_pass_its_context_to_the_next() -> None:
    """The next handler starts from the finished one's Deferred: not inside its context."""
    import contextvars

    from realtime.threads import as_deferred

    user: contextvars.ContextVar[str | None] = contextvars.ContextVar("user", default=None)
    seen: list[str | None] = []
    gate: Deferred[None] = Deferred()

    async def first() -> None:
        user.set("alice")
        await gate

    async def second() -> None:
        seen.append(user.get())

    done = as_deferred(first())
    done.addCallback(lambda _: as_deferred(second()))
    gate.callback(None)
    await done
    assert seen == [None]


class Exits(AsyncWebsocketConsumer):
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        if text_data == "later":
            await asyncio.sleep(0)
        raise SystemExit(3)


@pytest_twisted.ensureDeferred
async def test_system_exit_in_a_handler_does_not_stop_the_loop(live: Any) -> None:
    """As under the default reactor, it fails the handler (logged unhandled), and the
    reactor goes on: the Task does not carry it out of the loop."""
    server = await live(URLRouter([path("x", Exits.as_asgi()), path("e", Echo.as_asgi())]),
                        application_close_timeout=0.1)

    def exits(text: str) -> None:
        with connect(server.ws_url("/x")) as ws:
            ws.send(text)
            try:
                ws.recv(timeout=0.3)
            except Exception:
                pass

    def echo() -> str:
        with connect(server.ws_url("/e")) as ws:
            ws.send("still here")
            return ws.recv(timeout=5)

    with _asyncio_errors() as errors:
        await in_thread(exits, "now")
        await in_thread(exits, "later")
        assert await in_thread(echo) == "still here"
    assert _reactor().running and errors == []
    await deferLater(_reactor(), 0.3, lambda: None)  # the stuck sockets' handlers cancelled
    import gc

    gc.collect()  # the failures' "Unhandled error in Deferred", before the leak check


@pytest_twisted.ensureDeferred
async def test_finished_handlers_leave_no_bridge_behind_without_the_cyclic_gc() -> None:
    import gc

    from realtime.threads import _Bridge, as_deferred

    async def handler(d: Deferred[None]) -> None:
        await d

    gc.collect()
    gc.disable()
    try:
        for _ in range(200):
            d: Deferred[None] = Deferred()
            as_deferred(handler(d))
            d.callback(None)
        await deferLater(_reactor(), 0.02, lambda: None)  # the Tasks' own turns
        alive = sum(1 for o in gc.get_objects() if isinstance(o, _Bridge))
    finally:
        gc.enable()
    assert alive < 5


@pytest_twisted.ensureDeferred
async def test_a_failed_task_keeps_no_frame_of_whoever_fired_its_deferred() -> None:
    """Django's ``listen_for_disconnect`` fails every request (``RequestAborted``) right
    inside twisted.web's ``finish()``, and its exception ends in a reference cycle: had the
    traceback kept the bridge's frames, it would keep their callers (the request, the
    reactor's stack) for the cyclic collector too."""
    import gc

    from realtime.threads import aio, as_deferred, asyncio_loop

    asyncio_loop()  # what the server does at start: the loop's Tasks are bridged

    async def fails(d: Deferred[None]) -> None:
        await d
        raise ValueError("after the wait")

    gc.collect()
    gc.disable()
    try:
        for start in ("a loop Task", "as_deferred"):
            d: Deferred[None] = Deferred()
            failures: list[Any] = []
            if start == "a loop Task":
                task = asyncio.ensure_future(fails(d))
                await deferLater(_reactor(), 0, lambda: None)  # it waits on d now
            else:
                as_deferred(fails(d)).addErrback(failures.append)
            marker = fire_from_a_frame(d)
            if start == "a loop Task":
                with pytest.raises(ValueError):
                    await aio(task)
                exc = task.exception()
            else:
                exc = failures[0].value
            assert isinstance(exc, ValueError), start
            assert marker() is None, start  # the exception is alive; the firing frame is not
            names = traceback_names(exc)
            assert names[-1] == "fails" and "_step" not in names and "send" not in names, (
                start, names)
            del exc, failures
    finally:
        gc.enable()


@pytest_twisted.ensureDeferred
async def test_finished_loop_tasks_are_freed_without_the_cyclic_gc() -> None:
    """Tasks asyncio code starts (Django starts two a request) go through the bridge too;
    once done, nothing of it ties the Task to itself."""
    import gc
    import weakref

    from realtime.threads import aio, asyncio_loop

    asyncio_loop()  # what the server does at start: the loop's Tasks are bridged

    async def waits(d: Deferred[None]) -> int:
        await d  # a step inside the Deferred's callback
        await asyncio.sleep(0)  # and the last in the Task's own turn
        return 1

    gc.collect()
    gc.disable()
    try:
        refs = []
        for _ in range(50):
            d: Deferred[None] = Deferred()
            task = asyncio.ensure_future(waits(d))
            await deferLater(_reactor(), 0, lambda: None)
            d.callback(None)
            assert await aio(task) == 1
            refs.append(weakref.ref(task))
            del task
        await deferLater(_reactor(), 0, lambda: None)  # the last one's callbacks are done
        alive = sum(1 for ref in refs if ref() is not None)
    finally:
        gc.enable()
    assert alive == 0


class _asyncio_errors:
    """The ERROR records asyncio logs inside the block ("never retrieved", ...)."""

    def __enter__(self) -> list[str]:
        import logging

        self.records: list[str] = []
        self.handler = logging.Handler(logging.ERROR)
        self.handler.emit = lambda record: self.records.append(record.getMessage())
        logging.getLogger("asyncio").addHandler(self.handler)
        return self.records

    def __exit__(self, *exc: Any) -> None:
        import logging

        logging.getLogger("asyncio").removeHandler(self.handler)


@pytest_twisted.ensureDeferred
async def test_an_awaitable_a_handler_returns_runs_in_its_task_and_is_cancelled_with_it(
        ) -> None:
    import contextvars

    from realtime.threads import as_deferred

    var: contextvars.ContextVar[str | None] = contextvars.ContextVar("var", default=None)

    async def other() -> tuple[str | None, bool]:
        await asyncio.sleep(0)
        return var.get(), asyncio.current_task() is task[0]

    async def handler() -> Any:
        task.append(asyncio.current_task())
        var.set("x")
        return other()

    task: list[Any] = []
    assert await as_deferred(handler()) == ("x", True)

    inner: Deferred[str] = Deferred()

    async def returns_a_deferred() -> Any:
        return inner

    outer = as_deferred(returns_a_deferred())
    failed: list[str] = []
    outer.addErrback(lambda f: failed.append(f.type.__name__))
    outer.cancel()  # what --application-close-timeout does
    await deferLater(_reactor(), 0.02, lambda: None)
    assert inner.called and failed == ["CancelledError"]
    inner.addErrback(lambda f: None)


def _far_tell(consumer: Any, text: str) -> None:
    """Two levels down from the consumer: not followed by ``needs_a_thread``."""
    _tell(consumer, text)


def _tell(consumer: Any, text: str) -> None:
    from asgiref.sync import async_to_sync

    async_to_sync(consumer.channel_layer.group_send)("far", {"type": "note", "text": text})


class _Undetected(WebsocketConsumer):
    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        _far_tell(self, text_data or "")


@pytest.mark.filterwarnings("ignore:async_to_sync was passed a non-async-marked callable")
@pytest_twisted.ensureDeferred
async def test_asgirefs_async_to_sync_undetected_on_the_reactor_thread_names_the_fix(
        live: Any) -> None:
    """Here asgiref's ``async_to_sync`` on the reactor thread meets the reactor's running
    loop and refuses ("just await the async function directly", which a plain handler
    cannot): the handler's error (1011) names ``thread_handlers = True``, as under the
    default reactor."""
    from websockets.exceptions import ConnectionClosed

    from tests.clients import captured_log

    assert _Undetected.thread_handlers is False
    server = await live(URLRouter([path("far/", _Undetected.as_asgi())]))

    def closed_by() -> Any:
        with connect(server.ws_url("/far/"), open_timeout=5) as client:
            client.send("hello")
            try:
                client.recv(timeout=5)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None
        return "open"

    with captured_log() as events:
        code = await in_thread(closed_by)
    errors = [str(e["log_failure"].value) for e in events
              if "log_failure" in e and e.get("consumer") == "_Undetected"]
    assert code == 1011
    assert len(errors) == 1 and errors[0].startswith(
        "You cannot use AsyncToSync in the same thread as an async event loop"), errors
    assert ("asgiref's async_to_sync called on a thread whose asyncio loop runs (a "
            "consumer's plain handler on the reactor thread, under --reactor=asyncio), where "
            "it cannot wait: set thread_handlers = True on the consumer (or await the call "
            "in an async def handler)") in errors[0], errors



@pytest_twisted.ensureDeferred
async def test_a_broadcast_takes_the_c_fan_out_loop_on_asyncios_reactor_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The C loop runs only where ``isInIOThread()`` holds: on this reactor's thread too
    (its ``run()`` registers it), or every broadcast here would take the Python loop."""
    import os

    from realtime import _fanout
    from realtime.examples.bench import application as bench_app
    from realtime.testing import serve
    from tests.clients import until, ws_open

    real = _fanout._send_each
    if real is None and os.environ.get("CI") == "true":
        pytest.fail("realtime._sendeach is not built: CI must test the C fan-out loop")
    calls: list[int] = []

    def counting(table: Any, slots: Any, frame: bytes) -> Any:
        calls.append(len(slots))
        assert real is not None
        return real(table, slots, frame)

    monkeypatch.setattr(_fanout, "send_each", counting if real is not None else None)
    server = await serve(bench_app, layer=InMemoryChannelLayer())
    try:
        conns = [await ws_open(server.port, "/room/r") for _ in range(3)]
        await until(lambda: len(server.site.layer.local_members("r")) == 3)
        for i, text in enumerate((b"first", b"second")):
            conns[0].send_frame(0x1, text)
            for conn in conns:
                await conn.wait_frames(i + 1)
        for conn in conns:
            assert conn.frames() == [(0x1, b"first"), (0x1, b"second")]
        if real is not None:  # the first made them clean, each with its slot: the second
            assert calls and calls[-1] == 3  # wrote all three in C
    finally:
        await server.stop()
