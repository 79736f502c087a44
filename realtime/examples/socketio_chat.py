"""A python-socketio chat app, ported by changing its import (``realtime.socketio``).

    twistd -n --pidfile= realtime --app realtime.examples.socketio_chat:application
    # several processes: add --workers 2 --layer redis://127.0.0.1:6379/0 (then clients
    # use transports: ["websocket"]: polling sessions need sticky sessions)

Connect with ``socket.io-client`` or python-socketio's client (polling, then the upgrade
to WebSocket; or either alone) to ``http://127.0.0.1:8000``, with ``auth:
{name}``: ``join(room)`` enters a room (acked with its rooms), ``say({room, text})`` sends
``said`` to the other members of a room it joined (anything else is answered with
``{"error"}``), ``who()`` answers with the name the session keeps.
"""

from __future__ import annotations

from typing import Any

from realtime import ProtocolTypeRouter, URLRouter, path
from realtime.socketio import AsyncServer, ConnectionRefusedError

sio = AsyncServer()


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> None:
    name = (auth or {}).get("name")
    if not isinstance(name, str) or not name:
        raise ConnectionRefusedError("a name is required")
    await sio.save_session(sid, {"name": name})


def _room(room: Any) -> str | None:
    """A room name a client may give (a short string); None otherwise."""
    return room if isinstance(room, str) and 0 < len(room) <= 100 else None


@sio.event
async def join(sid: str, room: Any) -> Any:
    if _room(room) is None:
        return {"error": "a room is a string of 1 to 100 characters"}
    await sio.enter_room(sid, room)
    return sio.rooms(sid)


@sio.event
async def say(sid: str, data: Any) -> Any:
    # Checked: a missing room would be None, which emit() takes as "everyone".
    room = _room(data.get("room")) if isinstance(data, dict) else None
    text = data.get("text") if isinstance(data, dict) else None
    if room is None or room not in sio.rooms(sid) or not isinstance(text, str):
        return {"error": "say({room, text}) to a room you joined"}
    session = await sio.get_session(sid)
    await sio.emit("said", {"name": session["name"], "text": text[:1000]},
                   room=room, skip_sid=sid)
    return None


@sio.event
async def who(sid: str) -> str:
    return str((await sio.get_session(sid))["name"])


@sio.event
async def disconnect(sid: str, reason: str) -> None:
    pass  # the session is still readable here, as in python-socketio


# WebSocket and HTTP long-polling, at /socket.io/.
application = ProtocolTypeRouter({
    "websocket": URLRouter([path("socket.io/", sio.as_asgi())]),
    "http": URLRouter([path("socket.io/", sio.as_asgi())]),
})
