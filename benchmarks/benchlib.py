"""Statistics, scenario definitions and the table maker of the benchmark suite.

Standard library only: the runner (any Python), the load client (its own virtualenv) and the
tests all import it.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# -- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float, *, presorted: bool = False) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks.

    The same definition as numpy's default (``method="linear"``). ``None`` for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile out of range: {q}")
    if not values:
        return None
    data = values if presorted else sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return float(data[lo])
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not ``None`` (the mean of the middle two if even)."""
    data = sorted(v for v in values if v is not None and not _isnan(v))
    if not data:
        return None
    mid = len(data) // 2
    if len(data) % 2:
        return float(data[mid])
    return (data[mid - 1] + data[mid]) / 2.0


def _isnan(v: float) -> bool:
    return isinstance(v, float) and math.isnan(v)


def latency_summary(samples_ns: list[int]) -> dict[str, float | None]:
    """p50, p99 and max of latency samples given in nanoseconds, in milliseconds."""
    if not samples_ns:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    samples_ns.sort()
    p50 = percentile(samples_ns, 50, presorted=True)
    p99 = percentile(samples_ns, 99, presorted=True)
    return {
        "p50_ms": round(p50 / 1e6, 3) if p50 is not None else None,
        "p99_ms": round(p99 / 1e6, 3) if p99 is not None else None,
        "max_ms": round(samples_ns[-1] / 1e6, 3),
    }


def error_text(errors: Counter[str]) -> str:
    """A row's ``error``: the three commonest failures with their counts."""
    return "; ".join(f"{k} x{v}" for k, v in errors.most_common(3))


def ratio(ours: float | None, peer: float | None, better: str) -> float | None:
    """How many times better ours is than the peer: > 1 means ours is better.

    ``better="higher"`` (throughput): ours / peer. ``better="lower"`` (latency, CPU, memory):
    peer / ours. ``None`` when either figure is missing, or the division is undefined.
    """
    if ours is None or peer is None:
        return None
    if better == "higher":
        num, den = ours, peer
    elif better == "lower":
        num, den = peer, ours
    else:
        raise ValueError(f"better must be 'higher' or 'lower', not {better!r}")
    if den == 0:
        return None if num == 0 else math.inf
    return num / den


#: Fewer deliveries than this in a fan-out's timed window are not rated (``rated``).
TOO_FEW = 100


def rated(window_deliveries: int, timed: bool) -> int:
    """The deliveries a fan-out's rate and CPU per delivery are worked out from: all of a
    window's, except a timed window with too few to rate (a server that fell behind, one
    late message arriving in it), which counts 0: 0/s and no CPU per delivery, not 8 s of
    CPU over one delivery (Daphne's 8,000,000 µs). Counted runs (--quick) are small by
    design and always rated."""
    return 0 if timed and window_deliveries < TOO_FEW else window_deliveries


# -- another process's CPU, measured from /proc (the load clients) --------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def client_arguments(url_help: str | None = None) -> Any:
    """The options every load client takes (an ``argparse`` parent parser): ``--url``,
    ``--scenario``, ``--time-limit``, ``--server-core``, ``--client-core``."""
    import argparse

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", required=True, help=url_help)
    common.add_argument("--scenario")
    common.add_argument("--time-limit", type=float, default=120.0,
                        help="hard limit in seconds (the process exits past it)")
    common.add_argument("--server-core", type=int,
                        help="the core the server is pinned to (to report other load on it)")
    common.add_argument("--client-core", type=int,
                        help="the core this client is pinned to (likewise)")
    return common


async def within_time_limit(coro: Any, a: Any, scenario: str) -> dict[str, Any]:
    """A load client's scenario ``coro``'s row, or a failed row past ``--time-limit``."""
    import asyncio

    try:
        row: dict[str, Any] = await asyncio.wait_for(coro, a.time_limit)
        return row
    except TimeoutError:
        return {"scenario": scenario, "kind": a.kind, "ok": False,
                "error": f"client time limit {a.time_limit:g} s"}


