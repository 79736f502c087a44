"""Redis URLs and lazy txredisapi clients, shared by the Redis session store (and usable by
anything else that needs a plain Redis connection).

txredisapi imports the global reactor when it is imported, so it is imported here only when
a client is actually made (after twistd has installed the reactor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class RedisTarget:
    host: str | None
    port: int
    db: int
    path: str | None = None
    tls: bool = False
    password: str | None = None
    ca_file: str | None = None


def parse_redis_url(url: str) -> RedisTarget:
    """``redis://[:password@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path?db=N``;
    ``ValueError`` names what is wrong."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{url!r}: unix:// needs a socket path")
        db = int(query.get("db", ["0"])[0])
        return RedisTarget(None, 0, db, path=parts.path,
                           password=unquote(parts.password) if parts.password else None)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{url!r}: expected redis://, rediss:// or unix://")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{url!r}: bad port") from None
    db_text = parts.path.lstrip("/") or "0"
    if not db_text.isdigit():
        raise ValueError(f"{url!r}: the database must be a number, got {db_text!r}")
    return RedisTarget(
        parts.hostname or "localhost", port, int(db_text), tls=parts.scheme == "rediss",
        password=unquote(parts.password) if parts.password else None,
        ca_file=query.get("ssl_ca_certs", [None])[0],
    )


def lazy_client(target: RedisTarget) -> Any:
    """A txredisapi lazy connection (reconnects by itself) for simple commands."""
    import txredisapi

    if target.path is not None:
        return txredisapi.lazyUnixConnection(target.path, dbid=target.db,
                                             password=target.password)
    kwargs: dict[str, Any] = {"dbid": target.db, "password": target.password}
    if target.tls:
        from twisted.internet import ssl

        if target.ca_file:
            with open(target.ca_file, "rb") as f:
                authority = ssl.Certificate.loadPEM(f.read())
            options = ssl.optionsForClientTLS(target.host or "localhost", authority)
        else:
            options = ssl.optionsForClientTLS(target.host or "localhost")
        kwargs["ssl_context_factory"] = options
    return txredisapi.lazyConnection(target.host, target.port, **kwargs)
