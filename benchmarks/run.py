"""Run the benchmark suite: our server against raw Autobahn, Daphne and uvicorn, side by side.

    python benchmarks/run.py                  # everything: ~15 minutes on 2 cores
    python benchmarks/run.py --quick          # tiny sizes, a minute
    python benchmarks/run.py --servers ours,autobahn --scenarios echo-100x16 --passes 1

Installs each peer (and the load client) into its own virtualenv under benchmarks/.venvs/
(reused when present), then for each pass, each server and each scenario: starts a fresh
server on 127.0.0.1 pinned to core 0 (``taskset -c 0``), runs the load client pinned to core
1, and stops the server (by its PID). Writes every result row to
benchmarks/results/run-<time>.jsonl, then the medians and ratios to
benchmarks/results/latest.md (also printed) and a chart to benchmarks/results/latest.png.
Standard library only; ours runs from the Python that runs this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from benchlib import (  # noqa: E402
    FULL_SCENARIOS,
    QUICK_SCENARIOS,
    QUICK_WORKERS_SCENARIOS,
    WORKERS_SCENARIOS,
    Scenario,
    aggregate,
    failures,
    make_client_table,
    make_table,
    make_workers_table,
    runner_defaults,
)

VENVS = HERE / ".venvs"
PEERS = HERE / "peers"
RESULTS = HERE / "results"
OURS = "ours"
#: Ours with ``--broadcast-delay`` (``--ours-delay``), fan-out only: what the opt-in trade of
#: latency for CPU buys. Not in the default ``--servers``.
OURS_DELAYED = "ours-delayed"
#: Ours serving Daphne's Channels consumers ported by changing imports
#: (peers/channels_port_app.py), on the default reactor and on the asyncio reactor. Not in
#: the default ``--servers``.
OURS_CHANNELS = "ours-channels"
OURS_CHANNELS_ASYNCIO = "ours-channels-asyncio"
OURS_ALL = (OURS, OURS_DELAYED, OURS_CHANNELS, OURS_CHANNELS_ASYNCIO)


def _installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _pinned(name: str) -> str:
    """``name==X`` with the version ours runs on, so raw Autobahn is measured on the same."""
    v = _installed_version(name)
    return f"{name}=={v}" if v else name


@dataclass
class ServerSpec:
    name: str
    label: str
    venv: str | None  # None: the runner's own Python
    requirements: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    always_venv: bool = False
    #: The scenario kinds it runs (empty: all).
    kinds: tuple[str, ...] = ()
    #: More of ours' command line (``ours-delayed``: ``--broadcast-delay``).
    args: tuple[str, ...] = ()
    #: Ours' ``--app`` and twistd's ``--reactor`` (None: the default one).
    app: str = "realtime.examples.bench:application"
    reactor: str | None = None

    def python(self, use_venvs: bool) -> str:
        if self.venv is None or not (use_venvs or self.always_venv):
            return sys.executable
        return str(VENVS / self.venv / "bin" / "python")

    def argv(self, python: str, port: int, extra: Sequence[str] = ()) -> list[str]:
        if self.name in OURS_ALL:
            twistd = Path(python).parent / "twistd"
            # No twistd beside this Python (a venv on the system's site-packages): twistd
            # from PATH could be another Python's, serving another checkout's realtime.
            cmd = [str(twistd)] if twistd.exists() else [
                python, "-c", "import sys; sys.argv[0] = 'twistd'; "
                "from twisted.scripts.twistd import run; run()"]
            if self.reactor is not None:
                cmd.append(f"--reactor={self.reactor}")
            return [*cmd, "-n", "--pidfile=", "realtime", "--app", self.app,
                    "--port", f"tcp:{port}:interface=127.0.0.1", *self.args, *extra]
        if self.name == "autobahn":
            return [python, str(PEERS / "autobahn_server.py"), "--port", str(port)]
        if self.name == "sendloop":
            return [python, str(PEERS / "sendloop_server.py"), "--port", str(port)]
        if self.name == "daphne":
            # Twisted's default backlog (50) would overflow under 100 concurrent handshakes.
            return [python, "-m", "daphne", "-v", "0",
                    "-e", f"tcp:port={port}:interface=127.0.0.1:backlog=1024",
                    "daphne_app.asgi:application"]
        if self.name == "uvicorn":
            return [python, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                    "--ws", "websockets-sansio", "--log-level", "warning",
                    "--no-access-log", "uvicorn_app:app"]
        raise ValueError(self.name)


def server_specs() -> dict[str, ServerSpec]:
    return {
        OURS: ServerSpec(OURS, "ours", None),
        "autobahn": ServerSpec("autobahn", "raw Autobahn", "autobahn",
                               (_pinned("autobahn"), _pinned("twisted"), _pinned("txaio"))),
        "daphne": ServerSpec("daphne", "Daphne+Channels", "daphne",
                             ("daphne", "channels", "django"),
                             {"DJANGO_SETTINGS_MODULE": "daphne_app.settings"}),
        "uvicorn": ServerSpec("uvicorn", "uvicorn sansio", "uvicorn",
                              # django: benchmarks/django_http.py serves Django's views
                              ("uvicorn[standard]", "websockets", "django")),
        OURS_DELAYED: ServerSpec(OURS_DELAYED, "ours --broadcast-delay", None,
                                 kinds=("fanout",)),
        OURS_CHANNELS: ServerSpec(OURS_CHANNELS, "ours, Channels consumers", None,
                                  app="channels_port_app:application"),
        OURS_CHANNELS_ASYNCIO: ServerSpec(OURS_CHANNELS_ASYNCIO,
                                          "ours --reactor=asyncio, Channels consumers", None,
                                          app="channels_port_app:application",
                                          reactor="asyncio"),
        # The floor of a fan-out: one bare socket.send() per member per message.
        "sendloop": ServerSpec("sendloop", "bare send() loop", None, kinds=("fanout",)),
    }


CLIENT_VENV = "client"
CLIENT_REQUIREMENTS = ("picows>=2.3", "uvloop", "matplotlib")
VERSION_NAMES = ("autobahn", "twisted", "daphne", "channels", "django", "uvicorn",
                 "websockets", "uvloop", "httptools", "picows", "realtime")


# -- virtualenvs ---------------------------------------------------------------------------------


def ensure_venv(name: str, requirements: Sequence[str], log: Any,
                extra: Sequence[str] = ()) -> str:
    """Create ``.venvs/name`` with the requirements, or reuse it when it already has them.

    ``requirements`` lines starting with ``#`` only mark the version (a commit); ``extra``
    are local paths installed last, without dependencies, replacing what is there.
    """
    venv = VENVS / name
    python = venv / "bin" / "python"
    marker = venv / "bench-requirements.txt"
    wanted = "\n".join([*requirements, *extra]) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return str(python)
    reqs = [r for r in requirements if not r.startswith("#")]
    log(f"setting up virtualenv {venv.relative_to(ROOT)}: {' '.join(reqs)}")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *reqs], check=True)
    if extra:
        subprocess.run([*pip, "--no-deps", "--force-reinstall", *extra], check=True)
    marker.write_text(wanted)
    return str(python)


def ensure_ours_venv(ref: str, log: Any) -> str:
    """``.venvs/ours``: a snapshot of ``git archive REF`` installed (not editable), on the
    same autobahn/twisted/txaio versions as raw Autobahn's virtualenv."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                         check=True, capture_output=True, text=True).stdout.strip()
    src = VENVS / "ours-src" / sha
    if not (src / "setup.cfg").exists():
        log(f"exporting {ref} ({sha[:10]}) to {src.relative_to(ROOT)}")
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", sha],
                                   stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(src)], stdin=archive.stdout, check=True)
        archive.wait()
    deps = (_pinned("autobahn"), _pinned("twisted"), _pinned("txaio"), "service-identity",
            "pyopenssl", _pinned("txredisapi"), _pinned("msgpack"), _pinned("prometheus-client"),
            _pinned("PyJWT"), "cryptography")
    python = ensure_venv("ours", (*deps, f"# {sha}"), log, extra=[str(src)])
    return python


