"""Raw ASGI 3 applications served beside consumers.

A Channels 4 project's ``asgi.py`` routes ``"http"`` to Django's ``get_asgi_application()``
(Channels dropped its own HTTP handler for it), and python-socketio, Starlette and FastAPI
apps are ASGI apps too. Routers, ``BaseMiddleware`` and ``--app`` wrap any application that
takes ``(scope, receive, send)`` in ``AsgiApp``, so Daphne's job (serve the whole project)
is done here as well:

- ``"http"``: ``AsgiHttp`` runs the app against the twisted.web request: the body (which
  twisted.web has read in full) comes in ``http.request`` chunks, ``http.disconnect`` once
  the response is over or the client went away (after the body, which the app gets even
  then); the response streams out with
  ``http.response.start``/``http.response.body``, paused while the client reads slowly.
- ``"websocket"``: ``AsgiWebsocket`` is a consumer that translates the bridge's calls into
  ASGI messages (``websocket.connect``/``receive``/``disconnect``) and the app's messages
  into the bridge's accept, sends and closes; the denial-response extension
  (``websocket.http.response.*``) refuses the handshake with any status.

Apps that use asyncio (Django, python-socketio, Starlette) need ``--reactor=asyncio``,
where every coroutine runs as an asyncio Task; under the default reactor an app that only
awaits ``receive``/``send`` (and Deferreds) works as is.
The app gets the server's scope (ASGI keys plus Channels' ``url_route`` when routed) with
``asgi``: ``{"version": "3.0"}``, and ``state`` (a copy of what the app's lifespan start-up
left there) when ``realtime.lifespan`` ran it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from realtime.consumer import _WebsocketBase, receive_message
from realtime.exceptions import ConnectionClosed, Refuse, check_headers
from realtime.http2 import cut_off
from realtime.scope import HTTP_ASGI, WEBSOCKET_ASGI
from realtime.threads import as_deferred

if TYPE_CHECKING:
    from twisted.web.server import Request

    from realtime.routing import Scope

log = Logger()

#: ``http.request`` chunk size: the body is already in memory or a temporary file.
BODY_CHUNK = 64 * 1024


class AsgiApp:
    """A raw ASGI application made a realtime application (``app(scope)``)."""

    __slots__ = ("app", "state")

    def __init__(self, app: Any) -> None:
        self.app = app
        #: The app's lifespan state (``realtime.lifespan``), copied into each scope; None
        #: while no lifespan ran.
        self.state: dict[str, Any] | None = None

    def __call__(self, scope: Scope) -> Any:
        from realtime.routing import Ready

        if self.state is not None:
            scope["state"] = self.state.copy()
        kind = scope.get("type")
        if kind == "http":
            return Ready(AsgiHttp(self.app, scope))
        if kind == "websocket":
            consumer = AsgiWebsocket(app=self.app)
            consumer.scope = scope
            return Ready(consumer)
        raise ValueError(f"an ASGI application cannot serve a {kind!r} scope here")

    def __repr__(self) -> str:
        return f"AsgiApp({self.app!r})"


def _run_app(app: Any, scope: Scope, receive: Any, send: Any,
             done: Any) -> Deferred[Any] | None:
    """Start ``app`` (as every application coroutine runs: ``as_deferred``) with ``done``
    called once it returns or raises; its Deferred (cancelled by the close timeout), or
    None when a plain ``__call__`` raised at once."""
    try:
        result = app(scope, receive, send)
    except BaseException as exc:
        done(Failure(exc))
        return None
    running = as_deferred(result)
    running.addBoth(done)
    return running


def _status(message: dict[str, Any], lowest: int, refusal: str) -> int:
    """The message's ``status``, an int from ``lowest`` to 599 (``ValueError`` saying
    ``refusal`` and the value otherwise)."""
    status = message.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not lowest <= status <= 599:
        raise ValueError(f"ASGI {message.get('type')!r}: {refusal} {status!r}")
    return status


def _body(message: dict[str, Any], key: str) -> bytes:
    value = message.get(key, b"")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"ASGI {message.get('type')!r}: {key!r} must be bytes, "
                        f"not {type(value).__name__}")
    return bytes(value)


def _header_pairs(message: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The message's ``headers``: pairs of bytes (ASGI says bytes; Daphne answers str with 500)
    with no CR/LF/NUL and token names."""
    pairs = []
    for item in message.get("headers") or ():
        try:
            name, value = item
        except (TypeError, ValueError):
            raise TypeError(f"ASGI {message.get('type')!r}: a header must be a "
                            f"[name, value] pair, not {item!r}") from None
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise TypeError(f"ASGI {message.get('type')!r}: header names and values must "
                            f"be bytes, not {name!r}: {value!r}")
        pairs.append((name, value))
    return check_headers(pairs)


