"""Shared fixtures. Nothing here imports the reactor at module level (pytest-twisted installs
the reactor chosen with --reactor, default or asyncio, after this file is imported)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted


@pytest.fixture
def live() -> Iterator[Any]:
    """``await live(app, **config)`` starts a real server on a free loopback port; every
    server started is stopped (connections dropped, port closed) after the test."""
    from realtime.config import ServerConfig
    from realtime.testing import serve

    servers: list[Any] = []

    async def start(app: Any, **config: Any) -> Any:
        server = await serve(app, ServerConfig(**config))
        servers.append(server)
        return server

    yield start
    for server in servers:
        pytest_twisted.blockon(server.stop())
