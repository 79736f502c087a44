// socket.io-client acting as the Socket.IO Admin UI (https://admin.socket.io) against an
// instrumented realtime.socketio server, driven by tests/test_socketio_admin.py:
// node socketio_admin.js <url of the admin namespace> <auth as JSON>. Prints one JSON line
// per event it gets ({"event": name, "args": [...]}), {"connected": id} and
// {"connect_error": message}; reads JSON lines on stdin: {"emit": [event, ...args]} sends
// a command, anything else (or the end of stdin) exits.
const { io } = require("socket.io-client");
const readline = require("readline");

const [url, auth] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const socket = io(url, { transports: ["websocket"], reconnection: false, auth: JSON.parse(auth) });
setTimeout(() => { out({ timeout: true }); process.exit(2); }, 15000);

const exit = () => {
  socket.io.engine?.close();
  setTimeout(() => process.exit(0), 50);
};
socket.on("connect", () => out({ connected: socket.id }));
socket.on("connect_error", (err) => { out({ connect_error: err.message }); exit(); });
socket.onAny((event, ...args) => out({ event, args }));
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if (command.emit) {
    socket.emit(...command.emit);
  } else {
    exit();
  }
}).on("close", exit);