def versions(python: str, names: Sequence[str] = VERSION_NAMES,
             fanout_loop: bool = False) -> dict[str, str]:
    """The versions of the packages ``names`` (those installed) in ``python``; with
    ``fanout_loop`` (ours), also which fan-out loop its realtime runs, ``C`` (built at
    install when a compiler was there) or ``Python``: its fan-out figures depend on it."""
    code = ("import json, importlib.metadata as m\n"
            "out = {}\n"
            f"for n in {list(names)!r}:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\n")
    if fanout_loop:
        code += ("import realtime._fanout as f\n"
                 "out['fan-out loop'] = 'C' if f.send_each else 'Python'\n")
    code += "print(json.dumps(out))"
    try:
        res = subprocess.run([python, "-c", code], capture_output=True, text=True,
                             timeout=30, cwd="/")
        return json.loads(res.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


# -- processes -----------------------------------------------------------------------------------


def raise_nofile() -> None:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cmd: list[str], core: int | None) -> list[str]:
    if core is None or not shutil.which("taskset"):
        return cmd
    return ["taskset", "-c", str(core), *cmd]


def wait_listening(proc: subprocess.Popen[bytes], port: int, name: str,
                   timeout: float) -> None:
    """Until something accepts on 127.0.0.1:``port``; RuntimeError if ``proc`` exits or
    the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen within {timeout:g} s")


class Server:
    """One server process on 127.0.0.1; stopped by its PID only."""

    def __init__(self, spec: ServerSpec, python: str, log_path: Path, core: int | None,
                 extra: Sequence[str] = (), ready_line: str | None = None) -> None:
        self.spec = spec
        self.port = free_port()
        self.log_path = log_path
        self.ready_line = ready_line
        env = dict(os.environ)
        env.update(spec.env)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PEERS), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = open(log_path, "wb")
        # taskset execs the server: the PID we get is the server's.
        self.proc = subprocess.Popen(
            pinned(spec.argv(python, self.port, extra), core), cwd=str(PEERS), env=env,
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
            preexec_fn=raise_nofile,
        )
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        if self.ready_line is None:
            wait_listening(self.proc, self.port, self.spec.name, timeout)
            return
        # --workers N: the supervisor listens at once; its workers say when they are ready.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode}")
            if self.ready_line in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.spec.name}: no {self.ready_line!r} within {timeout:g} s")

    def children(self) -> list[int]:
        """The PIDs of the server's child processes (its workers)."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()


