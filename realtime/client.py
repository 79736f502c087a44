"""Publish into rooms from any Python code, with the standard library only (a Django view,
a Celery task, a cron script): no asyncio, no Twisted.

    from realtime.client import publish
    publish("http://127.0.0.1:8000", API_KEY, "lobby", text="deploy finished")
    publish(url, key, "lobby", json={"kind": "alert"})
    publish(url, key, "lobby", event={"type": "chat.message", "message": "hi"})
    broadcast(url, key, ["a", "b"], text="to two rooms")
    presence(url, key, "lobby")  # {"group": "lobby", "count": 2, "members": {...}}
    history(url, key, "room.a", limit=50)  # a --history group's last messages
    send(url, key, "specific.a1!b2", {"type": "chat.message", "message": "hi"})  # one channel

``url`` is where the server API is: the server's address, or with ``--internal-port``
that listener's (``http://127.0.0.1:9000``), the main port answering its paths 404 then.
"""

from __future__ import annotations

import json as jsonlib
import urllib.error
import urllib.request
from typing import Any

_MISSING = object()


class PublishError(Exception):
    """The server refused the publish; ``status`` and the server's ``error`` text."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(f"{status}: {error}")
        self.status = status
        self.error = error


def _body(text: str | None, json: Any, event: dict[str, Any] | None,
          exclude: str | list[str] | None = None) -> dict[str, Any]:
    given = {k: v for k, v in (("text", text), ("json", json), ("event", event))
             if v is not None and v is not _MISSING}
    if len(given) != 1:
        raise ValueError("give exactly one of text=, json= or event=")
    if exclude is not None:
        given["exclude"] = [exclude] if isinstance(exclude, str) else list(exclude)
    return given


def _post(url: str, key: str, path: str, document: dict[str, Any], timeout: float) -> Any:
    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=jsonlib.dumps(document).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return jsonlib.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            error = jsonlib.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            error = str(exc.reason)
        raise PublishError(exc.code, error) from None


def publish(
    url: str, key: str, group: str, *, text: str | None = None, json: Any = None,
    event: dict[str, Any] | None = None, exclude: str | list[str] | None = None,
    timeout: float = 5.0,
) -> Any:
    """POST /api/publish: ``text`` (a string), ``json`` (any JSON value, sent as text) or
    ``event`` (a typed event for ``group_send``) to every member of ``group``; ``exclude``:
    the channel names left out, such as the sender's (for an ``event``, not in a history
    group: a 400)."""
    return _post(url, key, "/api/publish",
                 {"group": group, **_body(text, json, event, exclude)}, timeout)


def broadcast(
    url: str, key: str, groups: list[str], *, text: str | None = None, json: Any = None,
    event: dict[str, Any] | None = None, exclude: str | list[str] | None = None,
    timeout: float = 5.0,
) -> Any:
    """POST /api/broadcast: the same to several groups."""
    return _post(url, key, "/api/broadcast", {"groups": list(groups),
                                              **_body(text, json, event, exclude)}, timeout)


def presence(url: str, key: str, group: str, *, timeout: float = 10.0) -> Any:
    """POST /api/presence: who is in ``group`` (members added with ``presence=``), in every
    process: ``{"group", "count", "members": {channel: info}}``."""
    return _post(url, key, "/api/presence", {"group": group}, timeout)


def history(url: str, key: str, group: str, *, since: dict[str, Any] | None = None,
            limit: int | None = None, timeout: float = 10.0) -> Any:
    """POST /api/history: what a ``--history`` group keeps, ``{"group", "epoch", "offset",
    "recovered", "messages"}``: the newest ``limit`` (or all), or with ``since`` (a
    position) every message after it (``recovered`` True) or none (False: too old)."""
    document: dict[str, Any] = {"group": group}
    if since is not None:
        document["since"] = since
    if limit is not None:
        document["limit"] = limit
    return _post(url, key, "/api/history", document, timeout)


def disconnect(url: str, key: str, group: str, *, code: int = 1000,
               reason: str | None = None, timeout: float = 5.0) -> Any:
    """POST /api/disconnect: close every member of ``group`` in every process (a user's
    sockets when they join ``"user." + id``): WebSockets with ``code`` (1000 or
    3000-4999) and ``reason``, after what was sent to them before."""
    document: dict[str, Any] = {"group": group, "code": code}
    if reason is not None:
        document["reason"] = reason
    return _post(url, key, "/api/disconnect", document, timeout)


def send(url: str, key: str, channel: str, event: dict[str, Any], *,
         timeout: float = 5.0) -> Any:
    """POST /api/send: ``event`` (a typed event, ``{"type": "chat.message", ...}``) to one
    channel, as ``channel_layer.send`` does (a consumer's ``channel_name``, in whatever
    process holds it); a ``PublishError`` with status 429 when that channel's queue is
    full."""
    return _post(url, key, "/api/send", {"channel": channel, "event": event}, timeout)