def client_main(amain: Any, a: Any, label: str) -> int:
    """A load client's ``main``: the open-files limit raised, ``amain(a)`` on uvloop when it
    is installed (the client virtualenv has it), one JSON row on stdout; exit 0 when the row
    says ``ok``."""
    import asyncio
    import json

    raise_nofile()

    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            row = runner.run(amain(a))
    else:
        row = asyncio.run(amain(a))
    row["client"] = f"{label}+uvloop" if uvloop is not None else label
    print(json.dumps(row), flush=True)
    return 0 if row.get("ok") else 1


def runner_defaults(a: Any) -> Any:
    """The runners' shared option defaults (``run.py``, ``django_http.py``): no waiting for
    quiet and no retries in quick mode, and the server and client pinned to cores 0 and 1
    when ``taskset`` and two cores are there."""
    import os
    import shutil

    if a.quiet_wait is None:
        a.quiet_wait = 0.0 if a.quick else 10.0
    if a.retries is None:
        a.retries = 0 if a.quick else 1
    if a.pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        a.server_core, a.client_core = 0, 1
    else:
        a.server_core = a.client_core = None
    return a


class ProcStat:
    """CPU seconds and RSS of another process, read from /proc; ``None`` without a pid.

    ``pids`` (``--server-pid 11,12``): the CPU seconds are summed over them (the workers of
    ``--workers N``); the RSS is the first one's."""

    def __init__(self, pid: int | None, pids: Sequence[int] = ()) -> None:
        self.pid = pid
        self.pids = list(pids) or ([pid] if pid else [])

    def cpu_s(self) -> float | None:
        if not self.pids:
            return None
        total = 0.0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    text = f.read()
            except OSError:
                return None
            fields = text[text.rindex(b")") + 2:].split()
            # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
            total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
        return total

    def rss_kb(self) -> int | None:
        if not self.pid:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None


def core_busy_s(core: int | None) -> float | None:
    """Busy seconds (user, nice, system, steal) of one core so far, from /proc/stat."""
    if core is None:
        return None
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{core} "):
                    v = [int(x) for x in line.split()[1:]]
                    return (v[0] + v[1] + v[2] + (v[7] if len(v) > 7 else 0)) / _CLK_TCK
    except OSError:
        pass
    return None


class Window:
    """Wall time, own CPU time and the server's CPU time between ``start()`` and ``stop()``.

    With the cores the server and the client are pinned to, also how busy those cores were
    with anything else (other processes): a noisy neighbour shows there, not in our figures.
    """

    server_core: int | None = None
    client_core: int | None = None

    def __init__(self, server: ProcStat, aux: dict[str, ProcStat] | None = None) -> None:
        self.server = server
        #: Other processes the server needs (Redis, the supervisor): measured on their own.
        self.aux = aux or {}
        self.wall = self.cpu = 0.0
        self.server_cpu: float | None = None
        self.aux_cpu: dict[str, float | None] = {}
        self.core_busy: dict[str, float | None] = {}

    def start(self) -> None:
        self._w0 = time.perf_counter()
        self._c0 = time.process_time()
        self._s0 = self.server.cpu_s()
        self._a0 = {name: proc.cpu_s() for name, proc in self.aux.items()}
        self._k0 = {"server": core_busy_s(self.server_core),
                    "client": core_busy_s(self.client_core)}

    def stop(self) -> None:
        self.wall = time.perf_counter() - self._w0
        self.cpu = time.process_time() - self._c0
        s1 = self.server.cpu_s()
        self.server_cpu = None if s1 is None or self._s0 is None else s1 - self._s0
        for name, proc in self.aux.items():
            a1, a0 = proc.cpu_s(), self._a0[name]
            self.aux_cpu[name] = None if a1 is None or a0 is None else a1 - a0
        for role, core in (("server", self.server_core), ("client", self.client_core)):
            k1, k0 = core_busy_s(core), self._k0[role]
            self.core_busy[role] = None if k1 is None or k0 is None else k1 - k0

    def fields(self) -> dict[str, Any]:
        wall = self.wall or 1e-9
        out = {
            "wall_s": round(self.wall, 3),
            "client_cpu_share": round(self.cpu / wall, 3),
            "server_cpu_share": (None if self.server_cpu is None
                                 else round(self.server_cpu / wall, 3)),
        }
        for name, cpu in self.aux_cpu.items():
            out[f"{name}_cpu_share"] = None if cpu is None else round(cpu / wall, 3)
        own = {"server": self.server_cpu, "client": self.cpu}
        for role in ("server", "client"):
            busy = self.core_busy.get(role)
            if busy is not None and own[role] is not None:
                # Ticks are 10 ms: small negative values are rounding.
                out[f"{role}_core_other"] = round(max(0.0, (busy - own[role]) / wall), 3)
        return out

    def server_us_per(self, count: int) -> float | None:
        if self.server_cpu is None or count <= 0:
            return None
        return round(self.server_cpu * 1e6 / count, 2)

    def aux_us_per(self, count: int, what: str) -> dict[str, float | None]:
        """``<name>_cpu_us_per_<what>`` for each auxiliary process."""
        return {f"{name}_cpu_us_per_{what}": (None if cpu is None or count <= 0
                                              else round(cpu * 1e6 / count, 2))
                for name, cpu in self.aux_cpu.items()}


