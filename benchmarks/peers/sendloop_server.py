"""The floor: the bench protocol on bare sockets and epoll, nothing else (standard library).

    python benchmarks/peers/sendloop_server.py --port 8004 [--host 127.0.0.1]

Not a server anyone should run: no limits, no validation beyond what the benchmark sends,
no fragmentation, no keepalive. It is here to measure what any Python server must pay on this
machine: a fan-out is one ``socket.send()`` per member per message (a list of members, one
prepared frame); an echo is one ``recv()`` and one ``send()`` per read. Ours' CPU per
delivery next to this one's says how much of ours is the kernel's, and whether a target
(raw Autobahn's CPU per delivery / 4) is reachable at one write per member per message.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import select
import socket
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ = select.EPOLLIN
READ_WRITE = select.EPOLLIN | select.EPOLLOUT


def frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def unmask(mask: bytes, data: bytes) -> bytes:
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class Conn:
    __slots__ = ("buf", "fd", "open", "out", "room", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.out = b""  # what the kernel did not take yet (sent before anything newer)
        self.open = False
        self.room: list[Conn] | None = None


class Server:
    def __init__(self, host: str, port: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.ep = select.epoll()
        self.ep.register(self.listener.fileno(), READ)
        self.conns: dict[int, Conn] = {}
        self.rooms: dict[bytes, list[Conn]] = {}

    def run(self) -> None:
        lfd = self.listener.fileno()
        while True:
            for fd, events in self.ep.poll():
                if fd == lfd:
                    self.accept()
                    continue
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                if events & select.EPOLLOUT:
                    self.flush(conn)
                if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    self.read(conn)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock)
            self.conns[conn.fd] = conn
            self.ep.register(conn.fd, READ)

    def read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop(conn)
            return
        conn.buf += data
        if not conn.open:
            head, sep, rest = conn.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            conn.buf = rest
            if not self.handshake(conn, head):
                return
        self.frames(conn)

    def handshake(self, conn: Conn, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        path = lines[0].split(b" ")[1] if len(lines[0].split(b" ")) > 1 else b""
        key = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if not key or not (path == b"/echo" or path.startswith(b"/room/")):
            self.write(conn, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            self.drop(conn)
            return False
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.write(conn, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        conn.open = True
        if path.startswith(b"/room/"):
            conn.room = self.rooms.setdefault(path[6:], [])
            conn.room.append(conn)
        return True

    def frames(self, conn: Conn) -> None:
        buf = conn.buf
        i = 0
        while len(buf) - i >= 6:
            b0, b1 = buf[i], buf[i + 1]
            n = b1 & 0x7F
            j = i + 2
            if n == 126:
                if len(buf) - j < 2:
                    break
                n = int.from_bytes(buf[j:j + 2], "big")
                j += 2
            elif n == 127:
                if len(buf) - j < 8:
                    break
                n = int.from_bytes(buf[j:j + 8], "big")
                j += 8
            if len(buf) - j < 4 + n:
                break
            payload = unmask(buf[j:j + 4], buf[j + 4:j + 4 + n])
            i = j + 4 + n
            opcode = b0 & 0x0F
            if opcode in (0x1, 0x2):
                out = frame(opcode, payload)
                if conn.room is None:
                    self.write(conn, out)
                else:
                    for member in conn.room:  # the fan-out: one send per member
                        self.write(member, out)
            elif opcode == 0x9:
                self.write(conn, frame(0xA, payload))
            elif opcode == 0x8:
                self.write(conn, frame(0x8, payload[:2]))
                self.drop(conn)
                return
        conn.buf = buf[i:]

    def write(self, conn: Conn, data: bytes) -> None:
        if conn.out:
            conn.out += data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return
        if sent < len(data):
            conn.out = data[sent:]
            self.ep.modify(conn.fd, READ_WRITE)

    def flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            self.drop(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self.ep.modify(conn.fd, READ)

    def drop(self, conn: Conn) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        if conn.room is not None:
            conn.room.remove(conn)
        self.ep.unregister(conn.fd)
        conn.sock.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8004)
    a = p.parse_args()
    try:
        Server(a.host, a.port).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
