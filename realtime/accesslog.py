"""The access log (``--access-log PATH|-``, ``--log-format text|json``): one line per HTTP
request and per WebSocket connect, refusal and close, through twisted.logger.

Secrets never reach it: query parameters that carry credentials (``token``,
``access_token``, ``jwt``, ``api_key``, ``key``, ``password``, ``secret``, ``auth``) are
replaced by ``[redacted]``, and no request header but the User-Agent is written. SIGHUP
reopens the file (for logrotate).
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any
from urllib.parse import parse_qsl, quote

from twisted.logger import ILogObserver, Logger, LogPublisher
from zope.interface import implementer

SENSITIVE = frozenset({"token", "access_token", "jwt", "api_key", "apikey", "key", "password",
                       "secret", "auth", "authorization", "session", "sessionid",
                       # Centrifugo's unidirectional connect command (realtime.pubsub): its token
                       "cf_connect"})


def redact_query(query: bytes) -> str:
    """The query string with credential-bearing values replaced."""
    if not query:
        return ""
    try:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    except ValueError:
        return "[unparsable]"
    return "&".join(
        f"{quote(k, safe='')}={'[redacted]' if k.lower() in SENSITIVE else quote(v, safe='')}"
        for k, v in pairs
    )


def target(raw_path: bytes, query: bytes) -> str:
    path = raw_path.decode("latin-1", "replace")
    redacted = redact_query(query)
    return f"{path}?{redacted}" if redacted else path


def _clf_time(when: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(when))


def _text(event: dict[str, Any]) -> str:
    client = event.get("client") or "-"
    ua = (event.get("user_agent") or "-").replace('"', "'")
    duration = f"{event['duration']:.3f}s" if event.get("duration") is not None else "-"
    kind = event["kind"]
    if kind == "http":
        request = f'{event["method"]} {event["target"]} {event["protocol"]}'
        size = event.get("bytes")
        return (f'{client} - - [{_clf_time(event["time"])}] "{request}" {event["status"]} '
                f'{size if size is not None else "-"} {duration} "{ua}"')
    word = {"ws_connect": "WSCONNECT", "ws_reject": "WSREJECT",
            "ws_disconnect": "WSDISCONNECT"}[kind]
    status = event.get("status", event.get("code", "-"))
    conn = f" conn={event['conn']}" if event.get("conn") is not None else ""
    return (f'{client} - - [{_clf_time(event["time"])}] "{word} {event["target"]}" {status} - '
            f'{duration} "{ua}"{conn}')


@implementer(ILogObserver)
class _FileObserver:
    def __init__(self, access: AccessLog) -> None:
        self.access = access

    def __call__(self, event: dict[str, Any]) -> None:
        record = event.get("access")
        if record is None:
            return
        if self.access.format == "json":
            line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                      time.gmtime(record["time"])),
                               **{k: v for k, v in record.items() if k != "time"}})
        else:
            line = _text(record)
        stream = self.access.stream
        if stream is not None:
            stream.write(line + "\n")
            stream.flush()


class AccessLog:
    """Writes access records to a file (or stdout for ``-``)."""

    def __init__(self, path: str, format: str = "text") -> None:
        if format not in ("text", "json"):
            raise ValueError("format must be text or json")
        self.path = path
        self.format = format
        self.stream: IO[str] | None = None
        self.open()
        observer: Any = _FileObserver(self)
        publisher: Any = LogPublisher(observer)
        self.publisher = publisher
        self.log = Logger(namespace="realtime.access", observer=publisher)

    def open(self) -> None:
        if self.path == "-":
            self.stream = sys.stdout
        else:
            self.stream = open(self.path, "a", encoding="utf-8", buffering=1)

    def reopen(self) -> None:
        """After logrotate moved the file (SIGHUP): continue in a new one."""
        if self.path == "-":
            return
        old = self.stream
        self.open()
        if old is not None:
            old.close()

    def close(self) -> None:
        if self.stream is not None and self.path != "-":
            self.stream.close()
        self.stream = None

    def emit(self, **record: Any) -> None:
        record.setdefault("time", time.time())
        self.log.info("{access[kind]}", access=record)
