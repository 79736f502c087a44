"""Run the real command line as a subprocess and wait for its listeners.

Small on purpose; later end-to-end tests (drain, signals, workers) reuse it::

    from tests.e2e.support import start, twistd

    with start(twistd("--app", "realtime.examples.bench:application", "--port", "0")) as server:
        url = server.ws_url("/echo")          # ws://127.0.0.1:<real port>/echo
        ...
    # leaving the block sends SIGTERM (then SIGKILL) to that process only

    server = start(cmd, listeners=0)          # don't wait (e.g. socket activation)
    server.wait_for(r"listening on (\\S+)")   # bounded wait for any log line
    result = server.stop()                    # Result(returncode, stdout, stderr)

``start`` raises ``ServerFailed`` (with the output) when the process exits, or prints no
``listening on`` lines in time. Only the process this module started is ever signalled.
Servers are told to listen on 127.0.0.1 (or unix sockets) by the callers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

#: The repository root, from this file's location.
REPO = Path(__file__).resolve().parents[2]
#: The application the examples serve: ``/echo`` and ``/healthz``.
BENCH_APP = "realtime.examples.bench:application"
LISTENING = re.compile(r"listening on (\S+)")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def script(name: str) -> str:
    """A console script installed next to this interpreter (not a pyenv shim on PATH)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed next to {sys.executable}")
    return str(path)


def twistd(*args: str, reactor: str | None = None) -> list[str]:
    """``twistd -n --pidfile= realtime ARGS...`` (optionally ``--reactor=NAME``)."""
    head = [script("twistd"), "-n", "--pidfile="]
    if reactor:
        head.append(f"--reactor={reactor}")
    return [*head, "realtime", *args]


Env = Mapping[str, str | None]


def environment(env: Env | None = None) -> dict[str, str]:
    """This process's environment without ``REALTIME_*`` (so a developer's settings never
    leak in), unbuffered, plus ``env`` (a ``None`` value removes that variable)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    base["PYTHONUNBUFFERED"] = "1"
    for name, value in (env or {}).items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class ServerFailed(AssertionError):
    """The server exited, or did not report its listeners in time."""


def run(cmd: Sequence[str], env: Env | None = None, cwd: str | Path = "/",
        timeout: float = 30.0) -> Result:
    """Run a short-lived command to completion (bounded); stdout and stderr kept apart."""
    done = subprocess.run(list(cmd), env=environment(env), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(done.returncode, done.stdout, done.stderr)


def self_signed(directory: str | Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """Write a self-signed certificate for ``host`` (and ``localhost``) and its key into
    ``directory``; return ``(cert.pem, key.pem)``. Trust it with
    ``ssl.create_default_context(cafile=cert)``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
        ), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return cert_path, key_path


def tls_options(cert: Path, key: Path) -> Any:
    """The server side of ``self_signed``'s pair: Twisted ``CertificateOptions``, as
    ``realtime.testing.serve(..., tls=...)`` takes them."""
    from twisted.internet import ssl

    return ssl.PrivateCertificate.loadPEM(cert.read_text() + key.read_text()).options()


