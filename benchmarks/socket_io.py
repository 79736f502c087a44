"""Socket.IO: realtime.socketio against python-socketio under uvicorn, side by side.

    python benchmarks/socket_io.py             # 3 passes x 3 servers x 4 scenarios: 5-6 minutes
    python benchmarks/socket_io.py --quick     # 1 pass, tiny sizes: about 30 s

The same app on every server (peers/socketio_app.py: an ``echo`` handler that acks its
argument, ``join`` into a room, ``say`` that emits to the room), served the way each
server's users serve it: ours ``twistd realtime --app`` a ``ProtocolTypeRouter`` with
``sio.as_asgi()`` at ``/socket.io/`` (default reactor); python-socketio's ``AsyncServer``
as ``socketio.ASGIApp`` under uvicorn, with uvicorn's default WebSocket implementation
(``websockets``) and with ``--ws websockets-sansio``. The load client (sioclient.py: raw
Engine.IO/Socket.IO frames over picows, not python-socketio's client) speaks the WebSocket
transport. Scenarios: echo with an ack, 1 and 16 in flight per connection over 10
connections (64 B); a room of 1,000 members, one publisher's ``say`` ``--fanout-rate``
times a second, every delivery counted per member; 2,000 idle connected sockets (server
RSS per connection).

Each run: a fresh server pinned to core 0, the client pinned to core 1, the server stopped
by its PID; passes interleaved; medians; ratios ours vs each peer from the same run. The
machinery (virtualenvs, pinning, free ports, waiting for a quiet machine, retries, the
table) is run.py's and benchlib.py's; python-socketio and uvicorn go into a virtualenv of
this script's own (benchmarks/.venvs/socketio). Writes the rows to
benchmarks/results/socketio-<time>.jsonl and the table to
benchmarks/results/socketio-latest.md (also printed).

(This file is named after what it measures; it does not import python-socketio, whose
package is also ``socketio``: only the peer server, in its own virtualenv and directory,
does.)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchlib import Scenario, runner_defaults  # noqa: E402
from run import (  # noqa: E402
    OURS,
    RESULTS,
    ServerSpec,
    chosen_servers,
    client_attempt,
    prepare_venvs,
    publish_side,
    recorded_passes,
    report,
    runner_start,
    side_meta,
    versions,
)

CLIENT = HERE / "sioclient.py"
VENV = "socketio"
REQUIREMENTS = ("uvicorn[standard]", "websockets", "python-socketio")
PSIO = "psio"
PSIO_SANSIO = "psio-sansio"
#: Versions reported for the python-socketio servers, beside run.py's.
PSIO_VERSIONS = ("python-socketio", "python-engineio")
#: Engine.IO's WebSocket transport, no polling first.
PATH = "/socket.io/?EIO=4&transport=websocket"


@dataclass
class SioServerSpec(ServerSpec):
    """run.py's server, serving peers/socketio_app.py."""

    ws: str | None = None  # uvicorn's --ws (None: its default)

    def argv(self, python: str, port: int, extra: Sequence[str] = ()) -> list[str]:
        if self.name in (PSIO, PSIO_SANSIO):
            ws = ["--ws", self.ws] if self.ws else []
            return [python, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                    *ws, "--log-level", "warning", "--no-access-log", self.app]
        return super().argv(python, port, extra)


def sio_specs() -> dict[str, SioServerSpec]:
    return {
        # This checkout's realtime first on the path: the Python running this script may
        # have realtime installed from another checkout (an editable install of main).
        OURS: SioServerSpec(OURS, "ours", None, env={"PYTHONPATH": str(HERE.parent)},
                            app="socketio_app:application"),
        PSIO: SioServerSpec(PSIO, "python-socketio+uvicorn", VENV, REQUIREMENTS,
                            app="socketio_app:app"),
        PSIO_SANSIO: SioServerSpec(PSIO_SANSIO, "python-socketio+uvicorn sansio", VENV,
                                   REQUIREMENTS, app="socketio_app:app",
                                   ws="websockets-sansio"),
    }


def scenarios(opts: argparse.Namespace) -> tuple[Scenario, ...]:
    q = opts.quick
    members = 20 if q else opts.fanout_members
    idle = 20 if q else opts.idle_conns
    rate = opts.fanout_rate
    return (
        Scenario("sio-echo-10x1", "echo", {"conns": opts.echo_conns, "inflight": 1, "size": 64},
                 f"echo with ack, {opts.echo_conns} conns x 1 in flight, 64 B", 60),
        Scenario("sio-echo-10x16", "echo",
                 {"conns": opts.echo_conns, "inflight": 16, "size": 64},
                 f"echo with ack, {opts.echo_conns} conns x 16 in flight, 64 B", 60),
        Scenario(f"sio-fanout-{members}x{rate:g}", "fanout",
                 {"members": members, "rate": rate, "size": 64},
                 f"room fan-out, {members:,} members x {rate:g} say/s "
                 f"({members * rate:,.0f} deliveries/s offered)", 150),
        Scenario(f"sio-idle-{idle}", "idle", {"conns": idle, "concurrency": 100},
                 f"idle, {idle:,} connected sockets", 150),
    )