# -- UTF-8 safe payloads -----------------------------------------------------------------------

# Whole characters of 1, 2, 3 and 4 bytes: the load generator never splits one.
_PATTERN = "bench-é€𝄞 0123456789abcdefghijklmnopqrstuvwxyz"


def make_text(nbytes: int, *, ascii_only: bool = False) -> str:
    """A text whose UTF-8 encoding is exactly ``nbytes`` long, made of whole characters.

    Multi-byte characters are included (unless ``ascii_only``) so that the server's UTF-8
    validation does real work; the tail is padded with ASCII so the length is exact.
    """
    if nbytes < 0:
        raise ValueError("nbytes must be >= 0")
    pattern = "abcdefghijklmnopqrstuvwxyz0123456789" if ascii_only else _PATTERN
    out: list[str] = []
    size = 0
    i = 0
    while True:
        ch = pattern[i % len(pattern)]
        n = len(ch.encode("utf-8"))
        if size + n > nbytes:
            break
        out.append(ch)
        size += n
        i += 1
    out.append("x" * (nbytes - size))
    return "".join(out)


# -- scenarios ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # echo | fanout | idle | http (django_http.py)
    params: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    time_limit: float = 120.0  # hard limit for the client process, seconds


FULL_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("echo-100x1", "echo", {"conns": 100, "inflight": 1, "size": 64},
             "echo, 100 conns x 1 in flight, 64 B text", 60),
    Scenario("echo-100x16", "echo", {"conns": 100, "inflight": 16, "size": 64},
             "echo, 100 conns x 16 in flight, 64 B text", 60),
    Scenario("echo-10x64k", "echo", {"conns": 10, "inflight": 1, "size": 65536},
             "echo, 10 conns x 1 in flight, 64 KiB text", 60),
    Scenario("fanout-1000x50", "fanout", {"members": 1000, "rate": 50, "size": 64},
             "fan-out, 1,000 members x 50 msg/s (50k deliveries/s offered)", 150),
    Scenario("fanout-5000x10", "fanout", {"members": 5000, "rate": 10, "size": 64},
             "fan-out, 5,000 members x 10 msg/s (50k deliveries/s offered)", 180),
    Scenario("fanout-5000x2", "fanout", {"members": 5000, "rate": 2, "size": 64},
             "fan-out, 5,000 members x 2 msg/s (10k deliveries/s offered: a load raw "
             "Autobahn keeps up with here, so its CPU per delivery is a cost, not one core "
             "divided by the offered rate)", 180),
    Scenario("fanout-5000x10-burst5", "fanout",
             {"members": 5000, "rate": 10, "size": 64, "burst": 5},
             "fan-out, 5,000 members x 10 msg/s sent in bursts of 5 (one write, twice a "
             "second)", 180),
    Scenario("fanout-5000x10-pub5", "fanout",
             {"members": 5000, "rate": 10, "size": 64, "publishers": 5},
             "fan-out, 5,000 members x 10 msg/s from 5 members at once (5 sockets, twice a "
             "second)", 180),
    Scenario("idle-5000", "idle", {"conns": 5000, "concurrency": 100},
             "idle, 5,000 connections", 150),
)

