"""Profile our server under the echo (or a fan-out) load with py-spy, and print its top
functions.

    pip install py-spy
    python benchmarks/profile_ours.py [--inflight 16] [--seconds 10] [--svg profile.svg]
    python benchmarks/profile_ours.py --server ours-channels --fanout 5000 --msg-rate 5

Starts ours (the twistd of the Python running this script) pinned to core 0, the load
client (100 connections, 64 B text) pinned to core 1, samples ours with ``py-spy record
--format raw --function`` for ``--seconds``, then prints the functions with the most
samples: "self" (on top of the stack) and "total" (anywhere on it, the reactor loop's own
frames left out). ``--svg`` also writes a flame graph. Only the processes it starts are
stopped, by PID.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import Server, pinned, raise_nofile, server_specs  # noqa: E402

_PATH_PREFIX = re.compile(r" \((?:/[^()]*?/(?:site-packages|lib/python3\.\d+|main)/)")


def top_functions(raw: str, n: int = 12) -> tuple[int, list[tuple[float, str]],
                                                   list[tuple[float, str]]]:
    """From py-spy's raw (collapsed) stacks: total samples, top self and top total."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        k = int(count)
        total += k
        frames = [_PATH_PREFIX.sub(" (", f) for f in stack.split(";")]
        own[frames[-1]] += k
        for f in set(frames):
            anywhere[f] += k
    t = max(total, 1)
    # The reactor loop and twistd's frames are on (nearly) every stack: leave them out.
    inner = [(f, c) for f, c in anywhere.most_common() if c < 0.9 * t and f.strip()]
    return (total, [(100 * c / t, f) for f, c in own.most_common(n) if f.strip()],
            [(100 * c / t, f) for f, c in inner[:n]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inflight", type=int, default=16)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--svg", type=Path)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--server", default="ours",
                   choices=("ours", "ours-channels", "ours-channels-asyncio"),
                   help="which of ours (run.py's names): the bench app, or Daphne's Channels "
                   "consumers ported, on the default or the asyncio reactor")
    p.add_argument("--fanout", type=int, metavar="MEMBERS",
                   help="profile a fan-out to MEMBERS (one publisher, --msg-rate messages/s) "
                   "instead of the echo load")
    p.add_argument("--msg-rate", type=float, default=10.0)
    default_client = HERE / ".venvs" / "client" / "bin" / "python"
    p.add_argument("--client-python", default=str(default_client) if default_client.exists()
                   else sys.executable, help="the Python with picows (default: the client "
                   "virtualenv when present, else this one)")
    a = p.parse_args(argv)
    pyspy = shutil.which("py-spy")
    if not pyspy:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    raise_nofile()
    spec = server_specs()[a.server]
    tmp = Path(tempfile.mkdtemp(prefix="profile-ours-"))
    server = Server(spec, sys.executable, tmp / "ours.log", 0)
    client = None
    try:
        server.wait_ready()
        if a.fanout:
            load = ["fanout", "--url", f"ws://127.0.0.1:{server.port}/room/bench",
                    "--members", str(a.fanout), "--rate", str(a.msg_rate), "--size", "64",
                    "--warmup", "0", "--duration", str(a.seconds + 6)]
        else:
            load = ["echo", "--url", f"ws://127.0.0.1:{server.port}/echo",
                    "--conns", str(a.conns), "--inflight", str(a.inflight), "--size", "64",
                    "--warmup", "0", "--duration", str(a.seconds + 4)]
        client = subprocess.Popen(pinned(
            [a.client_python, str(HERE / "loadclient.py"), *load,
             "--server-pid", str(server.pid)], 1), stdout=subprocess.PIPE, text=True)
        time.sleep(6 if a.fanout else 2)  # the members' handshakes first
        raw = tmp / "profile.txt"
        subprocess.run([pyspy, "record", "--format", "raw", "--rate", str(a.rate),
                        "--duration", str(int(a.seconds)), "--function",
                        "--output", str(raw), "--pid", str(server.pid)],
                       check=True, capture_output=True, timeout=a.seconds + 60)
        if a.svg:
            subprocess.run([pyspy, "record", "--format", "flamegraph", "--rate", str(a.rate),
                            "--duration", "3", "--output", str(a.svg),
                            "--pid", str(server.pid)], check=True, capture_output=True,
                           timeout=60)
        out, _ = client.communicate(timeout=a.seconds + 60)
        client = None
        total, own, anywhere = top_functions(raw.read_text(), a.top)
        print(f"load: {out.strip()[:300]}")
        print(f"\n{total} samples; top functions by self time:")
        for pct, f in own:
            print(f"{pct:5.1f} %  {f}")
        print("\nby total time (on the stack):")
        for pct, f in anywhere:
            print(f"{pct:5.1f} %  {f}")
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
