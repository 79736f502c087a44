"""Centrifugo's server API (HTTP, JSON) on realtime's ``/api/`` paths, for ``realtime.pubsub``.

Why: a team coming from Centrifugo publishes from its backend with Centrifugo's API client
(``cent``, gocent, phpcent, ...) or plain HTTP; pointed at realtime (``--api-key``), those
calls keep working unchanged.

``POST /api/<method>`` with the key in ``X-API-Key: KEY`` (or ``Authorization: apikey KEY``)
and a JSON object; the answer is 200 with ``{"result": {...}}`` or ``{"error": {"code",
"message"}}`` (Centrifugo's API error codes). A request is in this form when its key comes
that way, or its path is one only Centrifugo's API has (``realtime.api.CENTRIFUGO_PATHS``:
``presence_stats``, ``subscribe``, ``unsubscribe``, ``refresh``, ``history_remove``,
``info``, ``channels``, ``batch``); ``Authorization: Bearer KEY`` on the shared paths is
realtime's own API
(``realtime.api``). Methods: ``publish``, ``broadcast``, ``presence``, ``presence_stats``,
``history``, ``history_remove``, ``subscribe``, ``unsubscribe``, ``refresh``,
``disconnect``, ``info`` (every process serving ``realtime.pubsub`` is a node), ``channels``
(the channels with subscribers, over every process: a layer survey) and ``batch`` of them.

HTTP statuses, as Centrifugo's: 401 for a missing or wrong key, 400 for a body that is not a
JSON object or has a field of the wrong type, 405 for a method other than POST, 413 past
``--api-body-limit``; everything else is 200, errors in the body: 102 unknown channel (a
namespace no ``--namespace`` names), 107 bad request, 108 not available (no presence or
history in the namespace), 112 unrecoverable position (``history`` since a position it no
longer keeps), 100 internal (the channel layer failed; the message says so).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from realtime.api import CENTRIFUGO_PATHS, REALTIME_PATHS, key_matches, respond
from realtime.pubsub import (
    BAD_REQUEST,
    CHANNELS_SURVEY,
    CLOSE_FORCE_DISCONNECT,
    INFO_SURVEY,
    INTERNAL,
    LIMIT_EXCEEDED,
    METHOD_NOT_FOUND,
    NOT_AVAILABLE,
    UNAUTHORIZED,
    PubSubError,
    _namespace,
    channel_group,
    check_channel,
    compile_glob,
    from_bytes,
    publish,
    read_history,
    refuse_constant,
    user_group,
)

log = Logger(namespace="realtime.pubsub_api")

#: Commands one ``batch`` may carry (the body limit bounds them too).
MAX_BATCH = 1000
#: The longest close reason a WebSocket close frame carries (bytes).
MAX_REASON = 123


class BadBody(ValueError):
    """The body cannot be read as the method's request: HTTP 400 (as Centrifugo's)."""


def centrifugo_form(request: Any) -> bool:
    """Whether an API request is in Centrifugo's form (see the module's docstring; never
    on ``REALTIME_PATHS``, which Centrifugo's API does not have)."""
    if request.path in REALTIME_PATHS:
        return False
    if request.path in CENTRIFUGO_PATHS or request.getHeader(b"x-api-key") is not None:
        return True
    scheme = (request.getHeader(b"authorization") or b"").partition(b" ")[0]
    return bool(scheme.lower() == b"apikey")


def authorized(request: Any, keys: tuple[str, ...]) -> bool:
    """``X-API-Key: KEY``, ``Authorization: apikey KEY`` (or ``Bearer KEY``) against every
    configured key, in constant time each."""
    given: bytes | None = request.getHeader(b"x-api-key")
    if given is None:
        scheme, _, token = (request.getHeader(b"authorization") or b"").partition(b" ")
        if scheme.lower() in (b"apikey", b"bearer"):
            given = token
    given = (given or b"").strip()
    return bool(given) and key_matches(given, keys)


def _error(code: int, detail: str | None = None) -> dict[str, Any]:
    error = PubSubError(code).reply()
    if detail:
        error["message"] = f"{error['message']}: {detail}"
    return {"error": error}


