"""The Socket.IO benchmark's app (benchmarks/socket_io.py), the same handlers on both servers.

    twistd -n --pidfile= realtime --app socketio_app:application          # realtime.socketio
    uvicorn --host 127.0.0.1 --port 8003 socketio_app:app                 # python-socketio

``echo(data)`` acks with its argument; ``join(room)`` enters the room (acked with
``"ok"``); ``say(room, text)`` emits ``said`` with ``text`` to everyone in the room, the
sender included. ``application`` (ours: realtime's ``ProtocolTypeRouter`` with
``sio.as_asgi()`` at ``/socket.io/``, as README "Coming from python-socketio" shows) and
``app`` (python-socketio's ``socketio.ASGIApp``, at ``/socket.io/`` too) are built when
first asked for, so each server imports only its own package (python-socketio's virtualenv
has no realtime).
"""

from __future__ import annotations

from typing import Any


def install(sio: Any) -> Any:
    """The handlers, on either ``AsyncServer`` (the same code: a port changes the import)."""

    @sio.event
    async def echo(sid: str, data: Any) -> Any:
        return data

    @sio.event
    async def join(sid: str, room: str) -> str:
        await sio.enter_room(sid, room)
        return "ok"

    @sio.event
    async def say(sid: str, room: str, text: str) -> None:
        await sio.emit("said", text, room=room)

    return sio


def _ours() -> Any:
    from realtime import ProtocolTypeRouter, URLRouter, path
    from realtime.socketio import AsyncServer

    sio = install(AsyncServer(async_mode="asgi"))
    return ProtocolTypeRouter({
        "websocket": URLRouter([path("socket.io/", sio.as_asgi())]),
        "http": URLRouter([path("socket.io/", sio.as_asgi())]),
    })


def _python_socketio() -> Any:
    import socketio  # python-socketio

    # async_mode explicit: python-engineio picks aiohttp's when aiohttp is importable.
    sio = install(socketio.AsyncServer(async_mode="asgi"))
    return socketio.ASGIApp(sio)


_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """``application`` (ours) and ``app`` (python-socketio's), built on first access."""
    makers = {"application": _ours, "app": _python_socketio}
    if name not in makers:
        raise AttributeError(name)
    if name not in _built:
        _built[name] = makers[name]()
    return _built[name]
