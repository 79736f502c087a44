"""A plain consumer that calls ``async_to_sync`` and says nothing of ``thread_handlers`` runs
its handlers in the thread pool by itself (``realtime.consumer.needs_a_thread``, decided
at class creation), so Channels' tutorial consumer ports by changing imports: the rules of
that detection, then the tutorial's consumer, verbatim but for its imports, chatting
between two real clients on a real server over every layer kind."""

from __future__ import annotations

import functools
import json
import types
from typing import Any

import asgiref.sync
import pytest
import pytest_twisted
from asgiref.sync import AsyncToSync
from asgiref.sync import async_to_sync as asgiref_a2s
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import realtime
from realtime import (
    AsyncWebsocketConsumer,
    JsonWebsocketConsumer,
    SyncConsumer,
    URLRouter,
    WebsocketConsumer,
    async_to_sync,
    re_path,
)
from realtime import async_to_sync as a2s
from realtime.layers import BaseChannelLayer, ThreadGuardedLayer
from tests.clients import in_thread, until


def threaded(cls: type) -> tuple[bool, str | None]:
    return cls.thread_handlers, cls._threaded_because  # type: ignore[attr-defined]


# -- the detection -------------------------------------------------------------------------------
def test_a_call_by_the_global_name_threads_the_class():
    class Chat(WebsocketConsumer):
        def connect(self):
            async_to_sync(self.channel_layer.group_add)("g", self.channel_name)
            self.accept()

    assert threaded(Chat) == (True, "test_a_call_by_the_global_name_threads_the_class."
                                    "<locals>.Chat.connect calls async_to_sync")


def test_a_consumer_that_never_calls_it_stays_on_the_reactor():
    class Echo(WebsocketConsumer):
        """Mentions async_to_sync in words only."""

        def receive(self, text_data=None, bytes_data=None):
            self.send(text_data="async_to_sync is not called here: " + (text_data or ""))

    assert threaded(Echo) == (False, None)
    assert threaded(WebsocketConsumer) == (False, None)
    assert threaded(JsonWebsocketConsumer) == (False, None)


def test_an_attribute_call_and_nested_code_count():
    class Attribute(WebsocketConsumer):
        def receive(self, text_data=None, bytes_data=None):
            realtime.async_to_sync(self.channel_layer.group_send)("g", {"type": "x"})

    class Closure(WebsocketConsumer):
        def receive(self, text_data=None, bytes_data=None):
            def inner():
                return async_to_sync(self.channel_layer.group_send)("g", {"type": "x"})
            inner()

    class Lambda(WebsocketConsumer):
        def connect(self):
            join = lambda g: async_to_sync(self.channel_layer.group_add)(g, "c")  # noqa: E731
            join("g")

    class Comprehension(WebsocketConsumer):
        def connect(self):
            [async_to_sync(self.channel_layer.group_add)(g, "c") for g in ("a", "b")]

    class Static(WebsocketConsumer):
        @staticmethod
        def _join(layer):
            async_to_sync(layer.group_add)("g", "c")

    def logged(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)
        return wrapper

    class Decorated(WebsocketConsumer):
        @logged
        def connect(self):
            async_to_sync(self.channel_layer.group_add)("g", self.channel_name)

    for cls in (Attribute, Closure, Lambda, Comprehension, Static, Decorated):
        assert cls.thread_handlers is True, cls


def test_a_user_mixin_counts_and_a_subclass_inherits_the_decision():
    class LayerMixin:
        def join(self, group):
            async_to_sync(self.channel_layer.group_add)(group, self.channel_name)

    class Room(LayerMixin, WebsocketConsumer):
        def connect(self):
            self.join("room")
            self.accept()

    class Lobby(Room):
        pass

    assert threaded(Room)[0] is True
    assert threaded(Room)[1].endswith("LayerMixin.join calls async_to_sync")
    assert threaded(Lobby) == threaded(Room)


def test_only_realtimes_own_code_is_not_counted():
    """A method of a realtime class naming ``async_to_sync`` is realtime's concern."""

    class Internal(WebsocketConsumer):
        __module__ = "realtime.internal"

        def _helper(self):
            return async_to_sync(self.channel_layer.group_add)

    class App(Internal):
        def receive(self, text_data=None, bytes_data=None):
            self.send(text_data=text_data)

    assert threaded(App) == (False, None)


def test_a_class_made_by_type_is_decided_and_one_without_a_module_is_no_error():
    def connect(self):
        async_to_sync(self.channel_layer.group_add)("g", self.channel_name)

    made = type("Made", (WebsocketConsumer,), {"connect": connect})
    nameless = type("Nameless", (WebsocketConsumer,), {"connect": connect, "__module__": None})
    assert threaded(made) == (True, "test_a_class_made_by_type_is_decided_and_one_without_a_"
                                    "module_is_no_error.<locals>.connect calls async_to_sync")
    assert threaded(nameless)[0] is True


def test_an_explicit_choice_is_respected():
    class Reactor(WebsocketConsumer):
        thread_handlers = False

        def connect(self):
            async_to_sync(self.channel_layer.group_add)("g", self.channel_name)

    class ReactorChild(Reactor):
        def receive(self, text_data=None, bytes_data=None):
            async_to_sync(self.channel_layer.group_send)("g", {"type": "x"})

    class Pool(WebsocketConsumer):
        thread_handlers = True

        def connect(self):
            async_to_sync(self.channel_layer.group_add)("g", self.channel_name)

    class Quiet(WebsocketConsumer):
        thread_handlers = True

    assert threaded(Reactor) == (False, None)
    assert threaded(ReactorChild) == (False, None)
    assert threaded(Pool) == (True, None)
    assert threaded(Quiet) == (True, None)


