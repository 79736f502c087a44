"""Consumers: one instance per connection, with Channels' names and hooks.

The bridge (``realtime.websocket``) calls three private entry points, ``_on_connect``,
``_on_receive`` and ``_on_disconnect``, one at a time and in order. A plain method runs on
the reactor thread (the fast path: no event dict, no Deferred); a method that returns a
coroutine or Deferred is awaited before the next message is handled. With
``thread_handlers`` (set, or found at class creation: ``needs_a_thread``) plain methods run
in the reactor's thread pool instead, still one at a time. Overriding the raw
``websocket_*`` handlers works as in Channels, at the cost of one dict per message.
"""

from __future__ import annotations

import dis
import functools
import inspect
import json
import sys
import types
import weakref
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.logger import Logger

from realtime.exceptions import AcceptConnection, ConnectionClosed, check_headers

if TYPE_CHECKING:
    from realtime.routing import Scope
    from realtime.websocket import WebSocketConnection

log = Logger()


def check_app_close_code(code: Any) -> int:
    if code is None or code is True:
        return 1000
    if not isinstance(code, int) or isinstance(code, bool) or not (
        code == 1000 or 3000 <= code <= 4999
    ):
        raise ValueError(f"close code must be 1000 or 3000-4999, not {code!r}")
    return code


def refuse_constant(name: str) -> Any:
    """``json.loads(..., parse_constant=)``: NaN and the infinities are not JSON (Python's
    ``json`` takes them; JavaScript's ``JSON.parse`` does not, so relaying one a client sent
    would break every browser it reaches)."""
    raise ValueError(f"{name} is not JSON")


def compact_json(document: Any, allow_nan: bool = True) -> str:
    """Compact JSON, non-ASCII as is, escaped (``\\ud83d``) only when the text holds a lone
    surrogate (legal JSON: a JavaScript string cut inside an emoji), which a text frame's
    UTF-8 cannot carry (``realtime.pubsub``, ``realtime.socketio``). ``ValueError`` for NaN
    and the infinities when not ``allow_nan``."""
    text = (_COMPACT if allow_nan else _COMPACT_NO_NAN).encode(document)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = (_ASCII if allow_nan else _ASCII_NO_NAN).encode(document)
    return text


# ``compact_json``'s encoders, built once: ``json.dumps`` with any option builds a
# ``JSONEncoder`` per call (a cost on every packet of realtime.socketio and realtime.pubsub).
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_COMPACT_NO_NAN = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ASCII = json.JSONEncoder(separators=(",", ":"))
_ASCII_NO_NAN = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class ConsumerApp:
    """The application ``Consumer.as_app(**initkwargs)`` returns: one new consumer per scope."""

    def __init__(self, consumer_class: type[Any], initkwargs: dict[str, Any]) -> None:
        self.consumer_class = consumer_class
        self.initkwargs = initkwargs

    def __call__(self, scope: Scope, *asgi: Any) -> Any:
        from realtime.routing import Ready, not_asgi

        if asgi:
            raise not_asgi(self)
        consumer = self.consumer_class(**self.initkwargs)
        consumer.scope = scope
        return Ready(consumer)

    def __repr__(self) -> str:
        return f"{self.consumer_class.__name__}.as_app()"


def receive_message(text: str | None, data: bytes | None) -> dict[str, Any]:
    """The ASGI ``websocket.receive`` message of one client message (``text`` or ``data``)."""
    if text is not None:
        return {"type": "websocket.receive", "text": text}
    return {"type": "websocket.receive", "bytes": data}


def refuse_async_handlers(cls: type, names: tuple[str, ...], advice: str) -> None:
    """A class whose handlers run in worker threads (``thread_handlers``) must not have
    ``async def`` ones among ``names``: called in a thread, a coroutine would only be
    created, never run. ``TypeError`` naming the first, then ``advice``."""
    for name in names:
        if inspect.iscoroutinefunction(getattr(cls, name, None)):
            raise TypeError(advice.format(cls=cls.__name__, name=name))


#: The handlers ``thread_handlers`` runs in the pool, checked by ``refuse_async_handlers``.
_HANDLER_NAMES = ("websocket_connect", "websocket_receive", "websocket_disconnect",
                  "connect", "receive", "disconnect", "token_expiring")


