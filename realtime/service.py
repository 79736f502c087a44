"""The service tree twistd runs: one listener service per endpoint, and a parent that drains
every WebSocket before the listeners close.

``MultiService.stopService`` stops all children at once, which would close the listeners
at the start of shutdown; they must stay open while sockets drain (so ``/readyz`` can
say 503 and new upgrades get a 503, not a refused connection).
"""

from __future__ import annotations

import atexit
import gc
import os
import resource
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtime.config import StartupError
from realtime.endpoints import describe_address
from realtime.exceptions import Refuse
from realtime.lifespan import STARTUP_FAILED, LifespanError, Lifespans
from realtime.notify import Notifier
from realtime.site import RealtimeSite

log = Logger()


def raise_open_files_limit() -> tuple[int, int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (each WebSocket is a descriptor;
    the usual soft default of 1024 is far too low) and log both: ``open files: soft 1024
    -> 524288 (hard 524288)``. Returns (soft before, soft after, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:  # Linux refuses more than fs.nr_open
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = soft
    new = soft
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            new = target
        except (OSError, ValueError) as exc:
            log.warn("open files: cannot raise the soft limit {soft} to {target}: {error}",
                     soft=soft, target=target, error=exc)
    shown = "unlimited" if hard == resource.RLIM_INFINITY else hard
    if new != soft:
        log.info("open files: soft {soft} -> {new} (hard {hard})", soft=soft, new=new,
                 hard=shown)
    else:
        log.info("open files: soft {soft} (hard {hard})", soft=soft, hard=shown)
    return soft, new, hard


def tune_collector(threshold: int) -> int:
    """Freeze what start-up built (modules, the application, Django's settings) out of the
    cyclic collector's passes, and collect the first generation every ``threshold`` new
    objects instead of Python's 700. Both are the collector's own knobs (``gc.freeze``,
    ``gc.set_threshold``); requests and handshakes leave cycles (Django's
    ``RequestAborted`` does, every request), and under load the collector took 15-20 % of
    the server's CPU with Python's defaults (benchmarks/README.md). Returns how many
    objects were frozen."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(threshold, second, third)
    frozen = gc.get_freeze_count()
    log.info("gc: {frozen} start-up objects frozen, first threshold {threshold}",
             frozen=frozen, threshold=threshold)
    return frozen


def exit_after_shutdown(reactor: Any, pidfile: str | None, status: int) -> None:
    """Stop the reactor and, once it has shut down (services stopped, drain done), end the
    process with ``status``: twistd itself exits 0 whenever its reactor stopped. Its pidfile
    (when it names this process) is removed first, as twistd would. Its callers call it
    once (a failed start-up happens once; ``SupervisorService.failed`` guards itself)."""

    def end() -> None:
        # What interpreter exit would run (os._exit skips it): atexit handlers, among them
        # logging's flush and an error reporter's (Sentry's) queue.
        atexit._run_exitfuncs()
        if pidfile:
            try:
                with open(pidfile) as f:
                    ours = f.read().strip() == str(os.getpid())
                if ours:
                    os.remove(pidfile)
            except OSError:
                pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)

    reactor.addSystemEventTrigger("after", "shutdown", end)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


class ListenerService(Service):
    """Listen on one endpoint; the port opens in ``privilegedStartService`` (before twistd
    drops privileges) and a failure stops start-up with one line."""

    #: How the real address is logged; a ``--workers`` child says ``serving`` so that the
    #: supervisor's own ``listening on`` lines stay the only ones.
    announce = "listening on"

    def __init__(self, endpoint: Any, description: str, site: RealtimeSite,
                 what: str = "", option: str = "") -> None:
        self.endpoint = endpoint
        self.description = description
        self.site = site
        #: After the address in the log line (`` (internal: /healthz, /api/)``), and the
        #: option a failure to listen names (``--internal-port``): a listener of its own.
        self.what = what
        self.option = option
        self.port: Any = None
        self._waiting: Deferred[Any] | None = None
        self._waiters: list[Deferred[Any]] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        d = self.endpoint.listen(self.site)
        failures: list[Any] = []
        d.addCallbacks(self._listening, failures.append)
        if failures:
            exc = failures[0].value
            reason = exc.socketError if isinstance(exc, CannotListenError) else exc
            reason = getattr(reason, "strerror", None) or str(reason)
            named = f"{self.option}: " if self.option else ""
            raise StartupError(f"{named}cannot listen on {self.description}: {reason}")
        if self.port is None:
            self._waiting = d

    def _listening(self, port: Any) -> Any:
        self.port = port
        log.info("{announce} {address}{what}", announce=self.announce,
                 address=describe_address(port.getHost()), what=self.what)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(port)
        return port

    def when_listening(self) -> Deferred[Any]:
        """Fires with the port once it listens (at once if it already does)."""
        if self.port is not None:
            return succeed(self.port)
        waiter: Deferred[Any] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class RealtimeService(MultiService):
    """The parent: on stop, drain every site, then close the listeners."""

    def __init__(
        self, sites: list[RealtimeSite], reactor: Any, shutdown_timeout: float, layer: Any = None,
        lifespan: Lifespans | None = None, on_failure: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self.sites = sites
        self.reactor = reactor
        self.shutdown_timeout = shutdown_timeout
        self.layer = layer
        #: The ASGI lifespans of the application's raw ASGI apps (``realtime.lifespan``).
        self.lifespan = lifespan
        #: Called with the exit status when the application's start-up failed (twistd:
        #: ``exit_after_shutdown``); the status is kept in ``exit_status`` either way.
        self.on_failure = on_failure
        self.exit_status = 0
        self.stopping = False
        #: systemd's notify protocol: READY=1, STOPPING=1, WATCHDOG=1 (no-ops without it).
        self.notifier = Notifier(reactor)

    def privilegedStartService(self) -> None:
        raise_open_files_limit()
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        start = getattr(self.layer, "start", None)
        if start is not None:
            start(self.reactor)
        waits = [child.when_listening() for child in self if isinstance(child, ListenerService)]
        if self.lifespan:
            for site in self.sites:
                site.gate = []
            started: Deferred[None] = Deferred()
            # From the reactor's first turn: asyncio code needs its loop running, which it
            # is not yet in startup triggers (--reactor=asyncio).
            self.reactor.callLater(0, lambda: self.lifespan.startup().chainDeferred(started))
            waits.append(started.addCallbacks(self._started, self._start_failed))
        gatherResults(waits).addCallback(lambda _: self._ready())
        self.notifier.start_watchdog()

    def _started(self, _: Any) -> None:
        if not self.stopping:  # else stopService refused the requests waiting
            for site in self.sites:
                site.release()

    def _start_failed(self, failure: Failure) -> None:
        """The application's start-up failed: waiting requests get 503, the process stops
        with status 3 (``on_failure``). Not when the server stopped first (SIGTERM during
        start-up): that stop is the exit, with its own status."""
        if self.stopping:
            return
        if failure.check(LifespanError):
            log.error("application startup failed: {error}", error=failure.value)
        else:  # pragma: no cover - a bug of ours
            log.failure("application startup failed", failure)
        for site in self.sites:
            site.release(Refuse(503))
        self.exit_status = STARTUP_FAILED
        if self.on_failure is not None:
            self.on_failure(STARTUP_FAILED)

    def _ready(self) -> None:
        if self.running and not self.exit_status:
            self.notifier.ready()

    def stopService(self) -> Deferred[Any]:
        self.stopping = True
        self.notifier.stopping()
        for site in self.sites:
            if isinstance(site.gate, list):  # stopped during the lifespan start-up
                site.release(Refuse(503))
        count, http = self._open_counts()
        if count or http:
            log.info("draining {count} WebSocket connection(s) and {http} HTTP "
                     "connection(s)", count=count, http=http)
        drained = gatherResults([site.drain() for site in self.sites])
        deadline = self.reactor.callLater(self.shutdown_timeout, self._deadline)

        def _stop(_: Any) -> Any:
            if deadline.active():
                deadline.cancel()
            # twistd (and twist) re-raise the signal that stopped the reactor once it has
            # shut down, so the exit status would be -15; a finished drain is a clean exit
            # with status 0 (README, "Operations": the drain).
            if getattr(self.reactor, "_exitSignal", None) is not None:
                self.reactor._exitSignal = None
            stopped = MultiService.stopService(self)
            stopped.addBoth(self._stop_watchdog)
            if self.lifespan:
                lifespan = self.lifespan
                stopped.addBoth(lambda result: lifespan.shutdown().addBoth(lambda _: result))
            if self.layer is not None:
                stopped.addBoth(lambda result: self.layer.close().addBoth(lambda _: result))
            return stopped

        drained.addCallback(_stop)
        return drained

    def _stop_watchdog(self, result: Any) -> Any:
        self.notifier.stop_watchdog()
        return result

    def _open_counts(self) -> tuple[int, int]:
        """Open WebSockets and HTTP connections over every site, for the drain's log lines."""
        return (sum(len(site.connections) for site in self.sites),
                sum(len(site.open_channels) for site in self.sites))

    def _deadline(self) -> None:
        left, http = self._open_counts()
        log.warn("shutdown timeout: dropping {left} WebSocket connection(s) and {http} HTTP "
                 "connection(s) at once", left=left, http=http)
        for site in self.sites:
            site.abort_all()
            site.abort_http()
            site.drain_over()  # a hard limit: what arrives from now on is the reactor's
