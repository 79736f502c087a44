"""One set of Socket.IO handlers served by both realtime.socketio and python-socketio's own
``AsyncServer`` for tests/e2e/test_sio_vs_python_socketio.py.

``register(sio, refused)`` puts the same handlers on either server (``refused``: that
library's ``ConnectionRefusedError``); each server is built only in the process that
serves it (``application``: realtime's, under twistd; ``reference``: python-socketio's
``ASGIApp``, under Daphne). Six servers in each process: ``/socket.io/`` with the
defaults, ``/fast.io/`` with ``ping_interval=1, ping_timeout=1`` (the heartbeat rows),
``/nocors.io/`` with ``cors_allowed_origins=[]`` (CORS handling off), ``/grace.io/`` with
``ping_interval=(1, 2), ping_timeout=1`` (a grace period), ``/ordered.io/`` with
``async_handlers=False`` and ``/always.io/`` with ``always_connect=True``.

Each connection's handshake names its row (``row=NAME`` in its query string); what the
handlers saw goes to ``SEEN[NAME]`` (sids as they are: the test maps them to names), and
``GET /seen/NAME`` answers ``{"events": [...], "open": N}`` (N: the sockets whose connect
was accepted and whose disconnect has not come, and the connect handlers still running),
``{"events": [], "open": 0}`` for a row that saw nothing. Bytes are recorded as
``{"bytes": HEX}``. ``GET /waiting/SID`` answers ``{"waiting": true}`` once a GET of polling
session SID waits in the server (the rows that act while one does: a condition, not a
sleep).

Namespace "/" (``connect(sid, environ, auth)``; its auth says what it does):
``{"token": "slow"}`` accepts after 0.5 s (recording "accepted"), ``"slow-refuse"`` refuses
then (recording "refused"; the rows close meanwhile), ``{"token": "refuse"}`` raises
``ConnectionRefusedError("unauthorized", {"code": 4001})``,
``"refuse-bare"`` raises it without arguments, ``"refuse-three"`` with three, ``"false"``
returns False, ``"builtin"`` raises the builtin ``ConnectionRefusedError``, ``"crash"``
raises ``RuntimeError``, ``"kick-self"`` disconnects its own sid (``sio.disconnect``) and
then accepts, ``"kick-self-refuse"`` then refuses; otherwise it saves ``{"auth": auth}`` as
the session and enters room "lobby". The disconnect handler records the session of a
"kick-self" sid (saved before its ``disconnect``). Events: ``echo`` acks its arguments
(a tuple: several), ``nap`` sleeps 0.3 s (recording "nap", then "woke"), ``nothing`` acks
with None, ``binary`` acks with bytes (top level and nested), ``join``/``leave`` a room
(acked with the sid's rooms, sorted, its own sid as "SELF"), ``shout(room, data)`` emits
``shout`` to the room but the sender, ``kick`` disconnects the sender from the server,
``remember(value)``/``recall`` keep a value in the session, ``emit_binary`` emits an
event with bytes to the sender, ``transport`` acks the sid's transport, ``fail`` raises,
``plain`` (not ``async``) acks its arguments as a list, ``ask(q)`` emits ``question``
with a callback that records the client's answer; anything else reaches the catch-all
``*``, which acks ``("caught", event)``. Namespace "/chat" (``connect(sid,
environ)``, the legacy form): ``echo``. Namespace "/open" is listed in ``namespaces`` and
has no handlers at all.
"""

from __future__ import annotations

import builtins
from typing import Any
from urllib.parse import parse_qs

from tests.e2e.diffapp import lifespan, send_json

#: What each row's handlers saw, by row name (the process's own: one per server).
SEEN: dict[str, list[Any]] = {}
#: A sid's row (from its connection's handshake query).
_ROW_OF: dict[str, str] = {}
#: The sids whose connect was accepted and whose disconnect has not come, by row.
_OPEN: dict[str, set[str]] = {}
#: The connect handlers still running, by row (``/seen/`` waits for them too).
_CONNECTING: dict[str, int] = {}
NAMESPACES = ["/", "/chat", "/open"]
#: The servers this process serves (``/waiting/`` looks through them).
SERVERS: list[Any] = []


def _query(environ: dict[str, Any]) -> str:
    """The handshake's query string: a WSGI environ's (python-socketio) or an ASGI
    scope's (realtime)."""
    if "QUERY_STRING" in environ:
        return str(environ["QUERY_STRING"])
    return bytes(environ.get("query_string", b"")).decode("latin-1")