# Small sizes: a quick look, and what the smoke tests run.
QUICK_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("echo-100x1", "echo", {"conns": 5, "inflight": 1, "size": 64, "count": 20},
             "echo, 5 conns x 1 in flight, 64 B text (quick)", 30),
    Scenario("echo-100x16", "echo", {"conns": 5, "inflight": 16, "size": 64, "count": 64},
             "echo, 5 conns x 16 in flight, 64 B text (quick)", 30),
    Scenario("echo-10x64k", "echo", {"conns": 2, "inflight": 1, "size": 65536, "count": 10},
             "echo, 2 conns x 1 in flight, 64 KiB text (quick)", 30),
    Scenario("fanout-1000x50", "fanout", {"members": 10, "rate": 50, "size": 64, "count": 5},
             "fan-out, 10 members x 5 msgs (quick)", 30),
    Scenario("fanout-5000x10", "fanout", {"members": 20, "rate": 10, "size": 64, "count": 5},
             "fan-out, 20 members x 5 msgs (quick)", 30),
    Scenario("fanout-5000x2", "fanout", {"members": 20, "rate": 2, "size": 64, "count": 3},
             "fan-out, 20 members x 3 msgs (quick)", 30),
    Scenario("fanout-5000x10-burst5", "fanout",
             {"members": 20, "rate": 10, "size": 64, "count": 10, "burst": 5},
             "fan-out, 20 members x 10 msgs in bursts of 5 (quick)", 30),
    Scenario("fanout-5000x10-pub5", "fanout",
             {"members": 20, "rate": 10, "size": 64, "count": 10, "publishers": 5},
             "fan-out, 20 members x 10 msgs from 5 members at once (quick)", 30),
    Scenario("idle-5000", "idle", {"conns": 20, "concurrency": 10},
             "idle, 20 connections (quick)", 30),
)


# Ours only, with ``--workers 2`` and a Redis layer (a redis-server of the run's own); nothing
# pinned: the workers, Redis and the load client share the two cores, so these have no peer
# and no ratio, only figures (``params["workers"]`` marks them).
WORKERS_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("workers2-fanout-5000x10", "fanout",
             {"members": 5000, "rate": 10, "size": 64, "workers": 2},
             "fan-out through Redis, --workers 2: 5,000 members x 10 msg/s (50k/s offered)",
             180),
    Scenario("workers2-fanout-5000x20", "fanout",
             {"members": 5000, "rate": 20, "size": 64, "workers": 2},
             "fan-out through Redis, --workers 2: 5,000 members x 20 msg/s (100k/s offered)",
             180),
)

QUICK_WORKERS_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("workers2-fanout-5000x10", "fanout",
             {"members": 20, "rate": 10, "size": 64, "count": 5, "workers": 2},
             "fan-out through Redis, --workers 2: 20 members x 5 msgs (quick)", 40),
)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str | None  # "higher", "lower", or None: shown, no ratio
    fmt: str = "{:,.0f}"


METRICS: dict[str, tuple[Metric, ...]] = {
    "echo": (
        Metric("msgs_per_s", "msg/s", "higher"),
        Metric("p99_ms", "latency p99 ms", "lower", "{:,.2f}"),
        Metric("server_cpu_us_per_msg", "server CPU µs/msg", "lower", "{:,.1f}"),
    ),
    "fanout": (
        Metric("delivered_per_s", "delivered/s", "higher"),
        Metric("p50_ms", "latency p50 ms", "lower", "{:,.1f}"),
        Metric("p99_ms", "latency p99 ms", "lower", "{:,.1f}"),
        Metric("max_ms", "latency max ms", "lower", "{:,.1f}"),
        Metric("lost_pct", "lost %", None, "{:,.2f}"),
        Metric("server_cpu_us_per_delivery", "server CPU µs/delivery", "lower", "{:,.1f}"),
    ),
    "idle": (
        Metric("kb_per_conn", "server KB RSS/conn", "lower", "{:,.1f}"),
        Metric("handshakes_per_s", "handshakes/s", "higher"),
    ),
    # benchmarks/django_http.py: keep-alive GETs of a Django view, one at a time per
    # connection. Errors are summed over the passes (django_http.py adds the sum), not a
    # median that would hide one bad pass.
    "http": (
        Metric("requests_per_s", "requests/s", "higher"),
        Metric("p50_ms", "latency p50 ms", "lower", "{:,.2f}"),
        Metric("p99_ms", "latency p99 ms", "lower", "{:,.2f}"),
        Metric("server_cpu_us_per_request", "server CPU µs/request", "lower", "{:,.1f}"),
        Metric("http_errors_total", "errors (all passes)", None),
    ),
}

