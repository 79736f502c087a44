"""The server tests/e2e/test_browser_client.py drives ``realtime.js`` against (run with
``--jwt-key``).

- ``/`` loads ``/realtime.js`` as an ES module, ``/classic`` loads ``/realtime.classic.js``
  as a classic script; both give the page ``client(name, path, options)``, which opens a
  ``RealtimeSocket`` and records everything it does in ``window.clients[name]``;
- ``/ws/echo`` accepts the first subprotocol offered, says what it got (``{"hello":
  {"query", "subprotocols"}}``), then echoes;
- ``/ws/close?code=N`` says hello and closes with ``N`` (any code a server may send);
- ``/ws/token`` needs a JWT (401 without one), accepts the first subprotocol offered
  (the ``bearer.`` entry is no longer among them), says hello with its ``sub`` and ``n``
  claims, and with ``?close=N`` closes with ``N`` after it (an expired token: 4001).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from realtime import (
    AsyncWebsocketConsumer,
    ProtocolTypeRouter,
    URLRouter,
    path,
)
from realtime.static import client_app
from realtime.tokens import TokenAuthMiddleware
from tests.e2e.pages import Page

#: What both pages share: ``client(name, path, options)`` and its recorder.
RECORDER = """
window.clients = {};
window.client = (name, path, options) => {
  const socket = new RealtimeSocket(path, options);
  const seen = { opens: 0, messages: [], closes: [], reconnecting: [], errors: [] };
  socket.addEventListener("open", () => { seen.opens += 1; });
  socket.onmessage = (e) => { seen.messages.push(e.data); };
  socket.addEventListener("close", (e) => {
    seen.closes.push({ code: e.code, reason: e.reason, willReconnect: e.willReconnect,
                       state: socket.state });
  });
  socket.addEventListener("reconnecting", (e) => {
    seen.reconnecting.push({ attempt: e.attempt, delay: e.delay, state: socket.state });
  });
  socket.addEventListener("error", (e) => { seen.errors.push(String(e.error)); });
  window.clients[name] = { socket, seen };
  return socket;
};
"""
MODULE_PAGE = f"""<!doctype html>
<meta charset="utf-8"><title>realtime.js (module)</title>
<script type="module">
import {{ RealtimeSocket }} from "/realtime.js";
window.RealtimeSocket = RealtimeSocket;
{RECORDER}
window.ready = true;
</script>
""".encode()
CLASSIC_PAGE = f"""<!doctype html>
<meta charset="utf-8"><title>realtime.js (classic)</title>
<script src="/realtime.classic.js"></script>
<script>
{RECORDER}
window.ready = typeof RealtimeSocket === "function";
</script>
""".encode()


def _hello(scope: dict[str, Any], **more: Any) -> str:
    return json.dumps({"hello": {"query": scope["query_string"].decode(),
                                 "subprotocols": scope.get("subprotocols") or [], **more}})


def _first_offered(scope: dict[str, Any]) -> str | None:
    """The subprotocol a consumer picks: the first of the app's own (the token's
    ``bearer.`` entry is no longer among them; ``realtime``, offered beside it, is the
    server's to answer when the app picks none)."""
    own = [p for p in scope.get("subprotocols") or [] if p != "realtime"]
    return own[0] if own else None


class Echo(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept(_first_offered(self.scope))
        await self.send(text_data=_hello(self.scope))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        await self.send(text_data=text_data, bytes_data=bytes_data)


async def closer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A raw ASGI app: it may close with any code a server sends (1001, 1008, 1011...),
    where a consumer's ``close()`` takes 1000 and 3000-4999 only."""
    code = int(parse_qs(scope["query_string"].decode())["code"][0])
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": _hello(scope)})
    await send({"type": "websocket.close", "code": code, "reason": f"closed with {code}"})


class TokenEcho(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        claims = self.scope["user"].claims
        await self.accept(_first_offered(self.scope))
        await self.send(text_data=_hello(self.scope, sub=claims.get("sub"), n=claims.get("n")))
        close = parse_qs(self.scope["query_string"].decode()).get("close")
        if close:
            await self.close(int(close[0]))


application = ProtocolTypeRouter(
    {
        "http": URLRouter([
            path("", Page.as_app(body=MODULE_PAGE)),
            path("classic", Page.as_app(body=CLASSIC_PAGE)),
            path("realtime.js", client_app()),
            path("realtime.classic.js", client_app(module=False)),
        ]),
        "websocket": URLRouter([
            path("ws/echo", Echo.as_app()),
            path("ws/close", closer),
            path("ws/token", TokenAuthMiddleware(TokenEcho.as_app(), required=True)),
        ]),
    }
)