def _hear_sigint() -> None:
    """In the child, before exec: SIGINT back to its default. A suite run as a background
    job (``bash tests/run.sh &``) ignores SIGINT, children inherit that, and Twisted then
    leaves SIGINT alone (it installs its handler only over Python's default), so the SIGINT
    drain test would wait for nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    """A started process; its output is read continuously so the pipes never fill."""

    def __init__(self, cmd: Sequence[str], env: Env | None = None,
                 cwd: str | Path = "/", pass_fds: Iterable[int] = ()) -> None:
        self.cmd = list(cmd)
        self._lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        self._open = 2
        self.proc = subprocess.Popen(
            self.cmd, env=environment(env), cwd=cwd, pass_fds=tuple(pass_fds),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, errors="replace", bufsize=1, preexec_fn=_hear_sigint,
        )
        self.pid = self.proc.pid
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, "stderr"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.addresses: list[str] = []
        self.result: Result | None = None

    def _read(self, stream: IO[str], name: str) -> None:
        for line in stream:
            with self._changed:
                self._lines[name].append(line)
                self._changed.notify_all()
        with self._changed:
            self._open -= 1
            self._changed.notify_all()

    def output(self) -> str:
        """Everything printed so far, stdout then stderr."""
        with self._changed:
            return "".join(self._lines["stdout"]) + "".join(self._lines["stderr"])

    def wait_for(self, pattern: str | re.Pattern[str], count: int = 1,
                 timeout: float = START_TIMEOUT) -> list[re.Match[str]]:
        """Wait (bounded) until ``count`` output lines match ``pattern``; return the matches.
        Raises ``ServerFailed`` if the process exits first or time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                lines = self._lines["stdout"] + self._lines["stderr"]
                found = [m for m in map(regex.search, lines) if m]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if self._open == 0 or left <= 0:
                    break
                self._changed.wait(min(left, 0.5))
        if self._open == 0:  # both pipes closed: the process is exiting; reap it
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        why = "exited" if self.proc.poll() is not None else f"did not log it in {timeout} s"
        self.stop()
        raise ServerFailed(
            f"{self.cmd!r} {why} (waiting for {count} x {regex.pattern!r}); rc="
            f"{self.proc.returncode}; output:\n{self.output()}"
        )

    def wait_listening(self, count: int = 1, timeout: float = START_TIMEOUT) -> list[str]:
        """Wait for ``count`` ``listening on ADDRESS`` lines; return (and keep) the addresses,
        e.g. ``tcp:127.0.0.1:41234``, ``tcp6:[::1]:41234``, ``unix:/path``."""
        self.addresses = [m.group(1) for m in self.wait_for(LISTENING, count, timeout)]
        return self.addresses

    @property
    def port(self) -> int:
        """The port of the first TCP listener."""
        for address in self.addresses:
            if address.startswith(("tcp:", "tcp6:")):
                return int(address.rsplit(":", 1)[1])
        raise LookupError(f"no TCP listener in {self.addresses}")

    def ws_url(self, path: str = "/", scheme: str = "ws") -> str:
        """``ws://127.0.0.1:PORT/path`` for the first TCP listener (``scheme="wss"`` for TLS)."""
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def send_signal(self, sig: int) -> None:
        """Signal this process (only ever the one we started, by its PID)."""
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> Result:
        """Wait (bounded) for the process to exit by itself; SIGKILL it if it does not."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        for reader in self._readers:
            reader.join(5)
        with self._changed:
            self.result = Result(self.proc.returncode, "".join(self._lines["stdout"]),
                                 "".join(self._lines["stderr"]))
        return self.result

    def stop(self, timeout: float = STOP_TIMEOUT) -> Result:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit status and the output."""
        if self.result is not None:
            return self.result
        self.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(cmd: Sequence[str], env: Env | None = None, cwd: str | Path = "/",
          pass_fds: Iterable[int] = (), listeners: int = 1,
          timeout: float = START_TIMEOUT) -> Server:
    """Start ``cmd`` and wait for ``listeners`` ``listening on`` lines (0: don't wait).
    The server is stopped (and ``ServerFailed`` raised) if that does not happen in time."""
    server = Server(cmd, env=env, cwd=cwd, pass_fds=pass_fds)
    if listeners:
        server.wait_listening(listeners, timeout)
    return server


def on_a_free_port(make: Callable[[int], Server], attempts: int = 3) -> Server:
    """``make(port)`` on a port that was free a moment ago, again on another if it was
    taken before the server bound it (``ServerFailed``), at most ``attempts`` times."""
    for _ in range(attempts - 1):
        try:
            return make(free_port())
        except ServerFailed:
            continue
    return make(free_port())


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (another process may still take it first)."""
    import socket

    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def start_socket_activated(
    tool: str, host: str, fdname: str, argv: Sequence[str], tool_args: Sequence[str] = (),
    attempts: int = 3,
) -> tuple[Server, int]:
    """``systemd-socket-activate -l HOST:PORT --fdname=NAME ... ARGV`` on a free port, waiting
    (bounded) until the tool listens; retried when the port was taken in between."""
    for _attempt in range(attempts):
        port = free_port(host)
        cmd = [tool, "-l", f"{host}:{port}", f"--fdname={fdname}", *tool_args, *argv]
        server = start(cmd, listeners=0)
        try:
            server.wait_for(rf"Listening on {re.escape(host)}:{port}")
        except ServerFailed:
            if "Address already in use" in server.output():
                continue
            raise
        return server, port
    raise ServerFailed("no free port for systemd-socket-activate")
