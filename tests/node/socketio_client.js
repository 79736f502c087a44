// socket.io-client (npm, pinned by tests/run.sh into tests/.node) against realtime.socketio,
// driven by tests/test_socketio.py: node socketio_client.js <url> <token> [transports], the
// transports comma-separated (default "websocket"; "polling,websocket" is the client's own
// default: polling, then the upgrade). Prints one JSON object a line of what it saw; exits
// when the server says "bye" (or after 10 s).
const { io } = require("socket.io-client");

const [url, token, transports = "websocket"] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const options = { transports: transports.split(","), reconnection: false, auth: { token } };
const socket = io(url, options);
setTimeout(() => { out({ timeout: true }); process.exit(2); }, 10000);

// Exits once the engine's close has had a moment to go out (over polling, a POST).
const exit = () => {
  socket.io.engine?.close();
  setTimeout(() => process.exit(0), 50);
};
// A server's disconnect (AsyncServer(always_connect=True) refusing after CONNECT).
socket.on("disconnect", (reason) => {
  if (reason === "io server disconnect") {
    out({ disconnected: reason });
    exit();
  }
});
socket.on("connect_error", (err) => {
  out({ connect_error: err.message, data: err.data ?? null });
  exit();
});
// The server's call(): answered through the ack callback.
socket.on("ask", (n, callback) => callback(n * 2, "js"));
socket.on("bin", (data) => out({ bin: Array.from(data.blob), name: data.name }));
socket.on("bye", () => {
  const transport = socket.io.engine.transport.name;
  socket.disconnect();
  out({ done: true, transport });
  exit();
});
socket.on("connect", async () => {
  out({ connected: socket.id });
  // Every argument of the ack (emitWithAck resolves with the first only).
  out({ echoed: await new Promise((resolve) => socket.emit("echo", "hi", 3, (...args) => resolve(args))) });
  const reversed = await socket.emitWithAck("upload", { blob: Buffer.from([1, 2, 3]) });
  out({ reversed: Array.from(reversed) });
  const chat = io(url + "/chat", options);  // a second namespace on the same connection
  chat.on("connect", async () => {
    out({ chat: chat.id, same_engine: chat.io.engine === socket.io.engine });
    out({ chat_echo: await chat.emitWithAck("echo", "in chat") });
    const engine = socket.io.engine;
    if (engine.transport.name !== "websocket" && options.transports.includes("websocket")) {
      await new Promise((resolve) => engine.once("upgrade", resolve));  // then on the WebSocket
    }
    socket.emit("ready");
  });
});
