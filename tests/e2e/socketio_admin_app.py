"""The server tests/e2e/test_browser_socketio_admin.py opens the official Socket.IO Admin
UI against: a ``realtime.socketio.AsyncServer`` at ``/socket.io/`` with ``instrument()``
(login ``admin``/``s3cret``), whose ``cors_allowed_origins`` is the UI's origin (the test
serves the UI from another port: ``SIO_TEST_UI_ORIGIN``); every socket of ``/``
joins the room ``lobby``."""

from __future__ import annotations

import os
from typing import Any

from realtime import URLRouter, path
from realtime import socketio as rsio

LOGIN = {"username": "admin", "password": "s3cret"}

sio = rsio.AsyncServer(cors_allowed_origins=os.environ["SIO_TEST_ORIGINS"].split(","))
sio.instrument(auth=LOGIN, server_id="realtime-under-test", server_stats_interval=0.5)


@sio.event
async def connect(sid: str, environ: Any, auth: Any) -> None:
    await sio.enter_room(sid, "lobby")


application = URLRouter([path("socket.io/", sio.as_asgi())])
