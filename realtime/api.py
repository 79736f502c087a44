"""The publish API (``--api-key``): other services push messages into rooms over HTTP.

``POST /api/publish`` ``{"group": "lobby", "text": "..." | "json": {...} | "event": {...}}``
and ``POST /api/broadcast`` ``{"groups": ["a", "b"], ...}``, authenticated with
``Authorization: Bearer <key>``. ``text`` and ``json`` are written to every member as one
prepared frame (``broadcast()``); ``event`` is a ``group_send`` to the members' typed
handlers (``{"type": "chat.message", ...}``); ``"exclude": [channel, ...]`` leaves those out
of either. ``POST /api/presence`` ``{"group": "lobby"}`` answers ``{"group": ..., "count":
N, "members": {channel: info}}``: the members added with ``group_add(..., presence=info)``,
in every process. ``POST /api/history`` ``{"group": "room.a", "since": {"epoch", "offset"},
"limit": N}`` (both optional) answers a history group's ``group_history`` (404 for a group
no ``--history`` rule matches); an ``event`` published to such a group answers its
``positions`` too. ``POST /api/disconnect`` ``{"group": "user.42", "code": 4003, "reason":
"..."}`` (both optional: 1000, none) closes every member of the group in every process
(``group_close``). ``POST /api/send`` ``{"channel": "specific.a1!b2", "event": {"type":
...}}`` is Channels' ``channel_layer.send`` from outside: one typed event to one channel
(a connection's ``channel_name``, in whatever process holds it; ``realtime.socketio.Emitter``
reaches a sid this way); 429 with ``Retry-After`` when that channel's queue is full
(``ChannelFull``: its receiver is behind, a retry may pass). An ``event``'s type may not
be the ASGI protocol's (``websocket.*``, ``http.*``, ``lifespan.*``: it would call the
consumer's own ``websocket_receive``, ``websocket_disconnect``...). Answers: 200 ``{"ok":
true}``; 400 with a JSON ``error`` for a bad body;
401 without the key; 405 for a method other than POST; 413 past ``--api-body-limit``; 503
while the layer is unavailable. Without a configured key these paths are not served (404).

Centrifugo's server API shares these paths (and adds its own, ``CENTRIFUGO_PATHS``:
``/api/presence_stats``, ``/api/subscribe``, ``/api/unsubscribe``, ``/api/refresh``,
``/api/history_remove``, ``/api/info``, ``/api/channels``, ``/api/batch``): a request
whose key comes as ``X-API-Key: <key>`` or
``Authorization: apikey <key>`` (or to a path only Centrifugo has) is answered by
``realtime.pubsub_api`` instead, in Centrifugo's form, for ``realtime.pubsub``'s channels.
``/api/send`` is realtime's only (``REALTIME_PATHS``: Centrifugo's API has no ``send``), so
it always takes ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.logger import Logger

log = Logger()

PUBLISH = b"/api/publish"
BROADCAST = b"/api/broadcast"
PRESENCE = b"/api/presence"
HISTORY = b"/api/history"
DISCONNECT = b"/api/disconnect"
SEND = b"/api/send"
#: The paths only realtime's API has: never in Centrifugo's form, whatever the key's header.
REALTIME_PATHS = (SEND,)
#: The paths only Centrifugo's server API has (``realtime.pubsub_api``); the others are
#: both APIs', told apart by how the key is given.
CENTRIFUGO_PATHS = (b"/api/presence_stats", b"/api/subscribe", b"/api/unsubscribe",
                    b"/api/refresh", b"/api/history_remove", b"/api/batch", b"/api/info",
                    b"/api/channels")
PATHS = (PUBLISH, BROADCAST, PRESENCE, HISTORY, DISCONNECT, SEND, *CENTRIFUGO_PATHS)


class BadBody(ValueError):
    pass


def authorized(request: Any, keys: tuple[str, ...]) -> bool:
    header = request.getHeader(b"authorization") or b""
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        return False
    return key_matches(token.strip(), keys)


def key_matches(given: bytes, keys: tuple[str, ...]) -> bool:
    """Whether ``given`` is one of ``keys``: compared against every key (constant time
    each) so timing says nothing of which."""
    results = [hmac.compare_digest(given, key.encode()) for key in keys]
    return any(results)


def parse(path: bytes, body: bytes) -> tuple[list[str], str, Any]:
    """(groups, kind, payload) of a request body (a publish's payload: the message and the
    channels to leave out, or None; a send's: the channel, as its one "group", and the
    event); ``BadBody`` says what is wrong."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadBody("the body is not JSON") from None
    if not isinstance(document, dict):
        raise BadBody("the body must be a JSON object")
    if path == SEND:
        return _send_query(document)
    if path in (PUBLISH, PRESENCE, HISTORY, DISCONNECT):
        group = document.get("group")
        if not isinstance(group, str):
            raise BadBody("'group' (a string) is required")
        groups = [group]
        if path == DISCONNECT:
            _check_groups(groups)
            return groups, "disconnect", _close_query(document)
        if path == PRESENCE:
            _check_groups(groups)
            return groups, "presence", None
        if path == HISTORY:
            _check_groups(groups)
            return groups, "history", _history_query(document)
    else:
        groups = document.get("groups")  # type: ignore[assignment]
        if not isinstance(groups, list) or not groups or not all(
            isinstance(g, str) for g in groups
        ):
            raise BadBody("'groups' (a non-empty list of strings) is required")
    kinds = [k for k in ("text", "json", "event") if k in document]
    if len(kinds) != 1:
        raise BadBody("give exactly one of 'text', 'json' or 'event'")
    kind = kinds[0]
    payload = document[kind]
    if kind == "text" and not isinstance(payload, str):
        raise BadBody("'text' must be a string")
    if kind == "event" and not (isinstance(payload, dict) and isinstance(payload.get("type"), str)):
        raise BadBody("'event' must be an object with a 'type' string")
    if kind == "event":
        _check_event_type(payload["type"])
    _check_groups(groups)
    exclude = _exclude(document["exclude"]) if "exclude" in document else None
    return groups, kind, (payload, exclude)


