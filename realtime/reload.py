"""SIGHUP: reopen the access log and re-read the key files, without a restart.

Keys rotate (an identity provider publishes a new signing key, an API key leaks); a restart
to pick them up would drop every socket. On SIGHUP (systemd's ``ExecReload=kill -HUP``,
or ``--workers``' supervisor passing it on) the serving process re-reads ``--jwt-key-file``,
``--jwks-file`` and ``--api-key-file``: new handshakes and token refreshes verify against
the new keys, new API calls are checked against the new API keys, and open sockets stay.
A file that cannot be read or holds no valid key is one error line naming the option, and
the keys in use stay: a bad deploy never locks everyone out nor takes the server down.
What comes from the command line itself (``--jwt-key``, ``--api-key``) is kept as it is,
and a reload can neither turn the API on nor off. The session secret is not re-read:
rotate it with ``--old-secret-keys`` and a (rolling) restart.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Sequence
from typing import Any

from twisted.logger import Logger

from realtime.config import StartupError

log = Logger(namespace="realtime.reload")

Action = Callable[[], None]


def on_sighup(reactor: Any, actions: Sequence[Action]) -> None:
    """Run ``actions`` on the reactor thread at each SIGHUP, in order; one that fails is
    logged and does not keep the others from running. Installed even with nothing to do,
    so that a reload sent to a server without key files never terminates it (SIGHUP's
    default action)."""

    def run() -> None:
        if not actions:
            log.info("SIGHUP: nothing to reload (no --access-log file nor key files)")
        for action in actions:
            try:
                action()
            except Exception:
                log.failure("SIGHUP: {action} failed", action=getattr(action, "__name__", action))

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(run)

    signal.signal(signal.SIGHUP, handler)


class KeyFiles:
    """Re-reads the ``--jwt-key-file``/``--jwks-file``/``--api-key-file`` of ``options``
    (``realtime.tap.Options``) into the settings and the ``sites``' configs."""

    __name__ = "key reload"

    def __init__(self, options: Any, sites: Sequence[Any]) -> None:
        self.options = options
        self.sites = sites

    @property
    def wanted(self) -> bool:
        """Whether there is a file to re-read."""
        return any(self.options[name] for name in ("jwt-key-file", "jwks-file", "api-key-file"))

    def __call__(self) -> None:
        from realtime.settings import settings

        options = self.options
        try:
            jwt_keys = options._jwt_keys() if self._jwt_files() else None
            api_keys = options._api_keys() if options["api-key-file"] else None
            if api_keys == ():
                raise StartupError(f"--api-key-file {options['api-key-file']}: it holds no "
                                   "key (a reload does not turn the API off)")
        except StartupError as exc:
            message = str(exc.code).removeprefix("realtime: error: ")
            log.error("SIGHUP: keys not reloaded, the ones in use stay: {message}",
                      message=message)
            return
        done = []
        if jwt_keys is not None:
            source = settings.jwt_key_source
            if source is not None:  # --jwks-url's keys stay with the files' new ones
                source.static = jwt_keys
                source.publish()
            else:  # a new list: a verification in progress keeps its own
                settings.jwt_keys = jwt_keys
            done.append(f"{len(jwt_keys)} JWT key(s)")
        if api_keys is not None:
            for site in self.sites:
                site.config = dataclasses.replace(site.config, api_keys=api_keys)
            options.config = dataclasses.replace(options.config, api_keys=api_keys)
            done.append(f"{len(api_keys)} API key(s)")
        log.info("SIGHUP: reloaded {what}", what=" and ".join(done))

    def _jwt_files(self) -> bool:
        return bool(self.options["jwt-key-file"] or self.options["jwks-file"])