def _own_code(cls: Any) -> bool:
    """Whether ``cls`` (a class or function) is the application's rather than realtime's
    (or ``object``)."""
    module = getattr(cls, "__module__", None)
    if not isinstance(module, str):  # ``type(...)`` with ``__module__`` None: not ours
        return cls is not object
    return cls is not object and module != "realtime" and not module.startswith("realtime.")


def _functions(cls: type) -> list[tuple[types.FunctionType, types.FunctionType]]:
    """The Python functions ``cls``'s own namespace holds (methods, static and class
    methods, properties' accessors): each as found, and unwrapped from ``functools.wraps``
    decorators (whose code is the decorator's)."""
    found = []
    for value in vars(cls).values():
        candidates: list[Any]
        if isinstance(value, staticmethod | classmethod):
            candidates = [value.__func__]
        elif isinstance(value, property):
            candidates = [value.fget, value.fset, value.fdel]
        else:
            candidates = [value]
        for candidate in candidates:
            if not isinstance(candidate, types.FunctionType):
                continue
            try:
                inner = inspect.unwrap(candidate)
            except ValueError:  # a __wrapped__ cycle
                inner = candidate
            found.append((candidate, inner if isinstance(inner, types.FunctionType)
                          else candidate))
    return found


#: The names that say ``async_to_sync`` in code: realtime's and asgiref's function, and
#: asgiref's class behind it.
_A2S_NAMES = frozenset({"async_to_sync", "AsyncToSync"})


def _nested(code: types.CodeType) -> list[types.CodeType]:
    """``code`` and the code nested in it (closures, lambdas, comprehensions)."""
    found, stack = [], [code]
    while stack:
        code = stack.pop()
        found.append(code)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return found


def _names_async_to_sync(code: types.CodeType) -> bool:
    """``async_to_sync`` is a name (global, or attribute: ``sync.async_to_sync``, or
    imported in the function) in ``code`` or the code nested in it."""
    return any(not _A2S_NAMES.isdisjoint(c.co_names) for c in _nested(code))


def _async_to_sync_objects() -> tuple[Any, ...]:
    """realtime's ``async_to_sync``, and asgiref's (the function and its class) when
    imported: what a name an application gave them (``a2s``) holds."""
    from realtime.threads import async_to_sync

    found: list[Any] = [async_to_sync]
    sync = sys.modules.get("asgiref.sync")
    if sync is not None:
        found += [vars(sync).get(name) for name in _A2S_NAMES]
    return tuple(f for f in found if f is not None)


def _is_one_of(value: Any, known: tuple[Any, ...]) -> bool:
    if isinstance(value, functools.partial):
        value = value.func
    return any(value is k for k in known)


def _loads_globals(code: types.CodeType) -> set[str]:
    """The names ``code`` (or code nested in it) reads as globals (``helper(...)``,
    ``module.helper(...)``'s ``module``), not as attributes: ``self.helper(...)`` is a
    method of its own, whatever the module's globals hold under that name."""
    return {instruction.argval for inner in _nested(code)
            for instruction in dis.get_instructions(inner)
            if instruction.opname in _GLOBAL_LOADS}


_GLOBAL_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})


def _reaches_async_to_sync(fn: types.FunctionType, known: tuple[Any, ...]) -> str | None:
    """How ``fn`` calls ``async_to_sync`` by itself ("calls async_to_sync", "calls
    async_to_sync (as a2s)"), or None: by one of its names, or a global of its module, a
    name of its closure or a default argument holding it."""
    names: set[str] = set()
    for code in _nested(fn.__code__):
        names.update(code.co_names)
    if not _A2S_NAMES.isdisjoint(names):
        return "calls async_to_sync"
    scope = fn.__globals__
    loaded: set[str] | None = None  # (read only for a name the module's globals give it)
    for name in names:
        if name in scope and _is_one_of(scope[name], known):
            if loaded is None:
                loaded = _loads_globals(fn.__code__)
            if name in loaded:
                return f"calls async_to_sync (as {name})"
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
        try:
            value = cell.cell_contents
        except ValueError:  # not bound yet
            continue
        if _is_one_of(value, known):
            return f"calls async_to_sync (as {name})"
    defaults = (*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values())
    if any(_is_one_of(value, known) for value in defaults):
        return "calls async_to_sync (a default argument)"
    return None