# The workers table: figures only (no peer runs these).
WORKERS_METRICS: tuple[Metric, ...] = (
    Metric("offered_per_s", "offered deliveries/s", None),
    Metric("delivered_per_s", "delivered/s", None),
    Metric("lost_pct", "lost %", None, "{:,.2f}"),
    Metric("p50_ms", "latency p50 ms", None, "{:,.1f}"),
    Metric("p99_ms", "latency p99 ms", None, "{:,.1f}"),
    Metric("server_cpu_us_per_delivery", "workers' CPU µs/delivery (summed)", None,
           "{:,.2f}"),
    Metric("redis_cpu_us_per_delivery", "redis-server CPU µs/delivery", None, "{:,.2f}"),
    Metric("supervisor_cpu_us_per_delivery", "supervisor CPU µs/delivery", None, "{:,.2f}"),
    Metric("server_cpu_share", "workers' CPU (cores)", None, "{:,.2f}"),
    Metric("redis_cpu_share", "redis-server CPU (cores)", None, "{:,.2f}"),
    Metric("client_cpu_share", "load client CPU (cores)", None, "{:,.2f}"),
)

# The fields every result row carries, and those of each kind (the tests check them).
COMMON_FIELDS = ("scenario", "kind", "ok", "error", "client_cpu_share", "server_cpu_share",
                 "wall_s")
KIND_FIELDS = {
    "echo": ("conns", "inflight", "size", "messages", "msgs_per_s", "p50_ms", "p99_ms",
             "max_ms", "server_cpu_us_per_msg", "mismatched", "connected"),
    "fanout": ("members", "rate", "size", "connected", "sent", "expected", "delivered",
               "lost", "lost_pct", "offered_per_s", "delivered_per_s", "p50_ms", "p99_ms",
               "max_ms", "server_cpu_us_per_delivery", "ready", "dropped_members"),
    "idle": ("conns", "connected", "failed", "handshakes_per_s", "rss_before_kb",
             "rss_after_kb", "kb_per_conn"),
    "http": ("conns", "connected", "path", "requests", "requests_per_s", "p50_ms", "p99_ms",
             "max_ms", "server_cpu_us_per_request", "http_errors", "error_kinds",
             "body_bytes", "framing"),
}


# -- aggregation and the table -----------------------------------------------------------------

Key = tuple[str, str]  # (server, scenario)