def client_args(sc: Scenario, port: int, opts: argparse.Namespace) -> list[str]:
    p = sc.params
    url = ["--url", f"ws://127.0.0.1:{port}{PATH}"]
    if sc.kind == "echo":
        args = ["echo", *url, "--conns", str(p["conns"]), "--inflight", str(p["inflight"]),
                "--size", str(p["size"]), "--duration", str(opts.echo_duration),
                "--warmup", str(opts.warmup)]
    elif sc.kind == "fanout":
        args = ["fanout", *url, "--members", str(p["members"]), "--rate", str(p["rate"]),
                "--size", str(p["size"]), "--duration", str(opts.fanout_duration),
                "--warmup", str(opts.warmup), "--drain", str(opts.drain)]
    else:
        args = ["idle", *url, "--conns", str(p["conns"]),
                "--concurrency", str(p["concurrency"])]
    return [*args, "--scenario", sc.name, "--time-limit", str(sc.time_limit)]


#: One fresh server, one sioclient.py run, the server stopped by its PID.
run_attempt = client_attempt(client_args, CLIENT)


def loss_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The zero-loss check of the fan-out, pass by pass (a median would hide one bad pass)."""
    out = []
    for r in rows:
        if r.get("kind") != "fanout" or not r.get("ok"):
            continue
        if r.get("lost") or r.get("members_short") or r.get("dropped_members"):
            out.append(f"- {r['server']} pass {r['pass']}: {r.get('lost')} of "
                       f"{r.get('expected')} deliveries lost, {r.get('members_short')} "
                       f"members short (each got {r.get('member_min')}-"
                       f"{r.get('member_max')} of {r.get('sent')}), "
                       f"{r.get('dropped_members')} closed by the server")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default=f"{OURS},{PSIO},{PSIO_SANSIO}",
                   help=f"comma-separated: {OURS}, {PSIO} (python-socketio under uvicorn, "
                   f"its default WebSocket implementation), {PSIO_SANSIO} (uvicorn --ws "
                   "websockets-sansio); default: all three")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--echo-conns", type=int, default=10)
    p.add_argument("--echo-duration", type=float, default=5.0)
    p.add_argument("--fanout-members", type=int, default=1000)
    p.add_argument("--fanout-rate", type=float, default=10.0,
                   help="say events per second (default 10: 10,000 deliveries/s to 1,000 "
                   "members, below what python-socketio's core can take, so its CPU per "
                   "delivery is a cost, not one core divided by the rate)")
    p.add_argument("--fanout-duration", type=float, default=8.0)
    p.add_argument("--drain", type=float, default=5.0)
    p.add_argument("--idle-conns", type=int, default=2000)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--quick", action="store_true",
                   help="1 pass, 1 s windows, 20 members and 20 idle sockets (a smoke run)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the server and the client to cores")
    p.add_argument("--no-venvs", dest="venvs", action="store_false",
                   help="run every server and the client from this Python (no installs: "
                   "python-socketio, uvicorn and picows must be there)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quiet-wait", type=float,
                   help="before each run, wait up to this many seconds for the machine to be "
                   "idle; default 10, 0 with --quick")
    p.add_argument("--retries", type=int,
                   help="run again when other processes took more than --noise-limit of a "
                   "pinned core (the quietest kept); default 1, 0 with --quick")
    p.add_argument("--noise-limit", type=float, default=0.10)
    a = p.parse_args(argv)
    if a.quick:
        a.passes, a.echo_duration, a.fanout_duration, a.warmup, a.drain = 1, 1.0, 1.0, 0.3, 2.0
    return runner_defaults(a)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    log = runner_start()
    specs = sio_specs()
    servers = chosen_servers(opts, specs, log)
    if servers is None:
        return 2
    scs = scenarios(opts)
    t_start = time.monotonic()
    client_python = prepare_venvs(specs, servers, opts, log)
    meta_versions = {s: versions(specs[s].python(opts.venvs)) for s in servers}
    for s in servers:
        if specs[s].venv:
            meta_versions[s].update(versions(specs[s].python(opts.venvs), PSIO_VERSIONS))

    rows, jsonl = recorded_passes("socketio", specs, servers, scs, opts, client_python, log,
                                  attempt=run_attempt)
    elapsed = (time.monotonic() - t_start) / 60
    notes = ["Scenarios: " + "; ".join(f"`{sc.name}`: {sc.title}" for sc in scs)
             + f". Echo: {opts.warmup:g} s warm-up, {opts.echo_duration:g} s measured; "
             f"fan-out: {opts.warmup:g} s warm-up, {opts.fanout_duration:g} s measured, up "
             f"to {opts.drain:g} s for stragglers. Server CPU: its threads' run time "
             "(/proc/PID/task/*/schedstat) over the window."]
    losses = loss_lines(rows)
    fanouts = [r for r in rows if r.get("kind") == "fanout" and r.get("ok")]
    if losses:
        notes += ["", "Fan-out passes with losses:", "", *losses]
    elif fanouts:
        notes += ["", f"Fan-out: every member got every message of the window in every pass "
                  f"({len(fanouts)} runs, counted per member)."]
    if opts.quick:
        notes += ["", "Quick run (1 pass, 1 s, 20 members): figures are not comparable "
                  "with a full run."]
    meta = side_meta("Socket.IO", opts, elapsed, meta_versions, notes)
    text = report(rows, scs, servers, {s: specs[s].label for s in servers}, meta)
    publish_side("socketio", text, jsonl, elapsed, opts, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