def test_a_class_with_an_async_def_method_is_left_alone():
    """It mixes, so its author chose (and a coroutine in a thread would never run): no
    TypeError from refuse_async_handlers either."""

    class AsyncEvent(WebsocketConsumer):
        def connect(self):
            async_to_sync(self.channel_layer.group_add)("g", self.channel_name)

        async def chat_message(self, event):
            pass

    class AsyncReceive(WebsocketConsumer):
        def connect(self):
            async_to_sync(self.channel_layer.group_add)("g", self.channel_name)

        async def receive(self, text_data=None, bytes_data=None):
            pass

    class AsyncConsumerHelper(AsyncWebsocketConsumer):
        def _join(self):
            async_to_sync(self.channel_layer.group_add)("g", self.channel_name)

    for cls in (AsyncEvent, AsyncReceive, AsyncConsumerHelper):
        assert threaded(cls) == (False, None), cls


def test_each_subclass_is_decided_on_its_own_code():
    class Chat(WebsocketConsumer):
        def connect(self):
            async_to_sync(self.channel_layer.group_add)("g", self.channel_name)

    class ChatWithAsyncEvents(Chat):
        async def chat_message(self, event):
            pass

    assert threaded(Chat)[0] is True
    assert threaded(ChatWithAsyncEvents) == (False, None)


def test_the_json_consumer_too():
    class Chat(JsonWebsocketConsumer):
        def receive_json(self, content, **kwargs):
            async_to_sync(self.channel_layer.group_send)("g", {"type": "x"})

    assert threaded(Chat)[0] is True


def test_a_class_that_also_calls_the_layer_directly_stays_on_the_reactor():
    """A layer call not through ``async_to_sync`` (a Deferred, fire-and-forget) is safe on
    the reactor thread only: moved to the pool it would touch the layer and the reactor
    from a worker thread. Its ``async_to_sync`` is elsewhere (a class method a Django view
    calls from its own thread), so the class is left as it is."""

    class Direct(WebsocketConsumer):
        def receive(self, text_data=None, bytes_data=None):
            self.channel_layer.group_send("g", {"type": "x"})

        @classmethod
        def notify(cls, text):
            async_to_sync(realtime.get_channel_layer().group_send)("g", {"type": "x"})

    class StoredLayer(WebsocketConsumer):
        def connect(self):
            layer = self.channel_layer
            layer.group_add("g", self.channel_name)
            self.accept()

        def _sync_join(self):
            async_to_sync(self.channel_layer.group_add)("h", self.channel_name)

    class DirectSend(WebsocketConsumer):
        def receive(self, text_data=None, bytes_data=None):
            self.channel_layer.send("specific.x", {"type": "x"})
            async_to_sync(self.channel_layer.group_add)("g", self.channel_name)

    class Nested(WebsocketConsumer):
        def receive(self, text_data=None, bytes_data=None):
            def later():
                self.channel_layer.broadcast("g", text="x")
            later()
            async_to_sync(self.channel_layer.group_add)("g", self.channel_name)

    class OwnSend(WebsocketConsumer):
        """``self.send`` (the consumer's, hopped from a thread) is no layer call."""

        def receive(self, text_data=None, bytes_data=None):
            async_to_sync(self.channel_layer.group_add)("g", self.channel_name)
            self.send(text_data="joined")

    for cls in (Direct, StoredLayer, DirectSend, Nested):
        assert threaded(cls) == (False, None), cls
    assert threaded(OwnSend)[0] is True


# -- async_to_sync reached another way: another name, a helper function, a mixin ---------------
def join_room(consumer, room):
    """A module-level helper a consumer calls (one level down: followed)."""
    a2s(consumer.channel_layer.group_add)(room, consumer.channel_name)


def join_lobby(consumer):
    """Two levels down: not followed."""
    join_room(consumer, "lobby")


def add_directly(consumer, room):
    """A helper that calls the layer itself (a reactor-thread fire-and-forget)."""
    consumer.channel_layer.group_add(room, consumer.channel_name)


def log_line(logfile, text):
    """A helper whose ``flush()`` is a file's, not the layer's."""
    logfile.write(text)
    logfile.flush()


async def announce(layer, text):
    """An async helper: its awaited layer call is no fire-and-forget."""
    await layer.group_send("lobby", {"type": "note", "text": text})


def internal_join(consumer, room):
    a2s(consumer.channel_layer.group_add)(room, consumer.channel_name)


internal_join.__module__ = "realtime.internal"

#: ``module.helper(...)``: a module the consumer's code names, read without its __getattr__.
chat_helpers = types.ModuleType("chat_helpers")
chat_helpers.join_room = join_room  # type: ignore[attr-defined]
join_partially = functools.partial(a2s)


