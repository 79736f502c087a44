"""Django's own views over HTTP: ours (--reactor=asyncio) against Daphne and uvicorn.

    python benchmarks/django_http.py            # 3 passes x 3 servers x 2 views: 3-5 minutes
    python benchmarks/django_http.py --quick    # 1 pass, 1 s, 5 connections: under a minute

One Django project (peers/django_http_app/: a sync and an async view returning the same
100-byte JSON, no database, no middleware, DEBUG off) served the way each server's users
serve it: ours ``twistd --reactor=asyncio realtime --app`` a ProtocolTypeRouter from
realtime, Daphne the same router from Channels, uvicorn (httptools, uvloop) the bare
``get_asgi_application()``. Each run: a fresh server pinned to core 0, the HTTP load client
(httpclient.py: keep-alive connections, one GET in flight each) pinned to core 1, the server
stopped by its PID; passes interleaved; medians. The machinery (virtualenvs, pinning, free
ports, waiting for a quiet machine, retries, the table) is run.py's and benchlib.py's.
Writes the rows to benchmarks/results/django-http-<time>.jsonl and the table to
benchmarks/results/django-http-latest.md (also printed).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
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
    server_specs,
    side_meta,
    versions,
)

CLIENT = HERE / "httpclient.py"
SETTINGS = {"DJANGO_SETTINGS_MODULE": "django_http_app.settings"}

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("django-sync", "http", {"path": "/sync"},
             "GET a sync Django view (runs in asgiref's thread), 100 B of JSON", 60),
    Scenario("django-async", "http", {"path": "/async"},
             "GET an async Django view (on the event loop), 100 B of JSON", 60),
)


@dataclass
class HttpServerSpec(ServerSpec):
    """run.py's server, serving peers/django_http_app instead of the WebSocket protocol."""

    def argv(self, python: str, port: int, extra: Sequence[str] = ()) -> list[str]:
        if self.name == "daphne":
            # The backlog as run.py's Daphne: Twisted's default of 50 is the connection count.
            return [python, "-m", "daphne", "-v", "0",
                    "-e", f"tcp:port={port}:interface=127.0.0.1:backlog=1024", self.app]
        if self.name == "uvicorn":
            return [python, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                    "--http", "httptools", "--loop", "uvloop", "--log-level", "warning",
                    "--no-access-log", self.app]
        return super().argv(python, port, extra)


def http_specs() -> dict[str, HttpServerSpec]:
    """Ours, Daphne and uvicorn; the virtualenvs (and their requirements) are run.py's."""
    base = server_specs()

    def spec(name: str, label: str, app: str, reactor: str | None = None) -> HttpServerSpec:
        b = base[name]
        return HttpServerSpec(name, label, b.venv, b.requirements, dict(SETTINGS),
                              app=app, reactor=reactor)

    return {
        OURS: spec(OURS, "ours (asyncio reactor)", "django_http_app.realtime_asgi:application",
                   "asyncio"),
        "daphne": spec("daphne", "Daphne+Channels", "django_http_app.channels_asgi:application"),
        "uvicorn": spec("uvicorn", "uvicorn httptools", "django_http_app.asgi:application"),
    }


def client_args(sc: Scenario, port: int, opts: argparse.Namespace) -> list[str]:
    return ["--url", f"http://127.0.0.1:{port}{sc.params['path']}",
            "--conns", str(opts.connections), "--duration", str(opts.duration),
            "--warmup", str(opts.warmup), "--scenario", sc.name,
            "--time-limit", str(sc.time_limit)]


#: One fresh server, one client run against one view, the server stopped by its PID.
run_attempt = client_attempt(client_args, CLIENT)


def error_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every run that had errors, with their kinds: one bad pass is not hidden by medians."""
    return [f"- {r['server']} {r['scenario']} pass {r['pass']}: {r.get('http_errors')} "
            f"error(s): " + "; ".join(f"{k} x{v}" for k, v in
                                      (r.get("error_kinds") or {}).items())
            for r in rows if r.get("http_errors")]


def make_report(rows: list[dict[str, Any]], servers: Sequence[str], labels: dict[str, str],
                meta: dict[str, Any]) -> str:
    """run.py's report. Each row is given its (server, scenario)'s errors summed over the
    passes (failed passes included), so the table's "median" of them is that sum."""
    totals: Counter[tuple[str, str]] = Counter()
    for r in rows:
        totals[(r["server"], r["scenario"])] += r.get("http_errors") or 0
    summed = [{**r, "http_errors_total": totals[(r["server"], r["scenario"])]} for r in rows]
    return report(summed, SCENARIOS, servers, labels, meta)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="ours,daphne,uvicorn",
                   help="comma-separated: ours, daphne, uvicorn (default: all three)")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--connections", type=int, default=50,
                   help="keep-alive connections, one request in flight each")
    p.add_argument("--quick", action="store_true",
                   help="1 pass, 1 s, 5 connections, 0.5 s warm-up (what the smoke test runs)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the server and the client to cores")
    p.add_argument("--no-venvs", dest="venvs", action="store_false",
                   help="run every server and the client from this Python (no installs)")
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
        a.passes, a.duration, a.connections, a.warmup = 1, 1.0, 5, 0.5
    return runner_defaults(a)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    log = runner_start()
    specs = http_specs()
    servers = chosen_servers(opts, specs, log)
    if servers is None:
        return 2
    t_start = time.monotonic()
    client_python = prepare_venvs(specs, servers, opts, log)
    meta_versions = {s: versions(specs[s].python(opts.venvs)) for s in servers}

    rows, jsonl = recorded_passes("django-http", specs, servers, SCENARIOS, opts,
                                  client_python, log, attempt=run_attempt)
    elapsed = (time.monotonic() - t_start) / 60
    errors = error_lines(rows)
    notes = [f"Scenarios: {opts.connections} keep-alive connections, one GET in flight each, "
             f"{opts.warmup:g} s warm-up, {opts.duration:g} s measured; "
             + "; ".join(f"`{sc.name}`: {sc.title}" for sc in SCENARIOS) + ". Errors are "
             "summed over the passes (not a median), counted from the first request to "
             "the last."]
    notes += ["", "Runs with errors:", "", *errors] if errors else [
        "", "No errors in any run."]
    if opts.quick:
        notes += ["", "Quick run (1 pass, 1 s, 5 connections): figures are not comparable "
                  "with a full run."]
    meta = side_meta("Django over HTTP", opts, elapsed, meta_versions, notes)
    text = make_report(rows, servers, {s: specs[s].label for s in servers}, meta)
    publish_side("django-http", text, jsonl, elapsed, opts, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
