"""Shared fixtures. Nothing here imports the reactor at module level (pytest-twisted installs
the reactor chosen with --reactor, default or asyncio, after this file is imported)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def live(realtime_server: Any) -> Any:
    """``await live(app, **config)``: the toolkit's ``realtime_server`` fixture (a real server
    on a free loopback port, stopped and leak-checked after the test)."""
    return realtime_server