def plain(value: Any) -> Any:
    """``value`` as JSON can carry it (bytes as ``{"bytes": HEX}``, tuples as lists)."""
    if isinstance(value, bytes | bytearray):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    return value


def _note(sid: str, *what: Any) -> None:
    row = _ROW_OF.get(sid, "?")
    SEEN.setdefault(row, []).append(plain([*what[:1], sid, *what[1:]]))


def register(sio: Any, refused: type[Exception]) -> None:
    """The handlers, on either library's server."""

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> Any:
        row = parse_qs(_query(environ)).get("row", ["?"])[0]
        _ROW_OF[sid] = row
        _note(sid, "connect", "/", auth)
        token = auth.get("token") if isinstance(auth, dict) else None
        if token in ("slow", "slow-refuse"):  # decided once its client is gone (the row
            # closes meanwhile)
            _CONNECTING[row] = _CONNECTING.get(row, 0) + 1
            try:
                await sio.sleep(0.5)
                if token == "slow-refuse":
                    _note(sid, "refused")
                    return False
                _note(sid, "accepted")
                _OPEN.setdefault(row, set()).add(sid)
                return None
            finally:
                _CONNECTING[row] -= 1
        if token == "refuse":
            raise refused("unauthorized", {"code": 4001})
        if token == "refuse-bare":
            raise refused()
        if token == "refuse-three":
            raise refused("three", 1, 2)
        if token == "false":
            return False
        if token == "builtin":
            raise builtins.ConnectionRefusedError("no")
        if token == "crash":
            raise RuntimeError("the connect handler fails")
        if token in ("kick-self", "kick-self-refuse"):
            _CONNECTING[row] = _CONNECTING.get(row, 0) + 1
            try:
                await sio.save_session(sid, {"kick": token})
                await sio.disconnect(sid)
                _note(sid, "kicked")
                return token == "kick-self"
            finally:
                _CONNECTING[row] -= 1
        await sio.save_session(sid, {"auth": auth})
        await sio.enter_room(sid, "lobby")
        _OPEN.setdefault(row, set()).add(sid)
        return None

    @sio.event
    async def disconnect(sid: str, reason: str) -> None:
        try:
            session = await sio.get_session(sid)
        except KeyError:
            session = {}
        # (a "kick-self" connect's session: still readable here)
        _note(sid, "disconnect", "/", reason, *[session] if "kick" in session else [])
        _OPEN.get(_ROW_OF.get(sid, "?"), set()).discard(sid)

    @sio.event
    async def nap(sid: str) -> None:
        _note(sid, "nap")
        await sio.sleep(0.3)
        _note(sid, "woke")

    @sio.event
    async def echo(sid: str, *args: Any) -> Any:
        _note(sid, "echo", *args)
        return args

    @sio.event
    async def nothing(sid: str, *args: Any) -> None:
        _note(sid, "nothing", *args)

    @sio.event
    async def binary(sid: str) -> Any:
        _note(sid, "binary")
        return b"\x00\x01", {"nested": b"\xff"}

    def rooms(sid: str) -> list[Any]:
        return sorted("SELF" if room == sid else room for room in sio.rooms(sid))

    @sio.event
    async def join(sid: str, room: Any) -> Any:
        _note(sid, "join", room)
        await sio.enter_room(sid, room)
        return rooms(sid)

    @sio.event
    async def leave(sid: str, room: Any) -> Any:
        _note(sid, "leave", room)
        await sio.leave_room(sid, room)
        return rooms(sid)

    @sio.event
    async def shout(sid: str, room: Any, data: Any) -> None:
        _note(sid, "shout", room, data)
        await sio.emit("shout", data, room=room, skip_sid=sid)

    @sio.event
    async def emit_binary(sid: str) -> None:
        _note(sid, "emit_binary")
        await sio.emit("bin", {"a": b"\x01", "b": [b"\x02\x03"]}, to=sid)

    @sio.event
    async def kick(sid: str) -> None:
        _note(sid, "kick")
        await sio.disconnect(sid)

    @sio.event
    async def remember(sid: str, value: Any) -> None:
        _note(sid, "remember", value)
        session = await sio.get_session(sid)
        session["value"] = value
        await sio.save_session(sid, session)

    @sio.event
    async def recall(sid: str) -> Any:
        _note(sid, "recall")
        session = await sio.get_session(sid)
        return session.get("value"), session.get("auth")

    @sio.event
    async def fail(sid: str) -> None:
        _note(sid, "fail")
        raise RuntimeError("the fail handler fails")

    @sio.event
    def plain(sid: str, *args: Any) -> Any:
        _note(sid, "plain", *args)
        return list(args)

    @sio.event
    async def transport(sid: str) -> str:
        _note(sid, "transport")
        return str(sio.transport(sid))

    @sio.event
    async def ask(sid: str, question: Any) -> None:
        _note(sid, "ask", question)

        def answered(*args: Any) -> None:
            _note(sid, "answered", *args)

        await sio.emit("question", question, to=sid, callback=answered)

    @sio.on("*")
    async def catch_all(event: str, sid: str, *args: Any) -> Any:
        _note(sid, "*", event, *args)
        return "caught", event

    @sio.on("connect", namespace="/chat")
    async def chat_connect(sid: str, environ: dict[str, Any]) -> None:
        row = parse_qs(_query(environ)).get("row", ["?"])[0]
        _ROW_OF[sid] = row
        _note(sid, "connect", "/chat")
        _OPEN.setdefault(row, set()).add(sid)

    @sio.on("disconnect", namespace="/chat")
    async def chat_disconnect(sid: str, reason: str) -> None:
        _note(sid, "disconnect", "/chat", reason)
        _OPEN.get(_ROW_OF.get(sid, "?"), set()).discard(sid)

    @sio.on("echo", namespace="/chat")
    async def chat_echo(sid: str, *args: Any) -> Any:
        _note(sid, "echo /chat", *args)
        return args