class RedisServer:
    """A throwaway redis-server on a free loopback port (no persistence); stopped by its PID."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port",
             str(self.port), "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        try:
            wait_listening(self.proc, self.port, "redis-server", 10.0)
        except RuntimeError:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()


# -- scenarios -------------------------------------------------------------------------------------


def client_args(sc: Scenario, port: int, opts: argparse.Namespace) -> list[str]:
    p = sc.params
    if sc.kind == "echo":
        args = ["echo", "--url", f"ws://127.0.0.1:{port}/echo", "--conns", str(p["conns"]),
                "--inflight", str(p["inflight"]), "--size", str(p["size"])]
        if "count" in p:
            args += ["--count", str(p["count"])]
        else:
            args += ["--duration", str(opts.echo_duration), "--warmup", str(opts.warmup)]
    elif sc.kind == "fanout":
        args = ["fanout", "--url", f"ws://127.0.0.1:{port}/room/bench",
                "--members", str(p["members"]), "--rate", str(p["rate"]),
                "--size", str(p["size"])]
        if p.get("burst", 1) > 1:
            args += ["--burst", str(p["burst"])]
        if p.get("publishers", 1) > 1:
            args += ["--publishers", str(p["publishers"])]
        if "count" in p:
            args += ["--count", str(p["count"]), "--drain", "5"]
        else:
            args += ["--duration", str(opts.fanout_duration), "--warmup", str(opts.warmup),
                     "--drain", str(opts.drain)]
    else:
        args = ["idle", "--url", f"ws://127.0.0.1:{port}/echo", "--conns", str(p["conns"]),
                "--concurrency", str(p.get("concurrency", 100))]
    return [*args, "--scenario", sc.name, "--time-limit", str(sc.time_limit)]


def run_client(python: str, args: list[str], core: int | None, time_limit: float,
               script: Path = HERE / "loadclient.py") -> dict[str, Any]:
    cmd = pinned([python, str(script), *args], core)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=time_limit + 20,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"client killed at the hard limit ({time_limit:g} s)"}
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "error": f"client exited {res.returncode}: {tail}"[:300]}
    return json.loads(lines[-1])


def busy_share(seconds: float = 0.5) -> float:
    """How busy the whole machine is (0..1 per core, summed over cores) over ``seconds``."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v[:8]) - idle, sum(v[:8])

    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (os.cpu_count() or 1) * (b1 - b0) / max(1, t1 - t0)