def handle(site: Any, request: Any) -> None:
    """Answer one request in Centrifugo's form (``realtime.api.handle`` routes it here)."""
    if request.method != b"POST":
        respond(request, 405, _error(BAD_REQUEST, "use POST"), ((b"allow", b"POST"),))
        return
    if not authorized(request, site.config.api_keys):
        respond(request, 401, _error(UNAUTHORIZED))
        return
    body = request.content.read() if request.content is not None else b""
    limit = site.config.api_body_limit
    if len(body) > limit:
        respond(request, 413, _error(LIMIT_EXCEEDED, f"the body is over {limit} bytes"))
        return
    method = request.path.rpartition(b"/")[2].decode("ascii", "replace")
    try:
        params = _object(body)
    except BadBody as exc:
        respond(request, 400, _error(BAD_REQUEST, str(exc)))
        return

    def done(answer: tuple[int, dict[str, Any]]) -> None:
        respond(request, *answer)

    def failed(failure: Any) -> None:  # _run answers every error; this is a bug's net
        log.failure("Centrifugo API {method} failed", failure, method=method)
        respond(request, 200, _error(INTERNAL))

    Deferred.fromCoroutine(_run(site.layer, method, params)).addCallbacks(done, failed)


def _object(body: bytes) -> dict[str, Any]:
    try:  # NaN and the infinities are not JSON (Centrifugo and the SDKs refuse them)
        document = json.loads(body, parse_constant=refuse_constant)
    except (ValueError, UnicodeDecodeError):
        raise BadBody("the body is not JSON") from None
    if not isinstance(document, dict):
        raise BadBody("the body must be a JSON object")
    return document


async def _run(layer: Any, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, document) of one request."""
    if method == "batch":
        try:
            return 200, await _batch(layer, params)
        except BadBody as exc:
            return 400, _error(BAD_REQUEST, str(exc))
    try:
        return 200, {"result": await _call(layer, method, params)}
    except BadBody as exc:
        return 400, _error(BAD_REQUEST, str(exc))
    except PubSubError as exc:
        return 200, {"error": exc.reply()}


async def _batch(layer: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``{"commands": [{"publish": {...}}, ...]}``: ``{"replies": [{"publish": {...}} |
    {"error": {...}}, ...]}``, in order (``parallel`` runs them at once)."""
    commands = _field(params, "commands", list, [])
    if len(commands) > MAX_BATCH:
        raise BadBody(f"a batch carries at most {MAX_BATCH} commands")
    parallel = _field(params, "parallel", bool, False)

    async def one(command: Any) -> dict[str, Any]:
        if not isinstance(command, dict) or len(command) != 1:
            return _error(BAD_REQUEST, "a command is an object with one method")
        [(method, args)] = command.items()
        if args is None:
            args = {}
        if not isinstance(args, dict) or method == "batch":
            return _error(BAD_REQUEST)
        try:
            return {method: await _call(layer, method, args)}
        except BadBody as exc:
            return _error(BAD_REQUEST, str(exc))
        except PubSubError as exc:
            return {"error": exc.reply()}

    if parallel:
        replies = await gatherResults(
            [Deferred.fromCoroutine(one(command)) for command in commands], consumeErrors=True)
    else:
        replies = [await one(command) for command in commands]
    return {"replies": replies}


