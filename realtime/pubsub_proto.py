"""Centrifugo's client protocol in its Protobuf format, for ``realtime.pubsub``.

Why: Centrifugo's mobile SDKs (centrifuge-swift, centrifuge-java, centrifuge-dart) speak
only Protobuf, and centrifuge-js, centrifuge-go and centrifuge-python may; a team porting
from Centrifugo keeps those clients. A connection that offers the ``centrifuge-protobuf``
subprotocol speaks it: binary frames, each a run of varint-length-prefixed ``Command``
messages in, ``Reply`` messages out (a ``Reply`` with nothing set is a ping, an empty
``Command`` its pong).

The consumer keeps working on the JSON protocol's dicts: ``decode`` turns a frame into
them (``bytes`` where the schema has bytes), ``encode`` turns a reply or push dict back
(a bytes field takes ``bytes`` as they are and any other value as its JSON text, which is
how Centrifugo fills them from JSON). The schema is written out here from the protocol's
field numbers (its wire contract) and built with the ``protobuf`` package at first use.
"""

from __future__ import annotations

import base64
from functools import cache
from typing import Any

#: Messages, each ``field:number:type``; ``*`` repeats a field, ``{T}`` is a map from
#: string to T. The field numbers are Centrifugo's client protocol (v2).
_SCHEMA = {
    "Error": "code:1:uint32 message:2:string temporary:3:bool",
    "Command": "id:1:uint32 connect:4:ConnectRequest subscribe:5:SubscribeRequest "
               "unsubscribe:6:UnsubscribeRequest publish:7:PublishRequest "
               "presence:8:PresenceRequest presence_stats:9:PresenceStatsRequest "
               "history:10:HistoryRequest ping:11:PingRequest send:12:SendRequest "
               "rpc:13:RPCRequest refresh:14:RefreshRequest sub_refresh:15:SubRefreshRequest",
    "Reply": "id:1:uint32 error:2:Error push:4:Push connect:5:ConnectResult "
             "subscribe:6:SubscribeResult unsubscribe:7:UnsubscribeResult "
             "publish:8:PublishResult presence:9:PresenceResult "
             "presence_stats:10:PresenceStatsResult history:11:HistoryResult "
             "ping:12:PingResult rpc:13:RPCResult refresh:14:RefreshResult "
             "sub_refresh:15:SubRefreshResult",
    "Push": "id:1:int64 channel:2:string pub:4:Publication join:5:Join leave:6:Leave "
            "unsubscribe:7:Unsubscribe message:8:Message subscribe:9:Subscribe "
            "connect:10:Connect disconnect:11:Disconnect refresh:12:Refresh",
    "ClientInfo": "user:1:string client:2:string conn_info:3:bytes chan_info:4:bytes",
    "Publication": "data:4:bytes info:5:ClientInfo offset:6:uint64 tags:7:{string} "
                   "delta:8:bool time:9:int64 channel:10:string",
    "Join": "info:1:ClientInfo",
    "Leave": "info:1:ClientInfo",
    "Unsubscribe": "code:2:uint32 reason:3:string",
    "Subscribe": "recoverable:1:bool epoch:4:string offset:5:uint64 positioned:6:bool "
                 "data:7:bytes",
    "Message": "data:1:bytes",
    "Connect": "client:1:string version:2:string data:3:bytes subs:4:{SubscribeResult} "
               "expires:5:bool ttl:6:uint32 ping:7:uint32 pong:8:bool session:9:string "
               "node:10:string time:11:int64",
    "Disconnect": "code:1:uint32 reason:2:string reconnect:3:bool",
    "Refresh": "expires:1:bool ttl:2:uint32",
    "ConnectRequest": "token:1:string data:2:bytes subs:3:{SubscribeRequest} name:4:string "
                      "version:5:string headers:6:{string} flag:7:int64",
    "ConnectResult": "client:1:string version:2:string expires:3:bool ttl:4:uint32 "
                     "data:5:bytes subs:6:{SubscribeResult} ping:7:uint32 pong:8:bool "
                     "session:9:string node:10:string time:11:int64",
    "RefreshRequest": "token:1:string",
    "RefreshResult": "client:1:string version:2:string expires:3:bool ttl:4:uint32",
    "SubscribeRequest": "channel:1:string token:2:string recover:3:bool epoch:6:string "
                        "offset:7:uint64 data:8:bytes positioned:9:bool "
                        "recoverable:10:bool join_leave:11:bool delta:12:string "
                        "tf:13:FilterNode flag:14:int64",
    "SubscribeResult": "expires:1:bool ttl:2:uint32 recoverable:3:bool epoch:6:string "
                       "*publications:7:Publication recovered:8:bool offset:9:uint64 "
                       "positioned:10:bool data:11:bytes was_recovering:12:bool "
                       "delta:13:bool id:14:int64",
    "SubRefreshRequest": "channel:1:string token:2:string",
    "SubRefreshResult": "expires:1:bool ttl:2:uint32",
    "UnsubscribeRequest": "channel:1:string",
    "UnsubscribeResult": "",
    "PublishRequest": "channel:1:string data:2:bytes",
    "PublishResult": "",
    "PresenceRequest": "channel:1:string",
    "PresenceResult": "presence:1:{ClientInfo}",
    "PresenceStatsRequest": "channel:1:string",
    "PresenceStatsResult": "num_clients:1:uint32 num_users:2:uint32",
    "StreamPosition": "offset:1:uint64 epoch:2:string",
    "HistoryRequest": "channel:1:string limit:7:int32 since:8:StreamPosition reverse:9:bool",
    "HistoryResult": "*publications:1:Publication epoch:2:string offset:3:uint64",
    "PingRequest": "",
    "PingResult": "",
    "RPCRequest": "data:1:bytes method:2:string",
    "RPCResult": "data:1:bytes",
    "SendRequest": "data:1:bytes",
    "FilterNode": "op:1:string key:2:string cmp:3:string val:4:string *vals:5:string "
                  "*nodes:6:FilterNode",
    "EmulationRequest": "node:1:string session:2:string data:3:bytes",
}