def test_async_to_sync_under_another_name_threads_the_class():
    class Alias(WebsocketConsumer):
        def connect(self):
            a2s(self.channel_layer.group_add)("g", self.channel_name)

    class Asgiref(WebsocketConsumer):
        def receive(self, text_data=None, bytes_data=None):
            asgiref_a2s(self.channel_layer.group_send)("g", {"type": "x"})

    class AsgirefModule(WebsocketConsumer):
        def receive(self, text_data=None, bytes_data=None):
            asgiref.sync.async_to_sync(self.channel_layer.group_send)("g", {"type": "x"})

    class AsgirefClass(WebsocketConsumer):
        def receive(self, text_data=None, bytes_data=None):
            AsyncToSync(self.channel_layer.group_send)("g", {"type": "x"})

    class Imported(WebsocketConsumer):
        def receive(self, text_data=None, bytes_data=None):
            from asgiref.sync import async_to_sync as hop

            hop(self.channel_layer.group_send)("g", {"type": "x"})

    hop = a2s

    class Closure(WebsocketConsumer):
        def connect(self):
            hop(self.channel_layer.group_add)("g", self.channel_name)

    class Default(WebsocketConsumer):
        def connect(self, call=a2s):
            call(self.channel_layer.group_add)("g", self.channel_name)

    class Partial(WebsocketConsumer):
        def connect(self):
            join_partially(self.channel_layer.group_add)("g", self.channel_name)

    class AliasMixin:
        def join(self, group):
            asgiref_a2s(self.channel_layer.group_add)(group, self.channel_name)

    class Mixed(AliasMixin, WebsocketConsumer):
        def connect(self):
            self.join("g")

    where = "test_async_to_sync_under_another_name_threads_the_class.<locals>."
    assert [threaded(cls) for cls in (Alias, Asgiref, AsgirefModule, AsgirefClass, Imported,
                                      Closure, Default, Partial, Mixed)] == [
        (True, f"{where}Alias.connect calls async_to_sync (as a2s)"),
        (True, f"{where}Asgiref.receive calls async_to_sync (as asgiref_a2s)"),
        (True, f"{where}AsgirefModule.receive calls async_to_sync"),
        (True, f"{where}AsgirefClass.receive calls async_to_sync"),
        (True, f"{where}Imported.receive calls async_to_sync"),
        (True, f"{where}Closure.connect calls async_to_sync (as hop)"),
        (True, f"{where}Default.connect calls async_to_sync (a default argument)"),
        (True, f"{where}Partial.connect calls async_to_sync (as join_partially)"),
        (True, f"{where}AliasMixin.join calls async_to_sync (as asgiref_a2s)")]


def test_a_module_level_helper_is_followed_one_level_down():
    class Helper(WebsocketConsumer):
        def connect(self):
            join_room(self, "room")
            self.accept()

    class ModuleHelper(WebsocketConsumer):
        def connect(self):
            chat_helpers.join_room(self, "room")

    class TwoLevels(WebsocketConsumer):
        """Not followed: stays on the reactor, where async_to_sync raises (1011 or 500)."""

        def connect(self):
            join_lobby(self)

    class DirectHelper(WebsocketConsumer):
        """Its helper's layer call is a reactor-thread fire-and-forget: left alone."""

        def connect(self):
            add_directly(self, "room")

        def receive(self, text_data=None, bytes_data=None):
            async_to_sync(self.channel_layer.group_send)("room", {"type": "x"})

    class DirectHelperSameMethod(WebsocketConsumer):
        def receive(self, text_data=None, bytes_data=None):
            async_to_sync(self.channel_layer.group_send)("room", {"type": "x"})
            add_directly(self, "room")

    class FileHelper(WebsocketConsumer):
        def receive(self, text_data=None, bytes_data=None):
            log_line(self.logfile, text_data)
            async_to_sync(self.channel_layer.group_send)("room", {"type": "x"})

    class AsyncHelper(WebsocketConsumer):
        def receive(self, text_data=None, bytes_data=None):
            async_to_sync(announce)(self.channel_layer, text_data)

    class Realtimes(WebsocketConsumer):
        """A function of realtime's is realtime's concern: not followed."""

        def receive(self, text_data=None, bytes_data=None):
            internal_join(self, "room")

    class AttributeNames(WebsocketConsumer):
        """``self.join_room(...)``, ``self.a2s``: its own attributes, named as the module's
        helper and async_to_sync are: not those."""

        a2s = None

        def receive(self, text_data=None, bytes_data=None):
            self.join_room(text_data)
            if self.a2s is not None:
                self.send(text_data="a2s")

        def join_room(self, room):
            self.room = room

    where = "test_a_module_level_helper_is_followed_one_level_down.<locals>."
    assert threaded(Helper) == (
        True, f"{where}Helper.connect calls join_room, which calls async_to_sync (as a2s)")
    assert threaded(ModuleHelper) == (
        True, f"{where}ModuleHelper.connect calls join_room, which calls async_to_sync (as a2s)")
    assert threaded(TwoLevels) == (False, None)
    assert threaded(DirectHelper) == threaded(DirectHelperSameMethod) == (False, None)
    assert threaded(FileHelper) == (True, f"{where}FileHelper.receive calls async_to_sync")
    assert threaded(AsyncHelper) == (True, f"{where}AsyncHelper.receive calls async_to_sync")
    assert threaded(Realtimes) == (False, None)
    assert threaded(AttributeNames) == (False, None)


class Notifier(WebsocketConsumer):
    """Plain handlers that call the layer directly (fire-and-forget, on the reactor thread),
    and a class method for code outside the server's thread (a Django view) that calls it
    through async_to_sync."""

    seen_on_reactor: list[bool] = []

    def connect(self):
        from twisted.python.threadable import isInIOThread

        self.seen_on_reactor.append(isInIOThread())
        self.channel_layer.group_add("notes", self.channel_name)
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        self.channel_layer.group_send("notes", {"type": "note", "text": text_data})

    def note(self, event):
        self.send(text_data=event["text"])

    @classmethod
    def notify(cls, text):
        async_to_sync(realtime.get_channel_layer().group_send)(
            "notes", {"type": "note", "text": text})


