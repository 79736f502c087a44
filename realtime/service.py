"""The service tree twistd runs: one listener service per endpoint, and a parent that drains
every WebSocket before the listeners close.

``MultiService.stopService`` stops all children at once, which would close the listeners
at the start of shutdown; DESIGN.md wants them open while sockets drain (so ``/readyz`` can
say 503 and new upgrades get a 503, not a refused connection).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from realtime.config import StartupError
from realtime.endpoints import describe_address
from realtime.site import RealtimeSite

log = Logger()


class ListenerService(Service):
    """Listen on one endpoint; the port opens in ``privilegedStartService`` (before twistd
    drops privileges) and a failure stops start-up with one line."""

    def __init__(self, endpoint: Any, description: str, site: RealtimeSite) -> None:
        self.endpoint = endpoint
        self.description = description
        self.site = site
        self.port: Any = None
        self._waiting: Deferred[Any] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        d = self.endpoint.listen(self.site)
        failures: list[Any] = []
        d.addCallbacks(self._listening, failures.append)
        if failures:
            exc = failures[0].value
            reason = exc.socketError if isinstance(exc, CannotListenError) else exc
            reason = getattr(reason, "strerror", None) or str(reason)
            raise StartupError(f"cannot listen on {self.description}: {reason}")
        if self.port is None:
            self._waiting = d

    def _listening(self, port: Any) -> Any:
        self.port = port
        log.info("listening on {address}", address=describe_address(port.getHost()))
        return port

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class RealtimeService(MultiService):
    """The parent: on stop, drain every site, then close the listeners."""

    def __init__(
        self, sites: list[RealtimeSite], reactor: Any, shutdown_timeout: float, layer: Any = None
    ) -> None:
        super().__init__()
        self.sites = sites
        self.reactor = reactor
        self.shutdown_timeout = shutdown_timeout
        self.layer = layer

    def startService(self) -> None:
        super().startService()
        start = getattr(self.layer, "start", None)
        if start is not None:
            start(self.reactor)

    def stopService(self) -> Deferred[Any]:
        count = sum(len(site.connections) for site in self.sites)
        if count:
            log.info("draining {count} WebSocket connection(s)", count=count)
        drained = gatherResults([site.drain() for site in self.sites])
        deadline = self.reactor.callLater(self.shutdown_timeout, self._deadline)

        def _stop(_: Any) -> Any:
            if deadline.active():
                deadline.cancel()
            # twistd (and twist) re-raise the signal that stopped the reactor once it has
            # shut down, so the exit status would be -15; a finished drain is a clean exit
            # with status 0 (DESIGN.md, "Drain").
            if getattr(self.reactor, "_exitSignal", None) is not None:
                self.reactor._exitSignal = None
            stopped = MultiService.stopService(self)
            if self.layer is not None:
                stopped.addBoth(lambda result: self.layer.close().addBoth(lambda _: result))
            return stopped

        drained.addCallback(_stop)
        return drained

    def _deadline(self) -> None:
        left = sum(len(site.connections) for site in self.sites)
        log.warn("shutdown timeout: closing {left} connection(s) at once", left=left)
        for site in self.sites:
            site.abort_all()
