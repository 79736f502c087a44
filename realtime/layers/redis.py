"""The Redis channel layer (work in progress: see the channel-layers issue)."""

from __future__ import annotations

from typing import Any

from realtime.layers.base import BaseChannelLayer


class RedisChannelLayer(BaseChannelLayer):
    @classmethod
    def from_url(cls, url: str, reactor: Any = None) -> RedisChannelLayer:
        raise NotImplementedError("the Redis layer is not built yet")