def _helpers(fn: types.FunctionType) -> list[types.FunctionType]:
    """The application's plain module-level functions ``fn`` may call (``helper(...)``,
    ``module.helper(...)``): the globals its code reads, and in modules those are the
    attributes it names (read from their ``__dict__``: no module ``__getattr__`` runs)."""
    names: set[str] = set()
    for code in _nested(fn.__code__):
        names.update(code.co_names)
    scope = fn.__globals__
    found: list[types.FunctionType] = []
    loaded: set[str] | None = None  # (read only for a name the module's globals give it)
    for name in names:
        value = scope.get(name)
        if not isinstance(value, types.FunctionType | types.ModuleType):
            continue
        if loaded is None:
            loaded = _loads_globals(fn.__code__)
        if name not in loaded:
            continue
        candidates = ([vars(value).get(attr) for attr in names]
                      if isinstance(value, types.ModuleType) else [value])
        for candidate in candidates:
            if not isinstance(candidate, types.FunctionType) or candidate is fn:
                continue
            try:
                candidate = inspect.unwrap(candidate)
            except ValueError:  # a __wrapped__ cycle
                pass
            if (isinstance(candidate, types.FunctionType) and _own_code(candidate)
                    and not (candidate.__code__.co_flags & _ASYNC_CODE)):
                found.append(candidate)
    return found


_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


#: Layer methods no consumer has: called as ``x.group_send(...)`` they are the layer's.
_LAYER_ONLY = frozenset({
    "group_add", "group_discard", "group_send", "group_presence", "group_history",
    "group_history_remove", "group_close", "group_sizes", "broadcast", "new_channel",
    "survey", "flush"})
#: Layer methods a consumer has too (``self.send``): the layer's when called on a name
#: that says layer (``self.channel_layer.send(...)``, ``get_channel_layer().send(...)``).
_LAYER_SHARED = frozenset({"send", "receive", "close"})
_LAYER_NAMES = frozenset({"channel_layer", "layer", "get_channel_layer"})


def _method_call(instruction: dis.Instruction) -> bool:
    """The instruction loads an attribute to call it (``x.name(...)``), not to pass it on
    (``async_to_sync(x.name)``)."""
    if instruction.opname == "LOAD_METHOD":  # up to 3.11
        return True
    return (instruction.opname == "LOAD_ATTR" and sys.version_info >= (3, 12)
            and bool((instruction.arg or 0) & 1))


def _calls_the_layer_directly(code: types.CodeType, named: bool = False) -> bool:
    """``code`` (or code nested in it) calls a layer method itself, not through
    ``async_to_sync``: a Deferred, fire-and-forget, that only the reactor thread may start
    (Twisted is not thread-safe), so such a class must not be moved to the pool. Errs on
    the side of yes: then the class stays where its author put it. ``named``: only on a
    name that says layer (``layer``, ``LAYER``, ``x.channel_layer``,
    ``get_channel_layer()``), for a helper function, whose ``flush()`` is likely a file's."""
    for inner in _nested(code):
        before: dis.Instruction | None = None
        for instruction in dis.get_instructions(inner):
            name = instruction.argval
            if _method_call(instruction) and (name in _LAYER_ONLY or name in _LAYER_SHARED):
                if name in _LAYER_ONLY and not named:
                    return True
                if before is not None and (
                        before.argval in _LAYER_NAMES
                        or (before.opname == "CALL" and "get_channel_layer" in inner.co_names)
                        or (named and isinstance(before.argval, str)
                            and before.argval.lower().endswith("layer"))):
                    return True
            before = instruction
    return False


#: The classes whose ``thread_handlers`` ``needs_a_thread`` set (and realtime's default).
_FOUND: weakref.WeakSet[type] = weakref.WeakSet()