_PACKAGE = "realtime.pubsub.protocol"
#: Nesting the parser accepts (FilterNode nests itself).
_MAX_DEPTH = 32


class DecodeError(ValueError):
    """A frame that is not a run of length-prefixed ``Command`` messages."""


@cache
def schema() -> dict[str, Any]:
    """The message classes, built once (``protobuf`` is imported on the first protobuf
    connection, not at start-up)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field_type = descriptor_pb2.FieldDescriptorProto
    scalars = {"string": field_type.TYPE_STRING, "bytes": field_type.TYPE_BYTES,
               "bool": field_type.TYPE_BOOL, "uint32": field_type.TYPE_UINT32,
               "uint64": field_type.TYPE_UINT64, "int32": field_type.TYPE_INT32,
               "int64": field_type.TYPE_INT64}

    def typed(field: Any, kind: str) -> None:
        if kind in scalars:
            field.type = scalars[kind]
        else:
            field.type = field_type.TYPE_MESSAGE
            field.type_name = f".{_PACKAGE}.{kind}"

    proto = descriptor_pb2.FileDescriptorProto(name="realtime_pubsub.proto",
                                               package=_PACKAGE, syntax="proto3")
    for name, spec in _SCHEMA.items():
        message = proto.message_type.add(name=name)
        for item in spec.split():
            field_name, number, kind = item.split(":")
            repeated = field_name.startswith("*")
            field_name = field_name.lstrip("*")
            field = message.field.add(name=field_name, number=int(number),
                                      json_name=field_name)
            field.label = field_type.LABEL_OPTIONAL
            if repeated:
                field.label = field_type.LABEL_REPEATED
            if kind.startswith("{"):  # map<string, T>: a repeated nested entry message
                entry_name = "".join(p.title() for p in field_name.split("_")) + "Entry"
                entry = message.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                key = entry.field.add(name="key", number=1, json_name="key",
                                      label=field_type.LABEL_OPTIONAL)
                typed(key, "string")
                value = entry.field.add(name="value", number=2, json_name="value",
                                        label=field_type.LABEL_OPTIONAL)
                typed(value, kind[1:-1])
                field.label = field_type.LABEL_REPEATED
                field.type = field_type.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{name}.{entry_name}"
            else:
                typed(field, kind)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")) for name in _SCHEMA}


def _to_dict(message: Any, depth: int = 0) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise DecodeError("nested too deep")
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        kind = field.message_type
        if kind is None:
            out[field.name] = list(value) if _repeated(field) else value
        elif kind.GetOptions().map_entry:
            nested = kind.fields_by_name["value"].message_type is not None
            out[field.name] = {key: _to_dict(item, depth + 1) if nested else item
                               for key, item in value.items()}
        elif _repeated(field):
            out[field.name] = [_to_dict(item, depth + 1) for item in value]
        else:
            out[field.name] = _to_dict(value, depth + 1)
    return out


def _repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf 6+; ``label`` before
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


def varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    """A message's length prefix at ``position``: (the length, where the message starts);
    ``DecodeError`` past the data or past 35 bits (no frame is that long)."""
    size = shift = 0
    while True:
        if position >= len(data) or shift > 28:
            raise DecodeError("bad length")
        byte = data[position]
        position += 1
        size |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return size, position


def decode(frame: bytes, limit: int) -> list[dict[str, Any]]:
    """The commands of one binary frame, as the JSON protocol's dicts (an empty one is a
    pong); ``DecodeError`` for a frame that is not commands, or has more than ``limit``."""
    commands, error = decode_prefix(frame, limit)
    if error is not None:
        raise error
    return commands


def decode_prefix(frame: bytes, limit: int) -> tuple[list[dict[str, Any]], DecodeError | None]:
    """The commands of a frame up to the first that is not one, and the ``DecodeError``
    that stopped there (None: all of it read), so the good ones run first, as a JSON
    frame's lines do; more than ``limit`` commands: none, and the error."""
    from google.protobuf.message import DecodeError as ProtobufError

    command_class = schema()["Command"]
    commands: list[dict[str, Any]] = []
    position, end = 0, len(frame)
    while position < end:
        try:
            size, position = read_varint(frame, position)
        except DecodeError as exc:
            return commands, exc
        if position + size > end:
            return commands, DecodeError("truncated")
        if len(commands) >= limit:
            return [], DecodeError("too many commands")
        command = command_class()
        try:
            command.ParseFromString(frame[position:position + size])
            commands.append(_to_dict(command))
        except (ProtobufError, RecursionError, DecodeError) as exc:
            return commands, DecodeError(str(exc) or "not a command")
        position += size
    return commands, None


