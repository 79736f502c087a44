"""What a ``group_send`` costs on each layer kind, side by side in one run.

    python benchmarks/layers.py [--members 100] [--groups 64] [--messages 3000]
                                [--in-flight 64] [--size 200] [--passes 3] [--quick]
                                [--partitions 16]

The kinds: ``memory`` (``InMemoryChannelLayer``), ``redis`` (one redis-server),
``sharded`` (``ShardedRedisChannelLayer`` over two redis-servers) and ``cluster``
(``ClusterRedisChannelLayer`` over a three-master Redis Cluster, ``--partitions``
partitions). Every Redis is this script's own: redis-servers on free loopback ports,
started once for the whole run and stopped by PID. In this process (no sockets: members
are receivers that count what they get, so what is measured is the layer):

- ``one group``: ``--messages`` ``await group_send(...)``, one at a time, of a ~``--size``
  byte event to one group of ``--members`` local members (each delivery included);
- ``many groups``: ``--groups`` groups of 10 members, ``--messages`` group_sends spread
  round-robin over them (so over every server, node and partition), ``--in-flight`` at a
  time (issued without awaiting each, then ``gatherResults``).

Each: µs of this process's CPU per publish, wall µs per publish, and the redis-servers'
CPU per publish (from /proc, summed over every redis-server of that kind; an idle
cluster's own chatter included, as it is part of what a cluster costs).
Medians over ``--passes`` passes; in each pass every kind runs once, in an order that
rotates from pass to pass; ratios against the ``redis`` row of the same run.
``--quick``: a smoke of a few seconds (tiny sizes, one pass; a cluster's masters take
2 s to accept writes after they start, whatever the sizes). The run gives up after
``--timeout`` seconds (600), its servers stopped.
"""

from __future__ import annotations

import argparse
import gc
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

from benchlib import CountingReceiver, free_port, median  # noqa: E402

KINDS = ("memory", "redis", "sharded", "cluster")
SCENARIOS = ("one group", "many groups")
#: Members of each group of the "many groups" scenario.
GROUP_SIZE = 10
#: Slots of a Redis Cluster.
SLOTS = 16384
START_TIMEOUT = 15.0




# -- our own redis-servers -------------------------------------------------------------------




