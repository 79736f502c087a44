"""Packaging and launch: the real command line, each kind of listener, reached by a real
WebSocket client (an echo round trip); plugin discovery from fresh virtualenvs."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect, unix_connect

from tests.clients import http_get
from tests.e2e.support import (
    BENCH_APP,
    REPO,
    ServerFailed,
    run,
    script,
    self_signed,
    start,
    start_socket_activated,
    twistd,
)

APP = ["--app", BENCH_APP]
TIMEOUT = 15


def echo(ws) -> None:
    """A text and a binary round trip on an open ``/echo`` socket."""
    ws.send("héllo")
    assert ws.recv(timeout=TIMEOUT) == "héllo"
    ws.send(b"\x00\xffbytes")
    assert ws.recv(timeout=TIMEOUT) == b"\x00\xffbytes"


def echo_tcp(port: int, **kwargs) -> None:
    scheme = "wss" if "ssl" in kwargs else "ws"
    with connect(f"{scheme}://127.0.0.1:{port}/echo", open_timeout=TIMEOUT, proxy=None,
                 **kwargs) as ws:
        echo(ws)


def echo_unix(path: str) -> None:
    with unix_connect(path, "ws://localhost/echo", open_timeout=TIMEOUT) as ws:
        echo(ws)


def healthz(port: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def stopped_cleanly(server) -> str:
    result = server.stop()
    assert result.returncode == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def test_port_zero():
    with start(twistd(*APP, "--port", "0")) as server:
        (address,) = server.addresses
        assert address.startswith("tcp:127.0.0.1:")
        assert server.port > 0
        echo_tcp(server.port)
        status, body = healthz(server.port)
        assert (status, body.strip()) == (200, b"ok")
    output = stopped_cleanly(server)
    assert "EPollReactor" in output


@pytest.mark.parametrize(("args", "first", "frozen"), [
    ([], 7000, True),
    (["--gc-threshold", "20000"], 20000, True),
    (["--gc-threshold", "0"], 700, False),
])
def test_gc_threshold_tunes_the_servers_collector(args, first, frozen):
    """The start-up heap frozen and the first threshold raised, once the reactor runs;
    ``--gc-threshold 0`` leaves Python's collector as it is."""
    import json

    app = ["--app", "tests.e2e.options_app:application"]
    with start(twistd(*app, "--port", "0", *args), env={"PYTHONPATH": str(REPO)}) as server:
        status, _, body = http_get(f"http://127.0.0.1:{server.port}/gc")
        assert status == 200
        answer = json.loads(body)
    output = stopped_cleanly(server)
    assert answer["threshold"][0] == first
    if frozen:
        assert answer["frozen"] > 10_000  # Twisted, Autobahn and the app at least
        assert f"first threshold {first}" in output
    else:
        assert answer["frozen"] == 0 and "gc:" not in output


def test_broadcast_delay_applies_to_the_twistd_server():
    """``--broadcast-delay 0.4``: a message another member sends to the room reaches every
    member no sooner than that (makeService sets the process-wide delay)."""
    import time

    with start(twistd(*APP, "--port", "0", "--broadcast-delay", "0.4")) as server:
        url = f"ws://127.0.0.1:{server.port}/room/delayed"
        with connect(url, open_timeout=TIMEOUT, proxy=None) as a, \
                connect(url, open_timeout=TIMEOUT, proxy=None) as b:
            # Both in the room (an earlier message reaches both once they are).
            for _ in range(50):
                a.send("hello")
                try:
                    b.recv(timeout=0.5)
                    break
                except TimeoutError:
                    continue
            a.send("synced")  # behind every earlier hello in both streams
            for ws in (a, b):
                while ws.recv(timeout=TIMEOUT) != "synced":
                    pass
            started = time.monotonic()
            a.send("later")
            assert b.recv(timeout=TIMEOUT) == "later"
            assert time.monotonic() - started >= 0.35
    stopped_cleanly(server)


def test_bind_host_and_port():
    with start(twistd(*APP, "-b", "127.0.0.1", "--port", "0")) as server:
        assert server.addresses[0].startswith("tcp:127.0.0.1:")
        echo_tcp(server.port)


def test_unix_socket(tmp_path):
    path = str(tmp_path / "rt.sock")
    with start(twistd(*APP, "-u", path)) as server:
        assert server.addresses == [f"unix:{path}"]
        echo_unix(path)
    stopped_cleanly(server)