def load_rows(lines: Iterable[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.strip()]


def aggregate(rows: Iterable[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Medians over passes of every numeric field, per (server, scenario).

    A failed pass (``ok`` false) contributes nothing but its error; ``passes`` and ``failed``
    count them.
    """
    grouped: dict[Key, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row["server"], row["scenario"]), []).append(row)
    out: dict[Key, dict[str, Any]] = {}
    for key, group in grouped.items():
        good = [r for r in group if r.get("ok")]
        agg: dict[str, Any] = {
            "passes": len(group),
            "ok_passes": len(good),
            "errors": sorted({str(r.get("error")) for r in group if not r.get("ok")}),
            "kind": group[0].get("kind"),
        }
        numeric = {k for r in good for k, v in r.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
        for k in sorted(numeric):
            agg[k] = median(r.get(k) for r in good)
        out[key] = agg
    return out


def _fmt(value: float | None, fmt: str) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "∞"
    return fmt.format(value)


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "∞"
    return f"{value:.2f}x"


def ratio_rows(
    agg: dict[Key, dict[str, Any]],
    scenarios: Sequence[Scenario],
    ours: str,
    peers: Sequence[str],
) -> list[dict[str, Any]]:
    """One record per (scenario, metric): the medians of every server and ours-vs-peer ratios."""
    records = []
    for sc in scenarios:
        for m in METRICS[sc.kind]:
            values = {}
            for srv in [ours, *peers]:
                a = agg.get((srv, sc.name))
                values[srv] = a.get(m.key) if a and a.get("ok_passes") else None
            ratios = {}
            if m.better:
                for p in peers:
                    ratios[p] = ratio(values[ours], values[p], m.better)
            records.append({"scenario": sc.name, "title": sc.title, "metric": m,
                            "values": values, "ratios": ratios})
    return records


def make_table(
    agg: dict[Key, dict[str, Any]],
    scenarios: Sequence[Scenario],
    ours: str,
    peers: Sequence[str],
    labels: dict[str, str] | None = None,
) -> str:
    """The Markdown table: medians per server, then ours-vs-peer ratios (> 1: ours better)."""
    labels = labels or {}
    name = lambda s: labels.get(s, s)  # noqa: E731
    header = ["scenario", "metric", name(ours), *[name(p) for p in peers],
              *[f"{name(ours)} vs {name(p)}" for p in peers]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    last = None
    for rec in ratio_rows(agg, scenarios, ours, peers):
        m: Metric = rec["metric"]
        cells = [rec["scenario"] if rec["scenario"] != last else "", m.label]
        last = rec["scenario"]
        cells += [_fmt(rec["values"][s], m.fmt) for s in [ours, *peers]]
        if m.better:
            cells += [_fmt_ratio(rec["ratios"][p]) for p in peers]
        else:
            cells += ["—"] * len(peers)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def make_client_table(
    agg: dict[Key, dict[str, Any]],
    scenarios: Sequence[Scenario],
    servers: Sequence[str],
    labels: dict[str, str] | None = None,
) -> str:
    """Client and server CPU share per scenario: is the load client the bottleneck?"""
    labels = labels or {}
    header = ["scenario", *[f"{labels.get(s, s)} client/server CPU" for s in servers]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for sc in scenarios:
        cells = [sc.name]
        for s in servers:
            a = agg.get((s, sc.name))
            if not a or not a.get("ok_passes"):
                cells.append("n/a")
                continue
            c, v = a.get("client_cpu_share"), a.get("server_cpu_share")
            cells.append(f"{_pct(c)} / {_pct(v)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def make_workers_table(agg: dict[Key, dict[str, Any]], scenarios: Sequence[Scenario],
                       server: str) -> str:
    """Medians of the ``--workers`` scenarios: one column per scenario."""
    header = ["metric", *[sc.name for sc in scenarios]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in WORKERS_METRICS:
        cells = [m.label]
        for sc in scenarios:
            a = agg.get((server, sc.name))
            cells.append(_fmt(a.get(m.key) if a and a.get("ok_passes") else None, m.fmt))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.0f} %"


def failures(agg: dict[Key, dict[str, Any]]) -> list[str]:
    """One line per (server, scenario) with failed passes, for the report."""
    out = []
    for (srv, sc), a in sorted(agg.items()):
        if a["errors"]:
            out.append(f"{srv} {sc}: {a['ok_passes']}/{a['passes']} passes ok; "
                       + "; ".join(a["errors"]))
    return out


class CountingReceiver:
    """A channel-layer receiver that counts what it gets (what the bridge is to the layer,
    minus the socket): the layer benchmarks' members (history.py, layers.py)."""

    _held_seq = -1
    _held_count = 0

    def __init__(self) -> None:
        self.count = 0
        self.last: dict[str, Any] | None = None

    def deliver(self, event: dict[str, Any]) -> None:
        self.count += 1
        self.last = event

    def deliver_frame(self, frame: bytes) -> bool:
        return True

    def deliver_joined(self, joined: bytes) -> bool:
        return True


def free_port() -> int:
    """A free loopback port (for a server of the benchmark's own)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
