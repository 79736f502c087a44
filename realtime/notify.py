"""systemd's notify protocol (``Type=notify``), with the standard library only.

systemd passes ``NOTIFY_SOCKET`` (a unix datagram socket: a path, or ``@name`` for the
abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``).
The service sends ``READY=1`` once every listener is up, ``STOPPING=1`` when the drain
starts and ``WATCHDOG=1`` every half of ``WATCHDOG_USEC`` while the reactor turns. Without
``NOTIFY_SOCKET`` every call is a no-op, so nothing changes outside systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger

log = Logger()


def notify_address(env: Mapping[str, str] | None = None) -> str | None:
    """The socket address from ``NOTIFY_SOCKET``: a path, or ``\\0name`` for ``@name``."""
    value = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # systemd also knows vsock:...; not used here


def sd_notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one datagram (``"READY=1"``, ``"STOPPING=1"``, ...); False when there is no
    ``NOTIFY_SOCKET`` or the send failed (logged, never raised: notify is best effort)."""
    address = notify_address(env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warn("sd_notify {state!r} to {address!r} failed: {error}",
                 state=state, address=address.replace("\0", "@"), error=exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None when the
    watchdog is off or meant for another process (``WATCHDOG_PID``)."""
    environ = os.environ if env is None else env
    if notify_address(environ) is None:
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


class Notifier:
    """What the service tells systemd; the watchdog runs on the injected reactor."""

    def __init__(self, reactor: Any, env: Mapping[str, str] | None = None) -> None:
        self.reactor = reactor
        self.env = dict(os.environ if env is None else env)
        self.enabled = notify_address(self.env) is not None
        self._watchdog: Any = None

    def send(self, state: str) -> bool:
        return sd_notify(state, self.env) if self.enabled else False

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def start_watchdog(self) -> None:
        interval = watchdog_interval(self.env)
        if interval is None or self._watchdog is not None:
            return
        from twisted.internet.task import LoopingCall

        self._watchdog = LoopingCall(self.send, "WATCHDOG=1")
        self._watchdog.clock = self.reactor
        self._watchdog.start(interval, now=True)
        log.info("systemd watchdog: WATCHDOG=1 every {interval:.3g} s", interval=interval)

    def stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
