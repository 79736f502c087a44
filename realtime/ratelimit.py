"""A token bucket on the reactor's clock: ``--rate-limit`` (a socket's inbound messages)
and ``--handshake-rate`` (a process's WebSocket handshakes) both spend from one."""

from __future__ import annotations

import math
from typing import Any


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    __slots__ = ("burst", "clock", "last", "rate", "refused", "tokens", "warned_at")

    def __init__(self, rate: float, burst: float, clock: Any) -> None:
        self.rate = rate
        self.burst = float(burst or max(1.0, rate))
        self.clock = clock
        self.tokens = self.burst
        self.last = clock.seconds()
        #: For the owner's log: refusals not reported yet, and when it last reported.
        self.refused = 0
        self.warned_at = float("-inf")

    def take(self) -> bool:
        """Spend one token; False (and nothing spent) when there is none."""
        now = self.clock.seconds()
        # The reactor's clock is the wall clock: a step back (NTP) must not take tokens.
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait(self) -> int:
        """Whole seconds (at least 1) until a token is there: a ``Retry-After``."""
        return max(1, math.ceil((1.0 - self.tokens) / self.rate))