def _get_waits(sid: str) -> bool:
    """Whether a GET of polling session ``sid`` waits in this process's server (their
    insides: realtime's session has a ``_waiter``, python-engineio's socket's queue a
    ``get()`` waiting)."""
    for sio in SERVERS:
        polling = getattr(sio, "_polling", None)
        if polling is not None:  # realtime.socketio's
            session = polling.get(sid)
            if session is not None and session._waiter is not None:
                return True
        else:
            socket = sio.eio.sockets.get(sid)
            if socket is not None and any(not g.done() for g in socket.queue._getters):
                return True
    return False


async def seen(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``GET /seen/ROW``: what that row's handlers saw; ``GET /waiting/SID`` (a plain ASGI
    app)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    name = scope["path"].rpartition("/")[2]
    status = 200
    if scope["path"].startswith("/seen/"):
        record = {"events": SEEN.get(name, []),
                  "open": len(_OPEN.get(name, ())) + _CONNECTING.get(name, 0)}
    elif scope["path"].startswith("/waiting/"):
        record = {"waiting": _get_waits(name)}
    else:
        record, status = {}, 404
    await send_json(send, status, record)


#: Each server's path and options (beside ``namespaces=NAMESPACES``).
OPTIONS: dict[str, dict[str, Any]] = {
    "socket.io": {},
    "fast.io": {"ping_interval": 1, "ping_timeout": 1},
    "nocors.io": {"cors_allowed_origins": []},
    "grace.io": {"ping_interval": (1, 2), "ping_timeout": 1},
    "ordered.io": {"async_handlers": False},
    "always.io": {"always_connect": True},
}


def _realtime() -> Any:
    from realtime import ProtocolTypeRouter, URLRouter, path, re_path
    from realtime.socketio import AsyncServer, ConnectionRefusedError

    routes = []
    for where, options in OPTIONS.items():
        sio = AsyncServer(async_mode="asgi", namespaces=NAMESPACES, **options)
        register(sio, ConnectionRefusedError)
        SERVERS.append(sio)
        routes.append(path(where + "/", sio.as_asgi()))
    return ProtocolTypeRouter({
        "websocket": URLRouter(routes),
        "http": URLRouter([*routes, re_path(r"^(seen|waiting)/", seen)]),
    })


def _python_socketio() -> Any:
    import socketio

    app: Any = seen
    for where, options in reversed(OPTIONS.items()):
        sio = socketio.AsyncServer(async_mode="asgi", namespaces=NAMESPACES, **options)
        register(sio, socketio.exceptions.ConnectionRefusedError)
        SERVERS.append(sio)
        app = socketio.ASGIApp(sio, other_asgi_app=app, socketio_path=where)
    return app


def __getattr__(name: str) -> Any:
    """Each process builds only the server it serves."""
    if name == "application":
        value = _realtime()
    elif name == "reference":
        value = _python_socketio()
    else:
        raise AttributeError(name)
    globals()[name] = value
    return value