def test_ssl_self_signed(tmp_path):
    cert, key = self_signed(tmp_path)
    desc = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    with start(twistd(*APP, "--port", desc)) as server:
        assert server.addresses[0].startswith("tcp:127.0.0.1:")
        trusting = ssl.create_default_context(cafile=str(cert))
        echo_tcp(server.port, ssl=trusting)
        # The certificate is really checked: a default context refuses it.
        with pytest.raises(ssl.SSLCertVerificationError):
            echo_tcp(server.port, ssl=ssl.create_default_context())
        # HTTP/2 for a client that offers it (ALPN), as Daphne with Twisted[http2].
        with httpx.Client(http2=True, verify=trusting) as client:
            response = client.get(f"https://127.0.0.1:{server.port}/healthz")
        assert (response.http_version, response.text) == ("HTTP/2", "ok\n")
    stopped_cleanly(server)


def test_inherited_fd():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        fd = sock.fileno()
        with start(twistd(*APP, "--fd", str(fd)), pass_fds=[fd]) as server:
            assert server.addresses == [f"tcp:127.0.0.1:{port}"]
            sock.close()  # the server holds its own copy
            echo_tcp(port)
    stopped_cleanly(server)


def test_inherited_unix_fd(tmp_path):
    """An inherited unix socket is its owner's (systemd's, with socket activation): the
    server that stops leaves it listening, its path in place (Twisted's port shut it down
    and removed the path: the next start, or a client meanwhile, found no socket)."""
    path = str(tmp_path / "adopted.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        sock.listen()
        fd = sock.fileno()
        with start(twistd(*APP, "--fd", str(fd)), pass_fds=[fd]) as server:
            assert server.addresses == [f"unix:{path}"]
            echo_unix(path)
        stopped_cleanly(server)
        assert os.path.exists(path)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)  # queued on the socket its owner still holds
        with start(twistd(*APP, "--fd", str(fd)), pass_fds=[fd]) as again:
            echo_unix(path)  # the next server serves on it
        stopped_cleanly(again)


def test_helper_reports_a_failed_start():
    with pytest.raises(ServerFailed) as info:
        start(twistd("--app", "nosuch_module_xyz:app", "--port", "0"), timeout=TIMEOUT)
    message = str(info.value)
    assert "exited" in message
    assert "rc=1" in message
    assert "realtime: error: --app 'nosuch_module_xyz:app': cannot import module" in message


def systemd_socket_activate() -> str:
    tool = shutil.which("systemd-socket-activate")
    if tool:
        return tool
    reason = ("systemd-socket-activate is not installed (Debian package 'systemd'; "
              "tests/run.sh installs it)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.mark.parametrize("which", ["index=0", "name=realtime"])
def test_systemd_socket_activation(which):
    tool = systemd_socket_activate()
    server, port = start_socket_activated(
        tool, "127.0.0.1", "realtime", twistd(*APP, "--port", f"systemd:domain=INET:{which}")
    )
    with server:
        # The tool starts the server on the first connection, which waits in the backlog.
        echo_tcp(port)
        assert server.wait_listening() == [f"tcp:127.0.0.1:{port}"]
        echo_tcp(port)
    stopped_cleanly(server)


def test_asyncio_reactor():
    with start(twistd(*APP, "--port", "0", reactor="asyncio")) as server:
        echo_tcp(server.port)
    output = stopped_cleanly(server)
    assert "reactor class: twisted.internet.asyncioreactor.AsyncioSelectorReactor" in output


def test_python_dash_m():
    with start([sys.executable, "-m", "realtime", *APP, "--port", "0"]) as server:
        echo_tcp(server.port)
    output = stopped_cleanly(server)
    assert "EPollReactor" in output


def test_console_script():
    with start([script("realtime"), *APP, "--port", "0"]) as server:
        echo_tcp(server.port)
    stopped_cleanly(server)


@pytest.mark.parametrize("spelling", [["--reactor=asyncio"], ["--reactor", "asyncio"]])
def test_console_script_takes_the_asyncio_reactor(spelling):
    with start([script("realtime"), *spelling, *APP, "--port", "0"]) as server:
        echo_tcp(server.port)
    output = stopped_cleanly(server)
    assert "reactor class: twisted.internet.asyncioreactor.AsyncioSelectorReactor" in output


def test_console_script_unknown_reactor_is_one_line():
    result = run([script("realtime"), "--reactor=nope", *APP])
    assert result.returncode == 1
    assert result.stderr.startswith("realtime: error: --reactor: no reactor named 'nope' "
                                    "(choose from ")
    assert "asyncio" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["twistd", "realtime"])