@pytest_twisted.ensureDeferred
async def test_direct_layer_calls_keep_running_on_the_reactor_thread():
    from realtime.layers import get_channel_layer
    from realtime.testing import serve

    layer = get_channel_layer()
    server = await serve(URLRouter([re_path(r"^ws/notes/$", Notifier.as_asgi())]),
                         layer=layer)
    Notifier.seen_on_reactor.clear()

    def chat():
        with connect(server.ws_url("/ws/notes/"), open_timeout=5) as ada:
            ada.send("from ada")
            heard = [ada.recv(timeout=5)]
            Notifier.notify("from a view")  # this thread is not the reactor's
            heard.append(ada.recv(timeout=5))
            return heard

    try:
        heard = await in_thread(chat)
    finally:
        await server.stop()
    assert heard == ["from ada", "from a view"]
    assert Notifier.seen_on_reactor == [True]


# -- async_to_sync reached another way, on a real server ---------------------------------------
#: Whether each ported consumer's connect() ran on the reactor thread.
PORTED_ON_REACTOR: list[bool] = []


def on_reactor() -> bool:
    from twisted.python.threadable import isInIOThread

    return isInIOThread()


class AliasRoom(WebsocketConsumer):
    """realtime's async_to_sync under another name."""

    def connect(self):
        PORTED_ON_REACTOR.append(on_reactor())
        a2s(self.channel_layer.group_add)("port", self.channel_name)
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        a2s(self.channel_layer.group_send)("port", {"type": "note", "text": text_data})

    def note(self, event):
        self.send(text_data=event["text"])


class HelperRoom(WebsocketConsumer):
    """A module-level helper joins; asgiref's async_to_sync, by another name, sends."""

    def connect(self):
        PORTED_ON_REACTOR.append(on_reactor())
        join_room(self, "port")
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        asgiref_a2s(self.channel_layer.group_send)("port", {"type": "note", "text": text_data})

    def disconnect(self, code):
        asgiref_a2s(self.channel_layer.group_discard)("port", self.channel_name)

    def note(self, event):
        self.send(text_data=event["text"])


class TellMixin:
    def tell(self, text):
        asgiref.sync.async_to_sync(self.channel_layer.group_send)(
            "port", {"type": "note", "text": text})


class MixinRoom(TellMixin, JsonWebsocketConsumer):
    """A mixin's method, and asgiref's class."""

    def connect(self):
        PORTED_ON_REACTOR.append(on_reactor())
        AsyncToSync(self.channel_layer.group_add)("port", self.channel_name)
        self.accept()

    def receive_json(self, content, **kwargs):
        self.tell(content["text"])

    def note(self, event):
        self.send_json({"text": event["text"]})


ASGIREF_WARNING = "ignore:async_to_sync was passed a non-async-marked callable"


@pytest.mark.filterwarnings(ASGIREF_WARNING)
@pytest_twisted.ensureDeferred
async def test_consumers_that_reach_async_to_sync_another_way_chat_from_the_pool(layer):
    from realtime.testing import serve

    assert [threaded(cls)[0] for cls in (AliasRoom, HelperRoom, MixinRoom)] == [True] * 3
    PORTED_ON_REACTOR.clear()
    server = await serve(URLRouter([re_path(r"^alias/$", AliasRoom.as_asgi()),
                                    re_path(r"^helper/$", HelperRoom.as_asgi()),
                                    re_path(r"^mixin/$", MixinRoom.as_asgi())]), layer=layer)

    def chat():
        with connect(server.ws_url("/alias/"), open_timeout=5) as ada, \
                connect(server.ws_url("/helper/"), open_timeout=5) as bob, \
                connect(server.ws_url("/mixin/"), open_timeout=5) as cyd:
            heard = []
            for client, text in ((ada, "from ada"), (bob, "from bob"),
                                 (cyd, json.dumps({"text": "from cyd"}))):
                client.send(text)
                heard.append([ada.recv(timeout=5), bob.recv(timeout=5),
                              json.loads(cyd.recv(timeout=5))["text"]])
            return heard

    try:
        heard = await in_thread(chat)
        # HelperRoom's disconnect() left through asgiref's async_to_sync too.
        assert await until(lambda: layer.local_members("port") == [], timeout=5)
    finally:
        await server.stop()
    assert heard == [["from ada"] * 3, ["from bob"] * 3, ["from cyd"] * 3]
    assert PORTED_ON_REACTOR == [False] * 3


class AsgirefPool(WebsocketConsumer):
    """asgiref's async_to_sync in a thread handler: each layer call hops to the reactor
    thread (the guarded layer refuses any other), its result or exception comes back."""

    thread_handlers = True

    def connect(self):
        asgiref_a2s(self.channel_layer.group_add)("asg", self.channel_name)
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        if text_data == "bad name":
            try:
                asgiref_a2s(self.channel_layer.group_add)("not a name!", self.channel_name)
            except (TypeError, ValueError) as exc:
                self.send(text_data=type(exc).__name__)
            return
        if text_data == "new channel":
            name = asgiref_a2s(self.channel_layer.new_channel)()
            self.send(text_data=str(name.startswith("specific.")))
            return
        asgiref_a2s(self.channel_layer.group_send)("asg", {"type": "note", "text": text_data})

    def note(self, event):
        self.send(text_data=event["text"])