def chose_thread_handlers(cls: type) -> bool:
    """Whether a class in ``cls``'s MRO sets ``thread_handlers`` itself (``False`` too: that
    author wants the reactor), rather than ``needs_a_thread`` for it."""
    return any("thread_handlers" in vars(k) and k not in _FOUND for k in cls.__mro__)


def needs_a_thread(cls: type) -> str | None:
    """Why plain handlers of ``cls`` must run in the pool, or None: a Channels sync consumer
    ported by changing imports calls the layer through ``async_to_sync``, which would block
    the reactor thread (it raises there instead).

    Only the application's classes in the MRO are read, and a class with an ``async def``
    method is left alone (it mixes, so its author chose; a coroutine in a thread never
    runs), as is one whose code also calls the layer directly (``_calls_the_layer_directly``:
    safe on the reactor thread only; its ``async_to_sync`` is for code in other threads)."""
    own = [k for k in cls.__mro__ if _own_code(k)]
    if any(inspect.iscoroutinefunction(getattr(cls, name, None)) for name in _HANDLER_NAMES):
        return None
    known = _async_to_sync_objects()
    because = None
    #: Each helper read once per class (many methods call the same few).
    helpers: dict[types.FunctionType, tuple[bool, str | None]] = {}
    for k in own:
        for outer, fn in _functions(k):
            if any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f)
                   for f in (outer, fn)):
                return None
            if _calls_the_layer_directly(fn.__code__):
                return None
            how = _reaches_async_to_sync(fn, known)
            if how is not None and because is None:
                because = f"{fn.__qualname__} {how}"
            # One level down: the module-level functions of the application it calls.
            for helper in _helpers(fn):
                verdict = helpers.get(helper)
                if verdict is None:
                    verdict = helpers[helper] = (
                        _calls_the_layer_directly(helper.__code__, named=True),
                        _reaches_async_to_sync(helper, known))
                direct, how = verdict
                if direct:
                    return None
                if because is None and how is not None:
                    because = f"{fn.__qualname__} calls {helper.__qualname__}, which {how}"
    return because


def dispatch_event(consumer: Any, event: dict[str, Any]) -> Any:
    """Call the handler a channel-layer event names: ``chat.message`` -> ``chat_message``.

    A type with no handler is logged and dropped (Channels would kill the connection); a
    type naming a private attribute is refused.
    """
    kind = event.get("type")
    name = kind.replace(".", "_") if isinstance(kind, str) else ""
    if not name or name.startswith("_"):
        log.warn("dropped a channel-layer event with an invalid type {kind!r}", kind=kind)
        return None
    handler = getattr(consumer, name, None)
    if handler is None or not callable(handler):
        if isinstance(kind, str) and kind.startswith(("layer.", "presence.")):
            return None  # the layer's own notices (layer.gap, presence.join): optional
        log.info("{consumer} has no handler {name}() for event type {kind!r}; dropped",
                 consumer=type(consumer).__name__, name=name, kind=kind)
        return None
    return handler(event)


class AppFactoryMixin:
    """``as_app``/``as_asgi`` for every consumer class, like Django's ``as_view``."""

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            setattr(self, key, value)

    @classmethod
    def as_app(cls, **initkwargs: Any) -> ConsumerApp:
        for key in initkwargs:
            if not hasattr(cls, key):
                raise TypeError(f"{cls.__name__}.as_app() got an unknown attribute {key!r}")
        return ConsumerApp(cls, initkwargs)

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> ConsumerApp:
        """Channels' name, kept so routing files port by changing imports."""
        return cls.as_app(**initkwargs)


