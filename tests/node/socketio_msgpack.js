// socket.io-client with Node's socket.io-msgpack-parser (both npm, pinned by tests/run.sh
// into tests/.node) against realtime.socketio's serializer="msgpack", driven by
// tests/test_socketio_parity.py: node socketio_msgpack.js <url> <transport>. Prints one JSON
// object a line of what it saw; exits on its disconnect (or after 10 s).
const { io } = require("socket.io-client");
const parser = require("socket.io-msgpack-parser");

const [url, transport] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const socket = io(url, { transports: [transport], reconnection: false, parser,
                         auth: { token: "js" } });
setTimeout(() => { out({ timeout: true }); process.exit(2); }, 10000);

// Bytes arrive as Buffers (msgpack's bin), shown as arrays of numbers.
const show = (v) => (Buffer.isBuffer(v) ? { bytes: Array.from(v) } : v);
socket.on("connect_error", (err) => { out({ connect_error: err.message }); process.exit(0); });
socket.on("ask", (data, callback) => callback(show(data), Buffer.from([7])));
socket.on("said", (data) => out({ said: data.text, blob: show(data.blob) }));
socket.on("disconnect", (reason) => {
  out({ disconnect: reason });
  setTimeout(() => process.exit(0), 50);
});
socket.on("connect", async () => {
  out({ connected: socket.id });
  const answer = await new Promise((resolve) =>
    socket.emit("echo", { blob: Buffer.from([1, 2, 255]), n: 2.5 }, (...args) => resolve(args)));
  out({ echoed: answer.map((a) => (Buffer.isBuffer(a) ? show(a) : { ...a, blob: show(a.blob) })) });
  socket.emit("ready");
});
