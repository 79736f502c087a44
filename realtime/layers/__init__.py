"""Channel layers: groups and named channels across consumers (and processes).

``get_channel_layer()`` returns the layer the service was started with (``--layer``), or an
in-memory one, so code outside consumers (a script, a test) reaches the same groups. Called
anywhere but on the reactor thread — a Django view's thread, or before the reactor runs
(a module global taken while ``--app`` is imported) — it returns the layer guarded
(``ThreadGuardedLayer``): on the reactor thread (and before it runs, on the main thread,
which will run it: ``keep_history`` at import) its calls pass through,
``async_to_sync(get_channel_layer().group_send)(...)`` (realtime's or asgiref's) works
from any thread, and a direct call from another thread raises ``RuntimeError`` instead of
racing the reactor.
"""

from __future__ import annotations

import threading
from typing import Any, cast

from twisted.python import threadable

from realtime.exceptions import TooManyGroups
from realtime.layers.base import (
    BaseChannelLayer,
    ChannelFull,
    LayerUnavailable,
    ThreadGuardedLayer,
    check_name,
    unguarded,
)
from realtime.layers.memory import InMemoryChannelLayer

_layers: dict[str, BaseChannelLayer] = {}
#: The guard ``get_channel_layer`` gives threads, per alias (rebuilt when the layer changes).
_guards: dict[str, ThreadGuardedLayer] = {}


def get_channel_layer(alias: str = "default") -> BaseChannelLayer:
    """The process's layer for ``alias`` (an in-memory layer until one is set); guarded
    when called anywhere but on the reactor's thread (before it runs too: a module global
    outlives the import, and a thread may use it later), so that its methods work there
    and, from other threads, through ``async_to_sync`` only."""
    layer = _layers.get(alias)
    if layer is None:
        layer = process_layer(alias)
    if threadable.ioThread != threading.get_ident():  # (None until a reactor runs)
        # One guard per alias and layer, so two calls give the same object (and its
        # guarded methods are built once); it reads the reactor's thread at each call.
        guard = _guards.get(alias)
        if guard is None or guard.__dict__["_layer"] is not layer:
            # The refusal names the alias: async_to_sync(get_channel_layer().x) reaches
            # another layer.
            via = "get_channel_layer()" if alias == "default" else f"get_channel_layer({alias!r})"
            guard = _guards[alias] = ThreadGuardedLayer(
                layer, None, via, "a thread other than the reactor's")
        return cast(BaseChannelLayer, guard)
    return layer


def process_layer(alias: str = "default") -> BaseChannelLayer:
    """The process's layer for ``alias`` itself, never guarded: for realtime's own code,
    which calls it on the reactor thread (or keeps it for that)."""
    layer = _layers.get(alias)
    if layer is None:
        layer = _layers[alias] = InMemoryChannelLayer()
    return layer


def set_channel_layer(layer: BaseChannelLayer, alias: str = "default") -> None:
    _layers[alias] = unguarded(layer)


def layer_from_url(url: str, reactor: Any = None) -> BaseChannelLayer:
    """``memory``, a Redis URL (``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://``), several separated by spaces (``realtime.layers.sharded``:
    groups spread over those servers), or a Redis Cluster's (``redis+cluster://``,
    ``realtime.layers.cluster``); ``ValueError`` names what is wrong."""
    if url in ("memory", "memory://"):
        return InMemoryChannelLayer()
    from realtime.layers.sharded import ShardedRedisChannelLayer, several

    if several(url):  # several Redis servers, groups spread over them
        return ShardedRedisChannelLayer.from_url(url, reactor)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("redis+cluster", "rediss+cluster"):
        from realtime.layers.cluster import ClusterRedisChannelLayer

        return ClusterRedisChannelLayer.from_url(url, reactor)
    if scheme in ("redis", "rediss", "unix", "redis+sentinel"):
        from realtime.layers.redis import RedisChannelLayer

        return RedisChannelLayer.from_url(url, reactor)
    from realtime.layers.redis import redact_url  # (imports no txredisapi)

    raise ValueError(
        f"unknown layer {redact_url(url)!r}: use memory, redis://host:port/db, rediss://, "
        "unix:///path "
        "redis+sentinel://h1:p1,h2:p2/master/db or redis+cluster://h1:p1,h2:p2"
    )


__all__ = [
    "BaseChannelLayer",
    "ChannelFull",
    "InMemoryChannelLayer",
    "LayerUnavailable",
    "ThreadGuardedLayer",
    "TooManyGroups",
    "check_name",
    "get_channel_layer",
    "layer_from_url",
    "set_channel_layer",
]
