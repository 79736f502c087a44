"""``--jwks-url``: verification keys fetched from an identity provider's JWKS endpoint.

Auth0, Keycloak, Cognito, Okta and the like publish their signing keys at a URL and rotate
them on their own schedule; Centrifugo reads such an endpoint, Channels has no token auth at
all. The keys are fetched once at start-up (a failure stops start-up with one line, as a bad
``--jwks-file`` does), again every ``--jwks-refresh`` seconds (so a key the provider removed
stops verifying), at SIGHUP, and when a token names a key id nobody knows (a new key: the
provider rotated; at most once per ``MISS_INTERVAL`` seconds, so garbage ``kid``s cannot make
us hammer the provider). A failed refresh is one warning and the keys in use stay.

Fetches run in the reactor's thread pool with the standard library's ``urllib`` (the
system's CA store for https), bounded in time (``TIMEOUT``) and size (``MAX_BYTES``).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from realtime.settings import ConfigurationError, settings

log = Logger(namespace="realtime.jwks")

TIMEOUT = 10.0
MAX_BYTES = 1024 * 1024
#: Least seconds between two refreshes asked for by an unknown ``kid``.
MISS_INTERVAL = 10.0


def fetch(url: str, algorithms: Sequence[str] | None = None) -> list[Any]:
    """The keys at ``url`` (blocking); ``ConfigurationError`` saying what went wrong."""
    from realtime.tokens import keys_from_jwks

    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   "User-Agent": "realtime-jwks"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            body = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise ConfigurationError(f"the JWKS URL answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConfigurationError(f"cannot fetch the JWKS URL: {reason}") from None
    if len(body) > MAX_BYTES:
        raise ConfigurationError(f"the JWKS URL's answer is over {MAX_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError("the JWKS URL's answer is not UTF-8 JSON") from None
    try:
        return keys_from_jwks(text, algorithms)
    except ConfigurationError as exc:
        raise ConfigurationError(str(exc).replace("the JWKS file", "the JWKS URL's answer")
                                 ) from None


class JwksUrl:
    """The keys of one JWKS URL, merged with the static keys (``--jwt-key``, the files)
    into ``settings.jwt_keys``; ``settings.jwt_key_source`` points here, for the tokens'
    unknown-``kid`` refresh."""

    def __init__(self, url: str, algorithms: Sequence[str] | None, static: Sequence[Any],
                 keys: Sequence[Any], interval: float, clock: Any = None) -> None:
        self.url = url
        self.algorithms = list(algorithms) if algorithms else None
        self.static = list(static)
        self.keys = list(keys)
        self.interval = interval
        self.clock = clock
        self._waiters: list[Deferred[bool]] = []
        self._last_miss = float("-inf")
        self._loop: Any = None

    def publish(self) -> None:
        """What verification uses from now on: the static keys, then the URL's."""
        settings.jwt_keys = self.static + self.keys

    def start(self, reactor: Any) -> None:
        """Refresh every ``interval`` seconds (0: only at SIGHUP and unknown key ids)."""
        from twisted.internet.task import LoopingCall

        self.clock = reactor
        if self.interval > 0:
            self._loop = LoopingCall(self.refresh)
            self._loop.clock = reactor
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def refresh(self) -> Deferred[bool]:
        """Fetch again (one fetch at a time: callers during a fetch wait for it); fires True
        when new keys are in use, False when the fetch failed (logged; old keys stay)."""
        from twisted.internet.threads import deferToThreadPool

        waiter: Deferred[bool] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            reactor = self.clock
            fetching = deferToThreadPool(reactor, reactor.getThreadPool(), fetch, self.url,
                                         self.algorithms)
            fetching.addCallbacks(self._fetched, self._failed).addCallback(self._wake)
        return waiter

    def _fetched(self, keys: list[Any]) -> bool:
        self.keys = keys
        self.publish()
        log.info("JWKS {url}: {count} key(s)", url=self.url, count=len(keys))
        return True

    def _failed(self, failure: Any) -> bool:
        error = failure.value
        message = str(error) if isinstance(error, ConfigurationError) else repr(error)
        log.warn("JWKS {url}: not refreshed, the keys in use stay: {message}", url=self.url,
                 message=message)
        return False

    def _wake(self, ok: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(ok)

    def unknown_kid(self) -> Deferred[bool] | None:
        """A token named a key id we lack: refresh, unless one was asked for less than
        ``MISS_INTERVAL`` seconds ago (None then: nothing to wait for)."""
        if self.clock is None:
            return None
        now = self.clock.seconds()
        if not self._waiters and now - self._last_miss < MISS_INTERVAL:
            return None
        self._last_miss = now
        return self.refresh()
