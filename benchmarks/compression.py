"""What ``--compression`` costs and saves, against raw Autobahn compressing the way its
documentation shows, side by side in one run.

    python benchmarks/compression.py [--members 500] [--messages 100] [--rate 20]
                                     [--size 1024] [--passes 3] [--out DIR]

Servers on 127.0.0.1, each pinned to core 0 in turn, interleaved pass by pass:

- ``ours``: ``twistd -n realtime --compression`` (no zlib state per socket; one compressed
  frame per broadcast for every member);
- ``ours-level6``: the same at ``--compression-level 6``, the level Autobahn compresses at
  (zlib's default), so the two differ only in context takeover and compressing per member;
- ``ours-plain``: the same server without ``--compression`` (what compression costs);
- ``autobahn``: the raw Autobahn peer with ``--compression`` (``PerMessageDeflateOfferAccept``
  for each offer: context takeover, one compressor per socket at zlib level 6, each member's
  copy compressed on its own).

Daphne has no row: it never negotiates permessage-deflate (its clients get the plain bytes,
as ``ours-plain``'s do).

This process is the client, pinned to core 1: ``--members`` ``websockets`` clients that
offer permessage-deflate (as browsers do) join one room of the bench protocol; one of them
sends ``--messages`` JSON messages of about ``--size`` bytes at ``--rate`` per second, which
the server sends to every member (sender included). Printed per server, medians over the
passes: the server's CPU (user + system, /proc) per delivery while the messages go out, the
bytes each delivery took on the wire (counted by the clients, frame headers included), the
server's RSS per member once the messages are out (above its RSS before the members
connected), and whether every member got every message (intact: each is checked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from benchlib import ProcStat, median, raise_nofile, ratio  # noqa: E402
from run import free_port, pinned, wait_listening  # noqa: E402

SERVERS = ("ours", "ours-level6", "ours-plain", "autobahn")


def server_argv(name: str, port: int) -> list[str]:
    python = sys.executable
    if name == "autobahn":
        return [python, str(HERE / "peers" / "autobahn_server.py"), "--port", str(port),
                "--compression"]
    twistd = Path(python).parent / "twistd"
    argv = [str(twistd) if twistd.exists() else shutil.which("twistd") or "twistd",
            "-n", "--pidfile=", "realtime",
            "--app", "realtime.examples.bench:application",
            "--port", f"tcp:{port}:interface=127.0.0.1"]
    if name == "ours-level6":  # Autobahn's level (it compresses at zlib's default, 6)
        return [*argv, "--compression", "--compression-level", "6"]
    return argv + (["--compression"] if name == "ours" else [])


def message(i: int, size: int) -> str:
    """A chat-like JSON document of about ``size`` bytes, different for every ``i``."""
    rng = random.Random(i)
    words = ["hello", "room", "deploy", "ok", "thanks", "status", "green", "build", "ready",
             "merge", "review", "ship", "today", "tomorrow", "user", "update"]
    items: list[dict[str, Any]] = []
    while len(json.dumps(items)) < size:
        items.append({"id": rng.randrange(10**6), "user": f"user{rng.randrange(100)}",
                      "text": " ".join(rng.choice(words) for _ in range(rng.randrange(3, 9)))})
    return json.dumps({"seq": i, "items": items})


async def run_one(name: str, a: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    from websockets.asyncio.client import ClientConnection, connect

    class Counting(ClientConnection):
        wire = 0

        def data_received(self, data: bytes) -> None:
            self.wire += len(data)
            super().data_received(data)

    port = free_port()
    log = open(log_dir / f"{name}.log", "wb")
    proc = subprocess.Popen(pinned(server_argv(name, port), a.server_core),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=raise_nofile)
    stat = ProcStat(proc.pid)
    row: dict[str, Any] = {"server": name}
    try:
        wait_listening(proc, port, name, 30)
        rss_before = stat.rss_kb()
        url = f"ws://127.0.0.1:{port}/room/bench"
        members = []
        for _ in range(a.members):
            members.append(await connect(url, compression="deflate", create_connection=Counting,
                                         max_size=None, open_timeout=10, ping_interval=None))
        row["negotiated"] = members[0].response.headers.get("Sec-WebSocket-Extensions")
        texts = [message(i, a.size) for i in range(a.messages)]
        got = [0] * a.members
        bad = 0

        async def read(k: int, ws: Any) -> None:
            nonlocal bad
            for i in range(a.messages):
                if await ws.recv() != texts[i]:
                    bad += 1
                got[k] += 1

        readers = [asyncio.ensure_future(read(k, ws)) for k, ws in enumerate(members)]
        await asyncio.sleep(0.5)  # the joins settle
        wire0 = sum(ws.wire for ws in members)
        cpu0 = stat.cpu_s()
        start = time.monotonic()
        for i, text in enumerate(texts):
            await members[0].send(text)
            delay = start + (i + 1) / a.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        try:
            await asyncio.wait_for(asyncio.gather(*readers), timeout=a.time_limit)
        except TimeoutError:
            pass
        cpu1 = stat.cpu_s()
        delivered = sum(got)
        row.update(
            deliveries=delivered,
            offered=a.members * a.messages,
            corrupt=bad,
            cpu_us=(cpu1 - cpu0) * 1e6 / delivered if delivered and cpu0 is not None
            and cpu1 is not None else None,
            wire_bytes=(sum(ws.wire for ws in members) - wire0) / delivered if delivered else None,
            plain_bytes=statistics.mean(len(t.encode()) for t in texts),
        )
        rss_after = stat.rss_kb()
        if rss_before is not None and rss_after is not None:
            row["rss_kb_per_member"] = (rss_after - rss_before) / a.members
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*(ws.close() for ws in members), return_exceptions=True)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return row


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=500)
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--rate", type=float, default=20.0, help="messages per second")
    p.add_argument("--size", type=int, default=1024, help="bytes of JSON per message")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--time-limit", type=float, default=60.0,
                   help="seconds to wait for the last deliveries of a run")
    p.add_argument("--out", default="/tmp/bench/compression")
    a = p.parse_args(argv)
    servers = [s for s in a.servers.split(",") if s]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        p.error(f"unknown servers: {sorted(unknown)}")
    two_cores = (os.cpu_count() or 1) >= 2
    a.server_core = 0 if two_cores else None
    if two_cores:
        os.sched_setaffinity(0, {1})
    raise_nofile()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for n in range(a.passes):
        for name in servers:
            row = asyncio.run(run_one(name, a, out))
            row["pass"] = n
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def med(name: str, key: str) -> float | None:
        return median(r.get(key) for r in rows if r["server"] == name)

    print(f"\n{a.members} members x {a.messages} messages of ~{a.size} B JSON at {a.rate:g}/s, "
          f"{a.passes} passes, medians")
    print(f"{'server':<12}{'CPU us/delivery':>17}{'wire B/delivery':>17}"
          f"{'RSS KB/member':>15}{'delivered':>12}")
    for name in servers:
        delivered = [r["deliveries"] == r["offered"] and not r["corrupt"]
                     for r in rows if r["server"] == name]
        print(f"{name:<12}{fmt(med(name, 'cpu_us'), '.1f'):>17}"
              f"{fmt(med(name, 'wire_bytes'), '.0f'):>17}"
              f"{fmt(med(name, 'rss_kb_per_member'), '.1f'):>15}"
              f"{sum(delivered):>7}/{len(delivered)} all")
    for mine in ("ours", "ours-level6"):
        if mine not in servers or "autobahn" not in servers:
            continue
        for key, what in (("cpu_us", "CPU per delivery"),
                          ("rss_kb_per_member", "memory per member")):
            less = ratio(med(mine, key), med("autobahn", key), "lower")
            if less and math.isfinite(less):  # a run too short to measure: nothing
                print(f"{mine} vs raw Autobahn, {what}: {less:.2f}x less")
    if "ours" in servers and "ours-plain" in servers:
        fewer = ratio(med("ours", "wire_bytes"), med("ours-plain", "wire_bytes"), "lower")
        if fewer and math.isfinite(fewer):
            print(f"ours compressed vs plain, wire bytes: {fewer:.2f}x fewer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
