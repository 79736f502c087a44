"""``twistd realtime-runworker``: consume named channels (Channels' ``runworker``).

::

    twistd -n realtime-runworker --layer redis://127.0.0.1:6379/0 \\
        --app myproject.workers:application thumbnails emails

The application is typically a ``ChannelNameRouter({"thumbnails": Thumbnailer.as_app()})``.
For each message taken from one of the channels (a BRPOP on the Redis layer), the worker
builds the scope ``{"type": "channel", "channel": name}``, gets that channel's consumer
from the application (one instance per channel, kept, as Channels does) and calls the
handler the message's type names (``thumbnail.make`` -> ``thumbnail_make(message)``).

- **One message at a time per worker**: the next is taken only after the handler (and
  whatever it returned: a Deferred, a coroutine) has finished. Run more workers for more
  throughput; a message goes to exactly one of them.
- **At-most-once**: a message is removed from Redis when it is taken; if the worker dies
  while handling it, it is lost (as with Channels). A handler that raises is logged and
  the worker goes on with the next message.
- ``--layer memory`` is refused: a worker needs a layer shared with the processes that
  send to it.
- SIGTERM/SIGINT: no new message is taken; the one being handled finishes (up to
  ``--shutdown-timeout``), then the process exits.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python import usage

from realtime.config import StartupError
from realtime.threads import as_deferred

log = Logger(namespace="realtime.worker")


class Options(usage.Options):
    synopsis = "--layer URL --app MODULE:ATTRIBUTE CHANNEL [CHANNEL ...]"
    longdesc = (
        "Consume named channels of a shared channel layer (Channels' runworker): each "
        "message is dispatched by its type to the consumer the application gives for "
        "{'type': 'channel', 'channel': NAME}, one message at a time, at-most-once. "
        "Options also read REALTIME_<NAME> from the environment (REALTIME_LAYER, ...)."
    )
    optParameters: list[list[Any]] = [
        ["app", None, None, "The application, MODULE:ATTRIBUTE (required), e.g. a "
         "ChannelNameRouter."],
        ["layer", None, "memory",
         "Channel layer: redis://host:port/db, rediss://..., unix:///path, "
         "redis+sentinel://h1:p1,h2:p2/master/db, several separated by spaces, "
         "redis+cluster://h1:p1,h2:p2 (memory is refused: workers need a shared layer)."],
        ["shutdown-timeout", None, "10",
         "Seconds a message being handled may take to finish at SIGTERM/SIGINT."],
        ["verbosity", "v", "1",
         "Log level, as the server's -v: 0 warnings and errors, 1 info, 2 debug, 3 debug "
         "and asyncio's debug mode (with --reactor=asyncio)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.channels: list[str] = []
        self["history"] = []

    def opt_history(self, value: str) -> None:
        """PATTERN=SIZE:TTL, as the server's --history (a worker's group_send to such a
        group is kept too: give workers the servers' rules); repeatable."""
        self["history"].append(value)

    def parseArgs(self, *channels: str) -> None:
        self.channels = list(channels)

    def parseOptions(self, options: list[str] | None = None) -> None:
        for name in [p[0] for p in self.optParameters]:
            value = os.environ.get("REALTIME_" + name.upper().replace("-", "_"))
            if value is not None:
                self[name] = value
        self._env_history = os.environ.get("REALTIME_HISTORY", "").split()
        try:
            super().parseOptions(options)
        except usage.UsageError as exc:
            raise StartupError(str(exc)) from None

    def postOptions(self) -> None:
        from realtime.layers import check_name, layer_from_url
        from realtime.tap import _count, _seconds, load_application

        self.verbosity = _count("verbosity", self["verbosity"], 0, 3)

        if not self["app"]:
            raise StartupError("--app is required (MODULE:ATTRIBUTE, e.g. a "
                               "ChannelNameRouter)")
        if not self.channels:
            raise StartupError("name at least one channel to consume (e.g. thumbnails)")
        for channel in self.channels:
            try:
                check_name(channel)
            except TypeError as exc:
                raise StartupError(str(exc)) from None
            if "!" in channel:
                raise StartupError(f"{channel!r} is a process-specific channel; workers "
                                   "consume named channels (no '!')")
        if self["layer"] in ("memory", "memory://"):
            raise StartupError("--layer: a worker needs a shared layer (redis://host:port/db, "
                               "rediss://, unix://, redis+sentinel://, redis+cluster://), not "
                               "memory")
        try:
            self.layer = layer_from_url(self["layer"])
        except ValueError as exc:
            raise StartupError(f"--layer: {exc}") from None
        from realtime.layers.history import apply_rules

        try:
            apply_rules(self.layer, self["history"] or self._env_history)
        except ValueError as exc:
            raise StartupError(f"--history: {exc}") from None
        if not hasattr(self.layer, "receive_any"):
            raise StartupError(f"--layer {self['layer']!r}: this layer cannot feed workers")
        self.shutdown_timeout = _seconds("shutdown-timeout", self["shutdown-timeout"])
        from realtime.layers import set_channel_layer

        set_channel_layer(self.layer)  # before the import: module-level handles get this one
        self.application = load_application(self["app"])