class _WebsocketBase(AppFactoryMixin):
    groups: ClassVar[list[str]] = []
    #: Seconds before the token's expiry that a ``token_expiring(event)`` handler, if the
    #: consumer has one, is called (at most half the time left at accept or refresh).
    token_expiring_ahead: ClassVar[float] = 30.0
    #: Run plain handlers in the reactor's thread pool, one at a time, in order. Left unset,
    #: a class whose plain methods call ``async_to_sync`` gets True (``needs_a_thread``).
    thread_handlers: ClassVar[bool] = False
    #: Why ``thread_handlers`` was set for the class without its asking (else None).
    _threaded_because: ClassVar[str | None] = None
    channel_layer_alias: ClassVar[str] = "default"

    scope: Scope
    channel_layer: Any = None
    channel_name: str | None = None
    _conn: WebSocketConnection

    # Set per class: whether the raw websocket_receive is overridden (then dicts are built).
    _raw_receive: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        impls = globals().get("_RAW_RECEIVE_IMPLS", ())
        raw = getattr(cls, "websocket_receive", None)  # (realtime.asgi's has none)
        cls._raw_receive = bool(impls) and raw is not None and raw not in impls
        ahead = cls.token_expiring_ahead
        if isinstance(ahead, bool) or not isinstance(ahead, int | float) or ahead < 0:
            raise TypeError(f"{cls.__name__}.token_expiring_ahead must be seconds (>= 0), "
                            f"not {ahead!r}")
        if chose_thread_handlers(cls):
            cls._threaded_because = None
        else:  # decided per class: a subclass's code may differ
            because = needs_a_thread(cls)
            cls.thread_handlers, cls._threaded_because = because is not None, because
            _FOUND.add(cls)
        if cls.thread_handlers:
            refuse_async_handlers(
                cls, _HANDLER_NAMES,
                "{cls}: thread_handlers = True is for plain (def) handlers; {name}() is "
                "async def: drop thread_handlers (coroutines run on the reactor) or make the "
                "handlers plain")

    # -- bridge entry points -------------------------------------------------------------
    def _on_connect(self) -> Any:
        return self.websocket_connect({"type": "websocket.connect"})  # type: ignore[attr-defined]

    def _on_receive(self, text: str | None, data: bytes | None) -> Any:
        if self._raw_receive:
            return self.websocket_receive(  # type: ignore[attr-defined]
                receive_message(text, data))
        # By keyword, as Channels calls it: ``def receive(self, text_data)`` must work.
        if text is not None:
            return self.receive(text_data=text)  # type: ignore[attr-defined]
        return self.receive(bytes_data=data)  # type: ignore[attr-defined]

    def _on_event(self, event: dict[str, Any]) -> Any:
        return dispatch_event(self, event)

    def _on_disconnect(self, code: int) -> Any:
        return self.websocket_disconnect(  # type: ignore[attr-defined]
            {"type": "websocket.disconnect", "code": code}
        )

    # -- helpers shared by both flavours -----------------------------------------------------
    def _do_accept(self, subprotocol: str | None, headers: Any) -> None:
        self._conn.accept(subprotocol, check_headers(headers))

    def _do_send(self, text_data: str | None, bytes_data: bytes | None, close: Any) -> None:
        if text_data is not None:
            if not isinstance(text_data, str):
                raise TypeError("text_data must be str")
            self._conn.send_text(text_data)
        elif bytes_data is not None:
            if not isinstance(bytes_data, bytes | bytearray | memoryview):
                raise TypeError("bytes_data must be bytes")
            self._conn.send_bytes(bytes(bytes_data))
        else:
            raise ValueError("You must pass one of bytes_data or text_data")
        if close:
            self._do_close(close, None)

    def _do_refresh(self, token: str) -> dict[str, Any]:
        from realtime.tokens import SCOPE_KEY

        verifier = self.scope.get(SCOPE_KEY)
        if verifier is None:
            raise RuntimeError(
                "refresh_token() needs TokenAuthMiddleware in front of this consumer"
            )
        if self._conn.closing_or_closed:
            raise ConnectionClosed("refresh_token() on a WebSocket that is closing or closed")
        claims: dict[str, Any] = verifier.refresh(self.scope, token)
        self._conn.token_refreshed()
        return claims

    def _on_token_expiring(self, expires: float) -> Any:
        """The bridge's ``token.expiring``, when its turn in the handler queue comes: not
        if the socket closed or a refresh moved the expiry meanwhile."""
        if self._conn.closing_or_closed or self.scope.get("auth_expires_at") != expires:
            return None
        return self.token_expiring(  # type: ignore[attr-defined]
            {"type": "token.expiring", "expires_at": expires})

    def _do_close(self, code: Any, reason: str | None) -> None:
        checked = check_app_close_code(code)
        if reason is not None and not isinstance(reason, str):
            raise TypeError("close reason must be str")
        self._conn.close(checked, reason)


