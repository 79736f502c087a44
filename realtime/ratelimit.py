"""A token bucket on the reactor's clock: ``--rate-limit`` (a socket's inbound messages)
and ``--handshake-rate`` (a process's WebSocket handshakes) both spend from one."""

from __future__ import annotations

import math
from typing import Any


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    __slots__ = ("burst", "clock", "last", "rate", "refusing", "tokens")

    def __init__(self, rate: float, burst: float, clock: Any) -> None:
        self.rate = rate
        self.burst = float(burst or max(1.0, rate))
        self.clock = clock
        self.tokens = self.burst
        self.last = clock.seconds()
        #: For the owner: whether it said (logged) that it refuses, so it says so once.
        self.refusing = False

    def take(self) -> bool:
        """Spend one token; False (and nothing spent) when there is none."""
        now = self.clock.seconds()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait(self) -> int:
        """Whole seconds (at least 1) until a token is there: a ``Retry-After``."""
        return max(1, math.ceil((1.0 - self.tokens) / self.rate))
