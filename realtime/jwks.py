"""``--jwks-url``: verification keys fetched from an identity provider's JWKS endpoint.

Auth0, Keycloak, Cognito, Okta and the like publish their signing keys at a URL and rotate
them on their own schedule; Centrifugo reads such an endpoint, Channels has no token auth at
all. The keys are fetched once at start-up (a failure stops start-up with one line, as a bad
``--jwks-file`` does), again every ``--jwks-refresh`` seconds (so a key the provider removed
stops verifying), at SIGHUP, and when a token names a key id nobody knows (a new key: the
provider rotated; at most once per ``MISS_INTERVAL`` seconds, so garbage ``kid``s cannot make
us hammer the provider). A failed refresh is one warning and the keys in use stay.

Only signing keys of asymmetric types are taken (an HMAC secret at a public URL would let
anyone sign; an encryption key is skipped, not fatal). A fetch is bounded in time as a whole
(``TIMEOUT``) and in size (``MAX_BYTES``), may not be redirected to a URL the option itself
would refuse, and runs on a daemon thread of its own (the standard library's ``urllib``, the
system's CA store), so that a provider that hangs never holds a shutdown.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from realtime.settings import ConfigurationError, settings

log = Logger(namespace="realtime.jwks")

TIMEOUT = 10.0
MAX_BYTES = 1024 * 1024
#: Least seconds between two refreshes asked for by an unknown ``kid``.
MISS_INTERVAL = 10.0
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def check_url(url: str) -> str | None:
    """Why ``url`` may not serve keys (None: it may): https, or http to a loopback address
    only, since keys fetched in clear can be forged."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return f"not a URL: {url!r}"
    if not host or not (parts.scheme == "https"
                        or (parts.scheme == "http" and host in _LOOPBACK)):
        return ("must be https://... (http:// only to a loopback address: keys fetched in "
                f"clear can be forged), got {url!r}")
    return None


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect may not lead where the option could not: https to http, or to file://."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> Any:
        why = check_url(newurl)
        if why is not None:
            raise urllib.error.URLError(f"redirected to a URL that {why.split(',')[0]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_CheckedRedirects)


def fetch(url: str, algorithms: Sequence[str] | None = None,
          skipped: list[str] | None = None) -> list[Any]:
    """The signing keys at ``url`` (blocking, at most ``TIMEOUT`` seconds in all);
    ``ConfigurationError`` saying what went wrong. Keys that cannot verify go to
    ``skipped`` with the reason."""
    from realtime.tokens import keys_from_jwks

    deadline = time.monotonic() + TIMEOUT
    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   "User-Agent": "realtime-jwks"})
    try:
        with _opener.open(request, timeout=TIMEOUT) as response:
            parts: list[bytes] = []
            size = 0
            while size <= MAX_BYTES:
                if time.monotonic() > deadline:  # a server that drips its answer
                    raise ConfigurationError(f"the JWKS URL took over {TIMEOUT:g} s")
                part = response.read1(65536)
                if not part:
                    break
                parts.append(part)
                size += len(part)
            body = b"".join(parts)
    except urllib.error.HTTPError as exc:
        raise ConfigurationError(f"the JWKS URL answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConfigurationError(f"cannot fetch the JWKS URL: {reason}") from None
    if len(body) > MAX_BYTES:
        raise ConfigurationError(f"the JWKS URL's answer is over {MAX_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError("the JWKS URL's answer is not UTF-8 JSON") from None
    try:
        return keys_from_jwks(text, algorithms, remote=True, skipped=skipped)
    except ConfigurationError as exc:
        raise ConfigurationError(str(exc).replace("the JWKS file", "the JWKS URL's answer")
                                 ) from None


class JwksUrl:
    """The keys of one JWKS URL, merged with the static keys (``--jwt-key``, the files)
    into ``settings.jwt_keys``; ``settings.jwt_key_source`` points here, for the tokens'
    unknown-``kid`` refresh. Used on the reactor thread only (``unknown_kid`` sends a
    call from another thread there)."""

    def __init__(self, url: str, algorithms: Sequence[str] | None, static: Sequence[Any],
                 keys: Sequence[Any], interval: float, skipped: Sequence[str] = (),
                 missing: bool = False) -> None:
        self.url = url
        self.algorithms = list(algorithms) if algorithms else None
        self.static = list(static)
        self.keys = list(keys)
        self.interval = interval
        self.reactor: Any = None
        self._waiters: list[Deferred[bool]] = []
        self._fetching = False
        self._last_miss = float("-inf")
        self._loop: Any = None
        self._skipped = list(skipped)
        #: The start-up fetch failed (a worker restarted while the provider was away):
        #: fetched every ``MISS_INTERVAL`` s from ``start()`` until one succeeds.
        self.missing = missing
        self._retry: Any = None
        for reason in self._skipped:
            log.info("JWKS {url}: skipped {reason}", url=url, reason=reason)

    def publish(self) -> None:
        """What verification uses from now on: the static keys, then the URL's."""
        settings.jwt_keys = self.static + self.keys

    def start(self, reactor: Any) -> None:
        """Refresh every ``interval`` seconds (0: only at SIGHUP and unknown key ids),
        until the reactor begins to shut down."""
        from twisted.internet.task import LoopingCall

        self.reactor = reactor
        if self.interval > 0:
            self._loop = LoopingCall(self.refresh)
            self._loop.clock = reactor
            self._loop.start(self.interval, now=False)
        if self.missing:
            self._retry = LoopingCall(self.refresh)
            self._retry.clock = reactor
            self._retry.start(MISS_INTERVAL, now=True)
        if self._loop is not None or self._retry is not None:
            reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def stop(self) -> None:
        for loop in (self._loop, self._retry):
            if loop is not None and loop.running:
                loop.stop()
        self._loop = self._retry = None

    def refresh(self) -> Deferred[bool]:
        """Fetch again (one fetch at a time: callers during a fetch wait for it); fires True
        when new keys are in use, False when the fetch failed (logged; old keys stay)."""
        waiter: Deferred[bool] = Deferred()
        self._waiters.append(waiter)
        if not self._fetching:
            self._fetching = True
            threading.Thread(target=self._fetch, name="realtime-jwks", daemon=True).start()
        return waiter

    def _fetch(self) -> None:
        """On the fetch's own thread: the outcome goes back to the reactor thread."""
        skipped: list[str] = []
        try:
            outcome: Any = fetch(self.url, self.algorithms, skipped)
        except ConfigurationError as exc:
            outcome = exc
        except Exception as exc:  # never lose the waiters
            outcome = ConfigurationError(repr(exc))
        self.reactor.callFromThread(self._fetched, outcome, skipped)

    def _fetched(self, outcome: Any, skipped: list[str]) -> None:
        self._fetching = False
        ok = not isinstance(outcome, ConfigurationError)
        if ok:
            self.keys = outcome
            self.publish()
            if self.missing:
                self.missing = False
                if self._retry is not None and self._retry.running:
                    self._retry.stop()
                self._retry = None
            log.info("JWKS {url}: {count} key(s)", url=self.url, count=len(outcome))
            if skipped != self._skipped:
                self._skipped = skipped
                for reason in skipped:
                    log.info("JWKS {url}: skipped {reason}", url=self.url, reason=reason)
        elif self.missing:
            log.warn("JWKS {url}: still no keys, tokens are refused: {message}",
                     url=self.url, message=str(outcome))
        else:
            log.warn("JWKS {url}: not refreshed, the keys in use stay: {message}",
                     url=self.url, message=str(outcome))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(ok)

    def unknown_kid(self) -> Deferred[bool] | None:
        """A token named a key id we lack: refresh, unless one was asked for less than
        ``MISS_INTERVAL`` seconds ago (None then: nothing to wait for). From a thread
        other than the reactor's, the refresh is only asked for (None)."""
        from twisted.python.threadable import isInIOThread

        reactor = self.reactor
        if reactor is None:
            return None
        if not isInIOThread():
            reactor.callFromThread(self.unknown_kid)
            return None
        now = reactor.seconds()
        if not self._fetching and now - self._last_miss < MISS_INTERVAL:
            return None
        self._last_miss = now
        return self.refresh()