_FOUND.add(_WebsocketBase)


class WebsocketConsumer(_WebsocketBase):
    """A consumer whose handlers are plain methods, run on the reactor thread (they must not
    block: set ``thread_handlers = True`` for code that does, e.g. an ORM). A class that
    leaves it unset and calls ``async_to_sync``, as Channels' sync consumers do, runs them
    in the pool by itself (``needs_a_thread``)."""

    def websocket_connect(self, message: dict[str, Any]) -> Any:
        try:
            return self.connect()
        except AcceptConnection:
            self.accept()
        return None

    def connect(self) -> Any:
        self.accept()

    def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        self._do_accept(subprotocol, headers)

    def websocket_receive(self, message: dict[str, Any]) -> Any:
        if message.get("text") is not None:
            return self.receive(text_data=message["text"])
        return self.receive(bytes_data=message.get("bytes"))

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> Any:
        pass

    def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: Any = False
    ) -> None:
        self._do_send(text_data, bytes_data, close)

    def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        self._do_close(code, reason)

    def refresh_token(self, token: str) -> dict[str, Any]:
        """Take a new JWT for this socket's user (in-band, Centrifugo's refresh): verified as
        at the handshake and for the same ``sub`` and ``iss``; ``scope["user"]`` gets its
        claims and the 4001 close moves to its ``exp``. Returns the claims; raises
        ``realtime.tokens.InvalidToken`` (the old expiry stands), or ``ConnectionClosed`` on
        a socket that is closing."""
        return self._do_refresh(token)

    def websocket_disconnect(self, message: dict[str, Any]) -> Any:
        return self.disconnect(message["code"])

    def disconnect(self, code: int) -> Any:
        pass


class AsyncWebsocketConsumer(_WebsocketBase):
    """A consumer whose handlers are coroutines; each finishes before the next message."""

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        try:
            await self.connect()
        except AcceptConnection:
            await self.accept()

    async def connect(self) -> None:
        await self.accept()

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        self._do_accept(subprotocol, headers)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if message.get("text") is not None:
            await self.receive(text_data=message["text"])
        else:
            await self.receive(bytes_data=message.get("bytes"))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        pass

    async def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: Any = False
    ) -> None:
        self._do_send(text_data, bytes_data, close)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        self._do_close(code, reason)

    async def refresh_token(self, token: str) -> dict[str, Any]:
        """Take a new JWT for this socket's user (``WebsocketConsumer.refresh_token``)."""
        return self._do_refresh(token)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        await self.disconnect(message["code"])

    async def disconnect(self, code: int) -> None:
        pass


_RAW_RECEIVE_IMPLS = (WebsocketConsumer.websocket_receive, AsyncWebsocketConsumer.websocket_receive)


class JsonWebsocketConsumer(WebsocketConsumer):
    """Text frames carry JSON: ``receive_json(content)``, ``send_json(content)``.

    A binary frame closes the socket with 1003 (unsupported data), invalid JSON with 1007.
    """

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> Any:
        if text_data is None:
            self._conn.close_with_code(1003, "expected a JSON text frame")
            return None
        try:
            content = self.decode_json(text_data)
        except ValueError:
            self._conn.close_with_code(1007, "invalid JSON")
            return None
        return self.receive_json(content)

    def receive_json(self, content: Any, **kwargs: Any) -> Any:
        pass

    def send_json(self, content: Any, close: Any = False) -> None:
        self.send(text_data=self.encode_json(content), close=close)

    @classmethod
    def decode_json(cls, text_data: str) -> Any:
        return json.loads(text_data)

    @classmethod
    def encode_json(cls, content: Any) -> str:
        return json.dumps(content)


