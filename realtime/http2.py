"""HTTP/2 for HTTP requests on TLS listeners, as Daphne offers it with ``Twisted[http2]``.

ALPN picks the protocol: a client that offers ``h2`` (browsers, curl, httpx) gets HTTP/2
unless ``--no-http2``; one that offers only ``http/1.1`` or nothing (every WebSocket client:
HTTP/2 has no ``Upgrade``, and we announce no RFC 8441 extended CONNECT, so browsers open
their WebSockets on an HTTP/1.1 connection of their own) gets HTTP/1.1. Plain-TCP listeners
speak HTTP/1.1 only (no h2c), as Daphne's do.

``RealtimeChannel`` stays the transport's protocol either way: when ALPN said ``h2`` it hands
the transport to Twisted's ``H2Connection`` (``become_h2``) and forwards to it, so the
site's bookkeeping (open channels, a clean stop in tests) is the same for both. Each HTTP/2
stream makes a ``RealtimeRequest`` whose ``channel`` is Twisted's ``H2Stream``: its
``transport`` is None, so code that must end one response early goes through ``cut_off``.
Header fields HTTP/2 forbids (RFC 9113 8.2.2: a refusal's ``Connection: close``, a 426's
``Upgrade``) are left out of HTTP/2 heads by h2 itself. A stream whose body is over its
limit (``RealtimeRequest.refuse_body``) gets a complete 413, then RST_STREAM(NO_ERROR): the
client stops sending (RFC 9113 8.1) and the connection goes on.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionAborted
from twisted.python.failure import Failure

from realtime.scope import is_token

_h2: Any
try:
    from twisted.web import _http2 as _h2  # Twisted exports its HTTP/2 nowhere public
except ImportError:  # no h2 package: protocols() offers http/1.1 only
    _h2 = None
H2Stream: Any = _h2.H2Stream if _h2 is not None else None


def protocols(enabled: bool) -> list[bytes]:
    """What a TLS listener offers over ALPN, the preferred first."""
    return [b"h2", b"http/1.1"] if enabled and _h2 is not None else [b"http/1.1"]


def negotiated_h2(transport: Any) -> bool:
    """Whether ALPN on this (TLS) transport chose HTTP/2; plain TCP never does."""
    return getattr(transport, "negotiatedProtocol", None) == b"h2"


if _h2 is not None:
    import h2.connection
    import h2.errors

    #: Bytes queued on one HTTP/2 stream past which its producer is paused, and below which
    #: it is resumed (``RealtimeH2Connection.writeDataToStream``).
    QUEUE_HIGH = 256 * 1024
    QUEUE_LOW = 64 * 1024

    class RealtimeH2Connection(_h2.H2Connection):
        """Twisted's HTTP/2 connection with HTTP/1.1's idle rule: the idle timeout closes a
        connection with nothing in progress (GOAWAY), never one whose request is still
        being answered (a long poll, a server-sent-events stream)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            #: Streams whose producer ``writeDataToStream`` paused for their queue.
            self._queue_paused: set[int] = set()
            #: Streams refused from their head: no 100 Continue (``refuse_continue``).
            self._no_continue: set[int] = set()

        def timeoutConnection(self) -> None:
            if self.streams:
                self.setTimeout(self.timeOut)  # the timer has fired: arm it anew
                return
            super().timeoutConnection()

        #: Draining: the connection closes (GOAWAY, no error) once no stream is left (its
        #: END_STREAM sent: a response held by flow control is waited for).
        closing = False

        def drain(self) -> None:
            """Close once idle. No GOAWAY while streams are in progress: clients on the h2
            package (httpx) fail the streams still answering when one comes (its state
            machine closes), though RFC 9113 6.8 allows it; browsers and curl would not."""
            if self.closing or self.transport is None:
                return
            self.closing = True
            if not self.streams:
                self._close_if_done()

        def _requestReceived(self, event: Any) -> None:
            # A header name h2 lets through that is no token ("(", "/", "@", ...) makes
            # twisted.web raise midway through making the stream: its request half made (a
            # deadline and a count left behind), the connection dropped. Left out here, and
            # the request answered 400 (``RealtimeRequest.process``).
            headers = event.headers
            bad_name = any(not is_token(name) for name, _ in headers if name[:1] != b":")
            if bad_name:
                event.headers = [(name, value) for name, value in headers
                                 if name[:1] == b":" or is_token(name)]
            try:
                super()._requestReceived(event)
            finally:
                # Twisted asks for the 100 (``_send100Continue``) while it reads the head,
                # or never (no ``Expect``): a refused stream's mark is not needed past it.
                self._no_continue.discard(event.stream_id)
            request = self.streams[event.stream_id]._request
            if bad_name:
                request.bad_head = True
            if getattr(request, "body_refused", False):
                # Its content-length is over the body limit (``RealtimeRequest.gotLength``):
                # answered now that Twisted knows the stream.
                request.refuse_body()

        def _respondToBadRequestAndDisconnect(self, streamID: int) -> None:
            """Twisted's own 400 on a stream (a malformed form body): counted and logged as
            the HTTP/1.1 channel's refusals are (``RealtimeSite.http_done``)."""
            request = getattr(self.streams.get(streamID), "_request", None)
            if request is not None and not getattr(request, "_http_done", True):
                request.code = 400
                self.site.http_done(request, 400)
            super()._respondToBadRequestAndDisconnect(streamID)

        def _requestDone(self, streamID: int) -> None:
            stream = self.streams.get(streamID)
            super()._requestDone(streamID)
            if getattr(getattr(stream, "_request", None), "body_refused", False):
                self._stop_upload(streamID)
            if self.closing and not self.streams:
                # Not from inside Twisted's send loop or reset handling.
                self._reactor.callLater(0, self._close_if_done)

        def writeDataToStream(self, streamID: int, data: bytes) -> None:
            """Twisted pauses a stream's producer only when its flow-control window runs
            out, and a client may offer a window of 2 GiB: its writes would pile up in the
            stream's queue without ever waiting (``AsyncHttpConsumer`` backpressure,
            ``--slow-consumer``). Past ``QUEUE_HIGH`` queued bytes the producer is paused
            too, as HTTP/1.1's full transport pauses it; the send loop resumes it below
            ``QUEUE_LOW``."""
            super().writeDataToStream(streamID, data)
            stream = self.streams.get(streamID)
            if (stream is not None and stream.producer is not None
                    and stream._producerProducing and self._queued(streamID) > QUEUE_HIGH):
                stream._producerProducing = False
                stream.producer.pauseProducing()
                self._queue_paused.add(streamID)

        def _queued(self, streamID: int) -> int:
            return sum(len(part) for part in self._outboundStreamQueues.get(streamID, ())
                       if isinstance(part, bytes))

        def _sendPrioritisedData(self, *args: Any) -> None:
            super()._sendPrioritisedData(*args)
            paused = self._queue_paused
            if paused:
                for streamID in list(paused):
                    stream = self.streams.get(streamID)
                    if stream is None:
                        paused.discard(streamID)
                    elif self._queued(streamID) < QUEUE_LOW:
                        paused.discard(streamID)
                        stream.windowUpdated()  # resumes it while its window is open

        def _send100Continue(self, streamID: int) -> None:
            """Twisted answers ``Expect: 100-continue`` right after the head; a stream whose
            declared body is over its limit gets its 413 instead (``refuse_continue``), as
            over HTTP/1.1: a 100 first would ask the client to send what is refused."""
            if streamID in self._no_continue:
                return
            super()._send100Continue(streamID)

        def refuse_continue(self, streamID: int) -> None:
            self._no_continue.add(streamID)

        def _stop_upload(self, streamID: int) -> None:
            """The complete response (a 413) is out before the request body: RST_STREAM with
            NO_ERROR asks the client to stop sending it (RFC 9113 8.1). Without it the
            stream stays open at the client's end, and Twisted, which forgot the stream,
            would fail the whole connection on its next DATA frame."""
            stream = self.conn.streams.get(streamID)
            if stream is None or stream.closed or self.transport is None:
                return  # the client ended or reset it already
            self.conn.reset_stream(streamID, h2.errors.ErrorCodes.NO_ERROR)
            self._tryToWriteControlData()  # in order, and buffered while the client is slow

        def _close_if_done(self) -> None:
            if self.streams or self.transport is None or self.conn.state_machine.state \
                    == h2.connection.ConnectionState.CLOSED:
                return
            self.conn.close_connection()
            self.transport.write(self.conn.data_to_send())
            self.transport.loseConnection()