async def channel_consumer(application: Any, scope: dict[str, Any], layer: Any) -> Any:
    """The consumer ``application`` gives for a ``channel`` scope, wired to ``layer`` (what
    the worker does once per channel; ``testing.ApplicationCommunicator`` too)."""
    from realtime.layers.base import unguarded
    from realtime.middleware import resolve

    consumer = await resolve(application(scope))
    if getattr(consumer, "scope", None) is None:
        consumer.scope = scope
    layer = unguarded(layer)  # (a module global's guard: on the reactor, the layer itself)
    if getattr(consumer, "thread_handlers", False) and layer is not None:
        # Its handlers run in the pool: a direct layer call there is refused, not a race.
        from threading import get_ident

        from realtime.layers.base import guarded_for_threads

        layer = guarded_for_threads(layer, get_ident())  # (this runs on the reactor thread)
    consumer.channel_layer = layer
    consumer.channel_name = scope["channel"]
    return consumer


async def handle_message(consumer: Any, message: dict[str, Any], reactor: Any) -> None:
    """Dispatch one message to ``consumer`` by its type and wait for the handler (in the
    reactor's thread pool for ``thread_handlers`` consumers); its exception propagates."""
    from realtime.middleware import resolve

    on_event = getattr(consumer, "_on_event", None)
    if on_event is None:
        from realtime.consumer import dispatch_event

        def on_event(event: dict[str, Any]) -> Any:
            return dispatch_event(consumer, event)

    if getattr(consumer, "thread_handlers", False):
        from realtime.db import in_pool

        result = await in_pool(reactor, on_event, message)
    else:
        result = on_event(message)
    await resolve(result)


class WorkerService(Service):
    """Takes one message at a time from the channels and hands it to its consumer."""

    def __init__(self, application: Any, layer: Any, channels: list[str], reactor: Any,
                 shutdown_timeout: float = 10.0) -> None:
        self.application = application
        self.layer = layer
        self.channels = list(channels)
        self.reactor = reactor
        self.shutdown_timeout = shutdown_timeout
        self.handled = 0
        self.failed = 0
        self._consumers: dict[str, Any] = {}
        self._receiving: Deferred[Any] | None = None
        self._handling: Deferred[Any] | None = None
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        start = getattr(self.layer, "start", None)
        if start is not None:
            start(self.reactor)
        log.info("worker consuming {channels} from {layer}", channels=", ".join(self.channels),
                 layer=getattr(getattr(self.layer, "address", None), "describe", lambda: "")())
        self._next()

    def _next(self) -> None:
        if self._stopping:
            return
        d = self.layer.receive_any(self.channels)
        self._receiving = d
        d.addCallbacks(self._got, self._receive_failed)

    def _got(self, pair: tuple[str, dict[str, Any]]) -> None:
        self._receiving = None
        channel, message = pair
        self._handling = as_deferred(self._handle(channel, message))
        self._handling.addBoth(self._handled)

    def _handled(self, _: Any) -> None:
        self._handling = None
        self._next()

    def _receive_failed(self, failure: Any) -> None:
        self._receiving = None
        if failure.check(CancelledError) or self._stopping:
            return
        log.failure("worker: receiving failed; retrying in 1 s", failure)
        self.reactor.callLater(1.0, self._next)

    async def _handle(self, channel: str, message: dict[str, Any]) -> None:
        try:
            consumer = self._consumers.get(channel)
            if consumer is None:
                scope = {"type": "channel", "channel": channel}
                consumer = await channel_consumer(self.application, scope, self.layer)
                self._consumers[channel] = consumer
            await handle_message(consumer, message, self.reactor)
            self.handled += 1
        except Exception:
            self.failed += 1
            log.failure("worker: the consumer for channel {channel} raised on a {kind!r} "
                        "message", channel=channel, kind=message.get("type"))

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._stopping = True
        if self._receiving is not None:
            self._receiving.cancel()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        from twisted.internet.task import deferLater

        if self._handling is not None:
            log.info("worker: finishing the message being handled")
            waited = 0.0
            while self._handling is not None and waited < self.shutdown_timeout:
                await deferLater(self.reactor, 0.05, lambda: None)
                waited += 0.05
            if self._handling is not None:
                log.warn("worker: shutdown timeout; the message being handled is abandoned")
        await self.layer.close()
        # twistd re-raises the signal that stopped it (exit status -15); a finished stop is
        # a clean exit, status 0 (as the server's drain).
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None
        log.info("worker stopped after {n} message(s) ({failed} failed)", n=self.handled,
                 failed=self.failed)


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from realtime.verbosity import apply_verbosity

    apply_verbosity(options.verbosity, reactor, under_twistd=options.parent is not None)
    return WorkerService(options.application, options.layer, options.channels, reactor,
                         options.shutdown_timeout)