class AsyncJsonWebsocketConsumer(AsyncWebsocketConsumer):
    """The async JSON consumer; ``encode_json``/``decode_json`` are coroutines (as in Channels)
    so they can be replaced by, say, an orjson call."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            self._conn.close_with_code(1003, "expected a JSON text frame")
            return
        try:
            content = await self.decode_json(text_data)
        except ValueError:
            self._conn.close_with_code(1007, "invalid JSON")
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        pass

    async def send_json(self, content: Any, close: Any = False) -> None:
        await self.send(text_data=await self.encode_json(content), close=close)

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        return json.loads(text_data)

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        return json.dumps(content)


class _ChannelConsumer(AppFactoryMixin):
    """A consumer of ``channel`` scopes (``twistd realtime-runworker``): each message read
    from a named channel is dispatched by its type (``thumbnail.make`` ->
    ``thumbnail_make(message)``), one at a time.

    On a WebSocket route it is Channels' generic consumer: the client's ASGI messages
    (``websocket.connect``, ``.receive``, ``.disconnect``) are dispatched the same way, in
    order with the layer's events, and ``send(message)`` takes ASGI's
    (``{"type": "websocket.accept"}``, ``websocket.send``, ``websocket.close``, a denial
    response), checked as a raw ASGI app's are."""

    channel_layer_alias: ClassVar[str] = "default"
    thread_handlers: ClassVar[bool] = False
    scope: Scope
    channel_layer: Any = None
    channel_name: str | None = None
    #: On a WebSocket route: the connection (set by the bridge) and the ASGI sender.
    _conn: Any = None
    _sender: Any = None

    def _on_event(self, event: dict[str, Any]) -> Any:
        return dispatch_event(self, event)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.thread_handlers:
            refuse_async_handlers(
                cls, ("websocket_connect", "websocket_receive", "websocket_disconnect"),
                "{cls}: a SyncConsumer (thread_handlers) takes plain (def) handlers; {name}() "
                "is async def: use AsyncConsumer")

    # -- the bridge's calls on a WebSocket route ------------------------------------------------
    def _on_connect(self) -> Any:
        from realtime.asgi import WebsocketSender

        if not callable(getattr(self, "websocket_connect", None)):
            raise TypeError(f"{type(self).__name__} has no websocket_connect(message) handler: "
                            "it cannot serve a WebSocket")
        self._sender = WebsocketSender(self)
        return self.websocket_connect({"type": "websocket.connect"})  # type: ignore[attr-defined]

    def _on_receive(self, text: str | None, data: bytes | None) -> Any:
        return dispatch_event(self, receive_message(text, data))

    def _on_disconnect(self, code: int) -> Any:
        if self._sender is not None:
            self._sender.closed = True
        handler = getattr(self, "websocket_disconnect", None)
        if handler is None:
            return None
        return handler({"type": "websocket.disconnect", "code": code})

    def _send_asgi(self, message: dict[str, Any]) -> None:
        sender = self._sender
        if sender is None:
            raise RuntimeError(
                f"{type(self).__name__}.send() has no client connection to send to (a worker "
                "consumer sends through self.channel_layer)")
        if not isinstance(message, dict):
            raise TypeError("send() takes an ASGI message: a dict with a 'type'")
        from twisted.python.threadable import isInIOThread

        if isInIOThread():
            sender.send(message)
            return
        # A SyncConsumer's handler thread: sent on the reactor thread, its error raised here.
        if self._conn.finished:
            raise ConnectionClosed("send on a WebSocket that is closed")
        from realtime.threads import run_on_reactor

        run_on_reactor(self._conn.reactor, sender.send, message)


class SyncConsumer(_ChannelConsumer):
    """Channels' ``SyncConsumer`` for workers and WebSocket routes: plain handlers that may
    block (an ORM, a file), so they run in the reactor's thread pool, one at a time and in
    order. Call the layer from them with ``async_to_sync(self.channel_layer.send)(...)``."""

    thread_handlers: ClassVar[bool] = True

    def send(self, message: dict[str, Any]) -> None:
        """An ASGI message to the client (on a WebSocket route): returns once it is sent."""
        self._send_asgi(message)


class AsyncConsumer(_ChannelConsumer):
    """Channels' ``AsyncConsumer`` for workers and WebSocket routes: ``async def`` (or
    plain, non-blocking) handlers, run on the reactor thread; each is awaited before the
    next message."""

    async def send(self, message: dict[str, Any]) -> None:
        """An ASGI message to the client (on a WebSocket route)."""
        self._send_asgi(message)
