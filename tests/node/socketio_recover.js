// socket.io-client (tests/.node) for tests/test_socketio.py's connection state recovery
// tests: node socketio_recover.js <url> <transports> [auth JSON]. Prints one JSON object a
// line of what it saw (every event with all its arguments, the offset last); reads commands
// a line each from stdin:
//   cut        the connection ends as Node's own tests end it (socket.io.engine.close())
//   drop       (WebSocket) its TCP socket is destroyed: no close frame, as a lost network
//   reconnect  socket.connect(): the CONNECT carries the pid and the last offset
//   leave      socket.disconnect(): a client disconnect, not recoverable
//   emit <e>   socket.emit(e)
//   exit
// Reconnection is off: the test says when to come back. Exits after 15 s at most.
const { io } = require("socket.io-client");
const readline = require("readline");

const [url, transports = "websocket", auth = '{"token":"js"}'] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const socket = io(url, { transports: transports.split(","), reconnection: false,
                         auth: JSON.parse(auth) });
setTimeout(() => { out({ timeout: true }); process.exit(2); }, 15000);

socket.on("connect", () => {
  const engine = socket.io.engine;
  out({ connected: socket.id, recovered: socket.recovered, transport: engine.transport.name });
  if (engine.transport.name !== "websocket" && engine._upgrades.length) {
    engine.once("upgrade", () => out({ upgraded: true }));
  }
});
socket.on("connect_error", (err) => out({ connect_error: err.message }));
socket.on("disconnect", (reason) => out({ disconnect: reason }));
socket.onAny((event, ...args) => {
  out({ event, args: args.map((a) => (Buffer.isBuffer(a) ? { bytes: Array.from(a) } : a)) });
});

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const [command, arg] = line.trim().split(" ");
  if (command === "cut") {
    socket.io.engine.close();
  } else if (command === "drop") {
    socket.io.engine.transport.ws._socket.destroy();
  } else if (command === "reconnect") {
    socket.connect();
  } else if (command === "leave") {
    socket.disconnect();
  } else if (command === "emit") {
    socket.emit(arg);
  } else if (command === "exit") {
    socket.io.engine?.close();
    setTimeout(() => process.exit(0), 50);
  }
});
