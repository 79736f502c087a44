"""What the differential harnesses' apps share (``httpdiff_app``, ``wsdiff_app``,
``siodiff_app``): the scope described, a request's record filed under its row, the
``/seen/`` answer, lifespan. Plain ASGI, so either server runs it as it is."""

from __future__ import annotations

import json
from typing import Any


def text(value: bytes) -> str:
    return value.decode("latin-1")


def describe(scope: dict[str, Any]) -> dict[str, Any]:
    """The scope's keys both apps record, in JSON: bytes as latin-1 text, the client's
    port left out (it differs)."""
    client = scope.get("client")
    server = scope.get("server")
    return {
        "type": scope["type"],
        "asgi": scope.get("asgi", {}).get("version"),
        "scheme": scope.get("scheme"),
        "path": scope.get("path"),
        "raw_path": text(scope.get("raw_path") or b""),
        "query_string": text(scope.get("query_string", b"")),
        "root_path": scope.get("root_path"),
        "headers": [[text(name), text(value)] for name, value in scope.get("headers", [])],
        "client": client[0] if client else None,
        "server": [server[0], server[1]] if server else None,
        "keys": sorted(scope),
    }


def file_by_row(seen: dict[str, Any], scope: dict[str, Any], record: Any) -> Any:
    """``record``, kept in ``seen`` under the request's ``X-Row`` (not kept without one)."""
    for name, value in scope.get("headers", []):
        if name == b"x-row":
            seen[text(value)] = record
    return record


async def send_json(send: Any, status: int, document: Any) -> None:
    body = json.dumps(document).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def send_record(send: Any, record: Any) -> None:
    """A row's record as JSON: 404 while there is none."""
    await send_json(send, 200 if record is not None else 404, record)


async def lifespan(receive: Any, send: Any) -> None:
    """Startup and shutdown, each completed at once."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
