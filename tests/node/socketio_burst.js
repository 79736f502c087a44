// socket.io-client (npm, pinned by tests/run.sh into tests/.node) against realtime.socketio's
// async_handlers=False, driven by tests/test_socketio_parity.py: node socketio_burst.js <url>
// <transport> <count>. Once connected it emits "slow", then "note" 1..count (each asking
// for an ack), then disconnects at once. Prints {"connected": sid}, then {"closed": reason}
// when its engine closes (its DISCONNECT and close sent first: the client drains them).
const { io } = require("socket.io-client");

const [url, transport, count] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const socket = io(url, { transports: [transport], reconnection: false });
setTimeout(() => { out({ timeout: true }); process.exit(2); }, 10000);

socket.on("connect_error", (err) => { out({ connect_error: err.message }); process.exit(1); });
socket.on("connect", () => {
  out({ connected: socket.id });
  socket.io.engine.on("close", (reason) => {
    out({ closed: reason });
    setTimeout(() => process.exit(0), 200);  // (over polling, the close packet's POST)
  });
  socket.emit("slow");
  for (let n = 1; n <= Number(count); n++) socket.emit("note", n, () => {});
  socket.disconnect();
});
