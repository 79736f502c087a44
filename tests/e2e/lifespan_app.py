"""A raw ASGI app with a lifespan, for ``twistd realtime`` in a subprocess
(tests/e2e/test_lifespan_process.py). Environment:

- ``LIFESPAN_FAIL``: answer ``lifespan.startup.failed`` with this message;
- ``LIFESPAN_DELAY``: seconds the start-up takes (a reactor timer: no asyncio here);
- ``LIFESPAN_LOG``: a file each phase appends a line to (``startup PID``/``shutdown PID``).

HTTP answers with the state the start-up left (``pid``, ``started``) as ``KEY=VALUE``;
``/slow`` takes a second first (and notes ``answered``).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater


def _note(line: str) -> None:
    path = os.environ.get("LIFESPAN_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{line} {os.getpid()}\n")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                delay = float(os.environ.get("LIFESPAN_DELAY", "0"))
                if delay:
                    await deferLater(reactor, delay, lambda: None)
                failure = os.environ.get("LIFESPAN_FAIL")
                if failure:
                    _note("failed")
                    await send({"type": "lifespan.startup.failed", "message": failure})
                    return
                scope["state"].update(pid=os.getpid(), started="yes")
                _note("startup")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _note("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        if scope["path"] == "/slow":  # a request still in progress when SIGTERM comes
            await deferLater(reactor, 1.0, lambda: None)
            _note("answered")
        state = scope.get("state") or {}
        body = " ".join(f"{k}={v}" for k, v in sorted(state.items())).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})
    else:
        raise ValueError(f"no {scope['type']} here")
