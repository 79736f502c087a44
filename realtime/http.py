"""HTTP consumers: ``AsyncHttpConsumer`` with Channels' methods, for plain responses,
long-poll and server-sent events (``send_body(..., more_body=True)``)."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from realtime.consumer import AppFactoryMixin, dispatch_event
from realtime.exceptions import check_headers
from realtime.http2 import cut_off
from realtime.layers.base import HELD, frame_event, let_out_for
from realtime.threads import as_deferred

if TYPE_CHECKING:
    from twisted.web.server import Request

    from realtime.routing import Scope

log = Logger()
#: Consumer classes told that they miss ``broadcast_message()`` (weak: classes made on the
#: fly go when unused).
_WARNED: weakref.WeakSet[type] = weakref.WeakSet()


class AsyncHttpConsumer(AppFactoryMixin):
    """Handle one HTTP request: override ``handle(body)`` and answer with
    ``send_response`` or ``send_headers`` + ``send_body``. ``disconnect()`` is called once
    when the response is over: finished, failed, or the client gone before it was."""

    scope: Scope
    #: Groups joined before ``handle()`` runs (left when the response ends).
    groups: list[str] = []
    channel_layer: Any = None
    channel_name: str | None = None
    _request: Request
    _headers_sent = False
    _finished = False
    #: handle(), then the layer events, then disconnect(), one after another (``_serve``).
    _events: Deferred[Any]
    _disconnected = False
    #: ``group_close``'s deadline while ``handle()`` or a handler keeps the end waiting.
    _close_deadline: Any = None
    #: The stream's push producer: paused while the client's buffer is full.
    _producer: _StreamProducer | None = None
    #: While ``handle()`` runs (its sends wait for a client that does not read).
    _in_handle = False
    #: Sends skipped by ``--slow-consumer drop``.
    _dropped = 0

    async def handle(self, body: bytes) -> None:
        raise NotImplementedError("AsyncHttpConsumer subclasses must implement handle(body)")

    async def send_headers(self, *, status: int = 200, headers: Any = None) -> None:
        if self._headers_sent:
            raise RuntimeError("send_headers() called twice")
        pairs = check_headers(headers)
        from realtime.cookies import response_headers

        for before in self.scope.get("realtime.before_head", ()):
            await before()  # e.g. a Django session's save: its cookie goes in this head
        pairs.extend(response_headers(self.scope))
        request = self._request
        request.setResponseCode(status)
        request.defaultContentType = None  # no invented text/html: what the consumer says
        for name, value in pairs:
            request.responseHeaders.addRawHeader(name, value)
        self._headers_sent = True
        if not self._finished:
            request.write(b"")

    async def send_body(self, body: bytes, *, more_body: bool = False) -> None:
        if not isinstance(body, bytes):
            raise TypeError("body must be bytes")
        if not self._headers_sent:
            raise RuntimeError("send_headers() must come before send_body()")
        if self._finished:
            return
        producer = self._producer
        if (producer is not None and producer.paused is not None and not self._in_handle
                and more_body):
            # An event handler's send while the client does not read: written (events are
            # not held up), up to --max-send-buffer bytes, then the slow-consumer policy.
            # (Never the last one: dropping it would leave the response open for ever.)
            if producer.waiting > self._site().config.max_send_buffer:
                self._slow_consumer(producer.waiting)
                return
            producer.waiting += len(body)
        if body:
            self._request.write(body)
        if not more_body:
            self._finished = True
            self._stop_producing()
            self._request.finish()
            return
        if producer is None:
            producer = self._producer = _StreamProducer()
            self._request.registerProducer(producer, True)
        if producer.paused is not None and self._in_handle:
            # handle()'s own loop (a download, a generated stream) goes at the client's
            # pace, as a raw ASGI app's send does, instead of piling up in memory.
            await producer.paused

    async def send_response(
        self, status: int, body: bytes, *, headers: Any = None
    ) -> None:
        pairs = check_headers(headers)
        if not any(name.lower() == b"content-length" for name, _ in pairs):
            pairs.append((b"Content-Length", str(len(body)).encode("ascii")))
        await self.send_headers(status=status, headers=pairs)
        await self.send_body(body)

    async def disconnect(self) -> None:
        """The response is over (sent, failed, or the client went away): clean up here;
        nothing more can be sent."""

    # -- the bridge -----------------------------------------------------------------------
    def _serve(self, request: Request, scope: Scope, layer: Any = None) -> None:

        self._request = request
        if getattr(self, "scope", None) is None:
            self.scope = scope
        # Made before anything can reach this consumer, so an event (or the response's end)
        # during handle()'s first synchronous steps queues behind it instead of being lost.
        chain: Deferred[Any] = Deferred()
        self._events = chain
        if layer is not None:
            self.channel_layer = layer
            self.channel_name = layer.attach(self)
            for group in self.groups:
                layer.group_add(group, self.channel_name).addErrback(self._join_failed, group)
        request.notifyFinish().addBoth(self._ended)
        body = request.content.read() if request.content is not None else b""
        chain.addCallback(self._handle, body)
        chain.addErrback(self._failed)
        chain.callback(None)

    def _handle(self, _: Any, body: bytes) -> Deferred[Any]:
        self._in_handle = True
        done = as_deferred(self.handle(body))

        def over(result: Any) -> Any:
            self._in_handle = False
            return result

        return done.addBoth(over)

    def _join_failed(self, failure: Failure, group: str) -> None:
        log.failure("{consumer} could not join group {group}", failure,
                    consumer=type(self).__name__, group=group)

    # -- channel-layer events: one at a time, after handle() (long-poll, SSE) -------------------
    def deliver(self, event: dict[str, Any]) -> None:
        if self._finished:
            return
        if HELD:  # broadcasts held for this turn were before this event: they go first
            let_out_for(self, self.channel_name)
        self._queue(event)

    def _queue(self, event: dict[str, Any]) -> None:
        """Run the event's handler after handle() and the events before it."""
        if self._finished:
            return

        def run(_: Any) -> Any:
            if self._finished:
                return None
            return as_deferred(dispatch_event(self, event))

        self._events.addCallback(run).addErrback(self._failed)

    def _site(self) -> Any:
        return self._request.site

    def _slow_consumer(self, waiting: int) -> None:
        """``--slow-consumer`` for a stream whose client does not read: ``drop`` skips the
        send (counted), ``close`` cuts the response off."""
        site = self._site()
        peer = self.scope.get("client")
        if site.config.slow_consumer == "drop":
            site.dropped_messages += 1
            self._dropped += 1
            if self._dropped == 1:
                log.info("dropping sends to the stream of {peer}: slow consumer ({waiting} "
                         "bytes waiting)", peer=peer, waiting=waiting)
            return
        site.slow_consumer_closes += 1
        log.info("cutting off the stream of {peer}: slow consumer ({waiting} bytes waiting)",
                 peer=peer, waiting=waiting)
        self._finished = True
        self._stop_producing()
        cut_off(self._request)

    def _stop_producing(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            if self._request.channel is not None:
                self._request.unregisterProducer()
            producer.resumeProducing()  # a send waiting for the client returns

    def close_from_layer(self, code: int, reason: str | None) -> None:
        """``group_close``: after the events before it, the response ends (a stream's last
        chunk; 503 if its head has not gone out). A ``handle()`` or handler still running
        ``--application-close-timeout`` seconds later (an event stream's keepalive loop)
        does not keep it open: it ends then, and sends after that do nothing."""
        if self._finished:
            return
        if HELD:  # broadcasts held for this turn were before the close
            let_out_for(self, self.channel_name)
        site = self._site()
        if self._close_deadline is None:
            self._close_deadline = site.clock.callLater(
                site.config.application_close_timeout, self._end)

        def end(_: Any) -> Any:
            self._cancel_close_deadline()
            return self._end()

        self._events.addCallback(end).addErrback(self._failed)

    def _cancel_close_deadline(self) -> None:
        deadline, self._close_deadline = self._close_deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _end(self) -> Any:
        self._close_deadline = None
        if self._finished:
            return None
        if self._headers_sent:
            return as_deferred(self.send_body(b""))
        return as_deferred(self.send_response(
            503, b"closed by the server\n",
            headers=[(b"Content-Type", b"text/plain; charset=utf-8")]))

    #: How far it has had the held broadcasts (``realtime.layers.base.let_out_for``).
    _held_seq = -1
    _held_count = 0

    def deliver_frame(self, frame: bytes) -> bool:
        """``broadcast()`` to this response (an event stream, a long poll): the payload as a
        ``broadcast.message`` event (``text`` or ``bytes``) for ``broadcast_message()``, in
        order with the layer's other events, as Centrifugo's publications reach its SSE
        clients too. A consumer without the handler is told once (per class) and skipped."""
        if self._finished:
            return False
        if getattr(self, "broadcast_message", None) is None:
            cls = type(self)
            if cls not in _WARNED:
                _WARNED.add(cls)
                log.warn("{consumer} is in a group that gets broadcast() messages but has "
                         "no broadcast_message() handler: they are skipped",
                         consumer=cls.__name__)
            return False
        self._queue(frame_event(frame))  # the layer's delivery: never back to let_out_for
        return True

    def deliver_joined(self, joined: bytes) -> bool:
        return False  # one frame at a time: each is an event of its own

    def _ended(self, result: Any) -> None:
        """The response is over: leave the groups, then ``disconnect()`` once, for cleanup:
        at once if the client went away (Channels' ``http_disconnect``) or ``--http-timeout``
        ended the response (``handle()`` may never return), else after ``handle()`` (or the
        event handler that sent the last body) has returned. Sends after that do nothing."""
        self._finished = True  # first: what detach() lets out of held broadcasts is not ours
        if self.channel_layer is not None and self.channel_name is not None:
            self.channel_layer.detach(self.channel_name)
        self._cancel_close_deadline()
        self._stop_producing()  # a send waiting for the client returns (a no-op)
        if isinstance(result, Failure) or getattr(self._request, "timed_out", False):
            self._disconnect()
            # A handler still running (handle() waiting on the layer, say) may join groups
            # after the detach above: once the handlers are done, leave again.
            self._events.addBoth(self._detach_again)
        else:
            self._events.addBoth(self._disconnect_then)

    def _disconnect_then(self, result: Any) -> Any:
        self._detach_again(None)
        self._disconnect()
        return result

    def _detach_again(self, result: Any) -> Any:
        if self.channel_layer is not None and self.channel_name is not None:
            self.channel_layer.detach(self.channel_name)
        return result

    def _disconnect(self) -> None:
        if self._disconnected:
            return
        self._disconnected = True
        as_deferred(self.disconnect()).addErrback(
            lambda f: log.failure("disconnect() raised", f)
        )

    def _failed(self, failure: Failure) -> None:
        log.failure("{consumer}.handle() raised on {path}", failure,
                    consumer=type(self).__name__, path=self.scope.get("path"))
        if self._finished:
            return
        self._finished = True
        request = self._request
        if not self._headers_sent:
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.setHeader(b"content-length", b"22")
            request.write(b"Internal Server Error\n")
            request.finish()
        else:
            cut_off(request)  # the client must not take a half-sent body for the whole


@implementer(IPushProducer)
class _StreamProducer:
    """What twisted.web pauses while a streaming response's client does not read (its
    buffer full; over HTTP/2, its flow-control window shut): ``paused`` is a Deferred to
    wait on then."""

    def __init__(self) -> None:
        self.paused: Deferred[None] | None = None
        #: Bytes written since the pause (by event handlers, which do not wait).
        self.waiting = 0

    def pauseProducing(self) -> None:
        if self.paused is None:
            self.paused = Deferred()

    def resumeProducing(self) -> None:
        self.waiting = 0
        paused, self.paused = self.paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()  # the connection is gone: sends from now on do nothing