async def announce_to(layer, group, text):
    """Async code a view hands to asgiref's async_to_sync: its loop, in a thread, awaits
    the layer's call."""
    await layer.group_send(group, {"type": "note", "text": text})


@pytest.mark.filterwarnings(ASGIREF_WARNING)
@pytest_twisted.ensureDeferred
async def test_asgirefs_async_to_sync_runs_layer_calls_on_the_reactor_thread(layer):
    from realtime.layers import get_channel_layer, set_channel_layer
    from realtime.testing import serve

    server = await serve(URLRouter([re_path(r"^asg/$", AsgirefPool.as_asgi())]), layer=layer)

    def chat():
        with connect(server.ws_url("/asg/"), open_timeout=5) as ada:
            heard = []
            for text in ("through asgiref", "bad name", "new channel"):
                ada.send(text)
                heard.append(ada.recv(timeout=5))
            # A view's thread: get_channel_layer() is guarded there, and asgiref's
            # async_to_sync of its method, or of async code awaiting it, runs on the reactor.
            asgiref_a2s(get_channel_layer().group_send)(
                "asg", {"type": "note", "text": "from a view"})
            heard.append(ada.recv(timeout=5))
            asgiref_a2s(announce_to)(get_channel_layer(), "asg", "from async code")
            heard.append(ada.recv(timeout=5))
            return heard

    set_channel_layer(layer)  # (tests/conftest.py puts the process's layers back after)
    try:
        heard = await in_thread(chat)
    finally:
        await server.stop()
    assert heard == ["through asgiref", "TypeError", "True", "from a view", "from async code"]


def far_asgiref_send(consumer, text):
    """Two levels down from the consumer (not followed): asgiref's async_to_sync."""
    asgiref_send(consumer, text)


def asgiref_send(consumer, text):
    asgiref_a2s(consumer.channel_layer.group_send)("far", {"type": "note", "text": text})


class FarRealtime(WebsocketConsumer):
    """Reaches realtime's async_to_sync two levels down: undecided, so on the reactor."""

    def receive(self, text_data=None, bytes_data=None):
        join_lobby(self)


class FarAsgiref(WebsocketConsumer):
    def connect(self):
        self.channel_layer.group_add("far", self.channel_name)
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        far_asgiref_send(self, text_data)


@pytest.mark.filterwarnings(ASGIREF_WARNING)
@pytest_twisted.ensureDeferred
async def test_an_undetected_async_to_sync_on_the_reactor_thread_is_one_clear_error(redis_layer):
    """Where the class cannot tell, the handler on the reactor thread gets one error naming
    ``thread_handlers = True`` (the client 1011), never a hang: realtime's async_to_sync
    refuses that thread; asgiref's, awaiting a Redis call on a loop of its own, fails and
    gets the hint."""
    from realtime.testing import serve
    from tests.clients import captured_log

    assert threaded(FarRealtime) == threaded(FarAsgiref) == (False, None)
    server = await serve(URLRouter([re_path(r"^realtime/$", FarRealtime.as_asgi()),
                                    re_path(r"^asgiref/$", FarAsgiref.as_asgi())]),
                         layer=redis_layer)

    def closed_by(path):
        with connect(server.ws_url(path), open_timeout=5) as client:
            client.send("hello")
            try:
                client.recv(timeout=5)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None
        return "open"

    try:
        with captured_log() as events:
            codes = [await in_thread(closed_by, "/realtime/"),
                     await in_thread(closed_by, "/asgiref/")]
        # Behind the group_send asgiref's loop gave up on (Redis answers in order): done
        # before the fixture closes the layer.
        await redis_layer.group_send("far", {"type": "note", "text": "after"})
    finally:
        await server.stop()
    assert codes == [1011, 1011]
    errors = [(e["consumer"], str(e["log_failure"].value)) for e in events
              if "log_failure" in e and "consumer" in e]
    assert [consumer for consumer, _ in errors] == ["FarRealtime", "FarAsgiref"]
    assert errors[0][1].startswith(
        "async_to_sync('RedisChannelLayer.group_add') called on the reactor thread, which it "
        "would block forever: await the call in an async def handler, or set "
        "thread_handlers = True on the consumer")
    assert errors[1][1].startswith("Task got bad yield: <Deferred at ")
    assert ("asgiref's async_to_sync awaited a Twisted call on an asyncio loop of its own, "
            "which cannot run it: called from a consumer's plain handler on the reactor "
            "thread, where no async_to_sync can wait, set thread_handlers = True on the "
            "consumer") in errors[1][1]


@pytest_twisted.ensureDeferred
async def test_get_channel_layer_off_the_reactor_is_guarded_and_passes_on_it(layer):
    """The guard a thread (or an import, before the reactor runs) gets reads the reactor's
    thread at each call: kept and called on the reactor thread it passes straight through;
    handed to a server, the server keeps the layer itself."""
    from realtime.layers import get_channel_layer, set_channel_layer
    from realtime.testing import serve

    set_channel_layer(layer)
    guard = await in_thread(get_channel_layer)
    assert type(guard) is ThreadGuardedLayer and isinstance(guard, type(layer))
    assert get_channel_layer() is layer  # on the reactor thread: the layer itself
    channel = await guard.new_channel()
    await guard.group_add("kept", channel)  # on the reactor thread: passes through
    await guard.group_send("kept", {"type": "note", "text": "kept"})
    assert (await layer.receive(channel)) == {"type": "note", "text": "kept"}
    server = await serve(URLRouter([re_path(r"^reactor/$", ReactorRoom.as_asgi())]),
                         layer=guard)
    try:
        assert server.site.layer is layer
    finally:
        await server.stop()