def become_h2(channel: Any) -> Any:
    """Hand ``channel``'s transport to a new ``RealtimeH2Connection`` (the same steps as
    Twisted's own switch in ``_GenericHTTPChannelProtocol``, which cannot host our channel
    class), and return it; the channel forwards its transport's calls to it from now on."""
    transport = channel.transport
    producer = channel._networkProducer
    producer.unregisterProducer()
    conn: Any = RealtimeH2Connection(channel.site.clock)
    conn.requestFactory = channel.requestFactory
    conn.site = channel.site
    conn.factory = channel.factory
    conn.timeOut = channel.site.timeOut  # the channel's own is off (setTimeout(None))
    conn.callLater = channel.callLater
    conn.makeConnection(transport)
    producer.registerProducer(conn, True)
    if channel.site.draining:  # opened during the drain: closes after what it asks now
        conn.closing = True
    return conn


def cut_off(request: Any, flush: bool = False) -> None:
    """End a response that cannot be completed so that the client sees it incomplete.

    HTTP/1.1: the connection is closed; with ``flush`` what was written goes out first
    (a chunked body then lacks its last chunk). HTTP/2: the stream is reset (RST_STREAM) at
    once, ``flush`` or not (what Twisted has not sent yet of it is dropped): the connection
    and the client's other streams go on."""
    channel = request.channel
    if channel is None:
        return
    if H2Stream is not None and isinstance(channel, H2Stream):
        channel.abortConnection()
        # Twisted tells a request of its stream's loss only when the peer resets it or the
        # connection goes; here the server reset it, so say it as HTTP/1.1's abort would.
        if not request._disconnected:
            request.connectionLost(Failure(ConnectionAborted("HTTP/2 stream reset")))
        return
    transport: Any = getattr(channel, "transport", None)
    if transport is None:
        return
    if flush:
        transport.loseConnection()
    else:
        transport.abortConnection()


def on_h2_stream(request: Any) -> bool:
    """Whether ``request`` came on an HTTP/2 stream."""
    return H2Stream is not None and isinstance(request.channel, H2Stream)