def _cpu_of(pid: int) -> float:
    """Seconds of CPU ``pid`` has used: its threads' run time in ns from
    /proc/<pid>/task/*/schedstat (what /proc/<pid>/stat's utime + stime count, which it
    rounds to clock ticks: 10 ms, a fifth of what a redis-server spends in a pass), else
    utime + stime."""
    try:
        return sum(int((task / "schedstat").read_text().split()[0])
                   for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_reply(sock: socket.socket, buffer: bytearray) -> Any:
    """One RESP2 reply (bulk strings decoded; an error raised)."""

    def line() -> bytes:
        while b"\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            buffer.extend(chunk)
        end = buffer.index(b"\r\n")
        data = bytes(buffer[:end])
        del buffer[:end + 2]
        return data

    head = line()
    kind, rest = head[:1], head[1:]
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        while len(buffer) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            buffer.extend(chunk)
        data = bytes(buffer[:size])
        del buffer[:size + 2]
        return data.decode()
    if kind == b"*":
        return [_read_reply(sock, buffer) for _ in range(int(rest))]
    return head.decode()


class Server:
    """One redis-server of ours on a free loopback port (retried on another port if the
    one chosen was taken meanwhile: it is ours once ``INFO`` gives our PID)."""

    def __init__(self, extra: tuple[str, ...] = (), bus: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="layers-bench-")
        self.proc: subprocess.Popen[bytes] | None = None
        for _ in range(3):
            self.port = free_port()
            # (a cluster bus's default port, port + 10000, may be past 65535)
            self.bus_port = free_port() if bus else 0
            ports = ("--cluster-port", str(self.bus_port)) if bus else ()
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self.dir, *extra, *ports],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._started():
                return
            self._end()
        self.stop()
        raise SystemExit("redis-server did not start")

    def _started(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                info = self.call("INFO", "server")
            except (OSError, RuntimeError):  # (RuntimeError: -LOADING)
                time.sleep(0.05)
                continue
            return f"process_id:{self.proc.pid}\r" in info
        return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def call(self, *args: str) -> Any:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"".join([b"*%d\r\n" % len(args)] + [
                b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args]))
            return _read_reply(s, bytearray())

    def _end(self) -> None:
        """Our process only, by its PID: SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        self._end()
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """A Redis Cluster of ours: ``masters`` nodes, the slots split evenly, no replicas."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes: list[Server] = []
        try:
            for _ in range(masters):
                self.nodes.append(Server(("--cluster-enabled", "yes",
                                          "--cluster-config-file", "nodes.conf"), bus=True))
            self.ranges = []
            for i, node in enumerate(self.nodes):
                first, last = i * SLOTS // masters, (i + 1) * SLOTS // masters - 1
                node.call("CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
                self.ranges.append((first, last))
            for node in self.nodes[1:]:
                self.nodes[0].call("CLUSTER", "MEET", "127.0.0.1", str(node.port),
                                   str(node.bus_port))
            self._wait_ok()
        except BaseException:
            self.stop()
            raise

    def _wait_ok(self) -> None:
        """Until every node says ``cluster_state:ok`` and knows every other."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in node.call("CLUSTER", "INFO")
                   and len(node.call("CLUSTER", "NODES").strip().splitlines())
                   == len(self.nodes) for node in self.nodes):
                return
            time.sleep(0.05)
        raise SystemExit("the Redis Cluster did not become ready")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node_of(self, slot: int) -> int:
        return next(i for i, (first, last) in enumerate(self.ranges) if first <= slot <= last)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# -- the measurements ------------------------------------------------------------------------


def _servers_cpu(pids: list[int]) -> float:
    return sum(_cpu_of(pid) for pid in pids)


def _event(n: int, text: str) -> dict[str, Any]:
    return {"type": "chat.message", "n": n, "text": text}


async def _measure(send_all: Any, messages: int, pids: list[int]) -> dict[str, float]:
    gc.collect()
    servers = _servers_cpu(pids)
    cpu, wall = time.process_time(), time.perf_counter()
    await send_all()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    servers = _servers_cpu(pids) - servers
    per = 1e6 / messages
    return {"cpu_us": cpu * per, "wall_us": wall * per,
            "servers_us": servers * per if pids else float("nan")}


async def _one_group(layer: Any, args: argparse.Namespace,
                     pids: list[int]) -> dict[str, float]:
    group = "one"
    members = [CountingReceiver() for _ in range(args.members)]
    channels = [layer.attach(m) for m in members]
    for channel in channels:
        await layer.group_add(group, channel)
    text = "x" * args.size
    for n in range(5):  # warm up (a script loaded, a connection's buffers)
        await layer.group_send(group, _event(-n, text))
    for m in members:
        m.count = 0

    async def send_all() -> None:
        for n in range(args.messages):
            await layer.group_send(group, _event(n, text))

    result = await _measure(send_all, args.messages, pids)
    assert all(m.count == args.messages for m in members), "a member missed messages"
    for channel in channels:
        layer.detach(channel)
    return result


async def _many_groups(layer: Any, args: argparse.Namespace,
                       pids: list[int]) -> dict[str, float]:
    from twisted.internet.defer import gatherResults

    groups = [f"many.{g}" for g in range(args.groups)]
    members = {group: [CountingReceiver() for _ in range(GROUP_SIZE)] for group in groups}
    channels = []
    for group in groups:
        for m in members[group]:
            channel = layer.attach(m)
            channels.append(channel)
            await layer.group_add(group, channel)
    text = "x" * args.size
    await gatherResults([layer.group_send(group, _event(-1, text)) for group in groups])
    for group in groups:
        for m in members[group]:
            m.count = 0

    async def send_all() -> None:
        for start in range(0, args.messages, args.in_flight):
            end = min(start + args.in_flight, args.messages)
            await gatherResults([layer.group_send(groups[n % len(groups)], _event(n, text))
                                 for n in range(start, end)])

    result = await _measure(send_all, args.messages, pids)
    for g, group in enumerate(groups):
        expected = len(range(g, args.messages, len(groups)))
        assert all(m.count == expected for m in members[group]), f"{group}: missed messages"
    for channel in channels:
        layer.detach(channel)
    return result


async def _run(args: argparse.Namespace, urls: dict[str, str],
               pids: dict[str, list[int]]) -> dict[tuple[str, str], list[dict[str, float]]]:
    from realtime.layers import layer_from_url

    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    for p in range(args.passes):
        order = KINDS[p % len(KINDS):] + KINDS[:p % len(KINDS)]
        for kind in order:
            layer: Any = layer_from_url(urls[kind])
            if kind != "memory":
                layer.start()
                await layer.when_ready(START_TIMEOUT)
            try:
                scenarios = SCENARIOS if p % 2 == 0 else SCENARIOS[::-1]
                for scenario in scenarios:
                    run = _one_group if scenario == "one group" else _many_groups
                    rows.setdefault((scenario, kind), []).append(
                        await run(layer, args, pids[kind]))
            finally:
                await layer.close()
            print(f"pass {p + 1}/{args.passes} {kind:8}" + "".join(
                f"  {scenario}: cpu {r['cpu_us']:6.1f} wall {r['wall_us']:6.1f} "
                f"servers {r['servers_us']:5.1f}"
                for scenario in SCENARIOS for r in [rows[(scenario, kind)][-1]]), flush=True)
    return rows


def _spread(args: argparse.Namespace, cluster: Cluster) -> str:
    """How the "many groups" groups fall on the sharded layer's servers and the cluster's
    nodes (the layers' own placement: crc32 of the name, then the partition's slot)."""
    import zlib

    from realtime.layers.cluster import key_slot, partition_tags

    names = [f"many.{g}" for g in range(args.groups)]
    sharded = [0, 0]
    nodes = [0] * len(cluster.nodes)
    tags = partition_tags(args.partitions)
    for name in names:
        crc = zlib.crc32(name.encode())
        sharded[crc % 2] += 1
        nodes[cluster.node_of(key_slot(tags[crc % args.partitions].encode()))] += 1
    return (f"groups per server: sharded {'/'.join(map(str, sharded))}, "
            f"cluster {'/'.join(map(str, nodes))}")


def _table(rows: dict[tuple[str, str], list[dict[str, float]]],
           args: argparse.Namespace) -> str:
    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:.1f}"

    def times(value: float | None, base: float | None) -> str:
        return "" if value is None or not base else f"{value / base:.2f}x"

    lines = ["| scenario | layer | CPU µs/publish | wall µs/publish | redis-servers CPU "
             "µs/publish | CPU vs redis | wall vs redis | servers vs redis |",
             "|---|---|---|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        medians = {kind: {field: median(v[field] for v in rows[(scenario, kind)])
                          for field in ("cpu_us", "wall_us", "servers_us")}
                   for kind in KINDS}
        base = medians["redis"]
        for kind in KINDS:
            m = medians[kind]
            lines.append(
                f"| {scenario} | {kind} | {fmt(m['cpu_us'])} | {fmt(m['wall_us'])} | "
                f"{fmt(m['servers_us'])} | {times(m['cpu_us'], base['cpu_us'])} | "
                f"{times(m['wall_us'], base['wall_us'])} | "
                f"{times(m['servers_us'], base['servers_us'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100,
                        help="members of the one group (default 100)")
    parser.add_argument("--groups", type=int, default=64,
                        help=f"groups of {GROUP_SIZE} members, many groups (default 64)")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=64,
                        help="group_sends in flight at once, many groups (default 64)")
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=16,
                        help="the cluster layer's partitions (default 16)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke: 10 members, 8 groups, 200 messages, 1 pass")
    args = parser.parse_args()
    if args.quick:
        args.members, args.groups, args.messages, args.passes = 10, 8, 200, 1

    servers: list[Server] = []
    cluster: Cluster | None = None
    try:
        servers = [Server(), Server(), Server()]
        cluster = Cluster()
        urls = {"memory": "memory", "redis": servers[0].url,
                "sharded": f"{servers[1].url} {servers[2].url}",
                "cluster": f"{cluster.url}?partitions={args.partitions}"}
        pids = {"memory": [], "redis": [servers[0].pid],
                "sharded": [servers[1].pid, servers[2].pid],
                "cluster": [node.pid for node in cluster.nodes]}
        rows = _react(args, urls, pids)
        print(f"\none group: {args.members} members, {args.messages} publishes one at a time; "
              f"many groups: {args.groups} groups of {GROUP_SIZE}, {args.messages} publishes "
              f"round-robin, {args.in_flight} in flight; ~{args.size} B; "
              f"cluster: 3 masters, {args.partitions} partitions; "
              f"medians of {args.passes} passes")
        print(_spread(args, cluster) + "\n")
        print(_table(rows, args))
    finally:
        if cluster is not None:
            cluster.stop()
        for server in servers:
            server.stop()


def _react(args: argparse.Namespace, urls: dict[str, str],
           pids: dict[str, list[int]]) -> dict[tuple[str, str], list[dict[str, float]]]:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    outcome: list[Any] = []

    def stop() -> None:
        if not outcome[1:]:  # (the first outcome stops the reactor)
            reactor.stop()

    def start() -> None:
        d = Deferred.fromCoroutine(_run(args, urls, pids))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: stop())

    def give_up() -> None:
        outcome.append(SystemExit(f"gave up after {args.timeout} s"))
        stop()

    watchdog = reactor.callLater(args.timeout, give_up)
    reactor.callWhenRunning(start)
    reactor.run()
    if watchdog.active():
        watchdog.cancel()
    if not outcome:
        raise SystemExit("interrupted")
    if isinstance(outcome[0], SystemExit):
        raise outcome[0]
    from twisted.python.failure import Failure

    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


if __name__ == "__main__":
    main()