class LayerSeen(WebsocketConsumer):
    """Records the layer it got, on the reactor thread."""

    seen: list[Any] = []

    def connect(self):
        self.seen.append(self.channel_layer)
        self.accept()


class LayerSeenHttp(realtime.AsyncHttpConsumer):
    seen: list[Any] = []

    async def handle(self, body):
        self.seen.append(self.channel_layer)
        await self.send_response(200, b"ok")


@pytest_twisted.ensureDeferred
async def test_a_communicator_handed_a_guard_gives_its_consumers_the_layer_itself():
    """``ApplicationCommunicator(layer=)`` given the guard a module global or a thread has:
    its websocket and http consumers, on the reactor thread, get the layer itself, as
    ``serve(layer=)``'s do (no guard's cost, and ``is`` holds)."""
    from realtime.layers import InMemoryChannelLayer, get_channel_layer, set_channel_layer
    from realtime.testing import ApplicationCommunicator

    layer = InMemoryChannelLayer()
    set_channel_layer(layer)
    guard = await in_thread(get_channel_layer)
    assert type(guard) is ThreadGuardedLayer
    LayerSeen.seen.clear()
    LayerSeenHttp.seen.clear()
    ws = ApplicationCommunicator(LayerSeen.as_asgi(), {"type": "websocket", "path": "/"},
                                 layer=guard)
    await ws.send_input({"type": "websocket.connect"})
    assert (await ws.receive_output(timeout=5))["type"] == "websocket.accept"
    await ws.send_input({"type": "websocket.disconnect", "code": 1000})
    await ws.wait(timeout=5)
    http = ApplicationCommunicator(LayerSeenHttp.as_asgi(),
                                   {"type": "http", "method": "GET", "path": "/"}, layer=guard)
    await http.send_input({"type": "http.request", "body": b""})
    assert (await http.receive_output(timeout=5))["status"] == 200
    await http.wait(timeout=5)
    assert [seen is layer for seen in LayerSeen.seen + LayerSeenHttp.seen] == [True, True]


def test_before_the_reactor_runs_the_main_thread_passes_and_other_threads_are_refused(
        monkeypatch):
    """A module global taken while ``--app`` is imported: the import's own calls (on the
    main thread, which will run the reactor: ``keep_history``) pass; another thread's are
    refused as after the start (tests/e2e/test_layer_global.py: under twistd)."""
    import threading

    from twisted.python import threadable

    from realtime.layers import InMemoryChannelLayer, get_channel_layer, set_channel_layer

    layer = InMemoryChannelLayer()
    set_channel_layer(layer)
    monkeypatch.setattr(threadable, "ioThread", None)  # no reactor has run yet
    guard = get_channel_layer()
    assert type(guard) is ThreadGuardedLayer
    guard.keep_history("room.*", size=10, ttl=60)
    refused: list[str] = []

    def elsewhere() -> None:
        try:
            guard.group_send("room.a", {"type": "note"})
        except RuntimeError as exc:
            refused.append(str(exc))

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(5)
    assert layer.history.match("room.a") is not None
    assert refused == [
        "InMemoryChannelLayer.group_send() called from a thread other than the reactor's, "
        "where it would race the reactor (Twisted is not thread-safe): call it through "
        "async_to_sync(get_channel_layer().group_send)(...), which runs it on the reactor "
        "thread"]

# -- Channels' tutorial, verbatim but for the imports ------------------------------------------
class ChatConsumer(WebsocketConsumer):
    def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"

        # Join room group
        async_to_sync(self.channel_layer.group_add)(
            self.room_group_name, self.channel_name
        )

        self.accept()

    def disconnect(self, close_code):
        # Leave room group
        async_to_sync(self.channel_layer.group_discard)(
            self.room_group_name, self.channel_name
        )

    # Receive message from WebSocket
    def receive(self, text_data):
        text_data_json = json.loads(text_data)
        message = text_data_json["message"]

        # Send message to room group
        async_to_sync(self.channel_layer.group_send)(
            self.room_group_name, {"type": "chat.message", "message": message}
        )

    # Receive message from room group
    def chat_message(self, event):
        message = event["message"]

        # Send message to WebSocket
        self.send(text_data=json.dumps({"message": message}))


websocket_urlpatterns = [
    re_path(r"ws/chat/(?P<room_name>\w+)/$", ChatConsumer.as_asgi()),
]


@pytest_twisted.ensureDeferred
async def test_channels_tutorial_consumer_chats_between_two_clients(layer):
    from realtime.testing import serve

    assert threaded(ChatConsumer) == (True, "ChatConsumer.connect calls async_to_sync")
    server = await serve(URLRouter(websocket_urlpatterns), layer=layer)

    def chat():
        url = server.ws_url("/ws/chat/lobby/")
        with connect(url, open_timeout=5) as ada, connect(url, open_timeout=5) as bob:
            heard = []
            ada.send(json.dumps({"message": "hello"}))
            heard += [ada.recv(timeout=5), bob.recv(timeout=5)]
            bob.send(json.dumps({"message": "hi ada"}))
            heard += [ada.recv(timeout=5), bob.recv(timeout=5)]
            return heard

    try:
        heard = await in_thread(chat)
        # Both left the group, their disconnect()'s group_discard ran in the pool too.
        assert await until(lambda: layer.local_members("chat_lobby") == [], timeout=5)
    finally:
        await server.stop()
    assert [json.loads(h) for h in heard] == [{"message": "hello"}] * 2 + [
        {"message": "hi ada"}] * 2