@implementer(IPushProducer)
class AsgiHttp:
    """One HTTP request served by an ASGI app; also the request's push producer, so a
    ``send`` waits while twisted.web's buffer for a slow client is full."""

    def __init__(self, app: Any, scope: Scope) -> None:
        self.app = app
        self.scope = scope
        self._request: Any = None
        self._started: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self._headers_sent = False
        self._complete = False  # the app sent its last body
        self._over = False  # the response ended: finished, cut off, or the client gone
        self._body_left = True
        self._body_size = 0
        #: The request's body file, the app's from ``serve`` until read or the app is done.
        self._content: Any = None
        self._waiters: list[Deferred[dict[str, Any]]] = []
        self._paused: Deferred[None] | None = None
        self._producing = False  # registered as the request's producer while streaming
        self._running: Deferred[Any] | None = None
        self._kill: Any = None

    # -- the bridge ---------------------------------------------------------------------------
    def serve(self, request: Request, site: Any) -> None:
        self._request = request
        self._site = site
        scope = dict(self.scope)
        scope["asgi"] = HTTP_ASGI
        # The body file is the app's from now on: twisted.web closes a request's file when
        # its response ends or its client goes, and an app that reads only after that (a
        # client that sent its request and closed) still gets the body, then
        # http.disconnect (as Daphne, which queues the whole body before the disconnect).
        content, request.content = request.content, None
        self._content = content
        if content is not None:
            self._body_size = content.seek(0, 2)
            content.seek(0)
        request.notifyFinish().addBoth(self._ended)
        site.asgi_running.add(self)  # the drain waits for the app, not only its response
        self._running = _run_app(self.app, scope, self.receive, self.send, self._app_done)

    def receive(self) -> Deferred[dict[str, Any]]:
        """``http.request`` chunks, then (once the response is over or the client gone)
        ``http.disconnect``."""
        if self._body_left:
            content = self._content
            chunk = content.read(BODY_CHUNK) if content is not None else b""
            self._body_left = more = content is not None and content.tell() < self._body_size
            if not more:
                self._close_body()
            return succeed({"type": "http.request", "body": chunk, "more_body": more})
        if self._over:
            return succeed({"type": "http.disconnect"})
        waiter: Deferred[dict[str, Any]] = Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter

    def _close_body(self) -> None:
        content, self._content = self._content, None
        if content is not None:
            content.close()

    def send(self, message: dict[str, Any]) -> Deferred[None]:
        kind = message.get("type")
        if kind == "http.response.start":
            if self._started is not None:
                raise RuntimeError("ASGI 'http.response.start' sent twice")
            self._started = (_status(message, 100, "bad status"), _header_pairs(message))
            return succeed(None)
        if kind == "http.response.body":
            if self._started is None:
                raise RuntimeError("ASGI 'http.response.body' sent before 'http.response.start'")
            body = _body(message, "body")
            more = bool(message.get("more_body", False))
            if self._complete:
                raise RuntimeError("ASGI 'http.response.body' sent after the response's last body")
            self._complete = not more
            if self._over:  # the client went away, or -t cut the response: a no-op
                return succeed(None)
            request = self._request
            if not self._headers_sent:
                self._write_head(request)
                request.write(body)  # even b"": the head goes out now (SSE, long-poll)
            elif body:
                request.write(body)
            if not more:
                self._unregister()
                request.finish()
                return succeed(None)
            if not self._producing:  # a stream: wait while the client's buffer is full
                self._producing = True
                request.registerProducer(self, True)
            if self._paused is not None:
                return self._paused.addCallback(lambda _: None)
            return succeed(None)
        raise ValueError(f"ASGI message type {kind!r} is not one an HTTP response can send")

    def _write_head(self, request: Any) -> None:
        from realtime.cookies import response_headers

        assert self._started is not None
        status, pairs = self._started
        self._headers_sent = True
        request.setResponseCode(status)
        request.defaultContentType = None  # what the app says, as twisted.web's WSGI does
        for name, value in pairs + response_headers(self.scope):
            request.responseHeaders.addRawHeader(name, value)

    def _unregister(self) -> None:
        if self._producing:
            self._producing = False
            if self._request.channel is not None:
                self._request.unregisterProducer()

    # -- IPushProducer: twisted.web's buffer for this client ------------------------------------
    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        """The connection is lost (called before the request hears it): sends from now on
        are no-ops, not writes to a dead transport that would end in ``finish()``."""
        self._over = True
        self.resumeProducing()

    # -- the end ------------------------------------------------------------------------------
    def _ended(self, result: Any) -> None:
        """The response is over (finished, cut off by ``-t``, or the client went away):
        waiting ``receive()`` calls get ``http.disconnect``, sends are no-ops from now on,
        and an app still running has ``--application-close-timeout`` to return."""
        self._over = True
        self._unregister()
        self._request = None  # nothing uses it now; the app's frames may outlive it
        self.resumeProducing()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback({"type": "http.disconnect"})
        running = self._running
        if running is not None and not running.called:
            timeout = self._site.config.application_close_timeout
            self._kill = self._site.clock.callLater(timeout, self._cancel, timeout)

    def _cancel(self, timeout: float) -> None:
        self._kill = None
        running = self._running
        if running is not None and not running.called:
            log.warn("ASGI application on {path} still running {timeout} s after its "
                     "response ended: cancelled", path=self.scope.get("path"), timeout=timeout)
            running.cancel()

    def _app_done(self, result: Any) -> None:
        """The app returned or raised: a 500 if it never started a response, a closed
        connection if it left one unfinished (a truncated body must not look complete)."""
        self._running = None
        self._body_left = False
        self._close_body()
        if self._kill is not None:
            self._kill.cancel()
            self._kill = None
        site = self._site
        site.asgi_running.discard(self)
        site.maybe_drained()
        request = self._request
        if isinstance(result, Failure):
            if not (self._over and result.check(CancelledError, asyncio.CancelledError)):
                log.failure("ASGI application raised on {method} {path}", result,
                            method=self.scope.get("method"), path=self.scope.get("path"))
        elif not self._complete and not self._over:
            log.error("ASGI application returned without completing its response on "
                      "{method} {path}", method=self.scope.get("method"),
                      path=self.scope.get("path"))
        if self._over or self._complete:
            return
        self._over = True
        self._unregister()
        if not self._headers_sent:
            self._site.write_refusal(request, Refuse(500), upgrade=False)
        else:
            # What was written goes out, then the connection closes before the last chunk
            # (or the declared length), or the HTTP/2 stream is reset: the client sees a
            # truncated response.
            cut_off(request, flush=True)