def wait_for_quiet(limit: float, threshold: float = 0.15) -> float:
    """Wait (up to ``limit`` seconds) until other processes use < ``threshold`` of a core."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if busy_share() < threshold:
            break
    return round(time.monotonic() - start, 1)


def noise(row: dict[str, Any]) -> float:
    """The larger share of a core other processes used on the server's or client's core."""
    return max(row.get("server_core_other") or 0.0, row.get("client_core_other") or 0.0)


Attempt = Callable[[ServerSpec, Scenario, argparse.Namespace, int, str, Path],
                  dict[str, Any]]


def run_one(spec: ServerSpec, sc: Scenario, opts: argparse.Namespace, pass_no: int,
            client_python: str, log_dir: Path,
            attempt: Attempt | None = None) -> dict[str, Any]:
    """One scenario on a fresh server; run again (``--retries``) when the run was noisy.

    ``attempt``: what one run is (default ``run_attempt``; django_http.py passes its own).
    """
    run = attempt or run_attempt
    best: dict[str, Any] | None = None
    for tries in range(opts.retries + 1):
        waited = wait_for_quiet(opts.quiet_wait) if opts.quiet_wait > 0 else 0.0
        row = run(spec, sc, opts, pass_no, client_python, log_dir)
        row["quiet_wait_s"] = waited
        row["attempts"] = tries + 1
        if best is None or (row.get("ok") and (not best.get("ok") or noise(row) < noise(best))):
            best = row
        if not row.get("ok") or noise(best) <= opts.noise_limit:
            break
    assert best is not None
    return best


def client_attempt(make_args: Callable[[Scenario, int, argparse.Namespace], list[str]],
                   script: Path = HERE / "loadclient.py") -> Attempt:
    """An ``Attempt``: one fresh server pinned to its core, one run of the load client
    ``script`` (``make_args``: its arguments for a scenario and the server's port; the
    server's PID and the cores are added), the server stopped by its PID. What
    socket_io.py and django_http.py run, with their own clients."""

    def attempt(spec: ServerSpec, sc: Scenario, opts: argparse.Namespace, pass_no: int,
                client_python: str, log_dir: Path) -> dict[str, Any]:
        server = Server(spec, spec.python(opts.venvs),
                        log_dir / f"{spec.name}-{sc.name}-p{pass_no}.log", opts.server_core)
        started = time.monotonic()
        try:
            server.wait_ready()
            args = [*make_args(sc, server.port, opts), "--server-pid", str(server.pid)]
            if opts.server_core is not None:
                args += ["--server-core", str(opts.server_core),
                         "--client-core", str(opts.client_core)]
            row = run_client(client_python, args, opts.client_core, sc.time_limit,
                             script=script)
            _check_alive(row, server)
        except RuntimeError as exc:
            row = {"ok": False, "error": str(exc)}
        finally:
            server.stop()
        return _stamped(row, spec, sc, pass_no, started)

    return attempt


_loadclient_attempt = client_attempt(client_args)


def run_attempt(spec: ServerSpec, sc: Scenario, opts: argparse.Namespace, pass_no: int,
                client_python: str, log_dir: Path) -> dict[str, Any]:
    if sc.params.get("workers"):
        return run_workers_attempt(spec, sc, opts, pass_no, client_python, log_dir)
    return _loadclient_attempt(spec, sc, opts, pass_no, client_python, log_dir)


def _check_alive(row: dict[str, Any], server: Server) -> None:
    if server.proc.poll() is not None:
        row["ok"] = False
        row["error"] = f"server exited with {server.proc.returncode} during the run"


def _stamped(row: dict[str, Any], spec: ServerSpec, sc: Scenario, pass_no: int,
             started: float) -> dict[str, Any]:
    row.setdefault("scenario", sc.name)
    row.setdefault("kind", sc.kind)
    row.update({"server": spec.name, "pass": pass_no,
                "elapsed_s": round(time.monotonic() - started, 2), "time": time.time()})
    return row


def run_workers_attempt(spec: ServerSpec, sc: Scenario, opts: argparse.Namespace,
                        pass_no: int, client_python: str, log_dir: Path) -> dict[str, Any]:
    """Ours with ``--workers N`` and a Redis layer (its own redis-server): the workers, Redis
    and the client share the machine's cores (nothing pinned); the server CPU is summed over
    the workers, Redis's and the supervisor's are measured apart."""
    workers = int(sc.params["workers"])
    started = time.monotonic()
    redis: RedisServer | None = None
    server: Server | None = None
    try:
        redis = RedisServer(log_dir / f"redis-{sc.name}-p{pass_no}.log")
        server = Server(spec, spec.python(opts.venvs),
                        log_dir / f"{spec.name}-{sc.name}-p{pass_no}.log", None,
                        extra=["--workers", str(workers), "--layer", redis.url],
                        ready_line=f"all {workers} workers ready")
        server.wait_ready()
        pids = server.children()
        if len(pids) != workers:
            raise RuntimeError(f"{len(pids)} worker processes, not {workers}")
        args = [*client_args(sc, server.port, opts),
                "--server-pid", ",".join(map(str, pids)),
                "--aux-pid", f"redis:{redis.pid}", "--aux-pid", f"supervisor:{server.pid}"]
        row = run_client(client_python, args, None, sc.time_limit)
        _check_alive(row, server)
        row["workers"] = workers
    except RuntimeError as exc:
        row = {"ok": False, "error": str(exc)}
    finally:
        if server is not None:
            server.stop()
        if redis is not None:
            redis.stop()
    return _stamped(row, spec, sc, pass_no, started)


# -- report ----------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report(rows: list[dict[str, Any]], scenarios: Sequence[Scenario], servers: Sequence[str],
           labels: dict[str, str], meta: dict[str, Any]) -> str:
    agg = aggregate(rows)
    workers_scenarios = [sc for sc in scenarios if sc.params.get("workers")]
    scenarios = [sc for sc in scenarios if not sc.params.get("workers")]
    peers = [s for s in servers if s != OURS]
    out = [f"# {meta.get('title', 'Benchmark results')} ({meta['date']})", ""]
    out.append(f"{meta['passes']} interleaved passes, medians; server pinned to core "
               f"{meta['server_core']}, client to core {meta['client_core']}; {meta['cpu']}, "
               f"{os.cpu_count()} cores; Python {platform.python_version()}; "
               f"run took {meta['elapsed_min']:.1f} min. "
               f"Ratios: ours vs peer, > 1 means ours is better (higher throughput, or "
               f"lower latency / CPU / memory); n/a: not measured or not supported.")
    if scenarios:
        out.append("")
        if OURS in servers:
            out.append(make_table(agg, scenarios, OURS, peers, labels))
        else:
            base, *rest = servers
            out.append(make_table(agg, scenarios, base, rest, labels))
        out += ["", "Load client CPU share / server CPU share (process CPU time / wall time "
                "over the measurement window; the client's at or near 100 % would make it "
                "the bottleneck):", ""]
        out.append(make_client_table(agg, scenarios, servers, labels))
    noisy = [r for r in rows if r.get("ok") and noise(r) > meta.get("noise_limit", 0.1)]
    if any("server_core_other" in r for r in rows):
        worst = max((noise(r) for r in rows), default=0.0)
        out += ["", f"Noise: {len(noisy)} of {len(rows)} runs kept had other processes on the "
                f"server's or the client's core above {100 * meta.get('noise_limit', 0.1):.0f} "
                f"% of it (worst {100 * worst:.0f} %); noisy runs were retried up to "
                f"{meta.get('retries', 0)} time(s) (none past 70 % of the time budget), the "
                "quietest kept."]
    if workers_scenarios and OURS in servers:
        out += ["", "Ours with `--workers 2 --layer redis://` (its own redis-server): the "
                "workers, Redis and the load client share the cores (nothing pinned), so "
                "there is no peer and no ratio. Server CPU per delivery is summed over the "
                "workers; Redis's and the supervisor's are measured apart.", ""]
        out.append(make_workers_table(agg, workers_scenarios, OURS))
    fails = failures(agg)
    if fails:
        out += ["", "Failed or unsupported passes:", ""] + [f"- {f}" for f in fails]
    out += ["", "Versions: " + "; ".join(
        f"{labels.get(s, s)}: " + ", ".join(f"{k} {v}" for k, v in sorted(meta["versions"]
                                                                             .get(s, {}).items()))
        for s in servers)]
    if meta.get("notes"):
        out += ["", meta["notes"]]
    return "\n".join(out) + "\n"


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="ours,autobahn,daphne,uvicorn,sendloop",
                   help="comma-separated: ours, autobahn, daphne, uvicorn, sendloop (the "
                   "floor: a bare send() loop on epoll, fan-out only), ours-delayed (ours "
                   "with --broadcast-delay, fan-out only), ours-channels and "
                   "ours-channels-asyncio (Daphne's Channels consumers ported by changing "
                   "imports, on the default and the asyncio reactor); the last three not "
                   "by default")
    p.add_argument("--scenarios", default="all",
                   help="comma-separated scenario names (default: all)")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes (what the smoke tests run)")
    p.add_argument("--echo-duration", type=float, default=5.0)
    p.add_argument("--fanout-duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--drain", type=float, default=5.0)
    p.add_argument("--no-venvs", dest="venvs", action="store_false",
                   help="run every server and the client from this Python (no installs)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the server and the client to cores")
    p.add_argument("--no-chart", dest="chart", action="store_false")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quiet-wait", type=float,
                   help="before each run, wait up to this many seconds for the machine to be "
                   "idle (other processes below 15 %% of a core); default 10, 0 with --quick")
    p.add_argument("--retries", type=int,
                   help="run a scenario again when other processes took more than "
                   "--noise-limit of the server's or the client's core (the quietest is kept); "
                   "default 1, 0 with --quick")
    p.add_argument("--noise-limit", type=float, default=0.10)
    p.add_argument("--budget-min", type=float, default=22.0,
                   help="past 70 %% of this many minutes, stop waiting for quiet and retrying")
    p.add_argument("--ours-delay", type=float, default=0.1, metavar="SECONDS",
                   help="the --broadcast-delay of ours-delayed (default 0.1)")
    p.add_argument("--ours-ref", metavar="REF",
                   help="run ours from a snapshot of this git ref (e.g. HEAD) installed in "
                   ".venvs/ours, instead of from the Python running this script")
    a = p.parse_args(argv)
    return runner_defaults(a)


def runner_start() -> Callable[[str], None]:
    """A runner's start: the open-files limit raised, SIGTERM and SIGINT unwinding (each
    server is stopped in its attempt's ``finally``); its log, stderr."""
    raise_nofile()
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def chosen_servers(opts: argparse.Namespace, specs: dict[str, ServerSpec],
                   log: Any) -> list[str] | None:
    """``--servers``, or None (said on ``log``) when it names none or one not in ``specs``."""
    servers = [s.strip() for s in opts.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in specs]
    if unknown or not servers:
        log(f"unknown servers: {', '.join(unknown)} (known: {', '.join(specs)})")
        return None
    return servers


def prepare_venvs(specs: dict[str, ServerSpec], servers: Sequence[str],
                  opts: argparse.Namespace, log: Any) -> str:
    """The client's and the servers' virtualenvs (with ``--venvs``); the client's Python."""
    if not opts.venvs:
        return sys.executable
    VENVS.mkdir(exist_ok=True)
    client_python = ensure_venv(CLIENT_VENV, CLIENT_REQUIREMENTS, log)
    for s in servers:
        if specs[s].venv:
            ensure_venv(specs[s].venv, specs[s].requirements, log)
    return client_python


def recorded_passes(name: str, specs: dict[str, ServerSpec], servers: Sequence[str],
                    scenarios: Sequence[Scenario], opts: argparse.Namespace,
                    client_python: str, log: Any, *, attempt: Attempt | None = None,
                    ) -> tuple[list[dict[str, Any]], Path]:
    """``run_passes`` for a side benchmark (socket_io.py, django_http.py): rows to
    ``<out>/<name>-<time>.jsonl``, copied to ``<name>-latest.jsonl``, server logs under
    ``<out>/logs/<name>-<time>/``; the rows and the file."""
    opts.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    jsonl = opts.out / f"{name}-{stamp}.jsonl"
    rows = run_passes(specs, servers, scenarios, opts, client_python, jsonl,
                      opts.out / "logs" / f"{name}-{stamp}", log, attempt=attempt)
    shutil.copyfile(jsonl, opts.out / f"{name}-latest.jsonl")
    return rows, jsonl


def side_meta(title: str, opts: argparse.Namespace, elapsed: float,
              meta_versions: dict[str, Any], notes: Sequence[str]) -> dict[str, Any]:
    """A side benchmark's report header (``report``'s ``meta``)."""
    return {
        "title": title, "date": time.strftime("%Y-%m-%d %H:%M"),
        "passes": opts.passes, "server_core": opts.server_core,
        "client_core": opts.client_core, "cpu": cpu_model(), "elapsed_min": elapsed,
        "versions": meta_versions, "noise_limit": opts.noise_limit,
        "retries": opts.retries, "notes": "\n".join(notes),
    }


def publish_side(name: str, text: str, jsonl: Path, elapsed: float,
                 opts: argparse.Namespace, log: Any) -> None:
    """A side benchmark's table to ``<out>/<name>-latest.md`` and stdout."""
    table = opts.out / f"{name}-latest.md"
    table.write_text(text)
    print(text)
    log(f"rows: {jsonl}; table: {table}; {elapsed:.1f} min")


def run_passes(specs: dict[str, ServerSpec], servers: Sequence[str],
               scenarios: Sequence[Scenario], opts: argparse.Namespace, client_python: str,
               jsonl: Path, log_dir: Path, log: Any, *, attempt: Attempt | None = None,
               budget_end: float | None = None) -> list[dict[str, Any]]:
    """Every scenario on every server, pass after pass (interleaved); each row written to
    ``jsonl`` as it comes and summed up on ``log``. Past ``budget_end`` (``time.monotonic``),
    no more waiting for quiet or retries. What socket_io.py and django_http.py run too."""
    rows: list[dict[str, Any]] = []
    with open(jsonl, "w") as f:
        for pass_no in range(1, opts.passes + 1):
            for s in servers:
                for sc in scenarios:
                    if sc.params.get("workers") and s != OURS:
                        continue
                    if specs[s].kinds and sc.kind not in specs[s].kinds:
                        continue
                    if budget_end is not None and (opts.retries or opts.quiet_wait) and \
                            time.monotonic() > budget_end:
                        log("past 70 % of the time budget: no more waiting or retries")
                        opts.retries, opts.quiet_wait = 0, 0.0
                    row = run_one(specs[s], sc, opts, pass_no, client_python, log_dir,
                                  attempt=attempt)
                    rows.append(row)
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    log(summary_line(row))
    return rows


def _stop_on_signal(signum: int, _frame: Any) -> None:
    # Unwind: the current server is stopped in run_attempt's finally, the client is killed by
    # subprocess.run.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    log = runner_start()
    specs = server_specs()
    delayed = specs[OURS_DELAYED]
    delayed.args = ("--broadcast-delay", f"{opts.ours_delay:g}")
    delayed.label = f"ours --broadcast-delay {opts.ours_delay:g}"
    servers = chosen_servers(opts, specs, log)
    if servers is None:
        return 2
    pool = QUICK_SCENARIOS if opts.quick else FULL_SCENARIOS
    if OURS in servers:
        if shutil.which("redis-server"):
            pool += QUICK_WORKERS_SCENARIOS if opts.quick else WORKERS_SCENARIOS
        else:
            log("no redis-server on PATH: the --workers scenarios are skipped")
    if opts.scenarios != "all":
        wanted = opts.scenarios.split(",")
        pool = tuple(sc for sc in pool if sc.name in wanted)
        if not pool:
            log(f"no such scenario: {opts.scenarios}")
            return 2
    scenarios = list(pool)
    if opts.quick:
        scenarios = [replace(sc, time_limit=min(sc.time_limit, 30)) for sc in scenarios]

    t_start = time.monotonic()
    retries_asked = opts.retries
    client_python = prepare_venvs(specs, servers, opts, log)
    if opts.ours_ref and set(OURS_ALL) & set(servers):
        VENVS.mkdir(exist_ok=True)
        ensure_ours_venv(opts.ours_ref, log)
        for name in OURS_ALL:
            specs[name].venv = "ours"
            specs[name].always_venv = True
    meta_versions = {s: versions(specs[s].python(opts.venvs), fanout_loop=s in OURS_ALL)
                     for s in servers}
    if "sendloop" in meta_versions:  # the standard library only
        meta_versions["sendloop"] = {"python": platform.python_version()}

    opts.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    jsonl = opts.out / f"run-{stamp}.jsonl"
    log_dir = opts.out / "logs" / stamp
    labels = {s: specs[s].label for s in servers}
    rows = run_passes(specs, servers, scenarios, opts, client_python, jsonl, log_dir, log,
                      budget_end=t_start + 0.7 * 60 * opts.budget_min)
    shutil.copyfile(jsonl, opts.out / "latest.jsonl")
    elapsed = (time.monotonic() - t_start) / 60
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "passes": opts.passes,
        "server_core": opts.server_core, "client_core": opts.client_core, "cpu": cpu_model(),
        "elapsed_min": elapsed, "versions": meta_versions,
        "noise_limit": opts.noise_limit, "retries": retries_asked,
        "notes": ("Quick run (tiny sizes): figures are not comparable with a full run."
                  if opts.quick else ""),
    }
    text = report(rows, scenarios, servers, labels, meta)
    (opts.out / "latest.md").write_text(text)
    print(text)
    if opts.chart:
        chart = opts.out / "latest.png"
        res = subprocess.run([client_python, str(HERE / "chart.py"), str(jsonl), str(chart),
                              "--servers", ",".join(servers),
                              "--scenarios", ",".join(sc.name for sc in scenarios
                                                      if not sc.params.get("workers"))]
                             + (["--quick"] if opts.quick else []),
                             capture_output=True, text=True, timeout=120)
        if res.returncode == 0:
            log(f"chart: {chart}")
        else:
            log(f"no chart: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    log(f"rows: {jsonl}; table: {opts.out / 'latest.md'}; {elapsed:.1f} min")
    return 0


def summary_line(row: dict[str, Any]) -> str:
    """One run's figures, as the passes go (every runner's: each kind of row its own)."""
    head = f"pass {row['pass']} {row['server']:>11} {row['scenario']:<19}"
    if not row.get("ok"):
        return f"{head} FAILED: {row.get('error')}"
    kind = row.get("kind")
    if kind == "echo":
        body = (f"{row['msgs_per_s']:>10,.0f} msg/s  p99 {row.get('p99_ms')} ms  "
                f"{row.get('server_cpu_us_per_msg')} us/msg")
    elif kind == "fanout":
        short = (f"members short {row['members_short']}  " if "members_short" in row
                 else "")
        body = (f"{row['delivered_per_s']:>10,.0f} deliveries/s  p50 {row.get('p50_ms')} ms  "
                f"p99 {row.get('p99_ms')} ms  lost {row.get('lost_pct')} %  {short}"
                f"{row.get('server_cpu_us_per_delivery')} us/delivery")
    elif kind == "http":
        body = (f"{row['requests_per_s']:>10,.0f} req/s  p50 {row.get('p50_ms')} ms  "
                f"p99 {row.get('p99_ms')} ms  {row.get('server_cpu_us_per_request')} us/req  "
                f"errors {row.get('http_errors')}")
    else:
        body = (f"{row.get('kb_per_conn')} KB/conn  "
                f"{row.get('handshakes_per_s'):,.0f} handshakes/s")
    return (f"{head} {body}  (client CPU {row.get('client_cpu_share')}, "
            f"server CPU {row.get('server_cpu_share')}, {row['elapsed_s']} s)")


if __name__ == "__main__":
    sys.exit(main())
