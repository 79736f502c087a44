"""Process-wide settings for the middleware (Django's ``settings`` in spirit).

``twistd realtime`` fills these from the command line *before* it imports the application,
so middleware built at import time (``application = AuthMiddlewareStack(...)``) sees them and
can stop start-up with one line (``ConfigurationError``) when something it needs is missing.
Tests and embedders call ``configure(...)`` or pass the values to the middleware directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


class ConfigurationError(Exception):
    """Something a middleware needs is not configured; the message names the option."""


@dataclass
class Settings:
    secret_key: str | None = None
    old_secret_keys: list[str] = field(default_factory=list)
    #: ``auto`` (Django's sessions in a Django project, else ``cookie``), ``django``,
    #: ``cookie`` (signed; needs ``secret_key``), ``memory`` or a ``redis://`` URL.
    session_store: str = "auto"
    session_cookie_name: str = "sessionid"
    session_cookie_age: int = 1209600  # two weeks, Django's default
    session_cookie_samesite: str = "Lax"
    #: JWT verification keys: a list of ``realtime.tokens.VerificationKey``.
    jwt_keys: list[Any] = field(default_factory=list)
    #: Where ``jwt_keys`` partly come from when they can be refetched (``--jwks-url``:
    #: ``realtime.jwks.JwksUrl``); None: they are all static.
    jwt_key_source: Any = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = 0.0
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    #: ``realtime.pubsub``: namespaces by name (``--namespace``) and whether a client may
    #: connect without a token (``--pubsub-anonymous``).
    pubsub_namespaces: dict[str, Any] = field(default_factory=dict)
    pubsub_anonymous: bool = False
    #: ``realtime.pubsub``'s transports served (``--pubsub-transports``); None: all.
    pubsub_transports: frozenset[str] | None = None
    #: ``realtime.pubsub_proxy.ProxyConfig`` (``--proxy-*-endpoint``, ``--proxy``,
    #: ``--rpc-namespace``, ...): Centrifugo's event proxies to the backend; None: none.
    pubsub_proxy: Any = None


settings = Settings()


def configure(**values: Any) -> Settings:
    """Set settings by name (unknown names are a ``TypeError``); returns the settings."""
    names = {f.name for f in fields(Settings)}
    for name, value in values.items():
        if name not in names:
            raise TypeError(f"unknown setting {name!r}")
        setattr(settings, name, value)
    return settings


def reset() -> None:
    """Back to the defaults (for tests)."""
    for f in fields(Settings):
        setattr(settings, f.name, getattr(Settings(), f.name))