def _send_query(document: dict[str, Any]) -> tuple[list[str], str, Any]:
    from realtime.layers.base import check_name

    channel, event = document.get("channel"), document.get("event")
    if not isinstance(channel, str):
        raise BadBody("'channel' (a string) is required")
    try:
        check_name(channel, "channel")
    except TypeError as exc:
        raise BadBody(str(exc)) from None
    if not (isinstance(event, dict) and isinstance(event.get("type"), str) and event["type"]):
        raise BadBody("'event' must be an object with a non-empty 'type' string")
    _check_event_type(event["type"])
    return [channel], "send", event


#: The ASGI protocol's message types: a layer event of one would call a consumer's own
#: ``websocket_receive``/``websocket_disconnect``... (its client's message, its end).
ASGI_TYPES = ("websocket.", "http.", "lifespan.")


def _check_event_type(kind: str) -> None:
    """An event's type names the consumer method it calls (``chat.message`` ->
    ``chat_message``): not one of the ASGI protocol's, which only the server may say."""
    if kind.startswith(ASGI_TYPES):
        raise BadBody(f"'event' type {kind!r} is the ASGI protocol's (the server's own "
                      "messages about a connection), not an application event")


def _exclude(value: Any) -> tuple[str, ...] | None:
    from realtime.layers.base import check_exclude

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadBody("'exclude' must be a list of channel names")
    try:
        return check_exclude(value)
    except TypeError as exc:
        raise BadBody(f"'exclude': {exc}") from None


def _history_query(document: dict[str, Any]) -> tuple[Any, Any]:
    from realtime.layers.history import check_limit, check_since

    since, limit = document.get("since"), document.get("limit")
    try:
        check_since(since)
        check_limit(limit)
    except TypeError as exc:
        raise BadBody(str(exc)) from None
    return since, limit


def _close_query(document: dict[str, Any]) -> tuple[Any, Any]:
    from realtime.layers.base import check_close

    code, reason = document.get("code", 1000), document.get("reason")
    try:
        check_close(code, reason)
    except ValueError as exc:
        raise BadBody(str(exc)) from None
    return code, reason


def _check_groups(groups: list[str]) -> None:
    from realtime.layers.base import check_name

    for group in groups:
        try:
            check_name(group, "group")
        except TypeError as exc:
            raise BadBody(str(exc)) from None


def publish(layer: Any, groups: list[str], kind: str, payload: Any,
            exclude: tuple[str, ...] | None = None) -> Deferred[Any]:
    if kind == "event" and exclude:
        # Every group asked first: a refusal (a history group) answers 400 having sent
        # nothing, not after the groups before it had the event.
        try:
            for group in groups:
                layer.check_group_send_exclude(group)
        except (TypeError, ValueError) as exc:
            return fail(exc)
    calls = []
    for group in groups:
        if kind == "event":
            calls.append(layer.group_send(group, payload, exclude=exclude))
        else:
            text = payload if kind == "text" else json.dumps(payload)
            calls.append(layer.broadcast(group, text=text, exclude=exclude))
    return gatherResults(calls, consumeErrors=True)


