"""What group history (``--history``) costs, on each layer, against the same layer without it.

    python benchmarks/history.py [--members 100] [--messages 3000] [--missed 1000]
                                 [--size 200] [--passes 3] [--no-redis]

Neither Daphne/Channels nor raw Autobahn has history or recovery, so there is no peer row:
the ratio that matters is a history group's publish against a plain group's, on the same
layer, in one run (passes interleaved). In this process (no sockets: the members are
receivers that count what they get, so what is measured is the layer):

- ``publish``: µs of this process's CPU per ``await group_send(...)`` of a ~``--size`` byte
  event to a group of ``--members`` local members (each delivery included), and with Redis
  also the redis-server's CPU per publish (/proc) and the wall time per publish (one at a
  time: the round trip);
- ``recover``: a member comes back after ``--missed`` messages: µs per replayed message
  from ``group_add(since=...)`` until it has them all;
- ``kept``: Redis memory per kept message (``used_memory`` before and after the group's
  history fills).

The Redis rows start their own ``redis-server`` on a free loopback port (stopped by PID);
``--no-redis`` skips them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from benchlib import CountingReceiver, free_port, median, ratio  # noqa: E402


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Redis:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server), "
                             "or pass --no-redis")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="history-bench-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def used_memory(self) -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n")
            data = b""
            while b"used_memory:" not in data or not data.endswith(b"\r\n"):
                data += s.recv(65536)
        line = data.split(b"used_memory:", 1)[1].split(b"\r\n", 1)[0]
        return int(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


async def _publish(layer: Any, group: str, args: argparse.Namespace,
                   redis: Redis | None) -> dict[str, float]:
    members = [CountingReceiver() for _ in range(args.members)]
    channels = [layer.attach(m) for m in members]
    for channel in channels:
        await layer.group_add(group, channel)
    text = "x" * args.size
    cpu, wall = time.process_time(), time.perf_counter()
    server = _cpu_of(redis.proc.pid) if redis is not None else 0.0
    for n in range(args.messages):
        await layer.group_send(group, {"type": "chat.message", "n": n, "text": text})
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    server = (_cpu_of(redis.proc.pid) - server) if redis is not None else 0.0
    assert all(m.count == args.messages for m in members), "a member missed messages"
    for channel in channels:
        layer.detach(channel)
    per = 1e6 / args.messages
    return {"cpu_us": cpu * per, "wall_us": wall * per, "redis_us": server * per}


async def _recover(layer: Any, group: str, args: argparse.Namespace) -> float:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    member = CountingReceiver()
    channel = layer.attach(member)
    await layer.group_add(group, channel)
    await layer.group_send(group, {"type": "chat.message", "n": -1})
    while member.last is None:
        await deferLater(reactor, 0.001, lambda: None)
    since = member.last["position"]
    layer.detach(channel)
    text = "x" * args.size
    for n in range(args.missed):
        await layer.group_send(group, {"type": "chat.message", "n": n, "text": text})
    back = CountingReceiver()
    start = time.perf_counter()
    result = await layer.group_add(group, layer.attach(back), since=since)
    while back.count < args.missed:
        await deferLater(reactor, 0, lambda: None)
    elapsed = time.perf_counter() - start
    assert result["recovered"] and result["missed"] == args.missed, result
    return elapsed * 1e6 / args.missed


async def _run(args: argparse.Namespace) -> None:
    from realtime.layers import InMemoryChannelLayer
    from realtime.layers.redis import RedisChannelLayer

    redis = None if args.no_redis else Redis()
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    recover: dict[str, list[float]] = {}
    kept_bytes: list[float] = []
    try:
        layers: list[tuple[str, Any]] = [("memory", None)]
        if redis is not None:
            layers.append(("redis", redis))
        for p in range(args.passes):
            for name, server in layers:
                if server is None:
                    layer: Any = InMemoryChannelLayer()
                else:
                    layer = RedisChannelLayer.from_url(server.url)
                    layer.start()
                    await layer.when_ready(10)
                    await layer.flush()
                layer.keep_history("kept.*", max(args.missed + 1, 100), 3600)
                try:
                    order = ["plain", "history"] if p % 2 == 0 else ["history", "plain"]
                    for kind in order:
                        group = f"{'kept' if kind == 'history' else 'plain'}.p{p}"
                        rows.setdefault((name, kind), []).append(
                            await _publish(layer, group, args, server))
                    recover.setdefault(name, []).append(
                        await _recover(layer, f"kept.r{p}", args))
                    if server is not None:
                        before = server.used_memory()
                        for n in range(args.missed):
                            await layer.group_send(f"kept.m{p}", {"type": "m", "n": n,
                                                                  "text": "x" * args.size})
                        kept_bytes.append((server.used_memory() - before) / args.missed)
                finally:
                    await layer.close()
                print(f"pass {p + 1}/{args.passes} {name} done", flush=True)
    finally:
        if redis is not None:
            redis.stop()

    print(f"\n{args.members} members, {args.messages} publishes of ~{args.size} B, "
          f"{args.missed} missed; medians of {args.passes} passes\n")
    print(f"{'layer':8} {'group':8} {'cpu µs/publish':>15} {'wall µs/publish':>16} "
          f"{'redis µs/publish':>17}")
    for (name, kind), values in rows.items():
        cpu = median(v["cpu_us"] for v in values)
        wall = median(v["wall_us"] for v in values)
        server = median(v["redis_us"] for v in values)
        print(f"{name:8} {kind:8} {cpu:15.1f} {wall:16.1f} "
              f"{server if name == 'redis' else float('nan'):17.1f}")
    print()
    for name, _ in ([("memory", None)] + ([("redis", None)] if redis is not None else [])):
        plain, kept = rows[(name, "plain")], rows[(name, "history")]
        cpu = ratio(median(v["cpu_us"] for v in kept), median(v["cpu_us"] for v in plain),
                    "lower")
        wall = ratio(median(v["wall_us"] for v in kept), median(v["wall_us"] for v in plain),
                     "lower")
        print(f"{name}: history's publish costs {_times(cpu)} a plain group's CPU, "
              f"{_times(wall)} its wall time; recovery "
              f"{median(recover[name]):.1f} µs per replayed message")
    if kept_bytes:
        print(f"redis: {median(kept_bytes):.0f} bytes of Redis memory per kept message "
              f"(~{args.size} B of text)")


def _times(value: float | None) -> str:
    # ratio(ours, peer, "lower") is peer / ours: how many times cheaper; invert it here.
    return "n/a" if not value else f"{1 / value:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    task.react(lambda _: Deferred.fromCoroutine(_run(args)))


if __name__ == "__main__":
    main()
