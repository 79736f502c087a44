"""The server tests/e2e/test_browser_pubsub_uni.py drives a browser's own APIs against: the
page and ``realtime.pubsub``'s unidirectional transports on one origin (an ``EventSource``
and ``fetch`` need no CORS then).

- ``/`` is a page without an SDK that records what each transport brings, by name, in
  ``window.recs[name]``: ``sse(name, request, keepOpen)`` opens an ``EventSource`` on
  ``/connection/uni_sse?cf_connect=<request>``; ``ws(name, request, inUrl)`` a
  ``WebSocket`` on ``/connection/uni_websocket`` (the request as its first message, or in
  ``cf_connect`` with ``inUrl``; nothing with a null request); ``stream(name, request)``
  a ``fetch`` POST of the request to ``/connection/uni_http_stream``, read line by line
  from its ``ReadableStream`` (its promise is the HTTP status; the reading goes on).
  Each one's ``EventSource``, ``WebSocket`` or ``AbortController`` is
  ``window.handles[name]``. Pings (``{}``) are counted, not recorded. As the README says
  pages should, the ``EventSource`` is closed on a ``disconnect`` push of code 3500 and
  up, unless ``keepOpen``;
- ``/connection/uni_sse``, ``/connection/uni_http_stream``, ``/connection/uni_websocket``
  are ``realtime.pubsub``'s consumers (as ``realtime.pubsub:application`` routes them).
"""

from __future__ import annotations

from realtime import ProtocolTypeRouter, URLRouter, path
from realtime.pubsub import UniPubSubConsumer, UniSseConsumer, UniStreamConsumer
from tests.e2e.pages import Page

RECORDER = """
window.recs = {};
window.handles = {};
const record = (name) => {
  const rec = { pushes: [], pings: 0, opens: 0, errors: [], close: null, states: [],
                status: null, contentType: null, ended: false, failure: null };
  window.recs[name] = rec;
  return rec;
};
const take = (rec, text) => {
  const push = JSON.parse(text);
  if (Object.keys(push).length === 0) rec.pings += 1; else rec.pushes.push(push);
  return push;
};
window.sse = (name, request, keepOpen) => {
  const rec = record(name);
  const q = encodeURIComponent(JSON.stringify(request));
  const source = new EventSource("/connection/uni_sse?cf_connect=" + q);
  window.handles[name] = source;
  source.onopen = () => { rec.opens += 1; };
  source.onmessage = (e) => {
    const push = take(rec, e.data);
    if (!keepOpen && push.disconnect && push.disconnect.code >= 3500) source.close();
  };
  source.onerror = () => { rec.errors.push(source.readyState); };
};
window.ws = (name, request, inUrl) => {
  const rec = record(name);
  let url = "ws://" + location.host + "/connection/uni_websocket";
  if (inUrl) url += "?cf_connect=" + encodeURIComponent(JSON.stringify(request));
  const socket = new WebSocket(url);
  window.handles[name] = socket;
  socket.onopen = () => {
    rec.opens += 1;
    if (!inUrl && request !== null) socket.send(JSON.stringify(request));
  };
  socket.onmessage = (e) => { take(rec, e.data); };
  socket.onerror = () => { rec.errors.push(socket.readyState); };
  socket.onclose = (e) => { rec.close = { code: e.code, reason: e.reason,
                                          wasClean: e.wasClean }; };
};
const readLines = async (rec, response) => {
  try {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\\n")) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 1);
        if (line.trim()) take(rec, line);
      }
    }
    if (buffer.trim()) take(rec, buffer);
    rec.ended = true;
  } catch (e) {
    rec.failure = String(e);
  }
};
window.stream = async (name, request) => {
  const rec = record(name);
  const controller = new AbortController();
  window.handles[name] = controller;
  try {
    const response = await fetch("/connection/uni_http_stream", {
      method: "POST", body: JSON.stringify(request), signal: controller.signal });
    rec.status = response.status;
    rec.contentType = response.headers.get("content-type");
    readLines(rec, response);  // on in the background
  } catch (e) {
    rec.failure = String(e);
  }
  return rec.status;
};
window.ready = true;
"""

PAGE = f"""<!doctype html>
<meta charset="utf-8"><title>realtime.pubsub's unidirectional transports, no SDK</title>
<script>
{RECORDER}
</script>
""".encode()

application = ProtocolTypeRouter(
    {
        "http": URLRouter([
            path("", Page.as_app(body=PAGE)),
            path("connection/uni_sse", UniSseConsumer.as_asgi()),
            path("connection/uni_http_stream", UniStreamConsumer.as_asgi()),
        ]),
        "websocket": URLRouter([
            path("connection/uni_websocket", UniPubSubConsumer.as_asgi()),
        ]),
    }
)