def respond(request: Any, status: int, document: dict[str, Any],
            headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """Answer ``request`` with a JSON document (nothing once it is over)."""
    body = json.dumps(document).encode() + b"\n"
    if request.finished or request._disconnected:
        return
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", str(len(body)).encode())
    request.setHeader(b"cache-control", b"no-store")
    for name, value in headers:
        request.setHeader(name, value)
    request.write(body)
    request.finish()


def handle(site: Any, request: Any) -> None:
    """Answer one API request (the site routes ``PATHS`` here when a key is set): in
    Centrifugo's form (``realtime.pubsub_api``) when the key comes as ``X-API-Key`` or
    ``Authorization: apikey``, or the path is one only Centrifugo's API has."""
    from realtime import pubsub_api

    if pubsub_api.centrifugo_form(request):
        pubsub_api.handle(site, request)
        return

    def answer(status: int, document: dict[str, Any], headers: tuple[tuple[bytes, bytes], ...] = ()
               ) -> None:
        respond(request, status, document, headers)

    def unavailable() -> None:
        answer(503, {"error": "the channel layer is unavailable"}, ((b"retry-after", b"1"),))

    def layer_failed(failure: Any, what: str) -> None:
        """503 while the layer is unavailable (a warning), else 500 (the traceback)."""
        from realtime.layers.base import LayerUnavailable

        if failure.check(LayerUnavailable):
            log.warn("{what} of {group}: {error}", what=what, group=groups[0],
                     error=failure.getErrorMessage())
            unavailable()
            return
        log.failure("{what} of {group} failed", failure, what=what, group=groups[0])
        answer(500, {"error": f"{what} failed"})

    if request.method != b"POST":
        answer(405, {"error": "use POST"}, ((b"allow", b"POST"),))
        return
    if not authorized(request, site.config.api_keys):
        answer(401, {"error": "a valid 'Authorization: Bearer <key>' is required"},
               ((b"www-authenticate", b'Bearer realm="realtime-api"'),))
        return
    body = request.content.read() if request.content is not None else b""
    if len(body) > site.config.api_body_limit:
        answer(413, {"error": f"the body is over {site.config.api_body_limit} bytes"})
        return
    try:
        groups, kind, payload = parse(request.path, body)
    except BadBody as exc:
        answer(400, {"error": str(exc)})
        return
    if kind == "history":
        since, limit = payload
        history = site.layer.group_history(groups[0], since=since, limit=limit)

        def kept(result: dict[str, Any]) -> None:
            try:
                answer(200, {"group": groups[0], **result})
            except (TypeError, ValueError):  # bytes in a message: JSON cannot carry it
                answer(500, {"error": "a kept message is not JSON (bytes?)"})

        def failed_history(failure: Any) -> None:
            from realtime.layers.base import LayerUnavailable

            if failure.check(LayerUnavailable):
                unavailable()
            elif failure.check(ValueError):
                answer(404, {"error": failure.getErrorMessage()})
            else:
                log.failure("history of {group} failed", failure, group=groups[0])
                answer(500, {"error": "history failed"})

        history.addCallback(kept).addErrback(failed_history)
        return
    if kind == "disconnect":
        code, reason = payload

        def closed(_: Any) -> None:
            answer(200, {"ok": True, "group": groups[0]})

        site.layer.group_close(groups[0], code, reason).addCallbacks(
            closed, layer_failed, errbackArgs=("disconnect",))
        return
    if kind == "send":
        from realtime.exceptions import ChannelFull

        def sent(_: Any) -> None:
            answer(200, {"ok": True, "channel": groups[0]})

        def send_failed(failure: Any) -> None:
            if failure.check(ChannelFull):
                answer(429, {"error": f"channel {groups[0]!r} is full (its receiver is "
                                      "behind)"}, ((b"retry-after", b"1"),))
            elif failure.check(TypeError):  # e.g. an int past 64 bits for msgpack
                answer(400, {"error": failure.getErrorMessage()})
            else:
                layer_failed(failure, "send")

        site.layer.send(groups[0], payload).addCallbacks(sent, send_failed)
        return
    if kind == "presence":
        d = site.layer.group_presence(groups[0])

        def present(members: dict[str, Any]) -> None:
            answer(200, {"group": groups[0], "count": len(members), "members": members})

        d.addCallback(present).addErrback(layer_failed, "presence")
        return
    message, exclude = payload
    d = publish(site.layer, groups, kind, message, exclude)

    def done(results: list[Any]) -> None:
        document: dict[str, Any] = {"ok": True, "groups": len(groups)}
        positions = {g: p for g, p in zip(groups, results, strict=True) if p is not None}
        if positions:  # events to history groups
            document["positions"] = positions
        answer(200, document)

    def failed(failure: Any) -> None:
        cause = getattr(failure.value, "subFailure", failure)  # gatherResults' FirstError
        if cause.check(ValueError, TypeError):  # e.g. exclude in a history group
            answer(400, {"error": cause.getErrorMessage()})
            return
        log.failure("publishing to {groups} failed", failure, groups=groups)
        unavailable()

    d.addCallbacks(done, failed)