# -- the layer as handler threads see it: direct calls refused, async_to_sync's run --------------
class PoolRoom(WebsocketConsumer):
    """Handlers in the pool; "direct" calls the layer without async_to_sync (refused there)."""

    thread_handlers = True
    seen: list[Any] = []

    def connect(self):
        layer = self.channel_layer
        self.seen.append((type(layer), isinstance(layer, BaseChannelLayer), layer.capacity))
        async_to_sync(self.channel_layer.group_add)("room", self.channel_name)
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        if text_data == "direct":
            try:
                self.channel_layer.group_add("elsewhere", self.channel_name)
            except RuntimeError as exc:
                self.seen.append(str(exc))
                raise  # as any handler exception: the socket closes with 1011
        async_to_sync(self.channel_layer.group_send)("room", {"type": "note", "text": text_data})

    def note(self, event):
        self.send(text_data=event["text"])


class ReactorRoom(WebsocketConsumer):
    """Plain handlers on the reactor thread: the layer itself, called directly."""

    seen: list[Any] = []

    def connect(self):
        self.seen.append(type(self.channel_layer))
        self.channel_layer.group_add("room", self.channel_name)
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        self.channel_layer.group_send("room", {"type": "note", "text": text_data})

    def note(self, event):
        self.send(text_data=event["text"])


@pytest_twisted.ensureDeferred
async def test_a_thread_handlers_direct_layer_call_is_refused_and_async_to_sync_works(layer):
    from realtime.testing import serve

    PoolRoom.seen, ReactorRoom.seen = [], []
    server = await serve(URLRouter([re_path(r"^pool/$", PoolRoom.as_asgi()),
                                    re_path(r"^reactor/$", ReactorRoom.as_asgi())]),
                         layer=layer)

    def chat():
        with connect(server.ws_url("/pool/"), open_timeout=5) as ada, \
                connect(server.ws_url("/reactor/"), open_timeout=5) as bob:
            heard = []
            ada.send("through async_to_sync")
            heard += [ada.recv(timeout=5), bob.recv(timeout=5)]
            bob.send("direct, on the reactor")
            heard += [ada.recv(timeout=5), bob.recv(timeout=5)]
            ada.send("direct")
            try:
                ada.recv(timeout=5)
            except ConnectionClosed as closed:
                heard.append(closed.rcvd.code if closed.rcvd else None)
            return heard

    try:
        heard = await in_thread(chat)
        assert layer.local_members("elsewhere") == []  # refused before it touched the layer
    finally:
        await server.stop()
    assert heard == ["through async_to_sync"] * 2 + ["direct, on the reactor"] * 2 + [1011]
    guard_type, is_layer, capacity = PoolRoom.seen[0]
    assert guard_type is ThreadGuardedLayer and is_layer and capacity == layer.capacity
    name = type(layer).__name__
    assert PoolRoom.seen[1:] == [
        f"{name}.group_add() called from a handler thread, where it would race the reactor "
        "(Twisted is not thread-safe): call it through "
        "async_to_sync(self.channel_layer.group_add)(...), which runs it on the reactor "
        "thread"]
    assert ReactorRoom.seen == [type(layer)]  # the fast path gets the layer itself


@pytest_twisted.ensureDeferred
async def test_a_view_thread_reaches_a_group_through_get_channel_layer(layer):
    """A Django view runs in a thread of its own: ``get_channel_layer()`` there is guarded
    too, and ``async_to_sync(get_channel_layer().group_send)`` reaches the members."""
    from realtime.layers import _layers as layers
    from realtime.layers import get_channel_layer, set_channel_layer
    from realtime.testing import serve

    set_channel_layer(layer, "layerhop")
    assert get_channel_layer("layerhop") is layer  # on the reactor thread: the layer itself
    server = await serve(URLRouter([re_path(r"^reactor/$", ReactorRoom.as_asgi())]),
                         layer=layer)

    def view():
        guarded = get_channel_layer("layerhop")
        found = [type(guarded) is ThreadGuardedLayer, isinstance(guarded, type(layer)),
                 get_channel_layer("layerhop") is guarded]  # one guard per alias and layer
        try:
            guarded.group_send("room", {"type": "note", "text": "direct"})
        except RuntimeError as exc:
            found.append(str(exc))
        with connect(server.ws_url("/reactor/"), open_timeout=5) as ada:
            async_to_sync(get_channel_layer("layerhop").group_send)(
                "room", {"type": "note", "text": "from a view"})
            found.append(ada.recv(timeout=5))
        return found

    try:
        found = await in_thread(view)
    finally:
        await server.stop()
        layers.pop("layerhop", None)
    assert found == [True, True, True, f"{type(layer).__name__}.group_send() called from a thread "
                     "other than the reactor's, where it would race the reactor (Twisted is "
                     "not thread-safe): call it through async_to_sync(get_channel_layer('layerhop')"
                     ".group_send)(...), which runs it on the reactor thread", "from a view"]


class Mailer(SyncConsumer):
    """A worker's SyncConsumer (handlers in the pool): one job through async_to_sync, one
    direct."""

    def mail_send(self, message):
        async_to_sync(self.channel_layer.send)(message["reply_to"], {"type": "mail.sent"})

    def mail_direct(self, message):
        self.channel_layer.send(message["reply_to"], {"type": "mail.sent"})


