"""Testing toolkit: live servers on port 0 (and, below, in-memory communicators).

``serve(app)`` starts the real server (the same ``RealtimeSite`` twistd runs) on a free
loopback port and returns a ``LiveServer`` with its ``ws://`` and ``http://`` base URLs;
``await server.stop()`` closes every connection and the port, so nothing leaks into the
next test.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from realtime.config import ServerConfig


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class LiveServer:
    """A running server: ``host``, ``port``, ``site``, ``ws_url(path)``, ``http_url(path)``."""

    def __init__(self, site: Any, port: Any) -> None:
        self.site = site
        self.listening_port = port
        address = port.getHost()
        self.host: str = address.host
        self.port: int = address.port

    def ws_url(self, path: str = "/") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    def http_url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def stop(self) -> Deferred[None]:
        """Stop listening, drop every connection; fires when they are gone."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        site = self.site
        await self.listening_port.stopListening()
        site.draining = True
        if site.connections:
            done: Deferred[None] = Deferred()
            site._drained.append(done)
            site.abort_all()
            if site.connections:
                await done
        channels = list(getattr(site, "open_channels", ()))
        for channel in channels:
            if channel.transport is not None:
                channel.transport.abortConnection()
        waits = [ch.lost for ch in channels if not ch.lost.called]
        for wait in waits:
            await wait


async def serve(
    application: Any,
    config: ServerConfig | None = None,
    reactor: Any = None,
    interface: str = "127.0.0.1",
) -> LiveServer:
    """Start ``application`` on a free port of ``interface``; returns a ``LiveServer``."""
    from realtime.site import RealtimeSite

    reactor = reactor or _default_reactor()
    site = RealtimeSite(application, config or ServerConfig(), reactor)
    port = reactor.listenTCP(0, site, interface=interface)
    return LiveServer(site, port)
