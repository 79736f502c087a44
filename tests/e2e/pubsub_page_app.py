"""The server tests/e2e/test_browser_pubsub.py drives centrifuge-js against (run with
``--jwt-key`` and ``--namespace``).

- ``/`` loads ``/centrifuge.js`` (classic script, the global ``Centrifuge``) and gives the
  page ``make(name, options)``, which creates a ``Centrifuge`` for ``/connection/websocket``
  (the page's own host) and records everything it does in ``window.clients[name]``, and
  ``sub(name, channel, options)``, which subscribes that client and records the
  subscription's events in ``window.clients[name].subs[channel]``;
- ``/protobuf`` is the same page on the package's Protobuf build
  (``/centrifuge.protobuf.js``): its clients offer the ``centrifuge-protobuf``
  subprotocol, which realtime.pubsub speaks (``realtime.pubsub_proto``); their data is a
  ``Uint8Array`` both ways (``publish`` takes one, ``ctx.data`` is one);
- ``/centrifuge.js`` and ``/centrifuge.protobuf.js`` are the installed npm package's
  browser bundles (``dist/`` under ``tests/.node``, where ``tests/run.sh`` installs
  ``centrifuge``), read at request time: 404 when it is not installed;
- ``/connection/websocket`` is ``realtime.pubsub.PubSubConsumer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from realtime import AsyncHttpConsumer, ProtocolTypeRouter, URLRouter, path
from realtime.pubsub import PubSubConsumer
from tests.e2e.pages import Page

#: Where tests/run.sh installs centrifuge-js (npm install --prefix tests/.node).
PACKAGE = Path(__file__).resolve().parents[1] / ".node" / "node_modules" / "centrifuge"
BUNDLE = PACKAGE / "dist" / "centrifuge.js"
PROTOBUF_BUNDLE = PACKAGE / "dist" / "centrifuge.protobuf.js"

#: The page's recorder. Tokens for ``getToken`` come from ``window.tokens[name]`` (the test
#: puts them there); each call is counted.
RECORDER = """
window.clients = {};
window.tokens = {};
window.url = "ws://" + location.host + "/connection/websocket";
window.make = (name, options) => {
  const seen = { states: [], connected: [], disconnected: [], connecting: [], errors: [],
                 tokenCalls: 0 };
  options = Object.assign({ minReconnectDelay: 20, maxReconnectDelay: 200 }, options || {});
  if (options.getToken === true) {
    options.getToken = async () => {
      seen.tokenCalls += 1;
      const token = (window.tokens[name] || []).shift();
      if (token === undefined) throw new Error("no token left for " + name);
      return token;
    };
  }
  const client = new Centrifuge(window.url, options);
  client.on("state", (c) => seen.states.push(c.newState));
  client.on("connected", (c) => seen.connected.push({ client: c.client }));
  client.on("disconnected", (c) => seen.disconnected.push({ code: c.code, reason: c.reason }));
  client.on("connecting", (c) => seen.connecting.push({ code: c.code, reason: c.reason }));
  client.on("error", (c) => seen.errors.push({ type: c.type, error: c.error }));
  window.clients[name] = { client, seen, subs: {} };
  return client;
};
window.sub = (name, channel, options) => {
  const record = { subscribed: [], pubs: [], joins: [], leaves: [], errors: [],
                   unsubscribed: [], subscribing: [] };
  const sub = window.clients[name].client.newSubscription(channel, options || {});
  sub.on("subscribed", (c) => record.subscribed.push({
    wasRecovering: c.wasRecovering, recovered: c.recovered, recoverable: c.recoverable,
    streamPosition: c.streamPosition || null }));
  sub.on("subscribing", (c) => record.subscribing.push({ code: c.code, reason: c.reason }));
  sub.on("unsubscribed", (c) => record.unsubscribed.push({ code: c.code, reason: c.reason }));
  sub.on("publication", (c) => record.pubs.push({ data: c.data, offset: c.offset,
                                                  user: c.info ? c.info.user : null }));
  sub.on("join", (c) => record.joins.push({ user: c.info.user, client: c.info.client }));
  sub.on("leave", (c) => record.leaves.push({ user: c.info.user, client: c.info.client }));
  sub.on("error", (c) => record.errors.push({ type: c.type, error: c.error }));
  window.clients[name].subs[channel] = { sub, record };
  return sub;
};
"""

def _page(script: str) -> bytes:
    return f"""<!doctype html>
<meta charset="utf-8"><title>centrifuge-js against realtime.pubsub</title>
<script src="/{script}"></script>
<script>
{RECORDER}
window.ready = typeof Centrifuge === "function";
</script>
""".encode()


class Bundle(AsyncHttpConsumer):
    """An installed bundle of the package, read now (it is never copied into the
    repository)."""

    file = BUNDLE

    async def handle(self, body: bytes) -> None:
        try:
            script = self.file.read_bytes()
        except FileNotFoundError:
            await self.send_response(404, f"{self.file} is not installed (tests/run.sh)".encode(),
                                     headers=[(b"content-type", b"text/plain")])
            return
        await self.send_response(200, script, headers=[
            (b"content-type", b"text/javascript; charset=utf-8")])


def page_routes(page: Any = _page) -> list[Any]:
    """The two pages (``page(bundle)`` makes each) and the two bundles."""
    return [
        path("", Page.as_app(body=page("centrifuge.js"))),
        path("protobuf", Page.as_app(body=page("centrifuge.protobuf.js"))),
        path("centrifuge.js", Bundle.as_app()),
        path("centrifuge.protobuf.js", Bundle.as_app(file=PROTOBUF_BUNDLE)),
    ]


application = ProtocolTypeRouter(
    {
        "http": URLRouter(page_routes()),
        "websocket": URLRouter([
            path("connection/websocket", PubSubConsumer.as_asgi()),
        ]),
    }
)