class WebsocketSender:
    """What a WebSocket application sends as ASGI messages (``websocket.accept``,
    ``.send``, ``.close``, the denial response), made into the bridge's calls on the
    consumer's connection, with ASGI's rules: a raw ASGI app's ``send`` and a Channels
    generic consumer's (``AsyncConsumer``/``SyncConsumer`` on a WebSocket route)."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.accepted = False
        #: The socket closed, or the app closed it: nothing more goes out.
        self.closed = False
        self.denial: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.denial_body: list[bytes] = []

    def send(self, message: dict[str, Any]) -> None:
        """One ASGI message: ``ValueError``/``TypeError`` for a malformed one,
        ``RuntimeError`` for one out of order, ``ConnectionClosed`` once the socket is gone."""
        kind = message.get("type")
        conn = self.consumer._conn
        gone = self.closed or conn.finished
        if kind == "websocket.accept":
            if gone and not self.accepted:
                raise ConnectionClosed("the client left before the handshake was accepted")
            if self.accepted or not conn.in_handshake:
                raise RuntimeError("ASGI 'websocket.accept' after the handshake was decided")
            subprotocol = message.get("subprotocol")
            if subprotocol is not None and not isinstance(subprotocol, str):
                raise TypeError("ASGI 'websocket.accept': subprotocol must be str or None")
            conn.accept(subprotocol, _header_pairs(message))
            self.accepted = True
        elif kind == "websocket.send":
            if not self.accepted and conn.in_handshake:
                conn.accept(None, [])  # a send before accept accepts (the bridge's rule)
                self.accepted = True
            if self.closed or not self.accepted:
                raise ConnectionClosed("the WebSocket is closed")
            text, data = message.get("text"), message.get("bytes")
            if text is not None:
                if not isinstance(text, str):
                    raise TypeError("ASGI 'websocket.send': text must be str")
                conn.send_text(text)
            elif data is not None:
                conn.send_bytes(_body(message, "bytes"))
            else:
                raise ValueError("ASGI 'websocket.send' needs 'bytes' or 'text'")
        elif kind == "websocket.close":
            code = message.get("code", 1000)
            reason = message.get("reason") or None
            if not isinstance(code, int) or isinstance(code, bool):
                raise TypeError(f"ASGI 'websocket.close': bad code {code!r}")
            if reason is not None and not isinstance(reason, str):
                raise TypeError("ASGI 'websocket.close': reason must be str")
            if conn.in_handshake:
                conn.refuse(Refuse(403))
            elif not self.closed:
                conn.close_with_code(code, reason)  # ValueError for a code no server sends
                self.closed = True
        elif kind in ("websocket.http.response.start", "websocket.http.response.body") and gone:
            raise ConnectionClosed("the client left before the handshake was answered")
        elif kind == "websocket.http.response.start":
            if not conn.in_handshake or self.denial is not None:
                raise RuntimeError(f"ASGI {kind!r} only before the handshake is decided, once")
            # 400 and up: a browser follows no redirect on a WebSocket (it fails it)
            status = _status(message, 400, "a denial's status is 400 to 599, not")
            self.denial = (status, _header_pairs(message))
        elif kind == "websocket.http.response.body":
            if self.denial is None or not conn.in_handshake:
                raise RuntimeError(f"ASGI {kind!r} before 'websocket.http.response.start'")
            self.denial_body.append(_body(message, "body"))
            if not message.get("more_body", False):
                status, headers = self.denial
                conn.refuse(Refuse(status, headers, b"".join(self.denial_body)))
        else:
            raise ValueError(f"ASGI message type {kind!r} is not one a WebSocket can send")


class AsgiWebsocket(_WebsocketBase):
    """A consumer that runs a raw ASGI app for one WebSocket.

    The app runs beside the bridge's handler queue, not in it: ``websocket.receive``
    messages wait in the bridge's queue (bounded by ``--max-inflight``) until the app takes
    them, and ``disconnect`` waits for the app to return, so ``--application-close-timeout``
    cancels an app that hangs, as Daphne kills it.
    """

    app: Any = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._inbox: deque[dict[str, Any]] = deque()
        self._waker: Deferred[None] | None = None
        self._taken: Deferred[None] | None = None
        self._running: Deferred[Any] | None = None
        self._returned: Deferred[None] | None = None
        self._out = WebsocketSender(self)

    # -- the bridge's calls, as ASGI messages --------------------------------------------------
    def _on_connect(self) -> None:
        scope = dict(self.scope)
        scope["asgi"] = WEBSOCKET_ASGI
        scope["extensions"] = {"websocket.http.response": {}}
        self._inbox.append({"type": "websocket.connect"})
        self._running = _run_app(self.app, scope, self.receive, self.send, self._app_done)

    def _on_receive(self, text: str | None, data: bytes | None) -> Deferred[None] | None:
        return self._put(receive_message(text, data), wait=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        log.info("channel-layer event {kind!r} for an ASGI application: dropped",
                 kind=event.get("type"))

    def _on_disconnect(self, code: int) -> Deferred[None] | None:
        self._out.closed = True
        self._put({"type": "websocket.disconnect", "code": code}, wait=False)
        running = self._running
        if running is None or running.called:
            return None
        self._returned = Deferred(self._cancel_app)
        return self._returned

    def _put(self, message: dict[str, Any], wait: bool) -> Deferred[None] | None:
        """Queue ``message`` for the app and wake a waiting ``receive()``; with ``wait``, the
        handler queue waits until the app has taken it (so unread messages stay bounded by
        --max-inflight). The message stays queued until a receive() returns it: one
        cancelled while waiting (``asyncio.wait`` then ``cancel``) loses nothing."""
        if self._running is None or self._running.called:
            return None  # the app is done: nobody reads any more
        self._inbox.append(message)
        waker, self._waker = self._waker, None
        if waker is not None:
            waker.callback(None)
        if not wait or not self._inbox:
            return None
        self._taken = Deferred(self._cancel_app)
        return self._taken

    def _cancel_app(self, _: Any) -> None:
        """--application-close-timeout cancelled the handler waiting on the app: the app
        itself is cancelled (``CancelledError`` where it waits), as Daphne kills it."""
        running = self._running
        if running is not None and not running.called:
            running.cancel()

    # -- the app's receive and send -----------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        while not self._inbox:
            if self._waker is not None:
                raise RuntimeError("ASGI receive() called again before the last one returned")
            waker = self._waker = Deferred()
            try:
                await waker
            finally:
                if self._waker is waker:
                    self._waker = None
        message = self._inbox.popleft()
        if not self._inbox:
            taken, self._taken = self._taken, None
            if taken is not None:
                taken.callback(None)
        return message

    def send(self, message: dict[str, Any]) -> Deferred[None]:
        self._out.send(message)
        return succeed(None)

    # -- the end ------------------------------------------------------------------------------
    def _app_done(self, result: Any) -> None:
        """The app returned or raised: an undecided handshake is refused (500), an open
        socket closed (1011 after an exception, else 1000)."""
        self._inbox.clear()
        taken, self._taken = self._taken, None
        if taken is not None and not taken.called:
            taken.callback(None)
        returned, self._returned = self._returned, None
        failed = isinstance(result, Failure)
        cancelled = result.check(CancelledError, asyncio.CancelledError) if failed else None
        if failed and not (self._out.closed and cancelled):
            log.failure("ASGI application raised on {path}", result, path=self.scope.get("path"))
        conn = self._conn
        if conn.in_handshake:
            if not failed:
                log.error("ASGI application returned without accepting or closing {path}",
                          path=self.scope.get("path"))
            conn.refuse(Refuse(500))
        elif not self._out.closed:
            self._out.closed = True
            conn.close_with_code(1011 if failed else 1000, "internal error" if failed else None)
        if returned is not None and not returned.called:
            returned.callback(None)