@pytest_twisted.ensureDeferred
async def test_a_sync_worker_consumers_direct_layer_call_is_refused(layer):
    from realtime.testing import ApplicationCommunicator

    reply = await layer.new_channel()
    comm = ApplicationCommunicator(Mailer.as_asgi(), {"type": "channel", "channel": "mail"},
                                   layer=layer)
    await comm.send_input({"type": "mail.send", "reply_to": reply})
    await comm.wait(timeout=5)
    assert (await layer.receive(reply)) == {"type": "mail.sent"}
    await comm.send_input({"type": "mail.direct", "reply_to": reply})
    with pytest.raises(RuntimeError, match=r"\.send\(\) called from a handler thread"):
        await comm.wait(timeout=5)


@pytest.mark.filterwarnings(ASGIREF_WARNING)
@pytest_twisted.ensureDeferred
async def test_pubsub_publish_from_a_thread_is_refused_and_async_to_sync_works():
    """``realtime.pubsub.publish`` from a view's thread would touch the layer off the
    reactor: refused, saying how; through ``async_to_sync`` (realtime's or asgiref's) it
    publishes (its position in the channel's history is the answer)."""
    from realtime import pubsub
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    pubsub.configure(["chat:history_size=10,history_ttl=60s"], layer=layer)

    def view():
        found: list[Any] = []
        try:
            pubsub.publish("chat:lobby", {"text": "direct"}, layer=layer)
        except RuntimeError as exc:
            found.append(str(exc))
        found.append(async_to_sync(pubsub.publish)("chat:lobby", {"text": "hi"}, layer=layer))
        found.append(asgiref_a2s(pubsub.publish)("chat:lobby", {"text": "hi"}, layer=layer))
        return found

    try:
        refused, position, then = await in_thread(view)
    finally:
        pubsub.configure([])
    assert refused == ("realtime.pubsub.publish() called from a thread other than the "
                       "reactor's, where it would race the reactor (Twisted is not "
                       "thread-safe): call it through async_to_sync(publish)(...), which "
                       "runs it on the reactor thread")
    assert position["offset"] == 1  # the refused call published nothing
    assert then == {"epoch": position["epoch"], "offset": 2}


def test_before_the_reactor_runs_publish_passes_on_the_main_thread_only(monkeypatch):
    """As the guarded layer: a publication made while ``--app`` is imported, on the thread
    that will run the reactor, is published; another thread's (one the import started) is
    refused as after the start, not run beside the reactor's start-up."""
    import threading

    from twisted.python import threadable

    from realtime import pubsub
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    pubsub.configure(["chat:history_size=10,history_ttl=60s"], layer=layer)
    monkeypatch.setattr(threadable, "ioThread", None)  # no reactor has run yet
    outcomes: list[Any] = []
    try:
        pubsub.publish("chat:lobby", {"text": "at import"}, layer=layer).addBoth(outcomes.append)

        def elsewhere() -> None:
            try:
                pubsub.publish("chat:lobby", {"text": "a thread"}, layer=layer)
            except RuntimeError as exc:
                outcomes.append(str(exc))

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(5)
        pubsub.publish("chat:lobby", {"text": "then"}, layer=layer).addBoth(outcomes.append)
    finally:
        pubsub.configure([])
    assert [type(o) for o in outcomes] == [dict, str, dict]
    assert outcomes[1].startswith("realtime.pubsub.publish() called from a thread other than "
                                  "the reactor's")
    # The thread's publication was not made: the import's is 1, the next one 2.
    assert [outcomes[0]["offset"], outcomes[2]["offset"]] == [1, 2]


#: A thread of a process with no reactor (a Django view under another server, a Celery
#: task) calling the layer the way Channels' code does; prints what each call gave.
_NO_REACTOR_SCRIPT = """
import json, sys, threading, warnings
warnings.simplefilter("ignore")
from asgiref.sync import async_to_sync as asgiref_a2s
from realtime import async_to_sync, pubsub
from realtime.layers import get_channel_layer

found = []

def view():
    for call in (lambda: asgiref_a2s(get_channel_layer().group_send)("g", {"type": "x"}),
                 lambda: async_to_sync(get_channel_layer().group_send)("g", {"type": "x"}),
                 lambda: asgiref_a2s(pubsub.publish)("chat:lobby", {"text": "hi"})):
        try:
            found.append(repr(call()))
        except RuntimeError as exc:
            found.append(str(exc))

thread = threading.Thread(target=view, daemon=True)
thread.start()
thread.join(10)
print(json.dumps({"waiting": thread.is_alive(), "found": found,
                  "reactor": "twisted.internet.reactor" in sys.modules}))
"""


def test_a_thread_of_a_process_without_a_reactor_is_refused_not_left_waiting():
    """No reactor will ever run such a call: either ``async_to_sync`` of the guarded layer
    (or of ``publish``) raises ``RuntimeError`` saying so at once, instead of waiting for
    ever, and installs no reactor from that thread."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", _NO_REACTOR_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert (got["waiting"], got["reactor"], len(got["found"])) == (False, False, 3)
    assert [text.split(" called ")[0] for text in got["found"]] == [
        "InMemoryChannelLayer.group_send()", "async_to_sync('BaseChannelLayer.group_send')",
        "realtime.pubsub.publish()"]
    assert all(text.endswith(
        "called in a thread while this process has no Twisted reactor (a Django view under "
        "another server, a Celery task, a script): nothing would ever run the call; the "
        "layer reaches only this process's consumers, and from another process "
        "realtime.client (the server API) reaches the server's") for text in got["found"]), \
        got["found"]

