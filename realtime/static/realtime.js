/*
 * realtime.js: the browser client of realtime (a WebSocket that reconnects by itself).
 * One file, no dependencies, no build step; BSD-3-Clause, as realtime is.
 *
 *   import { RealtimeSocket } from "/realtime.js";            // an ES module
 *   <script src="/realtime.classic.js"></script>                // a classic script: the same
 *     (served by realtime.static.client_app(module=False); sets window.RealtimeSocket)
 *
 *   const socket = new RealtimeSocket("/ws/room/", {
 *     token: () => fetch("/token").then((r) => r.text()),     // before every (re)connect
 *     params: () => (position ? { epoch: position.epoch, offset: position.offset } : {}),
 *     json: true,
 *   });
 *   socket.onmessage = (e) => console.log(e.data);
 *   socket.sendJson({ hello: "world" });                        // queued until open
 *
 * The messages are the application's: this is a plain WebSocket that comes back by itself
 * after a drain (1001), a lost connection (1006), a server error or restart
 * (1011/1012/1013/1014), a slow-consumer close (4008) and an expired token (4001), with
 * exponential backoff and full jitter, and stays closed after its own close(), a policy
 * close (1008), a message too big (1009), a refusal (4003) and other codes unless
 * shouldReconnect says so. README.md, "A browser client: realtime.js", has every option.
 */

/** Close codes after which the client reconnects unless shouldReconnect says otherwise. */
const RECONNECT_CODES = Object.freeze([1001, 1006, 1011, 1012, 1013, 1014, 4001, 4008]);
const EVENTS = ["open", "message", "close", "reconnecting", "error"];
const DEFAULTS = {
  protocols: [],
  token: null,          // a string, or a function (may be async) called before every connect
  tokenIn: "protocol",  // "protocol": a bearer.<jwt> subprotocol entry (beside "realtime",
                        // which the server answers when the app picks no protocol; kept out
                        // of URLs and proxy logs), "query": ?token=; "auto" = "protocol"
  params: null,         // an object, or a function (may be async) called before every connect
  minDelay: 500,        // ms: the first retry waits up to this (full jitter)...
  maxDelay: 20000,      // ...doubling each failed try up to this
  jitter: true,         // false: wait the whole step (tests only: a fleet would stampede)
  stableAfter: 5000,    // ms open after which the backoff starts again from minDelay
  json: false,          // parse text messages as JSON (event.data is the value)
  queueLimit: 100,      // send() while not open queues up to this many messages
  binaryType: null,     // "blob" (the browser's default) or "arraybuffer"
  shouldReconnect: null, // (event, byDefault) => true | false | undefined (the default)
  autoConnect: true,    // false: call connect() yourself
  retryOnOnline: true,  // the browser's "online" event ends a backoff wait at once
  WebSocket: null,      // the WebSocket class (default: globalThis.WebSocket at each connect)
};

function resolve(value) {
  return typeof value === "function" ? value() : value;
}

class RealtimeSocket extends EventTarget {
  #url;
  #options;
  #state = "closed";
  #ws = null;
  #queue = [];
  #attempt = 0;
  #timer = null;
  #generation = 0; // a close() or connect() makes earlier async steps moot
  #openedAt = 0;
  // The browser came back online: a retry waiting out its backoff goes now.
  #online = () => {
    if (this.#timer === null) return;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#open(this.#generation);
  };

  static RECONNECT_CODES = RECONNECT_CODES;

