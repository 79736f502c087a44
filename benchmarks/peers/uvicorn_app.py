"""Peer (c): a raw ASGI application for uvicorn (``--ws websockets-sansio``).

    uvicorn --ws websockets-sansio --host 127.0.0.1 --port 8003 uvicorn_app:app

``/echo`` echoes; ``/room/<name>`` sends each message to every member of the room (sender
included). Rooms live in a dict in this process; each member is its ASGI ``send`` callable.
"""

from __future__ import annotations

rooms: dict[str, set] = {}


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if kind == "http":
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"not found"})
        return
    if kind != "websocket":
        return
    path = scope["path"]
    name = None
    if path.startswith("/room/") and len(path) > len("/room/"):
        name = path[len("/room/"):]
    elif path != "/echo":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008})  # refused: 403
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    if name is None:
        await echo(receive, send)
    else:
        await room(name, receive, send)


async def echo(receive, send):
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes")})


async def room(name, receive, send):
    members = rooms.setdefault(name, set())
    members.add(send)
    try:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            text = message.get("text")
            if text is not None:
                out = {"type": "websocket.send", "text": text}
            else:
                out = {"type": "websocket.send", "bytes": message.get("bytes")}
            for member in tuple(members):
                try:
                    await member(out)
                except Exception:  # that member is gone
                    members.discard(member)
    finally:
        members.discard(send)
        if not members and rooms.get(name) is members:
            del rooms[name]