async def _call(layer: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One method's result; ``PubSubError`` for an error reply, ``BadBody`` for 400."""
    handler = _METHODS.get(method)
    if handler is None:
        raise PubSubError(METHOD_NOT_FOUND)
    try:
        return await handler(layer, params)
    except (PubSubError, BadBody):
        raise
    except Exception as exc:
        raise _layer_error(method, exc) from None


def _layer_error(method: str, exc: Exception) -> PubSubError:
    """What a client is told of an exception out of the layer (never its traceback)."""
    from realtime.layers.base import LayerUnavailable

    if isinstance(exc, LayerUnavailable):
        log.warn("Centrifugo API {method}: {error}", method=method, error=str(exc))
        return PubSubError(INTERNAL, "internal server error: the channel layer is unavailable")
    if isinstance(exc, TypeError | ValueError):  # e.g. an int msgpack cannot carry
        return PubSubError(BAD_REQUEST, f"bad request: {exc}")
    log.failure("Centrifugo API {method} failed", method=method)
    return PubSubError(INTERNAL)


# -- fields --------------------------------------------------------------------------------------

def _field(params: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """``params[name]`` of type ``kind``, ``default`` when absent or null; a value of
    another type is a ``BadBody`` (Centrifugo cannot decode it either)."""
    value = params.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadBody(f"{name!r} has the wrong type")
    return value


def _channel(params: dict[str, Any]) -> str:
    channel = _field(params, "channel", str, "")
    if not channel:
        raise PubSubError(BAD_REQUEST, "bad request: channel required")
    return check_channel(channel)


def _user(params: dict[str, Any]) -> str:
    user = _field(params, "user", str, "")
    if not user:
        raise PubSubError(BAD_REQUEST, "bad request: user required")
    if _field(params, "session", str, ""):
        raise PubSubError(BAD_REQUEST, "bad request: sessions are not supported here")
    return str(user)


def _publication_args(params: dict[str, Any]) -> tuple[Any, dict[str, str] | None]:
    """(data, tags) of ``publish``/``broadcast``. ``skip_history``, ``idempotency_key``
    and ``version`` are read and not acted on (``delta``: ``_delta``). ``b64data``
    (binary data, base64) goes before ``data``, as in Centrifugo: Protobuf clients get its
    bytes, JSON clients its JSON when it is JSON text, else ``b64data``
    (``pubsub.from_bytes``)."""
    _field(params, "skip_history", bool, False)
    _field(params, "idempotency_key", str, "")
    b64data = _field(params, "b64data", str, "")
    if b64data:
        try:
            data = base64.b64decode(b64data, validate=True)
        except ValueError:
            raise PubSubError(BAD_REQUEST, "bad request: b64data is not base64") from None
        return from_bytes(data), _tags(params)
    if "data" not in params:
        raise PubSubError(BAD_REQUEST, "bad request: data required")
    return params["data"], _tags(params)


def _delta(params: dict[str, Any]) -> bool | None:
    """``delta: true`` marks a publication for delta compression (the namespace's
    ``delta_publish`` when absent; ``false`` does not turn that off, as in Centrifugo)."""
    return True if _field(params, "delta", bool, False) else None


def _tags(params: dict[str, Any]) -> dict[str, str] | None:
    tags = _field(params, "tags", dict, None)
    if tags is not None and not all(isinstance(v, str) for v in tags.values()):
        raise BadBody("'tags' maps strings to strings")
    return tags or None


def _position(position: Any) -> dict[str, Any]:
    if isinstance(position, dict) and "offset" in position:
        return {"offset": position["offset"], "epoch": position.get("epoch", "")}
    return {}


# -- methods -------------------------------------------------------------------------------------

async def _publish(layer: Any, params: dict[str, Any]) -> dict[str, Any]:
    channel = _channel(params)
    data, tags = _publication_args(params)
    return _position(await publish(channel, data, layer=layer, tags=tags,
                                   delta=_delta(params)))


async def _broadcast(layer: Any, params: dict[str, Any]) -> dict[str, Any]:
    channels = _field(params, "channels", list, [])
    if not all(isinstance(channel, str) for channel in channels):
        raise BadBody("'channels' is a list of strings")
    if not channels:
        raise PubSubError(BAD_REQUEST, "bad request: channels required")
    data, tags = _publication_args(params)
    delta = _delta(params)

    async def one(channel: str) -> dict[str, Any]:
        try:
            if not channel:
                raise PubSubError(BAD_REQUEST, "bad request: channel required")
            try:
                position = await publish(check_channel(channel), data, layer=layer, tags=tags,
                                         delta=delta)
            except PubSubError:
                raise
            except Exception as exc:
                raise _layer_error("broadcast", exc) from None
        except PubSubError as exc:
            return {"error": exc.reply()}
        return {"result": _position(position)}

    responses = await gatherResults(
        [Deferred.fromCoroutine(one(channel)) for channel in channels], consumeErrors=True)
    return {"responses": responses}


async def _members(layer: Any, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    channel = _channel(params)
    if not _namespace(channel).presence:
        raise PubSubError(NOT_AVAILABLE)
    members: dict[str, dict[str, Any]] = await layer.group_presence(channel_group(channel))
    return members


async def _presence(layer: Any, params: dict[str, Any]) -> dict[str, Any]:
    members = await _members(layer, params)
    return {"presence": {info.get("client", name): info for name, info in members.items()}}


async def _presence_stats(layer: Any, params: dict[str, Any]) -> dict[str, Any]:
    members = await _members(layer, params)
    users = {info.get("user", "") for info in members.values()}
    return {"num_clients": len(members), "num_users": len(users)}


async def _history(layer: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Centrifugo's history pages (``realtime.pubsub.read_history``): ``limit`` 0 (the
    default) answers only the position, -1 everything kept."""
    channel = _channel(params)
    limit = _field(params, "limit", int, 0)
    reverse = _field(params, "reverse", bool, False)
    since = _field(params, "since", dict, None)
    if since is not None:
        since = _since(since)
    if not _namespace(channel).history:
        raise PubSubError(NOT_AVAILABLE)
    return await read_history(layer, channel, limit, since, reverse)


async def _history_remove(layer: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Forget a channel's publications, not its position (``group_history_remove``)."""
    channel = _channel(params)
    if not _namespace(channel).history:
        raise PubSubError(NOT_AVAILABLE)
    await layer.group_history_remove(channel_group(channel))
    return {}


def _since(since: dict[str, Any]) -> dict[str, Any]:
    """A stream position ``{"offset": int, "epoch": str}`` (either may be absent or null)."""
    epoch, offset = since.get("epoch", ""), since.get("offset", 0)
    if epoch is None:
        epoch = ""
    if offset is None:
        offset = 0
    if not isinstance(epoch, str) or isinstance(offset, bool) or not isinstance(
            offset, int) or offset < 0:
        raise BadBody("a stream position is {\"offset\": int, \"epoch\": str}")
    return {"epoch": epoch, "offset": offset}


async def _unsubscribe(layer: Any, params: dict[str, Any]) -> dict[str, Any]:
    user = _user(params)
    channel = _channel(params)
    _namespace(channel)  # 102 for an unknown namespace
    event: dict[str, Any] = {"type": "pubsub.unsubscribe", "channel": channel}
    client = _field(params, "client", str, "")
    if client:
        event["client"] = client
    await layer.group_send(user_group(user), event)
    return {}


#: The namespace options ``subscribe``'s ``override`` may set (Centrifugo's
#: ChannelOptionsOverride), each ``{"value": bool}``.
_OVERRIDES = ("presence", "join_leave", "force_push_join_leave", "force_positioning",
              "force_recovery")


def _json_or_b64(params: dict[str, Any], name: str) -> tuple[bool, Any]:
    """(given, value) of ``name`` (any JSON) or ``b64name`` (base64 of JSON text)."""
    encoded = _field(params, "b64" + name, str, "")
    if encoded:
        try:
            value = from_bytes(base64.b64decode(encoded, validate=True))
        except ValueError:
            raise PubSubError(BAD_REQUEST, f"bad request: b64{name} is not base64") from None
        if isinstance(value, bytes):  # presence and JSON clients carry it as JSON
            raise PubSubError(BAD_REQUEST, f"bad request: b64{name} must be JSON text here")
        return True, value
    return params.get(name) is not None, params.get(name)


async def _subscribe(layer: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Subscribe each connection of ``user`` (or one ``client``), in every process, to
    ``channel`` as a server-side subscription (``PubSubConsumer.pubsub_subscribe``)."""
    user = _user(params)
    channel = _channel(params)
    namespace = _namespace(channel)  # 102 for an unknown namespace
    event: dict[str, Any] = {"type": "pubsub.subscribe", "channel": channel}
    client = _field(params, "client", str, "")
    if client:
        event["client"] = client
    for name in ("info", "data"):
        given, value = _json_or_b64(params, name)
        if given:
            event[name] = value
    since = _field(params, "recover_since", dict, None)
    if since is not None:
        event["since"] = _since(since)
    override = _field(params, "override", dict, {})
    options = {}
    for name, value in override.items():
        if name not in _OVERRIDES:
            raise BadBody(f"'override' sets only {', '.join(_OVERRIDES)}")
        if value is None:
            continue
        if not isinstance(value, dict) or not isinstance(value.get("value"), bool):
            raise BadBody(f"'override.{name}' is {{\"value\": bool}}")
        options[name] = value["value"]
    if options.get("force_recovery") and not namespace.history:
        raise PubSubError(BAD_REQUEST, "bad request: force_recovery needs history in the "
                          "channel's namespace")
    if options:
        event["override"] = options
    await layer.group_send(user_group(user), event)
    return {}


async def _refresh(layer: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Each connection of ``user`` (or one ``client``) now expires at ``expire_at`` (Unix
    seconds; absent: never), or at once with ``expired`` (3005); ``info``/``b64info`` is
    its new connection info (``PubSubConsumer.pubsub_refresh``)."""
    user = _user(params)
    event: dict[str, Any] = {"type": "pubsub.refresh"}
    client = _field(params, "client", str, "")
    if client:
        event["client"] = client
    if _field(params, "expired", bool, False):
        event["expired"] = True
    expire_at = _field(params, "expire_at", int, 0)
    if not 0 <= expire_at < 1 << 63:
        raise BadBody("'expire_at' is Unix seconds")
    if expire_at:
        event["expire_at"] = expire_at
    given, info = _json_or_b64(params, "info")
    if given:
        event["info"] = info
    await layer.group_send(user_group(user), event)
    return {}


async def _disconnect(layer: Any, params: dict[str, Any]) -> dict[str, Any]:
    from realtime.layers.base import check_close

    user = _user(params)
    client = _field(params, "client", str, "")
    whitelist = _field(params, "whitelist", list, [])
    if not all(isinstance(c, str) for c in whitelist):
        raise BadBody("'whitelist' is a list of client ids")
    code, reason = CLOSE_FORCE_DISCONNECT
    custom = _field(params, "disconnect", dict, None)
    if custom is not None:
        code, reason = custom.get("code", 0), custom.get("reason", "")
        if isinstance(code, bool) or not isinstance(code, int) or not isinstance(reason, str):
            raise BadBody("'disconnect' is {\"code\": int, \"reason\": str}")
        try:
            check_close(code, reason)
        except ValueError:
            raise PubSubError(BAD_REQUEST, "bad request: a disconnect code is 3000-4999 (or "
                              "1000) here: a WebSocket close code") from None
        try:
            encoded = reason.encode()
        except UnicodeEncodeError:  # a lone surrogate: no close frame carries it
            raise PubSubError(BAD_REQUEST, "bad request: a disconnect reason is UTF-8 "
                              "text") from None
        if len(encoded) > MAX_REASON:
            raise PubSubError(BAD_REQUEST, f"bad request: a disconnect reason is at most "
                              f"{MAX_REASON} bytes")
    if client or whitelist:
        event: dict[str, Any] = {"type": "pubsub.disconnect", "code": code, "reason": reason}
        if client:
            event["client"] = client
        if whitelist:
            event["whitelist"] = whitelist
        await layer.group_send(user_group(user), event)
    else:
        await layer.group_close(user_group(user), code, reason)
    return {}


async def _info(layer: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Every process on this layer that loaded ``realtime.pubsub`` (every ``realtime``
    server does) is a node (``node_info``); one that did not answers None, left out."""
    answers = await layer.survey(INFO_SURVEY)
    nodes = [node for node in answers.values() if isinstance(node, dict)]
    nodes.sort(key=lambda node: str(node.get("name", "")))
    return {"nodes": nodes}


async def _channels(layer: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The channels with at least one subscriber anywhere, those whose name matches
    ``pattern`` (Centrifugo's glob: ``pubsub.compile_glob``; 107 for one that does not
    compile) if given, each with its subscribers over every node."""
    pattern = _field(params, "pattern", str, "")
    try:
        compile_glob(pattern)
    except ValueError as exc:
        raise PubSubError(BAD_REQUEST, f"bad request: {exc}") from None
    answers = await layer.survey(CHANNELS_SURVEY, pattern)
    counts: dict[str, int] = {}
    for answer in answers.values():
        if isinstance(answer, dict):
            for channel, count in answer.items():
                counts[channel] = counts.get(channel, 0) + count
    return {"channels": {channel: {"num_clients": count}
                         for channel, count in sorted(counts.items())}}


_Method = Callable[[Any, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]
_METHODS: dict[str, _Method] = {
    "publish": _publish,
    "broadcast": _broadcast,
    "presence": _presence,
    "presence_stats": _presence_stats,
    "history": _history,
    "history_remove": _history_remove,
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "refresh": _refresh,
    "disconnect": _disconnect,
    "info": _info,
    "channels": _channels,
}