def test_an_application_in_the_working_directory(tmp_path, command):
    """The README's ``--app myapp.consumers:application``, run from the project's directory
    by ``twistd`` or the ``realtime`` script (neither puts it on ``sys.path``)."""
    (tmp_path / "myproject_e2e").mkdir()
    (tmp_path / "myproject_e2e" / "__init__.py").write_text("")
    (tmp_path / "myproject_e2e" / "consumers.py").write_text(
        "from realtime.examples.bench import application\n")
    argv = ["--app", "myproject_e2e.consumers:application", "--port", "0"]
    cmd = twistd(*argv) if command == "twistd" else [script("realtime"), *argv]
    with start(cmd, cwd=tmp_path) as server:
        echo_tcp(server.port)
    stopped_cleanly(server)


def test_console_script_error_is_one_line():
    result = run([script("realtime"), *APP, "--max-inflight", "0"])
    assert result.returncode == 1
    assert result.stderr == "realtime: error: --max-inflight: must be at least 1, got '0'\n"


def test_environment_two_listeners(tmp_path):
    path = str(tmp_path / "x.sock")
    with start(twistd(*APP), env={"REALTIME_PORT": f"0 unix:{path}"}, listeners=2) as server:
        assert server.addresses[0].startswith("tcp:127.0.0.1:")
        assert server.addresses[1] == f"unix:{path}"
        echo_tcp(server.port)
        echo_unix(path)


def test_command_line_wins_over_environment(tmp_path):
    path = str(tmp_path / "x.sock")
    env = {"REALTIME_PORT": f"unix:{path}", "REALTIME_PING_INTERVAL": "abc"}
    with start(twistd(*APP, "--port", "0", "--ping-interval", "5"), env=env) as server:
        echo_tcp(server.port)
    output = stopped_cleanly(server)
    assert next(line for line in output.splitlines() if "listening on" in line).endswith(
        f"listening on tcp:127.0.0.1:{server.port}"
    )
    assert output.count("listening on") == 1
    assert not Path(path).exists()


def _backlog(port: int) -> int:
    """A listening socket's backlog: ``ss`` shows it as Send-Q."""
    if not shutil.which("ss"):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("ss is not installed (Debian package iproute2; tests/run.sh installs it)")
        pytest.skip("ss is not installed (Debian package iproute2)")
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True,
                         check=True, timeout=TIMEOUT).stdout.split()
    return int(out[2])


def test_backlog():
    with start(twistd(*APP, "--port", "0",
                      "--port", "tcp:0:interface=127.0.0.1:backlog=7"), listeners=2) as server:
        default, named = (int(a.rsplit(":", 1)[1]) for a in server.addresses)
        assert _backlog(default) == 1024
        assert _backlog(named) == 7


# --- plugin discovery from outside the repository, in fresh virtualenvs --------------

_NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                     "*.pyc", ".venv", ".*_cache", "dropin.cache", "tests",
                                     "benchmarks", "docs", "contrib", ".ci", ".hypothesis",
                                     "*.so")  # (the checkout's own build of the C loop)


def _venv_env() -> dict[str, str | None]:
    return {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PYTHONPATH": None,
            "PYTHONHOME": None, "PYTHONSTARTUP": None, "VIRTUAL_ENV": None}


VENV_MODES = ("install", "editable-strict")


def _build_venv(base: Path, mode: str) -> Path:
    """A fresh virtualenv (no system site-packages) in ``base`` with a copy of the repository
    installed normally (``install``) or as a strict editable install (``editable-strict``).

    The venv is made without pip (no ensurepip) and this interpreter's pip installs into it
    (``pip --python``): the same packages land in the venv's site-packages, without the
    seconds ensurepip takes."""
    source = base / "src"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    env_dir = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True,
                   timeout=120)
    pip = [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"),
           "install", "-q"]
    if mode == "install":
        cmd = [*pip, str(source)]
    else:
        cmd = [*pip, "-e", str(source), "--config-settings", "editable_mode=strict"]
    result = run(cmd, env=_venv_env(), cwd=base, timeout=300)
    assert result.returncode == 0, result.output
    return env_dir


