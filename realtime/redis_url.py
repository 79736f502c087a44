"""Plain Redis connections from a URL, for the Redis session store (and anything else that
needs simple commands rather than a channel layer).

The URL is read by the layer's own parser (``realtime.layers.redis.parse_url``), so
``--session-store`` takes every form ``--layer`` does: an ACL user and password, ``rediss://``
with ``ssl_ca_certs``, ``unix://``, ``redis+sentinel://``. txredisapi imports the global
reactor when it is imported, so it is imported here only when a client is actually made
(after twistd has installed the reactor).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed

from realtime.layers.redis import RedisAddress, _load_ca_certs, parse_url, redact_url


def parse_redis_url(url: str) -> RedisAddress:
    """The address in ``url``; ``ValueError`` names what is wrong (the layer's ``capacity=``
    and ``prefix=`` mean nothing here, so they are refused). A ``ssl_ca_certs`` file is read
    now, so a bad one stops start-up."""
    address, options = parse_url(url)
    if address.kind == "cluster":
        raise ValueError(f"{redact_url(url)!r}: a Redis Cluster is for --layer; this takes one "
                         "Redis (redis://, rediss://, unix:// or redis+sentinel://)")
    if options:
        raise ValueError(
            f"{redact_url(url)!r}: {', '.join(sorted(options))} is a channel-layer option "
            "(--layer)"
        )
    if address.ca_certs:
        _load_ca_certs(address.ca_certs, redact_url(url))
    return address


class LazyClient:
    """A txredisapi lazy connection (it reconnects by itself) to an address's master, as
    ``commands``; ``disconnect()`` also closes the connections to its sentinels."""

    def __init__(self, address: RedisAddress) -> None:
        import txredisapi

        self._sentinel: Any = None
        auth: dict[str, Any] = {"dbid": address.db, "password": address.password,
                                "username": address.username}
        if address.kind == "unix":
            self.commands: Any = txredisapi.lazyUnixConnection(address.path, **auth)
        elif address.kind == "sentinel":
            # The URL's credentials are the master's; the sentinels are asked without them
            # (as the layer asks them).
            sentinel, master_factory = _sentinel_classes()
            self._sentinel = sentinel(list(address.sentinels))
            self.commands = self._sentinel.master_for(
                address.master, factory_class=master_factory, isLazy=True, **auth)
        else:
            if address.tls:
                from twisted.internet import ssl

                certs = (_load_ca_certs(address.ca_certs, address.describe())
                         if address.ca_certs else None)
                trust = ssl.trustRootFromCertificates(certs) if certs else ssl.platformTrust()
                auth["ssl_context_factory"] = ssl.optionsForClientTLS(address.host,
                                                                      trustRoot=trust)
            self.commands = txredisapi.lazyConnection(address.host, address.port, **auth)
        # A refused AUTH or SELECT fails the factory's first-connection Deferred, which a
        # lazy client's caller never holds ("Unhandled error in Deferred" at collection);
        # txredisapi has logged the reason already.
        connected = getattr(self.commands, "_connected", None)
        if isinstance(connected, Deferred):
            connected.addErrback(lambda _: None)

    def forget_cancelled(self) -> None:
        """A command cancelled while it waited for a connection (the session store's time
        limit, with Redis away) leaves its waiter in txredisapi's queue until a connection
        comes: drop those, so an outage does not pile up one per request."""
        queue = getattr(getattr(self.commands, "_factory", None), "connectionQueue", None)
        peekers = getattr(queue, "peekers", None)
        if peekers:
            peekers[:] = [d for d in peekers if not d.called]

    def disconnect(self) -> Deferred[Any]:
        closing = [self.commands.disconnect()]
        if self._sentinel is not None:
            closing.append(self._sentinel.disconnect())
        return gatherResults(closing, consumeErrors=True)


_SENTINEL_CLASSES: tuple[Any, Any] | None = None


def _sentinel_classes() -> tuple[Any, Any]:
    """txredisapi's ``Sentinel`` and its master's connection factory, with two fixes: the
    master's AUTH is waited for before ROLE (txredisapi sends ROLE at once: with a refused
    password the connection stayed open and never ready, every command waited, and two
    "Unhandled error in Deferred" were logged), and ``disconnect()`` cancels the pending
    discovery timers (txredisapi's waited their 10 s after the store was closed)."""
    global _SENTINEL_CLASSES
    if _SENTINEL_CLASSES is not None:
        return _SENTINEL_CLASSES
    import txredisapi
    from twisted.internet import reactor

    class MasterProtocol(txredisapi.SentinelRedisProtocol):
        def connectionMade(self) -> Any:
            ready = txredisapi.RedisProtocol.connectionMade

            def check_role(role: Any) -> Any:
                if self.factory.is_master and role[0] != "master":
                    self.transport.loseConnection()
                    return None
                return ready(self)  # AUTH (again) and SELECT, then ready

            def refused(failure: Any) -> Any:
                # AUTH refused: as on a plain connection (AUTH again, which fails the same,
                # one log line, no retry).
                return ready(self)

            def role_failed(failure: Any) -> None:
                txredisapi.log.msg(f"Redis error: ROLE: {failure.getErrorMessage()}")
                self.transport.loseConnection()

            d = (self.auth(self.password, self.username) if self.password is not None
                 else succeed(None))
            d.addCallbacks(lambda _: self.role().addCallbacks(check_role, role_failed),
                           refused)
            return d

    class MasterFactory(txredisapi.SentinelConnectionFactory):
        protocol = MasterProtocol

    class Sentinel(txredisapi.Sentinel):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._timers: set[Any] = set()

        def discover_master(self, service_name: str) -> Deferred[Any]:
            """txredisapi's, with its timer kept (``disconnect`` cancels it)."""
            result: Deferred[Any] = Deferred()

            def on_response(response: Any) -> None:
                if result.called:
                    return
                state = response.get(service_name)
                if state and self.check_master_state(state):
                    result.callback((state["ip"], int(state["port"])))

            def on_timeout() -> None:
                self._timers.discard(timer)
                if not result.called:
                    result.errback(txredisapi.MasterNotFoundError(
                        f"No master found for {service_name}"))

            def stop_timer() -> None:
                self._timers.discard(timer)
                if timer.active():
                    timer.cancel()

            timer: Any = reactor.callLater(self.discovery_timeout, on_timeout)
            self._timers.add(timer)

            def settled(value: Any) -> Any:
                stop_timer()  # found, given up on, or cancelled (the store closed)
                return value

            result.addBoth(settled)
            for sentinel in self.sentinels:
                sentinel.sentinel_masters().addCallbacks(on_response, lambda _: None)
            return result

        def disconnect(self) -> Deferred[Any]:
            for timer in list(self._timers):
                if timer.active():
                    timer.cancel()
            self._timers.clear()
            return super().disconnect()

    _SENTINEL_CLASSES = (Sentinel, MasterFactory)
    return _SENTINEL_CLASSES
