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

from twisted.internet.defer import Deferred, gatherResults

from realtime.layers.redis import RedisAddress, _load_ca_certs, parse_url


def parse_redis_url(url: str) -> RedisAddress:
    """The address in ``url``; ``ValueError`` names what is wrong (the layer's ``capacity=``
    and ``prefix=`` mean nothing here, so they are refused). A ``ssl_ca_certs`` file is read
    now, so a bad one stops start-up."""
    address, options = parse_url(url)
    if options:
        raise ValueError(
            f"{url!r}: {', '.join(sorted(options))} is a channel-layer option (--layer)"
        )
    if address.ca_certs:
        _load_ca_certs(address.ca_certs, url)
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
            return
        if address.kind == "sentinel":
            # The URL's credentials are the master's; the sentinels are asked without them.
            self._sentinel = txredisapi.Sentinel(list(address.sentinels))
            self.commands = self._sentinel.master_for(address.master, **auth)
            return
        if address.tls:
            from twisted.internet import ssl

            certs = (_load_ca_certs(address.ca_certs, address.describe())
                     if address.ca_certs else None)
            trust = ssl.trustRootFromCertificates(certs) if certs else ssl.platformTrust()
            auth["ssl_context_factory"] = ssl.optionsForClientTLS(address.host, trustRoot=trust)
        self.commands = txredisapi.lazyConnection(address.host, address.port, **auth)

    def disconnect(self) -> Deferred[Any]:
        closing = [self.commands.disconnect()]
        if self._sentinel is not None:
            closing.append(self._sentinel.disconnect())
        return gatherResults(closing, consumeErrors=True)