@pytest.fixture(scope="module", autouse=True)
def venv_builds(request, tmp_path_factory) -> Any:
    """Both virtualenvs, built side by side (they are independent) from the module's start
    (when any test selected uses ``venv``), while its other tests run: none of those times
    anything but a lower bound. ``{mode: Future[Path]}``; the ``venv`` tests are last in
    the module, and wait for theirs."""
    from concurrent.futures import ThreadPoolExecutor

    here = request.module.__name__
    if not any(item.module.__name__ == here and "venv" in item.fixturenames
               for item in request.session.items):
        yield {}
        return
    bases = {mode: tmp_path_factory.mktemp(f"venv-{mode}") for mode in VENV_MODES}
    with ThreadPoolExecutor(max_workers=len(VENV_MODES)) as pool:
        yield {mode: pool.submit(_build_venv, bases[mode], mode) for mode in VENV_MODES}


@pytest.fixture(scope="module", params=VENV_MODES)
def venv(request, venv_builds) -> Path:
    """A fresh virtualenv (no system site-packages) with a copy of the repository installed
    normally or as a strict editable install. One per install mode, shared by its tests."""
    env_dir = venv_builds[request.param].result(timeout=400)
    # The venv really is separate: it does not see this interpreter's packages.
    check = run([str(env_dir / "bin" / "python"), "-c", "import pytest"], env=_venv_env())
    assert check.returncode != 0
    return env_dir


@pytest.mark.slow
def test_twistd_lists_the_plugin(venv):
    result = run([str(venv / "bin" / "twistd"), "--help"], env=_venv_env(), cwd="/")
    assert result.returncode == 0, result.output
    commands = result.stdout.split("Commands:", 1)[1]
    assert any(line.split()[:1] == ["realtime"] for line in commands.splitlines()), commands


@pytest.mark.slow
def test_the_install_builds_the_c_fan_out_loop(venv):
    """setup.py's optional extension (realtime._sendeach) is built by both install modes,
    from the copy's C source (the checkout's own build is not copied), and chosen."""
    code = ("import realtime._fanout as f, realtime._sendeach as c; "
            "assert f.send_each is c.send_each; print(c.__file__)")
    result = run([str(venv / "bin" / "python"), "-c", code], env=_venv_env(), cwd="/")
    assert result.returncode == 0, result.output
    assert str(REPO) not in result.stdout


def test_without_a_c_compiler_the_package_builds_without_the_c_loop(tmp_path):
    """The extension is optional: no compiler, a wheel all the same (the Python loop)."""
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    result = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "-w", str(tmp_path / "wheels"), str(source)],
                 env={**_venv_env(), "CC": "/bin/false"}, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.output
    (wheel,) = (tmp_path / "wheels").glob("realtime-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "realtime/_fanout.py" in names
    assert not [name for name in names if "_sendeach" in name and name.endswith(".so")]


def test_the_sdist_carries_the_c_loop_and_a_wheel_of_it_builds_it(tmp_path):
    """An sdist holds the C source and its stub (``realtime/_sendeach.pyi``: typed
    callers of an installed copy), and an install from it builds the C loop."""
    import tarfile
    import zipfile

    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    result = run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "sdist")],
                 env=_venv_env(), cwd=source, timeout=120)
    assert result.returncode == 0, result.output
    (sdist,) = (tmp_path / "sdist").glob("realtime-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"setup.py", "realtime/_sendeach.c", "realtime/_sendeach.pyi",
            "realtime/py.typed"} <= names
    result = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "-w", str(tmp_path / "wheels"), str(sdist)],
                 env=_venv_env(), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.output
    (wheel,) = (tmp_path / "wheels").glob("realtime-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "realtime/_sendeach.pyi" in names
    assert [name for name in names if name.startswith("realtime/_sendeach.")
            and name.endswith(".so")]


@pytest.mark.slow
def test_plugin_help_and_serve(venv):
    twistd_bin = str(venv / "bin" / "twistd")
    result = run([twistd_bin, "-n", "realtime", "--help"], env=_venv_env(), cwd="/")
    assert result.returncode == 0, result.output
    assert "--app=" in result.stdout
    assert "--port=" in result.stdout
    cmd = [twistd_bin, "-n", "--pidfile=", "realtime", *APP, "--port", "0"]
    with start(cmd, env=_venv_env(), cwd="/") as server:
        echo_tcp(server.port)
    output = stopped_cleanly(server)
    # The server ran from the venv, not from this interpreter's install.
    assert f"({venv}/bin/python" in output