  constructor(url, options = {}) {
    super();
    this.#url = String(url);
    this.#options = { ...DEFAULTS, ...options };
    const { tokenIn } = this.#options;
    if (!["auto", "protocol", "query"].includes(tokenIn)) {
      throw new TypeError(`tokenIn must be "auto", "protocol" or "query", not ${tokenIn}`);
    }
    // on<event> handlers, as WebSocket has (an exception in one is reported, not thrown).
    for (const type of EVENTS) {
      this["on" + type] = null;
      this.addEventListener(type, (event) => {
        const handler = this["on" + type];
        if (typeof handler === "function") handler.call(this, event);
      });
    }
    if (this.#options.autoConnect) this.connect();
  }

  /** "connecting", "open", "reconnecting" (waiting to try again, or trying) or "closed". */
  get state() {
    return this.#state;
  }

  /** The WebSocket in use (or being opened), else null. */
  get socket() {
    return this.#ws;
  }

  /** How many messages send() has queued for the next open. */
  get queued() {
    return this.#queue.length;
  }

  get url() {
    return this.#url;
  }

  /** Open (again, after close()): token and params are asked for, the backoff starts over.
   * Does nothing unless the client is closed. */
  connect() {
    if (this.#state !== "closed") return;
    this.#attempt = 0;
    this.#state = "connecting";
    if (this.#options.retryOnOnline) globalThis.addEventListener?.("online", this.#online);
    this.#open(++this.#generation);
  }

  /** Send now when open; otherwise queue (sent in order on the next open). Returns true
   * when sent or queued, false when dropped: the queue is full or the client is closed. */
  send(data) {
    const ws = this.#ws;
    if (this.#state === "open" && ws !== null && ws.readyState === 1) {
      ws.send(data);
      return true;
    }
    if (this.#state === "closed" || this.#queue.length >= this.#options.queueLimit) {
      return false;
    }
    this.#queue.push(data);
    return true;
  }

  sendJson(value) {
    return this.send(JSON.stringify(value));
  }

  /** Close and stop reconnecting (the queue is dropped). One "close" event follows, with
   * willReconnect false: the socket's own, or at once when there was none. */
  close(code = 1000, reason = "") {
    if (code !== 1000 && !(code >= 3000 && code <= 4999)) {
      throw new RangeError(`a client closes with 1000 or 3000-4999, not ${code}`);
    }
    const ws = this.#ws;
    if (ws !== null) {
      ws.close(code, reason); // throws for a reason over 123 bytes
      // Let go of it at once (a connect() may follow before it has closed): its close
      // event is the last thing it reports.
      this.#ws = null;
      ws.onopen = ws.onmessage = null;
      ws.onclose = ({ code, reason, wasClean }) => {
        this.#emit("close", { code, reason, wasClean, willReconnect: false });
      };
    }
    const was = this.#state;
    this.#generation += 1;
    clearTimeout(this.#timer);
    this.#timer = null;
    globalThis.removeEventListener?.("online", this.#online);
    this.#queue = [];
    this.#state = "closed";
    if (ws === null && was !== "closed") {
      this.#emit("close", { code, reason, wasClean: true, willReconnect: false });
    }
  }

  async #open(generation) {
    let ws;
    try {
      const token = await resolve(this.#options.token);
      const params = await resolve(this.#options.params);
      if (generation !== this.#generation) return; // closed meanwhile
      let protocols = this.#options.protocols;
      protocols = typeof protocols === "string" ? [protocols] : [...(protocols || [])];
      // A browser fails a handshake whose offered subprotocols get no answer, and the
      // server never picks the bearer entry: "realtime" goes beside it, which the server
      // answers when the application picks none of the app's own protocols.
      let { tokenIn } = this.#options;
      if (tokenIn === "auto") tokenIn = "protocol";
      if (token && tokenIn === "protocol") {
        if (!protocols.includes("realtime")) protocols.push("realtime");
        protocols.push(`bearer.${token}`);
      }
      const url = this.#address(params, tokenIn === "query" ? token : null);
      const WebSocketClass = this.#options.WebSocket || globalThis.WebSocket;
      ws = protocols.length ? new WebSocketClass(url, protocols) : new WebSocketClass(url);
    } catch (error) {
      // token() or params() failed, or the WebSocket refused the URL or a protocol.
      if (generation !== this.#generation) return;
      this.#state = "reconnecting";
      this.#emit("error", { error });
      if (generation === this.#generation) this.#retry();
      return;
    }
    if (this.#options.binaryType) ws.binaryType = this.#options.binaryType;
    this.#ws = ws;
    this.#openedAt = 0;
    ws.onopen = () => {
      if (this.#ws !== ws || this.#state === "closed") return;
      this.#openedAt = Date.now();
      this.#state = "open";
      const queued = this.#queue;
      this.#queue = [];
      for (const data of queued) ws.send(data);
      this.#emit("open", {});
    };
    ws.onmessage = (message) => {
      if (this.#ws !== ws || this.#state === "closed") return;
      let data = message.data;
      if (this.#options.json && typeof data === "string") {
        try {
          data = JSON.parse(data);
        } catch (error) {
          this.#emit("error", { error, data });
          return;
        }
      }
      this.#emit("message", { data });
    };
    ws.onclose = (closed) => this.#closed(ws, closed);
  }

  #closed(ws, closed) {
    if (this.#ws !== ws) return;
    this.#ws = null;
    const { code, reason, wasClean } = closed;
    const info = { code, reason, wasClean };
    if (this.#openedAt && Date.now() - this.#openedAt >= this.#options.stableAfter) {
      this.#attempt = 0; // it had been up a while: start the backoff over
    }
    const byDefault = RECONNECT_CODES.includes(code);
    let again = byDefault;
    if (typeof this.#options.shouldReconnect === "function") {
      const says = this.#options.shouldReconnect(info, byDefault);
      if (says !== undefined && says !== null) again = Boolean(says);
    }
    if (this.#state === "closed") return; // shouldReconnect called close()
    if (again) {
      this.#state = "reconnecting";
      const generation = this.#generation;
      this.#emit("close", { ...info, willReconnect: true });
      if (generation === this.#generation) this.#retry();
    } else {
      this.#generation += 1;
      this.#queue = [];
      this.#state = "closed";
      globalThis.removeEventListener?.("online", this.#online);
      this.#emit("close", { ...info, willReconnect: false });
    }
  }

  #retry() {
    const { minDelay, maxDelay, jitter } = this.#options;
    const step = Math.min(maxDelay, minDelay * 2 ** Math.min(this.#attempt, 30));
    const delay = Math.round(jitter ? Math.random() * step : step);
    this.#attempt += 1;
    const generation = this.#generation;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      if (generation === this.#generation) this.#open(generation);
    }, delay);
    this.#emit("reconnecting", { attempt: this.#attempt, delay });
  }

  #address(params, token) {
    const base = typeof location === "undefined" ? undefined : location.href;
    const url = new URL(this.#url, base);
    if (url.protocol === "http:") url.protocol = "ws:";
    else if (url.protocol === "https:") url.protocol = "wss:";
    for (const [name, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
    }
    if (token) url.searchParams.set("token", token);
    return url.href;
  }

  #emit(type, properties) {
    this.dispatchEvent(Object.assign(new Event(type), properties));
  }
}

// realtime.static.client_app(module=False) serves what is above this line in a function
// that ends with globalThis.RealtimeSocket = RealtimeSocket (a classic <script>).
export { RealtimeSocket, RECONNECT_CODES };
export default RealtimeSocket;