def decode_message(name: str, body: bytes) -> dict[str, Any]:
    """One message of the schema (not length-prefixed) as a dict; ``DecodeError``."""
    from google.protobuf.message import DecodeError as ProtobufError

    message = schema()[name]()
    try:
        message.ParseFromString(body)
        return _to_dict(message)
    except (ProtobufError, RecursionError) as exc:
        raise DecodeError(str(exc) or f"not a {name}") from None


def encode(document: dict[str, Any]) -> bytes:
    """One ``Reply`` (a JSON-protocol reply, push or ping dict), length-prefixed.
    ``TypeError`` for a value its field cannot carry (as ``_dumps`` for JSON)."""
    reply = schema()["Reply"]()
    try:
        _fill(reply, document)
    except (ValueError, AttributeError, KeyError) as exc:
        raise TypeError(f"not a reply: {exc}") from None
    body = reply.SerializeToString()
    return varint(len(body)) + body


def _json_bytes(value: Any) -> bytes:
    """What a bytes field carries for a JSON-protocol value: bytes as they are, anything
    else as its JSON text."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    from realtime.pubsub import _dumps

    return _dumps(value).encode()


def _text(value: Any) -> Any:
    """A string Protobuf takes (UTF-8): a lone surrogate (which JSON allows, and
    ``_dumps`` escapes for JSON clients) becomes U+FFFD, as Go's encoders write it."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _fill(message: Any, document: dict[str, Any]) -> None:
    descriptor = message.DESCRIPTOR
    for name, value in document.items():
        if name == "b64data":  # a publication's binary data in the JSON form
            message.data = base64.b64decode(value)
            continue
        if name == "data" and "b64data" in document:
            continue  # null beside b64data
        field = descriptor.fields_by_name.get(name)
        if field is None:
            if descriptor.name == "ClientInfo":
                continue  # an info dict of the app's (``publish(info=)``): what fits
            raise ValueError(f"no field {name!r} in {descriptor.name}")
        kind = field.message_type
        if kind is None:
            if field.type == field.TYPE_BYTES:
                setattr(message, name, _json_bytes(value))
            elif _repeated(field):
                getattr(message, name).extend(_text(item) for item in value)
            else:
                setattr(message, name, _text(value))
        elif kind.GetOptions().map_entry:
            target = getattr(message, name)
            nested = kind.fields_by_name["value"].message_type is not None
            for key, item in value.items():
                if nested:
                    _fill(target[_text(key)], item)
                else:
                    target[_text(key)] = _text(item)
        elif _repeated(field):
            target = getattr(message, name)
            for item in value:
                _fill(target.add(), item)
        else:
            nested_message = getattr(message, name)
            nested_message.SetInParent()  # an empty result ({}) is still there
            _fill(nested_message, value)
