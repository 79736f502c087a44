"""The server tests/e2e/test_browser_pubsub_fallback.py drives centrifuge-js's WebSocket
fallbacks against: the page, the SDK's bundles and ``realtime.pubsub``'s streamed HTTP
transports on one origin (the SDK fetches with ``credentials: "same-origin"``; an
``EventSource`` and ``fetch`` need no CORS then).

- ``/`` (the JSON build) and ``/protobuf`` (the Protobuf build) are
  tests/e2e/pubsub_page_app.py's page and recorder (``make``, ``sub``,
  ``window.clients``), plus ``fallback(name, transports, options)``: ``make`` with
  ``transports`` (a list of ``{transport, endpoint}``, centrifuge-js's fallback form)
  instead of a WebSocket URL, whose ``connected`` contexts' ``transport`` is recorded in
  ``window.clients[name].seen.transports`` (and the ``transport`` of its ``error``
  events, when they name one, in ``seen.failedTransports``); the client is returned, not
  connected;
- before anything else, every page records its traffic: each ``fetch`` in
  ``window.traffic`` (``{url, method, type, body, status, received, ended}``: what it sent,
  and what came back, read from a clone of the response as it comes, ``ended`` once the
  response is over; bytes as lists of numbers), each ``EventSource`` in ``window.sources``
  (``{url, events, errors}``) and each ``WebSocket`` in ``window.sockets`` (``{url, opened,
  close}``);
- ``/centrifuge.js``, ``/centrifuge.protobuf.js``: the installed bundles;
- ``/connection/http_stream``, ``/connection/sse``, ``/emulation``: ``StreamConsumer``,
  ``SseConsumer``, ``EmulationConsumer`` (as ``realtime.pubsub:application`` routes them);
  ``/connection/websocket`` is ``PubSubConsumer``, and no other WebSocket path is routed.
"""

from __future__ import annotations

from realtime import ProtocolTypeRouter, URLRouter, path
from realtime.pubsub import EmulationConsumer, PubSubConsumer, SseConsumer, StreamConsumer
from tests.e2e.pubsub_page_app import RECORDER, page_routes

#: Loaded before the page's scripts (Playwright's init script): the page's traffic.
RECORD_TRAFFIC = """
window.traffic = [];
window.sources = [];
window.sockets = [];
const realFetch = window.fetch;
const asRecorded = (body) => {
  if (body === undefined || body === null) return null;
  if (typeof body === "string") return body;
  if (body instanceof ArrayBuffer) return Array.from(new Uint8Array(body));
  if (ArrayBuffer.isView(body)) {
    return Array.from(new Uint8Array(body.buffer, body.byteOffset, body.byteLength));
  }
  return String(body);
};
// What comes back, read from a clone as it comes: text, or bytes (a list of numbers).
const tee = (entry, response) => {
  const type = response.headers.get("content-type") || "";
  const binary = type.startsWith("application/octet-stream");
  entry.received = binary ? [] : "";
  entry.ended = false;
  const reader = response.clone().body.getReader();
  const decoder = new TextDecoder();
  const pump = () => reader.read().then(({ done, value }) => {
    if (done) {
      entry.ended = true;
      return undefined;
    }
    if (binary) for (const byte of value) entry.received.push(byte);
    else entry.received += decoder.decode(value, { stream: true });
    return pump();
  }, (e) => { entry.readFailure = String(e); });
  pump();
};
window.fetch = (input, init) => {
  init = init || {};
  const headers = init.headers || {};
  const entry = { url: String(input), method: init.method || "GET",
                  type: headers["Content-Type"] || null, body: asRecorded(init.body),
                  status: null, failure: null };
  window.traffic.push(entry);
  return realFetch(input, init).then((response) => {
    entry.status = response.status;
    tee(entry, response);
    return response;
  }, (e) => {
    entry.failure = String(e);
    throw e;
  });
};
window.EventSource = class extends window.EventSource {
  constructor(url, options) {
    super(url, options);
    const entry = { url: String(url), events: [], errors: 0 };
    this.addEventListener("message", (e) => entry.events.push(e.data));
    this.addEventListener("error", () => { entry.errors += 1; });
    window.sources.push(entry);
  }
};
window.WebSocket = class extends window.WebSocket {
  constructor(...args) {
    super(...args);
    const entry = { url: String(args[0]), opened: false, close: null };
    this.addEventListener("open", () => { entry.opened = true; });
    this.addEventListener("close", (e) => { entry.close = { code: e.code, reason: e.reason }; });
    window.sockets.push(entry);
  }
};
"""

FALLBACK = """
window.fallback = (name, transports, options) => {
  window.url = transports;
  const client = window.make(name, options);
  const seen = window.clients[name].seen;
  seen.transports = [];
  seen.failedTransports = [];
  client.on("connected", (c) => seen.transports.push(c.transport));
  client.on("error", (c) => { if (c.transport) seen.failedTransports.push(c.transport); });
  return client;
};
"""


def _page(script: str) -> bytes:
    return f"""<!doctype html>
<meta charset="utf-8"><title>centrifuge-js's fallbacks against realtime.pubsub</title>
<script src="/{script}"></script>
<script>
{RECORDER}
{FALLBACK}
window.ready = typeof Centrifuge === "function";
</script>
""".encode()


application = ProtocolTypeRouter(
    {
        "http": URLRouter([
            *page_routes(_page),
            path("connection/http_stream", StreamConsumer.as_asgi()),
            path("connection/sse", SseConsumer.as_asgi()),
            path("emulation", EmulationConsumer.as_asgi()),
        ]),
        "websocket": URLRouter([
            path("connection/websocket", PubSubConsumer.as_asgi()),
        ]),
    }
)
